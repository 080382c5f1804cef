"""Reading files `torch.save` wrote (saved models, checkpoints): local regular files only, with
`weights_only=True`, never with a compressed entry (a zip bomb), and every failure said in one line.

>>> weights_only_refusal("Weights only load failed. In PyTorch 2.6, we changed ... trusted source.\\n\\n\\n"
...                      "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.\\n\\n"
...                      "Check the documentation of torch.load to learn more ...")
'Trying to load unsupported GLOBAL posix.system whose module posix is blocked'
"""

from __future__ import annotations

import re
import zipfile
from typing import Any, BinaryIO

from .errors import UsageError
from .loader import open_regular, os_reason

__all__ = ["hollow_tensor", "read_torch_file", "weights_only_refusal"]

_REFUSED = "Weights only load failed"


# How a file torch.save wrote begins: a zip archive (its default since 1.6), or a pickle (the legacy format).
_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"


def read_torch_file(name: str, *, expected: str, unreadable: str) -> Any:
    """`torch.load(name, weights_only=True)` onto the CPU, of a regular file only (see `open_regular`).

    Args:
        expected: what the file should be, said when it is no regular file (`a saved model is a .pt file`).
        unreadable: what the file is not, said when torch cannot read it (`not a readable resgraph model file`).
    Raises:
        UsageError: no such file, not a regular file, unreadable, holding a compressed entry (torch.save
            writes none: a small file could unpack to gigabytes), or not a file torch reads with
            `weights_only` (a tampered or foreign file: what the reader refused, e.g. a global it would call).
    """
    import torch

    head = b""
    try:
        with open_regular(name, expected) as handle:
            head = handle.read(4)
            handle.seek(0)
            refused = _unchecked_entries(handle) if head == _ZIP_MAGIC else None
            if refused is not None:
                raise UsageError(f"{name}: {unreadable} ({refused})")
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
        elif not head:
            reason = "the file is empty"
        elif head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTOCOL):  # (torch: list index out of range)
            reason = "it is neither a zip archive nor a pickle, which torch.save writes"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise UsageError(f"{name}: {unreadable} ({reason})") from None


def hollow_tensor(tensors: Any) -> str | None:
    """The first of `tensors` (name -> tensor) that holds no values to copy into a model, described
    (`fc.weight is on the meta device`, `... is a torch.sparse_coo tensor`); None when every one is a
    dense tensor with values, as `torch.save` of a model's weights writes. Copying from such a tensor
    fails in torch's own words ("an exception occurred", "Cannot access storage of SparseTensorImpl").

    >>> import torch
    >>> hollow_tensor({"w": torch.zeros(2)}), hollow_tensor({"w": torch.zeros(2, device="meta")})
    (None, 'w is on the meta device')
    """
    import torch

    for key, tensor in tensors.items():
        if tensor.is_meta:
            return f"{key} is on the meta device"
        if tensor.layout != torch.strided:
            return f"{key} is a {tensor.layout} tensor"
    return None


def _unchecked_entries(handle: BinaryIO) -> str | None:
    """Why a zip file's entries cannot be left to torch.load, or None: an entry is compressed (torch.save's
    format stores each uncompressed, so what torch.load allocates is bounded by the file's size), or the
    archive's directory does not read, so its entries cannot be checked (torch's reader is more lenient
    than Python's and would unpack them). Reads the directory only, and leaves the file at its start."""
    try:
        with zipfile.ZipFile(handle) as archive:
            packed = next((entry.filename for entry in archive.infolist()
                           if entry.compress_type != zipfile.ZIP_STORED), None)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as exc:
        return (f"its zip directory does not read ({exc}): a truncated or damaged file, whose entries cannot be "
                "checked before torch unpacks them")
    finally:
        handle.seek(0)
    if packed is None:
        return None
    return (f"its entry {packed!r} is compressed, which torch.save never writes: a few megabytes could unpack to "
            "gigabytes before anything is checked")


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
