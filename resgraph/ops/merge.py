"""Merges, shared by merge layers (`op: add`) and skip edges: add, concat and mul.

One function decides a merge's result type and one writes its code, so a skip and a layer that
merge the same tensors agree exactly. The merge layers themselves (`op: add`, `concat`, `mul`)
are in `merge_ops.py`, imported when a spec names one: skips, which most specs use, need only
these functions.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..symbolic import SymInt, broadcasts, hint, same_sizes
from .base import ArgumentError, LayoutError, ShapeError, TensorType, promote, sample_dim

__all__ = ["Merge", "broadcast_dim", "broadcast_failure", "broadcast_shape", "broadcast_types", "check_gate_layouts",
           "concat_dim", "layout_matters", "merge_code", "merge_type"]


class Merge(str, Enum):
    """How two tensors combine: elementwise sum, concatenation along a dim, or product (gating)."""

    add = "add"
    concat = "concat"
    mul = "mul"


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """Broadcasting of two per-sample shapes of one rank, or None when they do not broadcast.

    Ranks must be equal: at run time the batch dim leads both tensors, so per-sample shapes of
    different ranks would be aligned against the batch, not as NumPy aligns them.

    >>> broadcast_shape((64, 1, 1), (64, 8, 8)), broadcast_shape((8,), (3, 8))
    ((64, 8, 8), None)
    """
    if len(a) != len(b):
        return None
    dims = [broadcast_dim(x, y) for x, y in zip(a, b)]
    return None if None in dims else tuple(dims)


def broadcast_dim(x: Any, y: Any) -> Any:
    """One dim of a broadcast (None where the sizes do not broadcast), deciding on symbolic sizes only
    what broadcasting itself decides (a written 1 broadcasts whatever the other size is: no size
    decision is recorded for it). Elementwise ops and sdpa's head counts broadcast by it."""
    if _is_one(x):
        return y
    if _is_one(y):
        return x
    # One decision, the one the declared sizes took: sizes equal there stay equal (two free sizes of
    # one tensor, `x * x`: testing `x == 1` first would pin them to 1); else a size that is 1 there
    # takes 1 or the other size, as torch broadcasts it (`x in (1, y)`: testing `x == y` first recorded
    # `x != y` for a 1 against a free L, which made L = 1 "invalid"); else the two must be equal.
    if hint(x) == hint(y):
        return x if x == y else None
    if hint(x) == 1:
        return y if broadcasts(x, y) else None
    if hint(y) == 1:
        return x if broadcasts(y, x) else None
    return x if x == y else None


def _is_one(size: Any) -> bool:
    return not isinstance(size, SymInt) and size == 1


def concat_dim(written: int | None, layout: str) -> int:
    """The dim a concat joins along, for a concat skip and a concat layer alike: the one written,
    else the channels (1) of a channels-first map, the features (-1) of a features-last value (the
    target's, or the first input's, `layout`), never a sequence's positions.

    >>> concat_dim(None, "channels_first"), concat_dim(None, "features_last"), concat_dim(2, "features_last")
    (1, -1, 2)
    """
    if written is not None:
        return written
    return -1 if layout == "features_last" else 1


def merge_type(kind: Merge, types: list[TensorType], dim: int = 1) -> TensorType:
    """The type of merging `types` in order. Raises ShapeError naming the offending shapes."""
    # the result has the promoted dtype of all the tensors, as torch's `+`, `*` and `torch.cat` give it
    first = types[0]
    dtype = promote([t.dtype for t in types])
    if dtype != first.dtype or first.ids_below is not None or first.ids_from is not None:
        first = first.with_dtype(dtype)  # (else the first type itself: the same value, no copy to make and hint)
    if kind is not Merge.concat:
        if all(same_sizes(t.shape, first.shape) for t in types):  # (a skip's, after its projection: no broadcast)
            return first
        broadcast = broadcast_types(kind.value, [first, *types[1:]])
        # (by identity: `==` on a symbolic size records a guard, and a (1, D) broadcast to (L, D) would pin L to 1)
        return first if all(a is b for a, b in zip(broadcast.shape, first.shape)) else broadcast
    if any(t.rank != first.rank for t in types):
        raise ShapeError(f"concat needs tensors of one rank, got {_shapes(types)}")
    axis = sample_dim(dim, first.rank)
    for t in types:
        if t.shape[:axis] + t.shape[axis + 1:] != first.shape[:axis] + first.shape[axis + 1:]:
            raise ArgumentError(f"concat along dim {dim} needs all other dims equal, got {_shapes(types)}", "dim",
                                _concat_fix(types, axis))
    size = sum(t.shape[axis] for t in types)
    return first.with_shape((*first.shape[:axis], size, *first.shape[axis + 1:]))


def _concat_fix(types: list[TensorType], axis: int) -> str:
    """How to make a concat fit: the one dim along which the shapes do fit, if there is one, else
    what to change."""
    shapes = [tuple(hint(s) for s in t.shape) for t in types]
    fitting = [d for d in range(len(shapes[0])) if d != axis
               and all(s[:d] + s[d + 1:] == shapes[0][:d] + shapes[0][d + 1:] for s in shapes)]
    if len(fitting) == 1:
        return f"`dim: {fitting[0] + 1}` joins them (the batch is dim 0), if that is the dim meant"
    return "make every other dim equal first (a crop, a pool or an upsample to the same size)"


def broadcast_types(op: str, inputs: list[TensorType]) -> TensorType:
    """The type of an elementwise op over `inputs` (add, mul, sub...), broadcasting their shapes; the
    first input's dtype (callers promote it).

    Raises:
        ShapeError: the shapes do not broadcast, or a broadcast would pair a features-last
            tensor's features with a channels-first map's channels (see `check_gate_layouts`).
    """
    first = inputs[0]
    shape: tuple[Any, ...] | None = first.shape
    for index, other in enumerate(inputs[1:], 1):
        check_gate_layouts(other, first, "gate" if op == "mul" else "operand", index)
        shape = broadcast_shape(shape, other.shape) if shape is not None else None
    if shape is None:
        raise broadcast_failure(op, inputs)
    return first.with_shape(shape)


def _shapes(types: list[TensorType]) -> str:
    """`(64, 8, 8), (3, 8, 8)`: the merged shapes, as errors name them (written only for an error:
    every skip's merge is typed, and formatting its shapes cost a tenth of it)."""
    return ", ".join(str(t) for t in types)


def broadcast_failure(op: str, types: list[TensorType]) -> ShapeError:
    """The error for `types` that do not broadcast; where their ranks differ, it says why (the batch
    leads each tensor at run time, so dims would pair wrongly) and the reshape that lines them up."""
    shapes = _shapes(types)
    rank, low = max(t.rank for t in types), min(t.rank for t in types)
    if rank == low:
        return ShapeError(f"{op} needs broadcastable shapes, got {shapes}")
    why = (f"{op} needs broadcastable shapes, got {shapes} (per-sample shapes need one rank: the batch dim leads "
           "each tensor")
    long = [t for t in types if t.rank > low]
    if all(_is_one(size) for t in long for size in t.shape[:t.rank - low]):
        # (1, C, 1, 1) against (C, H, W): a batch dim written into a per-sample shape
        fixes = ", ".join(f"{t} as {TensorType(tuple(t.shape[t.rank - low:]))}" for t in long)
        return ShapeError(f"{why}; leave the batch out: write {fixes}, or `batch: true` on a stored tensor)")
    widest = next(t for t in types if t.rank == rank)
    fixes, relaid = [], False
    for t in types:
        if t.rank < rank:
            # Its 1s go where its sizes line up with the widest's dims: before them where torch's trailing
            # alignment fits, else where another does ((C,) against a channels-first (C, L): after them).
            shape = _lined_up(t.shape, widest.shape)
            fixes.append(f"{t} to {TensorType(shape)}")
            relaid |= any(hint(a) != hint(b) for a, b in zip(shape, widest.shape)) and \
                ("channels_first" if rank >= 3 else "features_last") != widest.layout
    # (a value of 3+ dims is read as channels-first, of fewer as features-last: `layout` on a reshape or a
    # stored tensor says otherwise, where the broadcast would hold it to the other's layout)
    declared = f" with `layout: {widest.layout}`" if relaid else ""
    return ShapeError(f"{why}; reshape {', '.join(fixes)}{declared})")


def _lined_up(shape: tuple[Any, ...], wide: tuple[Any, ...]) -> tuple[Any, ...]:
    """`shape` with 1s added to the rank of `wide` so that each of its sizes is 1 or the size of `wide` it
    meets: at the end (torch's alignment) where that fits, else at the first place that does; at the end
    where none does.

    >>> _lined_up((4,), (4, 10)), _lined_up((10,), (4, 10)), _lined_up((6,), (4, 6, 9))
    ((4, 1), (1, 10), (1, 6, 1))
    """
    missing = len(wide) - len(shape)
    for offset in (missing, *range(missing)):
        if all(_is_one(size) or hint(size) == hint(wide[offset + i]) for i, size in enumerate(shape)):
            return (1,) * offset + tuple(shape) + (1,) * (missing - offset)
    return (1,) * missing + tuple(shape)


def layout_matters(gate: TensorType, target: TensorType) -> bool:
    """Whether broadcasting `gate` into `target` pairs dims by layout: same rank (2+), sizes that differ."""
    return gate.rank == target.rank >= 2 and any(hint(a) != hint(b) for a, b in zip(gate.shape, target.shape))


def check_gate_layouts(gate: TensorType, target: TensorType, what: str = "gate", index: int = 1) -> None:
    """A broadcast gate must line its channels up with the target's: a features-last (1, 1, C) gate
    broadcast into a channels-first (C, H, W) map would scale its width instead, silently when H = W = C.
    (So must any broadcast operand, an added bias or a subtracted mean: `what` names it; `index` is its
    position among the op's inputs, the target's being 0.) A stored tensor declares its layout
    (`layout: features_last` on a per-head `(H, 1, 1)` scale of features-last attention scores).

    Raises:
        LayoutError: the layouts differ and broadcasting would pair different axes.
    """
    if layout_matters(gate, target) and gate.layout != target.layout:
        raise LayoutError(f"the {what} {gate} is {gate.layout.replace('_', '-')} but the target {target} is "
                          f"{target.layout.replace('_', '-')}: broadcasting would pair its "
                          f"{'features' if gate.layout == 'features_last' else 'channels'} with the target's "
                          f"{'last dim' if gate.layout == 'features_last' else 'first dim'}", index)


def merge_code(kind: Merge, operands: list[str], dim: int = 1) -> str:
    """A Python expression merging the named operands."""
    if kind is Merge.add:
        return " + ".join(operands)
    if kind is Merge.mul:
        return " * ".join(operands)
    return f"torch.cat([{', '.join(operands)}], dim={dim})"
