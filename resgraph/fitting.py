"""Input sizes a hint offers, checked against the whole model (stage 5, for `hints`).

A skip that does not fit is reported where inference meets it, from the guards recorded so far:
the sizes they admit make that skip fit, but a skip further on may still fail there (U-Net at
580x580: 579x579 fits copy4, then copy3 fails). So where the caller can check the whole spec at
other sizes (`offering`, which the pipeline enters), candidates are tried, nearest first: a failed
try adds the conditions of each skip that failed there (`refused`) and the next candidate is solved
from all of them; a clean try gives guards that hold for the whole model, and the sizes offered are
the nearest at which those hold (`sizes` shows why that is sound). At most MAX_TRIALS checks per
hint and MAX_CHECKS per check of a spec: where none is clean by then, the hint says so. Without a
way to check (a graph typed directly by `infer_shapes`), the sizes are the guards' alone.

A hint that proposes changing layers (a padding, `ceil_mode`) checks the whole spec with them changed
(`edited`): a layer merged elsewhere with one that changed size (a sibling branch, a later skip)
may no longer fit, and a fix that moves the error is not offered as one.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import Diagnostic, Location, ResgraphError, SpecError
from .graph import Graph
from .loader import Origin
from .sizes import valid_sizes_mask
from .symbolic import COMPARISONS, Guard, evaluate, size_symbols

__all__ = ["MAX_CHECKS", "MAX_EDIT_CHECKS", "MAX_TRIALS", "Edit", "EditCheck", "Offer", "Trial", "edited",
           "fitting_sizes", "offering", "refused", "settings_text", "tried", "tried_edited", "trying"]

MAX_TRIALS = 8  # checks of the whole spec one hint may make (a U-Net of n stages needs at most n)
MAX_CHECKS = 16  # ... and all hints of one check together (a spec failing at many skips stays fast)
MAX_EDIT_CHECKS = 12  # checks with layers changed, of all hints of one check together

Sizes = tuple[int, ...]  # an input's free dims, in the order of its symbols


@dataclass(frozen=True)
class Trial:
    """How a check of the whole spec at other input sizes went: the guards it recorded where it was
    clean (None where it failed), and the conditions of each skip that failed there."""

    guards: tuple[Guard, ...] | None
    conditions: tuple[Guard, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()  # each error of a failed check: ("net.yaml:8:5", "layer 'sum' ...")
    graph: Graph | None = field(default=None, compare=False, repr=False)  # typed as far as it could be


@dataclass(frozen=True)
class Edit:
    """A change to one layer as the spec writes it: where its mapping is (a block's layer: in the block's
    definition, so every call of the block changes), and the keys to set, a value of None dropping one.

    >>> from resgraph.loader import SourceMap
    >>> Edit(Origin(SourceMap("net.yaml"), ("layers", 1, "p")), (("ceil_mode", True),)).text
    '`ceil_mode: true`'
    """

    origin: Origin
    settings: tuple[tuple[str, Any], ...]

    @property
    def text(self) -> str:
        return settings_text(self.settings)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.origin.source.file, self.origin.path, self.settings)


def settings_text(settings: tuple[tuple[str, Any], ...]) -> str:
    """Settings as a hint writes them: "`padding: 1`", "drop `ceil_mode: true`" (a value of None).

    >>> settings_text((("padding", 1), ("ceil_mode", None)))
    '`padding: 1` and drop `ceil_mode: true`'
    """
    return " and ".join(f"drop `{key}: true`" if value is None else f"`{key}: {_yaml(value)}`"
                        for key, value in settings)


def _yaml(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


# (edits, and other input sizes where given: input -> {axis: size}) -> Trial, or None where it cannot apply them
EditCheck = Callable[[tuple[Edit, ...], "dict[str, dict[int, int]] | None"], "Trial | None"]


@dataclass
class _Search:
    """A check's state: how to try the spec at other sizes (None inside such a try) and with layers
    changed, the tries made, and, inside a try, the conditions of the skips that failed."""

    check: Callable[[dict[str, dict[int, int]]], Trial] | None
    edit: EditCheck | None = None
    done: dict[tuple[Any, ...], Trial | None] = field(default_factory=dict)  # (sizes tried, and edits made with them)
    edits_done: dict[tuple[Any, ...], Trial | None] = field(default_factory=dict)
    conditions: list[Guard] = field(default_factory=list)


_SEARCH: contextvars.ContextVar[_Search | None] = contextvars.ContextVar("fitting_search", default=None)


@contextmanager
def offering(check: Callable[[dict[str, dict[int, int]]], Trial], edit: EditCheck | None = None) -> Iterator[None]:
    """Within this, hints offer only sizes that `check` (input -> {axis: size} -> Trial) found clean, and
    changes to layers that `edit` (edits -> Trial, or None where it cannot apply them) found clean.
    Inside a try (`tried`), it changes nothing: a try's hints try nothing themselves."""
    token = _SEARCH.set(_Search(check, edit)) if _SEARCH.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _SEARCH.reset(token)


def tried(run: Callable[[], Graph]) -> Trial:
    """Run a whole check at other sizes (`run` raises a ResgraphError where it fails) and say how it went;
    its own hints try nothing."""
    return replace(_tried(lambda _: run()), graph=None)  # (kept per size tried: the guards are what is read)


def tried_edited(run: Callable[[list[Diagnostic]], Graph]) -> Trial:
    """Run a whole check with layers changed (`run` reports each problem to the list it is given, and
    returns the graph typed as far as it could be) and say how it went, with that graph; its own hints
    try nothing."""
    return _tried(run)


def _tried(run: Callable[[list[Diagnostic]], Graph]) -> Trial:
    search = _Search(None)
    token = _SEARCH.set(search)
    diagnostics: list[Diagnostic] = []
    try:
        graph = run(diagnostics)
    except ResgraphError as exc:
        found = exc.diagnostics if isinstance(exc, SpecError) else [Diagnostic(Location(""), str(exc))]
        return Trial(None, tuple(search.conditions), _failures(found))
    finally:
        _SEARCH.reset(token)
    if diagnostics:
        return Trial(None, tuple(search.conditions), _failures(diagnostics), graph)
    return Trial(tuple(graph.meta.get("guards", ())), graph=graph)


def _failures(diagnostics: list[Diagnostic]) -> tuple[tuple[str, str], ...]:
    return tuple((str(d.location), d.message) for d in sorted(diagnostics, key=lambda d: d.location))


def edited(edits: tuple[Edit, ...]) -> Trial | None:
    """How a check of the whole spec at its input sizes goes with `edits` applied, as a user who took a
    hint would run it (no edits: the spec as written, typed past the layer a hint is about, each layer
    whose inputs are typed); None where it cannot be told (no way to check: a graph typed directly, a try's
    own hints, the checks of this spec used up; an edit the checker cannot apply: a layer of an
    imported library)."""
    search = _SEARCH.get()
    if search is None or search.check is None or search.edit is None:
        return None
    key = tuple(sorted(edit.key for edit in edits))
    if key in search.edits_done:
        return search.edits_done[key]
    if len(search.edits_done) >= MAX_EDIT_CHECKS:
        return None
    trial = search.edit(edits, None)
    # (kept without its graph, but the spec's as written, which hints read to see past the layer refused: a
    # hint reads the graph of its changes once, and a large spec's graphs add up)
    search.edits_done[key] = None if trial is None else trial if not edits else replace(trial, graph=None)
    return trial


def trying() -> bool:
    """Whether a try of the spec (at other sizes, or with layers changed) is running: only whether it
    fails, and where, is read of it, so its skips' hints, each a search of its own, are not made."""
    search = _SEARCH.get()
    return search is not None and search.check is None


def refused(conditions: list[Guard]) -> None:
    """Note the conditions under which a skip that failed would fit (the decisions before it with them),
    where a try at other sizes is running: the next candidate must meet them too."""
    search = _SEARCH.get()
    if search is not None and search.check is None:
        search.conditions += conditions


@dataclass(frozen=True)
class Offer:
    """The sizes a hint offers ("'x' 572x572 (or 588x588, 556x556)"), '' where none; `missed` says which
    candidates were tried and failed where none was found clean (else '')."""

    text: str
    missed: str = ""

    def __bool__(self) -> bool:
        return bool(self.text)


def fitting_sizes(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], count: int = 3, *,
                  checked: bool = True, edits: tuple[Edit, ...] = ()) -> Offer:
    """The input sizes nearest the declared ones at which every guard holds: square where the input is
    declared square, else each failing dim moved to its nearest sizes (`'x' 16x22`). With `checked`
    and a way to check the spec (`offering`), only sizes at which the whole model is valid.
    `checked=False` for sizes offered with another change to the spec (a crop), which a try at
    those sizes alone cannot check; `edits`: the changes offered with them, made in each try (where
    they cannot be made, no size is offered).

    >>> from resgraph.symbolic import SymInt, requirement
    >>> fitting_sizes([requirement("eq", SymInt.symbol("x.L", 9) % 2, 0)], {"x.L": ("x", 1, 9)})
    Offer(text="'x' 8 (or 10, 6)", missed='')
    """
    if not guards or not symbols:
        return Offer("")
    per_input: dict[str, list[str]] = {}
    for symbol, (input_name, _, _) in symbols.items():
        per_input.setdefault(input_name, []).append(symbol)
    env = {symbol: value for symbol, (_, _, value) in symbols.items()}
    reads = [size_symbols((guard.left, guard.right)) for guard in guards]
    search = _SEARCH.get() if checked else None
    texts, missed = [], []
    for input_name, names in per_input.items():
        # A condition on none of this input's dims (sizes an adaptive pool fixed, another input's dims)
        # that fails at the declared sizes fails at every size of this input: none fits (the solver
        # would skip it, and offer the declared size itself).
        if any(not read & set(names) and not _holds(guard, env) for guard, read in zip(guards, reads)):
            continue
        if search is None or search.check is None:
            shown = _nearest(guards, symbols, names, count)
        else:
            shown, failed = _checked(search, guards, symbols, input_name, names, count, edits)
            if not shown and failed:
                more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
                missed.append(f"{input_name!r} " + ", ".join(map(_size_text, failed[:3])) + more)
        if shown:
            texts.append(f"{input_name!r} {_size_text(shown[0])}"
                         + (f" (or {', '.join(map(_size_text, shown[1:]))})" if len(shown) > 1 else ""))
    return Offer("; ".join(texts), "; ".join(missed) if not texts else "")


def _size_text(sizes: Sizes) -> str:
    return "x".join(map(str, sizes))


def _checked(search: _Search, guards: list[Guard], symbols: dict[str, tuple[str, int, int]], input_name: str,
             names: list[str], count: int, edits: tuple[Edit, ...] = ()) -> tuple[list[Sizes], list[Sizes]]:
    """(the sizes of `input_name` to offer, the candidates tried that failed): candidates are tried nearest
    first, each failure's conditions narrowing the next (see the module's docstring), with `edits` made."""
    conditions = list(guards)
    failed: list[Sizes] = []
    for _ in range(MAX_TRIALS):
        if len(search.done) >= MAX_CHECKS:
            break
        candidates = [c for c in _nearest(conditions, symbols, names, count + len(failed)) if c not in failed]
        if not candidates:
            break
        candidate = candidates[0]
        key = ((input_name, candidate), *sorted(edit.key for edit in edits))
        if key not in search.done:
            assert search.check is not None
            sizes = {input_name: {symbols[name][1]: size for name, size in zip(names, candidate)}}
            search.done[key] = (search.check(sizes) if not edits else
                                None if search.edit is None else search.edit(edits, sizes))
        trial = search.done[key]
        if trial is None:  # (the edits cannot be made: nothing offered can be checked)
            return [], []
        if trial.guards is not None:  # clean: the sizes where its guards hold are valid as this one is
            return _nearest(list(trial.guards), symbols, names, count) or [candidate], failed
        failed.append(candidate)
        conditions += trial.conditions
    return [], failed


def _nearest(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], names: list[str],
             count: int) -> list[Sizes]:
    """The `count` sizes of one input's free dims (`names`) nearest its declared ones at which every guard
    holds: square where it is declared square, else per dim (`_nearest_per_dim`)."""
    declared = [symbols[name][2] for name in names]
    if len(set(declared)) != 1:
        return _nearest_per_dim(guards, symbols, names, count)
    low, high = 1, max(2048, 2 * declared[0])
    valid, _ = valid_sizes_mask(guards, symbols, set(names), low, high)
    sizes = [low + index for index, ok in enumerate(valid) if ok]
    return [(n,) * len(names) for n in sorted(sizes, key=lambda n: (abs(n - declared[0]), n))[:count]]


def _nearest_per_dim(guards: list[Guard], symbols: dict[str, tuple[str, int, int]], names: list[str],
                     count: int) -> list[Sizes]:
    """For an input declared non-square: its sizes with each dim that fails moved to its nearest valid
    sizes (solved alone, the others at their declared sizes), the i-th nearest of each together, kept
    where every guard holds."""
    options = []
    for name in names:
        declared = symbols[name][2]
        low, high = 1, max(2048, 2 * declared)
        valid, _ = valid_sizes_mask(guards, symbols, {name}, low, high)
        sizes = sorted((low + index for index, ok in enumerate(valid) if ok), key=lambda n: (abs(n - declared), n))
        options.append(sizes[:count] if sizes and sizes[0] != declared else [declared] * count)
    combos = []
    for choice in zip(*options):
        env = {symbol: value for symbol, (_, _, value) in symbols.items()}
        env.update(zip(names, choice))
        if all(_holds(guard, env) for guard in guards):
            combos.append(tuple(choice))
    return list(dict.fromkeys(combos))


def _holds(guard: Guard, env: dict[str, int]) -> bool:
    """Whether `guard` decides as it did at the sizes in `env` (symbol -> size)."""
    return COMPARISONS[guard.op](evaluate(guard.left, env), evaluate(guard.right, env)) == guard.outcome
