"""Loading a `.pt` file: self-contained (it reads nothing but itself), held to the bounds of a build,
and a broken or crafted file is a clear UsageError or SpecError, never a traceback or a hang."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import threading
from typing import Any

import pytest
import torch

import resgraph
from conftest import EXAMPLES
from resgraph.cli import main

HEAD = "resgraph: 1\nname: M\nparams: {width: 2}\ninputs: {x: [4]}\nlayers:\n"
SMALL = HEAD + "  - fc: {op: Linear, out_features: \"${width}\"}\n"


@pytest.fixture
def saved(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    path = tmp_path / "model.pt"
    resgraph.save(resgraph.build(SMALL, seed=0), path)
    return path, torch.load(path, weights_only=True)


def crafted(path: pathlib.Path, payload: object) -> pathlib.Path:
    torch.save(payload, path)
    return path


def load_error(path: pathlib.Path, kind: type[Exception] = resgraph.UsageError, **kwargs: Any) -> str:
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            resgraph.load(path, **kwargs)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert outcome, "resgraph.load blocked"
    error = outcome[0]
    assert isinstance(error, kind), repr(error)
    message = str(error)
    assert message and not message.rstrip().endswith(("(", ":", "()"))  # a reason is always given
    return message


def test_a_model_with_imported_blocks_loads_anywhere_and_ignores_later_edits(tmp_path: pathlib.Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    model = resgraph.build(tmp_path / "examples" / "resnet18.yaml", params={"num_classes": 10}, seed=0).eval()
    path = tmp_path / "resnet18.pt"
    resgraph.save(model, path)
    library = tmp_path / "examples" / "blocks" / "resnet.yaml"
    library.write_text(library.read_text().replace("kernel_size: 3", "kernel_size: 5"))  # edited after saving
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resgraph.load(path).eval()(x), model(x), rtol=0, atol=0)
        shutil.rmtree(tmp_path / "examples")  # and removed
        torch.testing.assert_close(resgraph.load(path).eval()(x), model(x), rtol=0, atol=0)
    # The relative spec path through the CLI, loaded from another directory, as the issue did.
    monkeypatch.chdir(EXAMPLES.parent)
    assert main(["build", "examples/resnet18.yaml", "--set", "num_classes=10", "-o", str(tmp_path / "r.pt")]) == 0
    monkeypatch.chdir(elsewhere)
    assert resgraph.load(tmp_path / "r.pt").fc.out_features == 10


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: {k: v for k, v in p.items() if k != "spec"}, "not a complete resgraph model file (it holds no spec)"),
    (lambda p: {**p, "spec": 42}, "it holds no spec"),
    (lambda p: {**p, "spec": "   "}, "it holds no spec"),
    (lambda p: {k: v for k, v in p.items() if k != "state_dict"}, "its weights are missing or not tensors"),
    (lambda p: {**p, "state_dict": {"fc.weight": [1, 2]}}, "its weights are missing or not tensors"),
    (lambda p: {**p, "state_dict": [torch.zeros(1)]}, "its weights are missing or not tensors"),
    (lambda p: {k: v for k, v in p.items() if k != "format"}, "no 'resgraph.model/1' marker"),
    (lambda p: {**p, "format": "resgraph.model/99"}, "no 'resgraph.model/1' marker"),
    (lambda p: [p], "no 'resgraph.model/1' marker"),
    (lambda p: {**p, "params": {1: 2}}, "its parameter overrides are not plain data"),
    (lambda p: {**p, "params": {"width": torch.zeros(1)}}, "its parameter overrides are not plain data"),
    (lambda p: {**p, "params": {"width": list(range(200_000))}}, "its parameter overrides are not plain data"),
    (lambda p: {**p, "params": "width=3"}, "its parameter overrides are not plain data"),
    (lambda p: {**p, "allow_imports": "torch"}, "its import prefixes are not a list of names"),
    (lambda p: {**p, "imports": [["a.yaml"]]}, "its block libraries are not a list of (path, text) pairs"),
    (lambda p: {**p, "imports": "a.yaml"}, "its block libraries are not a list of (path, text) pairs"),
    (lambda p: {**p, "imports": [["a.yaml", "x"]] * 1001}, "its block libraries are not a list"),
    (lambda p: {**p, "spec_file": 7}, "its spec's file name is not text"),
])
def test_a_file_missing_a_part_is_a_clear_usage_error(saved: tuple[pathlib.Path, dict[str, Any]], change: Any,
                                                      message: str) -> None:
    path, payload = saved
    assert message in load_error(crafted(path, change(payload)))


def test_a_self_referencing_payload_is_refused(saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, payload = saved
    loop: list[Any] = []
    loop.append(loop)
    assert "not plain data" in load_error(crafted(path, {**payload, "params": {"width": loop}}))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a readable resgraph model file (the file is empty)"),
    (b"root:x:0:0:root:/root:/bin/bash\n" * 30,
     "not a readable resgraph model file (it is neither a zip archive nor a pickle, which torch.save writes)"),
    (b"\x00" * 100, "not a readable resgraph model file (torch's weights-only reader refused it: Unsupported "
                     "operand 0)"),
    (b"PK\x03\x04 truncated zip", "not a readable resgraph model file"),
    (b"resgraph: 1\n", "not a readable resgraph model file (it is neither a zip archive nor a pickle, which "
                       "torch.save writes)"),
])
def test_empty_truncated_and_foreign_files(content: bytes, message: str, tmp_path: pathlib.Path,
                                           saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert message in load_error(path)
    half = tmp_path / "half.pt"
    data = saved[0].read_bytes()
    half.write_bytes(data[:len(data) // 2])
    assert "not a readable resgraph model file" in load_error(half)


def test_fifos_directories_and_devices_are_refused_without_reading(tmp_path: pathlib.Path) -> None:
    os.mkfifo(tmp_path / "fifo.pt")
    assert "not a regular file" in load_error(tmp_path / "fifo.pt")
    assert "not a regular file" in load_error(pathlib.Path("/dev/zero"))
    assert "not a regular file" in load_error(tmp_path)
    assert "no such file" in load_error(tmp_path / "missing.pt")


def test_a_stored_spec_that_looks_like_a_path_is_text(saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, payload = saved
    for spec in ("/dev/zero", "examples/resnet18.yaml", str(EXAMPLES / "tutorial.yaml")):
        message = load_error(crafted(path, {**payload, "spec": spec}), resgraph.SpecError)
        assert f"expected a mapping, got string {spec!r}"[:40] in message


def test_a_stored_library_is_used_and_a_missing_one_is_refused(saved: tuple[pathlib.Path, dict[str, Any]],
                                                               tmp_path: pathlib.Path) -> None:
    path, payload = saved
    (tmp_path / "lib.yaml").write_text("resgraph: 1\nblocks:\n  b:\n    layers:\n      - fc: {op: Linear, "
                                       "out_features: 2}\n")  # on disk, next to the spec: must not be read
    spec = "resgraph: 1\nname: M\nimports: [lib.yaml]\ninputs: {x: [4]}\nlayers:\n  - fc: {block: b}\n"
    file = str(tmp_path / "spec.yaml")
    for stored in (None, [], [["elsewhere.yaml", "resgraph: 1\nblocks: {}\n"]]):
        message = load_error(crafted(path, {**payload, "spec": spec, "spec_file": file, "imports": stored,
                                            "params": {}}), resgraph.SpecError)
        assert "cannot import 'lib.yaml'" in message and "not stored in the build record" in message
    library = "resgraph: 1\nblocks:\n  b:\n    layers:\n      - fc: {op: Linear, out_features: 3}\n"
    state = {"fc.fc.weight": torch.zeros(3, 4), "fc.fc.bias": torch.zeros(3)}
    crafted(path, {**payload, "spec": spec, "spec_file": file, "imports": [[str(tmp_path / "lib.yaml"), library]],
                   "params": {}, "state_dict": state})
    assert resgraph.load(path).fc.fc.out_features == 3  # the stored text, not the file on disk (2)


def test_loading_applies_the_callers_limits(saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, _ = saved
    with pytest.raises(resgraph.SpecError, match="more than the limit of 5"):
        resgraph.load(path, max_params=5)
    assert resgraph.load(path, max_params=10).fc.out_features == 2


def test_a_stored_override_of_an_undeclared_parameter_does_not_mention_set(
        saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, payload = saved
    message = load_error(crafted(path, {**payload, "params": {"widht": 3}}), resgraph.SpecError)
    assert "cannot override parameter 'widht': the spec declares no parameter 'widht'; did you mean 'width'" in message
    assert "--set" not in message


def test_a_stored_file_name_with_control_characters_is_printed_escaped(
        saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, payload = saved
    crafted(path, {**payload, "spec_file": "\x1b]0;owned\x07\x1b[2Jspec.yaml", "spec": SMALL + "  - bad: {op: Nope}\n"})
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.load(path)
    assert "\x1b" not in str(info.value) and "\\x1b]0;owned\\x07\\x1b[2Jspec.yaml:7:11: error" in str(info.value)


@pytest.mark.parametrize("name", ["a\x00b.yaml", "a\ud800.yaml"], ids=["NUL", "lone surrogate"])
def test_a_stored_file_name_that_is_no_path_does_not_stop_saving_or_drawing_the_model(
        saved: tuple[pathlib.Path, dict[str, Any]], name: str, tmp_path: pathlib.Path) -> None:
    path, payload = saved
    model = resgraph.load(crafted(path, {**payload, "spec_file": name}))
    resgraph.save(model, tmp_path / "again.py")
    resgraph.write_diagram(resgraph.render(model), tmp_path / "again.svg")
    assert "class M(nn.Module)" in (tmp_path / "again.py").read_text()
    assert ">fc</text>" in (tmp_path / "again.svg").read_text()


@pytest.mark.parametrize("size", [2**62 + 1, 2**63, 10**23])
def test_a_stored_input_size_beyond_2_62_is_refused(saved: tuple[pathlib.Path, dict[str, Any]], size: int) -> None:
    # Past int64, size solving crashed with an OverflowError traceback: the bound a spec and --input apply.
    path, payload = saved
    message = load_error(crafted(path, {**payload, "input_shapes": {"x": [size]}}))
    assert "input shape for 'x': expected whole sizes per sample from 1 to 2^62" in message


def test_a_saved_model_comes_back_in_its_modes_with_its_frozen_parameters(tmp_path: pathlib.Path) -> None:
    # What a state_dict leaves out travels in the file, as in a pickle: eval mode, a submodule in the
    # other mode (BatchNorm statistics kept while the rest trains), a frozen backbone.
    model = resgraph.build(EXAMPLES / "resnet18.yaml", params={"num_classes": 3, "image_size": 32}, seed=0)
    model.eval()
    model.layer1.train()
    for parameter in model.conv1.parameters():
        parameter.requires_grad_(False)
    path = tmp_path / "m.pt"
    resgraph.save(model, path)
    loaded = resgraph.load(path)
    assert not loaded.training and loaded.layer1.training and loaded.layer1[0].bn1.training
    assert not loaded.layer2.training and not loaded.bn1.training
    frozen = {name for name, p in loaded.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight"}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.layer1.eval(), loaded.layer1.eval()
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_file_saved_before_modes_were_kept_loads_as_built(saved: tuple[pathlib.Path, dict[str, Any]]) -> None:
    path, payload = saved
    del payload["modes"]
    loaded = resgraph.load(crafted(path, payload))
    assert loaded.training and all(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("modes, kind, message", [
    ("eval", resgraph.UsageError, "its train/eval modes are not what resgraph.save writes: a str, not a mapping"),
    ({"training": 0, "frozen": [], "flipped": []}, resgraph.UsageError, "'training' is 0, not true or false"),
    ({"training": True, "frozen": [1], "flipped": []}, resgraph.UsageError, "'frozen' is [1], not a list of names"),
    ({"training": True, "frozen": [], "flipped": None}, resgraph.UsageError, "'flipped' is None, not a list"),
    ({"training": True, "frozen": ["fc.gamma"], "flipped": []}, resgraph.UsageError,
     "the stored modes do not match the stored spec (it builds no parameter 'fc.gamma')"),
    ({"training": True, "frozen": [], "flipped": ["head", "fc.x"]}, resgraph.UsageError,
     "(it builds no submodule 'head', no submodule 'fc.x')"),
])
def test_stored_modes_that_do_not_fit_are_refused(saved: tuple[pathlib.Path, dict[str, Any]], modes: Any,
                                                  kind: type[Exception], message: str) -> None:
    path, payload = saved
    payload["modes"] = modes
    assert message in load_error(crafted(path, payload), kind)


def test_a_zip_whose_directory_python_cannot_read_is_refused_before_torch_unpacks_it(
        saved: tuple[pathlib.Path, dict[str, Any]], tmp_path: pathlib.Path) -> None:
    """One corrupt extra field in the archive's directory stops Python's zipfile, but not torch's reader, which
    then inflated every deflated entry: a zip bomb past the compressed-entry check (1 MB took 193 MB more)."""
    import struct
    import zipfile

    model = resgraph.build(SMALL, seed=0)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(saved[0]) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
        extra = zipfile.ZipInfo(f"{source.namelist()[0].split('/')[0]}/zz")
        extra.extra = b"\x99\x99\x04\x00abcd"
        target.writestr(extra, b"x")
    raw = bytearray(packed.read_bytes())
    at = raw.rfind(b"\x99\x99\x04\x00abcd")  # the directory's copy of the field: its size made wrong
    raw[at + 2:at + 4] = struct.pack("<H", 200)
    packed.write_bytes(raw)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(packed)
    assert torch.load(packed, weights_only=True).keys() == saved[1].keys()  # torch reads (and inflates) it
    expected = "its zip directory does not read (Corrupt extra field 9999 (size=200)): a truncated or damaged file"
    assert expected in load_error(packed)
    with pytest.raises(resgraph.UsageError, match=re.escape(expected)):
        resgraph.load_weights(model, packed)
