"""Ops that move elements between dims: Flatten, Unflatten.

The ops that resample the spatial dims (Upsample, PixelShuffle/Unshuffle) are in `resample.py`.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import (
    Layer,
    ShapeError,
    TensorType,
    describe_torch_op,
    fill_sizes,
    register_op,
    sample_dim,
)

__all__ = ["Flatten", "Unflatten"]


@register_op
class Flatten(Layer):
    __doc__ = describe_torch_op("Flatten", ()) + " Dims count the batch as dim 0."

    op: Literal["Flatten"]
    start_dim: int = 1
    end_dim: int = -1

    view: ClassVar[bool] = True  # a view of its input where its strides allow (conservatively: always)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        start = sample_dim(self.start_dim, x.rank, "start_dim")
        end = sample_dim(self.end_dim, x.rank, "end_dim")
        if start > end:
            raise ShapeError(f"start_dim={self.start_dim} comes after end_dim={self.end_dim}")
        shape = (*x.shape[:start], math.prod(x.shape[start:end + 1]), *x.shape[end + 1:])
        return x.with_shape(shape, "features_last" if len(shape) == 1 else None)


@register_op
class Unflatten(Layer):
    __doc__ = describe_torch_op("Unflatten", ()) + " dim counts the batch as dim 0."

    op: Literal["Unflatten"]
    dim: int
    unflattened_size: list[Annotated[int, Field(ge=-1)]]

    view: ClassVar[bool] = True  # a view of its input where its strides allow (conservatively: always)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        index = sample_dim(self.dim, x.rank)
        sizes = fill_sizes(list(self.unflattened_size), [x.shape[index]], "unflattened_size")
        return x.with_shape((*x.shape[:index], *sizes, *x.shape[index + 1:]))
