"""Attention: torch.nn.MultiheadAttention as a layer, and `scaled_dot_product_attention` on q, k, v.

**MultiheadAttention** takes one input (self-attention) or three (query, key, value), then one
input per entry of `masks`, in that order. Per sample, with L query and S key positions:

- `key_padding_mask`: `(S,)`, bool (true: the key is padding, ignored) or float (added to the
  attention scores);
- `attn_mask`: `(L, S)` for every head, or `(num_heads, L, S)` per head, bool (true: not
  allowed to attend) or float (added); both as `torch.nn.MultiheadAttention` reads them.

`is_causal: true` lets position t attend to positions up to t only; with no mask input torch
runs it as a causal `scaled_dot_product_attention` (the mask is never materialised on that path).

**scaled_dot_product_attention** is `torch.nn.functional.scaled_dot_product_attention` on inputs
`[q, k, v]` or `[q, k, v, mask]`, per sample either `(seq, features)` (one head) or
`(heads, seq, head_dim)`: q `(H, L, E)`, k `(Hk, S, E)`, v `(Hk, S, Ev)` give `(H, L, Ev)`. Head
counts broadcast as torch broadcasts them (one key/value head serves every query head: multi-query);
other fewer key/value heads than query heads (H a multiple of Hk) is grouped-query attention,
written as in torch with `enable_gqa: true`. The mask follows torch's sdpa
convention, which is the opposite of MultiheadAttention's for bools: true means *may* attend; a
float mask is added. It has q's rank per sample and broadcasts to `(H, L, S)` (e.g. `(1, L, S)`,
or `(1, 1, S)` for key padding). `is_causal`, `scale` (default 1/sqrt(E)) and `dropout_p` (applied
in training only) are torch's arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..symbolic import broadcasts, hint
from .base import (
    FLOAT_DTYPES,
    WEIGHTED_DTYPES,
    DtypeError,
    Layer,
    ShapeError,
    TensorType,
    describe_torch_op,
    promote,
    register_op,
)
from .merge import broadcast_dim

__all__ = ["MultiheadAttention", "ScaledDotProductAttention"]

Mask = Literal["attn_mask", "key_padding_mask"]
Probability = Annotated[float, Field(ge=0, le=1)]


def _check_mask_dtype(mask: TensorType, name: str, query: TensorType) -> None:
    """torch's rule for an attention mask (sdpa's, which MultiheadAttention runs on): bool, or a float
    mask of the query's dtype or float32; any other dtype fails at the first forward.

    Raises:
        ShapeError: another dtype.
    """
    if mask.dtype not in ("bool", "float32", query.dtype):
        also = "" if query.dtype == "float32" else " or float32"
        raise ShapeError(f"{name} must be bool or a float mask of the query's dtype ({query.dtype}){also}, "
                         f"got {mask.dtype}")


def _check_mask_dtypes(masks: dict[str, TensorType], query: TensorType) -> None:
    """torch's rule for MultiheadAttention's masks: each is bool or float; given both, a bool one
    becomes a float mask of the query's dtype and the two are added, and that sum is the mask sdpa
    takes (`_check_mask_dtype`). So a float16 attn_mask fails alone but runs beside a bool or float32
    key_padding_mask (the sum is float32), and two float16 masks fail (measured, train and eval).

    Raises:
        ShapeError: a mask, or the masks' sum, of a dtype torch refuses, naming them.
    """
    given = [(name, masks[name]) for name in ("key_padding_mask", "attn_mask") if name in masks]
    for name, m in given:
        if len(given) == 1 or (m.dtype != "bool" and m.dtype not in FLOAT_DTYPES):
            _check_mask_dtype(m, name, query)
    if len(given) < 2:
        return
    summed = promote([query.dtype if m.dtype == "bool" else m.dtype for _, m in given])
    if summed not in ("float32", query.dtype):
        (first, a), (second, b) = given
        takes = "float32" if query.dtype == "float32" else f"the query's dtype ({query.dtype}) or float32"
        raise ShapeError(f"{first} ({a.dtype}) and {second} ({b.dtype}) are added into one {summed} mask, and "
                         f"torch takes a float mask of {takes} only; make them bool or float32")


def _mask_dim_fits(size: Any, full: Any) -> bool:
    """Whether a mask dim of `size` fits a scores dim of `full` in sdpa, which broadcasts the mask: a dim
    declared 1 may be 1 or `full` at any size (torch 2.13 runs a (1, 1, S) mask as (H, 1, S) or (1, L, S));
    one declared as `full` stays equal to it."""
    if hint(size) == 1:
        return broadcasts(size, full)
    return bool(size == full)


@register_op
class MultiheadAttention(Layer):
    __doc__ = (describe_torch_op("MultiheadAttention", ("embed_dim",))
               + " One input attends to itself; three are query, key, value; then one input per entry of"
                 " `masks`. Batch first; the layer's value is the attention output (torch's first result),"
                 " computed with need_weights=False.")

    op: Literal["MultiheadAttention"]
    num_heads: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0, le=1)] = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    is_causal: bool = Field(False, description="true: position t attends to positions up to t only (a decoder).")
    masks: list[Mask] = Field(default_factory=list, description=(
        "The mask inputs that follow query (and key, value) in `input`, in order: key_padding_mask, per sample "
        "(S,); attn_mask, per sample (L, S) or (num_heads, L, S). Bool true masks out, as in torch."))

    inferred: ClassVar[tuple[str, ...]] = ("embed_dim",)
    layout: ClassVar[Literal["features_last"]] = "features_last"

    @classmethod
    def sequence_inputs(cls, count: int, masks: int) -> int:
        return count - masks  # query (key, value); the masks follow

    @model_validator(mode="after")
    def _masks_are_distinct(self) -> MultiheadAttention:
        if len(set(self.masks)) != len(self.masks):
            raise ValueError("masks: each mask may be given once")
        if self.is_causal and "attn_mask" in self.masks:
            raise ValueError("is_causal: true builds the causal mask itself; give either is_causal or an attn_mask "
                             "input (merge them into that mask if you need both)")
        return self

    @property
    def min_inputs(self) -> int:  # type: ignore[override]
        return 1 + len(self.masks)

    # No upper bound for the resolver: output_type says what the inputs are for (a mask input
    # without `masks` is the common mistake, and "takes 1 to 3 inputs" would not say that).
    max_inputs: ClassVar[int | None] = None

    def split(self, inputs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """(query, key, value) and the mask inputs by name, from the inputs in order."""
        count = len(inputs) - len(self.masks)
        attended = inputs[:count]
        qkv = (attended * 3)[:3] if count == 1 else attended
        return qkv, dict(zip(self.masks, inputs[count:]))

    def inferred_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        (query, key, value), _ = self.split(inputs)
        extra = {}
        if key.shape[-1] != query.shape[-1]:
            extra["kdim"] = key.shape[-1]
        if value.shape[-1] != query.shape[-1]:
            extra["vdim"] = value.shape[-1]
        return {"embed_dim": query.shape[-1], "batch_first": True, **extra}

    def module_args(self, inputs: list[TensorType]) -> dict[str, Any]:
        forward_only = ("is_causal", "masks")  # arguments of forward(), not of the constructor
        return {k: v for k, v in super().module_args(inputs).items() if k not in forward_only}

    def built_parameter_count(self, args: dict[str, Any]) -> int | None:
        e = args["embed_dim"]
        k, v = args.get("kdim", e), args.get("vdim", e)
        projections = e * (e + k + v) + 3 * e * self.bias  # q, k, v (one packed weight when k == v == e)
        return projections + e * e + e * self.bias + 2 * e * self.add_bias_kv  # out_proj, bias_k/bias_v

    def check_dtypes(self, inputs: list[TensorType]) -> None:
        if len(inputs) - len(self.masks) not in (1, 3):
            return  # output_type says what the inputs must be
        for index, t in enumerate(inputs[:len(inputs) - len(self.masks)]):  # masks are checked with shapes
            if t.dtype not in WEIGHTED_DTYPES:  # (each is projected by a float32 weight)
                raise DtypeError(index, t.dtype, WEIGHTED_DTYPES)

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        if len(inputs) - len(self.masks) not in (1, 3):
            masks = f", then {len(self.masks)} mask(s) ({', '.join(self.masks)})" if self.masks else ""
            hint = ("; mask inputs follow them, named in order by `masks: [key_padding_mask, attn_mask]`"
                    if len(inputs) > 3 and not self.masks else "")
            raise ShapeError(f"takes one input (self-attention) or three (query, key, value){masks}, got "
                             f"{len(inputs)}{hint}")
        (query, key, value), masks = self.split(inputs)
        if any(t.rank != 2 for t in (query, key, value)):
            raise ShapeError(f"expects (sequence, features) per sample, got {', '.join(map(str, inputs))}")
        if query.shape[-1] % self.num_heads:
            raise ShapeError(f"num_heads={self.num_heads} does not divide the {query.shape[-1]} features")
        if key.shape[0] != value.shape[0]:
            raise ShapeError(f"key and value need the same sequence length, got {key} and {value}")
        length, source = query.shape[0], key.shape[0]
        padding = masks.get("key_padding_mask")
        if padding is not None:
            if padding.rank != 1 or padding.shape[0] != source:
                raise ShapeError(f"key_padding_mask must be ({source},) per sample (one entry per key), got {padding}")
        mask = masks.get("attn_mask")
        if mask is not None:
            # (L, S), or (1 or num_heads, L, S): the call expands a mask of one head to every head, so either
            # count runs at any declared one (`broadcasts`, not `== 1`). Sizes of the mask's own rank only:
            # comparing shapes of two ranks compared their leading sizes, a spurious decision (heads == L)
            fits = mask.rank in (2, 3) and (mask.rank == 2 or broadcasts(mask.shape[0], self.num_heads))
            if not (fits and mask.shape[-2:] == (length, source)):
                raise ShapeError(f"attn_mask must be ({length}, {source}) or ({self.num_heads}, {length}, {source}) "
                                 f"per sample (query by key positions, for all heads or per head), got {mask}")
        _check_mask_dtypes(masks, query)
        return query.with_shape(query.shape, "features_last")

    def call(self, module: str, operands: list[str]) -> str:
        (q, k, v), masks = self.split(operands)
        options = ["need_weights=False"]
        if "key_padding_mask" in masks:
            options.append(f"key_padding_mask={masks['key_padding_mask']}")
        if "attn_mask" in masks:
            # torch wants (N * num_heads, L, S): a mask for every head is repeated per head
            m = masks["attn_mask"]
            options.append(f"attn_mask={m}.reshape({m}.shape[0], -1, {m}.shape[-2], {m}.shape[-1])"
                           f".expand(-1, {self.num_heads}, -1, -1).flatten(0, 1)")
        if self.is_causal:
            # the hint needs its mask; without padding masks torch drops it and runs causal sdpa
            options.append(f"attn_mask=torch.ones({q}.shape[1], {k}.shape[1], dtype=torch.bool, "
                           f"device={q}.device).triu(1)")
            if not (self.add_bias_kv or self.add_zero_attn):
                # (not with extra keys: torch's causal sdpa then never attends to the learned bias key or
                # the zero key, where the mask, which torch widens for them, lets every position attend)
                options.append("is_causal=True")
        return f"{module}({q}, {k}, {v}, {', '.join(options)})[0]"


@register_op
class ScaledDotProductAttention(Layer):
    """torch.nn.functional.scaled_dot_product_attention on inputs [q, k, v] (or [q, k, v, mask]),
    per sample (seq, features) or (heads, seq, head_dim); fewer key/value heads is grouped-query
    attention. A bool mask is true where attending is allowed; a float mask is added."""

    op: Literal["scaled_dot_product_attention"]
    is_causal: bool = Field(False, description="true: query position t attends to key positions up to t only.")
    scale: Annotated[float, Field(gt=0)] | None = Field(None, description="The score scale; default 1/sqrt(head_dim).")
    dropout_p: Probability = Field(0.0, description="Attention dropout, applied in training only.")
    enable_gqa: bool = Field(False, description=(
        "true: k and v may have fewer heads than q (a divisor of them): grouped-query or multi-query attention."))

    code_only: ClassVar[bool] = True
    min_inputs: ClassVar[int] = 3
    max_inputs: ClassVar[int | None] = 4

    @classmethod
    def sequence_inputs(cls, count: int, masks: int) -> int:
        return 3  # q, k, v; a mask's last dim is the key positions, not features

    def output_type(self, inputs: list[TensorType]) -> TensorType:
        query, key, value = inputs[:3]
        shapes = ", ".join(map(str, inputs[:3]))
        if query.rank not in (2, 3) or key.rank != query.rank or value.rank != query.rank:
            raise ShapeError(f"expects q, k, v of (seq, features) or (heads, seq, head_dim) per sample, one rank for "
                             f"all three, got {shapes}")
        if len({query.dtype, key.dtype, value.dtype}) != 1 or query.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"q, k and v need one floating-point dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
        if key.shape[-1] != query.shape[-1]:
            raise ShapeError(f"q and k need the same head size (last dim), got {shapes}")
        if key.shape[-2] != value.shape[-2]:
            raise ShapeError(f"k and v need the same sequence length, got {shapes}")
        out = (*query.shape[:-1], value.shape[-1])
        if query.rank == 3:
            out = (self.check_heads(query.shape[0], key.shape[0], value.shape[0], shapes), *out[1:])
        if len(inputs) == 4:
            self.check_mask(inputs[3], (*out[:-1], key.shape[-2]), query)
        return query.with_shape(out, "features_last")

    def check_heads(self, heads: Any, key_heads: Any, value_heads: Any, shapes: str) -> Any:
        """torch's rule for the heads of q, k and v; returns the output's head count.

        Without `enable_gqa` the three counts broadcast as the batch dims of a matmul do (torch computes
        q k^T, then its product with v): each is the output's count or 1, so one key/value head serves
        every query head, and one query head against 4 key/value heads gives 4. With `enable_gqa` each
        of k's and v's counts divides q's, and nothing else is asked: equal counts too, and k's and v's
        need not agree (torch 2.13 runs 4 query heads over 2 key and 1 value head). Only the divisions
        are decided, so a model declared with 4 and 2 heads runs with 4 and 4, and one declared with 4
        and 4 runs with 4 and 2.

        Raises:
            ShapeError: counts torch refuses at the declared sizes.
        """
        if not self.enable_gqa:
            scores = broadcast_dim(heads, key_heads)
            out = None if scores is None else broadcast_dim(scores, value_heads)
            if out is not None:
                return out
            if hint(key_heads) == hint(value_heads) and hint(heads) % hint(key_heads) == 0:
                raise ShapeError(f"q has {heads} heads but k and v have {key_heads}: for grouped-query (or "
                                 f"multi-query) attention add `enable_gqa: true`, got {shapes}")
            raise ShapeError(f"the head counts of q, k and v ({heads}, {key_heads}, {value_heads}) do not broadcast: "
                             f"torch takes each as the largest or as 1 (with `enable_gqa: true`, k's and v's divide "
                             f"q's), got {shapes}")
        names = ("key/value", "key/value") if hint(value_heads) == hint(key_heads) else ("key", "value")
        for name, shared in zip(names, (key_heads, value_heads), strict=True):
            if heads % shared:
                raise ShapeError(f"{heads} query heads cannot share {shared} {name} heads (grouped-query "
                                 f"attention needs the query heads to be a multiple), got {shapes}")
        return heads

    def check_mask(self, mask: TensorType, scores: tuple[Any, ...], query: TensorType) -> None:
        """The mask must broadcast to the attention scores (heads, L, S) without growing them, and be
        of a dtype torch takes with `query`'s."""
        if self.is_causal:
            raise ShapeError("is_causal: true and a mask input cannot be combined (torch refuses); merge the causal "
                             "mask into the mask input instead")
        shown = "(" + ", ".join(map(str, scores)) + ")"
        if mask.rank != len(scores) or not all(map(_mask_dim_fits, mask.shape, scores)):
            raise ShapeError(f"the mask must broadcast to the attention scores {shown} per sample (query by key "
                             f"positions), got {mask}")
        _check_mask_dtype(mask, "the mask", query)

    def code(self, operands: list[str], owner: str) -> str:
        q, k, v = operands[:3]
        options = [f"attn_mask={operands[3]}"] if len(operands) == 4 else []
        if self.dropout_p:
            options.append(f"dropout_p={self.dropout_p!r} if self.training else 0.0")
        if self.is_causal:
            options.append("is_causal=True")
        if self.scale is not None:
            options.append(f"scale={self.scale!r}")
        if self.enable_gqa:
            options.append("enable_gqa=True")
        return f"torch.nn.functional.scaled_dot_product_attention({', '.join([q, k, v, *options])})"
