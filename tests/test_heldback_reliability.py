"""Held-back cases of the reliability and security issue: numbers that no tensor can hold, outputs
that would overwrite what a build reads, and file names and targets a plain `open()` handles. Each
is answered with a result or a located resgraph error, never a traceback or a broken model."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import resgraph
from conftest import run_cli, spec_errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAD = "resgraph: 1\nname: M\ninputs: {{x: {shape}}}\nlayers:\n"


# --- sizes no tensor can have -------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "layer", "message"), [
    # was built: the summary showed a 301-digit size and the forward could never run
    # ((2, 8) is a (C, L) signal to Upsample: its free length's arithmetic passes 2^62)
    ("[2, 8]", "{op: Upsample, scale_factor: 1e300}", "its size arithmetic reaches more than 2^62"),
    ("[2, 8, 8]", "{op: Upsample, scale_factor: 4611686018427387904}",
     "its output (N, 2, >2^62, >2^62) would have a size above 2^62"),
    # was an OverflowError traceback from the sizes solver
    ("[2, 8]", "{op: Conv1d, out_channels: 2, kernel_size: 1, padding: 4611686018427387904}",
     "its size arithmetic reaches more than 2^62, which no tensor size can be"),
    # was built with an input guard that refused every size, the declared one too (int64 wrapped round)
    ("[2, 8]", "{op: Conv1d, out_channels: 2, kernel_size: 1, padding: 4611686018427387904, "
               "stride: 4611686018427387904}",
     "its size arithmetic reaches more than 2^62"),
    ("[4, 2147483648, 2147483648]", "{op: ReLU}",
     "the shape (N, 4, 2147483648, 2147483648) would have more than 2^62 elements per sample"),
])
def test_a_size_beyond_2_62_is_an_error_at_its_layer(shape: str, layer: str, message: str) -> None:
    errors = spec_errors(HEAD.format(shape=shape) + f"  - r: {layer}\n")
    assert len(errors) == 1 and message in errors[0], errors
    where = "<string>:3:10: error: input 'x'" if "the shape" in message else "<string>:5:5: error: layer 'r'"
    assert errors[0].startswith(where), errors


def test_a_size_beyond_2_62_through_the_cli_is_a_located_error(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(HEAD.format(shape="[2, 8]") + "  - r: {op: Conv1d, out_channels: 2, kernel_size: 1, "
                                                  "padding: 4611686018427387904}\n")
    for command in ("validate", "build", "render", "sizes"):
        result = run_cli(command, str(spec), cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr)
        assert result.stderr.startswith(f"{spec}:5:5: error: layer 'r' (Conv1d): its size arithmetic"), command


def test_large_sizes_below_the_bound_still_build_and_solve() -> None:
    """Padding 2^60 with stride 2^61 is odd but valid (torch runs it): every length works."""
    spec = HEAD.format(shape="[2, 8]") + ("  - r: {op: Conv1d, out_channels: 2, kernel_size: 1, "
                                          "padding: 1152921504606846976, stride: 2305843009213693952}\n")
    graph = resgraph.check(spec)
    assert graph.nodes["r"].meta["type"].shape == (2, 2)
    sizes = resgraph.valid_sizes(spec, low=1, high=64)
    assert [dim.valid for dim in sizes.of("x") if dim.free] == [tuple(range(1, 65))]


# --- outputs that would overwrite what the build reads --------------------------------------------

LIBRARY = "resgraph: 1\nblocks:\n  Act:\n    layers:\n      - act: {op: ReLU}\n"


@pytest.mark.parametrize(("command", "output"), [
    (["render", "s.yaml", "-o", "lib.svg"], "lib.svg"),
    (["render", "s.yaml", "-o", "./sub/../lib.dot"], "./sub/../lib.dot"),
    (["build", "s.yaml", "--diagram", "link.html"], "link.html"),
    (["build", "s.yaml", "-o", "lib.py"], "lib.py"),
])
def test_an_output_that_is_an_imported_library_is_refused(command: list[str], output: str,
                                                          tmp_path: pathlib.Path) -> None:
    """A block library may have any name; writing over it lost the user's blocks (it was written)."""
    suffix = pathlib.Path(output).suffix
    library = tmp_path / f"lib{suffix}"
    library.write_text(LIBRARY)
    (tmp_path / "sub").mkdir()
    if output == "link.html":
        (tmp_path / "link.html").symlink_to(library.name)
    (tmp_path / "s.yaml").write_text(f"resgraph: 1\nname: M\nimports: [lib{suffix}]\ninputs: {{x: [4]}}\n"
                                     "layers:\n  - a: {block: Act}\n")
    result = run_cli(*command, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == (f"resgraph: error: {'--diagram' if '--diagram' in command else '-o'} {output}: that "
                             f"is the block library {library.name} that the spec imports; writing it would "
                             "overwrite it. Name another file\n")
    assert library.read_text() == LIBRARY
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["s.yaml", library.name, "sub", *(["link.html"] if output == "link.html" else [])])


def test_an_output_beside_an_imported_library_is_written(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").write_text(LIBRARY)
    (tmp_path / "s.yaml").write_text("resgraph: 1\nname: M\nimports: [lib.yaml]\ninputs: {x: [4]}\n"
                                     "layers:\n  - a: {block: Act}\n")
    result = run_cli("render", "s.yaml", "-o", "lib.dot", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "Wrote lib.dot\n", result.stderr
    assert "digraph M" in (tmp_path / "lib.dot").read_text()


# --- file names as long as the file system allows -----------------------------------------------

@pytest.mark.parametrize("stem", ["a" * 252, "é" * 126, "€" * 84], ids=["ascii", "2-byte", "3-byte"])
def test_a_file_name_of_the_longest_length_is_written(stem: str, tmp_path: pathlib.Path) -> None:
    """Names of 255 bytes, the most a file name may have: the temporary file beside it (`.NAME.RANDOM.tmp`)
    was longer, so writing a name that `open()` writes failed with 'File name too long'."""
    from resgraph.files import atomic_write

    for suffix in (".py", ".pt"):
        path = tmp_path / (stem + suffix)
        model = resgraph.build(HEAD.format(shape="[4]") + "  - fc: {op: Linear, out_features: 2}\n", seed=0)
        resgraph.save(model, str(path))
        assert path.stat().st_size > 0
    atomic_write(str(tmp_path / ("b" * 255)), lambda tmp: pathlib.Path(tmp).write_text("data"))
    assert (tmp_path / ("b" * 255)).read_text() == "data"
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 0


# --- read-only targets ----------------------------------------------------------------------------

def _as_unprivileged() -> list[str]:
    """A command prefix running a child without the power to write read-only files (root drops
    CAP_DAC_OVERRIDE through setpriv); skips where that cannot be arranged."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every file is writable")
    return ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("suffix", [".py", ".pt", ".svg"])
def test_a_read_only_output_is_refused_as_open_would(suffix: str, tmp_path: pathlib.Path) -> None:
    """`-o` onto a file its owner made read-only replaced it (renaming only needs the directory)."""
    target = tmp_path / f"kept{suffix}"
    target.write_text("protected\n")
    target.chmod(0o444)
    command = ["render", str(ROOT / "examples" / "tutorial.yaml"), "-o", target.name] if suffix == ".svg" else \
        ["build", str(ROOT / "examples" / "tutorial.yaml"), "-o", target.name]
    result = subprocess.run([*_as_unprivileged(), sys.executable, "-m", "resgraph", *command], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write {target.name}: Permission denied" in result.stderr
    assert target.read_text() == "protected\n" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def _special(kind: str, path: pathlib.Path) -> None:
    import os
    import stat

    if kind == "fifo":
        os.mkfifo(path)
        return
    try:  # a character device like /dev/null (1, 3): only root may make one
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize("kind", ["fifo", "device", "link to device"])
def test_a_fifo_or_device_at_the_output_is_never_replaced(kind: str, tmp_path: pathlib.Path) -> None:
    """They were replaced by a regular file; a symlink `out.py -> /dev/null`, run as root, would have
    turned /dev/null itself into a regular file."""
    import stat

    special = tmp_path / "special.py"
    _special(kind.split()[-1], special)
    name = "out.py" if kind == "link to device" else special.name
    if name != special.name:
        (tmp_path / name).symlink_to(special.name)
    before = special.lstat()
    result = run_cli("build", str(ROOT / "examples" / "tutorial.yaml"), "-o", name, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        f"resgraph: error: cannot write {name}: not a regular file (resgraph never replaces a FIFO, device or "
        "socket)\n"), result.stderr
    after = special.lstat()
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_directory_at_the_output_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "arch.svg").mkdir()
    result = run_cli("render", str(ROOT / "examples" / "tutorial.yaml"), "-o", "arch.svg", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == "resgraph: error: cannot write arch.svg: Is a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.svg"]


# --- stored numbers their dtype cannot hold -------------------------------------------------------

@pytest.mark.parametrize(("layer", "message"), [
    # each was built with an inf where the spec wrote a number
    ("{op: constant, value: [1.0e39, 1.0]}", "value holds 1e+39, more than float32 holds (its largest number is "
                                             "about 3.40e38): it would be inf; write a smaller number"),
    ("{op: constant, value: [70000.0, 1.0], dtype: float16}", "value holds 70000.0, more than float16 holds (its "
                                                               "largest number is about 65504): it would be inf; "
                                                               "write a smaller number or dtype: float32"),
    ("{op: constant, value: [-3.4e38, 1.0], dtype: bfloat16}", "value holds -3.4e+38, more than bfloat16 holds"),
    ("{op: constant, value: [[1, 2], [340282366920938463463374607431768211456, 4]]}",
     "value holds 340282366920938463463374607431768211456, more than float32 holds"),
    ("{op: parameter, shape: [2], init: [1.0e39, 1]}", "init holds 1e+39, more than float32 holds"),
    # was built wrapped round: [-1294967298, -1294967297]
    ("{op: arange, start: 2147483640, stop: 2147483650, dtype: int32}",
     "the range holds 2147483649, outside the range of int32 (-2147483648 to 2147483647); write dtype: int64"),
    ("{op: arange, stop: 70010, start: 70000, dtype: float16}", "more than float16 holds"),
    # were errors only when building (torch's wording, at the layer), not when validating
    ("{op: constant, value: [3000000000, 1], dtype: int32}", "value holds 3000000000, outside the range of int32"),
    ("{op: full, shape: [2], value: 9223372036854775808, dtype: int64}",
     "value holds 9223372036854775808, outside the range of int64 (-9223372036854775808 to 9223372036854775807)"),
    ("{op: full, shape: [2], value: 65520, dtype: float16}", "value holds 65520, more than float16 holds"),
    ("{op: parameter, shape: [2], init: 1.0e39}", "init holds 1e+39, more than float32 holds"),
])
def test_a_stored_number_its_dtype_cannot_hold_is_an_error_when_validating(layer: str, message: str) -> None:
    errors = spec_errors(HEAD.format(shape="[2]") + f"  - c: {layer}\n  - o: {{op: add, input: [x, c]}}\n")
    assert len(errors) == 1 and errors[0].startswith("<string>:5:8: error: layer 'c'") and message in errors[0], errors


@pytest.mark.parametrize("layer", [
    "{op: constant, value: [65504.0, -65504.0, 65519.99], dtype: float16}",
    "{op: constant, value: [3.4028234e38, -3.39e38]}",
    "{op: constant, value: [2147483647, -2147483648], dtype: int32}",
    "{op: full, shape: [2], value: -9223372036854775808, dtype: int64}",
    "{op: arange, start: 2147483640, stop: 2147483648, dtype: int32}",
])
def test_the_largest_numbers_a_dtype_holds_are_stored_exactly_as_torch_stores_them(layer: str) -> None:
    import torch

    model = resgraph.build(HEAD.format(shape="[2]") + f"  - c: {layer}\n")
    stored = model.c if isinstance(model.c, torch.Tensor) else dict(model.named_buffers())["c"]
    assert torch.isfinite(stored.double()).all()
    if "int32" in layer:
        assert stored.dtype == torch.int32 and stored.min() >= -2**31 and stored.max() == 2**31 - 1


@pytest.mark.parametrize(("dtype", "layer", "message"), [
    # each built a model whose every output was inf or wrapped round (1 + (2^63 - 1) in int32 gave 0)
    ("float32", "{op: mul, scalar: 1.0e39}", "5:18: error: layer 'r' (mul): scalar=1e+39 is more than float32 holds "
                                             "(its largest number is about 3.40e38): it would be inf; this op "
                                             "computes in float32 (from its input's dtype), where the number cannot "
                                             "be used as written; write a smaller number (or make the input float64)"),
    ("float32", "{op: sub, scalar: -1.0e39}", "scalar=-1e+39 is more than float32 holds"),
    ("float16", "{op: add, scalar: 70000}", "scalar=70000 is more than float16 holds"),
    ("int32", "{op: mul, scalar: 3000000000}", "5:18: error: layer 'r' (mul): scalar=3000000000 is outside the range "
                                               "of int32 (-2147483648 to 2147483647); this op computes in int32"),
    ("int32", "{op: add, scalar: 9223372036854775807}", "scalar=9223372036854775807 is outside the range of int32"),
    ("int64", "{op: sub, scalar: 9223372036854775809}", "scalar=9223372036854775809 is outside the range of int64"),
    ("bool", "{op: add, scalar: 9223372036854775808}", "outside the range of int64"),
    # torch refused these only at the first forward
    ("float32", "{op: clamp, min: 1.0e39}", "5:20: error: layer 'r' (clamp): min=1e+39 is more than float32 holds"),
    ("int32", "{op: clamp, max: 2147483648}", "max=2147483648 is outside the range of int32"),
])
def test_a_number_operand_the_computation_cannot_hold_is_an_error_at_its_key(dtype: str, layer: str,
                                                                              message: str) -> None:
    errors = spec_errors(f"resgraph: 1\nname: M\ninputs: {{x: {{shape: [2], dtype: {dtype}}}}}\nlayers:\n"
                         f"  - r: {layer}\n")
    assert len(errors) == 1 and message in errors[0], errors


@pytest.mark.parametrize(("dtype", "op", "scalar"), [
    ("float32", "mul", 3.0e38), ("int32", "add", 3000000000.0),  # (a float operand: computed in float32)
    ("int32", "mul", -2147483648), ("float16", "add", 65504), ("int64", "div", 9223372036854775807),
])
def test_number_operands_within_the_dtype_compute_as_torch_does(dtype: str, op: str, scalar: float) -> None:
    import torch

    model = resgraph.build(f"resgraph: 1\nname: M\ninputs: {{x: {{shape: [2], dtype: {dtype}}}}}\nlayers:\n"
                           f"  - r: {{op: {op}, scalar: {scalar!r}}}\n")
    x = torch.ones(2, 2, dtype=getattr(torch, dtype))
    assert torch.equal(model(x), getattr(torch, op)(x, scalar))


# --- ONNX opsets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", ["29", "99999999999999999999"])
def test_an_opset_newer_than_onnx_knows_is_a_usage_error(opset: str, tmp_path: pathlib.Path) -> None:
    """It was torch's multi-line 'Failed to convert ... Next steps:' (a huge one), or, past the newest
    opset, 'choose --opset 18 or higher' for an opset that was higher."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    newest = onnx.defs.onnx_opset_version()
    opset = str(max(int(opset), newest + 1))
    result = run_cli("build", str(ROOT / "examples" / "tutorial.yaml"), "-o", "t.onnx", "--opset", opset, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == (
        f"resgraph: error: ONNX opset {opset} does not exist yet: the installed onnx package knows opsets up to "
        f"{newest}; choose --opset {newest} or lower (Python: opset={newest})\n")
    assert not list(tmp_path.iterdir())


# --- diagrams Graphviz would take hours to lay out -----------------------------------------------

def main_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from resgraph.cli import main

    try:
        status = main(args)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


REPEATED = "resgraph: 1\nname: M\ninputs: {{x: [4]}}\nblocks:\n  B:\n    layers:\n      - r: {{op: ReLU}}\n" \
           "layers:\n  - s: {{block: B, repeat: {n}}}\n"


def test_a_diagram_too_large_to_lay_out_is_folded_with_a_note(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A 30,000-instance repeat ran Graphviz for more than 5 minutes (150,000 statements); the bound is
    lowered here so that the test is fast, as the flow is the same."""
    import resgraph.diagram

    monkeypatch.setattr(resgraph.diagram, "LAYOUT_LIMIT", 200)
    spec = tmp_path / "s.yaml"
    spec.write_text(REPEATED.format(n=100))
    status, out, err = main_in_process(["render", str(spec), "-o", str(tmp_path / "s.svg")], capsys)
    assert status == 0 and out == f"Wrote {tmp_path / 's.svg'}\n"
    assert err.startswith("resgraph: note: the full diagram has 506 nodes, edges and boxes, more than Graphviz lays "
                          "out in reasonable time (200); repeated blocks are folded (--fold-repeats)")
    assert "×100 (first shown)" in (tmp_path / "s.svg").read_text()


@pytest.mark.parametrize("suffix", ["svg", "png", "html"])
def test_a_diagram_too_large_even_folded_is_refused_before_graphviz_runs(suffix: str, tmp_path: pathlib.Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import resgraph.diagram

    monkeypatch.setattr(resgraph.diagram, "LAYOUT_LIMIT", 200)
    spec = tmp_path / "s.yaml"
    spec.write_text("resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n"
                    + "".join(f"  - r{i}: {{op: ReLU}}\n" for i in range(150)))
    status, _, err = main_in_process(["render", str(spec), "-o", str(tmp_path / f"s.{suffix}")], capsys)
    assert status == 1 and err == (f"resgraph: error: cannot draw {tmp_path / f's.{suffix}'}: the diagram has 303 "
                                   "nodes, edges and boxes, more than Graphviz lays out in reasonable time (200), even "
                                   "with repeated blocks folded. Show fewer levels (--depth 2, or --depth 1), or write "
                                   "its source (-o s.dot)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    status, _, _ = main_in_process(["render", str(spec), "-o", str(tmp_path / "s.dot")], capsys)  # no layout: written
    assert status == 0 and (tmp_path / "s.dot").stat().st_size > 0
    with pytest.raises(resgraph.ResgraphError, match="more than Graphviz lays out in reasonable time"):
        resgraph.write_diagram(resgraph.render(spec), tmp_path / "api.svg")


def test_the_layout_bound_leaves_every_example_whole() -> None:
    from resgraph.diagram import LAYOUT_LIMIT

    assert len(resgraph.render(ROOT / "examples" / "llama_7b.yaml").body) < LAYOUT_LIMIT / 3


# --- many imports ---------------------------------------------------------------------------------

def _libraries(tmp_path: pathlib.Path, count: int, filler: str) -> pathlib.Path:
    for i in range(count):
        (tmp_path / f"l{i}.yaml").write_text(f"resgraph: 1\nblocks:\n  A{i}:\n    params: {{table: {filler}}}\n"
                                             "    layers:\n      - r: {op: ReLU}\n")
    spec = tmp_path / "s.yaml"
    names = [f"l{i}.yaml" for i in range(count)] + ["missing.yaml"]
    spec.write_text(f"resgraph: 1\nname: M\nimports: [{', '.join(names)}]\ninputs: {{x: [4]}}\n"
                    "layers:\n  - a: {block: A0}\n")
    return spec


@pytest.mark.parametrize(("bound", "filler", "refused"), [
    ("MAX_NODES", "[" + ", ".join(["0"] * 300) + "]", 3),  # about 310 nodes a library
    ("MAX_BYTES", "'" + "x" * 900 + "'", 1),  # about 980 bytes a library
], ids=["nodes", "bytes"])
def test_the_spec_and_its_imports_are_bounded_together(bound: str, filler: str, refused: int, tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file was bounded on its own only: 12 libraries of 1.9M nodes each took 6.7 GB and 74 s
    (and any number could be imported). The bounds are lowered here so that the test is fast."""
    import resgraph.expand

    monkeypatch.setattr(resgraph.expand, bound, 1000)
    spec = _libraries(tmp_path, 5, filler)
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (error,) = [d.format() for d in caught.value.diagnostics]  # what follows (the missing file too) is not read
    assert error.startswith(f"{spec}:3:") and f"cannot import 'l{refused}.yaml': with it, the spec and its libraries " \
        "would hold " in error and "(nothing further is imported)" in error
    # the bound it would pass is named, with what it would hold
    assert ("YAML nodes, more than the 1,000 resgraph reads" if bound == "MAX_NODES" else
            "MiB of library text, more than the 0 MiB resgraph reads") in error


def test_imports_within_the_bounds_are_read(tmp_path: pathlib.Path) -> None:
    spec = _libraries(tmp_path, 5, "[" + ", ".join(["0"] * 300) + "]")
    spec.write_text(spec.read_text().replace(", missing.yaml", ""))
    assert [name for name, _ in resgraph.build(spec).build_record.imports] == [str(tmp_path / f"l{i}.yaml")
                                                                                for i in range(5)]


# --- ONNX weights stored beside the file ----------------------------------------------------------

def test_onnx_weights_stored_beside_the_file_are_named_after_it(tmp_path: pathlib.Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Above 1.5 GiB of weights the exporter writes `NAME.data`. Written under a temporary name, the
    .onnx named `.NAME.RANDOM.tmp.data`, which was left behind (gigabytes, once per export). The size
    is lowered here so that a small model takes that path."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    import resgraph.onnx_export

    monkeypatch.setattr(resgraph.onnx_export, "EXTERNAL_DATA_BYTES", 0)
    model = resgraph.build(ROOT / "examples" / "tutorial.yaml", seed=0).eval()
    for _ in range(2):  # the second export replaces both files
        resgraph.save(model, tmp_path / "m.onnx")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("m.onnx", "m.onnx.data"):  # the pair is self-contained: it works wherever it is moved
        (tmp_path / name).rename(moved / name)
    ort = pytest.importorskip("onnxruntime")
    import torch

    x = torch.randn(2, 3, 32, 32)
    (y,) = ort.InferenceSession(str(moved / "m.onnx")).run(None, {"x": x.numpy()})
    assert torch.allclose(torch.from_numpy(y), model(x).detach(), atol=1e-5)


def test_a_small_onnx_model_is_one_file(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    resgraph.save(resgraph.build(ROOT / "examples" / "tutorial.yaml", seed=0), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_staged_write_that_fails_leaves_the_old_files_and_no_folder(tmp_path: pathlib.Path) -> None:
    from resgraph.files import atomic_write_staged

    (tmp_path / "m.onnx").write_text("old")
    (tmp_path / "m.onnx.data").write_text("old data")

    def fail(staged: str) -> None:
        pathlib.Path(staged).write_text("new")
        pathlib.Path(staged + ".data").write_text("new data")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_staged(str(tmp_path / "m.onnx"), fail)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"m.onnx": "old", "m.onnx.data": "old data"}
    written = atomic_write_staged(str(tmp_path / "m.onnx"),
                                  lambda staged: [pathlib.Path(staged + s).write_text("new") for s in ("", ".data")])
    assert written == [str(tmp_path / "m.onnx.data")]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"m.onnx": "new", "m.onnx.data": "new"}


# --- the Python API's import permission -----------------------------------------------------------

IMPORTING = "resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n  - r: {op: torch.nn.ReLU}\n"


@pytest.mark.parametrize("call", ["build", "check", "render", "summary", "count_parameters", "valid_sizes"])
def test_allow_imports_given_as_one_string_is_a_usage_error(call: str) -> None:
    """`allow_imports="torch"` allowed the prefixes 't', 'o', 'r', 'c', 'h', and the spec was then told
    to ask for allow_imports=['torch']."""
    with pytest.raises(resgraph.UsageError, match=r"allow_imports is a list of module prefixes, e\.g\. \['torch'\], "
                                                  r"not the string 'torch'"):
        getattr(resgraph, call)(IMPORTING, allow_imports="torch")


def test_loading_with_allow_imports_given_as_one_string_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    resgraph.save(resgraph.build(IMPORTING, allow_imports=["torch"]), tmp_path / "m.pt")
    with pytest.raises(resgraph.UsageError, match="not the string 'torch'"):
        resgraph.load(tmp_path / "m.pt", allow_imports="torch")
    with pytest.raises(resgraph.UsageError, match=r"holds module prefixes \(strings\)"):
        resgraph.build(IMPORTING, allow_imports=[b"torch"])
    assert type(resgraph.load(tmp_path / "m.pt", allow_imports=("torch",)).r).__name__ == "ReLU"
