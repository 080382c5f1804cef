"""The graph every later stage reads: named nodes in execution order, of four kinds and no others.

- `InputNode`: an argument of `forward`; `decl` is its declared type (None inside a block
  instance, whose caller supplies it).
- `LayerNode`: an op applied to earlier values (`layer`).
- `BlockNode`: a block call; `instances` holds one resolved graph per instance (`repeat: N`
  chains N of them), made during shape inference from its `recipe`, since a block's body may
  read the shape of its input.
- `SkipNode`: a skip edge's merge into its target layer, with its projection `policy` resolved.
  It is placed right after the target (and after earlier skips into the same target), so every
  later reference to the target reads the merged value, as the spec language promises.

A block call with several values (a block with several `outputs`, or a repeat with `collect:
true`) is followed by one `LayerNode` per value, named as the spec reads it (`head.box`,
`stage.0`), whose layer is a `BlockOutput`: the call's `values` lists them, and the call's
statement assigns their variables (`var`: `head_box`), so they are no code of their own.

Nodes hold structure only. Analyses write their results to `node.meta`, as torch.fx passes do:
`type` (TensorType), `args` (a layer's full constructor arguments), `params` (its parameter
count, None where only building can tell) and `projection` (a skip's ProjectionPlan).
The resolve stage (`resolve.py`) builds graphs; nothing here imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, TypeVar

from .errors import Location
from .loader import Origin, SourceMap
from .ops import OPS, GenericLayer, Layer
from .ops.tensor import BlockOutput
from .spec import BlockCall, InputDecl, Projection, Skip

__all__ = ["GENERATED_CODE_NAMES", "NN_MODULE_ATTRIBUTES", "RESERVED_NAMES", "SHARDED_MODULE_ATTRIBUTES", "BlockNode",
           "Graph", "GraphBuilder", "InputNode", "LayerNode", "Node", "NodeKind", "SkipNode", "is_block_value"]


class NodeKind(str, Enum):
    input = "input"
    layer = "layer"
    skip = "skip"
    block = "block"


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
# The methods `resgraph.shard` (FSDP2's fully_shard) adds to each module it shards (tests keep this list
# equal to torch's FSDPModule): a layer of the same name would be called as that method after sharding.
SHARDED_MODULE_ATTRIBUTES = frozenset({
    "reset_iter_state", "reshard", "set_all_reduce_hook", "set_allocate_memory_from_process_group_for_comm",
    "set_custom_all_gather", "set_custom_reduce_scatter", "set_force_sum_reduction_for_comms",
    "set_gradient_divide_factor", "set_is_last_backward", "set_modules_to_backward_prefetch",
    "set_modules_to_forward_prefetch", "set_post_optim_event", "set_reduce_scatter_divide_factor",
    "set_reduce_scatter_max_input_buffers", "set_reduce_scatter_unused_params", "set_requires_all_reduce",
    "set_requires_gradient_sync", "set_reshard_after_backward", "set_reshard_after_forward",
    "set_separate_reduce_scatter_group", "set_symm_mem_for_comm", "set_unshard_in_backward", "unshard",
})
# The compiled module's own public attributes (api.CompiledModule) and the generated code's names.
MODEL_ATTRIBUTES = frozenset({"code", "spec", "graph", "build_record", "example_inputs", "dynamic_shapes"})
# The names the generated forward itself reads: `self`, `torch`, the input guard's `str`, `tuple` and
# `ValueError` (codegen.input_guard), and the `int`, `max` and `min` of its size conditions
# (symbolic.render). A node of the same name is a local of that forward, assigned anywhere in it, so
# it shadows the name from the first line on: a layer named `int` made every call of a model whose
# guard reads `int(x.shape[2] * 1.7)` fail with UnboundLocalError.
GENERATED_CODE_NAMES = frozenset({"self", "torch", "str", "tuple", "ValueError", "int", "max", "min"})
RESERVED_NAMES = NN_MODULE_ATTRIBUTES | SHARDED_MODULE_ATTRIBUTES | MODEL_ATTRIBUTES | GENERATED_CODE_NAMES


@dataclass(kw_only=True, slots=True)
class Node:
    """One value in the graph. `inputs` are names of earlier nodes; `origin` locates it in a spec."""

    name: str
    inputs: list[str]
    origin: Origin
    meta: dict[str, Any] = field(default_factory=dict)
    variable: str | None = None  # its variable in generated code, where its name is not one (`head.box`)

    kind: ClassVar[NodeKind]

    @property
    def var(self) -> str:
        """The variable holding this node's value in generated code (a skip updates its target's)."""
        return self.variable or self.name

    def detail(self) -> str:
        """What messages add after the node's name: ` (Conv2d)`, ` (block basic)`, or nothing."""
        return ""

    def shallow_copy(self: N) -> N:
        """A copy sharing every field's value but `meta` and `inputs`, which are its own (see
        `shapes._copy_instance`); `copy.copy` does the same through its generic protocol, about
        five times as long."""
        return _copier(type(self))(self)


N = TypeVar("N", bound=Node)


@functools.cache
def _copier(cls: type[Node]) -> Callable[[Node], Node]:
    """`shallow_copy` for the node class `cls`: a function assigning each field in turn, generated once
    per class from its dataclass fields, as `dataclasses` writes `__init__` (a loop of setattr over the
    field names took 1.6 us a node, this 0.2 us; ResNet-50's equal block instances copy ~90 nodes)."""
    lines = [f"    copied.{f.name} = self.{f.name}" for f in fields(cls) if f.name not in ("meta", "inputs")]
    source = "\n".join(["def shallow_copy(self):", "    copied = new(cls)", *lines, "    copied.meta = dict(self.meta)",
                        "    copied.inputs = list(self.inputs)", "    return copied"])
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    exec(source, namespace)  # noqa: S102 (the source names only the dataclass's own fields)
    return namespace["shallow_copy"]


@dataclass(kw_only=True, slots=True)
class InputNode(Node):
    decl: InputDecl | None  # None in a block instance: its caller supplies the type

    kind: ClassVar[NodeKind] = NodeKind.input


@dataclass(kw_only=True, slots=True)
class LayerNode(Node):
    layer: Layer

    kind: ClassVar[NodeKind] = NodeKind.layer

    def detail(self) -> str:
        return f" ({self.layer.op})"


@dataclass(kw_only=True, slots=True)
class SkipNode(Node):
    skip: Skip
    policy: Projection  # the skip's own, else its scope's default
    target: str  # the variable it merges into: the `to` layer's

    kind: ClassVar[NodeKind] = NodeKind.skip

    @property
    def var(self) -> str:
        return self.target


@dataclass(kw_only=True, slots=True)
class BlockNode(Node):
    call: BlockCall
    instances: list[Graph]  # one per instance: made by shape inference from `recipe` (or given, built by hand)
    recipe: Any = None  # expand.BlockRecipe: how the instances are made once their input types are known
    values: list[str] = field(default_factory=list)  # its BlockOutput nodes, in order, when it has several values

    kind: ClassVar[NodeKind] = NodeKind.block

    @property
    def repeated(self) -> bool:
        """True for `repeat: N`: the instances are chained in an nn.Sequential."""
        return self.call.repeat is not None

    @property
    def collected(self) -> bool:
        """True for `collect: true`: every instance's output is a value of its own (`stage.0`, ...)."""
        return self.call.collect

    def output_types(self) -> list[Any]:
        """The types of what the call returns: each output of a block with several (`head.box`,
        `head.cls`: `meta["type"]` is the first's), or its one output (a repeat's: the last instance's)."""
        instance = self.instances[-1]
        names = instance.outputs if not self.repeated else instance.outputs[:1]
        return [instance.nodes[name].meta["type"] for name in names]

    def detail(self) -> str:
        return f" (block {self.call.block})"


def is_block_value(node: Node) -> bool:
    """True for a value of a block call with several (`head.box`, `stage.0`): a node of the graph,
    but the call's statement assigns it, and summaries and diagrams show it at the call's output."""
    return isinstance(node, LayerNode) and isinstance(node.layer, BlockOutput)


@dataclass
class Graph:
    """Nodes in execution order, which inputs `forward` takes, and which values it returns."""

    name: str  # the class name of the module it becomes
    nodes: dict[str, Node]
    inputs: list[str]
    outputs: list[str]
    origin: Origin  # where it is defined: the spec's root, or `blocks.NAME`
    qualname: str = ""  # "layer1.0." for a block instance: how messages name its nodes
    block: str | None = None  # the block a block instance instantiates
    params: dict[str, Any] = field(default_factory=dict)  # a block instance's parameter values
    meta: dict[str, Any] = field(default_factory=dict)  # graph-level analysis results (see infer_shapes)
    left_out: dict[str, int] = field(default_factory=dict)  # layers a false `when:` left out -> its line
    # The top level's: every block the spec defines or imports, called or not (a `when:` may leave
    # out a block's only call, a depth scale its instances): what the `training:` plan may name.
    defined_blocks: tuple[str, ...] = ()

    @property
    def file(self) -> str:
        """The file that defines this graph (a block library's, for its instances)."""
        return self.origin.source.file

    def where(self, node: Node, key: str | None = None) -> Location:
        """The location of a node's declaration (or of one of its keys)."""
        return (node.origin.child(key) if key is not None else node.origin).locate(key=True)

    def label(self, node: Node) -> str:
        """How messages name a node: `layer 'layer1.0.conv1' (Conv2d)`."""
        what = {NodeKind.skip: "skip", NodeKind.input: "input"}.get(node.kind, "layer")
        return f"{what} {self.qualname + node.name!r}{node.detail()}"

    def consumers(self, of: list[str] | None = None) -> dict[str, list[str]]:
        """Node name -> names of the nodes that read it: of every node, or of the nodes `of` only
        (the graph's inputs, say: a dict of every node's costs a 100,000-node graph 20 ms)."""
        readers: dict[str, list[str]] = {name: [] for name in (self.nodes if of is None else of)}
        for node in self.nodes.values():
            for name in node.inputs:
                if name in readers:
                    readers[name].append(node.name)
        return readers

    def subgraphs(self) -> list[tuple[str, Graph]]:
        """(qualified name, graph) of every block instance below this graph, depth first."""
        found = []
        for node in self.nodes.values():
            if isinstance(node, BlockNode):
                for instance in node.instances:
                    found.append((instance.qualname.rstrip("."), instance))
                    found.extend(instance.subgraphs())
        return found


class GraphBuilder:
    """Builds a graph by hand, node by node, as the resolver would (for tests, doctests and tools).

    Names stay unique; a layer reads the previous node unless given `inputs`; a skip must be
    added right after its target (and the target's earlier skips), where the resolver puts it,
    and later nodes that name the target read the merged value.

    >>> b = GraphBuilder("Net")
    >>> b.input("x", [3, 8, 8]); b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, padding=1)
    'x'
    'conv'
    >>> b.skip("res", "x", "conv"); [(n.name, n.kind.value, n.inputs) for n in b.build().nodes.values()]
    'res'
    [('x', 'input', []), ('conv', 'layer', ['x']), ('res', 'skip', ['conv', 'x'])]
    """

    def __init__(self, name: str, *, file: str = "<built by hand>") -> None:
        self.name = name
        self.origin = Origin(SourceMap(file), ())
        self.nodes: dict[str, Node] = {}
        self.value: dict[str, str] = {}  # name -> node holding its current (merged) value
        self.last: str | None = None  # the last input or layer added

    def _add(self, node: Node, name: str | None = None) -> str:
        if node.name in self.nodes or node.name in self.value:
            raise ValueError(f"the name {node.name!r} is already used")
        self.nodes[node.name] = node
        self.value[name or node.name] = node.name
        return node.name

    def input(self, name: str, shape: list[int] | None = None, *, dtype: str = "float32",
              layout: str | None = None) -> str:
        """An input; `shape=None` for a block instance's input (its caller supplies the type)."""
        decl = None if shape is None else InputDecl(shape=shape, dtype=dtype, layout=layout)
        self.last = self._add(InputNode(name=name, inputs=[], origin=self.origin.child("inputs", name), decl=decl))
        return name

    def layer(self, name: str, op: str | Layer, inputs: str | list[str] | None = None, **args: Any) -> str:
        """A layer applying `op` (an op name with its arguments, or a typed Layer)."""
        if isinstance(op, str):
            op = OPS.get(op, GenericLayer).model_validate({"op": op, **args})
        if inputs is None:
            inputs = op.input  # the op's own `input:`, as a spec writes it
        names = [inputs] if isinstance(inputs, str) else list(inputs) if inputs is not None else (
            [] if op.max_inputs == 0 else [self._previous()])
        node = LayerNode(name=name, inputs=[self.value[n] for n in names], origin=self.origin.child("layers", name),
                         layer=op)
        self.last = self._add(node)
        return name

    def block(self, name: str, call: BlockCall, instances: list[Graph], inputs: str | list[str] | None = None,
              values: list[str] | None = None) -> str:
        """A block call whose instances were built (and named with their qualnames) by hand.

        `values` names its values when it has several (its block's outputs, or `0`, `1`, ... for a
        collected repeat): each becomes a node `NAME.VALUE`, as the resolver makes them.
        """
        names = [inputs] if isinstance(inputs, str) else list(inputs) if inputs is not None else [self._previous()]
        node = BlockNode(name=name, inputs=[self.value[n] for n in names], origin=self.origin.child("layers", name),
                         call=call, instances=instances)
        self.last = self._add(node)
        for index, value in enumerate(values or []):
            self._add(LayerNode(name=f"{name}.{value}", inputs=[name], origin=node.origin,
                                layer=BlockOutput(output=value, index=index), variable=f"{name}_{value}"))
            node.values.append(f"{name}.{value}")
        return name

    def skip(self, name: str, source: str, to: str, *, merge: str = "add", projection: str | None = None,
             dim: int | None = None, default: Projection = Projection.auto) -> str:
        """A skip merging `source` into `to`, which must be the last layer added."""
        if to != self.last:
            raise ValueError(f"add skip {name!r} right after its target {to!r}, where the resolver places it")
        skip = Skip.model_validate({"from": source, "to": to, "merge": merge, "projection": projection, "dim": dim})
        node = SkipNode(name=name, inputs=[self.value[to], self.value[source]], origin=self.origin.child("skips", name),
                        skip=skip, policy=skip.projection or default, target=to)
        self._add(node, name)
        self.value[to] = name
        return name

    def _previous(self) -> str:
        if self.last is None:
            raise ValueError("the first node must be an input")
        return self.last

    def build(self, outputs: list[str] | None = None) -> Graph:
        """The graph; its outputs are the named nodes' current values (default: the last layer)."""
        chosen = outputs or [self._previous()]
        inputs = [n.name for n in self.nodes.values() if isinstance(n, InputNode)]
        return Graph(self.name, dict(self.nodes), inputs, [self.value[o] for o in chosen], self.origin)
