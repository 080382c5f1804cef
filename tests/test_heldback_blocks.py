"""Held-back cases of blocks, parameters and repeats: nested calls, per-instance names, and errors
reported once, where they happen."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

import resgraph
from resgraph.api import check_library
from resgraph.errors import SpecError

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        resgraph.check(textwrap.dedent(text))
    return [line for line in str(caught.value).splitlines() if ": error: " in line]


def test_a_failed_with_value_is_reported_once_not_again_in_the_defaults_computed_from_it() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        params: {widths: [4, 8, 12]}
        inputs:
          x: [4]
        blocks:
          lin:
            params: {c: 4, d: "${c * 2}"}
            layers:
              - fc: {op: Linear, out_features: "${d}"}
        layers:
          - a: {block: lin, repeat: 4, with: {c: "${widths[index]}"}}
        """)
    assert errors == ["<string>:12:45: error: in ${widths[index]}: index 3 is out of range for a list of 3 (in 'a.3')"]


def test_a_failed_block_default_is_reported_once_not_again_in_later_defaults() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [4]
        blocks:
          lin:
            params: {c: "${1 // 0}", d: "${c + 1}", e: "${d * 2}"}
            layers:
              - fc: {op: Linear, out_features: "${e}"}
        layers:
          - a: {block: lin}
        """)
    assert errors == ["<string>:7:20: error: in ${1 // 0}: cannot compute: integer division or modulo by zero (in 'a')"]


def test_a_copied_resnet_spec_whose_library_is_missing_is_pointed_at_the_shipped_one(tmp_path: pathlib.Path) -> None:
    copied = tmp_path / "resnet18.yaml"
    copied.write_text((EXAMPLES / "resnet18.yaml").read_text())
    with pytest.raises(SpecError) as caught:
        resgraph.check(copied)
    (problem,) = caught.value.diagnostics
    assert problem.location.line == 6 and problem.message.endswith("/blocks/resnet.yaml: no such file")
    assert problem.hint == "resgraph ships this library: import it as `resgraph:blocks/resnet.yaml`"
    copied.write_text(copied.read_text().replace("[blocks/resnet.yaml]", "[resgraph:blocks/resnet.yaml]"))
    assert resgraph.build(copied, device="meta").fc.out_features == 1000


def test_a_spec_given_as_text_says_where_its_relative_imports_were_looked_for(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = (EXAMPLES / "resnet18.yaml").read_text()
    with pytest.raises(SpecError) as caught:
        resgraph.check(text)
    (problem,) = caught.value.diagnostics
    assert f"relative to the current directory ({tmp_path})" in (problem.hint or "")
    assert "build it from its path" in (problem.hint or "")


@pytest.mark.parametrize(("layer", "message"), [
    ("{op: chunk, chunks: 4, dim: 2, outputs: [a, b, c, d]}",
     "dim 2 of (4, 6, 8) splits into 3 pieces [2, 2, 2], but 4 outputs are named"),
    ("{op: split, split_size: [2, 3], dim: 1, outputs: [a, b]}", "split sizes [2, 3] add up to 5, not the dim's 4"),
    ("{op: chunk, chunks: 2, dim: -4, outputs: [a, b]}", "dim=-4 is the batch dimension; use a dim between 1 and 3"),
])
def test_a_chunk_or_split_that_does_not_fit_is_reported_once_not_once_per_output(layer: str, message: str) -> None:
    errors = _errors(f"""\
        resgraph: 1
        name: P
        inputs:
          x: [4, 6, 8]
        layers:
          - parts: {layer}
        """)
    assert len(errors) == 1 and errors[0].endswith(message)


def test_error_refuses_a_value_with_the_specs_own_message_and_what_reads_it_stays_quiet() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        params:
          size: q
          row: "${0 if size == 'n' else 1 if size == 's' else error('size must be n or s')}"
          widths: [0.25, 0.5]
        scale: {width: "${widths[row]}"}
        inputs:
          x: [3, 8, 8]
        layers:
          - conv: {op: Conv2d, out_channels: 64, kernel_size: 1}
        """)
    (problem,) = errors  # at the call of `error`; not again where scale.width reads `row`
    assert problem.startswith("<string>:5:55: error: in ${") and problem.endswith("}: size must be n or s")


def test_error_takes_a_message() -> None:
    (problem,) = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [4]
        layers:
          - fc: {op: Linear, out_features: "${error(3)}"}
        """)
    assert problem.endswith("error(...) failed: it takes a message (a string), not 3")


def test_reading_an_instance_that_depth_scaling_removed_says_how_many_the_repeat_makes() -> None:
    (problem,) = _errors("""\
        resgraph: 1
        name: P
        scale: {depth: 0.3}
        inputs:
          x: [4, 8, 8]
        blocks:
          unit:
            layers:
              - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
        layers:
          - m: {block: unit, repeat: 3, collect: true}
          - cat: {op: concat, input: [m.0, m.2]}
        """)
    assert problem == "<string>:12:30: error: layer 'cat': 'm' has no instance 2: its repeat makes 1 (m.0)"


def test_an_import_cycle_outside_the_current_directory_names_its_files_by_absolute_path(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lib").mkdir()
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / "lib" / f"{name}.yaml").write_text(
            f"resgraph: 1\nimports: [{other}.yaml]\nblocks: {{{name}: {{layers: [{{r: {{op: ReLU}}}}]}}}}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("resgraph: 1\nname: P\nimports: [lib/a.yaml]\ninputs: {x: [4]}\nlayers:\n  - r: {op: ReLU}\n")
    elsewhere = tmp_path / "work" / "deep"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    (problem,) = caught.value.diagnostics
    lib = tmp_path / "lib"
    assert problem.message == f"import cycle: {spec} -> {lib / 'a.yaml'} -> {lib / 'b.yaml'} -> {lib / 'a.yaml'}"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as caught:
        resgraph.check("spec.yaml")
    assert caught.value.diagnostics[0].message == "import cycle: spec.yaml -> lib/a.yaml -> lib/b.yaml -> lib/a.yaml"


@pytest.mark.parametrize(("override", "shown"), [
    ({"num_classes": "${image_size}"}, "'${image_size}'"),
    ({"depths": [2, "${1 + 1}", 2, 2]}, "\"[2, '${1 + 1}', 2, 2]\""),
])
def test_an_override_holding_an_expression_is_refused_where_it_is_given(override: dict, shown: str) -> None:
    with pytest.raises(SpecError) as caught:
        resgraph.check(EXAMPLES / "resnet18.yaml", params=override)
    (problem,) = caught.value.diagnostics  # not again at each layer that reads the parameter
    name = next(iter(override))
    assert problem.location.line == 0
    assert problem.message == (f"cannot override parameter {name!r} with {shown}: "
                               "an override is a value, not an expression")


def test_cli_set_with_an_expression_exits_with_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    from resgraph.cli import main
    assert main(["validate", str(EXAMPLES / "resnet18.yaml"), "--set", "num_classes=${image_size}"]) != 0
    err = capsys.readouterr().err
    assert "cannot override parameter 'num_classes'" in err and "Traceback" not in err


@pytest.mark.parametrize(("layer", "name"), [
    ('{block: lin, repeat: 3, when: "${index > 0}"}', "index"),
    ('{block: lin, repeat: "${2 + repeats}"}', "repeats"),
    ('{op: Linear, out_features: "${4 * num_blocks}"}', "num_blocks"),
])
def test_an_instance_name_read_where_it_is_not_bound_says_where_it_is(layer: str, name: str) -> None:
    with pytest.raises(SpecError) as caught:
        resgraph.check(textwrap.dedent(f"""\
            resgraph: 1
            name: P
            inputs:
              x: [4]
            blocks:
              lin:
                layers:
                  - fc: {{op: Linear, out_features: 4}}
            layers:
              - a: {layer}
            """))
    (problem,) = caught.value.diagnostics
    assert problem.message.endswith(f"unknown name {name!r}")
    assert problem.hint is not None and problem.hint.startswith(f"`{name}` (")
    assert "in a block call's `with:`" in problem.hint and "`when:` are read once for the whole call" in problem.hint


@pytest.mark.parametrize(("depths", "got"), [("3", "an integer, 3"), ("'3, 4'", "a string, '3, 4'"),
                                             ("{a: 1}", "a mapping, {'a': 1}"), ("null", "null"),
                                             ("true", "a boolean, True")])
def test_indexing_what_is_not_a_list_names_what_it_is(depths: str, got: str) -> None:
    errors = _errors(f"""\
        resgraph: 1
        name: P
        params: {{depths: {depths}}}
        inputs:
          x: [4]
        layers:
          - fc: {{op: Linear, out_features: "${{depths[0]}}"}}
        """)
    assert errors == [f"<string>:7:39: error: in ${{depths[0]}}: only lists can be indexed, by an integer; got {got}"]


def test_a_block_default_reading_a_later_parameter_is_refused_not_read_from_the_spec() -> None:
    # The spec's own `b` (100) must not stand in for the block's `b`, declared after `a` and given as 5.
    errors = _errors("""\
        resgraph: 1
        name: P
        params: {b: 100}
        inputs:
          x: [8]
        blocks:
          lin:
            params: {a: "${b * 2}", b: 3}
            layers:
              - fc: {op: Linear, out_features: "${a}"}
        layers:
          - l: {block: lin, with: {b: 5}}
        """)
    assert errors == ["<string>:8:20: error: in ${b * 2}: parameter 'b' is declared after 'a': a default reads only "
                      "the parameters declared before it; move 'b' before 'a' (in 'l')"]


def test_a_spec_parameter_reading_a_later_one_says_so() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        params: {a: "${2 * b}", b: 3}
        inputs:
          x: [8]
        layers:
          - fc: {op: Linear, out_features: "${a}"}
        """)
    assert errors == ["<string>:3:20: error: in ${2 * b}: parameter 'b' is declared after 'a': a default reads only "
                      "the parameters declared before it; move 'b' before 'a'"]


def test_a_block_default_reads_the_parameters_before_it_and_the_specs_own() -> None:
    model = resgraph.build(textwrap.dedent("""\
        resgraph: 1
        name: P
        params: {c: 100}
        inputs:
          x: [8]
        blocks:
          lin:
            params: {b: 3, a: "${b * 2 + c}"}
            layers:
              - fc: {op: Linear, out_features: "${a}"}
        layers:
          - l: {block: lin, with: {b: 5}}
        """), device="meta")
    assert model.l.fc.out_features == 110


def test_a_block_body_error_names_the_call_and_instance_whose_values_failed() -> None:
    # One body, three instances: the line alone cannot say which call (or which repeat) gave -8 and -4.
    errors = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          lin:
            params: {c: 8}
            layers:
              - fc: {op: Linear, out_features: "${c // (index - 1)}"}
          wrap:
            layers:
              - a: {block: lin, repeat: 2, with: {c: 4}}
        layers:
          - first: {block: lin}
          - second: {block: wrap, repeat: 2}
        """)
    assert errors == [
        "<string>:9:41: error: block 'lin', layer 'fc' (Linear): out_features: must be at least 1, got integer -8 "
        "(in 'first')",
        "<string>:9:41: error: block 'lin', layer 'fc' (Linear): out_features: must be at least 1, got integer -4 "
        "(in 'second.0.a.0')",
    ]


def test_the_same_block_body_error_from_two_calls_is_reported_once() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          lin:
            params: {c: 8}
            layers:
              - fc: {op: Linaer, out_features: "${c}"}
        layers:
          - first: {block: lin}
          - second: {block: lin, repeat: 2, with: {c: 3}}
        """)
    assert errors == ["<string>:9:14: error: block 'lin', layer 'fc' (Linaer): unknown op 'Linaer': not a resgraph op "
                      "or a torch.nn layer class; did you mean 'Linear'? (in 'first')"]


def _diagnostics(text: str) -> list[tuple[int, int, str, str | None]]:
    with pytest.raises(SpecError) as caught:
        resgraph.check(textwrap.dedent(text))
    return [(d.location.line, d.location.column, d.message, d.hint) for d in caught.value.diagnostics]


def test_a_skip_naming_a_layer_inside_another_block_says_where_that_layer_is() -> None:
    problems = _diagnostics("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          res:
            layers:
              - conv1: {op: Linear, out_features: 8}
              - conv2: {op: Linear, out_features: 8}
          other:
            layers:
              - a: {op: Linear, out_features: 8}
            skips:
              - sk: {from: conv1, to: a}
        layers:
          - r: {block: res}
          - o: {block: other}
          - c: {op: ReLU}
        skips:
          - s: {from: conv2, to: c}
        """)
    assert problems == [
        (14, 20, "skip 'o.sk': from: unknown node 'conv1'",
         "'conv1' is a layer of block 'res', and block 'other' reads only its own inputs (x) and layers: read what a "
         "call of that block returns (to return 'conv1', add it to the block's `outputs:` and read `CALL.conv1`)"),
        (20, 15, "skip 's': from: unknown node 'conv2'",
         "'conv2' is a layer of block 'res', and the top level reads only its own inputs and layers: read what a "
         "call of that block returns (to return 'conv2', add it to the block's `outputs:` and read `CALL.conv2`)"),
    ]


def test_a_block_naming_a_top_level_node_is_told_to_take_it_as_an_input() -> None:
    problems = _diagnostics("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          unit:
            inputs: [h]
            layers:
              - fc: {op: Linear, out_features: 8}
            skips:
              - sk: {from: stem, to: fc}
        layers:
          - stem: {op: Linear, out_features: 8}
          - u: {block: unit}
        """)
    assert problems == [
        (11, 20, "skip 'u.sk': from: unknown node 'stem'",
         "'stem' is a node of the spec's top level, and block 'unit' reads only its own inputs (h) and layers: give "
         "block 'unit' another input (`inputs: [h, stem]`) and pass 'stem' in its call's `input:` list"),
    ]


def test_a_name_declared_nowhere_is_only_unknown() -> None:
    problems = _diagnostics("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        layers:
          - fc: {op: Linear, out_features: 8, input: nothing}
        """)
    assert problems == [(6, 46, "layer 'fc': unknown node 'nothing'", None)]


def test_overriding_a_block_parameter_says_how_to_make_it_settable() -> None:
    text = textwrap.dedent("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          lin:
            params: {width: 8}
            layers:
              - fc: {op: Linear, out_features: "${width}"}
        layers:
          - l: {block: lin}
        """)
    with pytest.raises(SpecError) as caught:
        resgraph.check(text, params={"width": 16})
    (problem,) = caught.value.diagnostics
    assert problem.message == "cannot override parameter 'width': the spec declares no parameter 'width'"
    assert problem.hint == ("'width' is a parameter of block 'lin', given by each call's `with:`; to set it from "
                            "outside, declare it in the spec's `params:` and pass it on: `with: {width: \"${width}\"}`")


def test_a_block_library_input_listed_twice_is_refused_in_the_library(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").write_text(textwrap.dedent("""\
        resgraph: 1
        blocks:
          pair:
            inputs: [a, b, a]
            layers:
              - fc: {op: Linear, out_features: 8, input: a}
        """))
    (tmp_path / "net.yaml").write_text(textwrap.dedent("""\
        resgraph: 1
        name: P
        imports: [lib.yaml]
        inputs:
          x: [8]
        layers:
          - h: {op: Linear, out_features: 4}
          - p: {block: pair, input: [x, h, x]}
        """))
    with pytest.raises(SpecError) as caught:
        resgraph.check(tmp_path / "net.yaml")
    (problem,) = caught.value.diagnostics
    assert str(problem.location) == f"{tmp_path / 'lib.yaml'}:4:20"
    assert problem.message == "block 'pair': inputs: 'a' is listed twice; each input of a block needs its own name"


@pytest.mark.parametrize(("entry", "column", "key", "meant"), [
    ("- b: {blok: unit}", 9, "blok", "block"),
    ("- b: {blocks: unit, with: {c: 3}}", 9, "blocks", "block"),
    ("- b: {Op: ReLU}", 9, "Op", "op"),
])
def test_a_misspelt_op_or_block_key_is_named_at_the_key(entry: str, column: int, key: str, meant: str) -> None:
    errors = _errors(f"""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          unit:
            params: {{c: 8}}
            layers:
              - fc: {{op: Linear, out_features: "${{c}}"}}
        layers:
          {entry}
        """)
    assert errors == [f"<string>:11:{column}: error: layer 'b': unknown key {key!r}; did you mean {meant!r}? "
                      "(a layer needs `op:`, a block instance `block:`)"]


def test_an_instance_whose_when_leaves_no_layer_is_named() -> None:
    errors = _errors("""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          unit:
            layers:
              - fc: {op: Linear, out_features: 8, when: "${index != 1}"}
        layers:
          - a: {block: unit, repeat: 3}
        """)
    assert errors == ["<string>:7:5: error: block 'unit': no layer is left (every `when:` is false), so there is no "
                      "output (in 'a.1')"]


@pytest.mark.parametrize("item", ["[a]", "{a: 1}"])
def test_a_block_input_that_is_no_name_is_the_schemas_error_not_a_crash(item: str) -> None:
    # the duplicate-input check ran on the raw data and put each item in a set: a list or mapping raised TypeError
    errors = _errors(f"""\
        resgraph: 1
        name: P
        inputs:
          x: [8]
        blocks:
          pair:
            inputs: [{item}, a]
            layers:
              - fc: {{op: Linear, out_features: 8}}
        layers:
          - h: {{op: Linear, out_features: 4}}
        """)
    assert errors and all(":7:" in error for error in errors)
    with pytest.raises(SpecError):
        check_library(textwrap.dedent(f"""\
            resgraph: 1
            blocks:
              pair:
                inputs: [{item}]
                layers:
                  - fc: {{op: Linear, out_features: 8}}
            """))
