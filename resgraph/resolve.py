"""Stage 4, resolve: a `Scope` (see expand) -> a `Graph` of named nodes in execution order.

Every reference is resolved here, so later passes never meet an unknown name: duplicate and
reserved names, unknown references, references to later nodes, cycles and misplaced skips are
reported, all at once, for the scope and every block instance below it.

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
from typing import Any

from .errors import Diagnostic, SpecError
from .expand import LayerItem, Scope, SkipItem
from .graph import RESERVED_NAMES, BlockNode, Graph, InputNode, LayerNode, Node, SkipNode
from .loader import Origin
from .ops import Layer
from .spec import BlockCall
from .suggest import did_you_mean

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
        self.failed: set[str] = set()  # names of layers and skips with a problem of their own
        self.position = {id(item): i for i, item in enumerate(scope.layers)}  # (a scan per layer was quadratic)

    def q(self, name: str) -> str:
        """A name as messages show it: qualified inside a block instance (`layer1.0.conv1`)."""
        return repr(self.qualname + name)

    def fail(self, origin: Origin, message: str, hint: str | None = None, *, key: bool = True) -> None:
        self.diagnostics.append(Diagnostic(origin.locate(key=key), message, hint))

    def run(self) -> Graph:
        scope = self.scope
        self.declare_names()
        valid = [item for item in scope.layers if id(item) not in self.dropped and item.body is not None]
        references = {item.name: refs for item in valid if (refs := self.layer_inputs(item)) is not None}
        self.failed |= {item.name for item in valid if item.name not in references}
        self.check_references(references)
        skips_into = self.check_skips()
        outputs = self.check_outputs()

        # A layer is kept when it has no problem of its own and every node it reads is kept.
        kept = set(scope.inputs)
        for item in valid:
            if item.name not in self.failed and all(ref in kept for ref in references[item.name]):
                kept.add(item.name)
        nodes: dict[str, Node] = {}
        value: dict[str, str] = {}  # spec name -> node holding its current (merged) value
        for name, decl in scope.inputs.items():
            nodes[name] = InputNode(name=name, inputs=[], origin=scope.origin.child("inputs", name), decl=decl)
            value[name] = name
        for item in valid:
            if item.name not in kept:
                continue
            inputs = [value[r] for r in references[item.name]]
            node: Node
            if isinstance(item.body, BlockCall):
                node = BlockNode(name=item.name, inputs=inputs, origin=item.origin, call=item.body,
                                 recipe=item.recipe, instances=[])
            else:
                node = LayerNode(name=item.name, inputs=inputs, origin=item.origin, layer=item.body)
            nodes[item.name] = node
            value[item.name] = item.name
            for skip_item in skips_into.get(item.name, []):
                skip = skip_item.skip
                if skip.source not in kept:
                    continue  # it reads a node left out above: nothing to report of its own
                nodes[skip_item.name] = SkipNode(name=skip_item.name, inputs=[value[item.name], value[skip.source]],
                                                 origin=skip_item.origin, skip=skip,
                                                 policy=skip.projection or scope.projection, target=item.name)
                value[item.name] = skip_item.name
        return Graph(scope.name, nodes, list(scope.inputs), [value[o] for o in outputs if o in kept], scope.origin,
                     self.qualname, scope.block, scope.params)

    def declare_names(self) -> None:
        scope = self.scope
        entries: list[tuple[str, str, Origin]] = [(name, "input", scope.origin.child("inputs", name))
                                                  for name in scope.inputs]
        items: list[Any] = [None] * len(entries)
        items += [*scope.layers, *scope.skips]
        entries += [(item.name, "layer", item.origin) for item in scope.layers]
        entries += [(item.name, "skip", item.origin) for item in scope.skips]
        for (name, kind, origin), item in zip(entries, items):
            if name in self.kinds:
                first = self.declared_at[name].locate(key=True)
                self.fail(origin, f"{kind} {self.q(name)}: the name is already used by the {self.kinds[name]} "
                                  f"at line {first.line}", "every input, layer and skip needs its own name")
                self.dropped.add(id(item))
                continue
            if name in RESERVED_NAMES or keyword.iskeyword(name):
                shadowed = "a Python keyword" if keyword.iskeyword(name) else "a torch.nn.Module attribute"
                self.fail(origin, f"{kind} {self.q(name)}: the name is reserved (it would shadow {shadowed})",
                          f"rename it, e.g. {name}_")
                self.dropped.add(id(item))
                continue
            self.kinds[name] = kind
            self.declared_at[name] = origin
            if kind != "skip":
                self.order[name] = len(self.order)

    def layer_inputs(self, item: LayerItem) -> list[str] | None:
        """The names a layer reads: its `input`, else the previous layer, else the sole input.

        None (with a diagnostic) when the layer must name its input and does not.
        """
        body = item.body
        assert body is not None
        if body.input is not None:
            return [body.input] if isinstance(body.input, str) else list(body.input)
        if isinstance(body, Layer) and body.max_inputs == 0:
            return []
        index = self.position[id(item)]
        if index > 0:
            return [self.scope.layers[index - 1].name]
        inputs = list(self.scope.inputs)
        if len(inputs) > 1:
            where = "the block" if self.scope.block else "the spec"
            self.fail(item.origin, f"layer {self.q(item.name)}: {where} has several inputs "
                                   f"({', '.join(inputs)}); say which this layer reads", f"add `input: {inputs[0]}`")
            return None
        return inputs

    def arity(self, item: LayerItem) -> tuple[int, int | None]:
        if isinstance(item.body, BlockCall):
            count = len(item.recipe.definition.inputs) if item.recipe is not None else 1
            return count, count
        assert item.body is not None
        return item.body.min_inputs, item.body.max_inputs

    def check_references(self, references: dict[str, list[str]]) -> None:
        invalid = self.invalid
        for item in self.scope.layers:
            if item.name not in references or item.body is None or id(item) in self.dropped:
                continue
            refs = references[item.name]
            least, most = self.arity(item)
            if len(refs) < least or (most is not None and len(refs) > most):
                wanted = f"{least}" if least == most else f"at least {least}"
                op = item.body.op if isinstance(item.body, Layer) else f"block {item.body.block}"
                self.fail(item.origin.child("input") if item.body.input is not None else item.origin,
                          f"layer {self.q(item.name)} ({op}): takes {wanted} input(s), got {len(refs)}")
                self.failed.add(item.name)
            for ref in refs:
                if ref in invalid:
                    continue  # it reads an entry refused before (and reported): left out with it
                if not self.check_reference(item.origin, item.name, ref, references, "input"):
                    self.failed.add(item.name)

    def check_reference(self, origin: Origin, name: str, ref: str, references: dict[str, list[str]],
                        key: str) -> bool:
        """True when `ref`, read by `name`, is a known earlier node; else records why not."""
        where = origin.child(key)
        label = f"{self.kinds.get(name, 'layer')} {self.q(name)}"
        if ref not in self.kinds:
            earlier = [n for n, i in self.order.items() if i < self.order.get(name, len(self.order))]
            self.fail(where, f"{label}: unknown node {ref!r}{did_you_mean(ref, earlier or self.order)}", key=False)
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
        return True

    def find_cycle(self, start: str, ref: str, references: dict[str, list[str]]) -> list[str] | None:
        """A dependency path start -> ref -> ... -> start, if the forward reference closes one."""
        stack, seen = [(ref, [start, ref])], {ref}
        while stack:
            current, trail = stack.pop()
            for nxt in references.get(current, []):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen and nxt in references:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    @property
    def invalid(self) -> set[str]:
        """Names of entries refused before resolving (and reported): what reads them is left out quietly."""
        return {item.name for item in self.scope.layers if item.body is None} | \
            {item.name for item in self.scope.skips if item.skip is None}

    def check_skips(self) -> dict[str, list[SkipItem]]:
        into: dict[str, list[SkipItem]] = {}
        invalid = self.invalid
        for item in self.scope.skips:
            if item.skip is None or id(item) in self.dropped:
                continue
            skip, name = item.skip, self.q(item.name)
            if skip.source in invalid or skip.to in invalid:
                continue
            ok = True
            for key, ref in (("from", skip.source), ("to", skip.to)):
                if ref not in self.kinds:
                    self.fail(item.origin.child(key), f"skip {name}: {key}: unknown node {ref!r}"
                                                      f"{did_you_mean(ref, self.order)}", key=False)
                    ok = False
                elif self.kinds[ref] == "skip":
                    self.fail(item.origin.child(key), f"skip {name}: {key}: {ref!r} is a skip edge, not a node",
                              key=False)
                    ok = False
            if not ok:
                continue
            if self.kinds[skip.to] == "input":
                self.fail(item.origin.child("to"), f"skip {name}: to: {skip.to!r} is an input; a skip merges "
                                                   "into a layer", key=False)
            elif skip.source == skip.to:
                self.fail(item.origin, f"skip {name}: from and to are both {skip.to!r}; a skip joins two "
                                       "different nodes")
            elif self.order[skip.source] > self.order[skip.to]:
                self.fail(item.origin.child("from"), f"skip {name}: from: {skip.source!r} comes after to: "
                                                     f"{skip.to!r}",
                          "a skip carries an earlier node's output forward; swap from and to", key=False)
            else:
                into.setdefault(skip.to, []).append(item)
        return into

    def check_outputs(self) -> list[str]:
        scope = self.scope
        if scope.outputs is None:
            if not scope.layers:  # every layer was left out by `when:`
                what = f"block {scope.block!r}" if scope.block else "the spec"
                self.fail(scope.origin.child("layers"), f"{what}: no layer is left (every `when:` is false), so "
                                                        "there is no output", key=True)
                return []
            return [scope.layers[-1].name]
        where = scope.origin.child("outputs")
        if scope.block and len(scope.outputs) > 1:
            self.fail(where, f"block {scope.block!r}: has {len(scope.outputs)} outputs; a block has one",
                      "return one node, e.g. a concat of the values you need", key=False)
            return []
        outputs = []
        invalid = self.invalid
        for i, ref in enumerate(scope.outputs):
            if ref in invalid:
                continue
            if ref not in self.kinds:
                self.fail(where.child(i), f"outputs: unknown node {ref!r}{did_you_mean(ref, self.order)}", key=False)
            elif self.kinds[ref] == "skip":
                self.fail(where.child(i), f"outputs: {ref!r} is a skip edge, not a node", key=False)
            elif ref in outputs:
                self.fail(where.child(i), f"outputs: {ref!r} is listed twice", key=False)
            else:
                outputs.append(ref)
        return outputs
