"""The bases of the parameter-free tensor ops, and the two layer kinds the pipeline makes itself.

What the stages read: `TensorOp` and `ViewOp` (code ops, views), `SplitBase` (an op with several
outputs, which expansion turns into one piece per output) and `BlockOutput` (one value of a block
call with several). The ops a spec names (transpose, permute, reshape, mean, select, chunk,
split) are in `tensor_ops.py`, which only a spec naming one of them imports (through `OPS`): most
specs name none, and creating their models cost more than the rest of this package's start-up.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from .base import Identifier, Layer, ShapeError, TensorType, sample_dim

__all__ = ["BlockOutput", "SplitBase", "TensorOp", "ViewOp", "pieces"]


class TensorOp(Layer):
    """A parameter-free op written as one expression on its input."""

    code_only: ClassVar[bool] = True


class ViewOp(TensorOp):
    """A tensor op whose result is a view of its input (same storage): transpose, permute,
    select, chunk and split pieces, and reshape (a view where the strides allow: counted as one)."""

    view: ClassVar[bool] = True


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

    def pieces(self, name: str) -> list[tuple[str, Layer]]:
        """The nodes this layer, named `name`, stands for, one per output: (output name, its piece)."""
        raise NotImplementedError


def pieces(name: str, group: SplitBase) -> list[tuple[str, Layer]]:
    """The nodes a chunk/split layer stands for: (output name, Piece)."""
    return group.pieces(name)


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
