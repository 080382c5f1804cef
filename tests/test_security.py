"""What a spec can and cannot do: it never runs code; code comes in only from the caller."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

import resgraph
from conftest import ROOT

HEAD = "resgraph: 1\nname: S\ninputs:\n  x: [4]\nlayers:\n"


class Scale(nn.Module):
    """A custom layer: a learned per-feature scale; resgraph infers in_features."""

    def __init__(self, in_features: int, init: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((in_features,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_registered_python_layers_are_usable_in_specs() -> None:
    if "SecurityTestScale" not in resgraph.ops.generic.CUSTOM_OPS:
        resgraph.register_op("SecurityTestScale", Scale)
    model = resgraph.build(HEAD + "  - scale: {op: SecurityTestScale, init: 2.0}\n")
    assert isinstance(model.scale, Scale) and model.scale.weight.shape == (4,)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), 2 * x)
    with pytest.raises(ValueError, match="already defined"):
        resgraph.register_op("SecurityTestScale", Scale)
    with pytest.raises(ValueError, match="already defined"):
        resgraph.register_op("ReLU", Scale)
    with pytest.raises(TypeError, match="torch.nn.Module subclass"):
        resgraph.register_op("NotALayer", dict)


def test_an_import_path_in_a_spec_needs_the_callers_consent() -> None:
    spec = HEAD + "  - act: {op: torch.nn.modules.activation.Hardtanh, min_val: 0.0}\n"
    with pytest.raises(resgraph.SpecError, match=r"is a Python import; .*--allow-import torch"):
        resgraph.build(spec)
    model = resgraph.build(spec, allow_imports=["torch.nn"])
    assert isinstance(model.act, nn.Hardtanh)
    with pytest.raises(resgraph.SpecError, match="is a Python import"):
        resgraph.build(spec, allow_imports=["torch.nnx"])  # a prefix is a module path, not a string prefix


def test_a_disallowed_import_is_never_attempted() -> None:
    name = "resgraph_security_probe_module"
    spec = HEAD + f"  - act: {{op: {name}.Layer}}\n"
    with pytest.raises(resgraph.SpecError, match="is a Python import"):
        resgraph.check(spec)
    assert name not in sys.modules
    with pytest.raises(resgraph.SpecError, match=f"cannot import '{name}.Layer'"):
        resgraph.check(spec, allow_imports=[name])


def test_allowed_imports_must_still_be_layers() -> None:
    with pytest.raises(resgraph.SpecError, match="'os.system' is not a torch.nn.Module class"):
        resgraph.check(HEAD + "  - act: {op: os.system}\n", allow_imports=["os"])


def test_cli_allow_import(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(HEAD + "  - act: {op: torch.nn.modules.activation.Hardtanh}\n")
    refused = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec)], capture_output=True, text=True,
                             cwd=ROOT)
    assert refused.returncode == 1 and "--allow-import torch" in refused.stderr
    allowed = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec), "--allow-import", "torch.nn"],
                             capture_output=True, text=True, cwd=ROOT)
    assert allowed.returncode == 0, allowed.stderr


class _Exploit:
    def __reduce__(self) -> tuple[object, ...]:
        return (pathlib.Path.touch, (pathlib.Path(_Exploit.marker),))

    marker = ""


def test_saved_models_are_loaded_without_running_pickled_code(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "resgraph.model/1", "spec": "", "state_dict": _Exploit()}, handle, protocol=2)
    with pytest.raises(resgraph.UsageError, match="not a readable resgraph model file"):
        resgraph.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("text", [
    "!!python/object/apply:os.system ['touch /tmp/resgraph-pwned']\n",
    "a: !!python/name:os.system\n",
    "layers:\n  - a: {op: ReLU, inplace: !!python/object/new:builtins.bool [1]}\n",
])
def test_yaml_tags_cannot_construct_objects(text: str) -> None:
    with pytest.raises(resgraph.SpecError, match="is not allowed in a spec"):
        resgraph.check(text)


def test_an_oversized_model_is_refused_before_allocation_within_bounds(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "huge.yaml"
    spec.write_text("resgraph: 1\nname: Huge\ninputs:\n  x: [100000]\nlayers:\n"
                    "  - fc1: {op: Linear, out_features: 100000}\n  - fc2: {op: Linear, out_features: 100000}\n")
    probe = ("import re, sys, time\nimport resgraph\nstart = time.perf_counter()\n"
             "try:\n    resgraph.build(sys.argv[1])\n"
             "except resgraph.SpecError as exc:\n    print(exc.diagnostics[0].message)\n"
             "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "print(time.perf_counter() - start, peak)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, cwd=ROOT)
    message, measures = result.stdout.strip().splitlines()
    assert message.startswith("the model would have 20,000,200,000 parameters (74.5 GiB as float32)")
    assert "the largest part, 'fc1', has 10,000,100,000" in message
    seconds, peak_kib = measures.split()
    # About 1.5 s (mostly importing torch): 30 s guards against allocating, not against slowness.
    assert float(seconds) < 30 and int(peak_kib) < 1024 * 1024  # 80 GB of weights were never allocated
    assert resgraph.count_parameters(spec) == 20_000_200_000
    with pytest.raises(resgraph.SpecError, match="more than the limit of 100"):
        resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 100}\n", max_params=100)


@pytest.mark.parametrize(("data", "message"), [
    ("resgraph: 1\n".encode("utf-16"), "the file is not UTF-8 text"),
    ("name: Caf\u00e9\n".encode("latin-1"), "the file is not UTF-8 text"),
])
def test_odd_encodings_are_reported(tmp_path: pathlib.Path, data: bytes, message: str) -> None:
    path = tmp_path / "odd.yaml"
    path.write_bytes(data)
    with pytest.raises(resgraph.SpecError, match=message):
        resgraph.check(path)
