"""Blocks, parameters, repeats, scaling, imports and expressions: the spec language's reuse."""

from __future__ import annotations

import pathlib
import textwrap

import pytest
import torch
from torch import nn

import resgraph
from resgraph.cli import main

UNIT = """
resgraph: 1
name: Net
params:
  width: 8
blocks:
  unit:
    params: {planes: required, stride: 1}
    layers:
      - conv: {op: Conv2d, out_channels: "${planes}", kernel_size: 3, stride: "${stride}", padding: 1}
      - act:  {op: ReLU}
    skips:
      - shortcut: {from: x, to: conv}
inputs:
  x: [3, 16, 16]
"""


def spec(layers: str, head: str = UNIT) -> str:
    return textwrap.dedent(head) + "layers:\n" + textwrap.dedent(layers)


def test_defaults_apply_and_required_params_must_be_given() -> None:
    model = resgraph.build(spec("  - stage: {block: unit, with: {planes: 4}}\n"))
    assert model.stage.conv.stride == (1, 1) and model.stage.conv.out_channels == 4
    with pytest.raises(resgraph.SpecError, match="block 'unit' needs 'planes'"):
        resgraph.check(spec("  - stage: {block: unit}\n"))


def test_a_block_without_repeat_is_one_module_and_with_repeat_a_sequential() -> None:
    model = resgraph.build(spec("  - a: {block: unit, with: {planes: 4}}\n"
                                "  - b: {block: unit, repeat: 3, with: {planes: 4}}\n"))
    assert not isinstance(model.a, nn.Sequential) and type(model.a).__name__ == "Unit"
    assert isinstance(model.b, nn.Sequential) and len(model.b) == 3
    keys = list(model.state_dict())
    assert "a.conv.weight" in keys and "b.2.conv.weight" in keys
    assert "a.shortcut.0.weight" in keys  # 3 -> 4 channels: projected, named after the skip
    assert "b.0.shortcut.0.weight" not in keys  # 4 -> 4: identity
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4, 16, 16)


def test_repeats_vary_by_instance_index() -> None:
    model = resgraph.build(spec("  - stage: {block: unit, repeat: 3, with: {planes: \"${8 * (index + 1)}\", "
                                "stride: \"${2 if index == 0 else 1}\"}}\n"))
    assert [m.conv.out_channels for m in model.stage] == [8, 16, 24]
    assert [m.conv.stride for m in model.stage] == [(2, 2), (1, 1), (1, 1)]
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 24, 8, 8)


def test_block_index_counts_instances_across_the_network() -> None:
    head = UNIT.replace("params: {planes: required, stride: 1}", "params: {planes: required, stride: 1, rate: 0.0}")
    head = head.replace("      - act:  {op: ReLU}", "      - act:  {op: Dropout, p: \"${rate}\"}")
    rate = "\"${0.3 * block_index / (num_blocks - 1)}\""
    model = resgraph.build(spec(f"  - s1: {{block: unit, repeat: 2, with: {{planes: 4, rate: {rate}}}}}\n"
                                f"  - s2: {{block: unit, repeat: 2, with: {{planes: 4, rate: {rate}}}}}\n", head))
    rates = [m.act.p for m in [*model.s1, *model.s2]]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_blocks_nest_and_inner_names_follow_the_hierarchy() -> None:
    head = UNIT + textwrap.indent(textwrap.dedent("""
        pair:
          params: {planes: required}
          layers:
            - first: {block: unit, with: {planes: "${planes}"}}
            - second: {block: unit, repeat: 2, with: {planes: "${planes * 2}"}}
        """), "  ").replace("\n  pair:", "\n  pair:", 1)
    head = head.replace("inputs:\n  x: [3, 16, 16]\n", "") + "inputs:\n  x: [3, 16, 16]\n"
    model = resgraph.build(spec("  - body: {block: pair, with: {planes: 4}}\n", head))
    keys = list(model.state_dict())
    assert "body.first.conv.weight" in keys and "body.second.1.conv.weight" in keys
    assert model.body.second[1].conv.out_channels == 8
    assert "self.first(x)" in type(model.body).code


def test_params_are_overridable_from_python_and_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    text = spec("  - stage: {block: unit, with: {planes: \"${width}\"}}\n")
    assert resgraph.build(text).stage.conv.out_channels == 8
    assert resgraph.build(text, params={"width": 12}).stage.conv.out_channels == 12
    assert resgraph.load_spec(text, params={"width": 12}).params == {"width": 12}
    with pytest.raises(resgraph.SpecError, match="no parameter 'widht'; did you mean 'width'"):
        resgraph.build(text, params={"widht": 12})
    assert main(["build", "examples/resnet18.yaml", "--set", "num_classes=10", "--json"]) == 0
    assert '"total_params": 11181642' in capsys.readouterr().out


def test_width_and_depth_multipliers_rederive_projections() -> None:
    text = spec("  - stem: {op: Conv2d, out_channels: 16, kernel_size: 1}\n"
                "  - stage: {block: unit, repeat: 2, with: {planes: 16}}\n"
                "  - head: {op: Conv2d, out_channels: 5, kernel_size: 1, scale: false}\n")

    def with_scale(text: str, scale: str) -> str:
        return text.replace("params:\n  width: 8\n", f"params:\n  width: 8\nscale: {scale}\n")

    plain = resgraph.build(text)
    assert not hasattr(plain.stage[0], "shortcut")  # 16 -> 16 channels: identity
    scaled = resgraph.build(with_scale(text, "{width: 0.5, depth: 2}"))
    assert scaled.stem.out_channels == 8 and scaled.stage[0].conv.out_channels == 8  # make_divisible(16 * 0.5, 8)
    assert len(scaled.stage) == 4 and scaled.head.out_channels == 5  # depth doubled; the head opted out
    widened = resgraph.build(with_scale(text, "{width: 2}"))
    assert widened.stage[0].conv.out_channels == 32
    assert not hasattr(widened.stage[0], "shortcut")  # stem widened too: 32 -> 32, still identity
    stem_kept = text.replace("out_channels: 16, kernel_size: 1}", "out_channels: 16, kernel_size: 1, scale: false}")
    mixed = resgraph.build(with_scale(stem_kept, "{width: 2}"))
    assert mixed.stage[0].shortcut[0].weight.shape == (32, 16, 1, 1)  # stem kept 16: projection re-derived


def test_blocks_import_from_another_file_relative_to_the_importer(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.yaml").write_text(textwrap.dedent("""
        resgraph: 1
        imports: [more.yaml]
        blocks:
          double:
            layers:
              - a: {block: twice}
              - b: {block: twice}
        """))
    (tmp_path / "lib" / "more.yaml").write_text(textwrap.dedent("""
        resgraph: 1
        blocks:
          twice:
            layers:
              - scale: {op: Linear, out_features: 4, bias: false}
        """))
    (tmp_path / "net.yaml").write_text(textwrap.dedent("""
        resgraph: 1
        name: Imported
        imports: [lib/blocks.yaml]
        inputs:
          x: [4]
        layers:
          - body: {block: double}
        """))
    model = resgraph.build(tmp_path / "net.yaml")
    assert list(model.state_dict()) == ["body.a.scale.weight", "body.b.scale.weight"]


def test_import_problems_are_located(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.yaml").write_text("resgraph: 1\nimports: [b.yaml]\nblocks:\n  x1:\n    layers:\n"
                                     "      - r: {op: ReLU}\n")
    (tmp_path / "b.yaml").write_text("resgraph: 1\nimports: [a.yaml]\nblocks:\n  x2:\n    layers:\n"
                                     "      - r: {op: ReLU, inplace: perhaps}\n")
    (tmp_path / "net.yaml").write_text("resgraph: 1\nname: N\nimports: [a.yaml]\ninputs:\n  x: [4]\nlayers:\n"
                                       "  - r: {op: ReLU}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(tmp_path / "net.yaml")
    (message,) = [d.format() for d in caught.value.diagnostics]
    assert message.endswith("b.yaml:6:32: error: block 'x2', layer 'r' (ReLU): inplace: expected true or false, "
                            "got string 'perhaps'")
    (tmp_path / "b.yaml").write_text("resgraph: 1\nimports: [a.yaml]\nblocks:\n  x2:\n    layers:\n"
                                     "      - r: {op: ReLU}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(tmp_path / "net.yaml")
    (message,) = [d.format() for d in caught.value.diagnostics]
    assert "b.yaml:2:11: error: import cycle:" in message and message.endswith("a.yaml")


def test_a_spec_given_as_data_builds_where_the_current_directory_was_removed(tmp_path: pathlib.Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Its relative imports are read relative to the current directory: there is none to read them
    # from, which is said at the import; a spec without imports never asks for it.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    body = {"resgraph": 1, "name": "N", "inputs": {"x": [4]}, "layers": [{"fc": {"op": "Linear", "out_features": 2}}]}
    assert resgraph.build(body)(torch.zeros(1, 4)).shape == (1, 2)
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check({**body, "imports": ["blocks/resnet.yaml"]})
    (problem,) = caught.value.diagnostics
    assert problem.message == "cannot import 'blocks/resnet.yaml': blocks/resnet.yaml: no such file"
    assert "import it as `resgraph:blocks/resnet.yaml`" in problem.hint and "(which was removed)" in problem.hint


def test_a_library_two_libraries_import_is_read_once_and_its_blocks_defined_once(tmp_path: pathlib.Path) -> None:
    (tmp_path / "common.yaml").write_text("resgraph: 1\nblocks:\n  unit:\n    layers:\n"
                                          "      - fc: {op: Linear, out_features: 4}\n")
    for side in ("left", "right"):
        (tmp_path / f"{side}.yaml").write_text(f"resgraph: 1\nimports: [common.yaml]\nblocks:\n  {side}:\n"
                                               "    layers:\n      - u: {block: unit}\n")
    (tmp_path / "net.yaml").write_text("resgraph: 1\nname: N\nimports: [left.yaml, right.yaml, common.yaml]\n"
                                       "inputs:\n  x: [4]\nlayers:\n  - a: {block: left}\n  - b: {block: right}\n")
    model = resgraph.build(tmp_path / "net.yaml")
    assert list(model.state_dict()) == ["a.u.fc.weight", "a.u.fc.bias", "b.u.fc.weight", "b.u.fc.bias"]
    assert [path for path, _ in model.build_record.imports] == [str(tmp_path / name) for name in
                                                                 ("common.yaml", "left.yaml", "right.yaml")]
    # Two different files defining one name are still an error, at the second definition.
    (tmp_path / "right.yaml").write_text("resgraph: 1\nblocks:\n  unit:\n    layers:\n      - r: {op: ReLU}\n"
                                         "  right:\n    layers:\n      - u: {block: unit}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(tmp_path / "net.yaml")
    (message,) = [d.format() for d in caught.value.diagnostics]
    assert message.startswith(f"{tmp_path / 'right.yaml'}:3:3: error: block 'unit' is defined twice (first at "
                              f"{tmp_path / 'common.yaml'}:3:3)")


def test_a_library_checked_alone_reports_its_imports_ops_and_block_calls(tmp_path: pathlib.Path) -> None:
    from resgraph.api import check_library

    (tmp_path / "base.yaml").write_text("resgraph: 1\nblocks:\n  unit:\n    layers:\n      - r: {op: ReLU}\n")
    library = tmp_path / "lib.yaml"
    library.write_text("resgraph: 1\nimports: [base.yaml, missing.yaml]\nblocks:\n  b:\n    params: {kind: unit}\n"
                       "    layers:\n      - fc: {op: Linaer, out_features: 4}\n      - u: {block: unit}\n"
                       "      - v: {block: unti}\n      - x: {op: '${kind}'}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        check_library(library)
    assert [d.format().replace(str(tmp_path) + "/", "") for d in caught.value.diagnostics] == [
        "lib.yaml:2:22: error: cannot import 'missing.yaml': missing.yaml: no such file",
        "lib.yaml:7:18: error: block 'b', layer 'fc': unknown op 'Linaer': not a resgraph op or a torch.nn layer "
        "class; did you mean 'Linear'?",
        "lib.yaml:9:20: error: block 'b', layer 'v': unknown block 'unti'; did you mean 'unit'?",
    ]
    library.write_text("resgraph: 1\nimports: [base.yaml]\nblocks:\n  b:\n    layers:\n      - u: {block: unit}\n"
                       "      - own: {block: c}\n  c:\n    layers:\n      - fc: {op: Linear, out_features: 4}\n")
    assert sorted(check_library(library).blocks) == ["b", "c"]  # imported and own blocks are known


# A mistake in a block's body: its text, the line the error is at, its column, and the error (`{call}`: the
# first instance's name).
BROKEN_BODIES = {
    "an unknown node": ("      - fc: {op: Linear, out_features: 3, input: nowhere}\n", "- fc:", 50,
                        "layer '{call}.fc': unknown node 'nowhere'"),
    "a skip from an unknown node": ("      - fc: {op: Linear, out_features: 3}\n    skips:\n"
                                    "      - s: {from: nowhere, to: fc}\n", "- s:", 19,
                                    "skip '{call}.s': from: unknown node 'nowhere'"),
    "a shape its input cannot take": ("      - fc: {op: Conv2d, out_channels: 3, kernel_size: 3}\n", "- fc:", 9,
                                      "layer '{call}.fc' (Conv2d): expects (C, H, W) per sample, got (4,)"),
}
CALLS = {  # the calls, and how the error names the first instance
    "two calls": ("  - a: {block: b, input: x}\n  - c: {block: b, input: x}\n", "a"),
    "two calls inside two calls": ("  - a: {block: o, input: x}\n  - c: {block: o, input: x}\n", "a.i1"),
}
OUTER = "  o:\n    layers:\n      - i1: {block: b}\n      - i2: {block: b}\n"


@pytest.mark.parametrize("calls", CALLS)
@pytest.mark.parametrize("body", BROKEN_BODIES)
@pytest.mark.parametrize("imported", [True, False], ids=["library", "own block"])
def test_a_mistake_in_a_block_body_is_reported_once_however_many_calls_reach_it(
        body: str, calls: str, imported: bool, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each call of the block reported it again, naming its own instance ('a.fc', then 'c.fc': the same line, the
    same mistake), where a misspelt op in the body was already reported once."""
    layers, marker, column, message = BROKEN_BODIES[body]
    written, call = CALLS[calls]
    block = "  b:\n    layers:\n" + layers
    (tmp_path / "lib.yaml").write_text("resgraph: 1\nblocks:\n" + block)
    spec = tmp_path / "spec.yaml"
    spec.write_text("resgraph: 1\nname: M\n" + ("imports: [lib.yaml]\nblocks:\n" if imported else "blocks:\n" + block)
                    + OUTER + "inputs: {x: [4]}\nlayers:\n" + written)
    where = tmp_path / ("lib.yaml" if imported else "spec.yaml")
    line = next(number for number, text in enumerate(where.read_text().splitlines(), 1) if marker in text)
    assert main(["validate", str(spec)]) == 1
    assert capsys.readouterr().err == f"{where}:{line}:{column}: error: {message.format(call=call)}\n"


LIBRARY = """
resgraph: 1
blocks:
  unit:
    layers:
      - fc: {op: Linear, out_features: WIDTH}
"""
USER = "resgraph: 1\nname: N\nimports: [lib.yaml]\ninputs:\n  x: [4]\nlayers:\n  - stage: {block: unit}\n"


def test_a_library_is_read_at_every_import_and_parsed_once_per_distinct_text(tmp_path: pathlib.Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    composed: list[str] = []
    compose = yaml.compose
    monkeypatch.setattr(yaml, "compose", lambda text, Loader: composed.append(text) or compose(text, Loader=Loader))
    library = tmp_path / "lib.yaml"
    library.write_text(LIBRARY.replace("WIDTH", "3"))
    (tmp_path / "net.yaml").write_text(USER)
    widths = [resgraph.build(tmp_path / "net.yaml").stage.fc.out_features for _ in range(3)]
    library.write_text(LIBRARY.replace("WIDTH", "5"))  # an edit is seen at the next build
    widths.append(resgraph.build(tmp_path / "net.yaml").stage.fc.out_features)
    assert widths == [3, 3, 3, 5]
    libraries = [text for text in composed if text.startswith("\nresgraph: 1\nblocks:")]
    assert len(libraries) == 2 and composed.count(USER) == 4  # the spec itself is parsed at every build
    # The record keeps the text each build read.
    assert resgraph.build(tmp_path / "net.yaml").build_record.imports[0][1] == LIBRARY.replace("WIDTH", "5")


def test_a_library_error_is_reported_at_every_build_and_each_copy_of_a_text_names_its_own_file(
        tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "lib.yaml").write_text(LIBRARY.replace("WIDTH", "wide"))
        (tmp_path / folder / "net.yaml").write_text(USER)
    messages = []
    for folder in ("a", "a", "b"):
        with pytest.raises(resgraph.SpecError) as caught:
            resgraph.check(tmp_path / folder / "net.yaml")
        (diagnostic,) = caught.value.diagnostics
        messages.append(diagnostic.format())
    assert messages[0] == messages[1] == (f"{tmp_path / 'a' / 'lib.yaml'}:6:40: error: block 'unit', layer 'fc' "
                                          "(Linear): out_features: expected an integer >= 1, got string 'wide'")
    assert messages[2] == messages[0].replace(str(tmp_path / "a"), str(tmp_path / "b"))


def test_what_reading_a_library_returns_is_the_callers_own(tmp_path: pathlib.Path) -> None:
    from resgraph.resources import read_import

    library = tmp_path / "lib.yaml"
    library.write_text(LIBRARY.replace("WIDTH", "3"))
    (tmp_path / "net.yaml").write_text(USER)
    read = read_import(str(library))
    read.data["blocks"]["unit"]["layers"][0] = {"changed": {"op": "ReLU"}}
    read.source.values.clear()
    again = read_import(str(library))
    assert again.data["blocks"]["unit"]["layers"] == [{"fc": {"op": "Linear", "out_features": 3}}]
    assert again.source.locate(("blocks", "unit", "layers", 0, "fc", "out_features")).line == 6
    model = resgraph.build(tmp_path / "net.yaml")
    assert [name for name, _ in model.named_children()] == ["stage"] and model.stage.fc.out_features == 3


def test_a_library_syntax_error_is_reported_at_every_build(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").write_text(LIBRARY.replace("WIDTH", "[3"))
    (tmp_path / "net.yaml").write_text(USER)
    messages = []
    for _ in range(2):
        with pytest.raises(resgraph.SpecError) as caught:
            resgraph.check(tmp_path / "net.yaml")
        messages.append([d.format() for d in caught.value.diagnostics])
    assert messages[0] == messages[1] and len(messages[0]) == 1
    assert messages[0][0].startswith(f"{tmp_path / 'lib.yaml'}:") and "YAML syntax error" in messages[0][0]


def test_a_block_defined_twice_is_an_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").write_text("resgraph: 1\nblocks:\n  unit:\n    layers:\n      - r: {op: ReLU}\n")
    text = spec("  - stage: {block: unit, with: {planes: 4}}\n").replace("resgraph: 1\n", "resgraph: 1\n"
                                                                          "imports: [lib.yaml]\n", 1)
    (tmp_path / "net.yaml").write_text(text)
    with pytest.raises(resgraph.SpecError, match="block 'unit' is defined twice"):
        resgraph.check(tmp_path / "net.yaml")


def test_expression_errors_point_into_the_expression() -> None:
    text = spec("  - stage: {block: unit, with: {planes: \"${width * wdith}\"}}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    line = text.splitlines()[diagnostic.location.line - 1]
    assert line[diagnostic.location.column - 1:].startswith("wdith")
    assert diagnostic.message == "in ${width * wdith}: unknown name 'wdith'; did you mean 'width'? (in 'stage')"


@pytest.mark.parametrize(("expression", "message"), [
    ("open('x')", "unknown function 'open'"),
    ("().__class__", "attribute access is not allowed"),
    ("[c for c in 'ab']", "a comprehension is not allowed"),
    ("'x' * 1000000000", "only numbers can be multiplied"),
    ("9 ** 99", "exponent is too large"),
    ("lambda: 0", "lambda is not allowed"),
    ("1 / 0", "cannot compute: division by zero"),
])
def test_expressions_cannot_run_code_or_exhaust_memory(expression: str, message: str) -> None:
    text = spec(f"  - stage: {{block: unit, with: {{planes: \"${{{expression}}}\"}}}}\n")
    with pytest.raises(resgraph.SpecError, match=message.replace("(", r"\(")):
        resgraph.check(text)


def test_an_expression_is_a_whole_string_from_dollar_brace_to_the_last_brace() -> None:
    # What the regex below matches: the body between `${` and a final `}`, which a
    # newline may follow (a YAML block scalar ends with one); every other string is text.
    import itertools
    import re

    from resgraph.expressions import expression_body

    pattern = re.compile(r"^\$\{(.*)\}$", re.DOTALL)
    for length in range(7):
        for characters in itertools.product("${}\na", repeat=length):
            text = "".join(characters)
            match = pattern.match(text)
            assert expression_body(text) == (match.group(1) if match else None), repr(text)
    assert expression_body("${ w * 2 }\n") == " w * 2 " and expression_body("${a}\n\n") is None


def test_expressions_offer_arithmetic_conditionals_and_helpers() -> None:
    from resgraph.expressions import evaluate

    names = {"w": 1.4, "i": 2, "chans": [16, 24, 40]}
    assert evaluate("make_divisible(32 * w, 8)", names) == 48
    assert evaluate("max(1, round(3 * w))", names) == 4
    assert evaluate("chans[i] if i < len(chans) else 0", names) == 40
    assert evaluate("i == 2 and not w < 1", names) is True
    assert evaluate("ceil(i * w) // 2 + i % 2 - -1", names) == 2
