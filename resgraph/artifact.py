"""Saved models (`.pt`): weights plus the build record, in a file `torch.load(weights_only=True)` reads.

The file stores what the rebuild needs (the spec text, parameter overrides, the imported block
libraries' texts, the import prefixes the build was allowed), so loading it reads nothing else, and
what a state_dict leaves out (`model.Modes`: train/eval mode, per submodule, and the frozen
parameters), so a model comes back as it was saved, as a pickled one does.
Import permission is never taken from the file: the caller of `load` grants it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

from .errors import UsageError, shortened
from .expressions import value_size
from .files import atomic_write, path_name
from .loader import MAX_BYTES
from .model import CompiledModule, built_model, modes, rebuild, restore_modes
from .ops.base import dtype_name
from .pipeline import DEFAULT_MAX_PARAMS, BuildRecord
from .torch_files import hollow_tensor, read_torch_file

__all__ = ["ARTIFACT_FORMAT", "MAX_LIBRARIES", "load", "save"]

ARTIFACT_FORMAT = "resgraph.model/1"
MAX_LIBRARIES = 1_000  # stored block libraries; a spec imports a handful
MAX_OVERRIDE_SIZE = 100_000  # characters and items of the stored parameter overrides


def save(module: CompiledModule, path: str) -> None:
    """Write `module`'s weights and build record to `path` atomically (a wrapper's: its model's, see
    `model.built_model`).

    Raises:
        UsageError: the weights are not what `load` can restore: on the meta device (nothing to
            save), sharded (FSDP2 DTensors), or of another dtype than the spec builds (a model
            converted with `.half()`: `load` rebuilds the spec as written, so it would not get them back).
        OSError: the file cannot be written, the disk is full included (an existing file is left
            as it was, and no temporary file remains).
    """
    import torch

    module = built_model(module, "save")  # (torch.compile's wrapper: its state_dict's keys are prefixed)
    record = module.build_record
    _check_savable(module)
    payload = {"format": ARTIFACT_FORMAT, "spec": record.spec, "spec_file": record.file,
               "params": dict(record.params), "allow_imports": list(record.allow_imports),
               "imports": None if record.imports is None else [list(pair) for pair in record.imports],
               "input_shapes": {k: list(v) for k, v in record.input_shapes.items()},
               "version": record.version, "modes": modes(module)._asdict(),
               "state_dict": module.state_dict()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            stream = _WriteFailures(handle)
            try:
                torch.save(payload, stream)
            except RuntimeError as exc:
                if stream.failure is not None:
                    raise stream.failure from None
                raise OSError(f"torch could not write the file ({str(exc).strip().splitlines()[0]})") from None

    atomic_write(path, write)


class _WriteFailures:
    """A binary file that keeps what its `write` raised: torch's zip writer, calling `write`,
    turns any exception there (a full disk's OSError, Ctrl-C's KeyboardInterrupt) into a
    RuntimeError that names neither ("unexpected pos 704 vs 598"), so `save` raises the kept one."""

    __slots__ = ("handle", "failure")

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.failure: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except BaseException as exc:
            self.failure = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def load(path: str | os.PathLike[str], *, allow_imports: Iterable[str] = (),
         max_params: int | None = DEFAULT_MAX_PARAMS) -> CompiledModule:
    """Rebuild a saved module from its stored build record and restore its weights.

    Loading reads nothing but the file itself: the spec and the block libraries it imports are
    the texts stored at build time (a library edited or removed since changes nothing), and a
    library the stored spec imports but the file does not hold is an error. The stored spec is
    always read as text, never as a path, and the rebuild applies every bound a build applies
    (spec size and nesting, expansion size, expression values, `max_params` before any weight
    is allocated).

    Args:
        allow_imports: module prefixes the model may import layers from; a model saved from a
            build with `--allow-import P` needs P here too (the file's own list is not trusted).
        max_params: the same limit `build` applies, checked before any weight is allocated.
    Raises:
        UsageError: the file is missing, not a regular file, not a resgraph artifact or missing
            a part of one, or it needs imports not allowed; or its weights do not fit its spec: a
            tensor missing, extra, of another shape or dtype, or tied parameters (`tie:`) stored
            with different values (as every other part of a file that is not what `save` wrote).
        SpecError: the stored spec is invalid (e.g. from a newer resgraph) or over a bound.
    """
    import torch

    name = path_name(path, "load's path")
    payload = read_torch_file(name, expected="a saved model is a .pt file",
                              unreadable="not a readable resgraph model file")
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise UsageError(f"{name}: not a resgraph model file (no {ARTIFACT_FORMAT!r} marker)")
    record = _record(payload, name)
    state = payload.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
        raise UsageError(f"{name}: not a complete resgraph model file (its weights are missing or not tensors)")
    # (`save` writes dense tensors with data; copying from a meta one failed in torch's words, "an
    # exception occurred", of two equal shapes)
    hollow = hollow_tensor(state)
    if hollow is not None:
        raise UsageError(f"{name}: not a complete resgraph model file (its weights are not dense tensors with "
                         f"values: {hollow})")
    module = rebuild(record, allow_imports=allow_imports, max_params=max_params, meta_hint=False)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise UsageError(f"{name}: the stored weights do not match the stored spec ({detail})") from None
    problems = _dtype_problems(module.state_dict(), state) + _tie_problems(module, state)
    if result.missing_keys:
        problems.append(f"missing weights: {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected weights: {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise UsageError(f"{name}: the stored weights do not match the stored spec ({'; '.join(problems)})")
    _restore_modes(module, payload.get("modes"), name)
    return module


def _restore_modes(module: CompiledModule, stored: Any, name: str) -> None:
    """Put the saved train/eval modes and frozen parameters back (a file written before they were
    kept has none: the model stays as built, in training mode with every parameter trainable).

    Raises:
        UsageError: the stored modes are not what `save` writes, or name a parameter or submodule
            the stored spec does not build.
    """
    if stored is None:
        return
    if not isinstance(stored, dict):
        problem = f"a {type(stored).__name__}, not a mapping"
    elif not isinstance(stored.get("training"), bool):
        problem = f"'training' is {shortened(repr(stored.get('training')), 80)}, not true or false"
    else:
        lists = ("frozen", "flipped")
        wrong = [key for key in lists if not (isinstance(stored.get(key), list)
                                              and all(isinstance(item, str) for item in stored[key]))]
        problem = f"{wrong[0]!r} is {shortened(repr(stored.get(wrong[0])), 80)}, not a list of names" if wrong else None
    if problem is not None:
        raise UsageError(f"{name}: not a complete resgraph model file (its train/eval modes are not what "
                         f"resgraph.save writes: {problem})")
    parameters = {key for key, _ in module.named_parameters(remove_duplicate=False)}
    submodules = {key for key, _ in module.named_modules() if key}
    unknown = [f"parameter {key!r}" for key in stored["frozen"] if key not in parameters]
    unknown += [f"submodule {key!r}" for key in stored["flipped"] if key not in submodules]
    if unknown:
        raise UsageError(f"{name}: the stored modes do not match the stored spec (it builds no "
                         f"{', no '.join(unknown[:5])})")
    restore_modes(module, stored["training"], stored["frozen"], stored["flipped"])


def _check_savable(module: CompiledModule) -> None:
    """Refuse a model whose weights a `.pt` file cannot hold as `load` would restore them.

    Raises:
        UsageError: a tensor is on the meta device, a DTensor (FSDP2 shard), or of another dtype
            than a build of the module's spec gives it; a submodule was replaced after the build.
    """
    from .distributed import require_unsharded
    from .lower import require_weights
    from .model import meta_module, require_as_built
    from .ops.generic import allowed_imports

    require_weights(module, "save")
    state = module.state_dict()
    require_unsharded(module, "a .pt file", state)
    with allowed_imports(module.build_record.allow_imports):
        rebuilt = meta_module(module.graph)  # what a rebuild gives (modules, dtypes), allocating nothing
    require_as_built(module, "a .pt file", rebuilt)
    problems = _dtype_problems(rebuilt.state_dict(), state)
    if problems:
        raise UsageError(f"cannot save {type(module).__name__} as a .pt file: {problems[0]}; resgraph.load rebuilds "
                         "the spec as written and would not restore it. Convert it back (e.g. model.float()), or "
                         "save its state_dict with torch.save")


def _dtype_problems(built: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """One line per tensor whose stored dtype differs from the built one (load_state_dict would convert it
    silently: a float16 weight rounded, an int64 one made float)."""
    wrong = [f"{key} is {dtype_name(tensor.dtype)}, but the spec builds {dtype_name(built[key].dtype)}"
             for key, tensor in stored.items() if key in built and tensor.dtype != built[key].dtype]
    return wrong[:1] + ([f"and {len(wrong) - 1} more of another dtype"] if len(wrong) > 1 else [])


def _tie_problems(module: CompiledModule, stored: Mapping[str, Any]) -> list[str]:
    """One line per tie (`tie: {weight: wte.weight}`) whose two names hold different values in the file.

    Both names of a tied parameter are stored, and loading copies each into the one tensor, so
    without this check the later one would silently win.
    """
    import torch

    from .ownership import tied_parameters

    problems = []
    for tie in tied_parameters(module.graph):
        own, target = stored.get(tie.path), stored.get(tie.target)
        if own is not None and target is not None and not (own.shape == target.shape and torch.equal(own, target)):
            problems.append(f"{tie.path} is tied to {tie.target}, but the file holds different values for them")
    return problems


def _record(payload: dict[Any, Any], name: str) -> BuildRecord:
    """The build record stored in a payload, every part checked for type and size.

    Raises:
        UsageError: a part is missing or malformed (a file not written by resgraph).
    """
    def broken(what: str) -> UsageError:
        return UsageError(f"{name}: not a complete resgraph model file ({what})")

    spec = payload.get("spec")
    if not isinstance(spec, str) or not spec.strip():
        raise broken("it holds no spec")
    if len(spec) > MAX_BYTES:
        raise broken(f"its spec is larger than {MAX_BYTES // 2**20} MiB")
    file = payload.get("spec_file")
    if file is not None and not isinstance(file, str):
        raise broken("its spec's file name is not text")
    params = payload.get("params") or {}
    # Sized first: a bounded count also proves the data has no cycle for `_plain` to walk around.
    if not isinstance(params, dict) or value_size(params, MAX_OVERRIDE_SIZE) > MAX_OVERRIDE_SIZE \
            or not all(isinstance(k, str) for k in params) or not _plain(params):
        raise broken("its parameter overrides are not plain data of a reasonable size")
    prefixes = payload.get("allow_imports") or []
    if not isinstance(prefixes, (list, tuple)) or not all(isinstance(p, str) for p in prefixes):
        raise broken("its import prefixes are not a list of names")
    # Libraries come from the file only: a record without them (None) would read the disk.
    stored = payload.get("imports") or []
    if not isinstance(stored, (list, tuple)) or len(stored) > MAX_LIBRARIES or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            and len(pair[1]) <= MAX_BYTES for pair in stored):
        raise broken("its block libraries are not a list of (path, text) pairs")
    shapes = payload.get("input_shapes") or {}
    if not isinstance(shapes, dict) or len(shapes) > MAX_LIBRARIES or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and len(v) <= 16
            and all(isinstance(d, int) and not isinstance(d, bool) for d in v) for k, v in shapes.items()):
        raise broken("its input shapes are not lists of whole numbers")
    version = payload.get("version")
    return BuildRecord(spec=spec, file=file or name, params=params, allow_imports=tuple(prefixes),
                       imports=tuple((p, t) for p, t in stored),
                       input_shapes={k: tuple(v) for k, v in shapes.items()},
                       version=version if isinstance(version, str) else "unknown")


def _plain(value: Any) -> bool:
    """True for YAML-like data: None, booleans, numbers, strings, and lists and str-keyed dicts of them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif item is not None and not isinstance(item, (bool, int, float, str)):
            return False
    return True
