"""Held-back cases of the command line and its library calls: `load_weights` naming every problem of a
checkpoint at once; the refusal of a seed on meta, decided in one place; `validate` given a block
library with flags that cannot apply to one; and each command's options given values of the wrong kind.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

import resgraph
from conftest import EXAMPLES
from resgraph.cli import main
from resgraph.devices import refuse_seed_without_weights
from resgraph.weights import MAX_LISTED


def _refusal(model: nn.Module, checkpoint: dict[str, torch.Tensor], **kwargs: object) -> str:
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with pytest.raises(resgraph.WeightsError) as refused:
        resgraph.load_weights(model, checkpoint, **kwargs)  # type: ignore[arg-type]
    assert all(torch.equal(tensor, before[key]) for key, tensor in model.state_dict().items())  # nothing loaded
    return str(refused.value)


def test_load_weights_names_every_problem_of_a_checkpoint_in_one_refusal() -> None:
    """Only the first tensor of another kind of number was named, and nothing of the checkpoint's other
    problems (shapes, missing and unexpected keys): fixing a checkpoint took a run per problem."""
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    checkpoint = {key: torch.randn_like(tensor) for key, tensor in model.state_dict().items()}
    checkpoint["0.weight"] = checkpoint["0.weight"].long()
    checkpoint["1.bias"] = checkpoint["1.bias"].bool()
    checkpoint["2.weight"] = torch.zeros(5, 4)
    del checkpoint["3.bias"]
    checkpoint["extra"] = torch.zeros(3)
    message = _refusal(model, checkpoint)
    assert message.startswith(
        "the state_dict: 2 tensors hold another kind of number than the model's they would load into: copying "
        "would convert their values silently, so nothing was loaded. Give a floating-point tensor (another "
        "precision of one kind converts: float16, bfloat16 or float64 weights load into float32):\n"
        "  0.weight is int64 (integer), the model's 0.weight is float32 (floating-point)\n"
        "  1.bias is bool (boolean), the model's 1.bias is float32 (floating-point)\n"
        "the checkpoint does not match the model either (strict=False loads what matched):\n")
    for line in ("  2.weight: the model's is (4, 4), the checkpoint's (5, 4)", "1 missing from the checkpoint:\n"
                 "  3.bias (4,)", "1 unexpected in the checkpoint:\n  extra (3,)"):
        assert line in message
    # strict=False: the other kinds are still refused (nothing loaded), the partial match is not a problem
    lenient = _refusal(model, checkpoint, strict=False)
    assert "nothing was loaded" in lenient and "does not match" not in lenient
    mapping = resgraph.load_weights(model, {k: v.float() for k, v in checkpoint.items()}, strict=False)
    assert mapping.loaded and not mapping.other_kinds


@pytest.mark.parametrize("problem", ["kind", "shape", "missing", "unexpected"])
def test_a_refusal_with_many_problems_names_the_first_and_counts_the_rest(problem: str) -> None:
    """A checkpoint of another architecture listed every key, thousands of lines; each list is bounded."""
    count = MAX_LISTED + 7
    model = nn.Sequential(*[nn.Linear(2, 2, bias=False) for _ in range(count)])
    checkpoint = {key: torch.randn_like(tensor) for key, tensor in model.state_dict().items()}
    if problem == "kind":
        checkpoint = {key: tensor.long() for key, tensor in checkpoint.items()}
    elif problem == "shape":
        checkpoint = {key: torch.zeros(3, 3) for key in checkpoint}
    elif problem == "missing":
        model = nn.Sequential(*model, *[nn.Linear(2, 3, bias=False) for _ in range(count)])
    else:
        checkpoint.update({f"extra{i}": torch.zeros(i + 1, 5) for i in range(count)})
    message = _refusal(model, checkpoint)
    assert message.count("\n  ") == MAX_LISTED + 1  # the first MAX_LISTED, then the count of the rest
    assert message.endswith("\n  ... and 7 more")
    assert f"{count} " in message  # the whole count is said


def test_the_mapping_carries_each_tensor_of_another_kind_as_data() -> None:
    model = nn.Linear(2, 2)
    mapping = resgraph.load_weights(model, {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
    assert mapping.other_kinds == []
    with pytest.raises(resgraph.WeightsError) as refused:
        resgraph.load_weights(model, {"weight": torch.zeros(2, 2, dtype=torch.int32), "bias": torch.zeros(2)})
    assert refused.value.mapping.other_kinds == [("weight", "weight", torch.float32, torch.int32)]
    assert "1 with another kind of number in the checkpoint (not loaded):\n  weight is int32 (integer)" in \
        refused.value.mapping.report()
    assert str(refused.value).startswith("the state_dict: weight is int32 (integer), and the model's weight is")


@pytest.mark.parametrize("device", ["meta", "meta:0"])
def test_a_seed_on_meta_is_refused_by_one_decision_in_the_names_of_each_caller(
        device: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI and compile_model each held the refusal, worded apart (the CLI's said "no limit applies on
    meta" of a seed); now `devices.refuse_seed_without_weights` decides, and each names its own arguments."""
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(EXAMPLES / "residual_mlp.yaml"), "--device", device, "--seed", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"resgraph: error: --seed chooses the initial weights, and --device {device} allocates "
                            "none: drop --seed, or build on a real device\n")
    assert captured.out == "" and not list(tmp_path.iterdir())
    with pytest.raises(resgraph.UsageError) as refused:
        resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=3, device=device)
    assert str(refused.value) == (f"seed=3 chooses the initial weights, and device={device!r} allocates none: drop "
                                  "seed, or give it to resgraph.materialize(model, seed=3), which allocates and "
                                  "initialises them")
    refuse_seed_without_weights(3, torch.device("cpu"), "--device cpu", flags=True)  # weights to seed: allowed
    refuse_seed_without_weights(None, torch.device("meta"), "--device meta", flags=True)  # nothing to ignore


LIBRARY = """\
resgraph: 1
blocks:
  good:
    params: {c: 8}
    layers:
      - fc: {op: Linear, out_features: "${c}"}
  bad:
    params: {c: 8}
    layers:
      - fc: {op: Linear, out_features: "${c}"}
      - fc: {op: ReLU}
      - u: {block: nosuch}
      - v: {op: Linear, out_features: "${undefined_name}"}
"""
SPEC = """\
resgraph: 1
name: Net
imports: [lib.yaml]
params: {c: 8}
inputs: {x: [4]}
layers:
  - a: {block: good, with: {c: "${c}"}}
"""


@pytest.mark.parametrize("flags", [["--set", "c=2"], ["--input", "x=5"], ["--allow-import", "mylayers"],
                                   ["--set", "c=2", "--input", "x=5"]])
def test_validate_refuses_flags_given_only_block_libraries(flags: list[str], tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`validate lib.yaml --set x=1` said ok, the flag ignored: a library's blocks take their values from calls."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib.yaml").write_text(LIBRARY.split("  bad:")[0])
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["validate", "lib.yaml", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"resgraph: error: {' '.join(flags)}: appl")
    assert "lib.yaml is a block library" in captured.err and "name a spec that imports the library" in captured.err
    # beside a spec, the flags apply to it, and the library is checked too
    if "--allow-import" not in flags:
        assert main(["validate", "lib.yaml", "spec.yaml", *flags]) == 0
        assert capsys.readouterr().out == ("lib.yaml: ok (block library: 1 block: good)\n"
                                           "spec.yaml: ok (4 nodes, 0 projections)\n")
    # beside a file that cannot be read, that file's error is said
    assert main(["validate", "lib.yaml", "missing.yaml", *flags]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err


def test_a_library_validated_directly_names_every_mistake_of_a_block_no_call_reaches(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown block called in a library hid the rest of its blocks' mistakes (a duplicate layer name,
    an unknown name) until it was fixed. A spec calling only the sound block stays valid: it builds."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib.yaml").write_text(LIBRARY)
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert main(["validate", "lib.yaml"]) == 1
    assert capsys.readouterr().err == (
        "lib.yaml:11:9: error: layer 'bad.fc': the name is already used by the layer at line 10\n"
        "  hint: every input, layer and skip needs its own name\n"
        "lib.yaml:12:20: error: block 'bad', layer 'u': unknown block 'nosuch'\n"
        "lib.yaml:13:42: error: in ${undefined_name}: unknown name 'undefined_name'\n")
    assert main(["validate", "spec.yaml", "--set", "c=4"]) == 0
    assert main(["validate", "spec.yaml", "lib.yaml", "--set", "c=4"]) == 1  # the library's own check still fails
    captured = capsys.readouterr()
    assert "spec.yaml: ok" in captured.out and "unknown block 'nosuch'" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["render", ""], "SPEC: the file name is empty; name a spec file (YAML)"),
    (["build", ""], "SPEC: the file name is empty; name a spec file (YAML)"),
    (["sizes", ""], "SPEC: the file name is empty; name a spec file (YAML)"),
    (["validate", ""], "SPEC: the file name is empty; name a spec file (YAML)"),
    (["render", "."], ".: is a directory, not a regular file; only spec files can be read"),
    (["render", "adir"], "adir: is a directory, not a regular file; only spec files can be read"),
], ids=["render-empty", "build-empty", "sizes-empty", "validate-empty", "render-dot", "render-dir"])
def test_a_spec_named_empty_or_a_directory_is_refused_without_a_traceback(
        argv: list[str], message: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`render ""` and `render .` raised ValueError from pathlib (no name to derive SPEC.svg from); an
    empty SPEC elsewhere was read as '.', the current directory, and called a directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"resgraph: error: {message}\n" and captured.out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]  # nothing written
