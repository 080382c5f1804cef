"""Any other torch.nn class: arguments checked against its signature, shapes from the meta device.

Curated ops get typed schema entries and pure shape functions; this fallback keeps the rest of
`torch.nn` usable, and classes registered with `register_op` or imported where the caller allows.
It is the only op that imports torch during validation, and only when a spec uses it.

What a spec may write for such an op, checked before anything is built:

- argument names are Python identifiers (not keywords, not private `_names`): they become
  keyword arguments in the exported `.py`;
- argument values are plain data (finite numbers, strings, booleans, null, lists of them): the
  export writes them with `repr`;
- no argument decides where or how storage is allocated (`device`, `dtype`, ...: `REFUSED`), so
  no weight exists before the parameter-limit check;
- the batch is dim 0: `batch_first` is always True, a dim argument of a torch.nn class never
  names the batch, and classes that also take unbatched input get samples of their batched rank
  (`SAMPLE_RANKS`); `probe` then checks on the meta device that the output leads with the batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import keyword
import math
import re
import typing
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import cache
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from ..suggest import did_you_mean
from ..symbolic import SymInt, specialize
from .base import IDENTIFIER_PATTERN, OPS, RESGRAPH_KEYS, Layer, ShapeError, Storage, TensorType
from .probe import GenericOpError, describe, known_parameters, probe

__all__ = ["CUSTOM_OPS", "FIXED", "GenericLayer", "GenericOpError", "INFERABLE", "REFUSED", "SAMPLE_RANKS",
           "allowed_imports", "import_prefixes", "register_op", "torch_module_class", "torch_module_names"]

DottedName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
                                             max_length=256)]

# Input-size arguments resgraph fills in for any class whose signature has them.
INFERABLE: dict[str, str] = {
    "in_channels": "channels",
    "num_features": "channels",
    "num_channels": "channels",
    "in_features": "last",
    "input_size": "last",
    "normalized_shape": "last",
    "embed_dim": "last",
    "d_model": "last",
}

# Conventions every resgraph model fixes, set for any class whose signature has them: the batch is
# dim 0 (torch's recurrent and transformer classes default to dim 1).
FIXED: dict[str, Any] = {"batch_first": True}

# Construction arguments a spec may not set, and why. torch's factory kwargs (device, dtype, and
# their tensor-level kin) decide where and how storage is allocated: resgraph builds on the meta
# device to check shapes and counts, then allocates on the CPU only after the parameter limit.
_MOVE = "move or convert the built model instead (`model.to(...)`)"
REFUSED: dict[str, str] = {
    "device": f"resgraph allocates weights on the CPU, after checking the parameter limit; {_MOVE}",
    "dtype": f"resgraph builds float32 weights; {_MOVE}, e.g. `model.to(torch.bfloat16)`",
    "layout": f"resgraph builds dense (strided) weights; {_MOVE}",
    "memory_format": f"resgraph builds contiguous weights; {_MOVE}, e.g. `model.to(memory_format=...)`",
    "pin_memory": "resgraph allocates weights in ordinary memory; pin them yourself if you need to",
    "device_ids": "devices are chosen by the training script, not the spec",
    "output_device": "devices are chosen by the training script, not the spec",
    "process_group": "process groups are set up by the training script, not the spec",
}

# torch.nn classes that also accept an unbatched input, one dim smaller, and would then read
# resgraph's batch as their sequence or channel axis: the dims each sample must have.
_SEQUENCE = ("sequence", "features")
SAMPLE_RANKS: dict[str, tuple[str, ...]] = {
    "RNNBase": _SEQUENCE,
    "RNNCellBase": ("features",),
    "Transformer": _SEQUENCE,
    "TransformerEncoder": _SEQUENCE,
    "TransformerDecoder": _SEQUENCE,
    "TransformerEncoderLayer": _SEQUENCE,
    "TransformerDecoderLayer": _SEQUENCE,
    "Softmax2d": ("C", "H", "W"),
}

# torch.nn classes (by base) whose input sizes torch.export specialises (see `Layer.export_static`): RNN,
# LSTM and GRU run a loop as long as the sequence.
EXPORT_STATIC_BASES = frozenset({"RNNBase"})

# Arguments of torch.nn classes that name a dim of the input (batch included, as in torch).
DIM_ARGUMENTS = ("dim", "start_dim", "end_dim")

# Arguments of torch.nn classes that repeat a sublayer: building runs a Python loop this long.
LAYER_COUNTS = ("num_layers", "num_encoder_layers", "num_decoder_layers")
MAX_LAYER_COUNT = 1024
MAX_VALUE_DEPTH = 8

# Containers, wrappers and abstract bases are not layers.
_NOT_LAYERS = {"Module", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container",
               "DataParallel", "RNNBase", "RNNCellBase"}
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _exclude_curated(schema: dict[str, Any]) -> None:
    schema["not"] = {"enum": sorted(OPS)}


class GenericLayer(Layer):
    """Any torch.nn class not curated by resgraph; its keys are the class's constructor arguments."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True,
                              json_schema_extra={"description": __doc__})

    op: DottedName = Field(description="A torch.nn class name, an op registered with resgraph.register_op, or an "
                                       "allowed import path (package.module.Class).",
                           json_schema_extra=_exclude_curated)

    max_inputs: ClassVar[int | None] = None

    def written_args(self) -> dict[str, Any]:
        """The constructor arguments as the spec wrote them (lists as tuples, nested ones too)."""
        return {k: _frozen(v) for k, v in (self.model_extra or {}).items() if k not in RESGRAPH_KEYS}

    def args(self) -> dict[str, Any]:
        """The spec's arguments plus the conventions resgraph fixes (`FIXED`), so that summaries,
        diagrams and the export show them. Never raises, also for an unknown op."""
        written = self.written_args()
        try:
            parameters, _ = _constructor_parameters(torch_module_class(self.op))
        except GenericOpError:
            return written
        return {**written, **{k: v for k, v in FIXED.items() if k in parameters and k not in written}}

    @property
    def torch_name(self) -> str:  # type: ignore[override]
        return self.op

    @property
    def export_static(self) -> bool:  # type: ignore[override]
        try:
            cls = torch_module_class(self.op)
        except GenericOpError:
            return False
        return any(base.__name__ in EXPORT_STATIC_BASES for base in cls.__mro__)

    def build(self, args: dict[str, Any]) -> Any:
        return torch_module_class(self.op)(**args)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        """The count the meta-device probe found for these arguments; None if none ran."""
        return known_parameters(torch_module_class(self.op), args)

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        parameters, _ = _constructor_parameters(torch_module_class(self.op))
        given = self.args()
        x = inputs[0]
        if not x.rank:
            return {}
        return {name: x.shape[0] if rule == "channels" else x.shape[-1]
                for name, rule in INFERABLE.items() if name in parameters and name not in given}

    def call(self, module: str, operands: list[str]) -> str:
        pick = (self.model_extra or {}).get("output")
        return super().call(module, operands) + (f"[{int(pick)}]" if pick is not None else "")

    def check_arguments(self) -> None:
        """Check what the spec wrote, before anything is built.

        Raises:
            GenericOpError: an unknown class; an argument name that is not an identifier, is
                private, is refused (`REFUSED`) or that the signature does not take; a value that
                is not plain data; `batch_first` other than true; an `output` that is not an index;
                a lazy class; a missing argument.
        """
        cls = torch_module_class(self.op)
        name = display_name(self.op, cls)
        parameters, takes_any = _constructor_parameters(cls)
        for key, value in self.written_args().items():
            _check_name(key)
            _check_value(key, value)
            if key not in parameters and not takes_any:
                choices = [p for p in parameters if p not in REFUSED]
                raise GenericOpError(f"{name} has no argument {key!r}{did_you_mean(key, choices)}", key)
            if key in FIXED and (type(value) is not type(FIXED[key]) or value != FIXED[key]):
                raise GenericOpError(f"{key}: {json.dumps(value)} is not allowed: the batch is dim 0 in every resgraph "
                                     f"model, so {name} is always built with {key}={FIXED[key]!r} (remove the key)",
                                     key)
            if key in LAYER_COUNTS and _is_torch(cls) and isinstance(value, int) and value > MAX_LAYER_COUNT:
                raise GenericOpError(f"{key}={value} is more than {MAX_LAYER_COUNT} layers", key)
            if key in parameters:
                _check_type(name, key, value, parameters[key])
        pick = (self.model_extra or {}).get("output")
        if pick is not None and (not isinstance(pick, int) or isinstance(pick, bool)):
            raise GenericOpError(f"output: {json.dumps(pick) if _is_plain(pick) else type(pick).__name__} is not an "
                                 "index; write the position of the result to use, e.g. `output: 0`", "output")
        _check_not_lazy(name, cls)
        missing = [p for p, param in parameters.items()
                   if param.default is inspect.Parameter.empty and p not in self.written_args() and p not in INFERABLE]
        if missing:
            raise GenericOpError(f"{name} needs argument(s) {', '.join(map(repr, missing))}", "op")

    def check_static(self) -> None:
        self.check_arguments()

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        symbolic = inputs
        inputs = [t.hints() for t in inputs]  # torch computes this op's sizes from concrete ones
        self.check_arguments()
        cls = torch_module_class(self.op)
        if _is_torch(cls):  # torch's own conventions; a registered class is judged by the probe alone
            name, written = display_name(self.op, cls), self.written_args()
            parameters, _ = _constructor_parameters(cls)
            _check_sample_rank(name, cls, inputs, "input" if self.input is not None else "op")
            _check_reduction(name, parameters, written)
            _check_dims(name, cls, parameters, written, inputs[0].rank)
        pick = (self.model_extra or {}).get("output")
        out = probe(cls, self.module_args(inputs), tuple(inputs), pick).output
        followed = self._follows_free_sizes(cls, symbolic, out, pick)
        if followed is not None:
            return followed
        # Otherwise its output depends on exact input sizes: each symbolic one is specialised (a
        # recorded decision: the model then admits only these sizes; see resgraph.symbolic).
        for t in symbolic:
            for size in t.shape:
                specialize(size)
        same_grid = (out.layout == "channels_first" == inputs[0].layout and out.rank == inputs[0].rank
                     and out.shape[1:] == inputs[0].shape[1:])
        return replace(out, scale=inputs[0].scale if same_grid else None)

    def storage(self, inputs: list[TensorType]) -> Storage:
        """What the meta-device probe saw (see `probe`); `inplace: true` counts as a write even if it did not."""
        inputs = [t.hints() for t in inputs]
        pick = (self.model_extra or {}).get("output")
        seen = probe(torch_module_class(self.op), self.module_args(inputs), tuple(inputs), pick).storage
        if self.written_args().get("inplace") is True and seen.writes is None:
            return replace(seen, aliases=0, writes=0)
        return seen

    def _follows_free_sizes(self, cls: type, symbolic: list[TensorType], out: TensorType,
                            pick: Any) -> TensorType | None:
        """The output type with the input's free sizes kept symbolic, for a one-input op that passes
        each free dim of its input through at its place and keeps its other dims whatever the free
        sizes are (an activation or a norm; an LSTM's or a GRU's sequence, whose features change),
        as two more probes at other free sizes confirm; None for any other op.

        Such an op works at every size of those dims from the least one it runs at (a reflection pad
        of 3 then a Conv1d of 7 need L >= 4), so it need not fix them (see `output_type`): where a
        probe at 1 fails, the least size is found by bisection below the declared one, each dim with
        the others at their declared sizes, and recorded as a decision (`L >= 4`).
        """
        if len(symbolic) != 1:
            return None
        given, seen = symbolic[0], symbolic[0].hints()
        free = [isinstance(size, SymInt) for size in given.shape]
        if not any(free) or out.rank != seen.rank or any(
                is_free and size != before for size, before, is_free in zip(out.shape, seen.shape, free)):
            return None

        def follows(sizes: tuple[int, ...]) -> bool:
            """Whether the op runs at these input sizes and passes the free ones through."""
            other = seen.with_shape(sizes, scale=seen.scale)
            expected = tuple(moved if is_free else kept for moved, kept, is_free in zip(sizes, out.shape, free))
            try:
                return probe(cls, self.module_args([other]), (other,), pick).output.shape == expected
            except ShapeError:
                return False

        # two more sizes: a dim that only happens to equal its input's once is not followed
        if not all(follows(tuple(size + step if is_free else size for size, is_free in zip(seen.shape, free)))
                   for step in (1, 2)):
            return None
        for axis, is_free in enumerate(free):
            before, after = seen.shape[:axis], seen.shape[axis + 1:]  # (the other dims at their declared sizes)
            if not is_free or follows((*before, 1, *after)):
                continue
            fails, runs = 1, seen.shape[axis]
            while runs - fails > 1:
                middle = (fails + runs) // 2
                fails, runs = (fails, middle) if follows((*before, middle, *after)) else (middle, runs)
            if not given.shape[axis] >= runs:  # (true at the declared size: recorded, so the guard checks it)
                return None
        same_grid = out.layout == "channels_first" == seen.layout and out.shape[1:] == seen.shape[1:]
        shape = tuple(size if is_free else kept for size, kept, is_free in zip(given.shape, out.shape, free))
        return replace(out, shape=shape, scale=given.scale if same_grid else None)


def _check_sample_rank(name: str, cls: type, inputs: list[TensorType], field: str) -> None:
    """A class that also takes unbatched input must get samples of its batched rank (`SAMPLE_RANKS`)."""
    base = next((b for b in cls.__mro__ if _is_torch(b) and b.__name__ in SAMPLE_RANKS), None)
    if base is None:
        return
    dims = SAMPLE_RANKS[base.__name__]
    for position, t in enumerate(inputs):
        if t.rank != len(dims):
            sample = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
            which = "" if len(inputs) == 1 else f" (input {position + 1}{_forward_argument(cls, position)})"
            raise GenericOpError(f"{name} reads (N, {', '.join(dims)}) with the batch first: each sample needs "
                                 f"{len(dims)} dim{'s' if len(dims) > 1 else ''} {sample}, got {t}{which}; torch "
                                 "would read a batch of those as one unbatched input, taking the batch for one of its "
                                 "dims and mixing samples", field)


def _forward_argument(cls: type, position: int) -> str:
    """', passed as torch's `src_mask`': the argument of `cls.forward` an input at `position` fills
    (a layer's inputs are passed in order), or '' where the signature does not say."""
    try:
        names = [p.name for p in inspect.signature(cls.forward).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]  # (self)
    except (TypeError, ValueError):
        return ""
    return f", passed as torch's `{names[position]}`" if position < len(names) else ""


def _check_reduction(name: str, parameters: dict[str, inspect.Parameter], written: dict[str, Any]) -> None:
    """A loss keeps the batch only with `reduction: none` (unless the legacy `reduce`/`size_average` decide)."""
    reduction = written.get("reduction", getattr(parameters.get("reduction"), "default", "none"))
    if reduction != "none" and not {"reduce", "size_average"} & set(written):
        raise GenericOpError(f"{name} with reduction={reduction!r} reduces the whole batch to one value, but the "
                             "batch is dim 0 in every resgraph model and each layer keeps it; set `reduction: none` "
                             "for one value per sample", "reduction" if "reduction" in written else "op")


def _check_dims(name: str, cls: type, parameters: dict[str, inspect.Parameter], written: dict[str, Any],
                rank: int) -> None:
    """A dim argument never names the batch, and is written where torch would otherwise guess it."""
    for key in DIM_ARGUMENTS:
        if key in parameters and parameters[key].default is None and key not in written:
            raise GenericOpError(f"{name} needs `{key}` here: without it torch picks a dim from the input's rank, "
                                 "which for some ranks is the batch (dim 0 in every resgraph model)", "op")
        dim = written.get(key)
        if not isinstance(dim, int) or isinstance(dim, bool) or not -(rank + 1) <= dim <= rank:
            continue  # not a dim, or out of range: torch says so in its own words
        if dim % (rank + 1) == 0:
            valid = {0: "the input has no dims besides the batch", 1: f"use {key}=1 (or -1)"}.get(
                rank, f"use a dim between 1 and {rank} (or count from the end)")
            raise GenericOpError(f"{describe(cls, written)}: {key}={dim} is the batch dimension (dim 0 in every "
                                 f"resgraph model), so the op would mix or drop samples; {valid}", key)


def display_name(op: str, cls: type) -> str:
    """How messages name an uncurated class: `torch.nn.LSTM`, or the op as the spec wrote it."""
    return f"torch.nn.{op}" if "." not in op and _is_torch(cls) else op


def _is_torch(cls: type) -> bool:
    return cls.__module__.startswith("torch.")


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, (list, tuple)) and all(_is_plain(v) for v in value))


def _frozen(value: Any) -> Any:
    """Lists as tuples, at any depth: hashable, and what torch's `_ntuple` arguments expect."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _check_name(key: Any) -> None:
    """A spec key becomes `key=value` in generated source: only plain, public identifiers."""
    shown = str(key)
    if keyword.iskeyword(shown):
        raise GenericOpError(f"{shown!r} is a Python keyword, not an argument name", shown)
    if shown.startswith("_") and _IDENTIFIER.fullmatch(shown.lstrip("_")):
        raise GenericOpError(f"{shown!r} is private to the class (torch's internal state, not a setting); a spec "
                             "sets public arguments only", shown)
    if not isinstance(key, str) or not _IDENTIFIER.fullmatch(key):
        raise GenericOpError(f"{shown!r} is not an argument name: argument names are Python identifiers (ASCII "
                             "letters, digits and _, starting with a letter)", shown)
    if key in REFUSED:
        raise GenericOpError(f"{key} may not be set in a spec: {REFUSED[key]}", key)


def _check_value(key: str, value: Any, depth: int = 0) -> None:
    """Arguments are plain data, which `repr` writes back as the same literal in the exported `.py`."""
    if depth > MAX_VALUE_DEPTH:
        raise GenericOpError(f"{key}: lists nest deeper than {MAX_VALUE_DEPTH} levels", key)
    if isinstance(value, tuple):
        for item in value:
            _check_value(key, item, depth + 1)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise GenericOpError(f"{key}: {value} is not a finite number; arguments of uncurated ops are written as "
                             "Python literals, and infinities and NaN have none", key)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        what = "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"
        raise GenericOpError(f"{key}: {what} is not an argument value; arguments of uncurated ops are numbers, "
                             "strings, booleans, null, or lists of them", key)


def _check_type(name: str, key: str, value: Any, parameter: inspect.Parameter) -> None:
    """Refuse a value of another kind than the signature's plain `bool`, `int` or `float` annotation says
    (a type, or its name where the class was written with `from __future__ import annotations`): torch
    builds `bias="false"` with a bias (the string is true) and `out_features=True` with one feature.

    Raises:
        GenericOpError: at `key`, naming the kind wanted and the value given."""
    annotation = parameter.annotation
    wanted = annotation.__name__ if isinstance(annotation, type) else annotation
    if wanted == "bool" and not isinstance(value, bool):
        word = value.strip().lower() if isinstance(value, str) else None
        hint = f" (write {word} without quotes)" if word in ("true", "false") else ""
        raise GenericOpError(f"{key}: {name} takes true or false here, got {json.dumps(value)}{hint}", key)
    fraction = wanted == "int" and isinstance(value, float)
    if wanted in ("int", "float") and (isinstance(value, (bool, str)) or fraction):
        kind = "an integer" if wanted == "int" else "a number"
        raise GenericOpError(f"{key}: {name} takes {kind} here, got {json.dumps(value)}", key)


def _check_not_lazy(name: str, cls: type) -> None:
    """Lazy modules create weights at their first call, too late for shapes and the parameter limit."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if not issubclass(cls, LazyModuleMixin):
        return
    target = getattr(cls, "cls_to_become", None)
    if isinstance(target, type) and target.__name__ in OPS:
        inferred = OPS[target.__name__].inferred
        alternative = f"use `op: {target.__name__}`" + (f": resgraph infers {', '.join(inferred)} from the input"
                                                       if inferred else "")
    else:
        alternative = "use the class it becomes, whose sizes are constructor arguments"
    raise GenericOpError(f"{name} creates its weights at its first call, after resgraph has checked shapes and "
                         f"the parameter limit; {alternative}", "op")


@cache
def torch_module_names() -> tuple[str, ...]:
    """Public torch.nn classes usable as layers."""
    import torch

    return tuple(sorted(name for name, obj in vars(torch.nn).items()
                        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                        and not name.startswith("_") and name not in _NOT_LAYERS))


# Layers registered from Python with register_op, and the import prefixes the current caller
# allows (set by the API for the duration of one call: a spec can never allow imports itself).
CUSTOM_OPS: dict[str, type] = {}
ALLOWED_IMPORTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("allowed_imports", default=())


def register_op(name: str, module_class: type) -> type:
    """Make a Python `nn.Module` class usable in specs as `op: name`.

    Its constructor arguments are checked against its signature and its shapes are inferred on
    the meta device, like any uncurated torch.nn class; input sizes it names `in_channels`,
    `in_features`, ... are inferred too, and `batch_first` is always True. Returns the class, so
    it works as a decorator factory.

    Raises:
        ValueError: `name` is not an identifier, or already names an op.
        TypeError: `module_class` is not an nn.Module subclass.
    """
    import torch

    if not isinstance(module_class, type) or not issubclass(module_class, torch.nn.Module):
        raise TypeError(f"register_op({name!r}, ...) needs a torch.nn.Module subclass, got {module_class!r}")
    if not re.fullmatch(IDENTIFIER_PATTERN.strip("^$"), name):
        raise ValueError(f"op name {name!r} must start with an ASCII letter and hold only ASCII letters, digits and _")
    if name in OPS or name in CUSTOM_OPS or name in torch_module_names():
        raise ValueError(f"op {name!r} is already defined; choose another name")
    CUSTOM_OPS[name] = module_class
    return module_class


def import_prefixes(prefixes: Iterable[str] | None) -> tuple[str, ...]:
    """The module prefixes a caller allows (`allow_imports=`), checked; None allows none.

    Raises:
        UsageError: `prefixes` is one string (`allow_imports="mylayers"`), whose letters would each
            have been a prefix and the name itself none, or holds something other than strings.
    """
    from ..errors import UsageError

    if prefixes is None:  # (as "allow nothing" reads)
        return ()
    if isinstance(prefixes, (str, bytes)):
        raise UsageError(f"allow_imports is a list of module prefixes, e.g. [{prefixes!r}], not the string "
                         f"{prefixes!r} (each of its letters would be a prefix)")
    checked = tuple(prefixes)
    if not all(isinstance(prefix, str) for prefix in checked):
        raise UsageError(f"allow_imports holds module prefixes (strings), not {checked!r}")
    return checked


@contextlib.contextmanager
def allowed_imports(prefixes: Iterable[str]) -> Iterator[None]:
    """Within the block, a spec's dotted `op: package.module.Class` may import under these prefixes.

    Raises:
        UsageError: see `import_prefixes`.
    """
    token = ALLOWED_IMPORTS.set(import_prefixes(prefixes))
    try:
        yield
    finally:
        ALLOWED_IMPORTS.reset(token)


def torch_module_class(op: str) -> type:
    """The class an uncurated op names: a registered op, an allowed import, or a torch.nn class.

    Raises:
        GenericOpError: an unknown name (with suggestions), or an import the caller did not allow.
    """
    import torch

    if op in CUSTOM_OPS:
        return CUSTOM_OPS[op]
    if "." in op:
        return _imported_class(op)
    if op not in torch_module_names():
        hint = did_you_mean(op, _spec_op_names())
        raise GenericOpError(f"unknown op {op!r}: not a resgraph op or a torch.nn layer class{hint}", "op")
    return getattr(torch.nn, op)


def _spec_op_names() -> list[str]:
    """Every name a spec's `op:` may write: resgraph's ops, registered ones, torch.nn's layers."""
    return [*OPS, *CUSTOM_OPS, *torch_module_names()]


_TORCH_NAMESPACES = frozenset({"torch", "nn", "F", "functional"})  # how PyTorch code spells torch's namespaces


def _torch_spelling(path: str) -> str | None:
    """The op a spec names a layer by, for one spelt as PyTorch code spells it (`nn.Conv2d`,
    `torch.nn.ReLU`, `F.relu` -> ReLU); None for any other dotted name (the user's own module).

    >>> _torch_spelling("nn.Conv2d"), _torch_spelling("F.relu"), _torch_spelling("mylayers.Gate")
    ('Conv2d', 'ReLU', None)
    """
    if path.split(".")[0] not in _TORCH_NAMESPACES:
        return None
    name = path.rpartition(".")[2]
    known = _spec_op_names()
    if name in known:
        return name
    return {op.lower(): op for op in known}.get(name.lower())


def _imported_class(path: str) -> type:
    import importlib

    import torch

    allowed = ALLOWED_IMPORTS.get()
    if not any(path == prefix or path.startswith(prefix if prefix.endswith(".") else prefix + ".")
               for prefix in allowed):
        spelt = _torch_spelling(path)
        written = f"write `op: {spelt}`, as a spec names PyTorch's own layers (without a package)"
        if spelt is not None and not (path.startswith("torch.nn.") and spelt == path.rpartition(".")[2]):
            raise GenericOpError(f"op {path!r}: {written}", "op")  # (`nn.Conv2d`, `F.relu`: no import would find it)
        package = path.split(".")[0]
        raise GenericOpError(f"op {path!r} is a Python import; resgraph imports code named in a spec only when the "
                             f"caller allows it (--allow-import {package}, or allow_imports=['{package}'])"
                             + (f"; or {written}" if spelt is not None else ""), "op")
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as exc:  # the caller's own module may fail to import in any way
        raise GenericOpError(f"cannot import {path!r}: {exc}", "op") from None
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise GenericOpError(f"{path!r} is not a torch.nn.Module class", "op")
    return cls


@cache
def _constructor_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments `cls(...)` takes, and whether it takes any keyword (`**kwargs`).

    torch's RNN classes are declared `__init__(self, *args, **kwargs)` with typed overloads; their
    overloads are the real signature. A class without an `__init__` of its own takes nothing.
    """
    import torch

    if cls.__init__ is torch.nn.Module.__init__:
        return {}, False
    try:
        signatures = [inspect.signature(cls.__init__)]
    except (TypeError, ValueError):  # a constructor inspect cannot read: let torch judge its arguments
        return {}, True
    named = _keyword_parameters(signatures[0])
    if not named:
        overloads = [inspect.signature(o) for o in typing.get_overloads(cls.__init__)]
        if any(_keyword_parameters(s) for s in overloads):
            signatures = [s for s in overloads if _keyword_parameters(s)]
    parameters = {name: p for s in signatures for name, p in _keyword_parameters(s).items()}
    takes_any = any(p.kind is p.VAR_KEYWORD for s in signatures for p in s.parameters.values())
    return parameters, takes_any


def _keyword_parameters(signature: inspect.Signature) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in signature.parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
