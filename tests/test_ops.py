"""Every curated op's static shape function agrees with the real torch module, case by case.

Shapes are inferred without torch (that is what makes `resgraph validate` cheap), so each op
is checked here against an actual forward pass. A new op without cases fails the coverage test.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from typing import Any

import pytest
import torch

import resgraph
from resgraph.ops import OPS, GenericLayer, ShapeError, TensorType
from resgraph.ops.conv import conv_output_size
from resgraph.symbolic import SymInt
from resgraph.symbolic import evaluate as evaluate_expr

F = "float32"
Shapes = tuple[int, ...] | list[tuple[int, ...]]  # one input's shape (repeated as the op needs), or one per input
# op -> list of (arguments, per-sample input shape(s)[, input dtype])
CASES: dict[str, list[tuple[dict[str, Any], Shapes] | tuple[dict[str, Any], Shapes, str]]] = {
    "Conv1d": [({"out_channels": 4, "kernel_size": 3}, (2, 10)),
               ({"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2}, (2, 11)),
               ({"out_channels": 4, "kernel_size": 3, "padding": "same", "padding_mode": "reflect"}, (2, 9))],
    "Conv2d": [({"out_channels": 6, "kernel_size": 3, "padding": 1}, (3, 8, 8)),
               ({"out_channels": 6, "kernel_size": [3, 5], "stride": [2, 1], "padding": [1, 0]}, (3, 9, 11)),
               ({"out_channels": 6, "kernel_size": 3, "groups": 3, "padding": "valid"}, (3, 7, 7)),
               ({"out_channels": 4, "kernel_size": 4, "padding": "same", "dilation": 2}, (2, 9, 8))],
    "Conv3d": [({"out_channels": 2, "kernel_size": 3, "stride": 2, "padding": 1}, (1, 5, 6, 7))],
    "ConvTranspose1d": [({"out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1}, (2, 7))],
    "ConvTranspose2d": [({"out_channels": 3, "kernel_size": 2, "stride": 2}, (4, 5, 6)),
                        ({"out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
                         (4, 5, 5))],
    "ConvTranspose3d": [({"out_channels": 2, "kernel_size": 3, "stride": [1, 2, 2], "dilation": 2}, (2, 3, 4, 4))],
    "Linear": [({"out_features": 5}, (7,)), ({"out_features": 5, "bias": False}, (3, 7))],
    "Embedding": [({"num_embeddings": 10, "embedding_dim": 4, "padding_idx": 0}, (6,), "int64")],
    "BatchNorm1d": [({}, (5,)), ({"momentum": None}, (5, 7))],
    "BatchNorm2d": [({"eps": 1e-3}, (3, 4, 4))],
    "BatchNorm3d": [({"affine": False}, (2, 3, 3, 3))],
    "InstanceNorm1d": [({}, (3, 8))],
    "InstanceNorm2d": [({"affine": True}, (3, 4, 4))],
    "InstanceNorm3d": [({}, (2, 3, 3, 3))],
    "LayerNorm": [({}, (4, 6)), ({"bias": False}, (6,))],
    "GroupNorm": [({"num_groups": 2}, (4, 3, 3))],
    "MaxPool1d": [({"kernel_size": 2}, (3, 9))],
    "MaxPool2d": [({"kernel_size": 3, "stride": 2, "padding": 1}, (3, 9, 9)),
                  ({"kernel_size": 3, "stride": 2, "ceil_mode": True}, (3, 8, 10)),
                  ({"kernel_size": 2, "dilation": 2}, (3, 7, 7))],
    "MaxPool3d": [({"kernel_size": 2}, (1, 4, 5, 6))],
    "AvgPool1d": [({"kernel_size": 3, "stride": 2, "ceil_mode": True, "padding": 1}, (2, 10))],
    "AvgPool2d": [({"kernel_size": 2}, (3, 7, 7)),
                  ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": 2}, (3, 6, 6))],
    "AvgPool3d": [({"kernel_size": [1, 2, 2]}, (2, 3, 4, 4))],
    "AdaptiveAvgPool1d": [({"output_size": 3}, (2, 10))],
    "AdaptiveAvgPool2d": [({"output_size": 1}, (3, 5, 5)), ({"output_size": [2, None]}, (3, 5, 7))],
    "AdaptiveAvgPool3d": [({"output_size": [1, 2, 3]}, (2, 4, 4, 4))],
    "AdaptiveMaxPool1d": [({"output_size": 2}, (2, 9))],
    "AdaptiveMaxPool2d": [({"output_size": [3, 2]}, (2, 7, 8))],
    "AdaptiveMaxPool3d": [({"output_size": 1}, (2, 3, 3, 3))],
    "Flatten": [({}, (3, 4, 5)), ({"start_dim": 2}, (3, 4, 5)), ({"start_dim": 1, "end_dim": 2}, (3, 4, 5))],
    "Unflatten": [({"dim": 1, "unflattened_size": [2, 6]}, (12,)), ({"dim": -1, "unflattened_size": [-1, 4]}, (3, 8))],
    "Upsample": [({"scale_factor": 2}, (3, 4, 5)), ({"size": [7, 9], "mode": "bilinear"}, (3, 4, 5)),
                 ({"scale_factor": 1.5, "mode": "linear"}, (2, 7))],
    "PixelShuffle": [({"upscale_factor": 2}, (8, 3, 3))],
    "PixelUnshuffle": [({"downscale_factor": 2}, (2, 4, 6))],
    "Softmax": [({"dim": 1}, (5,)), ({"dim": -1}, (3, 5))],
    "LogSoftmax": [({"dim": 2}, (3, 5))],
    "Dropout1d": [({"p": 0.2}, (3, 5))],
    "Dropout2d": [({}, (3, 4, 5))],
    "Dropout3d": [({"inplace": False}, (2, 3, 4, 5))],
    "PReLU": [({"num_parameters": 3}, (3, 4, 4))],
    "transpose": [({"dim0": 1, "dim1": 2}, (3, 5)), ({"dim0": -1, "dim1": 1}, (2, 3, 4))],
    "permute": [({"dims": [0, 2, 3, 1]}, (3, 4, 5))],
    "reshape": [({"shape": [2, -1]}, (3, 4)), ({"shape": [12]}, (3, 4))],
    "mean": [({"dim": 1}, (5, 8)), ({"dim": [2, 3], "keepdim": True}, (3, 4, 5))],
    "select": [({"dim": 1, "index": 0}, (5, 8)), ({"dim": -1, "index": -1}, (5, 8))],
    "parameter": [({"shape": [1, 8], "init": "normal"}, (4,)), ({"shape": [3, 2, 2], "init": "trunc_normal"}, (4,)),
                  ({"shape": [1, 5, 8], "batch": True, "init": 1e-6}, (4,)),
                  ({"shape": [1, 4, 1, 1], "init": [0, 1, 2, 3], "trainable": False}, (4,))],
    "full": [({"shape": [2, 3], "value": 0.5}, (4,)), ({"shape": [1, 3], "value": 1, "dtype": "int64", "batch": True},
                                                        (4,))],
    "constant": [({"value": [[1, 2], [3, 4], [5, 6]]}, (4,)),
                 ({"value": [1, 0, 1, 1], "shape": [2, 2], "dtype": "bool"}, (4,))],
    "arange": [({"stop": 5}, (4,)), ({"start": 1, "stop": 2, "step": 0.25, "dtype": "float32"}, (4,)),
               ({"input": "x", "dim": 1}, (6, 3)), ({"input": "x", "dim": -1, "start": 2, "step": 3}, (6, 3))],
    "sub": [({"input": ["a", "b"]}, [(4, 8, 8), (4, 1, 1)]), ({"scalar": 1}, (3, 4)), ({"scalar": 2}, (3,), "int64")],
    "div": [({"input": ["a", "b"]}, [(3, 4), (1, 4)]), ({"scalar": 2}, (3, 4), "int64")],
    "pow": [({"exponent": 2}, (3, 4)), ({"exponent": 0.5}, (3, 4)), ({"exponent": 3}, (5,), "int64")],
    "clamp": [({"min": 0, "max": 6}, (3, 4)), ({"max": 0.5}, (5,))],
    "stochastic_depth": [({"p": 0.1}, (3, 4, 5)), ({"p": 0.5, "mode": "batch"}, (5,)), ({"p": 0.0}, (3, 4))],
    "matmul": [({"input": ["a", "b"]}, [(3, 4), (4, 5)]), ({"input": ["a", "b"]}, [(2, 3, 4), (1, 4, 6)])],
    "scaled_dot_product_attention": [({}, [(2, 5, 8), (2, 7, 8), (2, 7, 4)]), ({"is_causal": True}, [(5, 8)] * 3),
                                     ({"enable_gqa": True, "scale": 0.5}, [(4, 5, 8), (2, 7, 8), (2, 7, 8)]),
                                     ({}, [(2, 5, 8), (2, 7, 8), (2, 7, 8), (1, 5, 7)])],
    "chunk": [({"chunks": 2, "outputs": ["a", "b"]}, (6, 4)), ({"chunks": 3, "dim": -1, "outputs": ["a", "b", "c"]},
                                                                (2, 7))],
    "split": [({"split_size": 4, "outputs": ["a", "b"]}, (6, 4)), ({"split_size": [1, 5], "outputs": ["a", "b"]},
                                                                    (6, 4))],
    "MultiheadAttention": [({"num_heads": 2}, (5, 8)), ({"num_heads": 4, "add_bias_kv": True}, (3, 8)),
                           ({"num_heads": 2, "is_causal": True}, (5, 8)),
                           ({"num_heads": 2, "masks": ["key_padding_mask"]}, [(5, 8), (5,)]),
                           ({"num_heads": 2, "masks": ["attn_mask", "key_padding_mask"]},
                            [(5, 8), (7, 6), (7, 6), (5, 7), (7,)]),
                           ({"num_heads": 2, "masks": ["attn_mask"]}, [(5, 8), (2, 5, 5)])],
    "add": [({"input": ["a", "b"]}, (3, 4)), ({"scalar": 0.5}, (3, 4)), ({"scalar": 1}, (3,), "int64")],
    "concat": [({"input": ["a", "b"], "dim": -1}, (3, 4)), ({"input": ["a", "b"]}, (3, 4, 4))],
    "mul": [({"input": ["a", "b"]}, (3, 4)), ({"scalar": 0.5}, (3, 4))],
}
for _name in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "neg"):
    CASES[_name] = [({}, (3, 4)), ({}, (5,), "int64")]
SIMPLE = {"Identity", "ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "GELU", "SiLU", "Mish", "Sigmoid",
          "Tanh", "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "Softsign", "LogSigmoid", "Tanhshrink",
          "Dropout", "AlphaDropout"}
for _name in SIMPLE:
    CASES[_name] = [({}, (3, 4, 5))]

PARAMS = [pytest.param(op, *case, id=f"{op}-{i}") for op, cases in CASES.items() for i, case in enumerate(cases)]


def test_every_registered_op_has_shape_cases() -> None:
    assert set(CASES) == set(OPS)


def input_types(layer: Any, shapes: Shapes, dtype: str) -> list[TensorType]:
    """The case's inputs: one type per listed shape, or its one shape as often as the op needs."""
    if isinstance(shapes, list):
        return [TensorType(shape, dtype) for shape in shapes]
    return [TensorType(shapes, dtype)] * max(layer.min_inputs, 1)


class _Self:
    training = False  # generated code reads self.training (attention dropout)


def _run_torch(layer: Any, inputs: list[TensorType], dtype: str) -> torch.Tensor:
    """Run the op the way generated code does: its `code`, or its `call` on the module it builds."""
    tensors = [torch.randint(1, 10, (2, *t.shape)) if dtype == "int64" else torch.randn(2, *t.shape) for t in inputs]
    names = {f"v{i}": t for i, t in enumerate(tensors)}
    if layer.code_only:
        owner = layer.build({}) if layer.owned() else None
        expression = layer.code_with(list(names), "owner", layer.module_args(inputs))
    else:
        owner = layer.build(layer.module_args(inputs)).eval()
        expression = layer.call("owner", list(names))
    with torch.no_grad():
        # test-only: code resgraph generates
        return eval(expression, {"torch": torch, "owner": owner, "self": _Self(), **names})


@pytest.mark.parametrize(("op", "args", "shape", "dtype"), [
    pytest.param(p.values[0], p.values[1], p.values[2], p.values[3] if len(p.values) > 3 else F, id=p.id)
    for p in PARAMS])
def test_static_shape_matches_torch(op: str, args: dict[str, Any], shape: Shapes, dtype: str) -> None:
    layer = OPS[op].model_validate({"op": op, **args})
    inputs = input_types(layer, shape, dtype)
    inferred = layer.output_type(inputs)
    actual = _run_torch(layer, inputs, dtype)
    assert inferred.shape == tuple(actual.shape[1:])
    assert inferred.dtype == str(actual.dtype).removeprefix("torch."), "the static dtype is torch's"


@pytest.mark.parametrize(("op", "args", "shape", "message"), [
    ("Conv2d", {"out_channels": 4, "kernel_size": 5}, (3, 4, 4), "too small"),
    ("Conv2d", {"out_channels": 4, "kernel_size": [3, 3, 3]}, (3, 8, 8), "kernel_size has 3 entries, expected 2"),
    ("Conv1d", {"out_channels": 4, "kernel_size": 3}, (3, 8, 8), "expects (C, L) per sample"),
    ("ConvTranspose2d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "output_padding": 2}, (3, 4, 4),
     "output_padding=2 must be smaller"),
    ("MaxPool2d", {"kernel_size": 2, "padding": 2}, (3, 8, 8), "at most half the kernel size"),
    ("AvgPool3d", {"kernel_size": 2, "padding": 1, "ceil_mode": True}, (3, 1, 4, 4),
     "at least its kernel (2x2x2), padding aside, as torch checks it; the input is 1x4x4"),
    ("GroupNorm", {"num_groups": 3}, (4, 2, 2), "does not divide"),
    ("Flatten", {"start_dim": 0}, (3, 4), "batch dimension"),
    ("Flatten", {"start_dim": 5}, (3, 4), "out of range"),
    ("Unflatten", {"dim": 1, "unflattened_size": [5, 5]}, (12,), "has 25 elements"),
    ("Upsample", {"scale_factor": 2, "mode": "bilinear"}, (3, 8), "needs 2 spatial dims"),
    ("Upsample", {}, (3, 8, 8), "exactly one of size and scale_factor"),
    ("Upsample", {"scale_factor": 2}, (2, 3, 3, 3, 3), "(C, D, H, W) per sample (torch interpolates 1 to 3 spatial"),
    ("Upsample", {"scale_factor": 2}, (3,), "(C, L), (C, H, W) or (C, D, H, W) per sample"),
    ("PixelShuffle", {"upscale_factor": 2}, (6, 3, 3), "C*4"),
    ("Softmax", {"dim": 0}, (3,), "batch dimension"),
    ("Linear", {"out_features": 3}, (), "(..., features)"),
    ("chunk", {"chunks": 4, "outputs": ["a", "b", "c", "d"]}, (5,), "splits into 3 pieces [2, 2, 1]"),
    ("split", {"split_size": [2, 2], "outputs": ["a", "b"]}, (5,), "add up to 4, not the dim's 5"),
    ("MultiheadAttention", {"num_heads": 3}, (4, 8), "num_heads=3 does not divide the 8 features"),
])
def test_shape_errors_explain_themselves(op: str, args: dict[str, Any], shape: tuple[int, ...], message: str) -> None:
    layer = OPS[op].model_validate({"op": op, **args})
    with pytest.raises(ShapeError, match=re.escape(message)):
        layer.output_type([TensorType(shape)])


@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 4, 4), (2, 3, 3, 3), (2, 3, 3, 3, 3)], ids=str)
def test_upsample_takes_the_ranks_torch_interpolates(shape: tuple[int, ...]) -> None:
    spec = f"resgraph: 1\nname: U\ninputs:\n  x: {list(shape)}\nlayers:\n  - up: {{op: Upsample, scale_factor: 2}}\n"
    x = torch.randn(1, *shape)
    try:
        expected = torch.nn.Upsample(scale_factor=2)(x)
    except (RuntimeError, NotImplementedError, ValueError):
        with pytest.raises(resgraph.SpecError, match="per sample"):
            resgraph.check(spec)
        return
    torch.testing.assert_close(resgraph.build(spec)(x), expected)


@pytest.mark.parametrize("op", ["PixelShuffle", "PixelUnshuffle"])
@pytest.mark.parametrize("shape", [(8,), (8, 4), (8, 4, 4), (2, 8, 4, 4), (3, 2, 8, 4, 4), (8, 3, 4), (6, 4, 4)],
                         ids=str)
def test_pixel_shuffles_take_the_shapes_torch_takes(op: str, shape: tuple[int, ...]) -> None:
    """(*, C * r^2, H, W) and (*, C, H * r, W * r): leading dims (frames of a clip) are torch's too. Fewer than
    3 dims per sample would make the batch the channels: refused, as every op's dims that name the batch are."""
    factor = "upscale_factor" if op == "PixelShuffle" else "downscale_factor"
    spec = f"resgraph: 1\nname: P\ninputs:\n  x: {list(shape)}\nlayers:\n  - p: {{op: {op}, {factor}: 2}}\n"
    x, expected = torch.randn(2, *shape), None
    if len(shape) >= 3:
        with contextlib.suppress(RuntimeError):
            expected = getattr(torch.nn, op)(2)(x)
    if expected is None:
        with pytest.raises(resgraph.SpecError, match="per sample|divisible"):
            resgraph.check(spec)
        return
    torch.testing.assert_close(resgraph.build(spec)(x), expected)


def test_generic_torch_op_infers_input_size_and_runs_on_meta() -> None:
    layer = GenericLayer.model_validate({"op": "Bilinear", "in1_features": 4, "in2_features": 5, "out_features": 3})
    out = layer.output_type([TensorType((4,), layout="features_last"), TensorType((5,), layout="features_last")])
    assert out.shape == (3,)
    lstm_free = GenericLayer.model_validate({"op": "TransformerEncoderLayer", "nhead": 2, "batch_first": True,
                                             "dim_feedforward": 16})
    assert lstm_free.inferred_args([TensorType((5, 8), layout="features_last")]) == {"d_model": 8}
    out = lstm_free.output_type([TensorType((5, 8), layout="features_last")])
    assert out.shape == (5, 8) and out.layout == "features_last"


def test_a_tuple_result_must_be_picked_with_output() -> None:
    args = {"op": "LSTM", "input_size": 4, "hidden_size": 3, "batch_first": True}
    sequence = TensorType((5, 4), layout="features_last")
    with pytest.raises(ShapeError, match="returns a tuple of 2, not a tensor; pick one element with `output: 0`"):
        GenericLayer.model_validate(args).output_type([sequence])
    picked = GenericLayer.model_validate({**args, "output": 0})
    assert picked.output_type([sequence]).shape == (5, 3)
    assert picked.call("self.lstm", ["x"]) == "self.lstm(x)[0]"
    assert "output" not in picked.args()
    with pytest.raises(ShapeError, match="output: 2 does not index the result, which is a tuple of 2"):
        GenericLayer.model_validate({**args, "output": 2}).output_type([sequence])
    # element 1 is (h_n, c_n): said as such, not as if nothing were picked (`output: 0` would pick the sequence)
    with pytest.raises(ShapeError, match=r"element 1 of what LSTM\(.*\) returns is a tuple of 2, not a tensor; "
                                         "`output:` picks one element of the result, and a layer.s value is a tensor$"):
        GenericLayer.model_validate({**args, "output": 1}).output_type([sequence])


@pytest.mark.parametrize(("op", "args", "shape", "dtype"), [
    pytest.param(p.values[0], p.values[1], p.values[2], p.values[3] if len(p.values) > 3 else F, id=p.id)
    for p in PARAMS])
def test_static_parameter_count_matches_the_built_module(op: str, args: dict[str, Any], shape: Shapes,
                                                         dtype: str) -> None:
    layer = OPS[op].model_validate({"op": op, **args})
    inputs = input_types(layer, shape, dtype)
    layer.output_type(inputs)
    counted = layer.parameter_count(layer.module_args(inputs))
    if layer.owned() == "parameter":
        assert counted == layer.build({}).numel()
    elif layer.code_only:  # code, or a buffer: no parameters
        assert counted == 0
    else:
        assert counted == sum(p.numel() for p in layer.build(layer.module_args(inputs)).parameters())


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_output_size_is_torchs_for_plain_and_symbolic_sizes(stride: int) -> None:
    """Every kernel, padding and dilation at sizes 1-12: the formula gives torch's length, and a symbolic
    size's expression gives it at every size, not only at the size it was made for."""
    for kernel, padding, dilation, size in itertools.product(range(1, 5), range(3), range(1, 3), range(1, 13)):
        x = torch.empty(1, 1, size, device="meta")
        weight = torch.empty(1, 1, kernel, device="meta")
        try:
            want = torch.nn.functional.conv1d(x, weight, stride=stride, padding=padding, dilation=dilation).shape[-1]
        except RuntimeError:  # torch refuses an input smaller than the kernel's reach
            want = None
        if want is not None:
            assert conv_output_size(size, kernel, stride, padding, dilation) == want
        symbolic = conv_output_size(SymInt.symbol("x.L", 7), kernel, stride, padding, dilation)
        if want is not None:
            assert evaluate_expr(symbolic.expr if isinstance(symbolic, SymInt) else symbolic, {"x.L": size}) == want


def test_a_stride_1_conv_that_keeps_the_size_keeps_the_very_expression() -> None:
    """`padding: 1` around a 3x3 (or 2 around a dilated one): no arithmetic, no new expression."""
    size = SymInt.symbol("x.H", 32)
    assert conv_output_size(size, 3, 1, 1, 1) is size
    assert conv_output_size(size, 3, 1, 2, 2) is size
    assert str(conv_output_size(size, 3, 1, 0, 1).expr) == "x.H - 2"


def test_a_layers_written_arguments_follow_a_copy_and_are_the_callers_own() -> None:
    """`args()` is computed once per layer; a copy with changed arguments has its own, and a caller's
    changes to what `args()` returned reach neither the layer nor the next caller."""
    layer = OPS["Conv2d"].model_validate({"op": "Conv2d", "out_channels": 4, "kernel_size": 3})
    assert layer.args() == {"out_channels": 4, "kernel_size": 3}
    assert layer.model_copy(update={"out_channels": 8}).args() == {"out_channels": 8, "kernel_size": 3}
    layer.args()["out_channels"] = 99
    assert layer.args() == {"out_channels": 4, "kernel_size": 3}
    assert layer.module_args([TensorType((3, 8, 8))]) == {"in_channels": 3, "out_channels": 4, "kernel_size": 3}
