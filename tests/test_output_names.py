"""The spec's names for inputs and outputs wherever a model leaves resgraph: `--json`, ONNX (with `--opset`)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

import resgraph
from conftest import EXAMPLES, ROOT
from resgraph.graph import GraphBuilder
from resgraph.ownership import output_names


def test_output_names_follow_a_skip_to_the_layer_it_merges_into() -> None:
    assert output_names(resgraph.check(EXAMPLES / "tutorial.yaml")) == ["res2_conv2"]  # the skip is 'shortcut2'
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.skip("res", "x", "fc")
    graph = b.build(["fc", "x"])
    assert output_names(graph) == ["fc", "x_1"]  # an ONNX value has one name: an output cannot reuse an input's


def test_build_json_names_outputs_as_the_spec_does() -> None:
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "--json"],
                            capture_output=True, text=True, cwd=ROOT)
    assert json.loads(result.stdout)["outputs"] == ["res2_conv2"]


@pytest.mark.parametrize("opset", [None, 20])
def test_onnx_inputs_and_outputs_carry_the_specs_names(tmp_path: pathlib.Path, opset: int | None) -> None:
    onnx = pytest.importorskip("onnx")
    model = resgraph.build(EXAMPLES / "dag.yaml", seed=0)
    path = tmp_path / "dag.onnx"
    resgraph.save(model, path, **({"opset": opset} if opset else {}))
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["classifier"]
    if opset:
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]


def test_cli_opset(tmp_path: pathlib.Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "t.onnx"
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "-o", str(path),
                             "--opset", "18"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["res2_conv2"]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    wrong = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "--opset", "18"],
                           capture_output=True, text=True, cwd=ROOT)
    assert wrong.returncode == 2 and "--opset applies to ONNX files" in wrong.stderr


def test_an_opset_the_exporter_cannot_reach_is_an_error_not_a_mislabelled_file(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("onnx")
    model = resgraph.build(EXAMPLES / "dag.yaml", seed=0)  # its mean over dims cannot be written in opset 17
    with pytest.raises(resgraph.ResgraphError,
                       match=r"cannot be converted to opset 17 .* choose an opset from 18 to \d+ \(--opset 18;"):
        resgraph.save(model, tmp_path / "dag.onnx", opset=17)
    assert not list(tmp_path.iterdir())


def test_options_a_format_does_not_take_are_refused(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(EXAMPLES / "tutorial.yaml")
    with pytest.raises(resgraph.UsageError, match="take no option 'opset'"):
        resgraph.save(model, tmp_path / "m.pt", opset=17)
    assert not list(tmp_path.iterdir())


def test_an_unreachable_opset_prints_one_error_line_and_no_traceback(tmp_path: pathlib.Path) -> None:
    onnx = pytest.importorskip("onnx")
    # onnxscript's version converter logged its failure to stderr with a full traceback before resgraph's error.
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "-o",
                             str(tmp_path / "t.onnx"), "--opset", "1"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["resgraph: error: ONNX export: this model cannot be converted to opset 1 "
                                          "(the exporter wrote opset 18); choose an opset from 18 to "
                                          f"{onnx.defs.onnx_opset_version()} (--opset 18; Python: opset=18), or one "
                                          "below 18 that has a conversion for each of the model's ops"]
    assert not list(tmp_path.iterdir())
