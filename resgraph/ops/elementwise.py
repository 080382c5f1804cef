"""Shape-preserving ops: activations, dropouts, softmax and Identity, declared as one table."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, create_model

from .base import (
    FLOAT_DTYPES,
    NUMBER_DTYPES,
    OPS,
    WEIGHTED_DTYPES,
    ArgumentError,
    FeatureMapLayer,
    Layer,
    Storage,
    TensorType,
    check_scalar,
    describe_torch_op,
    register_op,
    sample_dim,
    shared_storage,
)
from .conv import spatial_family

__all__ = ["ELEMENTWISE", "ElementwiseBase"]

Probability = Annotated[float, Field(ge=0, le=1)]
INPLACE: Any = (bool, False)

# op name -> its constructor arguments as pydantic field definitions (type, default).
_TABLE: dict[str, dict[str, Any]] = {
    "Identity": {},
    "ReLU": {"inplace": INPLACE},
    "ReLU6": {"inplace": INPLACE},
    "LeakyReLU": {"negative_slope": (float, 0.01), "inplace": INPLACE},
    "PReLU": {"num_parameters": (Annotated[int, Field(ge=1)], 1), "init": (float, 0.25)},
    "ELU": {"alpha": (float, 1.0), "inplace": INPLACE},
    "CELU": {"alpha": (float, 1.0), "inplace": INPLACE},
    "SELU": {"inplace": INPLACE},
    "GELU": {"approximate": (Literal["none", "tanh"], "none")},
    "SiLU": {"inplace": INPLACE},
    "Mish": {"inplace": INPLACE},
    "Sigmoid": {},
    "Tanh": {},
    "Hardswish": {"inplace": INPLACE},
    "Hardsigmoid": {"inplace": INPLACE},
    "Hardtanh": {"min_val": (float, -1.0), "max_val": (float, 1.0), "inplace": INPLACE},
    "Softplus": {"beta": (float, 1.0), "threshold": (float, 20.0)},
    "Softsign": {},
    "LogSigmoid": {},
    "Tanhshrink": {},
    "Softmax": {"dim": (int, ...)},
    "LogSoftmax": {"dim": (int, ...)},
    "Dropout": {"p": (Probability, 0.5), "inplace": INPLACE},
    "AlphaDropout": {"p": (Probability, 0.5), "inplace": INPLACE},
}

# The input dtypes torch has kernels for, where not every dtype (tests/test_dtype_flow.py checks
# each op against torch): most activations are defined on floats only; the ones below also take
# integers, and Sigmoid, Tanh, Softsign and Tanhshrink turn them into float32.
_NUMBERS = {"ReLU", "ReLU6", "Hardtanh", "Softsign", "Tanhshrink"}
_ANY = {"Identity", "Sigmoid", "Tanh"}
TO_FLOAT = frozenset({"Sigmoid", "Tanh", "Softsign", "Tanhshrink"})

# Ops whose output autograd keeps for the backward pass (their derivative is written in terms of
# it), as torch 2.x defines them; their in-place forms differ. Overwriting such an output in place
# later makes backward() fail ("modified by an inplace operation"); tests/test_inplace_aliasing.py
# checks both tables against torch.
SAVES_OUTPUT = frozenset({"ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"})
SAVES_OUTPUT_IN_PLACE = frozenset({"ReLU", "ELU", "CELU", "SELU", "LeakyReLU"})
# Ops that return their input itself: always (Identity), or in eval mode (the dropouts).
RETURNS_INPUT = frozenset({"Identity", "Dropout", "AlphaDropout"})


# The argument an in-place op's slope is, where torch refuses a negative one in place.
_SLOPES = {"LeakyReLU": "negative_slope", "ELU": "alpha", "CELU": "alpha"}

# Number arguments the kernel takes as a scalar, and the dtype it converts each to (measured): the
# input's own (Hardtanh's bounds), or its compute type (float32 for float16, bfloat16 and float32
# inputs, float64 for float64). One it cannot hold fails at the first forward ("value cannot be
# converted to type float without overflow").
_OPERANDS = {"Hardtanh": {"min_val": "input", "max_val": "input"}, "LeakyReLU": {"negative_slope": "compute"},
             "ELU": {"alpha": "compute"}, "CELU": {"alpha": "compute"},
             "Softplus": {"beta": "compute", "threshold": "compute"}}


class ElementwiseBase(Layer):
    """An op whose output has its input's type."""

    def storage(self, inputs: list[TensorType]) -> Storage:
        writes = bool(self.field_value("inplace", False))
        saves = self.op in (SAVES_OUTPUT_IN_PLACE if writes else SAVES_OUTPUT)
        return shared_storage(0 if writes or self.op in RETURNS_INPUT else None, 0 if writes else None, saves)

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        return self.field_value("num_parameters", 0)  # only PReLU learns (one slope per parameter)

    def check_static(self) -> None:
        """Arguments torch refuses only when the module is built or run (its asserts and kernels check them)."""
        low, high = self.field_value("min_val"), self.field_value("max_val")
        if low is not None and high is not None and not high > low:
            raise ArgumentError(f"max_val={high} must be greater than min_val={low} (torch refuses to build it)",
                                "max_val" if "max_val" in self.model_fields_set else "min_val",
                                "set min_val below max_val (the range the values are clipped to)")
        if self.op == "CELU" and self.field_value("alpha", 1.0) == 0:
            raise ArgumentError("alpha=0 divides by zero in CELU (torch refuses it at the first forward)", "alpha")
        slope = _SLOPES.get(self.op)
        if slope is not None and self.field_value("inplace", False) and getattr(self, slope) < 0:
            raise ArgumentError(f"{slope}={getattr(self, slope)} with inplace: true has no backward in torch (it "
                                "refuses an in-place negative slope when gradients are computed)", "inplace",
                                "remove `inplace: true`")

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        self.check_static()
        (x,) = inputs
        count = self.field_value("num_parameters", 1)
        if count != 1 and (x.rank == 0 or count != x.shape[0]):
            channels = f"its dim 1 (batch included) has {x.shape[0]}" if x.rank else "it has no dim besides the batch"
            raise ArgumentError(f"num_parameters={count} must be 1 or the input's channel count, but {channels} "
                                f"(input {x}); torch refuses the mismatch at the first forward", "num_parameters",
                                f"use `num_parameters: {x.shape[0]}` (one slope per channel) or 1" if x.rank else None)
        for field, converted in _OPERANDS.get(self.op, {}).items():
            dtype = x.dtype if converted == "input" or x.dtype == "float64" else "float32"
            check_scalar(getattr(self, field), dtype, field)
        dim = self.field_value("dim")
        if dim is not None:
            sample_dim(dim, x.rank)  # raises for the batch dim or an out-of-range dim
        return x.with_dtype("float32") if self.op in TO_FLOAT and x.dtype not in FLOAT_DTYPES else x


def _define(name: str, fields: dict[str, Any]) -> type[Layer]:
    cls = create_model(name, __base__=ElementwiseBase, __module__=__name__,
                       __doc__=describe_torch_op(name, ()), op=(Literal[name], ...), **fields)
    cls.input_dtypes = (None if name in _ANY else NUMBER_DTYPES if name in _NUMBERS else WEIGHTED_DTYPES
                        if name == "PReLU" else FLOAT_DTYPES)  # (PReLU multiplies by its float32 slopes)
    return register_op(cls)


# Their models are created on first use (a spec names one or two of them): see OpRegistry.promise.
ELEMENTWISE = tuple(_TABLE)
for _name, _fields in _TABLE.items():
    OPS.promise(_name, partial(_define, _name, _fields))


class DropoutNdBase(FeatureMapLayer):
    """Channel dropout (Dropout1d-3d): zeroes whole channels of an N-d feature map."""

    p: Probability = 0.5
    inplace: bool = False

    layout: ClassVar[None] = None  # channel dropout keeps whatever layout it is given
    view: ClassVar[bool] = True  # in eval mode it returns its input
    input_dtypes: ClassVar[frozenset[str] | None] = FLOAT_DTYPES

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        return self.feature_map(inputs)


CHANNEL_DROPOUTS = spatial_family(DropoutNdBase, "Dropout")
