"""Held-back cases of inspection and first contact: every independent mistake in one run."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import resgraph
from conftest import ROOT
from resgraph.api import check_library

BLOCK_WITH_TWO_MISTAKES = """\
resgraph: 1
name: Blk
inputs:
  x: [3, 32, 32]
blocks:
  unit:
    inputs: [h]
    layers:
      - conv: {op: Conv2d, out_channels: 8, kernal_size: 3}
      - act: {op: ReLUU}
layers:
  - b: {block: unit}
"""

LIBRARY_WITH_MISTAKES = """\
resgraph: 1
blocks:
  a:
    layers:
      - conv: {op: Conv2d, out_channels: 8, kernal_size: 3}
      - act: {op: ReLUU}
  b:
    layers:
      - act: {op: Sigmoidd}
"""


def _errors(exc: pytest.ExceptionInfo[resgraph.SpecError]) -> list[str]:
    return [f"{d.location.line}:{d.location.column} {d.message}" for d in exc.value.diagnostics]


def _check_errors(path: pathlib.Path, text: str) -> list[str]:
    """`resgraph.check` of `text` written to `path` (a file, as a user's spec is): its errors, each as
    `line:col message`."""
    path.write_text(text)
    with pytest.raises(resgraph.SpecError) as exc:
        resgraph.check(path)
    return _errors(exc)


def test_a_misspelt_op_in_a_block_the_schema_refused_is_reported_with_its_other_mistakes(
        tmp_path: pathlib.Path) -> None:
    # The block was left out whole for the argument typo, so `ReLUU` surfaced only on the next run.
    errors = _check_errors(tmp_path / "blk.yaml", BLOCK_WITH_TWO_MISTAKES)
    assert any(e.startswith("9:") and "unknown argument 'kernal_size'" in e for e in errors)
    assert any(e.startswith("10:19 ") and "unknown op 'ReLUU'" in e and "did you mean 'ReLU'" in e for e in errors)


def test_a_library_with_a_schema_error_also_names_its_misspelt_ops(tmp_path: pathlib.Path) -> None:
    library = tmp_path / "lib.yaml"
    library.write_text(LIBRARY_WITH_MISTAKES)
    (tmp_path / "spec.yaml").write_text("resgraph: 1\nname: Imp\nimports: [lib.yaml]\ninputs:\n  x: [3, 8, 8]\n"
                                        "layers:\n  - b: {block: b}\n")
    for run in (lambda: check_library(library), lambda: resgraph.check(tmp_path / "spec.yaml")):
        with pytest.raises(resgraph.SpecError) as exc:
            run()
        errors = _errors(exc)
        assert any(e.startswith("5:") and "kernal_size" in e for e in errors)
        assert any(e.startswith("6:19 ") and "unknown op 'ReLUU'" in e for e in errors)
        assert any(e.startswith("9:19 ") and "unknown op 'Sigmoidd'" in e for e in errors)
    cli = subprocess.run([sys.executable, "-m", "resgraph", "validate", str(library)], capture_output=True, text=True,
                         cwd=ROOT)
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "lib.yaml:9:19: error: block 'b', layer 'act': unknown op 'Sigmoidd'" in cli.stdout + cli.stderr


def test_an_input_refused_for_its_name_is_not_named_by_its_stand_in(tmp_path: pathlib.Path) -> None:
    # The spec's other mistake named `invalid_input_1`, a name the user never wrote, and the hint could suggest it.
    spec = tmp_path / "inputs.yaml"
    spec.write_text("resgraph: 1\nname: Two\ninputs:\n  x: [3, 8, 8]\n  bad-name: [3]\n"
                    "layers:\n  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3}\n")
    with pytest.raises(resgraph.SpecError) as exc:  # (its hints are read too)
        resgraph.check(spec)
    errors = _errors(exc)
    assert any(e.startswith("5:3 ") and "invalid name 'bad-name'" in e for e in errors)
    assert "7:5 layer 'c1': the spec has several inputs (x, and 1 refused above); say which this layer reads" in errors
    assert [d.hint for d in exc.value.diagnostics if d.location.line == 7] == ["add `input: x`"]
    assert "invalid_input" not in str(exc.value)


REPEAT_ZERO = """\
resgraph: 1
name: Hidden
inputs:
  x: [3, 32, 32]
blocks:
  unit:
    inputs: [h]
    params: {width: required}
    layers:
      - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1, input: hh}
      - act: {op: ReLU}
      - proj: {op: Conv2d, out_channels: "${width}", kernel_size: 1}
    skips:
      - sk: {from: h, to: nothere}
    outputs: [ghost]
  cyc_a:
    layers:
      - inner: {block: cyc_b}
  cyc_b:
    layers:
      - inner: {block: cyc_a}
layers:
  - b1: {block: unit, repeat: 0, with: {width: 4}}
"""


def test_the_names_inside_a_block_whose_only_call_failed_are_checked_in_the_same_run(tmp_path: pathlib.Path) -> None:
    # `repeat: 0` left the block uncalled, and only its misspelt ops were looked for: its three
    # unknown names (and a cycle between two uncalled blocks) surfaced only once the call was fixed.
    errors = _check_errors(tmp_path / "hidden.yaml", REPEAT_ZERO)
    assert any(e.startswith("10:") and "unknown node 'hh'; did you mean 'h'?" in e for e in errors)
    assert any(e.startswith("14:") and "to: unknown node 'nothere'" in e for e in errors)
    assert any(e.startswith("15:") and "unknown node 'ghost'" in e for e in errors)
    assert sum("block cycle" in e for e in errors) == 1  # one cycle, reported once
    assert any(e.startswith("23:") and "repeat: must be at least 1" in e for e in errors)
    assert len(errors) == 5  # nothing that reads the unknown `width` is reported


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_checking_an_examples_blocks_with_no_call_finds_nothing(example: str) -> None:
    """Each example's blocks, checked as if every call had failed, have no mistake of their own."""
    from resgraph.loader import load_file
    from resgraph.resources import read_import
    from resgraph.shapes import check_uncalled_blocks
    from resgraph.validate import validate

    loaded = load_file(str(ROOT / "examples" / example))
    spec = validate(loaded, None, [])
    assert check_uncalled_blocks(spec, loaded.source, list(spec.blocks), (), read_import) == []


PARAM_AND_LAYERS = """\
resgraph: 1
name: P
params: {w: "${undefined_thing * 2}", depth: 2}
inputs:
  x: [3, 8, 8]
layers:
  - c: {op: Conv2d, out_channels: "${w}", kernel_size: 3}
  - d: {op: ReLUU, input: x}
  - f: {block: blk, input: x}
  - g: {block: other, input: x}
blocks:
  blk:
    params: {k: "${w}"}
    layers:
      - z: {op: Conv2d, out_channels: 4, kernel_size: "${k}"}
  other:
    layers:
      - z: {op: Linear, out_features: "${depth}", input: nowhere}
skips:
  - s: {from: c, to: d}
  - s2: {from: x, to: ghost}
"""


def test_a_parameter_that_fails_hides_only_what_reads_it(tmp_path: pathlib.Path) -> None:
    # A failed parameter stopped the run after the schema: the unknown op, the block's unknown
    # node and the skip's unknown target (none of which reads `w`) surfaced one run later.
    errors = _check_errors(tmp_path / "params.yaml", PARAM_AND_LAYERS)
    assert errors[0].startswith("3:16 ") and "unknown name 'undefined_thing'" in errors[0]
    assert any(e.startswith("8:") and "unknown op 'ReLUU'" in e for e in errors)
    assert any(e.startswith("18:") and "unknown node 'nowhere'" in e for e in errors)
    assert any(e.startswith("21:") and "to: unknown node 'ghost'" in e for e in errors)
    assert len(errors) == 4  # `c`, `blk` and the skip from `c` read `w`: left out, not reported again


INVALID_NAMES = """\
resgraph: 1
name: N
inputs:
  x: [3, 8, 8]
blocks:
  bad-block:
    layers:
      - z: {op: ReLU}
layers:
  - 2bad: {op: ReLU}
  - ok: {op: ReLU, input: x}
  - ok2: {op: ReLU, input: missing}
  - invalid: {op: ReLU, input: ok}
skips:
  - bad skip: {from: x, to: ok}
  - s: {from: nope, to: ok}
"""


def test_invalid_block_layer_and_skip_names_hide_nothing_else(tmp_path: pathlib.Path) -> None:
    # A block's invalid name stopped the run (its unknown references surfaced next run), and two
    # entries refused for their names were then reported as one name used twice (`skip 'invalid'`).
    errors = _check_errors(tmp_path / "names.yaml", INVALID_NAMES)
    assert [e.split(" ", 1)[0] for e in errors] == ["6:3", "10:5", "12:28", "15:5", "16:15"]
    assert "invalid name 'bad-block'" in errors[0] and "unknown node 'missing'" in errors[2]
    assert "unknown node 'nope'" in errors[4]
    assert not any("already used" in e for e in errors)


@pytest.mark.parametrize(("outputs", "message"), [("[a, 5]", "8:14 outputs[1]: expected a name, got integer 5"),
                                                  ("7", "8:10 outputs: expected a list of names or null"),
                                                  ("[]", "8:10 outputs: must not be empty")])
def test_a_malformed_outputs_list_hides_nothing_else(outputs: str, message: str, tmp_path: pathlib.Path) -> None:
    # A schema error in `outputs` was fatal: the layers' own mistakes surfaced one run later.
    errors = _check_errors(tmp_path / "outputs.yaml",
                           "resgraph: 1\nname: O\ninputs:\n  x: [3, 8, 8]\nlayers:\n  - a: {op: ReLUU}\n"
                           f"  - b: {{op: ReLU, input: zz}}\noutputs: {outputs}\n")
    assert len(errors) == 3 and errors[2].startswith(message)
    assert errors[0].startswith("6:9 ") and "unknown op 'ReLUU'" in errors[0]
    assert errors[1] == "7:26 layer 'b': unknown node 'zz'"


def test_a_block_checked_with_no_call_after_a_failed_import_names_no_missing_block(tmp_path: pathlib.Path) -> None:
    errors = _check_errors(tmp_path / "imports.yaml",
                           "resgraph: 1\nname: I\nimports: [nonexist.yaml]\ninputs:\n  x: [3, 8, 8]\nblocks:\n  wrap:\n"
                           "    layers:\n      - inner: {block: basic, with: {planes: 3}}\nlayers:\n"
                           "  - w: {block: wrap, repeat: 0}\n")
    assert len(errors) == 2 and "cannot import 'nonexist.yaml'" in errors[0] and "repeat" in errors[1]


def test_a_blocks_output_errors_name_the_block(tmp_path: pathlib.Path) -> None:
    # `outputs: unknown node 'ghost'` read as the model's outputs, while it is the block's.
    assert _check_errors(tmp_path / "block_outputs.yaml",
                         "resgraph: 1\nname: B\ninputs:\n  x: [8]\nblocks:\n  unit:\n    layers:\n"
                         "      - fc: {op: Linear, out_features: 4}\n      - act: {op: ReLU}\n"
                         "    outputs: [act, ghost, act]\nlayers:\n  - b: {block: unit}\n") == [
        "10:20 block 'unit': outputs: unknown node 'ghost'", "10:27 block 'unit': outputs: 'act' is listed twice"]


def test_a_block_library_checked_on_its_own_names_unknown_references(tmp_path: pathlib.Path) -> None:
    # `resgraph validate lib.yaml` said ok for a library whose blocks read nodes that do not exist.
    library = tmp_path / "lib.yaml"
    library.write_text("resgraph: 1\nblocks:\n  a:\n    params: {w: 4}\n    layers:\n"
                       "      - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, input: hx}\n"
                       "      - act: {op: ReLU}\n      - wide: {op: Conv2d, out_channels: \"${w}\", kernel_size: 1}\n"
                       "    outputs: [wide, gone]\n  b:\n    layers:\n      - inner: {block: a}\n"
                       "      - q: {op: ReLU, input: nothing}\n")
    with pytest.raises(resgraph.SpecError) as exc:
        check_library(library)
    assert _errors(exc) == ["6:68 layer 'a.conv': unknown node 'hx'; did you mean 'x'?",
                            "9:21 block 'a': outputs: unknown node 'gone'",
                            "13:30 layer 'b.q': unknown node 'nothing'"]
    assert sorted(check_library("resgraph:blocks/resnet.yaml").blocks) == ["basic", "bottleneck"]


def test_a_library_splicing_a_collected_repeat_of_unknown_count_is_ok(tmp_path: pathlib.Path) -> None:
    # With no call, `m.*` splices an unknown number of values: it was counted as one, and concat's
    # "takes at least 2 input(s), got 1" refused a library whose every call builds (found by review).
    library = tmp_path / "lib.yaml"
    library.write_text("resgraph: 1\nblocks:\n  rep: {layers: [{c: {op: Conv2d, out_channels: \"${in_channels}\", "
                       "kernel_size: 1}}]}\n  head:\n    params: {n: 3}\n    layers:\n"
                       "      - m: {block: rep, repeat: \"${n}\", collect: true}\n"
                       "      - cat2: {op: concat, input: [m.*]}\n")
    assert sorted(check_library(library).blocks) == ["head", "rep"]


@pytest.mark.parametrize(("skips", "said"), [
    ("  - s: {from: c1, to: c9}\n", ["9:23 skip 's': to: unknown node 'c9'"]),  # its source refused
    ("  - s: {from: xx, to: c1}\n", ["9:15 skip 's': from: unknown node 'xx'; did you mean 'x'?"]),  # its target
    ("  - s: {from: zz.out, to: c1}\n", ["9:15 skip 's': from: unknown node 'zz' (in 'zz.out')"]),
    ("  - s: {from: x, to: c1.out}\n", []),  # (whether c1 has a value `out` is not known: it was refused)
], ids=["unknown target", "unknown source", "unknown dotted source", "a value of the refused layer"])
def test_a_skip_with_one_end_refused_still_names_an_unknown_other_end(skips: str, said: list[str],
                                                                      tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "skips.yaml"
    spec.write_text("resgraph: 1\nname: Sk\ninputs:\n  x: [3, 32, 32]\nlayers:\n"
                    "  - c1: {op: Conv2d, out_channels: 8, kernal_size: 3}\n"
                    "  - c3: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\nskips:\n" + skips)
    with pytest.raises(resgraph.SpecError) as exc:
        resgraph.check(spec)
    errors = _errors(exc)
    assert errors[0].startswith("6:39 layer 'c1' (Conv2d): unknown argument 'kernal_size'")
    assert errors[1:] == said
