"""The benchmark runner's smoke mode: it runs end to end and reports every measurement.

Timings are not asserted here (benchmarks are not unit tests); docs/benchmarks.md records them.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import torch

import resgraph
from bench.peers import torcharc_spec, ultralytics_name
from bench.references import TutorialResNet
from conftest import ROOT


def test_quick_benchmark_runs_and_reports_every_measurement(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert [row["case"] for row in data["forward"]] == ["ResNet-50, batch 1", "ResNet-50, batch 2",
                                                         "residual MLP, 20 blocks, batch 1"]
    assert all(row["ratio"] > 0 for row in data["forward"])
    # each forward row counts the minor page faults of resgraph, the reference and torch.fx (Linux)
    assert all(isinstance(count, int) and count >= 0
               for row in data["forward"] for count in row["page_faults"].values())
    assert data["build"]["ratio"] > 0 and set(data["build"]["stages"]) >= {"validate (schema, top level)",
                                                                           "lower (modules, weights)"}
    assert [row["case"] for row in data["stages"]] == ["residual MLP, 20 blocks", "tutorial", "ResNet-50"]
    assert [row["layers"] for row in data["scaling"]] == [100, 300]
    assert all(row["build_peak_mib"] >= 0 and row["validate_s"] > 0 for row in data["scaling"])
    assert data["memory"]["resgraph_mib"] > 0 and data["compile"]["speedup"] > 0
    for peer in ("torcharc", "ultralytics"):  # optional peers: a row where installed, else a note saying so
        row = data["peers"][peer]
        assert "not installed" in row["note"] if "note" in row else all(
            value > 0 for key, value in row.items() if key != "case")
    table = (tmp_path / "latest.md").read_text()
    for phrase in ("forward latency", "minor page faults", "build ResNet-50", "peak memory", "torch.compile",
                   "Scaling"):
        assert phrase in table


def test_only_runs_the_sections_named_and_leaves_latest_alone(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "stages", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "latest.json").exists()
    data = json.loads((tmp_path / "only-stages.json").read_text())
    assert "stages" in data and not {"forward", "scaling", "build", "startup"} & set(data)
    assert "spec stages" in result.stdout and "Scaling" not in result.stdout


def test_only_refuses_an_unknown_section(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "stages,scalling", "--out",
                             str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2 and "scalling" in result.stderr and "scaling" in result.stderr


def test_the_tutorial_reference_is_the_tutorial_network() -> None:
    model = resgraph.build(ROOT / "examples" / "tutorial.yaml", seed=0).eval()
    reference = TutorialResNet().eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reference(x), model(x))


def test_yolov8_weights_map_one_to_one_onto_ultralytics_names() -> None:
    names = list(resgraph.build("examples/yolov8.yaml", params={"scale": "n", "image_size": 64},
                                device="meta").state_dict())
    mapped = [ultralytics_name(name) for name in names]
    assert len(set(mapped)) == len(names) == 355  # Ultralytics' YOLOv8n state dict has 355 entries
    assert ultralytics_name("b2_c2f.m.0.cv1.conv.weight") == "model.2.m.0.cv1.conv.weight"
    assert ultralytics_name("detect.l3.box0.conv.weight") == "model.22.cv2.0.0.conv.weight"
    assert ultralytics_name("detect.l5.cls.bias") == "model.22.cv3.2.2.bias"
    assert ultralytics_name("detect.dfl") == "model.22.dfl.conv.weight"


def test_the_torcharc_spec_chains_its_blocks_through_residual_sums() -> None:
    spec = torcharc_spec(width=8, depth=3)
    assert len(spec["modules"]) == 12 and spec["graph"]["output"] == "b2_add"
    assert spec["graph"]["modules"]["b1_fc1"] == ["b0_add"]
    assert spec["graph"]["modules"]["b1_add"] == [["b1_fc2", "b0_add"]]  # fc2 + the block's input
