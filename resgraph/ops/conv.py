"""Convolutions: Conv1d-3d and ConvTranspose1d-3d, with PyTorch's exact output-size arithmetic."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from fractions import Fraction
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, create_model

from .base import (
    OPS,
    WEIGHTED_DTYPES,
    ArgumentError,
    FeatureMapLayer,
    Layer,
    ShapeError,
    TensorType,
    describe_torch_op,
    register_op,
    to_tuple,
)

__all__ = ["ConvBase", "ConvTransposeBase", "conv_output_size", "spatial_family", "strides"]

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
IntOrTuple = PositiveInt | list[PositiveInt]
PaddingInt = NonNegativeInt | list[NonNegativeInt]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """floor((L + 2p - d(k-1) - 1) / s) + 1, as documented for torch.nn.Conv2d.

    (The constants are summed first: each operation on a symbolic size makes a node. At stride 1
    the formula is L + 2p - d(k-1): one operation, none where the padding keeps the size.)"""
    offset = 2 * padding - dilation * (kernel - 1) - 1
    if stride == 1:
        return size + (offset + 1)
    return (size + offset) // stride + 1


class ConvBase(FeatureMapLayer):
    """Shared arguments and shape rule of Conv1d, Conv2d and Conv3d."""

    out_channels: PositiveInt
    kernel_size: IntOrTuple
    stride: IntOrTuple = 1
    padding: PaddingInt | Literal["same", "valid"] = 0
    dilation: IntOrTuple = 1
    groups: PositiveInt = 1
    bias: bool = True
    padding_mode: PaddingMode = "zeros"
    scale: bool = Field(True, description="false: scale.width leaves out_channels as written.")

    inferred: ClassVar[tuple[str, ...]] = ("in_channels",)
    input_dtypes: ClassVar[frozenset[str] | None] = WEIGHTED_DTYPES

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        kernel = math.prod(to_tuple(self.kernel_size, self.spatial_dims, "kernel_size"))
        return self.out_channels * (args["in_channels"] // self.groups) * kernel + self.out_channels * self.bias

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        n = self.spatial_dims
        x = self.feature_map(inputs)
        channels, spatial = x.shape[0], x.shape[1:]
        check_groups(channels, self.out_channels, self.groups)
        kernel = to_tuple(self.kernel_size, n, "kernel_size")
        stride = to_tuple(self.stride, n, "stride")
        dilation = to_tuple(self.dilation, n, "dilation")
        if self.padding == "same":
            if any(s != 1 for s in stride):
                spans = [d * (k - 1) for k, d in zip(kernel, dilation)]
                padding = _show(tuple(span // 2 for span in spans))
                raise ArgumentError(
                    "padding='same' needs stride 1 (PyTorch refuses strided 'same' convolutions)", "padding",
                    f"`padding: {padding}` gives ceil(size / stride) at every size, what a strided 'same' would give"
                    if all(span % 2 == 0 for span in spans) else
                    "an odd kernel_size with padding dilation * (kernel - 1) / 2 gives ceil(size / stride) at every "
                    "size, what a strided 'same' would give")
            # torch pads d(k-1) in all, the larger half after: that side is what must fit
            self._check_wrapping(x, tuple(d * (k - 1) - d * (k - 1) // 2 for k, d in zip(kernel, dilation)))
            return x.with_shape((self.out_channels, *spatial), "channels_first")
        padding = (0,) * n if self.padding == "valid" else to_tuple(self.padding, n, "padding")
        if self.padding_mode != "zeros":
            self._check_wrapping(x, padding)
        sizes = tuple([conv_output_size(*args) for args in zip(spatial, kernel, stride, padding, dilation)])
        for size in sizes:  # (a loop, not any() over a generator: every conv of every build)
            if size < 1:
                raise ShapeError(f"input {x} is too small for kernel_size={_show(kernel)} with padding="
                                 f"{_show(padding)}, dilation={_show(dilation)}: output size would be {sizes}")
        return x.with_shape((self.out_channels, *sizes), "channels_first", x.scaled(strides(stride)))


    def _check_wrapping(self, x: TensorType, sides: tuple[int, ...]) -> None:
        """`reflect` mirrors at most size - 1 elements onto each side, `circular` wraps at most once around:
        torch refuses larger padding at the first forward."""
        limit = {"reflect": "less than", "circular": "at most"}.get(self.padding_mode)
        if limit is None:
            return
        for axis, (pad, size) in enumerate(zip(sides, x.shape[1:])):
            if pad >= size if self.padding_mode == "reflect" else pad > size:
                written = f"padding={_show(sides)}" if self.padding != "same" else f"padding='same' (pads {pad})"
                raise ArgumentError(
                    f"{written} with padding_mode={self.padding_mode!r} needs each side's padding {limit} the input "
                    f"size, but the input {x} has {size} along dim {axis + 2} (batch included); torch refuses it",
                    "padding" if "padding" in self.model_fields_set else "padding_mode",
                    "use `padding_mode: replicate` (or zeros), or less padding")


class ConvTransposeBase(FeatureMapLayer):
    """Shared arguments and shape rule of ConvTranspose1d, 2d and 3d."""

    out_channels: PositiveInt
    kernel_size: IntOrTuple
    stride: IntOrTuple = 1
    padding: PaddingInt = 0
    output_padding: PaddingInt = 0
    groups: PositiveInt = 1
    bias: bool = True
    dilation: IntOrTuple = 1
    padding_mode: Literal["zeros"] = "zeros"
    scale: bool = Field(True, description="false: scale.width leaves out_channels as written.")

    inferred: ClassVar[tuple[str, ...]] = ("in_channels",)
    input_dtypes: ClassVar[frozenset[str] | None] = WEIGHTED_DTYPES

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        kernel = math.prod(to_tuple(self.kernel_size, self.spatial_dims, "kernel_size"))
        return args["in_channels"] * (self.out_channels // self.groups) * kernel + self.out_channels * self.bias

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        n = self.spatial_dims
        x = self.feature_map(inputs)
        check_groups(x.shape[0], self.out_channels, self.groups)
        kernel = to_tuple(self.kernel_size, n, "kernel_size")
        stride = to_tuple(self.stride, n, "stride")
        padding = to_tuple(self.padding, n, "padding")
        output_padding = to_tuple(self.output_padding, n, "output_padding")
        dilation = to_tuple(self.dilation, n, "dilation")
        for op, s, d in zip(output_padding, stride, dilation):
            if op >= max(s, d):
                raise ShapeError(f"output_padding={op} must be smaller than stride ({s}) or dilation ({d})")
        sizes = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1
                      for size, k, s, p, op, d in zip(x.shape[1:], kernel, stride, padding, output_padding, dilation))
        if any(size < 1 for size in sizes):
            raise ShapeError(f"padding={_show(padding)} is too large for input {x}: output size would be {sizes}")
        upsampling = tuple(1 / f for f in strides(stride))
        return x.with_shape((self.out_channels, *sizes), "channels_first", x.scaled(upsampling))


@functools.lru_cache(maxsize=256)
def strides(stride: tuple[int, ...]) -> tuple[Fraction, ...]:
    """Per-dim grid steps, as exact fractions (see TensorType.scale); made once per stride (a
    Fraction takes microseconds to make, and a network repeats a few strides)."""
    return tuple(Fraction(s) for s in stride)


def check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ShapeError(f"groups={groups} must divide both the input channels ({in_channels}) "
                         f"and out_channels ({out_channels})")


def _show(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(values)


def spatial_family(base: type[FeatureMapLayer], prefix: str, dims: tuple[int, ...] = (1, 2, 3),
                   facts: Mapping[int, Mapping[str, Any]] | None = None) -> list[str]:
    """Define `{prefix}1d`.. `{prefix}3d`: one model per dimensionality, sharing `base`, each created on
    its first use (see `OpRegistry.promise`). `facts` sets class facts of one dimensionality's model.

    Returns:
        The op names.
    """
    names = [f"{prefix}{n}d" for n in dims]
    for n, name in zip(dims, names):
        OPS.promise(name, partial(_spatial_member, base, name, n, (facts or {}).get(n, {})))
    return names


def _spatial_member(base: type[FeatureMapLayer], name: str, n: int, facts: Mapping[str, Any]) -> type[Layer]:
    cls = create_model(name, __base__=base, __module__=base.__module__, op=(Literal[name], ...))
    cls.spatial_dims = n
    cls.__doc__ = describe_torch_op(name, base.inferred)
    for fact, value in facts.items():
        setattr(cls, fact, value)
    return register_op(cls)


CONVS = spatial_family(ConvBase, "Conv")
CONV_TRANSPOSES = spatial_family(ConvTransposeBase, "ConvTranspose")
