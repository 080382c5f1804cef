"""The vocabulary every op shares: tensor types, the layer base model, and the op registry.

An op is a pydantic model (its constructor arguments, as a spec writes them) with three
class-level facts and two pure functions:

- `torch_name`: the `torch.nn` class it builds, or None for ops that are code (add, concat).
- `inferred`: the input-size arguments resgraph fills in (`in_channels`...), never written.
- `layout`: what its output's layout is (`channels_first` like conv maps, `features_last` like
  Linear outputs), or None to keep its input's; projections need it to pick conv vs linear.
- `inferred_args(inputs)` and `output_type(inputs)`: shape functions over per-sample shapes.
  They run without torch, so `resgraph validate` checks every shape in milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import math
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import TypeAliasType

from ..suggest import did_you_mean
from ..symbolic import SymInt, hints
from .index import OP_MODULES

__all__ = [
    "ArgumentError",
    "DTYPES",
    "DeclaredLayout",
    "TORCH_DTYPE_ALIASES",
    "DtypeError",
    "FLOAT_DTYPES",
    "FLOAT_OVERFLOW",
    "INT_DTYPES",
    "INT_RANGES",
    "NORM_DTYPES",
    "NUMBER_DTYPES",
    "PRECISION_HINT",
    "WEIGHTED_DTYPES",
    "Identifier",
    "check_scalar",
    "dtype_hint",
    "dtype_suggestion",
    "grid_origin",
    "on_grid_of",
    "is_identifier",
    "number_overflow",
    "scalar_overflow",
    "Layer",
    "FeatureMapLayer",
    "Reference",
    "Layout",
    "LayoutError",
    "dtype_name",
    "OPS",
    "OpRegistry",
    "OwnGrid",
    "ShapeError",
    "Storage",
    "StrictModel",
    "TensorType",
    "promote",
    "register_op",
    "sample_dim",
    "to_tuple",
]

IDENTIFIER_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*$"
IDENTIFIER_MAX_LENGTH = 128
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN, max_length=IDENTIFIER_MAX_LENGTH)]
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def is_identifier(name: Any) -> bool:
    """True for a valid spec name (what `Identifier` accepts), checked without pydantic."""
    return isinstance(name, str) and len(name) <= IDENTIFIER_MAX_LENGTH and _IDENTIFIER.fullmatch(name) is not None
# A value a layer may read: a node's name; `call.out` for one output of a block call with several
# (`call.inner.out` when that output is itself one of an inner call's), `call.3` for one
# instance's output of a collected repeat, and `call.*` for all of them, in order (see resolve).
REFERENCE_PATTERN = r"^[A-Za-z][A-Za-z0-9_]*(\.([A-Za-z][A-Za-z0-9_]*|[0-9]+))*(\.\*)?$"
Reference = Annotated[str, StringConstraints(pattern=REFERENCE_PATTERN, max_length=512)]
Layout = Literal["channels_first", "features_last"]
# The `layout` key of a value whose layout is not read from its shape's rank (a stored tensor, a
# reshape). Its field is named otherwise: `layout` is every op's class-level fact (`Layer.layout`),
# which a field of that name would hide.
DeclaredLayout = Annotated[Layout | None, Field(None, alias="layout", description=(
    "channels_first (C, ...) or features_last (..., F), as an input declares it; default: by rank (3+ dims: "
    "channels_first). E.g. features_last for a per-head (H, 1, 1) scale of attention scores (H, L, S); "
    "channels_first for a per-channel (C, 1) gate of a 1-d map (C, L)."))]

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})
# torch's other spellings of a dtype (torch.float is torch.float32): a spec writes each dtype one way, so
# these are refused with the name they stand for; `float` and `int` are float32 and int32 in torch,
# not the Python types' float64 and int64 that a nearest-spelling suggestion would offer.
TORCH_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
                       "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32"}


def dtype_suggestion(word: str) -> str:
    """`"; did you mean ..."` for a dtype a spec wrote that is not one of DTYPES, or an empty string.

    >>> dtype_suggestion("float"), dtype_suggestion("torch.int64")
    ("; did you mean 'float32'? (torch.float is float32)", "; did you mean 'int64'? (write it without 'torch.')")
    >>> dtype_suggestion("short")
    '; torch.short is int16, which a spec cannot declare: write int32 or int64'
    """
    bare = word[len("torch."):] if word.startswith("torch.") else word
    meant = TORCH_DTYPE_ALIASES.get(bare, bare if bare in DTYPES else None)
    if meant is None:
        return did_you_mean(bare, DTYPES)
    if meant not in DTYPES:
        kind = "int32 or int64" if meant.startswith("int") else "one of " + ", ".join(DTYPES)
        return f"; torch.{bare} is {meant}, which a spec cannot declare: write {kind}"
    why = f"torch.{bare} is {meant}" if bare != meant else "write it without 'torch.'"
    return f"; did you mean {meant!r}? ({why})"
# What a layer with weights takes: resgraph builds them float32. A layer that multiplies by them (a conv,
# Linear, PReLU, attention's projections) needs its input in that dtype too (torch: "Input type (Half) and
# bias type (float) should be the same"); a norm has kernels for float16 and bfloat16 inputs beside float32
# weights and running statistics, but none for float64.
WEIGHTED_DTYPES = frozenset({"float32"})
NORM_DTYPES = frozenset({"float32", "float16", "bfloat16"})
Scalar = int | float  # a number operand of an arithmetic op


# Keys of a layer body that are resgraph's, not the torch constructor's.
RESGRAPH_KEYS = frozenset({"op", "input", "scale", "when", "output", "tie"})

# A parameter's path in the built model, as `state_dict` names it (`wte.weight`, `h.0.attn.weight`).
PARAMETER_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"
ParameterPath = Annotated[str, StringConstraints(pattern=PARAMETER_PATH_PATTERN, max_length=512)]
Owned = Literal["module", "parameter", "buffer"]
# A tie's target: a path, or null for "not tied" (so a block can tie only some instances, from an
# expression: `weight: "${None if index == 0 else 'layers.0.fc.weight'}"`, an ALBERT-style shared layer).
TiedPath = Annotated[ParameterPath | None, WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": PARAMETER_PATH_PATTERN, "maxLength": 512}, {"type": "null"},
    {"type": "string", "pattern": r"^\$\{.*\}$", "description": "A ${...} expression over parameters."}]})]
# One schema definition shared by every op (a field per op would repeat it 80 times).
Ties = TypeAliasType("Ties", Annotated[dict[ParameterPath, TiedPath], Field(description=(
    "Weight tying: this layer's parameter (key) is another parameter of the model (value, its path from the "
    "model's root as state_dict names it), e.g. {weight: wte.weight}. Shapes must be equal. A value may be an "
    "expression; null leaves that parameter untied (e.g. in a repeat's first instance)."))])


class StrictModel(BaseModel):
    """Unknown keys are errors and infinities are not numbers, everywhere in a spec."""

    # defer_build: a model's validator is built on its first use, so start-up pays only for the ops a
    # spec names (building all of them took most of `resgraph validate`'s time).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True,
                              defer_build=True)
    # Models this one nests, whose validators are built before its own (see `model_rebuild`).
    nested_first: ClassVar[tuple[type[StrictModel], ...]] = ()

    def field_value(self, name: str, default: Any = None) -> Any:
        """Field `name`'s value, or `default` where this model has no such field: code shared by a
        family of ops reads fields only some members have (PReLU's `num_parameters`). `getattr` with a
        default costs 6 µs there: pydantic's `__getattr__` raises an AttributeError, which it catches."""
        return self.__dict__.get(name, default)

    @classmethod
    def model_rebuild(cls, *, force: bool = False, raise_errors: bool = True, _parent_namespace_depth: int = 2,
                      _types_namespace: Any = None) -> bool | None:
        """pydantic's `model_rebuild` (which builds a deferred model on its first use), building the models
        of `nested_first` first: pydantic then reuses their schemas in this one's instead of generating
        them inline, and again when each is first used on its own (the spec's sections are)."""
        for nested in cls.nested_first:
            nested.model_rebuild(raise_errors=raise_errors)
        depth = _parent_namespace_depth + 1 if _parent_namespace_depth > 0 else 0  # this frame is one more
        return super().model_rebuild(force=force, raise_errors=raise_errors, _parent_namespace_depth=depth,
                                     _types_namespace=_types_namespace)


def dtype_name(dtype: Any) -> str:
    """A torch dtype as a spec names it: `float32` for `torch.float32` (no torch import needed)."""
    return str(dtype).removeprefix("torch.")


def promote(dtypes: list[str], scalar: Scalar | None = None, *, floating: bool = False) -> str:
    """The result dtype of an arithmetic op on tensors of `dtypes` (and a Python number), as torch
    promotes: the widest float among the tensors; else float32 for a float number or a real-only
    function (`floating`); else the widest integer (bool below int32 below int64).

    >>> promote(["int64"], 0.5), promote(["float16", "float32"]), promote(["int32"], floating=True)
    ('float32', 'float32', 'float32')
    """
    floats = [d for d in dtypes if d in FLOAT_DTYPES]
    if floats:
        if len(set(floats)) == 1:
            return floats[0]
        return "float64" if "float64" in floats else "float32"  # float16 with bfloat16 meets in float32
    if floating or isinstance(scalar, float):
        return "float32"
    for integer in ("int64", "int32"):
        if integer in dtypes:
            return integer
    return "int64" if isinstance(scalar, int) and not isinstance(scalar, bool) else dtypes[0]


class ShapeError(ValueError):
    """An op cannot accept its input; the message says why in the user's terms."""


class ArgumentError(ShapeError):
    """An argument torch would refuse only when the model is built or first called, blamed on its key
    (`field`), with a fix where one is clear (`hint`)."""

    def __init__(self, message: str, field: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.field, self.hint = field, hint


INT_DTYPES = frozenset({"int64", "int32"})
# The whole numbers each integer dtype holds, and the least magnitude each float dtype stores as
# inf (torch rounds a Python number to float32 first, then to a narrower float: measured). float64
# holds every number a spec can write (integers below 10^100, finite floats).
INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}
FLOAT_OVERFLOW = {"float16": 65519.998046875, "bfloat16": 3.396177427818412e38, "float32": 3.4028235677973366e38}
_FLOAT_LARGEST = {"float16": "65504", "bfloat16": "3.39e38", "float32": "3.40e38"}


def number_overflow(value: int | float, dtype: str) -> str | None:
    """Why a tensor of `dtype` cannot hold the number `value` (torch wraps an integer round, stores a
    float as inf, or refuses it only at run time); None where it can.

    >>> number_overflow(3_000_000_000, "int32"), number_overflow(65504, "float16"), number_overflow(1e39, "float64")
    ('outside the range of int32 (-2147483648 to 2147483647)', None, None)
    """
    if dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        return None if low <= value <= high else f"outside the range of {dtype} ({low} to {high})"
    if dtype in FLOAT_OVERFLOW and abs(value) >= FLOAT_OVERFLOW[dtype]:
        return f"more than {dtype} holds (its largest number is about {_FLOAT_LARGEST[dtype]}): it would be inf"
    return None


# The whole numbers torch takes as a Python scalar argument (an operand, a fill value, a range's ends):
# int64's, and uint64's above them; past these it raises OverflowError at the call (measured).
TORCH_SCALAR_RANGE = (-2**63, 2**64 - 1)


def scalar_overflow(value: int | float) -> str | None:
    """Why torch cannot take the Python number `value` as a scalar argument, whatever the dtype it
    computes in (`x + 10**23` on a float tensor raises OverflowError); None where it can. Written as
    a float, the same number is taken.

    >>> scalar_overflow(2**64 - 1), scalar_overflow(1e23), scalar_overflow(10**23).split('; ')[1]
    (None, None, 'write it as a float, 1e+23')
    """
    low, high = TORCH_SCALAR_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or low <= value <= high:
        return None
    return (f"a whole number outside what torch takes as a scalar ({low} to {high}); write it as a float, "
            f"{float(value):g}")


def check_scalar(value: int | float | None, dtype: str, field: str) -> None:
    """Refuse a number operand (`scalar`, a clamp bound, an exponent) that an op computing in `dtype`
    cannot hold, or that torch cannot take as a scalar at all.

    Raises:
        ArgumentError: at `field`, naming the dtype.
    """
    problem = None if value is None else number_overflow(value, dtype)
    if problem is not None:
        wider = " (or make the input float64)" if dtype in FLOAT_OVERFLOW else " (or make the input int64)" \
            if dtype == "int32" else ""
        raise ArgumentError(f"{field}={value!r} is {problem}; this op computes in {dtype} (from its input's dtype), "
                            f"where the number cannot be used as written; write a smaller number{wider}", field)
    problem = None if value is None else scalar_overflow(value)
    if problem is not None:
        raise ArgumentError(f"{field}={value!r} is {problem}", field)
NUMBER_DTYPES = FLOAT_DTYPES | INT_DTYPES  # what ops that refuse only bool take (relu, max pooling)
TO_FLOAT_HINT = ("integer values (token ids, positions) are looked up with `Embedding`; to compute with them as "
                 "numbers, make them floating point first, e.g. `{op: mul, scalar: 1.0}`")
PRECISION_HINT = ("resgraph builds float32 weights: declare the input float32, and for another precision convert "
                  "the built model and its inputs together (`model.half()`, `model.double()`, or `torch.autocast`)")


# How a DtypeError names what an op takes, by its `input_dtypes`.
_WANTED = {
    FLOAT_DTYPES: "a floating-point input",
    NUMBER_DTYPES: "a number (not bool) input",
    WEIGHTED_DTYPES: "a float32 input, the dtype of its weights (torch needs the two equal)",
    NORM_DTYPES: "a float32, float16 or bfloat16 input beside its float32 weights or running statistics (no "
                 "float64 kernel takes them)",
}


class DtypeError(ShapeError):
    """An op has no kernel for an input's dtype: torch would fail at the first forward.

    `index` is the input at fault and `accepted` the dtypes the op takes; the shape stage names the
    node that input comes from.
    """

    def __init__(self, index: int, dtype: str, accepted: frozenset[str]) -> None:
        integers = accepted <= FLOAT_DTYPES and dtype not in FLOAT_DTYPES  # (said as "floating-point", with its fix)
        wanted = _WANTED[FLOAT_DTYPES] if integers else _WANTED.get(accepted) or \
            f"input of dtype {', '.join(sorted(accepted))}"
        super().__init__(f"needs {wanted}, got {dtype}")
        self.index, self.dtype, self.accepted = index, dtype, accepted
        self.hint = dtype_hint(dtype, accepted)


class LayoutError(ShapeError):
    """A broadcast would pair a value's channels or features with another axis of the value it meets
    (see `merge.check_gate_layouts`). `gate` and `target` are the two operands' indices among the op's
    inputs: the shape stage names the nodes they come from, and a stored tensor among them is told the
    `layout` key that would declare its dims as the other's."""

    def __init__(self, message: str, gate: int = 1, target: int = 0) -> None:
        super().__init__(message)
        self.gate, self.target = gate, target
        self.hint: str | None = None


def dtype_hint(dtype: str, accepted: frozenset[str]) -> str | None:
    """How to give an op (or a projection) that takes `accepted` a value it refuses as `dtype`: make
    integers floating point; declare a float of another precision float32 where float32 weights need it."""
    if accepted <= FLOAT_DTYPES and dtype not in FLOAT_DTYPES:
        return TO_FLOAT_HINT
    return PRECISION_HINT if dtype in FLOAT_DTYPES and accepted in (WEIGHTED_DTYPES, NORM_DTYPES) else None


Scale = tuple[Fraction, ...]

_KEEP: Any = object()  # with_shape's default scale: see there
_ORIGINS = itertools.count(1)  # (an int, not an object: a copy of a graph keeps its grids' origins)


class OwnGrid(tuple):  # type: ignore[type-arg]
    """The grid scale of a map whose grid starts at a layer, not at an input: a sequence reshaped or
    transposed into a map. Its steps count from there (`origin`), so a skip between two maps made from
    it is planned with the strides between them; grids of different origins are not compared (their
    step is unknown, as after an adaptive pool). Equality is the steps' alone, as a tuple's: origins are
    numbered per process, and a typing and its memoised copy are the same facts; what compares two grids
    asks `grid_origin` first."""

    origin: int

    def __new__(cls, steps: Sequence[Fraction], origin: int) -> OwnGrid:
        grid = super().__new__(cls, steps)
        grid.origin = origin
        return grid

    def __reduce__(self) -> tuple[Any, ...]:
        return OwnGrid, (tuple(self), self.origin)

    @classmethod
    def fresh(cls, dims: int) -> OwnGrid:
        """A new grid of `dims` spatial dims, at unit steps."""
        return cls((Fraction(1),) * dims, next(_ORIGINS))


def grid_origin(scale: Scale | None) -> int:
    """Where a grid's steps count from: 0 for an input's (every input is on one), else its layer's."""
    return scale.origin if isinstance(scale, OwnGrid) else 0


def on_grid_of(scale: Scale, steps: Sequence[Fraction]) -> Scale:
    """`steps` on `scale`'s grid (counted from its origin)."""
    return OwnGrid(steps, scale.origin) if isinstance(scale, OwnGrid) else tuple(steps)


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: per-sample shape (batch implicit), dtype and layout.

    Sizes may be `SymInt`s (they depend on an input's free size; see `resgraph.symbolic`).
    `scale` is, for a map, the step of its spatial grid in input pixels per spatial dim (1 at an input;
    2 after a stride-2 conv; 1/2 after a 2x upsample); its spatial dims are those after the channels,
    or before the features of a map permuted channels-last (ConvNeXt's), which keeps its grid through
    per-position layers (LayerNorm, Linear) and back. It is counted from the layer that
    made the map where it is no input's (a sequence reshaped or transposed into a map: `OwnGrid`), or
    None where unknown (after an adaptive pool, an uncurated op that resizes). Projections use it to tell
    a stride (the grids align at a ratio) from a size change on the same grid (valid convs).
    `ids_below`, for integer positions counted at run time (`arange` over a dim), is a bound every
    value stays under (int | SymInt), so an `Embedding` of them knows the lengths its table covers;
    None where unknown. A type made from this one (`with_shape` and its siblings) drops it; an op
    that returns its input's type as it is (`neg`, a dropout) keeps it, an upper bound still.
    `ids_from` is the least value where it is known (a constant's, an `arange`'s start), so an
    `Embedding` refuses negative ids, which torch refuses only at run time. It is dropped likewise,
    and also by an op that returns its input's type but maps the values (`neg`, ReLU): only the ops
    that return their input itself (Identity, the dropouts) keep it (see `shapes._infer_layer`).
    """

    shape: tuple[Any, ...]  # int | SymInt
    dtype: str = "float32"
    layout: Layout = "channels_first"
    scale: Scale | None = None
    ids_below: Any = field(default=None, compare=False)  # (not compared: a SymInt's == records a guard)
    ids_from: int | None = field(default=None, compare=False)  # the least id, where known (a constant's)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: tuple[Any, ...], layout: Layout | None = None,
                   scale: Scale | None = _KEEP) -> TensorType:
        """This type with another shape (and layout). Unless `scale` is given, the grid scale is kept
        only when the result is the same kind of map with the same spatial sizes."""
        shape, layout = tuple(shape), layout or self.layout
        if scale is _KEEP:
            scale = self.scale
            if scale is not None:  # (a map's spatial dims: after its channels, or before its features)
                spatial = slice(1, None) if layout == "channels_first" else slice(None, -1)
                if layout != self.layout or len(shape) != self.rank or hints(shape[spatial]) != hints(
                        self.shape[spatial]):
                    scale = None
        return TensorType(shape, self.dtype, layout, scale)  # (not dataclasses.replace: 3x the time, per layer)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype, self.layout, self.scale)

    def with_layout(self, layout: Layout) -> TensorType:
        """This type read in `layout` (its dims unmoved: a grid of the other layout's dims is dropped), without
        what `with_shape` drops."""
        scale = self.scale if layout == self.layout else None
        if layout == self.layout and scale is self.scale and self.ids_below is None and self.ids_from is None:
            return self  # (a norm's output, as most are: one object less to make, hint and check)
        return TensorType(self.shape, self.dtype, layout, scale)

    def scaled(self, factors: tuple[Fraction, ...] | None) -> Scale | None:
        """The grid scale after an op that steps by `factors` per spatial dim (its strides)."""
        if self.scale is None or factors is None or len(factors) != len(self.scale) or self.layout != "channels_first":
            return None  # (a channels-last map read as channels-first: its grid's dims are others)
        if factors.count(1) == len(factors):  # (most layers: Fraction arithmetic costs microseconds)
            return self.scale
        return on_grid_of(self.scale, [s * f for s, f in zip(self.scale, factors)])

    def hints(self) -> TensorType:
        """This type with plain ints: every size at its declared value (for summaries and exports)."""
        return TensorType(hints(self.shape), self.dtype, self.layout, self.scale)

    def __str__(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ("," if len(self.shape) == 1 else "") + ")"


@dataclass(frozen=True)
class Storage:
    """How a layer's output relates to its inputs' memory: what the in-place check follows.

    `aliases`: the index of the input whose storage the output is (the input itself, or a view of
    it: reshape, transpose, a chunk piece, Identity, Dropout in eval mode), else None (fresh memory).
    `writes`: the index of the input the layer overwrites (`inplace: true`), else None.
    `saves_output`: autograd keeps the output for the backward pass (ReLU, Sigmoid, Softmax, exp...),
    so overwriting it later in place makes `backward()` fail.
    `fixed`: why the value may never be overwritten at all (a stored tensor broadcast over the
    batch: one element of it stands for many), or None.
    """

    aliases: int | None = None
    writes: int | None = None
    saves_output: bool = False
    fixed: str | None = None


FRESH = Storage()


@functools.cache
def shared_storage(aliases: int | None, writes: int | None, saves_output: bool) -> Storage:
    """`Storage(aliases, writes, saves_output)`, one object per distinct value: a Storage is immutable,
    and every layer of every build asks for one of a handful (making one took half a microsecond)."""
    return Storage(aliases, writes, saves_output)


# The values `Layer.args` reads from a layer's fields as they are (model_dump gives them unchanged).
_PLAIN_VALUES = frozenset({int, float, bool, str, type(None)})


@functools.lru_cache(maxsize=1024)  # (bounded: a class made per build, an uncurated op's, would pile up)
def _argument_order(cls: type[StrictModel]) -> dict[str, int]:
    """An op class's argument fields (`RESGRAPH_KEYS` left out), each with its position: `Layer.args`
    lists the ones a layer sets in this order, found once per class rather than once per layer."""
    names = [name for name in cls.__pydantic_fields__ if name not in RESGRAPH_KEYS]
    return {name: index for index, name in enumerate(names)}


@functools.lru_cache(maxsize=1024)
def _spec_keys(cls: type[StrictModel]) -> dict[str, str]:
    """The argument fields a spec spells otherwise (a stored tensor's `declared_layout` is written
    `layout`: the name is `Layer.layout`'s), each with the key written: usually none."""
    return {name: info.alias for name, info in cls.__pydantic_fields__.items()
            if info.alias is not None and info.alias != name and name not in RESGRAPH_KEYS}


def _spelled(cls: type[StrictModel], args: dict[str, Any]) -> dict[str, Any]:
    """`args` keyed as the spec writes them (see `_spec_keys`), so summaries show what was written."""
    keys = _spec_keys(cls)
    return {keys.get(name, name): value for name, value in args.items()} if keys else args


class Layer(StrictModel):
    """Base of every layer kind: an op name, optional explicit inputs, and the op's arguments."""

    op: str
    input: Reference | list[Reference] | None = Field(
        default=None, description="The node(s) this layer reads; default: the previous layer."
    )
    when: StrictBool = Field(default=True, description="false (usually an expression): the layer is left out.")
    tie: Ties | None = None

    torch_name: ClassVar[str | None] = None  # set by register_op unless the op is code
    code_only: ClassVar[bool] = False  # merges are expressions in forward(), not modules
    owns_parameter: ClassVar[bool] = False  # a code op with a learned tensor of its own
    inferred: ClassVar[tuple[str, ...]] = ()
    layout: ClassVar[Layout | None] = None
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1
    view: ClassVar[bool] = False  # its output shares its input's storage (see Storage.aliases)
    input_dtypes: ClassVar[frozenset[str] | None] = None  # the dtypes torch has kernels for; None: any
    saves_output: ClassVar[bool] = False  # autograd keeps its output (see Storage.saves_output)
    # torch.export specialises its input's sizes (MaxPool1d: ATen's max_pool1d reads them as plain ints; an
    # RNN's sequence), so `dynamic_shapes()` leaves the input dims they come from static
    export_static: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Its subclasses then read its ClassVars as objects: see resolve_class_annotations.
        super().__pydantic_init_subclass__(**kwargs)
        resolve_class_annotations(cls)

    @field_validator("tie", mode="after")
    @classmethod
    def _untied_entries_dropped(cls, tie: dict[str, str | None] | None) -> dict[str, str | None] | None:
        """`{weight: null}` is no tie: every consumer then reads only real ties (and `{}` is none)."""
        if tie is None:
            return None
        return {attribute: target for attribute, target in tie.items() if target is not None} or None

    @model_validator(mode="after")
    def _tie_needs_a_module(self) -> Layer:
        if self.tie and self.owned() != "module":
            raise ValueError(f"tie: op {self.op!r} builds no module whose parameters could be tied; tie the "
                             "parameter of a layer such as Linear or Embedding")
        return self

    @classmethod
    def sequence_inputs(cls, count: int, masks: int) -> int:
        """How many of its `count` inputs (the first ones; `masks` of them are masks) the op reads as
        `(..., seq, features)`: attention's q, k, v. An input read only there is features-last whatever
        its rank (`shapes.declared_type`): a `(heads, L, head_dim)` query is not an image."""
        return 0

    def owned(self) -> Owned | None:
        """What this layer stores in the built model: a module, an nn.Parameter, a buffer, or nothing
        (code ops). `ownership.owns` reads it; the attribute is named after the layer."""
        if self.owns_parameter:
            return "parameter"
        return None if self.code_only else "module"

    def args(self) -> dict[str, Any]:
        """The constructor arguments the spec wrote (lists as tuples), without `op`/`input`."""
        # Dumped once per layer, kept in its __dict__: a layer is frozen, and expansion gives equal bodies
        # one object, so ResNet-50's 16 blocks type the same BatchNorm many times (a dump costs
        # microseconds). See `model_copy`. (Not functools.cached_property, which takes a lock per read.)
        written = self.__dict__.get("_written_args")
        if written is None:
            written = self.__dict__["_written_args"] = self._dump_written()
        return dict(written)

    def _dump_written(self) -> dict[str, Any]:
        """What `args` keeps: the fields the spec set, in their order, lists as tuples. Where every such
        value is plain (a number, a string, None, a list of them), they are read as they are, which is
        what `model_dump` gives for them in a quarter of its time (once per layer of every build);
        anything else goes through `model_dump`."""
        values, order = self.__dict__, _argument_order(type(self))
        written = {}
        for name in sorted([name for name in self.__pydantic_fields_set__ if name in order], key=order.__getitem__):
            value = values[name]
            kind = type(value)
            if kind in _PLAIN_VALUES:
                written[name] = value
            elif (kind is list or kind is tuple) and all(type(item) in _PLAIN_VALUES for item in value):
                written[name] = tuple(value)
            else:
                break
        else:
            return _spelled(type(self), written)
        dumped = self.model_dump(exclude=RESGRAPH_KEYS, exclude_unset=True, by_alias=False)
        return _spelled(type(self), {k: tuple(v) if isinstance(v, list) else v for k, v in dumped.items()})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Layer:
        """pydantic's copy, without what `_written_args` kept (`update` may change an argument)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_written_args", None)
        return copied

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        """The input-size arguments resgraph fills in from the input types."""
        return {}

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        """The output type for these inputs. Raises ShapeError when they are unacceptable."""
        raise NotImplementedError

    def code(self, operands: list[str], owner: str) -> str:
        """For `code_only` ops: the expression computing the output from the named operands.

        `owner` is the attribute holding the op's own parameter, if it has one (`self.cls`).
        Ops without inputs receive the first forward input, to size the batch.
        """
        raise NotImplementedError(f"{self.op} is a module, not code")

    def code_with(self, operands: list[str], owner: str, args: dict[str, Any]) -> str:
        """`code`, given the arguments shape inference decided (`node.meta["args"]`: a concat's dim
        follows its inputs' layout); most ops need only their own."""
        return self.code(operands, owner)

    def call(self, module: str, operands: list[str]) -> str:
        """For module ops: the expression calling the built module (`self.conv1(x)`)."""
        return f"{module}({', '.join(operands)})"

    def build(self, args: dict[str, Any]) -> Any:
        """The torch object this layer owns: a module, or an nn.Parameter for learned tensors."""
        from torch import nn

        return getattr(nn, self.torch_name)(**args)

    def tensor_source(self) -> str:
        """For ops that own a parameter or a buffer (see `owned`): the Python expression (using
        `torch` and `nn`) that `build` evaluates to, written into the standalone export."""
        raise NotImplementedError(f"{self.op} owns no tensor")

    def parameter_count(self, args: dict[str, Any]) -> int | None:
        """Parameters this layer owns, from its full constructor `args`, without torch.

        None where only building can tell: uncurated torch.nn classes, and a layer with a `tie`
        (its tied parameters are counted once, at their owner, and only the built module knows
        their sizes).
        """
        return None if self.tie else self.built_parameter_count(args)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        """Parameters the built module (or learned tensor) has, ties aside; None where only building can tell."""
        return 0

    def check_dtypes(self, inputs: list[TensorType]) -> None:
        """Refuse an input whose dtype the op has no kernel for (`input_dtypes`), before its shapes.

        Raises:
            DtypeError: naming the input at fault and what the op takes.
        """
        accepted = self.input_dtypes
        if accepted is None:
            return
        for index, t in enumerate(inputs):
            if t.dtype not in accepted:
                raise DtypeError(index, t.dtype, accepted)

    def export_static_sizes(self, inputs: list[TensorType]) -> list[Any]:
        """The input sizes torch.export specialises, for a layer that is `export_static`: every one."""
        return [size for t in inputs for size in t.shape]

    def storage(self, inputs: list[TensorType]) -> Storage:
        """How the output shares memory with the inputs (see `Storage`), for the in-place check.

        Curated ops say it with class facts (`view`, `saves_output`) and their `inplace` argument:
        an in-place op's output is its input, overwritten.
        """
        writes = bool(self.field_value("inplace", False))
        return shared_storage(0 if writes or self.view else None, 0 if writes else None, self.saves_output)

    def module_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {**self.inferred_args(inputs), **self.args()}

    def check_static(self) -> None:
        """Checks that need no input types (an uncurated op's class and argument names), run when the
        layer is typed, so their mistakes are reported even where its input cannot be inferred.

        Raises:
            ShapeError: with a `field` attribute naming the key at fault, where there is one.
        """



def resolve_class_annotations(cls: type) -> None:
    """Replace the annotations of `cls` (its fields' and its `ClassVar`s') by the objects their strings
    name (`from __future__ import annotations` keeps every annotation a string).

    pydantic evaluates every base class's annotations again for each subclass it creates, the
    fields it copies from the base included: Layer's ten ClassVars and four fields were compiled and
    evaluated for each of the ~120 op classes, a large part of what creating an op model cost. Resolved
    once, as each class is created (`Layer.__pydantic_init_subclass__`), they are read as they are
    (the base's own fields were typed when it was created; this changes only what its subclasses read).
    """
    namespace = vars(sys.modules[cls.__module__])
    resolved = {}
    for name, value in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(value, str):
            with contextlib.suppress(NameError):  # a name defined later in its module: left to pydantic
                value = eval(value, namespace, dict(vars(cls)))  # noqa: S307 (resgraph's own source text)
        resolved[name] = value
    cls.__annotations__ = resolved


resolve_class_annotations(StrictModel)  # every model's base: read again for each of them
resolve_class_annotations(Layer)


class FeatureMapLayer(Layer):
    """An op over `(C, *spatial)` maps with a fixed number of spatial dims (the Nd families).

    Its inferred argument, if any, is the channel count C.
    """

    spatial_dims: ClassVar[int] = 2
    layout: ClassVar[Layout | None] = "channels_first"

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {name: inputs[0].shape[0] for name in self.inferred}

    def feature_map(self, inputs: list[TensorType]) -> TensorType:
        """The single input, checked to be a `(C, *spatial)` map of `spatial_dims` spatial dims."""
        n = self.spatial_dims
        if len(inputs) == 1 and len(inputs[0].shape) == n + 1:  # (every conv, norm and pool of a build passes)
            return inputs[0]
        return require_rank(inputs, (n + 1,), channels_first_shape(n))  # (which words the error)


class OpRegistry(Mapping[str, type[Layer]]):
    """The curated ops by `op` name, each created only when it is first looked up.

    Every op module registers its classes with `register_op` when it is imported, or promises
    them (`promise`) when it generates a family from a table (Conv1d-3d, the activations): those
    are created on their first lookup. `OP_MODULES` (`ops/index.py`, generated by
    `python -m resgraph.schema`) says in which module each name lives. So the names are known
    without importing any op: `name in OPS`, `sorted(OPS)` and "did you mean" cost nothing;
    `OPS[name]` and `OPS.get(name)` import the one module that defines `name` and create that
    op; `.values()` and `.items()` create every op (the schema generator). Creating the op models
    is most of what the ops cost at start-up, and a spec names a few of ~90.

    An op defined without an index entry (an op module added since the index was generated)
    is still an op once its module is imported; `tests/test_op_index.py` keeps the index current.
    """

    def __init__(self, index: Mapping[str, str], package: str) -> None:
        self._index = dict(index)  # name -> module of `package`
        self._package = package
        self._declared: dict[str, None] = {}  # every name defined so far, in definition order
        self._classes: dict[str, type[Layer]] = {}  # the ops created so far
        self._promised: dict[str, Callable[[], object]] = {}  # name -> what creates (and registers) it
        self._creating = threading.Lock()  # one thread creates a promised op; the others then find it

    def register(self, name: str, cls: type[Layer]) -> None:
        """Record `cls` as op `name`. Raises RuntimeError when another class has the name already."""
        if name in self._classes:
            raise RuntimeError(f"op {name!r} is registered twice ({self._classes[name].__module__} and "
                               f"{cls.__module__})")
        self._declared[name] = None
        self._classes[name] = cls

    def promise(self, name: str, create: Callable[[], object]) -> None:
        """Define op `name` without creating it: `create()` creates and registers it on its first lookup.

        Raises:
            RuntimeError: the name is defined already.
        """
        if name in self._declared:
            raise RuntimeError(f"op {name!r} is registered twice")
        self._declared[name] = None
        self._promised[name] = create

    def registered(self) -> dict[str, type[Layer]]:
        """Every op of the modules imported so far, in definition order (promised ones are created)."""
        return {name: self[name] for name in list(self._declared)}

    def __getitem__(self, name: str) -> type[Layer]:
        cls = self._classes.get(name)
        if cls is None:
            if name not in self._declared:
                module = self._index[name]  # KeyError: not a curated op
                importlib.import_module(f"{self._package}.{module}")
            with self._creating:
                create = self._promised.get(name)
                if create is not None and name not in self._classes:
                    create()
                    self._promised.pop(name)
            cls = self._classes.get(name)
            if cls is None:  # the generated index disagrees with the modules: a mistake in resgraph, not a spec
                raise RuntimeError(f"ops/index.py says {self._index.get(name)} defines op {name!r}, but importing "
                                   "it registers no such op: regenerate the index with `python -m resgraph.schema`")
        return cls

    def __contains__(self, name: object) -> bool:  # Mapping's default would import the op's module
        return name in self._declared or name in self._index

    def __iter__(self) -> Iterator[str]:
        yield from self._index
        yield from (name for name in self._declared if name not in self._index)

    def __len__(self) -> int:
        return len(self._index) + sum(1 for name in self._declared if name not in self._index)

    def __repr__(self) -> str:
        return f"<OpRegistry: {len(self)} ops, {len(self._classes)} created>"


OPS = OpRegistry(OP_MODULES, __package__)

L = TypeVar("L", bound=type[Layer])


def register_op(cls: L) -> L:
    """Class decorator: add an op model to the registry under its `op` literal.

    Raises:
        RuntimeError: the name is registered already.
    """
    name = cls.model_fields["op"].annotation.__args__[0]  # type: ignore[union-attr]
    OPS.register(name, cls)
    if not cls.code_only:
        cls.torch_name = name  # curated ops are the torch.nn class of the same name
    return cls


V = TypeVar("V")


def to_tuple(value: V | tuple[V, ...] | list[V], size: int, name: str) -> tuple[V, ...]:
    """Expand a scalar-or-sequence argument to `size` entries, as torch's `_ntuple` does."""
    if isinstance(value, (list, tuple)):
        if len(value) != size:
            raise ShapeError(f"{name} has {len(value)} entries, expected {size}")
        return tuple(value)
    return (value,) * size


def sample_dim(dim: int, rank: int, name: str = "dim") -> int:
    """Map a torch dim (batch is dim 0) to an index into the per-sample shape of `rank` dims.

    Raises:
        ArgumentError: out of range, or the batch; blamed on the key `name` (the layer or skip where
            it is not written).
    """
    full_rank = rank + 1
    if not -full_rank <= dim < full_rank:
        raise ArgumentError(f"{name}={dim} is out of range for a tensor of {full_rank} dims (batch included)", name,
                            f"use a dim between 1 and {rank} (or -{rank} to -1)" if rank else None)
    full = dim % full_rank
    if full == 0:
        raise ArgumentError(f"{name}={dim} is the batch dimension; use a dim between 1 and {rank}", name)
    return full - 1


def fill_sizes(sizes: list[int], factors: Sequence[Any], name: str) -> tuple[int, ...]:
    """`sizes` with its one -1 (if any) resolved so that they multiply to the product of `factors`
    (the input dims that are reshaped; sizes may be `SymInt`s).

    The -1 is solved by cancelling the written sizes against the input's fixed dims where they divide
    them, so a free dim comes out as itself (`(L, 32) -> (-1, 4, 8)` gives `L`, not `L * 32 // 32`, an
    expression in which size solving could not see that L is linked to another input's L).

    >>> fill_sizes([2, -1], [12], "shape")
    (2, 6)
    """
    if sizes.count(-1) > 1 or 0 in sizes:
        raise ShapeError(f"{name} may hold at most one -1 and no zeros")
    known = math.prod(s for s in sizes if s != -1)
    total = math.prod(factors)
    if -1 in sizes:
        fixed = math.prod(f for f in factors if not isinstance(f, SymInt))
        free = [f for f in factors if isinstance(f, SymInt)]
        if free and fixed % known == 0:
            missing = math.prod([fixed // known, *free])
        elif total % known:
            raise ShapeError(f"{total} elements cannot be split into {name} {sizes}")
        else:
            missing = total // known
        return tuple(missing if s == -1 else s for s in sizes)
    if known != total:
        raise ShapeError(f"{name} {sizes} has {known} elements, but the input has {total}")
    return tuple(sizes)


def channels_first_shape(spatial_dims: int) -> str:
    """'(C, L)', '(C, H, W)' or '(C, D, H, W)': how error messages name an N-d feature map."""
    return _MAP_SHAPES[spatial_dims]  # (a constant: every feature-map op's typing passes it to require_rank)


_MAP_SHAPES = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}


def require_rank(inputs: list[TensorType], ranks: tuple[int, ...], expected: str) -> TensorType:
    """The single input, checked to have one of the allowed per-sample ranks."""
    (tensor,) = inputs
    if tensor.rank not in ranks:
        raise ShapeError(f"expects {expected} per sample, got {tensor}")
    return tensor




def describe_torch_op(name: str, inferred: tuple[str, ...]) -> str:
    """The schema description of a curated op: its torch class and what resgraph infers."""
    if not inferred:
        return f"torch.nn.{name}."
    return f"torch.nn.{name}; resgraph infers {', '.join(inferred)} from the input."


