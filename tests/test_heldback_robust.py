"""Held-back cases of the robustness and security issues (#7, #14): hostile YAML, hostile `--set`
and `--input` values, expressions, generated files and user files. Each is answered with a result
or a located resgraph error naming what is wrong and how to fix it, never a traceback."""

from __future__ import annotations

import pathlib

import pytest

import resgraph
from conftest import run_cli, spec_errors
from resgraph.suggest import MAX_COMPARED, closest, suggestion_budget

SPEC = "resgraph: 1\nname: M\ninputs:\n  x: [4]\nlayers:\n  - fc: {op: Linear, out_features: 8}   # note\n"


# --- characters YAML never allows -----------------------------------------------------------------

@pytest.mark.parametrize(("text", "where", "code", "hint"), [
    # each was `<string>:1:1: error: YAML error: unacceptable character #x001b: ... position 87`
    (SPEC.replace("# note", "# \x1b[2Jnote"), "6:43", "U+001B (a control character)", '("\\x1b")'),
    (SPEC.replace("name: M", "name: 'M\x7f'"), "2:9", "U+007F (a control character)", '("\\x7f")'),
    (SPEC.replace("# note", "# é\x90"), "6:44", "U+0090 (a control character)", '("\\x90")'),  # after a 2-byte one
    (SPEC.replace("# note", "# \ufffe"), "6:43", "U+FFFE (a noncharacter)", "remove it"),
    (SPEC.replace("8}", "[" * 10 + "\x00" + "]" * 10 + "}"), "6:46", "U+0000 (a control character)", '("\\x00")'),
    # (nested past what libyaml is given: PyYAML's own reader, which counts characters, not bytes)
    (SPEC.replace("8}", "[" * 70 + "\x01" + "]" * 70 + "}"), "6:106", "U+0001 (a control character)", '("\\x01")'),
])
def test_a_character_yaml_refuses_is_an_error_where_it_is(text: str, where: str, code: str, hint: str) -> None:
    (message,) = spec_errors(text)
    assert message.startswith(f"<string>:{where}: error: the character {code} is not allowed in YAML"), message
    assert hint in message and "position" not in message


def test_a_control_character_in_a_spec_file_or_library_is_located_by_the_cli(tmp_path: pathlib.Path) -> None:
    (tmp_path / "lib.yaml").write_bytes(b"resgraph: 1\nblocks:\n  b:\n    layers:\n      - r: {op: ReLU}  # \x1b\n")
    (tmp_path / "s.yaml").write_text(SPEC.replace("name: M", "name: M\nimports: [lib.yaml]"))
    (tmp_path / "crlf.yaml").write_bytes(SPEC.replace("# note", "# \x1b").replace("\n", "\r\n").encode())
    for spec, where in [("s.yaml", "lib.yaml:5:26"), ("crlf.yaml", "crlf.yaml:6:43")]:
        result = run_cli("validate", spec, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"{where}: error: the character U+001B (a control character)"), result.stderr


def test_a_control_character_in_a_set_value_names_it() -> None:
    result = run_cli("validate", "examples/tutorial.yaml", "--set", "a=x\x7fy",
                     cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a YAML value (the character U+007F (a control character) is not allowed" in result.stderr
    assert "unicode string" not in result.stderr


# --- the error path is bounded too ---------------------------------------------------------------

@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many candidates every "did you mean" hands to difflib, counted (the work the budget bounds)."""
    import difflib

    count = [0]
    close_matches = difflib.get_close_matches

    def counting(word: str, possibilities: list[str], *args: object, **kwargs: object) -> list[str]:
        count[0] += len(possibilities)
        return close_matches(word, possibilities, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    return count


def test_thousands_of_misspelt_names_are_all_reported_in_bounded_work(compared: list[int]) -> None:
    # 1,500 layers each reading a misspelt one of 1,500 parameters: every "did you mean" compared the
    # name with every parameter (difflib, up to 20 us a pair): 40 s here, 73 s at 2,000, minutes at 8,000
    n = 1_500
    params = "".join(f"  width_{i}: 8\n" for i in range(n))
    layers = "".join(f"  - fc{i}: {{op: Linear, out_features: '${{widht_{i}}}', input: x}}\n" for i in range(n))
    errors = spec_errors(f"resgraph: 1\nname: M\nparams:\n{params}inputs:\n  x: [4]\nlayers:\n{layers}")
    # the budget, and at most the one word's two passes that spend its last (every name in scope, twice)
    assert 0 < compared[0] <= MAX_COMPARED + 2 * (2 * n + 100)
    assert len(errors) == n  # every mistake is still reported, at its line
    assert errors[0].startswith(f"<string>:{n + 7}:40: error: in ${{widht_0}}: unknown name 'widht_0'; "
                                "did you mean 'width_0'?")
    assert errors[-1].endswith(f"unknown name 'widht_{n - 1}'")  # past the bound: no suggestion


def test_a_spent_suggestion_budget_reads_no_more_candidates() -> None:
    def candidates(count: int):  # type: ignore[no-untyped-def]
        for i in range(count):
            yield f"name_{i}"

    def unread():  # type: ignore[no-untyped-def]
        raise AssertionError("read after the budget was spent")
        yield

    assert closest("nmae_3", candidates(10)) == "name_3"  # outside a check: no bound
    with suggestion_budget():
        assert closest("nmae_3", candidates(MAX_COMPARED // 2)) == "name_3"  # (compared twice: spends it)
        assert closest("nmae_3", unread()) is None
        with suggestion_budget():  # an inner check keeps the outer bound
            assert closest("nmae_3", unread()) is None
    assert closest("nmae_3", candidates(10)) == "name_3"


# --- parameter names an expression cannot read --------------------------------------------------

@pytest.mark.parametrize(("params", "layers", "expected"), [
    # was only `in ${if}: invalid expression: invalid syntax` where it was read
    ("params:\n  if: 8\n", "  - fc: {op: Linear, out_features: '${if}'}\n",
     "<string>:4:3: error: parameter 'if' is a Python keyword, which no expression can read (`${if}` does not parse)\n"
     "  hint: rename the parameter (e.g. if_value)"),
    # was `out_features: expected an integer, got null`: `${None}` is the constant, never the parameter
    ("params:\n  None: 8\n", "  - fc: {op: Linear, out_features: '${None}'}\n",
     "<string>:4:3: error: parameter 'None' is a Python keyword, which no expression can read (`${None}` is the "
     "constant None)\n  hint: rename the parameter (e.g. none_value)"),
    # was accepted, and any call giving it a value gave a value nothing could read
    ("blocks:\n  b:\n    params: {lambda: 3}\n    layers:\n      - r: {op: Linear, out_features: 8}\n",
     "  - c: {block: b, with: {lambda: 4}}\n",
     "<string>:5:14: error: block 'b': parameter 'lambda' is a Python keyword, which no expression can read "
     "(`${lambda}` does not parse)\n  hint: rename the parameter (e.g. lambda_value)"),
])
def test_a_parameter_named_a_python_keyword_is_an_error_at_its_key(params: str, layers: str, expected: str) -> None:
    errors = spec_errors(f"resgraph: 1\nname: M\n{params}inputs:\n  x: [4]\nlayers:\n{layers}")
    assert errors[0] == expected


def test_parameters_named_like_soft_keywords_and_functions_are_read() -> None:
    graph = resgraph.check("resgraph: 1\nname: M\nparams: {match: 6, type: 2, max: 3}\ninputs:\n  x: [4]\nlayers:\n"
                           "  - fc: {op: Linear, out_features: '${match + type + max(max, 1)}'}\n")
    assert graph.nodes["fc"].meta["args"]["out_features"] == 11


# --- expressions that are not one expression -----------------------------------------------------

HEAD = "resgraph: 1\nname: M\nparams: {a: 8, b: true}\ninputs:\n  x: [4]\n"


@pytest.mark.parametrize(("layers", "expected"), [
    # each was "a name cannot be an expression ...: the graph's nodes, edges and blocks are fixed", of a
    # number, a boolean or a repeat, which are no names and may be expressions
    ("layers:\n  - fc:\n      op: Linear\n      out_features: |\n        ${a if b\n          else 4}\n",
     "<string>:10:17: error: layer 'fc' (Linear): out_features: an expression is written on one line; "
     "'${a if b\\n  else 4}\\n' holds a line break"),
    ('layers:\n  - fc: {op: Linear, out_features: 8, when: "${b and\\n b}"}\n',
     "<string>:7:53: error: layer 'fc' (Linear): when: an expression is written on one line; '${b and\\n b}' "
     "holds a line break"),
    ('blocks:\n  bb:\n    layers:\n      - r: {op: ReLU}\nlayers:\n  - c: {block: bb, repeat: "${1 +\\n 1}"}\n',
     "<string>:11:34: error: layer 'c': repeat: an expression is written on one line; '${1 +\\n 1}' holds a line "
     "break"),
    ('layers:\n  - fc: {op: Linear, out_features: "${a} "}\n',
     "<string>:7:41: error: layer 'fc' (Linear): out_features: '${a} ' has spaces after its expression; an "
     "expression is the whole value, `${...}`\n  hint: delete the spaces after its closing `}`"),
])
def test_a_value_that_is_not_one_expression_says_why(layers: str, expected: str) -> None:
    (message,) = spec_errors(HEAD + layers)
    assert message.startswith(expected), message
    assert "a name cannot be an expression" not in message


def test_a_folded_expression_is_read_and_a_name_still_cannot_be_one() -> None:
    graph = resgraph.check(HEAD + "layers:\n  - fc:\n      op: Linear\n      out_features: >-\n        ${a if b\n"
                                  "        else 4}\n")
    assert graph.nodes["fc"].meta["args"]["out_features"] == 8
    (message,) = spec_errors(HEAD + 'layers:\n  - fc: {op: Linear, out_features: 8, input: "${a}"}\n')
    assert "input: a name cannot be an expression ('${a}')" in message


def test_a_parameter_written_over_lines_says_so() -> None:
    (message,) = spec_errors("resgraph: 1\nname: M\nparams:\n  a: 8\n  c: |\n    ${a *\n      2}\ninputs:\n"
                             "  x: [4]\nlayers:\n  - fc: {op: Linear, out_features: '${c}'}\n")
    assert message.startswith("<string>:6:10:")  # (the line break Python refuses, not the `|` above it)
    assert message.endswith("error: in ${a *\\n  2}: invalid expression: invalid syntax; an expression is written "
                            "on one line, and this one holds a line break"), message


def test_an_empty_import_name_is_an_error_at_it() -> None:
    # was "cannot import '': .: is a directory, not a spec file" (the importing file's folder)
    errors = spec_errors("resgraph: 1\nname: M\nimports: ['']\ninputs:\n  x: [4]\nlayers:\n"
                         "  - fc: {op: Linear, out_features: 8}\n")
    assert errors == ["<string>:3:12: error: cannot import '': the file name is empty\n"
                      "  hint: name a block library file, or remove the entry"]


# --- saved models ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "found"), [
    # was "the stored weights do not match the stored spec (While copying the parameter named
    # "fc.weight", whose dimensions in the model are torch.Size([8, 4]) and whose dimensions in the
    # checkpoint are torch.Size([8, 4]), an exception occurred ..." (two equal shapes)
    (lambda t: t.to("meta"), "fc.weight is on the meta device"),
    (lambda t: t.to_sparse(), "fc.weight is a torch.sparse_coo tensor"),
])
def test_a_stored_weight_without_dense_values_is_named(make, found: str, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    path = tmp_path / "m.pt"
    resgraph.save(resgraph.build(SPEC, seed=0), path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc.weight"] = make(payload["state_dict"]["fc.weight"])
    torch.save(payload, path)
    with pytest.raises(resgraph.UsageError) as caught:
        resgraph.load(path)
    assert str(caught.value) == (f"{path}: not a complete resgraph model file (its weights are not dense tensors "
                                 f"with values: {found})")


@pytest.mark.parametrize(("make", "found"), [
    # each was a raw NotImplementedError traceback from load_state_dict's copy
    (lambda t: t.to("meta"), "fc.weight is on the meta device"),
    (lambda t: t.to_sparse(), "fc.weight is a torch.sparse_coo tensor"),
])
def test_a_checkpoint_tensor_without_dense_values_is_named_by_load_weights(make, found: str,  # type: ignore[no-untyped-def]
                                                                          tmp_path: pathlib.Path) -> None:
    import torch

    model = resgraph.build(SPEC, seed=0)
    checkpoint = {key: value.detach().clone() for key, value in model.state_dict().items()}
    checkpoint["fc.weight"] = make(checkpoint["fc.weight"])
    torch.save(checkpoint, tmp_path / "ck.pt")
    for given in (tmp_path / "ck.pt", checkpoint):
        with pytest.raises(resgraph.UsageError) as caught:
            resgraph.load_weights(model, given)
        assert str(caught.value) == f"the checkpoint holds a tensor without dense values to load: {found}"


def test_misspelt_parameters_are_reported_in_bounded_work_by_load_spec_too(compared: list[int]) -> None:
    # `load_spec` validates alone, outside a check's bound: 1,500 parameters each reading a misspelt one
    # of 1,500 others compared every name with every other (about 9 million comparisons, 40 s)
    n = 1_500
    params = "".join(f"  width_{i}: 8\n" for i in range(n)) + "".join(f"  q{i}: '${{widht_{i}}}'\n" for i in range(n))
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.load_spec(f"resgraph: 1\nname: M\nparams:\n{params}inputs:\n  x: [4]\nlayers:\n"
                           "  - fc: {op: Linear, out_features: 8}\n")
    # the budget, and at most the one word's two passes that spend its last (every name in scope, twice)
    assert 0 < compared[0] <= MAX_COMPARED + 2 * (2 * n + 100)
    messages = [d.message for d in caught.value.diagnostics]
    assert len(messages) == n and messages[0].endswith("unknown name 'widht_0'; did you mean 'width_0'?")
