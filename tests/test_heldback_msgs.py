"""Messages: one diagnostic per mistake (through YAML aliases and merge keys), whitespace after an
expression said as whitespace (a `|+` block's blank lines), and a skip whose sizes grow along one dim
and shrink along another said as that, with fixes that work."""

from __future__ import annotations

import pytest

import resgraph
from conftest import spec_errors
from resgraph.errors import Diagnostic, Location, SpecError

HEAD = "resgraph: 1\nname: M\nparams: {width: 8, a: 8}\ninputs:\n  x: {shape: [3, 8, 8]}\n"


@pytest.mark.parametrize("second", ["*conv", "{<<: *conv, kernel_size: 3, padding: 1}", "{<<: [*conv]}"])
def test_an_error_in_an_aliased_node_is_reported_once(second: str) -> None:
    text = (HEAD + 'layers:\n  - a: &conv {op: Conv2d, out_channels: "${widht}", kernel_size: 1}\n'
            f"  - b: {second}\noutputs: [b]\n")
    (message,) = spec_errors(text)
    assert message.startswith("<string>:7:44: error: in ${widht}: unknown name 'widht'; did you mean 'width'?")
    assert not spec_errors_or_none(text.replace("widht", "width"))


def spec_errors_or_none(text: str) -> list[str]:
    try:
        resgraph.check(text)
    except SpecError as exc:
        return [d.format() for d in exc.diagnostics]
    return []


def test_identical_diagnostics_are_kept_once_and_distinct_ones_at_one_place_all() -> None:
    where = Location("m.yaml", 3, 4)
    one, same_place, other_hint = (Diagnostic(where, "bad"), Diagnostic(where, "worse"),
                                   Diagnostic(where, "bad", "fix it"))
    error = SpecError([one, same_place, one, other_hint, Diagnostic(Location("m.yaml", 1, 1), "first")])
    assert [(d.message, d.hint) for d in error.diagnostics] == [
        ("first", None), ("bad", None), ("worse", None), ("bad", "fix it")]
    assert str(error).count("error: bad") == 2


BLOCK = HEAD.replace("[3, 8, 8]", "[4]") + "layers:\n  - fc:\n      op: Linear\n      out_features: "


@pytest.mark.parametrize(("value", "expected", "fixed"), [  # (each said just past the `}`)
    ("|+\n        ${a}\n\n\n", "out_features: '${a}\\n\\n\\n\\n' ends in blank lines after its expression, which its "
     "block keeps (`|+`); an expression is the whole value, `${...}`\n  hint: write the block as `|-`, which drops "
     "its final line breaks", "|-\n        ${a}\n\n\n"),
    (">+\n        ${a}\n\n", "which its block keeps (`>+`)", ">-\n        ${a}\n\n"),
    ('"${a} "', "'${a} ' has spaces after its expression; an expression is the whole value, `${...}`\n"
     "  hint: delete the spaces after its closing `}`", '"${a}"'),
    ('"${a}\\n\\n"', "has line breaks after its expression", '"${a}"'),
    ("|+\n        ${a}  \n\n", "has spaces and line breaks after its expression; an expression is the whole value, "
     "`${...}`\n  hint: delete the spaces after its closing `}`; write the block as `|-`", "|-\n        ${a}\n\n"),
])
def test_whitespace_after_an_expression_is_said_as_whitespace(value: str, expected: str, fixed: str) -> None:
    (message,) = spec_errors(BLOCK + value + "\noutputs: [fc]\n")
    assert expected in message
    assert "move the text inside the braces" not in message
    where = "<string>:10:13:" if value[0] in "|>" else "<string>:9:26:"
    assert message.startswith(where + " error: layer 'fc' (Linear): out_features: "), message
    resgraph.check(BLOCK + fixed + "\noutputs: [fc]\n")  # the fix the hint gives works


def test_text_after_an_expression_still_says_move_it_inside() -> None:
    (message,) = spec_errors(BLOCK + '"${a} x"\noutputs: [fc]\n')
    assert "has text after its expression" in message and "move the text inside the braces" in message


def _skip(source: str, merge: str = "add", source_input: str = "") -> str:
    return ("resgraph: 1\nname: S\ninputs:\n" + (source_input or f"  x: {{shape: [{source}]}}\n")
            + "  y: {shape: [8, 8, 8]}\nlayers:\n"
            + ("  - p: {op: reshape, shape: [" + source + "], input: x}\n" if source_input
               else "  - p: {op: Identity, input: x}\n")
            + f"  - t: {{op: Identity, input: y}}\nskips:\n  - s: {{from: p, to: t, merge: {merge}}}\noutputs: [t]\n")


@pytest.mark.parametrize("merge", ["add", "mul"])
@pytest.mark.parametrize("unknown_grid", [False, True])
def test_a_skip_growing_along_one_dim_and_shrinking_along_another_says_so(merge: str, unknown_grid: bool) -> None:
    text = _skip("8, 1, 16", merge, "  x: {shape: [128]}\n" if unknown_grid else "")
    (message,) = spec_errors(text)
    assert "the sizes differ in a way no projection or broadcast fixes (1x16 -> 8x8): dim 1 (1 -> 8) grows while " \
           "dim 2 (16 -> 8) shrinks" in message, message
    assert "target is larger" not in message and "grew past" not in message and "grows on one grid" not in message
    assert "of spatial size 1x8, whose size-1 dims broadcast" in message
    assert ("'x' 8x8" in message) is not unknown_grid  # the input size that fits, where the grids are one
    # each fix offered works: a source of the target's size, or one that broadcasts
    for fixed, elements in (("8, 8, 8", 512), ("8, 1, 8", 64)):
        resgraph.check(_skip(fixed, merge, f"  x: {{shape: [{elements}]}}\n" if unknown_grid else ""))


def test_a_skip_larger_along_every_dim_keeps_its_own_message() -> None:
    (message,) = spec_errors(_skip("8, 4, 4", "add", "  x: {shape: [128]}\n"))
    assert "the target is larger (4x4 -> 8x8)" in message and "no projection or broadcast" not in message
