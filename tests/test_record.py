"""A compiled model's public record: its graph and a frozen BuildRecord, from which pickles, deep copies
and `.pt` files rebuild it exactly; and errors that cross process boundaries intact.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pathlib
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import resgraph
from conftest import EXAMPLES, ROOT

HEAD = "resgraph: 1\nname: S\ninputs:\n  x: [4]\nlayers:\n"
IMPORTED = HEAD + ("  - act: {op: torch.nn.modules.activation.Hardtanh, min_val: -0.5}\n"
                   "  - fc: {op: Linear, out_features: 3}\n")


def test_the_build_record_says_what_the_model_was_built_from() -> None:
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"num_classes": 10})
    record = model.build_record
    assert record.file.endswith("examples/resnet18.yaml") and "name: ResNet18" in record.spec
    assert dict(record.params) == {"num_classes": 10} and record.allow_imports == ()
    assert record.version == resgraph.__version__
    ((path, text),) = record.imports  # the block library, as read at build time
    assert path.endswith("blocks/resnet.yaml") and text == (EXAMPLES / "blocks" / "resnet.yaml").read_text()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.spec = ""  # type: ignore[misc]
    assert model.graph.name == "ResNet18" and model.graph.nodes["fc"].meta["type"].shape == (10,)


def test_a_record_rebuilds_without_the_files_it_was_read_from(tmp_path: pathlib.Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    spec = tmp_path / "examples" / "resnet18.yaml"
    model = resgraph.build(spec, params={"num_classes": 10}, seed=1)
    shutil.rmtree(tmp_path / "examples")  # the spec and its block library are gone
    again = resgraph.rebuild(model.build_record, seed=1)
    assert type(again).__name__ == "ResNet18" and again.code == model.code
    for (key, a), (other, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert key == other and torch.equal(a, b)


def test_pt_files_record_allowed_imports_and_load_when_the_caller_allows_them(tmp_path: pathlib.Path) -> None:
    model = resgraph.build(IMPORTED, allow_imports=["torch.nn"], seed=0)
    path = tmp_path / "model.pt"
    resgraph.save(model, path)
    with pytest.raises(resgraph.UsageError, match=r"built with --allow-import torch\.nn; allow the same"):
        resgraph.load(path)  # the file cannot grant itself permission to import
    loaded = resgraph.load(path, allow_imports=["torch.nn"])
    assert isinstance(loaded.act, nn.Hardtanh) and loaded.build_record.allow_imports == ("torch.nn",)
    x = torch.randn(2, 4)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_the_cli_saves_and_loads_a_model_built_with_allow_import(tmp_path: pathlib.Path) -> None:
    spec, path = tmp_path / "spec.yaml", tmp_path / "model.pt"
    spec.write_text(IMPORTED)
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec), "--allow-import", "torch.nn",
                             "-o", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert isinstance(resgraph.load(path, allow_imports=["torch.nn"]).act, nn.Hardtanh)


def test_pickles_and_deep_copies_of_models_with_imports_and_libraries(tmp_path: pathlib.Path) -> None:
    for model in (resgraph.build(IMPORTED, allow_imports=["torch.nn"], seed=0),
                  resgraph.build(EXAMPLES / "resnet18.yaml", params={"image_size": 32}, seed=0)):
        clone = pickle.loads(pickle.dumps(model))
        assert clone.build_record == model.build_record
        for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
            assert torch.equal(a, b)


def test_load_applies_the_parameter_limit(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "model.pt"
    resgraph.save(resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 100}\n"), path)
    with pytest.raises(resgraph.SpecError, match="more than the limit of 10"):
        resgraph.load(path, max_params=10)


def _raise_spec_error(path: str) -> None:
    resgraph.check(path)


def test_spec_errors_pickle_with_their_diagnostics() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check("tests/bad_specs/non_integer_stride.yaml")
    clone = pickle.loads(pickle.dumps(caught.value))
    assert clone.diagnostics == caught.value.diagnostics and str(clone) == str(caught.value)
    assert clone.diagnostics[0].location.line > 0


def test_spec_errors_cross_process_boundaries() -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(resgraph.SpecError) as caught:
            pool.apply(_raise_spec_error, ("tests/bad_specs/unknown_argument.yaml",))
    (unknown,) = caught.value.diagnostics  # (the misspelt key is not also reported as a missing one)
    assert unknown.location.file == "tests/bad_specs/unknown_argument.yaml" and unknown.location.line == 6
    assert "unknown argument 'kernal_size'" in unknown.message and unknown.hint is None
