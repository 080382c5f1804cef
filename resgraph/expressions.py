"""Safe `${...}` expressions over parameters: parsed with `ast`, evaluated by a whitelist walker.

Nothing here calls eval or exec. An expression may use numbers, strings, booleans, None, lists,
names bound by the spec (parameters, `index`, ...), arithmetic, comparisons (`is`/`is not` with
None only), `and`/`or`/`not`,
`a if cond else b`, indexing (`widths[index]`) and the functions in `FUNCTIONS`. Everything else
is an error whose offset points into the expression.

Every expression is bounded, so no spec can make evaluation slow or large: its text
(MAX_LENGTH characters), its nesting (MAX_NESTING levels, checked before evaluating), every
number it produces (magnitude at most MAX_MAGNITUDE, exponents at most 64, `round` to at most
64 digits) and every string or list (MAX_VALUE_SIZE characters or items, nested items counted,
however they were built: doubling a value through a chain of parameters stops at the bound).
Strings are never formatted (`'%d' % x`) or repeated.

>>> evaluate("make_divisible(planes * 1.5, 8) if index == 0 else planes", {"planes": 20, "index": 0})
32
"""

from __future__ import annotations

import ast
import contextvars
import functools
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

from .suggest import did_you_mean

__all__ = ["FUNCTIONS", "MAX_VALUE_SIZE", "ExpressionError", "ReadOnRequest", "Unavailable", "evaluate",
           "expression_body", "expression_calls", "expression_names",
           "make_divisible", "value_size", "width_scaling"]

MAX_LENGTH = 1_000
MAX_MAGNITUDE = 2**62  # larger numbers are never a layer argument; refuse them before they grow
MAX_NESTING = 50  # levels of the expression's syntax tree (`-(-(...))`, nested lists); a real one has < 10
MAX_VALUE_SIZE = 10_000  # characters of a string, items of a list (nested items counted)
MAX_DIGITS = 64  # `round(x, n)` with |n| above this only computes enormous powers of ten


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to a multiple of `divisor`, never more than 10% down (MobileNet's rule).

    >>> make_divisible(32 * 0.75), make_divisible(20, 8), make_divisible(3, 8)
    (24, 24, 8)
    """
    if divisor < 1:
        raise ValueError("divisor must be at least 1")
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _round(number: float, ndigits: int | None = None) -> float:
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > MAX_DIGITS):
        raise ValueError(f"ndigits must be a whole number from -{MAX_DIGITS} to {MAX_DIGITS}")
    return round(number, ndigits)


def _log(x: float, base: float | None = None) -> float:
    """`log(x)` (natural) or `log(x, base)`, RegNet's quantised stage widths.

    Raises:
        ValueError: a base that is not positive or is 1 (math.log divides by log(1) = 0 there).

    >>> _log(8, 2)
    3.0
    """
    if base is None:
        return math.log(x)
    if isinstance(base, (int, float)) and (base <= 0 or base == 1):
        raise ValueError(f"the base must be a positive number other than 1, not {base!r}")
    return math.log(x, base)


# `scale.width` as expansion applies it, while a spec's layers and blocks are expanded (see `scaled`).
_WIDTH_SCALING: contextvars.ContextVar[Callable[[float], float] | None] = contextvars.ContextVar(
    "resgraph_width_scaling", default=None)


class width_scaling:  # (named as the function it was: used as `with width_scaling(...):`)
    """Bind `scaled(...)` to `scaled_width` (the spec's `Scale.scaled_width`) for the expressions
    evaluated inside: the layers, skips and block calls of one spec.

    One instance per `with` (it keeps its entry's token to restore the binding on exit); not a
    decorator. (A class, not a `contextlib` generator, whose entry and exit cost three times as much:
    every expansion enters it, and every block instance.)
    """

    __slots__ = ("scaled_width", "token")

    def __init__(self, scaled_width: Callable[[float], float]) -> None:
        self.scaled_width = scaled_width

    def __enter__(self) -> None:
        self.token = _WIDTH_SCALING.set(self.scaled_width)

    def __exit__(self, *exc: object) -> None:
        _WIDTH_SCALING.reset(self.token)


def scaled(channels: float) -> float:
    """The channels a conv written with `out_channels: channels` has under the spec's `scale.width`.

    A block input's `in_channels` is already scaled, and a width parameter is not: under a width
    multiplier `in_channels == out` is false for every block, and a residual guarded by it is
    silently left out. `in_channels == scaled(out)` compares them in one currency.

    Raises:
        ValueError: `channels` is not a positive number, or no spec's scale is in force (the spec's
            own `params:`, which are read before `scale:`, since `scale:` may read them).
    """
    scaled_width = _WIDTH_SCALING.get()
    if scaled_width is None:
        raise ValueError("it applies the spec's `scale:`, which is read after the spec's own `params:` (it may read "
                         "them), so they cannot call it; blocks, their parameters, layers and skips can")
    if isinstance(channels, bool) or not isinstance(channels, (int, float)) or not channels > 0:
        raise ValueError(f"it takes a positive number of channels, not {channels!r}")
    return scaled_width(channels)


class _Refused(Exception):
    """Raised by `error(message)`: the spec's own message, shown as it is."""


def error(message: str) -> NoReturn:
    """Fail the expression with the spec's own `message`, located at the call: how a spec refuses a
    value it does not support (`${0 if scale == 'n' else ... else error('scale must be n, s, ...')}`).

    Raises:
        ValueError: `message` is not a string.
    """
    if not isinstance(message, str):
        raise ValueError(f"it takes a message (a string), not {_clip(message)}")
    raise _Refused(message)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs, "round": _round, "int": int, "float": float,
    "ceil": math.ceil, "floor": math.floor, "sqrt": math.sqrt, "len": len, "sum": sum,
    "exp": math.exp, "log": _log,  # log(x) natural, log(x, base): RegNet's quantised stage widths
    "make_divisible": make_divisible, "scaled": scaled, "error": error,
}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


class ExpressionError(ValueError):
    """A bad expression; `offset` is the 0-based column inside the expression text."""

    dependent = False  # True: the failure follows from another error, reported already
    unknown_name: str | None = None  # the name it failed to find, where that is why it failed

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


class Unavailable(ExpressionError):
    """A name whose value is unknown because of an error elsewhere (a block input whose shape could
    not be inferred): the expression fails without a message of its own."""

    dependent = True


def expression_body(value: Any) -> str | None:
    """The text inside `${...}` when `value` is an expression string, else None.

    An expression string starts with `${` and ends with `}`, or with `}` and a newline (what the
    regex `^[$][{](.*)[}]$` matched, `$` matching before a final newline too); found by slicing:
    the regex match was a third of this call, made hundreds of times a build.

    >>> expression_body("${a}"), expression_body("${a}\\n"), expression_body("${a} b"), expression_body(3)
    ('a', 'a', None, None)
    """
    if isinstance(value, str) and value.startswith("${"):  # (most strings are not)
        if value.endswith("}"):
            return value[2:-1]
        if value.endswith("}\n"):
            return value[2:-2]
    return None


class ReadOnRequest(list):  # type: ignore[type-arg]
    """A list whose items pass through `read` where an expression reads them, one by one.

    A block's `in_shape` is one: `in_shape[0]` specialises the channels alone (a recorded decision,
    see `resgraph.symbolic`), so a block that reads its input's channels keeps its spatial sizes
    free. Indexing reads one item; iterating (`max`, `sum`, `+`) reads them all; comparing compares
    the items as they are (a symbolic size records the comparison). A value an expression returns
    is a plain list, every item read (`evaluate`).
    """

    def __init__(self, items: Iterable[Any], read: Callable[[Any], Any]) -> None:
        super().__init__(items)
        self.read = read

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return [self.read(value) for value in item] if isinstance(index, slice) else self.read(item)

    def __iter__(self) -> Iterator[Any]:
        return map(self.read, super().__iter__())

    def __add__(self, other: Any) -> Any:  # (list's own + copies the items unread)
        return [*self] + other

    def __radd__(self, other: Any) -> Any:
        return other + [*self]


def _plain(value: Any) -> Any:
    """`value` with every `ReadOnRequest` in it read into a plain list."""
    if isinstance(value, ReadOnRequest):
        return [_plain(item) for item in value]
    if type(value) is list and any(isinstance(item, list) for item in value):
        return [_plain(item) for item in value]
    return value


def evaluate(text: str, names: Mapping[str, Any]) -> Any:
    """Evaluate an expression body (without `${}`) with `names` bound.

    Raises:
        ExpressionError: syntax errors, unknown names, disallowed constructs, arithmetic errors.
    """
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    value = _Evaluator(names, text).visit(_checked_tree(text))
    return _plain(value) if isinstance(value, list) else value


# A block's body is evaluated once per instance (200 times for a 200-block repeat): parse each
# distinct text once, keyed by the text as written (a str keeps its hash: one look-up, where
# stripping it and hashing the stripped text at each evaluation took a fifth of a short one's
# time). Trees are only read by `_Evaluator`; errors are raised anew (not cached).
@functools.lru_cache(maxsize=4096)
def _checked_tree(text: str) -> ast.expr:
    """The parsed body of an expression, within MAX_NESTING (errors point into `text`: `_offset`).

    Raises:
        ExpressionError: a syntax error, or nesting too deep.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        broken = "; an expression is written on one line, and this one holds a line break" \
            if "\n" in text.strip() else ""  # (`|` blocks keep them: `a *\n 2` is no Python expression)
        raise ExpressionError(f"invalid expression: {exc.msg}{broken}",
                              _offset(text, exc.lineno, (exc.offset or 1) - 1, utf8=False)) from None
    except (RecursionError, MemoryError, ValueError):  # the parser's own limits on nesting
        raise ExpressionError(f"expression nests deeper than {MAX_NESTING} levels", _offset(text, 1, 0)) from None
    deepest = _nesting(tree.body)
    if deepest is not None:
        raise ExpressionError(f"expression nests deeper than {MAX_NESTING} levels",
                              _offset(text, getattr(deepest, "lineno", 1), getattr(deepest, "col_offset", 0)))
    return tree.body


def _offset(text: str, line: int | None, column: int | None, *, utf8: bool = True) -> int:
    """The offset in an expression's body `text` of a place Python's parser names in `text.strip()`:
    a 1-based line and a column on it, in UTF-8 bytes (a node's `col_offset`) or characters (a
    SyntaxError's), so an error points at its character past a line break (a `|` block keeps them)
    and past non-ASCII text (`'é' + x`) alike.

    >>> _offset(" max(1,\\n  nope)", 2, 2), _offset("'é' + nope", 1, 7)
    (10, 6)
    """
    stripped = text.strip()
    lines = stripped.split("\n")
    index = min(max((line or 1) - 1, 0), len(lines) - 1)
    column = max(column or 0, 0)
    if utf8:
        column = len(lines[index].encode()[:column].decode(errors="ignore"))
    return len(text) - len(text.lstrip()) + sum(len(before) + 1 for before in lines[:index]) + column


def expression_names(text: str) -> set[str] | None:
    """The names an expression body reads (not the functions it calls); None if it does not parse.

    >>> sorted(expression_names("depths[index] * max(width, 2)"))
    ['depths', 'index', 'width']
    """
    names = _names_and_calls(text)
    return None if names is None else set(names[0])


def expression_calls(text: str) -> set[str] | None:
    """The functions an expression body calls; None if it does not parse.

    >>> sorted(expression_calls("scaled(max(width, 2))"))
    ['max', 'scaled']
    """
    names = _names_and_calls(text)
    return None if names is None else set(names[1])


@functools.lru_cache(maxsize=4096)
def _names_and_calls(text: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """The names an expression reads and the functions it calls, once per distinct text (each build
    asks again for the same expressions)."""
    if len(text) > MAX_LENGTH:
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None
    if _nesting(tree.body) is not None:
        return None
    functions = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    called = {id(function) for function in functions}
    return (frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and id(node) not in called),
            frozenset(function.id for function in functions if isinstance(function, ast.Name)))


def _nesting(root: ast.AST) -> ast.AST | None:
    """The first node nested deeper than MAX_NESTING levels, if any (found without recursion)."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return node
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return None


def value_size(value: Any, limit: int = MAX_VALUE_SIZE) -> int:
    """Characters plus list items in `value`, nested items counted; counting stops above `limit`.

    A list may hold the same list many times (`[p, p]`), so the count is of what the value
    would be written out as, not of the objects in memory.

    >>> value_size([1, "abc", [2, 3]])
    8
    """
    size, stack = 0, [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, (list, tuple)):
            size += len(item)
            stack.extend(list.__iter__(item) if isinstance(item, ReadOnRequest) else item)  # (counted, not read)
        elif isinstance(item, dict):
            size += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
    return size


class _Evaluator:
    def __init__(self, names: Mapping[str, Any], text: str) -> None:
        self.names = names
        self.text = text  # (the body as written: errors point into it)

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, self.offset(node))

    def offset(self, node: ast.AST) -> int:
        return _offset(self.text, getattr(node, "lineno", 1), getattr(node, "col_offset", 0))

    def visit(self, node: ast.AST) -> Any:
        method = _VISITORS.get(type(node))
        if method is None:
            raise self.fail(node, f"{_describe(node)} is not allowed in an expression")
        value = method(self, node)
        if type(value) is int and -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:  # the common case, checked first
            return value
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, (int, float)):
            if abs(value) > MAX_MAGNITUDE:
                raise self.fail(node, "number is too large")
            return value
        if not isinstance(value, (str, list, dict)):  # e.g. complex, from (-8) ** 0.5; dicts come from params
            raise self.fail(node, f"cannot compute: the result is a {type(value).__name__}, not a number, "
                                  "string or list")
        if not isinstance(node, (ast.Name, ast.Subscript)) and value_size(value) > MAX_VALUE_SIZE:
            # names and indexing only return values that exist already; anything built is measured
            raise self.fail(node, f"value is too large (more than {MAX_VALUE_SIZE:,} characters or list items)")
        return value

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not isinstance(node.value, (int, float, str, bool, type(None))):
            raise self.fail(node, f"constant {node.value!r} is not allowed")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            try:
                return self.names[node.id]
            except ExpressionError as exc:  # (Unavailable: dependent; another: a name that may not be read here)
                raise type(exc)(str(exc), self.offset(node)) from None
        if node.id in FUNCTIONS:
            raise self.fail(node, f"{node.id} is a function; call it: {node.id}(...)")
        hint = did_you_mean(node.id, itertools.chain(self.names, ("True", "False", "None")))  # (read only if used)
        error = self.fail(node, f"unknown name {node.id!r}{hint}")
        error.unknown_name = node.id
        raise error

    def visit_List(self, node: ast.List) -> list[Any]:
        return [self.visit(item) for item in node.elts]

    visit_Tuple = visit_List

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        numbers = isinstance(left, (int, float)) and isinstance(right, (int, float))
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise self.fail(node, "exponent is too large")
        if isinstance(node.op, (ast.Mult, ast.Pow)) and not numbers:
            raise self.fail(node, "only numbers can be multiplied")  # no "a" * 10**9
        if isinstance(node.op, ast.Mod) and not numbers:
            raise self.fail(node, "% is the remainder of numbers")  # no string formatting: '%0999999999d' % 1
        try:
            return _BINARY[type(node.op)](left, right)
        except KeyError:
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed") from None
        except (TypeError, ZeroDivisionError, OverflowError, ValueError) as exc:
            raise self.fail(node, f"cannot compute: {exc}") from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.visit(node.operand)
        try:
            return _UNARY[type(node.op)](operand)
        except KeyError:
            raise self.fail(node, f"operator {type(node.op).__name__} is not allowed") from None
        except TypeError as exc:
            raise self.fail(node, f"cannot compute: {exc}") from None

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for item in node.values:
            value = self.visit(item)
            if isinstance(node.op, ast.And) and not value or isinstance(node.op, ast.Or) and value:
                return value
        return value

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            right = self.visit(comparator)
            if isinstance(op, (ast.Is, ast.IsNot)):
                # `owner is None` tests a parameter left at its null default; identity of other values
                # (numbers, strings) is an accident of the interpreter, never a spec's meaning
                if left is not None and right is not None:
                    word = "is" if isinstance(op, ast.Is) else "is not"
                    raise self.fail(node, f"'{word}' only tests for None (x {word} None); compare values with "
                                          f"{'==' if isinstance(op, ast.Is) else '!='}")
                if (left is right) != isinstance(op, ast.Is):
                    return False
                left = right
                continue
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError as exc:
                raise self.fail(node, f"cannot compare: {exc}") from None
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        container, key = self.visit(node.value), self.visit(node.slice)
        if not isinstance(container, list) or not isinstance(key, int) or isinstance(key, bool):
            got = _a_value(container) if not isinstance(container, list) else f"index {_clip(key)}"
            raise self.fail(node, f"only lists can be indexed, by an integer; got {got}")
        if not -len(container) <= key < len(container):
            raise self.fail(node, f"index {key} is out of range for a list of {len(container)}")
        return container[key]

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node.func, f"{_describe(node.func)} is not allowed in an expression")
        if node.func.id not in FUNCTIONS:
            hint = did_you_mean(node.func.id, FUNCTIONS) or f"; available: {', '.join(sorted(FUNCTIONS))}"
            raise self.fail(node, f"unknown function {node.func.id!r}{hint}")
        args = [self.visit(arg) for arg in node.args]
        kwargs = {kw.arg: self.visit(kw.value) for kw in node.keywords if kw.arg is not None}
        if any(kw.arg is None for kw in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "argument unpacking is not allowed")
        try:
            return FUNCTIONS[node.func.id](*args, **kwargs)
        except _Refused as exc:
            raise self.fail(node, str(exc)) from None
        except (TypeError, ValueError, ArithmeticError) as exc:  # (ArithmeticError: overflow, division by 0)
            raise self.fail(node, f"{node.func.id}(...) failed: {exc}") from None


# The node types an expression may hold, each with its visitor (looked up once per node, by type).
_VISITORS: dict[type, Callable[[_Evaluator, Any], Any]] = {
    getattr(ast, name.removeprefix("visit_")): method for name, method in vars(_Evaluator).items()
    if name.startswith("visit_")}


def _a_value(value: Any) -> str:
    """A value named as a spec names its kinds: 'an integer, 3', 'a mapping, {...}', 'null'."""
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping"}.get(
        type(value), type(value).__name__)
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}, {_clip(value)}"


def _clip(value: Any, limit: int = 60) -> str:
    """A value as a message shows it: its repr, cut when long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(node: ast.AST) -> str:
    names = {"Attribute": "attribute access", "Lambda": "lambda", "ListComp": "a comprehension",
             "GeneratorExp": "a comprehension", "DictComp": "a comprehension", "SetComp": "a comprehension",
             "Dict": "a mapping", "Set": "a set", "JoinedStr": "an f-string", "NamedExpr": "assignment",
             "Starred": "unpacking", "Await": "await", "Yield": "yield", "Slice": "slicing"}
    return names.get(type(node).__name__, type(node).__name__)
