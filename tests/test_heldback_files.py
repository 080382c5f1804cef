"""Held-back cases of the files issue: every file resgraph reads or writes is of the kind it expects,
checked by one helper whichever command or API reads it, and the spec a command was given is
never overwritten by what it writes, from the CLI or from Python."""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resgraph
from resgraph import loader

SPEC = "resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n  - fc: {op: Linear, out_features: 2}\n"


@pytest.fixture
def no_waiting() -> Iterator[None]:
    """Fails the test, rather than hanging it, if a read waits on a FIFO for a writer that never comes."""
    def waited(number: int, frame: Any) -> None:
        signal.alarm(1)  # and again at the next wait: a reader may try the file twice
        raise TimeoutError("resgraph waited on the FIFO for a writer")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def swapped_for_a_fifo(path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A FIFO at `path` that the first look (`os.stat`) sees as a regular file, as if swapped in after it."""
    os.mkfifo(path)
    real_stat = os.stat
    monkeypatch.setattr(loader.os, "stat", lambda name, *a, **k: real_stat(__file__) if os.fspath(name) == str(path)
                        else real_stat(name, *a, **k))
    return path


# --- reading: one helper, one wording -----------------------------------------------------------

def test_an_import_swapped_for_a_fifo_after_the_check_is_refused_not_waited_on(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, no_waiting: None) -> None:
    """The spec reader opened an import without O_NONBLOCK, so a FIFO swapped in after its check blocked."""
    fifo = swapped_for_a_fifo(tmp_path / "lib.yaml", monkeypatch)
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(f"resgraph: 1\nname: M\nimports: ['{fifo}']\ninputs: {{x: [4]}}\nlayers:\n  - r: {{op: ReLU}}\n")
    assert caught.value.diagnostics[0].format() == (
        f"<string>:3:12: error: cannot import '{fifo}': {fifo}: not a regular file (a pipe); "
        "only spec files can be read")


def test_a_regular_only_spec_swapped_for_a_fifo_is_refused_not_waited_on(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, no_waiting: None) -> None:
    fifo = swapped_for_a_fifo(tmp_path / "spec.yaml", monkeypatch)
    with pytest.raises(resgraph.UsageError, match=r"not a regular file \(a pipe\); only spec files can be read"):
        loader.load_file(fifo, regular_only=True)


def _usage_error(read: Callable[[], object]) -> str:
    with pytest.raises(resgraph.UsageError) as caught:
        read()
    return str(caught.value)


def test_a_directory_is_worded_alike_by_every_reader(tmp_path: pathlib.Path) -> None:
    """A spec said `is a directory, not a spec file`, a saved model `not a regular file (a directory)`."""
    assert _usage_error(lambda: loader.load_file(tmp_path)) == (
        f"{tmp_path}: is a directory, not a regular file; only spec files can be read")
    assert _usage_error(lambda: loader.load_file(tmp_path, regular_only=True)) == (
        f"{tmp_path}: is a directory, not a regular file; only spec files can be read")
    assert _usage_error(lambda: resgraph.load(tmp_path)).startswith(
        f"{tmp_path}: is a directory, not a regular file; ")


def test_a_spec_the_user_names_may_still_be_a_pipe(tmp_path: pathlib.Path) -> None:
    """Only imports must be regular files: `resgraph build /dev/stdin` and `<(...)` read a pipe."""
    read, write = os.pipe()
    os.write(write, SPEC.encode())
    os.close(write)
    try:
        assert loader.load_file(f"/dev/fd/{read}").data["name"] == "M"
    finally:
        os.close(read)


# --- writing: never over the spec, from Python too ----------------------------------------------

@pytest.fixture
def spec(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC)
    return path


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_save_refuses_to_write_over_the_spec_the_model_was_built_from(link: str, spec: pathlib.Path) -> None:
    """`resgraph.save(model, "net.pt")` with net.pt a link to the spec replaced the spec with weights."""
    output = spec.with_name("net.pt")
    output.symlink_to(spec) if link == "symlink" else output.hardlink_to(spec)
    model = resgraph.build(spec)
    with pytest.raises(resgraph.UsageError) as caught:
        resgraph.save(model, output)
    assert str(caught.value) == (f"{output}: that is the spec file {spec}; writing it would overwrite it. "
                                 "Name another file")
    assert spec.read_text() == SPEC


def test_write_diagram_refuses_to_write_over_the_spec_it_was_drawn_from(spec: pathlib.Path) -> None:
    output = spec.with_name("net.svg")
    output.symlink_to(spec)
    with pytest.raises(resgraph.UsageError, match=r"net\.svg: that is the spec file .*net\.yaml; writing it would "):
        resgraph.write_diagram(resgraph.render(spec), output)
    spec.with_name("net.dot").hardlink_to(spec)
    with pytest.raises(resgraph.UsageError, match=r"that is the spec file"):  # drawn from the built model too
        resgraph.write_diagram(resgraph.render(resgraph.build(spec)), spec.with_name("net.dot"))
    assert spec.read_text() == SPEC


def test_the_library_refuses_to_write_over_a_block_library_the_spec_imports(tmp_path: pathlib.Path) -> None:
    library = tmp_path / "lib.yaml"
    library.write_text("resgraph: 1\nblocks:\n  head:\n    layers:\n      - fc: {op: Linear, out_features: 2}\n")
    spec = tmp_path / "net.yaml"
    spec.write_text(f"resgraph: 1\nname: M\nimports: ['{library}']\ninputs: {{x: [4]}}\nlayers:\n"
                    "  - h: {block: head}\n")
    for output in (tmp_path / "lib.pt", tmp_path / "lib.svg"):
        output.symlink_to(library)
    message = f"that is the block library {library} that the spec imports; writing it would overwrite it"
    with pytest.raises(resgraph.UsageError, match=message):
        resgraph.save(resgraph.build(spec), tmp_path / "lib.pt")
    with pytest.raises(resgraph.UsageError, match=message):
        resgraph.write_diagram(resgraph.render(spec), tmp_path / "lib.svg")
    assert library.read_text().startswith("resgraph: 1\nblocks:")


def test_save_and_write_diagram_still_write_other_files(spec: pathlib.Path) -> None:
    resgraph.save(resgraph.build(spec), spec.with_name("net.pt"))
    resgraph.write_diagram(resgraph.render(spec), spec.with_name("net.dot"))
    assert spec.with_name("net.pt").stat().st_size > 0 and "digraph" in spec.with_name("net.dot").read_text()


def test_to_onnx_refuses_to_write_over_the_spec_too(spec: pathlib.Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    output = spec.with_name("net.onnx")
    output.symlink_to(spec)
    with pytest.raises(resgraph.UsageError, match=r"net\.onnx: that is the spec file .*net\.yaml; writing it would"):
        resgraph.to_onnx(resgraph.build(spec), str(output))
    assert spec.read_text() == SPEC
