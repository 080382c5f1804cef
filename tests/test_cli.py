"""The `resgraph` command: summaries, JSON, saving, schema, exit codes, and a fast start."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import resgraph
from conftest import ROOT
from resgraph import load
from resgraph.cli import main


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resgraph", *args], capture_output=True, text=True, cwd=ROOT)


def test_build_prints_a_summary_with_both_projections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/tutorial.yaml"]) == 0
    out = capsys.readouterr().out
    assert "shortcut1" in out and "auto: Conv2d 1x1 + BatchNorm2d" in out and "[3->64 channels]" in out
    assert "[64->128 channels]" in out
    assert "Total params: 268,928" in out
    assert "Projections inserted: 2 (shortcut1, shortcut2)" in out
    assert "(N, 128, 32, 32)" in out


def test_build_json_has_rows_projections_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/tutorial.yaml", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "TutorialResNet" and data["total_params"] == 268_928
    assert data["projections"] == ["shortcut1", "shortcut2"]
    rows = {row["name"]: row for row in data["rows"]}
    assert rows["shortcut1"]["projection"] == {"policy": "auto", "reason": "3->64 channels",
                                               "steps": "Conv2d 1x1 + BatchNorm2d", "params": 320}
    assert rows["res2_conv2"]["shape"] == [128, 32, 32] and rows["res2_conv2"]["params"] == 147_584


def test_build_code_prints_the_generated_forward(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/tutorial.yaml", "--code"]) == 0
    assert capsys.readouterr().out.startswith("def forward(self, x):\n")


def test_build_output_saves_a_weights_only_loadable_artifact(tmp_path: pathlib.Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "model.pt"
    assert main(["build", "examples/tutorial.yaml", "--seed", "3", "-o", str(target)]) == 0
    payload = torch.load(target, weights_only=True)
    assert "res1_conv1.weight" in payload["state_dict"] and "name: TutorialResNet" in payload["spec"]
    model = load(target)
    reference = resgraph.build("examples/tutorial.yaml", seed=3)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_failed_build_leaves_an_existing_output_untouched(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"precious")
    result = cli("build", "examples/tutorial_literal.yaml", "-o", str(target))
    assert result.returncode == 1 and target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_load_refuses_weights_that_do_not_fit_the_spec(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "model.pt"
    assert main(["build", "examples/tutorial.yaml", "-o", str(target)]) == 0
    payload = torch.load(target, weights_only=True)
    payload["state_dict"]["res1_conv1.weight"] = torch.zeros(1)
    torch.save(payload, target)
    with pytest.raises(resgraph.ResgraphError, match="do not match the stored spec"):
        load(target)
    torch.save({"something": "else"}, target)
    with pytest.raises(resgraph.UsageError, match="not a resgraph model file"):
        load(target)


def test_validate_reports_ok_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "examples/tutorial.yaml", "examples/dag.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["examples/tutorial.yaml: ok (10 nodes, 2 projections)",
                   "examples/dag.yaml: ok (15 nodes, 1 projection)"]


def test_validate_checks_every_file_and_fails_if_any_is_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "examples/tutorial_literal.yaml", "examples/tutorial.yaml"]) == 1
    captured = capsys.readouterr()
    assert "examples/tutorial.yaml: ok" in captured.out
    assert captured.err.count("error:") == 2


@pytest.mark.parametrize(("args", "message"), [
    (["build", "no/such/spec.yaml"], "no/such/spec.yaml: no such file"),
    (["build", "examples/tutorial.yaml", "-o", "model.txt"], "must end in .pt or .pth or .py or .onnx"),
    (["build", "examples/tutorial.yaml", "-o", "/no/such/dir/model.pt"], "cannot write"),
    (["validate", "examples"], "is a directory"),
])
def test_usage_errors_exit_2_without_traceback(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_flags_exit_2() -> None:
    assert cli("build", "--no-such-flag", "examples/tutorial.yaml").returncode == 2
    assert cli().returncode == 2


def test_schema_command_prints_the_committed_schema_exactly() -> None:
    result = cli("schema")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "schemas" / "resgraph.schema.json").read_text()


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"resgraph {resgraph.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["schema"], ["validate", "examples/tutorial.yaml"]])
def test_help_schema_and_validate_do_not_import_torch(args: list[str]) -> None:
    probe = ("import sys, runpy\nsys.argv = ['resgraph', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('resgraph', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
