"""Stage 5b, solve sizes: every input size a checked model admits, from the decisions inference recorded.

The specification:

- a size is valid exactly where every decision `infer_shapes` made at the declared size comes out
  the same (the same model, the same weights): checked here against inference run again at each
  size, on hand-built graphs;
- each free dim's valid sizes in the range searched are stated by the simplest rule: "fixed" (one
  value), "at_least" (start and up; `any L` from 1), "range" (start..stop), "progression"
  (start + step*k, unbounded; `multiples of` when start == step), "set" (listed values) or
  "none"; channels and features are "fixed" at their declared size and not free;
- square inputs are also solved with all free dims equal; `failures=True` names, for each
  invalid size, the node of the first decision that fails there;
- a rule's `holds`, `describe` and `violation` (the input guard's condition) agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy
import pytest

from resgraph.errors import SpecError
from resgraph.graph import Graph, GraphBuilder
from resgraph.shapes import infer_shapes
from resgraph.sizes import SizeRule, smallest_without_ones, solve_sizes, valid_sizes_mask
from resgraph.symbolic import SymInt, requirement


def merge(builder: GraphBuilder, name: str, op: str, inputs: list[str]) -> str:
    return builder.layer(name, op, inputs, input=inputs)


# Each builder takes the free dim's size and builds x (2, L) -> ... (channels first).

def fixed(size: int) -> GraphBuilder:
    """Flatten -> Linear: the Linear's in_features fixes L."""
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("flat", "Flatten")
    b.layer("fc", "Linear", out_features=3)
    return b


def any_size(size: int) -> GraphBuilder:
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("conv", "Conv1d", out_channels=4, kernel_size=1)
    return b


def at_least(size: int) -> GraphBuilder:
    """A kernel-3 stride-2 conv needs L >= 3; its output is at least 1 from there."""
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("conv", "Conv1d", out_channels=4, kernel_size=3, stride=2)
    return b


def bounded(size: int) -> GraphBuilder:
    """A stride-4 conv meets a learned (2, 2) tensor: (L - 4) // 4 + 1 == 2, so 8 <= L <= 11."""
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("conv", "Conv1d", out_channels=2, kernel_size=4, stride=4)
    b.layer("pos", "parameter", shape=[2, 2])
    merge(b, "out", "add", ["conv", "pos"])
    return b


def multiples(size: int) -> GraphBuilder:
    """pool /2 then upsample x2 gives 2 * (L // 2), added to x: L even."""
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("pool", "MaxPool1d", kernel_size=2)
    b.layer("up", "Upsample", scale_factor=2)
    b.skip("s", "x", "up")
    return b


def progression(size: int) -> GraphBuilder:
    """As `multiples`, after an unpadded kernel-3 conv: L - 2 even and the pool's output at least 1."""
    b = GraphBuilder("Net")
    b.input("x", [2, size], layout="channels_first")
    b.layer("conv", "Conv1d", out_channels=2, kernel_size=3)
    b.layer("pool", "MaxPool1d", kernel_size=2)
    b.layer("up", "Upsample", scale_factor=2)
    b.skip("s", "conv", "up")
    return b


def listed(size: int) -> GraphBuilder:
    """`multiples` and `bounded` together: L even and 8 <= L <= 11."""
    b = multiples(size)
    b.layer("conv", "Conv1d", out_channels=2, kernel_size=4, stride=4)
    b.layer("pos", "parameter", shape=[2, 2])
    merge(b, "out", "add", ["conv", "pos"])
    return b


# (builder, declared L, range searched, rule kind, its description, the valid sizes)
RULES: dict[str, tuple[Callable[[int], GraphBuilder], int, tuple[int, int], str, str, list[int]]] = {
    "fixed": (fixed, 6, (1, 40), "fixed", "L = 6", [6]),
    "any": (any_size, 6, (1, 40), "at_least", "any L", list(range(1, 41))),
    "at_least": (at_least, 6, (1, 40), "at_least", "L >= 3", list(range(3, 41))),
    "range": (bounded, 8, (1, 40), "range", "8 <= L <= 11", [8, 9, 10, 11]),
    "multiples": (multiples, 8, (1, 40), "progression", "L: multiples of 2", list(range(2, 41, 2))),
    "progression": (progression, 8, (1, 40), "progression", "L in {4 + 2k}", list(range(4, 41, 2))),
    "set": (listed, 8, (1, 40), "set", "L in {8, 10}", [8, 10]),
    # The range searched may exclude every valid size (here the declared one too): none is listed, but the
    # rule is solved past the range, so it still states them (the input guard checks it).
    "none": (at_least, 6, (1, 2), "at_least", "L >= 3", []),
}


def solved(name: str) -> tuple[Graph, list]:
    build, declared, (low, high), *_ = RULES[name]
    graph = infer_shapes(build(declared).build())
    return graph, solve_sizes(graph, low=low, high=high).dims


@pytest.mark.parametrize("name", list(RULES))
def test_each_free_dim_gets_the_simplest_rule_for_its_valid_sizes(name: str) -> None:
    _, declared, _, kind, text, valid = RULES[name]
    channels, length = solved(name)[1]
    assert (channels.name, channels.free, channels.rule, channels.declared) == ("C", False, SizeRule("fixed", 2), 2)
    assert (length.input, length.axis, length.name, length.declared, length.free) == ("x", 1, "L", declared, True)
    assert length.rule.kind == kind and length.rule.describe("L") == text and list(length.valid) == valid
    assert length.smallest == (valid[0] if valid else None)


def decisions(build: Callable[[int], GraphBuilder], size: int) -> list[str] | None:
    """The decisions inference makes with L declared as `size` (None where it fails)."""
    try:
        graph = infer_shapes(build(size).build())
    except SpecError:
        return None
    return [f"{guard} at {guard.site}" for guard in graph.meta["guards"]]


@pytest.mark.parametrize("name", [name for name in RULES if name != "none"])
def test_a_size_is_valid_exactly_where_inference_there_makes_the_same_decisions(name: str) -> None:
    build, declared, (low, high), *_ = RULES[name]
    reference = decisions(build, declared)
    assert reference is not None
    same = [size for size in range(low, high + 1) if decisions(build, size) == reference]
    assert same == list(solved(name)[1][1].valid)


def test_the_rules_bounds_are_those_of_the_range_searched() -> None:
    # 2 <= L <= 20 only: multiples of 2 up to the end of that range are still an unbounded progression,
    # and L >= 3 from 3 to 20 is still "at least".
    graph = infer_shapes(multiples(8).build())
    (_, length) = solve_sizes(graph, low=2, high=20).dims
    assert length.rule == SizeRule("progression", 2, 2) and length.valid == tuple(range(2, 21, 2))
    (_, length) = solve_sizes(infer_shapes(at_least(6).build()), low=1, high=20).dims
    assert length.rule == SizeRule("at_least", 3) and length.valid[-1] == 20


def test_invalid_sizes_name_the_first_node_whose_decision_fails_there() -> None:
    graph = infer_shapes(progression(8).build())
    (_, length) = solve_sizes(graph, low=1, high=9, failures=True).dims
    # L < 3: the conv's output would be under 1; L = 3: the pool's; odd L: the skip's sizes differ.
    assert length.failures == {1: "conv", 2: "conv", 3: "pool", 5: "s", 7: "s", 9: "s"}
    assert solve_sizes(graph, low=1, high=9).dims[1].failures == {}  # only when asked
    assert length.nearest() == [8, 6, 4] and length.nearest(1) == [8]


def square(size_h: int, size_w: int) -> GraphBuilder:
    """A 2-D map transposed (H <-> W) and added to itself: valid only where H == W."""
    b = GraphBuilder("Net")
    b.input("x", [2, size_h, size_w])
    b.layer("pool", "MaxPool2d", kernel_size=2)
    b.layer("swap", "transpose", dim0=2, dim1=3)
    merge(b, "sum", "add", ["pool", "swap"])
    return b


def test_square_inputs_are_solved_with_every_free_dim_equal() -> None:
    report = solve_sizes(infer_shapes(square(8, 8).build()), low=1, high=30)
    channels, height, width = report.of("x")
    assert not channels.free and height.name == "H" and width.name == "W"
    # One dim at a time (the other at 8): H // 2 == W // 2 == 4 pins each to 8 or 9.
    assert height.rule == width.rule == SizeRule("range", 8, 1, 9)
    assert report.square["x"] == SizeRule("at_least", 2) and report.square_valid["x"] == tuple(range(2, 31))


def test_the_report_as_text_and_as_data() -> None:
    graph = infer_shapes(multiples(8).build())
    report = solve_sizes(graph, low=1, high=20, failures=True)
    assert report.format("net.yaml") == (
        "net.yaml: input sizes tried per free dim: 1..20 (others at their declared size)\n"
        "x: (N, 2, L), declared (N, 2, 8)\n"
        "  C = 2 (fixed by the layers' parameters)\n"
        "  L: multiples of 2: 2 (smallest), 4, 6, 8 (declared), ..., 20 (10 sizes)\n"
        "    invalid, e.g. 7 (fails at 's'), 9 (fails at 's')")
    assert report.to_dict() == {"range": [1, 20], "inputs": {"x": {"dims": [
        {"name": "C", "axis": 0, "declared": 2, "free": False, "rule": "C = 2", "smallest": 2, "valid": [],
         "failures": {}},
        {"name": "L", "axis": 1, "declared": 8, "free": True, "rule": "L: multiples of 2", "smallest": 2,
         "valid": list(range(2, 21, 2)), "failures": {"1": "pool", **{str(n): "s" for n in range(3, 20, 2)}}},
    ]}}}


def test_sequences_and_token_ids_have_free_leading_dims() -> None:
    b = GraphBuilder("Net")
    b.input("tokens", [6], dtype="int64")
    b.input("seq", [5, 4])
    b.layer("embed", "Embedding", "tokens", num_embeddings=10, embedding_dim=4)
    b.layer("fc", "Linear", "seq", out_features=3)
    report = solve_sizes(infer_shapes(b.build()), low=1, high=10)
    assert [(d.input, d.name, d.free, d.rule.describe(d.name)) for d in report.dims] == [
        ("tokens", "L", True, "any L"), ("seq", "L", True, "any L"), ("seq", "F", False, "F = 4")]


def test_smallest_without_ones_keeps_every_size_that_depends_on_the_symbol_at_2_or_more() -> None:
    # multiples of 2 from 2, but at L = 2 the pool's output is 1 (which torch.export treats as broadcasting).
    graph = infer_shapes(multiples(8).build())
    assert smallest_without_ones(graph, "x.L", 1) == 4
    assert smallest_without_ones(graph, "x.L", 5) == 6


def test_valid_sizes_mask_evaluates_guards_for_the_varying_symbols_only() -> None:
    h, w = SymInt.symbol("x.H", 8), SymInt.symbol("x.W", 8)
    guards = [requirement("ge", h, 3), requirement("eq", h % 2, 0), requirement("le", w, 4)]  # w fails at 8
    symbols = {"x.H": ("x", 1, 8), "x.W": ("x", 2, 8)}
    valid, first = valid_sizes_mask(guards, symbols, {"x.H"}, 1, 8, failures=True)
    assert valid.tolist() == [False, False, False, True, False, True, False, True]  # W's guard is not evaluated
    assert first.tolist() == [0, 0, 1, -1, 1, -1, 1, -1]
    valid, first = valid_sizes_mask(guards, symbols, {"x.W"}, 1, 8)
    assert valid.tolist() == [True] * 4 + [False] * 4 and first.tolist() == [-1] * 8  # failures: not computed


# --- the rules themselves ----------------------------------------------------------------------------------------

RULE_TEXTS = [
    (SizeRule("fixed", 5), "H = 5", "n != 5"),
    (SizeRule("at_least", 1), "any H", None),
    (SizeRule("at_least", 33), "H >= 33", "n < 33"),
    (SizeRule("range", 224, 1, 239), "224 <= H <= 239", "not 224 <= n <= 239"),
    (SizeRule("progression", 32, 32), "H: multiples of 32", "n < 32 or n % 32 != 0"),  # (0 is no size)
    (SizeRule("progression", 188, 16), "H in {188 + 16k}", "n < 188 or (n - 188) % 16 != 0"),
    (SizeRule("progression", 4, 4, 1000), "H: multiples of 4 up to 1000", "n < 4 or n % 4 != 0 or n > 1000"),
    (SizeRule("progression", 6, 4, 1002), "H in {6 + 4k} up to 1002", "n < 6 or n > 1002 or (n - 6) % 4 != 0"),
    (SizeRule("periodic", 2, 3, values=(0, 1)), "H in {2, 3} + 3k", "n < 2 or (n - 2) % 3 not in {0, 1}"),
    # a set is checked by membership in a set display (Python makes it a frozenset constant)
    (SizeRule("set", 8, values=(8, 10, 13)), "H in {8, 10, 13}", "n not in {8, 10, 13}"),
    (SizeRule("set", 1, values=tuple(range(1, 40, 3))), "H in {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, ...}",
     "n not in {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37}"),
    # more than 64 sizes: every one is checked (was only the smallest: the sizes between them got through)
    (SizeRule("set", 1, values=tuple(range(1, 400, 3))), "H in {1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, ...}",
     "n not in {" + ", ".join(map(str, range(1, 400, 3))) + "}"),
    (SizeRule("none"), "no H works", "True"),
]


@pytest.mark.parametrize(("rule", "text", "violation"), RULE_TEXTS, ids=[r[1] for r in RULE_TEXTS])
def test_a_rule_describes_itself_and_writes_its_guard_condition(rule: SizeRule, text: str,
                                                                violation: str | None) -> None:
    assert rule.describe("H") == text and rule.violation("n") == violation and str(rule) == rule.describe("size")
    if violation is not None:  # the guard refuses exactly the sizes the rule does not hold, an empty dim's 0 too
        assert [eval(violation, {}, {"n": n}) for n in range(0, 60)] == [not rule.holds(n) for n in range(0, 60)]


PRECISE = [rule for rule, _, _ in RULE_TEXTS if rule.kind != "set" or len(rule.values) <= 64]


@pytest.mark.parametrize("rule", [
    *PRECISE,
], ids=lambda rule: rule.describe("H"))
def test_the_guard_condition_refuses_exactly_the_sizes_the_rule_refuses(rule: SizeRule) -> None:
    sizes = numpy.arange(1, 300)
    condition = rule.violation("n")
    refused = [bool(eval(condition, {}, {"n": int(n)})) if condition else False  # noqa: S307 (resgraph's own text)
               for n in sizes]
    assert refused == [not rule.holds(int(n)) for n in sizes]


def test_windows_whose_valid_sizes_are_two_runs_state_no_range() -> None:
    # Valid on 1..100 in the first window and on the last half (and more) of a far window: two runs,
    # which no range states. The first alone was returned, and the guard refused the far valid sizes.
    import numpy

    from resgraph.sizes import WINDOW, _one_range

    first, far = numpy.zeros(WINDOW, dtype=bool), numpy.zeros(WINDOW, dtype=bool)
    first[:100] = True
    far[-WINDOW // 2 - 5:] = True
    assert _one_range([(1, first), (10 * WINDOW, far)]) is None
    assert str(_one_range([(1, first), (10 * WINDOW, numpy.zeros(WINDOW, dtype=bool))])) == "1 <= size <= 100"
