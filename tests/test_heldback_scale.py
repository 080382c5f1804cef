"""Training at scale, held-back cases of issue 15: the limits `materialize` applies; saving, exporting
and loading weights into sharded and meta-built models; sharding twice; materializing through
torch.compile's wrapper; the `training:` plan under parameters that leave a block uncalled, and
checked by `validate`; and the command line's `--device meta` with flags it cannot honour.

Each case is one the issue's own tests did not try. Sharding runs in this process, in a gloo group
of one (FSDP2 needs a group; one rank shows every refusal and every mismatch of Tensor and DTensor).
"""

from __future__ import annotations

import copy
import io
import pathlib
import pickle
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist

import resgraph
from conftest import EXAMPLES
from resgraph import SpecError, UsageError
from resgraph.cli import main

# A small model holding a constant of 9,000,000 elements (36 MB): past a limit of 1,000,000.
BIG_CONSTANT = """\
resgraph: 1
name: BigConstant
inputs: {x: [8]}
layers:
  - fc: {op: Linear, out_features: 8}
  - table: {op: full, shape: [3000, 3000], value: 0.5}
"""


def test_materialize_bounds_constants_as_a_build_does() -> None:
    with pytest.raises(SpecError) as built:
        resgraph.build(BIG_CONSTANT, max_params=1_000_000)
    assert "<string>:6:5: error: layer 'table' (full): the model's constants would hold 9,000,000 elements" in str(
        built.value)
    model = resgraph.build(BIG_CONSTANT, device="meta")  # a meta build allocates nothing: no limit
    with pytest.raises(SpecError) as materialized:
        resgraph.materialize(model, max_params=1_000_000)  # allocated 36 MB regardless
    message = str(materialized.value)
    assert ("<string>:6:5: error: layer 'table' (full): the model's constants would hold 9,000,000 elements, more "
            "than the limit of 1,000,000") in message
    assert "max_params=N" in message and "device='meta'" not in message  # it is on meta already
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])  # refused before allocating
    resgraph.materialize(model, max_params=9_000_000, seed=0)
    assert torch.equal(model.table, torch.full((3000, 3000), 0.5))
    assert torch.equal(model.fc.weight, resgraph.build(BIG_CONSTANT, seed=0, max_params=None).fc.weight)


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A gloo process group of this process alone, as FSDP2 needs one to shard (over one rank)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def sharded_mlp() -> torch.nn.Module:
    return resgraph.materialize(resgraph.shard(resgraph.build(EXAMPLES / "residual_mlp.yaml", device="meta")), seed=0)


@pytest.mark.usefixtures("one_process_group")
def test_torch_save_of_a_sharded_model_is_refused_not_written_unloadable(tmp_path: pathlib.Path) -> None:
    model = sharded_mlp()
    # torch.save wrote this process's DTensor shards, and torch.load then failed in load_state_dict
    # ("got mixed torch.Tensor and DTensor"): a file that loads as no model.
    for save in (lambda: torch.save(model, io.BytesIO()), lambda: pickle.dumps(model)):
        with pytest.raises(UsageError, match=r"^ResidualMLP is sharded \(fc1\.weight is a DTensor\): torch\.save\("
                                             r"model\) \(or pickle\) needs whole weights; gather them"):
            save()
    with pytest.raises(UsageError, match=r"is sharded \(fc1\.weight is a DTensor\): a \.pt file needs whole weights"):
        resgraph.save(model, tmp_path / "mlp.pt")  # (resgraph.save said so already)
    assert not list(tmp_path.iterdir())


@pytest.mark.usefixtures("one_process_group")
def test_exporting_a_sharded_model_says_it_is_sharded(tmp_path: pathlib.Path) -> None:
    """torch.export failed reading a FakeTensor's data pointer, and the ONNX exporter on a DTensor's repr."""
    model = sharded_mlp()
    with pytest.raises(UsageError, match=r"^ResidualMLP is sharded \(fc1\.weight is a DTensor\): torch\.export needs "
                                         r"whole weights; gather them .* into an ordinary resgraph\.build"):
        resgraph.export_program(model)
    pytest.importorskip("onnxscript")
    with pytest.raises(UsageError, match=r"is sharded \(fc1\.weight is a DTensor\): an ONNX file needs whole weights"):
        resgraph.save(model, tmp_path / "mlp.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.usefixtures("one_process_group")
def test_sharding_a_sharded_model_again_is_a_usage_error() -> None:
    model = sharded_mlp()
    # FSDP2's own refusal was an AssertionError with the whole module's repr.
    with pytest.raises(UsageError, match=r"^ResidualMLP is sharded already \(the model is an FSDP2 unit\): fully_shard "
                                         r"takes a module once"):
        resgraph.shard(model)
    vit = resgraph.build(EXAMPLES / "vit_b_16.yaml", device="meta",
                         params={"image_size": 16, "patch": 8, "hidden": 32, "depth": 2, "heads": 2, "mlp": 64})
    from torch.distributed.fsdp import fully_shard

    fully_shard(vit.encoder[1])  # by hand, before resgraph.shard
    with pytest.raises(UsageError, match=r"\(encoder\.1 is an FSDP2 unit\)"):
        resgraph.shard(vit)


@pytest.mark.usefixtures("one_process_group")
def test_deepcopy_of_a_sharded_model_or_instance_is_a_usage_error_not_a_bare_assert() -> None:
    """FSDP2's class raised AssertionError('FSDP does not support deepcopy...'), naming neither the model nor a way."""
    params = {"image_size": 16, "patch": 8, "hidden": 32, "depth": 2, "heads": 2, "mlp": 64}
    plain = resgraph.build(EXAMPLES / "vit_b_16.yaml", params=params, seed=0)
    copied = copy.deepcopy(plain)  # before sharding: an ordinary copy
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), plain.state_dict().values()))
    vit = resgraph.materialize(resgraph.shard(plain), seed=0)
    for module, name in ((vit, "VisionTransformerB16"), (vit.encoder[0], "EncoderBlock")):
        with pytest.raises(UsageError) as refused:
            copy.deepcopy(module)
        assert str(refused.value) == (
            f"cannot copy.deepcopy {name}: it is sharded (resgraph.shard), and FSDP2 cannot copy its shards; deepcopy "
            "it before sharding, or build another (resgraph.build, or resgraph.rebuild(model.build_record) for this "
            "architecture) and shard that")
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 1000)  # the model is as it was
    assert copy.deepcopy(copied) is not copied  # an unsharded model of the same classes still copies


@pytest.mark.parametrize("args, message", [
    (["--device", "meta", "--seed", "0"],
     "--seed chooses the initial weights, and --device meta allocates none: drop --seed, or build on a real "
     "device\n"),
    (["--device", "meta", "--max-params", "5"],
     "--max-params bounds the weights allocated, and --device meta allocates none"),
    (["--device", "meta:0", "-o", "mlp.pt"], "-o mlp.pt: a model built with --device meta:0 has no weights to save"),
], ids=["seed", "max-params", "meta:0"])
def test_cli_meta_builds_refuse_flags_they_would_ignore(args: list[str], message: str, tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Each ran with exit 0 and did nothing (`meta:0` failed only after the build, in the save)."""
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(EXAMPLES / "residual_mlp.yaml"), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"resgraph: error: {message}")
    assert captured.out == "" and not list(tmp_path.iterdir())  # refused before building


@pytest.mark.parametrize("device", ["meta", "meta:0", torch.device("meta"), None])
def test_python_meta_builds_refuse_a_seed_as_the_cli_does(device: object) -> None:
    """build(seed=0, device="meta") returned weights with nothing seeded, silently; materialize takes the seed."""
    where = f"device={device!r}" if device is not None else "the default device, meta,"
    with torch.device("meta"), pytest.raises(UsageError) as refused:
        resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0, device=device)
    assert str(refused.value) == (f"seed=0 chooses the initial weights, and {where} allocates none: drop seed, or give "
                                  "it to resgraph.materialize(model, seed=0), which allocates and initialises them")
    model = resgraph.materialize(resgraph.build(EXAMPLES / "residual_mlp.yaml", device="meta"), seed=0)
    assert model.fc1.weight.equal(resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0).fc1.weight)


def test_a_meta_model_converted_before_materialize_pickles_with_its_dtypes() -> None:
    """A meta build converted (`.to(torch.bfloat16)`, the usual step before materializing a large
    model) came back from torch.save/pickle float32: only a meta model's values were skipped on
    unpickling, and its dtypes with them."""
    params = {"image_size": 16, "patch": 8, "hidden": 32, "depth": 2, "heads": 2, "mlp": 64, "num_classes": 10}
    model = resgraph.build(EXAMPLES / "vit_b_16.yaml", params=params, device="meta").to(torch.bfloat16)
    model.head.double()  # and one layer of its own dtype
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    expected = {name: (t.dtype, t.shape) for name, t in model.state_dict().items()}
    assert {name: (t.dtype, t.shape) for name, t in loaded.state_dict().items()} == expected
    assert all(t.is_meta for t in loaded.state_dict().values())
    assert loaded.encoder[0].mlp_fc1.weight.dtype == torch.bfloat16 and loaded.head.weight.dtype == torch.float64
    resgraph.materialize(loaded, seed=0)
    reference = resgraph.build(EXAMPLES / "vit_b_16.yaml", params=params, seed=0)
    assert torch.equal(loaded.encoder[1].mlp_fc1.weight, reference.encoder[1].mlp_fc1.weight.bfloat16())
    assert torch.equal(loaded.head.weight, reference.head.weight.double())


def test_materialize_through_torch_compile_s_wrapper_gives_the_seeded_build() -> None:
    """`torch.compile(model)` forwards `.graph` to the model, so materialize took the wrapper; its
    submodules, named `_orig_mod.*`, all looked put in place after the build and were initialised by
    their own reset_parameters(): unseeded weights, silently."""
    spec = EXAMPLES / "residual_mlp.yaml"
    model = resgraph.build(spec, device="meta")
    compiled = torch.compile(model, backend="eager")
    assert resgraph.materialize(compiled, seed=0) is compiled
    reference = resgraph.build(spec, seed=0)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    x = torch.randn(2, 784)
    model.eval(), reference.eval()  # (no dropout)
    assert torch.allclose(compiled(x), reference(x), rtol=0, atol=1e-6)


# The `training:` plan names a block whose only call a parameter turns off.
OPTIONAL_BLOCK = """\
resgraph: 1
name: Optional
imports: ["resgraph:blocks/resnet.yaml"]
params: {refine: true}
blocks:
  cell:
    layers:
      - fc: {op: Linear, out_features: 8}
      - act: {op: GELU}
inputs: {x: [8]}
layers:
  - body: {block: cell, when: "${refine}", checkpoint: true}
  - out: {op: Linear, out_features: 4}
training:
  shard: [cell]
  compile: [cell, bottleneck]
"""


def test_the_training_plan_may_name_a_block_the_parameters_leave_uncalled() -> None:
    """`--set refine=false` left `cell` uncalled, and the build failed: 'training.shard: Optional has
    no block named 'cell'', of a block the spec defines. The plan names blocks; where none is called,
    it chooses no instance."""
    with_cell = resgraph.build(OPTIONAL_BLOCK, seed=0)
    assert [name for name, _ in resgraph.distributed.instances(with_cell, ["cell"])] == ["body"]
    without = resgraph.build(OPTIONAL_BLOCK, params={"refine": False}, seed=0)
    assert [name for name, _ in without.named_children()] == ["out"]
    assert resgraph.distributed.instances(without, ["cell", "bottleneck"]) == []
    resgraph.compile(without, backend="eager")  # the plan, [cell, bottleneck]: nothing to compile
    assert without.out._compiled_call_impl is None and without._compiled_call_impl is None
    # A name the spec neither defines nor imports is still an error at its place in the plan.
    with pytest.raises(SpecError) as caught:
        resgraph.build(OPTIONAL_BLOCK.replace("shard: [cell]", "shard: [cel]"), params={"refine": False})
    assert str(caught.value) == ("<string>:15:11: error: training.shard: Optional has no block named 'cel'; did you "
                                 "mean 'cell'?\n  hint: name a block it defines or imports: basic, bottleneck, cell")
    with pytest.raises(UsageError, match=r"no block named 'botleneck'; did you mean 'bottleneck'\?"):
        resgraph.checkpoint(without, blocks=["botleneck"])


def test_validate_and_check_report_a_training_plan_naming_an_unknown_block(tmp_path: pathlib.Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`resgraph validate` printed ok (and `resgraph.check` passed) for a plan that `build` refused:
    the plan was checked only when weights were lowered."""
    spec = tmp_path / "plan.yaml"
    spec.write_text(OPTIONAL_BLOCK.replace("compile: [cell, bottleneck]", "compile: [cell, botleneck]"))
    expected = (f"{spec}:16:19: error: training.compile: Optional has no block named 'botleneck'; did you mean "
                "'bottleneck'?\n  hint: name a block it defines or imports: basic, bottleneck, cell")
    assert main(["validate", str(spec)]) == 1
    assert expected in capsys.readouterr().err
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    assert str(caught.value) == expected
    # With the other mistakes of the same run, not instead of them.
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec.read_text().replace("out_features: 4", "out_features: four"), params={"refine": False})
    assert [d.location.line for d in caught.value.diagnostics] == [13, 16]


def test_load_weights_refuses_a_meta_model_instead_of_loading_nothing() -> None:
    """`copy_` into a meta tensor does nothing: load_weights reported '14 tensors matched', loaded
    none, and a materialize after it initialised the model afresh."""
    spec = EXAMPLES / "residual_mlp.yaml"
    checkpoint = resgraph.build(spec, seed=5).state_dict()
    model = resgraph.build(spec, device="meta")
    with pytest.raises(UsageError, match=r"^cannot load weights into ResidualMLP: fc1\.weight is on the meta device "
                                         r"\(built with device='meta'\), with no storage to hold them; "
                                         r"resgraph\.materialize the model first, then load_weights$"):
        resgraph.load_weights(model, checkpoint)
    resgraph.load_weights(resgraph.materialize(model), checkpoint)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in checkpoint.items())


@pytest.mark.usefixtures("one_process_group")
def test_load_weights_loads_a_sharded_model_shard_by_shard() -> None:
    """It failed with torch's 'Attempted to access the data pointer on an invalid python storage'
    (copy_ of a tensor into a DTensor), after matching every tensor."""
    checkpoint = resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=5).state_dict()
    model = sharded_mlp()
    mapping = resgraph.load_weights(model, {f"net.{key}": value for key, value in checkpoint.items()},
                                    rename={"net": ""})
    assert mapping.loaded and not mapping.missing
    assert all(torch.equal(tensor.full_tensor(), checkpoint[key]) for key, tensor in model.state_dict().items())
