"""Parameter-free tensor ops that move data, written as code in forward (stored tensors: `stored.py`).

Dims follow torch: the batch is dim 0, so `{op: transpose, dim0: 1, dim1: 2}` swaps the first
two per-sample dims, as `x.transpose(1, 2)` does. Their bases, which the stages read, are in
`tensor.py`; this module is imported when a spec names one of these ops.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from ..symbolic import specialize
from .base import (
    FLOAT_DTYPES,
    ArgumentError,
    DeclaredLayout,
    Layer,
    Layout,
    OwnGrid,
    ShapeError,
    TensorType,
    fill_sizes,
    on_grid_of,
    register_op,
    sample_dim,
)
from .tensor import SplitBase, TensorOp, ViewOp

__all__ = ["Chunk", "Mean", "Permute", "Piece", "Reshape", "Select", "Split", "Transpose"]


def _reordered(x: TensorType, order: list[int]) -> TensorType:
    """`x` with its per-sample dims in `order`, its layout and grid following the dims they are of (a
    sequence made a map, `(L, F)` to `(F, L)`, starts a grid of its own: see `OwnGrid`)."""
    layout = _moved_layout(x, order)
    grid = _moved_grid(x, order, layout)
    if grid is None and layout == "channels_first" and x.layout != "channels_first" and len(order) >= 2:
        grid = OwnGrid.fresh(len(order) - 1)
    return x.with_shape(tuple(x.shape[i] for i in order), layout, grid)


def _moved_grid(x: TensorType, order: list[int], layout: Layout) -> Any:
    """The grid scale of `x`'s dims reordered to `order` in `layout`: each spatial dim keeps its own
    step wherever it goes, as long as the channels end where `layout` has them (first, or last: a map
    permuted channels-last and back, ConvNeXt's, is on its grid still); else None.

    >>> from fractions import Fraction
    >>> x = TensorType((4, 3, 8), scale=(Fraction(2), Fraction(3)))
    >>> last = _moved_grid(x, [1, 2, 0], "features_last"); last
    (Fraction(2, 1), Fraction(3, 1))
    >>> _moved_grid(TensorType((3, 8, 4), layout="features_last", scale=last), [2, 1, 0], "channels_first")
    (Fraction(3, 1), Fraction(2, 1))
    """
    if x.scale is None or x.rank < 2:
        return None
    channels = 0 if x.layout == "channels_first" else x.rank - 1
    where = 0 if layout == "channels_first" else x.rank - 1
    if order[where] != channels:
        return None
    steps = dict(zip([axis for axis in range(x.rank) if axis != channels], x.scale))
    return on_grid_of(x.scale, [steps[axis] for position, axis in enumerate(order) if position != where])


def _grid_of(x: TensorType, kept: list[int], layout: Layout | None) -> Any:
    """The grid scale of a map made of `x`'s per-sample dims `kept` (in their new order): each spatial
    dim keeps its own step, so a skip across a transpose, a select or a mean is planned with the
    stride the layers took (`TensorType.scale`). None unless the channels stay first of a map.

    >>> from fractions import Fraction
    >>> x = TensorType((4, 3, 8, 6), scale=(Fraction(1), Fraction(2), Fraction(4)))
    >>> _grid_of(x, [0, 3, 2], "channels_first"), _grid_of(x, [1, 2, 3], "channels_first")
    ((Fraction(4, 1), Fraction(2, 1)), None)
    """
    if x.scale is None or x.layout != "channels_first" or (layout or x.layout) != "channels_first" \
            or len(kept) < 2 or kept[0] != 0:
        return None
    return on_grid_of(x.scale, [x.scale[axis - 1] for axis in kept[1:]])


def _moved_layout(x: TensorType, order: list[int]) -> Layout:
    """The layout after reordering per-sample dims: where did the channel (feature) dim go?"""
    if x.rank < 2:
        return x.layout
    channel = 0 if x.layout == "channels_first" else x.rank - 1
    position = order.index(channel)
    if position == 0:
        return "channels_first"
    if position == x.rank - 1:
        return "features_last"
    return x.layout


@register_op
class Transpose(ViewOp):
    """Swap two dims (`x.transpose(dim0, dim1)`), e.g. (C, L) -> (L, C)."""

    op: Literal["transpose"]
    dim0: int
    dim1: int

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        a, b = sample_dim(self.dim0, x.rank, "dim0"), sample_dim(self.dim1, x.rank, "dim1")
        order = list(range(x.rank))
        order[a], order[b] = order[b], order[a]
        return _reordered(x, order)

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]}.transpose({self.dim0}, {self.dim1})"


@register_op
class Permute(ViewOp):
    """Reorder dims (`x.permute(*dims)`); `dims` lists every dim, the batch (0) first."""

    op: Literal["permute"]
    dims: list[int] = Field(min_length=2)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        full = [d % (x.rank + 1) if -(x.rank + 1) <= d <= x.rank else None for d in self.dims]
        if None in full or sorted(full) != list(range(x.rank + 1)):  # type: ignore[type-var]
            raise ShapeError(f"dims={self.dims} is not an ordering of the {x.rank + 1} dims of {x} (batch included)")
        if full[0] != 0:
            raise ShapeError("dims must keep the batch first (start with 0)")
        order = [d - 1 for d in full[1:]]  # type: ignore[operator]
        return _reordered(x, order)

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]}.permute({', '.join(map(str, self.dims))})"


@register_op
class Reshape(ViewOp):
    """Reshape each sample (`x.reshape(N, *shape)`); one entry may be -1. The result's layout is read
    from its rank (3+ dims: channels-first), as an input's is, unless `layout` declares it: a per-channel
    `(C, 1)` gate of a 1-d map `(C, L)` is `layout: channels_first`."""

    op: Literal["reshape"]
    shape: list[Annotated[int, Field(ge=-1)]] = Field(min_length=1)
    declared_layout: DeclaredLayout

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        sizes = fill_sizes(list(self.shape), x.shape, "shape")
        declared = self.field_value("declared_layout")
        out = x.with_shape(sizes, declared or ("channels_first" if len(sizes) >= 3 else "features_last"))
        if out.scale is None and out.layout == "channels_first":  # a map made here: a grid of its own
            out = out.with_shape(out.shape, scale=OwnGrid.fresh(out.rank - 1))
        return out

    def code(self, operands: list[str], owner: str) -> str:
        x = operands[0]
        return f"{x}.reshape({x}.shape[0], {', '.join(map(str, self.shape))})"


@register_op
class Mean(TensorOp):
    """Average over dims (`x.mean(dim, keepdim)`), e.g. global pooling of tokens."""

    op: Literal["mean"]
    dim: int | list[int]
    keepdim: bool = False

    input_dtypes: ClassVar[frozenset[str] | None] = FLOAT_DTYPES  # torch: mean of integers has no dtype

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        written = self.dim if isinstance(self.dim, list) else [self.dim]
        if not written:  # torch reads `dim=()` as every dim, the batch too
            raise ArgumentError("dim: [] would average over every dim, the batch too; list the dims to average",
                                "dim", f"e.g. `dim: {list(range(1, x.rank + 1))}` for every per-sample dim")
        axes = [sample_dim(d, x.rank) for d in written]
        for axis in sorted({a for a in axes if axes.count(a) > 1}):
            names = sorted({d for d, a in zip(written, axes) if a == axis})
            same = "" if len(names) == 1 else (f" ({' and '.join(map(str, names))} are the same dim of a "
                                               f"{x.rank + 1}-dim tensor, batch included)")
            raise ArgumentError(f"dim={written} names dim {axis + 1} more than once{same}; torch refuses a "
                                "repeated dim", "dim", "list each dim once")
        dims = set(axes)
        shape = tuple(1 if i in dims else s for i, s in enumerate(x.shape) if self.keepdim or i not in dims)
        layout = None if len(shape) >= 2 else "features_last"
        if self.keepdim:  # (its averaged dims are 1: no grid; a skip broadcasts over them)
            return x.with_shape(shape, layout)
        return x.with_shape(shape, layout, _grid_of(x, [i for i in range(x.rank) if i not in dims], layout))

    def code(self, operands: list[str], owner: str) -> str:
        dim = tuple(self.dim) if isinstance(self.dim, list) else self.dim
        return f"{operands[0]}.mean(dim={dim}, keepdim={self.keepdim})"


@register_op
class Select(ViewOp):
    """Pick one index along a dim, dropping it (`x.select(dim, index)`), e.g. the class token."""

    op: Literal["select"]
    dim: int
    index: int

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        axis = sample_dim(self.dim, x.rank)
        if not -x.shape[axis] <= self.index < x.shape[axis]:
            raise ShapeError(f"index {self.index} is out of range for dim {self.dim} of size {x.shape[axis]}")
        shape = x.shape[:axis] + x.shape[axis + 1:]
        layout = "features_last" if len(shape) <= 2 else None
        return x.with_shape(shape, layout, _grid_of(x, [i for i in range(x.rank) if i != axis], layout))

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]}.select({self.dim}, {self.index})"


@register_op
class Chunk(SplitBase):
    """`x.chunk(chunks, dim)`: pieces of equal size (the last may be smaller), one name each."""

    op: Literal["chunk"]
    chunks: Annotated[int, Field(ge=2)]

    def sizes(self, length: int) -> list[int]:
        step = -(-length // self.chunks)  # torch.chunk: ceil(length / chunks), as many as fit
        return _pieces_of(length, step)

    def piece_code(self, operand: str, index: int) -> str:
        return f"{operand}.chunk({self.chunks}, dim={self.dim})[{index}]"

    def pieces(self, name: str) -> list[tuple[str, Layer]]:
        return _pieces(self, name)


@register_op
class Split(SplitBase):
    """`x.split(split_size, dim)`: pieces of `split_size` (an int, or one size per piece)."""

    op: Literal["split"]
    split_size: Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]]

    def sizes(self, length: int) -> list[int]:
        if isinstance(self.split_size, list):
            if sum(self.split_size) != length:
                raise ShapeError(f"split sizes {self.split_size} add up to {sum(self.split_size)}, "
                                 f"not the dim's {length}")
            return list(self.split_size)
        return _pieces_of(length, self.split_size)

    def piece_code(self, operand: str, index: int) -> str:
        size = list(self.split_size) if isinstance(self.split_size, list) else self.split_size
        return f"{operand}.split({size}, dim={self.dim})[{index}]"

    def pieces(self, name: str) -> list[tuple[str, Layer]]:
        return _pieces(self, name)


class Piece(ViewOp):
    """One named output of a chunk or split (made by the expansion stage, never written)."""

    op: str
    group: Chunk | Split
    index: int
    split: str  # the chunk/split layer's own name: a mistake of the whole group is said of it

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        return self.group.piece_types(inputs)[self.index]

    def args(self) -> dict[str, Any]:
        return {**self.group.args(), "index": self.index}

    def code(self, operands: list[str], owner: str) -> str:
        return self.group.piece_code(operands[0], self.index)


def _pieces_of(length: int, step: int) -> list[int]:
    """The sizes of `length` cut every `step`: as many full pieces as fit, then the rest.

    The number of pieces is a plain number, the sizes follow the length: on a symbolic length the
    count is what is decided (chunk(3) of 6, 7 or 9 rows gives three pieces; of 4 rows two), not the
    length itself.

    >>> _pieces_of(7, 3), _pieces_of(6, 2)
    ([3, 3, 1], [2, 2, 2])
    """
    count = specialize(-(-length // step))
    return [step] * (count - 1) + [length - (count - 1) * step]


def _pieces(group: Chunk | Split, name: str) -> list[tuple[str, Layer]]:
    """The nodes the chunk or split layer `name` stands for: (output name, Piece)."""
    return [(out, Piece(op=group.op, input=group.input, group=group, index=i, split=name))
            for i, out in enumerate(group.outputs)]
