"""Parameter-free tensor ops that move data, written as code in forward (stored tensors: `stored.py`).

Dims follow torch: the batch is dim 0, so `{op: transpose, dim0: 1, dim1: 2}` swaps the first
two per-sample dims, as `x.transpose(1, 2)` does.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .base import (
    FLOAT_DTYPES,
    ArgumentError,
    Identifier,
    Layer,
    Layout,
    ShapeError,
    TensorType,
    fill_sizes,
    register_op,
    sample_dim,
)

__all__ = ["BlockOutput", "Chunk", "Mean", "Permute", "Piece", "Reshape", "Select", "Split", "SplitBase",
           "Transpose", "pieces"]


class TensorOp(Layer):
    """A parameter-free op written as one expression on its input."""

    code_only: ClassVar[bool] = True


class ViewOp(TensorOp):
    """A tensor op whose result is a view of its input (same storage): transpose, permute,
    select, chunk and split pieces, and reshape (a view where the strides allow: counted as one)."""

    view: ClassVar[bool] = True


def _reordered(x: TensorType, order: list[int]) -> TensorType:
    """`x` with its per-sample dims in `order`, its layout following the channel dim."""
    return x.with_shape(tuple(x.shape[i] for i in order), _moved_layout(x, order))


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
    """Reshape each sample (`x.reshape(N, *shape)`); one entry may be -1."""

    op: Literal["reshape"]
    shape: list[Annotated[int, Field(ge=-1)]] = Field(min_length=1)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        sizes = fill_sizes(list(self.shape), math.prod(x.shape), "shape")
        return x.with_shape(sizes, "channels_first" if len(sizes) >= 3 else "features_last")

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
        return x.with_shape(shape, None if len(shape) >= 2 else "features_last")

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
        return x.with_shape(shape, "features_last" if len(shape) <= 2 else None)

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]}.select({self.dim}, {self.index})"


class SplitBase(ViewOp):
    """An op with several named outputs: the expansion stage turns it into one `Piece` per
    name, so every node of a graph holds exactly one tensor."""

    dim: int = 1
    outputs: list[Identifier] = Field(min_length=2, description="Names for the pieces, in order.")

    def sizes(self, length: int) -> list[int]:
        raise NotImplementedError

    def piece_types(self, inputs: list[TensorType]) -> list[TensorType]:
        (x,) = inputs
        axis = sample_dim(self.dim, x.rank)
        sizes = self.sizes(x.shape[axis])
        if len(sizes) != len(self.outputs):
            raise ShapeError(f"dim {self.dim} of {x} splits into {len(sizes)} pieces {sizes}, "
                             f"but {len(self.outputs)} outputs are named")
        return [x.with_shape((*x.shape[:axis], size, *x.shape[axis + 1:])) for size in sizes]

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        return self.piece_types(inputs)[-1]  # as a plain layer, its value is its last piece

    def piece_code(self, operand: str, index: int) -> str:
        raise NotImplementedError

    def code(self, operands: list[str], owner: str) -> str:
        return self.piece_code(operands[0], len(self.outputs) - 1)


@register_op
class Chunk(SplitBase):
    """`x.chunk(chunks, dim)`: pieces of equal size (the last may be smaller), one name each."""

    op: Literal["chunk"]
    chunks: Annotated[int, Field(ge=2)]

    def sizes(self, length: int) -> list[int]:
        step = -(-length // self.chunks)  # torch.chunk: ceil(length / chunks), as many as fit
        return [min(step, length - start) for start in range(0, length, step)]

    def piece_code(self, operand: str, index: int) -> str:
        return f"{operand}.chunk({self.chunks}, dim={self.dim})[{index}]"


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
        return [min(self.split_size, length - start) for start in range(0, length, self.split_size)]

    def piece_code(self, operand: str, index: int) -> str:
        size = list(self.split_size) if isinstance(self.split_size, list) else self.split_size
        return f"{operand}.split({size}, dim={self.dim})[{index}]"


class Piece(ViewOp):
    """One named output of a chunk or split (made by the expansion stage, never written)."""

    op: str
    group: Chunk | Split
    index: int

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        return self.group.piece_types(inputs)[self.index]

    def args(self) -> dict[str, Any]:
        return {**self.group.args(), "index": self.index}

    def code(self, operands: list[str], owner: str) -> str:
        return self.group.piece_code(operands[0], self.index)


def pieces(name: str, group: SplitBase) -> list[tuple[str, Piece]]:
    """The nodes a chunk/split layer stands for: (output name, Piece)."""
    return [(out, Piece(op=group.op, input=group.input, group=group, index=i)) for i, out in enumerate(group.outputs)]


class BlockOutput(TensorOp):
    """One value of a block call that has several: a named output of a block with several outputs
    (`head.box`), or one instance's output of a collected repeat (`stage.2`). Made by the resolve
    stage, never written; its node reads the call's node, and the call's statement in the
    generated forward assigns it (`head_box, head_cls = self.head(x)`), so it is no code of its own.
    Shape inference types it from the call's `meta["types"]`."""

    op: str = "output"
    output: str  # the output's name (`box`), or the instance's index (`2`)
    index: int  # its position among the call's values

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        raise NotImplementedError("a block output is typed from its call's types (see shapes)")

    def args(self) -> dict[str, Any]:
        return {"output": self.output}
