"""Stage 5b, solve sizes: every input size a checked model admits, from the decisions shape inference made.

`infer_shapes` runs once, at the declared size, with each free input dim as a symbol, and records
every decision it made on a symbolic size as a guard (`graph.meta["guards"]`). At another size
the same model is valid exactly when every guard still holds (same projections, same strides,
every layer's output at least 1): `solve_sizes` evaluates all guards for every size in a range at
once, with numpy, and summarises each free dim's valid sizes as a rule (`H >= 33`,
`H in {140 + 16k}`, `multiples of 32`). No model is built and torch is not imported.

The rules feed the input guard of the generated forward and `resgraph sizes`.

>>> from resgraph.graph import GraphBuilder
>>> from resgraph.shapes import infer_shapes
>>> b = GraphBuilder("Net")
>>> _ = b.input("x", [3, 32, 32]), b.layer("conv", "Conv2d", out_channels=8, kernel_size=3, stride=2)
>>> report = solve_sizes(infer_shapes(b.build()))
>>> [dim.rule.describe(dim.name) for dim in report.dims]
['C = 3', 'H >= 3', 'W >= 3']
"""

from __future__ import annotations

import bisect
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError
from .expressions import MAX_MAGNITUDE
from .graph import Graph
from .symbolic import COMPARISONS, MAX_SIZE, VECTOR_OPS, Expr, Guard, SymInt, evaluate, post_order, requirement

__all__ = ["DEFAULT_RANGE", "MAX_SIZE_SPAN", "DimSizes", "SizeLink", "SizeReport", "SizeRule", "check_range",
           "joint_guards", "linked_sizes", "linked_symbols", "smallest_without_ones", "solve_sizes", "valid_sizes_mask"]

DEFAULT_RANGE = (1, 2048)
MAX_SIZE_SPAN = 2**20  # sizes tried at once: 1..2^20 takes about 0.2 GB and 2 s
MAX_PERIOD = 256  # the longest period a rule of sizes is looked for with (products of strides)


def check_range(low: int, high: int) -> None:
    """Refuse a range of sizes the solver cannot try at once.

    Every size in the range is evaluated at once (arrays of its length): 1..10^8 ran out of memory,
    and a size past int64 cannot be held.

    Raises:
        UsageError: an empty range, or one of more than MAX_SIZE_SPAN sizes or beyond 2^62.
    """
    if not 1 <= low <= high:
        raise UsageError(f"size range {low}..{high}: expected 1 <= low <= high")
    if high > MAX_MAGNITUDE or high - low + 1 > MAX_SIZE_SPAN:
        raise UsageError(f"size range {low}..{high}: at most {MAX_SIZE_SPAN:,} sizes, up to 2^62, are tried at once; "
                         "ask for a narrower range (e.g. 1..2048, or 100000..200000)")


@dataclass(frozen=True)
class SizeRule:
    """The sizes a dim admits, as a rule a reader (and a one-line check) can use.

    kind: "fixed" (one value), "at_least" (start and up), "progression" (start + step*k, k >= 0, up to
    stop where given), "range" (start..stop), "periodic" (from start on, up to stop where given, the
    sizes whose offset from start modulo step is one of `values`), "set" (exactly the listed values;
    with a `stop`, the listed values up to stop, where the sizes were solved, and any size above it,
    which is not known to fail: sizes that follow no pattern tell nothing of the sizes past them),
    "none".
    """

    kind: str
    start: int = 0
    step: int = 1
    stop: int | None = None
    values: tuple[int, ...] = ()

    def holds(self, size: int) -> bool:
        if self.kind == "none":
            return False
        if self.kind == "fixed":
            return size == self.start
        if self.kind == "set":
            return size in self.values or (self.stop is not None and size > self.stop)
        if self.kind == "periodic":
            return (self.start <= size <= (size if self.stop is None else self.stop)
                    and (size - self.start) % self.step in self.values)
        if size < self.start or (self.stop is not None and size > self.stop):
            return False
        return (size - self.start) % self.step == 0

    def describe(self, name: str) -> str:
        """'H >= 33', 'H in {140 + 16k}', 'H: multiples of 32', '224 <= H <= 239', 'C = 3'."""
        if self.kind == "none":
            return f"no {name} works"
        if self.kind == "fixed":
            return f"{name} = {self.start}"
        if self.kind == "at_least":
            return f"any {name}" if self.start <= 1 else f"{name} >= {self.start}"
        if self.kind == "range":
            return f"{self.start} <= {name} <= {self.stop}"
        if self.kind == "progression":
            bound = f" up to {self.stop}" if self.stop is not None else ""
            if self.start == self.step:
                return f"{name}: multiples of {self.step}{bound}"
            return f"{name} in {{{self.start} + {self.step}k}}{bound}"
        if self.kind == "periodic":
            bound = f" up to {self.stop}" if self.stop is not None else ""
            listed = ", ".join(str(self.start + offset) for offset in self.values)
            return f"{name} in {{{listed}}} + {self.step}k{bound}"
        if not self.values and self.stop is not None:
            return f"{name} > {self.stop} (not solved there)"
        shown = ", ".join(map(str, self.values[:12])) + (", ..." if len(self.values) > 12 else "")
        above = f", or {name} > {self.stop} (not solved there)" if self.stop is not None else ""
        return f"{name} in {{{shown}}}{above}"

    def violation(self, size: str) -> str | None:
        """A Python condition on `size` (an expression) that is true for exactly the sizes the rule refuses,
        or None when there is nothing to refuse. A "set" is checked by membership in a set display
        (which Python compiles to a frozenset constant: one hash lookup, however many sizes)."""
        if self.kind == "fixed":
            return f"{size} != {self.start}"
        if self.kind == "at_least":
            return None if self.start <= 1 else f"{size} < {self.start}"
        if self.kind == "range":
            return f"not {self.start} <= {size} <= {self.stop}"
        if self.kind == "progression":
            above = f" or {size} > {self.stop}" if self.stop is not None else ""
            if self.start == self.step:  # (0 is a multiple too, but no size)
                return f"{size} < {self.step} or {size} % {self.step} != 0{above}"
            return f"{size} < {self.start}{above} or ({size} - {self.start}) % {self.step} != 0"
        if self.kind == "periodic":
            above = f" or {size} > {self.stop}" if self.stop is not None else ""
            return (f"{size} < {self.start}{above} or ({size} - {self.start}) % {self.step} not in "
                    f"{{{', '.join(map(str, self.values))}}}")
        if self.kind == "set" and not self.values and self.stop is not None:
            return f"{size} <= {self.stop}"
        if self.kind == "set" and self.values:
            members = f"{size} not in {{{', '.join(map(str, self.values))}}}"
            return members if self.stop is None else f"{size} < {self.start} or ({size} <= {self.stop} and {members})"
        return "True" if self.kind == "none" else None

    def __str__(self) -> str:
        return self.describe("size")


@dataclass(frozen=True)
class DimSizes:
    """One dim of one input: its name (`H`), declared size and the sizes that work."""

    input: str
    axis: int  # per-sample axis (the batch is not counted)
    name: str  # C, H, W, L, ...
    declared: int
    free: bool  # False for channels/features, fixed by the model's parameters
    rule: SizeRule
    valid: tuple[int, ...] = ()  # in the range searched (free dims only)
    failures: dict[int, str] = field(default_factory=dict, compare=False)  # size -> first node that fails
    # The free dims the model needs equal to this one (`pad.L` for a mask over x's sequence), as
    # symbols: they are solved together, each at the same size, and the guard checks they agree.
    linked: tuple[str, ...] = ()
    # This dim's size as an expression of each other dim related to it one-to-one but not equal (`x.L + 1`
    # for a mask over a class token and x's sequence; see `linked_sizes`): the input guard checks the
    # relations themselves (`SizeReport.joint`).
    related: tuple[str, ...] = ()
    # The rule the input guard checks, where it is not `rule`: a condition this dim shares with other
    # free dims (`q.L1 % k.L1 == 0`, `pad.L == (x.L - 1) // 2 + 1`) is checked as it is (`SizeReport.joint`),
    # not at their declared sizes as `rule` states it; this is what the dim's guards on it alone admit.
    checked: SizeRule | None = None

    @property
    def checked_rule(self) -> SizeRule:
        """The rule the input guard checks this dim by (`checked`, else `rule`)."""
        return self.rule if self.checked is None else self.checked

    @property
    def smallest(self) -> int | None:
        return self.valid[0] if self.valid else (self.rule.start if self.rule.kind == "fixed" else None)

    def __repr__(self) -> str:
        # concise: `valid` and `failures` list every size searched (thousands), kept as data, counted here
        if not self.free:
            return f"DimSizes({self.input}.{self.name} = {self.declared}, fixed)"
        same = f", equal to {', '.join((*self.linked, *self.related))}" if self.linked or self.related else ""
        return (f"DimSizes({self.input}.{self.name}: {self.rule.describe(self.name)}, declared {self.declared}, "
                f"{len(self.valid)} valid, {len(self.failures)} failing{same})")

    def nearest(self, count: int = 3) -> list[int]:
        """The valid sizes closest to the declared one."""
        return sorted(self.valid, key=lambda n: (abs(n - self.declared), n))[:count]


@dataclass(frozen=True)
class SizeReport:
    """Every dim of every input, and, for square inputs, the sizes where all spatial dims are equal.

    `square` and `square_valid` are empty where they were not solved (`solve_sizes(square=False)`,
    as a build solves for its input guard, `graph.meta["sizes"]`), as for an input without two
    free dims; `resgraph sizes` and `valid_sizes` solve them.
    """

    dims: tuple[DimSizes, ...]
    square: dict[str, SizeRule] = field(default_factory=dict)  # input -> rule when its free dims are equal
    square_valid: dict[str, tuple[int, ...]] = field(default_factory=dict)
    range: tuple[int, int] = DEFAULT_RANGE
    # conditions on several free dims at once that the rules do not imply (see `joint_guards`), each with
    # the symbols it reads; the input guard checks them
    joint: tuple[tuple[Guard, frozenset[str]], ...] = ()

    def __repr__(self) -> str:
        # concise (a REPL echoes it): each dim's rule and counts; `format()` is the full report
        square = "".join(f", square {name}: {rule.describe('size')}" for name, rule in self.square.items())
        joint = f", {len(self.joint)} joint condition{'s' if len(self.joint) != 1 else ''}" if self.joint else ""
        low, high = self.range
        return f"SizeReport({low}..{high}: {', '.join(map(repr, self.dims))}{square}{joint})"

    def of(self, input_name: str) -> list[DimSizes]:
        return [dim for dim in self.dims if dim.input == input_name]

    def format(self, title: str) -> str:
        """The report as text: per input, each dim's rule, the valid sizes with the smallest and the
        declared one marked, and the invalid sizes nearest the declared one with the node that fails."""
        low, high = self.range
        lines = [f"{title}: input sizes tried per free dim: {low}..{high} (others at their declared size)"]
        for input_name in dict.fromkeys(dim.input for dim in self.dims):
            dims = self.of(input_name)
            shape = ", ".join(dim.name if dim.free else str(dim.declared) for dim in dims)
            declared = ", ".join(str(dim.declared) for dim in dims)
            lines.append(f"{input_name}: (N, {shape}), declared (N, {declared})")
            for dim in dims:
                if not dim.free:
                    lines.append(f"  {dim.name} = {dim.declared} (fixed by the layers' parameters)")
                    continue
                same = f" (equal to {', '.join((*dim.linked, *dim.related))})" if dim.linked or dim.related else ""
                lines.append(f"  {dim.rule.describe(dim.name)}{same}: {_sample(dim.valid, dim.declared)}")
                below = [n for n in dim.failures if n < dim.declared]
                above = [n for n in dim.failures if n > dim.declared]
                invalid = ([max(below)] if below else []) + ([min(above)] if above else [])
                if invalid:
                    lines.append("    invalid, e.g. " + ", ".join(f"{n} (fails at {dim.failures[n]!r})"
                                                                 for n in invalid))
            if input_name in self.square:
                names = " = ".join(dim.name for dim in dims if dim.free)
                rule = self.square[input_name]
                lines.append(f"  {names}: {rule.describe('size')}: {_sample(self.square_valid[input_name], None)}")
        lines += [f"together: {guard}, as {guard.site!r} needs (beyond each dim's own rule)"
                  for guard, _ in self.joint]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        for dim in self.dims:
            entry = inputs.setdefault(dim.input, {"dims": []})
            entry["dims"].append({
                "name": dim.name, "axis": dim.axis, "declared": dim.declared, "free": dim.free,
                "rule": dim.rule.describe(dim.name), "smallest": dim.smallest, "valid": list(dim.valid),
                "failures": {str(size): where for size, where in sorted(dim.failures.items())},
                **({"equal_to": [*dim.linked, *dim.related]} if dim.linked or dim.related else {})})
        for name, rule in self.square.items():
            inputs[name]["square"] = {"rule": rule.describe("size"), "valid": list(self.square_valid[name])}
        together = [{"condition": str(guard), "at": guard.site} for guard, _ in self.joint]
        return {"range": list(self.range), "inputs": inputs, **({"together": together} if together else {})}


def solve_sizes(graph: Graph, *, low: int = DEFAULT_RANGE[0], high: int = DEFAULT_RANGE[1],
                failures: bool = False, square: bool = True) -> SizeReport:
    """The sizes in [low, high] each free input dim admits (the others at their declared size).

    Args:
        graph: the top-level graph, after `infer_shapes` (which records the guards).
        failures: also name, for each invalid size, the first node whose decision fails there.
        square: also solve, for each input with two or more free dims, the sizes they admit when
            all equal (`SizeReport.square`: a report states it; a forward's input guard does not).
    Raises:
        UsageError: a range `check_range` refuses.
    """
    check_range(low, high)
    guards: list[Guard] = graph.meta.get("guards", [])
    symbols: dict[str, tuple[str, int, int]] = graph.meta.get("symbols", {})

    reads, constants = _guard_facts(guards)
    all_guards, all_reads, all_constants = guards, reads, constants

    def own_rule(varying: set[str], maps: dict[str, tuple[int, int]] | None = None) -> SizeRule | None:
        """The rule of `varying` from the guards that read no dim of another input, where some guard reads
        one (None where none does: the rule itself). Such a guard is checked as it is (`joint_guards`);
        folded into the rule with the other input's dims at their declared sizes, it held `k.L1` to the
        divisors of q's declared heads, and a mask over a strided sequence to its declared length. (A
        condition on two dims of one input stays in each one's rule, at the other's declared size: the
        guard keeps to each dim's rule, and checks the condition too where the rules do not imply it.)"""
        own_inputs = {symbols[symbol][0] for symbol in varying if symbol in symbols}
        keep = [index for index, read in enumerate(reads) if read & varying]
        own = [index for index in keep if all(symbol in varying or symbols.get(symbol, ("",))[0] in own_inputs
                                              for symbol in reads[index])]
        if len(own) == len(keep):
            return None
        return solve(varying, maps, ([guards[i] for i in own], [reads[i] for i in own],
                                     [constants[i] for i in own]))[0]

    def solve(varying: set[str], maps: dict[str, tuple[int, int]] | None = None,
              chosen: tuple[list[Guard], list[frozenset[str]], list[int]] | None = None,
              ) -> tuple[SizeRule, tuple[int, ...], dict[int, str]]:
        """The rule the sizes of `varying` follow, the valid sizes in [low, high], and (with `failures`)
        the site of the first guard failing at each other size there. With `maps` (scale, offset) for
        some of them (a group of `linked_sizes`), of the group's parameter k instead: each of those is
        `scale * k + offset`, and k's range holds every member's sizes in [low, high]. `chosen`: the
        guards to solve, with their reads and constants, where not all of them (`own_rule`).

        The rule is solved over 1..span (twice past the declared sizes and every constant the guards
        compare with, see `_interest`), whatever range was asked for: it is what the input guard checks,
        so a bound beyond the range (a position table of 4,096 rows) or a declared size beyond it (16,000
        audio samples) must not be lost. Where that span passes MAX_SIZE_SPAN (2,000,000 samples, a table
        of 2^20 rows), windows around those sizes are solved instead (`_windowed_rule`)."""
        maps = maps or {}
        guards, reads, constants = chosen or (all_guards, all_reads, all_constants)
        points = _interest(constants, reads, symbols, varying)
        # (k is at most a member's size plus its offset's magnitude: a constant that matters is reached by then)
        reach = max((abs(offset) for _, offset in maps.values()), default=0)
        places = [maps.get(name, (1, 0)) for name in varying]
        first_k = max(1, min(-((offset - low) // scale) for scale, offset in places))
        last_k = max(first_k, max((high - offset) // scale for scale, offset in places))
        span = max(DEFAULT_RANGE[1], 2 * points[-1] + 2 + reach, last_k if last_k <= MAX_SIZE_SPAN else 0)
        if span <= MAX_SIZE_SPAN:
            rule_sizes, rule_first = _solve_range(guards, symbols, varying, 1, span, failures, reads, maps)
            rule = _rule(rule_sizes, 1, span)
        else:
            rule = _windowed_rule(guards, symbols, varying, points, reads, maps)
        if span <= MAX_SIZE_SPAN and last_k <= span:
            values, first = rule_sizes, rule_first
        else:  # a range far past every constant, or a rule solved in windows: the range's sizes on their own
            values, first = _solve_range(guards, symbols, varying, first_k, last_k, failures, reads, maps)
        found = {size: guards[index].site for size, index in first.items() if first_k <= size <= last_k}
        return rule, values[bisect.bisect_left(values, first_k):bisect.bisect_right(values, last_k)], found

    dims = []
    links = linked_sizes(guards)
    groups = _equal_groups(links)
    lone: dict[str, tuple[SizeRule, tuple[int, ...]]] = {}  # what each symbol solved alone admits
    along: dict[frozenset[str], tuple[SizeRule, tuple[int, ...], dict[int, str]]] = {}  # each group, along k
    owned: dict[frozenset[str], SizeRule | None] = {}  # each group's `own_rule`, along k
    for input_name in graph.inputs:
        node_type = graph.nodes[input_name].meta["type"]
        names = _dim_names(node_type, input_name, symbols)
        for axis, size in enumerate(node_type.shape):
            symbol = next((s for s, (i, a, _) in symbols.items() if i == input_name and a == axis), None)
            if symbol is None:
                dims.append(DimSizes(input_name, axis, names[axis], size, False, SizeRule("fixed", size)))
                continue
            link = links.get(symbol)
            group = link.group if link is not None else frozenset((symbol,))
            twin = None if failures or len(group) > 1 else next(
                (other for other in lone if _mirrors(guards, reads, symbols, other, symbol)), None)
            if twin is not None:  # (W after H: the same guards, of another symbol, give the same answer)
                rule, values, found = *lone[twin], {}
            elif link is None:
                rule, values, found = solve({symbol})
                lone[symbol] = rule, values
            else:
                if group not in along:
                    along[group] = solve(set(group), _link_maps(links, group))
                rule, values, found = _at_link(link, *along[group], low, high)
            if group not in owned:
                owned[group] = own_rule(set(group), _link_maps(links, group))
            checked = owned[group]
            if checked is not None and link is not None:
                checked = _at_link(link, checked, (), {}, low, high)[0]
            equal = groups.get(symbol, frozenset((symbol,)))
            related = tuple(link.relative_to(links[other], other) for other in sorted(group - equal)) if link else ()
            dims.append(DimSizes(input_name, axis, names[axis], size, True, rule, values, found,
                                 tuple(sorted(equal - {symbol})), related, checked))
    square_rules: dict[str, SizeRule] = {}
    square_valid: dict[str, tuple[int, ...]] = {}
    for input_name in graph.inputs if square else ():
        free = {s for s, (i, _, _) in symbols.items() if i == input_name}
        if len(free) >= 2:
            square_rules[input_name], square_valid[input_name], _ = solve(
                set().union(*(groups.get(symbol, {symbol}) for symbol in free)))
    rules = {f"{dim.input}.{dim.name}": dim.checked_rule for dim in dims if dim.free}
    joint = tuple(joint_guards(guards, symbols, rules, reads=reads))
    return SizeReport(tuple(dims), square_rules, square_valid, (low, high), joint)


def _mirrors(guards: list[Guard], reads: list[frozenset[str]], symbols: dict[str, tuple[str, int, int]],
             solved: str, symbol: str) -> bool:
    """Whether `symbol` is held to what `solved` is, at the same declared size: the guards reading
    either read it alone, and pair up in order as the same decisions on the same expressions but
    for the symbol (an image's W and H, through the same convolutions and pools). Solved alone, it
    then admits exactly the sizes `solved` does. (The sites of failing guards may differ: only
    where failures are not named.)"""
    if symbols[solved][2] != symbols[symbol][2]:
        return False
    mine = [(guard, read) for guard, read in zip(guards, reads, strict=True) if symbol in read]
    theirs = [(guard, read) for guard, read in zip(guards, reads, strict=True) if solved in read]
    if len(mine) != len(theirs):
        return False
    seen: set[tuple[int, int]] = set()  # (expressions are shared: each pair is compared once)
    for (guard, read), (other, other_read) in zip(mine, theirs):
        if len(read) != 1 or len(other_read) != 1 or (guard.op, guard.outcome) != (other.op, other.outcome):
            return False
        pairs = [(guard.left, other.left), (guard.right, other.right)]
        while pairs:  # iterative, as expressions can be 100,000 nodes deep
            expr, counterpart = pairs.pop()
            if expr is counterpart or (id(expr), id(counterpart)) in seen:
                continue  # (one node in both reads neither symbol: the same value)
            seen.add((id(expr), id(counterpart)))
            if expr.op != counterpart.op:
                return False
            if expr.op == "sym":
                if (expr.args[0], counterpart.args[0]) != (symbol, solved):
                    return False
            elif expr.op == "const":
                if type(expr.args[0]) is not type(counterpart.args[0]) or expr.args[0] != counterpart.args[0]:
                    return False
            else:
                pairs.extend(zip(expr.args, counterpart.args))
    return True


def _solve_range(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], varying: set[str], low: int,
                 high: int, failures: bool, reads: list[frozenset[str]],
                 maps: dict[str, tuple[int, int]] | None = None) -> tuple[tuple[int, ...], dict[int, int]]:
    """The valid sizes in [low, high] of `varying` (see `valid_sizes_mask` for `maps`), and (with
    `failures`) the index of the first guard failing at each invalid one."""
    valid, first = valid_sizes_mask(guards, symbols, varying, low, high, failures=failures, reads=reads, maps=maps)
    values = _valid_values(valid, low)
    found: dict[int, int] = {}
    if failures:
        failing = (first >= 0).nonzero()[0]
        found = dict(zip((failing + low).tolist(), first[failing].tolist()))
    return values, found


def _valid_values(valid: Any, low: int) -> tuple[int, ...]:
    """The sizes from `low` on that the bool array `valid` marks, increasing.

    Each size above 256 is an int object of its own, and making 2,000 of them took a one-conv spec's
    size solving a quarter of its time per free dim: where the sizes are a run or a progression
    (nearly always) within `_SIZES`, the tuple is a slice of it, which shares its ints. (numpy turns
    other masks into ints: a Python loop over the 2,048 candidates cost ResNet-50's build 3 ms.)
    """
    indices = valid.nonzero()[0]
    count = len(indices)
    if count:
        first, last = int(indices[0]) + low, int(indices[-1]) + low
        if 0 <= first and last < len(_SIZES):
            step = 1 if count == 1 else int(indices[1] - indices[0])
            if last - first == step * (count - 1) and (count <= 2 or step == 1 or _equally_spaced(indices, step)):
                return _SIZES[first:last + 1:step]
    return tuple((indices + low).tolist())


def _equally_spaced(indices: Any, step: int) -> bool:
    import numpy

    return bool((numpy.diff(indices) == step).all())


_SIZES = tuple(range(DEFAULT_RANGE[1] + 1))  # every size a rule is solved over by default, to slice (`_valid_values`)


def _interest(constants: list[int], reads: list[frozenset[str]], symbols: dict[str, tuple[str, int, int]],
              varying: set[str]) -> list[int]:
    """The sizes where the rule of `varying` may change, increasing: the declared sizes and every constant the
    guards on `varying` compare with (`constants`: each guard's largest). A size past them all changes no
    decision that a smaller one did not, so a rule solved twice past them that still holds there holds on."""
    declared = {symbols[name][2] for name in varying}
    return sorted(declared | {constant for constant, read in zip(constants, reads, strict=True) if read & varying})


WINDOW = 8 * MAX_PERIOD  # the sizes tried on either side of a size that matters, where all cannot be tried


def _windowed_rule(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], varying: set[str],
                   points: list[int], reads: list[frozenset[str]],
                   maps: dict[str, tuple[int, int]] | None = None) -> SizeRule:
    """The rule of `varying` where its sizes reach past MAX_SIZE_SPAN (a declared size of 2,000,000, a
    position table of 2^20 rows): solved over 1..DEFAULT_RANGE's end and a window of WINDOW sizes around
    each of `points` (and twice each, as the span would be). The sizes between two windows are taken to
    follow the rule both edges follow, and the sizes past the last window the rule its end follows: one
    range of sizes (`_one_range`), or the first window's rule, unbounded or up to where the windows stop
    following it (`_first_rule_bounded`). Where neither states every window, the sizes past the first
    window are unknown and the rule admits them (a 'set' with a stop): it may let a size through to
    torch's own error, but never refuses a valid size by a bound it did not solve."""
    centres = sorted({*points, *(2 * point for point in points)})
    spans: list[list[int]] = [[1, DEFAULT_RANGE[1]]]
    for centre in centres:
        low, high = max(1, centre - WINDOW), min(centre + WINDOW, MAX_SIZE)
        if low <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], high)
        else:
            spans.append([low, high])
    windows = [(low, valid_sizes_mask(guards, symbols, varying, low, high, reads=reads, maps=maps)[0])
               for low, high in spans]
    rule = _one_range(windows) or _first_rule_bounded(windows)
    if rule is not None:
        return rule
    # the first window's valid sizes, listed, and every size past it admitted
    first = windows[0][1]
    values = tuple((first.nonzero()[0] + 1).tolist())
    return SizeRule("set", values[0] if values else len(first) + 1, stop=len(first), values=values)


def _one_range(windows: list[tuple[int, Any]]) -> SizeRule | None:
    """The rule of the windows' valid sizes (`(first size, mask)`, increasing) where they are one range,
    or none: a gap whose edges are both valid (half a window each) is valid, one whose edges are both
    invalid is invalid, and the sizes past the last window are as its last half window is. None where the
    edges of a gap or the end disagree, or the valid sizes are more than one range."""
    half = WINDOW // 2
    runs: list[list[int]] = []  # valid sizes as [first, last]; last -1: no end
    for index, (low, valid) in enumerate(windows):
        if index:
            end = windows[index - 1][0] + len(windows[index - 1][1]) - 1
            before_valid = bool(runs) and runs[-1][1] == end and runs[-1][0] <= end - half + 1
            before_invalid = not runs or runs[-1][1] <= end - half
            if before_valid and valid[:half].all():
                runs[-1][1] = low - 1
            elif not (before_invalid and not valid[:half].any()):
                return None  # the edges disagree: the sizes between were not solved
        for start, stop in _runs(valid.nonzero()[0].tolist()):
            if runs and runs[-1][1] == low + start - 1:
                runs[-1][1] = low + stop
            else:
                runs.append([low + start, low + stop])
    tail = windows[-1][1][-half:]
    if len(runs) > 1 or (tail.any() and not tail.all()):
        return None  # (two runs are no range, whichever runs on: the first would be stated alone)
    if tail.all():
        runs[-1][1] = -1
    if not runs:
        return SizeRule("none")
    start, stop = runs[0]
    return (SizeRule("at_least", start) if stop < 0 else SizeRule("fixed", start) if start == stop
            else SizeRule("range", start, 1, stop))


def _first_rule_bounded(windows: list[tuple[int, Any]]) -> SizeRule | None:
    """The rule of the first window's valid sizes, where it runs to that window's end (`L: multiples of
    4`), if every later window follows it (stated unbounded), or follows it up to a size and has no valid
    size past that one (stated up to it: multiples of 4 up to a position table's 2^20 rows); else None.
    A window that does not follow it from its first size on leaves the sizes before it unknown: None."""
    import numpy

    low, first = windows[0]
    rule = _rule(tuple((first.nonzero()[0] + low).tolist()), low, low + len(first) - 1)
    if rule.kind not in ("at_least", "progression", "periodic") or rule.stop is not None:
        return None
    last = None  # the last valid size, once a window stops following the rule
    for low, valid in windows[1:]:
        sizes = numpy.arange(low, low + len(valid), dtype=numpy.int64)
        follows = sizes >= rule.start
        if rule.kind != "at_least":
            offsets = (sizes - rule.start) % rule.step
            follows &= offsets == 0 if rule.kind == "progression" else numpy.isin(offsets, rule.values)
        if last is not None:
            if valid.any():
                return None
            continue
        differ = (valid != follows).nonzero()[0]
        if len(differ) == 0:
            continue
        if differ[0] == 0 or valid[differ[0]:].any():
            return None
        last = int(low + valid[:differ[0]].nonzero()[0][-1]) if valid[:differ[0]].any() else None
        if last is None:
            return None
    if last is None:
        return rule
    if rule.kind == "at_least":
        return SizeRule("range", rule.start, 1, last)
    return SizeRule(rule.kind, rule.start, rule.step, last, rule.values)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Increasing indices as maximal runs of consecutive ones: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def smallest_without_ones(graph: Graph, symbol: str, start: int, high: int = DEFAULT_RANGE[1]) -> int | None:
    """The smallest size >= start of `symbol` (its group of `linked_sizes` moving with it: equal dims
    at the same size, related ones along their relation) at which every node's size that depends on
    it is at least 2.

    torch.export treats a size of 1 as a special case (it broadcasts): a dynamic dim must keep every
    size it determines at 2 or more, so its minimum there is this, not the solver's. (A related dim
    held at its declared size would pin this one at its declared size too: `x.L + 1 == m.L` with m.L
    at 6 leaves x.L only 5.)

    Sizes are tried in chunks from `start`, growing to MAX_SIZE_SPAN in all (then the last WINDOW up to
    `high`): a model declared at 4e9 samples has a range of 4e9 sizes, which no array holds. None where
    none of those is found."""
    symbols = graph.meta.get("symbols", {})
    guards = graph.meta.get("guards", [])
    links = linked_sizes(guards)
    link = links.get(symbol, SizeLink(frozenset((symbol,)), 1, 0))
    group, scale, offset = link.group, link.scale, link.offset
    maps = _link_maps(links, group)
    need = [requirement("ge", SymInt(expr, 0), 2) for expr in graph.meta.get("size_exprs", [])]
    need = [guard for guard, read in zip(need, _guard_symbols(need), strict=True) if read & group]
    # the group's parameter k (this symbol's size is scale * k + offset), from the first k reaching `start`
    first, last = max(1, -(-(start - offset) // scale)), (high - offset) // scale
    chunks, low, width = [], first, DEFAULT_RANGE[1]
    while low <= last and low - first < MAX_SIZE_SPAN:
        chunks.append((low, min(last, low + width - 1)))
        low, width = low + width, 2 * width
    if low <= last:
        chunks.append((max(low, last - WINDOW + 1), last))
    for low, stop in chunks:
        valid, _ = valid_sizes_mask([*guards, *need], symbols, set(group), low, stop, maps=maps)
        if valid.any():
            return scale * (low + int(valid.argmax())) + offset
    return None


def _link_maps(links: dict[str, SizeLink], group: frozenset[str]) -> dict[str, tuple[int, int]]:
    """(scale, offset) of each member of a group of `linked_sizes` that is not the group's parameter k
    itself: what `valid_sizes_mask` takes as `maps`."""
    return {name: (links[name].scale, links[name].offset) for name in group
            if name in links and (links[name].scale, links[name].offset) != (1, 0)}


def joint_guards(guards: list[Guard], symbols: dict[str, tuple[str, int, int]] | None = None,
                 rules: dict[str, SizeRule] | None = None, *,
                 reads: list[frozenset[str]] | None = None) -> list[tuple[Guard, frozenset[str]]]:
    """The guards that read free dims solved apart (not one group of `linked_symbols`): `x.H + x.W >= 10`
    for a kernel of 10 over H and W concatenated, each with the symbols it reads.

    Each dim's rule is solved with the others at their declared sizes, so rules alone do not state
    such a guard: H >= 2 and W >= 2 hold at 2x2, where H + W >= 10 does not. The input guard checks
    these as they are, except (given each symbol's `rules`) one that holds at every combination of
    sizes the rules admit, where they admit finitely many (ViT's 16 x 16 sizes, one patch count).
    `reads`: the symbols each guard reads, where the caller has them (`_guard_symbols`).

    >>> from resgraph.symbolic import SymInt, recording
    >>> h, w = SymInt.symbol("x.H", 8), SymInt.symbol("x.W", 8)
    >>> with recording() as guards:
    ...     _ = (h + w >= 10, h >= 2)
    >>> [(str(guard), sorted(read)) for guard, read in joint_guards(guards)]
    [('x.H + x.W >= 10', ['x.H', 'x.W'])]
    >>> joint_guards(guards, {}, {"x.H": SizeRule("range", 5, 1, 9), "x.W": SizeRule("range", 5, 1, 9)})
    []
    """
    groups = linked_symbols(guards)
    reads = _guard_symbols(guards) if reads is None else reads
    joint = [(guard, read) for guard, read in zip(guards, reads, strict=True)
             if len({groups.get(symbol, symbol) for symbol in read}) > 1]
    if rules is None:
        return joint
    return [(guard, read) for guard, read in joint if not _implied(guard, read, symbols or {}, rules)]


def _implied(guard: Guard, read: frozenset[str], symbols: dict[str, tuple[str, int, int]],
             rules: dict[str, SizeRule]) -> bool:
    """Whether `guard` holds at every combination of the sizes the `rules` of the symbols it reads admit:
    shown by the bounds of its two sides (`_bounds`: `1 + A * B > 0` for sizes A, B of at least 1), or
    by evaluating it at every combination; False where neither shows it (one rule admits unboundedly
    many sizes, or the combinations exceed MAX_SIZE_SPAN)."""
    import numpy

    ranges = {symbol: _span(rule) for symbol, rule in rules.items() if rule.kind != "none"}
    left, right = _bounds(guard.left, ranges), _bounds(guard.right, ranges)
    if left is not None and right is not None and _decided(guard.op, left, right) == guard.outcome:
        return True
    admitted = []
    for symbol in sorted(read):
        rule = rules.get(symbol)
        if rule is None or rule.kind in ("at_least", "periodic", "none") or (
                rule.kind == "progression" and rule.stop is None) or (rule.kind == "set" and rule.stop is not None):
            return False
        values = (rule.values if rule.kind == "set" else (rule.start,) if rule.kind == "fixed"
                  else tuple(range(rule.start, rule.stop + 1, rule.step)))  # type: ignore[operator]
        admitted.append(numpy.asarray(values, dtype=numpy.int64))
    if math.prod(len(values) for values in admitted) > MAX_SIZE_SPAN:
        return False
    grids = numpy.meshgrid(*admitted, indexing="ij")
    env: dict[str, Any] = {name: numpy.int64(value) for name, (_, _, value) in symbols.items()}
    env.update({symbol: grid.ravel() for symbol, grid in zip(sorted(read), grids, strict=True)})
    ops, overflow = _checked_ops(len(grids[0].ravel()))
    with numpy.errstate(divide="ignore", invalid="ignore", over="ignore"):
        left, right = evaluate(guard.left, env, ops=ops), evaluate(guard.right, env, ops=ops)
        holds = COMPARISONS[guard.op](left, right) == guard.outcome
    return bool(numpy.all(holds & ~overflow))


Bounds = tuple[float, float]  # the least and the greatest value an expression takes (either may be infinite)


def _bounds(expr: Expr, ranges: dict[str, Bounds]) -> Bounds | None:
    """Bounds of `expr` where each symbol lies in its range (None where a symbol has none, or an operation's
    bounds are not followed here: a division by a size). Interval arithmetic, enough to show that a
    condition on two free dims holds at every size each admits alone (`_implied`).

    >>> h = SymInt.symbol("x.H", 224)
    >>> _bounds((1 + ((h - 16) // 16 + 1) * 2).expr, {"x.H": (16, math.inf)})
    (3, inf)
    """
    found: dict[Expr, Bounds | None] = {}
    for node in post_order((expr,), found):
        if node.op == "sym":
            found[node] = ranges.get(node.args[0])
            continue
        if node.op == "const":
            found[node] = (node.args[0], node.args[0])
            continue
        a, b = found[node.args[0]], found[node.args[1]]
        if a is None or b is None:
            found[node] = None
        elif node.op == "add":
            found[node] = (a[0] + b[0], a[1] + b[1])
        elif node.op in ("mul", "fmul") and (node.op == "mul" or b[0] == b[1] >= 0):
            ends = [0 if 0 in (x, y) else x * y for x in a for y in b]  # (a size's 0 times inf: 0)
            found[node] = (min(ends), max(ends)) if node.op == "mul" else (math.floor(a[0] * b[0]), a[1] * b[0])
        elif node.op == "floordiv" and b[0] == b[1] > 0:
            found[node] = tuple(end if math.isinf(end) else end // b[0] for end in a)  # type: ignore[assignment]
        elif node.op == "mod" and b[0] == b[1] > 0:
            found[node] = (0, b[0] - 1)
        elif node.op in ("max", "min"):
            pick = max if node.op == "max" else min
            found[node] = (pick(a[0], b[0]), pick(a[1], b[1]))
        else:
            found[node] = None
    return found[expr]


def _span(rule: SizeRule) -> Bounds:
    """The least and the greatest size `rule` admits (a "set" with a stop admits every size past it)."""
    if rule.kind == "fixed":
        return rule.start, rule.start
    if rule.kind == "set":
        least = min(rule.values) if rule.values else (rule.stop or 0) + 1
        return least, math.inf if rule.stop is not None else max(rule.values)
    return rule.start, math.inf if rule.stop is None else rule.stop


def _decided(op: str, left: Bounds, right: Bounds) -> bool | None:
    """The outcome of `left <op> right` at every value within the bounds, or None where it varies."""
    if op in ("lt", "ge") and (left[1] < right[0] or left[0] >= right[1]):
        return (left[1] < right[0]) == (op == "lt")
    if op in ("le", "gt") and (left[1] <= right[0] or left[0] > right[1]):
        return (left[1] <= right[0]) == (op == "le")
    if op in ("eq", "ne") and (left[1] < right[0] or left[0] > right[1]):
        return op == "ne"
    return None


@dataclass(frozen=True)
class SizeLink:
    """A free dim's place in a group of free dims the model relates one-to-one (`pad.L == x.L`, or
    `1 + x.L == mask.L`: a class token before a sequence, added to an input one longer): at each value
    k >= 1 of the group's parameter its size is `scale * k + offset`. Every choice of sizes that meets
    the relations is one k's, and k = 1 is the smallest at which every member is at least 1."""

    group: frozenset[str]
    scale: int
    offset: int

    def relative_to(self, other: SizeLink, name: str) -> str:
        """This dim's size as an expression of `other`'s (named `name`): 'x.L + 1', '2 * x.L', 'y.L / 2'.

        >>> SizeLink(frozenset(), 1, 1).relative_to(SizeLink(frozenset(), 1, 0), "x.L")
        'x.L + 1'
        >>> SizeLink(frozenset(), 1, 3).relative_to(SizeLink(frozenset(), 2, 1), "y.L")
        '(y.L + 5) / 2'
        """
        # k = (other - other.offset) / other.scale, so this is (scale * other + shift) / other.scale
        scale, shift, divisor = self.scale, self.offset * other.scale - self.scale * other.offset, other.scale
        common = math.gcd(scale, shift, divisor)
        scale, shift, divisor = scale // common, shift // common, divisor // common
        text = name if scale == 1 else f"{scale} * {name}"
        text += f" + {shift}" if shift > 0 else f" - {-shift}" if shift < 0 else ""
        return text if divisor == 1 else f"({text}) / {divisor}" if shift else f"{text} / {divisor}"


MAX_LINK_SCALE = 2**16  # a relation scaling a size further (an upsample by 2^20) is not linked: solved apart


def linked_sizes(guards: list[Guard]) -> dict[str, SizeLink]:
    """Free dims the model relates one-to-one, each with its place in its group (see `SizeLink`), for
    symbols in a group of two or more.

    A guard that held `a * X + b == c * Y + d` (integer a, c of one sign: a mask over x's sequence, an
    input one longer than x's sequence after a class token, a skip from an upsample by 2) relates X and Y
    wherever it has integer solutions: its solutions are `X = X0 + (c/g) k`, `Y = Y0 + (a/g) k`. Such
    dims admit no other size alone, only together: the solver varies a group at once, along k. A
    relation that needs no new link (a second one within a group) is a guard like any other, which
    the solver checks at each k.

    >>> from resgraph.symbolic import Guard, SymInt
    >>> x, mask, y = (SymInt.symbol(name, 6) for name in ("x.L", "mask.L", "y.L"))
    >>> links = linked_sizes([Guard("eq", (1 + x).expr, mask.expr, True, "add"),
    ...                       Guard("eq", (2 * x).expr, y.expr, True, "skip")])
    >>> [(name, link.scale, link.offset) for name, link in sorted(links.items())]
    [('mask.L', 1, 1), ('x.L', 1, 0), ('y.L', 2, 0)]
    """
    place: dict[str, tuple[str, int, int]] = {}  # symbol -> (its group's first symbol, scale, offset)
    members: dict[str, list[str]] = {}
    for guard in guards:
        # `a == b` that held, or `a != b` that failed (ops check either way: `if k.shape[-1] != q.shape[-1]`)
        if (guard.op, guard.outcome) in (("eq", True), ("ne", False)):
            left, right = _affine(guard.left), _affine(guard.right)
            if left is not None and right is not None and left[1] != right[1]:
                _link(place, members, left, right)
    links: dict[str, SizeLink] = {}
    for names in members.values():
        if len(names) > 1:
            group = frozenset(names)
            links.update({name: SizeLink(group, *place[name][1:]) for name in names})
    return links


def linked_symbols(guards: list[Guard]) -> dict[str, frozenset[str]]:
    """Free dims the model needs equal (a guard `pad.L == x.L`: a mask over x's sequence, two inputs
    added; `1 + pad.L == 1 + x.L`: a class token before both): symbol -> every symbol of its group,
    itself included, for symbols in a group of two or more. (The members of one group of `linked_sizes`
    at the same place in it.)

    >>> from resgraph.symbolic import Guard, SymInt
    >>> a, b, c = (SymInt.symbol(name, 6) for name in ("x.L", "pad.L", "y.L"))
    >>> sorted(linked_symbols([Guard("eq", b.expr, a.expr, True, "attn")])["x.L"])
    ['pad.L', 'x.L']
    """
    return _equal_groups(linked_sizes(guards))


def _equal_groups(links: dict[str, SizeLink]) -> dict[str, frozenset[str]]:
    """`linked_symbols` from `linked_sizes`: the members of a group at the same place in it."""
    equal: dict[SizeLink, set[str]] = {}
    for name, link in links.items():
        equal.setdefault(link, set()).add(name)
    return {name: frozenset(group) for group in equal.values() if len(group) > 1 for name in group}


def _at_link(link: SizeLink, rule: SizeRule, values: tuple[int, ...], found: dict[int, str], low: int,
             high: int) -> tuple[SizeRule, tuple[int, ...], dict[int, str]]:
    """A member's rule, valid sizes in [low, high] and failing sizes there, from its group's along the
    parameter k (each size is `link.scale * k + link.offset`).

    >>> _at_link(SizeLink(frozenset(), 2, 1), SizeRule("at_least", 1), (1, 2, 3), {}, 1, 6)[:2]
    (SizeRule(kind='progression', start=3, step=2, stop=None, values=()), (3, 5))
    """
    scale, offset = link.scale, link.offset
    if (scale, offset) == (1, 0):
        return rule, values, found
    stop = None if rule.stop is None else scale * rule.stop + offset
    start = scale * rule.start + offset
    if rule.kind in ("none", "fixed") or (scale == 1 and rule.kind in ("at_least", "range")):
        mapped = SizeRule(rule.kind, start, rule.step, stop)
    elif rule.kind in ("at_least", "range", "progression"):
        mapped = SizeRule("progression", start, scale * rule.step, stop)
    else:  # periodic, set
        step = scale * rule.step if rule.kind == "periodic" else rule.step
        mapped = SizeRule(rule.kind, start, step, stop, tuple(
            scale * value + (offset if rule.kind == "set" else 0) for value in rule.values))
    sizes = tuple(size for size in (scale * k + offset for k in values) if low <= size <= high)
    return mapped, sizes, {size: site for k, site in found.items() if low <= (size := scale * k + offset) <= high}


def _affine(expr: Expr) -> tuple[int, str, int] | None:
    """(a, X, b) for an expression `a * X + b` of one symbol X with integer a (not 0) and b: `1 + x.L`,
    `x.L * 2`, `2 * (x.L - 1)`; None for any other (`x.L // 2`: not one-to-one).

    >>> x = SymInt.symbol("x.L", 6)
    >>> _affine((2 * (x - 1)).expr), _affine((x // 2).expr)
    ((2, 'x.L', -2), None)
    """
    scale, offset = 1, 0
    while expr.op in ("add", "mul"):
        op, (first, second) = expr.op, expr.args
        constant, expr = (second, first) if second.op == "const" else (first, second)
        value = constant.args[0] if constant.op == "const" else None
        if type(value) is not int or (op == "mul" and value == 0):
            return None
        if op == "add":
            offset += scale * value
        else:
            scale *= value
    return (scale, expr.args[0], offset) if expr.op == "sym" else None


def _link(place: dict[str, tuple[str, int, int]], members: dict[str, list[str]], left: tuple[int, str, int],
          right: tuple[int, str, int]) -> None:
    """Join the groups of X and Y (`linked_sizes`) where `a * X + b == c * Y + d` has integer solutions."""
    (a, x, b), (c, y, d) = left, right
    if a * c < 0:
        return  # (x.L + y.L == 10: finitely many pairs, not a link; the sizes are solved apart)
    for name in (x, y):
        if name not in place:
            place[name], members[name] = (name, 1, 0), [name]
    (ours, p, q), (theirs, r, s) = place[x], place[y]
    if ours == theirs:
        return
    # X = p k + q and Y = r m + s, so A k + B == C m + D, with A and C positive
    big_a, big_b, big_c, big_d = a * p, a * q + b, c * r, c * s + d
    if big_a < 0:
        big_a, big_b, big_c, big_d = -big_a, -big_b, -big_c, -big_d
    common, u, v = _bezout(big_a, big_c)  # u A + v C == g
    if (big_d - big_b) % common:
        return
    times = (big_d - big_b) // common
    # every solution: k = u t + (C/g) j, m = -v t + (A/g) j; each member's size along j
    placed = {name: (scale * (big_c // common), scale * u * times + offset)
              for name in members[ours] for _, scale, offset in [place[name]]}
    placed.update({name: (scale * (big_a // common), -scale * v * times + offset)
                   for name in members[theirs] for _, scale, offset in [place[name]]})
    # shift j so that j = 1 is the smallest at which every size is at least 1
    shift = max(-((offset - 1) // scale) for scale, offset in placed.values()) - 1
    placed = {name: (scale, offset + scale * shift) for name, (scale, offset) in placed.items()}
    if any(scale > MAX_LINK_SCALE or abs(offset) > MAX_SIZE for scale, offset in placed.values()):
        return
    place.update({name: (ours, scale, offset) for name, (scale, offset) in placed.items()})
    members[ours] += members.pop(theirs)


def _bezout(a: int, b: int) -> tuple[int, int, int]:
    """(g, u, v) with g = gcd(a, b) = u * a + v * b, for a, b > 0."""
    old, r, old_u, u, old_v, v = a, b, 1, 0, 0, 1
    while r:
        quotient = old // r
        old, r = r, old - quotient * r
        old_u, u = u, old_u - quotient * u
        old_v, v = v, old_v - quotient * v
    return old, old_u, old_v


def _sample(values: tuple[int, ...], declared: int | None) -> str:
    """'188 (smallest), 204, 220, ..., 572 (declared), ..., 2044 (117 sizes)'."""
    if not values:
        return "none"
    shown: list[str] = []
    picks = sorted({*values[:3], values[-1], *([declared] if declared in values else [])})
    previous = None
    for value in picks:
        if previous is not None and values.index(value) > values.index(previous) + 1:
            shown.append("...")
        marks = [mark for mark, hit in (("smallest", value == values[0]), ("declared", value == declared)) if hit]
        label = f" ({', '.join(marks)})" if marks else ""
        shown.append(f"{value}{label}")
        previous = value
    return ", ".join(shown) + f" ({len(values)} size{'s' if len(values) != 1 else ''})"


def valid_sizes_mask(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], varying: set[str], low: int,
                     high: int, *, failures: bool = False,
                     reads: list[frozenset[str]] | None = None,
                     maps: dict[str, tuple[int, int]] | None = None) -> tuple[Any, Any]:
    """For each size in [low, high] given to all `varying` symbols (the others at their declared
    values): whether every guard holds (a bool array), and the index of the first guard that fails
    (-1 where none does; only computed with `failures`). `reads`: the symbols each guard reads,
    where the caller solves the same guards several times (see `_guard_symbols`). `maps`: (scale,
    offset) of the varying symbols that are not given the size k itself but scale * k + offset (a
    group of `linked_sizes`: a mask one longer than the sequence)."""
    import numpy

    candidates = numpy.arange(low, high + 1, dtype=numpy.int64)
    env = {name: numpy.int64(value) for name, (_, _, value) in symbols.items()}
    maps = maps or {}
    env.update({name: candidates if name not in maps else maps[name][0] * candidates + maps[name][1]
                for name in varying})
    memo: dict[int, Any] = {}
    valid = numpy.ones(len(candidates), dtype=bool)
    first = numpy.full(len(candidates), -1)
    reads = _guard_symbols(guards) if reads is None else reads
    largest = max(abs(low), abs(high))
    reach = {name: abs(scale) * largest + abs(offset) for name, (scale, offset) in maps.items()}
    checked = not _stays_small(guards, reads, symbols, varying, largest, reach)
    ops, overflow = _checked_ops(len(candidates)) if checked else (VECTOR_OPS, None)
    with numpy.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for index, (guard, read) in enumerate(zip(guards, reads, strict=True)):
            if not read & varying:
                continue
            left, right = evaluate(guard.left, env, memo, ops), evaluate(guard.right, env, memo, ops)
            holds = COMPARISONS[guard.op](left, right) == guard.outcome
            if checked:
                # a size whose arithmetic leaves int64's range is invalid (no tensor holds 2^62 elements), never
                # its wrapped-round value: the first guard that reads such a size fails there
                holds = holds & ~overflow
            if failures:
                first = numpy.where(valid & ~holds & (first < 0), index, first)
            valid = valid & holds
    return valid, first


def _stays_small(guards: list[Guard], reads: list[frozenset[str]], symbols: dict[str, tuple[str, int, int]],
                 varying: set[str], largest: int, reach: dict[str, int] | None = None) -> bool:
    """Whether no sum or product in the guards that read `varying` can pass MAX_SIZE // 2 while those
    symbols stay within `largest` in magnitude (the others at their declared sizes): then numpy's own
    arithmetic is exact at every size tried, as `_checked_ops` would find operation by operation (it
    takes each operand's largest magnitude, two reductions over the sizes: a fifth of ResNet-50's
    size solving). One walk bounds each expression node's magnitude from its arguments' bounds.
    `reach`: the largest magnitude of a varying symbol given a scaled size (see `valid_sizes_mask`)."""
    limit = MAX_SIZE // 2
    reach = reach or {}
    bounds: dict[Expr, int | float] = {}
    for guard, read in zip(guards, reads, strict=True):
        if not read & varying:
            continue
        for expr in post_order((guard.left, guard.right), bounds):
            op = expr.op
            if op == "sym":
                name = expr.args[0]
                bounds[expr] = reach.get(name, largest) if name in varying else abs(symbols[name][2])
                continue
            if op == "const":
                bounds[expr] = abs(expr.args[0])
                continue
            a, b = bounds[expr.args[0]], bounds[expr.args[1]]
            if op == "add":
                bound = a + b
            elif op in ("mul", "fmul"):
                bound = a * b
            elif op == "floordiv":
                if type(b) is not int:  # (an int quotient is no larger than its dividend; a fraction's can be)
                    return False
                bound = a
            elif op == "mod":
                bound = b
            elif op in ("max", "min"):
                bound = max(a, b)
            else:
                return False
            if bound > limit:
                return False
            bounds[expr] = bound
    return True


def _checked_ops(count: int) -> tuple[dict[str, Any], Any]:
    """`symbolic.VECTOR_OPS` over `count` candidate sizes, and a bool array that each sum and product marks
    where its result passes MAX_SIZE (numpy's int64 would wrap it round: an Upsample by 2^60 of 2,048 rows
    read as 0 rows). The product is checked in float64, which holds any product of two int64s."""
    import numpy

    overflow = numpy.zeros(count, dtype=bool)

    def checked(op: Any, exact: Any) -> Any:
        bound = operator.add if op is numpy.add else operator.mul

        def apply(a: Any, b: Any) -> Any:
            # (where the operands' magnitudes cannot reach MAX_SIZE, as at every size of most models,
            # two reductions per operand show it without the float64 copies)
            if bound(_magnitude(a), _magnitude(b)) <= MAX_SIZE // 2:
                return exact(a, b)
            wide = op(numpy.asarray(a, dtype=numpy.float64), numpy.asarray(b, dtype=numpy.float64))
            beyond = numpy.abs(wide) > MAX_SIZE
            if beyond.any():
                overflow[...] |= numpy.broadcast_to(beyond, overflow.shape)
                return numpy.where(beyond, 0, exact(numpy.where(beyond, 0, a), numpy.where(beyond, 0, b)))
            return exact(a, b)
        return apply

    ops = dict(VECTOR_OPS, add=checked(numpy.add, VECTOR_OPS["add"]), mul=checked(numpy.multiply, VECTOR_OPS["mul"]),
               fmul=checked(numpy.multiply, VECTOR_OPS["fmul"]))
    return ops, overflow


def _magnitude(value: Any) -> int | float:
    """The largest absolute value of a number or an array of numbers (0 for an empty one)."""
    import numpy

    if isinstance(value, numpy.ndarray):
        return max(value.max().item(), -value.min().item()) if value.size else 0
    return abs(value.item() if isinstance(value, numpy.generic) else value)


def _guard_symbols(guards: list[Guard]) -> list[frozenset[str]]:
    """The symbols each guard reads (see `_guard_facts`)."""
    return _guard_facts(guards)[0]


def _guard_facts(guards: list[Guard]) -> tuple[list[frozenset[str]], list[int]]:
    """The symbols each guard reads, and the largest magnitude of a constant in it.

    Guards share their expressions (see `symbolic._node`): each expression node is visited once,
    not once per guard that contains it, and once for both facts (two walks, with a list of pending
    arguments made per node, took a third of ResNet-50's size solving). Nodes are keys as
    themselves: an `Expr` hashes by identity.
    """
    facts: dict[Expr, tuple[frozenset[str], int]] = {}
    for guard in guards:
        for expr in post_order((guard.left, guard.right), facts):
            op = expr.op
            if op == "sym":
                facts[expr] = (frozenset(expr.args[:1]), 0)
            elif op == "const":
                facts[expr] = (_NO_SYMBOLS, math.ceil(abs(expr.args[0])))
            else:
                left, right = facts[expr.args[0]], facts[expr.args[1]]
                facts[expr] = (left[0] | right[0], max(left[1], right[1]))
    both = [(facts[guard.left], facts[guard.right]) for guard in guards]
    return [left[0] | right[0] for left, right in both], [max(left[1], right[1]) for left, right in both]


_NO_SYMBOLS: frozenset[str] = frozenset()


def _dim_names(node_type: Any, input_name: str, symbols: dict[str, tuple[str, int, int]]) -> list[str]:
    names = ["C" if node_type.layout == "channels_first" else "F"] * node_type.rank
    if node_type.layout == "features_last" and node_type.rank:
        names = ["S"] * node_type.rank
        names[-1] = "F"
    for symbol, (name, axis, _) in symbols.items():
        if name == input_name:
            names[axis] = symbol.split(".", 1)[1]
    return names


def _rule(values: tuple[int, ...], low: int, high: int) -> SizeRule:
    """The simplest rule that states exactly `values` (increasing, each once) within [low, high]; one that
    runs to `high` is stated as unbounded."""
    if not values:
        return SizeRule("none")
    if len(values) == 1:
        return SizeRule("fixed", values[0])
    start, last = values[0], values[-1]
    # (every size from start to last, the common case, needs no pass over the differences)
    step = 1 if len(values) == last - start + 1 else math.gcd(*map(operator.sub, values[1:], values))
    if len(values) == (last - start) // step + 1:  # (increasing, each a multiple of step apart: every one)
        if last + step > high:  # it runs to the end of the range: state it as unbounded
            return SizeRule("at_least", start) if step == 1 else SizeRule("progression", start, step)
        if step == 1:
            return SizeRule("range", start, 1, last)
        # (a few sizes read best listed: L in {10, 12}; more as a bounded progression)
        if len(values) <= 12:
            return SizeRule("set", start, values=values)
        return SizeRule("progression", start, step, last)
    period, stop = _period(values, high), None
    if period is None and last + MAX_PERIOD < high:  # periodic up to a bound (a position table), none past it
        period, stop = _period(values, last), last
    if period is not None:  # (a stride and a second branch's rounding: H % 3 != 1)
        offsets = tuple(value - start for value in values if value < start + period)
        return SizeRule("periodic", start, period, stop, offsets)
    return SizeRule("set", start, stop=high, values=values)  # (no pattern: nothing is known past `high`)


def _period(values: tuple[int, ...], high: int) -> int | None:
    """The smallest p (up to MAX_PERIOD) such that, from the first value up to `high`, a size is in
    `values` exactly when the size p further on is (checked over at least four periods), or None."""
    import numpy

    start = values[0]
    member = numpy.zeros(high - start + 1, dtype=bool)
    member[numpy.asarray(values) - start] = True
    for period in range(2, min(len(member) // 4, MAX_PERIOD) + 1):
        if (member[:-period] == member[period:]).all():
            return period
    return None
