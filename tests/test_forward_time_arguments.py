"""Arguments torch accepts when a spec is written but refuses when the model is built, first called
or trained are located errors at spec time, at the argument's key, with a fix where one is clear.

Each case is checked against torch: resgraph refuses it exactly when torch fails (building the
module, a forward in train mode and in eval mode, a backward), and a case just inside the limit is
accepted by both. The kinds: Upsample's `align_corners` with a nearest mode, `recompute_scale_factor`
with a size, a scale that empties the output; `mean` over one dim twice or over no dim; reflect or
circular padding larger than the input; PReLU's slopes against the channels; Hardtanh's bounds;
CELU's alpha of 0; an in-place negative slope; InstanceNorm over one element.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import resgraph
from resgraph.ops import OPS, ShapeError, TensorType

# (op, arguments, per-sample input shape, the key blamed, or None where torch accepts it)
CASES: list[tuple[str, dict[str, Any], tuple[int, ...], str | None]] = [
    ("Upsample", {"scale_factor": 2, "mode": "nearest", "align_corners": False}, (3, 4, 4), "align_corners"),
    ("Upsample", {"scale_factor": 2, "mode": "nearest-exact", "align_corners": True}, (3, 4, 4), "align_corners"),
    ("Upsample", {"scale_factor": 2, "mode": "bilinear", "align_corners": True}, (3, 4, 4), None),
    ("Upsample", {"size": 8, "recompute_scale_factor": True}, (3, 4, 4), "recompute_scale_factor"),
    ("Upsample", {"scale_factor": 2, "recompute_scale_factor": True}, (3, 4, 4), None),
    ("Upsample", {"scale_factor": 0.2}, (3, 4, 4), "scale_factor"),
    ("Upsample", {"scale_factor": 0.25}, (3, 4, 4), None),
    ("mean", {"dim": [1, 1]}, (3, 4), "dim"),
    ("mean", {"dim": [2, -1]}, (3, 4), "dim"),
    ("mean", {"dim": [1, -3]}, (3, 4, 5), "dim"),
    ("mean", {"dim": [1, -1]}, (3, 4, 5), None),
    ("Conv2d", {"out_channels": 2, "kernel_size": 3, "padding": 4, "padding_mode": "reflect"}, (3, 4, 9), "padding"),
    ("Conv2d", {"out_channels": 2, "kernel_size": 3, "padding": 3, "padding_mode": "reflect"}, (3, 4, 9), None),
    ("Conv2d", {"out_channels": 2, "kernel_size": 3, "padding": [1, 5], "padding_mode": "circular"}, (3, 4, 4),
     "padding"),
    ("Conv2d", {"out_channels": 2, "kernel_size": 3, "padding": [1, 4], "padding_mode": "circular"}, (3, 4, 4), None),
    ("Conv1d", {"out_channels": 2, "kernel_size": 9, "padding": "same", "padding_mode": "reflect"}, (3, 4), "padding"),
    ("Conv1d", {"out_channels": 2, "kernel_size": 7, "padding": "same", "padding_mode": "reflect"}, (3, 4), None),
    ("Conv1d", {"out_channels": 2, "kernel_size": 8, "padding": "same", "padding_mode": "reflect"}, (3, 4), "padding"),
    ("Conv3d", {"out_channels": 2, "kernel_size": 3, "padding": 3, "padding_mode": "circular"}, (3, 2, 5, 5),
     "padding"),
    ("Conv3d", {"out_channels": 2, "kernel_size": 3, "padding": 9, "padding_mode": "replicate"}, (3, 2, 5, 5), None),
    ("PReLU", {"num_parameters": 2}, (3, 4, 4), "num_parameters"),
    ("PReLU", {"num_parameters": 3}, (3, 4, 4), None),
    ("PReLU", {"num_parameters": 4}, (5, 4), "num_parameters"),
    ("Hardtanh", {"min_val": 1.0, "max_val": -1.0}, (4,), "max_val"),
    ("Hardtanh", {"min_val": 1.0}, (4,), "min_val"),  # max_val's default is 1.0
    ("Hardtanh", {"min_val": 0.0, "max_val": 0.5}, (4,), None),
    ("CELU", {"alpha": 0.0}, (4,), "alpha"),
    ("CELU", {"alpha": -0.5}, (4,), None),
    ("CELU", {"alpha": -0.5, "inplace": True}, (4,), "inplace"),
    ("ELU", {"alpha": -1.0, "inplace": True}, (4,), "inplace"),
    ("LeakyReLU", {"negative_slope": -0.1, "inplace": True}, (4,), "inplace"),
    ("LeakyReLU", {"negative_slope": 0.0, "inplace": True}, (4,), None),
    ("InstanceNorm2d", {}, (3, 1, 1), "op"),
    ("InstanceNorm1d", {}, (3, 1), "op"),
    ("InstanceNorm1d", {}, (3, 2), None),
]


def _torch_fails(op: str, args: dict[str, Any], shape: tuple[int, ...]) -> bool:
    """Whether torch refuses the op: building it, a forward in train and in eval mode, or a backward."""
    layer = OPS[op].model_validate({"op": op, **args})
    x = torch.randn(2, *shape)
    try:
        if layer.code_only:
            out = eval(layer.code(["x"], "owner"), {"torch": torch, "x": x})  # test-only: generated code
            return False
        module = layer.build(layer.module_args([TensorType(shape)]))
        for training in (True, False):
            module.train(training)
            leaf = x.clone().requires_grad_()
            out = module(leaf * 1)
            out.sum().backward()
    except (RuntimeError, ValueError, AssertionError, ZeroDivisionError):
        return True
    return False


@pytest.mark.parametrize(("op", "args", "shape", "key"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_resgraph_refuses_exactly_what_torch_refuses(op: str, args: dict[str, Any], shape: tuple[int, ...],
                                                     key: str | None) -> None:
    assert _torch_fails(op, args, shape) is (key is not None)
    layer = OPS[op].model_validate({"op": op, **args})
    try:
        layer.check_static()
        layer.output_type([TensorType(shape)])
    except ShapeError as exc:
        assert key is not None, f"refused what torch accepts: {exc}"
        assert getattr(exc, "field", "op") == key
    else:
        assert key is None, "accepted what torch refuses"


def _diagnostic(layers: str, shape: str = "[3, 8, 8]") -> resgraph.Diagnostic:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(f"resgraph: 1\nname: Net\ninputs:\n  x: {shape}\nlayers:\n{layers}", file="spec.yaml")
    (diagnostic,) = caught.value.diagnostics
    return diagnostic


def test_errors_are_at_the_argument_with_a_fix() -> None:
    diagnostic = _diagnostic("  - up: {op: Upsample, scale_factor: 2, align_corners: false}\n")
    assert str(diagnostic.location) == "spec.yaml:6:41" and "mode='nearest'" in diagnostic.message
    assert diagnostic.hint is not None and "remove `align_corners`" in diagnostic.hint
    diagnostic = _diagnostic("  - m: {op: mean, dim: [1, -3]}\n")
    assert str(diagnostic.location) == "spec.yaml:6:19"
    assert diagnostic.message == ("layer 'm' (mean): dim=[1, -3] names dim 1 more than once (-3 and 1 are the same dim "
                                  "of a 4-dim tensor, batch included); torch refuses a repeated dim")
    diagnostic = _diagnostic("  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 8, "
                             "padding_mode: reflect}\n")
    assert str(diagnostic.location) == "spec.yaml:6:54" and "`padding_mode: replicate`" in (diagnostic.hint or "")


def test_a_mean_over_no_dim_would_drop_the_batch() -> None:
    diagnostic = _diagnostic("  - m: {op: mean, dim: []}\n")
    assert "the batch too" in diagnostic.message and diagnostic.hint == "e.g. `dim: [1, 2, 3]` for every per-sample dim"
    x = torch.randn(2, 3, 8, 8)
    assert x.mean(dim=()).shape == ()  # what torch would have done: one number for the whole batch


def test_a_reflect_padding_limit_follows_a_free_input_size() -> None:
    text = ("resgraph: 1\nname: Net\ninputs:\n  x: [3, 8, 8]\nlayers:\n"
            "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 4, padding_mode: reflect}\n")
    height = resgraph.valid_sizes(text, low=1, high=12).of("x")[1]
    assert height.valid == tuple(range(5, 13)) and height.failures == {1: "c", 2: "c", 3: "c", 4: "c"}
    reference = torch.nn.Conv2d(3, 4, 3, padding=4, padding_mode="reflect")
    assert reference(torch.randn(1, 3, 5, 5)).shape == (1, 4, 11, 11)  # 5 > 4: torch reflects it
    with pytest.raises(RuntimeError, match="Padding size should be less than"):
        reference(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="H >= 5"):  # the built model's input guard says so first
        resgraph.build(text)(torch.randn(1, 3, 4, 4))
