"""Stage 6, codegen: a typed graph -> the Python source of its `forward` method.

The generated code is what a person would write: one line per node, submodules called by their
layer names, skips as `target = target + self.skip(source)` (or `target += ...` where adding in
place is invisible, see `in_place_adds`), a shape comment on every line, and `del` after a
value's last use so memory is freed as early as in a hand-written module.

Only validated identifiers (`[A-Za-z][A-Za-z0-9_]*`, never keywords or nn.Module attributes) and
integers reach the source; no string from a spec is ever pasted into code otherwise.

>>> from resgraph.graph import GraphBuilder
>>> from resgraph.shapes import infer_shapes
>>> b = GraphBuilder("Net")
>>> _ = b.input("x", [3, 8, 8]), b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, padding=1)
>>> _ = b.skip("res", "x", "conv"), b.layer("act", "ReLU")
>>> print(generate_forward(infer_shapes(b.build())), end="")
def forward(self, x):
    conv = self.conv(x)  # (N, 4, 8, 8)
    conv += self.res(x)  # (N, 4, 8, 8) skip res: add x (auto projection: 3->4 channels)
    act = self.act(conv)  # (N, 4, 8, 8)
    return act
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from typing import Any

from .graph import BlockNode, Graph, InputNode, LayerNode, Node, SkipNode, is_block_value
from .ops import Merge, TensorType, merge_code
from .ownership import Owns, owns
from .projections import ProjectionPlan, step_code
from .sizes import SizeReport
from .symbolic import SymInt, condition

__all__ = ["FRESH_OUTPUT_OPS", "HELPERS", "MAX_STATEMENTS", "PART_PREFIX", "batch_source", "functions_of",
           "generate_forward", "helpers_used", "in_place_adds", "input_guard", "node_reads", "node_statement",
           "shape_comment", "variables_of"]

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # whole names only: fullmatch (`$` would allow "x\n")
_IDENTIFIER_LINES = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\n[A-Za-z][A-Za-z0-9_]*)*")  # lines of them: _all_identifiers
LARGE = 16_384  # elements per sample (64 KiB of float32) from which freeing a value early pays
# Statements per generated function. CPython's compiler holds about 3 KB per statement of the
# function it compiles (a 15,000-statement forward: 45 MiB, more than torch's modules of the same
# network), so a longer forward is written as a `forward` calling parts, each compiled on its own.
MAX_STATEMENTS = 1_000
PART_PREFIX = "_forward_part_"  # the parts' method names: `_` first, so no node name can shadow one


def shape_comment(node: Node) -> str:
    """'(N, 64, 32, 32)': the node's full output shape, batch included."""
    shape = node.meta["type"].shape
    return "(N" + "".join(f", {d}" for d in shape) + ")"


# Functions generated code may call, by name -> source. Lowering defines them beside the forward;
# the standalone export writes the ones a file uses. Their names start with `_`, which no node
# name can (node names start with a letter), so a node never shadows one.
HELPERS = {
    "_center_crop": '''def _center_crop(x, like):
    """x with its spatial dims (2 and up) cropped to like's, centred."""
    index = [slice(None), slice(None)]
    for size, wanted in zip(x.shape[2:], like.shape[2:]):
        start = (size - wanted) // 2
        index.append(slice(start, start + wanted))
    return x[tuple(index)]
''',
}


def helpers_used(source: str) -> list[str]:
    """The HELPERS a generated source calls, in a fixed order."""
    return [name for name in HELPERS if f"{name}(" in source]


def generate_forward(graph: Graph, *, shapes: bool = True, in_place: bool = True) -> str:
    """The source of `def forward(self, <inputs>)` for a graph whose shapes are inferred.

    With `shapes=False` the comments leave out everything specific to one instance (shapes,
    projection reasons), so instances of a block with the same computation share one source.

    Values are deleted after their last use when they are large (LARGE elements per sample or
    more), which lowers peak memory like a hand-written forward that reuses `x`; small values are
    left to the function's end, because a `del` costs more than it saves on them. Without
    shapes, every value is deleted, the same for all instances.

    With `in_place` (the default), the skips `in_place_adds` names add into their target in place.
    That choice depends on types (a source that broadcasts into its target), so without shapes two
    instances of a block can still differ there, and then do not share a source.

    A forward of more than MAX_STATEMENTS statements is cut into parts of at most that many,
    each a method (`_forward_part_1(self, <live values>)`, ...) returning the values later parts
    read; `forward` checks its inputs and calls them in turn. The statements, and so the
    computation, are the same as in one function.

    Equal block instances (shape inference copies one for the next: see `shapes._copy_instance`)
    share `graph.meta["shared"]`, where the first call keeps the source for the others. Graphs
    are not changed after shape inference (`model.graph` is read-only by contract), so the kept
    source stays the graph's.
    """
    shared = graph.meta.get("shared") if shapes and in_place else None
    if shared is not None and "forward" in shared:
        return shared["forward"]  # type: ignore[no-any-return]
    variables = variables_of(graph)
    types = _TypeFacts()
    body: list[str] = []  # one per statement: its line with its comment (and, later, its `del` line)
    first_write: dict[str, int] = {name: -1 for name in graph.inputs}  # variable -> the statement defining it
    last_read: dict[str, int] = {}  # variable -> the last statement reading it
    last_write: dict[str, int] = {}  # variable -> the last statement writing it
    size: dict[str, Any] = {}  # variable -> the most elements per sample it holds (only with shapes)
    if shapes:
        for name in graph.inputs:
            size[name] = _elements(graph.nodes[name].meta["type"])
    for node, var, reads, adds_in_place in node_reads(graph, variables, in_place):
        if isinstance(node, InputNode) or is_block_value(node):
            continue  # a block call's values are assigned by the call's statement
        if isinstance(node, BlockNode) and node.values:
            statements = _block_values(graph, node, shapes, types)
        else:
            args = reads or batch_source(graph, node)
            _, shape, elements = types.of(node) if shapes else _NO_FACTS
            statements = ((node_statement(node, var, args, adds_in_place), ((var, elements),), args,
                           _comment(node, shape)),)
        for code, written, read, comment in statements:
            index = len(body)
            body.append(f"    {code}  # {comment}" if comment else f"    {code}")
            for read_var in read:
                last_read[read_var] = index
            for written_var, elements in written:
                first_write.setdefault(written_var, index)
                last_write[written_var] = index
                if shapes:
                    size[written_var] = max(size.get(written_var, 0), elements)
    returned = [variables[name] for name in graph.outputs]

    # A variable dies after the statement that reads it last, unless it is returned or written
    # again later (then the new value replaces it anyway).
    dies_at: dict[int, list[str]] = {}
    for var, index in last_read.items():
        worth_it = not shapes or size.get(var, LARGE) >= LARGE
        if worth_it and var not in returned and last_write.get(var, -1) <= index < len(body) - 1:
            dies_at.setdefault(index, []).append(var)
    for index, dying in dies_at.items():
        body[index] += f"\n    del {', '.join(sorted(dying))}"

    lines = [f"def forward(self, {', '.join(graph.inputs)}):", *input_guard(graph)]
    if len(body) <= MAX_STATEMENTS:
        lines += body
        lines.append(f"    return {', '.join(returned)}")
    else:
        parts = _parts(len(body))
        live = _live_at([part.start for part in parts], first_write, last_read, set(returned), len(body))
        lines += _write_parts(body, parts, live, returned)
    source = "\n".join(lines) + "\n"
    if shared is not None:
        shared["forward"] = source
    return source


def _write_parts(body: list[str], parts: list[range], live: dict[int, list[str]],
                 returned: list[str]) -> list[str]:
    """The rest of a long forward: a call of each part in turn, then the parts' methods.

    A part takes the values that flow into it and returns the ones that flow out. `forward` holds
    the values it passes until the part returns, then deletes those the part did not return: at
    any time it holds one boundary's values beyond what one function would (a part's own `del`
    lines free the values it makes).
    """
    calls: list[str] = []
    functions: list[str] = []
    for number, part in enumerate(parts, 1):
        name = f"{PART_PREFIX}{number}"
        inputs = live[part.start]
        last = number == len(parts)
        outputs = returned if last else live[part.stop]
        call = f"self.{name}({', '.join(inputs)})"
        if last:
            calls.append(f"    return {call}")
        else:
            calls.append(f"    {', '.join(outputs)} = {call}" if outputs else f"    {call}")
            passed_on = set(outputs)
            done = [var for var in inputs if var not in passed_on]
            if done:
                calls.append(f"    del {', '.join(done)}")
        functions += ["", f"def {name}(self{''.join(f', {var}' for var in inputs)}):"]
        functions += body[part.start:part.stop]
        if outputs:
            functions.append(f"    return {', '.join(outputs)}")
    return calls + functions


def functions_of(source: str) -> list[tuple[str, int, str]]:
    """(name, index of its first line, text) of each function in a generated source: `forward`,
    then its parts. Each top-level `def` starts a function (the bodies are indented)."""
    lines = source.splitlines(keepends=True)
    starts = [number for number, line in enumerate(lines) if line.startswith("def ")]
    return [(lines[start][4:lines[start].index("(")], start, "".join(lines[start:stop]))
            for start, stop in zip(starts, [*starts[1:], len(lines)])]


def _live_at(starts: list[int], first_write: dict[str, int], last_read: dict[str, int], returned: set[str],
             end: int) -> dict[int, list[str]]:
    """Part start -> the variables that flow into that part: made before it, and read by it or later,
    or returned; in the order they were made. Each variable is placed at the starts it spans (a
    scan of every variable per part would be quadratic: 150 parts of a 100,000-layer chain)."""
    live: dict[int, list[str]] = {start: [] for start in starts}
    for var, made in first_write.items():  # in the order the variables were made
        used_until = end if var in returned else last_read.get(var, -1)
        first = bisect.bisect_right(starts, made)
        if first < len(starts) and starts[first] <= used_until:  # most values live within one part
            for start in starts[first:bisect.bisect_right(starts, used_until, first)]:
                live[start].append(var)
    return live


def _parts(count: int) -> list[range]:
    """`count` statements cut into the fewest runs of at most MAX_STATEMENTS, of near-equal length."""
    number = -(-count // MAX_STATEMENTS)
    bounds = [count * k // number for k in range(number + 1)]
    return [range(start, stop) for start, stop in zip(bounds, bounds[1:])]


def variables_of(graph: Graph) -> dict[str, str]:
    """Node name -> the variable holding its value, once every name reaching the source is checked:
    names become attributes (and comments), variables become variables, so each must be a
    validated identifier."""
    nodes = graph.nodes
    variables = {name: node.var for name, node in nodes.items()}
    named = [name for name, node in nodes.items() if node.variable is None]  # the names not checked as variables
    if not (_all_identifiers(list(variables.values())) and _all_identifiers(named)):
        for node in nodes.values():  # the first name at fault, for the message
            assert _IDENTIFIER.fullmatch(node.var), f"unvalidated name reached codegen: {node.var!r}"
            assert node.variable is not None or _IDENTIFIER.fullmatch(node.name), f"unvalidated name: {node.name!r}"
    return variables


def _all_identifiers(names: list[str]) -> bool:
    """Whether `_IDENTIFIER` matches each of the names, in one match over their lines (a 100,000-layer
    chain: 250,000 matches otherwise). A name holding a line break would pass as two lines, so they
    are counted."""
    try:
        text = "\n".join(names)
    except TypeError:  # not all strings: the loop's match says which
        return False
    return _IDENTIFIER_LINES.fullmatch(text) is not None and text.count("\n") == len(names) - 1


def _elements(kind: TensorType) -> Any:
    """Elements per sample (an int, or a SymInt)."""
    return math.prod(kind.shape)


class _TypeFacts:
    """What one source generation asks of node types, computed once per type object: shape inference
    gives equal results the very same `TensorType`, so a 10,000-layer chain has a handful of them."""

    def __init__(self) -> None:
        self._facts: dict[int, tuple[TensorType, str, Any]] = {}  # by id: the type's facts (the type kept alive)

    def of(self, node: Node) -> tuple[TensorType, str, Any]:
        """A node's type, its shape comment and its elements per sample."""
        kind = node.meta["type"]
        known = self._facts.get(id(kind))
        if known is None:
            known = self._facts[id(kind)] = (kind, shape_comment(node), _elements(kind))
        return known


_NO_FACTS = (None, None, None)  # what generate_forward uses of _TypeFacts.of without shapes


def node_statement(node: Node, var: str, args: list[str], in_place: bool = False) -> str:
    """A node's statement, given its variable and the variables it reads."""
    if isinstance(node, LayerNode):
        if node.layer.code_only:
            return f"{var} = {node.layer.code_with(args, f'self.{node.name}', node.meta['args'])}"
        return f"{var} = {node.layer.call(f'self.{node.name}', args)}"
    if isinstance(node, BlockNode):
        return f"{var} = self.{node.name}({', '.join(args)})"
    assert isinstance(node, SkipNode)
    skip = node.skip
    target, source = args
    projected = _projected(node, source)
    if in_place:
        return f"{target} += {projected}"
    operands = [projected, target] if skip.merge is Merge.concat else [target, projected]
    return f"{target} = {merge_code(skip.merge, operands, node.meta['concat_dim'])}"


# Curated ops whose module returns a new tensor that no other value shares and that autograd does
# not keep for the backward pass (their backward reads their input and weights): adding into it in
# place changes nothing but that value, as torchvision's `out += identity` after a BatchNorm. Not
# here: activations (ReLU's and Sigmoid's backward read their output; `inplace=True` ones return
# their input), views and reshapes (they share their input's storage), Identity and Dropout (they
# return their input), code ops and uncurated classes (anything could be returned).
FRESH_OUTPUT_OPS = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
                              "Linear", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm"})


def in_place_adds(graph: Graph) -> set[str]:
    """The `add` skips whose target can be added into in place (`t += s`) with the same result and
    the same gradients as `t = t + s`, and fewer allocations.

    A skip qualifies when its target's value was made by a `FRESH_OUTPUT_OPS` layer (or by an
    earlier merge into it, itself a new tensor), no statement read that value in between (it might
    have kept it, or a view of it), its source is another value, and the sum has the target's shape
    and dtype (the source broadcasts into the target). A graph input never qualifies: its tensor is
    the caller's.
    """
    return {node.name for node, _, _, adds_in_place in node_reads(graph, variables_of(graph), in_place=True)
            if adds_in_place}


def node_reads(graph: Graph, variables: dict[str, str],
               in_place: bool) -> Iterator[tuple[Node, str, list[str], bool]]:
    """(node, its variable, the variables it reads, whether it adds into its target in place) for
    each node in graph order. The last is what `in_place_adds` decides, and False for every node
    without `in_place`. Deciding it in the walk that reads each node's variables for its statement
    saves generate_forward a walk of its own (a tenth of its time on a 100,000-layer chain)."""
    maker: dict[str, Node] = {}  # variable -> the node whose statement last wrote it
    read_since: set[str] = set()  # variables read since that write
    same_type: dict[tuple[int, int], bool] = {}  # by the two types' ids: shape inference shares equal types
    for node, var in zip(graph.nodes.values(), variables.values()):  # `variables` is in node order
        reads = [variables[name] for name in node.inputs]
        adds_in_place = False
        if in_place:
            if isinstance(node, SkipNode) and node.skip.merge is Merge.add and len(reads) == 2:
                target, source = reads
                made = maker.get(target)
                if made is not None and target not in read_since and source != target and _fresh(made):
                    pair = (id(node.meta["type"]), id(made.meta["type"]))
                    if pair not in same_type:
                        same_type[pair] = _same_type(node, made)
                    adds_in_place = same_type[pair]
            read_since.update(reads)
            maker[var] = node
            read_since.discard(var)
        yield node, var, reads, adds_in_place


def _fresh(node: Node) -> bool:
    if isinstance(node, SkipNode):
        return True  # a merge's result is a new tensor (or, added in place, its target's, itself fresh)
    return (isinstance(node, LayerNode) and node.layer.op in FRESH_OUTPUT_OPS and not node.layer.code_only
            and owns(node) is Owns.module)


def _same_type(a: Node, b: Node) -> bool:
    """Whether two nodes' types are certainly equal for every input size (shapes compared as
    expressions: comparing symbolic sizes with == would record a guard)."""
    ta, tb = a.meta["type"], b.meta["type"]
    if ta is tb:
        return True  # (a merge that keeps its target's type gives that very object: most skips)

    def key(dim: object) -> object:
        return ("sym", str(dim.expr)) if isinstance(dim, SymInt) else ("int", dim)

    return (ta.dtype == tb.dtype and ta.rank == tb.rank
            and all(key(x) == key(y) for x, y in zip(ta.shape, tb.shape)))


def _block_values(graph: Graph, node: BlockNode, shapes: bool,
                  types: _TypeFacts) -> list[tuple[str, list[tuple[str, Any]], list[str], str]]:
    """The statements of a block call with several values: one call unpacked into them
    (`head_box, head_cls = self.head(x)`), or for a collected repeat one line per instance, each
    reading the one before (`stage_1 = self.stage[1](stage_0)`). Each statement is (code, (variable,
    elements per sample) of each value written, variables read, comment)."""
    values = [graph.nodes[name] for name in node.values]
    facts = [types.of(value) if shapes else _NO_FACTS for value in values]
    args = [graph.nodes[name].var for name in node.inputs]
    if not node.repeated:
        comment = ", ".join(shape for _, shape, _ in facts) if shapes else ""
        return [(f"{', '.join(v.var for v in values)} = self.{node.name}({', '.join(args)})",
                 [(value.var, elements) for value, (_, _, elements) in zip(values, facts)], args, comment)]
    statements = []
    for index, (value, (_, shape, elements)) in enumerate(zip(values, facts)):
        statements.append((f"{value.var} = self.{node.name}[{index}]({', '.join(args)})", [(value.var, elements)],
                           args, shape if shapes else ""))
        args = [value.var]
    return statements


def batch_source(graph: Graph, node: Node) -> list[str]:
    """An op with no inputs (a learned tensor) is expanded to the batch of the first input."""
    return [graph.inputs[0]] if isinstance(node, LayerNode) else []


def _projected(node: SkipNode, source: str) -> str:
    """The expression for a skip's source after its projection steps."""
    plan: ProjectionPlan = node.meta["projection"]
    if not plan.steps:
        return source  # the identity: most skips
    expr = source
    rank = node.meta["type"].rank + 1  # batch included
    for step in plan.code_steps:
        expr = step_code(step, expr, rank, node.target)
    if owns(node) is Owns.projection:
        expr = f"self.{node.name}({expr})"
    return expr


def _comment(node: Node, shape: str | None) -> str:
    """A node's comment: its shape comment (`shape`, None without shapes) and, for a skip, what it
    merges and how."""
    shapes = shape is not None
    if isinstance(node, SkipNode):
        skip = node.skip
        plan: ProjectionPlan = node.meta["projection"]
        if plan.is_identity:
            how = "identity"
        else:
            how = f"{plan.policy.value} projection" + (f": {plan.reason}" if shapes else "")
        text = f"skip {node.name}: {skip.merge.value} {skip.source} ({how})"
        return f"{shape} {text}" if shapes else text
    return shape if shapes else ""


def _first_linked(graph: Graph, symbols: dict[str, tuple[str, int, int]], name: str,
                  dim: Any) -> tuple[str, int, str] | None:
    """(input, axis, dim name) of the first dim, in input order, that `dim` must equal (`DimSizes.linked`),
    if it comes before `dim`; None otherwise (`dim` is the first of its group, or has none)."""
    order = {input_name: index for index, input_name in enumerate(graph.inputs)}
    own = (order[name], dim.axis)
    members = sorted((order[symbols[other][0]], symbols[other][1], other) for other in dim.linked)
    if not members or members[0][:2] > own:
        return None
    input_name = graph.inputs[members[0][0]]
    return input_name, members[0][1], members[0][2].split(".", 1)[1]


def input_guard(graph: Graph) -> list[str]:
    """Lines checking each input's rank and sizes at the top of a forward, when its sizes are solved.

    A call with a wrong shape fails there, naming the input, what it must be and what it got,
    rather than deep inside. The check is skipped while torch.compile or torch.export trace the
    model (they guard shapes themselves), so compiled graphs hold no extra branch.
    """
    report: SizeReport | None = graph.meta.get("sizes")
    if report is None:
        return []
    lines = []
    symbols = graph.meta.get("symbols", {})
    for name in graph.inputs:
        dims = report.of(name)
        wrong = [f"{name}.dim() != {len(dims) + 1}"]
        firsts = [_first_linked(graph, symbols, name, dim) for dim in dims]
        for dim, first in zip(dims, firsts, strict=True):
            violation = dim.checked_rule.violation(f"{name}.shape[{dim.axis + 1}]")
            if violation is not None:
                wrong.append(violation)
            if first is not None:  # a dim the model needs equal to one checked before: compared with that one
                wrong.append(f"{name}.shape[{dim.axis + 1}] != {first[0]}.shape[{first[1] + 1}]")
        expected = "(N, " + ", ".join(dim.name if dim.free else str(dim.declared) for dim in dims) + ")"
        rules = [dim.checked_rule.describe(dim.name) for dim in dims
                 if dim.free and dim.checked_rule.violation("n") is not None]
        rules += [f"{dim.name} = {first[2] if first[0] == name else f'{first[0]}.{first[2]}'}"
                  for dim, first in zip(dims, firsts, strict=True) if first is not None]
        declared = "(N, " + ", ".join(str(dim.declared) for dim in dims) + ")"
        message = (f"{graph.name}: input {name!r} must be {expected}" + (f" with {', '.join(rules)}" if rules else "")
                   + f" (declared {declared}); got ")
        lines.append(f"    if not torch.compiler.is_compiling() and ({' or '.join(wrong)}):")
        lines.append(f"        raise ValueError({message!r} + str(tuple({name}.shape)))")
    for name, leading in _batch_partners(graph):
        message = f"{graph.name}: input {name!r} must have the same batch size as {leading!r} ("
        lines.append(f"    if not torch.compiler.is_compiling() and {name}.shape[0] != {leading}.shape[0]:")
        lines.append(f'        raise ValueError({message!r} + str({leading}.shape[0]) + "); got " '
                     f"+ str(tuple({name}.shape)))")
    return lines + _joint_checks(graph, report, symbols)


def _batch_partners(graph: Graph) -> list[tuple[str, str]]:
    """(input, the first input it meets) for each input whose values meet an earlier input's: they
    must share the batch (a batch of 1 would broadcast against the other, where the exported
    program's one batch `Dim` refuses it). Inputs that never meet may differ: a dual encoder's
    query and documents."""
    parent = {name: name for name in graph.nodes}

    def group(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in graph.nodes.values():
        for source in node.inputs:
            if source in parent:
                parent[group(source)] = group(node.name)
    first: dict[str, str] = {}
    partners = []
    for name in graph.inputs:
        leading = first.setdefault(group(name), name)
        if leading != name:
            partners.append((name, leading))
    return partners


def _joint_checks(graph: Graph, report: SizeReport, symbols: dict[str, tuple[str, int, int]]) -> list[str]:
    """Lines checking, per node, the conditions it puts on several free dims at once (`SizeReport.joint`,
    `H + W >= 10`): each dim's rule holds alone at sizes where they fail together (2x2)."""
    by_site: dict[str, list[tuple[Any, frozenset[str]]]] = {}
    for guard, read in report.joint:
        by_site.setdefault(guard.site, []).append((guard, read))
    lines = []
    in_code = {symbol: f"{name}.shape[{axis + 1}]" for symbol, (name, axis, _) in symbols.items()}
    for site, guards in by_site.items():
        read = set().union(*(read for _, read in guards))
        inputs = [name for name in graph.inputs if any(symbols[symbol][0] == name for symbol in read)]
        shown = {symbol: symbol.split(".", 1)[1] if len(inputs) == 1 else symbol for symbol in symbols}
        # a condition holds where the comparison comes out as it did at the declared size
        wrong = [condition(guard, in_code, failing=True) for guard, _ in guards]
        needs = " and ".join(condition(guard, shown) for guard, _ in guards)
        if len(needs) > 300:  # (a detection head's sums of products: name the dims only)
            needs = "a condition on " + " and ".join(sorted(shown[symbol] for symbol in read)) + " together"
        if len(inputs) == 1:
            dims = report.of(inputs[0])
            shape = "(N, " + ", ".join(dim.name if dim.free else str(dim.declared) for dim in dims) + ")"
            declared = "(N, " + ", ".join(str(dim.declared) for dim in dims) + ")"
            subject, tail = f"input {inputs[0]!r} must be {shape} with", f"; declared {declared}"
        else:
            subject, tail = f"inputs {', '.join(map(repr, inputs))} must have", ""
        message = (f"{graph.name}: {subject} {needs}, as {site!r} needs (each size works alone, not these "
                   f"together{tail}); got ")
        got = " + ', ' + ".join(f"str(tuple({name}.shape))" for name in inputs)
        lines.append(f"    if not torch.compiler.is_compiling() and ({' or '.join(wrong)}):")
        lines.append(f"        raise ValueError({message!r} + {got})")
    return lines
