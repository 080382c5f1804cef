"""Projection policies: what each inserts for add, concat and mul, in 1-D, 2-D and 3-D, strided.

The spec under test is always: input x -> target layer t (a 1x1 conv with chosen channels and
stride) and one skip s from x to t. The README's policy table is the specification.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resgraph
from resgraph.ops import Merge, TensorType
from resgraph.projections import Projection, plan_projection


def skip_spec(dims: int, c_in: int, c_out: int, stride: int, *, merge: str = "add", projection: str = "auto",
              size: int = 8, **skip: Any) -> dict[str, Any]:
    return {
        "resgraph": 1, "name": "SkipCase",
        "inputs": {"x": [c_in, *([size] * dims)]},
        "layers": [{"t": {"op": f"Conv{dims}d", "out_channels": c_out, "kernel_size": 1, "stride": stride}}],
        "skips": [{"s": {"from": "x", "to": "t", "merge": merge, "projection": projection, **skip}}],
    }


def run(spec: dict[str, Any], dims: int, c_in: int, size: int = 8) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, c_in, *([size] * dims))
    with torch.no_grad():
        return model, x, model(x)


DIMS = [1, 2, 3]
STRIDES = [1, 2, 4]


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("stride", STRIDES)
def test_auto_add_is_strided_1x1_conv_then_batchnorm(dims: int, stride: int) -> None:
    model, x, y = run(skip_spec(dims, 3, 8, stride), dims, 3)
    conv, norm = model.s
    assert isinstance(conv, getattr(nn, f"Conv{dims}d")) and isinstance(norm, getattr(nn, f"BatchNorm{dims}d"))
    assert conv.kernel_size == (1,) * dims and conv.stride == (stride,) * dims and conv.bias is None
    assert conv.in_channels == 3 and conv.out_channels == 8 and norm.num_features == 8
    assert y.shape == (2, 8, *([8 // stride] * dims))
    torch.testing.assert_close(y, model.t(x) + norm(conv(x)))


@pytest.mark.parametrize("dims", DIMS)
def test_auto_is_identity_when_shapes_match(dims: int) -> None:
    model, x, y = run(skip_spec(dims, 4, 4, 1), dims, 4)
    assert not hasattr(model, "s")
    torch.testing.assert_close(y, model.t(x) + x)


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("stride", [2, 4])
def test_conv_policy_has_no_norm(dims: int, stride: int) -> None:
    model, _, y = run(skip_spec(dims, 3, 8, stride, projection="conv"), dims, 3)
    assert len(model.s) == 1 and model.s[0].stride == (stride,) * dims
    assert sum(p.numel() for p in model.s.parameters()) == 3 * 8
    assert y.shape[1] == 8


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("stride", [2, 4])
def test_avgpool_policy_pools_by_the_ratio_then_projects(dims: int, stride: int) -> None:
    model, x, y = run(skip_spec(dims, 3, 8, stride, projection="avgpool"), dims, 3)
    pool, conv, norm = model.s
    assert isinstance(pool, getattr(nn, f"AvgPool{dims}d")) and pool.kernel_size in (stride, (stride,) * dims)
    assert conv.stride == (1,) * dims
    torch.testing.assert_close(y, model.t(x) + norm(conv(pool(x))))


def test_avgpool_policy_without_channel_change_is_parameter_free() -> None:
    model, x, y = run(skip_spec(2, 4, 4, 2, projection="avgpool"), 2, 4)
    assert len(model.s) == 1 and sum(p.numel() for p in model.s.parameters()) == 0
    torch.testing.assert_close(y, model.t(x) + F.avg_pool2d(x, 2))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("stride", STRIDES)
def test_pad_policy_subsamples_and_zero_pads_channels_without_parameters(dims: int, stride: int) -> None:
    model, x, y = run(skip_spec(dims, 3, 8, stride, projection="pad"), dims, 3)
    assert not hasattr(model, "s")  # option A has no parameters, so no submodule
    sub = x[(slice(None), slice(None), *[slice(None, None, stride)] * dims)]
    expected = F.pad(sub, (0, 0) * dims + (2, 3))  # 5 new channels: 2 before, 3 after
    torch.testing.assert_close(y, model.t(x) + expected)


@pytest.mark.parametrize("dims", DIMS)
def test_crop_policy_center_crops_then_projects_channels(dims: int) -> None:
    spec = skip_spec(dims, 3, 8, 1, projection="crop")
    spec["layers"][0]["t"].update(kernel_size=3)  # valid conv: 8 -> 6
    model, x, y = run(spec, dims, 3)
    assert len(model.s) == 1 and isinstance(model.s[0], getattr(nn, f"Conv{dims}d"))
    cropped = x[(slice(None), slice(None), *[slice(1, 7)] * dims)]
    torch.testing.assert_close(y, model.t(x) + model.s(cropped))


def test_crop_policy_with_equal_channels_is_parameter_free() -> None:
    spec = skip_spec(2, 4, 4, 1, projection="crop", size=9)
    spec["layers"][0]["t"].update(kernel_size=5)  # 9 -> 5: crop starts at 2
    model, x, y = run(spec, 2, 4, size=9)
    assert not hasattr(model, "s")
    torch.testing.assert_close(y, model.t(x) + x[:, :, 2:7, 2:7])


def test_crop_refuses_an_off_centre_crop() -> None:
    spec = skip_spec(2, 4, 4, 1, projection="crop", size=9)
    spec["layers"][0]["t"].update(kernel_size=4)  # 9 -> 6: margins of 3 cannot be split evenly
    with pytest.raises(resgraph.SpecError, match="would be off-centre: the margins 3x3 are not even"):
        resgraph.build(spec)


def test_crop_refuses_a_strided_mismatch_because_the_grids_do_not_align() -> None:
    with pytest.raises(resgraph.SpecError, match="crop would misalign the grids") as caught:
        resgraph.build(skip_spec(2, 4, 4, 2, projection="crop"))
    assert "projection: auto" in (caught.value.diagnostics[0].hint or "")


def test_none_policy_is_identity_when_shapes_match_and_an_error_otherwise() -> None:
    model, x, y = run(skip_spec(2, 4, 4, 1, projection="none"), 2, 4)
    torch.testing.assert_close(y, model.t(x) + x)
    with pytest.raises(resgraph.SpecError, match="projection is 'none'"):
        resgraph.build(skip_spec(2, 3, 4, 1, projection="none"))


# --- concat: channels are free, only the other dims must be reconciled -----------------------------

def test_concat_with_matching_spatial_size_needs_no_projection() -> None:
    model, x, y = run(skip_spec(2, 3, 5, 1, merge="concat"), 2, 3)
    assert not hasattr(model, "s")
    torch.testing.assert_close(y, torch.cat([x, model.t(x)], dim=1))  # `from` first: DenseNet / U-Net order


@pytest.mark.parametrize(("policy", "params"), [("conv", 3 * 3), ("avgpool", 0), ("pad", 0)])
def test_concat_downsamples_the_source_and_keeps_its_channels(policy: str, params: int) -> None:
    model, x, y = run(skip_spec(2, 3, 5, 2, merge="concat", projection=policy), 2, 3)
    assert y.shape == (2, 3 + 5, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == 3 * 5 + 5 + params
    if policy == "pad":
        torch.testing.assert_close(y, torch.cat([x[:, :, ::2, ::2], model.t(x)], dim=1))


@pytest.mark.parametrize("merge", ["concat", "mul"])
def test_auto_refuses_to_concat_or_gate_across_spatial_scales(merge: str) -> None:
    """A concat (or non-broadcasting gate) from a 8x8 map into a 4x4 one is usually a skip from the wrong
    layer: `auto` asks which projection is meant instead of inserting a strided conv silently."""
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(skip_spec(2, 3, 5, 2, merge=merge))
    (diagnostic,) = caught.value.diagnostics
    assert "on different spatial scales (8x8 vs 4x4, /2)" in diagnostic.message
    assert "`projection: conv`" in (diagnostic.hint or "")
    resgraph.build(skip_spec(2, 3, 5, 2, merge=merge, projection="conv"))  # stated explicitly: fine


def test_concat_along_another_dim_reconciles_the_channels() -> None:
    spec = skip_spec(1, 3, 6, 1, merge="concat", dim=2)
    model, x, y = run(spec, 1, 3)
    assert y.shape == (2, 6, 16)  # lengths concatenated; source projected 3 -> 6 channels
    assert model.s[0].out_channels == 6


def test_concat_crop_policy_crops_the_source() -> None:
    spec = skip_spec(2, 3, 4, 1, merge="concat", projection="crop")
    spec["layers"][0]["t"].update(kernel_size=3)
    model, x, y = run(spec, 2, 3)
    torch.testing.assert_close(y, torch.cat([x[:, :, 1:7, 1:7], model.t(x)], dim=1))


# --- mul: gating broadcasts; only non-broadcastable shapes are projected --------------------------

def test_mul_broadcasts_a_channel_gate_without_projection() -> None:
    spec = {"resgraph": 1, "name": "Gate", "inputs": {"x": [4, 6, 6]},
            "layers": [{"pool": {"op": "AdaptiveAvgPool2d", "output_size": 1}},
                       {"gate": {"op": "Sigmoid"}},
                       {"body": {"op": "Conv2d", "input": "x", "out_channels": 4, "kernel_size": 3, "padding": 1}}],
            "skips": [{"g": {"from": "gate", "to": "body", "merge": "mul"}}]}
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.body(x) * torch.sigmoid(F.adaptive_avg_pool2d(x, 1)))
    assert not hasattr(model, "g")


@pytest.mark.parametrize("merge", ["mul", "add"])
def test_a_vector_projected_to_a_vector_of_other_channels_takes_the_conv_alone(merge: str) -> None:
    # (8, 1, 1) into (16, 1, 1), both 1x1 at every size: a BatchNorm after the conv normalised across the
    # batch alone, and a batch of 1 failed in training ("Expected more than 1 value per channel")
    spec = {"resgraph": 1, "name": "Vectors", "inputs": {"x": [8, 16, 16]},
            "layers": [{"pool": {"op": "AdaptiveAvgPool2d", "output_size": 1}},
                       {"c": {"op": "Conv2d", "out_channels": 16, "kernel_size": 1}},
                       {"sig": {"op": "Sigmoid"}}],
            "skips": [{"s": {"from": "pool", "to": "sig", "merge": merge}}]}
    model = resgraph.build(spec, seed=0).train()
    assert [type(m).__name__ for m in model.s] == ["Conv2d"]
    x = torch.randn(1, 8, 16, 16)
    pooled = F.adaptive_avg_pool2d(x, 1)
    gate = torch.sigmoid(model.c(pooled))
    expected = gate * model.s(pooled) if merge == "mul" else gate + model.s(pooled)
    torch.testing.assert_close(model(x), expected)


def test_a_features_last_gate_into_a_channels_first_map_is_refused() -> None:
    """A (1, 1, C) gate broadcast into a (C, H, W) map with H = W = C would scale the width, silently."""
    spec = {"resgraph": 1, "name": "Gate", "inputs": {"x": [4, 4, 4]},
            "layers": [{"pool": {"op": "AdaptiveAvgPool2d", "output_size": 1}},
                       {"last": {"op": "permute", "dims": [0, 2, 3, 1]}},
                       {"fc": {"op": "Linear", "out_features": 4}},
                       {"body": {"op": "Conv2d", "input": "x", "out_channels": 4, "kernel_size": 3, "padding": 1}}],
            "skips": [{"g": {"from": "fc", "to": "body", "merge": "mul"}}]}
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    assert "the gate (1, 1, 4) is features-last but the target (4, 4, 4) is channels-first" in diagnostic.message
    assert "permute" in (diagnostic.hint or "")


@pytest.mark.parametrize(("policy", "stride"), [("auto", 1), ("conv", 2), ("avgpool", 4)])
def test_mul_projects_when_shapes_do_not_broadcast(policy: str, stride: int) -> None:
    model, x, y = run(skip_spec(2, 3, 8, stride, merge="mul", projection=policy), 2, 3)
    assert y.shape == (2, 8, 8 // stride, 8 // stride)


def test_mul_with_pad_subsamples_a_gate_but_never_pads_it_with_zero_channels() -> None:
    model, x, y = run(skip_spec(2, 3, 3, 2, merge="mul", projection="pad"), 2, 3)
    torch.testing.assert_close(y, model.t(x) * x[:, :, ::2, ::2])
    with pytest.raises(resgraph.SpecError, match="pad would give the gate 5 channels of zeros, which would zero "
                                                 "those channels of the target"):
        resgraph.build(skip_spec(2, 3, 8, 2, merge="mul", projection="pad"))


# --- features: Linear projections for vectors and (seq, features) ---------------------------------

def mlp_spec(shape: list[int], out: int, projection: str = "auto", merge: str = "add") -> dict[str, Any]:
    return {"resgraph": 1, "name": "Mlp", "inputs": {"x": shape},
            "layers": [{"fc": {"op": "Linear", "out_features": out}}],
            "skips": [{"s": {"from": "x", "to": "fc", "merge": merge, "projection": projection}}]}


@pytest.mark.parametrize("shape", [[6], [5, 6]])
@pytest.mark.parametrize("policy", ["auto", "conv"])
def test_feature_tensors_get_a_bias_free_linear_projection(shape: list[int], policy: str) -> None:
    model = resgraph.build(mlp_spec(shape, 4, policy), seed=0)
    (linear,) = model.s
    assert isinstance(linear, nn.Linear) and linear.bias is None and linear.weight.shape == (4, 6)
    x = torch.randn(2, *shape)
    torch.testing.assert_close(model(x), model.fc(x) + linear(x))


def test_feature_tensors_can_be_zero_padded() -> None:
    model = resgraph.build(mlp_spec([3], 6, "pad"), seed=0)
    x = torch.randn(2, 3)
    torch.testing.assert_close(model(x), model.fc(x) + F.pad(x, (1, 2)))


@pytest.mark.parametrize("policy", ["avgpool", "crop"])
def test_spatial_policies_refuse_feature_tensors(policy: str) -> None:
    with pytest.raises(resgraph.SpecError, match=f"projection '{policy}' needs spatial dims"):
        resgraph.build(mlp_spec([6], 4, policy))


# --- the planner itself ----------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "target", "reason"), [
    ((3, 32, 32), (64, 32, 32), "3->64 channels"),
    ((64, 32, 32), (128, 16, 16), "64->128 channels, /2"),
    ((64, 32, 32), (64, 8, 8), "/4"),
    ((64, 32, 16), (64, 16, 16), "/2x1"),
])
def test_plan_reasons_read_like_the_summary(source: tuple[int, ...], target: tuple[int, ...], reason: str) -> None:
    plan = plan_projection(Projection.auto, Merge.add, TensorType(source), TensorType(target))
    assert plan.reason == reason and plan.output.shape == target


def test_a_size_the_stride_does_not_explain_is_never_rounded_or_cropped() -> None:
    spec = skip_spec(2, 3, 8, 2, size=9)
    spec["layers"][0]["t"].update(kernel_size=4)  # 9 -> 3 at stride 2, where a 1x1 stride-2 conv gives 5
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(spec)
    (diagnostic,) = caught.value.diagnostics
    assert "9x9 -> 3x3 does not match a stride of 2 (which gives 5x5)" in diagnostic.message
    assert "projection: crop" not in (diagnostic.hint or "")


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("size", [7, 15, 33])
@pytest.mark.parametrize("policy", ["auto", "conv", "avgpool", "pad"])
def test_every_policy_fits_a_strided_path_on_odd_sizes_as_torch_computes_it(dims: int, size: int, policy: str) -> None:
    """A 3x3 stride-2 conv with padding 1 maps 7 -> 4, 15 -> 8, 33 -> 17: each policy's projection of the
    skip must give torch's size too (ceil(size / 2)), so the model runs."""
    spec = skip_spec(dims, 3, 6, 2, projection=policy, size=size)
    spec["layers"][0]["t"].update(kernel_size=3, padding=1)
    model, x, y = run(spec, dims, 3, size=size)
    expected = (size + 2 - 3) // 2 + 1
    assert y.shape == (2, 6, *([expected] * dims)) == model.t(x).shape


def test_defaults_projection_applies_to_every_skip_and_a_skip_overrides_it() -> None:
    spec = skip_spec(2, 3, 8, 2)
    spec["defaults"] = {"projection": "pad"}
    spec["skips"][0]["s"].pop("projection")
    assert not hasattr(resgraph.build(spec), "s")  # pad: no parameters
    spec["skips"][0]["s"]["projection"] = "conv"
    assert len(resgraph.build(spec).s) == 1


# --- a map made by a layer (a sequence reshaped or transposed into a map) has a grid of its own -------

MADE_MAPS = {
    "reshaped into a 2-d map": ("inputs: {x: [8, 64]}\nlayers:\n  - m: {op: reshape, shape: [8, 8, 8]}\n", 2),
    "transposed into a 1-d map": ("inputs: {x: {shape: [16, 8], layout: features_last}}\nlayers:\n"
                                  "  - m: {op: transpose, dim0: 1, dim1: 2}\n", 1),
}


@pytest.mark.parametrize("made", MADE_MAPS)
def test_a_skip_from_a_map_made_by_a_layer_takes_the_stride_of_the_layers_between(made: str) -> None:
    """The step is the layers' (2), not the smallest that fits at the declared size (8 -> 4 fits 2, and
    a 3x3 stride-2 conv on 8 is 4 either way; at 7 -> 3 the smallest fitting step was 3, misaligned)."""
    head, dims = MADE_MAPS[made]
    spec = ("resgraph: 1\nname: Own\n" + head + f"  - c: {{op: Conv{dims}d, out_channels: 16, kernel_size: 3, "
            "stride: 2, padding: 1}\n" + f"  - c2: {{op: Conv{dims}d, out_channels: 16, kernel_size: 1}}\n"
            "skips:\n  - s: {from: m, to: c2, projection: conv}\n")
    model = resgraph.build(spec, seed=0).eval()
    assert model.s[0].stride == (2,) * dims
    x = torch.randn(2, *model.graph.nodes["x"].meta["type"].shape)
    with torch.no_grad():
        m = x.reshape(2, 8, 8, 8) if dims == 2 else x.transpose(1, 2)
        expected = model.c2(model.c(m)) + model.s(m)
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.s(m), F.conv2d(m, model.s[0].weight, stride=2) if dims == 2
                                   else F.conv1d(m, model.s[0].weight, stride=2))


def test_a_skip_from_a_made_map_whose_sizes_miss_the_stride_is_refused_as_from_an_input() -> None:
    """7x7 -> 3x3 by a stride-2 conv without padding: the same error as from a declared 7x7 input (it
    built a stride-3 projection whose positions 0, 3, 6 met outputs centred on 1, 3, 5)."""
    body = ("  - c: {op: Conv2d, out_channels: 16, kernel_size: 3, stride: 2}\n"
            "  - c2: {op: Conv2d, out_channels: 16, kernel_size: 1}\nskips:\n  - s: {from: m, to: c2}\n")
    made = "resgraph: 1\nname: Made\ninputs: {x: [8, 49]}\nlayers:\n  - m: {op: reshape, shape: [8, 7, 7]}\n" + body
    given = "resgraph: 1\nname: Given\ninputs: {x: [8, 7, 7]}\nlayers:\n  - m: {op: Identity}\n" + body
    messages = []
    for spec in (made, given):
        with pytest.raises(resgraph.SpecError) as caught:
            resgraph.check(spec)
        messages.append(caught.value.diagnostics[0].message)
    assert messages[0] == messages[1] == ("skip 's': cannot add 'm' (8, 7, 7) to 'c2' (16, 3, 3): spatial size 7x7 "
                                          "-> 3x3 does not match a stride of 2 (which gives 4x4)")


def test_grids_of_two_origins_are_not_compared() -> None:
    """A map made from one input and a map of another input: no step between them is known, so the step
    is the smallest that fits, as after an adaptive pool (not the ratio of steps counted from two places)."""
    spec = ("resgraph: 1\nname: Two\ninputs:\n  x: [8, 64]\n  y: [8, 12, 12]\nlayers:\n"
            "  - m: {op: reshape, input: x, shape: [8, 8, 8]}\n"
            "  - c: {op: Conv2d, input: y, out_channels: 8, kernel_size: 3, stride: 3, padding: 1}\n"
            "skips:\n  - s: {from: m, to: c, projection: conv}\n")
    model = resgraph.build(spec, seed=0)
    # 8 -> 4: the smallest step that fits is 2; y's stride, 3, would give 3 (counted as if from one grid)
    assert model.s[0].stride == (2, 2)


BRANCHED = ("resgraph: 1\nname: Branched\ninputs: {x: [3, 9, 9]}\nlayers:\n"
            "  - stem: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n%s"
            "  - act: {op: ReLU}\nskips:\n  - s: {from: %s, to: act}\noutputs: [act, side]\n")


@pytest.mark.parametrize(("branches", "source", "hint"), [
    # The skip's way runs through 'main' (unstrided, unpadded); 'side', strided, is a sibling run between its ends:
    # it was listed, and "an input size that is a multiple of 2 ('side' floored an odd size)" asked for its stride.
    ("  - side: {op: Conv2d, input: stem, out_channels: 8, kernel_size: 3, stride: 2}\n"
     "  - main: {op: Conv2d, input: stem, out_channels: 8, kernel_size: 3}\n", "stem",
     "shrunk by 'main' (Conv2d, kernel 3, stride 1, padding 0, dilation 1): 9x9 -> 7x7. Fix: keep the size with "
     "`padding: 1` on 'main'; or set `projection: crop` on this skip (the maps share a grid, so a centre crop aligns "
     "them)"),
    # a strided sibling beside a strided way: `ceil_mode: true` was proposed on the sibling too
    ("  - side: {op: MaxPool2d, input: stem, kernel_size: 3}\n"
     "  - main: {op: MaxPool2d, input: stem, kernel_size: 2}\n", "stem",
     "'main' (MaxPool2d, kernel 2, stride 2, padding 0, dilation 1): 9x9 -> 4x4: a stride of 2 floored size 9 to 4. "
     "Fix: an input size at which this skip fits: 'x' 8x8 (or 10x10, 6x6); or make it round up as the strides do: "
     "`ceil_mode: true` on 'main'"),
    # a skip from one branch to the other: the layers of both since they forked, its source included (it was left
    # out, as the first of the layers between the two in order)
    ("  - side: {op: Conv2d, input: stem, out_channels: 8, kernel_size: 3, stride: 2}\n"
     "  - main: {op: Conv2d, input: stem, out_channels: 8, kernel_size: 3}\n", "side",
     "'side' (Conv2d, kernel 3, stride 2, padding 0, dilation 1): 9x9 -> 4x4; 'main' (Conv2d, kernel 3, stride 1, "
     "padding 0, dilation 1): 9x9 -> 7x7. Fix: take the skip from a layer at the target's scale, or upsample the "
     "source first"),
], ids=["grid", "stride", "across-branches"])
def test_a_skip_hint_lists_only_the_layers_on_its_way(branches: str, source: str, hint: str) -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(BRANCHED % (branches, source))
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic.location) == "<string>:10:5" and diagnostic.message.startswith("skip 's': cannot add ")
    assert diagnostic.hint == hint
