"""Normalisations computed per sample: InstanceNorm1d-3d, LayerNorm, GroupNorm (feature sizes inferred).

BatchNorm, over the batch, is in `norm.py` (InstanceNorm shares its arguments).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .base import (
    FLOAT_DTYPES,
    NORM_DTYPES,
    ArgumentError,
    FeatureMapLayer,
    Layer,
    ShapeError,
    TensorType,
    describe_torch_op,
    register_op,
)
from .conv import spatial_family
from .norm import BatchNormBase, Positive

__all__ = ["INSTANCE_NORMS", "GroupNorm", "InstanceNormBase", "LayerNorm"]


class InstanceNormBase(BatchNormBase):
    """Shared arguments and rank rule of InstanceNorm1d-3d."""

    affine: bool = False
    track_running_stats: bool = False

    @property
    def input_dtypes(self) -> frozenset[str]:  # type: ignore[override]
        # Only its float32 weights limit it: torch runs a float64 input beside float32 running statistics,
        # in training and in eval (instance_norm casts them), where BatchNorm's kernel refuses them
        return NORM_DTYPES if self.affine else FLOAT_DTYPES

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        x = self.feature_map(inputs)
        if math.prod(x.shape[1:]) == 1:  # statistics over one element: torch refuses it while training
            raise ArgumentError(f"normalises each channel over its spatial elements, but the input {x} has one per "
                                "channel (torch refuses: it needs more than one)", "op",
                                "normalise over the channels instead (`LayerNorm` on features, `GroupNorm`), or "
                                "before the spatial size shrinks to 1")
        return x.with_layout("channels_first")


INSTANCE_NORMS = spatial_family(InstanceNormBase, "InstanceNorm")


@register_op
class LayerNorm(Layer):
    __doc__ = describe_torch_op("LayerNorm", ("normalized_shape",)) + " It normalises the last dim."

    op: Literal["LayerNorm"]
    eps: Positive = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    inferred: ClassVar[tuple[str, ...]] = ("normalized_shape",)

    @property
    def input_dtypes(self) -> frozenset[str]:  # type: ignore[override]
        return NORM_DTYPES if self.elementwise_affine else FLOAT_DTYPES  # (its weights are float32)

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {"normalized_shape": inputs[0].shape[-1]}

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return args["normalized_shape"] * (1 + self.bias) if self.elementwise_affine else 0

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if x.rank < 1:
            raise ShapeError(f"expects at least one dim per sample, got {x}")
        return x


@register_op
class GroupNorm(FeatureMapLayer):
    __doc__ = describe_torch_op("GroupNorm", ("num_channels",))

    op: Literal["GroupNorm"]
    num_groups: Annotated[int, Field(ge=1)]
    eps: Positive = 1e-5
    affine: bool = True

    inferred: ClassVar[tuple[str, ...]] = ("num_channels",)

    @property
    def input_dtypes(self) -> frozenset[str]:  # type: ignore[override]
        return NORM_DTYPES if self.affine else FLOAT_DTYPES  # (its weights are float32)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return 2 * args["num_channels"] if self.affine else 0

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if x.rank < 1:
            raise ShapeError(f"expects (C, ...) per sample, got {x}")
        if x.shape[0] % self.num_groups:
            raise ShapeError(f"num_groups={self.num_groups} does not divide the {x.shape[0]} input channels")
        return x.with_shape(x.shape, "channels_first")
