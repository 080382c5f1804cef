"""Held-back cases of the language-reach issues (#3, #12): specs an expert writes for networks the
examples do not cover, checked against hand-written torch, and the mistakes they exposed.

The specification, as these cases pin it:

- A block parameter may not take a name resgraph binds in block bodies (`index`, `repeats`,
  `block_index`, `num_blocks`, `in_channels`, `in_features`, `in_shape`, `in_shapes`): it is an
  error at the parameter's key. A top-level parameter may (U-Net's `in_channels` sizes its input),
  and inside a block the built-in name wins.
- `is` / `is not` in an expression test for None (`owner is None`); on other values they are a
  located error, never a traceback.
- `to: call.out` on a skip says that a skip cannot merge into one output of a block call, and what
  to write instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resgraph
from resgraph.expressions import ExpressionError, evaluate
from resgraph.spec import BUILTIN_NAMES

HEADER = "resgraph: 1\nname: Net\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- built-in names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_a_block_parameter_named_like_a_builtin_is_an_error_at_its_key(name: str) -> None:
    found = messages(HEADER + "blocks:\n  b:\n    params: {" + name + ": 2}\n    layers:\n"
                     "      - fc: {op: Linear, out_features: 4}\n"
                     "inputs: {x: [4]}\nlayers:\n  - s: {block: b, repeat: 2}\n")
    assert found == [f"<string>:5:14: error: block 'b': parameter {name!r} would hide the built-in name {name!r} "
                     f"({BUILTIN_NAMES[name]})\n  hint: rename the parameter (e.g. {name}_value); inside a block, "
                     f"`{name}` already means {BUILTIN_NAMES[name]}"]


def test_a_top_level_parameter_named_in_channels_does_not_hide_a_blocks_input_size() -> None:
    # Before: the block's `${in_channels}` read the top-level parameter (3), not its input's size (12),
    # and `index` the parameter (5) instead of the instance's position.
    model = resgraph.build(HEADER + "params: {in_channels: 3, index: 5}\n"
                           "blocks:\n  se:\n    layers:\n"
                           "      - fc: {op: Linear, out_features: \"${in_channels + index}\"}\n"
                           "inputs: {x: [\"${in_channels}\", 4]}\n"
                           "layers:\n  - f: {op: Flatten}\n  - s: {block: se, repeat: 2}\n")
    assert (model.s[0].fc.in_features, model.s[0].fc.out_features) == (12, 12)
    assert (model.s[1].fc.in_features, model.s[1].fc.out_features) == (12, 13)


# --- expressions ----------------------------------------------------------------------------------

def test_is_none_tests_a_null_parameter() -> None:
    assert evaluate("1 if owner is None else 2", {"owner": None}) == 1
    assert evaluate("owner is not None", {"owner": "left"}) is True
    assert evaluate("None is owner", {"owner": 0}) is False


def test_is_between_values_is_a_located_error_not_a_traceback() -> None:
    with pytest.raises(ExpressionError, match="'is' only tests for None") as caught:
        evaluate("width is 3", {"width": 3})
    assert caught.value.offset == 0
    found = messages(HEADER + "params: {w: 4}\ninputs: {x: [4]}\nlayers:\n"
                     "  - fc: {op: Linear, out_features: \"${8 if w is not 4 else 4}\"}\n")
    assert found == ["<string>:6:44: error: in ${8 if w is not 4 else 4}: 'is not' only tests for None "
                     "(x is not None); compare values with !="]


# --- held-back networks against hand-written torch ------------------------------------------------

BERT = HEADER + """\
params: {d: 32, heads: 4, ff: 64, vocab: 50, seq: 10}
blocks:
  encoder:                        # post-norm, as nn.TransformerEncoderLayer (BERT)
    params: {heads: required, ff: required}
    inputs: [x, pad]
    layers:
      - self_attn: {op: MultiheadAttention, num_heads: "${heads}", input: [x, x, x, pad], masks: [key_padding_mask]}
      - norm1:   {op: LayerNorm, eps: 1e-12}
      - linear1: {op: Linear, out_features: "${ff}"}
      - act:     {op: GELU}
      - linear2: {op: Linear, out_features: "${in_features}"}
      - norm2:   {op: LayerNorm, eps: 1e-12}
    skips:
      - r1: {from: x, to: self_attn}
      - r2: {from: norm1, to: linear2}
inputs:
  tokens: {shape: ["${seq}"], dtype: int64}
  pad: {shape: ["${seq}"], dtype: bool}
layers:
  - emb:     {op: Embedding, num_embeddings: "${vocab}", embedding_dim: "${d}", input: tokens}
  - pos_ids: {op: arange, input: tokens, dim: 1}
  - pos:     {op: Embedding, num_embeddings: 16, embedding_dim: "${d}"}
  - summed:  {op: add, input: [emb, pos]}
  - ln:      {op: LayerNorm, eps: 1e-12}
  - l0: {block: encoder, input: [ln, pad], with: {heads: "${heads}", ff: "${ff}"}}
  - l1: {block: encoder, input: [l0, pad], with: {heads: "${heads}", ff: "${ff}"}}
"""


class ReferenceBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.pos, self.ln = nn.Embedding(50, 32), nn.Embedding(16, 32), nn.LayerNorm(32, eps=1e-12)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                                               batch_first=True, layer_norm_eps=1e-12)
                                    for _ in range(2))

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.emb(tokens) + self.pos(torch.arange(tokens.shape[1])))
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad)
        return x


def test_a_bert_style_encoder_with_a_padding_mask_equals_torchs_encoder_layers() -> None:
    torch.manual_seed(0)
    model, reference = resgraph.build(BERT).eval(), ReferenceBert().eval()
    state = {k.replace("l0.", "layers.0.").replace("l1.", "layers.1."): v for k, v in model.state_dict().items()}
    reference.load_state_dict(state)  # strict: the same tensors under torch's names
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    tokens, pad = torch.randint(0, 50, (3, 10)), torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 7:], pad[1, 4:] = True, True
    with torch.no_grad():
        for length in (10, 8):  # the sequence is free up to the position table
            torch.testing.assert_close(model(tokens[:, :length], pad[:, :length]),
                                       reference(tokens[:, :length], pad[:, :length]), atol=1e-5, rtol=1e-5)


DECODER = HEADER + """\
blocks:
  decoder:                        # causal self-attention, then cross-attention to a padded memory
    inputs: [x, memory, mpad]
    layers:
      - self_attn: {op: MultiheadAttention, num_heads: 4, is_causal: true, input: x}
      - norm1: {op: LayerNorm}
      - multihead_attn: {op: MultiheadAttention, num_heads: 4, input: [norm1, memory, memory, mpad],
                         masks: [key_padding_mask]}
      - norm2: {op: LayerNorm}
      - linear1: {op: Linear, out_features: 64}
      - act: {op: ReLU}
      - linear2: {op: Linear, out_features: "${in_features}"}
      - norm3: {op: LayerNorm}
    skips:
      - r1: {from: x, to: self_attn}
      - r2: {from: norm1, to: multihead_attn}
      - r3: {from: norm2, to: linear2}
inputs:
  tgt: [7, 32]
  memory: [11, 32]
  mpad: {shape: [11], dtype: bool}
layers:
  - l0: {block: decoder, input: [tgt, memory, mpad]}
  - l1: {block: decoder, input: [l0, memory, mpad]}
"""


def test_a_cross_attention_decoder_equals_torchs_decoder_layers_and_is_causal() -> None:
    torch.manual_seed(0)
    model = resgraph.build(DECODER).eval()
    reference = nn.ModuleList(nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
                              for _ in range(2)).eval()
    reference.load_state_dict({k.replace("l0.", "0.").replace("l1.", "1."): v for k, v in model.state_dict().items()})
    x, memory = torch.randn(2, 7, 32), torch.randn(2, 11, 32)
    mpad = torch.zeros(2, 11, dtype=torch.bool)
    mpad[0, 5:] = True

    def decode(x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        for layer in reference:
            x = layer(x, memory, tgt_mask=mask, tgt_is_causal=True, memory_key_padding_mask=mpad)
        return x

    with torch.no_grad():
        torch.testing.assert_close(model(x, memory, mpad), decode(x), atol=1e-5, rtol=1e-5)
        later = x.clone()
        later[:, 5:] += 1.0
        torch.testing.assert_close(model(later, memory, mpad)[:, :5], model(x, memory, mpad)[:, :5])


SQUEEZENET = HEADER + """\
blocks:
  fire:
    params: {s: required, e: required}
    layers:
      - squeeze: {op: Conv2d, out_channels: "${s}", kernel_size: 1}
      - squeeze_activation: {op: ReLU, inplace: true}
      - expand1x1: {op: Conv2d, out_channels: "${e}", kernel_size: 1}
      - expand1x1_activation: {op: ReLU, inplace: true}
      - expand3x3: {op: Conv2d, out_channels: "${e}", kernel_size: 3, padding: 1, input: squeeze_activation}
      - expand3x3_activation: {op: ReLU, inplace: true}
      - cat: {op: concat, input: [expand1x1_activation, expand3x3_activation], dim: 1}
inputs:
  x: [3, 224, 224]
layers:
  - conv: {op: Conv2d, out_channels: 64, kernel_size: 3, stride: 2}
  - relu: {op: ReLU, inplace: true}
  - pool1: {op: MaxPool2d, kernel_size: 3, stride: 2, ceil_mode: true}
  - f3: {block: fire, with: {s: 16, e: 64}}
  - f4: {block: fire, with: {s: 16, e: 64}}
  - pool2: {op: MaxPool2d, kernel_size: 3, stride: 2, ceil_mode: true}
  - f6: {block: fire, with: {s: 32, e: 128}}
  - f7: {block: fire, with: {s: 32, e: 128}}
  - pool3: {op: MaxPool2d, kernel_size: 3, stride: 2, ceil_mode: true}
  - f9: {block: fire, with: {s: 48, e: 192}}
  - f10: {block: fire, with: {s: 48, e: 192}}
  - f11: {block: fire, with: {s: 64, e: 256}}
  - f12: {block: fire, with: {s: 64, e: 256}}
  - drop: {op: Dropout, p: 0.5}
  - final_conv: {op: Conv2d, out_channels: 1000, kernel_size: 1}
  - relu2: {op: ReLU, inplace: true}
  - gap: {op: AdaptiveAvgPool2d, output_size: 1}
  - flat: {op: Flatten}
"""


def test_squeezenet_1_1_has_torchvisions_parameter_count() -> None:
    model = resgraph.build(SQUEEZENET, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 1_235_496  # torchvision squeezenet1_1


SHUFFLE_SE_INCEPTION = HEADER + """\
blocks:
  shuffle:                        # ShuffleNet's channel shuffle, sizes read from the input
    params: {groups: 2}
    layers:
      - split:  {op: reshape, shape: ["${groups}", "${in_channels // groups}", "${in_shape[1]}", "${in_shape[2]}"]}
      - swap:   {op: transpose, dim0: 1, dim1: 2}
      - merged: {op: reshape, shape: ["${in_channels}", "${in_shape[1]}", "${in_shape[2]}"]}
  se:
    params: {r: 4}
    layers:
      - pool: {op: AdaptiveAvgPool2d, output_size: 1}
      - fc1:  {op: Conv2d, out_channels: "${in_channels // r}", kernel_size: 1}
      - relu: {op: ReLU}
      - fc2:  {op: Conv2d, out_channels: "${in_channels}", kernel_size: 1}
      - gate: {op: Sigmoid}
      - scaled: {op: mul, input: [x, gate]}
  inception:
    layers:
      - b1:  {op: Conv2d, out_channels: 8, kernel_size: 1, input: x}
      - b2a: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}
      - b2:  {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}
      - b3a: {op: Conv2d, out_channels: 2, kernel_size: 1, input: x}
      - b3:  {op: Conv2d, out_channels: 4, kernel_size: 5, padding: 2}
      - b4a: {op: MaxPool2d, kernel_size: 3, stride: 1, padding: 1, input: x}
      - b4:  {op: Conv2d, out_channels: 4, kernel_size: 1}
      - out: {op: concat, input: [b1, b2, b3, b4], dim: 1}
inputs:
  x: [6, 10, 12]
layers:
  - conv: {op: Conv2d, out_channels: 12, kernel_size: 3, padding: 1, groups: 3}
  - sh:  {block: shuffle, with: {groups: 3}}
  - se:  {block: se}
  - inc: {block: inception}
"""


def test_channel_shuffle_se_and_inception_concat_equal_a_functional_reference() -> None:
    torch.manual_seed(0)
    model = resgraph.build(SHUFFLE_SE_INCEPTION).eval()
    w = model.state_dict()

    def conv(t: torch.Tensor, name: str, **options: int) -> torch.Tensor:
        return nn.functional.conv2d(t, w[f"{name}.weight"], w[f"{name}.bias"], **options)

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = conv(x, "conv", padding=1, groups=3)
        n, c, h, width = y.shape
        y = y.view(n, 3, c // 3, h, width).transpose(1, 2).reshape(n, c, h, width)
        y = y * torch.sigmoid(conv(torch.relu(conv(y.mean((2, 3), keepdim=True), "se.fc1")), "se.fc2"))
        return torch.cat([conv(y, "inc.b1"), conv(conv(y, "inc.b2a"), "inc.b2", padding=1),
                          conv(conv(y, "inc.b3a"), "inc.b3", padding=2),
                          conv(nn.functional.max_pool2d(y, 3, 1, 1), "inc.b4")], 1)

    assert model.se.fc1.out_channels == 3  # in_channels // r of the shuffled 12 channels
    x = torch.randn(2, 6, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


# --- ids into an Embedding ------------------------------------------------------------------------

def embedding_of(ids: str, between: str = "") -> str:
    return (HEADER + "inputs: {x: [4]}\nlayers:\n  - ids: " + ids + "\n" + between
            + "  - emb: {op: Embedding, num_embeddings: 10, embedding_dim: 4}\n")


@pytest.mark.parametrize(("ids", "least"), [
    ("{op: constant, value: [-1, 2, 3], dtype: int64}", -1),
    ("{op: full, shape: [3], value: -2, dtype: int64}", -2),
    ("{op: arange, start: -3, stop: 4}", -3),
    ("{op: arange, input: x, dim: 1, start: -1}", -1),
])
def test_negative_ids_into_an_embedding_are_refused_where_torch_would_fail_at_run_time(ids: str, least: int) -> None:
    found = messages(embedding_of(ids))
    assert found == [f"<string>:6:5: error: layer 'emb' (Embedding): its ids include {least}, but an Embedding's ids "
                     "run from 0 to num_embeddings - 1 (9); torch refuses a negative id when the model runs"]


def test_ids_mapped_by_an_op_are_not_judged_by_the_constants_least_value() -> None:
    # ReLU and neg map the values: -1 becomes 0 (or 1), which the table holds; Identity keeps them.
    model = resgraph.build(embedding_of("{op: constant, value: [-1, 2, 3], dtype: int64}", "  - r: {op: ReLU}\n"))
    torch.testing.assert_close(model(torch.zeros(2, 4)), model.emb.weight[[0, 2, 3]].expand(2, 3, 4))
    resgraph.check(embedding_of("{op: constant, value: [-1, -2], dtype: int64}", "  - n: {op: neg}\n"))
    with pytest.raises(resgraph.SpecError, match="its ids include -1"):
        resgraph.check(embedding_of("{op: constant, value: [-1, 2], dtype: int64}", "  - i: {op: Identity}\n"))


# --- attention inputs of rank 3 -------------------------------------------------------------------

SDPA_OF_INPUTS = HEADER + """\
inputs:
  q: [8, 16, 4]
  k: [8, 16, 4]
  v: [8, 16, 4]
layers:
  - attended: {op: scaled_dot_product_attention, input: [q, k, v]}
"""


def test_a_rank_3_input_read_by_attention_is_a_sequence_not_an_image() -> None:
    # Before: (heads, L, head_dim) read as an image (C, H, W): heads "fixed by the layers' parameters",
    # and k's and v's sequence fixed at 16 since q, k and v were not known to share their sizes.
    report = resgraph.valid_sizes(SDPA_OF_INPUTS, low=1, high=32)
    assert {(d.input, d.name): d.linked for d in report.dims} == {
        ("q", "L1"): ("k.L1", "v.L1"), ("q", "L2"): (), ("q", "F"): (),
        ("k", "L1"): ("q.L1", "v.L1"), ("k", "L2"): ("v.L2",), ("k", "F"): (),
        ("v", "L1"): ("k.L1", "q.L1"), ("v", "L2"): ("k.L2",), ("v", "F"): ()}
    free = {(d.input, d.name): d.valid for d in report.dims if d.free}
    assert len(free) == 6 and all(valid == tuple(range(1, 33)) for valid in free.values())
    model = resgraph.build(SDPA_OF_INPUTS)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    torch.testing.assert_close(model(q, k, v), nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match=r"input 'v' must be \(N, L1, L2, 4\) with L1 = q.L1, L2 = k.L2"):
        model(q, k, v[:, :, :6])


SDPA_THROUGH_A_BLOCK = HEADER + """\
blocks:
  attend:
    inputs: [q, k, v]
    layers:
      - attended: {op: scaled_dot_product_attention, input: [q, k, v]}
inputs:
  q: [8, 16, 4]
  k: [8, 16, 4]
  v: [8, 16, 4]
layers:
  - a: {block: attend, input: [q, k, v]}
"""


def test_attention_inputs_read_through_a_block_are_sequences_as_when_read_directly() -> None:
    # Review: the block's first input was judged by its first layer's op alone (not as attention's q),
    # so q was an image (C, H, W) with W fixed, while k and v were sequences.
    through, direct = (resgraph.valid_sizes(spec, low=1, high=32) for spec in (SDPA_THROUGH_A_BLOCK, SDPA_OF_INPUTS))
    assert [(d.input, d.name, d.free, d.linked, d.valid) for d in through.dims] == \
        [(d.input, d.name, d.free, d.linked, d.valid) for d in direct.dims]


# --- weights shared between instances -------------------------------------------------------------

ALBERT = HEADER + """\
params: {n: 3}
blocks:
  layer:                          # one layer applied n times with the same weights (ALBERT)
    layers:
      - fc:  {op: Linear, out_features: 16, tie: {weight: "${None if index == 0 else 'layers.0.fc.weight'}",
                                                  bias: "${None if index == 0 else 'layers.0.fc.bias'}"}}
      - act: {op: GELU}
    skips:
      - r: {from: x, to: act}
inputs:
  x: [5, 16]
layers:
  - layers: {block: layer, repeat: "${n}"}
"""

SIAMESE = HEADER + """\
blocks:
  tower:
    params: {owner: null}         # null: this tower owns its weights; else the path of the tower it shares
    layers:
      - conv: {op: Conv2d, out_channels: 8, kernel_size: 3,
               tie: {weight: "${None if owner is None else owner + '.conv.weight'}",
                     bias: "${None if owner is None else owner + '.conv.bias'}"}}
      - relu: {op: ReLU}
      - pool: {op: AdaptiveAvgPool2d, output_size: 1}
      - flat: {op: Flatten}
inputs:
  a: [3, 16, 16]
  b: [3, 16, 16]
layers:
  - left:  {block: tower, input: a}
  - right: {block: tower, input: b, with: {owner: left}}
  - distance: {op: sub, input: [left, right]}
"""


def test_an_albert_style_shared_layer_ties_every_instance_to_the_first() -> None:
    # Before: a tie's value could not be an expression ("invalid name"), so a repeat could not share
    # one layer's weights without a second, untied copy of the block.
    model = resgraph.build(ALBERT)
    fc = model.layers[0].fc
    assert all(model.layers[i].fc.weight is fc.weight and model.layers[i].fc.bias is fc.bias for i in (1, 2))
    assert sum(p.numel() for p in model.parameters()) == 16 * 16 + 16
    x = torch.randn(2, 5, 16)
    expected = x
    for _ in range(3):
        expected = nn.functional.gelu(fc(expected)) + expected
    torch.testing.assert_close(model(x), expected)


def test_a_siamese_net_shares_its_tower_and_a_null_tie_is_no_tie() -> None:
    model = resgraph.build(SIAMESE)
    assert model.right.conv.weight is model.left.conv.weight and model.right.conv.bias is model.left.conv.bias
    assert sum(p.numel() for p in model.parameters()) == 8 * 3 * 3 * 3 + 8
    a = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(a, a), torch.zeros(2, 8))  # one tower: equal inputs, equal embeddings
    untied = resgraph.build(HEADER + "inputs: {x: [4]}\nlayers:\n"
                            "  - fc: {op: Linear, out_features: 4, tie: {weight: null}}\n")
    assert sum(p.numel() for p in untied.parameters()) == 20


def test_a_tie_expression_that_names_no_parameter_is_an_error_at_the_tie() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(ALBERT.replace("'layers.0.fc.weight'", "'layers.0.fc.weigth'"), device="meta")
    assert [d.format().splitlines()[0] for d in caught.value.diagnostics] == [
        f"<string>:7:45: error: layer 'layers.{i}.fc' (Linear): tie: 'layers.0.fc.weigth' is not a parameter of "
        "the model; did you mean 'layers.0.fc.weight'?" for i in (1, 2)]


def test_a_gain_of_lower_rank_is_refused_with_the_reshape_that_fixes_it() -> None:
    # An RMSNorm's (D,) weight against (L, D) activations: the batch leads both at run time, so torch would
    # pair the weight with the sequence. `mul` (the merge) now says so as `sub`/`div` do, and how to fix it.
    spec = HEADER + ("inputs: {x: [10, 32]}\nlayers:\n"
                     "  - weight: {op: parameter, shape: [32], init: ones}\n"
                     "  - scaled: {op: mul, input: [x, weight]}\n")
    assert messages(spec) == ["<string>:6:5: error: layer 'scaled' (mul): mul needs broadcastable shapes, got "
                              "(10, 32), (32,) (per-sample shapes need one rank: the batch dim leads each tensor; "
                              "reshape (32,) to (1, 32))"]
    fixed = spec.replace("  - scaled: {op: mul, input: [x, weight]}\n",
                         "  - gain: {op: reshape, shape: [1, 32], input: weight}\n"
                         "  - scaled: {op: mul, input: [x, gain]}\n")
    model = resgraph.build(fixed)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(model(x), x * model.weight)


def test_a_per_head_attention_mask_leaves_every_query_length_valid() -> None:
    # Before: the mask's shape was compared with (L, S) too, a tuple of another rank, whose == compared the
    # mask's heads with L: "L != 4" was recorded, and `resgraph sizes` called L = 4 (= num_heads) invalid.
    spec = HEADER + """\
inputs:
  x: [6, 16]
  mem: [9, 16]
  am: {shape: [4, 6, 9], dtype: bool}
  kp: {shape: [9], dtype: bool}
layers:
  - attn: {op: MultiheadAttention, num_heads: 4, input: [x, mem, mem, am, kp], masks: [attn_mask, key_padding_mask]}
"""
    report = resgraph.valid_sizes(spec, low=1, high=12)
    (length,) = [d for d in report.dims if (d.input, d.name) == ("x", "L")]
    assert length.valid == tuple(range(1, 13)) and length.linked == ("am.L2",)
    model = resgraph.build(spec).eval()
    x, mem = torch.randn(2, 4, 16), torch.randn(2, 9, 16)
    am, kp = torch.rand(2, 4, 4, 9) > 0.7, torch.zeros(2, 9, dtype=torch.bool)
    kp[0, 6:] = True
    expected = model.attn(x, mem, mem, attn_mask=am.flatten(0, 1), key_padding_mask=kp, need_weights=False)[0]
    torch.testing.assert_close(model(x, mem, am, kp), expected)


# --- sizes of a T5-style encoder: heads split by reshape, an additive mask through blocks -------------

T5_ENCODER = HEADER + """\
params: {d: 32, h: 4, ff: 64, seq: 10}
blocks:
  rmsnorm:
    layers:
      - sq: {op: pow, exponent: 2, input: x}
      - ms: {op: mean, dim: -1, keepdim: true}
      - eps: {op: add, scalar: 1.0e-6}
      - inv: {op: rsqrt}
      - normed: {op: mul, input: [x, inv]}
      - weight: {op: parameter, shape: ["${in_features}"], init: ones}
      - gain: {op: reshape, shape: [1, "${in_features}"], input: weight}
      - out: {op: mul, input: [normed, gain]}
  attention:
    params: {h: required}
    inputs: [x, mask]
    layers:
      - q: {op: Linear, out_features: "${in_features}", bias: false, input: x}
      - qh: {op: reshape, shape: [-1, "${h}", "${in_features // h}"]}
      - qt: {op: transpose, dim0: 1, dim1: 2}
      - k: {op: Linear, out_features: "${in_features}", bias: false, input: x}
      - kh: {op: reshape, shape: [-1, "${h}", "${in_features // h}"]}
      - kt: {op: transpose, dim0: 1, dim1: 2}
      - v: {op: Linear, out_features: "${in_features}", bias: false, input: x}
      - vh: {op: reshape, shape: [-1, "${h}", "${in_features // h}"]}
      - vt: {op: transpose, dim0: 1, dim1: 2}
      - att: {op: scaled_dot_product_attention, input: [qt, kt, vt, mask], scale: 1.0}
      - back: {op: transpose, dim0: 1, dim1: 2}
      - joined: {op: reshape, shape: [-1, "${in_features}"]}
      - o: {op: Linear, out_features: "${in_features}", bias: false}
  layer:
    params: {h: required, ff: required}
    inputs: [x, mask]
    layers:
      - ln1: {block: rmsnorm, input: x}
      - attn: {block: attention, input: [ln1, mask], with: {h: "${h}"}}
      - ln2: {block: rmsnorm}
      - wi: {op: Linear, out_features: "${ff}", bias: false}
      - act: {op: ReLU}
      - wo: {op: Linear, out_features: "${in_features}", bias: false}
    skips:
      - r1: {from: x, to: attn}
      - r2: {from: attn, to: wo}
inputs:
  x: ["${seq}", "${d}"]
  mask: [1, 1, "${seq}"]
layers:
  - l0: {block: layer, input: [x, mask], with: {h: "${h}", ff: "${ff}"}}
  - l1: {block: layer, input: [l0, mask], with: {h: "${h}", ff: "${ff}"}}
"""


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def t5_layer(p: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    h = rms(x, p.ln1.weight)
    n, length, d = h.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, length, 4, d // 4).transpose(1, 2)  # (N, 4, L, d/4)

    a = nn.functional.scaled_dot_product_attention(heads(p.attn.q(h)), heads(p.attn.k(h)), heads(p.attn.v(h)),
                                                   attn_mask=mask, scale=1.0)
    x = x + p.attn.o(a.transpose(1, 2).reshape(n, length, d))
    return x + p.wo(torch.relu(p.wi(rms(x, p.ln2.weight))))


def test_a_t5_style_encoder_works_and_is_solved_at_every_sequence_length() -> None:
    # Before: a reshape's -1 made L * 32 // 32 of x's L, which size solving could not link to the mask's
    # key length (both were fixed at 10), and a broadcast of the mask's 1 against L recorded `1 != L`,
    # which made L = 1 invalid.
    report = resgraph.valid_sizes(T5_ENCODER, low=1, high=40)
    dims = {(d.input, d.name): d for d in report.dims}
    assert dims["x", "L"].valid == tuple(range(1, 41)) and dims["x", "L"].linked == ("mask.W",)
    assert dims["mask", "W"].valid == tuple(range(1, 41))
    model = resgraph.build(T5_ENCODER).eval()
    for length in (10, 1, 17):
        x, mask = torch.randn(2, length, 32), torch.zeros(2, 1, 1, length)
        mask[0, ..., length - 1:] = float("-inf") if length > 1 else 0.0
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask), t5_layer(model.l1, t5_layer(model.l0, x, mask), mask))


def test_a_per_sample_shape_with_a_batch_dim_written_in_is_told_to_leave_it_out() -> None:
    spec = HEADER + ("inputs: {x: [32, 4, 4]}\nlayers:\n"
                     "  - gain: {op: parameter, shape: [1, 32, 1, 1], init: 0.5}\n"
                     "  - gated: {op: mul, input: [x, gain]}\n")
    assert messages(spec) == ["<string>:6:5: error: layer 'gated' (mul): mul needs broadcastable shapes, got "
                              "(32, 4, 4), (1, 32, 1, 1) (per-sample shapes need one rank: the batch dim leads each "
                              "tensor; leave the batch out: write (1, 32, 1, 1) as (32, 1, 1), or `batch: true` on a "
                              "stored tensor)"]
    model = resgraph.build(spec.replace("shape: [1, 32, 1, 1]", "shape: [1, 32, 1, 1], batch: true"))
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(model(x), x * 0.5)


# --- a refused chunk/split: its readers say nothing more ------------------------------------------

def test_readers_of_a_refused_split_are_left_out_quietly() -> None:
    # Before: each reader of y0/y1 also said "unknown node 'y0'" (after an expression error, a schema
    # error, or in a block whose input's shape was unknown after an error in an earlier block).
    found = messages(HEADER + "params: {w: 8}\ninputs: {x: [16, 4, 4]}\nlayers:\n"
                     "  - parts: {op: chunk, chunks: \"${n_parts}\", dim: 1, outputs: [a, b]}\n"
                     "  - both: {op: concat, input: [b, a]}\n"
                     "  - typo: {op: split, split_size: \"${w}\", dim: 1, outputs: [c, d], bogus: 1, input: x}\n"
                     "  - again: {op: concat, input: [c, d, missing]}\n")
    assert [f.splitlines()[0] for f in found] == [
        "<string>:6:35: error: in ${n_parts}: unknown name 'n_parts'",
        "<string>:8:68: error: layer 'typo' (split): unknown argument 'bogus'",
        "<string>:9:32: error: layer 'again': unknown node 'missing'"]


# --- compound scaling: EfficientNet-B0..B5 from one spec through `scale:` alone --------------------

EFFICIENTNET = HEADER + """\
params: {width: 1.1, depth: 1.2}
scale: {width: "${width}", depth: "${depth}", divisor: 8}
blocks:
  mbconv:
    params: {out: required, t: required, k: required, stride: 1}
    layers:
      - expand:      {op: Conv2d, out_channels: "${in_channels * t}", kernel_size: 1, bias: false, when: "${t != 1}"}
      - expand_bn:   {op: BatchNorm2d, when: "${t != 1}"}
      - expand_act:  {op: SiLU, when: "${t != 1}"}
      - depthwise:   {op: Conv2d, out_channels: "${in_channels * t}", kernel_size: "${k}", stride: "${stride}",
                      padding: "${(k - 1) // 2}", groups: "${in_channels * t}", bias: false}
      - depthwise_bn:  {op: BatchNorm2d}
      - depthwise_act: {op: SiLU}
      - se_pool:     {op: AdaptiveAvgPool2d, output_size: 1}
      - se_reduce:   {op: Conv2d, out_channels: "${max(1, in_channels // 4)}", kernel_size: 1}
      - se_act:      {op: SiLU}
      - se_expand:   {op: Conv2d, out_channels: "${in_channels * t}", kernel_size: 1}
      - se_gate:     {op: Sigmoid}
      - excite:      {op: mul, input: [depthwise_act, se_gate]}
      - project:     {op: Conv2d, out_channels: "${out}", kernel_size: 1, bias: false}
      - project_bn:  {op: BatchNorm2d}
    skips:
      - residual: {from: x, to: project_bn, projection: none, when: "${index > 0}"}
inputs:
  x: [3, 64, 64]
layers:
  - stem:    {op: Conv2d, out_channels: 32, kernel_size: 3, stride: 2, padding: 1, bias: false}
  - stem_bn: {op: BatchNorm2d}
  - stem_act: {op: SiLU}
  - s1: {block: mbconv, repeat: 1, with: {out: 16, t: 1, k: 3}}
  - s2: {block: mbconv, repeat: 2, with: {out: 24, t: 6, k: 3, stride: "${2 if index == 0 else 1}"}}
  - s3: {block: mbconv, repeat: 2, with: {out: 40, t: 6, k: 5, stride: "${2 if index == 0 else 1}"}}
  - s4: {block: mbconv, repeat: 3, with: {out: 80, t: 6, k: 3, stride: "${2 if index == 0 else 1}"}}
  - s5: {block: mbconv, repeat: 3, with: {out: 112, t: 6, k: 5}}
  - s6: {block: mbconv, repeat: 4, with: {out: 192, t: 6, k: 5, stride: "${2 if index == 0 else 1}"}}
  - s7: {block: mbconv, repeat: 1, with: {out: 320, t: 6, k: 3}}
  - head:    {op: Conv2d, out_channels: 1280, kernel_size: 1, bias: false}
  - head_bn: {op: BatchNorm2d}
  - head_act: {op: SiLU}
  - pool: {op: AdaptiveAvgPool2d, output_size: 1}
  - flat: {op: Flatten}
  - drop: {op: Dropout, p: 0.3}
  - fc: {op: Linear, out_features: 1000}
"""


@pytest.mark.parametrize(("width", "depth", "count"), [
    (1.0, 1.0, 5_288_548), (1.0, 1.1, 7_794_184), (1.1, 1.2, 9_109_994), (1.2, 1.4, 12_233_232),
    (1.4, 1.8, 19_341_616), (1.6, 2.2, 30_389_784)])  # torchvision efficientnet_b0 ... b5
def test_efficientnet_compound_scaling_matches_torchvisions_counts(width: float, depth: float, count: int) -> None:
    # Widths computed from the block's input (`in_channels * t`, `in_channels // 4`) follow the scaled input;
    # written widths (`out`) are rounded by make_divisible; repeats are ceil(n * depth). The residual is
    # written `index > 0`: comparing the scaled `in_channels` with the written `out` would not hold
    # (see the report: B2 then silently loses the residuals of stages 3-7 with the same count).
    model = resgraph.build(EFFICIENTNET, params={"width": width, "depth": depth}, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("spec, sample", [
    ("resgraph: 1\nname: G\ninputs: {a: [2, 1, 1]}\nlayers:\n  - m: {op: mul, input: [a, a]}\n", (2, 5, 5)),
    ("resgraph: 1\nname: G\ninputs: {x: [1, 16]}\nlayers:\n  - g: {op: Linear, out_features: 16}\n"
     "  - m: {op: mul, input: [x, g]}\n", (5, 16)),  # a gate x * f(x), declared at length 1
])
def test_free_sizes_declared_at_1_and_multiplied_with_themselves_stay_free(spec: str, sample: tuple[int, ...]) -> None:
    # Review of the broadcast change: two sizes equal where declared (both 1) were tested `x == 1`
    # first, which pinned them to 1; they broadcast at any size, as torch does.
    free = [d for d in resgraph.valid_sizes(spec, low=1, high=6).dims if d.free]
    assert free and all(d.valid == (1, 2, 3, 4, 5, 6) for d in free)
    assert resgraph.build(spec)(torch.randn(3, *sample)).shape == (3, *sample)


def test_llama_at_sequence_length_1_admits_every_length() -> None:
    spec, params = "examples/llama_7b.yaml", {"seq_len": 1, "vocab_size": 128, "n_layers": 1, "dim": 64,
                                              "n_heads": 4, "multiple_of": 32}
    (length,) = resgraph.valid_sizes(spec, params=params, low=1, high=8).dims
    assert length.valid == tuple(range(1, 9))
    assert resgraph.build(spec, params=params)(torch.randint(0, 128, (2, 7))).shape[:2] == (2, 7)
