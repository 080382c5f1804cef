"""Compiled models: the class `resgraph.build` returns, and building or rebuilding one.

A `CompiledModule` is the lowered module plus what the API knows about it: the typed graph it
was lowered from and its frozen `BuildRecord`. Pickling, deep copies and `.pt` artifacts
rebuild it from that record, so lowering itself never needs to know about specs or files.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import types
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from .devices import Device, refuse_seed_without_weights, target_device
from .distributed import (
    checkpointed_class,
    fill,
    local_numel,
    require_unsharded,
    spec_checkpoints,
)
from .errors import Diagnostic, SpecError, UsageError, one_line
from .graph import Graph, LayerNode, Node
from .loader import gc_paused, load_text
from .lower import GeneratedModule, build_owned, lower, owned_units, require_weights, seeded, tie_parameters
from .ops.generic import allowed_imports, import_prefixes
from .ownership import Owns, owned_parameters, owns, tied_parameters
from .pipeline import DEFAULT_MAX_PARAMS, BuildRecord, check_loaded, static_parameter_counts
from .sizes import DEFAULT_RANGE, smallest_without_ones, solve_sizes
from .spec import Spec

__all__ = ["WRAPPER_ATTRIBUTES", "CompiledModule", "Device", "as_built", "built_alone_on_meta", "built_model",
           "changed_inside", "changed_settings", "compile_model", "export_program", "materialize", "meta_module",
           "module_settings", "name_outputs", "part_sizes", "rebuild", "replaced_modules", "require_limit",
           "set_otherwise"]


class CompiledModule(GeneratedModule):
    """Base class of the modules `resgraph.build` returns (block instances are GeneratedModules).

    Attributes:
        code: the source of the generated `forward` (also `type(model).code`), with its parts
            (`_forward_part_1`, ...) after it when it is longer than `codegen.MAX_STATEMENTS`.
        spec: the validated spec the module was built from. Its `layers` and `skips` hold the
            entries given (of a dict spec: the dict's own; nothing in resgraph changes them).
        graph: the typed graph it was lowered from (each node's type in `node.meta["type"]`).
        build_record: the frozen `BuildRecord` that rebuilds it.
    """

    spec: Spec
    graph: Graph
    build_record: BuildRecord

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        """Random inputs at the declared sizes (integer inputs hold ids in [0, 10), bool inputs such as
        masks are all false), for tracing and tests."""
        tensors = []
        for name in self.graph.inputs:
            kind = self.graph.nodes[name].meta["type"]
            dtype = getattr(torch, kind.dtype)
            shape = (batch, *kind.shape)
            tensors.append(torch.randn(shape, dtype=dtype) if dtype.is_floating_point
                           else torch.zeros(shape, dtype=dtype) if dtype == torch.bool
                           else torch.randint(0, 10, shape, dtype=dtype))
        return tuple(tensors)

    def dynamic_shapes(self, *, batch: bool = True) -> tuple[dict[int, Any], ...]:
        """`torch.export`'s `dynamic_shapes` for this model: the batch, and every free input dim by the rule
        its sizes follow (`H >= 33`: `Dim.DYNAMIC` with that minimum; a bounded range: with both
        bounds; `H in {188 + 16k}`: the derived Dim 16*k + 156, k >= 2; dims the model needs equal:
        one shared named Dim; dims in a relation between inputs, `Dim.DYNAMIC`, the relation left to
        torch.export, which checks it in the exported program). Fixed dims stay static, and so do dims a
        MaxPool1d's length or an RNN's sequence depends on (torch.export specialises them:
        `Layer.export_static`). Use it with inputs at the declared sizes (`example_inputs()`).
        """
        from torch.export import Dim

        report = self.graph.meta["sizes"]
        static = self.graph.meta.get("export_static", frozenset())  # sizes torch.export specialises (MaxPool1d)
        shapes = []
        made: dict[str, Any] = {}  # symbol -> its Dim: dims the model needs equal share one (`DimSizes.linked`)
        # Dims in a relation across inputs, unless one of them is static (then so are the others)
        joint = {symbol for _, read in report.joint if not read & static for symbol in read}
        batch_dim = Dim("batch", min=1)  # one for every input: the batch is dim 0 of each, the same N
        for name in self.graph.inputs:
            dims: dict[int, Any] = {0: batch_dim} if batch else {}
            for dim in report.of(name):
                label, rule = f"{name}_{dim.name}", dim.rule
                related = f"{name}.{dim.name}" in joint and not dim.linked and hasattr(Dim, "DYNAMIC")
                if not dim.free or (rule.kind in ("fixed", "set", "periodic", "none") and not related):
                    continue
                if static & {f"{name}.{dim.name}", *dim.linked}:
                    continue  # a dynamic dim there is an export error ("Constraints violated")
                if related:
                    # Its rule holds the other inputs at their declared sizes (a mask of 6 holds x.L to
                    # 11..12); the relation itself (`pad.L == (x.L - 1) // 2 + 1`) torch.export finds as
                    # it traces, and checks as a guard of the exported program.
                    dims[dim.axis + 1] = Dim.DYNAMIC
                    continue
                shared = next((made[other] for other in dim.linked if other in made), None)
                if shared is not None:
                    dims[dim.axis + 1] = made[f"{name}.{dim.name}"] = shared
                    continue
                # torch.export specialises sizes of 1: start where every size this dim sets is >= 2
                low = smallest_without_ones(self.graph, f"{name}.{dim.name}", max(rule.start, 2),
                                            max(DEFAULT_RANGE[1], dim.declared))
                if low is None or low > dim.declared:
                    continue  # only sizes that torch.export cannot keep dynamic: leave it static
                if rule.kind == "progression":  # a derived dim: start + step * j; its example needs j >= 2
                    first = low + (-(low - rule.start)) % rule.step
                    bound = {"max": (rule.stop - first) // rule.step + 2} if rule.stop is not None else {}
                    dims[dim.axis + 1] = rule.step * Dim(f"{label}_k", min=2, **bound) + (first - 2 * rule.step)
                elif dim.linked:  # named, so that the dims it must equal share it
                    dims[dim.axis + 1] = Dim(label, min=low, **({"max": rule.stop} if rule.stop else {}))
                elif hasattr(Dim, "DYNAMIC"):
                    # A hint rather than a named Dim: torch.export still refuses to specialise it, but
                    # accepts guards its solver cannot prove over the whole range (ConvNeXt's Linear on
                    # a permuted map guards `1 % (96 * (W // 4)) != 0`, which a named Dim turned into a
                    # "Constraints violated" error). (torch < 2.6 has no hints: a named Dim there.)
                    dims[dim.axis + 1] = Dim.DYNAMIC(min=low, max=rule.stop)
                else:
                    dims[dim.axis + 1] = Dim(label, min=low, **({"max": rule.stop} if rule.stop else {}))
                made[f"{name}.{dim.name}"] = dims[dim.axis + 1]
            shapes.append(dims)
        return tuple(shapes)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The class is generated, so pickle by recipe: rebuild from the record, then load the state.
        # A state_dict holds values only: which parameters are frozen (`requires_grad_(False)`, a
        # fine-tuned backbone) travels beside it, as a pickled nn.Parameter keeps it.
        # So does each submodule's own mode (`model.train(); model.bn1.eval()` keeps bn1's statistics):
        # see `modes`. A submodule put in place of a built one (`model.fc = nn.Linear(2048, 10)`,
        # fine-tuning) travels as itself: the record rebuilds the old one, whose state the new one's
        # would not fit.
        state = self.state_dict()
        # A sharded model's state holds this process's shards as DTensors: the file would load as no
        # model (and torch.save of any other FSDP2 module is refused, its class being generated too).
        require_unsharded(self, "torch.save(model) (or pickle)", state)
        kept = modes(self)
        # Instances checkpointed by `resgraph.checkpoint` (the record rebuilds only the spec's).
        checkpointed = [name for name, m in self.named_modules() if getattr(type(m), "_checkpointed", False)]
        # Non-persistent buffers (constants, unless `persistent: true`) are no part of a state_dict;
        # one changed since the build (`model.k.fill_(7)`) travels beside it, as it does in a plain module.
        unsaved = {name: buffer for name, buffer in self.named_buffers(remove_duplicate=False) if name not in state}
        return (_unpickle, (self.build_record, state, kept.training, kept.frozen, kept.flipped,
                            replaced_modules(self), checkpointed, unsaved, tied_after_build(self)))

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledModule:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        shared = {"spec", "graph", "build_record"}  # immutable after build: share them
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key in shared else copy.deepcopy(value, memo)
        return clone


class Modes(NamedTuple):
    """What a `state_dict` leaves out of a module's state: whether it is in training mode, the
    parameters frozen with `requires_grad_(False)` (their names, tied names each listed) and the
    submodules whose mode differs from the module's (`model.train(); model.bn1.eval()`)."""

    training: bool
    frozen: list[str]
    flipped: list[str]


def modes(module: nn.Module) -> Modes:
    """`module`'s `Modes`, which `restore_modes` puts back on a rebuilt module."""
    parameters = module.named_parameters(remove_duplicate=False)
    return Modes(module.training, sorted(name for name, parameter in parameters if not parameter.requires_grad),
                 sorted(name for name, m in module.named_modules() if name and m.training != module.training))


def restore_modes(module: nn.Module, training: bool, frozen: Iterable[str] | None, flipped: Iterable[str]) -> None:
    """Set `module`'s mode, frozen parameters and flipped submodules as `modes` gave them (`frozen`
    None: leave every parameter as built, for a pickle written before they were kept).

    Raises:
        AttributeError: a name in `flipped` that is no submodule of `module`.
    """
    module.train(training)
    if frozen is not None:
        names = set(frozen)
        for name, parameter in module.named_parameters(remove_duplicate=False):
            parameter.requires_grad_(name not in names)
    for name in flipped:
        module.get_submodule(name).train(not training)


def replaced_modules(module: CompiledModule, rebuilt: nn.Module | None = None) -> dict[str, nn.Module]:
    """The submodules of `module` that its build did not make: each outermost one put in place of a
    built submodule of another kind or other tensor shapes (`model.fc = nn.Linear(2048, 10)`), or
    added under a new name, by its dotted path. `rebuilt`: the model's spec built on meta, where the
    caller has it already (else it is built here)."""
    built = dict((rebuilt if rebuilt is not None else rebuilt_on_meta(module)).named_modules())
    replaced: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if not name or any(name.startswith(f"{outer}.") for outer in replaced):
            continue
        if name not in built or not _as_built(sub, built[name]):
            replaced[name] = sub
    # A tied layer whose parameter no longer is its tie's target (`model.b = nn.Linear(...)` of the
    # same shape) is not what a rebuild makes either: the rebuild would tie it again.
    own = dict(module.named_parameters(remove_duplicate=False))
    for tie in tied_parameters(module.graph):
        if (own.get(tie.path) is not own.get(tie.target) and tie.owner not in replaced
                and not any(tie.owner.startswith(f"{outer}.") for outer in replaced)):
            replaced[tie.owner] = module.get_submodule(tie.owner)
    return replaced


def tied_after_build(module: CompiledModule) -> dict[str, str]:
    """Parameters made one tensor after the build (`model.b.weight = model.a.weight`) that the spec's
    ties do not make one: each such name, by the first name (in `named_parameters` order) holding its
    tensor. A rebuild from the spec would hold them apart."""
    target_of = {tie.path: tie.target for tie in tied_parameters(module.graph)}

    def root(name: str) -> str:  # the tensor the spec's ties give `name` (a chain followed; no cycles: built)
        while name in target_of:
            name = target_of[name]
        return name

    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        holder = first.setdefault(id(parameter), name)
        if root(name) != root(holder):
            tied[name] = holder
    return tied


def rebuilt_on_meta(module: CompiledModule) -> nn.Module:
    """What a rebuild of `module`'s spec makes, on meta (no weights), with the imports it was built with."""
    with allowed_imports(module.build_record.allow_imports):
        return meta_module(module.graph)


def built_alone_on_meta(module: CompiledModule, node: Node) -> Any:
    """What a rebuild of `module`'s spec makes for one layer or skip `node` (its module, its projection),
    on meta, with the imports `module` was built with: to compare one part without building the whole."""
    with allowed_imports(module.build_record.allow_imports), torch.device("meta"):
        return build_owned(node)


# Where a wrapper keeps the model it runs: torch.compile's OptimizedModule, DistributedDataParallel's
# (and DataParallel's) `module`.
WRAPPER_ATTRIBUTES = ("_orig_mod", "module")


def built_model(module: Any, what: str, takes: str = "a model from resgraph.build") -> CompiledModule:
    """`module`, or the model from `build` that a wrapper of it holds (`WRAPPER_ATTRIBUTES`) when the
    wrapper holds exactly that model's tensors: the same weights, so the same summary, diagram and
    files. A module adding tensors of its own (a head around a backbone) is no wrapper.

    Args:
        what: the function given `module` (`save`), and `takes` what it takes, for the error.
    Raises:
        UsageError: `module` is no model resgraph built, nor a wrapper of one (it has no spec to read).
    """
    if isinstance(module, CompiledModule):
        return module
    for attribute in WRAPPER_ATTRIBUTES:
        inner = getattr(module, attribute, None)
        if isinstance(inner, CompiledModule) and isinstance(module, nn.Module):
            if _tensor_ids(module) == _tensor_ids(inner):
                return inner
            raise UsageError(f"{what} takes a model from resgraph.build, not {type(module).__name__}, which holds one "
                             f"(.{attribute}) and parameters or buffers of its own that no spec describes; pass "
                             f"the model itself (.{attribute}), or write those layers in its spec")
    raise UsageError(f"{what} takes {takes}, not {type(module).__name__}: a module resgraph did not build has no "
                     "spec to read")


def _tensor_ids(module: nn.Module) -> set[int]:
    return {id(t) for t in [*module.parameters(), *module.buffers()]}


def require_as_built(module: CompiledModule, what: str, rebuilt: nn.Module | None = None) -> None:
    """Refuse to write `module` as `what` (a format written from its spec) when a submodule was
    replaced after the build, or parameters were tied (`tied_after_build`): the file would describe
    the spec's model, not this one. `rebuilt`: as for `replaced_modules`.

    Raises:
        UsageError: naming the first replaced submodule or tied parameter, and what to do instead.
    """
    rebuilt = rebuilt if rebuilt is not None else rebuilt_on_meta(module)
    tied = tied_after_build(module)
    if tied:
        name, holder = next(iter(tied.items()))
        owner, _, attribute = name.rpartition(".")
        raise UsageError(f"cannot write {type(module).__name__} as {what}: its parameter {name!r} was tied to "
                         f"{holder!r} after the build, and {what} describes the model by its spec, which does not tie "
                         f"them. Tie them in the spec (`tie: {{{attribute}: {holder}}}` on {owner!r}) and rebuild, or "
                         "save the whole module with torch.save(model)")
    replaced = replaced_modules(module, rebuilt)
    if replaced:
        name, sub = next(iter(replaced.items()))
        built = dict(rebuilt.named_modules()).get(name)
        changed = set_otherwise(sub, built) if built is not None else ""
        how = f"was set otherwise after the build ({changed})" if changed else "was put there after the build"
        raise UsageError(f"cannot write {type(module).__name__} as {what}: its submodule {name!r} "
                         f"({type(sub).__name__}) {how}, and {what} describes the model by its spec, which builds "
                         "another one there. Change the spec (or its params) and rebuild, or save the whole module "
                         "with torch.save(model)")


def _as_built(module: nn.Module, built: nn.Module) -> bool:
    """Whether `module` is what a rebuild makes in its place (`built`), itself: of its class
    (`_same_class`), holding tensors of the same names and shapes itself, set as it
    (`module_settings`: a Conv2d whose stride was changed after the build is not what the spec builds,
    and a file written from the spec would lose it), and holding every part the build put in it
    (`model.enc.dropout = None` leaves a layer that no longer runs). Its parts are not compared:
    `as_built` compares them too."""
    return (_same_class(module, built) and _own_shapes(module) == _own_shapes(built)
            and not changed_settings(module, built)
            and all(module._modules.get(name) is not None for name, made in built._modules.items() if made is not None))


def as_built(module: nn.Module, built: nn.Module) -> bool:
    """Whether `module` is what a rebuild makes in its place (`built`) all through: itself
    (`_as_built`) and every part inside it, none put in place, set otherwise, added or taken away
    (`model.enc.self_attn.num_heads = 4` changes the layer `enc`)."""
    return _as_built(module, built) and next(_otherwise_inside(module, built), None) is None


def _same_class(module: nn.Module, built: nn.Module) -> bool:
    """Whether `module` is of `built`'s class, or of one a wrapper gives it: FSDP2's subclass
    (`FSDPLinear`), a generated one by name (checkpointing swaps it for a subclass of the same name),
    a SyncBatchNorm for a BatchNorm (DDP's `convert_sync_batchnorm`: the same tensors, synced)."""
    cls, want = type(module), type(built)
    names = (want.__name__, f"FSDP{want.__name__}")  # FSDP2 subclasses each unit as FSDP<its class>
    if isinstance(built, GeneratedModule):
        return cls.__name__ in names
    return cls is want or (cls.__name__ == names[1] and issubclass(cls, want)) or (
        cls is nn.SyncBatchNorm and isinstance(built, nn.modules.batchnorm._BatchNorm))


def module_settings(module: nn.Module) -> dict[str, Any]:
    """A module's settings: its plain attributes of a constructor's kinds (a Conv2d's `stride` and
    `dilation`, a pool's `kernel_size`, a Dropout's `p`) and the functions it calls
    (TransformerEncoderLayer's `activation`), not its tensors or submodules."""
    return {key: value for key, value in vars(module).items()
            if key[0] != "_" and key != "training" and isinstance(value, _SETTING_KINDS)}


_SETTING_KINDS = (bool, int, float, str, tuple, type(None), types.FunctionType, types.BuiltinFunctionType)


def set_otherwise(module: nn.Module, built: nn.Module) -> str:
    """What `module` holds otherwise than `built`, where it is of `built`'s class and tensor shapes:
    the module the build made, or one made alike, changed since. Its own settings (`stride=(1, 1)`),
    then what changed inside it, by the path in it (`changed_inside`). Empty where it is not of
    `built`'s class and shapes (put in place), or holds all as built."""
    if not _same_class(module, built) or _own_shapes(module) != _own_shapes(built):
        return ""
    return ", ".join(_otherwise(module, built))


def _otherwise(module: nn.Module, built: nn.Module) -> list[str]:
    """`set_otherwise`'s changes, one by one."""
    return [*_changed_settings(module, built), *_otherwise_inside(module, built)]


def changed_inside(module: nn.Module, built: nn.Module) -> list[str]:
    """What changed inside `module` since the build made `built` there, part by part, by the path in
    it: a part's settings (`self_attn.num_heads=4`), a part put in place, as it prints
    (`linear1=Linear(in_features=16, out_features=64, bias=True)`), one added (the same) or taken
    away (`dropout=None`). `module`'s own settings are `changed_settings`."""
    return list(_otherwise_inside(module, built))


def _otherwise_inside(module: nn.Module, built: nn.Module) -> Iterator[str]:
    """`changed_inside`, lazily (`as_built` stops at the first)."""
    parts = module._modules
    for name, made in built._modules.items():
        part = parts.get(name)
        if made is None:
            if part is not None:
                yield f"{name}={_printed(part)}"
        elif part is None:
            yield f"{name}=None"
        elif _as_built(part, made):
            yield from (f"{name}.{change}" for change in _otherwise_inside(part, made))
        elif _same_class(part, made) and _own_shapes(part) == _own_shapes(made):  # (set otherwise: how)
            yield from (f"{name}.{change}" for change in _otherwise(part, made))
        else:
            yield f"{name}={_printed(part)}"
    for name, part in parts.items():
        if part is not None and name not in built._modules:
            yield f"{name}={_printed(part)}"


def _printed(module: nn.Module) -> str:
    """`Linear(in_features=16, out_features=64, bias=True)`: a module as torch prints it, its parts left out."""
    return one_line(f"{type(module).__name__}({module.extra_repr()})")


def changed_settings(module: nn.Module, built: nn.Module) -> str:
    """The settings `module` holds otherwise than `built` does (`stride=(1, 1)`, `activation=gelu`), of
    those both hold (a SyncBatchNorm's process group is no BatchNorm's); empty where none."""
    return ", ".join(_changed_settings(module, built))


def _changed_settings(module: nn.Module, built: nn.Module) -> Iterator[str]:
    mine, theirs = module_settings(module), module_settings(built)
    return (f"{key}={_setting_text(value)}" for key, value in mine.items()
            if key in theirs and _comparable(theirs[key]) != _comparable(value))


def _comparable(value: Any) -> Any:
    """A setting as compared: a function by where it is defined (a lambda made per instance is alike)."""
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return (getattr(value, "__module__", None), getattr(value, "__qualname__", None))
    return value


def _setting_text(value: Any) -> str:
    return value.__name__ if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)) else repr(value)


def _own_shapes(module: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    tensors = itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
    return tuple((name, tuple(t.shape)) for name, t in tensors)


def _unpickle(record: BuildRecord, state: dict[str, Any], training: bool,
              frozen: list[str] | None = None, flipped: Iterable[str] = (),
              replaced: dict[str, nn.Module] | None = None, checkpointed: Iterable[str] = (),
              unsaved: dict[str, Any] | None = None, tied: dict[str, str] | None = None) -> CompiledModule:
    """The pickled model rebuilt, its tensors as they were pickled: a model converted with `.double()`
    or `.half()`, moved to another device, or built on meta comes back so, not converted to what a
    build gives (ties kept: each tied name holds the one shared tensor), and exactly the parameters
    that were frozen frozen (`frozen`: their names; None in a pickle written before it was kept).
    `flipped`: the submodules whose mode differs from the model's; `replaced`: submodules pickled
    as themselves (see `replaced_modules`), put back in place of the rebuilt ones; `checkpointed`: the
    instances whose forward runs under activation checkpointing; `unsaved`: the non-persistent buffers
    (None in a pickle written before they were kept: as built then); `tied`: the parameters tied
    after the build (`tied_after_build`), tied again."""
    tensors = list(state.values())
    meta = bool(tensors) and all(t.is_meta for t in tensors)
    module = rebuild(record, allow_imports=record.allow_imports, max_params=None, device="meta" if meta else None)
    for name, sub in (replaced or {}).items():
        parent, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent), attribute, sub)
    for name in checkpointed:
        instance = module.get_submodule(name)
        instance.__class__ = checkpointed_class(type(instance))
    module = _restored(module, state, meta)
    for name, buffer in (unsaved or {}).items():
        parent, _, attribute = name.rpartition(".")
        module.get_submodule(parent).register_buffer(attribute, buffer, persistent=False)
    for name, holder in (tied or {}).items():  # (the values are equal: loaded from the one tensor)
        parent, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(parent), attribute, module.get_parameter(holder))
    restore_modes(module, training, frozen, flipped)
    return module


def _restored(module: CompiledModule, state: dict[str, Any], meta: bool) -> CompiledModule:
    """`module` (rebuilt) with the pickled `state`, each tensor of its dtype and device (a meta model,
    rebuilt on meta, has no values to load, but keeps its dtypes: one built on meta and converted
    with `.to(torch.bfloat16)` before `materialize` is pickled so)."""
    tensors = list(state.values())
    floating = {t.dtype for t in tensors if t.is_floating_point()}
    devices = {t.device for t in tensors}
    if len(floating) == 1:  # (non-persistent buffers, which the state lacks, follow too)
        module.to(floating.pop())
    if not meta:
        if len(devices) == 1:
            module.to(devices.pop())
        module.load_state_dict(state)
    own = dict(module.named_parameters(remove_duplicate=False))
    own.update(module.named_buffers(remove_duplicate=False))
    for key, tensor in state.items():  # mixed dtypes or devices: each tensor as it was
        if key in own and (own[key].dtype != tensor.dtype or own[key].device != tensor.device):
            own[key].data = tensor
    return module


def compile_model(spec: Spec, graph: Graph, record: BuildRecord, *, seed: int | None = None,
                  max_params: int | None = DEFAULT_MAX_PARAMS, device: Device | None = None,
                  meta_hint: bool = True) -> CompiledModule:
    """Lower a checked graph into a `CompiledModule` carrying `spec`, `graph` and `record`.

    Args:
        device: where to allocate the weights. None: the current default device (CPU, or the
            device of an enclosing `with torch.device(...)`). "meta": allocate nothing (no
            parameter limit applies). Another device: build on meta, then `materialize` there, so
            the weights equal a CPU build's with the same seed and no CPU copy is made.
        meta_hint: whether a model over `max_params` is offered the meta device, where it could be
            inspected without allocating (not where the caller takes no device: `load`).
    Raises:
        SpecError: the model has more than `max_params` parameters (checked before any weight
            is allocated), or torch refused a layer's arguments.
        UsageError: `device` is not one this machine can allocate on (`target_device`), or `seed` is
            given for a build on meta, which has no weights to seed (`materialize` takes it).
    """
    require_limit(max_params)
    graph.meta["sizes"] = solve_sizes(graph, square=False)  # the forward's input guard states them
    target = target_device(device)
    refuse_seed_without_weights(seed, target, f"device={device!r}" if device is not None
                                else "the default device, meta,")
    # (`max_params` on meta is not refused, as the CLI refuses --max-params: it always has a value, its
    # default, so a caller's cannot be told from it; the docstring says no limit applies on meta)
    # Lower on CPU or meta directly; on any other device, lower on meta and materialize there, so
    # the random draws are the CPU generator's, as in a CPU build.
    lower_on = target if target is None or target.type in ("cpu", "meta") else torch.device("meta")
    with allowed_imports(record.allow_imports):
        if max_params is not None and (target is None or target.type != "meta"):
            _check_size(graph, part_sizes(graph), max_params, meta_hint=meta_hint)
            _check_constants(graph, max_params, meta_hint=meta_hint)
        with gc_paused(), lower_on if lower_on is not None else contextlib.nullcontext():
            module = lower(graph, base=CompiledModule, seed=seed if lower_on == target else None)
    module.spec = spec
    module.graph = graph
    module.build_record = record
    spec_checkpoints(module)
    if lower_on != target:
        materialize(module, device=target, seed=seed, max_params=None)
    return module


C = TypeVar("C", bound=nn.Module)


def require_limit(max_params: Any) -> None:
    """`max_params` is a count of parameters or None (no limit).

    Raises:
        UsageError: anything else (a string, a bool, a negative number: -1 refused every model, as an
            error located in its spec)."""
    if max_params is not None and (isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 0):
        raise UsageError(f"max_params={max_params!r} is no parameter limit: give a whole number of parameters, 0 "
                         "or more, or None for no limit")


def materialize(module: C, *, device: Device = "cpu", seed: int | None = None,
                max_params: int | None = DEFAULT_MAX_PARAMS) -> C:
    """Allocate `module`'s parameters and buffers on `device` and initialise them as a build would.

    The values equal, bit for bit, those of `resgraph.build(spec, seed=seed)` (on CPU), for a
    model built with `device="meta"` and then sharded, checkpointed or compiled alike. A submodule
    put in place after the build keeps its values where it has them (allocated, in a model on meta),
    else is initialised by its own `reset_parameters()`, as torch does. Each
    layer is built once more on CPU, from the same constructor and with the same random draws in
    the same order as the build, and copied in; so peak extra memory is one layer's weights, and
    a sharded (FSDP2) parameter receives only this process's shard.

    Args:
        module: a model returned by `resgraph.build` (usually with `device="meta"`), or
            torch.compile's wrapper of one.
        device: where to allocate (e.g. "cuda", torch.device("cuda", local_rank)).
        seed: the seed a build would have used; None: draw from (and advance) the global RNG.
        max_params: refuse to allocate more than this many parameters in this process (a
            sharded model counts its local shards only); None: no limit.
    Returns:
        `module`, allocated and initialised in place.
    Raises:
        SpecError: more than `max_params` parameters would be allocated, or constants (`full`,
            `constant`, `arange` buffers) of more than `max_params` elements, as `build` refuses them.
        UsageError: `module` was not built by resgraph (nor wraps a model that was), a submodule
            put in place after the build has tensors and no `reset_parameters()`, or `device` is not
            one this machine can allocate on (`target_device`), or is the meta device (it holds none).
    """
    # torch.compile's wrapper forwards `graph` to the model it holds, but names every submodule
    # `_orig_mod.*`: read as the model, all of it counted as put in place after the build and was
    # initialised by torch's reset_parameters, not as the seeded build.
    given, module = module, built_model(module, "materialize")
    device = target_device(device)
    if device is not None and device.type == "meta":
        raise UsageError("materialize allocates the weights, and the meta device holds none: give the device to "
                         "allocate them on (device='cpu', 'cuda', ...)")
    graph, record = module.graph, module.build_record
    # Submodules put in place after the build (a new head for fine-tuning) are not the spec's: each
    # is initialised as torch initialises a module after `to_empty`, by its own `reset_parameters`.
    # One already allocated keeps its values.
    replaced = {**replaced_modules(module), **_allocated_in_place(module)}
    kept = {path: outer.state_dict() for path, outer in replaced.items()
            if not any(t.is_meta for t in itertools.chain(outer.parameters(), outer.buffers()))}
    resets = [(f"{path}.{name}" if name else path, sub) for path, outer in replaced.items() if path not in kept
              for name, sub in outer.named_modules()
              if next(itertools.chain(sub.parameters(recurse=False), sub.buffers(recurse=False)), None) is not None]
    unresettable = [name for name, sub in resets if not callable(getattr(sub, "reset_parameters", None))]
    if unresettable:
        raise UsageError(f"cannot materialize {type(module).__name__}: {unresettable[0]!r} "
                         f"({type(module.get_submodule(unresettable[0])).__name__}) was put there after the build, on "
                         "meta, and has no reset_parameters() to initialise it; create it on a device instead")
    require_limit(max_params)
    if max_params is not None:
        sizes = dict.fromkeys(graph.nodes, 0)
        for name, parameter in module.named_parameters():
            top = name.split(".", 1)[0]  # a node's attribute is named after it
            sizes[top] = sizes.get(top, 0) + local_numel(parameter)
        _check_size(graph, sizes, max_params, "this process would allocate", meta_hint=False)
        _check_constants(graph, max_params, meta_hint=False)  # (buffers: FSDP2 shards none of them)
    module.to_empty(device=device)
    tied = {tie.path for tie in tied_parameters(graph)}  # filled through their owners
    with allowed_imports(record.allow_imports), seeded(seed), torch.device("cpu"), torch.no_grad():
        for path, node in owned_units(graph):
            fresh = build_owned(node)  # drawn even when replaced: the rest keep a build's values
            if any(path == outer or path.startswith(f"{outer}.") for outer in replaced):
                continue
            if isinstance(fresh, nn.Parameter):
                fill(module.get_parameter(path), fresh)
                continue
            if isinstance(fresh, torch.Tensor):  # a constant buffer
                fill(module.get_buffer(path), fresh)
                continue
            owner = module.get_submodule(path)
            for name, tensor in itertools.chain(fresh.named_parameters(), fresh.named_buffers()):
                if f"{path}.{name}" not in tied:
                    fill(owner.get_parameter(name) if isinstance(tensor, nn.Parameter) else owner.get_buffer(name),
                         tensor)
        for _, sub in resets:
            sub.reset_parameters()
        for path, state in kept.items():
            module.get_submodule(path).load_state_dict(state)
    tie_parameters(module, graph)  # to_empty made a tied parameter a tensor of its own again
    return given


def _allocated_in_place(module: nn.Module) -> dict[str, nn.Module]:
    """In a model whose weights are partly on meta (built there), each outermost submodule whose
    tensors are all allocated: put in place after the build (a pretrained head), even where it is of
    the built kind and shapes, which `replaced_modules` cannot tell from the built one. Its values are
    the user's, so `materialize` keeps them. None in a model without meta tensors: materializing one
    initialises it all again, as a build does."""
    def tensors(m: nn.Module) -> list[torch.Tensor]:
        return [*m.parameters(), *m.buffers()]

    if not any(t.is_meta for t in tensors(module)):
        return {}
    allocated: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if name and not any(name.startswith(f"{outer}.") for outer in allocated):
            own = tensors(sub)
            if own and not any(t.is_meta for t in own):
                allocated[name] = sub
    return allocated


def export_program(module: CompiledModule, *, dynamic: bool = True, **options: Any) -> Any:
    """`torch.export.export` of a built model, its outputs named as the spec names them.

    torch names an exported graph's outputs after the op that made them (`add__1`, `linear_48`);
    these carry the names ONNX files and `resgraph build --json` use (`res2_conv2`; see
    `ownership.output_names`), in `program.graph_signature.user_outputs` and the graph's code.

    Args:
        module: a model returned by `resgraph.build` (exported as it is: call `.eval()` first for inference).
        dynamic: keep the batch and every free input dim dynamic (`module.dynamic_shapes()`).
        options: passed to `torch.export.export` (strict, ...).
    Returns:
        The `torch.export.ExportedProgram`, traced at `module.example_inputs()`. (Its graph's nodes are
        renamed through fx's own namespace, which keeps names unique; a later
        `program.run_decompositions()` makes new nodes, named by torch again.)
    Raises:
        UsageError: the model is sharded (FSDP2): export an ordinary build holding its full state dict; or
            it was built on the meta device (no weights: materialize it first).
    """
    require_unsharded(module, "torch.export")  # (it failed reading a FakeTensor's data pointer)
    require_weights(module, "export")  # (torch: "Tensor on device meta is not on the expected device cpu!")
    program = torch.export.export(module, module.example_inputs(batch=2),
                                  dynamic_shapes=module.dynamic_shapes() if dynamic else None, **options)
    return name_outputs(program, module.graph)


def name_outputs(program: Any, graph: Graph) -> Any:
    """Rename the nodes an exported program returns to the spec's output names, in place.

    An output that is an input, a parameter or a buffer (a placeholder), or a value returned twice,
    keeps torch's name: renaming it would rename an input too. A node inside the graph that torch
    named as an output is named (`relu` after an earlier ReLU's `relu`) is renamed first (`relu_3`);
    only where an input, parameter or buffer holds the name does the output get fx's suffix.

    Returns:
        `program`, changed in place.
    """
    from .ownership import output_names

    user = [spec for spec in program.graph_signature.output_specs if spec.kind.name == "USER_OUTPUT"]
    nodes = {node.name: node for node in program.graph.nodes}
    renamed: set[str] = set()
    for spec, wanted in zip(user, output_names(graph)):
        node = nodes.get(getattr(spec.arg, "name", None))
        if node is None or node.op == "placeholder" or node.name in renamed or node.name == wanted:
            continue
        holder = nodes.get(wanted)
        if holder is not None and holder.op != "placeholder" and wanted not in renamed:
            holder._rename(f"{wanted}_1")  # (fx's namespace moves it on to the first free suffix)
            nodes[holder.name] = holder
            for other in program.graph_signature.output_specs:  # (a buffer's update may be the node)
                if getattr(other.arg, "name", None) == wanted:
                    other.arg.name = holder.name
            # fx never frees a name: the name is the output's once no node holds it
            program.graph._graph_namespace._used_names.discard(wanted)
        node._rename(wanted)  # through the graph's namespace, which keeps names unique
        nodes[node.name] = node
        spec.arg.name = node.name
        renamed.add(node.name)
    program.graph_module.recompile()
    return program


def rebuild(record: BuildRecord, *, allow_imports: Iterable[str] = (), seed: int | None = None,
            max_params: int | None = DEFAULT_MAX_PARAMS, device: Device | None = None,
            meta_hint: bool = True) -> CompiledModule:
    """Build the model a `BuildRecord` describes, reading imported libraries from the record.

    Args:
        allow_imports: the prefixes the caller allows. The record's own are never trusted: a
            model built with imports the caller does not allow is refused.
        device: as `compile_model`'s ("meta": nothing allocated).
        meta_hint: whether a model over `max_params` is offered the meta device (not by `load`, which
            loads weights into the model and takes no device).
    Raises:
        UsageError: the record needs imports the caller did not allow.
        SpecError: the recorded spec is invalid (e.g. written by a newer resgraph).
    """
    allowed = import_prefixes(allow_imports)
    missing = [prefix for prefix in record.allow_imports if prefix not in allowed]
    if missing:
        flags = " ".join(f"--allow-import {prefix}" for prefix in missing)
        raise UsageError(f"{record.file}: this model was built with {flags}; allow the same to rebuild it "
                         f"(Python: allow_imports={list(record.allow_imports)!r})")
    with allowed_imports(allowed):
        spec, graph = check_loaded(load_text(record.spec, record.file), record.params, record.reader(),
                                   record.input_shapes)
    return compile_model(spec, graph, record, seed=seed, max_params=max_params, device=device,
                         meta_hint=meta_hint)


def meta_module(graph: Graph) -> GeneratedModule:
    """The model built on the meta device: every shape and count, no storage."""
    with torch.device("meta"):
        return lower(graph)


def part_sizes(graph: Graph) -> dict[str, int]:
    """Parameters each top-level node owns: from the ops' own counts, else from a meta-device build."""
    counts = static_parameter_counts(graph)
    if counts is not None:
        return counts
    module = meta_module(graph)  # an uncurated op somewhere: only building can tell
    return {name: owned_parameters(module, node) for name, node in graph.nodes.items()}


# Where a model over the limit can still be looked at (not offered where the caller takes no device: `load`).
_META_OFFER = "; or inspect the model without allocating: --device meta (Python: device='meta')"


def _check_size(graph: Graph, sizes: dict[str, int], limit: int, subject: str = "the model would have",
                meta_hint: bool = True) -> None:
    """Refuse a model over `limit` parameters (`sizes`: per top-level node), pointing at its largest part.

    `meta_hint`: also offer the meta device, where a build allocates nothing (not when materializing).
    """
    total = sum(sizes.values())
    if total <= limit:
        return
    largest = max(sizes, key=sizes.__getitem__)
    message = (f"{subject} {total:,} parameters ({_size(total * 4)} as float32), more than the limit of "
               f"{limit:,}; the largest part, {largest!r}, has {sizes[largest]:,}")
    offer = _META_OFFER if meta_hint else ""
    hint = f"raise the limit with --max-params N (Python: max_params=N) if this is intended{offer}"
    if largest not in graph.nodes:  # a submodule added to the model after its build: no place in the spec
        raise UsageError(f"{message} (added after the build); {hint}")
    raise SpecError([Diagnostic(graph.where(graph.nodes[largest]), message, hint)])


def _check_constants(graph: Graph, limit: int, meta_hint: bool = True) -> None:
    """Refuse constants (`full`, `constant`, `arange` buffers) holding more than `limit` elements in all.

    They are not parameters, but a build allocates and fills them as it does weights, so the same
    limit bounds them before anything is allocated (a `full` of shape [100000, 100000, 10] asked
    for 400 GB while `--max-params` guarded only the weights), and so does `materialize`, which
    allocates them for a meta build. `meta_hint`: as for `_check_size`.

    Raises:
        SpecError: at the largest constant, with the total and the limit.
    """
    found: list[tuple[int, Graph, LayerNode]] = []
    for owner in [graph, *(instance for _, instance in graph.subgraphs())]:
        for node in owner.nodes.values():
            if isinstance(node, LayerNode) and owns(node) is Owns.buffer:
                found.append((math.prod(node.layer.stored_shape()), owner, node))
    total = sum(size for size, _, _ in found)
    if total <= limit:
        return
    size, owner, node = max(found, key=lambda item: item[0])
    raise SpecError([Diagnostic(owner.where(node), f"{owner.label(node)}: the model's constants would hold "
                                                   f"{total:,} elements, more than the limit of {limit:,}; this one "
                                                   f"has {size:,}",
                                "constants are allocated like weights and --max-params N (Python: max_params=N) "
                                "bounds them too: raise it if this is intended" + (_META_OFFER if meta_hint else ""))])


def _size(n_bytes: float) -> str:
    """`3.8 MiB`: a byte count in the largest unit that keeps it at or above 1 (up to GiB)."""
    if n_bytes < 1024:
        return f"{int(n_bytes)} bytes"
    for unit in ("KiB", "MiB"):
        n_bytes /= 1024
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} GiB"
