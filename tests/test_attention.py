"""Attention in specs: causal and masked MultiheadAttention, and scaled_dot_product_attention from parts.

Every model is compared with torch's own module or function on the same weights, and causal
models are checked to be causal: the output at position t does not change when later positions do.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resgraph


def causal_mask(length: int) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(length)  # float: -inf above the diagonal


def assert_causal(model: nn.Module, x: torch.Tensor, length: int) -> None:
    """Changing positions after t leaves the output at positions up to t as it was."""
    with torch.no_grad():
        base = model(x)
        for t in range(length - 1):
            changed = x.clone()
            changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:]) if x.is_floating_point() else (
                (changed[:, t + 1:] + 1) % 11)
            after = model(changed)
            torch.testing.assert_close(after[:, :t + 1], base[:, :t + 1], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(after[:, t + 1:], base[:, t + 1:])  # later positions do see the change


CAUSAL = """resgraph: 1
name: Causal
inputs:
  x: [7, 16]
layers:
  - attn: {op: MultiheadAttention, num_heads: 4, is_causal: true, dropout: 0.0}
"""


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_causal_multihead_attention_equals_torch_with_the_causal_mask(mode: str) -> None:
    model = resgraph.build(CAUSAL, seed=0).train(mode == "train")
    reference = nn.MultiheadAttention(16, 4, batch_first=True).train(mode == "train")
    reference.load_state_dict(model.attn.state_dict())
    x = torch.randn(3, 7, 16)
    with torch.no_grad():  # eval + no_grad is torch's fused fast path
        expected = reference(x, x, x, attn_mask=causal_mask(7), need_weights=False)[0]
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert_causal(model, x, 7)


def test_causal_attention_follows_a_free_sequence_length() -> None:
    model = resgraph.build(CAUSAL, seed=0).eval()
    x = torch.randn(2, 11, 16)  # the sequence length is free: the mask is built for it
    with torch.no_grad():
        expected = model.attn(x, x, x, attn_mask=causal_mask(11), need_weights=False)[0]
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


MASKED = """resgraph: 1
name: Masked
inputs:
  x: [6, 8]
  memory: [5, 8]
  padding: {shape: [5], dtype: bool}
  allowed: {shape: [2, 6, 5], dtype: bool}
layers:
  - padded: {op: MultiheadAttention, num_heads: 2, input: [x, memory, memory, padding], masks: [key_padding_mask]}
  - both:   {op: MultiheadAttention, num_heads: 2, input: [padded, memory, memory, allowed, padding],
             masks: [attn_mask, key_padding_mask]}
"""


def test_mask_inputs_are_torchs_key_padding_and_per_head_attention_masks() -> None:
    model = resgraph.build(MASKED, seed=0).eval()
    x, memory = torch.randn(3, 6, 8), torch.randn(3, 5, 8)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = padding[1, 4:] = True  # sample 2 has no padding
    blocked = torch.rand(3, 2, 6, 5) > 0.7  # per sample and head: true may not attend
    blocked[..., 0] = False  # every query keeps one key
    with torch.no_grad():
        padded = model.padded(x, memory, memory, key_padding_mask=padding, need_weights=False)[0]
        both = model.both(padded, memory, memory, attn_mask=blocked.flatten(0, 1), key_padding_mask=padding,
                          need_weights=False)[0]
        torch.testing.assert_close(model(x, memory, padding, blocked), both)
        # a padded key changes nothing: sample 0 ignores memory positions 3 and 4
        changed = memory.clone()
        changed[0, 3:] = 100.0
        torch.testing.assert_close(model(x, changed, padding, blocked)[0], both[0])


def test_an_attention_mask_for_all_heads_is_shared_by_each_head() -> None:
    spec = ("resgraph: 1\nname: M\ninputs:\n  x: [6, 8]\n  mask: [6, 6]\nlayers:\n"
            "  - attn: {op: MultiheadAttention, num_heads: 2, input: [x, mask], masks: [attn_mask]}\n")
    model = resgraph.build(spec, seed=0).eval()
    x, mask = torch.randn(3, 6, 8), torch.randn(3, 6, 6)  # float: added to the scores
    with torch.no_grad():
        expected = model.attn(x, x, x, attn_mask=mask.repeat_interleave(2, dim=0), need_weights=False)[0]
        torch.testing.assert_close(model(x, mask), expected)


@pytest.mark.parametrize(("layer", "message"), [
    ("{op: MultiheadAttention, num_heads: 2, input: [x, x, x, pad]}",
     "takes one input (self-attention) or three (query, key, value), got 4; mask inputs follow them, named in "
     "order by `masks: [key_padding_mask, attn_mask]`"),
    ("{op: MultiheadAttention, num_heads: 2, input: [x, x], masks: [key_padding_mask]}",
     "key_padding_mask must be (6,) per sample (one entry per key), got (6, 8)"),
    ("{op: MultiheadAttention, num_heads: 2, input: [x, pad], masks: [attn_mask]}",
     "attn_mask must be (6, 6) or (2, 6, 6) per sample"),
    ("{op: MultiheadAttention, num_heads: 2, input: [x, pad], masks: [attn_mask], is_causal: true}",
     "give either is_causal or an attn_mask input"),
    ("{op: MultiheadAttention, num_heads: 2, input: [x, pad, pad], masks: [key_padding_mask, key_padding_mask]}",
     "each mask may be given once"),
])
def test_attention_input_mistakes_are_explained(layer: str, message: str) -> None:
    spec = ("resgraph: 1\nname: M\ninputs:\n  x: [6, 8]\n  pad: {shape: [6], dtype: bool}\nlayers:\n"
            f"  - attn: {layer}\n")
    with pytest.raises(resgraph.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("`", "`")):
        resgraph.check(spec)


# --- scaled_dot_product_attention from parts -----------------------------------------------------

def heads_spec(heads: int, kv_heads: int, extra: str = "", causal: bool = True) -> str:
    """Grouped-query self-attention written from parts: q, k, v projections split into heads."""
    gqa = ", enable_gqa: true" if kv_heads != heads else ""
    return f"""resgraph: 1
name: Grouped
params: {{heads: {heads}, kv_heads: {kv_heads}, head_dim: 4}}
inputs:
  x: [6, 16]
layers:
  - q_proj: {{op: Linear, out_features: "${{heads * head_dim}}", input: x}}
  - q_split: {{op: reshape, shape: [-1, "${{heads}}", "${{head_dim}}"]}}
  - q: {{op: transpose, dim0: 1, dim1: 2}}                  # (heads, L, head_dim)
  - k_proj: {{op: Linear, out_features: "${{kv_heads * head_dim}}", input: x}}
  - k_split: {{op: reshape, shape: [-1, "${{kv_heads}}", "${{head_dim}}"]}}
  - k: {{op: transpose, dim0: 1, dim1: 2}}
  - v_proj: {{op: Linear, out_features: "${{kv_heads * head_dim}}", input: x}}
  - v_split: {{op: reshape, shape: [-1, "${{kv_heads}}", "${{head_dim}}"]}}
  - v: {{op: transpose, dim0: 1, dim1: 2}}
  - attn: {{op: scaled_dot_product_attention, input: [q, k, v], is_causal: {str(causal).lower()}{gqa}{extra}}}
  - merged: {{op: transpose, dim0: 1, dim1: 2}}
  - out: {{op: reshape, shape: [-1, "${{heads * head_dim}}"]}}
"""


def reference_attention(model: nn.Module, x: torch.Tensor, heads: int, kv_heads: int, causal: bool) -> torch.Tensor:
    """The same attention written out: softmax(q k^T / sqrt(d) + causal) v, key/value heads repeated."""
    n, length, _ = x.shape
    q = model.q_proj(x).reshape(n, length, heads, 4).transpose(1, 2)
    k = model.k_proj(x).reshape(n, length, kv_heads, 4).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    v = model.v_proj(x).reshape(n, length, kv_heads, 4).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    if causal:
        scores = scores + causal_mask(length)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, heads * 4)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1)], ids=["multi-head", "grouped", "multi-query"])
def test_sdpa_from_parts_is_multi_head_grouped_or_multi_query_attention(heads: int, kv_heads: int) -> None:
    model = resgraph.build(heads_spec(heads, kv_heads), seed=0).eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_attention(model, x, heads, kv_heads, True),
                                   rtol=1e-5, atol=1e-5)
    assert_causal(model, x, 6)
    assert "enable_gqa=True" in model.code if kv_heads != heads else "enable_gqa" not in model.code


def test_sdpa_scale_dropout_and_a_mask_input() -> None:
    spec = heads_spec(2, 2, ", scale: 0.125, dropout_p: 0.5", causal=False).replace(
        "  x: [6, 16]\n", "  x: [6, 16]\n  keep: {shape: [1, 6, 6], dtype: bool}\n").replace(
        "input: [q, k, v]", "input: [q, k, v, keep]")
    model = resgraph.build(spec, seed=0).eval()
    x, keep = torch.randn(2, 6, 16), torch.rand(2, 1, 6, 6) > 0.3
    keep[..., 0] = True
    q = model.q_proj(x).reshape(2, 6, 2, 4).transpose(1, 2)
    k = model.k_proj(x).reshape(2, 6, 2, 4).transpose(1, 2)
    v = model.v_proj(x).reshape(2, 6, 2, 4).transpose(1, 2)
    with torch.no_grad():
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.125)
        torch.testing.assert_close(model(x, keep), expected.transpose(1, 2).reshape(2, 6, 8))
    model.train()  # dropout applies in training only
    torch.manual_seed(0)
    assert not torch.allclose(model(x, keep), expected.transpose(1, 2).reshape(2, 6, 8))


@pytest.mark.parametrize(("change", "message"), [
    (("enable_gqa: true", ""), "q has 4 heads but k and v have 2: for grouped-query (or multi-query) attention add "
                               "`enable_gqa: true`"),
    (("kv_heads: 2", "kv_heads: 3"), "4 query heads cannot share 3 key/value heads"),
    (("input: [q, k, v]", "input: [q, k, v, x]"), "is_causal: true and a mask input cannot be combined"),
    (("input: [q, k, v]", "input: [q, k_proj, v]"), "expects q, k, v of (seq, features) or (heads, seq, head_dim)"),
])
def test_sdpa_mistakes_are_explained(change: tuple[str, str], message: str) -> None:
    spec = heads_spec(4, 2).replace(*change)
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    assert message in str(caught.value)


SWIN_V2_COSINE = """resgraph: 1
name: CosineAttention
params: {heads: 4}
inputs:
  q: {shape: ["${heads}", 12, 8], layout: features_last}
  k: {shape: ["${heads}", 12, 8], layout: features_last}
  v: {shape: ["${heads}", 12, 8], layout: features_last}
layers:
  - q_sq: {op: pow, exponent: 2, input: q}
  - q_ms: {op: mean, dim: -1, keepdim: true}
  - q_norm: {op: mul, scalar: 8}
  - q_len: {op: sqrt}
  - qn: {op: div, input: [q, q_len]}
  - k_sq: {op: pow, exponent: 2, input: k}
  - k_ms: {op: mean, dim: -1, keepdim: true}
  - k_norm: {op: mul, scalar: 8}
  - k_len: {op: sqrt}
  - kn: {op: div, input: [k, k_len]}
  - knt: {op: transpose, dim0: 2, dim1: 3}
  - logits: {op: matmul, input: [qn, knt]}
  - logit_scale: {op: parameter, shape: ["${heads}", 1, 1], init: 2.302585092994046, layout: features_last}
  - clamped: {op: clamp, max: 4.605170185988092}
  - scale: {op: exp}
  - scaled: {op: mul, input: [logits, scale]}
  - probs: {op: Softmax, dim: -1}
  - out: {op: matmul, input: [probs, v]}
  - attn: {op: scaled_dot_product_attention, input: [q, k, v]}
  - head_gate: {op: parameter, shape: [1, "${heads}", 1, 1], batch: true, init: normal, std: 1.0,
                layout: features_last}
  - gated: {op: mul, input: [attn, head_gate]}
outputs: [out, gated]
"""


@pytest.mark.parametrize("heads", [1, 4, 6])
def test_a_per_head_learned_scale_multiplies_attention_scores_as_in_swin_v2(heads: int) -> None:
    """Swin V2's cosine attention: the (B, H, N, N) logits times exp(clamp(logit_scale)), a learned
    (H, 1, 1) tensor declared with the scores' layout; and a (1, H, 1, 1) gate on an sdpa output."""
    model = resgraph.build(SWIN_V2_COSINE, params={"heads": heads}, seed=0)
    assert model.logit_scale.shape == (heads, 1, 1) and model.head_gate.shape == (1, heads, 1, 1)
    q, k, v = (torch.randn(3, heads, 12, 8) for _ in range(3))
    logit_scale = torch.clamp(model.logit_scale, max=math.log(1.0 / 0.01)).exp()  # timm's SwinV2 WindowAttention
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * logit_scale
    out, gated = model(q, k, v)
    torch.testing.assert_close(out, attn.softmax(-1) @ v)
    torch.testing.assert_close(gated, F.scaled_dot_product_attention(q, k, v) * model.head_gate)
    assert torch.allclose(logit_scale, torch.full((heads, 1, 1), 10.0))
    out.sum().backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.shape == (heads, 1, 1)


def test_a_per_head_scale_of_an_sdpa_output_without_a_layout_says_which_key_to_write() -> None:
    spec = SWIN_V2_COSINE.replace("                layout: features_last}", "                }")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (problem,) = caught.value.diagnostics
    assert problem.location.line == 30  # (the `gated` layer)
    assert "layer 'gated' (mul): the gate (4, 1, 1) is channels-first but the target (4, 12, 8) is features-last" \
        in problem.message
    assert problem.hint is not None and problem.hint.startswith("'head_gate' is a stored tensor") \
        and problem.hint.endswith("write `layout: features_last` on it")


SWIN_FROM_A_PROJECTION = """resgraph: 1
name: SwinScores
inputs: {x: [16, 96]}
layers:
  - qkv: {op: Linear, out_features: 288}
  - parts: {op: chunk, chunks: 3, dim: -1, outputs: [q0, k0, v0]}
  - q1: {op: reshape, shape: [-1, 3, 32], input: q0}
  - q: {op: transpose, dim0: 1, dim1: 2}
  - k1: {op: reshape, shape: [-1, 3, 32], input: k0}
  - k: {op: transpose, dim0: 1, dim1: 2}
  - kt: {op: transpose, dim0: 2, dim1: 3}
  - logits: {op: matmul, input: [q, kt]}
  - logit_scale: {op: parameter, shape: [3, 1, 1], init: 2.302585LAYOUT}
  - clamped: {op: clamp, max: 4.605170}
  - scale: {op: exp}
  - scaled: {op: mul, input: [logits, scale]}
"""


def test_scores_of_a_matmul_of_reshaped_maps_take_a_per_head_scale_of_their_own_layout() -> None:
    # (a reshape to 3+ dims makes a map: these scores are channels-first, as the (3, 1, 1) is by its rank)
    for layout in ("", ", layout: channels_first"):
        model = resgraph.build(SWIN_FROM_A_PROJECTION.replace("LAYOUT", layout), seed=0)
        x = torch.randn(2, 16, 96)
        q, k, _ = model.qkv(x).chunk(3, dim=-1)
        q, k = (t.reshape(2, 16, 3, 32).transpose(1, 2) for t in (q, k))
        torch.testing.assert_close(model(x), (q @ k.transpose(2, 3)) * model.logit_scale.clamp(max=4.605170).exp())


def test_a_declared_layout_unlike_the_scores_one_is_named_even_through_the_layers_after_it() -> None:
    # The refused operand is `scale`, exp(clamp(logit_scale)): the hint follows it back to the parameter.
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(SWIN_FROM_A_PROJECTION.replace("LAYOUT", ", layout: features_last"))
    (problem,) = caught.value.diagnostics
    assert (problem.location.line, problem.hint) == (16, (
        "'logit_scale' declares `layout: features_last`, but 'logits' (3, 16, 16) is channels-first: if its dims "
        "pair with those of 'logits' as torch broadcasts them, write `layout: channels_first` on 'logit_scale'"))
    # an sdpa output (features-last) times exp(a gate without `layout`): the gate is named, not `exp`
    undeclared = SWIN_V2_COSINE.replace("                layout: features_last}", "                }").replace(
        "  - gated: {op: mul, input: [attn, head_gate]}",
        "  - positive: {op: exp, input: head_gate}\n  - gated: {op: mul, input: [attn, positive]}")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(undeclared)
    (problem,) = caught.value.diagnostics
    assert "layer 'gated' (mul)" in problem.message and problem.hint is not None
    assert problem.hint.startswith("'head_gate' is a stored tensor") and problem.hint.endswith(
        "write `layout: features_last` on it")


def test_rotary_position_embedding_from_parts_equals_a_hand_written_one() -> None:
    """RoPE (the rotate-half form): angles = positions x inverse frequencies, then
    (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos), with arange, constant, matmul, sin, cos."""
    dim, length = 8, 5
    inv_freq = [1.0 / 10000 ** (2 * i / dim) for i in range(dim // 2)]
    spec = f"""resgraph: 1
name: Rotary
inputs:
  x: [{length}, {dim}]
layers:
  - positions: {{op: arange, stop: {length}, dtype: float32}}
  - column: {{op: reshape, shape: [{length}, 1]}}
  - inv_freq: {{op: constant, value: {inv_freq}, shape: [1, {dim // 2}]}}
  - angles: {{op: matmul, input: [column, inv_freq]}}
  - cos: {{op: cos}}
  - sin: {{op: sin, input: angles}}
  - halves: {{op: chunk, chunks: 2, dim: -1, outputs: [x1, x2], input: x}}
  - x1_cos: {{op: mul, input: [x1, cos]}}
  - x2_sin: {{op: mul, input: [x2, sin]}}
  - first: {{op: sub, input: [x1_cos, x2_sin]}}
  - x1_sin: {{op: mul, input: [x1, sin]}}
  - x2_cos: {{op: mul, input: [x2, cos]}}
  - second: {{op: add, input: [x1_sin, x2_cos]}}
  - rotated: {{op: concat, input: [first, second], dim: -1}}
"""
    model = resgraph.build(spec)
    x = torch.randn(3, length, dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * torch.tensor(inv_freq)[None, :]
    x1, x2 = x.chunk(2, dim=-1)
    expected = torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], dim=-1)
    torch.testing.assert_close(model(x), expected)
    assert dict(model.named_buffers()).keys() == {"positions", "inv_freq"} and not list(model.parameters())
    assert model.state_dict() == {}  # derived constants are not saved


def test_attention_macs_count_what_flop_counter_counts() -> None:
    from test_summary import counted_flops

    for spec in (CAUSAL, heads_spec(4, 2)):
        graph = resgraph.check(spec)
        model = resgraph.build(spec, seed=0)
        assert 2 * resgraph.summary(graph).matmul_macs == counted_flops(model, torch.randn(1, 7 if spec is CAUSAL
                                                                                            else 6, 16))


@pytest.mark.parametrize("extra", ["add_bias_kv: true", "add_zero_attn: true",
                                   "add_bias_kv: true, add_zero_attn: true"])
def test_causal_attention_with_extra_keys_equals_torch_with_the_causal_mask(extra: str) -> None:
    """With add_bias_kv / add_zero_attn, torch appends keys every position may attend to (it widens the
    mask for them); the causal model equals torch's module given the causal mask, bias key included."""
    model = resgraph.build(CAUSAL.replace("dropout: 0.0", f"dropout: 0.0, {extra}"), seed=0).eval()
    reference = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv="add_bias_kv" in extra,
                                      add_zero_attn="add_zero_attn" in extra).eval()
    reference.load_state_dict(model.attn.state_dict())
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        expected = reference(x, x, x, attn_mask=causal_mask(7), need_weights=False)[0]
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert_causal(model, x, 7)


GQA_INPUTS = """resgraph: 1
name: GQA
inputs:
  q: [{heads}, 5, 8]
  k: [{key_heads}, 5, 8]
  v: [{value_heads}, 5, 8]
layers:
  - att: {{op: scaled_dot_product_attention, input: [q, k, v], enable_gqa: true}}
"""


# torch 2.13's rule with enable_gqa: k's and v's head counts each divide q's (equal counts included, k's
# and v's need not agree); any other counts fail in torch ("must divide the number of heads in query").
@pytest.mark.parametrize("declared", [(4, 2, 2), (2, 2, 2)], ids=["declared grouped", "declared equal"])
@pytest.mark.parametrize("heads", [(2, 2, 2), (4, 4, 4), (4, 2, 2), (4, 1, 1), (4, 2, 1), (4, 4, 2), (2, 1, 2),
                                   (6, 3, 3), (6, 3, 2), (8, 4, 2)])
def test_grouped_query_attention_runs_at_every_head_count_torch_runs(declared: tuple[int, int, int],
                                                                    heads: tuple[int, int, int]) -> None:
    spec = GQA_INPUTS.format(heads=declared[0], key_heads=declared[1], value_heads=declared[2])
    model = resgraph.build(spec, seed=0).eval()
    q, k, v = (torch.randn(2, count, 5, 8) for count in heads)
    torch.testing.assert_close(model(q, k, v), F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


@pytest.mark.parametrize("heads", [(2, 4, 4), (4, 3, 3), (4, 2, 3), (4, 4, 8)])
def test_grouped_query_attention_refuses_head_counts_that_do_not_divide_the_query_heads(
        heads: tuple[int, int, int]) -> None:
    model = resgraph.build(GQA_INPUTS.format(heads=4, key_heads=2, value_heads=2), seed=0).eval()
    q, k, v = (torch.randn(2, count, 5, 8) for count in heads)
    with pytest.raises(RuntimeError, match="must divide the number of heads in"):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="must"):
        model(q, k, v)


SDPA_HEADS = (GQA_INPUTS.replace(", enable_gqa: true", "").replace("k: [{key_heads}, 5, 8]", "k: [{key_heads}, 6, 8]")
              .replace("v: [{value_heads}, 5, 8]", "v: [{value_heads}, 6, 3]"))


# Without enable_gqa torch broadcasts the head counts as a matmul's batch dims (q k^T, then times v): each
# count is the largest or 1. One key/value head serves every query head; one query head meets them all.
@pytest.mark.parametrize("heads", list(itertools.product((1, 2, 4), repeat=3)), ids=str)
def test_sdpa_heads_broadcast_as_torch_broadcasts_them(heads: tuple[int, int, int]) -> None:
    q, k, v = torch.randn(2, heads[0], 5, 8), torch.randn(2, heads[1], 6, 8), torch.randn(2, heads[2], 6, 3)
    spec = SDPA_HEADS.format(heads=heads[0], key_heads=heads[1], value_heads=heads[2])
    try:
        expected = F.scaled_dot_product_attention(q, k, v)
    except RuntimeError:
        with pytest.raises(resgraph.SpecError, match="enable_gqa: true"):
            resgraph.check(spec)
        return
    model = resgraph.build(spec).eval()
    torch.testing.assert_close(model(q, k, v), expected)
    row = resgraph.summary(spec).rows[-1]
    assert row.shape == list(expected.shape[1:])
    # q k^T, then times v, per head of the output (flop_counter's sdpa count: one batch of 1)
    assert row.macs == expected.shape[1] * 5 * 6 * (8 + 3)


def test_sdpa_one_key_value_head_declared_admits_one_or_the_query_heads() -> None:
    model = resgraph.build(SDPA_HEADS.format(heads=4, key_heads=1, value_heads=1)).eval()
    for key_heads, value_heads in ((1, 1), (4, 4), (1, 4), (4, 1)):
        q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, key_heads, 6, 8), torch.randn(2, value_heads, 6, 3)
        torch.testing.assert_close(model(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="k"):
        model(torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 3))


@pytest.mark.parametrize("mask_heads", [4, 1])
def test_sdpa_mask_broadcasts_to_the_heads_of_the_output_not_of_q(mask_heads: int) -> None:
    """One query head over 4 key/value heads gives 4 heads of scores: a mask of 4 heads fits them, and one
    declared with 1 takes 1 or 4."""
    spec = (SDPA_HEADS.format(heads=1, key_heads=4, value_heads=4).replace("input: [q, k, v]", "input: [q, k, v, m]")
            .replace("  v: [4, 6, 3]\n", f"  v: [4, 6, 3]\n  m: {{shape: [{mask_heads}, 5, 6], dtype: bool}}\n"))
    model = resgraph.build(spec).eval()
    q, k, v = torch.randn(2, 1, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 3)
    for heads in {mask_heads, 4}:
        mask = torch.rand(2, heads, 5, 6) > 0.3
        mask[..., 0] = True
        torch.testing.assert_close(model(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_grouped_query_attention_names_each_count_that_does_not_divide_the_query_heads() -> None:
    with pytest.raises(resgraph.SpecError, match="4 query heads cannot share 3 value heads"):
        resgraph.check(GQA_INPUTS.format(heads=4, key_heads=2, value_heads=3))


# --- mask dims declared 1 broadcast, as torch broadcasts them ------------------------------------------

SDPA_MASKED = """resgraph: 1
name: Masked
inputs:
  x: [7, 24]
  mask: {{shape: {mask}, dtype: bool}}
layers:
  - qkv: {{op: Linear, out_features: 72, input: x}}
  - parts: {{op: chunk, chunks: 3, dim: -1, outputs: [q, k, v]}}
  - qr: {{op: reshape, shape: [-1, 3, 8], input: q}}
  - qh: {{op: transpose, dim0: 1, dim1: 2}}
  - kr: {{op: reshape, shape: [-1, 3, 8], input: k}}
  - kh: {{op: transpose, dim0: 1, dim1: 2}}
  - vr: {{op: reshape, shape: [-1, 3, 8], input: v}}
  - vh: {{op: transpose, dim0: 1, dim1: 2}}
  - att: {{op: scaled_dot_product_attention, input: [qh, kh, vh, mask]}}
"""


def _sdpa_masked(model: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    q, k, v = (part.reshape(x.shape[0], x.shape[1], 3, 8).transpose(1, 2) for part in model.qkv(x).chunk(3, -1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# (declared mask, x length, mask shapes per sample torch runs, mask shapes it refuses): torch 2.13 broadcasts an
# sdpa mask to (heads, L, S), so a dim declared 1 may be 1 or the full size, at any length
BROADCAST_MASKS = {
    "(1, 1, S)": ([1, 1, 7], 7, [(3, 1, 7), (1, 7, 7), (3, 7, 7), (1, 1, 7)], [(2, 1, 7), (1, 5, 7), (3, 7, 6)]),
    "(1, 1, S) at another length": ([1, 1, 7], 10, [(1, 10, 10), (3, 1, 10), (3, 10, 10)], [(1, 7, 10), (2, 1, 10)]),
    "(1, L, S)": ([1, 7, 7], 9, [(1, 9, 9), (3, 9, 9)], [(2, 9, 9), (3, 7, 9)]),
}


@pytest.mark.parametrize("form", BROADCAST_MASKS)
def test_an_sdpa_mask_dim_declared_1_may_be_1_or_the_full_size_as_torch_broadcasts_it(form: str) -> None:
    declared, length, runs, refused = BROADCAST_MASKS[form]
    model = resgraph.build(SDPA_MASKED.format(mask=declared), seed=0).eval()
    x = torch.randn(2, length, 24)
    for shape in runs:
        mask = torch.rand(2, *shape) > 0.3
        mask[..., 0] = True
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask), _sdpa_masked(model, x, mask), msg=str(shape))
    for shape in refused:
        mask = torch.ones(2, *shape, dtype=torch.bool)
        with pytest.raises(RuntimeError):  # torch refuses it too
            _sdpa_masked(model, x, mask)
        with pytest.raises(ValueError, match="must"):
            model(x, mask)


def test_the_size_report_states_a_broadcast_mask_dim_as_1_or_the_size_it_broadcasts_to() -> None:
    report = resgraph.valid_sizes(SDPA_MASKED.format(mask=[1, 1, 7]))
    rules = {f"{dim.input}.{dim.name}": dim.rule.describe(dim.name) for dim in report.dims if dim.free}
    assert rules == {"x.L": "any L", "mask.L1": "L1 in {1, 3}", "mask.L2": "L2 in {1, 7}", "mask.L3": "any L3"}
    assert "together: mask.L2 in (1, x.L), as 'att' needs" in report.format("Masked")


@pytest.mark.parametrize("declared", [1, 4])
def test_a_multihead_attention_mask_of_one_head_or_of_every_head_runs_at_either(declared: int) -> None:
    spec = ("resgraph: 1\nname: M\ninputs:\n  x: [6, 16]\n"
            f"  mask: {{shape: [{declared}, 6, 6], dtype: bool}}\nlayers:\n"
            "  - attn: {op: MultiheadAttention, num_heads: 4, input: [x, mask], masks: [attn_mask]}\n")
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, 6, 16)
    for heads in (1, 4):
        blocked = torch.rand(2, heads, 6, 6) > 0.7
        blocked[..., 0] = False
        expected = model.attn(x, x, x, attn_mask=blocked.expand(-1, 4, -1, -1).flatten(0, 1), need_weights=False)[0]
        with torch.no_grad():
            torch.testing.assert_close(model(x, blocked), expected)
    with pytest.raises(ValueError, match="must"):
        model(x, torch.zeros(2, 2, 6, 6, dtype=torch.bool))


FLOAT_MASKS = {
    "MultiheadAttention attn_mask": ("  am: {shape: [6, 5]}\n",
                                     "{op: MultiheadAttention, num_heads: 2, input: [x, y, y, am], masks: [attn_mask]}",
                                     lambda length, source: torch.randn(2, length, source)),
    "MultiheadAttention key_padding_mask": (
        "  am: {shape: [5]}\n",
        "{op: MultiheadAttention, num_heads: 2, input: [x, y, y, am], masks: [key_padding_mask]}",
        lambda length, source: torch.randn(2, source)),
    "sdpa": ("  am: {shape: [6, 5]}\n", "{op: scaled_dot_product_attention, input: [x, y, y, am]}",
             lambda length, source: torch.randn(2, length, source)),
}


@pytest.mark.parametrize("form", FLOAT_MASKS)
def test_a_float_mask_is_positions_and_leaves_the_lengths_free_as_a_bool_one_does(form: str) -> None:
    """A float mask's last dim is the key positions, not features: it held the keys to their declared length
    (`resgraph sizes` said `F = 5 (fixed by the layers' parameters)`)."""
    declaration, layer, make_mask = FLOAT_MASKS[form]
    spec = (f"resgraph: 1\nname: M\ninputs:\n  x: [6, 16]\n  y: [5, 16]\n{declaration}layers:\n"
            f"  - att: {layer}\n")
    model = resgraph.build(spec, seed=0).eval()
    for length, source in ((6, 5), (3, 9), (11, 2)):
        x, y, mask = torch.randn(2, length, 16), torch.randn(2, source, 16), make_mask(length, source)
        with torch.no_grad():
            out = model(x, y, mask)
            if "sdpa" in form:
                expected = F.scaled_dot_product_attention(x, y, y, attn_mask=mask)
            else:
                extra = {"attn_mask": mask.repeat_interleave(2, 0)} if "attn" in form else {"key_padding_mask": mask}
                expected = model.att(x, y, y, need_weights=False, **extra)[0]
        torch.testing.assert_close(out, expected)
    free = [f"{dim.input}.{dim.name}" for dim in resgraph.valid_sizes(spec).dims if dim.free]
    assert {"x.L", "y.L"} <= set(free) and any(name.startswith("am.") for name in free)


@pytest.mark.parametrize("dtype", ["float32", "bool"])
def test_an_sdpa_mask_per_head_leaves_the_head_count_free(dtype: str) -> None:
    """A float (heads, L, S) mask read as a channels-first map held its first dim, the heads, at the declared
    4 (as a map's channels), and q, k and v with it, though nothing with weights fixes them; a bool one did not."""
    spec = ("resgraph: 1\nname: M\ninputs:\n  q: [4, 5, 8]\n  k: [4, 7, 8]\n"
            f"  mask: {{shape: [4, 5, 7], dtype: {dtype}}}\n"
            "layers:\n  - a: {op: scaled_dot_product_attention, input: [q, k, k, mask]}\n")
    model = resgraph.build(spec)
    for heads, length, source in ((4, 5, 7), (6, 3, 9), (1, 2, 2)):
        q, k = torch.randn(2, heads, length, 8), torch.randn(2, heads, source, 8)
        scores = torch.randn(2, heads, length, source)
        mask = scores if dtype == "float32" else scores > -1
        with torch.no_grad():
            torch.testing.assert_close(model(q, k, mask), F.scaled_dot_product_attention(q, k, k, attn_mask=mask))
    dims = {f"{dim.input}.{dim.name}": dim for dim in resgraph.valid_sizes(spec, low=1, high=8).dims}
    heads = "mask.C" if dtype == "float32" else "mask.L1"  # (a float mask keeps a map's dim names: T5's mask.W)
    assert dims[heads].free and dims[heads].valid == tuple(range(1, 9)) and "q.L1" in dims[heads].linked
