"""Symbolic sizes: a dim that depends on an input's free size, with the value it has at the declared size.

Shape inference runs once, at the declared input size, but the sizes it computes are `SymInt`s:
integers that remember how they were computed from the inputs' free dims (`x.H`, `x.W`). Shape
functions are ordinary integer arithmetic (`(size + 2 * p - k) // s + 1` works unchanged).

Whenever inference makes a decision on a symbolic size (a comparison, or turning it into a plain
int for a module's constructor), the decision is recorded as a `Guard`, as torch's dynamic
shapes do; comparing a size with itself decides nothing and records nothing. The compiled model
is valid at exactly the input sizes where every guard holds: `resgraph.sizes` evaluates the
guards over a range of sizes at once (with numpy), which is how
`resgraph sizes` answers "which input sizes work" without building anything again.

Shape functions should avoid branching on sizes where both branches are valid (use `sym_max` /
`sym_min`), since a branch taken is recorded as a constraint.

>>> h = SymInt.symbol("x.H", 224)
>>> out = (h + 2 * 1 - 3) // 2 + 1  # a 3x3 stride-2 convolution with padding 1
>>> out, out.hint
(112, 112)
>>> with recording() as guards:
...     fits = out == 112
>>> fits, [str(g) for g in guards]
(True, ['(x.H - 1) // 2 + 1 == 112'])
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Union

from .expressions import MAX_MAGNITUDE

__all__ = ["MAX_SIZE", "VECTOR_OPS", "Expr", "Guard", "SizeOverflowError", "SymInt", "broadcasts", "condition",
           "evaluate", "hint", "hints",
           "post_order", "recorded", "recorded_count", "recording", "render", "requirement", "same_sizes",
           "scaled_size", "site", "size_symbols", "specialize", "sym_max", "sym_min"]

# The largest magnitude a size expression may hold, constants and values at the declared size
# alike: the bound on declared sizes and on every number an expression makes. Sizes are solved in
# int64 (`evaluate` over numpy arrays), where a larger constant raised OverflowError and a sum of
# two silently wrapped round, which made every size, the declared one too, look invalid.
MAX_SIZE = MAX_MAGNITUDE


class SizeOverflowError(ArithmeticError):
    """Size arithmetic beyond MAX_SIZE (shape inference reports it at the node being typed)."""


@dataclass(frozen=True, eq=False)
class Expr:
    """A node of a size expression: a symbol, a constant, or an operation on two expressions."""

    op: str  # "sym", "const", "add", "mul", "floordiv", "mod", "max", "min", "fmul" (see scaled_size)
    args: tuple[Any, ...]

    def __str__(self) -> str:
        return render(self)


def post_order(roots: Iterable[Expr], done: Container[Expr]) -> Iterator[Expr]:
    """Each expression node under `roots` that is not in `done`, once, after its two arguments: a fold
    over shared expressions (see `_node`), where the caller adds each node it is given to `done`
    (its result, keyed by the node itself) before asking for the next. Iterative: a 100,000-layer
    chain's expressions are that deep."""
    stack = list(roots)
    while stack:
        expr = stack.pop()
        if expr in done:
            continue
        if expr.op == "sym" or expr.op == "const":
            yield expr
            continue
        left, right = expr.args
        left_pending, right_pending = left not in done, right not in done
        if not (left_pending or right_pending):
            yield expr
            continue
        stack.append(expr)  # again once its arguments are done
        if left_pending:
            stack.append(left)
        if right_pending:
            stack.append(right)


def size_symbols(exprs: Iterable[Expr]) -> frozenset[str]:
    """The symbols that the expressions read.

    >>> sorted(size_symbols([(SymInt.symbol("x.H", 8) + 1).expr, SymInt.symbol("x.W", 8).expr]))
    ['x.H', 'x.W']
    """
    found: dict[Expr, None] = {}
    for expr in post_order(exprs, found):
        found[expr] = None
    return frozenset(expr.args[0] for expr in found if expr.op == "sym")


_STRENGTH = {"add": 1, "mul": 2, "floordiv": 2, "mod": 2}  # how tightly each operator binds
_SYMBOL = {"add": "+", "mul": "*", "floordiv": "//", "mod": "%"}


def render(expr: Expr, names: Mapping[str, str] | None = None) -> str:
    """`expr` as Python source, each symbol written as `names` gives (as itself where not given): the
    generated input guard evaluates a size expression on `x.shape[2]`.

    >>> h = SymInt.symbol("x.H", 9)
    >>> render(((h - 1) // 2 + 1).expr), render(((h - 1) // 2 + 1).expr, {"x.H": "x.shape[2]"})
    ('(x.H - 1) // 2 + 1', '(x.shape[2] - 1) // 2 + 1')
    """
    names = names or {}
    texts: dict[int, str] = {}
    stack = [expr]
    while stack:  # iterative post-order, as in `evaluate`
        node = stack[-1]
        if id(node) in texts:
            stack.pop()
            continue
        if node.op == "sym":
            texts[id(node)] = names.get(node.args[0], node.args[0])
        elif node.op == "const":
            texts[id(node)] = str(node.args[0])
        elif pending := [arg for arg in node.args if id(arg) not in texts]:
            stack.extend(pending)
            continue
        else:
            texts[id(node)] = _render_node(node, texts)
        stack.pop()
    return texts[id(expr)]


def _render_node(node: Expr, texts: dict[int, str]) -> str:
    left, right = node.args
    if node.op in ("max", "min"):
        return f"{node.op}({texts[id(left)]}, {texts[id(right)]})"
    if node.op == "fmul":
        return f"int({_wrap(left, 'mul', texts)} * {texts[id(right)]})"
    if node.op == "add" and right.op == "const" and right.args[0] < 0:
        return f"{texts[id(left)]} - {-right.args[0]}"
    return f"{_wrap(left, node.op, texts)} {_SYMBOL[node.op]} {_wrap(right, node.op, texts, right=True)}"


def _wrap(expr: Expr, parent: str, texts: dict[int, str], right: bool = False) -> str:
    inner = _STRENGTH.get(expr.op)
    outer = _STRENGTH.get(parent, 0)
    if inner is not None and (inner < outer or (right and inner == outer and parent != "add")):
        return f"({texts[id(expr)]})"
    return texts[id(expr)]


def _node(op: str, args: tuple[Any, ...]) -> Expr:
    """A new expression node, or the equal one already made while recording (hash-consing): repeated
    blocks then share their size expressions, and their guards are recorded once."""
    recorder = _RECORDER.get()
    if recorder is None:
        return Expr(op, args)
    key = (op, *args) if op in ("sym", "const") else (op, *map(id, args))
    found = recorder.interned.get(key)
    if found is None:
        found = recorder.interned[key] = Expr(op, args)
    return found


def _const(value: int) -> Expr:
    if not -MAX_SIZE <= value <= MAX_SIZE:
        raise SizeOverflowError(_overflow(value))
    return _node("const", (value,))


def _checked(value: int) -> int:
    """`value`, a size at the declared input size, if within MAX_SIZE."""
    if not -MAX_SIZE <= value <= MAX_SIZE:
        raise SizeOverflowError(_overflow(value))
    return value


def _overflow(value: int) -> str:
    reached = "below -2^62" if value < 0 else "more than 2^62"
    return (f"its size arithmetic reaches {reached}, which no tensor size can be "
            "(torch counts sizes in 64 bits); make the arguments that grow or shift sizes (padding, dilation, "
            "stride, scale, ...) smaller")


Operand = Union[int, "SymInt"]


@dataclass(frozen=True)
class Guard:
    """A decision shape inference made: `left <op> right` was `outcome` at the declared size.

    `site` names the node being inferred (its qualified name, `layer1.0.conv1`), for messages.
    """

    op: str  # "eq", "ne", "lt", "le", "gt", "ge", or "bcast" (left is 1 or right: see `broadcasts`)
    left: Expr
    right: Expr
    outcome: bool
    site: str = ""

    def __str__(self) -> str:
        return condition(self)


_PYTHON = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "bcast": "in"}
_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<", "in": "not in"}


def condition(guard: Guard, names: Mapping[str, str] | None = None, failing: bool = False) -> str:
    """Python source that is true where `guard` holds (with `failing`: where it fails), each symbol written
    as `names` gives (see `render`): `resgraph sizes` states it, the input guard checks it.

    >>> h, m = SymInt.symbol("x.H", 8), SymInt.symbol("m.H", 1)
    >>> with recording() as guards:
    ...     _ = (h > 2, broadcasts(m, h))
    >>> [condition(guard) for guard in guards], condition(guards[1], {"m.H": "m.shape[1]"}, failing=True)
    (['x.H > 2', 'm.H in (1, x.H)'], 'm.shape[1] not in (1, x.H)')
    """
    symbol = _PYTHON[guard.op]
    if guard.outcome == failing:  # (the comparison came out False at the declared size: its negation holds)
        symbol = _NEGATED[symbol]
    right = render(guard.right, names)
    return f"{render(guard.left, names)} {symbol} {f'(1, {right})' if guard.op == 'bcast' else right}"


@dataclass
class _Recorder:
    guards: list[Guard] = field(default_factory=list)
    site: str = ""
    interned: dict[tuple[Any, ...], Expr] = field(default_factory=dict)  # see _node
    seen: set[tuple[Any, ...]] = field(default_factory=set)  # guards recorded, by identity


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("size_guards", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[Guard]]:
    """Within the block, decisions on symbolic sizes are appended to the yielded list."""
    recorder = _Recorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder.guards
    finally:
        _RECORDER.reset(token)


def recorded() -> list[Guard]:
    """The guards recorded so far in the current `recording()` block (empty outside one)."""
    recorder = _RECORDER.get()
    return list(recorder.guards) if recorder is not None else []


def recorded_count() -> int:
    """How many guards `recorded()` would list (without copying them: a skip asks before it is planned)."""
    recorder = _RECORDER.get()
    return len(recorder.guards) if recorder is not None else 0


def site(label: str) -> _Site:
    """Guards recorded within the `with` block are attributed to `label` (a node being inferred)."""
    return _Site(label)


class _Site:
    """`site`'s context manager: a class, because shape inference enters one per node (a generator
    context manager cost 10% of typing a 10,000-layer chain)."""

    __slots__ = ("label", "previous", "recorder")

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> None:
        self.recorder = recorder = _RECORDER.get()
        if recorder is not None:
            self.previous, recorder.site = recorder.site, self.label

    def __exit__(self, *exc_info: object) -> None:
        if self.recorder is not None:
            self.recorder.site = self.previous


def _record(op: str, left: Expr, right: Expr, outcome: bool) -> None:
    recorder = _RECORDER.get()
    if recorder is not None:
        _add_guard(recorder, op, left, right, outcome)


def _add_guard(recorder: _Recorder, op: str, left: Expr, right: Expr, outcome: bool) -> None:
    key = (op, id(left), id(right), outcome)
    if key not in recorder.seen:  # the same decision again (a repeated block): one guard, the first site
        recorder.seen.add(key)
        recorder.guards.append(Guard(op, left, right, outcome, recorder.site))


def _broadcast(size: Any, full: Any) -> Any:
    return (size == 1) | (size == full)  # (ints or numpy arrays of sizes alike)


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "bcast": _broadcast}


class SymInt:
    """An integer size that depends on input sizes; behaves as its `hint` (the value at the declared size).

    Arithmetic with ints and other SymInts builds a new SymInt; comparisons and conversions to
    int return plain values and record the decision, unless it compares a size with itself (see
    the module docstring).
    """

    __slots__ = ("expr", "hint")

    def __init__(self, expr: Expr, hint: int) -> None:
        self.expr = expr
        self.hint = hint

    @classmethod
    def symbol(cls, name: str, hint: int) -> SymInt:
        """A free input size named `name` (`x.H`), declared as `hint`."""
        return cls(_node("sym", (name,)), hint)

    # arithmetic ---------------------------------------------------------------------------------
    def _apply(self, op: str, other: Operand, swap: bool = False) -> Operand:
        # (shape inference makes every size through here: type() tests, hints read inline)
        symbolic = type(other) is SymInt
        if not symbolic and (type(other) is bool or not isinstance(other, int)):
            return NotImplemented
        left, right = (other, self) if swap else (self, other)
        simplified = _simplify(op, left, right)
        if simplified is not None:
            return simplified
        other_expr, other_hint = (other.expr, other.hint) if symbolic else (_const(other), other)  # type: ignore[union-attr]
        value = _checked(_INT_OPS[op](other_hint, self.hint) if swap else _INT_OPS[op](self.hint, other_hint))
        return SymInt(_node(op, (other_expr, self.expr) if swap else (self.expr, other_expr)), value)

    def __add__(self, other: Operand) -> Operand:
        if type(other) is int and other == 0:  # (x + 0, as _simplify has it: a conv that keeps its size)
            return self
        return self._apply("add", other)

    def __radd__(self, other: Operand) -> Operand:
        return self._apply("add", other, swap=True)

    def __sub__(self, other: Operand) -> Operand:
        return self._apply("add", -other)  # type: ignore[operator]

    def __rsub__(self, other: Operand) -> Operand:
        return (-self)._apply("add", other)  # type: ignore[union-attr]

    def __mul__(self, other: Operand) -> Operand:
        return self._apply("mul", other)

    def __rmul__(self, other: Operand) -> Operand:
        return self._apply("mul", other, swap=True)

    def __floordiv__(self, other: Operand) -> Operand:
        return self._apply("floordiv", other)

    def __rfloordiv__(self, other: Operand) -> Operand:
        return self._apply("floordiv", other, swap=True)

    def __mod__(self, other: Operand) -> Operand:
        return self._apply("mod", other)

    def __rmod__(self, other: Operand) -> Operand:
        return self._apply("mod", other, swap=True)

    def __neg__(self) -> Operand:
        return self._apply("mul", -1)

    def __pos__(self) -> SymInt:
        return self

    def __truediv__(self, other: Any) -> float:
        return int(self) / other  # a ratio needs the exact value: specialise

    def __rtruediv__(self, other: Any) -> float:
        return other / int(self)

    # decisions ----------------------------------------------------------------------------------
    def _compare(self, op: str, other: Any) -> Any:
        # (most decisions compare a size with a number or another size: their cases first, inline)
        if type(other) is int:
            outcome = _COMPARE[op](self.hint, other)
            recorder = _RECORDER.get()
            # (the constant looked up where it is interned already, without _const's checks and _record's
            # second look-up of the recorder: most decisions compare with 0 or 1, and a repeated block
            # decides the same again)
            right = recorder.interned.get(("const", other)) if recorder is not None else None
            if right is None:
                _record(op, self.expr, _const(other), outcome)
                return outcome
            _add_guard(recorder, op, self.expr, right, outcome)
            return outcome
        if type(other) is SymInt:
            outcome = _COMPARE[op](self.hint, other.hint)
            if other.expr is not self.expr:
                _record(op, self.expr, other.expr, outcome)
            return outcome
        if not isinstance(other, (int, SymInt)) or isinstance(other, bool):
            return NotImplemented
        outcome = bool(_COMPARE[op](self.hint, hint(other)))
        # x == x holds (x < x fails) at every size: nothing to record. One expression object always has
        # one hint (a symbol is made once per input dim; an expression's hint follows from its symbols').
        if not isinstance(other, SymInt) or other.expr is not self.expr:
            _record(op, self.expr, _expr(other), outcome)
        return outcome

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        return self._compare("eq", other)

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        return self._compare("ne", other)

    def __lt__(self, other: Operand) -> Any:
        return self._compare("lt", other)

    def __le__(self, other: Operand) -> Any:
        return self._compare("le", other)

    def __gt__(self, other: Operand) -> Any:
        return self._compare("gt", other)

    def __ge__(self, other: Operand) -> Any:
        return self._compare("ge", other)

    def __bool__(self) -> bool:
        return bool(self._compare("ne", 0))

    def __index__(self) -> int:
        return specialize(self)

    __int__ = __index__

    def __float__(self) -> float:
        return float(specialize(self))

    def __hash__(self) -> int:
        return hash(self.hint)

    # display ------------------------------------------------------------------------------------
    def __str__(self) -> str:
        return str(self.hint)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self.hint, spec)


_INT_OPS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add, "mul": operator.mul, "floordiv": operator.floordiv, "mod": operator.mod,
    "max": max, "min": min}


def _expr(value: Operand) -> Expr:
    return value.expr if isinstance(value, SymInt) else _const(value)


def _simplify(op: str, left: Operand, right: Operand) -> Operand | None:
    """x + 0, x * 1, x // 1 and x * 0: no new node; constants folded, (x + a) + b and (x * a) * b;
    (c * x) // d and (c * x) % d where d divides c.
    (Only constants are compared: comparing a SymInt would record a guard.)"""
    if op in ("add", "mul"):
        symbolic, constant = (left, right) if isinstance(left, SymInt) else (right, left)  # the constant on the right
        if isinstance(constant, SymInt):
            return None
        identity = 0 if op == "add" else 1
        if constant == identity:
            return symbolic
        if op == "mul" and constant == 0:
            return 0
        inner = symbolic.expr  # type: ignore[union-attr]
        if inner.op == op and inner.args[1].op == "const":  # (x + a) + b -> x + (a + b); -(-x) is x
            folded = _INT_OPS[op](inner.args[1].args[0], constant)
            return SymInt(inner.args[0] if folded == identity else _node(op, (inner.args[0], _const(folded))),
                          _checked(_INT_OPS[op](symbolic.hint, constant)))  # type: ignore[union-attr]
        return None
    if op == "floordiv" and not isinstance(right, SymInt) and right == 1:
        return left
    if op in ("floordiv", "mod") and isinstance(left, SymInt) and type(right) is int and right > 0:
        # (c * x) // d is (c / d) * x and (c * x) % d is 0 where d divides c: a reshape's -1 of a size
        # made as a multiple (4 * A elements into rows of 4) decides nothing, at any size
        quotient = _divided(left.expr, right)
        if quotient is not None:
            return 0 if op == "mod" else SymInt(quotient, left.hint // right)
    return None


def _divided(expr: Expr, divisor: int, depth: int = 16) -> Expr | None:
    """`expr` divided by `divisor` where a constant factor of its product holds `divisor` (4 * x.H * x.W
    by 4 is x.H * x.W), else None. (`depth`: products of sizes are shallow; deeper ones are left.)"""
    if expr.op == "const":
        return _const(expr.args[0] // divisor) if expr.args[0] % divisor == 0 else None
    if expr.op != "mul" or depth == 0:
        return None
    first, second = expr.args
    for index, factor in enumerate((first, second)):
        quotient = _divided(factor, divisor, depth - 1)
        if quotient is not None:
            other = second if index == 0 else first
            if quotient.op == "const" and quotient.args[0] == 1:
                return other
            return _node("mul", (quotient, other) if index == 0 else (other, quotient))
    return None


def requirement(op: str, left: Operand, right: Operand) -> Guard:
    """A condition `left <op> right` to hold (not a decision taken): what the sizes solver can be asked
    to satisfy, e.g. "this skip's sizes must match"."""
    return Guard(op, _expr(left), _expr(right), True, "")


def hint(value: Operand) -> int:
    """The value at the declared size, without recording anything (for messages and displays)."""
    return value.hint if isinstance(value, SymInt) else value


def hints(sizes: tuple[Operand, ...]) -> tuple[int, ...]:
    """Each size's `hint`, as a tuple (hint() inlined: every type of a build is hinted, some twice)."""
    return tuple([size.hint if type(size) is SymInt else size for size in sizes])


def same_sizes(a: tuple[Operand, ...], b: tuple[Operand, ...]) -> bool:
    """Whether two shapes are one at every input size: equal ints, or sizes of one expression, dim by
    dim. Deciding it records nothing (comparing a size with itself decides nothing), so shape
    functions ask it first and skip the broadcast, whose answer it already is; False says nothing.

    >>> h = SymInt.symbol("x.H", 8)
    >>> same_sizes((4, h), (4, h + 0)), same_sizes((4, h), (4, 8))
    (True, False)
    """
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is not y and not (type(x) is SymInt and type(y) is SymInt and x.expr is y.expr) and not (
                type(x) is int and type(y) is int and x == y):
            return False
    return True


def specialize(value: Operand) -> int:
    """A plain int for something that cannot vary (a constructor argument): records `value == hint`."""
    if isinstance(value, SymInt):
        _record("eq", value.expr, _const(value.hint), True)
        return value.hint
    return value


def broadcasts(size: Operand, full: Operand) -> bool:
    """Whether a dim of `size` broadcasts to one of `full`: it is 1, or `full` itself. Either may hold at
    another input size (a mask declared (1, 1, S) runs with a dim per head, or per query, as torch
    broadcasts it), so the decision is recorded as the one guard `size in (1, full)`, never as `size == 1`.

    >>> heads = SymInt.symbol("m.H", 1)
    >>> with recording() as guards:
    ...     fits = broadcasts(heads, 4)
    >>> fits, [str(guard) for guard in guards]
    (True, ['m.H in (1, 4)'])
    """
    if not isinstance(size, SymInt):
        return size == 1 or size == full
    if isinstance(full, SymInt) and full.expr is size.expr:
        return True  # (a size against itself decides nothing)
    outcome = size.hint in (1, hint(full))
    _record("bcast", size.expr, _expr(full), outcome)
    return outcome


def sym_max(a: Operand, b: Operand) -> Operand:
    """max(a, b) without deciding which is larger."""
    if not isinstance(a, SymInt) and not isinstance(b, SymInt):
        return max(a, b)
    return SymInt(_node("max", (_expr(a), _expr(b))), max(hint(a), hint(b)))


def sym_min(a: Operand, b: Operand) -> Operand:
    """min(a, b) without deciding which is smaller."""
    if not isinstance(a, SymInt) and not isinstance(b, SymInt):
        return min(a, b)
    return SymInt(_node("min", (_expr(a), _expr(b))), min(hint(a), hint(b)))


def scaled_size(size: Operand, factor: float) -> Operand:
    """int(float(size) * factor): the size torch gives a dim interpolated by `factor` (`Upsample`'s
    scale_factor). torch multiplies in double precision and truncates, so 90 * 0.7 is 62 (the double
    product is 62.99999999999999), not the 63 exact arithmetic gives.

    >>> h = SymInt.symbol("x.H", 90)
    >>> scaled_size(90, 0.7), scaled_size(h, 0.7).hint, str(scaled_size(h, 0.7).expr)
    (62, 62, 'int(x.H * 0.7)')
    """
    exact = Fraction(factor)  # the double's exact value
    if exact.denominator <= 1 << 16 and exact.numerator <= 1 << 16:
        # (2, 0.5, 1.5, 0.25: the double product of any size below 2^36 is exact, so it is this integer
        # arithmetic, which keeps expressions simple: x.H * 2, not int(x.H * 2.0))
        return size * exact.numerator // exact.denominator
    if not isinstance(size, SymInt):
        return int(float(size) * factor)
    return SymInt(_node("fmul", (size.expr, _const(factor))), int(float(size.hint) * factor))


def evaluate(expr: Expr, env: Mapping[str, Any], memo: dict[int, Any] | None = None,
             ops: Mapping[str, Callable[[Any, Any], Any]] | None = None) -> Any:
    """The value of `expr` with each symbol bound by `env` (ints, or numpy arrays for many sizes at once).

    `memo` (keyed by expression identity) shares the work between expressions with common parts;
    `ops` replaces the arithmetic (`VECTOR_OPS`: numpy's, which wraps past int64; `sizes` checks it).
    """
    ops = VECTOR_OPS if ops is None else ops
    memo = {} if memo is None else memo
    key = id(expr)
    if key in memo:
        return memo[key]
    stack = [expr]
    while stack:  # iterative post-order: deep chains (100k layers) must not hit the recursion limit
        node = stack[-1]
        if id(node) in memo:
            stack.pop()
            continue
        if node.op == "sym":
            memo[id(node)] = env[node.args[0]]
        elif node.op == "const":
            memo[id(node)] = node.args[0]
        else:
            pending = [arg for arg in node.args if id(arg) not in memo]
            if pending:
                stack.extend(pending)
                continue
            left, right = (memo[id(arg)] for arg in node.args)
            memo[id(node)] = ops[node.op](left, right)
        stack.pop()
    return memo[key]


def _vector_max(a: Any, b: Any) -> Any:
    import numpy

    return numpy.maximum(a, b)


def _vector_min(a: Any, b: Any) -> Any:
    import numpy

    return numpy.minimum(a, b)


def _vector_fmul(a: Any, b: Any) -> Any:
    import numpy

    return numpy.trunc(numpy.multiply(a, b, dtype=numpy.float64)).astype(numpy.int64)  # as scaled_size, at every size


VECTOR_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add, "mul": operator.mul, "floordiv": operator.floordiv, "mod": operator.mod,
    "max": _vector_max, "min": _vector_min, "fmul": _vector_fmul}

COMPARISONS = _COMPARE
