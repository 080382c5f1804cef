"""Loading a checkpoint written by another implementation of the same architecture.

`load_weights(model, checkpoint)` matches the checkpoint's tensors to the model's in three steps:

1. `rename` (optional) rewrites checkpoint keys first: a mapping of key prefixes
   (`{"features.0": "stem"}`; a value of None drops the keys under that prefix) or a function
   from a key to its new name (None drops it).
2. **By name**: a checkpoint key equal to a model key, with the same shape, is that tensor.
3. **By module order and shapes**: the tensors left over are grouped by module (the key up to its
   last dot: `features.0.1` holds `weight`, `bias`, `running_mean`, `running_var`), each module
   described by the shapes of its tensors in order (a tensor of the root module is a module of
   its own: `class_token`, `pos_embed`), and the modules, in state_dict order (the
   order they were registered), into units: a module with weights of two or more dims (a conv, a
   linear layer) and the vector-only modules registered right after it (its norm). Units of the
   same shapes are paired in order: the k-th of a kind in the model takes the k-th of that kind
   in the checkpoint. So implementations that name modules differently (`features.0` and
   `stem`) line up, and so do a projection registered before its target in one and after it in
   the other (a conv keeps its norm). Units of the same kind must come in the same order on both
   sides: two equal blocks registered in swapped order cannot be told apart by any reader.

The match is refused, with a report, when it is ambiguous (a kind of module occurs a different
number of times on the two sides, so it cannot be told which are extra) or partial (a model
tensor receives nothing, or a checkpoint tensor is used nowhere), unless `strict=False`, which
loads what matched and reports the rest. Tied parameters are one tensor, loaded once (a
checkpoint that saved a model's tie as two tensors loads when they are equal); a tied
checkpoint's tensor loads an untied model's two by their names; BatchNorm's
`num_batches_tracked` counters follow their module and are never required. The mapping used is
logged (logger `resgraph.weights`) and returned.

Only local files (`torch.load(..., weights_only=True)`) and in-memory state_dicts are read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .distributed import fill, is_dtensor
from .errors import ResgraphError, UsageError
from .ops.base import dtype_name
from .torch_files import hollow_tensor, read_torch_file

__all__ = ["Rename", "WeightMapping", "WeightsError", "load_weights"]

logger = logging.getLogger("resgraph.weights")

Rename = Mapping[str, "str | None"] | Callable[[str], "str | None"]
COUNTERS = ("num_batches_tracked",)  # buffers that count steps: follow their module, never required
MAX_LISTED = 20  # items of each kind a refusal names before counting the rest
WRAPPERS = ("state_dict", "model_state_dict", "model")  # checkpoint dicts that hold the state_dict under a key


@dataclass(frozen=True)
class WeightMapping:
    """How a checkpoint was matched to a model.

    Attributes:
        pairs: (model key, checkpoint key, how) for every tensor loaded; how is "name" or "order".
        missing: model keys that received nothing.
        unexpected: checkpoint keys (after `rename`) that were used nowhere.
        ambiguous: one line per kind of module whose modules could not be paired.
        loaded: whether the tensors were copied into the model.
        mismatched: (key, the model's shape, the checkpoint's shape) for each key both sides hold
            with different shapes (another `num_classes`, a transposed weight), left unloaded;
            such a key is neither missing nor unexpected.
        other_kinds: (model key, checkpoint key, the model's dtype, the checkpoint's) for each pair whose
            checkpoint tensor holds another kind of number (see `dtype_kind`): refused whatever `strict` says.
        details: what the report says after each key listed as missing (`("model", key)`) or
            unexpected (`("checkpoint", key)`): its shape, and for a model's tied name, the tie.
    """

    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    loaded: bool = False
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    other_kinds: list[tuple[str, str, torch.dtype, torch.dtype]] = field(default_factory=list)
    details: dict[tuple[str, str], str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        """True when every model tensor was matched and every checkpoint tensor used."""
        return not (self.missing or self.unexpected or self.ambiguous or self.mismatched)

    def as_dict(self) -> dict[str, str]:
        """Model key -> the checkpoint key loaded into it."""
        return {ours: theirs for ours, theirs, _ in self.pairs}

    def report(self, *, pairs: bool = True, limit: int | None = None) -> str:
        """The mapping as text: counts, every pair matched by order (with `pairs`), and what did not match.

        `limit`: name at most this many items of each list (pairs, mismatched, missing, ...) and count
        the rest, so that a checkpoint of another architecture gives a report one can read.
        """
        by_name = sum(1 for *_, how in self.pairs if how == "name")
        lines = [f"{len(self.pairs)} tensors matched: {by_name} by name, {len(self.pairs) - by_name} by module "
                 "order and shapes"]
        if pairs:
            lines += _bounded([f"  {ours} <- {theirs}" for ours, theirs, how in self.pairs if how == "order"], limit)
        if self.other_kinds:
            lines.append(f"{len(self.other_kinds)} with another kind of number in the checkpoint (not loaded):")
            lines += _bounded([f"  {_kinds(*pair)}" for pair in self.other_kinds], limit)
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} with another shape in the checkpoint (not loaded):")
            transposed = (" (its transpose, as Hugging Face's Conv1D stores a Linear's weight: transpose every such "
                          "weight before loading, square ones too, which load untransposed unnoticed)")
            lines += _bounded([f"  {key}: the model's is {_shape(ours)}, the checkpoint's {_shape(theirs)}"
                               + (transposed if len(ours) == 2 and ours != theirs and ours == theirs[::-1] else "")
                               for key, ours, theirs in self.mismatched], limit)
        for title, items, side in (("ambiguous", self.ambiguous, ""),
                                   ("missing from the checkpoint", self.missing, "model"),
                                   ("unexpected in the checkpoint", self.unexpected, "checkpoint")):
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += _bounded([f"  {item}" + (f" {self.details[side, item]}" if (side, item) in self.details
                                                  else "") for item in items], limit)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


class WeightsError(ResgraphError):
    """A checkpoint does not match the model (ambiguously or partially); `mapping` says how far it got."""

    def __init__(self, message: str, mapping: WeightMapping) -> None:
        super().__init__(message)
        self.mapping = mapping


def load_weights(model: nn.Module, state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str], *,
                 rename: Rename | None = None, strict: bool = True) -> WeightMapping:
    """Load a checkpoint of the same architecture into `model`, matching by name, then by module
    order and tensor shapes (see the module docstring).

    Args:
        model: any nn.Module (usually one `resgraph.build` returned).
        state_dict_or_path: a state_dict, or a local file `torch.load` reads (tensors only; a dict
            holding the state_dict under "state_dict", "model_state_dict" or "model" is unwrapped).
        rename: checkpoint key prefixes to replace (`{"backbone.": ""}` style, whole dotted parts),
            or a function from a key to its new name; None (either way) drops the key.
        strict: refuse an ambiguous or partial match (nothing is loaded); False loads what matched.
    Returns:
        The mapping used (also logged to the `resgraph.weights` logger).
    Raises:
        WeightsError: with `strict`, the match is ambiguous or partial; the message is the report. With
            or without it, a checkpoint tensor holds another kind of number than the model's it would
            load into (int64 or bool into float32: `dtype_kind`); nothing is loaded. The message names
            every problem (at most MAX_LISTED of each kind, counting the rest), so one run says them all.
        UsageError: the file cannot be read, or holds something other than tensors; or the model is
            on the meta device (materialize it first). A sharded (FSDP2) model loads, each process
            keeping its shard of the checkpoint every process reads.
    """
    target = model.state_dict(keep_vars=True)
    empty = next((key for key, tensor in target.items() if tensor.is_meta), None)
    if empty is not None:  # (copy_ into a meta tensor does nothing: every tensor "loaded", none held)
        raise UsageError(f"cannot load weights into {type(model).__name__}: {empty} is on the meta device (built with "
                         "device='meta'), with no storage to hold them; resgraph.materialize the model first, "
                         "then load_weights")
    source = _renamed(_read(state_dict_or_path), rename)
    mapping = match_state_dicts(target, source)
    refusal = _refusal(mapping, strict, os.fspath(state_dict_or_path)
                       if isinstance(state_dict_or_path, (str, os.PathLike)) else "the state_dict")
    if refusal is not None:
        raise WeightsError(refusal, mapping)
    with torch.no_grad():
        for ours, theirs, _ in mapping.pairs:
            fill(target[ours], source[theirs])  # a sharded (FSDP2) tensor keeps its own shard
    mapping = dataclasses.replace(mapping, loaded=True)
    logger.info("load_weights: %s", mapping.report())
    return mapping


def dtype_kind(dtype: torch.dtype) -> str:
    """The kind of number a dtype holds: "floating-point", "complex", "boolean" or "integer".

    A checkpoint's tensor loads into a model's of the same kind only. Within a kind, precision converts,
    as torch's `load_state_dict` converts it: a float16 or float64 checkpoint holds the same weights as
    a float32 model, rounded differently, and converting is what every reference implementation in
    float64 and every half-precision release relies on. Across kinds the values change meaning: an
    int64 tensor (token ids, counts, a tensor saved from the wrong model) made into float weights,
    float weights truncated into a counter, a complex tensor's imaginary part dropped.

    >>> dtype_kind(torch.float16), dtype_kind(torch.int64), dtype_kind(torch.bool)
    ('floating-point', 'integer', 'boolean')
    """
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating-point"
    return "boolean" if dtype == torch.bool else "integer"


def _refusal(mapping: WeightMapping, strict: bool, named: str) -> str | None:
    """Why `mapping` is not loaded, naming every problem at once (each list bounded by MAX_LISTED), so
    that one run says all a checkpoint needs; None when it loads. Tensors of another kind of number are
    refused whatever `strict` says (their values are not the tensor's at any precision); the rest of
    an incomplete match with `strict` only."""
    parts = []
    if len(mapping.other_kinds) == 1:
        parts.append(f"{named}: {_other_kind(*mapping.other_kinds[0])}")
    elif mapping.other_kinds:
        kinds = {dtype_kind(mine): _GIVE[dtype_kind(mine)] for _, _, mine, _ in mapping.other_kinds}
        give = " or ".join(wanted for wanted, _ in kinds.values())
        converts = "; ".join(converts for _, converts in kinds.values() if converts)
        parts.append("\n".join([
            f"{named}: {len(mapping.other_kinds)} tensors hold another kind of number than the model's they would "
            f"load into: copying would convert their values silently, so nothing was loaded. Give {give}"
            + (f" (another precision of one kind converts: {converts})" if converts else "") + ":",
            *_bounded([f"  {_kinds(*pair)}" for pair in mapping.other_kinds], MAX_LISTED)]))
    if strict and not mapping.complete:
        parts.append(("the checkpoint does not match the model either" if parts else
                      "the checkpoint does not match the model") + " (strict=False loads what matched):\n"
                     + dataclasses.replace(mapping, other_kinds=[]).report(pairs=False, limit=MAX_LISTED))
    return "\n".join(parts) if parts else None


def _bounded(lines: list[str], limit: int | None) -> list[str]:
    """`lines`, the first `limit` of them and a count of the rest (all of them when `limit` is None)."""
    if limit is None or len(lines) <= limit:
        return lines
    return [*lines[:limit], f"  ... and {len(lines) - limit} more"]


def _kinds(ours: str, theirs: str, mine: torch.dtype, other: torch.dtype) -> str:
    """The kinds of number of a checkpoint tensor and of the model's it would load into."""
    return (f"{theirs} is {dtype_name(other)} ({dtype_kind(other)}), the model's {ours} is {dtype_name(mine)} "
            f"({dtype_kind(mine)})")


def _other_kind(ours: str, theirs: str, mine: torch.dtype, other: torch.dtype) -> str:
    """A checkpoint tensor holding another kind of number than the model's it would load into, described."""
    wanted, converts = _GIVE[dtype_kind(mine)]
    return (f"{theirs} is {dtype_name(other)} ({dtype_kind(other)}), and the model's {ours} is {dtype_name(mine)} "
            f"({dtype_kind(mine)}): copying would convert its values silently, so nothing was loaded. Give "
            f"{wanted}" + (f" (another precision of one kind converts: {converts})" if converts else ""))


# What to give instead, by the model's kind of number, and an example of what converts within it.
_GIVE = {"floating-point": ("a floating-point tensor", "float16, bfloat16 or float64 weights load into float32"),
         "integer": ("an integer tensor", "int32 or uint8 values load into int64"),
         "complex": ("a complex tensor", "complex128 values load into complex64"),
         "boolean": ("a boolean tensor", None)}


def match_state_dicts(target: Mapping[str, Any], source: Mapping[str, Any]) -> WeightMapping:
    """The mapping from `source` keys to `target` keys (both state_dicts), without loading anything.

    >>> ours = {"stem.weight": torch.zeros(4, 3), "stem.bias": torch.zeros(4), "head.weight": torch.zeros(2, 4)}
    >>> theirs = {"features.0.weight": torch.ones(4, 3), "features.0.bias": torch.ones(4),
    ...           "head.weight": torch.ones(2, 4)}
    >>> for pair in match_state_dicts(ours, theirs).pairs:
    ...     print(pair)
    ('stem.weight', 'features.0.weight', 'order')
    ('stem.bias', 'features.0.bias', 'order')
    ('head.weight', 'head.weight', 'name')
    """
    ours, tied = _distinct(target)
    theirs, aliases = _distinct(source)
    pairs: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for key in ours:  # by name (an alias of a checkpoint tensor may carry the model's name)
        # (so one tensor of a tied checkpoint may load two untied model tensors, each by its own name)
        if key in source and _fits(target[key], source[key]):
            pairs.append((key, key, "name"))
            used.add(aliases.get(key, key))
    matched = {key for key, _, _ in pairs}
    left_ours = _groups([k for k in ours if k not in matched and not _is_counter(k)], target)
    left_theirs = _groups([k for k in theirs if k not in used and not _is_counter(k)], source)
    mine, other = list(left_ours.items()), list(left_theirs.items())
    matches, ambiguous = pair_units([(m, sig) for m, (_, sig) in mine], [(m, sig) for m, (_, sig) in other])
    for i, j in matches:  # by module order and shapes
        (module, (keys, _)), (their_module, (their_keys, _)) = mine[i], other[j]
        pairs += [(key, their_key, "order") for key, their_key in zip(keys, their_keys)]
        used.update(their_keys)
        pairs += _counters(module, their_module, target, source, used)
    position = {key: index for index, key in enumerate(target)}
    pairs.sort(key=lambda pair: position[pair[0]])
    paired = {key for key, _, _ in pairs}
    loaded_from = {ours_key: theirs_key for ours_key, theirs_key, _ in pairs}
    conflicts = {}
    for alias, owner in tied.items():  # a tied model's second name, saved as a tensor of its own
        if alias in theirs and alias not in used and owner in loaded_from and _fits(target[owner], source[alias]):
            if torch.equal(source[alias], source[loaded_from[owner]]):
                used.add(alias)  # the same values: the one tensor, saved twice
            else:
                conflicts[alias] = (f"[tied to {owner} in the model, but its values differ from "
                                    f"{loaded_from[owner]}'s]")
    missing = [k for k in ours if k not in paired and not _is_counter(k)]
    unexpected = [k for k in theirs if k not in used and not _is_counter(k)]
    # A key both sides hold that nothing paired differs in shape: say so, rather than listing the
    # one name as both missing and unexpected
    mismatched = [(k, tuple(target[k].shape), tuple(source[k].shape)) for k in missing if k in unexpected]
    both = {k for k, _, _ in mismatched}
    missing = [k for k in missing if k not in both]
    unexpected = [k for k in unexpected if k not in both]
    details = {**{("model", k): _shape(tuple(target[k].shape)) for k in missing},
               **{("checkpoint", k): " ".join([_shape(tuple(source[k].shape)), *([conflicts[k]] if k in conflicts
                                                                                  else [])])
                  for k in unexpected}}
    other_kinds = [(ours_key, theirs_key, target[ours_key].dtype, source[theirs_key].dtype)
                   for ours_key, theirs_key, _ in pairs
                   if dtype_kind(target[ours_key].dtype) != dtype_kind(source[theirs_key].dtype)]
    return WeightMapping(pairs, missing, unexpected, ambiguous, mismatched=mismatched, other_kinds=other_kinds,
                         details=details)


def _shape(shape: tuple[int, ...]) -> str:
    return f"({', '.join(map(str, shape))})" if len(shape) != 1 else f"({shape[0]},)"


Signature = tuple[tuple[tuple[int, ...], ...], tuple[bool, ...]]  # a module's tensors: shapes, whether each is float


def units(modules: list[tuple[str, Signature]]) -> list[list[int]]:
    """Modules in runs that belong together: each module with a tensor of two or more dims (a conv,
    a linear layer, an embedding) with the vector-only modules registered right after it (its norm,
    a PReLU), as indices into `modules`. Vector-only modules before the first such module form a
    unit of their own.

    >>> conv, norm = ((8, 3, 3, 3),), ((8,), (8,))
    >>> units([("a", (conv, (True,))), ("b", (norm, (True, True))), ("c", (conv, (True,)))])
    [[0, 1], [2]]
    """
    found: list[list[int]] = []
    for index, (_, (shapes, _)) in enumerate(modules):
        leads = any(len(shape) >= 2 for shape in shapes)
        if leads or not found:
            found.append([index])
        else:
            found[-1].append(index)
    return found


def pair_units(ours: list[tuple[str, Signature]], theirs: list[tuple[str, Signature]]
               ) -> tuple[list[tuple[int, int]], list[str]]:
    """Pairs (i, j) of modules: units (see `units`) of equal shapes, the k-th of a kind on one side
    with the k-th of that kind on the other; and one line per kind the two sides hold a different
    number of times (those are left unpaired: which ones are extra is a guess).

    Pairing units, not single modules, keeps a norm with its conv where a projection (conv and
    norm) is registered before its target in one implementation and after it in the other:
    pairing the k-th norm with the k-th norm would swap two norms of equal shapes.
    """
    def kinds(modules: list[tuple[str, Signature]]) -> dict[tuple[Signature, ...], list[list[int]]]:
        grouped: dict[tuple[Signature, ...], list[list[int]]] = {}
        for unit in units(modules):
            grouped.setdefault(tuple(modules[i][1] for i in unit), []).append(unit)
        return grouped

    mine, other = kinds(ours), kinds(theirs)
    pairs: list[tuple[int, int]] = []
    ambiguous = []
    for kind, found in mine.items():
        matching = other.get(kind, [])
        if matching and len(matching) != len(found):
            names = [", ".join(modules[i][0] or "(root)" for i in unit) for modules, unit in
                     [*((ours, u) for u in found), *((theirs, u) for u in matching)]]
            shapes = "; ".join(", ".join(map(str, signature[0])) for signature in kind)
            ambiguous.append(f"{len(found)} model unit(s) hold tensors {shapes} but {len(matching)} checkpoint "
                             f"unit(s) do: {' | '.join(names)}")
            continue
        for unit, their_unit in zip(found, matching):
            pairs += list(zip(unit, their_unit))
    return sorted(pairs), ambiguous


def _groups(keys: list[str], tensors: Mapping[str, Any]) -> dict[str, tuple[list[str], Signature]]:
    """Module path -> its tensors among `keys` (in order) and their description (shapes, float-ness)."""
    members: dict[str, list[str]] = {}
    # A tensor of the root module beside submodules (a class token, a position table: a top-level
    # `parameter`) is a unit of its own: implementations register such tensors in other orders (and
    # resgraph puts every top-level one there), so tying them into one signature would pair none.
    # Where the root holds every tensor (a bare layer's state_dict: weight, bias), they are one module.
    beside_submodules = any(_module(key) for key in keys)
    for key in keys:
        members.setdefault(_module(key) or (key if beside_submodules else ""), []).append(key)
    return {module: (found, (tuple(tuple(tensors[k].shape) for k in found),
                             tuple(tensors[k].is_floating_point() for k in found)))
            for module, found in members.items()}


def _counters(group: str, theirs_group: str, target: Mapping[str, Any], source: Mapping[str, Any],
              used: set[str]) -> list[tuple[str, str, str]]:
    """The step counters of two paired modules (BatchNorm's num_batches_tracked), when both have one."""
    found = []
    for counter in COUNTERS:
        ours = f"{group}.{counter}" if group else counter
        theirs = f"{theirs_group}.{counter}" if theirs_group else counter
        if ours in target and theirs in source and theirs not in used:
            found.append((ours, theirs, "order"))
            used.add(theirs)
    return found


def _module(key: str) -> str:
    return key.rpartition(".")[0]


def _is_counter(key: str) -> bool:
    return key.rpartition(".")[2] in COUNTERS


def _fits(ours: Any, theirs: Any) -> bool:
    return isinstance(theirs, torch.Tensor) and tuple(ours.shape) == tuple(theirs.shape)


def _distinct(tensors: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The keys of distinct tensors, in order (a tied tensor under its first name), and alias -> first name."""
    first: dict[tuple[Any, ...], str] = {}
    keys, aliases = [], {}
    for key, tensor in tensors.items():
        identity = _identity(tensor)
        if identity in first:
            aliases[key] = first[identity]
            continue
        first[identity] = key
        keys.append(key)
    return keys, aliases


def _identity(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Two names of one tensor (tied weights; a saved tie shares storage) have the same identity."""
    if tensor.device.type == "meta":
        return (id(tensor),)
    if is_dtensor(tensor):  # (an FSDP2 shard: its own storage is its local tensor's)
        tensor = tensor.to_local()
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


def _read(state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        loaded = read_torch_file(os.fspath(state_dict_or_path), expected="a checkpoint is a file torch.save wrote",
                                 unreadable="not a checkpoint torch.load can read safely")
    elif isinstance(state_dict_or_path, Mapping):
        loaded = state_dict_or_path
    else:
        raise UsageError(f"load_weights reads a state_dict or a file path, not a {type(state_dict_or_path).__name__}")
    if isinstance(loaded, Mapping):
        wrapped = [key for key in WRAPPERS if isinstance(loaded.get(key), Mapping)]
        if wrapped and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
            loaded = loaded[wrapped[0]]
    if not isinstance(loaded, Mapping):
        raise UsageError(f"a checkpoint is a mapping of names to tensors, not a {type(loaded).__name__}")
    unnamed = [key for key in loaded if not isinstance(key, str)]
    if unnamed:
        raise UsageError(f"a checkpoint is a mapping of names to tensors; its keys include {unnamed[0]!r} "
                         f"({type(unnamed[0]).__name__}), not a name")
    others = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise UsageError(f"the checkpoint holds entries that are not tensors: {', '.join(map(str, others[:5]))}"
                         + (" ..." if len(others) > 5 else ""))
    hollow = hollow_tensor(loaded)
    if hollow is not None:
        raise UsageError(f"the checkpoint holds a tensor without dense values to load: {hollow}")
    return dict(loaded)


def _renamed(tensors: dict[str, torch.Tensor], rename: Rename | None) -> dict[str, torch.Tensor]:
    if rename is None:
        return tensors
    if not callable(rename):
        if not isinstance(rename, Mapping):
            raise UsageError(f"rename is a mapping of key prefixes ({{'backbone.': ''}}) or a function of a key, "
                             f"not a {type(rename).__name__}")
        odd = next(((old, new) for old, new in rename.items()
                    if not isinstance(old, str) or not (new is None or isinstance(new, str))), None)
        if odd is not None:
            raise UsageError(f"rename maps key prefixes to prefixes (or None: leave those keys out), not "
                             f"{odd[0]!r} to {odd[1]!r}")
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        new = rename(key) if callable(rename) else _by_prefix(key, rename)
        if new is None:
            continue
        if not isinstance(new, str):
            raise UsageError(f"rename gave {new!r} ({type(new).__name__}) for checkpoint key {key!r}: it gives a "
                             "key (a string), or None to leave the key out")
        if new in renamed:
            raise UsageError(f"rename maps two checkpoint keys to {new!r}")
        renamed[new] = tensor
    return renamed


def _by_prefix(key: str, prefixes: Mapping[str, str | None]) -> str | None:
    """`key` with its longest matching prefix (whole dotted parts, or the whole key) replaced."""
    for old in sorted(prefixes, key=len, reverse=True):
        stem = old.rstrip(".")
        if key == stem or key.startswith(stem + ".") or not stem:
            new = prefixes[old]
            if new is None:
                return None
            rest = key[len(stem):].lstrip(".") if stem else key
            return ".".join(part for part in (new.rstrip("."), rest) if part)
    return key
