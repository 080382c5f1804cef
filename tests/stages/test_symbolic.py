"""Symbolic sizes (`resgraph.symbolic`): integers that remember how they were computed from the inputs.

The specification:

- a `SymInt` behaves as its `hint` (its value at the declared size) in arithmetic with ints and
  other SymInts, and builds an expression (`Expr`) that `evaluate` computes at any other size,
  for ints or for numpy arrays of sizes at once; `str(expr)` is a Python expression with the
  same value (symbols such as `x.H` read as attributes);
- trivial arithmetic (`+ 0`, `* 1`, `// 1`, `* 0`, nested constant additions and multiplications,
  so `-(-x)` is `x`) makes no new node;
- every decision on a SymInt (a comparison, `bool`, turning it into an int or a float, a true
  division) returns a plain value and, inside `recording()`, records a `Guard`: the condition
  and its outcome at the declared size, attributed to the current `site`; comparing a size with
  itself (the same expression) decides nothing and records nothing. Outside a recording
  nothing is recorded. `hint`, `sym_max` and `sym_min` decide nothing; `requirement` builds a
  condition without recording it;
- within a recording equal expressions are one object (hash-consing), so the same decision made
  twice (in a repeated block) is one guard, at the first site.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy
import pytest

from resgraph.symbolic import (
    Guard,
    SymInt,
    evaluate,
    hint,
    recorded,
    recording,
    requirement,
    site,
    specialize,
    sym_max,
    sym_min,
)

# --- arithmetic -------------------------------------------------------------------------------------------------

# Functions of two sizes, written as shape functions write them (with ints only, they are the reference).
FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "conv": lambda h, w: (h + 2 * 1 - 3) // 2 + 1,
    "ceil": lambda h, w: -(-h // 4),
    "sub": lambda h, w: h - w,
    "rsub": lambda h, w: 10 - h,
    "neg": lambda h, w: -(h - 1),
    "mul": lambda h, w: 3 * h * w,
    "mod": lambda h, w: (h + w) % 3,
    "rfloordiv": lambda h, w: 100 // h,
    "rmod": lambda h, w: 100 % w,
    "nested": lambda h, w: (h - (w - 1)) * 2 // (w + 2),
    "upsample": lambda h, w: h * 3 // 2,
    "pos": lambda h, w: +h,
    "negneg": lambda h, w: operator.neg(-h) + w,
    "scaled": lambda h, w: h * -2 * -3 - w * 2 * 0,
    "ceil_by_one": lambda h, w: -(-h // 1) * 2,
}
VALUES = [(9, 5), (1, 1), (16, 3), (75, 38)]


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_arithmetic_gives_the_ints_value_and_an_expression_valid_at_every_size(name: str) -> None:
    function = FUNCTIONS[name]
    for declared_h, declared_w in VALUES:
        h, w = SymInt.symbol("x.H", declared_h), SymInt.symbol("x.W", declared_w)
        result = function(h, w)
        assert isinstance(result, SymInt) and result.hint == function(declared_h, declared_w)
        for other_h, other_w in VALUES:
            expected = function(other_h, other_w)
            assert evaluate(result.expr, {"x.H": other_h, "x.W": other_w}) == expected
            # str(expr) is Python with the same value: `x.H` is an attribute of `x`.
            x = SimpleNamespace(H=other_h, W=other_w)
            assert eval(str(result.expr), {"x": x}) == expected, str(result.expr)  # noqa: S307 (our own text)


def test_an_expression_evaluates_many_sizes_at_once_with_numpy() -> None:
    h = SymInt.symbol("x.H", 224)
    out = sym_max((h + 2 - 3) // 2 + 1, h // 3)
    sizes = numpy.arange(1, 50)
    assert evaluate(out.expr, {"x.H": sizes}).tolist() == [max((n - 1) // 2 + 1, n // 3) for n in range(1, 50)]


def test_the_doctest_example_reads_as_written() -> None:
    h = SymInt.symbol("x.H", 224)
    out = (h + 2 * 1 - 3) // 2 + 1
    assert (str(out), repr(out), f"{out:>5}", hash(out)) == ("112", "112", "  112", hash(112))
    assert str(out.expr) == "(x.H - 1) // 2 + 1"


def test_trivial_arithmetic_makes_no_new_node() -> None:
    h = SymInt.symbol("x.H", 9)
    assert h + 0 is h and 0 + h is h and h * 1 is h and 1 * h is h and h // 1 is h and +h is h
    assert h * 0 == 0 and type(h * 0) is int and type(0 * h) is int
    assert str(((h + 2) + 3).expr) == "x.H + 5" and ((h + 2) - 2).expr is h.expr
    assert str(((h * 2) * 3).expr) == "x.H * 6" and operator.neg(-h) is not h and operator.neg(-h).expr is h.expr
    assert str((-(-h // 1)).expr) == "x.H" and str((-h * 2).expr) == "x.H * -2"


def test_operands_that_are_not_ints_are_refused() -> None:
    h = SymInt.symbol("x.H", 9)
    for bad in (1.5, True, "2"):
        with pytest.raises(TypeError):
            h + bad  # noqa: B018 (the operation is the test)


def test_sym_max_and_sym_min_decide_nothing() -> None:
    h, w = SymInt.symbol("x.H", 9), SymInt.symbol("x.W", 5)
    with recording() as guards:
        bigger, smaller = sym_max(h, w), sym_min(h, 3)
    assert (bigger.hint, smaller.hint, guards) == (9, 3, [])
    assert str(bigger.expr) == "max(x.H, x.W)" and str(smaller.expr) == "min(x.H, 3)"
    assert (sym_max(3, 4), sym_min(3, 4)) == (4, 3) and type(sym_max(3, 4)) is int


# --- decisions ---------------------------------------------------------------------------------------------------

def test_every_decision_returns_a_plain_value_and_records_a_guard() -> None:
    h = SymInt.symbol("x.H", 9)
    with recording() as guards:
        outcomes = [h == 9, h != 9, h < 3, h <= 9, (h + 1) > 10, h >= 2, bool(h - 9)]
        values = [int(h * 2), float(h + 1), h / 3, [0, 1, 2, 3][h // 3], specialize(h - 1)]
    assert outcomes == [True, False, False, True, False, True, False]
    assert all(type(o) is bool for o in outcomes)
    assert values == [18, 10.0, 3.0, 3, 8] and [type(v) for v in values] == [int, float, float, int, int]
    # A guard holds what was asked and the outcome; str() states the condition that held.
    assert [(g.op, g.outcome, str(g)) for g in guards] == [
        ("eq", True, "x.H == 9"),
        ("ne", False, "x.H == 9"),
        ("lt", False, "x.H >= 3"),
        ("le", True, "x.H <= 9"),
        ("gt", False, "x.H + 1 <= 10"),
        ("ge", True, "x.H >= 2"),
        ("ne", False, "x.H - 9 == 0"),  # bool(): is it non-zero?
        ("eq", True, "x.H * 2 == 18"),  # int(): the value is fixed
        ("eq", True, "x.H + 1 == 10"),  # float()
        # h / 3 specialises h: x.H == 9, already recorded above
        ("eq", True, "x.H // 3 == 3"),  # indexing
        ("eq", True, "x.H - 1 == 8"),  # specialize()
    ]


def test_comparing_an_expression_with_itself_decides_nothing() -> None:
    # It holds (or fails) at every size alike: a projection whose source and target sizes are one
    # expression, a ceil-division by 1 (-(-x // 1) is x), a block instance given what it returns.
    h = SymInt.symbol("x.H", 9)
    with recording() as guards:
        same = (h - 1) // 2
        outcomes = [same == (h - 1) // 2, same != (h - 1) // 2, same <= same, same < same, -(-h // 1) == h]
    assert outcomes == [True, False, True, False, True] and guards == []
    with recording() as guards:
        _ = h == h + 1, h + 0 >= h
    assert [str(g) for g in guards] == ["x.H != x.H + 1"]


def test_nothing_is_recorded_outside_a_recording_or_by_hint_and_requirement() -> None:
    h = SymInt.symbol("x.H", 9)
    assert (h == 9, int(h), specialize(h), recorded()) == (True, 9, 9, [])
    with recording() as guards:
        assert (hint(h + 1), hint(7), specialize(7)) == (10, 7, 7)
        condition = requirement("eq", h // 2, 4)
        assert recorded() == guards == []
    assert condition == Guard("eq", condition.left, condition.right, True, "")
    assert str(condition) == "x.H // 2 == 4"


def test_recordings_nest_and_each_keeps_its_own_guards() -> None:
    h = SymInt.symbol("x.H", 9)
    with recording() as outer:
        _ = h > 1
        with recording() as inner:
            _ = h > 2
        _ = h > 3
    assert [str(g) for g in outer] == ["x.H > 1", "x.H > 3"] and [str(g) for g in inner] == ["x.H > 2"]


def test_a_guard_is_attributed_to_the_site_it_was_decided_at() -> None:
    with recording() as guards:
        h = SymInt.symbol("x.H", 9)
        _ = h > 0
        with site("layer1.0.conv1"):
            _ = h > 1
            with site("layer1.0.bn1"):
                _ = h > 2
            _ = h > 3
        _ = h > 4
    assert [(str(g), g.site) for g in guards] == [("x.H > 0", ""), ("x.H > 1", "layer1.0.conv1"),
                                                 ("x.H > 2", "layer1.0.bn1"), ("x.H > 3", "layer1.0.conv1"),
                                                 ("x.H > 4", "")]


def test_equal_expressions_are_one_object_and_one_decision_is_one_guard() -> None:
    with recording() as guards:
        first, second = SymInt.symbol("x.H", 9), SymInt.symbol("x.H", 9)
        assert first.expr is second.expr
        a, b = (first - 3) // 2 + 1, (second - 3) // 2 + 1
        assert a.expr is b.expr
        with site("stage.0.conv"):
            _ = a >= 1
        with site("stage.1.conv"):  # a repeated block makes the same decision again
            _ = b >= 1
            _ = b >= 2  # ...and another one
    assert [(str(g), g.site) for g in guards] == [("(x.H - 3) // 2 + 1 >= 1", "stage.0.conv"),
                                                 ("(x.H - 3) // 2 + 1 >= 2", "stage.1.conv")]
    # Outside a recording nothing is shared.
    assert SymInt.symbol("x.H", 9).expr is not SymInt.symbol("x.H", 9).expr


def test_guards_evaluate_at_other_sizes() -> None:
    with recording() as guards:
        h = SymInt.symbol("x.H", 224)
        _ = h // 16 == 14  # a 14x14 token grid: 224 <= H <= 239
    (guard,) = guards
    sizes = numpy.arange(200, 260)
    holds = (evaluate(guard.left, {"x.H": sizes}) == evaluate(guard.right, {"x.H": sizes})) == guard.outcome
    assert sizes[holds].tolist() == list(range(224, 240))


def test_evaluate_shares_work_through_its_memo_and_survives_deep_chains() -> None:
    with recording():  # (hash-consed: the constant 1 is one node)
        h = SymInt.symbol("x.H", 1)
        deep, steps = h, 3 * sys.getrecursionlimit()  # far deeper than recursion would allow
        for _ in range(steps):
            deep = (deep + 1) + h
    assert deep.hint == 1 + 2 * steps
    memo: dict[int, Any] = {}
    assert evaluate(deep.expr, {"x.H": 2}, memo) == 2 + 3 * steps
    assert memo[id(h.expr)] == 2 and len(memo) == 2 * steps + 2  # each node once: h, the constant, 2 per step
