"""Attention: torch.nn.MultiheadAttention as a layer (self-attention, or query/key/value)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from .base import Layer, ShapeError, TensorType, describe_torch_op, register_op


@register_op
class MultiheadAttention(Layer):
    __doc__ = (describe_torch_op("MultiheadAttention", ("embed_dim",))
               + " One input attends to itself; three are query, key, value. Batch first; the layer's"
                 " value is the attention output (torch's first result), computed with need_weights=False.")

    op: Literal["MultiheadAttention"]
    num_heads: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0, le=1)] = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False

    inferred: ClassVar[tuple[str, ...]] = ("embed_dim",)
    layout: ClassVar[Literal["features_last"]] = "features_last"
    max_inputs: ClassVar[int | None] = 3

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        query, key = inputs[0], inputs[min(1, len(inputs) - 1)]
        value = inputs[-1]
        extra = {}
        if key.shape[-1] != query.shape[-1]:
            extra["kdim"] = key.shape[-1]
        if value.shape[-1] != query.shape[-1]:
            extra["vdim"] = value.shape[-1]
        return {"embed_dim": query.shape[-1], "batch_first": True, **extra}

    def parameter_count(self, args: dict[str, Any]) -> int | None:
        e = args["embed_dim"]
        k, v = args.get("kdim", e), args.get("vdim", e)
        projections = e * (e + k + v) + 3 * e * self.bias  # q, k, v (one packed weight when k == v == e)
        return projections + e * e + e * self.bias + 2 * e * self.add_bias_kv  # out_proj, bias_k/bias_v

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if len(inputs) == 2:
            raise ShapeError("takes one input (self-attention) or three (query, key, value), got 2")
        query, key, value = (inputs * 3)[:3] if len(inputs) == 1 else inputs
        if any(t.rank != 2 for t in (query, key, value)):
            raise ShapeError(f"expects (sequence, features) per sample, got {', '.join(map(str, inputs))}")
        if query.shape[-1] % self.num_heads:
            raise ShapeError(f"num_heads={self.num_heads} does not divide the {query.shape[-1]} features")
        if key.shape[0] != value.shape[0]:
            raise ShapeError(f"key and value need the same sequence length, got {key} and {value}")
        return query.with_shape(query.shape, "features_last")

    def call(self, module: str, operands: list[str]) -> str:
        q, k, v = (operands * 3)[:3] if len(operands) == 1 else operands
        return f"{module}({q}, {k}, {v}, need_weights=False)[0]"
