"""Hints for a skip whose shapes do not fit: name the real cause and propose fixes that work.

A mismatch lists every layer between the skip's source and target that changed the spatial
size, inside block calls too, with its kernel, stride, padding and dilation and the size before
and after. The fixes depend on the cause (`ProjectionError.kind`):

- "grid" (the same grid, shrunk by unpadded layers): the padding that keeps each layer's size,
  or `projection: crop`, which aligns maps on one grid;
- "stride" and "off-centre" (a strided layer met an odd size): the nearest input sizes at which
  the skip fits, found from the guards recorded so far and kept where the whole model checks clean
  there (`fitting`), or making the layer round up; where a layer rounded up past its stride
  (ceil_mode with padding, too much padding), that layer and the setting that rounds as the
  stride does;
- "larger" (the target was upsampled, or padded, past the source): the nearest input sizes that
  fit, an upsample to an explicit size, or the padding that keeps an unstrided layer's size;
- "crossed" (larger along one spatial dim, smaller along another): the input sizes that fit, where the
  grids are one; a source of the target's size, or one that broadcasts; or a target of the source's;
- "rank" (a map into a vector, as a Linear after a Flatten): a mean over the source's spatial (sequence)
  dims in a layer of its own, to start the skip from;
- "ratio" (strides and upsamples between them compose to a fraction, e.g. /3 then x2): a source
  on an integer step from the target, or scale changes that compose to one.

A crop is never proposed where the maps are on different grids (it would misalign them).

A fix that changes layers (a padding, `ceil_mode`) changes their output sizes for every layer and skip
that reads them, not only this skip: it is checked against the whole spec with the layers changed
(`fitting.edited`). Where something else merged with a changed layer then fails to fit (a sibling
branch added or concatenated to it, a later skip that read the old size), the layers on the other side
that must change alike are proposed with it (`_siblings`), where that makes the whole spec fit; else
the hint says that the change alone does not fix the model, and where it then fails.

A broadcast the layout rule refuses ("layout", a gating skip's, and a merge or arithmetic layer's
`LayoutError`) between a stored tensor (itself, or through layers that keep its shape) and another
value is answered with the `layout` key that declares the stored tensor's dims as the other's, or
the shape that puts its values on the other's channels or features (`stored_layout_hint`). Where the
same stored tensor is also used against a value of the other layout, no key fits both uses (each fix
would move the refusal to the other): the hint says so, names both uses where they are written, and
offers a second stored tensor for the refused use, or a permute of it where that broadcasts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .fitting import Edit, Offer, Trial, edited, fitting_sizes, settings_text
from .graph import BlockNode, Graph, LayerNode, Node, SkipNode, is_block_value
from .loader import Origin
from .ops.base import TensorType
from .ops.conv import conv_output_size
from .ops.merge import broadcast_shape, layout_matters
from .ops.pool import pool_output_size
from .projections import ProjectionError
from .symbolic import Guard, hint, requirement

__all__ = ["SizeChange", "changed_layers", "skip_hint", "stored_layout_hint"]

_GEOMETRY = (("kernel_size", "kernel"), ("stride", "stride"), ("padding", "padding"), ("dilation", "dilation"),
             ("scale_factor", "scale"), ("size", "size"), ("output_padding", "output_padding"),
             ("ceil_mode", "ceil_mode"))


@dataclass(frozen=True)
class SizeChange:
    """A layer that changed the spatial size: its qualified name, op, geometry arguments and sizes."""

    name: str
    op: str
    geometry: dict[str, Any]  # kernel_size, stride, padding, dilation, ... as written
    before: tuple[int, ...]
    after: tuple[int, ...]
    origin: Origin | None = field(default=None, compare=False, repr=False)  # where the layer is written

    def __str__(self) -> str:
        geometry = ", ".join(label if self.geometry[key] is True else f"{label} {_short(self.geometry[key])}"
                             for key, label in _GEOMETRY if key in self.geometry)  # (ceil_mode: where true)
        return (f"{self.name!r} ({self.op}{', ' + geometry if geometry else ''}): "
                f"{'x'.join(map(str, self.before))} -> {'x'.join(map(str, self.after))}")

    def keeping_padding(self) -> int | str | None:
        """The padding that keeps the size of this unstrided conv or pool, or None (a strided layer; a pool
        whose kernel spans an odd size, or needs more padding than half its kernel: pools take neither
        `same` nor that, as torch checks them)."""
        kernel, stride = self.geometry.get("kernel_size"), self.geometry.get("stride", 1)
        dilation = self.geometry.get("dilation", 1)
        if not isinstance(kernel, int) or stride != 1 or not isinstance(dilation, int):
            return None
        span = dilation * (kernel - 1)
        if self.op.startswith(_POOLS):
            return span // 2 if span % 2 == 0 and span // 2 <= kernel // 2 else None
        return span // 2 if span % 2 == 0 else None if "Transpose" in self.op else "same"


def skip_hint(graph: Graph, node: SkipNode, exc: ProjectionError, guards: list[Guard],
              symbols: dict[str, tuple[str, int, int]], *, switch: Edit | None = None) -> str | None:
    """The hint for a skip that `exc` refused. `guards` are the decisions made before the skip and the
    conditions under which it would fit: the input sizes that satisfy all of them, and at which the
    whole model is valid where that can be checked (see `fitting`), are proposed. `switch`: a change of
    the skip's own keys (another `projection:`) that every fix offered makes too, and is checked with."""
    if exc.kind == "misaligned":
        return _misaligned_hint(graph, node, exc, guards, symbols)
    lead = f"set {switch.text} on this skip, and " if switch is not None else ""
    switched = (switch,) if switch is not None else ()
    skip = node.skip
    changes = changed_layers(graph, skip.source, skip.to)
    listed = "; ".join(map(str, changes))
    if exc.kind == "stride" and changes and all("kernel_size" in c.geometry and not _strided(c) for c in changes):
        # Grids unknown (after an adaptive pool) and only unstrided layers between: the step tried was a
        # guess, and what changed the size is what changes it on one grid (6 -> 4 by a kernel 3)
        exc = ProjectionError(str(exc), exc.hint, kind="grid", required=exc.required,
                              crop_required=_odd_margins(graph, skip.source, skip.to))
    if exc.kind == "grid":
        fixes: list[str | None] = []
        kept: list[Change] = [(c, (("padding", c.keeping_padding()),)) for c in changes
                              if c.keeping_padding() is not None]
        # Every unstrided layer that shrank must keep its size: where one cannot by padding (a kernel-2 pool),
        # padding the others does not make the skip fit.
        if any(c.keeping_padding() is None and "kernel_size" in c.geometry and c.geometry.get("stride", 1) == 1
               for c in changes):
            kept = []
        # A strided layer on the way that floored an odd size still drops a row once the padding is
        # fixed: the padding alone works only at an input size the strides divide.
        strided = [c for c in changes if isinstance(c.geometry.get("stride"), int) and c.geometry["stride"] > 1]
        floored = _floorings(strided, named=len(changes) > 1)
        total = math.prod(c.geometry["stride"] for c in strided)
        also = f" and an input size that is a multiple of {total} ({floored})" if floored else ""
        if kept:  # (every layer listed needs its padding: one fix, not alternatives)
            fixes.append(_whole_fix(graph, node, kept, _keeping_alike,
                                    f"keep the size with {_on(kept, grouped=True)}{also}", resized=bool(also),
                                    also=switch))
        fitting = fitting_sizes(guards, symbols, edits=switched)  # a rounding shrank it: some input sizes fit outright
        if fitting:
            fixes.append(f"use an input size at which this skip fits: {fitting.text}")
        if not exc.crop_required:
            fixes.append("set `projection: crop` on this skip (the maps share a grid, so a centre crop aligns them)")
        elif not fitting:  # odd margins: a crop would be off-centre at this size
            # (with a crop, which a try at those sizes alone cannot check)
            even = fitting_sizes([*guards[:len(guards) - len(exc.required)], *exc.crop_required], symbols,
                                 checked=False)
            if even:  # (none where the layers shrink by an odd amount at every size)
                fixes.append(f"set `projection: crop` on this skip and use an input size where the margins are even: "
                             f"{even.text}")
        return _missed(_join(f"shrunk by {listed}" if listed else "", _alternatives(fixes, lead)), fitting)
    if exc.kind == "crossed":  # (its own hint says what to start or end the skip at)
        sizes = fitting_sizes(guards, symbols, edits=switched) if exc.required else Offer("")
        fits = f"{lead}use an input size at which this skip fits: {sizes.text}; or " if sizes else ""
        return _missed(_join(listed, fits + (exc.hint or "")), sizes)
    if exc.kind == "rank":
        return _rank_hint(graph, node) or exc.hint
    if exc.kind == "layout":
        target, source = (graph.nodes[name].meta["type"] for name in node.inputs)
        return stored_layout_hint(graph, (skip.source, source), (skip.to, target)) or exc.hint
    if exc.kind == "finer":
        return _join(listed, "take the skip from a layer at the target's scale, or upsample the source first")
    if exc.kind == "ratio":
        return _join(listed, "take the skip from a layer whose grid is an integer step from the target's, or change "
                             "the strides and scale factors between them so that they compose to an integer step "
                             "(no projection resamples by a fraction)")
    if exc.kind in ("stride", "off-centre", "larger"):
        cause = {"stride": _floorings(changes, named=len(changes) > 1) or "a stride floored a size it does not divide",
                 "off-centre": "a layer dropped an odd row", "larger": "the target grew past the source"}[exc.kind]
        # A layer that rounded up past ceil(size / stride) (ceil_mode with padding, or more padding than its
        # kernel needs) makes the target larger than the stride gives: rounding up more cannot fix that.
        past = [c for c in changes if _rounded_past(c)]
        short = [c for c in changes if _strided(c) and any(a < b for a, b in zip(c.after, _ceil(c)))]
        if exc.kind == "stride" and short and not any(b % s for c in short for b, s in zip(c.before, _steps(c))):
            # no odd size met a stride: the layer's padding fell short of its kernel's span (a dilation, say)
            cause = ("a layer gave less than its stride does: " + ", ".join(
                f"{c.name!r} gave {'x'.join(map(str, c.after))} where a stride of {_short(c.geometry['stride'])} "
                f"gives {'x'.join(map(str, _ceil(c)))}" for c in short))
        adaptive = [c for c in changes if c.op.startswith("Adaptive")]
        if exc.kind == "stride" and adaptive and not _floorings(changes, named=False):
            # no stride met an odd size: an adaptive pool's output size follows no stride of its input's
            cause = "an adaptive pool set a size that no stride from the source gives: " + ", ".join(
                f"{c.name!r} {'x'.join(map(str, c.before))} -> {'x'.join(map(str, c.after))} (its output size, "
                "whatever its input's)" for c in adaptive)
        strided = [c for c in changes if _strided(c)]
        grown_or_shrunk = [c for c in changes
                           if not _strided(c) and "kernel_size" in c.geometry and c.after != c.before]
        if exc.kind == "stride" and grown_or_shrunk and not short and not past and not any(
                b % s for c in strided for b, s in zip(c.before, _steps(c))):
            # no stride met an odd size: what moved the sizes off the stride is a layer on one grid
            cause = "a layer between the strides changed the size: " + ", ".join(
                f"{c.name!r} {'x'.join(map(str, c.before))} -> {'x'.join(map(str, c.after))}" for c in grown_or_shrunk)
        if exc.kind == "stride" and past:
            cause = ("a layer rounded up past its stride: " + ", ".join(
                f"{c.name!r} gave {'x'.join(map(str, c.after))} where a stride of {_short(c.geometry['stride'])} "
                f"gives {'x'.join(map(str, _ceil(c)))}" for c in past))
        fixes: list[str | None] = []
        # Without the conditions under which the skip fits, every size where the earlier decisions
        # hold would be "fitting", the declared one (which fails) first.
        sizes = fitting_sizes(guards, symbols, edits=switched) if exc.required else Offer("")
        if sizes:
            fixes.append(f"an input size at which this skip fits: {sizes.text}")
        # An unstrided layer on the way that changed the size (an unpadded conv, a padded 1x1) moves the
        # sizes off the stride too: a rounding fix works only with its size kept, and not at all where
        # no padding keeps it (a kernel-2 pool).
        resized = [(c, c.keeping_padding()) for c in grown_or_shrunk]
        keep: list[Change] = [(c, (("padding", padding),)) for c, padding in resized]
        keeping = f", and keep the other sizes: {_on(keep)}" if keep else ""
        if exc.kind == "stride" and past and all(padding is not None for _, padding in resized):
            rounding = {c.name: _rounding_settings(c) for c in past}
            dropped: list[Change] = [(c, _DROP_CEIL) for c in past if rounding[c.name] == _DROP_CEIL]
            fixes += [_whole_fix(graph, node, [*dropped, *keep], _rounding_alike,
                                 f"{_on(dropped, grouped=True)}{keeping}", also=switch)] if dropped else []
            fixes += [_whole_fix(graph, node, [(c, settings), *keep], _rounding_alike,
                                 f"{_on([(c, settings)])}, which rounds as its stride does{keeping}", also=switch)
                      for c in past if (settings := rounding[c.name]) not in (None, _DROP_CEIL)]
        elif exc.kind == "stride" and not past and all(padding is not None for _, padding in resized):
            # Each strided layer that does not give ceil(size / stride), the size every projection gives, with
            # the setting that makes it (a layer that already rounds so at every size is not named).
            floored = [(c, settings) for c in changes if (settings := _rounding_alike(c)) is not None]
            if floored:
                fixes.append(_whole_fix(graph, node, [*floored, *keep], _rounding_alike,
                                        f"make {'it' if len(floored) == 1 else 'them'} round up as the strides do: "
                                        f"{_on(floored)}{keeping}", also=switch))
            elif keep:  # every stride rounds up already: only the sizes moved off it must be kept
                fixes.append(_whole_fix(graph, node, keep, _keeping_alike,
                                        f"keep the size with {_on(keep, grouped=True)}", also=switch))
        elif exc.kind == "larger":
            # a layer padded past its kernel grew the map: the padding that keeps its size; an upsample: a
            # fixed size (a transposed conv has none: the input sizes above are its fix)
            grown = [c for c in changes if c.geometry.get("stride", 1) == 1 and "kernel_size" in c.geometry
                     and any(a > b for a, b in zip(c.after, c.before))]
            paddings = [(c, c.keeping_padding()) for c in grown]
            if paddings and all(padding is not None for _, padding in paddings):
                grow: list[Change] = [(c, (("padding", padding),)) for c, padding in paddings]
                fixes.append(_whole_fix(graph, node, grow, _keeping_alike, f"keep the size with {_on(grow)}",
                                        also=switch))
            if any(c.op == "Upsample" for c in changes):
                fixes.append("give the upsampling layer an explicit `size:` (then the model has one input size)")
        return _missed(_join(f"{listed}: {cause}" if listed else cause, _alternatives(fixes, lead)), sizes)
    return exc.hint


def _alternatives(fixes: list[str | None], lead: str = "") -> str:
    """The fixes that work (None: one found not to), each after `lead` (a change every fix makes too)."""
    return "; or ".join(lead + fix for fix in fixes if fix)


def _misaligned_hint(graph: Graph, node: SkipNode, exc: ProjectionError, guards: list[Guard],
                     symbols: dict[str, tuple[str, int, int]]) -> str | None:
    """For a crop across a stride: the policies that follow the stride, where `projection: auto` fits the whole
    spec as it is; else why it does not fit here either, with the fixes it then needs (each checked with it),
    or, where none works, that no policy fits. (Offering auto where no size or layer change makes it fit
    would only move the error to another message of the same skip.)"""
    switch = Edit(node.origin, (("projection", "auto"),))
    unfit = exc.__cause__ if isinstance(exc.__cause__, ProjectionError) else None
    if unfit is None:  # (the sizes fit the stride: the policy alone, checked with the whole spec)
        fix = _whole_fix(graph, node, [], _keeping_alike, exc.hint or "", also=switch)
        return fix if fix is not None else (
            f"a centre crop does not follow the stride, and `projection: auto` does not fit here either: "
            f"{_new_problem(graph, node, _edited([], switch))}")
    inner = skip_hint(graph, node, unfit, [*guards, *unfit.required], symbols, switch=switch)
    if inner and " Fix: " in inner:
        return f"use projection: auto or conv (a strided 1x1 conv) or avgpool, which follow the stride, but here the " \
               f"{unfit}. {inner}"
    policies = "a centre crop does not follow the stride, and no policy that does (auto, conv, avgpool) fits here"
    return f"{policies}: the {unfit}" + (f". {inner}" if inner else "")


def _floorings(changes: list[SizeChange], named: bool) -> str:
    """What each strided layer did with a size its stride does not divide, exactly: "a stride of 3 floored
    size 10 to 3" where it gave size // stride, else "a stride of 3 met size 10, which it does not divide"
    (a kernel took more); "... in 'name'" where `named`. Empty where every stride divides its size.

    >>> down = SizeChange("down", "Conv2d", {"kernel_size": 3, "stride": 3}, (9, 10), (3, 3))
    >>> _floorings([down], named=False)
    'a stride of 3 floored size 10 to 3'
    """
    said = []
    for change in changes:
        if not _strided(change):
            continue
        phrases = dict.fromkeys(  # (one phrase for a square map's equal dims)
            f"a stride of {step} floored size {before} to {after}" if after == before // step
            else f"a stride of {step} met size {before}, which it does not divide"
            for before, after, step in zip(change.before, change.after, _steps(change))
            if isinstance(step, int) and before % step)
        said += [f"{phrase} in {change.name!r}" if named else phrase for phrase in phrases]
    return " and ".join(said)


def _steps(change: SizeChange) -> tuple[int, ...]:
    """A layer's stride per spatial dim."""
    stride = change.geometry.get("stride", 1)
    return tuple(stride) if isinstance(stride, (list, tuple)) else (stride,) * len(change.before)


def _ceil(change: SizeChange) -> tuple[int, ...]:
    """The sizes a strided layer's input gives at ceil(size / stride), per spatial dim."""
    return tuple(-(-size // step) for size, step in zip(change.before, _steps(change)))


_POOLS = ("MaxPool", "AvgPool")


def _geometry(change: SizeChange) -> tuple[int, int, int, int, bool] | None:
    """(kernel, stride, padding, dilation, ceil_mode) of a conv or pool written with one value per argument
    for every dim, else None."""
    g = change.geometry
    values = [g.get("kernel_size"), g.get("stride", 1), g.get("padding", 0), g.get("dilation", 1)]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    if not change.op.startswith(_POOLS) and not (change.op.startswith("Conv") and "Transpose" not in change.op):
        return None
    kernel, stride, padding, dilation = values
    return kernel, stride, padding, dilation, bool(g.get("ceil_mode"))


def _odd_margins(graph: Graph, source: str, target: str) -> tuple[Guard, ...]:
    """The conditions under which a centre crop of the source's map to the target's is centred (even
    margins), for each dim whose margin is odd here; empty when it already is."""
    a, b = (graph.nodes[name].meta["type"].shape[1:] for name in (source, target))
    return tuple(requirement("eq", (x - y) % 2, 0) for x, y in zip(a, b) if (hint(x) - hint(y)) % 2)


def _strided(change: SizeChange) -> bool:
    stride = change.geometry.get("stride", 1)
    return "output_padding" not in change.geometry and "scale_factor" not in change.geometry and any(
        s != 1 for s in (stride if isinstance(stride, (list, tuple)) else [stride]))


def _sizes_out(change: SizeChange, padding: int, ceil_mode: bool) -> list[tuple[int, int]]:
    """(size given, ceil(size / stride)) of a conv or pool with this padding and ceil_mode, for the input sizes
    from its kernel's span up, over several strides' worth of sizes."""
    kernel, stride, _, dilation, _ = _geometry(change)  # type: ignore[misc]
    span = dilation * (kernel - 1) + 1
    sizes = range(span, span + 8 * stride + 8)
    if change.op.startswith(_POOLS):
        return [(pool_output_size(n, kernel, stride, padding, dilation, ceil_mode), -(-n // stride)) for n in sizes]
    return [(conv_output_size(n, kernel, stride, padding, dilation), -(-n // stride)) for n in sizes]


def _rounds_up(change: SizeChange) -> bool:
    """Whether a strided conv or pool gives ceil(size / stride) at every size (unknown geometry: assumed not)."""
    geometry = _geometry(change)
    return geometry is not None and all(a == b for a, b in _sizes_out(change, geometry[2], geometry[4]))


def _rounding_settings(change: SizeChange) -> Settings | None:
    """The smallest change of settings (`padding: 1`, `ceil_mode: true`, `ceil_mode` dropped: None, or two
    of them) with which a strided conv or pool gives ceil(size / stride) at every size, as a strided 1x1
    conv or avgpool projection does; None where its geometry is unknown (per-dim values that differ, an
    uncurated op).

    A conv needs padding dilation * (kernel - 1) / 2, so one whose kernel spans an even size needs a
    kernel one larger; a pool may need ceil_mode set or dropped, a padding (at most half its kernel, as
    torch allows), or both: a kernel-3 pool with ceil_mode and no padding floors 17 to 8, and with
    padding 1 it gives 9 from 16; padding 1 without ceil_mode gives both.

    >>> _rounding_settings(SizeChange("p", "MaxPool2d", {"kernel_size": 3, "stride": 2, "ceil_mode": True},
    ...                                  (17, 17), (8, 8)))
    (('padding', 1), ('ceil_mode', None))
    """
    geometry = _geometry(change)
    if geometry is None:
        return None
    kernel, _, padding, dilation, ceil_mode = geometry
    if change.op.startswith(_POOLS):
        paddings = [padding, *(q for q in range(kernel // 2 + 1) if q != padding)]
        candidates = [(padding, not ceil_mode), *((q, ceil_mode) for q in paddings[1:]),
                      *((q, not ceil_mode) for q in paddings[1:])]
    elif dilation * (kernel - 1) % 2:
        # (no padding rounds an even span at every size: kernel + 1 spans dilation * kernel, which is even)
        return ("kernel_size", kernel + 1), ("padding", dilation * kernel // 2)
    else:
        candidates = [(dilation * (kernel - 1) // 2, ceil_mode)]
    for new_padding, new_ceil in candidates:
        if all(a == b for a, b in _sizes_out(change, new_padding, new_ceil)):
            settings: list[tuple[str, Any]] = [("padding", new_padding)] if new_padding != padding else []
            if new_ceil != ceil_mode:
                settings.append(("ceil_mode", True if new_ceil else None))
            return tuple(settings)
    return None


Settings = tuple[tuple[str, Any], ...]  # a layer's keys to set, as written in the spec (None: drop the key)
Change = tuple[SizeChange, Settings]  # a layer and the settings a fix gives it

_DROP_CEIL: Settings = (("ceil_mode", None),)


def _rounding_alike(change: SizeChange) -> Settings | None:
    """The settings with which a strided layer that does not round up already rounds up as a stride does."""
    return _rounding_settings(change) if _strided(change) and not _rounds_up(change) else None


def _keeping_alike(change: SizeChange) -> Settings | None:
    """The padding with which an unstrided conv or pool that changed the size keeps it."""
    padding = None if _strided(change) else change.keeping_padding()
    return None if padding is None else (("padding", padding),)


def _on(changes: list[Change], *, grouped: bool = False) -> str:
    """The settings on each layer as a hint writes them: "`padding: 1` on 'a' and `ceil_mode: true` on 'b'";
    `grouped`: the layers given one setting named together ("`padding: 1` on 'a' and 'b'")."""
    if not grouped:
        return " and ".join(f"{settings_text(settings)} on {change.name!r}" for change, settings in changes)
    by_setting: dict[str, list[str]] = {}
    for change, settings in changes:
        by_setting.setdefault(settings_text(settings), []).append(repr(change.name))
    return " and ".join(f"{text} on {' and '.join(names)}" for text, names in by_setting.items())


def _whole_fix(graph: Graph, node: SkipNode, changes: list[Change], alike: Callable[[SizeChange], Settings | None],
               text: str, *, resized: bool = False, also: Edit | None = None) -> str | None:
    """`text`, the fix that gives the layers in `changes` their settings, as it holds for the whole spec:
    checked with them changed (`fitting.edited`); where a value merged with a changed layer's output then
    no longer fits, with the layers on the other side of that merge given the settings `alike` gives them
    (`_siblings`), where that makes the whole spec fit (or nothing can be checked); else with what fails.
    `resized`: the fix takes another input size too, so at the declared one this skip may still fail.
    `also`: a change of the skip's own keys made with them. None where the check shows that this skip
    still fails with them (a fix that does not fix it is not offered)."""
    trial = _edited(changes, also)
    here = str(graph.where(node))
    if not resized and trial is not None and any(where == here for where, _ in trial.failures):
        return None
    outcome = _new_problem(graph, node, trial, resized)
    if outcome == "" or trial is None:
        # (None: nothing to check with, as within a try, whose hints are dropped, or once a spec failing at
        # many skips has used up its checks: the fix as this skip alone shows it, with no search for siblings,
        # which walks the graph for each merge)
        return text
    # (the spec typed with the changes made, where it was checked: the layers after this skip are typed there)
    siblings = _siblings(trial.graph if trial.graph is not None else graph,
                         graph.qualname + node.name, [change for change, _ in changes], alike)
    if siblings:
        alike_too = [(change, settings) for change, settings, _, _ in siblings]
        more = _new_problem(graph, node, _edited([*changes, *alike_too], also), resized)
        if more == "":  # (checked clean with the siblings changed alike)
            return text + "".join(
                f", and {_on([(change, settings)])} ({_where(change)}), as {merge!r} merges it with {partner!r}"
                for change, settings, merge, partner in siblings)
    changed = " and ".join(dict.fromkeys(repr(change.name) for change, _ in changes))
    return (f"{text}; this skip then fits, but that alone does not make the model fit: with it, {outcome}, so what "
            f"is merged there with {changed} (or what reads it) must change size as well")


def _where(change: SizeChange) -> str:
    return str(change.origin.locate(key=True)) if change.origin is not None else change.name


def _edited(changes: list[Change], also: Edit | None = None) -> Trial | None:
    """How a check of the whole spec goes with `changes` made, and `also` (`fitting.edited`); None where it
    cannot tell."""
    edits = tuple(Edit(change.origin, settings) for change, settings in changes if change.origin is not None)
    return edited((*edits, *((also,) if also is not None else ()))) if len(edits) == len(changes) else None


def _new_problem(graph: Graph, node: SkipNode, trial: Trial | None, resized: bool = False) -> str | None:
    """"" where `trial` found no new problem and the skip `node` fits (`resized`: or fails, as it may at the
    declared size); the first new problem ("net.yaml:8:5: layer 'sum' (add): ..."); None where there was
    no trial. A problem where the spec had one without the changes (another mistake of the spec's) is not new."""
    if trial is None:
        return None
    if trial.guards is not None:
        return ""
    before = edited(())
    # (a layer or skip refused already is another mistake of the spec's, with its own hint, though its sizes,
    # and so its message, change with these: U-Net's next stage, shrunk by a row less)
    refused_before = {where for where, _ in before.failures} if before is not None else set()
    here = str(graph.where(node))
    failures = [(where, message) for where, message in trial.failures
                if where == here and not resized or where != here and where not in refused_before]
    return f"{failures[0][0]}: {failures[0][1]}" if failures else ""


def _siblings(graph: Graph, skip: str, changed: list[SizeChange],
              alike: Callable[[SizeChange], Settings | None]) -> list[tuple[SizeChange, Settings, str, str]]:
    """The layers that must change as `changed` do for the values merged with theirs to fit again: for each
    node but the skip named `skip` that reads both a value computed from a changed layer and one that is
    not (a merge layer, a skip, a block call), the layers on the way between the two (a sibling branch
    since they forked, the way of a later skip) that `alike` gives settings to, with the merge and the
    changed value's name; found in the graph and in the block instances that hold a changed layer, until
    none is new."""
    found: list[tuple[SizeChange, Settings, str, str]] = []
    names = {change.name for change in changed}
    for level in _levels(graph, names):
        for _ in range(MAX_SIBLING_ROUNDS):
            new = _merged_siblings(level, skip, names, alike)
            if not new:
                break
            found += new
            names |= {change.name for change, _, _, _ in new}
    return found


MAX_SIBLING_ROUNDS = 4  # sibling searches after siblings were found (a sibling's own sibling, ...)


def _levels(graph: Graph, names: set[str]) -> list[Graph]:
    """`graph` and each block instance in it, nested, holding a layer named (by qualname) in `names`."""
    levels = [graph]
    for inner in graph.nodes.values():
        if isinstance(inner, BlockNode):
            for instance in inner.instances:
                if any(name.startswith(instance.qualname) for name in names):
                    levels += _levels(instance, names)
    return levels


def _merged_siblings(graph: Graph, skip: str, names: set[str],
                     alike: Callable[[SizeChange], Settings | None]) -> list[tuple[SizeChange, Settings, str, str]]:
    """One round of `_siblings` in one graph."""
    marked = {name for name, inner in graph.nodes.items() if graph.qualname + name in names
              or (isinstance(inner, BlockNode) and any(n.startswith(f"{graph.qualname}{name}.") for n in names))}
    computed = set(marked)
    found: list[tuple[SizeChange, Settings, str, str]] = []
    for name, inner in graph.nodes.items():  # (in execution order: a node's inputs come before it)
        if any(read in computed for read in inner.inputs):
            computed.add(name)
        if graph.qualname + name == skip or len(inner.inputs) < 2:
            continue
        changed = [read for read in inner.inputs if read in computed]
        for partner in changed:
            # (named by the changed layer it is computed from: 'p', not the skip 's' that added to it)
            upstream = _upstream(graph, partner)
            origin = next(n for n in graph.nodes if n in marked and n in upstream)
            for other in (read for read in inner.inputs if read not in computed):
                for change in changed_layers(graph, other, partner):
                    settings = alike(change) if change.name not in names else None
                    if settings is not None and all(change.name != c.name for c, _, _, _ in found):
                        found.append((change, settings, graph.qualname + name, graph.qualname + origin))
    return found


def _rounded_past(change: SizeChange) -> bool:
    """Whether a strided layer (not a transposed conv or an upsample) gave a size past ceil(size / stride)."""
    stride = change.geometry.get("stride", 1)
    if "output_padding" in change.geometry or "scale_factor" in change.geometry or stride in (1, [1], None):
        return False
    return any(after > ceiled for after, ceiled in zip(change.after, _ceil(change)))


def _rank_hint(graph: Graph, node: SkipNode) -> str | None:
    """For a map (or sequence) skipped into a vector (a Linear after a Flatten): the layer that makes
    the source a vector of its channels (features), which the skip can start from."""
    skip = node.skip
    source, target = (graph.nodes[name].meta.get("type") for name in (skip.source, skip.to))
    if source is None or target is None or target.rank != 1 or source.rank < 2:
        return None
    dims = list(range(2, source.rank + 1)) if source.layout == "channels_first" else list(range(1, source.rank))
    channels = source.shape[0] if source.layout == "channels_first" else source.shape[-1]
    name = f"{skip.source}_mean".replace(".", "_")
    return (f"a skip joins values with the same number of dims: average the source to ({channels},) in a layer "
            f"of its own, `- {name}: {{op: mean, dim: {dims}, input: {skip.source}}}`, and start the skip from "
            f"{name} (give the layer written after it an `input:` naming what it read before)")


def _join(what: str, fix: str) -> str:
    return f"{what}. Fix: {fix}" if what and fix else what or fix


def _missed(text: str, offer: Offer) -> str:
    """`text`, and where the sizes that fit this skip were tried and each failed further on, that no input
    size near the declared one fits the whole model (a size that fits only this skip is not offered)."""
    if not offer.missed:
        return text
    note = f"input size near the declared one fits the whole model: at {offer.missed} it fails further on"
    return f"{text}. No {note}" if text else f"no {note}"


def changed_layers(graph: Graph, source: str, target: str) -> list[SizeChange]:
    """The layers on the way from `source` to `target` that changed the spatial size, looking inside block
    calls (`'conv1' (Conv2d, kernel 3, stride 1, padding 0): 32x32 -> 30x30`), in execution order. A layer
    on a branch beside that way, run between the two, changed neither end's size and is not listed."""
    if source not in graph.nodes or target not in graph.nodes:
        return []
    between = _between(graph, source, target)
    found: list[SizeChange] = []
    for name, node in graph.nodes.items():
        if name in between:
            _collect(graph, node, found)
    return found


def _between(graph: Graph, source: str, target: str) -> set[str]:
    """The nodes on the paths between a skip's ends: those `target` is computed from (itself included)
    that are computed from `source` (not itself); where `source` is on a branch of its own, not above
    `target`, the nodes of either branch since they forked (both ends included)."""
    above_target = _upstream(graph, target)
    if source not in above_target:
        return above_target ^ _upstream(graph, source)
    below_source = {source}
    for name, node in graph.nodes.items():  # (in execution order: a node's inputs come before it)
        if any(read in below_source for read in node.inputs):
            below_source.add(name)
    return (above_target & below_source) - {source}


def _upstream(graph: Graph, name: str) -> set[str]:
    """`name` and every node it is computed from."""
    seen, stack = {name}, [name]
    while stack:
        for read in graph.nodes[stack.pop()].inputs:
            if read not in seen and read in graph.nodes:
                seen.add(read)
                stack.append(read)
    return seen


def _collect(graph: Graph, node: Node, found: list[SizeChange]) -> None:
    if isinstance(node, BlockNode):
        for instance in node.instances:
            for inner in instance.nodes.values():
                _collect(instance, inner, found)
        return
    if not isinstance(node, LayerNode) or not node.inputs or "type" not in node.meta or is_block_value(node):
        return  # a block call's value changes no size: its instance's layers did
    before, after = graph.nodes[node.inputs[0]].meta.get("type"), node.meta["type"]
    if before is None or before.rank != after.rank or before.rank < 2:
        return
    size_in, size_out = _spatial(before), _spatial(after)
    if size_in == size_out:
        return
    # The layer's own fields include defaults (stride 1, padding 0), which explain a shrink best.
    geometry = {key: _single(getattr(node.layer, key)) for key, _ in _GEOMETRY
                if getattr(node.layer, key, None) is not None and getattr(node.layer, key) is not False}
    if "stride" not in geometry and "kernel_size" in geometry and hasattr(node.layer, "stride"):
        geometry = {**geometry, "stride": geometry["kernel_size"]}  # a pool's stride defaults to its kernel
    found.append(SizeChange(graph.qualname + node.name, node.layer.op, geometry, size_in, size_out, node.origin))


def _spatial(tensor_type: Any) -> tuple[int, ...]:
    return tuple(hint(d) for d in tensor_type.shape[1:])


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))
    return str(value)


def _stored_origin(graph: Graph, name: str) -> str | None:
    """The stored tensor (`parameter`, `full`, `constant`) whose value `name` is, itself or through
    layers that keep their one input's shape and layout (`clamp`, `exp`: Swin V2's scale); None."""
    for _ in range(MAX_ORIGIN_STEPS):
        node = graph.nodes.get(name)
        if type(node) is not LayerNode:
            return None
        if "declared_layout" in type(node.layer).__pydantic_fields__:  # (one that takes a `layout` key)
            return name
        if len(node.inputs) != 1 or graph.nodes[node.inputs[0]].meta.get("type") != node.meta.get("type"):
            return None
        name = node.inputs[0]
    return None


MAX_ORIGIN_STEPS = 8  # layers followed back from a refused operand to the stored tensor it is


def _single(value: Any) -> Any:
    """An int for a per-dim value that is the same in every dim."""
    if isinstance(value, (list, tuple)) and len(set(value)) == 1:
        return value[0]
    return value


def stored_layout_hint(graph: Graph, gate: tuple[str, TensorType], target: tuple[str, TensorType]) -> str | None:
    """How to fix a broadcast the layout rule refused between the values named `gate` and `target`
    (with their types) where one of them is a stored tensor, itself or through layers that keep its
    shape (`_stored_origin`). With no `layout` key, its layout was read from its rank, not from what
    its dims are: where the two broadcast, its `layout` declared as the other's pairs their dims as
    torch does; where it holds one size, that of the other's channels or features, the shape that
    puts it there is offered. With a `layout` unlike the other's, the other's is offered, where the
    two broadcast. None where neither is such a tensor, or no fix would do.

    Where the stored tensor is also used against a value of the layout it has (a per-head scale of
    features-last scores, and of a channels-first map), that fix would only move the refusal to that
    use: the hint says one tensor cannot serve both, names both uses where they are written, and
    offers a second stored tensor for this use, or a permute or reshape of it (`_disagreeing_uses`).
    """
    for (value, mine), (other_name, other) in ((gate, target), (target, gate)):
        name = _stored_origin(graph, value)
        if name is None:
            continue
        node = graph.nodes[name]
        assert isinstance(node, LayerNode)
        declared = node.layer.field_value("declared_layout")
        fixes: list[tuple[str, Settings]] = []
        if declared is not None:  # (declared as the other's is not: `layout: features_last` on scores of a matmul)
            if declared != other.layout and broadcast_shape(mine.shape, other.shape) is not None:
                fixes.append((f"if its dims pair with those of {other_name!r} as torch broadcasts them, write "
                              f"`layout: {other.layout}` on {name!r}", (("layout", other.layout),)))
                said = (f"{name!r} declares `layout: {declared}`, but {other_name!r} {other} is "
                        f"{_dashed(other.layout)}")
        else:
            if broadcast_shape(mine.shape, other.shape) is not None:
                example = " (a per-head scale of attention scores)" if other.layout == "features_last" else ""
                fixes.append((f"if its dims pair with those of {other_name!r} {other} as torch broadcasts them"
                              f"{example}, write `layout: {other.layout}` on it", (("layout", other.layout),)))
            sizes = [size for size in mine.shape if hint(size) != 1]
            axis = 0 if other.layout == "channels_first" else other.rank - 1
            if len(sizes) == 1 and hint(sizes[0]) == hint(other.shape[axis]):
                batch = int(node.layer.field_value("batch") or 0) if node.layer.op != "reshape" else 0
                shape = [1] * batch + [hint(sizes[0]) if i == axis else 1 for i in range(mine.rank)]
                meant = "channel" if other.layout == "channels_first" else "feature"
                # (a shape of 3+ dims is read as channels-first, of fewer as features-last: where that is not the
                # other's, the shape alone is refused as well, and the layout is declared with it)
                ranked = "channels_first" if mine.rank >= 3 else "features_last"
                reshaped: Settings = (("shape", shape),) if list(map(hint, mine.shape)) != shape[batch:] else ()
                if ranked != other.layout:
                    reshaped += (("layout", other.layout),)
                if reshaped and all(reshaped != settings for _, settings in fixes):  # (not the layout key again)
                    fixes.append((f"if its {hint(sizes[0])} values are one per {meant} of {other_name!r}, write "
                                  f"{settings_text(reshaped)}", reshaped))
            said = (f"{name!r} is a {_kind(node)}, whose layout is read from its rank ({mine.rank} dims: "
                    f"{_dashed(mine.layout)})")
        if not fixes:
            continue
        disagreeing = _disagreeing_uses(graph, name, mine, other.layout)
        if disagreeing:
            return _one_tensor_two_layouts(graph, name, mine, (other_name, other), disagreeing, fixes)
        return f"{said}: " + "; ".join(text for text, _ in fixes)
    return None


Use = tuple[str, str, str, TensorType]  # (the layer or skip that reads a stored tensor, where it is written,
#                                         the value it meets there, that value's type)


def _disagreeing_uses(graph: Graph, name: str, mine: TensorType, wanted: str) -> list[Use]:
    """The uses of the stored tensor `name` whose value pairs with its dims by a layout other than `wanted`,
    the one a fix would give it (with its layout now, `mine`, they are accepted): each would be refused once
    it is declared `wanted`. Read from the spec typed as far as it can be (`fitting.edited` with nothing
    changed), where the layers after the refused one are typed; else from `graph` as typed so far."""
    checked = edited(())
    typed = graph
    if checked is not None and checked.graph is not None:
        typed = checked.graph if not graph.qualname else dict(checked.graph.subgraphs()).get(
            graph.qualname.rstrip("."), graph)
    return [use for use in _stored_uses(typed, name) if use[3].layout != wanted and use[3].layout == mine.layout
            and layout_matters(mine, use[3])]


def _stored_uses(graph: Graph, name: str) -> list[Use]:
    """Each layer or skip that meets the stored tensor `name` (itself, or through layers that keep its
    shape) with another typed value, with that value."""
    uses: list[Use] = []
    for node in graph.nodes.values():
        if len(node.inputs) < 2 or not any(_stored_origin(graph, read) == name for read in node.inputs):
            continue
        for read in node.inputs:
            other = graph.nodes[read].meta.get("type")
            if _stored_origin(graph, read) != name and other is not None:
                uses.append((graph.label(node), str(graph.where(node)), graph.qualname + read, other))
    return uses


def _one_tensor_two_layouts(graph: Graph, name: str, mine: TensorType, refused: tuple[str, TensorType],
                            disagreeing: list[Use], fixes: list[tuple[str, Settings]]) -> str:
    """The hint for a stored tensor refused against a value of one layout and used against values of the
    other elsewhere: one tensor has one layout; a second one for the refused use, or a permute of it that
    lays its channels (features) out as the refused value's, where that broadcasts with it."""
    other_name, other = refused
    node = graph.nodes[name]
    here = [use for use in _stored_uses(graph, name) if use[2] == graph.qualname + other_name]
    label, where = (here[0][0], f" at {here[0][1]}") if here else (f"the use of {other_name!r}", "")
    uses = "; ".join(f"{use_label} at {use_where} meets {value!r} {value_type}, {_dashed(value_type.layout)}"
                     for use_label, use_where, value, value_type in disagreeing)
    settings = settings_text(fixes[0][1])
    copy = f"{name}_{other.layout}"
    kind = _kind(node)
    text = (f"{name!r} ({node.origin.locate(key=True)}) is one {kind} used against values of both layouts: "
            f"{label}{where} meets {other_name!r} {other}, {_dashed(other.layout)}; {uses}. A {kind} has one "
            f"layout for all its uses, so {settings} on it would refuse the other use instead. Fix: "
            f"{'store a second tensor' if kind == 'stored tensor' else 'add a second reshape'} for {label}: a copy "
            f"of {name!r} named {copy!r} with {settings}, read there instead of {name!r}")
    dims = _channel_moved(mine)
    if dims is not None:
        view = tuple(mine.shape[d - 1] for d in dims[1:])
        if broadcast_shape(view, other.shape) is not None:
            text += (f"; or, where both uses must share its values, read it there through `- {copy}: {{op: permute, "
                     f"dims: {list(dims)}, input: {name}}}` ({_dashed(mine.layout)} {mine} to "
                     f"{_dashed(other.layout)} {view})")
    return text + " (a layer written after the new one without an `input:` would read it: name what it read)"


def _channel_moved(stored: TensorType) -> tuple[int, ...] | None:
    """The `permute` dims (batch first) that move a value's channels last (channels-first to features-last) or
    its features first; None for a value of fewer than 2 dims."""
    dims = list(range(1, stored.rank + 1))
    if stored.rank < 2:
        return None
    return (0, *dims[1:], dims[0]) if stored.layout == "channels_first" else (0, dims[-1], *dims[:-1])


def _kind(node: LayerNode) -> str:
    """What hints call a value that takes a `layout` key: a stored tensor (`parameter`, `full`, `constant`)
    or a reshape."""
    return "reshape" if node.layer.op == "reshape" else "stored tensor"


def _dashed(layout: str) -> str:
    return layout.replace("_", "-")
