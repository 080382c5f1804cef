"""Shapes as a model runs: its graph executed node by node on the meta device, each value's type kept.

The summary reads a node's type from shape inference (`node.meta["type"]`), which describes the
spec's model. A submodule put in place after the build (`model.conv1 = nn.Conv2d(3, 64, 7, 2)`)
may return another shape, and every value after it may differ too: this pass runs what the model
runs, one generated statement at a time (the statements `codegen` writes, without adding in
place), with meta stand-ins for the model's tensors, and records each node's value by its dotted
name (`layer1.0.conv1`). A statement that raises stops it: the model no longer runs, and the
pass says at which node and why.

>>> from resgraph import build
>>> model = build("resgraph: 1\\nname: M\\ninputs: {x: [3, 8, 8]}\\nlayers:\\n"
...               "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3}\\n  - act: {op: ReLU}\\n")
>>> import torch
>>> model.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
>>> run = run_shapes(model.graph, model)
>>> run.types["act"].shape, run.failure
((6, 3, 3), None)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .codegen import HELPERS, batch_source, node_reads, node_statement, variables_of
from .errors import one_line
from .graph import BlockNode, Graph, InputNode, is_block_value
from .ops import TensorType
from .ops.base import dtype_name

__all__ = ["RunFailure", "ShapeRun", "meta_stand_ins", "run_shapes"]


@dataclass(frozen=True)
class RunFailure:
    """Where a run stopped: the node whose statement raised (dotted) and torch's message."""

    node: str
    error: str

    def __str__(self) -> str:
        return f"{self.node} raises {self.error}"


@dataclass(frozen=True)
class ShapeRun:
    """Each node's type as it ran (dotted name -> type, first tensor of a node with several) and,
    where the run stopped, why; nodes from there on have no type."""

    types: dict[str, TensorType]
    failure: RunFailure | None = None


class _Stopped(Exception):
    def __init__(self, failure: RunFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _stopped(name: str, error: Exception) -> _Stopped:
    """The run stopped at `name`, where torch raised `error`."""
    return _Stopped(RunFailure(name, one_line(f"{type(error).__name__}: {error}")))


def run_shapes(graph: Graph, module: Any, *, float_dtype: str | None = None) -> ShapeRun:
    """Run `module` (lowered from `graph`, possibly changed since) on zeros of each declared input
    shape, on the meta device, and record every node's output type (per sample). The batch is 2: a
    BatchNorm in training mode refuses one value per channel (after a global pool).

    The module's parameters and buffers are replaced by meta stand-ins for the run (`functional_call`,
    `meta_stand_ins`), so a model on any device is run without touching its weights or statistics, and
    without computing anything. It is never run where it lives: that would update a BatchNorm's running
    statistics and compute a whole forward; a model that cannot run on meta stand-ins (a tensor kept as
    a plain attribute on its device) is said not to run, with torch's reason.

    Args:
        float_dtype: the dtype the model computes in, where it was converted after its build
            (`model.half()`): its float32 inputs are given in it.

    Returns:
        A `ShapeRun`; its `failure` names the first node whose statement raised.
    """
    import torch
    from torch import nn
    from torch.func import functional_call

    class _Walk(nn.Module):  # functional_call swaps the tensors of a module around one call: this one
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, *args: Any) -> ShapeRun:
            types: dict[str, TensorType] = {}
            try:
                _run_graph(graph, self.model, self.model, list(args), types)
            except _Stopped as stopped:
                return ShapeRun(types, stopped.failure)
            return ShapeRun(types)

    walk = _Walk()
    args = [torch.zeros((2, *kind.shape), device="meta", dtype=getattr(
                torch, float_dtype if float_dtype and kind.dtype == "float32" else kind.dtype))
            for kind in (graph.nodes[name].meta["type"] for name in graph.inputs)]
    with torch.no_grad():
        return functional_call(walk, meta_stand_ins(walk), tuple(args), strict=False,  # type: ignore[no-any-return]
                               tie_weights=False)


def meta_stand_ins(module: Any) -> dict[str, Any]:
    """A meta tensor for each parameter and buffer slot of `module`, for `functional_call(...,
    tie_weights=False)`: each module once, under its first name. A module used in two places
    (`nn.Sequential(block, block)`) is one slot reachable by two names; swapped under both, the
    second swap saved the first's stand-in as the original and put it back, so the model's weights
    were lost to meta. Tied tensors (one Parameter held by two modules) are two slots given one
    stand-in, so they stay tied."""
    import torch

    made: dict[int, Any] = {}
    stand_ins: dict[str, Any] = {}
    for prefix, sub in module.named_modules():
        for attribute, tensor in [*sub._parameters.items(), *sub._buffers.items()]:
            if tensor is not None:
                stand_ins[f"{prefix}.{attribute}" if prefix else attribute] = made.setdefault(
                    id(tensor), torch.empty_like(tensor, device="meta"))
    return stand_ins


def _type(value: Any) -> TensorType | None:
    import torch

    first = next((t for t in (value if isinstance(value, (tuple, list)) else [value]) if isinstance(t, torch.Tensor)),
                 None)
    return None if first is None else TensorType(tuple(first.shape[1:]), dtype_name(first.dtype))


def _run_graph(graph: Graph, root: Any, module: Any, args: list[Any], types: dict[str, TensorType]) -> list[Any]:
    """Run `graph`'s statements with `self` bound to `module` (the model, or a block instance of
    `root`); returns its outputs' values."""
    import torch

    prefix = graph.qualname
    variables = variables_of(graph)
    env: dict[str, Any] = {"torch": torch, "self": module}
    for code in _helpers():
        exec(code, env)  # codegen's own helper functions, which the statements may call
    calls: dict[str, list[Any]] = {}  # a block call with several values -> them
    for node, var, reads, _ in node_reads(graph, variables, in_place=False):
        name = prefix + node.name
        if isinstance(node, InputNode):
            env[var] = args[graph.inputs.index(node.name)]
        elif is_block_value(node):
            values = calls[node.inputs[0]]
            if node.layer.index >= len(values):  # (a collected repeat put in place with fewer instances)
                said = (f"IndexError: it holds {len(values)} instances, and {node.name!r} reads instance "
                        f"{node.layer.index}")
                raise _Stopped(RunFailure(prefix + node.inputs[0], said))
            env[var] = values[node.layer.index]
        elif isinstance(node, BlockNode):
            calls[node.name] = values = _run_block(node, name, root, [env[r] for r in reads], types)
            env[var] = values[0] if not node.values else values
        else:
            statement = node_statement(node, var, reads or batch_source(graph, node))
            try:
                exec(statement, env)  # the generated statement: validated identifiers only (see codegen)
            except Exception as error:  # whatever a changed module raises: the run stops there
                raise _stopped(name, error) from None
        kind = _type(env[var])
        if kind is not None:
            types[name] = kind
    return [env[variables[name]] for name in graph.outputs]


def _run_block(node: BlockNode, name: str, root: Any, args: list[Any], types: dict[str, TensorType]) -> list[Any]:
    """A block call's values: its instances run in turn (a repeat's chained, each recorded as
    `call.N`); a call with several values returns each (a collected repeat: each instance's). A call
    put in place after the build (`model.layer4 = nn.Identity()`) is run as a whole, and so is one
    instance of a repeat put in place (`model.layer1[1] = nn.Identity()`), in its turn."""
    instances = [_generated(root, instance.qualname.rstrip(".")) for instance in node.instances]
    held = _children(root, name)
    if node.repeated and node.values and held is not None:  # (a collected repeat: each instance called in turn)
        instances = instances[:held]
    elif not all(instances) and not (node.repeated and held == len(node.instances)):
        return _run_module(root, name, args)
    collected: list[Any] = []
    outputs = args
    for instance, instance_module in zip(node.instances, instances):
        qualified = instance.qualname.rstrip(".")
        if instance_module is None:
            outputs = _run_module(root, qualified, outputs[:1])
        else:
            outputs = _run_graph(instance, root, instance_module, outputs, types)
        if node.repeated:
            if (kind := _type(outputs[0])) is not None:
                types[qualified] = kind
            collected.append(outputs[0])
            outputs = outputs[:1]
    return collected if node.repeated and node.values else outputs


@functools.cache
def _helpers() -> list[Any]:
    """Codegen's helper functions, compiled once (a run executes a graph per block instance)."""
    return [compile(source, f"<resgraph helper {helper}>", "exec") for helper, source in HELPERS.items()]


def _run_module(root: Any, name: str, args: list[Any]) -> list[Any]:
    """The values of the submodule at `name`, called on `args` as it is (put in place after the build)."""
    try:
        value = root.get_submodule(name)(*args)
    except Exception as error:  # whatever a changed module raises: the run stops there
        raise _stopped(name, error) from None
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _children(root: Any, name: str) -> int | None:
    """The number of modules in the container at `name` (a repeat's nn.Sequential), or None."""
    try:
        return len(root.get_submodule(name)._modules)
    except AttributeError:
        return None


def _generated(root: Any, name: str) -> Any | None:
    """The block instance at `name` as the build made it (a generated module), or None."""
    from .lower import GeneratedModule

    try:
        sub = root.get_submodule(name)
    except AttributeError:
        return None
    return sub if isinstance(sub, GeneratedModule) else None
