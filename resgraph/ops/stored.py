"""Tensors a model stores: learned tensors (`parameter`) and constants (`full`, `constant`, `arange`).

A stored tensor is a node with no input whose value is the same for every sample. It is kept
in the built model under the layer's name, exactly with its declared shape: a learned tensor as
an `nn.Parameter` (frozen with `trainable: false`), a constant as a buffer (`register_buffer`;
`persistent: false` by default, because the spec alone determines its value, so it need not be
in a checkpoint). In `forward` its value is that tensor broadcast over the batch
(`self.pos.expand(x.shape[0], -1, -1)`, a view: nothing is copied).

`shape` is per sample, like every shape in a spec. A reference implementation often stores such
a tensor with a leading batch dim of 1 (ViT's `(1, 197, 768)` position embedding); `batch: true`
says the declared shape has it: the tensor is stored as declared and its per-sample value drops
that dim.

Its layout is read from its rank (3+ dims: channels-first, as `(C, 1, 1)`; else features-last, as
`(1, D)`), as an input's is, unless `layout` declares it: a per-head `(H, 1, 1)` scale of the
features-last `(H, L, S)` scores of attention (Swin V2's `logit_scale`) is `layout: features_last`,
its dims the scores' dim for dim. The layout decides what a broadcast may pair (see
`merge.check_gate_layouts`) and a concat's default dim.

`arange` with an `input` is not stored: it counts the positions along one dim of its input at run
time (`torch.arange(x.shape[1])`), so it follows a free sequence length.

>>> ParameterTensor(op="parameter", shape=[1, 1, 8], batch=True).output_type([]).shape
(1, 8)
>>> Arange(op="arange", stop=5).output_type([]).shape, Arange(op="arange", stop=5).owned()
((5,), 'buffer')
>>> ParameterTensor(op="parameter", shape=[4, 1, 1], layout="features_last").output_type([]).layout
'features_last'
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator
from typing_extensions import TypeAliasType

from ..symbolic import SymInt, hint
from .base import (
    DTYPES,
    INT_DTYPES,
    INT_RANGES,
    ArgumentError,
    DeclaredLayout,
    Layer,
    Owned,
    Storage,
    TensorType,
    number_overflow,
    register_op,
    sample_dim,
    scalar_overflow,
)

__all__ = ["Arange", "ConstantTensor", "Full", "ParameterTensor", "StoredTensor", "Values", "literal_shape"]

Number = bool | int | float
# A (nested) list literal of numbers: `[0.5, 1.0]`, `[[10, 13], [16, 30]]`.
Values = TypeAliasType("Values", list[Union[bool, int, float, "Values"]])  # type: ignore[misc]
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Field(ge=1)]


def literal_shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested list literal; () for a number.

    >>> literal_shape([[1, 2, 3], [4, 5, 6]])
    (2, 3)

    Raises:
        ValueError: an empty list, or rows of different lengths.
    """
    if not isinstance(value, list):
        return ()
    if not value:
        raise ValueError("an empty list has no shape")
    shapes = {literal_shape(item) for item in value}
    if len(shapes) != 1:
        raise ValueError(f"the rows have different shapes ({', '.join(sorted(map(str, shapes)))}); "
                         "a tensor literal must be rectangular")
    return (len(value), *shapes.pop())


def _flat(value: Any) -> list[Any]:
    return [x for item in value for x in _flat(item)] if isinstance(value, list) else [value]


def _fits(value: Any, shape: tuple[int, ...], what: str) -> None:
    """A list literal must have `shape`, or be a flat list of as many numbers.

    Raises:
        ValueError: it has another shape.
    """
    found = literal_shape(value)
    if found != shape and found != (math.prod(shape),):
        raise ValueError(f"{what} has shape {list(found)}, but the tensor's shape is {list(shape)} "
                         f"(write a list of that shape, or a flat list of {math.prod(shape)} numbers)")


def _check_dtype(values: list[Any], dtype: str, what: str) -> None:
    """Values a dtype cannot hold exactly are errors, not silent truncations.

    Raises:
        ValueError: a fraction for an integer dtype, a number other than 0/1 for bool, a number
            outside an integer dtype's range (torch refuses it at build; arange wrapped it round),
            or one too large for a float dtype (stored as inf).
    """
    if dtype in INT_DTYPES and any(isinstance(v, float) and not v.is_integer() for v in values):
        raise ValueError(f"{what} holds fractions, but dtype is {dtype}; write dtype: float32 or whole numbers")
    if dtype == "bool" and any(v not in (0, 1) for v in values):
        raise ValueError(f"{what} holds numbers other than 0 and 1 (true/false), but dtype is bool")
    for value in values:
        problem = number_overflow(value, dtype)
        if problem is not None:
            fix = ("; write dtype: int64" if dtype == "int32" and number_overflow(value, "int64") is None else
                   "; write a smaller number" + ("" if dtype in ("float32", "int64") else " or dtype: float32"))
            raise ValueError(f"{what} holds {value!r}, {problem}{fix}")


def _check_scalars(values: list[Any], what: str) -> None:
    """Numbers passed to torch as scalar arguments (`torch.full`'s value, `torch.arange`'s ends and
    step) must be ones torch takes (see `scalar_overflow`); a list literal (`torch.tensor`) takes any.

    Raises:
        ValueError: a whole number past what torch converts.
    """
    for value in values:
        problem = scalar_overflow(value)
        if problem is not None:
            raise ValueError(f"{what} holds {value!r}, {problem}")


def _default_dtype(layer: ConstantBase, values: list[Any]) -> None:
    """A constant written with true/false only and no `dtype` is a bool tensor, as `torch.tensor`
    makes it: stored as float32, a mask's `true` (may not attend) would be added to the scores as 1.0."""
    if "dtype" not in layer.model_fields_set and values and all(isinstance(v, bool) for v in values):
        layer.__dict__["dtype"] = "bool"  # (the layer is frozen; this runs once, while it is validated)
        layer.__pydantic_fields_set__.add("dtype")  # (so `args()` and dumps show it, as if written)


def _layout(rank: int) -> Literal["channels_first", "features_last"]:
    return "channels_first" if rank >= 3 else "features_last"


class StoredTensor(Layer):
    """A tensor the model stores (a parameter or a buffer), broadcast over the batch in `forward`."""

    batch: bool = Field(False, description=(
        "true: `shape` starts with a batch dim of size 1, kept in the stored tensor (as a reference's "
        "(1, 197, 768) position embedding) and broadcast to the batch; the per-sample value drops it."))

    code_only: ClassVar[bool] = True
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = 0

    def stored_shape(self) -> tuple[int, ...]:
        """The shape of the tensor kept in the model (the declared shape)."""
        raise NotImplementedError

    def tensor_dtype(self) -> str:
        return self.field_value("dtype", "float32")  # constants declare one; learned tensors are float32

    def sample_shape(self) -> tuple[int, ...]:
        shape = self.stored_shape()
        return shape[1:] if self.batch else shape

    @model_validator(mode="after")
    def _batch_dim_is_one(self) -> StoredTensor:
        if self.batch:
            shape = self.stored_shape()
            if self.owned() is None or len(shape) < 2 or shape[0] != 1:
                raise ValueError(f"batch: true says the shape {list(shape)} starts with a batch dim of size 1 "
                                 "and has a per-sample shape after it; write e.g. [1, 197, 768], or drop `batch`")
        return self

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        shape = self.sample_shape()
        return TensorType(shape, self.tensor_dtype(), self.field_value("declared_layout") or _layout(len(shape)))

    def module_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {}

    def storage(self, inputs: list[TensorType]) -> Storage:
        # `expand` makes every sample's value one and the same memory: torch refuses to write it in place
        return Storage(fixed="its value is broadcast over the batch (`expand`): one element stands for every "
                             "sample's")

    def code(self, operands: list[str], owner: str) -> str:
        # expand adds the batch dim in front (or widens a stored batch dim of 1): a view, no copy
        return f"{owner}.expand({operands[0]}.shape[0], {', '.join(['-1'] * len(self.sample_shape()))})"


_DRAWN = ("normal", "trunc_normal", "uniform")  # the inits `std` applies to


@register_op
class ParameterTensor(StoredTensor):
    """A learned tensor shared by every sample (a class token, a position embedding, a layer scale),
    stored as an nn.Parameter of exactly `shape`, named after the layer."""

    op: Literal["parameter"]
    shape: list[PositiveInt] = Field(min_length=1, description="Per sample (with `batch: true`, led by 1).")
    init: Literal["zeros", "ones", "normal", "trunc_normal", "uniform"] | float | Values = Field(
        "zeros", description=("An initialiser; a number (every element starts at it, e.g. 1.0e-6 for a layer "
                              "scale); or a list literal of the tensor's shape (or a flat list of its size)."))
    std: Annotated[float, Field(gt=0)] = Field(0.02, description=(
        "The standard deviation of a normal, trunc_normal (torch's, cut at -2 and 2 as timm's) or uniform init."))
    trainable: bool = Field(True, description="false: a frozen parameter (requires_grad=False), still in the "
                                              "state_dict and the parameter count, as YOLOv8's DFL weights.")
    declared_layout: DeclaredLayout

    owns_parameter: ClassVar[bool] = True

    @model_validator(mode="after")
    def _init_fits(self) -> ParameterTensor:
        if "std" in self.model_fields_set and self.init not in _DRAWN:
            raise ValueError(f"std applies to a drawn init ({', '.join(_DRAWN)}), not to init: {self.init!r}; "
                             "remove it, or choose a drawn init")
        if isinstance(self.init, list):
            _fits(self.init, tuple(self.shape), "init")
        if not isinstance(self.init, str):  # (parameters are float32)
            _check_dtype(_flat(self.init), "float32", "init")
        return self

    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.shape)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return math.prod(self.shape)

    def initializer(self) -> tuple[str, dict[str, float]]:
        """The torch.nn.init function and its arguments for a named `init` (`build` and
        `tensor_source` share them). `std` is the standard deviation of each drawn one: torch's
        `trunc_normal_` is cut at -2 and 2 (timm's `trunc_normal_(std=0.02)` for a ViT's tokens), and a
        uniform of standard deviation std spans +-sqrt(3) std."""
        assert isinstance(self.init, str), self.init
        return {"zeros": ("zeros_", {}), "ones": ("ones_", {}), "normal": ("normal_", {"std": self.std}),
                "trunc_normal": ("trunc_normal_", {"std": self.std}),
                "uniform": ("uniform_", {"a": -math.sqrt(3) * self.std, "b": math.sqrt(3) * self.std})}[self.init]

    def build(self, args: dict[str, Any]) -> Any:
        import torch
        from torch import nn

        shape = self.stored_shape()
        if isinstance(self.init, list):
            data = torch.tensor(_flat(self.init), dtype=torch.float32).reshape(shape)
        elif isinstance(self.init, str):
            data = torch.empty(shape)
            function, kwargs = self.initializer()
            getattr(nn.init, function)(data, **kwargs)
        else:
            data = torch.full(shape, float(self.init))
        return nn.Parameter(data, requires_grad=self.trainable)

    def tensor_source(self) -> str:
        shape = ", ".join(map(str, self.stored_shape()))
        if isinstance(self.init, list):
            data = f"torch.tensor({_flat(self.init)!r}, dtype=torch.float32).reshape({shape})"
        elif isinstance(self.init, str):
            function, kwargs = self.initializer()
            extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
            data = f"nn.init.{function}(torch.empty({shape}){extra})"
        else:
            data = f"torch.full({self.stored_shape()!r}, {float(self.init)!r})"
        return f"nn.Parameter({data}{'' if self.trainable else ', requires_grad=False'})"


class ConstantBase(StoredTensor):
    """A constant tensor: a buffer, not a parameter (never trained, not counted as a parameter)."""

    persistent: bool = Field(False, description=(
        "true: the buffer is saved in the state_dict. Default false: the spec determines its value."))

    def owned(self) -> Owned | None:
        return "buffer"

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        out = super().output_type(inputs)
        values = self.values() if out.dtype in INT_DTYPES else None
        if not values:
            return out
        # Integer ids: an Embedding that reads them checks its table covers them (see TensorType.ids_below),
        # and that none is negative (ids_from)
        return TensorType(out.shape, out.dtype, out.layout, out.scale, ids_below=int(max(values)) + 1,
                          ids_from=int(min(values)))

    def values(self) -> list[int | float] | None:
        """Values whose least and greatest are the constant's (every value it holds, or a range's two
        ends), where the spec gives them; None otherwise. Its ids' bound is read from them."""
        return None

    def data(self) -> tuple[str, dict[str, Any]]:
        """The torch function building the buffer and its arguments (`build` and `tensor_source` share them)."""
        raise NotImplementedError

    def build(self, args: dict[str, Any]) -> Any:
        import torch

        function, kwargs = self.data()
        if "dtype" in kwargs:
            kwargs = {**kwargs, "dtype": getattr(torch, kwargs["dtype"])}
        tensor = getattr(torch, function)(**{k: v for k, v in kwargs.items() if k != "shape"})
        return tensor.reshape(kwargs["shape"]) if "shape" in kwargs else tensor

    def tensor_source(self) -> str:
        function, kwargs = self.data()
        parts = [f"{k}={_source_value(k, v)}" for k, v in kwargs.items() if k != "shape"]
        call = f"torch.{function}({', '.join(parts)})"
        return call + (f".reshape({', '.join(map(str, kwargs['shape']))})" if "shape" in kwargs else "")


def _source_value(key: str, value: Any) -> str:
    return f"torch.{value}" if key == "dtype" else repr(value)


@register_op
class Full(ConstantBase):
    """A constant tensor of `shape` holding one `value` everywhere (`torch.full`), as a buffer."""

    op: Literal["full"]
    shape: list[PositiveInt] = Field(min_length=1, description="Per sample (with `batch: true`, led by 1).")
    value: Number
    dtype: Dtype = Field("float32", description="Default float32; bool where `value` is true or false.")  # type: ignore[assignment]
    declared_layout: DeclaredLayout

    @model_validator(mode="after")
    def _value_fits_dtype(self) -> Full:
        _default_dtype(self, [self.value])
        _check_dtype([self.value], self.dtype, "value")
        _check_scalars([self.value], "value")
        return self

    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.shape)

    def values(self) -> list[int | float] | None:
        return [self.value]

    def data(self) -> tuple[str, dict[str, Any]]:
        return "full", {"size": tuple(self.shape), "fill_value": self.value, "dtype": self.dtype}


@register_op
class ConstantTensor(ConstantBase):
    """A constant tensor written out as a list literal (anchor grids, fixed kernels), as a buffer."""

    op: Literal["constant"]
    value: Values = Field(description="A list literal (nested for several dims).")
    shape: list[PositiveInt] | None = Field(None, description=(
        "Optional: the shape, when `value` is a flat list of its size; default: the literal's shape."))
    dtype: Dtype = Field("float32", description=(  # type: ignore[assignment]
        "Default float32; bool where every value is true or false (a mask)."))
    declared_layout: DeclaredLayout

    @model_validator(mode="after")
    def _value_is_a_tensor(self) -> ConstantTensor:
        found = literal_shape(self.value)
        if self.shape is not None:
            _fits(self.value, tuple(self.shape), "value")
        elif not found:
            raise ValueError("value must be a list literal")
        _default_dtype(self, _flat(self.value))
        _check_dtype(_flat(self.value), self.dtype, "value")
        return self

    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.shape) if self.shape is not None else literal_shape(self.value)

    def values(self) -> list[int | float] | None:
        return _flat(self.value)

    def data(self) -> tuple[str, dict[str, Any]]:
        return "tensor", {"data": _flat(self.value), "dtype": self.dtype, "shape": self.stored_shape()}


@register_op
class Arange(ConstantBase):
    """`torch.arange(start, stop, step)`: position ids and grids. Without an input, a constant
    buffer of the positions from start to stop; with `input` and `dim`, the positions along that
    dim of the input, counted at run time (it follows a free sequence length; nothing is stored)."""

    op: Literal["arange"]
    start: int | float = 0
    stop: int | float | None = Field(None, description="The end (exclusive); only without an input.")
    step: int | float = 1
    dim: int | None = Field(None, description="With an input: the dim whose positions are counted (batch is 0).")
    dtype: Dtype = "int64"  # type: ignore[assignment]

    @field_validator("dtype")
    @classmethod
    def _not_bool(cls, dtype: str) -> str:
        # torch has no bool arange ("arange_cpu" not implemented for 'Bool'): a constant failed when
        # built, one counted over an input at the first forward
        if dtype == "bool":
            raise ValueError("torch has no bool arange: write an integer or float dtype (int64 is the default)")
        return dtype

    @model_validator(mode="after")
    def _one_form(self) -> Arange:
        if self.step == 0:
            raise ValueError("step must not be 0")
        if self.input is None:
            if self.dim is not None:
                raise ValueError("dim counts the positions of an input: add `input: NODE` (or remove `dim`)")
            if self.stop is None:
                raise ValueError("arange needs `stop` (or an `input` and a `dim` to count the positions of)")
            if self.length() < 1:
                raise ValueError(f"arange from {self.start} to {self.stop} by {self.step} is empty")
        else:
            if self.stop is not None:
                raise ValueError("with an input, the length is the input's dim: remove `stop`")
            if self.dim is None:
                raise ValueError("with an input, say which dim's positions to count: add `dim`")
        _check_dtype([self.start, self.step], self.dtype, "start and step")
        _check_scalars([v for v in (self.start, self.stop, self.step) if v is not None], "start, stop and step")
        if self.dtype in INT_DTYPES:  # whole numbers (checked above): `step: 2.0` counts in the integer dtype,
            for name in ("start", "stop", "step"):  # where `positions * 2.0` made float32 positions
                if isinstance(getattr(self, name), float):
                    self.__dict__[name] = int(getattr(self, name))  # (frozen: set once, while validated)
        if self.input is None:  # (its values run from start to the last: both must fit the dtype)
            _check_dtype([self.start, self.start + self.step * (self.length() - 1)], self.dtype, "the range")
        return self

    @property
    def min_inputs(self) -> int:  # type: ignore[override]
        return 0 if self.input is None else 1

    @property
    def max_inputs(self) -> int:  # type: ignore[override]
        return self.min_inputs

    def owned(self) -> Owned | None:
        return "buffer" if self.input is None else None

    def length(self) -> int:
        if self.stop is None:
            return 0
        return max(0, math.ceil((self.stop - self.start) / self.step))  # torch.arange's size rule

    def stored_shape(self) -> tuple[int, ...]:
        return (self.length(),)

    def values(self) -> list[int | float] | None:
        last = self.start + self.step * (self.length() - 1)
        return [self.start, last] if self.input is None else None  # (its extremes: it runs from one to the other)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if self.input is None:
            return super().output_type(inputs)
        x = inputs[0]
        assert self.dim is not None
        length = x.shape[sample_dim(self.dim, x.rank)]
        if self.dtype in INT_RANGES:
            # torch counts in the integer dtype and wraps round past its range, silently: the last position
            # must fit. On a free length this is a decision, recorded, so longer inputs are refused by the
            # guard. (On a free length, int64 positions past 2^62 already fail as size arithmetic.)
            low, high = INT_RANGES[self.dtype]
            last = self.start + self.step * (length - 1)
            if not (isinstance(last, SymInt) and self.dtype == "int64") and not low <= last <= high:
                fix = "write dtype: int64 (the default), or" if self.dtype == "int32" else "write"
                raise ArgumentError(f"the positions run from {self.start} to {hint(last)} over dim {self.dim} of "
                                    f"{x}, outside the range of {self.dtype} ({low} to {high}), where torch wraps "
                                    f"them round", "dtype", f"{fix} a smaller start or step")
        # Whole non-negative steps from a non-negative start: ids up to start + step * (length - 1).
        counts = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.start, self.step)) and (
            self.start >= 0 and self.step > 0)
        below = self.start + self.step * (length - 1) + 1 if counts else None
        # (a negative start is the least id whatever the length; a negative step's least id depends on it)
        least = self.start if isinstance(self.start, int) and self.step > 0 else None
        return TensorType((length,), self.dtype, "features_last", ids_below=below, ids_from=least)

    def data(self) -> tuple[str, dict[str, Any]]:
        return "arange", {"start": self.start, "end": self.stop, "step": self.step, "dtype": self.dtype}

    def code(self, operands: list[str], owner: str) -> str:
        if self.input is None:
            return super().code(operands, owner)
        x = operands[0]
        positions = f"torch.arange({x}.shape[{self.dim}], dtype=torch.{self.dtype}, device={x}.device)"
        if self.step != 1:
            positions += f" * {self.step!r}"
        if self.start != 0:
            positions = f"({positions} + {self.start!r})"
        elif self.step != 1:
            positions = f"({positions})"
        return f"{positions}.expand({x}.shape[0], -1)"

