"""Held-back cases of the inspection, rendering and robustness issues: hostile or odd input a new user
or an attacker would try, each answered with a result or a located resgraph error, never a traceback."""

from __future__ import annotations

import pathlib

import pytest

from conftest import run_cli
from resgraph.errors import SpecError
from resgraph.loader import load_text

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "tutorial.yaml"


def load_errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_text(text, "s.yaml")
    return [d.format() for d in caught.value.diagnostics]


def main_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`resgraph ARGS` run in this process: its exit status (argparse's exit included), stdout and stderr."""
    from resgraph.cli import main

    try:
        status = main(args)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


# --- YAML core tags on the wrong kind of node ---------------------------------------------------

@pytest.mark.parametrize(("value", "message"), [
    ("!!bool 3", "cannot read scalar '3': not a YAML bool"),  # was a KeyError traceback
    ("!!merge 3", "YAML tag '!!merge' cannot be given to a scalar"),  # was a KeyError traceback
    ("!!map 3", "YAML tag '!!map' cannot be given to a scalar"),  # was "got generator <generator object ..."
    ("!!seq 3", "YAML tag '!!seq' cannot be given to a scalar"),
    ("!!str [1]", "YAML tag '!!str' cannot be given to a list"),  # was read as the list, tag ignored
    ("!!int {a: 1}", "YAML tag '!!int' cannot be given to a mapping"),
    ("!!seq {a: 1}", "YAML tag '!!seq' cannot be given to a mapping"),
    ("!!null []", "YAML tag '!!null' cannot be given to a list"),
])
def test_a_core_tag_on_the_wrong_node_is_a_located_error(value: str, message: str) -> None:
    (error,) = load_errors(f"x: 1\ny: {value}\n")
    assert error.startswith(f"s.yaml:2:4: error: {message}")


def test_core_tags_on_their_own_nodes_still_read() -> None:
    data = load_text("a: !!map {x: !!seq [!!int 1, !!bool yes, !!null ~, !!float 2, !!str 3]}\n"
                     "b: &b {k: 1}\nc: {!!merge <<: *b}\n").data
    assert data == {"a": {"x": [1, True, None, 2.0, "3"]}, "b": {"k": 1}, "c": {"k": 1}}


def test_a_bad_bool_tag_through_the_cli_exits_1_with_its_location(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("resgraph: 1\nname: M\ninputs: {x: [!!bool 3]}\nlayers:\n  - l: {op: Linear, out_features: 2}\n")
    result = run_cli("validate", str(spec))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{spec}:3:14: error: cannot read scalar '3'" in result.stderr


# --- CLI values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["build", str(TUTORIAL), "--input", "x=3,\u00b2,32"],  # '²'.isdigit() is True, int('²') raised ValueError
    ["validate", str(TUTORIAL), "--input", "x=\u00b3"],
    ["sizes", str(TUTORIAL), "--range", "1..\u00b2"],
    ["build", str(TUTORIAL), "--depth", "\u00b2"],
    ["render", str(TUTORIAL), "--dpi", "\u00b9\u00b2"],
])
def test_superscript_digits_in_numeric_flags_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    status, _, err = main_in_process(args, capsys)
    assert status == 2 and "Traceback" not in err
    assert "expected" in err and "invalid _" not in err  # our own wording, not argparse's "invalid _positive value"


# --- summary: values as written, memory in the model's own dtype --------------------------------

SHAPES_SPEC = ("resgraph: 1\nname: R\ninputs: {x: [4, 2, 2]}\nlayers:\n"
               "  - c: {op: Conv2d, out_channels: 2, kernel_size: [1, 1]}\n"
               "  - r: {op: reshape, shape: [2, 2, 2]}\n"
               "  - u: {op: reshape, shape: [1, 1, 8]}\n"
               "  - v: {op: reshape, shape: [1, 8]}\n"
               "  - enc: {op: TransformerEncoderLayer, d_model: 8, nhead: 2, dim_feedforward: 16, batch_first: true}\n"
               "  - f: {op: Flatten}\n"
               "  - l: {op: Linear, out_features: 3}\n")


def test_a_shape_argument_is_shown_whole_and_a_kernel_collapsed() -> None:
    import resgraph

    ops = {row.name: row.op for row in resgraph.summary(SHAPES_SPEC).rows}
    assert ops["r"] == "reshape(c, shape=2x2x2)"  # was `shape=2`: a reshape to (2,) as far as the reader knew
    assert ops["u"] == "reshape(r, shape=1x1x8)"
    assert ops["c"] == "Conv2d(out_channels=2, kernel_size=1)"  # a per-dim argument keeps the short form


def test_a_half_model_counts_its_activations_in_half() -> None:
    import torch

    import resgraph

    torch.manual_seed(0)
    model = resgraph.build(SHAPES_SPEC)
    full = resgraph.summary(model)
    half = resgraph.summary(model.half())
    sample = torch.zeros(1, 4, 2, 2, dtype=torch.half)
    assert half.rows[0].op == "input float16" and half.input_bytes == sample.numel() * sample.element_size()
    assert half.activation_bytes * 2 == full.activation_bytes  # was equal: every value still counted as float32
    assert half.param_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    # the uncurated layer is measured on half inputs, as the half model runs (it was "?": a float32 input failed)
    enc = {row.name: row for row in half.rows}["enc"]
    assert enc.macs is not None and enc.macs == {row.name: row for row in full.rows}["enc"].macs
    assert half.unmeasured == []


# --- the CLI uses argparse's public API only ----------------------------------------------------

def test_the_cli_reads_no_private_name_of_another_module() -> None:
    """`_list_command` appended to argparse's `_choices_actions` and `_name_parser_map`: a new Python's
    argparse could break `resgraph --help`. The CLI may use its own private names, none of a library's."""
    import ast

    import resgraph.cli as cli

    tree = ast.parse(pathlib.Path(cli.__file__).read_text())
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    private = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in own})
    assert private == []


def test_an_unknown_key_on_a_block_call_points_to_with_not_to_an_op_named_none() -> None:
    spec = ("resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n  - b: {block: blk, k: 4}\n"
            "blocks:\n  blk:\n    params: {k: required}\n    layers:\n"
            "      - l: {op: Linear, out_features: \"${k}\"}\n")
    import resgraph

    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic.location) == "<string>:5:21" and diagnostic.message == "layer 'b': unknown argument 'k'"
    assert diagnostic.hint is not None and not diagnostic.hint.startswith("None")  # was "None takes: block, ..."
    assert diagnostic.hint.endswith("pass the block's parameters under with: {k: ...}")


# --- summary(...) arguments given as a torchinfo user would -------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"input_shapes": (3, 32, 32)}, "input shapes: expected a mapping from input name to per-sample shape, "
                                    "e.g. {'x': (3, 224, 224)}, got (3, 32, 32)"),  # was AttributeError: 'items'
    ({"input_shapes": {"x": 3}}, "input shape for 'x': expected whole sizes"),  # was TypeError: not iterable
    ({"input_shapes": {"x": "332"}}, "input shape for 'x': expected whole sizes"),
    ({"input_shapes": {3: (3, 32, 32)}}, "input shape for 3: the spec has no input 3"),  # was AttributeError: lower
    ({"depth": "2"}, "depth counts module levels from 1"),  # was TypeError: '<' between str and int
    ({"depth": True}, "depth counts module levels from 1"),  # was accepted as depth 1
    ({"depth": 2.5}, "depth counts module levels from 1"),  # was accepted
    ({"columns": ["op", 3]}, "a summary column is named by a string, not 3"),  # was AttributeError: lower
    ({"columns": 3}, "summary columns are a list of names or a comma-separated string, not 3"),  # was TypeError
])
def test_summary_options_of_the_wrong_type_are_usage_errors(options: dict[str, object], message: str) -> None:
    import resgraph

    with pytest.raises(resgraph.UsageError) as caught:
        resgraph.summary(TUTORIAL, **options)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


# --- huge integers are refused where they are written ---------------------------------------------

@pytest.mark.parametrize(("literal", "shown"), [
    ("0x" + "f" * 6000, "0xffffffffffffffffff...ffffffffff (6,002 characters)"),  # build/render: ValueError traceback
    ("9" * 5000, "99999999999999999999...9999999999 (5,000 characters)"),  # was a 5,000-digit message
    ("1" + "0" * 100, "10000000000000000000...0000000000 (101 characters)"),
    ("-0b1" + "0" * 340, "-0b10000000000000000...0000000000 (344 characters)"),
])
def test_an_integer_of_10_to_the_100_or_more_is_a_located_error(literal: str, shown: str) -> None:
    (error,) = load_errors(f"a: 1\nb: [{literal}]\n")
    assert error == f"s.yaml:2:5: error: the integer {shown} is too large: a spec's integers are smaller than " \
                    "10^100 (no tensor size, index or dtype holds more than 2^64)"


def test_a_hex_size_of_6000_digits_gives_every_command_a_located_error(tmp_path: pathlib.Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(f"resgraph: 1\nname: M\ninputs: {{x: [4]}}\nlayers:\n  - l: {{op: Linear, out_features: "
                    f"0x{'f' * 6000}}}\n")
    for args in (["validate"], ["build", "--device", "meta"], ["render", "-o", str(tmp_path / "m.dot")]):
        status, _, err = main_in_process([args[0], str(spec), *args[1:]], capsys)
        assert status == 1 and err.startswith(f"{spec}:5:35: error: the integer 0xffff"), args


def test_integers_up_to_100_digits_still_read_and_meet_the_schema_bounds() -> None:
    data = load_text(f"a: [{10**100 - 1}, {1 - 10**100}, {2**63 - 1}, 0x{'f' * 16}]\n").data
    assert data == {"a": [10**100 - 1, 1 - 10**100, 2**63 - 1, 2**64 - 1]}


# --- validate: one unreadable file hides nothing else -------------------------------------------

def test_validate_checks_every_file_after_an_unreadable_one(tmp_path: pathlib.Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n  - l: {op: Linaer, out_features: 2}\n")
    missing = tmp_path / "missing.yaml"
    status, out, err = main_in_process(["validate", str(missing), str(bad), str(tmp_path), str(TUTORIAL)], capsys)
    assert status == 2  # a file could not be read: a usage error outranks an invalid spec
    assert f"resgraph: error: {missing}: no such file" in err  # it used to stop here, checking nothing after it
    assert f"{bad}:5:9: error: layer 'l' (Linaer): unknown op 'Linaer'" in err
    assert f"resgraph: error: {tmp_path}: is a directory" in err
    assert out == f"{TUTORIAL}: ok (10 nodes, 2 projections)\n"


def test_validate_reports_a_bad_set_once_not_per_file(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = main_in_process(["validate", str(TUTORIAL), str(TUTORIAL), "--set", "a=["], capsys)
    assert status == 2 and err.count("--set a=[: not a YAML value") == 1


# --- the compiled schema predicate agrees with jsonschema on NaN --------------------------------

@pytest.mark.parametrize("schema", [{"minimum": 1}, {"maximum": 1}, {"exclusiveMinimum": 0}, {"exclusiveMaximum": 1},
                                    {"allOf": [{"type": "number"}, {"maximum": 0}]}])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0, 1, 1.5, -0.0, True])
def test_bounds_agree_with_jsonschema_on_nan_and_infinities(schema: dict[str, object], value: object) -> None:
    import jsonschema

    from resgraph.schema_check import compile_schema

    assert compile_schema(schema)(value) == jsonschema.Draft202012Validator(schema).is_valid(value)


# --- a huge echoed value does not make a huge message -------------------------------------------

def test_an_unknown_op_of_300000_characters_gives_a_message_of_bounded_length(tmp_path: pathlib.Path,
                                                                             capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    from resgraph.errors import MAX_MESSAGE

    spec = tmp_path / "s.yaml"
    spec.write_text(f"resgraph: 1\nname: M\ninputs: {{x: [4]}}\nlayers:\n  - l: {{op: {'a' * 300_000}, "
                    "out_features: 2}\n")
    status, _, err = main_in_process(["validate", str(spec)], capsys)
    (line,) = err.splitlines()  # was one line of 300,125 characters
    assert status == 1 and line.startswith(f"{spec}:5:13: error: layer 'l' (aaaa")
    assert len(line) <= len(f"{spec}:5:13: error: ") + MAX_MESSAGE
    # the start (where, which layer) and the end (what is wrong) are kept, the middle counted
    assert "characters ...]" in line and "op: must be at most 256 characters, got string 'aaa" in line


def test_a_short_message_is_not_shortened() -> None:
    from resgraph.errors import Diagnostic, Location

    message = "x" * 2000
    assert Diagnostic(Location("f", 1, 1), message).format() == f"f:1:1: error: {message}"


# --- render(...) options checked as the CLI's flags are ----------------------------------------

@pytest.mark.parametrize("options", [{"depth": "1"}, {"depth": 0}, {"depth": True}, {"depth": 1.5}, {"dpi": -1},
                                     {"dpi": 0}, {"dpi": "96"}])
def test_render_options_that_are_not_whole_numbers_are_usage_errors(options: dict[str, object]) -> None:
    import resgraph

    # depth="1" was a TypeError deep in the drawing of a model with blocks; depth=0 and dpi=-1 drew silently
    with pytest.raises(resgraph.UsageError, match=f"{next(iter(options))} must be a whole number >= 1"):
        resgraph.render(ROOT / "examples" / "resnet18.yaml", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "my layers", ".x", "pkg..sub", "1pkg"])
def test_an_allow_import_that_is_no_module_prefix_is_a_usage_error(prefix: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # (an empty prefix allowed nothing, silently)
    status, out, err = main_in_process(["validate", str(TUTORIAL), "--allow-import", prefix], capsys)
    assert status == 2 and out == ""
    assert f"argument --allow-import: expected a module prefix such as mylayers or mypackage.layers, got {prefix!r}" \
        in err


@pytest.mark.parametrize("prefix", ["mylayers", "my_pkg.layers", "pkg."])
def test_a_module_prefix_is_accepted(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_in_process(["validate", str(TUTORIAL), "--allow-import", prefix], capsys)[0] == 0
