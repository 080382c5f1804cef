"""Held-back cases of input sizes found by checking the rule against torch: at every size `valid_sizes`
admits, the model compiled at its declared size gives the outputs of a model built at that size with
the same weights; at every size it refuses, that model would differ, or torch would fail."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import resgraph
from conftest import EXAMPLES
from resgraph.symbolic import SymInt, recording


def _spec(input_shape: list[int], layers: str, skips: str = "") -> str:
    return f"resgraph: 1\nname: Net\ninputs:\n  x: {input_shape}\nlayers:\n{layers}" + (
        f"skips:\n{skips}" if skips else "")


def _built_at(spec: str, model: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """The spec built at per-sample `shape`, with `model`'s weights."""
    other = resgraph.build(spec, input_shapes={"x": shape}).eval()
    other.load_state_dict(model.state_dict())
    return other


def _unguarded(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's forward with its input guard skipped (as while torch.compile traces it)."""
    with mock.patch("torch.compiler.is_compiling", return_value=True), torch.no_grad():
        return model(x)


# --- a projection's step after an adaptive pool of more than one position ----------------------------

@pytest.mark.parametrize("policy", ["pad", "avgpool", "conv", "auto"])
def test_a_step_chosen_after_an_adaptive_pool_admits_only_the_sizes_that_choose_it_again(policy: str) -> None:
    # Declared at 31, the skip into a pool of 2 positions steps by 16 (positions 0 and 16). The rule
    # admitted every size that step still fits (17..32), but a model built at 17 steps by 9: another
    # projection, another output (the subsample kept row 16 where the rebuilt one keeps row 9).
    spec = _spec([2, 31], "  - pool: {op: AdaptiveAvgPool1d, output_size: 2}\n",
                 f"  - s: {{from: x, to: pool, projection: {policy}}}\n")
    (_, length) = resgraph.valid_sizes(spec, low=1, high=64).dims
    assert length.rule.describe("L") == "31 <= L <= 32"
    assert length.failures[30] == length.failures[17] == "s"
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _built_at(spec, model, (2, 32))(x))
    short = torch.randn(2, 2, 17)
    with pytest.raises(ValueError, match=r"input 'x' must be \(N, 2, L\) with 31 <= L <= 32"):
        model(short)
    with torch.no_grad():  # why: the model built at 17 is another one
        assert not torch.allclose(_unguarded(model, short), _built_at(spec, model, (2, 17))(short))


def test_a_step_after_an_adaptive_pool_on_a_map_is_kept_per_dim() -> None:
    # 2-D, a 1x1 conv projection (auto: conv + norm) into a 3x3 pool: declared 19x30 steps (7, 10);
    # the sizes that choose those steps again are 19..21 and 28..30
    spec = _spec([2, 19, 30], "  - pool: {op: AdaptiveAvgPool2d, output_size: 3}\n"
                 "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 1}\n",
                 "  - s: {from: x, to: conv}\n")
    report = resgraph.valid_sizes(spec, low=1, high=64)
    assert [dim.rule.describe(dim.name) for dim in report.dims if dim.free] == ["19 <= H <= 21", "28 <= W <= 30"]
    model = resgraph.build(spec, seed=0).eval()
    assert model.s[0].stride == (7, 10)
    for shape in [(2, 21, 28), (2, 19, 29)]:
        x = torch.randn(2, *shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), _built_at(spec, model, shape)(x))
    x = torch.randn(2, 2, 13, 30)  # a stride of 7 gives 13 rows 2 positions, not 3: built at 13 it steps by 5
    with pytest.raises(ValueError, match="19 <= H <= 21"):
        model(x)
    assert _built_at(spec, model, (2, 13, 30)).s[0].stride == (5, 10)


def test_a_step_into_a_single_position_still_fits_every_smaller_size() -> None:
    # a target of size 1 keeps position 0 whatever the step: no size is lost there
    spec = _spec([2, 31], "  - pool: {op: AdaptiveAvgPool1d, output_size: 1}\n", "  - s: {from: x, to: pool}\n")
    (_, length) = resgraph.valid_sizes(spec, low=1, high=64).dims
    assert length.rule.describe("L") == "1 <= L <= 31"


# --- a block reading its input's channels keeps the spatial sizes free ---------------------------------

IN_SHAPES = """\
resgraph: 1
name: Net
inputs:
  x: [3, 12, 12]
blocks:
  head:
    inputs: [a, b]
    layers:
      - cat: {op: concat, input: [a, b]}
      - mix: {op: Conv2d, out_channels: "${in_shapes[0][0] + in_shape[0]}", kernel_size: 1}
layers:
  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - head: {block: head, input: [conv, conv]}
"""


def test_reading_a_blocks_input_channels_keeps_its_spatial_sizes_free() -> None:
    # `in_shapes[0][0]` (and `in_shape[0]`) specialised every size of the shape read, so YOLOv8's
    # Detect block, whose widths read `in_shapes[0][0]`, fixed its maps' sizes: built at 640 it
    # admitted 633..640 only, and refused 672, where Ultralytics' model runs.
    report = resgraph.valid_sizes(IN_SHAPES, low=1, high=64)
    assert [dim.rule.describe(dim.name) for dim in report.dims if dim.free] == ["any H", "any W"]
    model = resgraph.build(IN_SHAPES, seed=0).eval()
    assert model.head.mix.out_channels == 8
    x = torch.randn(2, 3, 20, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _built_at(IN_SHAPES, model, (3, 20, 7))(x))


@pytest.mark.parametrize(("read", "rule"), [
    ("in_shape[1] * 0 + 8", ["H = 12", "any W"]),  # a spatial size read: it is fixed, the other is not
    ("max(in_shape) * 0 + 8", ["H = 12", "W = 12"]),  # read whole: every size fixed
    ("len(in_shape) + 5", ["any H", "any W"]),  # the rank is no size
    ("(in_shape + [1])[0] * 2", ["H = 12", "W = 12"]),
])
def test_each_size_an_expression_reads_is_fixed_and_only_those(read: str, rule: list[str]) -> None:
    spec = IN_SHAPES.replace("${in_shapes[0][0] + in_shape[0]}", "${" + read + "}")
    report = resgraph.valid_sizes(spec, low=1, high=32)
    assert [dim.rule.describe(dim.name) for dim in report.dims if dim.free] == rule


def test_an_expression_returning_a_blocks_shape_gives_plain_numbers() -> None:
    spec = IN_SHAPES.replace('"${in_shapes[0][0] + in_shape[0]}", kernel_size: 1}',
                             '8, kernel_size: 1}\n      - back: {op: reshape, shape: "${in_shape}", input: a}\n'
                             '      - out: {op: add, input: [back, a]}')
    model = resgraph.build(spec)
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 4, 12, 12)
    assert [dim.rule.describe(dim.name) for dim in model.graph.meta["sizes"].dims if dim.free] == ["H = 12", "W = 12"]


def test_yolov8_admits_every_size_its_levels_line_up_at() -> None:
    spec = EXAMPLES / "yolov8.yaml"
    report = resgraph.valid_sizes(spec, params={"image_size": 64}, low=1, high=200)
    height = report.dims[1]
    assert height.rule.describe("H") == "H in {25, 26, 27, 28, 29, 30, 31, 32} + 32k"
    assert (height.failures[56], height.failures[65]) == ("h14_cat", "h11_cat")  # torch's concat fails there
    assert not report.joint  # (the reshapes' -1 of 4 * A rows decide nothing: no condition on H and W together)


# --- a multiple's remainder and quotient decide nothing ------------------------------------------------

def test_a_multiple_divided_by_its_factor_records_no_guard() -> None:
    h, w = SymInt.symbol("x.H", 6), SymInt.symbol("x.W", 5)
    with recording() as guards:
        assert (4 * h * w) % 4 == 0 and (4 * h * w) % 2 == 0
        quotient = (4 * h * w) // 4
        assert str(quotient.expr) == "x.H * x.W" and quotient.hint == 30
        assert str(((12 * h) // 8).expr) == "12 * x.H // 8"  # 8 does not divide 12: left as it is
    assert guards == []


def test_a_reshape_of_a_flattened_map_by_its_channels_needs_nothing_of_h_and_w_together() -> None:
    spec = _spec([4, 6, 5], "  - f: {op: Flatten}\n  - r: {op: reshape, shape: [4, -1]}\n"
                 "  - t: {op: reshape, shape: [-1, 2]}\n")
    report = resgraph.valid_sizes(spec, low=1, high=16)
    assert "together" not in report.format("spec") and not report.joint
    model = resgraph.build(spec)
    for h, w in [(1, 1), (3, 7), (16, 9)]:
        x = torch.randn(2, 4, h, w)
        assert torch.equal(model(x), x.reshape(2, 4 * h * w).reshape(2, 4, -1).reshape(2, -1, 2))
