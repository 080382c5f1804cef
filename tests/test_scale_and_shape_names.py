"""`scale:` and the names a block body reads its input's size by.

The specification:

- `scale.width` multiplies every conv's `out_channels`: capped at `max_channels` first, then rounded
  to a multiple of `divisor`, to the nearest (MobileNet's `make_divisible`, default) or up
  (Ultralytics' `ceil(c * w / 8) * 8`). A depthwise conv (`groups` = `out_channels` as written)
  stays depthwise.
- `scale.depth` multiplies every block `repeat`, rounded up (EfficientNet, default) or to the nearest
  (Ultralytics' `max(round(n * d), 1)`).
- Inside a block body, `in_channels` (dim 0 of the first input), `in_features` (its last dim),
  `in_shape` and `in_shapes` read the sizes of the values the call passes in. A width computed from
  them is already scaled (it follows the scaled input), so `scale.width` does not scale it again.
- `scaled(c)` is the width a conv written with `out_channels: c` gets under the spec's scale, so a
  block compares its (scaled) input with a width parameter in one currency:
  `when: "${in_channels == scaled(out)}"`. A width computed with `scaled(...)` is not scaled again;
  the spec's own `params:` cannot call it (they are read before `scale:`, which may read them), a
  block's parameters can.
- `block_index` and `num_blocks` count top-level block instances; a nested call sees its enclosing
  instance's index.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import resgraph
from resgraph.spec import Scale

HEADER = "resgraph: 1\nname: Net\n"


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible` (MobileNetV2/V3), written out as the reference."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def ultralytics_width(channels: int, width: float, max_channels: int) -> int:
    """Ultralytics' `make_divisible(min(c, max_channels) * width, 8)` (tasks.parse_model)."""
    return math.ceil(min(channels, max_channels) * width / 8) * 8


def conv_widths(scale: str, widths: list[int], extra: str = "") -> list[int]:
    layers = "".join(f"  - c{i}: {{op: Conv2d, out_channels: {w}, kernel_size: 1{extra}}}\n"
                     for i, w in enumerate(widths))
    model = resgraph.build(HEADER + f"scale: {scale}\ninputs: {{x: [3, 4, 4]}}\nlayers:\n" + layers)
    return [getattr(model, f"c{i}").out_channels for i in range(len(widths))]


WIDTHS = [16, 24, 40, 64, 100, 112, 160, 256, 960, 1024, 1280]


@pytest.mark.parametrize("width", [0.25, 0.33, 0.5, 0.75, 1.25])
def test_width_rounds_to_the_nearest_multiple_like_make_divisible(width: float) -> None:
    assert conv_widths(f"{{width: {width}}}", WIDTHS) == [make_divisible(c * width) for c in WIDTHS]


@pytest.mark.parametrize(("width", "max_channels"), [(0.25, 1024), (0.5, 1024), (0.75, 768), (1.0, 512),
                                                     (1.25, 512), (0.33, 1024)])
def test_width_rounds_up_under_a_channel_cap_like_ultralytics(width: float, max_channels: int) -> None:
    scale = f"{{width: {width}, max_channels: {max_channels}, width_rounding: up}}"
    assert conv_widths(scale, WIDTHS) == [ultralytics_width(c, width, max_channels) for c in WIDTHS]


def test_the_two_width_roundings_differ_where_the_references_do() -> None:
    assert conv_widths("{width: 0.5}", [100]) == [48]  # make_divisible(50) keeps within 10% below
    assert conv_widths("{width: 0.5, width_rounding: up}", [100]) == [56]


def test_a_cap_alone_applies_at_width_one() -> None:
    assert conv_widths("{max_channels: 256, width_rounding: up}", [64, 256, 512, 1024]) == [64, 256, 256, 256]


def test_a_depthwise_conv_stays_depthwise_and_a_grouped_one_keeps_its_groups() -> None:
    model = resgraph.build(HEADER + "scale: {width: 0.5}\ninputs: {x: [3, 8, 8]}\nlayers:\n"
                           "  - stem: {op: Conv2d, out_channels: 64, kernel_size: 1}\n"
                           "  - dw: {op: Conv2d, out_channels: 64, groups: 64, kernel_size: 3, padding: 1}\n"
                           "  - grouped: {op: Conv2d, out_channels: 64, groups: 4, kernel_size: 1}\n")
    assert (model.dw.out_channels, model.dw.groups) == (32, 32)
    assert (model.grouped.out_channels, model.grouped.groups) == (32, 4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 32, 8, 8)


def test_a_layer_opts_out_of_width_scaling() -> None:
    assert conv_widths("{width: 0.5}", [64, 64], extra=", scale: false")[0] == 64


@pytest.mark.parametrize(("depth", "rounding", "expected"), [
    (0.33, "up", [1, 1, 1, 2]), (0.33, "nearest", [1, 1, 1, 2]),  # Ultralytics' n: 3 -> 1, 6 -> 2
    (0.67, "up", [1, 2, 3, 5]), (0.67, "nearest", [1, 1, 2, 4]),  # Ultralytics' m: 3 -> 2, 6 -> 4
    (1.33, "nearest", [1, 3, 4, 8]), (1.33, "up", [2, 3, 4, 8]),
])
def test_depth_rounds_up_or_to_the_nearest_and_never_below_one(depth: float, rounding: str,
                                                                  expected: list[int]) -> None:
    repeats = [1, 2, 3, 6]
    calls = "".join(f"  - s{i}: {{block: unit, repeat: {n}}}\n" for i, n in enumerate(repeats))
    model = resgraph.build(HEADER + f"scale: {{depth: {depth}, depth_rounding: {rounding}}}\ninputs: {{x: [4]}}\n"
                           "blocks:\n  unit:\n    layers:\n      - fc: {op: Linear, out_features: 4}\n"
                           "layers:\n" + calls)
    counts = [len(getattr(model, f"s{i}")) if isinstance(getattr(model, f"s{i}"), nn.Sequential) else 1
              for i in range(len(repeats))]
    assert counts == expected
    assert [Scale(depth=depth, depth_rounding=rounding).repeats(n) for n in repeats] == expected


# --- names that read the block input's size ---------------------------------------------------------

SQUEEZE_EXCITE = HEADER + """\
scale: {width: 0.5}
inputs: {x: [3, 8, 8]}
blocks:
  se:
    params: {reduction: 4}
    layers:
      - pool: {op: AdaptiveAvgPool2d, output_size: 1}
      - fc1: {op: Conv2d, out_channels: "${in_channels // reduction}", kernel_size: 1}
      - act: {op: ReLU}
      - fc2: {op: Conv2d, out_channels: "${in_channels}", kernel_size: 1}
      - gate: {op: Sigmoid}
      - scaled: {op: mul, input: [x, gate]}
  inverted:
    layers:
      - expand: {op: Conv2d, out_channels: "${in_channels * 4}", kernel_size: 1}
      - dw: {op: Conv2d, out_channels: "${in_channels * 4}", groups: "${in_channels * 4}", kernel_size: 3,
             padding: 1}
      - project: {op: Conv2d, out_channels: "${in_shape[0]}", kernel_size: 1}
layers:
  - stem: {op: Conv2d, out_channels: 32, kernel_size: 3, padding: 1}
  - se1: {block: se}
  - inv: {block: inverted}
  - flat: {op: Flatten}
  - head: {op: Linear, out_features: "${2 * 5}"}
"""


def test_widths_computed_from_the_input_follow_the_scaled_input_and_are_not_scaled_again() -> None:
    model = resgraph.build(SQUEEZE_EXCITE)
    assert model.stem.out_channels == 16  # 32 scaled by 0.5
    assert (model.se1.fc1.out_channels, model.se1.fc2.out_channels) == (4, 16)
    assert (model.inv.expand.out_channels, model.inv.dw.out_channels, model.inv.dw.groups) == (64, 64, 64)
    assert model.inv.project.out_channels == 16
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_the_same_block_reads_each_callers_size() -> None:
    model = resgraph.build(HEADER + """\
inputs: {x: [6]}
blocks:
  wide:
    layers:
      - fc: {op: Linear, out_features: "${in_features * 2}"}
      - narrow: {op: Linear, out_features: "${in_shape[0] + 1}"}
layers:
  - a: {block: wide, repeat: 3}
""")
    assert [(m.fc.out_features, m.narrow.out_features) for m in model.a] == [(12, 7), (14, 8), (16, 9)]
    assert model(torch.randn(2, 6)).shape == (2, 9)


def test_in_shapes_lists_every_input_of_a_block_with_several() -> None:
    model = resgraph.build(HEADER + """\
inputs: {x: [3, 4, 4], y: [5, 4, 4]}
blocks:
  fuse:
    inputs: [a, b]
    layers:
      - cat: {op: concat, input: [a, b]}
      - mix: {op: Conv2d, out_channels: "${in_shapes[0][0] + in_shapes[1][0]}", kernel_size: 1}
layers:
  - f: {block: fuse, input: [x, y]}
""")
    assert model.f.mix.out_channels == 8


def test_a_size_name_outside_a_block_is_an_unknown_name_at_its_expression() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(HEADER + "inputs: {x: [4]}\nlayers:\n  - fc: {op: Linear, out_features: \"${in_features}\"}\n")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.location.line, diagnostic.location.column) == (5, 39)
    assert diagnostic.message == "in ${in_features}: unknown name 'in_features'"


def test_block_index_counts_top_level_instances_at_every_nesting_level() -> None:
    model = resgraph.build(HEADER + """\
inputs: {x: [4]}
blocks:
  inner:
    layers:
      - drop: {op: Dropout, p: "${block_index / 10}"}
  outer:
    layers:
      - fc: {op: Linear, out_features: 4}
      - nested: {block: inner}
layers:
  - a: {block: outer, repeat: 3}
  - b: {block: outer}
""")
    assert [m.nested.drop.p for m in model.a] + [model.b.nested.drop.p] == pytest.approx([0.0, 0.1, 0.2, 0.3])


BASIC_BLOCKS = """\
inputs: {x: [3, 16, 16]}
blocks:
  basic:
    params: {out: 64, stride: 1}
    layers:
      - conv: {op: Conv2d, out_channels: "${out}", kernel_size: 3, padding: 1, stride: "${stride}"}
      - act: {op: ReLU}
    skips:
      - residual: {from: x, to: act, when: "${stride == 1 and in_channels == %s}"}
layers:
  - stem: {op: Conv2d, out_channels: 64, kernel_size: 3, padding: 1}
  - b1: {block: basic, with: {out: 64}}
  - b2: {block: basic, with: {out: 128, stride: 2}}
  - b3: {block: basic, with: {out: 128}}
"""


def residual_blocks(scale: str, compared: str) -> list[str]:
    model = resgraph.build(HEADER + f"scale: {scale}\n" + BASIC_BLOCKS % compared)
    return [name for name in ("b1", "b2", "b3") if "residual" in getattr(model, name).code]


@pytest.mark.parametrize("scale", ["{width: 0.5}", "{width: 0.25}", "{width: 1.5}", "{width: 0.33, divisor: 4}",
                                   "{width: 1.0, max_channels: 96}", "{width: 0.75, width_rounding: up}",
                                   "{width: 1.0}"])
def test_scaled_compares_a_scaled_input_with_a_width_parameter_in_one_currency(scale: str) -> None:
    assert residual_blocks(scale, "scaled(out)") == ["b1", "b3"]


def test_without_scaled_a_width_parameter_is_unscaled_and_the_comparison_fails() -> None:
    # Why `scaled` exists: 32 channels in (64 at width 0.5) are never equal to `out: 64`.
    assert residual_blocks("{width: 1.0}", "out") == ["b1", "b3"]
    assert residual_blocks("{width: 0.5}", "out") == []


@pytest.mark.parametrize(("scale", "expected"), [("{width: 0.5}", [32, 16, 24, 8]),
                                                 ("{width: 0.75, width_rounding: up}", [48, 16, 40, 8]),
                                                 ("{width: 1.0, max_channels: 40}", [40, 24, 40, 8]),
                                                 ("{width: 1.0}", [64, 20, 48, 3])])
def test_scaled_follows_the_scales_rounding_and_is_not_scaled_again(scale: str, expected: list[int]) -> None:
    widths = [64, 20, 48, 3]
    layers = "".join(f"  - c{i}: {{op: Conv2d, out_channels: \"${{scaled({w})}}\", kernel_size: 1}}\n"
                     for i, w in enumerate(widths))
    model = resgraph.build(HEADER + f"scale: {scale}\ninputs: {{x: [3, 4, 4]}}\nlayers:\n" + layers)
    assert [getattr(model, f"c{i}").out_channels for i in range(len(widths))] == expected
    scale_model = Scale.model_validate(resgraph.loader.load_text(f"{scale}\n", "<scale>").data)
    assert expected == [scale_model.scaled_width(w) for w in widths]


def test_scaled_in_the_specs_own_params_or_of_a_non_width_is_an_error_at_its_expression() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(HEADER + "params: {w: \"${scaled(64)}\"}\ninputs: {x: [3, 4, 4]}\n"
                                "layers:\n  - c: {op: Conv2d, out_channels: \"${w}\", kernel_size: 1}\n")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.location.line, diagnostic.location.column) == (3, 16)
    assert "which is read after the spec's own `params:`" in diagnostic.message
    blocks = resgraph.build(HEADER + "scale: {width: 0.5}\ninputs: {x: [3, 4, 4]}\nblocks:\n  b:\n"
                                     "    params: {hidden: \"${scaled(64)}\"}\n    layers:\n"
                                     "      - c: {op: Conv2d, out_channels: \"${hidden}\", kernel_size: 1}\n"
                                     "layers:\n  - one: {block: b}\n")
    assert blocks.one.c.out_channels == 32  # a block parameter's default can: scaled once
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(HEADER + "scale: {width: 0.5}\ninputs: {x: [3, 4, 4]}\nlayers:\n"
                                "  - c: {op: Conv2d, out_channels: \"${scaled(0)}\", kernel_size: 1}\n"
                                "  - d: {op: Conv2d, out_channels: \"${scaled('wide')}\", kernel_size: 1}\n")
    assert [(d.location.line, d.message) for d in caught.value.diagnostics] == [
        (6, "in ${scaled(0)}: scaled(...) failed: it takes a positive number of channels, not 0"),
        (7, "in ${scaled('wide')}: scaled(...) failed: it takes a positive number of channels, not 'wide'")]
