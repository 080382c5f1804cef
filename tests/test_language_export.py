"""The new language constructs survive every way out of resgraph: the standalone `.py` export,
torch.export (dynamic batch and sequence length), torch.compile and ONNX (checked with onnxruntime).

`tests/specs/language_tour.yaml` holds them all: causal and key-padding-masked MultiheadAttention
in blocks, grouped-query scaled_dot_product_attention, every arithmetic op, constant buffers,
`arange` over an input, learned tensors with declared shapes, a frozen one, and a tied LM head.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
from test_export import import_file

import resgraph
from conftest import ROOT

TOUR = ROOT / "tests" / "specs" / "language_tour.yaml"

GPT = """resgraph: 1
name: TinyGPT
inputs:
  tokens: {shape: [8], dtype: int64}
blocks:
  decoder:
    layers:
      - ln_1: {op: LayerNorm, eps: 1e-5}
      - attn: {op: MultiheadAttention, num_heads: 2, is_causal: true}
      - ln_2: {op: LayerNorm, eps: 1e-5}
      - fc:   {op: Linear, out_features: 32}
      - act:  {op: GELU, approximate: tanh}
      - proj: {op: Linear, out_features: 16}
    skips:
      - attn_res: {from: x, to: attn}
      - mlp_res:  {from: attn, to: proj}
layers:
  - wte:       {op: Embedding, num_embeddings: 20, embedding_dim: 16}
  - positions: {op: arange, input: tokens, dim: 1}
  - wpe:       {op: Embedding, num_embeddings: 64, embedding_dim: 16}
  - embedded:  {op: add, input: [wte, wpe]}
  - h:         {block: decoder, repeat: 2}
  - ln_f:      {op: LayerNorm, eps: 1e-5}
  - lm_head:   {op: Linear, out_features: 20, bias: false, tie: {weight: wte.weight}}
outputs: [ln_f, lm_head]
"""


def tour_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    padding = torch.zeros(batch, 8, dtype=torch.bool)
    padding[0, 5:] = True
    return torch.randint(0, 20, (batch, 8)), padding


def assert_outputs_equal(actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...],
                         **tolerance: float) -> None:
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(torch.as_tensor(a), b, **tolerance)


def test_python_export_of_every_construct_round_trips(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(TOUR, seed=0).eval()
    path = tmp_path / "tour.py"
    path.write_text(resgraph.to_python(model))
    exported = import_file(path, "tour").Tour().eval()
    exported.load_state_dict(model.state_dict(), strict=True)
    assert list(exported.state_dict()) == list(model.state_dict())
    assert {k: (tuple(b.shape), b.dtype) for k, b in exported.named_buffers()} == {
        k: (tuple(b.shape), b.dtype) for k, b in model.named_buffers()}
    assert not exported.frozen.requires_grad and exported.lm_head.weight is exported.wte.weight
    inputs = tour_inputs(3)
    with torch.no_grad():
        assert_outputs_equal(exported(*inputs), model(*inputs), rtol=0, atol=0)


def test_torch_export_and_compile_of_every_construct() -> None:
    model = resgraph.build(TOUR, seed=0).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, tour_inputs(2), dynamic_shapes=({0: batch}, {0: batch}))
    inputs = tour_inputs(3)
    with torch.no_grad():
        assert_outputs_equal(program.module()(*inputs), model(*inputs))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert_outputs_equal(compiled(*inputs), model(*inputs))


def test_onnx_export_of_every_construct_matches_onnxruntime(tmp_path: pathlib.Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = resgraph.build(TOUR, seed=0).eval()
    resgraph.to_onnx(model, str(tmp_path / "tour.onnx"))
    session = ort.InferenceSession(str(tmp_path / "tour.onnx"))
    # `ids` is a buffer's node: its output is renamed, since the buffer is an initializer of that name
    assert [o.name for o in session.get_outputs()] == ["lm_head", "proj_t", "ids_1"]
    inputs = tour_inputs(3)
    actual = session.run(None, {name: t.numpy() for name, t in zip(model.graph.inputs, inputs)})
    with torch.no_grad():
        assert_outputs_equal(tuple(torch.from_numpy(a) for a in actual), model(*inputs), rtol=1e-4, atol=1e-4)


class HandWrittenGPT(torch.nn.Module):
    """The reference: GPT-2's computation written out, causal through an explicit mask."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        length = tokens.shape[1]
        x = m.wte(tokens) + m.wpe(torch.arange(length))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
        for block in m.h:
            y = block.ln_1(x)
            x = x + block.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
            x = x + block.proj(torch.nn.functional.gelu(block.fc(block.ln_2(x)), approximate="tanh"))
        hidden = m.ln_f(x)
        return hidden, hidden @ m.wte.weight.T


def test_a_tiny_gpt_is_causal_tied_and_exports_with_a_dynamic_sequence_length(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(GPT, seed=0).eval()
    tokens = torch.randint(0, 20, (2, 8))
    with torch.no_grad():
        assert_outputs_equal(model(tokens), HandWrittenGPT(model)(tokens), rtol=1e-5, atol=1e-5)
        changed = tokens.clone()
        changed[:, 5:] = (changed[:, 5:] + 1) % 20
        torch.testing.assert_close(model(changed)[0][:, :5], model(tokens)[0][:, :5])  # causal
    assert sum(p.numel() for p in model.parameters()) == resgraph.count_parameters(GPT)
    program = torch.export.export(model, (tokens,), dynamic_shapes=model.dynamic_shapes())
    longer = torch.randint(0, 20, (3, 13))  # another batch and sequence length
    with torch.no_grad():
        assert_outputs_equal(program.module()(longer), model(longer))
    ort = pytest.importorskip("onnxruntime")
    resgraph.to_onnx(model, str(tmp_path / "gpt.onnx"))
    session = ort.InferenceSession(str(tmp_path / "gpt.onnx"))
    actual = session.run(None, {"tokens": longer.numpy()})
    with torch.no_grad():
        assert_outputs_equal(tuple(torch.from_numpy(a) for a in actual), model(longer), rtol=1e-4, atol=1e-4)
