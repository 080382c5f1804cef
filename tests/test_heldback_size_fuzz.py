"""Held-back cases of input sizes (issue 11) found by differential fuzzing against torch: random
chains of convs, pools and skips, the sizes `valid_sizes` admits run by the compiled forward and
compared with what resgraph predicts, the sizes it refuses run with the guard bypassed."""

from __future__ import annotations

import pytest
import torch

import resgraph


def _spec(input_shape: list[int], layers: str, skips: str) -> str:
    return f"resgraph: 1\nname: Net\ninputs:\n  x: {input_shape}\nlayers:\n{layers}skips:\n{skips}"


# --- crop across a stride whose sizes fit no step -------------------------------------------------

PADDED_PAST_STRIDE = """\
  - act:  {op: ReLU}
  - down: {op: Conv2d, out_channels: 3, kernel_size: 1, stride: 3, padding: 1}
"""


@pytest.mark.parametrize("width", [16, 17])
def test_crop_refuses_a_strided_target_also_where_padding_put_its_size_off_the_stride(width: int) -> None:
    # A 1x1 stride-3 conv with padding 1 maps 28x17 to 10x7, where a stride of 3 gives 10x6: the
    # sizes fit no step, so the grids were taken for one and `crop` built a centre crop of a map
    # whose rows the stride picked 3 apart (exit 0, a misaligned sum); at 28x16 it was refused.
    spec = _spec([4, 28, width], PADDED_PAST_STRIDE, "  - s: {from: act, to: down, projection: crop}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.location.line, diagnostic.location.column) == (9, 5)
    assert "crop would misalign the grids: the target is a strided map" in diagnostic.message
    assert f"28x{width} -> 10x{(width + 1) // 3 + 1}, /3" in diagnostic.message
    assert "use projection: auto or conv" in (diagnostic.hint or "")
    if width == 17:  # the policies that follow the stride fit only sizes it explains: the hint says so
        assert "does not match a stride of 3 (which gives 10x6)" in (diagnostic.hint or "")


# --- a step chosen where the grid is unknown holds wherever it still fits --------------------------

INTO_GLOBAL_POOL = """\
  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  - pool: {op: AdaptiveAvgPool2d, output_size: 1}
"""


def test_a_skip_into_an_adaptive_pool_keeps_its_step_at_every_size_it_still_fits() -> None:
    # After an adaptive pool the grid is unknown: the projection's step is the smallest that fits at
    # the declared size (37x30 -> 1x1: a 1x1 conv of stride (37, 30)). The solver required that
    # step to stay the smallest one, so the model compiled at 37x30 admitted H = 37 and W = 30 only,
    # although its strided conv still maps every smaller size to 1x1, as torch runs it.
    spec = _spec([4, 37, 30], INTO_GLOBAL_POOL, "  - s: {from: x, to: pool}\n")
    report = resgraph.valid_sizes(spec, low=1, high=64)
    assert {dim.name: str(dim.rule) for dim in report.dims if dim.free} == {
        "H": "1 <= size <= 37", "W": "1 <= size <= 30"}
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, 4, 21, 17)
    at_that_size = resgraph.build(spec, input_shapes={"x": (4, 21, 17)}).eval()
    at_that_size.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), at_that_size(x))
        with pytest.raises(ValueError, match=r"input 'x' must be \(N, 4, H, W\) with 1 <= H <= 37"):
            model(torch.randn(2, 4, 38, 30))  # a stride of 37 maps 38 rows to 2: not the pool's 1


# --- a gate across scales is refused as such also where the sizes fit no step -----------------------

GATE_ACROSS_A_STRIDE = """\
  - pool: {op: MaxPool2d, kernel_size: 4, stride: 2}
  - conv: {op: Conv2d, out_channels: 6, kernel_size: 1, padding: 1}
"""


def test_an_auto_gate_across_a_stride_is_refused_as_across_scales_also_where_the_sizes_fit_no_step() -> None:
    # 16x14 -> 7x6 (a kernel 4 pool) -> 9x8 (a padded 1x1 conv): the maps are a stride of 2 apart, but
    # the sizes fit no step, so `auto` reported the stride and proposed input sizes (15x13, ...) at
    # which the skip then failed as a gate across scales, which `auto` never builds.
    spec = _spec([2, 16, 14], GATE_ACROSS_A_STRIDE, "  - s: {from: x, to: conv, merge: mul}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.location.line, diagnostic.location.column) == (9, 5)
    assert "on different spatial scales (16x14 vs 9x8, /2); `auto` does not mul across scales" in diagnostic.message
    assert "`projection: conv`" in (diagnostic.hint or "")
    # what that hint leads to: the stride's own error, whose input sizes then fit
    explicit = spec.replace("merge: mul}", "merge: mul, projection: conv}")
    with pytest.raises(resgraph.SpecError, match="does not match a stride of 2") as caught:
        resgraph.check(explicit)
    assert "an input size at which this skip fits: 'x' 15x13" in (caught.value.diagnostics[0].hint or "")
    resgraph.check(explicit, input_shapes={"x": (2, 15, 13)})


# --- after an adaptive pool no input size changes a skip: none is proposed ---------------------------

AFTER_AN_ADAPTIVE_POOL = """\
  - pool: {op: AdaptiveAvgPool1d, output_size: 2}
  - wide: {op: Conv1d, out_channels: 6, kernel_size: 1, padding: 2}
  - conv: {op: Conv1d, out_channels: 4, kernel_size: 3}
"""


def test_a_skip_after_an_adaptive_pool_is_not_given_input_sizes_and_is_told_the_layer_that_shrank_it() -> None:
    # The pool fixes every size after it (6 -> 4 by the unpadded kernel 3, at any input length), yet
    # the hint said "a stride floored an odd size. Fix: an input size at which this skip fits: 'x'
    # 38 (or 37, 39)", the declared length first, at which it had just failed.
    spec = _spec([1, 38], AFTER_AN_ADAPTIVE_POOL, "  - s: {from: wide, to: conv, projection: avgpool}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.location.line, diagnostic.location.column) == (10, 5)
    hint = diagnostic.hint or ""
    assert "input size" not in hint and "'x' 38" not in hint and "floored" not in hint
    assert "shrunk by 'conv' (Conv1d, kernel 3, stride 1, padding 0, dilation 1): 6 -> 4" in hint
    assert "`padding: 1` on 'conv'" in hint and "`projection: crop`" in hint
    # both fixes it proposes work
    resgraph.check(spec.replace("kernel_size: 3}", "kernel_size: 3, padding: 1}"))
    resgraph.check(spec.replace("projection: avgpool", "projection: crop"))


def test_after_an_adaptive_pool_an_odd_shrink_is_given_the_padding_and_not_a_crop() -> None:
    # 6 -> 5 by a kernel 2: a centre crop would be off-centre, so only the padding is proposed
    spec = _spec([1, 38], AFTER_AN_ADAPTIVE_POOL.replace("kernel_size: 3}", "kernel_size: 2}"),
                 "  - s: {from: wide, to: conv, projection: avgpool}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    hint = caught.value.diagnostics[0].hint or ""
    assert "shrunk by 'conv' (Conv1d, kernel 2, stride 1, padding 0, dilation 1): 6 -> 5" in hint
    assert "`padding: same` on 'conv'" in hint and "crop" not in hint and "input size" not in hint
    resgraph.check(spec.replace("kernel_size: 2}", "kernel_size: 2, padding: same}"))


# --- an unstrided layer between the strides is named, and its size kept by the fix -----------------

GROWN_BEFORE_A_STRIDE = """\
  - grow: {op: Conv1d, out_channels: 2, kernel_size: 1, padding: 1}
  - down: {op: Conv1d, out_channels: 4, kernel_size: 2, stride: 2}
"""


def test_a_layer_that_grew_the_map_before_a_stride_is_the_cause_named_and_kept_by_the_fix() -> None:
    # 40 -> 42 (a padded 1x1 conv) -> 21, where a stride of 2 gives 20: the hint said "a stride floored
    # an odd size" (42 is even) and proposed a kernel 3 on 'down' alone, which still gives 21.
    spec = _spec([1, 40], GROWN_BEFORE_A_STRIDE, "  - s: {from: x, to: down, projection: avgpool}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    hint = caught.value.diagnostics[0].hint or ""
    assert "floored" not in hint
    assert "a layer between the strides changed the size: 'grow' 40 -> 42" in hint
    assert ("make it round up as the strides do: `kernel_size: 3` and `padding: 1` on 'down', and keep the other "
            "sizes: `padding: 0` on 'grow'") in hint
    fixed = spec.replace("kernel_size: 1, padding: 1}", "kernel_size: 1, padding: 0}").replace(
        "kernel_size: 2, stride: 2}", "kernel_size: 3, stride: 2, padding: 1}")
    assert all(dim.rule.kind == "at_least" for dim in resgraph.valid_sizes(fixed).dims if dim.free)  # every size
