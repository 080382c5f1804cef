"""Held-back cases of input sizes (issue 11): torch's own size arithmetic at sizes and factors the
first tests did not try, and input guards that refuse exactly the sizes the model cannot run at."""

from __future__ import annotations

import pytest
import torch

import resgraph
from conftest import EXAMPLES


def _spec(input_shape: list[int], layers: str, *, inputs: str | None = None) -> str:
    declared = inputs if inputs is not None else f"  x: {input_shape}\n"
    return f"resgraph: 1\nname: Net\ninputs:\n{declared}layers:\n{layers}"


def _refused(model: torch.nn.Module, *inputs: torch.Tensor) -> bool:
    """Whether the model's input guard refuses the inputs (a ValueError naming the input)."""
    try:
        model(*inputs)
    except ValueError as exc:
        assert "must be" in str(exc), exc
        return True
    return False


# --- Upsample's scale_factor: torch multiplies in double precision and truncates -------------------

@pytest.mark.parametrize(("factor", "declared"), [(0.7, 90), (0.29, 100), (2.3, 50), (1.15, 100), (0.57, 300)])
def test_a_fractional_scale_factor_sizes_as_torch_does(factor: float, declared: int) -> None:
    """At these sizes size * factor is an integer in exact arithmetic, but torch's double product falls just
    short of it (90 * 0.7 = 62.99999999999999) and truncates: the size is one less than the exact one. The
    model built at that size ran into its Linear with the wrong width ('2x930 and 945x4')."""
    spec = _spec([3, declared, 8], "  - up: {op: Upsample, scale_factor: " + str(factor) + "}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 4}\n")
    model = resgraph.build(spec, seed=0)
    expected = torch.nn.Upsample(scale_factor=factor)(torch.zeros(1, 3, declared, 8)).shape[2]
    assert model.graph.nodes["up"].meta["type"].shape[1] == expected == int(declared * factor)
    assert model(torch.zeros(2, 3, declared, 8)).shape == (2, 4)
    # every other size: the guard accepts exactly those at which the upsampled height stays the same
    for size in range(1, 3 * declared):
        height = torch.nn.Upsample(scale_factor=factor)(torch.zeros(1, 3, size, 8, device="meta")).shape[2] \
            if int(size * factor) >= 1 else 0
        assert _refused(model, torch.zeros(1, 3, size, 8)) == (height != expected), size


# --- the guard's rules hold beyond the range `resgraph sizes` tries by default (1..2048) -----------

_POSITIONS = """\
inputs:
  tokens: {shape: [16], dtype: int64}
layers:
  - wte: {op: Embedding, num_embeddings: 10, embedding_dim: 4, input: tokens}
  - positions: {op: arange, input: tokens, dim: 1}
  - wpe: {op: Embedding, num_embeddings: %d, embedding_dim: 4}
  - embedded: {op: add, input: [wte, wpe]}
"""


def test_a_position_table_longer_than_the_default_range_bounds_the_guard() -> None:
    """The solver tried 1..2048, found every length valid and stated 'any L': a model with a 3,000-row
    position table took 3,001 tokens past its guard and failed in the embedding ('index out of range')."""
    spec = "resgraph: 1\nname: Net\n" + _POSITIONS % 3000
    model = resgraph.build(spec, seed=0)
    assert model(torch.zeros(1, 3000, dtype=torch.long)).shape == (1, 3000, 4)
    assert _refused(model, torch.zeros(1, 3001, dtype=torch.long))
    with pytest.raises(IndexError):  # what the guard spares the caller: torch at 3,001 without it
        torch.nn.Embedding(3000, 4)(torch.arange(3001))
    (length,) = resgraph.valid_sizes(spec).dims
    assert length.rule.describe("L") == "1 <= L <= 3000"
    assert length.valid == tuple(range(1, 2049))  # the sizes listed stay those of the range asked for
    assert model.dynamic_shapes()[0][1].max == 3000


def test_a_model_declared_past_the_default_range_accepts_its_declared_input() -> None:
    """16,000 audio samples into a Flatten and a Linear: no size in 1..2048 fits, so the rule was 'no L
    works' and the model refused its own declared input."""
    spec = _spec([1, 16000], "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 4, stride: 4}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 3}\n")
    model = resgraph.build(spec, seed=0)
    assert model(torch.zeros(2, 1, 16000)).shape == (2, 3)
    for length in range(15990, 16010):  # exactly where torch's conv gives the Linear its 2 * 4000 features
        fits = 2 * torch.nn.Conv1d(1, 2, 4, 4)(torch.zeros(1, 1, length, device="meta")).shape[2] == 8000
        assert _refused(model, torch.zeros(1, 1, length)) == (not fits), length
    (_, samples) = resgraph.valid_sizes(spec).dims
    assert samples.rule.describe("L") == "16000 <= L <= 16003"


def test_a_bounded_progression_is_checked_whole_not_by_its_smallest_size() -> None:
    """Multiples of 4 up to a 1,000-row position table: 250 sizes made a 'set' that the guard checked only
    by its smallest member, so 17 tokens (not a multiple of 4) and 1,004 (past the table) went through to
    torch's errors inside the forward."""
    spec = ("resgraph: 1\nname: Net\n" + _POSITIONS % 1000
            + "  - t: {op: transpose, dim0: 1, dim1: 2}\n"
              "  - down: {op: Conv1d, out_channels: 4, kernel_size: 4, stride: 4}\n"
              "  - up: {op: ConvTranspose1d, out_channels: 4, kernel_size: 4, stride: 4}\n"
              "  - sum: {op: add, input: [t, up]}\n")
    model = resgraph.build(spec, seed=0)
    for length in (1, 3, 5, 15, 17, 998, 1001, 1004, 2048):
        assert _refused(model, torch.zeros(1, length, dtype=torch.long)), length
    for length in (4, 16, 996, 1000):
        assert model(torch.zeros(1, length, dtype=torch.long)).shape == (1, 4, length)
    (length_dim,) = resgraph.valid_sizes(spec).dims
    assert length_dim.rule.describe("L") == "L: multiples of 4 up to 1000"
    with pytest.raises(ValueError, match="multiples of 4 up to 1000"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_sizes_of_two_residues_are_a_periodic_rule_the_guard_checks_exactly() -> None:
    """Two branches that round differently (kernel 3 padding 1, and kernel 2, both stride 3) agree
    unless H % 3 == 1: valid sizes 2, 3, 5, 6, 8, ... made a 'set' whose guard checked only the smallest,
    so 4 went through to torch's 'Sizes of tensors must match' in the concat."""
    spec = _spec([3, 30, 8], "  - a: {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 3, padding: 1, input: x}\n"
                 "  - b: {op: Conv2d, out_channels: 4, kernel_size: 2, stride: 3, input: x}\n"
                 "  - cat: {op: concat, input: [a, b], dim: 1}\n")
    model = resgraph.build(spec, seed=0)
    a, b = torch.nn.Conv2d(3, 4, 3, 3, 1), torch.nn.Conv2d(3, 4, 2, 3)
    for height in [*range(1, 40), 2047, 2048, 2049, 2050, 4000, 4001]:
        x = torch.zeros(1, 3, height, 8, device="meta")
        fits = height >= 2 and a(x).shape == b(x).shape
        assert _refused(model, torch.zeros(1, 3, height, 8)) == (not fits), height
    height_dim = resgraph.valid_sizes(spec).dims[1]
    assert height_dim.rule.describe("H") == "H in {2, 3} + 3k"


# --- conditions on several free dims at once ------------------------------------------------------

def test_a_condition_on_two_dims_together_is_checked_by_the_guard() -> None:
    """Row and column means concatenated into a kernel of 10 need H + W >= 10. Each dim's rule is solved
    with the other at its declared 8, so the rules were H >= 2 and W >= 2: a 2x2 input passed the guard
    and failed in torch's Conv1d ('Kernel size can't be greater than actual input size')."""
    spec = _spec([1, 8, 8], "  - a: {op: mean, dim: 3, input: x}\n  - b: {op: mean, dim: 2, input: x}\n"
                 "  - cat: {op: concat, input: [a, b], dim: 2}\n"
                 "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 10}\n")
    model = resgraph.build(spec, seed=0)
    conv = torch.nn.Conv1d(1, 2, 10)
    for height in range(1, 12):
        for width in range(1, 12):
            x = torch.zeros(1, 1, height, width)
            try:  # the same torch modules, by hand
                conv(torch.cat([x.mean(3), x.mean(2)], 2))
                fits = True
            except RuntimeError:
                fits = False
            # refused where torch fails; accepted where it runs and each size meets its own rule (H >= 2 is the
            # rule at the declared W = 8: a 1x9 input runs, but the guard keeps to each dim's rule)
            assert _refused(model, x) == (not fits or height < 2 or width < 2), (height, width)
    with pytest.raises(ValueError, match=r"input 'x' must be \(N, 1, H, W\) with H \+ W - 9 >= 1, as 'conv' needs"):
        model(torch.zeros(1, 1, 2, 2))
    report = resgraph.valid_sizes(spec)
    assert [dim.rule.describe(dim.name) for dim in report.dims if dim.free] == ["H >= 2", "W >= 2"]
    assert "together: x.H + x.W - 9 >= 1, as 'conv' needs" in report.format("spec")
    assert report.to_dict()["together"] == [{"condition": "x.H + x.W - 9 >= 1", "at": "conv"}]


def test_a_condition_on_two_inputs_together_names_both() -> None:
    spec = _spec([], "  - cat: {op: concat, input: [x, y], dim: 2}\n"
                 "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 10}\n",
                 inputs="  x: {shape: [1, 8], layout: channels_first}\n  y: {shape: [1, 8], layout: channels_first}\n")
    model = resgraph.build(spec, seed=0)
    assert model(torch.zeros(1, 1, 2), torch.zeros(1, 1, 8)).shape == (1, 2, 1)
    with pytest.raises(ValueError, match=r"inputs 'x', 'y' must have x.L \+ y.L - 9 >= 1, as 'conv' needs.*"
                                         r"got \(1, 1, 2\), \(1, 1, 3\)"):
        model(torch.zeros(1, 1, 2), torch.zeros(1, 1, 3))
    assert "(x.shape[2] + y.shape[2] - 9 < 1)" in resgraph.to_python(model)  # the standalone .py checks it too


def test_conditions_the_rules_imply_add_no_check() -> None:
    """ViT-B/16's patch count (H // 16) * (W // 16) == 196 reads H and W together, but holds at every pair
    of sizes in 224..239: its forward checks the two ranges only."""
    model = resgraph.build(EXAMPLES / "vit_b_16.yaml", device="meta")
    assert model.graph.meta["sizes"].joint == ()
    assert model.code.count("raise ValueError") == 1


# --- hints that name the real cause ------------------------------------------------------------------

def _hint(spec: str) -> str:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    return diagnostic.hint or ""


def test_a_pool_that_rounded_up_past_its_stride_is_named_and_ceil_mode_is_the_fix() -> None:
    """A padded pool with ceil_mode gives 8 -> 5 where a stride of 2 gives 4: the target is larger than the
    skip's stride gives. The hint said 'a stride floored an odd size' and proposed `ceil_mode: true`, which
    the pool already had; and, the input not being square, it proposed no input size."""
    spec = _spec([3, 15, 22], "  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}\n"
                 "  - p: {op: MaxPool2d, kernel_size: 3, stride: 2, padding: 1, ceil_mode: true}\n"
                 "  - c2: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 2, dilation: 2}\n"
                 "skips:\n  - short: {from: x, to: c2, projection: pad}\n")
    assert _hint(spec) == (
        "'c1' (Conv2d, kernel 3, stride 2, padding 1, dilation 1): 15x22 -> 8x11; 'p' (MaxPool2d, kernel 3, "
        "stride 2, padding 1, dilation 1, ceil_mode): 8x11 -> 5x6: a layer rounded up past its stride: 'p' gave "
        "5x6 where a stride of 2 gives 4x6. Fix: an input size at which this skip fits: 'x' 14x22 (or 13x22, "
        "17x22); or drop `ceil_mode: true` on 'p'")
    for shape in ([3, 14, 22], [3, 13, 22], [3, 17, 22]):  # the sizes proposed fit, and so does the fix
        resgraph.check(spec.replace("[3, 15, 22]", str(shape)))
    resgraph.check(spec.replace(", ceil_mode: true", ""))


def test_a_conv_padded_past_its_stride_is_given_the_padding_that_rounds_as_the_stride() -> None:
    spec = _spec([3, 16, 16], "  - c: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 2}\n"
                 "skips:\n  - short: {from: x, to: c}\n")
    assert _hint(spec).endswith("a layer rounded up past its stride: 'c' gave 9x9 where a stride of 2 gives 8x8. "
                                "Fix: `padding: 1` on 'c', which rounds as its stride does")
    resgraph.check(spec.replace("padding: 2", "padding: 1"))


def test_sizes_that_follow_no_pattern_are_checked_where_solved_and_admitted_past_it() -> None:
    # Two branches strided by 512 agree at H % 512 in {0, 2..511} (a period past the 256 searched):
    # the valid sizes, listed, say nothing of the sizes past them; 3000 and 4096 run in torch, and
    # a guard holding the list refused them.
    model = resgraph.build("""resgraph: 1
name: Strided
inputs: {x: [3, 1024, 8]}
layers:
  - a: {op: Conv2d, out_channels: 4, kernel_size: 1, stride: [512, 1], input: x}
  - b: {op: Conv2d, out_channels: 4, kernel_size: [2, 1], stride: [512, 1], input: x}
  - c: {op: concat, input: [a, b], dim: 1}
""")
    rule = model.graph.meta["sizes"].of("x")[1].rule
    assert rule.kind == "set" and rule.describe("H").endswith(f", or H > {rule.stop} (not solved there)")
    for height in (1024, 1536, 3000, 4096):
        assert model(torch.zeros(1, 3, height, 8)).shape == (1, 8, (height - 1) // 512 + 1, 8)
    with pytest.raises(ValueError, match="must be"):  # torch's concat would fail: 3 rows against 2
        model(torch.zeros(1, 3, 1025, 8))


# --- sizes past what the solver tries at once (2^20), and arithmetic past int64 ------------------------

def test_a_model_declared_past_two_to_the_twenty_accepts_its_declared_input() -> None:
    """2,000,000 samples: the rule was solved over 1..2^20 only, found no size and said 'no L works', so the
    model refused its own declared input. The sizes around the declared one are solved, and the gaps between
    the windows solved take the rule their edges agree on."""
    spec = _spec([1, 2000000], "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 4, stride: 4}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 3}\n")
    (_, samples) = resgraph.valid_sizes(spec).dims
    assert samples.rule.describe("L") == "2000000 <= L <= 2000003"
    model = resgraph.build(spec, seed=0)
    assert model(torch.zeros(1, 1, 2000000)).shape == (1, 3)
    for length in (1999999, 2000004, 1000000, 2048):
        assert _refused(model, torch.zeros(1, 1, length)), length


def test_a_position_table_of_two_to_the_twenty_rows_bounds_the_guard() -> None:
    """A table of 2^20 rows: the solve stopped at 2^20 with every size valid and stated 'any L', so
    2^20 + 1 tokens passed the guard and hit IndexError inside the embedding."""
    spec = "resgraph: 1\nname: Net\n" + _POSITIONS % 2**20
    (length,) = resgraph.valid_sizes(spec).dims
    assert length.rule.describe("L") == "1 <= L <= 1048576"
    model = resgraph.build(spec, device="meta")
    assert _refused(model, torch.zeros(1, 2**20 + 1, dtype=torch.long, device="meta"))
    assert not _refused(model, torch.zeros(1, 2**20, dtype=torch.long, device="meta"))


def test_sizes_whose_arithmetic_passes_int64_are_invalid_not_wrapped_round() -> None:
    """A transposed conv of stride 2^60 on a length declared 1: at 17, (17 - 1) * 2^60 wrapped round to 0 in
    int64, the same as at 1, so `resgraph sizes` said 'L in {1 + 16k}'; no such input can run."""
    spec = _spec([], "  - up: {op: ConvTranspose1d, out_channels: 1, kernel_size: 1, stride: 1152921504606846976}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 2}\n",
                 inputs="  x: {shape: [1, 1], layout: channels_first}\n")
    report = resgraph.valid_sizes(spec, low=1, high=64)
    (_, length) = report.dims
    assert length.rule.describe("L") == "L = 1" and length.valid == (1,)
    assert length.failures[17] == "up"  # where the size first passes 2^62


def test_a_progression_past_two_to_the_twenty_is_checked_whole() -> None:
    """Down by 4 and up again, added to the input, declared at 2,000,000 samples: multiples of 4. The
    solve stopped at 2^20 short of the declared size; the rule holds in every window solved, and on."""
    spec = _spec([], "  - down: {op: Conv1d, out_channels: 1, kernel_size: 4, stride: 4}\n"
                 "  - up: {op: ConvTranspose1d, out_channels: 1, kernel_size: 4, stride: 4}\n"
                 "  - s: {op: add, input: [x, up]}\n", inputs="  x: {shape: [1, 2000000], layout: channels_first}\n")
    (_, samples) = resgraph.valid_sizes(spec).dims
    assert samples.rule.describe("L") == "L: multiples of 4"
    model = resgraph.build(spec, device="meta")
    assert not _refused(model, torch.zeros(1, 1, 2000000, device="meta"))
    assert _refused(model, torch.zeros(1, 1, 2000001, device="meta"))


def test_a_progression_bounded_by_a_table_past_two_to_the_twenty_keeps_its_bound() -> None:
    spec = ("resgraph: 1\nname: Net\n" + _POSITIONS % 3000001
            + "  - t: {op: transpose, dim0: 1, dim1: 2}\n"
              "  - down: {op: Conv1d, out_channels: 4, kernel_size: 4, stride: 4}\n"
              "  - up: {op: ConvTranspose1d, out_channels: 4, kernel_size: 4, stride: 4}\n"
              "  - sum: {op: add, input: [t, up]}\n")
    (length,) = resgraph.valid_sizes(spec).dims
    assert length.rule.describe("L") == "L: multiples of 4 up to 3000000"
    assert not length.rule.holds(3000004) and length.rule.holds(3000000) and not length.rule.holds(2999999)


def test_two_inputs_declared_past_two_to_the_twenty_are_solved_together() -> None:
    spec = _spec([], "  - s: {op: add, input: [x, y]}\n"
                 "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 4, stride: 4}\n"
                 "  - flat: {op: Flatten}\n  - fc: {op: Linear, out_features: 3}\n",
                 inputs="  x: {shape: [1, 2000000], layout: channels_first}\n"
                        "  y: {shape: [1, 2000000], layout: channels_first}\n")
    report = resgraph.valid_sizes(spec)
    assert [dim.rule.describe("L") for dim in report.dims if dim.free] == ["2000000 <= L <= 2000003"] * 2
    model = resgraph.build(spec, device="meta")
    x = torch.zeros(1, 1, 2000000, device="meta")
    assert not _refused(model, x, x)
    assert _refused(model, x, torch.zeros(1, 1, 2000001, device="meta"))


def test_sizes_of_two_residues_past_two_to_the_twenty_stay_a_periodic_rule() -> None:
    spec = _spec([3, 2000000, 8], "  - a: {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 3, padding: 1}\n"
                 "  - b: {op: Conv2d, out_channels: 4, kernel_size: 2, stride: 3, input: x}\n"
                 "  - cat: {op: concat, input: [a, b], dim: 1}\n")
    height = resgraph.valid_sizes(spec).dims[1]
    assert height.rule.describe("H") == "H in {2, 3} + 3k"


def test_dynamic_shapes_of_a_model_declared_at_billions_of_samples_are_found_in_chunks() -> None:
    """The smallest size without ones was searched over every size up to the declared 4e9 at once: a
    MemoryError asking for 30 GiB."""
    spec = _spec([], "  - conv: {op: Conv1d, out_channels: 2, kernel_size: 4, stride: 4}\n",
                 inputs="  x: {shape: [1, 4000000000], layout: channels_first}\n")
    model = resgraph.build(spec, device="meta")
    (shapes,) = model.dynamic_shapes()
    assert shapes[2].min == 8  # the output is 2 long at 8 samples, 1 below


@pytest.mark.parametrize("rows", [3000, 3000000])
def test_sizes_of_two_residues_up_to_a_position_table_are_a_bounded_periodic_rule(rows: int) -> None:
    """Two strided branches (valid L in {2, 3} + 3k) after a position table: the pattern stops at the table's
    last row. It made a 'set' listing every size up to the table and admitting every size past the solve
    ('or L > 6002'), so 6,003 tokens passed the guard to IndexError; past 2^20 rows, the same from 2,108 on."""
    spec = ("resgraph: 1\nname: Net\n" + _POSITIONS.replace("[16]", "[30]") % rows
            + "  - t: {op: transpose, dim0: 1, dim1: 2}\n"
              "  - a: {op: Conv1d, out_channels: 4, kernel_size: 3, stride: 3, padding: 1, input: t}\n"
              "  - b: {op: Conv1d, out_channels: 4, kernel_size: 2, stride: 3, input: t}\n"
              "  - cat: {op: concat, input: [a, b], dim: 1}\n")
    (length,) = resgraph.valid_sizes(spec).dims
    assert length.rule.describe("L") == f"L in {{2, 3}} + 3k up to {rows}"
    model = resgraph.build(spec, device="meta")
    for size in (4, rows + 2, 2 * rows + 3, 2 * rows + 5):
        assert _refused(model, torch.zeros(1, size, dtype=torch.long, device="meta")), size
    for size in (2, 5, rows - 1, rows):
        assert not _refused(model, torch.zeros(1, size, dtype=torch.long, device="meta")), size


# --- a mul skip whose strided target is 1x1 at the declared size -------------------------------------

def _gated(size: int, projection: str) -> str:
    return _spec([8, size, size], "  - a: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
                 "  - b: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}\n"
                 "  - c: {op: Conv2d, out_channels: 4, kernel_size: 1}\n"
                 f"skips:\n  - g: {{from: a, to: b, merge: mul, projection: {projection}}}\n")


@pytest.mark.parametrize("size", [2, 3, 16])
def test_a_gate_into_a_target_that_is_1x1_only_at_the_declared_size_is_projected_as_at_any_size(size: int) -> None:
    """Declared at 2, 'b' is (8, 1, 1): the skip broadcast the 2x2 gate up instead of projecting it, so the
    model had no projection, its merge came out 2x2 (declared at 16, 1x1 at input 2), and it ran at 1 and 2 only."""
    model = resgraph.build(_gated(size, "conv"), seed=0)
    reference = resgraph.build(_gated(16, "conv"), seed=0)
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in reference.named_parameters()]
    assert "g.0.weight" in dict(model.named_parameters())  # the strided 1x1 conv
    model.load_state_dict(reference.state_dict())
    for run in (1, 2, 3, 5, 16):
        x = torch.randn(2, 8, run, run)
        assert model(x).shape == (2, 4, (run + 1) // 2, (run + 1) // 2)
        torch.testing.assert_close(model(x), reference(x))
    assert resgraph.valid_sizes(_gated(size, "conv"), low=1, high=64).dims[1].rule.kind == "at_least"


def test_auto_refuses_that_gate_across_scales_at_the_size_where_it_would_broadcast() -> None:
    """Declared at 16, `auto` refuses a mul across scales; declared at 2 it silently broadcast the target up."""
    with pytest.raises(resgraph.SpecError, match=r"skip 'g': cannot mul 'a' \(8, 2, 2\) into 'b' \(8, 1, 1\): the "
                                                 r"source and target are on different spatial scales"):
        resgraph.check(_gated(2, "auto"))


def test_a_gate_into_a_written_1x1_target_still_broadcasts() -> None:
    """A target that is 1x1 at every size (a global pool) is no size decision: the gate broadcasts over it."""
    spec = _spec([8, 6, 6], "  - a: {op: Conv2d, out_channels: 8, kernel_size: 1}\n"
                 "  - p: {op: AdaptiveAvgPool2d, output_size: 1}\n"
                 "skips:\n  - g: {from: a, to: p, merge: mul}\n")
    model = resgraph.build(spec, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 8 * 8 + 8
    x = torch.randn(2, 8, 5, 7)
    a = model.a(x)
    torch.testing.assert_close(model(x), a * a.mean(dim=(2, 3), keepdim=True))
