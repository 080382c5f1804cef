"""Saved models (`.pt`): weights plus the build record, in a file `torch.load(weights_only=True)` reads.

The file stores what the rebuild needs (the spec text, parameter overrides, the imported block
libraries' texts, the import prefixes the build was allowed), so loading it reads nothing else.
Import permission is never taken from the file: the caller of `load` grants it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ResgraphError, UsageError
from .expressions import value_size
from .files import atomic_write
from .loader import MAX_BYTES, os_reason
from .model import CompiledModule, rebuild
from .pipeline import DEFAULT_MAX_PARAMS, BuildRecord

__all__ = ["ARTIFACT_FORMAT", "MAX_LIBRARIES", "load", "save"]

ARTIFACT_FORMAT = "resgraph.model/1"
MAX_LIBRARIES = 1_000  # stored block libraries; a spec imports a handful
MAX_OVERRIDE_SIZE = 100_000  # characters and items of the stored parameter overrides


def save(module: CompiledModule, path: str) -> None:
    """Write `module`'s weights and build record to `path` atomically.

    Raises:
        OSError: the file cannot be written, the disk is full included (an existing file is left
            as it was, and no temporary file remains).
    """
    import torch

    record = module.build_record
    payload = {"format": ARTIFACT_FORMAT, "spec": record.spec, "spec_file": record.file,
               "params": dict(record.params), "allow_imports": list(record.allow_imports),
               "imports": None if record.imports is None else [list(pair) for pair in record.imports],
               "input_shapes": {k: list(v) for k, v in record.input_shapes.items()},
               "version": record.version,
               "state_dict": module.state_dict()}

    def write(tmp: str) -> None:
        # Through a Python file object, so a failed write (ENOSPC) is the OSError it is; torch's
        # own file writer reports it as a RuntimeError with no reason.
        with open(tmp, "wb") as handle:
            try:
                torch.save(payload, handle)
            except RuntimeError as exc:
                raise OSError(f"torch could not write the file ({str(exc).strip().splitlines()[0]})") from None

    atomic_write(path, write)


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
            a part of one, or it needs imports not allowed.
        SpecError: the stored spec is invalid (e.g. from a newer resgraph) or over a bound.
        ResgraphError: the stored weights do not fit the stored spec.
    """
    import torch

    name = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):  # checked before opening: a FIFO would block
            raise UsageError(f"{name}: not a regular file; a saved model is a .pt file")
        with open(name, "rb") as handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({os_reason(exc)})") from None
    except Exception as exc:  # torch raises many types for a corrupt, empty or foreign file
        raise UsageError(f"{name}: not a readable resgraph model file ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise UsageError(f"{name}: not a resgraph model file (no {ARTIFACT_FORMAT!r} marker)")
    record = _record(payload, name)
    state = payload.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
        raise UsageError(f"{name}: not a complete resgraph model file (its weights are missing or not tensors)")
    module = rebuild(record, allow_imports=allow_imports, max_params=max_params)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ResgraphError(f"{name}: the stored weights do not match the stored spec ({detail})") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing weights: {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected weights: {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise ResgraphError(f"{name}: the stored weights do not match the stored spec ({'; '.join(problems)})")
    return module


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
