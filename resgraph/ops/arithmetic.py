"""Arithmetic written as code in forward: elementwise functions, binary ops, clamp, pow and matmul.

- `exp`, `log`, `sqrt`, `rsqrt`, `sin`, `cos`, `neg`: `torch.exp(x)`...; one input, same shape.
- `sub`, `div`: two inputs broadcast (`a - b`), or one input and a `scalar` (`x - 0.5`). `add` and
  `mul` take a `scalar` too (`merge.py`).
- `pow` (`exponent`), `clamp` (`min` and/or `max`).
- `matmul`: `a @ b` on per-sample matrices or stacks of them, of one rank (`(H, L, D) @ (H, D, S)`).

Broadcasting follows PyTorch's rules on per-sample shapes of one rank (`merge.broadcast_shape`:
the batch leads every tensor at run time, so shapes of different ranks would align against it).
Result dtypes follow torch's type promotion: a float operand makes the result float, and the
functions that are only defined on reals (`exp`, `log`, `sqrt`, `rsqrt`, `sin`, `cos`) and true
division turn integers into float32.

>>> Sub(op="sub", input=["a", "b"]).output_type([TensorType((4, 8, 8)), TensorType((4, 1, 1))]).shape
(4, 8, 8)
>>> Sub(op="sub", scalar=1).code(["x"], "self.sub")
'x - 1'
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, create_model, model_validator

from .base import (
    FLOAT_DTYPES,
    NUMBER_DTYPES,
    Layer,
    Reference,
    Scalar,
    ShapeError,
    Storage,
    TensorType,
    check_scalar,
    promote,
    register_op,
    shared_storage,
)
from .merge import broadcast_shape, broadcast_types

__all__ = ["UNARY", "UNARY_OPS", "BinaryOp", "Clamp", "Matmul", "Pow", "UnaryOp", "broadcast_types"]


# op -> (the torch function, whether it maps integers to floats)
UNARY: dict[str, tuple[str, bool]] = {
    "exp": ("torch.exp", True),
    "log": ("torch.log", True),
    "sqrt": ("torch.sqrt", True),
    "rsqrt": ("torch.rsqrt", True),
    "sin": ("torch.sin", True),
    "cos": ("torch.cos", True),
    "neg": ("torch.neg", False),
}
# Functions whose output autograd keeps for the backward pass (d exp(x) = exp(x) dx...): overwriting
# it in place later makes backward() fail.
SAVES_OUTPUT = frozenset({"exp", "sqrt", "rsqrt"})


class ArithmeticOp(Layer):
    """A code op computing one expression from its inputs."""

    code_only: ClassVar[bool] = True


class UnaryOp(ArithmeticOp):
    """`torch.<op>(x)`, elementwise."""

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        function, floating = UNARY[self.op]
        if self.op == "neg" and x.dtype == "bool":
            raise ShapeError("cannot negate a bool tensor (torch refuses)")
        return x if not floating else x.with_dtype(promote([x.dtype], floating=True))

    def storage(self, inputs: list[TensorType]) -> Storage:
        return shared_storage(None, None, self.op in SAVES_OUTPUT)

    def code(self, operands: list[str], owner: str) -> str:
        return f"{UNARY[self.op][0]}({operands[0]})"


def _define_unary(name: str) -> type[Layer]:
    cls = create_model(name.capitalize(), __base__=UnaryOp, __module__=__name__,
                       __doc__=f"`{UNARY[name][0]}(x)`, elementwise.", op=(Literal[name], ...))
    return register_op(cls)


UNARY_OPS = {name: _define_unary(name) for name in UNARY}


class BinaryOp(ArithmeticOp):
    """Two inputs broadcast against each other, or one input and a `scalar`."""

    scalar: Scalar | None = Field(None, description="A number as the second operand, instead of a second input.")

    symbol: ClassVar[str]

    @property
    def min_inputs(self) -> int:  # type: ignore[override]
        return 1 if self.scalar is not None else 2

    @property
    def max_inputs(self) -> int:  # type: ignore[override]
        return self.min_inputs

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        result = broadcast_types(self.op, inputs)
        dtype = promote([t.dtype for t in inputs], self.scalar, floating=self.op == "div")
        check_scalar(self.scalar, dtype, "scalar")
        if self.op == "sub" and "bool" in {t.dtype for t in inputs}:
            raise ShapeError("cannot subtract bool tensors (torch refuses); convert them to a number dtype first")
        return result.with_dtype(dtype)

    def code(self, operands: list[str], owner: str) -> str:
        right = [repr(self.scalar)] if self.scalar is not None else operands[1:]
        return f" {self.symbol} ".join([operands[0], *right])


@register_op
class Sub(BinaryOp):
    """`a - b` (broadcasting), or `x - scalar`."""

    op: Literal["sub"]
    symbol: ClassVar[str] = "-"


@register_op
class Div(BinaryOp):
    """`a / b` (broadcasting; true division), or `x / scalar`."""

    op: Literal["div"]
    symbol: ClassVar[str] = "/"

    @model_validator(mode="after")
    def _not_by_zero(self) -> Div:
        if self.scalar == 0:
            raise ValueError("scalar: dividing by 0 gives infinities")
        return self


@register_op
class Pow(ArithmeticOp):
    """`x.pow(exponent)`, elementwise (`1 / x` is `exponent: -1`)."""

    op: Literal["pow"]
    exponent: Scalar

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        dtype = promote([x.dtype], self.exponent)
        # torch converts the exponent to the input's dtype where that is float16, bfloat16 or an integer
        # dtype the result keeps (`x.pow(70000.0)` on float16 fails at the first forward); a float32 or
        # float64 input, or integers to a float power, take it as a double (2.0 ** 1e39 is inf, 0.5 ** 1e39
        # is 0: right, and as torch computes them)
        held = "float64" if dtype in ("float32", "float64") else dtype
        check_scalar(self.exponent, held, "exponent")
        if dtype not in FLOAT_DTYPES and self.exponent < 0:
            raise ShapeError(f"an integer tensor ({x.dtype}) to a negative power is not an integer (torch refuses); "
                             "write a float exponent, e.g. -1.0")
        return x.with_dtype(dtype)

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]}.pow({self.exponent!r})"


@register_op
class Clamp(ArithmeticOp):
    """`x.clamp(min, max)`: limits each element to [min, max] (either bound may be left out)."""

    op: Literal["clamp"]
    min: Scalar | None = None
    max: Scalar | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Clamp:
        if self.min is None and self.max is None:
            raise ValueError("clamp needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min={self.min} is above max={self.max}")
        return self

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        bounds = [b for b in (self.min, self.max) if b is not None]
        dtype = promote([x.dtype], next((b for b in bounds if isinstance(b, float)), bounds[0] if bounds else None))
        check_scalar(self.min, dtype, "min")
        check_scalar(self.max, dtype, "max")
        return x.with_dtype(dtype)

    def code(self, operands: list[str], owner: str) -> str:
        bounds = [f"{name}={value!r}" for name, value in (("min", self.min), ("max", self.max)) if value is not None]
        return f"{operands[0]}.clamp({', '.join(bounds)})"


@register_op
class Matmul(ArithmeticOp):
    """`a @ b` (torch.matmul) on per-sample matrices `(n, k) @ (k, m)` or stacks of them of one
    rank, whose leading dims broadcast (`(H, L, D) @ (H, D, S)`, `(H, L, D) @ (1, D, S)`)."""

    op: Literal["matmul"]
    input: Annotated[list[Reference], Field(min_length=2, max_length=2)] | None = Field(
        None, description="The two operands, in order: [a, b].")

    min_inputs: ClassVar[int] = 2
    max_inputs: ClassVar[int | None] = 2
    input_dtypes: ClassVar[frozenset[str] | None] = NUMBER_DTYPES  # torch has no bool matmul

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        a, b = inputs
        if a.rank < 2 or a.rank != b.rank:
            raise ShapeError(f"matmul needs per-sample matrices (or stacks of them) of one rank, got {a} and {b}: "
                             "the batch dim leads both, so other ranks would pair the wrong dims")
        if a.dtype != b.dtype:
            raise ShapeError(f"matmul needs operands of one dtype, got {a.dtype} and {b.dtype}")
        (n, k), (k2, m) = a.shape[-2:], b.shape[-2:]
        if k != k2:
            raise ShapeError(f"matmul of {a} and {b}: the inner sizes differ ({k} vs {k2}); "
                             "a's last dim must equal b's second to last")
        stack = broadcast_shape(a.shape[:-2], b.shape[:-2]) if a.rank > 2 else ()
        if stack is None:
            raise ShapeError(f"matmul of {a} and {b}: the leading dims do not broadcast")
        return a.with_shape((*stack, n, m))

    def code(self, operands: list[str], owner: str) -> str:
        return f"{operands[0]} @ {operands[1]}"

