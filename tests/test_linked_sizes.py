"""Free dims related one-to-one by an offset or a scale (`x.L + 1 == m.L`, `x.L - 2 == y.L`,
`2 * x.L == y.L`) admit every pair of sizes that meets the relation, as torch runs them.

The specification, as these cases pin it:

- A guard `a * X + b == c * Y + d` that held at the declared sizes (integer a, c of one sign) links
  X and Y, as `pad.L == x.L` links two equal dims: they are solved together, along the integer
  solutions of the relation, and each admits the sizes it takes at some valid solution.
- The size report states each such dim's rule and its relation ('L >= 2 (equal to x.L + 1)').
- The generated forward's input guard checks each dim's rule and the relation itself, and refuses
  a pair that breaks the relation, naming the relation.
- A relation that is not one-to-one (`x.L + y.L == 10`, `x.L // 2 == y.L`) links nothing: the
  dims stay solved apart, and the report states each one's rule where the other is held at its
  declared size; the input guard checks each dim by the conditions on it alone and the relation
  itself (a mask over a strided sequence runs at every length torch runs, with the mask it needs).
"""

from __future__ import annotations

import pytest
import torch

import resgraph
from resgraph.sizes import linked_sizes, linked_symbols
from resgraph.symbolic import Guard, SymInt, requirement

HEADER = "resgraph: 1\nname: Net\n"

CLASS_TOKEN = HEADER + """inputs:
  x: [5, 8]
  m: [6, 8]
layers:
  - cls:   {op: parameter, shape: [1, 1, 8], batch: true, init: normal}
  - seq:   {op: concat, input: [cls, x], dim: 1}
  - out:   {op: add, input: [seq, m]}
"""

PADDINGS = HEADER + """inputs:
  x: [4, 7]
  y: [4, 5]
layers:
  - a: {op: Conv1d, input: x, out_channels: 4, kernel_size: 3, padding: 0}
  - b: {op: Conv1d, input: y, out_channels: 4, kernel_size: 3, padding: 1}
  - s: {op: add, input: [a, b]}
"""

UPSAMPLED = HEADER + """inputs:
  x: [4, 8]
  y: [4, 16]
layers:
  - u: {op: Upsample, input: x, scale_factor: 2}
  - c: {op: Conv1d, input: y, out_channels: 4, kernel_size: 1}
  - s: {op: add, input: [u, c]}
"""


def _class_token(model: torch.nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.cat([model.cls.expand(x.shape[0], -1, -1), x], 1) + m  # (N, L + 1, 8)


def _paddings(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model.a(x) + model.b(y)  # (N, 4, L - 2)


def _upsampled(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, scale_factor=2) + model.c(y)  # (N, 4, 2L)


# spec, hand-written forward, {dim: (rule, relation)}, sizes (per input) that meet the relation,
# sizes that break it and the message that refuses them
FORMS = {
    "class token: x.L + 1 == m.L": (
        CLASS_TOKEN, _class_token, {"x.L": ("any L", "m.L - 1"), "m.L": ("L >= 2", "x.L + 1")},
        [((2, 5, 8), (2, 6, 8)), ((3, 1, 8), (3, 2, 8)), ((1, 40, 8), (1, 41, 8))],
        [((2, 7, 8), (2, 7, 8)), r"inputs 'x', 'm' must have 1 \+ x.L == m.L"]),
    "paddings: x.L - 2 == y.L": (
        PADDINGS, _paddings, {"x.L": ("L >= 3", "y.L + 2"), "y.L": ("any L", "x.L - 2")},
        [((2, 4, 7), (2, 4, 5)), ((1, 4, 3), (1, 4, 1)), ((3, 4, 30), (3, 4, 28))],
        [((2, 4, 9), (2, 4, 9)), r"inputs 'x', 'y' must have x.L - 2 == y.L"]),
    "upsample: 2 * x.L == y.L": (
        UPSAMPLED, _upsampled, {"x.L": ("any L", "y.L / 2"), "y.L": ("L: multiples of 2", "2 * x.L")},
        [((2, 4, 8), (2, 4, 16)), ((1, 4, 1), (1, 4, 2)), ((2, 4, 13), (2, 4, 26))],
        [((2, 4, 5), (2, 4, 12)), r"inputs 'x', 'y' must have x.L \* 2 == y.L"]),
}


@pytest.mark.parametrize("form", FORMS)
def test_dims_related_by_an_offset_or_a_scale_admit_every_size_that_meets_the_relation(form: str) -> None:
    spec, _, expected, _, _ = FORMS[form]
    report = resgraph.valid_sizes(spec)
    free = {f"{dim.input}.{dim.name}": dim for dim in report.dims if dim.free}
    assert {name: (dim.rule.describe(dim.name), dim.related) for name, dim in free.items()} == {
        name: (rule, (relation,)) for name, (rule, relation) in expected.items()}
    text = report.format("Net")
    for rule, relation in expected.values():
        assert f"{rule} (equal to {relation})" in text
    assert len(report.joint) == 1  # the relation, checked by the input guard


@pytest.mark.parametrize("form", FORMS)
def test_a_model_related_by_an_offset_or_a_scale_runs_at_every_size_that_meets_it(form: str) -> None:
    spec, forward, _, sizes, _ = FORMS[form]
    model = resgraph.build(spec, seed=0).eval()
    for shapes in sizes:
        inputs = [torch.randn(shape) for shape in shapes]
        with torch.no_grad():
            torch.testing.assert_close(model(*inputs), forward(model, *inputs))


@pytest.mark.parametrize("form", FORMS)
def test_sizes_that_break_the_relation_are_refused_by_the_input_guard(form: str) -> None:
    spec, _, _, _, (shapes, message) = FORMS[form]
    model = resgraph.build(spec, seed=0).eval()
    with pytest.raises(ValueError, match=message):
        model(*(torch.randn(shape) for shape in shapes))


# torch.export's lower bounds for related dims: the smallest sizes of the relation at which no size is 1
# (which torch.export specialises), not the declared sizes (each dim was held to its partner's declared one).
EXPORT_LOWEST = {"class token: x.L + 1 == m.L": ((2, 2, 8), (2, 3, 8)),
                 "paddings: x.L - 2 == y.L": ((2, 4, 4), (2, 4, 2)),
                 "upsample: 2 * x.L == y.L": ((2, 4, 2), (2, 4, 4))}


@pytest.mark.parametrize("form", FORMS)
def test_an_exported_model_related_by_an_offset_or_a_scale_runs_from_the_smallest_sizes_that_meet_it(
        form: str) -> None:
    spec, forward, _, sizes, _ = FORMS[form]
    model = resgraph.build(spec, seed=0).eval()
    exported = torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes()).module()
    for shapes in (EXPORT_LOWEST[form], *(s for s in sizes if 1 not in s[0][1:] + s[1][1:])):
        inputs = [torch.randn(shape) for shape in shapes]
        with torch.no_grad():
            torch.testing.assert_close(exported(*inputs), forward(model, *inputs))


def test_an_odd_length_for_the_input_twice_as_long_is_refused_by_its_own_rule() -> None:
    model = resgraph.build(UPSAMPLED, seed=0).eval()
    with pytest.raises(ValueError, match=r"input 'y' must be \(N, 4, L\) with L: multiples of 2"):
        model(torch.randn(2, 4, 5), torch.randn(2, 4, 11))


def test_a_relation_with_coprime_scales_links_along_their_common_multiples() -> None:
    x, y = SymInt.symbol("x.L", 6), SymInt.symbol("y.L", 4)
    links = linked_sizes([Guard("eq", (2 * x).expr, (3 * y).expr, True, "skip")])
    assert {name: (link.scale, link.offset) for name, link in links.items()} == {"x.L": (3, 0), "y.L": (2, 0)}
    assert linked_symbols([Guard("eq", (2 * x).expr, (3 * y).expr, True, "skip")]) == {}


def test_a_relation_that_is_not_one_to_one_links_nothing() -> None:
    x, y = SymInt.symbol("x.L", 6), SymInt.symbol("y.L", 4)
    for guard in (requirement("eq", x + y, 10),  # finitely many pairs
                  requirement("eq", x // 2, y - 1),  # not one-to-one
                  requirement("eq", 2 * x, 24 - 3 * y)):  # scales of opposite signs
        assert linked_sizes([guard]) == {}, str(guard)


# --- a dim that is a strided (floor or ceil divided) size of another input's ----------------------------

STRIDED_MASK = HEADER + """inputs:
  x: [8, {length}]
  pad: {{shape: [{masked}], dtype: bool}}
layers:
{down}  - seq: {{op: transpose, dim0: 1, dim1: 2}}
  - attn: {{op: MultiheadAttention, num_heads: 2, input: [seq, seq, seq, pad], masks: [key_padding_mask]}}
"""

# the downsampling of x (to 16 channels), and the same layers in torch, whose output length the mask must have
DOWNSAMPLINGS = {
    "conv stride 2": ("  - conv: {op: Conv1d, out_channels: 16, kernel_size: 3, stride: 2, padding: 1, input: x}\n",
                      [torch.nn.Conv1d(8, 16, 3, stride=2, padding=1)]),
    "conv stride 3": ("  - conv: {op: Conv1d, out_channels: 16, kernel_size: 5, stride: 3, input: x}\n",
                      [torch.nn.Conv1d(8, 16, 5, stride=3)]),
    "max pool": ("  - conv: {op: Conv1d, out_channels: 16, kernel_size: 1, input: x}\n"
                 "  - pool: {op: MaxPool1d, kernel_size: 2, stride: 2}\n",
                 [torch.nn.Conv1d(8, 16, 1), torch.nn.MaxPool1d(2, 2)]),
    "avg pool, ceil mode": ("  - conv: {op: Conv1d, out_channels: 16, kernel_size: 1, input: x}\n"
                            "  - pool: {op: AvgPool1d, kernel_size: 3, stride: 2, ceil_mode: true}\n",
                            [torch.nn.Conv1d(8, 16, 1), torch.nn.AvgPool1d(3, 2, ceil_mode=True)]),
    "two downsamplings": ("  - c1: {op: Conv1d, out_channels: 16, kernel_size: 3, stride: 2, padding: 1, input: x}\n"
                          "  - c2: {op: Conv1d, out_channels: 16, kernel_size: 3, stride: 2, padding: 1}\n",
                          [torch.nn.Conv1d(8, 16, 3, stride=2, padding=1),
                           torch.nn.Conv1d(16, 16, 3, stride=2, padding=1)]),
}


def _downsampled(layers: list[torch.nn.Module], length: int) -> int | None:
    """The length torch's layers give x's `length` (None where they fail)."""
    x = torch.zeros(1, 8, length, device="meta")
    try:
        for layer in layers:
            x = layer.to("meta")(x)
    except RuntimeError:
        return None
    return x.shape[-1]


@pytest.mark.parametrize("form", DOWNSAMPLINGS)
def test_a_mask_over_a_strided_sequence_admits_every_length_torch_runs(form: str) -> None:
    """The mask's length is a floor (or ceil) division of x's: the guard checks that relation (`pad.L ==
    (x.L - 1) // 2 + 1`) instead of holding both inputs to their declared lengths, so the model runs at
    every x length torch runs, with the mask torch needs there, and refuses any other mask length."""
    down, layers = DOWNSAMPLINGS[form]
    spec = STRIDED_MASK.format(length=11, masked=_downsampled(layers, 11), down=down)
    model = resgraph.build(spec, seed=0).eval()
    for length in range(1, 40):
        masked = _downsampled(layers, length)
        x = torch.randn(2, 8, length)
        if masked is None:
            with pytest.raises(ValueError, match="must"):
                model(x, torch.zeros(2, 1, dtype=torch.bool))
            continue
        model(x, torch.zeros(2, masked, dtype=torch.bool))  # runs
        for wrong in (masked - 1, masked + 1):
            if wrong >= 1:
                with pytest.raises(ValueError, match=r"inputs 'x', 'pad' must have pad\.L == "):
                    model(x, torch.zeros(2, wrong, dtype=torch.bool))
    report = resgraph.valid_sizes(spec)
    assert [str(guard) for guard, _ in report.joint if guard.site == "attn"] != []  # the relation, stated
    assert "together: pad.L == " in report.format("Net")


@pytest.mark.parametrize("form", ["conv stride 2", "conv stride 3", "max pool"])
def test_an_exported_model_with_a_mask_over_a_strided_sequence_runs_at_every_length_torch_runs(form: str) -> None:
    """`dynamic_shapes()` leaves the relation (`pad.L == (x.L - 1) // 2 + 1`) to torch.export: both lengths are
    dynamic, and the exported program checks the relation. Each dim's own rule, read with the other input at
    its declared size, held x.L to 11..12 and the mask to 6. (torch.export specialises a MaxPool1d's length,
    and so the mask's with it: that model exports at its declared sizes.)"""
    down, layers = DOWNSAMPLINGS[form]
    spec = STRIDED_MASK.format(length=11, masked=_downsampled(layers, 11), down=down)
    model = resgraph.build(spec, seed=0).eval()
    exported = torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes()).module()
    for length in (11,) if form == "max pool" else (11, 12, 20, 31, 64):
        x, pad = torch.randn(2, 8, length), torch.zeros(2, _downsampled(layers, length), dtype=torch.bool)
        pad[:, -1] = True
        with torch.no_grad():
            torch.testing.assert_close(exported(x, pad), model(x, pad))
    with pytest.raises(Exception, match="pad"):  # the relation, checked by the exported program
        exported(torch.randn(2, 8, 11), torch.zeros(2, _downsampled(layers, 11) + 1, dtype=torch.bool))


def test_the_size_report_states_a_strided_relation_beside_each_dims_rule() -> None:
    spec = STRIDED_MASK.format(length=11, masked=6, down=DOWNSAMPLINGS["conv stride 2"][0])
    text = resgraph.valid_sizes(spec).format("Net")
    assert "together: pad.L == (x.L - 1) // 2 + 1, as 'attn' needs (beyond each dim's own rule)" in text
    model = resgraph.build(spec, seed=0).eval()
    model(torch.randn(2, 8, 20), torch.zeros(2, 10, dtype=torch.bool))  # the tester's case
