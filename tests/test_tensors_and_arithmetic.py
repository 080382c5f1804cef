"""Arithmetic code ops, constant buffers, learned tensors with a declared shape, init and trainability,
weight tying, and YAML numbers: each compared with the torch computation it stands for."""

from __future__ import annotations

import copy
import math
import pathlib
import pickle
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resgraph
from conftest import ROOT, check_golden
from resgraph.cli import _overrides
from resgraph.loader import load_text

HEAD = "resgraph: 1\nname: T\n"


# --- arithmetic ----------------------------------------------------------------------------------

def test_layer_norm_written_with_arithmetic_equals_torchs() -> None:
    spec = HEAD + """params: {eps: 1e-5}
inputs:
  x: [5, 16]
layers:
  - mean: {op: mean, dim: -1, keepdim: true, input: x}
  - centred: {op: sub, input: [x, mean]}
  - squared: {op: pow, exponent: 2}
  - variance: {op: mean, dim: -1, keepdim: true}
  - shifted: {op: add, scalar: "${eps}"}
  - inverse: {op: rsqrt}
  - normed: {op: mul, input: [centred, inverse]}
"""
    model = resgraph.build(spec)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(model(x), F.layer_norm(x, (16,), eps=1e-5))
    assert "shifted = variance + 1e-05" in model.code and "centred = x - mean" in model.code
    assert 'shifted [label="shifted\nadd 1e-05\n(5, 1)"' in resgraph.render(spec).source  # its scalar shown


def test_elementwise_functions_clamp_div_and_neg_follow_torch() -> None:
    spec = HEAD + """inputs:
  x: [4, 6]
layers:
  - e: {op: exp, input: x}
  - one_plus: {op: add, scalar: 1}
  - softplus: {op: log}
  - clamped: {op: clamp, min: -1, max: 0.5, input: x}
  - half: {op: div, scalar: 2}
  - negated: {op: neg}
  - root: {op: sqrt, input: e}
  - ratio: {op: div, input: [negated, root]}
  - waves: {op: sin, input: ratio}
  - cosines: {op: cos, input: ratio}
  - total: {op: add, input: [waves, cosines]}
  - out: {op: sub, input: [total, softplus]}
"""
    model = resgraph.build(spec.replace("  - half:", "  - halved:"))
    x = torch.randn(3, 4, 6)
    ratio = -(x.clamp(-1, 0.5) / 2) / x.exp().sqrt()
    torch.testing.assert_close(model(x), ratio.sin() + ratio.cos() - F.softplus(x))


def test_binary_ops_broadcast_per_sample_and_gates_keep_their_layout_rule() -> None:
    spec = HEAD + "inputs:\n  x: [4, 8, 8]\n  g: [4, 1, 1]\nlayers:\n  - d: {op: div, input: [x, g]}\n"
    model = resgraph.build(spec)
    x, g = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 1, 1) + 0.5
    torch.testing.assert_close(model(x, g), x / g)
    with pytest.raises(resgraph.SpecError, match=r"sub needs broadcastable shapes, got \(4, 8, 8\), \(8,\) "
                                                 r"\(per-sample shapes need one rank"):
        resgraph.check(HEAD + "inputs:\n  x: [4, 8, 8]\n  b: [8]\nlayers:\n  - d: {op: sub, input: [x, b]}\n")


@pytest.mark.parametrize(("x", "y"), [
    ([4, 8, 8], [4, 1, 1]),  # a per-channel bias added to a map
    ([1, 16], [6, 16]),  # the first input broadcasts into the second
    ([6, 1], [1, 16]),  # both do: an outer sum
    ([3, 5, 2], [3, 5, 2]),
])
def test_add_layers_broadcast_as_torch_does(x: list[int], y: list[int]) -> None:
    """`{op: add, input: [a, b]}` is `a + b`: it broadcasts as sub and mul do (a skip's add does not:
    its source is projected to the target's shape, see the projection tests)."""
    spec = HEAD + f"inputs:\n  x: {x}\n  y: {y}\nlayers:\n  - s: {{op: add, input: [x, y]}}\n" \
                  "  - t: {op: add, input: [s, x, y]}\n"
    model = resgraph.build(spec)
    a, b = torch.randn(2, *x), torch.randn(2, *y)
    torch.testing.assert_close(model(a, b), (a + b) + a + b)
    assert resgraph.check(spec).nodes["t"].meta["type"].shape == (a + b).shape[1:]


def test_add_layers_refuse_what_torch_refuses_and_misaligned_layouts() -> None:
    with pytest.raises(resgraph.SpecError, match=r"^<string>:7:5: error: layer 's' \(add\): add needs broadcastable "
                                                 r"shapes, got \(8, 16\), \(8, 5\)$"):
        resgraph.check(HEAD + "inputs:\n  x: [8, 16]\n  y: [8, 5]\nlayers:\n  - s: {op: add, input: [x, y]}\n")
    with pytest.raises(resgraph.SpecError, match=r"add needs broadcastable shapes, got \(4, 8, 8\), \(8,\) "
                                                 r"\(per-sample shapes need one rank"):
        resgraph.check(HEAD + "inputs:\n  x: [4, 8, 8]\n  b: [8]\nlayers:\n  - d: {op: add, input: [x, b]}\n")
    # a features-last (1, 1, 4) added to a channels-first (4, 4, 4) map would add along its width
    with pytest.raises(resgraph.SpecError, match=r"features-last but the target \(4, 4, 4\) is channels-first"):
        resgraph.check(HEAD + "inputs:\n  x: [4, 4, 4]\nlayers:\n  - pool: {op: AdaptiveAvgPool2d, output_size: 1}\n"
                              "  - last: {op: permute, dims: [0, 2, 3, 1]}\n  - fc: {op: Linear, out_features: 4}\n"
                              "  - c: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}\n"
                              "  - s: {op: add, input: [c, fc]}\n")


def test_a_misaligned_add_names_its_operand_not_a_gate() -> None:
    """The layout rule is the gate's (mul); an add or a sub reads it of its operand."""
    for op in ("add", "sub"):
        with pytest.raises(resgraph.SpecError) as caught:
            resgraph.check(HEAD + "inputs:\n  x: [4, 4, 4]\nlayers:\n"
                                  "  - pool: {op: AdaptiveAvgPool2d, output_size: 1}\n"
                                  "  - last: {op: permute, dims: [0, 2, 3, 1]}\n  - fc: {op: Linear, out_features: 4}\n"
                                  "  - c: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}\n"
                                  f"  - s: {{op: {op}, input: [c, fc]}}\n")
        assert f"layer 's' ({op}): the operand (1, 1, 4) is features-last but the target (4, 4, 4) is " \
            "channels-first" in str(caught.value)


def test_add_layers_broadcast_symbolic_sizes_without_pinning_them() -> None:
    """x's sequence L stays free (any L, as torch broadcasts a (1, 16) into it); b's 1 broadcasts, and b may
    have x's L too (`b.L in (1, x.L)`: 1 or 5 at x's declared 5)."""
    spec = HEAD + ("inputs:\n  x: {shape: [5, 16], layout: features_last}\n"
                   "  b: {shape: [1, 16], layout: features_last}\nlayers:\n  - s: {op: add, input: [x, b]}\n")
    model = resgraph.build(spec)
    for length in (1, 3, 7, 64):
        a, b = torch.randn(2, length, 16), torch.randn(2, 1, 16)
        torch.testing.assert_close(model(a, b), a + b)
    x_length, b_length = (d for d in resgraph.valid_sizes(spec, low=1, high=64).dims if d.name == "L")
    assert x_length.valid == tuple(range(1, 65)) and b_length.valid == (1, 5)
    torch.testing.assert_close(model(a, a), a + a)  # (b as long as x: no broadcast)


def test_matmul_is_batch_aware_and_checks_inner_sizes() -> None:
    spec = HEAD + "inputs:\n  a: [2, 3, 4]\n  b: [1, 4, 5]\nlayers:\n  - p: {op: matmul, input: [a, b]}\n"
    model = resgraph.build(spec)
    a, b = torch.randn(6, 2, 3, 4), torch.randn(6, 1, 4, 5)
    torch.testing.assert_close(model(a, b), torch.matmul(a, b))
    assert resgraph.check(spec).nodes["p"].meta["type"].shape == (2, 3, 5)
    with pytest.raises(resgraph.SpecError, match=r"the inner sizes differ \(4 vs 3\)"):
        resgraph.check(spec.replace("b: [1, 4, 5]", "b: [1, 3, 5]"))
    with pytest.raises(resgraph.SpecError, match="matmul needs per-sample matrices"):
        resgraph.check(spec.replace("b: [1, 4, 5]", "b: [4, 5]"))


def test_integer_arithmetic_promotes_as_torch_does() -> None:
    spec = HEAD + ("inputs:\n  ids: {shape: [5], dtype: int64}\nlayers:\n  - twice: {op: mul, scalar: 2}\n"
                   "  - halves: {op: div, scalar: 2}\n  - roots: {op: sqrt, input: ids}\n")
    graph = resgraph.check(spec)
    assert [graph.nodes[n].meta["type"].dtype for n in ("twice", "halves", "roots")] == ["int64", "float32", "float32"]


# --- constants and learned tensors ---------------------------------------------------------------

CONSTANTS = HEAD + """inputs:
  x: [3, 4]
layers:
  - ids: {op: arange, stop: 3}
  - grid: {op: constant, value: [[0.5, 1.5, 2.5, 3.5], [0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4]], persistent: true}
  - ones: {op: full, shape: [1, 3, 4], value: 1.0, batch: true}
  - shifted: {op: add, input: [x, grid]}
  - out: {op: add, input: [shifted, ones]}
"""


def test_constants_are_buffers_broadcast_over_the_batch_and_not_parameters() -> None:
    model = resgraph.build(CONSTANTS)
    assert not list(model.parameters())
    assert {name: tuple(b.shape) for name, b in model.named_buffers()} == {"ids": (3,), "grid": (3, 4),
                                                                             "ones": (1, 3, 4)}
    assert list(model.state_dict()) == ["grid"]  # persistent: true is saved; derived constants are not
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(model(x), x + model.grid + 1)
    assert model.ids.dtype == torch.int64 and model.ids.tolist() == [0, 1, 2]
    summary = resgraph.summary(model)
    row = {r.name: r for r in summary.rows}
    assert summary.total_params == 0 and row["grid"].params == 0 and "[buffer]" in row["grid"].op
    assert "[buffer, not saved]" in row["ones"].op and summary.buffer_bytes == 3 * 8 + 2 * 12 * 4
    double = model.double()
    assert double.grid.dtype == torch.float64 and double.ids.dtype == torch.int64  # buffers move with the model
    dot = resgraph.render(CONSTANTS).source
    assert 'grid [label="grid\nconstant\n(3, 4)\nbuffer"' in dot and 'fillcolor="#e9eef5"' in dot
    assert 'shifted [label="shifted\nadd\n(3, 4)"' in dot


def test_arange_with_an_input_counts_its_positions_at_run_time() -> None:
    spec = HEAD + ("inputs:\n  tokens: {shape: [8], dtype: int64}\nlayers:\n"
                   "  - positions: {op: arange, input: tokens, dim: 1, start: 2, step: 3}\n")
    model = resgraph.build(spec)
    assert list(model.buffers()) == []
    out = model(torch.zeros(2, 11, dtype=torch.int64))  # the sequence length is free
    assert out.tolist() == [list(range(2, 2 + 3 * 11, 3))] * 2


@pytest.mark.parametrize(("layer", "message"), [
    ("{op: constant, value: [[1, 2], [3]]}", "the rows have different shapes"),
    ("{op: constant, value: [1, 2, 3], shape: [2, 2]}", "value has shape [3], but the tensor's shape is [2, 2]"),
    ("{op: constant, value: [0.5], dtype: int64}", "value holds fractions, but dtype is int64"),
    ("{op: full, shape: [2], value: 3, dtype: bool}", "numbers other than 0 and 1"),
    ("{op: arange, start: 1}", "arange needs `stop`"),
    ("{op: arange, stop: 4, dim: 1}", "dim counts the positions of an input"),
    ("{op: arange, stop: 0, start: 3}", "arange from 3 to 0 by 1 is empty"),
    ("{op: parameter, shape: [2, 8], batch: true}",
     "batch: true says the shape [2, 8] starts with a batch dim of size 1"),
    ("{op: parameter, shape: [4, 1, 1], init: [1, 2, 3]}", "init has shape [3], but the tensor's shape is [4, 1, 1]"),
    ("{op: clamp}", "clamp needs `min`, `max` or both"),
    ("{op: div, scalar: 0}", "dividing by 0"),
    ("{op: sub, scalar: 1, input: [x, x]}", "takes 1 input(s), got 2"),
])
def test_tensor_literal_and_argument_mistakes_are_located_errors(layer: str, message: str) -> None:
    spec = HEAD + f"inputs:\n  x: [3, 4]\nlayers:\n  - bad: {layer}\n"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    assert message in str(caught.value)
    assert all(d.location.line == 6 for d in caught.value.diagnostics)


def test_learned_tensors_have_their_declared_shape_init_and_trainability() -> None:
    spec = HEAD + """inputs:
  x: [4, 3, 3]
layers:
  - gamma: {op: parameter, shape: [4, 1, 1], init: 1.0e-6}
  - scaled: {op: mul, input: [x, gamma]}
  - weights: {op: parameter, shape: [1, 4, 1, 1], init: [0, 1, 2, 3], trainable: false, batch: true}
  - out: {op: mul, input: [scaled, weights]}
"""
    model = resgraph.build(spec)
    assert model.gamma.shape == (4, 1, 1) and bool((model.gamma == 1e-6).all())  # ConvNeXt's layer scale
    assert model.weights.shape == (1, 4, 1, 1) and model.weights.flatten().tolist() == [0, 1, 2, 3]
    assert model.gamma.requires_grad and not model.weights.requires_grad  # a frozen parameter (YOLOv8's DFL)
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(model(x), x * 1e-6 * torch.arange(4.0).reshape(1, 4, 1, 1))
    summary = resgraph.summary(model)
    assert (summary.total_params, summary.trainable_params) == (8, 4)
    assert list(model.state_dict()) == ["gamma", "weights"]


def _features_last_scores(heads: int, length: int, keys: int) -> str:
    """Inputs q (H, L, E) and k (H, S, E), features-last as an attention's are, and their scores (H, L, S)."""
    return HEAD + (f"inputs:\n  q: {{shape: [{heads}, {length}, 8], layout: features_last}}\n"
                   f"  k: {{shape: [{heads}, {keys}, 8], layout: features_last}}\nlayers:\n"
                   "  - kt: {op: transpose, dim0: 2, dim1: 3, input: k}\n"
                   "  - scores: {op: matmul, input: [q, kt]}\n")


@pytest.mark.parametrize(("heads", "length", "keys"), [(4, 16, 16), (2, 7, 5), (3, 1, 9)])
@pytest.mark.parametrize(("stored", "stored_shape"), [
    ("{op: parameter, shape: [HEADS, 1, 1], init: normal, std: 1.0, layout: features_last}", "H11"),
    ("{op: parameter, shape: [1, HEADS, 1, 1], init: normal, std: 1.0, batch: true, layout: features_last}", "1H11"),
    ("{op: parameter, shape: [1, 1, KEYS], init: normal, std: 1.0, layout: features_last}", "11S"),
    ("{op: parameter, shape: [1, LENGTH, 1], init: normal, std: 1.0, layout: features_last}", "1L1"),
    ("{op: full, shape: [HEADS, 1, 1], value: 0.25, layout: features_last}", "H11"),
    ("{op: constant, value: VALUES, layout: features_last}", "H11"),
])
@pytest.mark.parametrize("op", ["mul", "add", "sub", "div"])
def test_a_stored_tensor_declares_its_layout_and_broadcasts_into_attention_scores(
        heads: int, length: int, keys: int, stored: str, stored_shape: str, op: str) -> None:
    """A per-head (H, 1, 1) scale of features-last (H, L, S) scores (Swin V2's logit_scale), a per-key or
    per-query one: a parameter or a buffer with `layout: features_last` broadcasts as torch does."""
    values = [[[1.5 * h - 1.0]] for h in range(heads)]  # (H, 1, 1): one per head
    stored = stored.replace("HEADS", str(heads)).replace("LENGTH", str(length)).replace("KEYS", str(keys)) \
        .replace("VALUES", str(values))
    spec = _features_last_scores(heads, length, keys) + f"  - scale: {stored}\n" \
                                                        f"  - out: {{op: {op}, input: [scores, scale]}}\n"
    model = resgraph.build(spec, seed=0)
    q, k = torch.randn(3, heads, length, 8), torch.randn(3, heads, keys, 8)
    scale = model.scale.reshape({"H11": (heads, 1, 1), "1H11": (heads, 1, 1), "11S": (1, 1, keys),
                                 "1L1": (1, length, 1)}[stored_shape])
    function = {"mul": torch.mul, "add": torch.add, "sub": torch.sub, "div": torch.div}[op]
    expected = function(q @ k.transpose(2, 3), scale)
    torch.testing.assert_close(model(q, k), expected)
    graph = resgraph.check(spec)
    assert graph.nodes["scale"].meta["type"].layout == "features_last"
    assert graph.nodes["out"].meta["type"].shape == (heads, length, keys)
    assert "layout=features_last" in str(resgraph.summary(model))  # shown as written


def test_a_stored_tensor_without_a_layout_is_refused_with_the_key_that_declares_it() -> None:
    """Its layout is read from its rank (3 dims: channels-first), which is not the scores': the error
    names both layouts, at the layer, and the hint the `layout` key on the stored tensor."""
    spec = _features_last_scores(4, 16, 16) + ("  - logit_scale: {op: parameter, shape: [4, 1, 1]}\n"
                                               "  - scaled: {op: mul, input: [scores, logit_scale]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (problem,) = caught.value.diagnostics
    assert (problem.location.line, problem.location.column) == (10, 5)
    assert problem.message == ("layer 'scaled' (mul): the gate (4, 1, 1) is channels-first but the target (4, 16, 16) "
                               "is features-last: broadcasting would pair its channels with the target's first dim")
    assert problem.hint == ("'logit_scale' is a stored tensor, whose layout is read from its rank (3 dims: "
                            "channels-first): if its dims pair with those of 'scores' (4, 16, 16) as torch broadcasts "
                            "them (a per-head scale of attention scores), write `layout: features_last` on it")
    # the stored tensor first (the target) is told the same; so is a skip that gates with it
    swapped = spec.replace("input: [scores, logit_scale]", "input: [logit_scale, scores]")
    with pytest.raises(resgraph.SpecError, match=r"(?s)'logit_scale' is a stored tensor.*`layout: features_last`"):
        resgraph.check(swapped)
    skip = _features_last_scores(4, 16, 16).replace("  - kt:", "  - logit_scale: {op: parameter, shape: [4, 1, 1]}\n"
                                                               "  - kt:") \
        + "skips:\n  - scaled: {from: logit_scale, to: scores, merge: mul}\n"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(skip)
    (problem,) = caught.value.diagnostics
    assert "skip 'scaled': cannot mul 'logit_scale' (4, 1, 1) into 'scores' (4, 16, 16)" in problem.message
    assert problem.hint is not None and "write `layout: features_last` on it" in problem.hint
    fixed = skip.replace("shape: [4, 1, 1]}", "shape: [4, 1, 1], layout: features_last}")
    model = resgraph.build(fixed, seed=0)
    q, k = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8)
    torch.testing.assert_close(model(q, k), q @ k.transpose(2, 3) * model.logit_scale)


def test_a_declared_layout_is_still_held_to_the_layout_rule() -> None:
    """A features-last (1, 1, C) tensor into a channels-first (C, H, W) map would scale its width: refused,
    declared or not, the hint asking whether torch's pairing was meant; without a layout key, the hint
    offers the shape that puts its C values on the channels, and no layout key where that would pair them
    with the width."""
    spec = HEAD + ("inputs:\n  x: [6, 6, 6]\nlayers:\n"
                   "  - gamma: {op: parameter, shape: [1, 1, 6], layout: features_last}\n"
                   "  - out: {op: mul, input: [x, gamma]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (problem,) = caught.value.diagnostics
    # (declared: the hint asks whether torch's pairing is what was meant; here it would scale the width)
    assert problem.location.line == 7 and problem.hint == (
        "'gamma' declares `layout: features_last`, but 'x' (6, 6, 6) is channels-first: if its dims pair with those "
        "of 'x' as torch broadcasts them, write `layout: channels_first` on 'gamma'")
    assert "the gate (1, 1, 6) is features-last but the target (6, 6, 6) is channels-first" in problem.message
    channels_last = HEAD + ("inputs:\n  x: [8, 6, 6]\nlayers:\n  - last: {op: permute, dims: [0, 2, 3, 1]}\n"
                            "  - gamma: {op: full, shape: [8, 1, 1], value: 0.5}\n"
                            "  - out: {op: mul, input: [last, gamma]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(channels_last)
    # (a shape of 3 dims is read as channels-first: the features-last layout is declared with it)
    assert caught.value.diagnostics[0].hint == ("'gamma' is a stored tensor, whose layout is read from its rank (3 "
                                                "dims: channels-first): if its 8 values are one per feature of "
                                                "'last', write `shape: [1, 1, 8]` and `layout: features_last`")
    resgraph.check(channels_last.replace("shape: [8, 1, 1]", "shape: [1, 1, 8], layout: features_last"))


@pytest.mark.parametrize(("layer", "message"), [
    ("{op: parameter, shape: [4, 1, 1], layout: rows}", "layout"),
    ("{op: arange, stop: 4, layout: features_last}", "layout"),
])
def test_a_stored_layout_takes_the_two_layouts_and_only_where_a_tensor_is_declared(layer: str, message: str) -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(HEAD + f"inputs:\n  x: [3, 4]\nlayers:\n  - bad: {layer}\n")
    assert message in str(caught.value) and caught.value.diagnostics[0].location.line == 6



SQUEEZE_EXCITE_1D = HEAD + """inputs:
  x: [4, 10]
layers:
  - conv: {op: Conv1d, out_channels: 4, kernel_size: 3, padding: 1}
  - squeezed: {op: mean, dim: -1}
  - excite: {op: Linear, out_features: 4}
  - gate: {op: Sigmoid}
  - per_channel: {op: reshape, shape: [4, 1], input: gate}
  - scaled: {op: mul, input: [conv, per_channel]}
"""


def test_a_reshape_declares_its_layout_as_a_stored_tensor_does() -> None:
    # A 1-d squeeze-and-excite gate, (C,) reshaped to (C, 1) against a (C, L) map: 2 dims are read as
    # features-last, and without a `layout` key on the reshape the spec had no way to say it is per channel.
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(SQUEEZE_EXCITE_1D)
    assert caught.value.diagnostics[0].hint == (
        "'per_channel' is a reshape, whose layout is read from its rank (2 dims: features-last): if its dims pair "
        "with those of 'conv' (4, 10) as torch broadcasts them, write `layout: channels_first` on it")
    fixed = SQUEEZE_EXCITE_1D.replace("shape: [4, 1], input", "shape: [4, 1], layout: channels_first, input")
    model = resgraph.build(fixed, seed=0)
    x = torch.randn(2, 4, 10)
    conv = model.conv(x)
    expected = conv * torch.sigmoid(model.excite(conv.mean(-1))).reshape(2, 4, 1)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert model.graph.nodes["per_channel"].meta["type"].layout == "channels_first"


@pytest.mark.parametrize(("target", "stored", "reshaped", "then"), [
    ("[4, 10]", "[10]", "(10,) to (1, 10)", "[1, 10]"),  # (torch's alignment, where it fits)
    ("[4, 10]", "[4]", "(4,) to (4, 1)", "[4, 1]"),  # (one value per position of a features-last sequence)
    ("{shape: [4, 10], layout: channels_first}", "[4]", "(4,) to (4, 1) with `layout: channels_first`",
     "[4, 1], layout: channels_first"),
    ("[4, 6, 6]", "[4]", "(4,) to (4, 1, 1)", "[4, 1, 1]"),
    ("[4, 6, 8]", "[4, 6]", "(4, 6) to (4, 6, 1)", "[4, 6, 1]"),
    ("[4, 6, 8]", "[6]", "(6,) to (1, 6, 1)", "[1, 6, 1]"),
    ("{shape: [4, 6, 8], layout: features_last}", "[4]", "(4,) to (4, 1, 1) with `layout: features_last`",
     "[4, 1, 1], layout: features_last"),
])
def test_the_reshape_a_lower_rank_operand_is_told_lines_it_up_as_its_target_lays_its_dims_out(
        target: str, stored: str, reshaped: str, then: str) -> None:
    # Against a channels-first map, a (C,) tensor's values are one per channel: (C, 1), not (1, C),
    # which would broadcast along the map's length.
    spec = HEAD + (f"inputs:\n  x: {target}\nlayers:\n  - b: {{op: parameter, shape: {stored}, init: ones}}\n"
                   "  - a: {op: add, input: [x, b]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    assert str(caught.value).endswith(f"; reshape {reshaped})")
    resgraph.check(spec.replace(f"shape: {stored}, init", f"shape: {then}, init"))  # followed literally, it fits


# --- weight tying --------------------------------------------------------------------------------

TIED = HEAD + """inputs:
  tokens: {shape: [5], dtype: int64}
blocks:
  head:
    layers:
      - norm: {op: LayerNorm}
      - proj: {op: Linear, out_features: 11, bias: false, tie: {weight: wte.weight}}
layers:
  - wte: {op: Embedding, num_embeddings: 11, embedding_dim: 8}
  - hidden: {op: Linear, out_features: 8}
  - lm_head: {op: Linear, out_features: 11, bias: false, tie: {weight: wte.weight}}
  - second: {block: head, input: hidden}
outputs: [lm_head, second]
"""


def test_a_tied_parameter_is_one_tensor_counted_once() -> None:
    model = resgraph.build(TIED, seed=0)
    assert model.lm_head.weight is model.wte.weight and model.second.proj.weight is model.wte.weight
    unique = sum(p.numel() for p in model.parameters())
    assert unique == 11 * 8 + (8 * 8 + 8) + 2 * 8 == resgraph.count_parameters(TIED)
    summary = resgraph.summary(model)
    rows = {row.name: row for row in summary.rows}
    assert summary.total_params == unique and rows["lm_head"].params == 0 and rows["second"].params == 16
    assert rows["lm_head"].tied_to == {"weight": "wte.weight"} and "[weight tied to wte.weight]" in rows["lm_head"].op
    tokens = torch.randint(0, 11, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], model.hidden(model.wte(tokens)) @ model.wte.weight.T)


def test_tied_weights_round_trip_through_the_state_dict_and_the_python_export(tmp_path: pathlib.Path) -> None:
    from test_export import import_file

    model = resgraph.build(TIED, seed=0)
    state = model.state_dict()
    assert "lm_head.weight" in state and state["lm_head.weight"].data_ptr() == state["wte.weight"].data_ptr()
    fresh = resgraph.build(TIED, seed=1)
    fresh.load_state_dict(state, strict=True)
    assert fresh.lm_head.weight is fresh.wte.weight and torch.equal(fresh.wte.weight, model.wte.weight)
    source = resgraph.to_python(model)
    assert "self.lm_head.weight = self.wte.weight  # tied" in source
    assert "self.second.proj.weight = self.wte.weight  # tied" in source
    path = tmp_path / "tied.py"
    path.write_text(source)
    exported = import_file(path, "tied").T()
    exported.load_state_dict(state, strict=True)
    assert exported.lm_head.weight is exported.wte.weight
    tokens = torch.randint(0, 11, (2, 5))
    with torch.no_grad():
        for a, b in zip(exported(tokens), model(tokens)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_model_built_on_meta_and_materialized_keeps_its_ties() -> None:
    on_meta = resgraph.build(TIED, device="meta")
    resgraph.materialize(on_meta, seed=3)
    built = resgraph.build(TIED, seed=3)
    assert on_meta.lm_head.weight is on_meta.wte.weight
    for (name, a), (_, b) in zip(on_meta.state_dict().items(), built.state_dict().items()):
        assert torch.equal(a, b), name


CHAIN = {"a": "  - a: {op: Linear, out_features: 4, bias: false}\n",
         "b": "  - b: {op: Linear, out_features: 4, bias: false, tie: {weight: a.weight}}\n",
         "c": "  - c: {op: Linear, out_features: 4, bias: false, tie: {weight: b.weight}}\n"}


@pytest.mark.parametrize("order", ["abc", "cab", "bca", "cba"])
def test_a_chain_of_ties_shares_one_tensor_whatever_the_order_of_its_layers(order: str, tmp_path: pathlib.Path) -> None:
    from test_export import import_file

    spec = HEAD + "inputs:\n  x: [4]\nlayers:\n" + "".join(CHAIN[name] for name in order) + "outputs: [a, b, c]\n"
    model = resgraph.build(spec, seed=0)
    assert model.c.weight is model.a.weight and model.b.weight is model.a.weight
    assert sum(p.numel() for p in model.parameters()) == 16 == resgraph.count_parameters(spec)
    assert resgraph.summary(model).total_params == 16
    on_meta = resgraph.materialize(resgraph.build(spec, device="meta"), seed=0)
    assert on_meta.c.weight is on_meta.a.weight and torch.equal(on_meta.a.weight, model.a.weight)
    resgraph.save(model, tmp_path / "chain.pt")  # (refused as "changed after the build" while c kept its own)
    path = tmp_path / "chain.py"
    path.write_text(resgraph.to_python(model))
    exported = import_file(path, "chain").T()
    exported.load_state_dict(model.state_dict(), strict=True)
    assert exported.c.weight is exported.a.weight and exported.b.weight is exported.a.weight


def test_a_tie_made_after_the_build_is_kept_by_pickle_and_refused_by_files_written_from_the_spec(
        tmp_path: pathlib.Path) -> None:
    spec = HEAD + "inputs:\n  x: [4]\nlayers:\n" + CHAIN["a"] + CHAIN["b"].replace(", tie: {weight: a.weight}", "")
    model = resgraph.build(spec, seed=0)
    model.b.weight = model.a.weight  # tied after the build
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert copied.b.weight is copied.a.weight and sum(p.numel() for p in copied.parameters()) == 16
    message = ("its parameter 'b.weight' was tied to 'a.weight' after the build, and {what} describes the model by "
               "its spec, which does not tie them. Tie them in the spec (`tie: {{weight: a.weight}}` on 'b')")
    with pytest.raises(resgraph.UsageError, match=re.escape(message.format(what="a .pt file"))):
        resgraph.save(model, tmp_path / "tied.pt")
    with pytest.raises(resgraph.UsageError, match=re.escape(message.format(what="Python source"))):
        resgraph.to_python(model)
    assert not (tmp_path / "tied.pt").exists()
    followed = resgraph.build(HEAD + "inputs:\n  x: [4]\nlayers:\n" + CHAIN["a"] + CHAIN["b"], seed=0)  # the hint
    resgraph.save(followed, tmp_path / "tied.pt")
    loaded = resgraph.load(tmp_path / "tied.pt")
    assert loaded.b.weight is loaded.a.weight


def test_the_diagram_shows_the_tie() -> None:
    source = resgraph.render(TIED).source
    assert "weight = wte.weight" in source  # in the tied layers' labels
    assert 'wte -> lm_head [label="tied wte.weight"' in source and 'wte -> "second.proj" [label="tied' in source


@pytest.mark.parametrize("case", ["tie_unknown_parameter", "tie_unknown_target", "tie_shape_mismatch"])
def test_tie_errors_are_located_at_the_tie(case: str) -> None:
    """Ties are checked when the model is built (also on meta: `resgraph build`, summaries, renders)."""
    path = f"tests/bad_builds/{case}.yaml"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(path, device="meta")
    for diagnostic in caught.value.diagnostics:
        assert diagnostic.location.file == path and diagnostic.location.line >= 1
    check_golden(ROOT / "tests" / "bad_builds" / f"{case}.expected", caught.value.format() + "\n")


# --- numbers -------------------------------------------------------------------------------------

def test_yaml_exponents_are_numbers_wherever_a_number_is_expected() -> None:
    data = load_text("a: 1e-6\nb: 3e4\nc: .5\nd: 1.5E+3\ne: -2e-3\nf: '1e-6'\ng: \"3e4\"\nh: 1.0e6\ni: [2E-1]\n").data
    assert data == {"a": 1e-6, "b": 3e4, "c": 0.5, "d": 1500.0, "e": -2e-3, "f": "1e-6", "g": "3e4", "h": 1e6,
                    "i": [0.2]}
    spec = HEAD + "params: {eps: 1e-6}\ninputs:\n  x: [4]\nlayers:\n  - norm: {op: LayerNorm, eps: 1e-5}\n"
    assert resgraph.build(spec).norm.eps == 1e-5
    assert _overrides(["eps=1e-6", "name='1e-6'", "n=3"]) == {"eps": 1e-6, "name": "1e-6", "n": 3}
    with pytest.raises(resgraph.SpecError, match="expected a number, got string '1e-6'"):
        resgraph.check(spec.replace("eps: 1e-5", "eps: '1e-6'"))


def test_set_reads_exponent_numbers_on_the_command_line(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "numbers.yaml"
    spec.write_text(HEAD + "params: {eps: 1e-6}\ninputs:\n  x: [4]\nlayers:\n"
                           "  - norm: {op: LayerNorm, eps: \"${eps}\"}\n")
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec), "--set", "eps=1e-3"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "LayerNorm(eps=0.001)" in result.stdout


def test_vit_learned_tensors_have_torchvisions_shapes() -> None:
    reference = nn.Parameter(torch.zeros(1, 1, 768))  # torchvision ViT's class_token
    model = resgraph.build("examples/vit_b_16.yaml", device="meta")
    assert model.class_token.shape == reference.shape and model.pos_embedding.shape == (1, 197, 768)


# --- integer constants as ids ---------------------------------------------------------------------

@pytest.mark.parametrize(("ids", "largest"), [("{op: arange, stop: 16}", None), ("{op: arange, stop: 17}", 16),
                                              ("{op: arange, start: 3, stop: 40, step: 4}", 39),
                                              ("{op: constant, value: [0, 15, 7], dtype: int64}", None),
                                              ("{op: constant, value: [[0, 3], [99, 1]], dtype: int64}", 99),
                                              ("{op: full, shape: [4], value: 16, dtype: int64}", 16)])
def test_constant_ids_must_lie_in_the_embedding_table_they_index(ids: str, largest: int | None) -> None:
    """torch's Embedding fails at the first forward with an IndexError on an id past its table;
    resgraph refuses such a constant when the spec is checked, at the Embedding, and builds the rest."""
    spec = HEAD + f"inputs:\n  x: [8]\nlayers:\n  - ids: {ids}\n  - table: {{op: Embedding, num_embeddings: 16, " \
                  "embedding_dim: 8}\n  - out: {op: mean, dim: 1, input: table}\n"
    if largest is not None:
        with pytest.raises(resgraph.SpecError, match=f"ids go up to {largest}, but the table has num_embeddings=16"):
            resgraph.check(spec)
        return
    model = resgraph.build(spec, seed=0)
    table = nn.Embedding(16, 8)
    table.load_state_dict(model.table.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(torch.randn(2, 8))[0], table(model.ids).mean(0))


@pytest.mark.parametrize(("op", "arguments"), [("chunk", "chunks: 2"), ("split", "split_size: [5, 3]")])
@pytest.mark.parametrize("scope", ["spec", "block"])
def test_a_chunk_or_split_that_must_name_its_input_is_told_so_at_its_own_name(op: str, arguments: str,
                                                                              scope: str) -> None:
    entry = f"- parts: {{op: {op}, {arguments}, dim: -1, outputs: [left, right]}}\n"
    if scope == "spec":
        text = HEAD + "inputs:\n  x: [3, 8]\n  y: [3, 8]\nlayers:\n  " + entry
    else:
        text = (HEAD + "inputs:\n  x: [3, 8]\n  y: [3, 8]\nblocks:\n  halves:\n    inputs: [a, b]\n    layers:\n"
                "      " + entry + "    outputs: [left, right]\nlayers:\n  - h: {block: halves, input: [x, y]}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    (diagnostic,) = caught.value.diagnostics
    before = text[:text.index("parts:")]
    assert (diagnostic.location.line, diagnostic.location.column) == (before.count("\n") + 1,
                                                                      len(before) - before.rfind("\n"))
    inputs = "x, y" if scope == "spec" else "a, b"
    name = "parts" if scope == "spec" else "h.parts"  # (a block's layer, named in its call)
    assert diagnostic.message == (f"layer {name!r}: the {scope} has several inputs ({inputs}); say which this layer "
                                  "reads")


# (each drawn tensor's bound, and a size some of its 100,000 values pass: beyond the old cuts, +-2 std and +-std)
@pytest.mark.parametrize(("init", "bound", "reached"), [("normal", math.inf, 1.5), ("trunc_normal", 2.0, 1.5),
                                                        ("uniform", math.sqrt(3) * 0.5, 0.85)])
def test_a_drawn_parameter_has_the_standard_deviation_its_std_says(init: str, bound: float, reached: float) -> None:
    """`std` is each drawn init's standard deviation: uniform's bounds were +-std (a standard deviation of
    std / sqrt(3)), and trunc_normal was cut at +-2 std (0.88 std) where torch's and timm's cut at +-2."""
    spec = (f"resgraph: 1\nname: P\ninputs: {{x: [4]}}\nlayers:\n"
            f"  - p: {{op: parameter, shape: [100000], init: {init}, std: 0.5}}\n  - s: {{op: mean, dim: 1}}\n")
    drawn = resgraph.build(spec, seed=0).p.detach()
    assert abs(drawn.std().item() - 0.5) < 0.01 and abs(drawn.mean().item()) < 0.01
    assert reached < drawn.abs().max().item() <= bound


@pytest.mark.parametrize("init", ["zeros", "ones", "1.0e-6", "[1, 2, 3, 4]"])
def test_std_with_an_init_it_does_not_apply_to_is_refused(init: str) -> None:
    spec = (f"resgraph: 1\nname: P\ninputs: {{x: [4]}}\nlayers:\n"
            f"  - p: {{op: parameter, shape: [4], init: {init}, std: 0.5}}\n")
    with pytest.raises(resgraph.SpecError, match="std applies to a drawn init"):
        resgraph.check(spec)
