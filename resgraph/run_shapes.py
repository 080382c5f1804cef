"""Shapes as a model runs: its graph executed node by node on the meta device, each value's type kept.

The summary reads a node's type from shape inference (`node.meta["type"]`), which describes the
spec's model. A submodule put in place after the build (`model.conv1 = nn.Conv2d(3, 64, 7, 2)`)
may return another shape, and every value after it may differ too: this pass runs what the model
runs, one generated statement at a time (the statements `codegen` writes, without adding in
place), with meta stand-ins for the model's tensors, and records each node's value by its dotted
name (`layer1.0.conv1`). A statement that raises stops it: the model no longer runs, and the
pass says at which node and why.

Meta kernels check shapes, not dtypes: a float32 head put in place in a `.half()` model runs on meta
and raises on every real device ("mat1 and mat2 must have the same dtype"). So each op the run calls
on tensors of several floating dtypes is called once more on CPU tensors of those dtypes and shapes
(`_DtypeCheck`), and what torch's kernel says of them stands: an error stops the run there, as on a
real device; an op that takes them (an add promotes, a norm runs a float16 input beside float32
weights) goes on. A model of one floating dtype calls no such op, and computes nothing.

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
import itertools
import re
from dataclasses import dataclass
from typing import Any

from .codegen import HELPERS, batch_source, node_reads, node_statement, variables_of
from .errors import one_line
from .graph import BlockNode, Graph, InputNode, LayerNode, is_block_value
from .ops import TensorType
from .ops.base import dtype_name

__all__ = ["RunFailure", "ShapeRun", "meta_stand_ins", "run_shapes"]


@dataclass(frozen=True)
class RunFailure:
    """Where a run stopped: the node whose statement raised (dotted) and torch's message (where the
    node met values or weights of several floating dtypes, followed by which: `(its input: float16;
    its parameters and buffers: float32)`)."""

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


def _stopped(name: str, error: Exception, dtypes: str = "") -> _Stopped:
    """The run stopped at `name`, where torch raised `error`; `dtypes`: the floating dtypes it met, where
    they clash (`_dtypes_met`)."""
    said = one_line(f"{type(error).__name__}: {error}")
    return _Stopped(RunFailure(name, f"{said} ({dtypes})" if dtypes else said))


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
    with torch.no_grad(), _dtype_check()():
        return functional_call(walk, meta_stand_ins(walk), tuple(args), strict=False,  # type: ignore[no-any-return]
                               tie_weights=False)


@functools.cache
def _dtype_check() -> type:
    """`_DtypeCheck`, the dispatch mode that puts each op of several floating dtypes to a CPU kernel
    (made once, on the first run: torch is imported only where a model is run)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    cpu = torch.device("cpu")

    def twin(value: Any) -> Any:  # a CPU tensor of the value's dtype, shape and strides; a device: CPU
        if not isinstance(value, torch.Tensor):
            return cpu if isinstance(value, torch.device) else value
        # Floats uninitialised: a kernel refuses their dtypes before it reads them, so a refused 512 MiB
        # weight is never written. Integers zeros: an index must lie in range.
        return torch.empty_like(value, device=cpu) if value.is_floating_point() else torch.zeros_like(value, device=cpu)

    def several_floating_dtypes(args: Any, kwargs: dict[str, Any]) -> bool:
        # (every op of the run passes here: an aten op's tensors are its arguments, or in a list of one)
        first = None
        for value in itertools.chain(args, kwargs.values()):
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, torch.Tensor) and item.is_floating_point():
                    if first is None:
                        first = item.dtype
                    elif item.dtype != first:
                        return True
        return False

    def signature(value: Any) -> Any:  # (a dtype clash does not depend on sizes, which the meta kernel checks)
        return (value.dtype, value.dim()) if isinstance(value, torch.Tensor) else value

    class _DtypeCheck(TorchDispatchMode):
        """Each op called on tensors of several floating dtypes is called first on CPU tensors of the same
        dtypes, shapes and strides: torch's CPU kernel raises what a real device raises of those dtypes
        (meta kernels mostly do not check them), but where it has no kernel for one of them, which a GPU
        may have. Ops of one floating dtype, all of a healthy model's but an intended mix, pass straight
        through; a mix that passed is not tried again at other sizes (ResNet's BatchNorms kept in float32
        in a float16 model: tried once)."""

        def __init__(self) -> None:
            super().__init__()
            self.passed: set[str] = set()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if several_floating_dtypes(args, kwargs):
                key = repr((func, tree_map(signature, (args, kwargs))))
                if key not in self.passed:
                    on_cpu, kw_on_cpu = tree_map(twin, (args, kwargs))
                    try:
                        func(*on_cpu, **kw_on_cpu)  # raises what torch's kernel says of these dtypes
                    except NotImplementedError:
                        pass  # no CPU kernel for one of them ("not implemented for 'Half'"): a GPU may have one
                    except RuntimeError as error:
                        if "not implemented for" not in str(error):
                            raise
                    self.passed.add(key)
            return func(*args, **kwargs)

    return _DtypeCheck


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
                raise _stopped(name, error, _dtypes_met(module, node, [env[r] for r in reads], error)) from None
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


def _dtypes_met(module: Any, node: Any, values: list[Any], error: Exception) -> str:
    """The floating dtypes `node` met, where they are several and torch's `error` is about dtypes: its
    inputs' and, for a layer, its module's parameters and buffers' (`its input: float16; its parameters
    and buffers: float32`); else empty."""
    import torch

    if not _ABOUT_DTYPES.search(str(error)):
        return ""

    def floating(tensors: Any) -> list[str]:
        return list(dict.fromkeys(dtype_name(t.dtype) for t in tensors
                                  if isinstance(t, torch.Tensor) and t.is_floating_point()))

    tensors = [v for value in values for v in (value if isinstance(value, (tuple, list)) else [value])]
    inputs = floating(tensors)
    try:
        held = module.get_submodule(node.name) if isinstance(node, LayerNode) else None
    except AttributeError:
        held = None
    weights = floating([*held.parameters(), *held.buffers()]) if held is not None else []
    if len({*inputs, *weights}) < 2:
        return ""
    said = [f"its input{'s' if len(tensors) > 1 else ''}: {', '.join(inputs)}"] if inputs else []
    return "; ".join(said + ([f"its parameters and buffers: {', '.join(weights)}"] if weights else []))


# torch's words for a dtype clash: "must have the same dtype", "expected scalar type Half", "Input type
# (c10::Half) and bias type (float)", "Type promoting not supported" (not a TypeError's "'NoneType' object").
_ABOUT_DTYPES = re.compile(r"\bd?type\b", re.IGNORECASE)


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
