"""What a spec can and cannot do: it never runs code; code comes in only from the caller."""

from __future__ import annotations

import pathlib
import pickle
import re
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
    probe = ("import re, sys, time\nimport torch\nimport resgraph\nstart = time.perf_counter()\n"
             "try:\n    resgraph.build(sys.argv[1])\n"
             "except resgraph.SpecError as exc:\n    print(exc.diagnostics[0].message)\n"
             "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
             "print(time.perf_counter() - start, peak)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, cwd=ROOT)
    message, measures = result.stdout.strip().splitlines()
    assert message.startswith("the model would have 20,000,200,000 parameters (74.5 GiB as float32)")
    assert "the largest part, 'fc1', has 10,000,100,000" in message
    seconds, peak_kib = measures.split()
    # About 1.5 s on an idle machine (torch imported first): 60 s guards against allocating 80 GB
    # (which no machine here could), not against slowness on a busy one.
    assert float(seconds) < 60 and int(peak_kib) < 1024 * 1024  # 80 GB of weights were never allocated
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


# --- --set values are read by the rules of the spec -------------------------------------------------

SCALARS = ["2024-01-01", "2024-01-01 10:30:00", "2001-12-14t21:59:43.10-05:00", "10", "-7", "0x1F", "!!int 0o17", "007",
           "1_000", "1e3", "3.25", ".5", "-.inf", ".inf", ".NaN", "true", "False", "~",
           "null", "'quoted'", '"2024-01-01"', "abc", "=", "a=b", "[1, 2]", "{a: 1, b: [x]}", "[2024-01-01]",
           "''"]
AMBIGUOUS = ["017", "1:30", "yes", "off", "on", "0o17", "0b101", "08"]  # YAML 1.1 and 1.2 read them as different values


@pytest.mark.parametrize("text", SCALARS)
def test_set_values_are_read_exactly_as_the_same_text_in_a_spec(text: str) -> None:
    from resgraph.cli import _overrides

    written = resgraph.load_spec(f"resgraph: 1\nname: S\nparams:\n  v: {text}\ninputs: {{x: [4]}}\nlayers:\n"
                                 "  - fc: {op: Linear, out_features: 2}\n").params["v"]
    given = _overrides([f"v={text}"])["v"]
    assert type(given) is type(written) and repr(given) == repr(written)


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_set_values_yaml_versions_read_differently_are_refused_as_in_a_spec(text: str) -> None:
    from resgraph.cli import _overrides

    with pytest.raises(resgraph.SpecError, match="YAML 1.1") as caught:
        resgraph.load_spec(f"resgraph: 1\nname: S\nparams:\n  v: {text}\ninputs: {{x: [4]}}\nlayers:\n"
                           "  - fc: {op: Linear, out_features: 2}\n")
    with pytest.raises(resgraph.UsageError, match=f"--set v={text}: .*YAML 1.1") as refused:
        _overrides([f"v={text}"])
    assert caught.value.diagnostics[0].message in str(refused.value)


def test_a_date_given_with_set_keeps_a_layer_whose_condition_compares_text(capsys: pytest.CaptureFixture[str]) -> None:
    from resgraph.cli import main

    spec = ROOT / "tests" / "fixtures" / "release_when.yaml"
    spec.write_text("resgraph: 1\nname: R\nparams: {release: '2023-01-01'}\ninputs: {x: [4]}\nlayers:\n"
                    "  - new: {op: Linear, out_features: 3, when: \"${release == '2024-01-01'}\"}\n"
                    "  - fc: {op: Linear, out_features: 2}\n")
    try:
        assert main(["build", str(spec), "--set", "release=2024-01-01", "--json"]) == 0
        assert '"name": "new"' in capsys.readouterr().out
    finally:
        spec.unlink()


@pytest.mark.parametrize(("value", "message"), [
    ("!!python/object/apply:os.system [x]", "YAML tag '!!python/object/apply:os.system' is not allowed"),
    ("[1, 2", "not a YAML value (YAML syntax error"),
    ("{a: 1, a: 2}", "duplicate key 'a'"),
    ("&a [*a]", "recursive YAML alias"),
])
def test_set_values_are_held_to_the_rules_of_a_spec(value: str, message: str) -> None:
    from resgraph.cli import _overrides

    with pytest.raises(resgraph.UsageError, match=re.escape(message)):
        _overrides([f"v={value}"])


# --- messages: located, in resgraph's words, never an empty reason, never a control character ------

@pytest.mark.parametrize(("repeat", "message"), [
    ('"${10**7}"', "<string>:9:28: error: layer 'l': repeat: must be at most 100000, got integer 10000000"),
    ('"${0}"', "<string>:9:28: error: layer 'l': repeat: must be at least 1, got integer 0"),
    ('"${[2]}"', "<string>:9:28: error: layer 'l': repeat: expected an integer, got list"),
    ('"${2.5}"', "<string>:9:28: error: layer 'l': repeat: expected an integer, got number 2.5"),
    ("0", "<string>:9:27: error: layer 'l': repeat: must be at least 1, got integer 0"),
])
def test_a_bad_repeat_is_reported_at_repeat(repeat: str, message: str) -> None:
    spec = ("resgraph: 1\nname: M\nblocks:\n  b:\n    layers:\n      - fc: {op: ReLU}\ninputs: {x: [4]}\nlayers:\n"
            f"  - l: {{block: b, repeat: {repeat}}}\n")
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(spec)
    assert [d.format() for d in info.value.diagnostics] == [message]


@pytest.mark.parametrize(("body", "message"), [
    ("{from: x, to: fc, merge: \"${'ad'}\"}", "merge: expected 'add', 'concat' or 'mul', got string 'ad'; did you mean "
                                             "'add'?"),
    ("{from: x, to: fc, projection: \"${[1]}\"}", "projection: expected 'auto', 'conv', 'avgpool', 'pad', 'crop' or "
                                                  "'none', got list"),
    ("{from: x, to: fc, dim: \"${'one'}\", merge: concat}", "dim: expected an integer, got string 'one'"),
    ("{from: x, to: fc, when: \"${[1]}\"}", "when: expected true or false, got list"),
])
def test_errors_found_after_evaluation_are_in_resgraphs_words(body: str, message: str) -> None:
    spec = HEAD + "  - fc: {op: Linear, out_features: 4}\nskips:\n  - s: " + body + "\n"
    with pytest.raises(resgraph.SpecError) as info:
        resgraph.check(spec)
    text = str(info.value)
    assert message in text
    assert "Input should" not in text and "String should" not in text and "validation error" not in text


HOSTILE_TEXT = "\x1b[2J\x1b]0;owned\x07\u202e\x9b31m"


def test_control_characters_from_a_spec_never_reach_the_terminal(tmp_path: pathlib.Path) -> None:
    """Strings, keys, names and the file name itself, through every command, with and without errors."""
    import yaml

    escaped = yaml.safe_dump(HOSTILE_TEXT).strip().removesuffix("...").strip()
    good = tmp_path / f"ok{HOSTILE_TEXT}.yaml"
    good.write_text("resgraph: 1\nname: S\nblocks:\n  b:\n    params: {tag: x}\n    layers:\n"
                    "      - fc: {op: Linear, out_features: 4}\n"
                    f"inputs: {{x: [4]}}\nlayers:\n  - blk: {{block: b, with: {{tag: {escaped}}}}}\n"
                    f"  - up: {{op: Threshold, threshold: 0.5, value: 0.0}}\n")
    bad = tmp_path / f"bad{HOSTILE_TEXT}.yaml"
    bad.write_text(f"resgraph: 1\nname: S\ndescription: {escaped}\ninputs: {{x: [4]}}\nlayers:\n"
                   f"  - fc: {{op: Linear, out_features: {escaped}, {escaped}: 1}}\n"
                   f"  - up: {{op: Upsample, mode: {escaped}}}\n"
                   f"  - e: {{op: ReLU, when: \"${{{escaped} + 1}}\"}}\n"
                   f"  - m: {{op: Dropout, p: \"${{{escaped}}}\"}}\n")
    runs = [(["build", str(good)], 0), (["build", str(good), "--json"], 0), (["validate", str(bad)], 1),
            (["build", str(bad)], 1), (["render", str(bad), "-o", str(tmp_path / "x.dot")], 1),
            (["build", str(good), "--set", f"tag={escaped}"], 2),  # (a block's parameter: the spec declares none)
            (["build", str(good), "--set", f"nope{HOSTILE_TEXT}=1"], 2),
            (["build", str(tmp_path / f"{HOSTILE_TEXT}.yaml")], 2)]
    for argv, status in runs:
        result = subprocess.run([sys.executable, "-m", "resgraph", *argv], capture_output=True, cwd=ROOT)
        output = result.stdout + result.stderr
        assert b"Traceback" not in output, output
        for byte in (b"\x1b", b"\x07", "\u202e".encode(), "\x9b".encode()):
            assert byte not in output, (argv, output)
        assert result.returncode == status, (argv, output)


# --- no traceback ---------------------------------------------------------------------------------

STAGES = """resgraph: 1
name: Stages
params:
  stages: [[16, 1], [32, 2], [64, 2]]
blocks:
  stage:
    params: {row: required, table: [[1, 2], [3, [4, 5]]], meta: {a: [1, 2]}}
    layers:
      - conv: {op: Conv2d, out_channels: "${row[0]}", kernel_size: 3, padding: 1, stride: "${row[1]}"}
inputs: {x: [3, 16, 16]}
layers:
  - body: {block: stage, repeat: 3, with: {row: "${stages[index]}"}}
"""


def test_block_parameters_that_are_lists_of_lists(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "stages.yaml"
    spec.write_text(STAGES)
    for argv in (["build", str(spec)], ["build", str(spec), "--json"], ["render", str(spec), "-o",
                                                                        str(tmp_path / "s.dot")],
                 ["build", str(spec), "-o", str(tmp_path / "s.py")]):
        result = subprocess.run([sys.executable, "-m", "resgraph", *argv], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
    summary = subprocess.run([sys.executable, "-m", "resgraph", "build", str(spec)], capture_output=True, text=True,
                             cwd=ROOT).stdout
    assert "stage(row=16x1, table=[[1, 2], [3, [4, 5]]], meta={'a': [1, 2]})" in summary
    model = resgraph.build(spec)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 64, 4, 4)


def test_every_layer_left_out_is_an_error_not_a_crash() -> None:
    with pytest.raises(resgraph.SpecError, match="the spec: no layer is left"):
        resgraph.check(HEAD + "  - fc: {op: ReLU, when: false}\n")


def test_a_closed_output_pipe_is_not_a_traceback() -> None:
    result = subprocess.run(f'"{sys.executable}" -m resgraph build examples/resnet50.yaml | head -1', shell=True,
                            capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.startswith("ResNet50 (examples/resnet50.yaml)") and "Traceback" not in result.stderr


def test_a_model_over_the_limit_is_offered_the_meta_device() -> None:
    """Llama 2 7B is over the default limit: the refusal says how to inspect it without allocating."""
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(ROOT / "examples" / "llama_7b.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message.startswith("the model would have 6,738,415,616 parameters")
    assert diagnostic.hint is not None and "--device meta (Python: device='meta')" in diagnostic.hint
    meta = resgraph.build(ROOT / "examples" / "llama_7b.yaml", device="meta")  # what the hint offers works
    assert sum(p.numel() for p in meta.parameters()) == 6_738_415_616



def test_loading_a_model_over_the_limit_is_offered_only_what_load_takes(tmp_path: pathlib.Path) -> None:
    """`load` fills the model with the file's weights and takes no device: its refusal offers the
    limit, not the meta device (its hint did, and neither `load` nor the CLI reading a .pt takes one)."""
    path = tmp_path / "model.pt"
    resgraph.save(resgraph.build(HEAD + "  - fc: {op: Linear, out_features: 100}\n", seed=0), path)
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.load(path, max_params=100)
    (diagnostic,) = caught.value.diagnostics
    assert "more than the limit of 100" in diagnostic.message
    assert diagnostic.hint == "raise the limit with --max-params N (Python: max_params=N) if this is intended"
    assert resgraph.load(path, max_params=None).fc.out_features == 100

@pytest.mark.parametrize("layer", ["{op: full, shape: [100000, 100000, 10], value: 0.5}",
                                   "{op: arange, stop: 100000000000}"])
def test_huge_constants_are_refused_before_allocation(layer: str, tmp_path: pathlib.Path) -> None:
    # Constants are buffers, not parameters: --max-params guarded only the weights, and these
    # asked torch for 400 and 800 GB at build. The same limit bounds them, checked before lowering.
    spec = tmp_path / "constants.yaml"
    spec.write_text(f"resgraph: 1\nname: Big\ninputs:\n  x: [4]\nlayers:\n  - big: {layer}\n")
    probe = ("import re, sys\nimport resgraph\n"
             "try:\n    resgraph.build(sys.argv[1])\n"
             "except resgraph.SpecError as exc:\n    print(exc.diagnostics[0].message)\n"
             "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n")
    result = subprocess.run([sys.executable, "-c", probe, str(spec)], capture_output=True, text=True, cwd=ROOT)
    message, peak_kib = result.stdout.strip().splitlines()
    assert message == ("layer 'big' (" + layer.split(",")[0].removeprefix("{op: ") + "): the model's constants would "
                       "hold 100,000,000,000 elements, more than the limit of 2,147,483,648; this one has "
                       "100,000,000,000")
    assert int(peak_kib) < 1024 * 1024  # nothing near their size was allocated
    small = "resgraph: 1\nname: Small\ninputs:\n  x: [4]\nlayers:\n  - c: {op: full, shape: [30, 4], value: 1}\n"
    with pytest.raises(resgraph.SpecError, match="constants would hold 120 elements, more than the limit of 100"):
        resgraph.build(small, max_params=100)
    assert resgraph.build(small, device="meta").c.shape == (30, 4)


def test_a_diagnostic_is_one_line_whatever_the_spec_echoes(tmp_path: pathlib.Path) -> None:
    # An import path is echoed twice (as written and as resolved): its newline started a forged
    # `file:line:col: error:` line of its own.
    spec = tmp_path / "imp.yaml"
    spec.write_text('resgraph: 1\nname: M\nimports: ["a\\nx.yaml:1:1: error: fake\\e[2J"]\ninputs: {x: [4]}\n'
                    "layers:\n  - a: {op: ReLU}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    text = caught.value.format()
    assert len(text.splitlines()) == 1 and "\x1b" not in text
    assert "cannot import 'a\\nx.yaml:1:1: error: fake\\x1b[2J': " in text
    assert text.endswith("/a\\nx.yaml:1:1: error: fake\\x1b[2J: no such file")
