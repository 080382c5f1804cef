"""Writing files the user named: atomically, with the mode a plain `open()` would give.

A leaf module (no resgraph imports): every writer (artifacts, diagrams, exports) uses it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)`, then move the result over `path`: a failure leaves `path` untouched.

    The temporary file is created next to `path` with mode 0666 filtered by the process umask
    (as `open()` would create it; the umask itself is never changed), or with the mode of the
    file it replaces.

    Raises:
        OSError: the directory cannot be written (the temporary file is removed).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        write(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)  # replacing a file keeps its mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
