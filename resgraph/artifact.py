"""Saved models (`.pt`): weights plus the build record, in a file `torch.load(weights_only=True)` reads.

The file stores what the rebuild needs (the spec text, parameter overrides, the imported block
libraries' texts, the import prefixes the build was allowed), so loading it reads nothing else.
Import permission is never taken from the file: the caller of `load` grants it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import ResgraphError, UsageError
from .files import atomic_write
from .model import CompiledModule, rebuild
from .pipeline import DEFAULT_MAX_PARAMS, BuildRecord

__all__ = ["ARTIFACT_FORMAT", "load", "save"]

ARTIFACT_FORMAT = "resgraph.model/1"


def save(module: CompiledModule, path: str) -> None:
    """Write `module`'s weights and build record to `path` atomically.

    Raises:
        OSError: the file cannot be written (an existing file is left as it was).
    """
    import torch

    record = module.build_record
    payload = {"format": ARTIFACT_FORMAT, "spec": record.spec, "spec_file": record.file,
               "params": dict(record.params), "allow_imports": list(record.allow_imports),
               "imports": None if record.imports is None else [list(pair) for pair in record.imports],
               "input_shapes": {k: list(v) for k, v in record.input_shapes.items()},
               "version": record.version,
               "state_dict": module.state_dict()}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | os.PathLike[str], *, allow_imports: Iterable[str] = (),
         max_params: int | None = DEFAULT_MAX_PARAMS) -> CompiledModule:
    """Rebuild a saved module from its stored build record and restore its weights.

    Args:
        allow_imports: module prefixes the model may import layers from; a model saved from a
            build with `--allow-import P` needs P here too (the file's own list is not trusted).
        max_params: the same limit `build` applies, checked before any weight is allocated.
    Raises:
        UsageError: the file is missing or not a resgraph artifact, or needs imports not allowed.
        ResgraphError: the stored weights do not fit the stored spec.
    """
    import torch

    name = os.fspath(path)
    try:
        payload = torch.load(name, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UsageError(f"{name}: not a readable resgraph model file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise UsageError(f"{name}: not a resgraph model file (no {ARTIFACT_FORMAT!r} marker)")
    record = BuildRecord(
        spec=payload["spec"], file=payload.get("spec_file") or name, params=payload.get("params") or {},
        allow_imports=tuple(payload.get("allow_imports") or ()),
        imports=None if payload.get("imports") is None else tuple(tuple(p) for p in payload["imports"]),
        input_shapes={k: tuple(v) for k, v in (payload.get("input_shapes") or {}).items()},
        version=payload.get("version") or "unknown")
    module = rebuild(record, allow_imports=allow_imports, max_params=max_params)
    try:
        result = module.load_state_dict(payload["state_dict"], strict=False)
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
