"""Dense layers: Linear (in_features inferred) and Embedding (integer ids to vectors)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .base import WEIGHTED_DTYPES, Layer, ShapeError, TensorType, describe_torch_op, register_op

__all__ = ["Embedding", "Linear"]

PositiveInt = Annotated[int, Field(ge=1)]


@register_op
class Linear(Layer):
    __doc__ = describe_torch_op("Linear", ("in_features",)) + " It maps the last dim."

    op: Literal["Linear"]
    out_features: PositiveInt
    bias: bool = True

    inferred: ClassVar[tuple[str, ...]] = ("in_features",)
    layout: ClassVar[Literal["features_last"]] = "features_last"
    input_dtypes: ClassVar[frozenset[str] | None] = WEIGHTED_DTYPES

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {"in_features": inputs[0].shape[-1]}

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return (args["in_features"] + self.bias) * self.out_features

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if x.rank < 1:
            raise ShapeError(f"expects (..., features) per sample, got {x}")
        return x.with_shape((*x.shape[:-1], self.out_features), "features_last")


@register_op
class Embedding(Layer):
    __doc__ = describe_torch_op("Embedding", ()) + " Its input holds integer ids."

    op: Literal["Embedding"]
    num_embeddings: PositiveInt
    embedding_dim: PositiveInt
    padding_idx: int | None = None
    max_norm: Annotated[float, Field(gt=0)] | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    sparse: bool = False

    layout: ClassVar[Literal["features_last"]] = "features_last"

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return self.num_embeddings * self.embedding_dim

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if x.dtype not in ("int64", "int32"):
            raise ShapeError(f"needs integer ids (an input with dtype: int64), got {x.dtype}")
        if self.padding_idx is not None and not -self.num_embeddings <= self.padding_idx < self.num_embeddings:
            raise ShapeError(f"padding_idx={self.padding_idx} is outside [0, num_embeddings={self.num_embeddings})")
        # Positions counted at run time must stay inside the table: the comparison is a recorded
        # decision, so the input sizes the table covers are the ones the model admits (and guards).
        if x.ids_from is not None and x.ids_from < 0:
            raise ShapeError(f"its ids include {x.ids_from}, but an Embedding's ids run from 0 to num_embeddings - 1 "
                             f"({self.num_embeddings - 1}); torch refuses a negative id when the model runs")
        if x.ids_below is not None and x.ids_below > self.num_embeddings:
            raise ShapeError(f"its ids go up to {x.ids_below - 1}, but the table has num_embeddings="
                             f"{self.num_embeddings} rows (ids 0..{self.num_embeddings - 1}): raise num_embeddings"
                             " (or, for positions counted over an input, give a shorter input)")
        return TensorType((*x.shape, self.embedding_dim), "float32", "features_last")
