"""Writing files the user named: atomically, with the mode a plain `open()` would give.

A leaf module (no resgraph imports): every writer (artifacts, diagrams, exports) uses it.

What `atomic_write(path, ...)` promises:

- `path` is replaced in one step (`os.replace`) by a complete file, or left as it was: a failure
  (an exception, a full disk, Ctrl-C, SIGTERM, SIGHUP) never leaves a partial file at `path` nor
  the temporary file next to it.
- A new file gets mode 0666 filtered by the process umask, as `open()` would create it; the
  umask is never changed (changing it, even for a moment, races with other threads). A replaced
  file keeps its mode.
- Only a regular file is replaced, and only one the process may write: a read-only file is refused
  with PermissionError, as `open()` refuses it (although the rename only needs the directory to be
  writable), and a FIFO, device or socket with an OSError, never replaced by a regular file.
- A symlink at `path` is written through, as `open(path, "w")` would: the link stays and its
  target (which may not exist yet) receives the new content, atomically, in the target's
  directory.
- `replace=False` (a path the user did not name) leaves anything at `path` as it is, a symlink
  included, unless it is a file holding exactly the new content.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from .errors import UsageError

__all__ = ["atomic_write", "atomic_write_staged", "check_writable", "path_name", "same_file", "write_fresh_text"]

MAX_FRESH_NAMES = 100  # arch.dot, arch-2.dot, ... arch-100.dot

# Signals that end the process without unwinding the stack when left at their default action;
# a temporary file being written when one arrives is removed first (see `_cleanup_on_signals`).
# SIGINT normally raises KeyboardInterrupt, which `atomic_write`'s own cleanup handles.
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))
_pending: set[str] = set()  # temporary files being written, by any thread
_lock = threading.RLock()  # reentrant: the signal handler runs in the main thread, which may hold it


def atomic_write(path: str, write: Callable[[str], object], *, replace: bool = True) -> None:
    """Call `write(tmp_path)`, then move the result over `path`: a failure leaves `path` untouched.

    Args:
        path: the file to write (a symlink is followed: its target is written).
        write: writes the whole content to the path it is given.
        replace: False refuses to overwrite an existing file (checked atomically, at the end); one
            that already holds exactly the new content is left as it is, as if written. A symlink
            at `path` is refused then (a dangling one too), not followed.
    Raises:
        FileExistsError: `replace` is False and something else is at `path`.
        PermissionError: `path` is a file this process may not write.
        IsADirectoryError, OSError: `path` is a directory, FIFO, device or socket.
        OSError: the directory cannot be written (the temporary file is removed).
    """
    _refuse_link(path, replace)
    target = _resolve(path)
    _check_replaceable(target, path)
    directory = os.path.dirname(target)
    tmp = _temporary_path(directory, os.path.basename(target))
    with _cleanup_on_signals(tmp):
        try:
            # Made with the mode of the file it replaces (filtered by the umask), so that no one may read
            # the new content while it is written who may not read the old (a private 0600 checkpoint)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _mode_of(target) if replace else 0o666))
            write(tmp)
            if replace:
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(tmp, os.stat(target).st_mode & 0o7777)  # replacing a file keeps its mode
                os.replace(tmp, target)
            else:
                try:
                    _link_new(tmp, target)
                except FileExistsError:
                    if not _holds_same(target, tmp):
                        raise
                    os.unlink(tmp)  # (the same content: nothing to write)
        except BaseException:  # KeyboardInterrupt included: Ctrl-C leaves no temporary file
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _mode_of(path: str) -> int:
    """The permission bits of the file at `path`, or 0o666 where there is none (a new file's, before the umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o666


def atomic_write_staged(path: str, write: Callable[[str], object]) -> list[str]:
    """`atomic_write` for a writer that may leave companion files beside its file, named after it
    (ONNX's external weights, `NAME.data`, which the file refers to by that relative name).

    `write` gets `DIR/.resgraph-RANDOM/NAME`, NAME being the final file's name, in a fresh folder
    beside `path`. Each file it leaves in that folder is moved beside `path` under its name (each
    replacing an older one atomically, companions first, the file itself last), so the names the
    file holds stay right; the folder is always removed, on a failure or a terminating signal too.
    The rules of `atomic_write` for modes, symlinks and what may be replaced apply to every file:
    a symlink at a companion's name is written through (its target, on another file system too,
    receives the content; the link stays).

    Returns:
        The companion files written (their final paths: a symlink's target).
    Raises:
        OSError: a file cannot be written (older files are left as they were where nothing of
            this write had replaced them yet); one about a companion names it in its message.
    """
    target = _resolve(path)
    directory, name = os.path.split(target)
    _check_replaceable(target, path)
    folder = tempfile.mkdtemp(prefix=".resgraph-", dir=directory)
    os.chmod(folder, 0o700)
    with _cleanup_on_signals(folder):
        try:
            write(os.path.join(folder, name))
            made = sorted(os.listdir(folder))
            if name not in made:
                raise FileNotFoundError(errno.ENOENT, "the writer wrote no file", path)
            # A companion is where the file names it, beside it; one there that is a symlink is written
            # through, as the file itself is (the link may keep the weights on another disk).
            # (Shown as the caller named the file's folder, unless `path` is a symlink to another one.)
            beside = directory if os.path.islink(path) else os.path.dirname(path)
            companions = {entry: (os.path.join(beside, entry), _resolve(os.path.join(directory, entry)))
                          for entry in made if entry != name}
            for shown, final in companions.values():
                with _naming(shown):
                    if final == target:  # (a link to the file: one would overwrite the other)
                        raise OSError(errno.EINVAL, f"a link to {path} itself", shown)
                    _check_replaceable(final, shown)
            for entry, (shown, final) in companions.items():  # first: the file names them
                with _naming(shown):
                    _move_into_place(os.path.join(folder, entry), final)
            _move_into_place(os.path.join(folder, name), target)
            return [final for _, final in companions.values()]
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _naming(companion: str) -> Iterator[None]:
    """An OSError about a companion file says which: the caller reports it as a failure to write the
    file it named (`cannot write m.onnx: ...`), which alone would blame that file."""
    try:
        yield
    except OSError as exc:
        raise type(exc)(exc.errno, f"{companion}, written beside it: {exc.strerror or exc}", companion) from None


def _move_into_place(staged: str, final: str) -> None:
    """Replace `final` by the complete file `staged` in one step, keeping the mode of a file replaced
    (a new one keeps `staged`'s: 0666 filtered by the umask, as `open()` created it). `final` on
    another file system (a symlink's target there) gets a copy written beside it first."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(staged, os.stat(final).st_mode & 0o7777)  # replacing a file keeps its mode
    try:
        os.replace(staged, final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_write(final, lambda tmp: shutil.copyfile(staged, tmp))


def check_writable(path: str, *, replace: bool = True) -> None:
    """Raise now what writing `path` would raise only at its end, after the work of making the content
    (an ONNX export of a large model takes minutes): its folder missing, not a folder, or one this
    process may not write in; a directory, FIFO, device or read-only file at `path`; with
    `replace=False`, a symlink at `path`.

    Raises:
        FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError, OSError:
            as `atomic_write(path, ..., replace=replace)`.
    """
    _refuse_link(path, replace)
    target = _resolve(path)
    _check_replaceable(target, path)
    directory = os.path.dirname(target)
    if not stat.S_ISDIR(os.stat(directory).st_mode):  # (a missing folder: FileNotFoundError, naming it)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    if not os.access(directory, os.W_OK | os.X_OK):  # the temporary file is made there
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def path_name(path: Any, what: str) -> str:
    """`path` as text: a str, an `os.PathLike` or bytes (decoded as the file system does).

    Raises:
        UsageError: anything else (`what` names the argument: `save's path`)."""
    if isinstance(path, (str, bytes, os.PathLike)):
        name = os.fspath(path)
        return os.fsdecode(name) if isinstance(name, bytes) else name
    raise UsageError(f"{what} is a file path (a str, bytes or os.PathLike), not {type(path).__name__}")


def same_file(path: str, other: str) -> bool:
    """True when writing `path` would write `other`: the same file by any path to it (`./`, a symlink,
    a hard link), or two symlinks to the same file not created yet."""
    try:
        try:
            return os.path.samefile(path, other)
        except OSError:  # one of them does not exist (yet), or is no path (`resgraph:NAME`)
            return os.path.realpath(path) == os.path.realpath(other)
    except ValueError:  # no path (a NUL in it, or a lone surrogate: a name stored in a crafted file)
        return False


def _refuse_link(path: str, replace: bool) -> None:
    """`replace=False` (a path the user did not name): a symlink there, dangling or not, is not followed."""
    if not replace and os.path.islink(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)


def write_fresh_text(stem: str, suffix: str, text: str) -> str:
    """Write `text` to a file nothing else is at: `stem + suffix`, else `stem-2 + suffix`, and so on.

    For files the user did not name (a fallback output), so nothing of theirs is overwritten. A
    candidate that already holds exactly `text` (a file from an earlier run) is reused as it is.

    Returns:
        The path written (or reused).
    Raises:
        FileExistsError: all MAX_FRESH_NAMES candidates are taken.
        OSError: the directory cannot be written.
    """
    data = text.encode("utf-8")
    for n in range(1, MAX_FRESH_NAMES + 1):
        candidate = f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}"
        if os.path.lexists(candidate):  # anything at all, a dangling symlink included, is not ours to write
            if _holds(candidate, data):
                return candidate
            continue
        try:
            atomic_write(candidate, lambda tmp: _write_bytes(tmp, data), replace=False)
        except FileExistsError:  # created meanwhile by someone else
            continue
        return candidate
    raise FileExistsError(f"{stem}{suffix} and {MAX_FRESH_NAMES - 1} numbered alternatives all exist")


def _holds(path: str, data: bytes) -> bool:
    """True when `path` is a regular file whose content is exactly `data` (read only if the size fits)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(data) + 1) == data
    except OSError:
        return False


def _holds_same(path: str, other: str) -> bool:
    """True when `path` is a regular file with exactly the content of the file `other`."""
    try:
        return (not os.path.islink(path) and os.path.isfile(path)
                and os.path.getsize(path) == os.path.getsize(other) and filecmp.cmp(path, other, shallow=False))
    except OSError:
        return False


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _link_new(tmp: str, target: str) -> None:
    """Move `tmp` to `target`, which must not exist (FileExistsError if it does)."""
    try:
        os.link(tmp, target)  # atomic and never clobbers, where os.replace would
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: reserve the name, then replace the placeholder
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, target)
    else:
        os.unlink(tmp)


def _check_replaceable(target: str, path: str) -> None:
    """Refuse to replace what is at `target` (`path` resolved) unless it is a regular file this process
    may write; nothing there is fine.

    A rename replaces anything, but a FIFO, a device (`out.onnx -> /dev/null` made /dev/null a
    regular file, for every program) or a socket is not an output file, and a read-only file is one
    its owner protected: `open()` would refuse it, although the rename only needs the directory.
    """
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    except OSError:  # (e.g. a loop of symlinks: writing reports it)
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (resgraph never replaces a FIFO, device or socket)", path)
    if not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def _temporary_path(directory: str, name: str) -> str:
    """`directory/.NAME.RANDOM.tmp`, NAME shortened where the whole would be longer than a file name
    may be there (255 bytes on most file systems): any name `open()` can write can be written."""
    suffix = f".{secrets.token_hex(6)}.tmp"
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # (no pathconf on Windows; a directory that is missing fails later)
        limit = 255
    stem = name
    while stem and len(os.fsencode(f".{stem}{suffix}")) > limit:
        stem = stem[:-1]
    return os.path.join(directory, f".{stem}{suffix}")


def _resolve(path: str) -> str:
    """The absolute path to write: `path` as `open()` reads it, or the file a chain of symlinks at `path`
    ends at. Its folder is resolved, not normalised as text: `link/../m.pt` is in the folder above the
    link's target, where `open()` writes it, not in the folder holding the link (`os.path.abspath`)."""
    if os.path.islink(path):
        return os.path.realpath(path)  # also for a dangling link: its target is created, as open() would
    directory, name = os.path.split(path)
    return os.path.join(os.path.realpath(directory or os.curdir), name)


@contextlib.contextmanager
def _cleanup_on_signals(tmp: str) -> Iterator[None]:
    """Remove `tmp` if a terminating signal arrives while it is being written.

    Only signals left at their default action (SIG_DFL: die) are handled, so a program's own
    handlers, and Python's KeyboardInterrupt for SIGINT, stay as they are; and only from the
    main thread, where Python runs handlers. The handler removes every pending temporary file
    (of any thread: the process is ending), restores the default action and delivers the signal
    again, so the process ends exactly as it would have (SIGTERM: status 143 in a shell).
    """
    with _lock:
        _pending.add(tmp)
    installed: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in _SIGNALS:
            if signal.getsignal(number) == signal.SIG_DFL:
                installed[number] = signal.SIG_DFL
                signal.signal(number, _on_signal)
    try:
        yield
    finally:
        for number, previous in installed.items():
            signal.signal(number, previous)
        with _lock:
            _pending.discard(tmp)


def _on_signal(number: int, frame: FrameType | None) -> None:
    with _lock:
        pending = list(_pending)
    for tmp in pending:
        if os.path.isdir(tmp) and not os.path.islink(tmp):  # a staging folder (atomic_write_staged)
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
