"""Held-back cases of the language-reach issue, third pass: the recent features combined (ties in
repeated blocks, multi-output blocks feeding skips, masks shared by block calls with `when:`,
constants in broadcasting arithmetic, collected repeats, features-last concat defaults), each
checked against hand-written torch with the same weights, and the mistakes they exposed.

The specification, as these cases pin it:

- Two free dims the model needs equal after the same one-to-one map (a class token before the
  sequence and a `false` before its key-padding mask: `1 + pad.L == 1 + x.L`) are linked as
  `pad.L == x.L` is: they admit every length together, and the input guard checks them equal.
- An uncurated sequence layer given several inputs, one of which is not a (sequence, features)
  sample, names that input by position and the torch argument it fills (a padding mask passed as
  `TransformerEncoderLayer`'s `src_mask`): the inputs are passed in order.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

import resgraph

HEADER = "resgraph: 1\nname: Net\n"

CLASS_TOKEN_MASK = HEADER + """inputs:
  x: [5, 8]
  pad: {shape: [5], dtype: bool}
layers:
  - cls:   {op: parameter, shape: [1, 1, 8], batch: true, init: normal}
  - seq:   {op: concat, input: [cls, x], dim: 1}
  - nopad: {op: constant, value: [false]}
  - mask:  {op: concat, input: [nopad, pad]}
  - attn:  {op: MultiheadAttention, num_heads: 2, input: [seq, mask], masks: [key_padding_mask]}
"""


def test_a_mask_and_a_sequence_each_grown_by_a_class_token_admit_every_length_together() -> None:
    model = resgraph.build(CLASS_TOKEN_MASK, seed=0).eval()
    for batch, length in ((2, 5), (3, 7), (1, 1)):
        x = torch.randn(batch, length, 8)
        pad = torch.zeros(batch, length, dtype=torch.bool)
        pad[0, length - 1:] = True
        seq = torch.cat([model.cls.expand(batch, -1, -1), x], 1)
        mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), pad], 1)
        expected = model.attn(seq, seq, seq, key_padding_mask=mask, need_weights=False)[0]
        with torch.no_grad():
            torch.testing.assert_close(model(x, pad), expected)
    report = resgraph.valid_sizes(CLASS_TOKEN_MASK)
    lengths = {f"{dim.input}.{dim.name}": dim for dim in report.dims if dim.free and dim.name == "L"}
    assert lengths["x.L"].rule.describe("L") == "any L" and lengths["pad.L"].linked == ("x.L",)
    with pytest.raises(ValueError, match=r"input 'pad' must be \(N, L\) with L = x.L"):
        model(torch.randn(2, 7, 8), torch.zeros(2, 6, dtype=torch.bool))


def test_a_sequence_layers_input_of_the_wrong_rank_is_named_with_the_torch_argument_it_fills() -> None:
    spec = HEADER + """inputs:
  x: [6, 8]
  pad: {shape: [6], dtype: bool}
layers:
  - layer: {op: TransformerEncoderLayer, d_model: 8, nhead: 2, input: [x, pad]}
"""
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (message,) = [d.format() for d in caught.value.diagnostics]
    assert "got (6,) (input 2, passed as torch's `src_mask`)" in message
    assert message.startswith("<string>:7:64: error: layer 'layer' (TransformerEncoderLayer)")


ALBERT_CAUSAL = HEADER + """inputs:
  x: [4, 8]
blocks:
  layer:
    layers:
      - bias: {op: constant, value: [[0.0, -1.0e9, -1.0e9, -1.0e9], [0.0, 0.0, -1.0e9, -1.0e9],
                                     [0.0, 0.0, 0.0, -1.0e9], [0.0, 0.0, 0.0, 0.0]]}
      - attn: {op: MultiheadAttention, num_heads: 2, input: [x, bias], masks: [attn_mask]}
      - fc:   {op: Linear, out_features: 8, tie: {weight: "${None if index == 0 else 'body.0.fc.weight'}"}}
    skips:
      - r: {from: x, to: fc}
layers:
  - body: {block: layer, repeat: 3, collect: true}
  - all:  {op: concat, input: [body.*]}
  - out:  {op: Linear, out_features: 2}
"""


def test_a_tie_in_a_collected_repeat_with_a_mask_constant_per_instance_equals_torch(tmp_path: pathlib.Path) -> None:
    from test_export import import_file

    model = resgraph.build(ALBERT_CAUSAL, seed=0).eval()
    bias = torch.full((4, 4), -1e9).triu(1)

    def reference(x: torch.Tensor) -> torch.Tensor:
        values, h = [], x
        for block in model.body:
            assert block.fc.weight is model.body[0].fc.weight
            h = block.fc(block.attn(h, h, h, attn_mask=bias, need_weights=False)[0]) + h
            values.append(h)
        return model.out(torch.cat(values, -1))  # the features-last default: dim -1

    path = tmp_path / "albert.py"
    path.write_text(resgraph.to_python(model))
    exported = import_file(path, "albert").Net().eval()
    exported.load_state_dict(model.state_dict(), strict=True)
    for batch in (1, 5):
        x = torch.randn(batch, 4, 8)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x))
            torch.testing.assert_close(exported(x), model(x), rtol=0, atol=0)
