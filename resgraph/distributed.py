"""Training at scale, by block: FSDP2 sharding, activation checkpointing and regional compilation.

A resgraph model knows which of its submodules are instances of one block, and that is the unit
large-model training shards, checkpoints and compiles (TorchTitan applies all three per
transformer block). Each function here picks block instances from the model's graph and hands
them to PyTorch's own machinery: `torch.distributed.fsdp.fully_shard`, `torch.utils.checkpoint`
and `torch.compile`. None of them renames a parameter, wraps a module in another or touches the
generated forward code, so state_dicts, `to_python`, `.pt` files and `torch.export` see the model
they saw before.

- `shard`: `fully_shard` on every instance of the chosen blocks, innermost first, then the root.
- `checkpoint`: each chosen instance's class becomes a subclass whose `forward` runs the
  generated one under non-reentrant `torch.utils.checkpoint` (what `checkpoint: true` on a block
  call does at build time).
- `compile`: `nn.Module.compile` on the outermost chosen instances. torch.compile caches compiled
  code per code object, and instances with the same generated forward share one class (see
  `lower`), so each distinct block forward is compiled once, however many instances run it.

Blocks are chosen by name (`blocks=["encoder_block"]`); by default, the spec's `training:`
section, else every block called with `repeat: N`.

>>> import resgraph
>>> model = resgraph.build("examples/vit_b_16.yaml", params={"depth": 2, "hidden": 32, "heads": 2, "mlp": 64},
...                        device="meta")
>>> [name for name, _ in instances(model)]
['encoder.0', 'encoder.1']
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import torch
import torch.utils.checkpoint
from torch import nn

from .errors import UsageError
from .graph import BlockNode, Graph
from .ownership import tied_parameters
from .suggest import did_you_mean

__all__ = ["block_names", "checkpoint", "checkpointed_class", "compile", "fill", "instances", "is_dtensor",
           "local_numel", "require_unsharded", "shard", "spec_checkpoints"]

M = TypeVar("M", bound=nn.Module)
Choose = Callable[[BlockNode, Graph], bool]


def block_names(graph: Graph) -> list[str]:
    """The names of the blocks a graph instantiates, at any depth, in order of first use."""
    return list(dict.fromkeys(instance.block for _, instance in graph.subgraphs() if instance.block))


def _nameable(graph: Graph) -> list[str]:
    """The block names `blocks=` may give: every block the spec defines or imports (one a false
    `when:` or the parameters in force leave uncalled chooses no instance), and those instantiated
    (all a graph built by hand knows of). The `training:` plan's names are checked by `expand`."""
    return list(dict.fromkeys([*block_names(graph), *graph.defined_blocks]))


def _chooser(graph: Graph, blocks: Iterable[str] | None) -> Choose:
    """Which instances `blocks` names (None: those of every repeated block call)."""
    if blocks is None:
        return lambda node, instance: node.repeated
    if isinstance(blocks, str):  # a lone name would otherwise be read as a list of characters
        blocks = [blocks]
    names = list(blocks) if isinstance(blocks, Iterable) else [blocks]
    odd = [name for name in names if not isinstance(name, str)]
    if odd:
        among = "" if names == [blocks] else f", got {type(odd[0]).__name__} {odd[0]!r} among them"
        raise UsageError(f"blocks={blocks!r}: expected block names (a list of strings, e.g. blocks=['encoder_block'])"
                         f"{among}")
    wanted = set(names)
    known = _nameable(graph)
    unknown = sorted(wanted - set(known))
    if unknown:
        raise UsageError(f"{graph.name} has no block named {unknown[0]!r}{did_you_mean(unknown[0], known)} "
                         f"(its blocks: {', '.join(known) or 'none'})")
    return lambda node, instance: instance.block in wanted


def _walk(graph: Graph, choose: Choose, outermost: bool) -> Iterator[Graph]:
    for node in graph.nodes.values():
        if isinstance(node, BlockNode):
            for instance in node.instances:
                chosen = choose(node, instance)
                if chosen:
                    yield instance
                if not (chosen and outermost):
                    yield from _walk(instance, choose, outermost)


def _graph(model: nn.Module) -> Graph:
    graph = getattr(model, "graph", None)
    if not isinstance(graph, Graph):
        raise UsageError(f"expected a model returned by resgraph.build, not a {type(model).__name__} "
                         "(it knows which submodules are block instances)")
    return graph


def _instances(model: nn.Module, choose: Choose, outermost: bool) -> list[tuple[str, nn.Module]]:
    graph = _graph(model)
    names = [instance.qualname.rstrip(".") for instance in _walk(graph, choose, outermost)]
    return [(name, model.get_submodule(name)) for name in names]


def instances(model: nn.Module, blocks: Iterable[str] | None = None, *,
              outermost: bool = False) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every instance of the chosen blocks, parents before children.

    Args:
        model: a model returned by `resgraph.build` (sharded, checkpointed or compiled alike).
        blocks: block names; None: the instances of every block called with `repeat: N`.
        outermost: leave out instances nested inside another chosen instance.
    Raises:
        UsageError: a name in `blocks` is not a block of this model, or `model` was not built by resgraph.
    """
    return _instances(model, _chooser(_graph(model), blocks), outermost)


def _planned(model: nn.Module, key: str, blocks: Iterable[str] | None) -> Iterable[str] | None:
    """`blocks` if given, else the spec's `training.<key>` (None when the spec declares none)."""
    if blocks is not None:
        return blocks
    spec = getattr(model, "spec", None)
    return getattr(spec.training, key) if spec is not None else None


def _apart_from_ties(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The chosen instances that hold both names of every tie they hold one of.

    FSDP2 manages each parameter in one unit: an instance holding a parameter tied to one outside it
    (`tie: {weight: body.0.fc.weight}` on a top-level layer) cannot be a unit of its own, or the first
    forward fails ("shared with a parameter already managed by another FSDP group"). Its parameters
    then belong to the enclosing unit (a chosen instance holding both, else the root).
    """
    ends = [(tie.path, tie.target) for tie in tied_parameters(_graph(model))]
    if not ends:
        return chosen

    def inside(path: str, prefix: str) -> bool:
        return path.startswith(prefix + ".")

    return [(name, module) for name, module in chosen
            if all(inside(own, name) == inside(target, name) for own, target in ends)]


def shard(model: M, *, mesh: Any = None, blocks: Iterable[str] | None = None, **options: Any) -> M:
    """Shard a model with FSDP2: `fully_shard` on every instance of the chosen blocks, then the root.

    Instances are wrapped innermost first, as FSDP2 requires (each call takes the parameters
    not yet owned by a wrapped submodule). An instance holding a parameter tied (`tie:`) to one
    outside it is not a unit of its own (FSDP2 keeps a tied pair in one unit): its parameters join
    the enclosing unit. Works on a model built with `device="meta"`: shard it,
    then `resgraph.materialize` it, and each process allocates only its own shards.

    Args:
        model: a model returned by `resgraph.build`.
        mesh: the `DeviceMesh` to shard over (None: FSDP2's default, every process of the group).
        blocks: block names whose instances become FSDP units; None: the spec's `training.shard`,
            else every block called with `repeat: N`.
        options: passed to every `fully_shard` call (reshard_after_forward, mp_policy, ...).
    Returns:
        `model`, sharded in place (its class becomes FSDP2's subclass of the generated one).
    Raises:
        UsageError: a name in `blocks` is not a block of this model, or the model (or a chosen
            instance) is sharded already. The sharded model, and each sharded instance, raise it
            from `copy.deepcopy` (FSDP2 cannot copy shards).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    chosen = _apart_from_ties(model, instances(model, _planned(model, "shard", blocks)))
    # FSDP2 takes a module once, and says so with a bare AssertionError (and the module's repr).
    done = next((name or "the model" for name, module in [("", model), *chosen] if isinstance(module, FSDPModule)),
                None)
    if done is not None:
        raise UsageError(f"{_graph(model).name} is sharded already ({done} is an FSDP2 unit): fully_shard takes "
                         "a module once; shard a model once, or build it again to shard it another way")
    for _, module in sorted(chosen, key=lambda item: -item[0].count(".")):  # children before parents
        fully_shard(module, mesh=mesh, **options)
    fully_shard(model, mesh=mesh, **options)
    for module in [model, *(module for _, module in chosen)]:
        # FSDP2 makes one class, FSDP<cls>, for each class it shards, whose __deepcopy__ raises a bare
        # AssertionError; these are made for resgraph's generated classes alone, so resgraph says it.
        type(module).__deepcopy__ = _uncopyable  # type: ignore[method-assign]
    return model


def _uncopyable(module: nn.Module, memo: dict[int, Any]) -> Any:
    """`copy.deepcopy` of a sharded model or block instance: refused, saying what to do instead."""
    graph = getattr(module, "graph", None)
    name = graph.name if isinstance(graph, Graph) else type(module).__name__.removeprefix("FSDP")
    raise UsageError(f"cannot copy.deepcopy {name}: it is sharded (resgraph.shard), and FSDP2 cannot copy its shards; "
                     "deepcopy it before sharding, or build another (resgraph.build, or resgraph.rebuild(model."
                     "build_record) for this architecture) and shard that")


@functools.cache
def checkpointed_class(cls: type[M]) -> type[M]:
    """`cls` with its forward run under non-reentrant activation checkpointing.

    The subclass keeps `cls`'s name, attributes and parameters, so swapping an instance's class to
    it changes no state_dict key. Under `torch.no_grad()` checkpointing has nothing to save and is
    skipped, so inference and `torch.export` in eval mode trace the plain forward.
    """
    if getattr(cls, "_checkpointed", False):
        return cls
    inner = cls.forward

    def forward(self: nn.Module, *args: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(self, *args)
        if torch.compiler.is_compiling():  # the compiled backward recomputes without mutating buffers
            return torch.utils.checkpoint.checkpoint(inner, self, *args, use_reentrant=False)
        return torch.utils.checkpoint.checkpoint(inner, self, *args, use_reentrant=False,
                                                 context_fn=functools.partial(_buffers_kept_on_recompute, self))

    # torch.compile keeps compiled code per code object, with at most 8 entries
    # (torch._dynamo.config.recompile_limit): a copy of this wrapper's code for every class lets
    # each class compile once, as its generated forward does, however many classes there are.
    code = forward.__code__.replace()
    # `_checkpointed` starts with an underscore, which no node name can: it never hides a submodule.
    forward = types.FunctionType(code, forward.__globals__, "forward", None, forward.__closure__)
    forward.__qualname__ = f"{cls.__name__}.forward"
    return type(cls.__name__, (cls,), {"forward": forward, "_checkpointed": True, "__module__": cls.__module__})


class _BufferGuard:
    """The contexts of one checkpointed call: the recomputation in the backward pass reads the buffers
    as the forward read them, and leaves those the forward updates as the forward left them.

    A BatchNorm in training mode updates its running statistics on every forward; recomputing the
    block would update them a second time (momentum applied twice, `num_batches_tracked` counted
    twice), so a checkpointed model would drift from the same model trained without checkpointing.
    The buffers kept are those of modules tracking running statistics (`track_running_stats`, which
    torch's kernels update without moving the version counter) and any other whose version counter
    the forward moved; a constant buffer (a mask, a rotary table) is never copied.
    """

    def __init__(self, module: nn.Module) -> None:
        self.stats = [buffer for inner in module.modules() if getattr(inner, "track_running_stats", False)
                      and inner.training for buffer in inner.buffers(recurse=False)]
        self.others = [buffer for buffer in module.buffers() if all(buffer is not stat for stat in self.stats)]
        # Of these, those a layer may read and then update (a registered layer's step counter, an EMA
        # codebook) are kept as the forward found them, so that the recomputation reads the same values
        # and the gradients stay unchanged; not resgraph's constants (the buffers of generated modules),
        # nor the running statistics, which a forward in training mode updates without reading.
        constants = [buffer for inner in module.modules() if type(inner).__module__ == "resgraph.generated"
                     for buffer in inner.buffers(recurse=False)]
        self.read = [buffer for buffer in self.others if all(buffer is not constant for constant in constants)]
        self.changed: list[torch.Tensor] = []
        self.rewound: list[tuple[torch.Tensor, torch.Tensor]] = []  # (buffer, its value before the forward)

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        versions = [buffer._version for buffer in self.others]
        before = [buffer.detach().clone() for buffer in self.read]
        yield
        self.changed = self.stats + [buffer for buffer, version in zip(self.others, versions)
                                     if buffer._version != version]
        self.rewound = [(buffer, value) for buffer, value in zip(self.read, before)
                        if any(buffer is changed for changed in self.changed)]

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        saved = [buffer.detach().clone() for buffer in self.changed]
        with torch.no_grad():
            for buffer, value in self.rewound:
                buffer.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(self.changed, saved):
                    buffer.copy_(value)


def _buffers_kept_on_recompute(module: nn.Module) -> tuple[Any, Any]:
    """`torch.utils.checkpoint`'s `context_fn`: see `_BufferGuard`."""
    guard = _BufferGuard(module)
    return guard.forward(), guard.recompute()


def _checkpoint(chosen: list[tuple[str, nn.Module]]) -> None:
    for _, module in chosen:
        module.__class__ = checkpointed_class(type(module))


def checkpoint(model: M, *, blocks: Iterable[str] | None = None) -> M:
    """Recompute each chosen block instance's activations in the backward pass instead of storing them.

    The API equivalent of `checkpoint: true` on a block call: gradients are unchanged, peak
    activation memory drops to about one block's, at the cost of a second forward of each block.
    Nested chosen instances are checkpointed once, at the outermost.

    Args:
        model: a model returned by `resgraph.build` (before or after `shard` and `compile`).
        blocks: block names; None: every block called with `repeat: N`.
    Returns:
        `model`, changed in place.
    Raises:
        UsageError: a name in `blocks` is not a block of this model.
    """
    _checkpoint(instances(model, blocks, outermost=True))
    return model


def spec_checkpoints(model: nn.Module) -> None:
    """Checkpoint the instances of every block call written with `checkpoint: true`."""
    _checkpoint(_instances(model, lambda node, instance: node.call.checkpoint, outermost=True))


def compile(model: M, *, blocks: Iterable[str] | None = None, **options: Any) -> M:
    """Regional compilation: `torch.compile` each chosen block instance instead of the whole model.

    Each instance is compiled with `nn.Module.compile`, so parameter names stay as they are.
    Instances with the same generated forward share one class and one code object, and
    torch.compile caches by code object: each distinct block forward compiles once. The code
    between blocks runs eagerly. Apply `checkpoint` first so the checkpoint is inside the compiled
    region; apply `shard` before or after.

    Args:
        model: a model returned by `resgraph.build`.
        blocks: block names; None: the spec's `training.compile`, else every block called with `repeat: N`.
        options: passed to torch.compile (backend, mode, fullgraph, dynamic, ...).
    Returns:
        `model`, changed in place.
    Raises:
        UsageError: a name in `blocks` is not a block of this model.
    """
    for _, module in instances(model, _planned(model, "compile", blocks), outermost=True):
        module.compile(**options)
    return model


def _dtensor(tensor: torch.Tensor) -> Any:
    """The DTensor module if `tensor` is a DTensor (an FSDP2 shard), else None.

    A DTensor exists only once torch.distributed.tensor is imported, so looking it up in
    sys.modules spares every unsharded model the import (seconds).
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module if module is not None and isinstance(tensor, module.DTensor) else None


def is_dtensor(tensor: torch.Tensor) -> bool:
    """True for a DTensor (an FSDP2 shard), without importing torch.distributed.tensor."""
    return _dtensor(tensor) is not None


def require_unsharded(module: nn.Module, what: str, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Refuse to write or trace `module` as `what` (a .pt file, an ONNX file, torch.export) when it
    is sharded: a file of whole weights would hold only this process's shards, which nothing loads
    back as the model, and tracing fails deep inside torch on the DTensors.

    Args:
        state: `module.state_dict()`, where the caller has it already.
    Raises:
        UsageError: naming the model (by its spec's name, not FSDP2's `FSDP<name>` class), the first
            DTensor, and how to get whole weights.
    """
    state = module.state_dict() if state is None else state
    sharded = next((key for key, tensor in state.items() if is_dtensor(tensor)), None)
    if sharded is not None:
        raise UsageError(f"{_graph(module).name} is sharded ({sharded} is a DTensor): {what} needs whole weights; "
                         "gather them (torch.distributed.checkpoint.state_dict.get_model_state_dict with "
                         "full_state_dict=True) into an ordinary resgraph.build (load_state_dict), or save the shards "
                         "with torch.distributed.checkpoint")


def local_numel(tensor: torch.Tensor) -> int:
    """The number of elements this process holds: a DTensor's local shard, else the whole tensor."""
    return tensor.to_local().numel() if _dtensor(tensor) is not None else tensor.numel()


def fill(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy the full tensor `value` into `target`; a DTensor keeps its own shard of it, with no
    communication (every process computes the same `value`)."""
    dtensor = _dtensor(target)
    if dtensor is not None:
        value = dtensor.distribute_tensor(value.to(target.device), target.device_mesh, target.placements,
                                          src_data_rank=None)
    target.copy_(value)
