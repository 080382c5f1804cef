"""Pooling: MaxPool/AvgPool 1d-3d (with ceil_mode's edge rule) and the adaptive pools."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from ..symbolic import hint, sym_min
from .base import FLOAT_DTYPES, NUMBER_DTYPES, FeatureMapLayer, ShapeError, TensorType, to_tuple
from .conv import spatial_family, strides

__all__ = ["AdaptivePoolBase", "AvgPoolBase", "MaxPoolBase", "check_avg_pool3d_input", "pool_output_size"]

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
IntOrTuple = PositiveInt | list[PositiveInt]


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling size (`pooling_output_shape` in ATen): like convolution's, but with ceil_mode the
    count rounds up, except that the last window must start inside the input or its left padding.

    Written without branching on the size, so it holds for symbolic sizes too.

    >>> [pool_output_size(75, 3, 2, 1, 1, False), pool_output_size(6, 2, 2, 0, 1, True)]
    [38, 3]
    >>> pool_output_size(5, 2, 2, 0, 1, True)  # ceil(3/2) + 1 = 3 windows; the third starts inside
    3
    """
    span = size + (2 * padding - dilation * (kernel - 1) - 1)  # (constants first, as in conv_output_size)
    if not ceil_mode:
        return span // stride + 1
    # ceil(span / stride) + 1, capped so that the last window starts before size + padding
    return sym_min(-(-span // stride) + 1, (size + padding - 1) // stride + 1)


def check_avg_pool3d_input(sizes: tuple[int, ...], kernel: tuple[int, ...]) -> None:
    """AvgPool3d's own rule: every spatial size at least the kernel's, padding aside (ATen's
    `pool3d_shape_check` for avg_pool3d: "input image ... smaller than kernel size"). AvgPool1d and 2d
    have no such rule: a 1-long input pools by a window of 2 with ceil_mode. Records the comparisons
    on symbolic sizes, so the sizes it refuses are refused by the input guard too.

    Raises:
        ShapeError: an input size smaller than the kernel.
    """
    if any(size < k for size, k in zip(sizes, kernel)):
        shown = "x".join(str(hint(size)) for size in sizes)
        raise ShapeError(f"AvgPool3d needs every spatial size to be at least its kernel "
                         f"({'x'.join(map(str, kernel))}), padding aside, as torch checks it; the input is {shown}")


class _PoolBase(FeatureMapLayer):
    kernel_size: IntOrTuple
    stride: IntOrTuple | None = None
    padding: NonNegativeInt | list[NonNegativeInt] = 0
    ceil_mode: bool = False

    def _dilation(self) -> int | list[int]:
        return 1

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        n = self.spatial_dims
        x = self.feature_map(inputs)
        kernel = to_tuple(self.kernel_size, n, "kernel_size")
        stride = kernel if self.stride is None else to_tuple(self.stride, n, "stride")
        padding = to_tuple(self.padding, n, "padding")
        dilation = to_tuple(self._dilation(), n, "dilation")
        for k, p, d in zip(kernel, padding, dilation):
            # torch checks the kernel as written, not as dilated: padding 2 on a kernel of 2 with dilation 3
            # (which spans 4) is refused at the first forward
            if p > k // 2:
                raise ShapeError(f"padding={p} must be at most half the kernel size ({k})"
                                 + (f", dilation aside (torch checks kernel_size {k}, not the {d * (k - 1) + 1} a "
                                    f"dilation of {d} spans)" if p <= (d * (k - 1) + 1) // 2 else ""))
        sizes = tuple(pool_output_size(*args, self.ceil_mode)
                      for args in zip(x.shape[1:], kernel, stride, padding, dilation))
        if any(size < 1 for size in sizes):
            raise ShapeError(f"input {x} is too small for kernel_size={self.kernel_size}: output size would be {sizes}")
        return x.with_shape((x.shape[0], *sizes), "channels_first", x.scaled(strides(stride)))


class MaxPoolBase(_PoolBase):
    """Shared arguments and shape rule of MaxPool1d-3d."""

    dilation: IntOrTuple = 1
    return_indices: Literal[False] = Field(False, description="Must be false: a layer has one output.")

    input_dtypes: ClassVar[frozenset[str] | None] = NUMBER_DTYPES  # MaxPool1d: floats only (set below)

    def _dilation(self) -> int | list[int]:
        return self.dilation

    def export_static_sizes(self, inputs: list[TensorType]) -> list[Any]:
        # (MaxPool1d, the one that is `export_static`: ATen's max_pool1d reads the pooled length as a plain
        # int; the channels stay dynamic)
        return [inputs[0].shape[-1]]


class AvgPoolBase(_PoolBase):
    """Shared arguments and shape rule of AvgPool1d-3d."""

    count_include_pad: bool = True

    input_dtypes: ClassVar[frozenset[str] | None] = FLOAT_DTYPES | {"int64"}  # torch has no int32 kernel

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if self.spatial_dims == 3:
            check_avg_pool3d_input(self.feature_map(inputs).shape[1:], to_tuple(self.kernel_size, 3, "kernel_size"))
        return super().output_type(inputs)


class AvgPoolDivisorBase(AvgPoolBase):
    """Shared arguments and shape rule of AvgPool2d and AvgPool3d."""

    divisor_override: PositiveInt | None = None


class AdaptivePoolBase(FeatureMapLayer):
    """Shared arguments and shape rule of the adaptive pools: a fixed output size."""

    output_size: PositiveInt | None | list[PositiveInt | None]

    input_dtypes: ClassVar[frozenset[str] | None] = FLOAT_DTYPES

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        n = self.spatial_dims
        x = self.feature_map(inputs)
        wanted = self.output_size if isinstance(self.output_size, (list, tuple)) else [self.output_size] * n
        if len(wanted) != n:
            raise ShapeError(f"output_size has {len(wanted)} entries, expected {n}")
        sizes = tuple(size if want is None else want for size, want in zip(x.shape[1:], wanted))
        return x.with_shape((x.shape[0], *sizes), "channels_first", None)  # a fixed output size: no grid


class AdaptiveMaxPoolBase(AdaptivePoolBase):
    """Shared arguments and shape rule of AdaptiveMaxPool1d-3d."""

    return_indices: Literal[False] = Field(False, description="Must be false: a layer has one output.")


# torch's max_pool1d has no integer kernel (2d and 3d have), and torch.export specialises its length
MAX_POOLS = spatial_family(MaxPoolBase, "MaxPool", facts={1: {"input_dtypes": FLOAT_DTYPES, "export_static": True}})
AVG_POOLS = spatial_family(AvgPoolBase, "AvgPool", (1,)) + spatial_family(AvgPoolDivisorBase, "AvgPool", (2, 3))
ADAPTIVE_AVG_POOLS = spatial_family(AdaptivePoolBase, "AdaptiveAvgPool")
ADAPTIVE_MAX_POOLS = spatial_family(AdaptiveMaxPoolBase, "AdaptiveMaxPool")
