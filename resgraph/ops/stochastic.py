"""Stochastic depth: a residual branch dropped at random while training, written as code in forward.

`{op: stochastic_depth, p: 0.1}` is torchvision's `StochasticDepth(p, mode)`
(`torchvision.ops.stochastic_depth`, Huang et al. 2016): while the module trains, each sample's
input (`mode: row`) or the whole batch's (`mode: batch`) is zeroed with probability `p` and the
kept ones are divided by `1 - p`; in eval mode it is the identity. It is placed on a residual
branch before the merge (ConvNeXt, EfficientNet, Swin). The generated line reads `self.training`,
so `model.eval()` turns it off and compiled graphs (`torch.compile`, `torch.export` in eval mode)
hold no random op.

>>> print(StochasticDepth(op="stochastic_depth", p=0.25).code(["x"], "self.sd").replace(", dtype", ",\\n  dtype"))
(x * torch.empty((x.shape[0],) + (1,) * (x.dim() - 1),
  dtype=x.dtype, device=x.device).bernoulli_(0.75).div_(0.75) if self.training else x)
>>> StochasticDepth(op="stochastic_depth", p=0.0).code(["x"], "self.sd")
'x'
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import FLOAT_DTYPES, Layer, ShapeError, TensorType, register_op

__all__ = ["StochasticDepth"]


@register_op
class StochasticDepth(Layer):
    """torchvision's StochasticDepth: drop the input (per sample, or the whole batch) with probability p
    while training, scaling what is kept by 1 / (1 - p); the identity in eval mode."""

    op: Literal["stochastic_depth"]
    p: Annotated[float, Field(ge=0, le=1, description="Probability of dropping the input (0: always kept).")]
    mode: Literal["row", "batch"] = Field(
        "row", description="row: one draw per sample (torchvision's default for residual branches); "
                           "batch: one draw for the whole batch.")

    code_only: ClassVar[bool] = True
    view: ClassVar[bool] = True  # in eval mode (always, at p = 0) it returns its input

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        (x,) = inputs
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"stochastic depth scales its input, so it needs a float tensor, got {x.dtype}")
        return x

    def code(self, operands: list[str], owner: str) -> str:
        (x,) = operands
        if self.p == 0:
            return x  # never dropped: torchvision returns its input unchanged
        survival = 1.0 - self.p
        size = f"({x}.shape[0],) + (1,) * ({x}.dim() - 1)" if self.mode == "row" else f"(1,) * {x}.dim()"
        noise = f"torch.empty({size}, dtype={x}.dtype, device={x}.device).bernoulli_({survival!r})"
        if survival > 0:
            noise += f".div_({survival!r})"
        return f"({x} * {noise} if self.training else {x})"
