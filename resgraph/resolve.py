"""Stage 4, resolve: a `Scope` (see expand) -> a `Graph` of named nodes in execution order.

Every reference is resolved here, so later passes never meet an unknown name: duplicate and
reserved names, unknown references, references to later nodes, cycles and misplaced skips are
reported, all at once, for the scope and every block instance below it.

A block call with several values (its block has several `outputs`, or it repeats with `collect:
true`) gets one `BlockOutput` node per value right after it, named as references read it:
`call.out` (an output's name) or `call.2` (an instance's index); `call.*` reads all of them, in
order, where a list of inputs or outputs is written. A collected call's bare name reads its
last instance's output, as a plain repeat's does; a call with several outputs has no bare value.

>>> from resgraph.loader import load_text
>>> from resgraph.validate import validate
>>> from resgraph.expand import expand
>>> text = ("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\nlayers:\\n  - fc: {op: Linear, out_features: 4}\\n"
...         "skips:\\n  - s: {from: x, to: fc}\\n")
>>> loaded = load_text(text)
>>> graph = resolve(expand(validate(loaded), loaded.source))
>>> [(node.name, node.kind.value, node.inputs) for node in graph.nodes.values()]
[('x', 'input', []), ('fc', 'layer', ['x']), ('s', 'skip', ['fc', 'x'])]
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import Diagnostic, SpecError
from .expand import LayerItem, Scope, SkipItem
from .graph import (
    GENERATED_CODE_NAMES,
    RESERVED_NAMES,
    SHARDED_MODULE_ATTRIBUTES,
    BlockNode,
    Graph,
    InputNode,
    LayerNode,
    Node,
    SkipNode,
)
from .loader import Origin
from .ops import Layer
from .ops.base import is_identifier
from .ops.tensor import BlockOutput
from .spec import BlockCall
from .suggest import did_you_mean

if TYPE_CHECKING:
    from .ops.tensor_ops import Piece

__all__ = ["resolve"]


def resolve(scope: Scope, qualname: str = "", diagnostics: list[Diagnostic] | None = None) -> Graph:
    """Resolve every name in `scope` into a graph. Its block calls' instances are made later, by shape
    inference (see `expand.instantiate`).

    Args:
        qualname: how messages name this scope's nodes (`layer1.0.` inside a block instance).
        diagnostics: where to report problems and go on: a node with a problem is left out, and so
            is, silently, every node that reads it (what it would report only follows from the
            first problem). Without it, any problem raises.
    Raises:
        SpecError: duplicate or reserved names, unknown references, references to later nodes,
            cycles, and skips that cannot be placed.
    """
    resolver = _Resolver(scope, qualname)
    graph = resolver.run()
    if resolver.diagnostics and diagnostics is None:
        raise SpecError(resolver.diagnostics)
    if diagnostics is not None:
        diagnostics.extend(resolver.diagnostics)
    return graph


class _Resolver:
    def __init__(self, scope: Scope, qualname: str) -> None:
        self.scope = scope
        self.qualname = qualname
        self.diagnostics: list[Diagnostic] = []
        self.order: dict[str, int] = {}  # name -> position (inputs first, then layers)
        self.kinds: dict[str, str] = {}  # name -> "input" | "layer" | "skip"
        self.declared_at: dict[str, Origin] = {}
        self.dropped: set[int] = set()  # ids of items whose names could not be declared
        self.reserved: set[str] = set()  # names refused as reserved (and reported): their readers are left out
        self.failed: set[str] = set()  # names of layers and skips with a problem of their own
        self.values: dict[str, list[str]] = {}  # block call -> its values' names (outputs, or instance indices)
        self.collected: set[str] = set()  # block calls with `collect: true`
        self.unknown_values: set[str] = set()  # block calls whose block's `outputs:` are refused (see declare_values)
        self.variables: set[str] = set()  # variables given to BlockOutput nodes
        self.invalid: set[str] = set()  # see `refused_before`
        self.references: dict[str, list[str]] = {}  # layer -> the names it reads, as written (see `run`)

    def q(self, name: str) -> str:
        """A name as messages show it: qualified inside a block instance (`layer1.0.conv1`)."""
        return repr(self.qualname + name)

    def fail(self, origin: Origin, message: str, hint: str | None = None, *, key: bool = True) -> None:
        self.diagnostics.append(Diagnostic(origin.locate(key=key), message, hint))

    def split_outputs(self, name: str) -> list[tuple[str, Piece]]:
        """The outputs a chunk/split layer `name` of this scope names, each with its piece; [] for any
        other name. (A piece's origin is its layer's `outputs[i]`: `(..., NAME, "outputs", i)`.)"""
        from .ops.tensor_ops import Piece  # (only an unknown name asks: a spec without chunks never loads them)

        return [(item.name, item.body) for item in self.scope.layers
                if isinstance(item.body, Piece) and item.origin.path[-3:-1] == (name, "outputs")]

    def fail_unknown(self, origin: Origin, prefix: str, ref: str, candidates: Iterable[str], suffix: str = "", *,
                     output: bool = False, written: str = "") -> None:
        """`PREFIX: unknown node 'ref'`, or, for an entry its `when:` left out, that it is left out and
        where (`output`: the reader is the scope's `outputs:`, which are always there). `written` is
        the reference as the spec wrote it, where it names a value of `ref` (`parts.gate`)."""
        left_out = self.scope.left_out.get(ref)
        outputs = self.split_outputs(ref) if left_out is None else []
        if outputs:  # (a chunk/split is no node: each output it names is one)
            names = [name for name, _ in outputs]
            piece = written[len(ref) + 1:]
            # `parts.gate` reads a block call's value; a chunk's outputs are nodes named by themselves
            fix = (f"write {piece!r} alone: a {outputs[0][1].group.op}'s outputs are nodes of their own names"
                   if piece in names else f"read one of its outputs: {', '.join(names)}")
            self.fail(origin, f"{prefix}{ref!r} is a {outputs[0][1].group.op} with "
                              f"{len(outputs)} outputs, not one node{suffix}", fix, key=False)
            return
        if left_out is None:
            self.fail(origin, f"{prefix}unknown node {ref!r}{did_you_mean(ref, candidates)}{suffix}",
                      self.scope.elsewhere(ref), key=False)
            return
        line = left_out.when.locate(key=True).line
        at = f" (line {line})" if line else ""
        if left_out.skip:  # a skip is no node even where its `when:` is true
            self.fail(origin, f"{prefix}{ref!r} is a skip edge (left out here: its `when:`{at} is false), not a "
                              f"node{suffix}", "read its target instead: it holds the merged value", key=False)
            return
        fix = ("an output is there under every condition: name a node that no `when:` leaves out" if output else
               "give what reads it the same `when:`, or read another node when it is left out")
        self.fail(origin, f"{prefix}{ref!r} is left out: its `when:`{at} is false{suffix}", fix, key=False)

    def run(self) -> Graph:
        scope = self.scope
        self.declare_names()
        self.invalid = self.refused_before()
        # The layers with a name of their own and a body, and what each reads (one pass: a long chain
        # has 100,000 of them).
        valid: list[LayerItem] = []
        references: dict[str, list[str]] = {}
        dropped = self.dropped
        previous = None  # the layer listed before this one, which it reads by default
        for item in scope.layers:
            if item.body is not None and not (dropped and id(item) in dropped):
                valid.append(item)
                refs = self.layer_inputs(item, previous)
                if refs is not None:
                    references[item.name] = refs
            previous = item.name
        self.declare_values(valid)
        self.failed |= {item.name for item in valid if item.name not in references}
        self.check_references(valid, references)
        self.references = references
        skips_into = self.check_skips()
        outputs = self.check_outputs()

        # A layer is kept when it has no problem of its own and every node it reads is kept (decided
        # in order, as the nodes are made: a layer, and a skip's source, only read earlier ones).
        kept = set(scope.inputs)
        failed = self.failed
        nodes: dict[str, Node] = {}
        value: dict[str, str] = {}  # spec name -> node holding its current (merged) value
        declared_at = self.declared_at
        for name, decl in scope.inputs.items():
            # (an input is declared first, so its origin is the one made for it there, unless its name is reserved)
            origin = declared_at.get(name) if self.kinds.get(name) == "input" else None
            nodes[name] = InputNode(name=name, inputs=[], origin=origin or scope.origin.child("inputs", name),
                                    decl=decl)
            value[name] = name
        values, expand = self.values, self.expand
        for item in valid:
            name, body = item.name, item.body
            if name in failed or not _all_kept(references[name], kept):
                continue
            kept.add(name)
            inputs = [value[r] for r in expand(references[name])]
            node: Node
            if isinstance(body, BlockCall):
                node = nodes[name] = BlockNode(name=name, inputs=inputs, origin=item.origin, call=body,
                                               recipe=item.recipe, instances=[])
                value[name] = name
                if name in values:
                    self.add_values(node, nodes, value)
            else:
                nodes[name] = LayerNode(name=name, inputs=inputs, origin=item.origin, layer=body)
                value[name] = name
            for skip_item in skips_into.get(name, ()):
                skip = skip_item.skip
                source = skip.source
                if _base(source) not in kept:
                    continue  # it reads a node left out above: nothing to report of its own
                source = expand([source])[0]
                nodes[skip_item.name] = SkipNode(name=skip_item.name, inputs=[value[name], value[source]],
                                                 origin=skip_item.origin, skip=skip,
                                                 policy=skip.projection or scope.projection, target=name)
                value[name] = skip_item.name
        returned = [value[o] for o in self.expand([o for o in outputs if _base(o) in kept])]
        left_out = {name: entry.when.locate(key=True).line for name, entry in scope.left_out.items() if not entry.skip}
        return Graph(scope.name, nodes, list(scope.inputs), returned, scope.origin, self.qualname, scope.block,
                     scope.params, left_out=left_out, defined_blocks=scope.defined_blocks)

    def declare_values(self, items: list[LayerItem]) -> None:
        """The values of every block call that has several (see the module docstring)."""
        for item in items:
            call, recipe = item.body, item.recipe
            if recipe is None or not isinstance(call, BlockCall):  # (a layer has no recipe: tested first)
                continue
            outputs = recipe.definition.outputs or ()
            if call.collect:
                self.values[item.name] = [str(i) for i in range(recipe.count)]
                self.collected.add(item.name)
            elif any(output.endswith(".*") for output in outputs):
                # The block's `outputs:` are refused where its instance is resolved (`check_outputs`): what
                # its values are is unknown here, so a reader reads the call, and is left out with it
                # when that instance fails, instead of failing on a count of values it cannot know.
                self.unknown_values.add(item.name)
            elif len(outputs) > 1:
                self.values[item.name] = list(outputs)

    def add_values(self, node: BlockNode, nodes: dict[str, Node], value: dict[str, str]) -> None:
        """A BlockOutput node per value of a block call, right after it."""
        for index, output in enumerate(self.values[node.name]):
            name = f"{node.name}.{output}"
            nodes[name] = LayerNode(name=name, inputs=[node.name], origin=node.origin,
                                    layer=BlockOutput(output=output, index=index),
                                    variable=self.variable(f"{node.name}_{output.replace('.', '_')}"))
            value[name] = name
            node.values.append(name)
        if node.name in self.collected:
            value[node.name] = node.values[-1]  # the chain's value, as a plain repeat's

    def variable(self, wanted: str) -> str:
        """A variable for a BlockOutput node that no name of the scope (nor another such variable) uses."""
        while wanted in self.kinds or wanted in self.variables:
            wanted += "_"
        self.variables.add(wanted)
        return wanted

    def expand(self, refs: list[str]) -> list[str]:
        """References as the values they read: `call.*` spliced into each value's name, a collected
        call's bare name into its last instance's. Unknown names are left as they are: where no call
        has several values, `refs` itself is returned (every reference is its own value)."""
        if not self.values and not self.unknown_values:
            return refs
        result = []
        for ref in refs:
            base, _, part = ref.partition(".")
            values = self.values.get(base)
            if base in self.unknown_values:
                result.append(base)
            elif values is not None and part == "*":
                result += [f"{base}.{v}" for v in values]
            elif values is not None and not part and base in self.collected:
                result.append(f"{base}.{values[-1]}")
            else:
                result.append(ref)
        return result

    def check_value(self, where: Origin, label: str, ref: str, *, spliced: bool = True) -> bool:
        """True when `ref`, a reference to a known node, names a value it has; else records why not.

        `spliced`: whether `call.*` may stand here (in lists of inputs or outputs).
        """
        base, _, part = ref.partition(".")
        values = self.values.get(base)
        if values is None:
            if base in self.unknown_values:
                return True  # (read as the call itself: see declare_values)
            if part:
                self.fail(where, f"{label}: {ref!r}: {base!r} has one value, read as {base!r}",
                          "`NAME.OUTPUT` reads one output of a block call with several outputs, `NAME.0` one "
                          "instance of a repeat with `collect: true`", key=False)
                return False
            return True
        names = ", ".join(f"{base}.{v}" for v in values)
        if not part:
            if base in self.collected:
                return True
            self.fail(where, f"{label}: {base!r} has {len(values)} outputs ({names}); say which it reads",
                      f"read {base}.{values[0]}" + (f", or all of them in order as {base}.*" if spliced else ""),
                      key=False)
            return False
        if part == "*":
            if not spliced:
                self.fail(where, f"{label}: {ref!r} stands for {len(values)} values; one is expected here",
                          f"name one of {names}", key=False)
                return False
            return True
        if part not in values:
            shown = names if len(values) <= 8 else f"{base}.{values[0]} ... {base}.{values[-1]}"
            if base in self.collected and part.isdigit():  # a count the spec may not see: scaled, computed
                self.fail(where, f"{label}: {base!r} has no instance {part}: its repeat makes {len(values)} "
                                 f"({shown})",
                          f"the count is what `repeat:` gives, times `scale.depth` where the spec scales depth "
                          f"(`scale: false` on the call keeps it as written); read every instance as {base}.*",
                          key=False)
                return False
            self.fail(where, f"{label}: {base!r} has no output {part!r}{did_you_mean(part, values)}",
                      f"its values: {shown}" + (f", or all of them as {base}.*" if spliced else ""), key=False)
            return False
        return True

    def declare_names(self) -> None:
        scope = self.scope
        entries: list[tuple[str, str, Origin]] = [(name, "input", scope.origin.child("inputs", name))
                                                  for name in scope.inputs]
        items: list[Any] = [None] * len(entries)
        items += [*scope.layers, *scope.skips]
        entries += [(item.name, "layer", item.origin) for item in scope.layers]
        entries += [(item.name, "skip", item.origin) for item in scope.skips]
        kinds, declared_at, order = self.kinds, self.declared_at, self.order
        for (name, kind, origin), item in zip(entries, items):
            if name in kinds:
                first = declared_at[name].locate(key=True)
                self.fail(origin, f"{kind} {self.q(name)}: the name is already used by the {kinds[name]} "
                                  f"at line {first.line}", "every input, layer and skip needs its own name")
                self.dropped.add(id(item))
                continue
            if name in RESERVED_NAMES or keyword.iskeyword(name):
                shadowed = ("a Python keyword" if keyword.iskeyword(name) else
                            "a name the generated code uses" if name in GENERATED_CODE_NAMES else
                            "a method resgraph.shard adds" if name in SHARDED_MODULE_ATTRIBUTES else
                            "a torch.nn.Module attribute")
                self.fail(origin, f"{kind} {self.q(name)}: the name is reserved (it would shadow {shadowed})",
                          f"rename it, e.g. {name}_")
                self.dropped.add(id(item))
                self.reserved.add(name)
                continue
            kinds[name] = kind
            declared_at[name] = origin
            if kind != "skip":
                order[name] = len(order)

    def layer_inputs(self, item: LayerItem, previous: str | None) -> list[str] | None:
        """The names a layer reads: its `input`, else the `previous` layer listed, else the sole input.

        None (with a diagnostic) when the layer must name its input and does not.
        """
        body = item.body
        assert body is not None
        if body.input is not None:
            return [body.input] if isinstance(body.input, str) else list(body.input)
        if isinstance(body, Layer) and body.max_inputs == 0:
            return []
        if previous is not None:
            return [previous]
        inputs = list(self.scope.inputs)
        if len(inputs) > 1:
            where = "the block" if self.scope.block else "the spec"
            # A spec input the schema refused has no declaration here, and may be known only by a
            # stand-in name (`invalid_input_1` for `bad-name`): name the others, count it.
            valid = [name for name in inputs if self.scope.block or self.scope.inputs[name] is not None]
            refused = len(inputs) - len(valid)
            listed = ", ".join(valid) + (f"{', ' if valid else ''}and {refused} refused above" if refused else "")
            name, origin = item.name, item.origin
            split = getattr(body, "split", None)  # a chunk's or split's output: said of that layer, where written
            if split is not None and origin.path[-3:-1] == (split, "outputs"):
                name, origin = split, Origin(origin.source, origin.path[:-2])
            self.fail(origin, f"layer {self.q(name)}: {where} has several inputs ({listed}); say which "
                              "this layer reads", f"add `input: {valid[0]}`" if valid else None)
            return None
        return inputs

    def arity(self, item: LayerItem) -> tuple[int, int | None]:
        if isinstance(item.body, BlockCall):
            count = len(item.recipe.definition.inputs) if item.recipe is not None else 1
            return count, count
        assert item.body is not None
        return item.body.min_inputs, item.body.max_inputs

    def check_references(self, valid: list[LayerItem], references: dict[str, list[str]]) -> None:
        """Whether what each valid layer reads exists, comes earlier, and is as many values as it takes."""
        invalid, check_reference = self.invalid, self.check_reference
        for item in valid:
            refs = references.get(item.name)
            if refs is None:
                continue
            ok = True
            for ref in refs:
                if invalid and _base(ref) in invalid:
                    ok = False  # it reads an entry refused before (and reported): left out with it, and
                    continue    # how many values that entry has is unknown (`call.*`): no count to check
                if self.unknown_values and _base(ref) in self.unknown_values:
                    ok = False  # (a count of values unknown here, as above; read as the call itself)
                if not check_reference(item.origin, item.name, ref, references, "input"):
                    self.failed.add(item.name)
                    ok = False
            count = len(self.expand(refs))
            least, most = self.arity(item)
            if self.scope.blind and any(ref.endswith(".*") for ref in refs):
                continue  # (how many values `call.*` splices in is unknown with no call)
            if ok and (count < least or (most is not None and count > most)):
                wanted = f"{least}" if least == most else f"at least {least}"
                op = item.body.op if isinstance(item.body, Layer) else f"block {item.body.block}"
                spliced = f" ({len(refs)} written)" if count != len(refs) else ""
                self.fail(item.origin.child("input") if item.body.input is not None else item.origin,
                          f"layer {self.q(item.name)} ({op}): takes {wanted} input(s), got {count}{spliced}")
                self.failed.add(item.name)

    def check_reference(self, origin: Origin, name: str, ref: str, references: dict[str, list[str]],
                        key: str) -> bool:
        """True when `ref`, read by `name`, is a value of a known earlier node; else records why not."""
        # The common case first, before any message is composed: an earlier input or layer with one value.
        if (self.kinds.get(ref) in ("input", "layer") and ref != name and ref not in self.values
                and (name not in self.order or self.order[ref] < self.order[name])):
            return True
        where = origin.child(key)
        label = f"{self.kinds.get(name, 'layer')} {self.q(name)}"
        full, ref = ref, _base(ref)
        if ref not in self.kinds:
            earlier = [n for n, i in self.order.items() if i < self.order.get(name, len(self.order))]
            self.fail_unknown(where, f"{label}: ", ref, earlier or self.order, written=full)
            return False
        if self.kinds[ref] == "skip":
            target = next(item.skip.to for item in self.scope.skips if item.name == ref)
            self.fail(where, f"{label}: {ref!r} is a skip edge, not a node",
                      f"read its target instead: {target!r} holds the merged value", key=False)
            return False
        if ref == name:
            self.fail(where, f"layer {self.q(name)}: reads its own output (a cycle)", key=False)
            return False
        if name in self.order and self.order[ref] > self.order[name]:
            cycle = self.find_cycle(name, ref, references)
            if cycle:
                self.fail(where, f"layer {self.q(name)}: cycle {' -> '.join(cycle)}", key=False)
            else:
                self.fail(where, f"layer {self.q(name)}: reads {ref!r}, which comes later",
                          f"move {ref!r} above {name!r}; layers run in the order listed", key=False)
            return False
        return self.check_value(where, label, full)

    def find_cycle(self, start: str, ref: str, references: dict[str, list[str]]) -> list[str] | None:
        """A dependency path start -> ref -> ... -> start, if the forward reference closes one."""
        stack, seen = [(ref, [start, ref])], {ref}
        while stack:
            current, trail = stack.pop()
            for nxt in map(_base, references.get(current, [])):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen and nxt in references:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    def refused_before(self) -> set[str]:
        """Names of entries refused before resolving (and reported): what reads them is left out quietly.
        (Found once names are declared, which fills `reserved`; three checks read it, as `invalid`.)"""
        return {item.name for item in self.scope.layers if item.body is None} | \
            {item.name for item in self.scope.skips if item.skip is None} | self.reserved

    def fail_unknown_end(self, item: SkipItem, name: str, key: str, ref: str, written: str) -> None:
        """`skip NAME: from: unknown node 'ref'` (or `to:`), said at that key; `written`: as the spec wrote
        it, where it names a value of `ref` (`parts.gate`)."""
        self.fail_unknown(item.origin.child(key), f"skip {name}: {key}: ", ref, self.order,
                          f" (in {written!r})" if written != ref else "", written=written)

    def check_skips(self) -> dict[str, list[SkipItem]]:
        into: dict[str, list[SkipItem]] = {}
        invalid = self.invalid
        kinds, order, values = self.kinds, self.order, self.values
        for item in self.scope.skips:
            if item.skip is None or id(item) in self.dropped:
                continue
            skip = item.skip
            # The common case first, before any message is composed: from an earlier input or layer
            # with one value, to a layer with one value (what every check below accepts).
            source, to = skip.source, skip.to
            if (kinds.get(source) in ("input", "layer") and kinds.get(to) == "layer" and "." not in source
                    and "." not in to and source not in values and to not in values and source not in invalid
                    and to not in invalid and order[source] < order[to]):
                into.setdefault(to, []).append(item)
                continue
            name = self.q(item.name)
            source = _base(skip.source)
            if source in invalid or _base(skip.to) in invalid:
                # (the other end's unknown name is a mistake of its own, said as where both ends are valid)
                for key, ref, written in (("from", source, skip.source), ("to", _base(skip.to), skip.to)):
                    if ref not in invalid and ref not in self.kinds:
                        self.fail_unknown_end(item, name, key, ref, written)
                continue
            if skip.to != _base(skip.to):
                self.fail_dotted_target(item, name, skip.to)
                continue
            ok = True
            for key, ref in (("from", source), ("to", skip.to)):
                if ref not in self.kinds:
                    self.fail_unknown_end(item, name, key, ref, skip.source if key == "from" else ref)
                    ok = False
                elif self.kinds[ref] == "skip":
                    self.fail(item.origin.child(key), f"skip {name}: {key}: {ref!r} is a skip edge, not a node",
                              key=False)
                    ok = False
            one_value = skip.source == source and source not in self.values  # what check_value accepts at once
            if not ok or not one_value and not self.check_value(item.origin.child("from"), f"skip {name}: from",
                                                                skip.source, spliced=False):
                continue
            if skip.to in self.values:
                self.fail(item.origin.child("to"), f"skip {name}: to: {skip.to!r} has several values; a skip merges "
                                                   "into a layer's one value",
                          f"merge into a layer that reads one, e.g. {{op: Identity, input: {skip.to}."
                          f"{self.values[skip.to][0]}}}",
                          key=False)
            elif self.kinds[skip.to] == "input":
                self.fail(item.origin.child("to"), f"skip {name}: to: {skip.to!r} is an input; a skip merges "
                                                   "into a layer", key=False)
            elif source == skip.to:
                self.fail(item.origin, f"skip {name}: from and to are both {skip.to!r}; a skip joins two "
                                       "different nodes")
            elif self.order[source] > self.order[skip.to]:
                self.fail(item.origin.child("from"), f"skip {name}: from: {skip.source!r} comes after to: "
                                                     f"{skip.to!r}",
                          "a skip carries an earlier node's output forward; swap from and to", key=False)
            else:
                into.setdefault(skip.to, []).append(item)
        return into

    def fail_dotted_target(self, item: SkipItem, name: str, target: str) -> None:
        """A skip `to: call.out`: a skip merges into a layer's own value (every later reader sees the
        merge), which one output of a block call is not; say so and what to write instead."""
        base = _base(target)
        where = item.origin.child("to")
        if base not in self.kinds:
            self.fail_unknown(where, f"skip {name}: to: ", base, self.order, f" (in {target!r})", written=target)
        elif base in self.values:
            piece = target[len(base) + 1:]
            # The merged value is the new layer's: what reads the call's value must read the layer instead, or
            # the skip feeds nothing (and a layer written after the call without `input:` would read the new one).
            readers = [f"{item.name!r} ({item.origin.locate(key=True)})" for item in self.scope.layers
                       if item.name != base and any(ref in (target, f"{base}.*")
                                                    for ref in self.references.get(item.name, ()))]
            readers += [f"the `from:` of skip {other.name!r} ({other.origin.child('from').locate(key=True)})"
                        for other in self.scope.skips if other is not item and other.skip is not None
                        and other.skip.source == target]
            if target in (self.scope.outputs or ()):
                readers.append(f"`outputs:` ({self.scope.origin.child('outputs').locate(key=True)})")
            layer = f"{base}_{piece}"
            read = (f", and read {layer} instead of {target} in {' and '.join(readers)}, or the skip feeds nothing"
                    if readers else f"; nothing reads {target} now: read {layer} where the merged value is used")
            layers = self.scope.layers
            after = [item for before, item in zip(layers, layers[1:])
                     if before.name == base and item.body is not None and item.body.input is None]
            if after:
                read += f" (give {after[0].name!r}, written after {base!r}, its `input:`: it would read {layer})"
            self.fail(where, f"skip {name}: to: {target!r} is one output of the block call {base!r}; a skip merges "
                             "into a layer's value, not into one value of a call",
                      f"merge into a layer that reads it: add `- {layer}: {{op: Identity, input: {target}}}` "
                      f"after {base!r}, write `to: {layer}`{read}"
                      if is_identifier(layer) else
                      f"merge into a layer that reads it, e.g. {{op: Identity, input: {target}}}, and read that layer "
                      f"where {target} is read", key=False)
        else:
            self.fail(where, f"skip {name}: to: {target!r} is not a node name: a skip's target is a layer, written "
                             f"by its name alone", f"write `to: {base}`" if self.kinds[base] == "layer" else None,
                      key=False)

    def check_outputs(self) -> list[str]:
        scope = self.scope
        if scope.outputs is None:
            if not scope.layers:  # every layer was left out by `when:`
                what = f"block {scope.block!r}" if scope.block else "the spec"
                # (which instance: its `when:`s may read `index` or the call's `with:`)
                within = f" (in {self.qualname.removesuffix('.')!r})" if scope.block and not scope.blind else ""
                self.fail(scope.origin.child("layers"), f"{what}: no layer is left (every `when:` is false), so "
                                                        f"there is no output{within}", key=True)
                return []
            last = scope.layers[-1].name
            path = scope.layers[-1].origin.path  # (a piece's: its chunk or split's `outputs[i]`)
            pieces = [piece for piece, _ in self.split_outputs(path[-3])] if path[-2:-1] == ("outputs",) else []
            if pieces:  # a chunk or split written last: its pieces are its outputs, as a call's are
                if scope.block:
                    self.fail(scope.origin.child("layers"), f"block {scope.block!r}: its last layer {path[-3]!r} "
                                                            f"has {len(pieces)} outputs; a block's default output "
                                                            "is one value",
                              f"list the block's outputs: outputs: [{', '.join(pieces)}]")
                    return []
                return pieces  # the model returns them all
            if last in self.values and last not in self.collected:
                if scope.block:  # its callers read its outputs by name: they must be listed
                    self.fail(scope.origin.child("layers"), f"block {scope.block!r}: its last layer {last!r} has "
                                                            f"{len(self.values[last])} outputs; a block's default "
                                                            "output is one value",
                              f"list the block's outputs: outputs: [{', '.join(self.expand([last + '.*']))}]")
                    return []
                return [f"{last}.*"]  # the model returns them all
            return [last]
        where = scope.origin.child("outputs")
        label = f"block {scope.block!r}: outputs: " if scope.block else "outputs: "  # a block's, or the model's
        outputs = []
        invalid, kinds, values = self.invalid, self.kinds, self.values
        for i, ref in enumerate(scope.outputs):
            # The common case first, before any message or location is made: an input or layer with one value,
            # listed once (what every check below accepts).
            if kinds.get(ref) in ("input", "layer") and ref not in values and ref not in invalid and ref not in outputs:
                outputs.append(ref)
                continue
            base = _base(ref)
            if base in invalid:
                continue
            if base not in self.kinds:
                self.fail_unknown(where.child(i), label, base, self.order, output=True, written=ref)
            elif self.kinds[base] == "skip":
                self.fail(where.child(i), f"{label}{base!r} is a skip edge, not a node", key=False)
            elif ref in outputs:
                self.fail(where.child(i), f"{label}{ref!r} is listed twice", key=False)
            elif scope.block and ref.endswith(".*"):
                self.fail(where.child(i), f"{label}{ref!r}: a block's outputs are named "
                                          "one by one, since its callers read them by name",
                          f"list them: {', '.join(self.expand([ref]))}", key=False)
            elif self.check_value(where.child(i), label[:-2], ref):
                outputs.append(ref)
        return outputs


def _all_kept(refs: list[str], kept: set[str]) -> bool:
    """Whether every node `refs` read is in `kept` (a loop, not `all()` over a generator: once per layer)."""
    for ref in refs:
        if _base(ref) not in kept:
            return False
    return True


def _base(ref: str) -> str:
    """The node a reference reads: `head` for `head.box`, `stage.2` and `stage.*`."""
    return ref.partition(".")[0]
