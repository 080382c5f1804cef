"""The merge layers: add, concat and mul written as layers (`{op: add, input: [a, b]}`).

Their result types and code are the merge functions of `merge.py`, which skips use too.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .base import Layer, Reference, Scalar, TensorType, check_scalar, promote, register_op
from .merge import Merge, concat_dim, merge_code, merge_type

__all__ = ["Add", "Concat", "MergeLayer", "Mul", "ScalarMergeLayer"]


class MergeLayer(Layer):
    """A merge used as a layer: it reads two or more named nodes and has no parameters."""

    # One entry may stand for several values (`stage.*`): the resolver counts the values.
    input: list[Reference] = Field(min_length=1, description="The nodes to merge, in order: two or more "
                                                             "(`call.*` counts as all of the call's values).")

    kind: ClassVar[Merge]
    code_only: ClassVar[bool] = True
    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = None

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        return merge_type(self.kind, inputs, concat_dim(self.field_value("dim"), inputs[0].layout))

    def code(self, operands: list[str], owner: str) -> str:
        return merge_code(self.kind, operands)


class ScalarMergeLayer(MergeLayer):
    """add and mul: two or more inputs, or one input and a `scalar` (`{op: mul, scalar: 0.5}`)."""

    input: Reference | list[Reference] | None = Field(  # type: ignore[assignment]
        default=None, description="The nodes to merge, in order (two or more); with `scalar`, the one node "
                                  "(default: the previous layer).")
    scalar: Scalar | None = Field(None, description="A number as the other operand, instead of more inputs.")

    @property
    def min_inputs(self) -> int:  # type: ignore[override]
        return 1 if self.scalar is not None else 2

    @property
    def max_inputs(self) -> int | None:  # type: ignore[override]
        return 1 if self.scalar is not None else None

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if self.scalar is None:
            return super().output_type(inputs)
        (x,) = inputs
        dtype = promote([x.dtype], self.scalar)
        check_scalar(self.scalar, dtype, "scalar")
        return x.with_dtype(dtype)

    def code(self, operands: list[str], owner: str) -> str:
        if self.scalar is None:
            return super().code(operands, owner)
        return merge_code(self.kind, [operands[0], repr(self.scalar)])


@register_op
class Add(ScalarMergeLayer):
    """Elementwise sum of the inputs, broadcasting per-sample shapes of one rank, or of one input and a `scalar`."""

    op: Literal["add"]
    kind: ClassVar[Merge] = Merge.add


@register_op
class Concat(MergeLayer):
    """Concatenation of the inputs along `dim` (batch is dim 0; default: the channels of a map, the
    features of a features-last value, as a concat skip's)."""

    op: Literal["concat"]
    dim: int | None = Field(None, description="The dim to join along (the batch is dim 0); default: the "
                                              "channels (1) of a map, the features (-1) of a features-last value.")
    kind: ClassVar[Merge] = Merge.concat

    def module_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        # The dim decided from the inputs' layout (`concat_dim`): what `code_with` writes.
        return {**super().module_args(inputs), "dim": concat_dim(self.dim, inputs[0].layout)}

    def code_with(self, operands: list[str], owner: str, args: dict[str, Any]) -> str:
        return merge_code(self.kind, operands, args["dim"])

    def code(self, operands: list[str], owner: str) -> str:
        raise NotImplementedError("a concat's default dim follows its inputs' layout: its code is `code_with`")


@register_op
class Mul(ScalarMergeLayer):
    """Elementwise product of the inputs, broadcasting (gating), or of one input and a `scalar`."""

    op: Literal["mul"]
    kind: ClassVar[Merge] = Merge.mul
