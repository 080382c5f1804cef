"""dtype flow: an integer or bool value reaching an op that has no kernel for it is a located error at
spec time, not a crash at the first forward.

Every value's dtype is known statically (`TensorType.dtype`): declared on inputs, `int64` from
`arange`, promoted by arithmetic and merges as torch promotes, turned into float32 by the ops that
do (Sigmoid, Tanh, `div`, `exp`...). Each curated op says which input dtypes it takes
(`Layer.input_dtypes`); the table is checked here against torch, op by op and case by case, in
train and eval mode (a dropout refuses integers only while training).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_ops import CASES, F, input_types

import resgraph
from resgraph.ops import OPS, ShapeError, TensorType
from resgraph.ops.base import FLOAT_DTYPES
from resgraph.ops.stored import StoredTensor

DTYPES = ("int64", "int32", "bool", "float16", "bfloat16", "float64")  # (float32 is every other test's)


class _Self:
    training = False


def _torch_dtype(layer: Any, inputs: list[TensorType], dtype: str) -> str | None:
    """The output dtype torch gives the op on inputs of `dtype` (in train and eval mode), or None if it fails."""
    tensors = [torch.randint(0, 2, (2, *t.shape)).to(getattr(torch, dtype)) for t in inputs]
    names = {f"v{i}": t for i, t in enumerate(tensors)}
    if layer.code_only:
        owner = layer.build({}) if layer.owned() else None
        expression = layer.code_with(list(names), "owner", layer.module_args(inputs))
    else:
        owner = layer.build(layer.module_args(inputs))
        expression = layer.call("owner", list(names))
    scope = {"torch": torch, "owner": owner, "self": _Self(), **names}
    try:
        with torch.no_grad():
            for training in (True, False):
                if isinstance(owner, torch.nn.Module):
                    owner.train(training)
                # test-only: code resgraph generates
                out = eval(expression, scope)
    except (RuntimeError, TypeError, NotImplementedError, AssertionError):  # torch asserts some dtypes
        return None
    return str(out.dtype).removeprefix("torch.")


def _our_dtype(layer: Any, inputs: list[TensorType]) -> str | None:
    """The output dtype resgraph types the op with on `inputs`, or None if it refuses them."""
    try:
        layer.check_dtypes(inputs)
        return layer.output_type(inputs).dtype
    except ShapeError:
        return None


@pytest.mark.parametrize(("op", "args", "shape", "dtype"), [
    pytest.param(op, case[0], case[1], dtype, id=f"{op}-{i}-{dtype}")
    for op, cases in CASES.items() for i, case in enumerate(cases) for dtype in DTYPES
    if not issubclass(OPS[op], StoredTensor) and (len(case) < 3 or case[2] == F)])
def test_every_op_takes_exactly_the_dtypes_torch_takes(op: str, args: dict[str, Any], shape: Any, dtype: str) -> None:
    layer = OPS[op].model_validate({"op": op, **args})
    inputs = input_types(layer, shape, dtype)
    ours = _our_dtype(layer, inputs)
    if op in STRICTER_THAN_TORCH and dtype not in FLOAT_DTYPES:
        assert ours is None and _torch_dtype(layer, inputs, dtype) is not None  # refused on purpose
        return
    if op in CUDA_ONLY_KERNELS and dtype in CUDA_ONLY_KERNELS[op]:
        assert ours == dtype and _torch_dtype(layer, inputs, dtype) is None  # taken: the model may run on a GPU
        return
    assert ours == _torch_dtype(layer, inputs, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize(("op", "args", "shape"), [
    (op, {"affine": affine, "track_running_stats": stats}, shape)
    for op, shape in (("BatchNorm2d", (3, 4, 4)), ("InstanceNorm1d", (3, 5)), ("InstanceNorm2d", (3, 4, 4)),
                      ("InstanceNorm3d", (3, 2, 2, 2)))
    for affine in (False, True) for stats in (False, True)] + [
    ("LayerNorm", {"elementwise_affine": affine, "bias": bias}, (8,)) for affine in (False, True) for bias in
    (False, True)] + [("GroupNorm", {"num_groups": 2, "affine": affine}, (4, 3)) for affine in (False, True)])
def test_a_norm_takes_exactly_the_float_dtypes_torch_runs_beside_its_weights_and_statistics(
        op: str, args: dict[str, Any], shape: tuple[int, ...], dtype: str) -> None:
    """Weights limit a norm to float32, float16 and bfloat16 inputs; BatchNorm's running statistics do too,
    InstanceNorm's do not (torch runs a float64 input beside them, in training and in eval)."""
    layer = OPS[op].model_validate({"op": op, **args})
    inputs = [TensorType(shape, dtype)]
    ours = _our_dtype(layer, inputs)
    assert ours == _torch_dtype(layer, inputs, dtype)


# Code ops whose eval-mode forward (all `_torch_dtype` runs for them: `_Self.training` is False)
# takes dtypes their training forward does not: refused, so a model cannot fail once training starts.
STRICTER_THAN_TORCH = {
    "stochastic_depth": "eval is the identity; training divides the mask by 1 - p in place, which an integer "
                        "tensor cannot hold",
}


# Ops torch has a kernel for on CUDA but not on the CPU, for these dtypes: a spec does not say where its
# model runs, so they are taken.
CUDA_ONLY_KERNELS = {"AvgPool3d": {"float16", "bfloat16"}}


def spec(layers: str, inputs: str = "  x: {shape: [8], dtype: int64}\n", skips: str = "") -> str:
    return f"resgraph: 1\nname: Net\ninputs:\n{inputs}layers:\n{layers}" + (f"skips:\n{skips}" if skips else "")


def error_of(text: str) -> resgraph.Diagnostic:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text, file="spec.yaml")
    (diagnostic,) = caught.value.diagnostics
    return diagnostic


def test_an_integer_input_into_linear_names_the_input_and_how_to_convert() -> None:
    diagnostic = error_of(spec("  - fc: {op: Linear, out_features: 4}\n"))
    assert str(diagnostic.location) == "spec.yaml:6:5"
    assert diagnostic.message == ("layer 'fc' (Linear): needs a floating-point input, got int64: 'x' is int64 "
                                  "(its declared dtype)")
    assert "`{op: mul, scalar: 1.0}`" in diagnostic.hint and "Embedding" in diagnostic.hint


def test_positions_from_arange_into_a_float_layer_are_refused_and_the_hinted_fix_works() -> None:
    inputs = "  x: [5, 8]\n"
    bad = "  - pos: {op: arange, input: x, dim: 1}\n  - norm: {op: LayerNorm}\n"
    diagnostic = error_of(spec(bad, inputs))
    assert diagnostic.message.endswith("'pos' is int64 (the output of arange)")
    good = "  - pos: {op: arange, input: x, dim: 1}\n  - f: {op: mul, scalar: 1.0}\n  - norm: {op: LayerNorm}\n"
    model = resgraph.build(spec(good, inputs))
    assert model(torch.randn(2, 5, 8)).dtype == torch.float32


@pytest.mark.parametrize("layer", [
    "{op: Conv1d, out_channels: 2, kernel_size: 1}", "{op: BatchNorm1d}", "{op: GELU}", "{op: Softmax, dim: -1}",
    "{op: mean, dim: 1}", "{op: Dropout}", "{op: AdaptiveAvgPool1d, output_size: 1}",
    "{op: Upsample, scale_factor: 2}", "{op: MultiheadAttention, num_heads: 1}"])
def test_integer_values_reach_no_float_only_layer(layer: str) -> None:
    text = spec(f"  - y: {layer}\n", "  x: {shape: [3, 4], dtype: int64}\n")
    with pytest.raises(resgraph.SpecError, match="needs a floating-point input, got int64"):
        resgraph.check(text)


def test_a_bool_mask_into_relu_is_refused_but_an_integer_is_not() -> None:
    with pytest.raises(resgraph.SpecError, match=r"needs a number \(not bool\) input, got bool"):
        resgraph.check(spec("  - r: {op: ReLU}\n", "  x: {shape: [8], dtype: bool}\n"))
    model = resgraph.build(spec("  - r: {op: ReLU}\n  - s: {op: Sigmoid}\n"))
    assert model(torch.arange(-4, 4).expand(2, 8)).dtype == torch.float32  # Sigmoid turns integers into floats


def test_a_projection_shortcut_from_an_integer_source_is_refused_at_the_skip() -> None:
    text = spec("  - f: {op: mul, input: ids, scalar: 0.5}\n  - fc: {op: Linear, out_features: 4}\n",
                "  ids: {shape: [8], dtype: int64}\n", "  - s: {from: ids, to: fc}\n")
    diagnostic = error_of(text)
    assert (diagnostic.location.line, diagnostic.location.column) == (9, 9)  # at `from`
    assert diagnostic.message == ("skip 's': 'ids' is int64 (its declared dtype), but its projection (Linear) computes "
                                  "with floating-point weights")
    # the same values as floats project fine
    fixed = text.replace("  - f: {op: mul, input: ids, scalar: 0.5}\n",
                         "  - g: {op: mul, input: ids, scalar: 1.0}\n  - f: {op: mul, scalar: 0.5}\n")
    fixed = fixed.replace("{from: ids, to: fc}", "{from: g, to: fc}")
    assert resgraph.build(fixed)(torch.arange(8).expand(3, 8)).shape == (3, 4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_a_float_input_of_another_precision_than_the_weights_is_refused_where_torch_would_fail(dtype: str) -> None:
    """resgraph builds float32 weights: a conv (Linear, PReLU, attention) needs its input float32,
    a norm float32, float16 or bfloat16; each model that checks runs its declared input."""
    inputs = f"  x: {{shape: [3, 8, 8], dtype: {dtype}}}\n"
    diagnostic = error_of(spec("  - n: {op: BatchNorm2d, affine: false, track_running_stats: false}\n"
                               "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3}\n", inputs))
    assert (diagnostic.location.line, diagnostic.location.column) == (7, 5)  # at the conv
    assert diagnostic.message == (f"layer 'c' (Conv2d): needs a float32 input, the dtype of its weights (torch needs "
                                  f"the two equal), got {dtype}: 'n' is {dtype} (the output of BatchNorm2d)")
    assert "declare the input float32" in diagnostic.hint and "model.half()" in diagnostic.hint
    x = torch.randn(2, 3, 8, 8, dtype=getattr(torch, dtype))
    with pytest.raises(RuntimeError):  # what the refused model would have done
        torch.nn.Conv2d(3, 4, 3)(x)
    normed = spec("  - n: {op: BatchNorm2d}\n  - p: {op: MaxPool2d, kernel_size: 2}\n", inputs)
    if dtype == "float64":  # torch has no float64 norm kernel beside float32 statistics
        assert "needs a float32, float16 or bfloat16 input beside its float32 weights" in error_of(normed).message
    else:
        model = resgraph.build(normed)
        assert model(x).dtype == x.dtype == getattr(torch, resgraph.check(normed).nodes["p"].meta["type"].dtype)


def test_a_norm_without_weights_names_its_running_statistics_when_it_refuses_float64() -> None:
    inputs = "  x: {shape: [3, 8, 8], dtype: float64}\n"
    message = error_of(spec("  - n: {op: BatchNorm2d, affine: false}\n", inputs)).message
    assert "needs a float32, float16 or bfloat16 input beside its float32 weights or running statistics" in message
    with pytest.raises(RuntimeError):  # what torch does with the model
        torch.nn.BatchNorm2d(3, affine=False)(torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_a_projection_from_a_float16_source_is_refused_at_the_skip_and_the_float32_spec_runs_halved() -> None:
    text = spec("  - n: {op: BatchNorm2d}\n  - d: {op: MaxPool2d, kernel_size: 2}\n",
                "  x: {shape: [3, 8, 8], dtype: float16}\n", "  - s: {from: x, to: d}\n")
    diagnostic = error_of(text)
    assert (diagnostic.location.line, diagnostic.location.column) == (9, 9)  # at `from`
    assert diagnostic.message == ("skip 's': 'x' is float16 (its declared dtype), but its projection (Conv2d 1x1 /2 + "
                                  "BatchNorm2d) computes with float32 weights, and torch needs the input's dtype to "
                                  "match")
    # the fix the hint gives: a float32 spec, the built model and its input converted together
    model = resgraph.build(text.replace("dtype: float16", "dtype: float32")).half()
    assert model(torch.randn(2, 3, 8, 8).half()).dtype == torch.float16


def test_merges_promote_like_torch() -> None:
    text = spec("  - f: {op: Linear, input: y, out_features: 8}\n  - cat: {op: concat, input: [x, f]}\n"
                "  - fc: {op: Linear, out_features: 2}\n", "  x: {shape: [8], dtype: int64}\n  y: [8]\n")
    model = resgraph.build(text)  # int64 concatenated with float32 is float32: Linear takes it
    assert model(torch.arange(8).expand(2, 8), torch.randn(2, 8)).shape == (2, 2)
    graph = resgraph.check(text)
    assert graph.nodes["cat"].meta["type"].dtype == "float32"


def test_an_uncurated_op_without_a_kernel_for_the_dtype_is_refused() -> None:
    """The meta device does not check kernels: a weightless uncurated op also runs once on small CPU zeros."""
    with pytest.raises(NotImplementedError):
        torch.nn.RReLU()(torch.zeros(2, 8, dtype=torch.int64))  # what torch does at the first forward
    with pytest.raises(resgraph.SpecError, match="cannot compute on int64 values"):
        resgraph.check(spec("  - r: {op: RReLU}\n"))
    model = resgraph.build(spec("  - t: {op: Threshold, threshold: 0, value: 0}\n"))
    assert model(torch.arange(-4, 4).expand(2, 8)).tolist()[0] == [0, 0, 0, 0, 0, 1, 2, 3]
