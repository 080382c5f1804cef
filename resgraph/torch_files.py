"""Reading files `torch.save` wrote (saved models, checkpoints): local regular files only, with
`weights_only=True`, and every failure said in one line.

>>> weights_only_refusal("Weights only load failed. In PyTorch 2.6, we changed ... trusted source.\\n\\n\\n"
...                      "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.\\n\\n"
...                      "Check the documentation of torch.load to learn more ...")
'Trying to load unsupported GLOBAL posix.system whose module posix is blocked'
"""

from __future__ import annotations

import re
from typing import Any

from .errors import UsageError
from .loader import open_regular, os_reason

__all__ = ["read_torch_file", "weights_only_refusal"]

_REFUSED = "Weights only load failed"


def read_torch_file(name: str, *, expected: str, unreadable: str) -> Any:
    """`torch.load(name, weights_only=True)` onto the CPU, of a regular file only (see `open_regular`).

    Args:
        expected: what the file should be, said when it is no regular file (`a saved model is a .pt file`).
        unreadable: what the file is not, said when torch cannot read it (`not a readable resgraph model file`).
    Raises:
        UsageError: no such file, not a regular file, unreadable, or not a file torch reads with
            `weights_only` (a tampered or foreign file: what the reader refused, e.g. a global it would call).
    """
    import torch

    try:
        with open_regular(name, expected) as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except UsageError:
        raise
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({os_reason(exc)})") from None
    except Exception as exc:  # torch raises many types for a corrupt, empty or foreign file
        text = str(exc).strip()
        refusal = weights_only_refusal(text)
        if refusal is not None:
            reason = "torch's weights-only reader refused it" + (f": {refusal}" if refusal else "")
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise UsageError(f"{name}: {unreadable} ({reason})") from None


def weights_only_refusal(text: str) -> str | None:
    """What torch's weights-only unpickler refused, from its message; None for another failure.

    The message's first paragraph is advice to load the file with `weights_only=False`, which
    would run whatever code a tampered file holds: it is left out, and so is the closing pointer
    to the documentation.
    """
    if not text.startswith(_REFUSED):
        return None
    lines = [line.strip() for line in text.splitlines()[1:]]
    kept = [re.sub(r"^WeightsUnpickler error:\s*", "", line) for line in lines
            if line and not line.startswith(("Please file an issue", "Check the documentation"))]
    kept = [line for line in kept if line]
    return kept[0].rstrip(".") if kept else ""
