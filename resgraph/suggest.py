"""'Did you mean' suggestions for misspelt keys, op names and node references."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable

__all__ = ["MAX_COMPARED", "did_you_mean", "closest", "suggestion_budget"]

# Candidates compared, all suggestions of one check together (`suggestion_budget`): each costs
# difflib up to 20 us, and a spec with thousands of misspelt names among thousands of others
# made the error path quadratic (2,000 of each: 73 s; 8,000: many minutes). Past the bound, the
# remaining errors are reported without a suggestion.
MAX_COMPARED = 100_000
_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("resgraph_suggestion_budget",
                                                                           default=None)


class suggestion_budget:  # (named as a function: used as `with suggestion_budget():`)
    """Bound the candidates that `closest` compares inside, to MAX_COMPARED in all (an outer
    budget in force is kept: one check, one bound). Outside any, suggestions are not bounded."""

    __slots__ = ("token",)

    def __enter__(self) -> None:
        self.token = _BUDGET.set([MAX_COMPARED]) if _BUDGET.get() is None else None

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _BUDGET.reset(self.token)


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `word`, if any is similar enough; case-insensitive first.

    A `word` or candidate that is not a string (a name given from Python as a number) matches nothing,
    and so does every word once a `suggestion_budget` in force is spent (the candidates not even read).

    >>> closest("Conv2D", ["Conv2d", "Linear"]), closest(3, ["x"])
    ('Conv2d', None)
    """
    import difflib  # only a mistake needs it: a valid spec's check does not pay for importing it

    budget = _BUDGET.get()
    if not isinstance(word, str) or budget is not None and budget[0] <= 0:
        return None
    pool = [c for c in dict.fromkeys(candidates) if isinstance(c, str)]
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return lowered[word.lower()]
    if budget is not None:
        budget[0] -= len(pool) + len(lowered)  # (the second pass, by lower case, compares them again)
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
