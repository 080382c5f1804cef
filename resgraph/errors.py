"""Errors as data: every user-caused problem is a `Diagnostic` with a source location.

Stages collect diagnostics instead of stopping at the first one, then raise one `SpecError`
holding all of them, so a user fixes a spec in one round trip. Internal invariants use
`assert`; user input never does.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

__all__ = ["MAX_MESSAGE", "Diagnostic", "Location", "OverrideError", "ResgraphError", "SpecError", "UsageError",
           "one_line", "printable", "shortened"]

# Characters a terminal acts on rather than shows: C0/C1 controls (ANSI escapes start with ESC),
# format characters (bidirectional overrides can reorder what is displayed), surrogates (from
# undecodable file names) and unassigned code points. Newlines and tabs lay messages out.
_UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def printable(text: str) -> str:
    """`text` with every character a terminal would act on written as an escape (`\\x1b`).

    Everything resgraph echoes (file names, names and values from a spec) goes through this
    where diagnostics and errors are formatted, so a spec cannot move the cursor, recolour the
    terminal or hide text.

    >>> printable("ok \\x1b[31mred\\x1b[0m\\nnext")
    'ok \\\\x1b[31mred\\\\x1b[0m\\nnext'
    """
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in _UNSHOWN else _escape(ch) for ch in text)


# Line breaks and tabs, which `printable` keeps for laying messages out, inside one line of output
# (a table cell, a file name): there they would start a line of their own, forging a row or a message.
_LINE_BREAKS = str.maketrans({"\n": "\\n", "\t": "\\t", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def one_line(text: str) -> str:
    """`printable(text)` with line breaks and tabs escaped too: a value shown within one line.

    >>> one_line("a\\nTotal: 0\\x1b[2J")
    'a\\\\nTotal: 0\\\\x1b[2J'
    """
    return printable(text).translate(_LINE_BREAKS)


# The most characters of one message or hint shown: a value echoed from a spec (a 300,000-character
# op name) is cut in the middle, keeping the start that says what is wrong and the end with its advice.
MAX_MESSAGE = 2000


def shortened(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, or its start and end around a note of how much was left out when it is longer than `limit`.

    >>> shortened("unknown op '" + "a" * 100 + "'; did you mean 'Linear'?", 80)
    "unknown op 'aaaaaaaaaaaaaaaaaa[... 87 characters ...]d you mean 'Linear'?"
    """
    if len(text) <= limit:
        return text
    tail = limit // 4
    head = limit - tail - 30  # room for the note
    return f"{text[:head]}[... {len(text) - head - tail:,} characters ...]{text[-tail:]}"


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@dataclass(frozen=True, order=True)
class Location:
    """A 1-based position in a spec file (gcc's convention)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        file = one_line(self.file)  # a file name with a newline would start a forged diagnostic
        if self.line <= 0:
            return file
        return f"{file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec: where, what, and (optionally) how to fix it."""

    location: Location
    message: str
    hint: str | None = None

    def format(self) -> str:
        """`file:line:col: error: message` and an indented hint, safe to print to a terminal."""
        # One line each: a newline in an echoed value (an import path, a name) would forge a diagnostic.
        text = f"{self.location}: error: {one_line(shortened(self.message))}"
        if self.hint:
            text += f"\n  hint: {one_line(shortened(self.hint))}"
        return text


class ResgraphError(Exception):
    """Base class of every error resgraph raises on purpose; `str()` of one is safe to print."""

    def __str__(self) -> str:
        return printable(super().__str__())


@dataclass
class SpecError(ResgraphError):
    """A spec is invalid; carries every diagnostic found, sorted by position, each once.

    >>> where = Location("net.yaml", 7, 44)
    >>> twice = Diagnostic(where, "in ${widht}: unknown name 'widht'")
    >>> len(SpecError([twice, Diagnostic(where, "another problem"), twice]).diagnostics)
    2
    """

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Identical diagnostics (location, message and hint) are one problem found twice: a YAML alias
        # or `<<:` merge puts one node, with one position, in several places, and each is checked.
        # Distinct problems at one location are all kept; the first of each stays first among equals.
        self.diagnostics = sorted(dict.fromkeys(self.diagnostics), key=lambda d: d.location)
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.format()

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[Diagnostic]]]:
        # Exception pickling replays `args` (the formatted text); replay the diagnostics instead,
        # so errors cross process boundaries (multiprocessing, DDP workers) intact.
        return (type(self), (self.diagnostics,))


class OverrideError(SpecError):
    """A parameter override cannot apply to the spec (it names no declared parameter, or holds an
    expression): a mistake of the caller's `--set` or `params=`, not of the spec, which is why the
    command line exits with its usage code. A `SpecError` still, with its diagnostics, for Python."""


class UsageError(ResgraphError):
    """The caller asked for something impossible (missing file, bad option): not a spec problem."""

    def __str__(self) -> str:
        # One line: the message names files and options as given, and a newline in one would forge
        # a second `resgraph: error:` line.
        return one_line(shortened(Exception.__str__(self)))
