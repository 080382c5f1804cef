"""Held-back cases of the text review (YAML positions, names, expressions): the spec as they pin it.

- A key YAML reads as a number (`1:`, `007:`) is refused at the key with the name rule (test_loader);
  a quoted one that breaks the name rule (`params: {"3": 4}`) is said at the key, of its mapping.
- An error inside an expression is located at the character it names in the file, however the
  string is written: a `|` or `>` block (below its header, past its indentation), a plain or quoted
  scalar over several lines (folded), escapes (`\\"`, `\\x6e`, `''`), a tag or an anchor before it,
  a line break or non-ASCII text inside the expression. Where no position is known, the string's
  first line is given, and the message says the place inside it is not known.
- A tensor has at most 64 dims, the batch dim included (torch's own bound): an input or a layer
  output with more is refused where it is declared or made, in `validate` as in `build`.
"""

from __future__ import annotations

import pathlib

import pytest

import resgraph
from resgraph.errors import Diagnostic
from resgraph.evaluate import evaluate_tree
from resgraph.loader import Origin, SourceMap

HEADER = "resgraph: 1\nname: Net\ninputs: {x: [3, 8]}\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "name"), [('params: {"3": 4}', "3"), ("params: {ok: 1, '2x': 4}", "2x")])
def test_a_parameter_name_that_breaks_the_name_rule_is_said_at_its_key(params: str, name: str) -> None:
    for text, label in ((HEADER + params + "\nlayers:\n  - a: {op: ReLU}\n", "params"),
                        (HEADER + "blocks:\n  b:\n    " + params + "\n    layers:\n      - a: {op: ReLU}\n"
                         "layers:\n  - a: {op: ReLU}\n", "block 'b', params")):
        key = text.index(params) + params.index(name) - 1  # the key's opening quote
        line, column = text.count("\n", 0, key) + 1, key - text.rfind("\n", 0, key)
        assert messages(text) == [f"<string>:{line}:{column}: error: {label}: invalid name {name!r}: names start "
                                  "with an ASCII letter and hold only ASCII letters, digits and '_'"]


# --- rank ----------------------------------------------------------------------------------------

def _ones(count: int) -> str:
    return ", ".join(["1"] * count)


def test_the_rank_bound_is_torchs_own() -> None:
    """64 dims (the batch dim included) is where torch itself stops: a reduction refuses a 65th."""
    torch = pytest.importorskip("torch")
    assert torch.zeros([1] * 64).sum(dim=0).dim() == 63
    with pytest.raises(RuntimeError, match="up to 64 dims"):
        torch.zeros([1] * 65).sum(dim=0)


def test_an_input_of_64_dims_with_its_batch_builds_and_runs() -> None:
    torch = pytest.importorskip("torch")
    model = resgraph.build(f"resgraph: 1\nname: Net\ninputs: {{x: [{_ones(62)}, 3]}}\nlayers:\n"
                           "  - a: {op: ReLU}\n  - m: {op: mean, dim: 1}\n")
    assert model(torch.zeros([2, *[1] * 62, 3])).dim() == 63


@pytest.mark.parametrize("dims", [64, 65, 300, 5000])
def test_an_input_of_more_dims_than_a_tensor_has_is_refused_at_the_input(dims: int) -> None:
    text = f"resgraph: 1\nname: Net\ninputs:\n  x: [{_ones(dims)}]\nlayers:\n  - a: {{op: ReLU}}\n"
    assert messages(text) == [f"<string>:4:3: error: input 'x': the shape would have {dims + 1:,} dims with the batch "
                              "dim; a torch tensor has at most 64 (its reductions and others refuse more); declare "
                              "fewer dims"]


def test_a_layer_whose_output_has_more_dims_than_a_tensor_has_is_refused_there_once() -> None:
    """Said at the layer that adds the dims; the layers reading it are left out (they would repeat it)."""
    text = (HEADER + f"layers:\n  - a: {{op: ReLU}}\n  - r: {{op: reshape, shape: [{_ones(64)}, 24]}}\n"
            "  - m: {op: mean, dim: 1}\n")
    assert messages(text) == ["<string>:6:5: error: layer 'r' (reshape): its output would have 66 dims with the batch "
                              "dim; a torch tensor has at most 64 (its reductions and others refuse more); check the "
                              "arguments that add dims (a reshape's or unsqueeze's)"]


@pytest.mark.parametrize("command", ["validate", "build", "render"])
def test_the_cli_refuses_too_many_dims_without_a_traceback(command: str, tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "deep.yaml"
    spec.write_text(f"resgraph: 1\nname: Net\ninputs: {{x: [{_ones(300)}]}}\nlayers:\n  - a: {{op: ReLU}}\n")
    result = subprocess.run([sys.executable, "-m", "resgraph", command, str(spec), "-o", str(tmp_path / "out.svg")]
                            if command == "render" else [sys.executable, "-m", "resgraph", command, str(spec)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{spec}:3:10: error: input 'x': the shape would have 301 dims" in result.stderr


# --- where an expression's error is --------------------------------------------------------------

# The value of `out_features` as written after its key; `@` marks the character the error names
# (removed before the spec is read).
WRITTEN = {
    "plain": "${width +\n        @nope}",
    "plain, one line": "${width + @nope}",
    "single-quoted": "'${width +\n        @nope}'",
    "single-quoted, escaped quote": "'${width + len(''a'') + @nope}'",
    "double-quoted": '"${width +\n        @nope}"',
    "double-quoted, escapes": '"${width + len(\\"a\\") + @\\x6eope}"',
    "double-quoted, escaped line break": '"${width + \\\n        @nope}"',
    "double-quoted, escaped line break, escaped space": '"${width +\\\n        \\ @nope}"',
    "literal": "|-\n        ${width + @nope}",
    "literal, clip": "|\n        ${width + @nope}",
    "literal, indentation indicator": "|2-\n        ${width + @nope}",
    "literal, header comment": "|- # ${not this}\n        ${width + @nope}",
    "folded": ">-\n        ${width +\n        @nope}",
    "folded, trailing spaces": ">-\n        ${width +   \n        max(1,\n        @nope)}",
    "tagged": "!!str ${width + @nope}",
    "anchored": "&size \"${width\n    + @nope}\"",
    "non-ASCII before": "\"${len('éé') + @nope}\"",
}


def _marked(written: str) -> tuple[str, int, int]:
    """A spec whose one layer's `out_features` is `written`, and the line and column of its `@`."""
    text = HEADER + "params: {width: 4}\nlayers:\n  - fc:\n      op: Linear\n      out_features: " + written + "\n"
    at = text.index("@")
    return text.replace("@", "", 1), text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)


@pytest.mark.parametrize("style", WRITTEN)
def test_an_unknown_name_is_located_where_it_is_written(style: str) -> None:
    text, line, column = _marked(WRITTEN[style])
    (message,) = messages(text)
    assert message.startswith(f"<string>:{line}:{column}: error: in ${{") and "unknown name 'nope'" in message


@pytest.mark.parametrize("ending", ["\r\n", "\r"], ids=["CRLF", "CR"])
@pytest.mark.parametrize("style", WRITTEN)
def test_an_unknown_name_is_located_where_it_is_written_whatever_the_line_endings(style: str, ending: str) -> None:
    """YAML reads `\\r\\n` and `\\r` as line breaks; an escaped one (`\\` at a line's end) was not known."""
    text, line, column = _marked(WRITTEN[style])
    (message,) = messages(text.replace("\n", ending))
    assert message.startswith(f"<string>:{line}:{column}: error: in ${{") and "unknown name 'nope'" in message


@pytest.mark.parametrize(("body", "error"), [
    ("max(width,\n      @nope)", "unknown name 'nope'"),
    ("[1, 2,\n      @nope]", "unknown name 'nope'"),
    ("max(1,\n      @2 3)", "invalid expression"),  # (where Python's parser puts it: `2 3` lacks a comma)
    ("max(1,\n      'é' + @nope)", "unknown name 'nope'"),
    ("max(1,\n      @1 / 0)", "division by zero")])
def test_an_expression_over_lines_is_located_on_the_line_of_its_error(body: str, error: str) -> None:
    """A parameter's `|` block may hold an expression over lines (inside brackets, Python's rule)."""
    text = ("resgraph: 1\nname: Net\nparams:\n  width: 4\n  w: |-\n    ${" + body + "}\ninputs: {x: [3]}\n"
            "layers:\n  - fc: {op: Linear, out_features: \"${w}\"}\n")
    at = text.index("@")
    line, column = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
    found = messages(text.replace("@", "", 1))
    assert found[0].startswith(f"<string>:{line}:{column}: error: in ${{") and error in found[0]


def test_an_expression_in_a_block_body_is_located_in_each_instance() -> None:
    text = (HEADER + "blocks:\n  b:\n    params: {k: 1}\n    layers:\n      - fc:\n          op: Linear\n"
            "          out_features: >-\n            ${k *\n            nope}\nlayers:\n  - c: {block: b}\n")
    assert messages(text)[0].startswith("<string>:12:13: error: in ${k * nope}: unknown name 'nope'")


@pytest.mark.parametrize(("written", "problem"), [
    ("|\n        ${width +@\n        3}", "holds a line break"),
    (">\n        ${width +@\n          3}", "holds a line break"),
    ('"${width}@ x"', "has text after its expression"),
    ("\"${len('}')}@ x\"", "has text after its expression"),  # (not at the brace in the string)
    ("|-\n        @${width + 3", "is never closed"),
])
def test_a_malformed_expression_is_located_where_it_goes_wrong(written: str, problem: str) -> None:
    """At the line break (not the `|` above it), past the `}`, or at the `${` never closed."""
    text, line, column = _marked(written)
    (message,) = messages(text)
    assert message.startswith(f"<string>:{line}:{column}: error: layer 'fc' (Linear): out_features: ")
    assert problem in message


def test_where_the_place_inside_a_string_is_not_known_its_first_line_is_given_and_said() -> None:
    source = SourceMap("s.yaml", values={("a",): (3, 5)}, texts={("a",): None})
    diagnostics: list[Diagnostic] = []
    evaluate_tree({"a": "${1 + nope}"}, {}, Origin(source, ()), diagnostics)
    (diagnostic,) = diagnostics
    assert str(diagnostic.location) == "s.yaml:3:5"
    assert diagnostic.message == ("in ${1 + nope}: unknown name 'nope'; did you mean 'None'? (somewhere in the "
                                  "string that starts here: its place in it is not known)")
