"""Saved models: weights plus the spec text, in a file `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from .errors import ResgraphError, UsageError

__all__ = ["ARTIFACT_FORMAT", "atomic_write", "load", "save"]

ARTIFACT_FORMAT = "resgraph.model/1"


def atomic_write(path: str, write: Any) -> None:
    """Call `write(tmp_path)`, then move the result over `path`: a failure leaves `path` untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; the file should look like any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: str) -> int:
    """The replaced file's mode, or what a plain open() would give a new file (0666 less umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save(module: Any, path: str) -> None:
    """Write `module`'s weights and spec to `path` atomically."""
    import torch

    text, file, params = module._resgraph_source
    payload = {"format": ARTIFACT_FORMAT, "spec": text, "spec_file": file, "params": params,
               "state_dict": module.state_dict()}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path: str | os.PathLike[str]) -> Any:
    """Rebuild a saved module from its stored spec and restore its weights.

    Raises:
        UsageError: the file is missing or not a resgraph artifact.
        ResgraphError: the stored weights do not fit the stored spec.
    """
    import torch

    from .api import build

    name = os.fspath(path)
    try:
        payload = torch.load(name, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UsageError(f"{name}: not a readable resgraph model file ({str(exc).splitlines()[0]})") from None
    if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
        raise UsageError(f"{name}: not a resgraph model file (no {ARTIFACT_FORMAT!r} marker)")
    module = build(payload["spec"], file=payload.get("spec_file") or name, params=payload.get("params") or {})
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
