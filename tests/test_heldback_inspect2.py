"""Held-back cases of inspection: the summary's numbers against torchinfo 1.8.0's.

Every torchinfo number here was computed once with `torchinfo.summary(model, input_data=...,
depth=100)` and is written as a literal (torchinfo is not a test dependency); resgraph's own are
checked by hand in the comments. Where resgraph differs on purpose, the README's "Comparing with
torchinfo" says how, and `documented_torchinfo_*` below compute torchinfo's number by that
description from resgraph's summary: they must give the literal torchinfo printed.
"""

from __future__ import annotations

import math

import torch

import resgraph
from resgraph.summarize import Row, Summary

CONV = """\
resgraph: 1
name: ConvMix
inputs:
  x: [3, 8, 8]
layers:
  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - bn: {op: BatchNorm2d}
  - relu: {op: ReLU}
  - up: {op: ConvTranspose2d, out_channels: 2, kernel_size: 2, stride: 2}
  - pool: {op: MaxPool2d, kernel_size: 2}
  - gap: {op: AdaptiveAvgPool2d, output_size: 1}
  - flat: {op: Flatten}
  - fc: {op: Linear, out_features: 5}
"""

SEQUENCE = """\
resgraph: 1
name: SeqMix
inputs:
  tokens: {shape: [6], dtype: int64}
  padding: {shape: [6], dtype: bool}
layers:
  - emb: {op: Embedding, num_embeddings: 20, embedding_dim: 8, input: tokens}
  - lstm: {op: LSTM, hidden_size: 8, output: 0}
  - attn: {op: MultiheadAttention, num_heads: 2, input: [lstm, padding], masks: [key_padding_mask]}
  - norm: {op: LayerNorm}
  - head: {op: Linear, out_features: 20}
"""

TIED = """\
resgraph: 1
name: Tied
inputs:
  tokens: {shape: [6], dtype: int64}
layers:
  - wte: {op: Embedding, num_embeddings: 50, embedding_dim: 16}
  - body: {block: layer, repeat: 3}
  - head: {op: Linear, out_features: 50, bias: false, tie: {weight: wte.weight}}
blocks:
  layer:
    layers:
      - fc: {op: Linear, out_features: 16, tie: {weight: "${None if index == 0 else 'body.0.fc.weight'}"}}
      - act: {op: GELU}
"""

FROZEN = """\
resgraph: 1
name: Frozen
inputs:
  x: [4, 8, 8]
layers:
  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}
  - gamma: {op: parameter, shape: [8, 1, 1], init: 1.0, trainable: false}
  - scaled: {op: mul, input: [conv, gamma]}
  - beta: {op: parameter, shape: [8, 1, 1], init: zeros}
  - shifted: {op: add, input: [scaled, beta]}
  - bn: {op: BatchNorm2d}
  - halves: {op: full, shape: [8, 8, 8], value: 0.5}
  - kept: {op: constant, value: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], shape: [8, 1, 1], persistent: true}
  - m1: {op: mul, input: [bn, halves]}
  - m2: {op: mul, input: [m1, kept]}
  - pos: {op: arange, stop: 8}
  - pool: {op: AdaptiveAvgPool2d, output_size: 1, input: m2}
  - flat: {op: Flatten}
  - fc: {op: Linear, out_features: 3}
"""

BATCH = 3  # torchinfo's numbers below are for a batch of 3


def _summary(text: str) -> tuple[torch.nn.Module, Summary]:
    model = resgraph.build(text, seed=0).eval()
    return model, resgraph.summary(model)


def _rows(summary: Summary) -> dict[str, tuple[int, int, list[int], int]]:
    """name -> (depth, params, output shape, output bytes) of every row."""
    return {r.name: (r.depth, r.params, r.shape, r.activation_bytes) for r in summary.rows}


def _leaf_layers(model: torch.nn.Module, summary: Summary) -> list[tuple[torch.nn.Module, Row]]:
    """The modules without submodules that the forward calls, each with its row."""
    modules = dict(model.named_modules())
    return [(modules[r.name], r) for r in summary.rows
            if r.kind == "layer" and r.name in modules and not any(modules[r.name].children())]


def documented_torchinfo_mult_adds(model: torch.nn.Module, summary: Summary) -> int:
    """The README's account of torchinfo's "Total mult-adds", from resgraph's rows."""
    total = 0
    for module, row in _leaf_layers(model, summary):
        out = [BATCH, *row.shape]
        for name, tensor in module.named_parameters():
            if name in ("weight", "bias"):
                positions = math.prod(out[2:]) if "Conv" in type(module).__name__ else 1
                total += tensor.numel() * BATCH * positions
            elif "weight" in name or "bias" in name:  # an RNN's weight_ih_l0, ...
                total += tensor.numel() * BATCH * out[1]
    return total


def documented_torchinfo_sizes(model: torch.nn.Module, summary: Summary) -> dict[str, int]:
    """The README's account of torchinfo's parameter count, "Params size" and "Forward/backward pass
    size", from resgraph's rows: modules without submodules, each counting every parameter it holds."""
    leaves = _leaf_layers(model, summary)
    held = [list(module.parameters()) for module, _ in leaves]
    # a module with submodules (the model, MultiheadAttention) adds its own parameters to the total only
    in_leaves = {id(p) for tensors in held for p in tensors}
    others = sum(p.numel() for p in model.parameters() if id(p) not in in_leaves)
    return {"params": sum(p.numel() for tensors in held for p in tensors) + others,
            "param_bytes": sum(p.numel() * p.element_size() for tensors in held for p in tensors),
            "forward_backward": sum(2 * BATCH * row.activation_bytes for (_, row), tensors in zip(leaves, held)
                                    if tensors)}


def test_a_convolution_stack_has_torchinfos_counts_and_shapes_and_the_documented_mult_adds() -> None:
    model, s = _summary(CONV)
    # torchinfo: Total params 169, trainable 169; rows conv 112, bn 8, up 34, fc 15; shapes as below
    assert (s.total_params, s.trainable_params) == (169, 169)
    assert _rows(s) == {
        "x": (0, 0, [3, 8, 8], 768), "conv": (0, 112, [4, 8, 8], 1024), "bn": (0, 8, [4, 8, 8], 1024),
        "relu": (0, 0, [4, 8, 8], 1024), "up": (0, 34, [2, 16, 16], 2048), "pool": (0, 0, [2, 8, 8], 512),
        "gap": (0, 0, [2, 1, 1], 8), "flat": (0, 0, [2], 8), "fc": (0, 15, [5], 20)}
    # per sample: conv 64 x 27 x 4 = 6912; up: 64 input positions x 4 x 2 x 4 = 2048 (per *input*
    # position); fc 10; bn 2 x 256, relu 256, pool 128 x 4, gap 128
    assert {r.name: r.macs for r in s.rows if r.kind == "layer"} == {
        "conv": 6912, "bn": 512, "relu": 256, "up": 2048, "pool": 512, "gap": 128, "flat": 0, "fc": 10}
    assert (s.total_macs, s.matmul_macs) == (10378, 8970)
    # torchinfo, batch 3: Total mult-adds 47,685 (conv 21,504 = 3 x (6912 + 4 x 64 bias adds); up 26,112,
    # counted per output position, 4x; bn 24; fc 45 = 3 x (10 + 5)); params size 676; fwd/bwd 24,696
    assert documented_torchinfo_mult_adds(model, s) == 47685
    assert documented_torchinfo_sizes(model, s) == {"params": 169, "param_bytes": 676, "forward_backward": 24696}
    assert (s.param_bytes, s.activation_bytes, s.input_bytes) == (676, 5668, 768)  # torchinfo input: 3 x 768 + 64


def test_a_sequence_model_with_a_mask_lstm_and_attention_has_torchinfos_counts_and_shapes() -> None:
    model, s = _summary(SEQUENCE)
    # torchinfo: Total params 1,220; rows emb 160, lstm 576, attn 288, norm 16, head 180, all (3, 6, F)
    assert (s.total_params, s.trainable_params) == (1220, 1220)
    assert _rows(s) == {
        "tokens": (0, 0, [6], 48), "padding": (0, 0, [6], 6), "emb": (0, 160, [6, 8], 192),
        "lstm": (0, 576, [6, 8], 192), "attn": (0, 288, [6, 8], 192), "norm": (0, 16, [6, 8], 192),
        "head": (0, 180, [6, 20], 480)}
    # per sample: lstm 6 x 4 x 8 x (8 + 8) = 3072; attn 4 projections 6 x 8 x 8 = 1536 + 2 x 6 x 6 x 8 = 576;
    # head 6 x 8 x 20 = 960 (every position, where torchinfo counts one); norm 5 x 48
    assert {r.name: r.macs for r in s.rows if r.kind == "layer"} == {
        "emb": 0, "lstm": 3072, "attn": 2112, "norm": 240, "head": 960}
    # torchinfo, batch 3: Total mult-adds 11,436 (lstm 10,368 = 576 x 3 x 6; MultiheadAttention 0, it has a
    # submodule; head 540 = 180 x 3); params size 3,728 (4,880 less attn's 1,152); fwd/bwd 6,336
    assert documented_torchinfo_mult_adds(model, s) == 11436
    assert documented_torchinfo_sizes(model, s) == {"params": 1220, "param_bytes": 3728, "forward_backward": 6336}
    assert s.param_bytes == 4880


def test_a_tied_parameter_is_counted_once_where_torchinfo_counts_it_in_each_holder() -> None:
    model, s = _summary(TIED)
    # sum(p.numel() for p in model.parameters()): wte 800 + fc 256 + 3 biases of 16
    assert (s.total_params, s.trainable_params, s.param_bytes) == (1104, 1104, 4416)
    assert {name: params for name, (_, params, _, _) in _rows(s).items()} == {
        "tokens": 0, "wte": 800, "body": 304, "body.0": 272, "body.0.fc": 272, "body.0.act": 0,
        "body.1": 16, "body.1.fc": 16, "body.1.act": 0, "body.2": 16, "body.2.fc": 16, "body.2.act": 0, "head": 0}
    assert [r.depth for r in s.rows if r.name.startswith("body")] == [0, 1, 2, 2, 1, 2, 2, 1, 2, 2]
    # a layer's activation memory is its output (torchinfo's output bytes, per sample); a block's, its layers'
    # outputs (torchinfo shows the block's output, 384 bytes per sample)
    assert [r.activation_bytes for r in s.rows if r.name.startswith("body")] == [2304, *[768, 384, 384] * 3]
    # torchinfo: Total params 2,416 (head 800, body.1.fc and body.2.fc 272 each; body, holding all three
    # instances, 304); params size 9,664; batch 3: Total mult-adds 7,248, fwd/bwd 16,416
    assert documented_torchinfo_sizes(model, s) == {"params": 2416, "param_bytes": 9664, "forward_backward": 16416}
    assert documented_torchinfo_mult_adds(model, s) == 7248
    assert (s.total_macs, s.matmul_macs) == (9696, 9408)  # 4 Linears on 6 positions; 3 GELUs of 96


def test_frozen_parameters_buffers_and_constants_count_as_torchinfo_counts_them() -> None:
    model, s = _summary(FROZEN)
    # torchinfo: Total params 355, Trainable params 347, Non-trainable params 8 (the frozen gamma)
    assert (s.total_params, s.trainable_params) == (355, 347)
    assert "Non-trainable params: 8" in s.table()
    rows = {r.name: r for r in s.rows}
    assert (rows["gamma"].params, rows["gamma"].trainable_params) == (8, 0)
    assert (rows["beta"].params, rows["beta"].trainable_params) == (8, 8)
    assert all(rows[name].params == 0 for name in ("halves", "kept", "pos"))  # buffers are not parameters
    # bn's running stats (2 x 32 B + 8 B), halves 2,048, kept 32, pos 64: buffers, apart
    assert (s.param_bytes, s.buffer_bytes) == (1420, 2216)
    # torchinfo's params size, 1,356, leaves out gamma and beta (held by the model, which has submodules)
    assert documented_torchinfo_sizes(model, s) == {"params": 355, "param_bytes": 1356, "forward_backward": 24648}
    assert documented_torchinfo_mult_adds(model, s) == 56961


def test_a_model_frozen_after_its_build_shows_its_trainable_counts_per_row() -> None:
    model = resgraph.build(CONV, seed=0)
    model.conv.requires_grad_(False)
    model.fc.bias.requires_grad_(False)
    s = resgraph.summary(model)
    # torchinfo: Trainable params 52, Non-trainable 117; conv (112) not trainable, fc 10 of 15
    assert (s.total_params, s.trainable_params) == (169, 52)
    assert {r.name: r.trainable_params for r in s.rows if r.params} == {"conv": 0, "bn": 8, "up": 34, "fc": 10}


def test_the_readme_describes_how_torchinfo_counts_differently() -> None:
    from conftest import ROOT

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    section = readme[readme.index("**Comparing with torchinfo.**"):readme.index("## Diagrams")]
    for claim in ("A tied parameter is counted once", "Params size (MB)", "Total mult-adds",
                  "Forward/backward pass size", "per input position", "64 bytes"):
        assert claim in section

