"""Compiled modules are ordinary, correct PyTorch modules.

The reference for the tutorial is the hand-written module a PyTorch user would write, with the
same submodule names, so the compiled state_dict loads into it with strict=True.
"""

from __future__ import annotations

import copy
import io
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import resgraph
from bench.references import TutorialResNet
from conftest import BUILDING_EXAMPLES, EXAMPLES, small_params


@pytest.fixture
def tutorial() -> nn.Module:
    return resgraph.build(EXAMPLES / "tutorial.yaml", seed=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tutorial_equals_hand_written_module_with_the_same_weights(tutorial: nn.Module, mode: str) -> None:
    reference = TutorialResNet()
    reference.load_state_dict(tutorial.state_dict(), strict=True)
    getattr(tutorial, mode)()
    getattr(reference, mode)()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(tutorial(x), reference(x), rtol=0, atol=0)


def test_tutorial_parameter_count_matches_the_reference(tutorial: nn.Module) -> None:
    count = sum(p.numel() for p in tutorial.parameters())
    assert count == sum(p.numel() for p in TutorialResNet().parameters()) == 268_928


def test_class_is_named_after_the_spec_and_keeps_it(tutorial: nn.Module) -> None:
    assert type(tutorial).__name__ == "TutorialResNet"
    assert isinstance(tutorial, nn.Module) and isinstance(tutorial.spec, resgraph.Spec)
    assert tutorial.spec.name == "TutorialResNet"


def test_forward_is_straight_line_generated_code(tutorial: nn.Module) -> None:
    code = tutorial.code
    assert code.startswith("def forward(self, x):")
    assert "for " not in code and "getattr" not in code  # no interpretation of a node list
    assert "res1_conv2 += self.shortcut1(x)" in code
    assert "# (N, 128, 32, 32)" in code


def test_it_trains(tutorial: nn.Module) -> None:
    optimizer = torch.optim.SGD(tutorial.parameters(), lr=0.05)
    x, target = torch.randn(8, 3, 32, 32), torch.randn(8, 128, 32, 32)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(tutorial(x), target)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in tutorial.parameters())


def test_state_dict_round_trips_into_a_fresh_build(tutorial: nn.Module) -> None:
    other = resgraph.build(EXAMPLES / "tutorial.yaml", seed=1)
    other.load_state_dict(tutorial.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    tutorial.eval(), other.eval()
    torch.testing.assert_close(other(x), tutorial(x))


def test_seed_makes_initialisation_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = resgraph.build(EXAMPLES / "tutorial.yaml", seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = resgraph.build(EXAMPLES / "tutorial.yaml", seed=7)
    c = resgraph.build(EXAMPLES / "tutorial.yaml", seed=8)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.res1_conv1.weight, c.res1_conv1.weight)


def test_torch_compile_fullgraph_matches_eager(tutorial: nn.Module) -> None:
    tutorial.eval()
    compiled = torch.compile(tutorial, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tutorial(x))


def test_whole_module_pickles_and_deep_copies(tutorial: nn.Module) -> None:
    tutorial.eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(tutorial, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(tutorial)
    unpickled = pickle.loads(pickle.dumps(tutorial))
    for other in (restored, clone, unpickled):
        assert type(other).__name__ == "TutorialResNet" and not other.training
        torch.testing.assert_close(other(x), tutorial(x))
    clone.res1_conv1.weight.data.zero_()
    assert not torch.equal(clone.res1_conv1.weight, tutorial.res1_conv1.weight)


NESTED_BLOCKS = """
resgraph: 1
name: Nested
inputs: {x: [8]}
blocks:
  inner:
    layers:
      - fc: {op: Linear, out_features: 8}
      - act: {op: GELU}
    skips:
      - res: {from: x, to: act, merge: add}
  outer:
    layers:
      - a: {block: inner}
      - norm: {op: LayerNorm}
layers:
  - stack: {block: outer, repeat: 2}
  - head: {op: Linear, out_features: 3}
"""


def test_a_block_instance_pickles_alone_and_loads_in_another_process(tmp_path: pathlib.Path) -> None:
    # torch.save(model.stack[0]): the instance's class is generated, so it travels as its source
    model = resgraph.build(NESTED_BLOCKS, seed=0)
    resgraph.checkpoint(model, blocks=["inner"])
    instance = model.stack[0]
    x = torch.randn(2, 8, requires_grad=True)
    torch.save({"instance": instance, "x": x, "y": instance(x)}, tmp_path / "instance.pt")
    script = (
        "import torch\n"
        f"saved = torch.load({str(tmp_path / 'instance.pt')!r}, weights_only=False)\n"
        "instance = saved['instance']\n"
        "y = instance(saved['x'])\n"
        "torch.testing.assert_close(y, saved['y'], rtol=0, atol=0)\n"
        "y.sum().backward()\n"
        "print(type(instance).__name__, type(instance.a).__name__, type(instance.a)._checkpointed)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Outer", "Inner", "True"]  # the instance's own class, still checkpointed


def test_block_instances_pickle_in_process_as_their_own_classes() -> None:
    model = resgraph.build(NESTED_BLOCKS, seed=0).eval()
    restored = pickle.loads(pickle.dumps(model.stack))  # nn.Sequential of the repeat's 2 instances
    assert [type(m) for m in restored] == [type(m) for m in model.stack]  # the generated classes, found again
    assert restored.state_dict().keys() == model.stack.state_dict().keys()
    x = torch.randn(2, 8)
    torch.testing.assert_close(restored(x), model.stack(x), rtol=0, atol=0)


def test_module_hooks_fire(tutorial: nn.Module) -> None:
    seen = []
    tutorial.res1_conv2.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    tutorial.shortcut2.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    tutorial(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 64, 32, 32), (1, 128, 32, 32)]


def test_batch_size_is_free(tutorial: nn.Module) -> None:
    for batch in (1, 3):
        assert tutorial(torch.randn(batch, 3, 32, 32)).shape == (batch, 128, 32, 32)


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_inferred_shapes_equal_actual_shapes_node_by_node(example: str) -> None:
    params = small_params(example)
    model = resgraph.build(EXAMPLES / example, params=params, seed=0).eval()
    graph = resgraph.check(EXAMPLES / example, params=params)
    actual: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_children():
        # A block with several outputs returns a tuple (only layers are compared below)
        module.register_forward_hook(lambda m, i, o, name=name: actual.__setitem__(
            name, tuple(o.shape[1:]) if isinstance(o, torch.Tensor) else ()))
    with torch.no_grad():
        model(*model.example_inputs(batch=2))  # token ids for the language models
    layers = {n: node for n, node in graph.nodes.items() if node.kind.value == "layer" and n in actual}
    assert layers, "no layer was checked"
    for name, node in layers.items():
        assert actual[name] == node.meta["type"].shape, name


# --- graph semantics ---------------------------------------------------------------------------

def spec_text(layers: str, skips: str = "", extra: str = "") -> str:
    return f"resgraph: 1\nname: M\ninputs:\n  x: [4]\n{extra}layers:\n{layers}" + (f"skips:\n{skips}" if skips else "")


def test_several_skips_into_one_target_merge_in_order_and_later_uses_see_the_result() -> None:
    text = spec_text("  - a: {op: Identity}\n  - b: {op: Identity}\n  - c: {op: Identity}\n  - d: {op: Identity}\n",
                     "  - s1: {from: x, to: c, merge: concat, dim: 1}\n  - s2: {from: a, to: c, merge: mul}\n"
                     "  - s3: {from: c, to: d, merge: concat}\n")
    with pytest.raises(resgraph.SpecError, match="s2"):  # (4,) cannot multiply (8,) without projection
        resgraph.build(text.replace("merge: mul}", "merge: mul, projection: none}"))
    model = resgraph.build(text.replace("merge: mul}", "merge: add, projection: pad}"))
    x = torch.randn(2, 4)
    c = torch.cat([x, x], dim=1) + nn.functional.pad(x, (2, 2))  # s1 first, then s2 on the merged value
    torch.testing.assert_close(model(x), torch.cat([c, c], dim=1))  # s3 reads c after both merges


def test_outputs_default_to_the_last_layer_and_several_outputs_form_a_tuple() -> None:
    text = spec_text("  - a: {op: ReLU}\n  - b: {op: Tanh}\n")
    x = torch.randn(2, 4)
    torch.testing.assert_close(resgraph.build(text)(x), torch.tanh(torch.relu(x)))
    both = resgraph.build(text + "outputs: [a, x]\n")(x)
    assert isinstance(both, tuple) and len(both) == 2
    torch.testing.assert_close(both[0], torch.relu(x))
    torch.testing.assert_close(both[1], x)


def test_several_inputs_and_integer_inputs() -> None:
    text = """
resgraph: 1
name: TwoInputs
inputs:
  tokens: {shape: [5], dtype: int64}
  features: [5, 8]
layers:
  - embed: {op: Embedding, input: tokens, num_embeddings: 20, embedding_dim: 8}
  - joined: {op: add, input: [embed, features]}
  - norm: {op: LayerNorm}
"""
    model = resgraph.build(text, seed=0)
    out = model(torch.randint(0, 20, (2, 5)), torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 8)
    assert "def forward(self, tokens, features):" in model.code


def test_uncurated_torch_layers_are_built_with_inferred_sizes() -> None:
    text = spec_text("  - pad: {op: ConstantPad1d, padding: 2, value: 0.5}\n  - fc: {op: Linear, out_features: 3}\n",
                     extra="")
    text = text.replace("x: [4]", "x: [2, 4]")
    model = resgraph.build(text, seed=0)
    assert model(torch.randn(3, 2, 4)).shape == (3, 2, 3)
    encoder = resgraph.build(
        "resgraph: 1\nname: Enc\ninputs:\n  x: [6, 16]\nlayers:\n"
        "  - block: {op: TransformerEncoderLayer, nhead: 4, dim_feedforward: 32, batch_first: true}\n", seed=0)
    assert encoder.block.self_attn.embed_dim == 16  # d_model inferred from the input
    assert encoder(torch.randn(2, 6, 16)).shape == (2, 6, 16)


def test_build_accepts_a_path_text_or_dict() -> None:
    from_path = resgraph.build(str(EXAMPLES / "residual_mlp.yaml"), seed=0)
    from_text = resgraph.build((EXAMPLES / "residual_mlp.yaml").read_text(), seed=0)
    spec = resgraph.load_spec(EXAMPLES / "residual_mlp.yaml")
    from_dict = resgraph.build(spec.model_dump(by_alias=True, exclude_unset=True), seed=0)
    for model in (from_text, from_dict):
        assert model.state_dict().keys() == from_path.state_dict().keys()
        for a, b in zip(model.state_dict().values(), from_path.state_dict().values()):
            assert torch.equal(a, b)


def test_torch_compile_with_inductor_has_no_graph_breaks() -> None:
    model = resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0).eval()
    x = torch.randn(2, 784)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
