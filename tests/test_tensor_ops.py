"""Tensor ops in specs: named outputs, learned tensors, attention, and picking tuple elements."""

from __future__ import annotations

import pytest
import torch

import resgraph

HEAD = "resgraph: 1\nname: T\ninputs:\n  x: [8, 6]\nlayers:\n"


def test_chunk_and_split_name_their_outputs_and_read_the_same_input() -> None:
    model = resgraph.build(HEAD + "  - pre: {op: Identity}\n"
                                  "  - parts: {op: chunk, chunks: 2, outputs: [value, gate]}\n"
                                  "  - glu: {op: mul, input: [value, gate]}\n")
    x = torch.randn(3, 8, 6)
    torch.testing.assert_close(model(x), x[:, :4] * x[:, 4:])
    assert "value = pre.chunk(2, dim=1)[0]" in model.code and "gate = pre.chunk(2, dim=1)[1]" in model.code


def test_a_chunk_name_is_not_a_node() -> None:
    with pytest.raises(resgraph.SpecError, match="'parts' is a chunk with 2 outputs, not one node\n  hint: read one "
                                                 "of its outputs: a, b"):
        resgraph.check(HEAD + "  - parts: {op: chunk, chunks: 2, outputs: [a, b]}\n  - c: {op: ReLU, input: parts}\n")


def test_learned_tensors_expand_over_the_batch_and_are_parameters() -> None:
    model = resgraph.build(HEAD + "  - tokens: {op: transpose, dim0: 1, dim1: 2}\n"
                                  "  - cls: {op: parameter, shape: [1, 8], init: ones}\n"
                                  "  - seq: {op: concat, input: [cls, tokens], dim: 1}\n"
                                  "  - pos: {op: parameter, shape: [7, 8], init: normal}\n"
                                  "  - out: {op: add, input: [seq, pos]}\n"
                                  "  - first: {op: select, dim: 1, index: 0}\n")
    # stored with exactly the declared shape, broadcast over the batch in forward
    assert dict((k, tuple(v.shape)) for k, v in model.named_parameters()) == {"cls": (1, 8), "pos": (7, 8)}
    x = torch.randn(3, 8, 6)
    torch.testing.assert_close(model(x), 1 + model.pos[0].expand(3, 8))
    out = model(x)
    out.sum().backward()
    assert model.cls.grad is not None and model.pos.grad is not None


def test_self_attention_and_query_key_value() -> None:
    text = ("resgraph: 1\nname: A\ninputs:\n  q: [5, 8]\n  kv: [7, 8]\nlayers:\n"
            "  - self_attn: {op: MultiheadAttention, input: q, num_heads: 2}\n"
            "  - cross: {op: MultiheadAttention, input: [self_attn, kv, kv], num_heads: 4}\n"
            "  - pooled: {op: mean, dim: 1}\n")
    model = resgraph.build(text, seed=0).eval()
    q, kv = torch.randn(2, 5, 8), torch.randn(2, 7, 8)
    with torch.no_grad():
        expected_self = model.self_attn(q, q, q, need_weights=False)[0]
        expected = model.cross(expected_self, kv, kv, need_weights=False)[0].mean(dim=1)
        torch.testing.assert_close(model(q, kv), expected)
    assert model.self_attn.batch_first and model.self_attn.embed_dim == 8


def test_tuple_results_of_torch_layers_are_picked_with_output() -> None:
    text = HEAD.replace("x: [8, 6]", "x: [5, 4]") + ("  - lstm: {op: LSTM, input_size: 4, hidden_size: 3, "
                                                     "batch_first: true, output: 0}\n  - last: {op: select, dim: 1, "
                                                     "index: -1}\n")
    model = resgraph.build(text, seed=0)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(model(x), model.lstm(x)[0][:, -1])


def test_permute_reshape_and_mean_follow_torch_dims() -> None:
    text = ("resgraph: 1\nname: P\ninputs:\n  x: [4, 3, 2]\nlayers:\n"
            "  - last: {op: permute, dims: [0, 2, 3, 1]}\n  - flat: {op: reshape, shape: [-1, 4]}\n"
            "  - avg: {op: mean, dim: 1}\n")
    model = resgraph.build(text)
    x = torch.randn(2, 4, 3, 2)
    torch.testing.assert_close(model(x), x.permute(0, 2, 3, 1).reshape(2, -1, 4).mean(dim=1))
    graph = resgraph.check(text)
    assert graph.nodes["last"].meta["type"].layout == "features_last"  # channels moved last


def test_chunk_takes_dim_1_in_every_layout_where_none_is_written() -> None:
    # (unlike concat: a reshape's value is taken for features-last, and YOLOv8 chunks such a (4, A) along dim 1)
    model = resgraph.build("resgraph: 1\nname: T\ninputs:\n  x: {shape: [4, 6], layout: features_last}\nlayers:\n"
                           "  - parts: {op: chunk, chunks: 2, outputs: [a, b]}\n"
                           "  - both: {op: sub, input: [a, b]}\n")
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(model(x), x[:, :2] - x[:, 2:])


STRIDED_THEN_PERMUTED = """
resgraph: 1
name: PM
inputs:
  x: [4, 4, 4]
layers:
  - c: {op: Conv2d, out_channels: 4, kernel_size: 1, stride: 3}
  - last: {op: permute, dims: [0, 2, 3, 1]}
%s
  - first: {op: permute, dims: [0, 3, 1, 2]}
skips:
  - s: {from: x, to: first, projection: conv}
"""


@pytest.mark.parametrize("channels_last", [
    "",  # permuted there and straight back
    "  - norm: {op: LayerNorm}\n  - fc: {op: Linear, out_features: 4}",  # per-position layers (ConvNeXt's)
    "  - t: {op: transpose, dim0: 1, dim1: 2}\n  - t2: {op: transpose, dim0: 1, dim1: 2}",  # H, W swapped and back
])
def test_a_map_permuted_channels_last_and_back_stays_on_its_grid(channels_last: str) -> None:
    # The shortcut strides 3, as the conv does (the grid told it), not the 2 that 4 -> 2 would suggest
    model = resgraph.build(STRIDED_THEN_PERMUTED % channels_last, seed=0).eval()
    assert model.s[0].stride == (3, 3)
    assert resgraph.valid_sizes(STRIDED_THEN_PERMUTED % channels_last, low=1, high=40).of("x")[1].rule.describe(
        "H") == "any H"

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        y = model.c(x).permute(0, 2, 3, 1)
        if "fc" in channels_last:
            y = model.fc(model.norm(y))
        return y.permute(0, 3, 1, 2) + model.s(x)

    with torch.no_grad():
        for size in (4, 7, 12, 13):  # ceil(H / 3) = ceil(H / 2) only at 4 and below
            x = torch.randn(2, 4, size, size + 1)
            torch.testing.assert_close(model(x), by_hand(x), rtol=0, atol=0)


def test_a_map_permuted_with_its_channels_in_the_middle_has_no_grid() -> None:
    # (C, H, W) -> (H, C, W): no layout has its channels there, so the grid is unknown, as after an
    # adaptive pool: the skip is planned from the sizes (4 -> 2: stride 2)
    spec = (STRIDED_THEN_PERMUTED % "").replace("[0, 2, 3, 1]", "[0, 2, 1, 3]").replace("[0, 3, 1, 2]",
                                                                                       "[0, 2, 1, 3]")
    model = resgraph.build(spec, seed=0)
    assert model.s[0].stride == (2, 2)
