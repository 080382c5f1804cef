"""Training at scale: meta builds, materialization, FSDP2 sharding, checkpointing and regional compilation.

Every check compares against plain PyTorch: a seeded CPU build (bit for bit), the same model
without checkpointing, eager execution, or the unsharded model trained in one process.
Multi-process runs use the gloo backend on CPU in subprocesses (tests/fsdp_worker.py).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

import resgraph
from conftest import EXAMPLES, ROOT, small_params
from resgraph import SpecError, UsageError
from resgraph.cli import main
from resgraph.distributed import instances

VIT = EXAMPLES / "vit_b_16.yaml"
TINY_VIT = {"image_size": 16, "patch": 8, "hidden": 32, "depth": 3, "heads": 2, "mlp": 64, "num_classes": 10}
# The ViT-B/16 example at Llama-2-7B's width and depth (hidden 4096, 32 blocks of 32 heads).
VIT_7B = {"hidden": 4096, "depth": 32, "heads": 32, "mlp": 17408}
VIT_7B_PARAMS = 6_720_689_128

# Learned tensors (a class token), GRU and Bilinear (uncurated ops: torch.nn classes resgraph
# knows nothing about), and an automatic Linear projection.
MIXED = """\
resgraph: 1
name: Mixed
blocks:
  cell:
    layers:
      - rnn: {op: GRU, input_size: 16, hidden_size: 16, batch_first: true, output: 0}
      - bil: {op: Bilinear, in1_features: 16, in2_features: 16, out_features: 16, input: [rnn, x]}
inputs: {x: [5, 16]}
layers:
  - token: {op: parameter, shape: [1, 16], init: trunc_normal}
  - seq: {op: concat, input: [token, x], dim: 1}
  - body: {block: cell, repeat: 2}
  - proj: {op: Linear, out_features: 24}
  - out: {op: Linear, out_features: 24}
skips:
  - res: {from: body, to: out}
"""

# Twelve instances of one block, each of another width: twelve distinct generated forwards.
GROWING = """\
resgraph: 1
name: Growing
blocks:
  step:
    params: {width: 8}
    layers:
      - fc: {op: Linear, out_features: "${width}"}
      - act: {op: GELU}
inputs: {x: [8]}
layers:
  - stack: {block: step, repeat: 12, with: {width: "${(index + 1) * 8}"}}
"""


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def gradients(model: torch.nn.Module, x: torch.Tensor, run: Any = None) -> dict[str, torch.Tensor]:
    """The gradients of a loss on `model`'s parameters, computed by `run` (default: `model` itself)."""
    model.zero_grad()
    torch.manual_seed(1)  # dropout draws the same masks in both models
    (model if run is None else run)(x).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def body(source: str) -> str:
    """A `to_python` file without its docstring (which names the spec's digest)."""
    return source.split('"""', 2)[2]


# ---------------------------------------------------------------------------------------------
# Meta builds and materialization


def test_a_meta_build_allocates_nothing_and_is_not_refused_by_the_parameter_limit() -> None:
    with pytest.raises(SpecError, match="6,720,689,128 parameters"):
        resgraph.build(VIT, params=VIT_7B)  # refused before allocating, as before
    model = resgraph.build(VIT, params=VIT_7B, device="meta")
    assert all(t.is_meta for t in tensors(model).values())
    assert sum(p.numel() for p in model.parameters()) == VIT_7B_PARAMS == resgraph.count_parameters(VIT, params=VIT_7B)
    with pytest.raises(SpecError, match="this process would allocate 6,720,689,128 parameters"):
        resgraph.materialize(model)  # the limit applies where weights are allocated


EXAMPLES_TO_MATERIALIZE = ["vit_b_16.yaml", "resnet18.yaml", "residual_mlp.yaml", "efficientnet_b0.yaml",
                           "densenet121.yaml", "unet.yaml", "dag.yaml"]


@pytest.mark.parametrize("example", [*EXAMPLES_TO_MATERIALIZE, "mixed"])
def test_materialize_equals_a_seeded_build_bit_for_bit(example: str) -> None:
    spec: Any = MIXED if example == "mixed" else EXAMPLES / example
    params = {} if example == "mixed" else small_params(example)
    built = tensors(resgraph.build(spec, params=params, seed=3))
    meta = resgraph.build(spec, params=params, device="meta")
    materialized = tensors(resgraph.materialize(meta, seed=3))
    assert list(materialized) == list(built)
    for name, tensor in built.items():
        assert not materialized[name].is_meta and materialized[name].dtype == tensor.dtype
        assert torch.equal(materialized[name], tensor), name


@pytest.mark.parametrize("path", ["out", "body.1", "body.0.rnn"])
def test_an_allocated_submodule_of_the_built_kind_put_in_place_keeps_its_values(path: str) -> None:
    # A pretrained part of the very kind and shapes the build makes: only its being allocated (in a
    # model on meta) tells it apart, and its values are the user's
    built = resgraph.build(MIXED, seed=3)
    pretrained = copy.deepcopy(built.get_submodule(path))
    with torch.no_grad():
        for tensor in pretrained.parameters():
            tensor.fill_(5.0)
    meta = resgraph.build(MIXED, device="meta")
    parent, _, leaf = path.rpartition(".")
    setattr(meta.get_submodule(parent), leaf, pretrained)
    materialized = tensors(resgraph.materialize(meta, seed=3))
    for name, tensor in tensors(built).items():
        if name.startswith(f"{path}."):
            assert (materialized[name] == 5.0).all(), name
        else:  # the rest: bit for bit the seeded build
            assert torch.equal(materialized[name], tensor), name


def test_materialize_without_a_seed_draws_from_the_global_generator_as_a_build_does() -> None:
    torch.manual_seed(11)
    built = resgraph.build(MIXED)
    meta = resgraph.build(MIXED, device="meta")
    torch.manual_seed(11)
    resgraph.materialize(meta)
    assert all(torch.equal(a, b) for a, b in zip(tensors(built).values(), tensors(meta).values()))


def test_a_cpu_device_build_equals_the_default_build() -> None:
    default, on_cpu = resgraph.build(MIXED, seed=2), resgraph.build(MIXED, seed=2, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(tensors(default).values(), tensors(on_cpu).values()))


def test_a_meta_model_prints_its_summary_and_its_code_exports(tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["build", str(VIT), "--device", "meta", *(f"--set={k}={v}" for k, v in VIT_7B.items())]
    assert main([*args, "-o", str(tmp_path / "vit.py")]) == 0
    assert f"Total params: {VIT_7B_PARAMS:,}" in capsys.readouterr().out
    assert "class VisionTransformerB16" in (tmp_path / "vit.py").read_text()


@pytest.mark.parametrize("args, message", [
    (["--device", "meta", "-o", "model.pt"], "has no weights to save"),
    (["--device", "gpu0"], "--device gpu0:"),
])
def test_cli_refuses_to_save_a_meta_model_and_names_a_bad_device(args: list[str], message: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/residual_mlp.yaml", *args]) == 2
    assert message in capsys.readouterr().err



LACKING = [name for name, present in (("cuda", torch.cuda.is_available()), ("xpu", torch.xpu.is_available()))
           if not present]


@pytest.mark.parametrize("device, message", [
    ("gpu", "device='gpu': unknown device type 'gpu'; did you mean 'cuda'? (accepted: cpu, cuda, cuda:N"),
    ("cpu:1", "device='cpu:1': there is one cpu device, with no index but 0: name it cpu (accepted: "),
    (1.5, "device=1.5: a device is named by a string, a torch.device or an index, not a float (accepted: "),
    (-1, "device=-1: a device index is a whole number from 0 to 127 (accepted: "),
    (128, "device=128: a device index is a whole number from 0 to 127 (accepted: "),
    (2**70, f"device={2**70}: a device index is a whole number from 0 to 127 (accepted: "),  # (was a ValueError)
    ("cuda:\u0661", "device='cuda:\u0661': the index after ':' must be a whole number from 0 to 127 (cuda:0, "),
    ("cuda:" + "9" * 5000, "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '999"),
    ("x" * 5000, "device='xxxxxxxx"),
    *((name, f"device={name!r}: this machine cannot allocate there") for name in LACKING),
])
def test_the_api_refuses_a_malformed_device_or_one_this_machine_lacks_as_the_cli_does(device: object,
                                                                                     message: str) -> None:
    """build and materialize name the device and why (torch raised a bare AssertionError, "Torch not
    compiled with CUDA enabled", from inside materialize, after the spec had been checked)."""
    with pytest.raises(UsageError, match=re.escape(message)):
        resgraph.build(EXAMPLES / "residual_mlp.yaml", device=device)
    meta = resgraph.build(EXAMPLES / "residual_mlp.yaml", device="meta")
    with pytest.raises(UsageError, match=re.escape(message)):
        resgraph.materialize(meta, device=device)
    assert all(p.is_meta for p in meta.parameters())  # nothing was moved
    assert resgraph.materialize(meta, device="cpu", seed=0).fc1.weight.equal(
        resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0).fc1.weight)

# The process's own peak from /proc (getrusage's ru_maxrss survives exec: a child started by a
# large pytest process would report pytest's peak).
PEAK_RSS = """
import re
{code}
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
"""


def peak_rss_mib(code: str) -> float:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS.format(code=code)], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_7b_spec_builds_on_meta_within_300_mb_of_importing_torch() -> None:
    args = ["build", "examples/vit_b_16.yaml", "--device", "meta", *(f"--set={k}={v}" for k, v in VIT_7B.items())]
    build = f"from resgraph.cli import main\nassert main({args!r}) == 0"
    torch_alone, built = peak_rss_mib("import torch"), peak_rss_mib(build)
    assert 100 < torch_alone < built < torch_alone + 300


# ---------------------------------------------------------------------------------------------
# Activation checkpointing


def with_checkpoint(text: str) -> str:
    return text.replace("repeat: \"${depth}\",", "repeat: \"${depth}\", checkpoint: true,")


def test_checkpoint_true_in_a_spec_recomputes_each_block_and_leaves_gradients_unchanged() -> None:
    params = {**TINY_VIT, "dropout": 0.1}
    checked_text = with_checkpoint(VIT.read_text())
    assert "checkpoint: true" in checked_text
    plain = resgraph.build(VIT, params=params, seed=0)
    checked = resgraph.build(checked_text, params=params, seed=0)
    assert list(checked.state_dict()) == list(plain.state_dict())
    assert type(checked.encoder[0]).__name__ == type(plain.encoder[0]).__name__
    assert type(checked.encoder[0]).code == type(plain.encoder[0]).code
    assert body(resgraph.to_python(checked)) == body(resgraph.to_python(plain))
    calls: list[str] = []
    for model, label in ((plain, "plain"), (checked, "checked")):
        model.encoder[1].mlp_fc1.register_forward_hook(lambda *_, label=label: calls.append(label))
    x = torch.randn(2, 3, 16, 16)
    expected, actual = gradients(plain, x), gradients(checked, x)
    assert calls.count("plain") == 1 and calls.count("checked") == 2  # the second is the recomputation
    for name, grad in expected.items():
        assert torch.equal(actual[name], grad), name


class StepScaled(torch.nn.Module):
    """A layer that reads a buffer it updates in its forward (a step counter; an EMA codebook alike)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, in_features)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.linear(x) * self.steps


def test_the_recomputation_reads_a_buffer_as_the_forward_read_it() -> None:
    # It read the value the forward left (2 where the forward saw 1): other gradients, silently
    if "StepScaled" not in resgraph.ops.generic.CUSTOM_OPS:
        resgraph.register_op("StepScaled", StepScaled)
    spec = ("resgraph: 1\nname: Steps\nblocks:\n  unit:\n    layers:\n      - scaled: {op: StepScaled}\n"
            "      - norm: {op: BatchNorm1d, momentum: null}\n      - scale: {op: constant, value: [2.0]}\n"
            "      - out: {op: mul, input: [norm, scale]}\n"
            "inputs: {x: [8]}\nlayers:\n  - body: {block: unit, repeat: 2, checkpoint: true}\n")
    checked = resgraph.build(spec, seed=0)
    plain = resgraph.build(spec.replace(", checkpoint: true", ""), seed=0)
    x = torch.randn(4, 8)
    for step in range(2):  # the counter at 1, then 2
        expected, actual = gradients(plain, x), gradients(checked, x)
        for name, grad in expected.items():
            assert torch.equal(actual[name], grad), (step, name)
        for (name, buffer), (_, kept) in zip(plain.named_buffers(), checked.named_buffers()):
            assert torch.equal(kept, buffer), (step, name)  # updated once per step, as without checkpointing
    assert int(checked.body[0].scaled.steps) == 2 and int(checked.body[1].norm.num_batches_tracked) == 2


def test_the_checkpoint_api_checkpoints_chosen_blocks_once_at_the_outermost() -> None:
    nested = ("resgraph: 1\nname: Nested\nblocks:\n  inner:\n    layers:\n      - fc: {op: Linear, out_features: 8}\n"
              "  outer:\n    layers:\n      - a: {block: inner}\n      - b: {block: inner}\n"
              "inputs: {x: [8]}\nlayers:\n  - stack: {block: outer, repeat: 2}\n")
    model = resgraph.checkpoint(resgraph.build(nested, seed=0), blocks=["inner", "outer"])
    checked = [name for name, module in model.named_modules() if getattr(type(module), "_checkpointed", False)]
    assert checked == ["stack.0", "stack.1"]
    resgraph.checkpoint(model, blocks=["inner"])  # now the inner ones too; the class is made once per class
    assert type(model.stack[0].a) is type(model.stack[1].b)
    reference = resgraph.build(nested, seed=0)
    x = torch.randn(3, 8)
    assert all(torch.equal(a, b) for a, b in zip(gradients(model, x).values(), gradients(reference, x).values()))


def test_choosing_an_unknown_block_names_the_known_ones() -> None:
    model = resgraph.build(VIT, params=TINY_VIT, device="meta")
    with pytest.raises(UsageError, match=r"no block named 'encoder'; did you mean 'encoder_block'\?"):
        resgraph.checkpoint(model, blocks=["encoder"])
    with pytest.raises(UsageError, match="its blocks: encoder_block"):
        resgraph.shard(model, blocks=["mlp"])
    assert [name for name, _ in instances(model, "encoder_block")] == ["encoder.0", "encoder.1", "encoder.2"]
    with pytest.raises(UsageError, match="a model returned by resgraph.build, not a Linear"):
        resgraph.compile(torch.nn.Linear(2, 2))
    with pytest.raises(UsageError, match="materialize takes a model from resgraph.build, not Linear"):
        resgraph.materialize(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("blocks, got", [(5, ""), ([["encoder_block"]], ", got list ['encoder_block'] among them"),
                                         (["encoder_block", None], ", got NoneType None among them")])
def test_blocks_that_are_no_list_of_names_are_a_usage_error(blocks: Any, got: str) -> None:
    model = resgraph.build(VIT, params=TINY_VIT, device="meta")
    for choose in (resgraph.checkpoint, resgraph.compile, resgraph.shard):  # (refused before any work)
        with pytest.raises(UsageError, match=re.escape(f"blocks={blocks!r}: expected block names (a list of "
                                                       f"strings, e.g. blocks=['encoder_block']){got}")):
            choose(model, blocks=blocks)


def test_a_checkpointed_model_compiles_whole_without_graph_breaks_and_exports_unchanged() -> None:
    params = {**TINY_VIT, "dropout": 0.1}
    reference = resgraph.build(VIT, params=params, seed=0)
    model = resgraph.checkpoint(resgraph.build(VIT, params=params, seed=0))
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # a graph break would raise
    expected, actual = gradients(reference, x), gradients(model, x, compiled)
    assert max((actual[name] - grad).abs().max().item() for name, grad in expected.items()) < 1e-6
    model.eval(), reference.eval()
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), reference(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Regional compilation


@pytest.fixture
def fresh_dynamo() -> Any:
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_regional_compile_compiles_one_forward_for_identical_blocks(fresh_dynamo: Any) -> None:
    reference = resgraph.build(VIT, params=TINY_VIT, seed=0)
    model = resgraph.compile(resgraph.build(VIT, params=TINY_VIT, seed=0), backend="aot_eager")
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 16, 16)
    expected, actual = gradients(reference, x), gradients(model, x)
    assert fresh_dynamo["stats"]["unique_graphs"] == 1  # three encoder blocks, one compiled forward
    assert max((actual[name] - grad).abs().max().item() for name, grad in expected.items()) < 1e-6


def test_regional_compile_of_many_distinct_checkpointed_blocks_compiles_each_once(fresh_dynamo: Any) -> None:
    reference = resgraph.build(GROWING, seed=0)
    model = resgraph.compile(resgraph.checkpoint(resgraph.build(GROWING, seed=0)), backend="aot_eager")
    x = torch.randn(2, 8)
    expected, actual = gradients(reference, x), gradients(model, x)
    # Twelve classes share the checkpoint wrapper's source but not its code object, so none
    # hits torch._dynamo's limit of 8 compiled entries per code object.
    assert fresh_dynamo["stats"]["unique_graphs"] == 12
    assert max((actual[name] - grad).abs().max().item() for name, grad in expected.items()) < 1e-6


def test_the_training_section_chooses_the_default_blocks_and_is_checked_at_build() -> None:
    text = GROWING.replace("inputs:", "training:\n  compile: [step]\n  shard: [step]\ninputs:")
    once = text.replace("repeat: 12, with: {width: \"${(index + 1) * 8}\"}", "with: {width: 8}")
    model = resgraph.compile(resgraph.build(once, seed=0), backend="eager")
    assert model.stack._compiled_call_impl is not None  # not repeated, yet chosen by the plan
    bad = text.replace("shard: [step]", "shard: [stpe]")
    with pytest.raises(SpecError) as caught:
        resgraph.build(bad)
    message = str(caught.value)
    assert re.search(r"<string>:\d+:\d+: error: training.shard: Growing has no block named 'stpe'; "
                     r"did you mean 'step'\?", message), message


# ---------------------------------------------------------------------------------------------
# FSDP2 on two processes (gloo, CPU)


def run_fsdp(tmp_path: pathlib.Path, spec: pathlib.Path, params: dict[str, Any], *flags: str) -> dict[str, Any]:
    out = tmp_path / "fsdp.json"
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "fsdp_worker.py"), str(out), str(spec),
                             json.dumps(params), *flags], capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def assert_trained_like_one_process(report: dict[str, Any]) -> None:
    assert report["init_diff"] == 0.0  # shard, then materialize: the seeded build's weights
    assert len(report["losses"]) == 3
    assert all(abs(sharded - single) < 1e-6 for sharded, single in report["losses"])
    assert max(report["grad_diffs"]) < 1e-6 and report["param_diff"] < 1e-6
    assert report["reload_diff"] == 0.0  # torch.distributed.checkpoint round trip
    assert report["full_state_keys_equal"] and report["full_state_diff"] < 1e-6
    assert report["same_python_export"]


def test_fsdp_sharded_checkpointed_compiled_vit_trains_like_one_process(tmp_path: pathlib.Path) -> None:
    report = run_fsdp(tmp_path, VIT, {**TINY_VIT, "depth": 2}, "checkpoint", "compile", "float64")
    assert report["fsdp_units"] == 3  # two encoder blocks, then the root
    assert report["compiled_graphs"] >= 1
    assert_trained_like_one_process(report)


def test_fsdp_sharded_model_without_blocks_trains_like_one_process(tmp_path: pathlib.Path) -> None:
    report = run_fsdp(tmp_path, EXAMPLES / "residual_mlp.yaml", {}, "eval")
    assert report["fsdp_units"] == 1  # the root only
    assert_trained_like_one_process(report)


def test_fsdp_sharded_small_llama_trains_like_one_process(tmp_path: pathlib.Path) -> None:
    """The Llama-2-7B spec at 2 layers and width 64 (grouped-query attention), one FSDP unit per layer."""
    small = {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32, "vocab_size": 128,
             "seq_len": 16}
    report = run_fsdp(tmp_path, EXAMPLES / "llama_7b.yaml", small, "checkpoint", "float64")
    assert report["fsdp_units"] == 3  # two decoder layers, then the root
    assert_trained_like_one_process(report)
