"""What torch does with an uncurated op: one meta-device build per distinct configuration.

An uncurated class (any torch.nn class without a curated model, a registered class, an allowed
import) has no shape function, so resgraph builds it on the meta device (shapes, no storage) and
calls it on two batches of different sizes. That answers three questions at once:

- the per-sample output type (the value the rest of the graph sees);
- the parameter count, so the `--max-params` check needs no weights either;
- whether the batch stays dim 0: an op whose output does not lead with the batch, or whose
  per-sample output changes with the batch size, drops or mixes samples (`CosineSimilarity(dim=0)`,
  a loss with `reduction: mean`, a GRU's final state), and is refused.

Answers (and refusals) are cached per (class, arguments, input types, picked output): a spec that
uses one registered op a hundred times builds it once.

>>> import torch
>>> found = probe(torch.nn.Bilinear, {"in1_features": 4, "in2_features": 5, "out_features": 3},
...               (TensorType((4,), layout="features_last"), TensorType((5,), layout="features_last")))
>>> found.output.shape, found.parameters
((3,), 63)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import DTYPES, FLOAT_DTYPES, FRESH, ShapeError, Storage, TensorType, dtype_name

__all__ = ["PROBE_BATCH_SIZES", "GenericOpError", "Probe", "describe", "known_parameters", "probe"]

# Two different sizes: an op that reads the batch as data cannot give both the same per-sample shape.
PROBE_BATCH_SIZES = (2, 3)
CACHE_SIZE = 1024


class GenericOpError(ShapeError):
    """An uncurated op's name or arguments are wrong (not its shapes); `field` is the key to blame."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Probe:
    """One configuration's facts: its per-sample output type, its parameter count, and how its output
    shares memory with its inputs (what the in-place check follows)."""

    output: TensorType
    parameters: int
    storage: Storage = FRESH


@dataclass(frozen=True)
class _Refusal:
    """A cached refusal; raised afresh each time (re-raising one exception object grows its traceback)."""

    message: str
    field: str | None

    def error(self) -> ShapeError:
        return ShapeError(self.message) if self.field is None else GenericOpError(self.message, self.field)


_PROBES: OrderedDict[tuple[Any, ...], Probe | _Refusal] = OrderedDict()
_PARAMETERS: OrderedDict[tuple[Any, ...], int] = OrderedDict()
_LOCK = threading.Lock()  # builds may run in threads; a probe itself runs unlocked (two may race: both are right)


def probe(cls: type, args: Mapping[str, Any], inputs: tuple[TensorType, ...], pick: int | None = None) -> Probe:
    """Build `cls(**args)` on the meta device and call it on batches of each `PROBE_BATCH_SIZES`.

    Args:
        args: the full constructor arguments (plain data: numbers, strings, booleans, None, tuples).
        inputs: the per-sample types of the values it is called with.
        pick: the element of a tuple result that is the layer's value (the spec's `output:`).
    Returns:
        the per-sample output type and the parameter count, computed once per distinct arguments.
    Raises:
        ShapeError: torch refused the arguments or the inputs, or the op drops or mixes the batch.
        GenericOpError: the same, blamed on one key (`op` for lazy modules, `output` for the pick).
    """
    key = (cls, _frozen_key(args), inputs, pick)
    with _LOCK:
        found = _PROBES.get(key)
        if found is not None:
            _PROBES.move_to_end(key)
    if found is None:
        try:
            found = _probe(cls, args, inputs, pick)
        except GenericOpError as exc:
            found = _Refusal(str(exc), exc.field)
        except ShapeError as exc:
            found = _Refusal(str(exc), None)
        with _LOCK:
            _remember(_PROBES, key, found)
            if isinstance(found, Probe):
                _remember(_PARAMETERS, key[:2], found.parameters)
    if isinstance(found, _Refusal):
        raise found.error()
    return found


def known_parameters(cls: type, args: Mapping[str, Any]) -> int | None:
    """The parameter count a successful `probe` of these arguments found, else None."""
    with _LOCK:
        return _PARAMETERS.get((cls, _frozen_key(args)))


def describe(cls: type, args: Mapping[str, Any]) -> str:
    """`CosineSimilarity(dim=0)`: how messages name one configuration of a class."""
    return f"{cls.__name__}(" + ", ".join(f"{name}={value!r}" for name, value in args.items()) + ")"


def _remember(cache: OrderedDict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
    cache[key] = value
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def _frozen_key(args: Mapping[str, Any]) -> tuple[Any, ...]:
    """A hashable key that tells 1, 1.0 and True apart (they are equal, and hash alike, in Python)."""

    def tagged(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return (type(value).__name__, tuple(tagged(v) for v in value))
        return (type(value).__name__, value)

    return tuple(sorted((name, tagged(value)) for name, value in args.items()))


def _probe(cls: type, args: Mapping[str, Any], inputs: tuple[TensorType, ...], pick: int | None) -> Probe:
    import torch
    from torch.nn.parameter import is_lazy

    described = describe(cls, args)
    with torch.device("meta"):
        try:
            module = cls(**args)
        except Exception as exc:  # an arbitrary constructor: torch reports bad arguments in many types
            raise ShapeError(f"{described} could not be built: {first_line(exc)}") from None
        if any(is_lazy(t) for t in (*module.parameters(), *module.buffers())):
            raise GenericOpError(f"{described} creates its weights at its first call, after resgraph has checked "
                                 "shapes and the parameter limit; use a class whose sizes are constructor arguments "
                                 "(resgraph infers in_features, in_channels, ... from the input)", "op")
        parameters = _count(module)
        outputs: dict[int, Any] = {}
        refusals: dict[int, str] = {}
        facts = _StorageFacts()
        # The first call runs in train mode, the second in eval mode: the shapes must agree, and
        # the calls also show how the output shares memory with the inputs (see `_StorageFacts`).
        for batch, training in zip(PROBE_BATCH_SIZES, (True, False)):
            module.train(training)
            tensors = _probe_inputs(batch, inputs)
            versions = [t._version for t in tensors]
            try:
                with torch.enable_grad():
                    outputs[batch] = module(*tensors)
            except Exception as exc:  # torch reports bad shapes in many exception types
                refusals[batch] = first_line(exc)
                continue
            facts.see(tensors, versions, outputs[batch], pick)
        if _count(module) != parameters:
            raise ShapeError(f"{described} creates parameters when it is called; resgraph needs every parameter "
                             "to exist once it is constructed (to count them and to load a state_dict)")
    if len(refusals) == len(PROBE_BATCH_SIZES):
        why = refusals[PROBE_BATCH_SIZES[0]]
        if "meta" in why.lower():  # torch has no meta kernel for it: its shapes cannot be known without storage
            raise ShapeError(f"{described} cannot be checked without allocating storage, which resgraph does only "
                             f"after every check: it does not run on torch's meta device ({why})")
        raise ShapeError(f"{described} rejected input {', '.join(map(str, inputs))}: {why}")
    if refusals:
        (accepted,), (refused, why) = outputs, next(iter(refusals.items()))
        raise ShapeError(f"{described} accepts a batch of {accepted} but not of {refused} ({why}): an op whose "
                         "arguments depend on the batch size reads the batch as data")
    values = {batch: _picked(described, out, pick) for batch, out in outputs.items()}
    if not any(True for _ in module.buffers()):
        _check_kernels(cls, args, inputs, parameters, described)
    return Probe(_per_sample_type(described, values, inputs), parameters, facts.storage())


# A CPU run (see _check_kernels) stays this small: it allocates its inputs for real.
KERNEL_CHECK_ELEMENTS = 1 << 16


def _check_kernels(cls: type, args: Mapping[str, Any], inputs: tuple[TensorType, ...], parameters: int,
                   described: str) -> None:
    """Integer and bool inputs: the meta device checks shapes but not whether a kernel exists for a
    dtype (RReLU has none for int64), so a module without weights (no parameter may exist before the
    parameter limit is checked) runs once on the CPU, on small zero inputs, in train and in eval
    mode. Modules with weights, and larger inputs, are left to torch.

    Raises:
        ShapeError: torch has no kernel for an input's dtype.
    """
    import math

    import torch

    if all(t.dtype in FLOAT_DTYPES for t in inputs) or parameters or any(
            math.prod(t.shape) > KERNEL_CHECK_ELEMENTS for t in inputs):
        return
    try:
        with torch.device("cpu"), torch.no_grad():
            module = cls(**args)
            tensors = [torch.zeros((PROBE_BATCH_SIZES[0], *t.shape), dtype=getattr(torch, t.dtype)) for t in inputs]
            for training in (True, False):
                module.train(training)
                module(*tensors)
    except Exception as exc:  # noqa: BLE001  torch reports missing kernels in several exception types
        dtypes = ", ".join(sorted({t.dtype for t in inputs}))
        raise ShapeError(f"{described} cannot compute on {dtypes} values: {first_line(exc)}") from None


def _probe_inputs(batch: int, inputs: tuple[TensorType, ...]) -> list[Any]:
    """Meta tensors for one call: float ones require grad (so autograd records what it keeps) and are
    not leaves (autograd refuses in-place writes into a leaf that requires grad, which a model's
    inner values never are).

    Raises:
        ShapeError: an input has more elements than any tensor can (torch refuses to create it).
    """
    import torch

    tensors = []
    for t in inputs:
        try:
            tensor = torch.empty((batch, *t.shape), dtype=getattr(torch, t.dtype))
        except RuntimeError as exc:  # more elements than an int64 byte count holds: no tensor can have them
            raise ShapeError(f"input {t} is too large for any tensor ({first_line(exc)})") from None
        tensors.append(tensor.requires_grad_() * 1 if t.dtype in FLOAT_DTYPES else tensor)
    return tensors


class _StorageFacts:
    """How a module's output shares memory with its inputs, seen on the meta device, where views,
    version counters and autograd work as on real tensors: whether it returns an input or a view of
    one (in train or in eval mode: a dropout returns its input in eval), whether it writes an input in
    place (its version counter moves), and whether autograd keeps the output for backward."""

    def __init__(self) -> None:
        self.aliases: int | None = None
        self.writes: int | None = None
        self.saves = False

    def see(self, tensors: list[Any], versions: list[int], out: Any, pick: int | None) -> None:
        import torch

        if pick is not None and isinstance(out, (tuple, list)) and -len(out) <= pick < len(out):
            out = out[pick]
        if not isinstance(out, torch.Tensor):
            return  # _picked says why
        if self.writes is None:
            self.writes = next((i for i, (t, v) in enumerate(zip(tensors, versions)) if t._version != v), None)
        for index, t in enumerate(tensors):
            if self.aliases is None and (out is t or out._base is t or (t._base is not None and out._base is t._base)):
                self.aliases = index
        kept = out if out._base is None else out._base
        self.saves = self.saves or (kept.grad_fn is not None
                                    and any(name.startswith("_saved_result") for name in dir(kept.grad_fn)))

    def storage(self) -> Storage:
        return Storage(self.aliases, self.writes, self.saves)


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _picked(described: str, out: Any, pick: int | None) -> Any:
    """The layer's value from the module's result: the whole result, or element `pick` of a tuple."""
    import torch

    if pick is not None:
        if not isinstance(out, (tuple, list)) or not isinstance(pick, int) or not -len(out) <= pick < len(out):
            size = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else "a single tensor"
            raise GenericOpError(f"output: {pick!r} does not index the result, which is {size}", "output")
        out = out[pick]
    if not isinstance(out, torch.Tensor):
        what = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        if pick is not None:  # (an LSTM's element 1 is (h_n, c_n): `output:` picks from the result's own tuple)
            raise ShapeError(f"element {pick} of what {described} returns is {what}, not a tensor; `output:` picks "
                             "one element of the result, and a layer's value is a tensor")
        hint = "; pick one element with `output: 0`" if isinstance(out, (tuple, list)) else ""
        raise ShapeError(f"{described} returns {what}, not a tensor{hint}")
    return out


def _per_sample_type(described: str, values: dict[int, Any], inputs: tuple[TensorType, ...]) -> TensorType:
    """The output's per-sample type, after checking that every batch size keeps the batch as dim 0."""
    shapes = {batch: tuple(value.shape) for batch, value in values.items()}
    seen = ", ".join(f"a batch of {batch} gives {TensorType(shape)}" for batch, shape in shapes.items())
    if any(not shape or shape[0] != batch for batch, shape in shapes.items()):
        raise ShapeError(f"{described} does not keep the batch as dim 0 ({seen}, batch included): it drops or mixes "
                         "samples, but every resgraph layer maps a batch (N, ...) to (N, ...); the batch is dim 0 in "
                         "every resgraph model, so dims an op reduces or mixes start at 1")
    per_sample = {shape[1:] for shape in shapes.values()}
    if len(per_sample) > 1:
        raise ShapeError(f"{described} gives each sample a shape that depends on the batch size ({seen}, batch "
                         "included): it reads the batch as data")
    value = next(iter(values.values()))
    dtype = dtype_name(value.dtype)
    if dtype not in DTYPES:
        raise ShapeError(f"{described} returns {dtype} values; resgraph types values as {', '.join(DTYPES)}")
    shape = per_sample.pop()
    if 0 in shape and all(0 not in t.shape for t in inputs):
        # (the meta device computes an empty size where the CPU kernel refuses it: an upsample by 0.6 of 1)
        raise ShapeError(f"{described} gives input {', '.join(map(str, inputs))} an empty output "
                         f"{TensorType(shape)}: every size must stay at least 1 (most ops refuse an empty output "
                         "when the model runs; the meta device, where shapes are checked, does not)")
    layout = inputs[0].layout if inputs and len(shape) == inputs[0].rank else (
        "channels_first" if len(shape) >= 3 else "features_last")
    return TensorType(shape, dtype, layout)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, control characters escaped (it is echoed to a terminal)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)
