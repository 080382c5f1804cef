"""Ops that resample the spatial dims: Upsample, PixelShuffle and PixelUnshuffle.

Imported when a spec names one of them (Flatten and Unflatten are in `reshape.py`).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ..symbolic import scaled_size
from .base import (
    FLOAT_DTYPES,
    ArgumentError,
    Layer,
    ShapeError,
    TensorType,
    describe_torch_op,
    register_op,
    to_tuple,
)

__all__ = ["PixelShuffle", "PixelUnshuffle", "Upsample"]

PositiveInt = Annotated[int, Field(ge=1)]


@register_op
class Upsample(Layer):
    __doc__ = describe_torch_op("Upsample", ()) + " Give size or scale_factor."

    op: Literal["Upsample"]
    size: PositiveInt | list[PositiveInt] | None = None
    scale_factor: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] | None = None
    mode: Literal["nearest", "linear", "bilinear", "bicubic", "trilinear", "nearest-exact", "area"] = "nearest"
    align_corners: bool | None = None
    recompute_scale_factor: bool | None = None

    layout: ClassVar[Literal["channels_first"]] = "channels_first"
    input_dtypes: ClassVar[frozenset[str] | None] = FLOAT_DTYPES

    def check_static(self) -> None:
        """Arguments torch refuses only at the first forward (F.interpolate checks them there)."""
        if self.align_corners is not None and self.mode in ("nearest", "nearest-exact", "area"):
            raise ArgumentError(f"align_corners applies only to the interpolating modes (linear, bilinear, bicubic, "
                                f"trilinear); torch refuses it with mode={self.mode!r}", "align_corners",
                                "remove `align_corners`, or choose an interpolating mode such as `mode: bilinear`")
        if self.recompute_scale_factor and self.size is not None:
            raise ArgumentError("recompute_scale_factor: true applies only with scale_factor; torch refuses it with "
                                "an explicit size", "recompute_scale_factor", "remove `recompute_scale_factor`")

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        self.check_static()
        (x,) = inputs
        n = x.rank - 1
        if not 1 <= n <= 3:  # (F.interpolate takes 3-d, 4-d and 5-d tensors, the batch included)
            raise ShapeError(f"expects (C, L), (C, H, W) or (C, D, H, W) per sample (torch interpolates 1 to 3 "
                             f"spatial dims), got {x}")
        needed = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}.get(self.mode)
        if needed is not None and needed != n:
            raise ShapeError(f"mode={self.mode!r} needs {needed} spatial dims, the input {x} has {n}")
        if (self.size is None) == (self.scale_factor is None):
            raise ShapeError("give exactly one of size and scale_factor")
        if self.size is not None:
            return x.with_shape((x.shape[0], *to_tuple(self.size, n, "size")), "channels_first", None)
        scales = to_tuple(self.scale_factor, n, "scale_factor")
        sizes = tuple(scaled_size(s, float(f)) for s, f in zip(x.shape[1:], scales))  # torch's double arithmetic
        # (the grid's step: exact for factors such as 2, 0.5 or 1.5)
        factors = tuple(Fraction(f).limit_denominator(1 << 16) for f in scales)
        if any(size < 1 for size in sizes):
            raise ArgumentError(f"scale_factor={self.scale_factor} shrinks the input {x} to {sizes}: every size must "
                                "stay at least 1 (torch refuses an empty output)", "scale_factor")
        return x.with_shape((x.shape[0], *sizes), "channels_first", x.scaled(tuple(1 / f for f in factors)))


@register_op
class PixelShuffle(Layer):
    __doc__ = describe_torch_op("PixelShuffle", ())

    op: Literal["PixelShuffle"]
    upscale_factor: PositiveInt

    layout: ClassVar[Literal["channels_first"]] = "channels_first"

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        r = self.upscale_factor
        if x.rank < 3 or x.shape[-3] % (r * r):
            raise ShapeError(f"expects (..., C*{r * r}, H, W) per sample, got {x}")
        *leading, channels, height, width = x.shape  # (torch takes leading dims: frames of a clip, say)
        return x.with_shape((*leading, channels // (r * r), height * r, width * r), None,
                            x.scaled((Fraction(1, r), Fraction(1, r))) if x.rank == 3 else None)


@register_op
class PixelUnshuffle(Layer):
    __doc__ = describe_torch_op("PixelUnshuffle", ())

    op: Literal["PixelUnshuffle"]
    downscale_factor: PositiveInt

    layout: ClassVar[Literal["channels_first"]] = "channels_first"

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        r = self.downscale_factor
        if x.rank < 3:
            raise ShapeError(f"expects (..., C, H, W) per sample, got {x}")
        *leading, channels, height, width = x.shape
        if height % r or width % r:
            raise ShapeError(f"expects H and W divisible by downscale_factor={r}, got {x}")
        return x.with_shape((*leading, channels * r * r, height // r, width // r), None,
                            x.scaled((Fraction(r), Fraction(r))) if x.rank == 3 else None)
