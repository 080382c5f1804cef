"""Stage 1, load: YAML text -> plain data plus a map from data paths to source positions.

PyYAML's own constructors lose positions and silently keep the last of two duplicate keys, so
the loader composes the node tree with the safe loader and builds the data itself. That also
makes it the one place that rejects non-core tags (`!!python/object`), recursive aliases and
alias-expansion bombs before anything else sees the data.

Numbers are read as YAML 1.2 and every ML config reads them: `1e-6`, `3e4`, `-2e-3`, `-.5` are floats
(YAML 1.1, which PyYAML implements, wants a dot and a signed exponent and reads them as strings);
a quoted `"1e-6"` stays a string. `--set NAME=VALUE` values are read the same way (`load_value`).
Plain values YAML 1.1 and 1.2 read differently (`010`, `1:30`, `yes`) are refused where they are written.

>>> load_text("eps: 1e-6\\nlr: 3e4\\nhalf: .5\\nbig: 1.5E+3\\nneg: -2e-3\\nlow: -.5\\ntext: '1e-6'").data
{'eps': 1e-06, 'lr': 30000.0, 'half': 0.5, 'big': 1500.0, 'neg': -0.002, 'low': -0.5, 'text': '1e-6'}
"""

from __future__ import annotations

import functools
import gc
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import yaml

from .errors import Diagnostic, Location, SpecError, UsageError
from .scalar_positions import YAML_BREAK, Positions, line_starts, locate_offset, scalar_positions

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_INT", "MAX_NODES", "LoadedSpec", "Origin", "Path", "SourceMap", "copy_data",
           "data_path", "data_problem", "gc_paused", "load_file", "load_import", "load_library_text", "load_text",
           "load_value", "open_regular", "os_reason"]

Path = tuple[str | int, ...]

MAX_NODES = 2_000_000  # YAML nodes after alias expansion (a layer takes about 8)
# Nodes aliases may add to those written: each is built and placed as if written out (a few microseconds),
# so a few hundred bytes of nested aliases under MAX_NODES took 8 s and 500 MB; this is a second's worth.
MAX_ALIAS_NODES = 100_000
MAX_BYTES = 16 * 2**20  # a spec written with blocks is a few KiB; a generated 100k-layer chain is ~5 MiB
# libyaml's composer when PyYAML was built with it (it keeps positions too); the Python one otherwise.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64  # nesting depth of collections; a spec needs fewer than 10
_SMALLER_SPEC_HINT = "use blocks and `repeat:` instead of writing every layer out"  # (past MAX_NODES or MAX_BYTES)

_CORE_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:merge",
}
# Larger integers are refused where they are written: nothing in a spec needs them (no tensor size, index or
# dtype holds more than 2^64), and printing one of thousands of digits fails (Python's cap: 4,300). Smaller
# ones reach the schema, whose bounds say which field takes what (`must be at most 2^62`).
MAX_INT = 10**100
_TEXT_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}
# The node each core tag fits (the rest fit scalars); `!!merge` fits none: it is only a key (`<<`).
_TAG_NODES: dict[str, type] = {"tag:yaml.org,2002:map": yaml.MappingNode, "tag:yaml.org,2002:seq": yaml.SequenceNode,
                               "tag:yaml.org,2002:merge": type(None)}
# A plain scalar YAML 1.1 leaves a string but YAML 1.2's core schema reads as a float: an exponent
# without a dot or without a sign (`1e-6`, `3e4`, `1.0e6`; those with both are floats already), and
# a signed fraction with no digit before its dot (`-.5`, `+.25`; YAML 1.1 reads `.5` but not `-.5`).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$|^[-+]\.[0-9]+$")
_NUMBER_START = frozenset("+-.0123456789")  # the first characters `_EXPONENT_FLOAT` admits
_STR, _INT, _FLOAT = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

_RESOLVER = _COMPOSER("")  # (a composer of nothing: only its tag table is used)
# The tag of each short plain scalar text met so far in this process: a spec repeats the same few
# texts (`3`, `ReLU`, `add`), and the resolver matches regular expressions for each. Bounded in
# entries and length, as the texts are the specs'.
_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_KEPT, _PLAIN_TAG_TEXT = 4096, 64
_COLLECTION_TAGS = {yaml.MappingNode: _RESOLVER.DEFAULT_MAPPING_TAG, yaml.SequenceNode: _RESOLVER.DEFAULT_SEQUENCE_TAG}


def _implicit_tag(kind: type[yaml.Node], value: Any, implicit: Any) -> str:
    """`_RESOLVER.resolve(kind, value, implicit)` as PyYAML's resolver decides it with no path
    resolvers registered: a mapping's and a list's tag by their kind; a quoted scalar's, `str`; a
    plain one's by its text (looked up in `_PLAIN_TAGS` first).

    Called by the composer at every node, so each case is answered in a few steps (its cost was a
    tenth of composing the tutorial as a call to the resolver through a cache keyed by all three).
    """
    if value is None:  # (a mapping or a list: `implicit` is then a bool, not a pair)
        return _COLLECTION_TAGS[kind]
    if not implicit[0]:
        return _STR  # (PyYAML's DEFAULT_SCALAR_TAG)
    tag = _PLAIN_TAGS.get(value)
    if tag is None:
        tag = _RESOLVER.resolve(kind, value, implicit)
        if len(value) <= _PLAIN_TAG_TEXT and len(_PLAIN_TAGS) < _PLAIN_TAGS_KEPT:
            _PLAIN_TAGS[value] = tag
    return tag


class _Composer(_COMPOSER):  # type: ignore[valid-type,misc]
    """PyYAML's composer (libyaml's where installed), with each node's implicit tag (`3` an int,
    `true` a bool) decided by `_implicit_tag` rather than by PyYAML's resolver at every node."""

    if _COMPOSER is not yaml.SafeLoader:  # (PyYAML's Python composer needs all of its parts' state)
        def __init__(self, stream: str) -> None:
            # Only libyaml's parser's state: the constructor's and the resolver's (their `__init__`s)
            # serve constructing Python objects and path resolvers, neither of which composing uses.
            # (A twentieth of the time composing the tutorial took.)
            yaml.cyaml.CParser.__init__(self, stream)

    # The composer tells its path resolvers at every node that it enters and leaves it: two calls of
    # Python functions that return at once, as none is registered. C functions taking the same
    # arguments serve, for a tenth of the time composing takes.
    descend_resolver = staticmethod({}.get)  # (parent, index) -> None
    ascend_resolver = staticmethod(tuple)  # () -> ()

    resolve = staticmethod(_implicit_tag)  # (kind, value, implicit) -> tag


@dataclass(eq=False)
class SourceMap:
    """Positions of the values and keys of a loaded document, keyed by data path; and, of the
    expression strings whose characters are not where their value's offsets say (a block or
    multi-line scalar, an escape), where each was written (None: not known; `scalar_positions`), and
    of those written as a block scalar, its style (`|` or `>`), which a message about its line breaks names."""

    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    texts: dict[Path, Positions | None] = field(default_factory=dict)
    blocks: dict[Path, str] = field(default_factory=dict)

    def locate_in(self, path: Path, offset: int) -> tuple[Location, bool]:
        """The position of the character at `offset` in the string at `path`, and whether it is that
        character's: where it is not known, the string's own position (its first line).

        >>> source = load_text("a: |-\\n  ${x +\\n   y}\\n", "s.yaml").source
        >>> [str(where) for where, exact in (source.locate_in(("a",), 2), source.locate_in(("a",), 7))]
        ['s.yaml:2:5', 's.yaml:3:4']
        """
        path = tuple(path)
        if path in self.texts:
            positions = self.texts[path]
            if positions is None:
                return self.locate(path), False
            line, column = locate_offset(positions, offset)
            return Location(self.file, line, column), True
        where = self.locate(path)  # on one line, as written (or data given as a dict: no position)
        return (Location(self.file, where.line, where.column + offset) if where.line else where), True

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """The position of `path` (its key when `key`), falling back to the nearest parent."""
        path = tuple(path)
        if not self.values:  # data given as a Python dict: there is no text to point into
            return Location(self.file)
        while True:
            table = (self.keys, self.values) if key else (self.values, self.keys)
            for positions in table:
                if path in positions:
                    line, column = positions[path]
                    return Location(self.file, line, column)
            if not path:
                return Location(self.file, 1, 1)
            path = path[:-1]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a piece of a spec was written: a file's source map and a path into its data.

    Every node, layer and skip holds one, so it has slots and no `__dict__` (at 10,000 layers,
    half their memory).
    """

    source: SourceMap
    path: Path

    def __reduce__(self) -> tuple[type[Origin], tuple[SourceMap, Path]]:
        # Copied and pickled through the constructor: a frozen slotted class cannot be restored by
        # setting its attributes one by one (Python 3.10).
        return Origin, (self.source, self.path)

    def child(self, *parts: str | int) -> Origin:
        return Origin(self.source, (*self.path, *parts))

    def locate(self, *, key: bool = False) -> Location:
        return self.source.locate(self.path, key=key)

    def locate_in(self, offset: int) -> tuple[Location, bool]:
        return self.source.locate_in(self.path, offset)


class LoadedSpec:
    """A parsed document: its data, where each piece came from, and the original text (of a spec
    given as a dict, the JSON its build record keeps: `pipeline.dict_spec_text`)."""

    __slots__ = ("data", "source", "text")

    def __init__(self, data: Any, source: SourceMap, text: str) -> None:
        self.data = data
        self.source = source
        self.text = text

    @property
    def file(self) -> str:
        return self.source.file

    def __repr__(self) -> str:
        return f"LoadedSpec(file={self.file!r})"


def load_file(path: str | os.PathLike[str], *, regular_only: bool = False) -> LoadedSpec:
    """Read and parse a spec file, reading at most MAX_BYTES.

    Args:
        regular_only: refuse anything but a regular file (or a symlink to one) before reading
            it. A file named by the user may also be a pipe or a device (`/dev/stdin`): it is
            read up to the size limit.
    Raises:
        UsageError: the file cannot be read, is not a regular file when that is required, or is
            larger than MAX_BYTES.
        SpecError: the file is not a valid, safe YAML document.
    """
    name = os.fspath(path)
    return load_text(_read_text(name, regular_only=regular_only), name)


def load_import(path: str) -> LoadedSpec:
    """Read a block library that a spec's `imports:` names.

    A spec names these files, so they are held to more than a file the user names: a regular
    file only (no FIFO that blocks, no `/dev/zero`), its size checked before reading, and a file
    that is not a resgraph document (no `resgraph:` key) is refused before it is parsed, so no
    error message ever shows a piece of some other file.

    Raises:
        UsageError: the file cannot be read, is not a regular file, too large, or not resgraph's.
        SpecError: the library is not a valid, safe YAML document.
    """
    text = _read_text(path, regular_only=True)
    if not _RESGRAPH_KEY.search(text):
        raise UsageError(f"{path}: not a resgraph block library (it has no `resgraph: 1` key)")
    return load_library_text(text, path)


# Characters: a library is a few hundred lines (ResNet's is 2 KiB), and a parse holds about 40 times
# its text, so the 16 kept hold at most about 40 MiB.
_LIBRARY_CACHE_TEXT = 64 * 2**10


def load_library_text(text: str, file: str) -> LoadedSpec:
    """`load_text` for a block library, composed once per distinct text and name in a process.

    A library is read again at every import (so a changed file is seen), but ResNet-50 builds
    through the same 35 lines of `blocks/resnet.yaml` every time: composing them cost 1.5 ms of a
    20 ms check. Each call returns data of its own (a copy of the dicts and lists, a tenth of the
    time composing takes), so a caller that changes it changes no later import. Errors are not
    kept (they are raised again).
    """
    if len(text) > _LIBRARY_CACHE_TEXT:
        return load_text(text, file)
    parsed = _load_library_text(text, file)
    source = parsed.source
    return LoadedSpec(copy_data(parsed.data),
                      SourceMap(source.file, dict(source.values), dict(source.keys), dict(source.texts),
                                dict(source.blocks)), text)


@functools.lru_cache(maxsize=16)
def _load_library_text(text: str, file: str) -> LoadedSpec:
    return load_text(text, file)


def data_problem(data: Any) -> tuple[Path, str, str] | None:
    """Where plain data (a spec given as a dict) breaks the bounds a spec file is read with, as
    (path, problem, hint): the first dict or list that contains itself or nests deeper than
    MAX_DEPTH, or value YAML cannot give (a set, bytes, a numpy integer: not a str, int, float,
    bool or None, or a subclass of one) or an integer of 10^100 or more; or ((), problem, hint)
    where the data holds more than MAX_NODES values, a list or dict used in several places
    counted at each. None where it keeps them. (Each distinct container is walked once.)"""
    try:
        total = _data_size(data, (), {}, set()) if isinstance(data, (dict, list, tuple)) else 1
    except _Found as found:
        return found.path, found.problem, found.hint
    if total > MAX_NODES:
        too_many = _too_many()
        return too_many.path, too_many.problem, too_many.hint
    return None


def data_path(path: Path) -> str:
    """A path into plain data as a message shows it: `params.depths[2]`, shortened in the middle past
    eight parts."""
    def text(parts: Path) -> str:
        return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")

    return f"{text(path[:4])}...{text(path[-4:])}" if len(path) > 8 else text(path)


def _data_size(value: dict[Any, Any] | list[Any] | tuple[Any, ...], path: Path, sizes: dict[int, int],
               on_path: set[int]) -> int:
    """How many values `value` holds, itself included, each shared container counted at each use
    (`sizes`: the count of each container met, by id; `on_path`: the ids of its parents).

    Raises:
        _Found: the first value that breaks a bound (see `data_problem`).
    """
    if id(value) in sizes:
        return sizes[id(value)]
    if id(value) in on_path:
        raise _Found(path, f"this {type(value).__name__} contains itself: a spec is a tree of plain data",
                     "put a copy there (copy.deepcopy), not the collection itself")
    if len(path) > MAX_DEPTH:
        raise _Found(path, f"the spec nests deeper than {MAX_DEPTH} levels",
                     "flatten it: a spec needs fewer than 10 levels")
    if len(value) > MAX_NODES:  # (said at once, not after a walk of every member)
        raise _too_many()
    on_path.add(id(value))
    total = 1
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        if isinstance(item, (dict, list, tuple)):
            total += _data_size(item, (*path, key), sizes, on_path)
            if total > MAX_NODES:
                raise _too_many()
        elif isinstance(item, int) and not -MAX_INT < item < MAX_INT:  # (bool is an int)
            digits = int(item.bit_length() * math.log10(2)) + 1
            raise _Found((*path, key), f"an integer of about {digits:,} digits is too large: a spec's integers are "
                                       "smaller than 10^100", "no tensor size, index or dtype holds more than 2^64")
        elif item is None or isinstance(item, (str, int, float)):
            total += 1
        else:
            raise _Found((*path, key), f"{type(item).__module__}.{type(item).__qualname__} {item!r:.60} is not "
                                       "spec data", "give what YAML gives: mappings, lists, strings, numbers, "
                                                    "booleans and None (e.g. int(value) for a numpy integer)")
    on_path.discard(id(value))
    sizes[id(value)] = total
    return total


class _Found(Exception):
    """Raised by `_data_size` at the first value that breaks a bound: where, what, and a hint."""

    def __init__(self, path: Path, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.path, self.problem, self.hint = path, problem, hint


def _too_many() -> _Found:
    """The size bound's problem. (A new exception each time: one kept at module level would keep
    its last traceback, and with it the frames holding the data it refused.)"""
    return _Found((), f"the spec holds more than {MAX_NODES:,} values (a list or dict used in several places counts "
                      "at each)", _SMALLER_SPEC_HINT)


def copy_data(value: Any) -> Any:
    """A copy of loaded data's dicts and lists (its leaves are immutable: strings, numbers, None)."""
    if isinstance(value, dict):
        return {k: copy_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_data(v) for v in value]
    return value


_RESGRAPH_KEY = re.compile(r"""(?:^|[{,])[ \t]*["']?resgraph["']?[ \t]*:""", re.MULTILINE)


def _read_text(name: str, *, regular_only: bool) -> str:
    """The text of a file, read at most MAX_BYTES (see `load_file`)."""
    with open_regular(name, _SPEC_FILES_ONLY) if regular_only else _open_spec(name) as handle:
        try:
            status = os.fstat(handle.fileno())
            regular = stat.S_ISREG(status.st_mode)
            if regular and status.st_size > MAX_BYTES:
                raise UsageError(_too_big(name, status.st_size))  # said before reading a byte of it
            # Bounded for pipes and devices (/dev/zero) too. A regular file is read at its size (asking
            # for MAX_BYTES made a 16 MiB buffer at every read), and on, in case it grew since.
            data = handle.read(status.st_size + 1 if regular else MAX_BYTES + 1)
            if regular and len(data) > status.st_size:  # it grew since (or has no size: /proc)
                data += handle.read(MAX_BYTES + 1 - len(data))
        except OSError as exc:
            raise _cannot_read(name, exc) from None
    if len(data) > MAX_BYTES:
        raise UsageError(_too_big(name, None))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Diagnostic(Location(name, 1, 1), f"the file is not UTF-8 text ({exc.reason})")]) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # newlines as open() reads them


def load_value(text: str, name: str) -> Any:
    """A value written on the command line (`--set NAME=TEXT`), read by exactly a spec's rules.

    The same scalar rules apply as in a spec file (`2024-01-01` is text, `0x10` is 16, `.inf`
    is infinity), and so do the same bounds, tags and duplicate-key checks. Empty text is "".

    >>> load_value("2024-01-01", "release"), load_value("[1, 2]", "depths"), load_value("", "tag")
    ('2024-01-01', [1, 2], '')

    Raises:
        SpecError: the text is not a valid, safe YAML value (located at `--set NAME`).
    """
    if not text.strip():
        return ""
    return load_text(text, f"--set {name}").data


def os_reason(exc: BaseException) -> str:
    """Why an operating-system call failed, in words; never empty."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def open_regular(name: str, what: str) -> BinaryIO:
    """`name` opened for reading in binary, if it is a regular file (an import, a file `torch.load` is given).

    Never blocks and never reads anything else: a FIFO would block the open until a writer came,
    and a device (/dev/zero) would be read without end. The kind is checked before opening (a
    device is not even opened) and again on the file opened, which may have been swapped since.

    Args:
        what: what the file should be, said when it is not (`a saved model is a .pt file`).
    Raises:
        UsageError: no such file, not a regular file (naming its kind), or it cannot be read.
    """
    try:
        _refuse_irregular(name, os.stat(name).st_mode, what)
        descriptor = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in: no wait
    except OSError as exc:
        raise _cannot_read(name, exc) from None
    try:
        _refuse_irregular(name, os.fstat(descriptor).st_mode, what)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _open_spec(name: str) -> BinaryIO:
    """A spec file the user named, opened: a pipe or a device (`/dev/stdin`) too, but never a directory.

    A pipe the user names is waited on (its writer may start after resgraph), so it opens blocking.
    """
    try:
        handle = open(name, "rb")  # closed by the caller's `with`
    except IsADirectoryError:
        raise UsageError(_not_regular(name, stat.S_IFDIR, _SPEC_FILES_ONLY)) from None
    except OSError as exc:
        raise _cannot_read(name, exc) from None
    return handle


def _cannot_read(name: str, exc: OSError) -> UsageError:
    """What is said of a file that could not be opened or read, whichever reader tried (one wording)."""
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"{name}: no such file")
    return UsageError(f"{name}: cannot read it ({os_reason(exc)})")


_SPEC_FILES_ONLY = "only spec files can be read"


def _refuse_irregular(name: str, mode: int, what: str) -> None:
    if not stat.S_ISREG(mode):
        raise UsageError(_not_regular(name, mode, what))


def _not_regular(name: str, mode: int, what: str) -> str:
    """What is said of a file of the wrong kind, whichever reader refuses it (one wording for all of them)."""
    if stat.S_ISDIR(mode):
        return f"{name}: is a directory, not a regular file; {what}"
    return f"{name}: not a regular file ({_file_kind(mode)}); {what}"


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def _too_big(name: str, size: int | None) -> str:
    found = f"is {size / 2**20:.1f} MiB" if size is not None else "is larger than that"
    return f"{name}: {found}; resgraph reads spec files up to {MAX_BYTES // 2**20} MiB"


def load_text(text: str, file: str = "<spec>") -> LoadedSpec:
    """Parse YAML text into plain data (dict/list/str/int/float/bool/None) with positions.

    Raises:
        SpecError: syntax errors, duplicate keys, disallowed tags, recursive or exploding aliases.
    """
    with gc_paused():
        return _load_text(text, file)


class gc_paused:  # (named as the function it was: used as `with gc_paused():`)
    """Pause the cyclic garbage collector while building big trees of fresh objects.

    Parsing allocates hundreds of thousands of nodes that are never garbage; the collector's
    passes over them made large specs four times slower. (A class, not a `contextlib`
    generator: every build enters it in several stages, and a generator's entry and exit cost
    three times as much, 0.01 ms of a one-layer spec's stages.)
    """

    __slots__ = ("enabled",)

    def __enter__(self) -> None:
        self.enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            gc.enable()


def _load_text(text: str, file: str) -> LoadedSpec:
    if text.startswith("\ufeff"):
        text = text[1:]
    if len(text) > MAX_BYTES:
        raise SpecError([Diagnostic(Location(file, 1, 1), f"the spec is {len(text) / 2**20:.1f} MiB; "
                                                          f"resgraph reads specs up to {MAX_BYTES // 2**20} MiB",
                                    _SMALLER_SPEC_HINT)])
    # libyaml recurses in C on nested [ and {: deep enough nesting overflows its stack and kills
    # the process. Where the bracket depth (over-estimated: quoting is ignored) looks deep, use
    # PyYAML's Python composer, whose recursion limit is an exception.
    composer = _Composer if _bracket_depth(text) <= MAX_DEPTH else yaml.SafeLoader
    try:
        # Composing keeps every node with its marks (~350 bytes each: 2.9 GB for a 16 MiB flow list
        # of 8 million numbers), so a text that may hold too many is counted, streaming, first.
        if composer is _Composer and _node_bound(text) > MAX_NODES:
            _refuse_past_max_nodes(text, file)
        root = yaml.compose(text, Loader=composer)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        start = exc.context_mark
        if exc.problem and exc.context and start and mark and (start.line, start.column) != (mark.line, mark.column):
            problem += f" ({exc.context}, which started at line {start.line + 1}, column {start.column + 1})"
        lines = text.splitlines()
        line_text = lines[line - 1] if 0 < line <= len(lines) else ""
        tab = "\t" in line_text[:column] or "\t" in problem
        hint = "YAML does not allow tabs for indentation; use spaces" if tab else None
        if hint is None and "${" in line_text:
            hint = 'inside {...} mappings, quote expressions: out_channels: "${planes * 4}"'
        if hint is None and len(line_text[:column - 1].lstrip(" -?")) > 1024:  # YAML's own limit, libyaml's wording
            hint = "a plain YAML key is at most 1024 characters long: shorten it"

        raise SpecError([Diagnostic(Location(file, line, column), f"YAML syntax error: {problem}", hint)]) from None
    except RecursionError:
        raise SpecError([Diagnostic(_deepest_bracket(text, file), "YAML nesting is too deep to parse",
                                    f"a spec nests at most {MAX_DEPTH} levels")]) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError([_unacceptable_character(text, file, exc)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Diagnostic(Location(file, 1, 1), f"YAML error: {exc}")]) from None
    source = SourceMap(file)
    if root is None:
        raise SpecError([Diagnostic(Location(file, 1, 1), "the spec is empty")])
    # Only aliases can make the data bigger than the text, and they need an anchor (&name).
    size, written, recursive = _expanded_size(root) if "&" in text else (0, 0, None)
    if recursive is not None:
        where = Location(file, recursive.start_mark.line + 1, recursive.start_mark.column + 1)
        raise SpecError([Diagnostic(where, "recursive YAML alias: a node contains itself")])
    if size > MAX_NODES:
        where, this = _where_expansion_passes(text, file, composer, MAX_NODES, counted="all")
        raise SpecError([Diagnostic(where, f"the document expands to more than {MAX_NODES:,} YAML nodes; {this} is "
                                           "the first past them", "aliases (*name) multiply nodes; write the spec "
                                                                  "out or use blocks and `repeat:`")])
    if size - written > MAX_ALIAS_NODES:
        where, this = _where_expansion_passes(text, file, composer, MAX_ALIAS_NODES, counted="added")
        raise SpecError([Diagnostic(where, f"aliases (*name) add {size - written:,} YAML nodes to the {written:,} "
                                           f"written, more than {MAX_ALIAS_NODES:,}; {this} is the first past them",
                                    "use blocks and `repeat:` to reuse a part of the spec")])
    spans: list[tuple[Path, yaml.ScalarNode]] = []
    try:
        data, common = _common_data(root, source, spans), True
    except _Uncommon:
        common = False  # (`_Builder` walks it again from the start, and says what it found)
    if not common:
        source, spans = SourceMap(file), []
        builder = _Builder(source, spans, text)
        data = builder.build(root, ())
        if builder.diagnostics:
            raise SpecError(builder.diagnostics)
    lines = line_starts(text) if spans else []
    for path, node in spans:
        start, end = node.start_mark, node.end_mark
        source.texts.setdefault(path, scalar_positions(text, lines, (start.line, start.column),
                                                       (end.line, end.column), node.style, node.value))
        if node.style == "|" or node.style == ">":
            source.blocks.setdefault(path, node.style)
    return LoadedSpec(data, source, text)


def _needs_positions(node: yaml.ScalarNode) -> bool:
    """Whether an expression string's characters are not where its value's offsets from its position
    say: a block scalar, one over several lines, or one with an escape or a tag (`SourceMap.texts`)."""
    start, end, style = node.start_mark, node.end_mark, node.style
    quotes = 2 if style == "'" or style == '"' else 0
    return start.line != end.line or end.index - start.index != len(node.value) + quotes


def _node_bound(text: str) -> int:
    """At least the number of nodes the text composes to (aliases share theirs), from the characters
    that open a slot for one: the root; a block sequence's item (`-`); a key and its value (`:` or
    `?`); a flow collection's first entry (`[`, `{`) and each further one (`,`). Over-counting (the
    same characters in strings and comments) costs only a count.

    A flow entry is one node, or a pair whose `:` or `?` counts its two; only a flow mapping's key
    written without `:` (`{a, b}`) has a value (null) that nothing counts. Where the first count
    passes MAX_NODES, those entries are bounded more closely: every `{` or `,` not followed by a `:`
    before the next bracket or comma. (JSON's `}, {` between list items would else count each item
    twice: the 100k-layer chain written as JSON came to 2.1M, past the bound, and paid the count.)
    """
    opens = text.count("{") + text.count(",")
    # (each `{` and `,` counted twice: one slot, and the null value of a key written without `:`)
    bound = 1 + text.count("-") + 2 * (text.count(":") + text.count("?")) + text.count("[") + 2 * opens
    if bound <= MAX_NODES:
        return bound  # (no closer look needed)
    return bound - len(_PAIR_OPENED.findall(text))


# A `{` or `,` whose entry has a `:` before any bracket or comma: a pair (`{a: 1`), whose `:` counts its
# two nodes, or a key holding a `:` (`{a:b, ...}`, `"x:y"`), which that `:` counts instead.
_PAIR_OPENED = re.compile(r"[{,][^:,{}\[\]]*:")


def _refuse_past_max_nodes(text: str, file: str) -> None:
    """Raise SpecError at the node past MAX_NODES, if the text has one: its parse events are counted
    as they stream (each one is freed at once), without composing anything.

    Only for texts of bracket depth <= MAX_DEPTH: libyaml's parser takes time quadratic in the depth."""
    parser = _Composer(text)
    count = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if type(event) in _NODE_EVENTS:
                count += 1
                if count > MAX_NODES:
                    mark = event.start_mark
                    raise SpecError([Diagnostic(Location(file, mark.line + 1, mark.column + 1),
                                                f"the spec has more than {MAX_NODES:,} YAML nodes (values, lists "
                                                "and mappings); this one is the first past them",
                                                _SMALLER_SPEC_HINT)])
    finally:
        parser.dispose()


_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)  # (an alias makes no node)


def _bracket_depth(text: str) -> int:
    """The deepest nesting of [ and { in the text, counting brackets inside strings too; or, where the
    text has no more than MAX_DEPTH opening brackets, their count (a bound, all the caller asks)."""
    opening = text.count("[") + text.count("{")
    if opening <= MAX_DEPTH:
        return opening
    depth = deepest = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if match.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _deepest_bracket(text: str, file: str) -> Location:
    """Where the document first opens a collection past MAX_DEPTH levels, block or flow, as PyYAML's
    scanner reads it (brackets in comments and strings are text), where the builder's own check of
    the nesting would say it; the document's start where none does."""
    opening = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
               yaml.BlockMappingStartToken)
    closing = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, opening):
                depth += 1
                if depth > MAX_DEPTH + 1:  # (the document's own collection is no level of a value's path)
                    return Location(file, token.start_mark.line + 1, token.start_mark.column + 1)
            elif isinstance(token, closing):
                depth -= 1
    except yaml.YAMLError:  # (a syntax error past the nesting: the composer's recursion came first)
        pass
    return Location(file, 1, 1)


def _expanded_size(root: yaml.Node) -> tuple[int, int, yaml.Node | None]:
    """How many nodes the document has once aliases are expanded, counted without expanding them.

    Aliased nodes are shared objects in the composed tree, so a memoised count over distinct
    nodes takes time proportional to the text, however explosive the aliases ("billion laughs").
    Returns the size (capped just above MAX_NODES), the number of distinct nodes (those written),
    and a node that contains itself, if any.
    """
    sizes: dict[int, float] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes and sizes[key] >= 0:
            continue
        children = [] if isinstance(node, yaml.ScalarNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair])
        if children_done:
            sizes[key] = 1 + sum(sizes.get(id(child), float("inf")) for child in children)
            continue
        if key in sizes:  # met again while its own children are pending: a recursive alias
            return MAX_NODES + 1, len(sizes), node
        sizes[key] = -1
        stack.append((node, True))
        stack.extend((child, False) for child in children if sizes.get(id(child), -2) < 0)
    return int(min(sizes[id(root)], MAX_NODES + 1)), len(sizes), None


def _where_expansion_passes(text: str, file: str, composer: type, bound: int,
                            counted: Literal["all", "added"]) -> tuple[Location, str]:
    """Where the document's nodes, aliases expanded, first number more than `bound`: all of them, or
    only those aliases add; and that node as a message names it: "this *name (N nodes)", "this node".

    Called once `_expanded_size` found the bound passed, to say where (the composed tree shares an
    aliased node and keeps no alias's position): the text's parse events are streamed again, as
    `_refuse_past_max_nodes` streams them, each alias adding the nodes its anchor's node expands to.
    """
    parser = composer(text)
    expanded: dict[str, int] = {}  # anchor -> the nodes its node expands to, once that node has ended
    open_nodes: list[tuple[str | None, int]] = []  # each collection being read: its anchor, the count before it
    total = added = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            kind = type(event)
            if kind is yaml.AliasEvent:
                size = expanded.get(event.anchor, 1)  # (an alias of an unknown anchor was refused in composing)
                total, added = total + size, added + size
                if (total if counted == "all" else added) > bound:
                    mark, nodes = event.start_mark, f"{size:,} node{'s' if size != 1 else ''}"
                    return Location(file, mark.line + 1, mark.column + 1), f"this *{event.anchor} ({nodes})"
            elif kind in _NODE_EVENTS:
                total += 1
                if counted == "all" and total > bound:  # (a node written after aliases brought the count near)
                    mark = event.start_mark
                    return Location(file, mark.line + 1, mark.column + 1), "this node"
                if kind is yaml.ScalarEvent:
                    if event.anchor is not None:
                        expanded[event.anchor] = 1
                else:
                    open_nodes.append((event.anchor, total - 1))
            elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
                anchor, before = open_nodes.pop()
                if anchor is not None:
                    expanded[anchor] = total - before
    finally:
        parser.dispose()
    return Location(file, 1, 1), "a node"  # (not reached: `_expanded_size` counted the same nodes)


# PyYAML's scalar constructors (ints in any base, floats, booleans, null), which read only the node;
# one loader for every build (making one cost 40 us, a tenth of composing the tutorial).
_SCALARS = yaml.SafeLoader("")


class _Unreadable(Exception):
    """A scalar `_scalar_value` cannot read; its message says why, and `hint` how to write it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# Plain scalars YAML 1.1 (PyYAML) and YAML 1.2 read differently, refused rather than read one way silently:
# `010` (octal 8, or 10), `1:30` (base 60: 90, or text), `yes`/`on`/`no`/`off` (booleans, or text), `0b100`
# (binary 4, or text: YAML 1.2's core schema has no binary), and what YAML 1.1 leaves text but YAML 1.2 reads
# as an integer: decimals with a leading zero that are no octal (`08`, `-019`), and `0o17` (YAML 1.2's octal).
_LEADING_ZERO = re.compile(r"^[-+]?0[0-7_]+$")
_LEADING_ZERO_DECIMAL = re.compile(r"^[-+]?0[0-9_]+$")  # (what a tag cannot settle either: `!!int 010`, `!!int 08`)
_BINARY = re.compile(r"^[-+]?0b[01_]+$")
_YAML12_INT = re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$")  # (in a plain scalar PyYAML left text: see above)
_YAML11_BOOLS = frozenset({"yes", "no", "on", "off"})


def _scalar_value(node: yaml.ScalarNode, *, untagged: bool) -> Any:
    """The value of a scalar of a core tag (`str`, `int`, `float`, `bool`, `null`); `untagged`: a plain
    scalar written without a tag (`_untagged`), which YAML 1.1 and 1.2 may read differently.

    Raises:
        _Unreadable: its text is not of its tag (`!!bool 3`, `!!float x`), or an integer of 10^100 or more.
    """
    written = node.value
    if node.tag == _STR:
        if untagged and written[:1] in _NUMBER_START:  # (`!!str 1e-6` is text)
            if _EXPONENT_FLOAT.match(written):
                return _finite(float(written), written)  # `eps: 1e-6`: a number, as YAML 1.2 reads it
            _refuse_yaml11_reading(node.tag, written, _shown(written))  # (`08`, `0o17`: YAML 1.2 integers)
        return written  # the common case needs no constructor
    if node.tag == _INT and _plain_decimal(written):
        return int(written)  # the common case
    text = _shown(written)
    if "_" in written and node.tag in (_INT, _FLOAT):
        _refuse_loose_underscores(written, text)
    if untagged:
        _refuse_yaml11_reading(node.tag, written, text)
    elif node.tag == _INT and _LEADING_ZERO_DECIMAL.match(written):  # (`!!int 010`: the tag says int, not which)
        digits = written.replace("_", "")
        in_yaml11 = f"octal {int(digits, 8)}" if _LEADING_ZERO.match(written) else "no number"
        raise _Unreadable(f"!!int {text} is {in_yaml11} in YAML 1.1 and {int(digits, 10)} in YAML 1.2",
                          "write the number without the leading zero (0o17 for an octal one)")
    try:
        value = _SCALARS.yaml_constructors[node.tag](_SCALARS, node)
    except (yaml.YAMLError, ValueError, OverflowError, KeyError) as exc:  # KeyError: `!!bool 3`
        reason = f"not a YAML {node.tag.rpartition(':')[2]}" if isinstance(exc, KeyError) else str(exc)
        if not str(exc).startswith("Exceeds the limit"):  # (Python's cap on decimal digits: too large, below)
            raise _Unreadable(f"cannot read scalar {text!r}: {reason}") from None
        value = MAX_INT + 1
    if isinstance(value, int) and abs(value) >= MAX_INT:  # (`0xfff...` of 6,000 digits: later str() raised)
        raise _too_large(written, text)
    return _finite(value, written) if isinstance(value, float) else value


def _finite(value: float, written: str) -> float:
    """`value`, read from `written`, unless it overflowed to infinity where `written` says no infinity.

    Raises:
        _Unreadable: `1e400`, `-1.0e+999`: past a float's range, which read as `inf` and was said as
            "got number inf" of a text that has no inf in it.
    """
    if math.isinf(value) and "inf" not in written.lower():  # (`.inf`, `-.Inf`, `!!float inf` mean it)
        # (no hint to write `.inf`: every argument of a spec is a finite number, and says so for one)
        raise _Unreadable(f"the number {_shown(written)} is out of range: a number's magnitude is at most "
                          "about 1.8e308 (a 64-bit float's largest)")
    return value


def _plain_decimal(written: str) -> bool:
    """Whether an int scalar's text is the common form `int()` reads as YAML does: up to 18 ASCII digits, no
    leading zero (YAML 1.1's `0755` is octal; `1_000`, `0x1f` and longer ones go through PyYAML)."""
    return len(written) <= 18 and written.isascii() and written.isdigit() and written[0] != "0"


def _too_large(written: str, text: str) -> _Unreadable:
    length = f" ({len(written):,} characters)" if text != written else ""
    return _Unreadable(f"the integer {text}{length} is too large: a spec's integers are smaller than 10^100 "
                       "(no tensor size, index or dtype holds more than 2^64)")


def _integer(written: str, base: int, text: str) -> int:
    """A plain scalar's integer in `base` (a sign, a `0b`/`0o` prefix and `_`s allowed), for messages.

    Raises:
        _Unreadable: 10^100 or more, as any integer in a spec (read first: Python reads no decimal of
            over 4,300 digits, nor writes one, so a long one ended in a ValueError's traceback).
    """
    digits = written.replace("_", "")
    negative = digits.startswith("-")
    digits = digits.lstrip("+-")
    digits = (digits[2:] if digits[:2] in ("0b", "0o") else digits).lstrip("0") or "0"
    if len(digits) * math.log10(base) > 101 or int(digits, base) >= MAX_INT:
        raise _too_large(written, text)
    return -int(digits, base) if negative else int(digits, base)


def _shown(written: str) -> str:
    """A scalar's text as messages quote it: a long one shortened."""
    return written if len(written) <= 40 else f"{written[:20]}...{written[-10:]}"


def _untagged(node: yaml.ScalarNode, text: str) -> bool:
    """Whether `node`, composed from `text`, is a plain scalar written without a tag: a tagged one
    (`!!bool yes`, `!!str 08`) says which reading it means. An anchor is no tag: `&e 1e-6` is read
    as `1e-6` is (it was read as tagged, so as text, and `&i 010` as YAML 1.1's octal 8)."""
    if node.style:
        return False
    start = node.start_mark.index
    if node.end_mark.index - start == len(node.value):
        return True  # (nothing before its text: the common case)
    properties = _PROPERTIES.match(text, start)  # (a plain scalar cannot begin with `&` or `!`)
    return properties is None or not any(token.startswith("!") for token in properties.group().split())


# A node's properties, its anchor and its tag in either order, each followed by white space (or a line break).
_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)+")


def _unacceptable_character(text: str, file: str, exc: yaml.reader.ReaderError) -> Diagnostic:
    r"""The error for a character YAML does not allow anywhere (a control character such as ESC or NUL,
    U+FFFE), located where it is: the reader's own position is a character offset from PyYAML's reader
    and a UTF-8 byte offset from libyaml's, and its wording names neither a line nor a column.

    >>> str(_unacceptable_character("a: 1\nb: '\x1b'", "s.yaml", yaml.reader.ReaderError("", 9, 27, "", "")).location)
    's.yaml:2:5'
    """
    character = chr(exc.character) if isinstance(exc.character, int) else str(exc.character)
    offset = text.find(character) if character else -1
    if offset < 0:  # (the reader names the first character it refuses: it is in the text)
        found = yaml.reader.Reader.NON_PRINTABLE.search(text)
        offset = found.start() if found else 0
    breaks = list(YAML_BREAK.finditer(text, 0, offset))
    line, start = len(breaks) + 1, breaks[-1].end() if breaks else 0
    code = ord(text[offset]) if offset < len(text) else 0
    kind = "a control character" if code < 0x20 or 0x7F <= code <= 0x9F else "a noncharacter"
    return Diagnostic(Location(file, line, offset - start + 1),
                      f"the character U+{code:04X} ({kind}) is not allowed in YAML, even in a comment or a "
                      "quoted string",
                      f'remove it; a string that needs it writes it as an escape in double quotes ("\\x{code:02x}")'
                      if code <= 0xFF else "remove it")


# An underscore that does not stand between two digits (hex digits after `0x`).
_LOOSE_UNDERSCORE = re.compile(r"(?<![0-9])_|_(?![0-9])")
_LOOSE_HEX_UNDERSCORE = re.compile(r"(?<![0-9A-Fa-f])_|_(?![0-9A-Fa-f])")


def _refuse_loose_underscores(written: str, text: str) -> None:
    """Raise _Unreadable for a number whose underscores do not each group digits (`1__0`, `10_`,
    `1_.5`, `0x_1F`): YAML 1.1 drops every underscore, so these read as 10, 10, 1.5 and 31, while
    Python, and the eye, take `1__0` for a mistake. `1_000` and `0x7F_FF` are read as ever."""
    loose = _LOOSE_HEX_UNDERSCORE if written.lstrip("+-")[:2].lower() == "0x" else _LOOSE_UNDERSCORE
    if loose.search(written):
        raise _Unreadable(f"{text} has an underscore that is not between two digits",
                          f"write {_shown(loose.sub('', written))}; an underscore only groups digits, as in 1_000")


def _refuse_yaml11_reading(tag: str, written: str, text: str) -> None:
    """Raise _Unreadable for a plain scalar that YAML 1.1, which PyYAML implements, reads as another
    value than YAML 1.2 does (see `_LEADING_ZERO`): a spec means one of them, and which is not clear."""
    kind = tag.rpartition(":")[2]
    if kind == "int" and _LEADING_ZERO.match(written):
        decimal, octal = _integer(written, 10, text), _integer(written, 8, text)
        if decimal != octal:  # (`007` is 7 either way)
            raise _Unreadable(f"{text} has a leading zero: YAML 1.1 reads it as octal ({octal}), YAML 1.2 as {decimal}",
                              f"write {decimal}, or {octal} for the octal value; quote it for text")
    if kind == "int" and _BINARY.match(written):
        value = _integer(written, 2, text)
        raise _Unreadable(f"{text} is the binary number {value} in YAML 1.1 and text in YAML 1.2",
                          f"write {value} for the number, or quote it for text")
    if kind == "str" and _YAML12_INT.match(written):  # (`08`, `0o17`: text to YAML 1.1, which PyYAML reads)
        value = _integer(written, 8 if written.startswith("0o") else 10, text)
        raise _Unreadable(f"{text} is text in YAML 1.1 and the integer {value} in YAML 1.2",
                          f"write {value} for the number, or quote it for text")
    if kind in ("int", "float") and ":" in written:
        raise _Unreadable(f"{text} is a base-60 number in YAML 1.1 and text in YAML 1.2",
                          "quote it for text; write the number itself for a number")
    if kind == "bool" and written.lower() in _YAML11_BOOLS:
        meaning = "true" if written.lower() in ("yes", "on") else "false"
        raise _Unreadable(f"{text} is {meaning} in YAML 1.1 and text in YAML 1.2",
                          f"write {meaning} for the boolean, or quote it for text")


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions and problems."""

    def __init__(self, source: SourceMap, spans: list[tuple[Path, yaml.ScalarNode]], text: str) -> None:
        self.source = source
        self.text = text  # (what the nodes were composed from: a scalar's anchor and tag are read in it)
        self.spans = spans  # (see `_common_node`)
        self.diagnostics: list[Diagnostic] = []
        self.nodes_built = 0
        self.active: set[int] = set()  # ids of collection nodes on the current path

    def where(self, node: yaml.Node) -> Location:
        return Location(self.source.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def fail(self, node: yaml.Node, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(self.where(node), message, hint))

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.nodes_built += 1
        if self.nodes_built > MAX_NODES:
            if self.nodes_built == MAX_NODES + 1:
                self.fail(node, f"the document expands to more than {MAX_NODES:,} YAML nodes",
                          "aliases (*name) multiply nodes; write the spec out or use blocks")
            return None
        start, scalar = node.start_mark, type(node) is yaml.ScalarNode
        # A quoted scalar's position is its first character inside the quotes, so columns
        # computed inside it (expressions) land on the right character.
        quoted = scalar and (node.style == "'" or node.style == '"')
        self.source.values.setdefault(path, (start.line + 1, start.column + 1 + quoted))
        if scalar and node.tag == _STR and node.value[:2] == "${" and _needs_positions(node):
            self.spans.append((path, node))
        if scalar and (node.tag == _STR or node.tag == _INT):
            return self.scalar(node)  # the common case: a name, an op, a size
        if isinstance(node, yaml.ScalarNode) and node.tag in _TEXT_TAGS:
            return node.value  # dates and '=' read as the text written, not as Python objects
        if node.tag not in _CORE_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self.fail(node, f"YAML tag {tag!r} is not allowed in a spec",
                      "specs hold plain data only: mappings, lists, strings, numbers, booleans and null")
            return None
        if not isinstance(node, _TAG_NODES.get(node.tag, yaml.ScalarNode)):  # `!!map 3`, `!!int [1]`: PyYAML refuses
            if node.tag == "tag:yaml.org,2002:merge" and node.value == "<<":  # YAML reads a plain << as a merge key
                self.fail(node, "'<<' is YAML's merge key, not a value", "quote it: '<<'")
                return None
            kind = {yaml.ScalarNode: "a scalar", yaml.SequenceNode: "a list"}.get(type(node), "a mapping")
            self.fail(node, f"YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')!r} cannot be given to {kind}",
                      "remove the tag: specs need none")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if len(path) > MAX_DEPTH:
            self.fail(node, f"the spec nests deeper than {MAX_DEPTH} levels")
            return None
        if id(node) in self.active:
            self.fail(node, "recursive YAML alias: a node contains itself")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, *, key: bool = False) -> Any:
        """The scalar's value; a problem reading it is reported (a key's with the fix that keeps it a key:
        quoting it, where writing `true` for YAML 1.1's reading of `on` would make it no name at all)."""
        try:
            return _scalar_value(node, untagged=_untagged(node, self.text))
        except _Unreadable as exc:
            quote = '"' if "'" in node.value else "'"
            quoted = f": {quote}{node.value}{quote}" if len(node.value) <= 40 else ""  # (a long one is shown cut)
            self.fail(node, str(exc), f"quote it, as a key is a name{quoted}" if key else exc.hint)
            return None

    def mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, yaml.Node] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is yaml.ScalarNode and key_node.tag == _STR:
                key = key_node.value  # the common case: a plain or quoted name
            elif key_node.tag == "tag:yaml.org,2002:merge":
                merged.update(self.merge_source(value_node, path))
                continue
            elif not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _CORE_TAGS:
                self.fail(key_node, "mapping keys must be plain strings")
                continue
            else:
                known = len(self.diagnostics)
                key = self.scalar(key_node, key=True)
                if len(self.diagnostics) > known:  # the key itself cannot be read (reported)
                    continue
                if not isinstance(key, str):
                    self.fail(key_node, *_key_not_text(key_node.value, key))
                    continue
            if key in first_seen:
                first = first_seen[key].start_mark
                self.fail(key_node, f"duplicate key {key!r} (first defined at line {first.line + 1}, "
                                    f"column {first.column + 1})",
                          "YAML keeps only one of them; remove or rename one")
                continue
            first_seen[key] = key_node
            child = (*path, key)
            self.source.keys[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = self.build(value_node, child)
        # `<<: *base` supplies defaults; keys written in the mapping itself win (YAML merge).
        return {**merged, **result} if merged else result

    def merge_source(self, node: yaml.Node, path: Path) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        combined: dict[str, Any] = {}
        for source in reversed(sources):
            value = self.build(source, path)
            if not isinstance(value, dict):
                self.fail(source, "a merge key '<<' must refer to a mapping")
                continue
            combined.update(value)
        return combined


def _key_not_text(written: str, key: Any) -> tuple[str, str]:
    """(message, hint) for a plain key YAML reads as a number, boolean or null (`1:`, `007:`, `true:`).

    Nearly every key in a spec is a name, and quoting one that is not (`'1'`) only swaps this error
    for the name rule's: the hint says what a name is first, and quoting for the keys that are data.
    """
    reading = ("null" if key is None else f"the boolean {written}" if isinstance(key, bool)
               else f"the integer {key}" if isinstance(key, int) else f"the number {key}")
    return (f"mapping key {written!r} must be a string; YAML reads it as {reading}",
            f"names (of layers, inputs, blocks, parameters, arguments) start with an ASCII letter: `layer_1`, not "
            f"`1`; quote a key that is not a name (in a parameter's own mapping): '{written}'")


class _Uncommon(Exception):
    """Raised by `_common_data` at a node it leaves to `_Builder`."""


# Tags of the scalars `_scalar_value` reads besides strings (PyYAML's own constructors, but for plain ints).
_CONSTRUCTED_TAGS = frozenset({"tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float",
                               _INT})
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _common_data(root: yaml.Node, source: SourceMap, spans: list[tuple[Path, yaml.ScalarNode]]) -> Any:
    """`_Builder(source, spans, text).build(root, ())` for a document it would find nothing wrong with and where
    no key is `<<`, in one lean walk: the builder's bookkeeping (its node count, the nodes on the
    current path, merged keys, the first position kept where a path is met twice) is for documents
    this walk leaves to it. Every path is met once here, so the node count is the number of paths.

    Raises:
        _Uncommon: at the first node the builder would refuse or merge (its tag, a duplicate or
            non-string key, `<<`, nesting deeper than MAX_DEPTH, an unreadable scalar), or where the
            document may have more than MAX_NODES nodes; part of `source` may have been written.
    """
    data = _common_node(root, (), source.values, source.keys, spans)
    if len(source.values) > MAX_NODES:
        raise _Uncommon
    return data


def _common_node(node: yaml.Node, path: Path, values: dict[Path, tuple[int, int]],
                 keys: dict[Path, tuple[int, int]], spans: list[tuple[Path, yaml.ScalarNode]]) -> Any:
    """The value of `node` at `path`, its position (and its keys') recorded as `_Builder.build` records
    them, and each expression string written over lines or with escapes appended to `spans`."""
    start, kind, tag = node.start_mark, type(node), node.tag
    if kind is yaml.ScalarNode:
        style, written = node.style, node.value
        # (a quoted scalar's position is its first character inside the quotes: see `_Builder.build`)
        values[path] = (start.line + 1, start.column + 1 + (style == "'" or style == '"'))
        # The common cases first, read here as `_scalar_value` reads them (a call fewer per scalar): a
        # name, an op, an expression; a size.
        if tag == _STR:
            if written[:2] == "${" and _needs_positions(node):
                spans.append((path, node))
            if style or written[:1] not in _NUMBER_START:
                return written
        elif tag == _INT and _plain_decimal(written):
            return int(written)
        elif tag in _TEXT_TAGS:
            return written
        elif tag not in _CONSTRUCTED_TAGS:
            raise _Uncommon
        if not style and node.end_mark.index - start.index != len(written):
            raise _Uncommon  # (an anchor or a tag before it, or lines: the builder reads its text)
        try:
            return _scalar_value(node, untagged=True)
        except _Unreadable:
            raise _Uncommon from None
    values[path] = (start.line + 1, start.column + 1)
    if len(path) > MAX_DEPTH or len(values) + len(node.value) > MAX_NODES:
        raise _Uncommon  # (said before its members are walked: a huge document is not held twice)
    if kind is yaml.SequenceNode and tag == _SEQ:
        return [_common_node(item, (*path, index), values, keys, spans) for index, item in enumerate(node.value)]
    if kind is not yaml.MappingNode or tag != _MAP:
        raise _Uncommon
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if type(key_node) is not yaml.ScalarNode or key_node.tag != _STR:
            raise _Uncommon  # `<<`, a key of another type or tag
        key = key_node.value
        if key in result:
            raise _Uncommon  # a duplicate key
        child = path + (key,)
        mark = key_node.start_mark
        keys[child] = (mark.line + 1, mark.column + 1)
        result[key] = _common_node(value_node, child, values, keys, spans)
    return result
