"""examples/yolov8.yaml: Ultralytics YOLOv8 detection at every scale, chosen with `--set scale=...`
through the spec's `scale:` section alone, with Ultralytics' parameter counts (BatchNorm and the
fixed DFL weights included), and its decoding compared with Ultralytics' written in torch."""

from __future__ import annotations

import pytest
import torch

import resgraph
from conftest import ROOT

SPEC = ROOT / "examples" / "yolov8.yaml"

# Ultralytics' counts (`sum(p.numel() for p in model.parameters())`; the DFL conv's 16 fixed
# weights are among them, and not among the trainable ones).
COUNTS = {"n": 3_157_200, "s": 11_166_560, "m": 25_902_640, "l": 43_691_520, "x": 68_229_648}


@pytest.mark.parametrize("scale", list(COUNTS))
def test_parameter_counts_equal_ultralytics_at_every_scale(scale: str) -> None:
    assert resgraph.count_parameters(SPEC, params={"scale": scale}) == COUNTS[scale]


def test_a_meta_build_has_the_count_and_the_dfl_weights_are_frozen() -> None:
    model = resgraph.build(SPEC, params={"scale": "s"}, device="meta")
    assert sum(p.numel() for p in model.parameters()) == COUNTS["s"]
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ["detect.dfl"]


def test_scale_reaches_depths_and_widths_as_ultralytics_rounds_them() -> None:
    m = resgraph.build(SPEC, params={"scale": "m"}, device="meta")
    assert [len(m.b2_c2f.m), len(m.b4_c2f.m), len(m.h12_c2f.m)] == [2, 4, 2]  # max(round(n * 0.67), 1)
    assert m.b7_conv.conv.out_channels == 576  # min(1024, 768) * 0.75
    assert len(m.b9_sppf.m) == 3  # the pool's repeat is not depth-scaled
    x = resgraph.build(SPEC, params={"scale": "x"}, device="meta")
    assert x.b8_c2f.cv2.conv.out_channels == 640  # min(1024, 512) * 1.25
    assert x.detect.l3.cls.out_channels == 80 and x.detect.l3.box.out_channels == 64


def test_an_unknown_scale_is_one_error_at_the_row_parameter() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(SPEC, params={"scale": "q"})
    (problem,) = caught.value.diagnostics  # not again in each of scale:'s three rows that read it
    assert problem.location.line == 20 and problem.message.endswith(": scale must be n, s, m, l or x")


def ultralytics_decode(levels: list[torch.Tensor], dfl: torch.Tensor, nc: int = 80) -> torch.Tensor:
    """Ultralytics' Detect._inference with make_anchors, DFL and dist2bbox, written out."""
    strides, points, stride_rows = (8, 16, 32), [], []
    for x, stride in zip(levels, strides):
        h, w = x.shape[2:]
        sx = torch.arange(w, dtype=torch.float32) + 0.5
        sy = torch.arange(h, dtype=torch.float32) + 0.5
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((gx, gy), -1).view(-1, 2))
        stride_rows.append(torch.full((h * w, 1), float(stride)))
    anchors, strides_t = torch.cat(points).transpose(0, 1), torch.cat(stride_rows).transpose(0, 1)
    b = levels[0].shape[0]
    cells = torch.cat([x.view(b, 64 + nc, -1) for x in levels], 2)
    box, cls = cells.split((64, nc), 1)
    a = box.shape[2]
    distance = torch.nn.functional.conv2d(box.view(b, 4, 16, a).transpose(2, 1).softmax(1), dfl).view(b, 4, a)
    lt, rb = distance.chunk(2, 1)
    x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
    dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides_t
    return torch.cat((dbox, cls.sigmoid()), 1)


def test_forward_at_n_gives_the_decoded_boxes_and_the_raw_levels() -> None:
    torch.manual_seed(0)
    model = resgraph.build(SPEC, params={"image_size": 64}, seed=0).eval()
    with torch.no_grad():
        y, x3, x4, x5 = model(torch.randn(1, 3, 64, 64))
    assert [tuple(t.shape) for t in (y, x3, x4, x5)] == [(1, 84, 84), (1, 144, 8, 8), (1, 144, 4, 4), (1, 144, 2, 2)]
    assert torch.equal(model.detect.dfl.view(-1), torch.arange(16, dtype=torch.float32))
    torch.testing.assert_close(y, ultralytics_decode([x3, x4, x5], model.detect.dfl))
