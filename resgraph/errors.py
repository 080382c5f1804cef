"""Errors as data: every user-caused problem is a `Diagnostic` with a source location.

Stages collect diagnostics instead of stopping at the first one, then raise one `SpecError`
holding all of them, so a user fixes a spec in one round trip. Internal invariants use
`assert`; user input never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Diagnostic", "Location", "ResgraphError", "SpecError", "UsageError"]


@dataclass(frozen=True, order=True)
class Location:
    """A 1-based position in a spec file (gcc's convention)."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a spec: where, what, and (optionally) how to fix it."""

    location: Location
    message: str
    hint: str | None = None

    def format(self) -> str:
        text = f"{self.location}: error: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ResgraphError(Exception):
    """Base class of every error resgraph raises on purpose."""


@dataclass
class SpecError(ResgraphError):
    """A spec is invalid; carries every diagnostic found, sorted by position."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.diagnostics = sorted(self.diagnostics, key=lambda d: d.location)
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.format()

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[Diagnostic]]]:
        # Exception pickling replays `args` (the formatted text); replay the diagnostics instead,
        # so errors cross process boundaries (multiprocessing, DDP workers) intact.
        return (type(self), (self.diagnostics,))


class UsageError(ResgraphError):
    """The caller asked for something impossible (missing file, bad option): not a spec problem."""
