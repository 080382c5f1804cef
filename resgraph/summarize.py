"""Summaries of a lowered model: one row per node (block instances nested), projections marked, totals.

Reads a typed graph and the module lowered from it (a real model, or one built on the meta
device: counts need no storage). Every row carries its op, input and output shapes, kernel,
parameters (trainable or not), MACs (`macs.py`), parameter and activation memory, and the nodes
it reads. Totals and the projection list are always the whole model's, whatever `depth` shows.

>>> from resgraph import check
>>> from resgraph.model import meta_module
>>> graph = check("resgraph: 1\\nname: M\\ninputs: {x: [3, 8, 8]}\\nlayers:\\n"
...               "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\\n"
...               "skips:\\n  - res: {from: x, to: conv}\\n")
>>> s = summarize(graph, meta_module(graph))
>>> s.total_params, s.total_macs, s.projections, s.outputs
(132, 8448, ['res'], ['conv'])
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import UsageError, one_line, printable
from .graph import BlockNode, Graph, InputNode, LayerNode, Node, SkipNode, is_block_value
from .macs import MacCount, layer_macs, merge_macs, projection_macs, step_shapes, unseen_products
from .ops import TensorType
from .ops.base import dtype_name
from .ops.stored import literal_shape
from .ownership import Owns, owned_parameters, owned_tensors, owns
from .projections import ProjectionPlan, describe_steps, step_constructor, step_kernel
from .run_shapes import ShapeRun
from .suggest import did_you_mean

__all__ = ["COLUMNS", "DEFAULT_COLUMNS", "DTYPE_BYTES", "PER_DIM_ARGS", "Column", "ProjectionRow", "Row", "Summary",
           "argument_text", "format_bytes", "format_count", "format_summary", "instance_title", "parse_columns",
           "short_value", "summarize"]

# Arguments that hold one value per spatial dim, shown as one number when every dim has the same (`3` for
# kernel_size [3, 3]). Any other list is shown whole: `shape: [1, 1, 1]` is not `shape=1`.
PER_DIM_ARGS = frozenset({"kernel_size", "stride", "padding", "dilation", "output_padding", "output_size", "size",
                          "scale_factor"})
# Arguments whose list is a size, shown as `3x64`. Any other list (`dim: [2, 3]`, `dims`, `outputs`, `masks`)
# is shown as a list: `dim=2x3` would read as a size.
SIZE_ARGS = PER_DIM_ARGS | {"shape", "normalized_shape", "unflattened_size"}
LITERAL_ARGS = frozenset({"value", "init"})  # tensor literals (`constant`, `parameter`): data, not sizes
DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}


@dataclass(frozen=True)
class ProjectionRow:
    policy: str
    reason: str
    steps: str
    params: int


@dataclass(frozen=True)
class Row:
    """One node of the model (or a block call / block instance, with its contents' totals).

    MACs and activation bytes are per sample; `macs` is None where an uncurated op could not be
    measured. `connected_to` names the rows this one reads (a block instance's input resolves to
    the row that feeds it).
    """

    name: str  # dotted: `layer1.0.conv1` inside block instances
    kind: str  # input | layer | block | instance | skip
    op: str
    shape: list[int]  # the output shape, per sample
    params: int
    depth: int = 0
    projection: ProjectionRow | None = None
    input_shapes: list[list[int]] = field(default_factory=list)
    kernel: str | None = None
    trainable_params: int = 0
    macs: int | None = 0
    matmul_macs: int | None = 0
    param_bytes: int = 0
    activation_bytes: int = 0
    connected_to: list[str] = field(default_factory=list)
    tied_to: dict[str, str] = field(default_factory=dict)  # this layer's parameter -> the model's parameter it is
    output_shapes: list[list[int]] = field(default_factory=list)  # each output of a call with several (`shape`: 1st)
    ran: bool = True  # False: the model, changed after its build, stops at or before this node (shapes unknown)


@dataclass(frozen=True)
class Summary:
    """A model's rows (those `depth` shows) and its totals (always the whole model's).

    `str(summary)` is the table; `to_dict()` is what `resgraph build --json` prints.
    """

    name: str
    file: str
    rows: list[Row]
    total_params: int
    trainable_params: int
    outputs: list[str]  # the spec's names for the returned values
    projections: list[str] = field(default_factory=list)  # every skip that got a projection, at any depth
    total_macs: int = 0  # per sample
    matmul_macs: int = 0  # the part FlopCounterMode counts: convolutions, linear layers, attention
    param_bytes: int = 0
    buffer_bytes: int = 0
    activation_bytes: int = 0  # every node's output, one sample
    input_bytes: int = 0
    unmeasured: list[str] = field(default_factory=list)  # the layers whose MACs are unknown
    replaced: list[str] = field(default_factory=list)  # submodules put in place or set otherwise after the build
    failure: str | None = None  # where and why the model, changed after its build, no longer runs
    depth: int | None = None
    columns: tuple[str, ...] = ()

    def table(self) -> str:
        """The text table (as `resgraph build` prints it)."""
        return format_summary(self)

    def __str__(self) -> str:
        return format_summary(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["columns"] = list(self.columns)
        return data


def summarize(graph: Graph, module: Any, *, depth: int | None = None, columns: Sequence[str] | None = None,
              file: str = "") -> Summary:
    """The summary of `module`, lowered from `graph` (on the meta device or not).

    Args:
        depth: module levels to show, as torchinfo counts them (1: only the top level). Totals
            never depend on it.
        columns: the table's columns after the layer name (see `COLUMNS`); default `DEFAULT_COLUMNS`.
        file: the spec's file, for the title.
    Raises:
        UsageError: an unknown column name, or a depth below 1.
    """
    chosen = parse_columns(columns)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise UsageError(f"depth counts module levels from 1 (the top level): a whole number >= 1, not {depth!r}")
    walker = _Walker(module)
    walker.graph(graph, "", 0, list(graph.inputs))
    # A submodule put in place after the build may change every shape after it, and one of another
    # floating dtype than the values it meets (a float32 head in a `.half()` model) may not run: run it.
    if walker.swapped or len(walker.float_dtypes) > 1:
        from .run_shapes import run_shapes

        run = run_shapes(graph, module, float_dtype=walker.float_dtype)
        walker = _Walker(module, run=run, swapped=walker.swapped or {}, resettled=frozenset(walker.resettled))
        walker.graph(graph, "", 0, list(graph.inputs))
    rows = walker.rows
    leaves = [r for r in rows if r.kind in ("layer", "skip")]
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return Summary(
        name=graph.name, file=file,
        rows=[r for r in rows if depth is None or r.depth < depth],
        total_params=total, trainable_params=trainable,
        outputs=[name if is_block_value(graph.nodes[name]) else graph.nodes[name].var for name in graph.outputs],
        projections=[r.name for r in rows if r.projection and r.projection.steps != "identity"],
        total_macs=sum(r.macs or 0 for r in leaves), matmul_macs=sum(r.matmul_macs or 0 for r in leaves),
        param_bytes=sum(p.numel() * p.element_size() for p in module.parameters()),
        buffer_bytes=sum(b.numel() * b.element_size() for b in module.buffers()),
        activation_bytes=sum(r.activation_bytes for r in leaves),
        input_bytes=sum(r.activation_bytes for r in rows if r.kind == "input"),
        unmeasured=[r.name for r in leaves if r.macs is None], depth=depth, columns=chosen,
        replaced=sorted(walker.swapped or ()), failure=None if walker.run is None or walker.run.failure is None
        else str(walker.run.failure))


@dataclass
class _Totals:
    macs: MacCount | None = field(default_factory=MacCount)
    activation_bytes: int = 0

    def add(self, macs: MacCount | None, activation_bytes: int) -> None:
        self.macs = None if macs is None or self.macs is None else self.macs + macs
        self.activation_bytes += activation_bytes


class _Walker:
    """Walks a graph and its block instances depth first, appending rows in execution order."""

    def __init__(self, module: Any, *, run: ShapeRun | None = None, swapped: dict[str, Any] | None = None,
                 resettled: frozenset[str] = frozenset()) -> None:
        self.module = module
        self.run = run  # the types as the model runs, once a submodule was put in place after the build
        # A model converted after its build (`model.half()`, `.double()`) computes in its weights' dtype
        # (of several, the one most of them hold: `_float_dtypes`): its float32 values are that dtype's, in
        # the memory column and the inputs an uncurated op is measured on.
        self.float_dtypes = _float_dtypes(module)
        self.float_dtype = max(self.float_dtypes, key=self.float_dtypes.__getitem__) if self.float_dtypes else None
        self.rows: list[Row] = []
        self.values: dict[int, list[str]] = {}  # id(block call) -> the rows holding its values, when several
        self.outputs: list[str] = []  # the rows holding the outputs of the graph walked last
        self.swapped = swapped  # the submodules put in place after the build, once asked
        self.made_again: Any = None  # (see `rebuilt`)
        self.made_alone: dict[Any, Any] = {}  # a node's module built alone on meta, by its op and arguments
        # of `swapped`, the modules the build made but set otherwise since (`model.conv1.stride = (1, 1)`)
        self.resettled: set[str] = set(resettled)

    def graph(self, graph: Graph, prefix: str, level: int, sources: list[str]) -> _Totals:
        """Rows for `graph`'s nodes; `sources` name the rows feeding its inputs. Returns its totals."""
        shown: dict[str, str] = dict(zip(graph.inputs, sources))  # node name -> the row that holds its value
        totals = _Totals()
        for node in graph.nodes.values():
            if is_block_value(node):  # no row: the value is its instance's output row (`head.box`, `stage.0`)
                shown[node.name] = self.values[id(graph.nodes[node.inputs[0]])][node.layer.index]
                continue
            name = prefix + node.name
            swapped_block = self.replaced_block(name, node) if isinstance(node, BlockNode) else None
            inputs = [self.type_of(prefix + i, graph.nodes[i]) for i in node.inputs]
            reads = [shown[i] for i in node.inputs]
            shown.setdefault(node.name, name)
            out = self.type_of(name, node)
            ran = out is not None and None not in inputs
            if not ran:  # the changed model stopped here or before: the spec's types stand in, unshown
                out, inputs = self.runtime(node.meta["type"]), [self.runtime(graph.nodes[i].meta["type"])
                                                                 for i in node.inputs]
            assert out is not None
            common = {"shape": list(out.shape) if ran else [], "depth": level,
                      "input_shapes": [list(t.shape) for t in inputs if t is not None] if ran else [],
                      "connected_to": reads, "ran": ran, **self.owned(node, prefix)}
            if swapped_block is not None:  # a whole block put in place after the build: one row, as it runs now
                common.update(_held(list(swapped_block.parameters())))
                macs = _measure(swapped_block, inputs) if ran else None
                self.rows.append(Row(name, "layer", f"{type(swapped_block).__name__} (put in place after the build)",
                                     **_mac_fields(macs), activation_bytes=_bytes(out), **common))
                self.values[id(node)] = [name] * (len(node.values) + len(node.instances))  # (its values: this row)
                totals.add(macs, _bytes(out))
            elif isinstance(node, InputNode):
                if not prefix:
                    self.rows.append(Row(name, "input", f"input {out.dtype}", activation_bytes=_bytes(out), **common))
            elif isinstance(node, LayerNode):
                swapped = self.replaced(node, name, prefix)
                if swapped is not None:  # (measured as it runs now: its output and MACs may not be the spec's)
                    macs = _measure(swapped, inputs) if ran else None
                    if macs is None and ran and name in self.resettled:
                        macs = self.layer_macs(node, name, inputs, out)  # (MultiheadAttention takes q, k, v)
                    text = self.changed_text(name, swapped)
                else:
                    macs, text = self.layer_macs(node, name, inputs, out) if ran else None, _layer_text(node)
                self.rows.append(Row(name, "layer", text, kernel=None if swapped is not None else _kernel(node),
                                     **_mac_fields(macs), activation_bytes=_bytes(out),
                                     tied_to=dict(node.layer.tie or {}), **common))
                totals.add(macs, _bytes(out))
            elif isinstance(node, SkipNode):
                plan: ProjectionPlan = node.meta["projection"]
                reached = _projected_shape(plan, node.meta["type"], out)
                swapped = self.replaced(node, name, prefix)
                if swapped is None:
                    projected = projection_macs(plan, inputs[1], reached) if ran else None
                    steps = describe_steps(plan.steps)
                else:  # (its projection changed after the build: measured as it runs now, on the skip's source)
                    projected = _measure(swapped, inputs[1:]) if ran else None
                    steps = self.changed_text(name, swapped)
                macs = None if projected is None else merge_macs(node.skip.merge.value, out) + projected
                # the merged value and each projection step's output (an avgpool or subsample keeps the channels)
                memory = _bytes(out) + sum(_bytes(replace(out, shape=shape))
                                           for shape in step_shapes(plan, inputs[1], reached))
                projection = ProjectionRow(plan.policy.value, plan.reason, steps, common["params"])
                kernel = step_kernel(plan.steps)
                self.rows.append(Row(name, "skip", f"skip {node.skip.merge.value} <- {node.skip.source}",
                                     projection=projection, kernel=kernel, **_mac_fields(macs),
                                     activation_bytes=memory, **common))
                totals.add(macs, memory)
            elif isinstance(node, BlockNode):
                if len(outputs := node.output_types()) > 1:
                    kinds = ([self.type_of(prefix + v, graph.nodes[v]) for v in node.values]
                             if self.run is not None and node.values else [self.runtime(t) for t in outputs])
                    common["output_shapes"] = [list(t.shape) if t is not None else [] for t in kinds]
                block = self.block(node, prefix, level, reads, common)
                totals.add(block.macs, block.activation_bytes)
        self.outputs = [shown[name] for name in graph.outputs]
        return totals

    def block(self, node: BlockNode, prefix: str, level: int, reads: list[str], common: dict[str, Any]) -> _Totals:
        """The block call's row, its instances' rows (for `repeat`) and their contents."""
        repeat = f" x{len(node.instances)}" if node.repeated else ""
        if node.values:  # its values are read by name: say which (`detect -> box, cls`, `bottleneck x3, collected`)
            repeat += ", collected" if node.repeated else f" -> {', '.join(v.partition('.')[2] for v in node.values)}"
        at = len(self.rows)
        self.rows.append(Row(prefix + node.name, "block", f"{node.call.block}{repeat}", **common))
        totals, sources = _Totals(), reads
        for instance in node.instances:
            qualified = instance.qualname.rstrip(".")
            if not node.repeated:
                inner = self.graph(instance, instance.qualname, level + 1, sources)
                self.values[id(node)] = self.outputs
            elif (swapped := self.replaced_block(qualified, instance)) is not None:  # (`model.layer1[1] = ...`)
                out = self.type_of(qualified, instance.nodes[instance.outputs[0]])
                ins = [self.run.types.get(source) if self.run else None for source in sources]  # (what it was given)
                ran = out is not None and None not in ins
                macs = _measure(swapped, [t for t in ins if t is not None]) if ran else None
                self.rows.append(Row(
                    qualified, "layer", f"{type(swapped).__name__} (put in place after the build)",
                    list(out.shape) if out is not None and ran else [], depth=level + 1,
                    input_shapes=[list(t.shape) for t in ins if t is not None] if ran else [], ran=ran,
                    connected_to=sources, activation_bytes=_bytes(out) if out is not None and ran else 0,
                    **_held(list(swapped.parameters())), **_mac_fields(macs)))
                inner = _Totals()
                inner.add(macs, _bytes(out) if out is not None and ran else 0)
                sources = [qualified]
                self.values.setdefault(id(node), []).append(qualified)
            else:
                first = len(self.rows)
                self.rows.append(Row(qualified, "instance", instance_title(instance), shape=[], params=0))
                inner = self.graph(instance, instance.qualname, level + 2, sources)
                owned = [t for n in instance.nodes.values() for t in owned_tensors(self.module, n, instance.qualname)]
                out = self.type_of(qualified, instance.nodes[instance.outputs[0]])
                ins = [self.type_of(instance.qualname + i, instance.nodes[i]) for i in instance.inputs]
                ran = out is not None and None not in ins
                self.rows[first] = Row(
                    qualified, "instance", instance_title(instance),
                    list(out.shape) if out is not None and ran else [], sum(t.numel() for t in owned),
                    level + 1, input_shapes=[list(t.shape) for t in ins if t is not None] if ran else [], ran=ran,
                    trainable_params=sum(t.numel() for t in owned if t.requires_grad),
                    param_bytes=sum(t.numel() * t.element_size() for t in owned), connected_to=sources,
                    activation_bytes=inner.activation_bytes, **_mac_fields(inner.macs))
                sources = [qualified]
                self.values.setdefault(id(node), []).append(qualified)
            totals.add(inner.macs, inner.activation_bytes)
        self.rows[at] = replace(self.rows[at], activation_bytes=totals.activation_bytes, **_mac_fields(totals.macs))
        return totals

    def type_of(self, name: str, node: Node) -> TensorType | None:
        """The type of the value named `name` (dotted) as the module computes it: the spec's (in the
        module's floating dtype), or, once a submodule was put in place after the build, as it ran;
        None where the run stopped before it."""
        if self.run is None:
            return self.runtime(node.meta["type"])
        return self.run.types.get(name)

    def runtime(self, t: TensorType) -> TensorType:
        """`t` as the module computes it: a float32 value in the module's own floating dtype."""
        return replace(t, dtype=self.float_dtype) if self.float_dtype and t.dtype == "float32" else t

    def owned(self, node: Node, prefix: str) -> dict[str, int]:
        try:
            tensors = owned_tensors(self.module, node, prefix)
        except AttributeError:  # (a block with a part put in place after the build: the tensors it holds now)
            tensors = list(self.module.get_submodule(prefix + node.name).parameters())
        return _held(tensors)

    def layer_macs(self, node: LayerNode, name: str, inputs: list[TensorType], out: TensorType) -> MacCount | None:
        macs = layer_macs(node.layer, node.meta.get("args", {}), inputs, out)
        if macs is None:
            macs = _measure(self.module.get_submodule(name), inputs)
        return macs

    def replaced_block(self, name: str, call: BlockNode | Graph) -> Any | None:
        """The submodule at `name` where a block call (`call`: its node) or one instance of a repeat
        (`call`: its graph) was put in place after the build (`model.layer4 = nn.Identity()`), as
        `model.replaced_modules` tells; None where it is what the build made. That answer builds the
        spec on meta, so it is asked only where the module there is missing or of another class
        than the generated one (a repeat's: nn.Sequential)."""
        if getattr(self.module, "build_record", None) is None:
            return None
        expected = (call.name if isinstance(call, Graph) else "Sequential" if call.repeated
                    else call.instances[0].name)
        try:
            sub = self.module.get_submodule(name)
        except AttributeError:
            sub = None
        # (a repeat's nn.Sequential of another length runs what it holds: put in place as a whole)
        resized = isinstance(call, BlockNode) and call.repeated and sub is not None and len(sub._modules) != len(
            call.instances)
        if self.swapped is None:
            if sub is not None and type(sub).__name__ in (expected, f"FSDP{expected}") and not resized:
                return None
            from .model import replaced_modules

            self.swapped = replaced_modules(self.module, self.rebuilt())
        if resized:
            self.swapped = {outer: sub for outer, sub in self.swapped.items() if not outer.startswith(f"{name}.")}
            self.swapped[name] = sub
        return sub if any(name == outer or name.startswith(f"{outer}.") for outer in self.swapped) else None

    def replaced(self, node: LayerNode | SkipNode, name: str, prefix: str) -> Any | None:
        """The module at `name` where it is not what the build made there, all through (`model.fc =
        nn.Linear(512, 10)`, a new head for fine-tuning; `model.enc.self_attn.num_heads = 4`, a part of a
        layer; `model.shortcut1[0].stride = (2, 2)`, a skip's projection), as `model.replaced_modules`
        tells; None for a built one, for code ops and for a skip without a projection module. That
        answer builds the spec on meta, so it is asked only once a module looks changed
        (`looks_changed`)."""
        if getattr(self.module, "build_record", None) is None:
            return None
        if isinstance(node, LayerNode) and (node.layer.torch_name is None or node.layer.code_only):
            return None
        if isinstance(node, SkipNode) and owns(node) is not Owns.projection:
            return None
        try:
            sub = self.module.get_submodule(name)
        except AttributeError:
            return None
        if self.swapped is None:
            if not self.looks_changed(node, sub, prefix):
                return None
            from .model import replaced_modules

            self.swapped = replaced_modules(self.module, self.rebuilt())
        # (the module itself, a part of it, or a block around it)
        if not any(outer == name or name.startswith(f"{outer}.") or outer.startswith(f"{name}.")
                   for outer in self.swapped):
            return None
        from .model import set_otherwise

        built = self.built_at(name)
        if built is not None and set_otherwise(sub, built):  # (the built class and shapes, set otherwise)
            self.resettled.add(name)
        return sub

    def looks_changed(self, node: LayerNode | SkipNode, sub: Any, prefix: str) -> bool:
        """Whether the module at a layer or a skip's projection (`sub`) may not be what the build made:
        of a class not named as the op's, holding another number of parameters than the build counted,
        keeping a setting otherwise than the constructor was given (`_settings_changed`), or, where it
        has parts (MultiheadAttention's `out_proj`), unlike a build of that layer alone on meta, all
        through (`model.as_built`); a projection's parts are told by its steps' classes and arguments. So
        only a layer with parts is built again (once per op and arguments), not the whole model."""
        counted = node.meta.get("params")  # (None where the build did not count them: a tied layer's)
        if counted not in (None, owned_parameters(self.module, node, prefix)):
            return True
        if isinstance(node, SkipNode):
            return _projection_changed(sub, node.meta["projection"])
        if not _made_as(sub, node.layer.torch_name.rsplit(".", 1)[-1], node.meta.get("args", {})):
            return True
        if not sub._modules:
            return False
        from .model import as_built, built_alone_on_meta

        key = (repr(node.layer), repr(node.meta.get("args")))
        if key not in self.made_alone:
            try:
                self.made_alone[key] = built_alone_on_meta(self.module, node)
            except Exception:  # (an imported class that cannot be built on meta: taken as built, as before)
                self.made_alone[key] = None
        alone = self.made_alone[key]
        return alone is not None and not as_built(sub, alone)

    def built_at(self, name: str) -> Any | None:
        """The module a rebuild makes at `name`, on meta; None where it makes none."""
        try:
            return self.rebuilt().get_submodule(name)
        except AttributeError:
            return None

    def changed_text(self, name: str, sub: Any) -> str:
        """How a module changed after the build is shown: one of the built class and shapes as torch
        prints it, then what changed inside it, by its path there (`Conv2d(3, 64, kernel_size=(7, 7),
        stride=(1, 1), ...)`, `TransformerEncoderLayer(self_attn.num_heads=4)`; a module that prints no
        settings, as MultiheadAttention, by the ones that changed), `(set otherwise after the build)`;
        another module by its class, `(put in place after the build)`."""
        built = self.built_at(name) if name in self.resettled else None
        if built is None:
            return f"{type(sub).__name__} (put in place after the build)"
        from .model import changed_inside, changed_settings

        settings = [sub.extra_repr() or changed_settings(sub, built), *changed_inside(sub, built)]
        return f"{type(sub).__name__}({one_line(', '.join(filter(None, settings)))}) (set otherwise after the build)"

    def rebuilt(self) -> Any:
        """The model its spec builds, on meta (made once, where a module looks changed)."""
        if self.made_again is None:
            from .model import rebuilt_on_meta

            self.made_again = rebuilt_on_meta(self.module)
        return self.made_again


def _held(tensors: list[Any]) -> dict[str, int]:
    """A row's parameter counts and bytes, of the parameters it holds."""
    return {"params": sum(t.numel() for t in tensors),
            "trainable_params": sum(t.numel() for t in tensors if t.requires_grad),
            "param_bytes": sum(t.numel() * t.element_size() for t in tensors)}


def _made_as(module: Any, name: str, given: dict[str, Any]) -> bool:
    """Whether `module` looks made by the class `name` from the arguments `given`: of that class (or a
    subclass: FSDP2's `FSDPLinear`), keeping its settings as given (`_settings_changed`)."""
    return name in {cls.__name__ for cls in type(module).__mro__} and not _settings_changed(module, given)


def _projection_changed(module: Any, plan: ProjectionPlan) -> bool:
    """Whether a skip's projection module may not be what `plan` builds: an nn.Sequential of its module
    steps, each made as its step's constructor says (`step_constructor`), with no parts of its own."""
    steps = [step_constructor(step) for step in plan.module_steps]
    parts = list(module._modules.values())
    return not (_made_as(module, "Sequential", {}) and len(parts) == len(steps) and all(
        part is not None and not part._modules and _made_as(part, name, given)
        for part, (name, given) in zip(parts, steps)))


def _settings_changed(module: Any, given: dict[str, Any]) -> bool:
    """Whether `module` keeps a setting otherwise than its build gave it (`given`: the constructor's
    arguments, the rest at the constructor's defaults), compared where it keeps one under the
    argument's name; an int and a tuple of that int alike (`stride=2` is kept as `(2, 2)`). A function
    it keeps (TransformerEncoderLayer's `activation`, given as "relu") is left to `model.as_built`."""
    from .model import module_settings

    kept = module_settings(module)
    for key, value in {**_defaults(type(module)), **given}.items():
        if key in kept and not callable(kept[key]) and _sizes(kept[key]) != _sizes(value):
            return True
    return False


def _sizes(value: Any) -> Any:
    """`value` with a list as a tuple and a tuple of one repeated value as that value (`(2, 2)` is `2`)."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        return value[0] if value and all(v == value[0] for v in value) else value
    return value


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """The constructor's arguments with a default other than None, by name; none where it has no
    signature to read."""
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    # (a default of None is decided by the constructor: MaxPool2d's stride is its kernel_size, MultiheadAttention's
    # kdim its embed_dim)
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty and p.default is not None}


def _measure(module: Any, inputs: list[TensorType]) -> MacCount | None:
    """An uncurated layer's MACs: FlopCounterMode on one sample, on the meta device first; None
    (unknown) where it could not run, or ran an op that may hold a product the counter does not
    count (`macs.unseen_products`: `nn.Bilinear`'s `_trilinear` would count 0).

    The module runs with meta stand-ins for its tensors (`functional_call`), wherever it lives: on
    CPU, torch runs an LSTM as one fused kernel and an eval-mode TransformerEncoderLayer on its fast
    path, which the counter cannot see (0 MACs), while on meta both run the matrix products it counts.
    So a built model counts what its spec counts, in train or eval mode. A module that cannot run so
    (a tensor kept as a plain attribute stays where it is) is measured where it lives, in eval mode (its
    running statistics left as they were; each submodule's mode put back).
    """
    import torch
    from torch.func import functional_call
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Seen(TorchDispatchMode):  # the aten ops the module ran, as the counter sees them
        def __init__(self) -> None:
            super().__init__()
            self.ops: dict[Any, None] = {}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops[func] = None
            return func(*args, **(kwargs or {}))

    from .run_shapes import meta_stand_ins

    stand_ins = meta_stand_ins(module)
    held = next(itertools.chain(module.parameters(), module.buffers()), None)  # (where it lives)
    for device in ["meta", *([held.device] if held is not None and held.device.type != "meta" else [])]:
        try:
            args = [torch.zeros((1, *t.shape), dtype=getattr(torch, t.dtype), device=device) for t in inputs]
            with torch.no_grad(), FlopCounterMode(display=False) as counter, Seen() as seen:
                if device == "meta":
                    functional_call(module, stand_ins, tuple(args), strict=False, tie_weights=False)
                else:
                    with _in_eval_mode(module):  # (a run where it lives leaves its running statistics as they were)
                        module(*args)
        except Exception:  # an arbitrary module's forward may refuse zeros or a device: try the next, or unknown
            continue
        if unseen_products(seen.ops, counter.flop_registry):
            return None
        return MacCount(counter.get_total_flops() // 2)
    return None


@contextlib.contextmanager
def _in_eval_mode(module: Any) -> Iterator[None]:
    """`module` in eval mode (a BatchNorm reads its running statistics instead of updating them), each
    submodule's own mode put back after."""
    modes = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in modes:
            sub.training = training


def _projected_shape(plan: ProjectionPlan, spec: TensorType, merged: TensorType) -> tuple[int, ...]:
    """The shape a skip's projection reaches in a model that runs `merged` where its spec made `spec`:
    each dim the plan's output shares with the spec's merged value follows the run (a target whose
    size changed); the others (a concat's dim, a dim broadcast from 1) stay the plan's."""
    final = plan.output.shape
    if len(final) != len(spec.shape) or len(merged.shape) != len(spec.shape):
        return final
    return tuple(m if f == s else f for f, s, m in zip(final, spec.shape, merged.shape))


def _float_dtypes(module: Any) -> dict[str, int]:
    """The floating dtypes of `module`'s parameters and buffers, each with the elements it holds. Where
    they are several, the model computes in the one most of them hold (a `.half()` model with a float32
    head put in place is given float16 inputs), and is run to see whether its layers take the others."""
    counts: dict[Any, int] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return {dtype_name(dtype): count for dtype, count in counts.items() if dtype.is_floating_point}


def _mac_fields(macs: MacCount | None) -> dict[str, int | None]:
    return {"macs": None if macs is None else macs.total, "matmul_macs": None if macs is None else macs.matmul}


def _bytes(t: TensorType) -> int:
    return math.prod(t.shape) * DTYPE_BYTES.get(t.dtype, 4)


def _layer_text(node: LayerNode) -> str:
    """`Conv2d(out_channels=64, ...)`; code ops name their inputs (`add(a, b)`); ties are noted
    (`Linear(...) [weight tied to wte.weight]`), as are buffers and frozen parameters."""
    layer = node.layer
    args = ", ".join(f"{k}={argument_text(k, v)}" for k, v in layer.args().items())
    if layer.code_only:
        args = ", ".join([*node.inputs, *([args] if args else [])])
    notes = [f"{name} tied to {target}" for name, target in (layer.tie or {}).items()]
    if layer.owned() == "buffer":
        notes.append("buffer" if getattr(layer, "persistent", False) else "buffer, not saved")
    return f"{layer.op}({args})" + "".join(f" [{note}]" for note in notes)


def _kernel(node: LayerNode) -> str | None:
    """`3x3`: a layer's kernel (convolutions and pools), spelled out over its spatial dims: a curated
    op's, or those an uncurated class's name says as torch's do (`LPPool2d`: `2x2` for kernel_size 2).
    A kernel of an uncurated class whose name says none is shown as written."""
    kernel = getattr(node.layer, "kernel_size", None)
    if kernel is None:
        return None
    dims = getattr(node.layer, "spatial_dims", None)
    if dims is None:
        named = re.search(r"([123])d$", node.layer.op)
        dims = int(named.group(1)) if named else 1
    sizes = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel] * dims
    return "x".join(map(str, sizes))


def instance_title(instance: Graph) -> str:
    """`basic(planes=64, stride=2)`: a block instance's block and the parameters it was built with."""
    params = ", ".join(f"{k}={short_value(v)}" for k, v in instance.params.items())
    return f"{instance.block}({params})"


def argument_text(key: str, value: Any) -> str:
    """A layer argument's value as the summary and the diagram show it (`short_value`, told by the
    argument's name whether its list is a size, a value per spatial dim or a tensor literal).

    >>> argument_text("kernel_size", [3, 3]), argument_text("shape", [4, 4]), argument_text("dim", [2, 3])
    ('3', '4x4', '[2, 3]')
    """
    return short_value(value, per_dim=key in PER_DIM_ARGS, literal=key in LITERAL_ARGS, size=key in SIZE_ARGS)


def short_value(value: Any, *, per_dim: bool = False, literal: bool = False, size: bool = True) -> str:
    """`3x1` for a `size` (3, 1); `3` for (3, 3) when `per_dim` (a value per spatial dim, such as a kernel
    size); a list that is not a size (dims, names) as a list, `[2, 3]`, `[box, cls]`; a large tensor
    literal by its shape (`<16x16 values>`); other values as written (small or ragged lists, mappings,
    a `literal` tensor's values; booleans as torch's reprs print them, `True`), on one line, with
    characters a terminal would act on and line breaks escaped (`one_line`): a spec's strings reach
    table cells, diagram labels and titles, where a line break would start a line of its own.

    >>> short_value([3, 3], per_dim=True), short_value([1, 1, 1]), short_value([3, 1])
    ('3', '1x1x1', '3x1')
    >>> short_value([2, 3], size=False), short_value(["box", "cls"])
    ('[2, 3]', '[box, cls]')
    >>> short_value([1, 2, 3], literal=True), short_value([True, False])
    ('[1, 2, 3]', '[True, False]')
    """
    shape = _literal_shape(value)
    if literal:
        value = _as_lists(value)  # as written in the spec (layer arguments are kept as tuples)
    if len(shape) > 1 or (shape and shape[0] > 8):
        text = f"<{'x'.join(map(str, shape))} values>" if math.prod(shape) > 8 else str(value)
    elif (isinstance(value, (tuple, list)) and value and not literal
          and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value)):
        if size and not any(isinstance(v, str) for v in value):
            text = str(value[0]) if per_dim and len(set(value)) == 1 else "x".join(map(str, value))
        else:  # names, or dims: as a list (`outputs=p0xp1` and `dim=2x3` read as sizes)
            text = "[" + ", ".join(map(str, value)) + "]"
    else:
        text = str(value)
    return one_line(text)


def _as_lists(value: Any) -> Any:
    return [_as_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _literal_shape(value: Any) -> tuple[int, ...]:
    """The shape of a rectangular list literal; () for anything else (a number, a ragged list)."""
    try:
        return literal_shape(value)
    except ValueError:
        return ()


# --- the table ----------------------------------------------------------------------------------

def format_count(n: int | None) -> str:
    """`1.77M`: a count in thousands (K), millions (M), billions (G) or trillions (T); `?` for unknown.
    The unit is the smallest whose rounded number stays under 1000 (999,999 is `1.00M`, not `1000.00K`).

    >>> format_count(999), format_count(1_769_472), format_count(4_089_184_256), format_count(None)
    ('999', '1.77M', '4.09G', '?')
    >>> format_count(999_994), format_count(999_999)
    ('999.99K', '1.00M')
    """
    if n is None:
        return "?"
    if abs(n) < 1000:
        return str(n)
    for unit, size in (("K", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)):
        if round(abs(n) / size, 2) < 1000 or unit == "T":
            return f"{n / size:.2f}{unit}"
    raise AssertionError("unreachable")


def format_bytes(n: int) -> str:
    """`3.8 MiB`: a byte count in the largest binary unit that keeps it at or above 1 (as rounded:
    1,048,575 bytes are `1.0 MiB`, not `1024.0 KiB`).

    >>> format_bytes(512), format_bytes(1_075_712), format_bytes(3 * 2**30), format_bytes(2**20 - 1)
    ('512 B', '1.0 MiB', '3.0 GiB', '1.0 MiB')
    """
    if n < 1024:
        return f"{n} B"
    for unit, size in (("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30)):
        if round(n / size, 1) < 1024 or unit == "GiB":
            return f"{n / size:.1f} {unit}"
    raise AssertionError("unreachable")


def _shape(shape: list[int]) -> str:
    return "(N" + "".join(f", {d}" for d in shape) + ")"


@dataclass(frozen=True)
class Column:
    """A table column: its header, how a row shows in it, and whether it is a number (right-aligned)."""

    header: str
    cell: Callable[[Row], str]
    numeric: bool = False


COLUMNS: dict[str, Column] = {
    "op": Column("Op", lambda r: r.op),
    "input_shape": Column("Input shape", lambda r: "; ".join(_shape(s) for s in r.input_shapes) if r.ran else "?"),
    "output_shape": Column("Output shape", lambda r: "; ".join(_shape(s) for s in r.output_shapes or [r.shape])
                           if r.ran else "?"),
    "kernel": Column("Kernel", lambda r: r.kernel or ""),
    "params": Column("Params", lambda r: f"{r.params:,}", numeric=True),
    "trainable": Column("Trainable", lambda r: f"{r.trainable_params:,}", numeric=True),
    "macs": Column("MACs", lambda r: format_count(r.macs) if r.kind != "input" else "", numeric=True),
    "param_memory": Column("Param memory", lambda r: format_bytes(r.param_bytes) if r.param_bytes else "",
                           numeric=True),
    "activation_memory": Column("Activations", lambda r: format_bytes(r.activation_bytes) if r.ran else "?",
                                numeric=True),
    "connected_to": Column("Connected to", lambda r: ", ".join(r.connected_to)),
}
DEFAULT_COLUMNS = ("op", "output_shape", "params")


def parse_columns(columns: str | Iterable[str] | None) -> tuple[str, ...]:
    """Column names from a list or a comma-separated string; `default` stands for DEFAULT_COLUMNS
    and `all` for every column.

    >>> parse_columns("default,macs")
    ('op', 'output_shape', 'params', 'macs')

    Raises:
        UsageError: an unknown column (with the valid names and a "did you mean"), or one that is not a string.
    """
    if columns is None:
        return DEFAULT_COLUMNS
    if not isinstance(columns, (str, Iterable)):
        raise UsageError(f"summary columns are a list of names or a comma-separated string, not {columns!r}")
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(columns)
    chosen: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise UsageError(f"a summary column is named by a string, not {name!r}; the columns are "
                             f"{', '.join(COLUMNS)} (or default, all)")
        expanded = DEFAULT_COLUMNS if name == "default" else tuple(COLUMNS) if name == "all" else (name,)
        for column in expanded:
            if column not in COLUMNS:
                meant = did_you_mean(column, COLUMNS)  # ("; did you mean 'params'?": a question ends it)
                raise UsageError(f"unknown summary column {column!r}{meant}{' The' if meant else '; the'} columns are "
                                 f"{', '.join(COLUMNS)} (or default, all)")
            if column not in chosen:
                chosen.append(column)
    if not chosen:
        raise UsageError("name at least one summary column")
    return tuple(chosen)


def _cell_width(text: str) -> int:
    """The columns `text` takes in a terminal: 2 for a wide character (`层`), 0 for a combining one.

    >>> _cell_width("tag=a"), _cell_width("tag=层"), _cell_width("tag=e\u0301")
    (5, 6, 5)
    """
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def _pad(text: str, width: int, *, right: bool = False) -> str:
    """`text` padded to `width` terminal columns (str.format pads to a number of characters)."""
    gap = " " * (width - _cell_width(text))
    return gap + text if right else text + gap


def _listed(names: list[str], most: int = 8) -> str:
    """`a, b, c`; a long list cut after `most` names (`a, ..., h and 12 more`)."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def format_summary(summary: Summary) -> str:
    """A torchinfo-like table: the layer name, then `summary.columns`, then the model's totals."""
    columns = [COLUMNS[name] for name in summary.columns or DEFAULT_COLUMNS]
    table = [("Layer", *(c.header for c in columns))]
    texts = [i for i, c in enumerate(columns) if not c.numeric]
    for row in summary.rows:
        table.append(("  " * row.depth + row.name, *(one_line(c.cell(row)) for c in columns)))
        if row.projection and row.projection.steps != "identity":
            # the projection's policy and steps in the first text column, its reason in the second
            extra = ["" for _ in columns]
            what, why = f"{row.projection.policy}: {row.projection.steps}", f"[{row.projection.reason}]"
            if len(texts) >= 2:
                extra[texts[0]], extra[texts[1]] = what, why
            elif texts:
                extra[texts[0]] = f"{what} {why}"
            table.append(("  " * row.depth + "  └ projection", *extra))
    widths = [max(_cell_width(r[i]) for r in table) for i in range(len(table[0]))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))

    def fmt(r: tuple[str, ...]) -> str:
        cells = [_pad(r[0], widths[0])]
        cells += [_pad(text, width, right=column.numeric) for text, width, column in zip(r[1:], widths[1:], columns)]
        return "  ".join(cells).rstrip()

    split = (f" (convolutions, linear layers, attention: {format_count(summary.matmul_macs)}; "
             f"norms, pools, elementwise: {format_count(summary.total_macs - summary.matmul_macs)})")
    unknown = f"; partial: unknown for {_listed(summary.unmeasured)}" if summary.unmeasured else ""
    out = [f"{summary.name} ({one_line(summary.file)})" if summary.file else summary.name, line, fmt(table[0]), line,
           *(fmt(r) for r in table[1:]), line,
           f"Total params: {summary.total_params:,}",
           f"Trainable params: {summary.trainable_params:,}",
           f"Non-trainable params: {summary.total_params - summary.trainable_params:,}"]
    projected = summary.projections
    out.append(f"Projections inserted: {len(projected)}" + (f" ({', '.join(projected)})" if projected else ""))
    out += [f"MACs per sample: {format_count(summary.total_macs)}{split}{unknown}",
            f"Parameter memory: {format_bytes(summary.param_bytes)} (+ {format_bytes(summary.buffer_bytes)} buffers)",
            f"Activation memory per sample: {format_bytes(summary.activation_bytes)} "
            f"(every layer's output; input {format_bytes(summary.input_bytes)}"
            f"{'; partial: the spec sizes where the model does not run' if summary.failure else ''})"]
    if summary.replaced:
        out.append(f"Put in place or set otherwise after the build: {_listed(summary.replaced)} (shapes and MACs "
                   "as the model runs)")
    if summary.failure:
        out.append(f"Does not run: {summary.failure} (shapes from there on: ?)")
    return printable("\n".join(out))  # the file name may come from a saved model
