"""Stage 3, resolve: a typed `Spec` -> a `Graph` of named nodes in execution order.

There are three kinds of node, and nothing else:

- `input`: an argument of `forward`;
- `layer`: an op applied to one or more earlier values;
- `skip`: a skip edge's merge into its target layer. It is placed right after the target (and
  after earlier skips into the same target), so every later reference to the target reads the
  merged value, as the spec language promises.

Every reference is resolved here, so later passes never meet an unknown name. Analyses store
their results in `node.meta` (`type`, `projection`, ...), as torch.fx passes do.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import Diagnostic, SpecError
from .loader import Path, SourceMap
from .ops import Layer
from .spec import InputDecl, Skip, Spec
from .suggest import did_you_mean

__all__ = ["Graph", "Node", "NodeKind", "RESERVED_NAMES", "build_graph"]


class NodeKind(str, Enum):
    input = "input"
    layer = "layer"
    skip = "skip"


# Node names become attributes of an nn.Module and local variables of forward(): none may shadow
# nn.Module's API (tests keep this list equal to torch's), the compiled module's own attributes,
# or the names generated code relies on.
NN_MODULE_ATTRIBUTES = frozenset({
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile",
    "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia",
    "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
    "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
    "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad",
})
RESERVED_NAMES = NN_MODULE_ATTRIBUTES | {"self", "torch", "code", "spec"}


@dataclass
class Node:
    """One value in the graph. `inputs` are names of earlier nodes; `path` locates it in the spec."""

    name: str
    kind: NodeKind
    inputs: list[str]
    path: Path
    layer: Layer | None = None
    skip: Skip | None = None
    decl: InputDecl | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def var(self) -> str:
        """The variable holding this node's value in generated code (a skip updates its target's)."""
        return self.meta.get("var", self.name)


@dataclass
class Graph:
    """Nodes in execution order, which inputs `forward` takes, and which values it returns."""

    name: str
    nodes: dict[str, Node]
    inputs: list[str]
    outputs: list[str]
    spec: Spec
    source: SourceMap

    def where(self, node: Node, key: str | None = None) -> Any:
        """The location of a node's declaration (or of one of its keys)."""
        if key is not None:
            return self.source.locate((*node.path, key), key=True)
        return self.source.locate(node.path, key=True)

    def consumers(self) -> dict[str, list[str]]:
        """Node name -> names of the nodes that read it."""
        readers: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for name in node.inputs:
                readers[name].append(node.name)
        return readers


def build_graph(spec: Spec, source: SourceMap) -> Graph:
    """Resolve every name in `spec` into a graph.

    Raises:
        SpecError: duplicate or reserved names, unknown references, references to later nodes,
            cycles, and skips that cannot be placed.
    """
    return _Resolver(spec, source).run()


class _Resolver:
    def __init__(self, spec: Spec, source: SourceMap) -> None:
        self.spec = spec
        self.source = source
        self.diagnostics: list[Diagnostic] = []
        self.order: dict[str, int] = {}  # name -> position (inputs first, then layers)
        self.kinds: dict[str, str] = {}  # name -> "input" | "layer" | "skip"
        self.declared_at: dict[str, Path] = {}

    def fail(self, path: Path, message: str, hint: str | None = None, *, key: bool = True) -> None:
        self.diagnostics.append(Diagnostic(self.source.locate(path, key=key), message, hint))

    def run(self) -> Graph:
        self.declare_names()
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        layers = self.spec.layer_items()
        references = {name: refs for i, name, layer in layers
                      if (refs := self.layer_inputs(i, name, layer)) is not None}
        self.check_references(references)
        skips_into = self.check_skips()
        outputs = self.check_outputs()
        if self.diagnostics:
            raise SpecError(self.diagnostics)

        nodes: dict[str, Node] = {}
        value: dict[str, str] = {}  # spec name -> node holding its current (merged) value
        for name, decl in self.spec.input_decls().items():
            nodes[name] = Node(name, NodeKind.input, [], ("inputs", name), decl=decl)
            value[name] = name
        for i, name, layer in layers:
            nodes[name] = Node(name, NodeKind.layer, [value[r] for r in references[name]],
                               ("layers", i, name), layer=layer)
            value[name] = name
            for j, skip_name, skip in skips_into.get(name, []):
                nodes[skip_name] = Node(skip_name, NodeKind.skip, [value[name], value[skip.source]],
                                        ("skips", j, skip_name), skip=skip, meta={"var": name})
                value[name] = skip_name
        return Graph(self.spec.name, nodes, list(self.spec.inputs), [value[o] for o in outputs],
                     self.spec, self.source)

    def declare_names(self) -> None:
        entries: list[tuple[str, str, Path]] = [(name, "input", ("inputs", name)) for name in self.spec.inputs]
        entries += [(name, "layer", ("layers", i, name)) for i, name, _ in self.spec.layer_items()]
        entries += [(name, "skip", ("skips", i, name)) for i, name, _ in self.spec.skip_items()]
        for name, kind, path in entries:
            if name in self.kinds:
                first = self.source.locate(self.declared_at[name], key=True)
                self.fail(path, f"{kind} {name!r}: the name is already used by the {self.kinds[name]} "
                                f"at line {first.line}", "every input, layer and skip needs its own name")
                continue
            if name in RESERVED_NAMES or keyword.iskeyword(name):
                self.fail(path, f"{kind} {name!r}: the name is reserved (it would shadow "
                                f"{'a Python keyword' if keyword.iskeyword(name) else 'a torch.nn.Module attribute'})",
                          f"rename it, e.g. {name}_")
                continue
            self.kinds[name] = kind
            self.declared_at[name] = path
            if kind != "skip":
                self.order[name] = len(self.order)

    def layer_inputs(self, index: int, name: str, layer: Layer) -> list[str] | None:
        """The spec names a layer reads: its `input`, else the previous layer, else the sole input.

        None (with a diagnostic) when the layer must name its input and does not.
        """
        if layer.input is not None:
            return [layer.input] if isinstance(layer.input, str) else list(layer.input)
        if index > 0:
            return [self.spec.layer_items()[index - 1][1]]
        inputs = list(self.spec.inputs)
        if len(inputs) > 1:
            self.fail(("layers", index, name), f"layer {name!r}: the spec has several inputs "
                                               f"({', '.join(inputs)}); say which this layer reads",
                      f"add `input: {inputs[0]}`")
            return None
        return inputs

    def check_references(self, references: dict[str, list[str]]) -> None:
        for i, name, layer in self.spec.layer_items():
            if name not in references:
                continue
            path = ("layers", i, name)
            refs = references[name]
            if len(refs) < layer.min_inputs or (layer.max_inputs is not None and len(refs) > layer.max_inputs):
                wanted = (f"{layer.min_inputs}" if layer.min_inputs == layer.max_inputs
                          else f"at least {layer.min_inputs}")
                self.fail((*path, "input") if layer.input is not None else path,
                          f"layer {name!r} ({layer.op}): takes {wanted} input(s), got {len(refs)}")
            for ref in refs:
                self.check_reference(path, name, ref, references, "input")

    def check_reference(self, path: Path, name: str, ref: str, references: dict[str, list[str]], key: str) -> bool:
        """True when `ref`, read by `name` at `path`, is a known earlier node; else records why not."""
        where = (*path, key)
        if ref not in self.kinds:
            self.fail(where, f"{self.kinds.get(name, 'layer')} {name!r}: unknown node {ref!r}"
                             f"{did_you_mean(ref, self.order)}", key=False)
            return False
        if self.kinds[ref] == "skip":
            target = next(s.to for _, n, s in self.spec.skip_items() if n == ref)
            self.fail(where, f"{self.kinds.get(name, 'layer')} {name!r}: {ref!r} is a skip edge, not a node",
                      f"read its target instead: {target!r} holds the merged value", key=False)
            return False
        if ref == name:
            self.fail(where, f"layer {name!r}: reads its own output (a cycle)", key=False)
            return False
        if name in self.order and self.order[ref] > self.order[name]:
            cycle = self.find_cycle(name, ref, references)
            if cycle:
                self.fail(where, f"layer {name!r}: cycle {' -> '.join(cycle)}", key=False)
            else:
                self.fail(where, f"layer {name!r}: reads {ref!r}, which comes later", f"move {ref!r} above {name!r}; "
                          "layers run in the order listed", key=False)
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

    def check_skips(self) -> dict[str, list[tuple[int, str, Skip]]]:
        into: dict[str, list[tuple[int, str, Skip]]] = {}
        for i, name, skip in self.spec.skip_items():
            path = ("skips", i, name)
            ok = True
            for key, ref in (("from", skip.source), ("to", skip.to)):
                if ref not in self.kinds:
                    self.fail((*path, key), f"skip {name!r}: {key}: unknown node {ref!r}"
                                            f"{did_you_mean(ref, self.order)}", key=False)
                    ok = False
                elif self.kinds[ref] == "skip":
                    self.fail((*path, key), f"skip {name!r}: {key}: {ref!r} is a skip edge, not a node", key=False)
                    ok = False
            if not ok:
                continue
            if self.kinds[skip.to] == "input":
                self.fail((*path, "to"), f"skip {name!r}: to: {skip.to!r} is an input; a skip merges into a layer",
                          key=False)
            elif skip.source == skip.to:
                self.fail(path, f"skip {name!r}: from and to are both {skip.to!r}; a skip joins two different nodes")
            elif self.order[skip.source] > self.order[skip.to]:
                self.fail((*path, "from"), f"skip {name!r}: from: {skip.source!r} comes after to: {skip.to!r}",
                          "a skip carries an earlier node's output forward; swap from and to", key=False)
            else:
                into.setdefault(skip.to, []).append((i, name, skip))
        return into

    def check_outputs(self) -> list[str]:
        if self.spec.outputs is None:
            return [self.spec.layer_items()[-1][1]]
        outputs = []
        for i, ref in enumerate(self.spec.outputs):
            if ref not in self.kinds:
                self.fail(("outputs", i), f"outputs: unknown node {ref!r}{did_you_mean(ref, self.order)}", key=False)
            elif self.kinds[ref] == "skip":
                self.fail(("outputs", i), f"outputs: {ref!r} is a skip edge, not a node", key=False)
            elif ref in outputs:
                self.fail(("outputs", i), f"outputs: {ref!r} is listed twice", key=False)
            else:
                outputs.append(ref)
        return outputs
