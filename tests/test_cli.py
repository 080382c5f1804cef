"""The `resgraph` command: summaries, JSON, code, saving, schema, exit codes, closed pipes, interrupts,
and a fast start."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

import resgraph
from conftest import ROOT, default_signals
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
    model = resgraph.build("examples/tutorial.yaml")
    assert capsys.readouterr().out == f"# TutorialResNet: the model\n{model.code}"


def test_build_code_prints_every_generated_class_of_a_block_model(capsys: pytest.CaptureFixture[str]) -> None:
    from resgraph.lower import GeneratedModule

    assert main(["build", "examples/resnet18.yaml", "--code", "--device", "meta"]) == 0
    out = capsys.readouterr().out
    model = resgraph.build("examples/resnet18.yaml", device="meta")
    headers = [line for line in out.splitlines() if line.startswith("# ")]
    # one section per generated class: the blocks' in order, then the model's
    assert headers == ["# Basic: layer1.0, layer1.1", "# Basic: layer2.0", "# Basic: layer2.1", "# Basic: layer3.0",
                       "# Basic: layer3.1", "# Basic: layer4.0", "# Basic: layer4.1", "# ResNet18: the model"]
    sections = out.split("\n\n# ")
    for name, sub in model.named_modules():
        assert isinstance(sub, GeneratedModule) == (name == "" or name.count(".") == 1)
        if isinstance(sub, GeneratedModule):
            (section,) = [s for s in sections if (name or "the model") in s.splitlines()[0]]
            assert section.split("\n", 1)[1].rstrip("\n") == type(sub).code.rstrip("\n")
    assert out.endswith(model.code)


@pytest.mark.parametrize(("flags", "message"), [
    (["--code", "--json"], "--code and --json cannot be used together"),
    (["--code", "--depth", "1"], "--code and --depth cannot be used together"),
    (["--code", "--columns", "macs"], "--code and --columns cannot be used together"),
    (["--json", "--columns", "macs"], "--json and --columns cannot be used together: --json always has every column"),
])
def test_conflicting_build_flags_are_usage_errors(flags: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/tutorial.yaml", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly_with_141() -> None:
    # `resgraph build ... | head -0`: the reader is gone before anything is written
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/resnet152.yaml", "--device", "meta"],
                             stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    os.close(write_end)
    assert (process.returncode, process.stderr) == (141, "")


@pytest.mark.parametrize("command", [["--help"], ["validate", "--help"]])
def test_help_to_a_closed_pipe_ends_quietly_with_141(command: list[str]) -> None:
    # argparse dropped the failed write and exited 0, as if the help had been read
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = subprocess.run([sys.executable, "-m", "resgraph", *command], stdout=write_end, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
    os.close(write_end)
    assert (process.returncode, process.stderr) == (141, "")


@pytest.mark.parametrize("command", [["schema"], ["build", "examples/resnet152.yaml", "--device", "meta", "--json"]])
def test_an_output_larger_than_the_pipe_whose_reader_leaves_ends_with_141(command: list[str]) -> None:
    # The reader takes one byte and leaves while the rest (more than the pipe holds) is being written:
    # `resgraph schema | head -c1` exited 0, its 286 KB written in one call that the pipe took part of.
    process = subprocess.Popen([sys.executable, "-m", "resgraph", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.read(1)
    process.stdout.close()
    assert (first, process.wait(), process.stderr.read()) == (b"{", 141, b"")


@pytest.mark.parametrize("encoding", [{"PYTHONIOENCODING": "ascii"},
                                      {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}],
                         ids=["ascii", "C locale"])
def test_an_output_that_cannot_hold_a_character_gets_it_escaped(encoding: dict[str, str],
                                                                tmp_path: pathlib.Path) -> None:
    # The summary's `└ projection` line (and a file name's é) was a UnicodeEncodeError with a traceback.
    spec = tmp_path / "tutorial.yaml"
    spec.write_text((ROOT / "examples" / "tutorial.yaml").read_text().replace("name: TutorialResNet",
                                                                               "name: TutorialResNet\ndescription: é"))
    process = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec)], capture_output=True, cwd=ROOT,
                             env={**os.environ, **encoding})
    assert process.returncode == 0 and process.stderr == b""
    assert process.stdout.isascii() and b"\\u2514 projection" in process.stdout
    utf8 = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec)], capture_output=True, cwd=ROOT)
    assert process.stdout.decode().count("\n") == utf8.stdout.decode().count("\n")


def test_head_reads_the_first_lines_without_a_traceback() -> None:
    command = f"set -o pipefail; {sys.executable} -m resgraph build examples/resnet152.yaml --device meta | head -2"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT)
    title, rule = result.stdout.splitlines()
    assert title == "ResNet152 (examples/resnet152.yaml)" and set(rule) == {"-"}
    # 141 when the pipe was closed before resgraph finished writing; 0 when it was all in the pipe already
    assert result.returncode in (0, 141) and result.stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("command", [
    ["build", "examples/tutorial.yaml"], ["build", "examples/tutorial.yaml", "--code"],
    ["build", "examples/tutorial.yaml", "--json"], ["validate", "examples/tutorial.yaml"],
    ["sizes", "examples/tutorial.yaml"], ["sizes", "examples/tutorial.yaml", "--json"], ["schema"],
    ["schema", "--path"],
    # argparse prints these itself and dropped the failed write: they exited 0, saying nothing
    ["--version"], ["--help"], ["build", "--help"], ["schema", "-h"],
    [],  # no command: the help, then status 2 where it could be written
])
def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(command: list[str]) -> None:
    with open("/dev/full", "w") as full:  # (every write fails: no space left on device)
        process = subprocess.run([sys.executable, "-m", "resgraph", *command], stdout=full, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT)
    assert (process.returncode, process.stderr) == (
        1, "resgraph: error: cannot write the output: No space left on device\n")


def test_a_closed_stdout_discards_what_would_be_said_and_files_are_still_written(tmp_path: pathlib.Path) -> None:
    saved = tmp_path / "model.pt"
    command = (f"{sys.executable} -m resgraph validate examples/tutorial.yaml >&- && "
               f"{sys.executable} -m resgraph build examples/tutorial.yaml -o {saved} >&-")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")
    assert resgraph.load(saved).graph.name == "TutorialResNet"


# Ctrl-C exits 130; SIGTERM ends the process by the signal, as for any program (143 in a shell), after files.py
# removed the temporary file.
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_an_interrupted_save_leaves_no_file_and_no_traceback(tmp_path: pathlib.Path, signum: int, status: int) -> None:
    # Signal the moment the temporary file appears, while the 230 MiB of weights are being written.
    process = subprocess.Popen([sys.executable, "-m", "resgraph", "build", "examples/resnet152.yaml", "-o",
                                str(tmp_path / "model.pt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               preexec_fn=default_signals)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".model.pt.*.tmp")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err.decode()
    assert b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


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
    for key, tensor in [("res1_conv1.weight", torch.zeros(1)), ("res1_conv1.bias", torch.zeros(64).double()),
                        ("extra.weight", torch.zeros(1))]:  # another shape, another dtype, a tensor too many
        changed = {**payload, "state_dict": {**payload["state_dict"], key: tensor}}
        torch.save(changed, target)
        with pytest.raises(resgraph.UsageError, match="do not match the stored spec"):  # as every other bad part
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
    (["build", "examples/tutorial.yaml", "-o", "out/.py"],  # (not "must end in .py": it does, as a hidden name)
     "out/.py: the name is only a suffix; give the model file a name before it (e.g. out/model.py)"),
    (["render", "examples/tutorial.yaml", "-o", ".SVG"],
     ".SVG: the name is only a suffix; give the diagram file a name before it (e.g. model.SVG)"),
    (["build", "examples/tutorial.yaml", "--diagram", ".png"], ".png: the name is only a suffix"),
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


@pytest.mark.parametrize(("args", "unimported"), [
    # --help lists the commands only: not even the error types or the format table are imported
    (["--help"], ["torch", "pydantic", "yaml", "jsonschema", "numpy", "graphviz", "resgraph.errors",
                  "resgraph.formats"]),
    (["build", "--help"], ["torch", "pydantic", "yaml", "jsonschema", "numpy", "graphviz"]),
    (["schema", "--path"], ["torch", "pydantic"]),
    (["schema"], ["torch"]),
    (["validate", "examples/tutorial.yaml"], ["torch"]),
])
def test_help_schema_and_validate_do_not_import_torch(args: list[str], unimported: list[str]) -> None:
    probe = ("import sys, runpy\nsys.argv = ['resgraph', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('resgraph', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"imported = [name for name in {unimported!r} if name in sys.modules]\n"
             "assert not imported, f'imported {imported}'\n")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [
    ["render", "{spec}"],  # the default output, SPEC's name with .svg, is the spec itself
    ["render", "{spec}", "-o", "./{spec}"],
    ["render", "{link}", "-o", "{spec}"],  # through a symlink
    ["build", "{other}", "--diagram", "{hard}"],  # a hard link to the spec
    ["build", "{py}", "-o", "{py}"],
])
def test_an_output_that_is_the_spec_itself_is_refused_and_the_spec_kept(tmp_path: pathlib.Path,
                                                                        command: list[str]) -> None:
    text = (ROOT / "examples" / "tutorial.yaml").read_text()
    for name in ("net.svg", "net.py", "other.yaml"):
        (tmp_path / name).write_text(text)
    (tmp_path / "link.yaml").symlink_to(tmp_path / "net.svg")
    os.link(tmp_path / "other.yaml", tmp_path / "hard.html")
    names = {"spec": "net.svg", "link": "link.yaml", "other": "other.yaml", "hard": "hard.html", "py": "net.py"}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run([sys.executable, "-m", "resgraph", *(part.format(**names) for part in command)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "that is the spec file" in result.stderr and "Traceback" not in result.stderr
    assert all((tmp_path / name).read_text() == text for name in ("net.svg", "net.py", "other.yaml"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", [["build", "examples/tutorial.yaml", "-o", ""],
                                     ["build", "examples/tutorial.yaml", "--diagram", ""],
                                     ["render", "examples/tutorial.yaml", "-o", ""]])
def test_an_empty_output_name_is_a_usage_error(command: list[str]) -> None:
    # It was taken as no -o at all: `build` saved nothing and said nothing, `render` wrote tutorial.svg.
    result = cli(*command)
    assert result.returncode == 2 and "the file name is empty" in result.stderr
    assert not (ROOT / "tutorial.svg").exists()


@pytest.mark.parametrize("device", ["cuda:99", "hpu", "privateuseone", "opengl", "mkldnn"])
def test_a_device_this_machine_lacks_is_a_usage_error_not_a_traceback(device: str) -> None:
    # (hpu raised torch's ModuleNotFoundError; opengl and mkldnn torch's "INTERNAL ASSERT FAILED ... report a bug")
    result = cli("build", "examples/tutorial.yaml", "--device", device)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"resgraph: error: --device {device}: this machine cannot allocate there: ")
    assert "Traceback" not in result.stderr and "INTERNAL ASSERT" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("device, problem", [
    ("bogus", "unknown device type 'bogus'"),
    ("CPU", "unknown device type 'CPU'; did you mean 'cpu'?"),
    ("gpu", "unknown device type 'gpu'; did you mean 'cuda'?"),
    ("cuda:x", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not 'x'"),
    ("cuda:-1", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '-1'"),
    ("cuda:0:1", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '0:1'"),
    # torch keeps an index in 8 bits: cuda:128 was cuda:-128, and cuda:256 the first GPU, silently
    ("cuda:128", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '128'"),
    ("cuda:256", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '256'"),
    ("cuda:00", "the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not '00'"),
    ("cpu:1", "there is one cpu device, with no index but 0: name it cpu"),
    ("meta:2", "there is one meta device, with no index but 0: name it meta"),
    ("", "the name is empty"),
    (":0", "no device type named"),
])
def test_a_malformed_device_names_the_option_what_is_wrong_and_the_accepted_forms(
        device: str, problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    """torch's words were its whole backend list ('Expected one of cpu, cuda, ipu, xpu, mkldnn, ...') or the bare
    string ('Invalid device string'); cpu:1 built on the one CPU as if the index were not there."""
    from resgraph.devices import ACCEPTED

    assert main(["build", "examples/tutorial.yaml", "--device", device]) == 2
    shown = device or "''"  # (quoted as a shell would need it)
    assert capsys.readouterr().err == f"resgraph: error: --device {shown}: {problem} (accepted: {ACCEPTED})\n"


def test_a_very_long_device_name_still_says_what_is_wrong_with_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The name was quoted whole twice, and the message cut in its middle lost what was said of it."""
    assert main(["build", "examples/tutorial.yaml", "--device", "x" * 5000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 2100 and "characters ...]xxxxxxxxxxxxxx' (accepted: cpu, cuda" in err
    assert ": unknown device type 'xxxxxxxxxxxxxx[... 4,972 characters ...]" in err


@pytest.mark.parametrize("device", ["cpu:0", "meta:0"])
def test_the_one_cpu_and_meta_device_may_be_named_with_index_0(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "examples/tutorial.yaml", "--device", device]) == 0
    assert "Total params" in capsys.readouterr().out


@pytest.mark.parametrize("pair, status, message", [
    ("num_classes", 2, "resgraph: error: --set num_classes: expected NAME=VALUE"),
    ("=10", 2, "resgraph: error: --set =10: expected NAME=VALUE"),
    ("num_classes=[1,", 2, "resgraph: error: --set num_classes=[1,: not a YAML value (YAML syntax error"),
    # (was taken as inf, and reported as "got number inf" at the layer)
    ("num_classes=1e400", 2, "resgraph: error: --set num_classes=1e400: not a YAML value (the number 1e400 is out of "
                             "range: a number's magnitude is at most about 1.8e308 (a 64-bit float's largest))\n"),
    ("num_clases=10", 2, "examples/resnet18.yaml: error: cannot override parameter 'num_clases': the spec declares "
                         "no parameter 'num_clases'; did you mean 'num_classes'?"),
    ("num_classes=${image_size}", 2, "examples/resnet18.yaml: error: cannot override parameter 'num_classes' with "
                                     "'${image_size}': an override is a value, not an expression"),
    # A value of the wrong kind for where the spec uses it: the spec is invalid at that value, reported at the
    # layer that reads it (as --input with a shape the layers reject), with the override named in the hint.
    ("num_classes=ten", 1, "examples/resnet18.yaml:24:42: error: layer 'fc' (Linear): out_features: expected an "
                           "integer, got string 'ten'\n  hint: num_classes = 'ten' is an override of the spec's value"),
    ("num_classes=0", 1, "examples/resnet18.yaml:24:42: error: layer 'fc' (Linear): out_features: must be at least 1, "
                         "got integer 0\n  hint: num_classes = 0 is an override of the spec's value"),
])
@pytest.mark.parametrize("command", ["validate", "build", "render", "sizes"])
def test_a_set_the_spec_cannot_take_is_a_usage_error_and_a_value_it_rejects_is_a_spec_error(
        command: str, pair: str, status: int, message: str, capsys: pytest.CaptureFixture[str],
        tmp_path: pathlib.Path) -> None:
    """An undeclared parameter or an expression exited 1, as if the spec were invalid, while a malformed or
    repeated --set, and an --input naming no input, exit 2: each is a mistake in the command, not the spec."""
    output = ["-o", str(tmp_path / "r.svg")] if command == "render" else []
    assert main([command, "examples/resnet18.yaml", "--set", pair, *output]) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    assert not (tmp_path / "r.svg").exists()


def test_an_input_size_beyond_2_62_is_a_usage_error_not_a_traceback() -> None:
    result = cli("build", "examples/tutorial.yaml", "--input", "x=3,100000000000000000000000,32")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "input shape for 'x': expected whole sizes per sample from 1 to 2^62" in result.stderr


def test_an_input_of_more_dims_than_a_tensor_has_is_a_usage_error_at_the_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    """It was said at the spec's input, "declare fewer dims", of dims the spec never declared."""
    assert main(["validate", "examples/tutorial.yaml", "--input", "x=" + ",".join(["1"] * 64)]) == 2
    assert capsys.readouterr().err == ("resgraph: error: input shape for 'x': 64 dims per sample, 65 with the batch "
                                       "dim; a torch tensor has at most 64\n")
    assert main(["validate", "examples/tutorial.yaml", "--input", "x=" + ",".join(["1"] * 63)]) == 1  # (Conv2d: 3 dims)


def test_file_names_are_echoed_on_one_line_with_control_characters_escaped(tmp_path: pathlib.Path) -> None:
    # A directory of other people's specs (`resgraph validate specs/*`) names the files: a newline in a
    # name forged a line of output (an "ok" or an error), and an escape sequence reached the terminal.
    spec = tmp_path / "a\nb.yaml: ok\x1b]0;title\x07.yaml"
    spec.write_text((ROOT / "examples" / "tutorial.yaml").read_text())
    bad = tmp_path / "bad\nx.yaml:1:1: error: fake\x1b[2J.yaml"
    bad.write_text("resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n  - a: {op: Nope}\n")
    shown = "a\\nb.yaml: ok\\x1b]0;title\\x07.yaml"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "resgraph", *args], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert run("validate", spec.name).stdout == f"{shown}: ok (10 nodes, 2 projections)\n"
    assert run("sizes", spec.name).stdout.startswith(f"{shown}: input sizes tried")
    assert run("render", spec.name, "-o", "d\x1b[2J\n.dot").stdout == "Wrote d\\x1b[2J\\n.dot\n"
    assert run("build", spec.name, "-o", "m\x1b[2J\n.py").stdout.endswith("\nSaved: m\\x1b[2J\\n.py\n")
    result = run("validate", bad.name)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("bad\\nx.yaml:1:1: error: fake\\x1b[2J.yaml:5:9: error: layer 'a' (Nope)")


def test_a_usage_error_is_one_line_whatever_file_name_it_names() -> None:
    result = cli("build", "examples/tutorial.yaml", "-o", "nodir\nresgraph: error: fake\x1b[2J/x.py")
    assert result.returncode == 2
    assert result.stderr == "resgraph: error: cannot write nodir\\nresgraph: error: fake\\x1b[2J/x.py: No such file " \
                            "or directory\n"


def test_the_resgraph_script_imports_an_allowed_module_from_the_working_directory(tmp_path: pathlib.Path) -> None:
    """As `python -m resgraph` does: the `resgraph` script runs with its own folder first on Python's path, not
    the working directory, and `--allow-import mylayers` said "No module named 'mylayers'" beside mylayers.py."""
    work, scripts = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    scripts.mkdir()
    (work / "mylayers.py").write_text("import torch\n\nclass Scale(torch.nn.Module):\n"
                                      "    def forward(self, x):\n        return x * 3\n")
    (work / "s.yaml").write_text("resgraph: 1\nname: S\ninputs: {x: [4]}\nlayers:\n  - a: {op: mylayers.Scale}\n")
    script = scripts / "resgraph"  # what pip's console script does
    script.write_text("import sys\nfrom resgraph.cli import entry\nsys.exit(entry())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(script), "build", "s.yaml", "--allow-import", "mylayers"],
                         capture_output=True, text=True, cwd=work, env=env)
    assert run.returncode == 0, run.stderr
    assert "Total params: 0" in run.stdout
    refused = subprocess.run([sys.executable, str(script), "build", "s.yaml"], capture_output=True, text=True,
                             cwd=work, env=env)
    assert refused.returncode == 1 and "--allow-import mylayers" in refused.stderr
