"""'Did you mean' suggestions for misspelt keys, op names and node references."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["did_you_mean", "closest"]


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `word`, if any is similar enough; case-insensitive first.

    A `word` or candidate that is not a string (a name given from Python as a number) matches nothing.

    >>> closest("Conv2D", ["Conv2d", "Linear"]), closest(3, ["x"])
    ('Conv2d', None)
    """
    import difflib  # only a mistake needs it: a valid spec's check does not pay for importing it

    if not isinstance(word, str):
        return None
    pool = [c for c in dict.fromkeys(candidates) if isinstance(c, str)]
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches:
        by_lower = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        matches = [lowered[m] for m in by_lower]
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` or an empty string.

    >>> did_you_mean("kernal_size", ["kernel_size", "stride"])
    "; did you mean 'kernel_size'?"
    """
    match = closest(word, candidates)
    return f"; did you mean {match!r}?" if match and match != word else ""
