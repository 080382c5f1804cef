"""The benchmark runner's smoke mode: it runs end to end and reports every measurement.

Timings are not asserted here (benchmarks are not unit tests); docs/benchmarks.md records them.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_runs_and_reports_every_measurement(tmp_path: pathlib.Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert [row["case"] for row in data["forward"]] == ["ResNet-50, batch 1", "ResNet-50, batch 2",
                                                         "residual MLP, 20 blocks, batch 1"]
    assert all(row["ratio"] > 0 for row in data["forward"])
    assert data["build"]["ratio"] > 0 and set(data["build"]["stages"]) >= {"validate (schema, top level)",
                                                                           "lower (modules, weights)"}
    assert [row["layers"] for row in data["scaling"]] == [100, 300]
    assert all(row["build_peak_mib"] >= 0 and row["validate_s"] > 0 for row in data["scaling"])
    assert data["memory"]["resgraph_mib"] > 0 and data["compile"]["speedup"] > 0
    table = (tmp_path / "latest.md").read_text()
    for phrase in ("forward latency", "build ResNet-50", "peak memory", "torch.compile", "Scaling"):
        assert phrase in table
