"""Multiply-accumulate counts (MACs) per sample: one formula per op family, all in this file.

A count has two parts. `matmul` is what `torch.utils.flop_counter.FlopCounterMode` measures
(convolutions, matrix products, attention; it reports 2 FLOPs per MAC and ignores biases), so
`2 * matmul` equals its total on a real forward. `other` is resgraph's cost model for the ops that
counter ignores (norms, pools, activations, merges); where fvcore has a convention it is used.

Per sample, by op family (sources: torch's `torch/utils/flop_counter.py`, fvcore's
`fvcore/nn/jit_handles.py`, ptflops' module hooks):

- Conv1d-3d: out elements x in_channels/groups x kernel volume (flop_counter `conv_flop_count`).
- ConvTranspose1d-3d: input positions x in_channels x out_channels/groups x kernel volume
  (`conv_flop_count(transposed=True)`).
- Linear, and the Linear and 1x1-conv projection steps: out elements x in_features
  (flop_counter `mm_flop` / `addmm_flop`; the bias add is not counted).
- MultiheadAttention: the q, k, v and out projections plus 2 x L x S x E for `q @ k^T` and
  `attn @ v` (flop_counter `sdpa_flop_count` and `mm_flop`); a causal or masked one the same
  (the counter counts the full score matrix).
- scaled_dot_product_attention: per output head L x S x (E + Ev) (`sdpa_flop_count`; grouped
  key/value heads are counted per query head, as the math kernel repeats them, and one query head
  broadcast over several key/value heads once per key/value head).
- matmul: the broadcast stack size x n x k x m (flop_counter `bmm_flop`).
- BatchNorm (inference) and the projection BatchNorm: 2 per element, 1 without affine
  (fvcore `batchnorm_flop_jit`, eval mode).
- LayerNorm, GroupNorm, InstanceNorm: 5 per element, 4 without affine (fvcore `norm_flop_counter`).
- AdaptiveAvgPool / AdaptiveMaxPool, `mean`: 1 per input element (fvcore's `adaptive_avg_pool2d`).
- MaxPool, AvgPool, the projection AvgPool: out elements x kernel volume (one per window element).
- Upsample: 1 per output element for nearest, 4 for the interpolating modes (fvcore
  `upsample_nearest2d` / `upsample_bilinear2d`).
- Activations, Softmax, PReLU, and add / mul merges: 1 per output element (per extra operand for
  merges, or for a scalar operand): ptflops' convention; fvcore ignores them.
- Arithmetic code ops (sub, div, pow, clamp, exp, log, sqrt, rsqrt, sin, cos, neg): 1 per output
  element, the same convention.
- Dropout, stochastic depth, Identity, reshapes, concat, select, Embedding, learned tensors, constants (`full`,
  `constant`, `arange`), code projection steps (subsample, crop, pad): 0, they only move data.
- Any other torch.nn class: measured, with FlopCounterMode on one sample (matmul part only); unknown
  where it runs an op that may hold a product the counter does not see (`unseen_products`).

>>> from resgraph.ops import OPS, TensorType
>>> conv = OPS["Conv2d"](op="Conv2d", out_channels=64, kernel_size=3, padding=1)
>>> layer_macs(conv, {"in_channels": 3}, [TensorType((3, 32, 32))], TensorType((64, 32, 32)))
MacCount(matmul=1769472, other=0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ops import GenericLayer, Layer, TensorType
from .ops.arithmetic import ArithmeticOp, Matmul
from .ops.attention import MultiheadAttention, ScaledDotProductAttention
from .ops.base import to_tuple
from .ops.conv import ConvBase, ConvTransposeBase
from .ops.dense import Linear
from .ops.elementwise import ElementwiseBase
from .ops.merge_ops import MergeLayer
from .ops.norm import BatchNormBase
from .ops.pool import AdaptivePoolBase, AvgPoolBase, MaxPoolBase
from .ops.resample import Upsample
from .ops.sample_norm import GroupNorm, InstanceNormBase, LayerNorm
from .ops.tensor_ops import Mean
from .projections import ProjectionPlan, Step, StepKind

__all__ = ["MAC_RULES", "NO_PRODUCT_ATEN_OPS", "NO_PRODUCT_TAGS", "STEP_MACS", "ZERO_MAC_OPS", "MacCount",
           "layer_macs", "merge_macs", "projection_macs", "step_shapes", "unseen_products"]


@dataclass(frozen=True)
class MacCount:
    """MACs of one sample: `matmul` (what FlopCounterMode counts, halved) and `other` (the cost model)."""

    matmul: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.other

    def __add__(self, other: MacCount) -> MacCount:
        return MacCount(self.matmul + other.matmul, self.other + other.other)


Rule = Callable[[Any, dict[str, Any], list[TensorType], TensorType], MacCount]

# Op family (a base class of the op models) -> its formula; looked up along the op class's MRO.
MAC_RULES: dict[type[Layer], Rule] = {}

# Elementwise ops that do no arithmetic in inference.
ZERO_MAC_OPS = frozenset({"Identity", "Dropout", "AlphaDropout"})

# The aten ops (by name, overload aside) besides views, pointwise ops and reductions (torch's own tags
# say those) that hold no matrix product: they move or make data, or are the families the cost model
# counts apart for curated ops (norms, pools, softmax, resampling). An uncurated layer that runs only
# these and the ops FlopCounterMode counts has its matmul-like MACs measured whole; any other op
# (`_trilinear`, which `nn.Bilinear` runs; `mv`, `dot`; a fused kernel such as a CPU `lstm`) may hide a
# product the counter does not see, so its MACs are unknown rather than a silent 0.
NO_PRODUCT_ATEN_OPS = frozenset({
    "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "_embedding_bag", "_log_softmax", "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional", "_native_batch_norm_legit_no_training", "_pdist_forward",
    "_reshape_alias", "_safe_softmax", "_softmax", "_to_copy", "_unsafe_view", "adaptive_avg_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "alias", "arange", "as_strided_", "avg_pool2d", "avg_pool3d",
    "bernoulli", "bernoulli_", "cat", "channel_shuffle", "clone", "col2im", "constant_pad_nd", "copy", "copy_",
    "cudnn_batch_norm", "detach", "detach_", "embedding", "empty", "empty_like", "empty_strided", "expand", "fill",
    "fill_", "flip", "fractional_max_pool2d", "fractional_max_pool3d", "full", "full_like", "gather", "glu",
    "im2col", "index", "index_put", "index_put_", "index_select", "lift_fresh", "lift_fresh_copy", "masked_fill",
    "masked_fill_", "max_pool2d_with_indices", "max_pool3d_with_indices", "max_unpool2d", "max_unpool3d",
    "native_batch_norm", "native_channel_shuffle", "native_dropout", "native_group_norm", "native_layer_norm",
    "new_empty", "new_empty_strided", "new_full", "new_ones", "new_zeros", "ones", "ones_like", "pixel_shuffle",
    "pixel_unshuffle", "rand", "rand_like", "randn", "randn_like", "reflection_pad1d", "reflection_pad2d",
    "reflection_pad3d", "repeat", "replication_pad1d", "replication_pad2d", "replication_pad3d", "resize_",
    "resize_as_", "roll", "scalar_tensor", "scatter", "scatter_add", "select_scatter", "set_", "slice_scatter",
    "sort", "squeeze_", "stack", "t_", "topk", "transpose_", "unsafe_split", "unsafe_split_with_sizes",
    "unsqueeze_", "upsample_bicubic2d", "upsample_bilinear2d", "upsample_linear1d", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "upsample_trilinear3d", "zero", "zero_", "zeros", "zeros_like",
})
NO_PRODUCT_TAGS = frozenset({"pointwise", "reduction"})


def unseen_products(ops: Any, counted: Any) -> list[str]:
    """The aten ops among `ops` (OpOverloads, as a TorchDispatchMode sees them) that may hold a matrix
    product FlopCounterMode does not count: not `counted` (its `flop_registry`, by op packet), not a
    view, not pointwise or a reduction, not in NO_PRODUCT_ATEN_OPS. Empty: the counter saw every product.

    >>> import torch
    >>> unseen_products([torch.ops.aten.view.default, torch.ops.aten.relu.default,
    ...                  torch.ops.aten._trilinear.default], {})
    ['aten._trilinear.default']
    """
    unseen = []
    for op in ops:
        name = op.overloadpacket.__name__
        if (op.overloadpacket in counted or op.is_view or name in NO_PRODUCT_ATEN_OPS
                or NO_PRODUCT_TAGS & {tag.name for tag in op.tags}):
            continue
        if str(op) not in unseen:
            unseen.append(str(op))
    return unseen


def _rule(*families: type[Layer]) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for family in families:
            if family in MAC_RULES:
                raise RuntimeError(f"a MAC formula for {family.__name__} is registered twice")
            MAC_RULES[family] = rule
        return rule

    return register


def _numel(t: TensorType | tuple[int, ...]) -> int:
    return math.prod(t.shape if isinstance(t, TensorType) else t)


def _kernel(layer: Any, value: Any) -> int:
    return math.prod(to_tuple(value, layer.spatial_dims, "kernel_size"))


@_rule(ConvBase)
def _conv(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    # torch.utils.flop_counter.conv_flop_count: prod(out spatial) * prod(kernel) * c_out * c_in/groups (x2 FLOPs)
    return MacCount(_numel(out) * (args["in_channels"] // layer.groups) * _kernel(layer, layer.kernel_size))


@_rule(ConvTransposeBase)
def _conv_transpose(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    # conv_flop_count(transposed=True): every *input* position meets the whole (c_in, c_out/groups, k) filter
    positions = _numel(inputs[0].shape[1:])
    return MacCount(positions * args["in_channels"] * (layer.out_channels // layer.groups)
                    * _kernel(layer, layer.kernel_size))


@_rule(Linear)
def _linear(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(_numel(out) * args["in_features"])  # addmm: m x n x k; the bias add is not counted


@_rule(MultiheadAttention)
def _attention(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    (query, key, value), _ = layer.split(inputs)  # the mask inputs cost nothing extra
    e, length, source = args["embed_dim"], query.shape[0], key.shape[0]
    keys = source + layer.add_bias_kv + layer.add_zero_attn  # the extra key/value rows torch appends
    projections = length * e * e + source * e * key.shape[-1] + source * e * value.shape[-1] + length * e * e
    return MacCount(projections + 2 * length * keys * e)  # sdpa_flop_count: q @ k^T and attn @ v


@_rule(ScaledDotProductAttention)
def _sdpa(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    query, key, value = inputs[:3]
    # sdpa_flop_count: q @ k^T (L x S x E) and attn @ v (L x S x Ev), per head of the output (q's, or
    # k's and v's where one query head is broadcast over them)
    return MacCount(_numel(out.shape[:-1]) * key.shape[-2] * (query.shape[-1] + value.shape[-1]))


@_rule(Matmul)
def _matmul(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(_numel(out) * inputs[0].shape[-1])  # every output element is a k-long dot product


@_rule(ArithmeticOp)
def _arithmetic(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=_numel(out))


@_rule(BatchNormBase)
def _batch_norm(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=_numel(out) * (2 if layer.affine else 1))  # fvcore, inference: scale (and shift)


@_rule(InstanceNormBase, LayerNorm, GroupNorm)
def _norm(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    affine = getattr(layer, "affine", getattr(layer, "elementwise_affine", False))
    return MacCount(other=_numel(out) * (5 if affine else 4))  # fvcore norm_flop_counter: statistics + scale


@_rule(AdaptivePoolBase, Mean)
def _reduce(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=_numel(inputs[0]))  # every input element is read into one sum (or max)


@_rule(MaxPoolBase, AvgPoolBase)
def _pool(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=_numel(out) * _kernel(layer, layer.kernel_size))


@_rule(Upsample)
def _upsample(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=_numel(out) * (1 if layer.mode.startswith("nearest") else 4))


@_rule(ElementwiseBase)
def _elementwise(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    return MacCount(other=0 if layer.op in ZERO_MAC_OPS else _numel(out))


@_rule(MergeLayer)
def _merge_layer(layer: Any, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount:
    scalar = getattr(layer, "scalar", None) is not None  # `{op: mul, scalar: 0.5}`: one operation per element
    return merge_macs(layer.kind.value, out, len(inputs) + scalar)


def layer_macs(layer: Layer, args: dict[str, Any], inputs: list[TensorType], out: TensorType) -> MacCount | None:
    """The MACs of one sample through `layer` (full constructor `args`, input and output types).

    Returns:
        The count; MacCount() for ops that only move data; None for an op with no formula (an
        uncurated torch.nn class), which the caller measures instead.
    """
    for family in type(layer).__mro__:
        rule = MAC_RULES.get(family)
        if rule is not None:
            return rule(layer, args, inputs, out)
    if isinstance(layer, GenericLayer):
        return None  # an arbitrary constructor: only running it can tell
    return MacCount()  # reshapes, selections, Flatten, PixelShuffle, Embedding, channel dropout: no arithmetic


def merge_macs(merge: str, out: TensorType, operands: int = 2) -> MacCount:
    """add and mul: one per output element per extra operand; concat only copies."""
    return MacCount(other=0 if merge == "concat" else _numel(out) * (operands - 1))


# Projection step kind -> MACs from its arguments and the step's input and output shapes.
STEP_MACS: dict[StepKind, Callable[[Step, tuple[int, ...], tuple[int, ...]], MacCount]] = {
    StepKind.subsample: lambda step, x, y: MacCount(),
    StepKind.crop: lambda step, x, y: MacCount(),
    StepKind.pad: lambda step, x, y: MacCount(),
    StepKind.avgpool: lambda step, x, y: MacCount(other=_numel(y) * math.prod(
        to_tuple(step.args["kernel"], step.args["dims"], "kernel"))),
    StepKind.conv: lambda step, x, y: MacCount(_numel(y) * step.args["in"]),
    StepKind.norm: lambda step, x, y: MacCount(other=2 * _numel(y)),
    StepKind.linear: lambda step, x, y: MacCount(_numel(y) * step.args["in"]),
}


def projection_macs(plan: ProjectionPlan, source: TensorType, output: tuple[int, ...] | None = None) -> MacCount:
    """The MACs of a skip's projection steps, applied in order to `source` (reaching `output`, the
    plan's output shape unless given)."""
    total, shape = MacCount(), source.shape
    for step, after in zip(plan.steps, step_shapes(plan, source, output)):
        total += STEP_MACS[step.kind](step, shape, after)
        shape = after
    return total


def step_shapes(plan: ProjectionPlan, source: TensorType, output: tuple[int, ...] | None = None
                ) -> list[tuple[int, ...]]:
    """The per-sample shape after each of a skip's projection steps, applied in order to `source`, to
    reach `output` (the plan's output shape unless given: a model changed after its build may run
    the steps at other sizes).

    >>> from resgraph import check
    >>> p1 = check('''{resgraph: 1, name: M, inputs: {x: [4, 15, 15]},
    ...               layers: [c: {op: Conv2d, out_channels: 16, kernel_size: 3, stride: 4, padding: 1}],
    ...               skips: [p1: {from: x, to: c, projection: avgpool}]}''').nodes["p1"]
    >>> step_shapes(p1.meta["projection"], TensorType((4, 15, 15)))  # AvgPool2d /4, Conv2d 1x1, BatchNorm2d
    [(4, 4, 4), (16, 4, 4), (16, 4, 4)]
    """
    shapes, shape = [], source.shape
    for step in plan.steps:
        shape = _step_shape(step, shape, plan.output.shape if output is None else output)
        shapes.append(shape)
    return shapes


def _step_shape(step: Step, shape: tuple[int, ...], final: tuple[int, ...]) -> tuple[int, ...]:
    """The shape after one step. Spatial steps come first in every plan and reach the final spatial
    size, keeping the channels; the channel steps after them (conv, norm, pad, linear) reach `final`."""
    if step.kind in (StepKind.subsample, StepKind.crop, StepKind.avgpool):
        return (shape[0], *final[1:])
    return final
