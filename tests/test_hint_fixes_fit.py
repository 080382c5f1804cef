"""A fix a hint proposes makes the whole spec fit, followed literally.

A skip hint's change of layers (a padding, `ceil_mode`) changes those layers' output sizes for everything
that reads them, not only the skip the hint is about. Each case here is a spec where the changed layer's
output is merged elsewhere with a value of the old size (a sibling branch concatenated or added to it, a
later skip that read it); the hint is followed literally, its settings written into the YAML text, and
the spec checked again. Where no change of layers makes it fit, the hint says so, and where the model
then fails.

A stored tensor's `layout` (or `shape`) is one for all its uses: where it meets a features-last value in
one place and a channels-first one in another, the key that fixes one refusal makes the other, and the
hint says that, naming both uses, and offers a second tensor or a permute of it for the refused use.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

import resgraph
from resgraph.errors import SpecError

# The settings on each layer, as a hint writes them: "`padding: 1` on 'a'", "`kernel_size: 5` and
# `padding: 2` on 'c'", "drop `ceil_mode: true` on 'p' and 'q'".
_SETTINGS_ON = re.compile(r"((?:(?:drop )?`[^`]+`(?: and )?)+) on ('[^']+'(?: and '[^']+')*)")


def _failure(spec: str) -> tuple[str, str]:
    """(where, hint) of a spec's one error."""
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    return str(diagnostic.location), diagnostic.hint or ""


def _all_failures(spec: str) -> list[Any]:
    """A spec's errors (the diagnostics)."""
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    return list(caught.value.diagnostics)


def _layer_fix(hint: str) -> str:
    """The alternative of the hint's fix that changes layers (an input size, a crop aside)."""
    fixes = hint.split(" Fix: ", 1)[1].split("; or ")
    (changing,) = [fix for fix in fixes if fix.startswith(("make ", "keep the size", "drop ", "`"))]
    return changing


def _follow(spec: str, fix: str) -> str:
    """`spec` with each setting of `fix` written on the layer it names (in a block, by its last name)."""
    for settings, names in _SETTINGS_ON.findall(fix):
        for name in re.findall(r"'([^']+)'", names):
            for setting in re.findall(r"(drop )?`([^`]+)`", settings):
                spec = _written(spec, name.rsplit(".", 1)[-1], *setting)
    return spec


def _written(spec: str, layer: str, drop: str, setting: str) -> str:
    key, value = setting.split(": ", 1)
    (line,) = [line for line in spec.splitlines() if line.lstrip().startswith(f"- {layer}: {{")]
    body = line[:-1]  # (without the closing brace of its flow mapping)
    written = r"(?:\[[^\]]*\]|[^,}]+)"  # (a list, or a scalar)
    if drop:
        body = re.sub(rf", {key}: {written}", "", body)
    elif re.search(rf"\b{key}: ", body):
        body = re.sub(rf"\b{key}: {written}", f"{key}: {value}", body)
    else:
        body += f", {key}: {value}"
    return spec.replace(line, body + "}")


def _spec(inputs: str, layers: str, skips: str = "", blocks: str = "") -> str:
    return (f"resgraph: 1\nname: Net\ninputs: {inputs}\n{blocks}layers:\n{layers}"
            + (f"skips:\n{skips}" if skips else ""))


_X33 = "{x: [8, 33, 33]}"

FITTING_WITH_SIBLINGS = {
    # two strided convs side by side, added: padding one alone made 'sum' add 17x17 to 16x16
    "parallel-convs-added": (
        _spec(_X33, "  - stem: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
                    "  - a: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, input: stem}\n"
                    "  - b: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, input: stem}\n"
                    "  - sum: {op: add, input: [a, b]}\n",
              "  - s: {from: stem, to: a}\n"),
        "make it round up as the strides do: `padding: 1` on 'a', and `padding: 1` on 'b' (net.yaml:7:5), as "
        "'sum' merges it with 'a'"),
    # two pools side by side, concatenated: `ceil_mode: true` on one alone made 'cat' fail
    "parallel-pools-concatenated": (
        _spec(_X33, "  - p: {op: MaxPool2d, kernel_size: 2, input: x}\n"
                    "  - q: {op: MaxPool2d, kernel_size: 2, input: x}\n"
                    "  - cat: {op: concat, input: [p, q]}\n",
              "  - s: {from: x, to: p}\n"),
        "make it round up as the strides do: `ceil_mode: true` on 'p', and `ceil_mode: true` on 'q' (net.yaml:6:5), "
        "as 'cat' merges it with 'p'"),
    # a stride of 3 that 34 does not divide, on two branches
    "stride-3-branches": (
        _spec("{x: [8, 34, 34]}",
              "  - a: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 3, input: x}\n"
              "  - b: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 3, input: x}\n"
              "  - cat: {op: concat, input: [a, b]}\n",
              "  - s: {from: x, to: a}\n"),
        "make it round up as the strides do: `padding: 1` on 'a', and `padding: 1` on 'b' (net.yaml:6:5), as "
        "'cat' merges it with 'a'"),
    # a later skip read the pool's old size: from 'q' (16x16) to what 'p' feeds (17x17 once 'p' rounds up)
    "later-skip": (
        _spec(_X33, "  - p: {op: MaxPool2d, kernel_size: 2, input: x}\n"
                    "  - c: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
                    "  - q: {op: MaxPool2d, kernel_size: 2, input: x}\n"
                    "  - out: {op: Identity, input: c}\n",
              "  - s: {from: x, to: p}\n  - s2: {from: q, to: out}\n"),
        "make it round up as the strides do: `ceil_mode: true` on 'p', and `ceil_mode: true` on 'q' (net.yaml:7:5), "
        "as 's2' merges it with 'p'"),
    # inside a block: the sibling is the block's layer, changed in the block's definition
    "branches-in-a-block": (
        _spec(_X33, "  - stem: {op: Conv2d, out_channels: 8, kernel_size: 1}\n  - d: {block: split}\n",
              blocks="blocks:\n  split:\n    layers:\n"
                     "      - a: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2}\n"
                     "      - b: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, input: x}\n"
                     "      - cat: {op: concat, input: [a, b]}\n"
                     "    skips:\n      - s: {from: x, to: a}\n"),
        "make it round up as the strides do: `padding: 1` on 'd.a', and `padding: 1` on 'd.b' (net.yaml:8:9), as "
        "'d.cat' merges it with 'd.a'"),
    # a block call's pool added to a pool outside it
    "block-beside-a-layer": (
        _spec(_X33, "  - a: {block: down, input: x}\n"
                    "  - b: {op: MaxPool2d, kernel_size: 2, input: x}\n"
                    "  - sum: {op: add, input: [a, b]}\n",
              blocks="blocks:\n  down:\n    layers:\n      - p: {op: MaxPool2d, kernel_size: 2}\n"
                     "    skips:\n      - s: {from: x, to: p}\n"),
        "make it round up as the strides do: `ceil_mode: true` on 'a.p', and `ceil_mode: true` on 'b' "
        "(net.yaml:12:5), as 'sum' merges it with 'a'"),
    # a pool that rounded up past its stride (ceil_mode with padding), beside one that does too
    "rounded-past-beside-a-sibling": (
        _spec("{x: [8, 32, 32]}",
              "  - p: {op: MaxPool2d, kernel_size: 3, stride: 2, padding: 1, ceil_mode: true, input: x}\n"
              "  - q: {op: MaxPool2d, kernel_size: 3, stride: 2, padding: 1, ceil_mode: true, input: x}\n"
              "  - cat: {op: concat, input: [p, q]}\n",
              "  - s: {from: x, to: p}\n"),
        "drop `ceil_mode: true` on 'p', and drop `ceil_mode: true` on 'q' (net.yaml:6:5), as 'cat' merges it with "
        "'p'"),
    # one grid: an unpadded conv beside another, added; padding one alone made 'sum' add 32x32 to 30x30
    "grid-branches": (
        _spec("{x: [8, 32, 32]}",
              "  - stem: {op: Conv2d, out_channels: 8, kernel_size: 1}\n"
              "  - a: {op: Conv2d, out_channels: 8, kernel_size: 3, input: stem}\n"
              "  - b: {op: Conv2d, out_channels: 8, kernel_size: 3, input: stem}\n"
              "  - sum: {op: add, input: [a, b]}\n",
              "  - s: {from: stem, to: a}\n"),
        "keep the size with `padding: 1` on 'a', and `padding: 1` on 'b' (net.yaml:7:5), as 'sum' merges it with "
        "'a'"),
}


@pytest.mark.parametrize(("spec", "fix"), FITTING_WITH_SIBLINGS.values(), ids=FITTING_WITH_SIBLINGS.keys())
def test_a_fix_that_changes_a_layer_changes_the_layers_merged_with_it_too(spec: str, fix: str) -> None:
    """Followed literally, the hint's change of layers makes the whole spec valid: the sibling whose value is
    merged with the changed layer's is changed alike, named with where it is written. (The change on the
    skip's own way alone fits the skip and moves the error to the merge.)"""
    where, hint = _failure(spec)
    assert _layer_fix(hint) == fix, hint
    resgraph.check(_follow(spec, fix), file="net.yaml")
    alone, _ = _failure(_follow(spec, fix.split(", and ")[0]))
    assert alone != where


def test_where_no_layer_of_the_spec_can_change_alike_the_hint_says_the_change_alone_does_not_fit() -> None:
    """'p' is added to a declared input of the old size: making 'p' round up fits the skip and breaks 'sum'.
    The hint says so, and where the model then fails; following it gives exactly that error."""
    spec = _spec("\n  x: [8, 33, 33]\n  y: [8, 16, 16]",
                 "  - p: {op: MaxPool2d, kernel_size: 2, input: x}\n  - sum: {op: add, input: [p, y]}\n",
                 "  - s: {from: x, to: p}\n")
    where, hint = _failure(spec)
    assert where == "net.yaml:10:5"
    fix = _layer_fix(hint)
    assert fix == ("make it round up as the strides do: `ceil_mode: true` on 'p'; this skip then fits, but that alone "
                   "does not make the model fit: with it, net.yaml:8:5: layer 'sum' (add): add needs broadcastable "
                   "shapes, got (8, 17, 17), (8, 16, 16), so what is merged there with 'p' (or what reads it) must "
                   "change size as well")
    assert "an input size at which this skip fits: 'x' 32x32" in hint  # (the other fix, which does fit)
    assert _failure(_follow(spec, fix.split(";")[0])) == ("net.yaml:8:5", "")
    resgraph.check(spec.replace("33, 33", "32, 32"), file="net.yaml")


def test_a_skip_refused_already_is_not_what_a_fix_breaks() -> None:
    """Two blocks of unpadded convs, each skip refused: padding the first block changes the second skip's sizes
    (28 -> 24 becomes 32 -> 28) but not that it is refused, with its own hint. Neither hint says its fix alone
    does not fit, and following both makes the spec valid."""
    spec = _spec("{x: [3, 32, 32]}",
                 "  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3}\n"
                 "  - c2: {op: Conv2d, out_channels: 8, kernel_size: 3}\n"
                 "  - c3: {op: Conv2d, out_channels: 8, kernel_size: 3}\n"
                 "  - c4: {op: Conv2d, out_channels: 8, kernel_size: 3}\n",
                 "  - s1: {from: x, to: c2}\n  - s2: {from: c2, to: c4}\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    fixes = [_layer_fix(d.hint or "") for d in caught.value.diagnostics]
    assert fixes == ["keep the size with `padding: 1` on 'c1' and 'c2'",
                     "keep the size with `padding: 1` on 'c3' and 'c4'"]
    for fix in fixes:
        spec = _follow(spec, fix)
    resgraph.check(spec, file="net.yaml")

# --- one stored tensor used against values of both layouts ---

_SCORES = ("resgraph: 1\nname: T\ninputs:\n  q: {shape: [4, 16, 8], layout: features_last}\n"
           "  k: {shape: [4, 16, 8], layout: features_last}\n  x: [4, 16, 16]\nlayers:\n"
           "  - kt: {op: transpose, dim0: 2, dim1: 3, input: k}\n  - scores: {op: matmul, input: [q, kt]}\n")

BOTH_LAYOUTS = {
    # no `layout` key: refused against the scores first; `layout: features_last` then refused 'gated'
    "read-from-rank": (
        _SCORES + "  - scale: {op: parameter, shape: [4, 1, 1]}\n"
                  "  - scaled: {op: mul, input: [scores, scale]}\n"
                  "  - gated: {op: mul, input: [x, scale]}\noutputs: [scaled, gated]\n",
        "net.yaml:11:5", "scale", ("layer 'scaled' (mul) at net.yaml:11:5 meets 'scores' (4, 16, 16), features-last",
                                   "layer 'gated' (mul) at net.yaml:12:5 meets 'x' (4, 16, 16), channels-first"),
        "scaled", "`layout: features_last`"),
    # `layout: features_last` declared: refused at the second use; `layout: channels_first` then refused 'scaled'
    "declared": (
        _SCORES + "  - scale: {op: parameter, shape: [4, 1, 1], layout: features_last}\n"
                  "  - scaled: {op: mul, input: [scores, scale]}\n"
                  "  - gated: {op: mul, input: [x, scale]}\noutputs: [scaled, gated]\n",
        "net.yaml:12:5", "scale", ("layer 'gated' (mul) at net.yaml:12:5 meets 'x' (4, 16, 16), channels-first",
                                   "layer 'scaled' (mul) at net.yaml:11:5 meets 'scores' (4, 16, 16), features-last"),
        "gated", "`layout: channels_first`"),
    # a gating skip from the stored tensor into a conv's map, which is the use refused
    "gating-skip": (
        _SCORES + "  - scale: {op: full, shape: [4, 1, 1], value: 0.5, layout: features_last}\n"
                  "  - scaled: {op: mul, input: [scores, scale]}\n"
                  "  - conv: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}\n"
                  "skips:\n  - gate: {from: scale, to: conv, merge: mul}\noutputs: [scaled, conv]\n",
        "net.yaml:14:5", "scale", ("skip 'gate' at net.yaml:14:5 meets 'conv' (4, 16, 16), channels-first",
                                   "layer 'scaled' (mul) at net.yaml:11:5 meets 'scores' (4, 16, 16), features-last"),
        "gate", "`layout: channels_first`"),
    # one value per channel of a map, and per feature of its permuted copy: the shape hint flipped as well
    "shape": (
        "resgraph: 1\nname: T\ninputs:\n  x: [8, 6, 6]\nlayers:\n"
        "  - gamma: {op: full, shape: [8, 1, 1], value: 0.5}\n"
        "  - gated: {op: mul, input: [x, gamma]}\n"
        "  - last: {op: permute, dims: [0, 2, 3, 1], input: x}\n"
        "  - out: {op: mul, input: [last, gamma]}\noutputs: [gated, out]\n",
        "net.yaml:9:5", "gamma", ("layer 'out' (mul) at net.yaml:9:5 meets 'last' (6, 6, 8), features-last",
                                  "layer 'gated' (mul) at net.yaml:7:5 meets 'x' (8, 6, 6), channels-first"),
        "out", "`shape: [1, 1, 8]` and `layout: features_last`"),
}


def _second_tensor(spec: str, hint: str) -> str:
    """`spec` with the hint's second stored tensor: "a copy of 'scale' named 'scale_x' with `key: value`, read
    there instead of 'scale'", written after the first and read by the use refused."""
    found = re.search(r"store a second tensor for (?:layer|skip) '([^']+)'[^:]*: a copy of '([^']+)' named '([^']+)' "
                      r"with (.+?), read there instead of", hint)
    assert found is not None, hint
    use, stored, copy, settings = found.groups()
    (line,) = [line for line in spec.splitlines() if line.startswith(f"  - {stored}: {{")]
    spec = spec.replace(line, f"{line}\n{line.replace(f'- {stored}:', f'- {copy}:')}")
    for setting in re.findall(r"`([^`]+)`", settings):
        spec = _written(spec, copy, "", setting)
    return _read_instead(spec, use, stored, copy)


def _read_instead(spec: str, use: str, stored: str, replacement: str) -> str:
    (line,) = [line for line in spec.splitlines() if line.lstrip().startswith(f"- {use}: {{")]
    return spec.replace(line, re.sub(rf"\b{stored}\b(?=[\],}}])", replacement, line))


@pytest.mark.parametrize(("spec", "where", "stored", "uses", "refused", "setting"), BOTH_LAYOUTS.values(),
                         ids=BOTH_LAYOUTS.keys())
def test_a_stored_tensor_used_against_both_layouts_is_told_so_with_both_uses(
        spec: str, where: str, stored: str, uses: tuple[str, str], refused: str, setting: str) -> None:
    """The hint that answered each refusal with the other layout flipped the error between the two uses. It
    now says the tensor is used against both layouts, where each use is, that the key would refuse the other
    use, and offers a second tensor for the refused use, which (followed literally) makes the spec valid."""
    found, hint = _failure(spec)
    assert found == where
    assert hint.startswith(f"'{stored}' (net.yaml:") and "is one stored tensor used against values of both " \
                                                       f"layouts: {uses[0]}; {uses[1]}. " in hint, hint
    assert f"so {setting} on it would refuse the other use instead" in hint
    # the key alone moves the refusal to the other use (what the hint used to propose)
    flipped_spec = spec
    for key in re.findall(r"`([^`]+)`", setting):
        flipped_spec = _written(flipped_spec, stored, "", key)
    flipped, _ = _failure(flipped_spec)
    assert flipped != where and flipped == uses[1].split(" at ")[1].split(" ")[0]
    resgraph.check(_second_tensor(spec, hint), file="net.yaml")


def test_where_a_permute_of_the_stored_tensor_broadcasts_the_hint_offers_it_too() -> None:
    """(8, 1, 1) per channel of 'x', and per feature of 'last' (6, 6, 8): a permute to (1, 1, 8) serves the
    second use, the values shared."""
    spec = BOTH_LAYOUTS["shape"][0]
    _, hint = _failure(spec)
    permute = "- gamma_features_last: {op: permute, dims: [0, 2, 3, 1], input: gamma}"
    assert f"read it there through `{permute}` (channels-first (8, 1, 1) to features-last (1, 1, 8))" in hint
    spec = spec.replace("  - last:", f"  {permute}\n  - last:")
    resgraph.check(_read_instead(spec, "out", "gamma", "gamma_features_last"), file="net.yaml")


def test_a_stored_tensor_used_against_one_layout_keeps_its_one_fix() -> None:
    """Two uses against features-last scores: the `layout` key fixes both, and is what the hint says."""
    spec = _SCORES + ("  - scale: {op: parameter, shape: [4, 1, 1]}\n"
                      "  - scaled: {op: mul, input: [scores, scale]}\n"
                      "  - shifted: {op: add, input: [scores, scale]}\noutputs: [scaled, shifted]\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    assert [d.hint for d in caught.value.diagnostics] == 2 * [
        "'scale' is a stored tensor, whose layout is read from its rank (3 dims: channels-first): if its dims pair "
        "with those of 'scores' (4, 16, 16) as torch broadcasts them (a per-head scale of attention scores), write "
        "`layout: features_last` on it"]
    resgraph.check(_written(spec, "scale", "", "layout: features_last"), file="net.yaml")


# --- a layer between the strides, and a crop across one: the fix that works, followed literally ---

def _fixes(hint: str) -> list[str]:
    """The alternatives of a hint's fix."""
    return hint.split(" Fix: ", 1)[1].split(". No input size")[0].split("; or ")


def _sized(spec: str, fix: str) -> str:
    """`spec` with the first input size a fix offers ("an input size at which this skip fits: 'x' 32x32") as its
    declared spatial size (an input written `{x: [C, ...]}`)."""
    found = re.search(r"an input size at which this skip fits: '(\w+)' ([\dx]+)", fix)
    assert found is not None, fix
    name, sizes = found.groups()
    declared = re.search(rf"\b{name}: \[(\d+), [^\]]*\]", spec)
    assert declared is not None
    return spec.replace(declared.group(0), f"{name}: [{declared.group(1)}, {sizes.replace('x', ', ')}]")


_C1 = "  - c1: {op: Conv1d, out_channels: 4, kernel_size: 3, padding: %d}\n"
_DOWN = "  - c3: {op: Conv1d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1}\n"


@pytest.mark.parametrize("padding", [2, 0])
def test_a_layer_between_the_strides_that_changed_the_size_is_given_the_padding_that_keeps_it(padding: int) -> None:
    """50 -> 52 (or 48) by 'c1', then a stride that rounds up: no input size fits, and the hint offered nothing;
    the padding that keeps 'c1''s size does, checked and followed."""
    spec = _spec("{x: [2, 50]}", _C1 % padding + _DOWN, "  - s: {from: x, to: c3}\n")
    where, hint = _failure(spec)
    assert where == "net.yaml:8:5"
    assert hint.endswith(f"a layer between the strides changed the size: 'c1' 50 -> {50 + 2 * padding - 2}. "
                         "Fix: keep the size with `padding: 1` on 'c1'"), hint
    resgraph.check(_follow(spec, _layer_fix(hint)), file="net.yaml")


_TCN = ("  - c1: {op: Conv1d, out_channels: 4, kernel_size: 3, padding: 2, dilation: 1}\n"
        "  - c2: {op: Conv1d, out_channels: 4, kernel_size: 3, padding: 4, dilation: 2}\n"
        "  - c3: {op: Conv1d, out_channels: 4, kernel_size: 3, stride: 2, padding: 4, dilation: 4}\n")


def test_a_crop_across_a_stride_is_told_the_policy_that_follows_it_with_the_changes_it_needs() -> None:
    """A dilated TCN's crop across a stride: the hint said to use `projection: auto` "at sizes that fit it",
    though none does (and auto's own hint then offered nothing). It now offers auto with the paddings that
    keep the sizes, checked with both; written into the spec, it is valid."""
    spec = _spec("{x: [2, 50]}", _TCN, "  - s: {from: x, to: c3, projection: crop}\n")
    where, hint = _failure(spec)
    assert where == "net.yaml:9:5"
    assert hint.startswith("use projection: auto or conv (a strided 1x1 conv) or avgpool, which follow the stride, "
                           "but here the spatial size 50 -> 28 does not match a stride of 2 (which gives 25). "), hint
    (fix,) = _fixes(hint)
    assert fix == "set `projection: auto` on this skip, and keep the size with `padding: 1` on 'c1' and `padding: 2` " \
                  "on 'c2'"
    assert "at sizes that fit it" not in hint
    resgraph.check(_follow(_written(spec, "s", "", "projection: auto"), fix), file="net.yaml")
    # auto alone, as the old hint said, still fails at every size
    assert _failure(_written(spec, "s", "", "projection: auto"))[0] == where


def test_a_crop_across_a_stride_offers_input_sizes_checked_with_the_policy_that_follows_it() -> None:
    """A pool flooring 33: auto fits at 32x32, checked with `projection: auto` written (with the crop, no size
    fits), or with the pool rounding up."""
    spec = _spec("{x: [4, 33, 33]}", "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
                                     "  - p: {op: MaxPool2d, kernel_size: 2}\n",
                 "  - s: {from: x, to: p, projection: crop}\n")
    _, hint = _failure(spec)
    sizes, rounding = _fixes(hint)
    assert sizes == "set `projection: auto` on this skip, and an input size at which this skip fits: 'x' 32x32 " \
                    "(or 34x34, 30x30)"
    assert rounding == "set `projection: auto` on this skip, and make it round up as the strides do: " \
                       "`ceil_mode: true` on 'p'"
    auto = _written(spec, "s", "", "projection: auto")
    resgraph.check(_sized(auto, sizes), file="net.yaml")
    resgraph.check(_follow(auto, rounding.split(", and ", 1)[1]), file="net.yaml")


_UNET_CEIL = ("  - e1: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
              "  - p1: {op: MaxPool2d, kernel_size: 2, ceil_mode: true}\n"
              "  - e2: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
              "  - u1: {op: ConvTranspose2d, out_channels: 4, kernel_size: 2, stride: 2}\n")
_OUTPUT_PADDING = ("  - d1: {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1}\n"
                   "  - d2: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}\n"
                   "  - u: {op: ConvTranspose2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1, "
                   "output_padding: 1}\n")


@pytest.mark.parametrize(("spec", "enlarged"), [
    # a U-Net level whose ceil_mode pool rounded 33 up: the upsample gives 34 from 33
    (_spec("{x: [3, 33, 33]}", _UNET_CEIL, "  - s1: {from: e1, to: u1, merge: add, projection: crop}\n"),
     "33x33 to 34x34"),
    # a transposed conv with output_padding, concatenated: 7x5 up to 8x6
    (_spec("{x: [3, 13, 10]}", _OUTPUT_PADDING, "  - s: {from: d1, to: u, merge: concat, projection: crop}\n"),
     "7x5 to 8x6"),
], ids=["ceil-mode-unet", "output-padding"])
def test_a_crop_that_would_enlarge_is_given_the_input_sizes_where_it_fits(spec: str, enlarged: str) -> None:
    """"crop cannot enlarge" said what grew but no fix: the nearest sizes where the crop fits (the target no
    larger, the margins even) are offered, checked, and followed they make the spec valid."""
    _, hint = _failure(spec)
    assert "the target grew past the source. Fix: an input size at which this skip fits: 'x' " in hint, hint
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    assert f"crop cannot enlarge spatial size {enlarged}" in caught.value.diagnostics[0].message
    resgraph.check(_sized(spec, _fixes(hint)[0]), file="net.yaml")


def test_a_skip_past_an_adaptive_pool_names_the_pool_not_a_stride_as_the_cause() -> None:
    """16x5 -> 16x4: the height is unchanged (a step of 1) and the pool set the width; neither "a stride of 2
    (which gives 8x3)" nor "a stride floored a size" is what happened."""
    spec = _spec("{x: [3, 32, 9]}", "  - c0: {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1}\n"
                                    "  - a: {op: AdaptiveAvgPool2d, output_size: [null, 4]}\n"
                                    "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n",
                 "  - s: {from: c0, to: c}\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message.endswith("spatial size 16x5 -> 16x4 does not match a stride of 1x2 (which gives 16x3)")
    hint = diagnostic.hint or ""
    assert "an adaptive pool set a size that no stride from the source gives: 'a' 16x5 -> 16x4" in hint, hint
    assert "floored" not in hint
    resgraph.check(_sized(spec, _fixes(hint)[0]), file="net.yaml")


# --- a skip into one output of a block call ---

_TWO = ("blocks:\n  two:\n    layers:\n"
        "      - p: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1, input: x}\n"
        "      - q: {op: Conv2d, out_channels: 4, kernel_size: 1, input: x}\n"
        "    outputs: [p, q]\n")


def test_a_skip_into_one_output_of_a_call_is_told_to_point_its_readers_at_the_merge() -> None:
    """`to: head.q` is refused with a layer to merge into instead. Followed as the hint said before (the layer
    added, the skip moved), 'c1' still read the unmerged head.q: the skip fed nothing. The hint names 'c1'
    and where it is written; followed literally, the merged value is what 'c1' reads."""
    spec = _spec("{x: [4, 8, 8]}", "  - head: {block: two}\n  - c1: {op: add, input: [head.p, head.q]}\n",
                 "  - s1: {from: x, to: head.q}\n", blocks=_TWO)
    where, hint = _failure(spec)
    assert where == "net.yaml:14:23"
    found = re.fullmatch(r"merge into a layer that reads it: add `(- (\w+): \{[^`]+\})` after 'head', write "
                         r"`to: (\w+)`, and read (\w+) instead of head\.q in 'c1' \(net\.yaml:12:5\), or the skip "
                         r"feeds nothing", hint)
    assert found is not None, hint
    layer, name, target, read = found.groups()
    assert name == target == read == "head_q"
    spec = spec.replace("  - c1:", f"  {layer}\n  - c1:").replace("to: head.q", f"to: {target}")
    spec = _read_instead(spec, "c1", r"head\.q", read)
    graph = resgraph.check(spec, file="net.yaml")
    assert "s1" in graph.nodes["c1"].inputs  # (the merged value, not head.q's)


def test_a_skip_reading_the_same_output_is_named_among_its_readers() -> None:
    """A later skip `from: head.q` reads the unmerged value too: it is named with where its `from:` is, and,
    followed literally, it carries the merged value."""
    spec = _spec("{x: [4, 8, 8]}", "  - head: {block: two}\n  - c1: {op: Identity, input: head.p}\n"
                 "  - c2: {op: Conv2d, out_channels: 4, kernel_size: 1, input: c1}\n",
                 "  - s1: {from: x, to: head.q}\n  - s2: {from: head.q, to: c2}\n", blocks=_TWO)
    _, hint = _failure(spec)
    assert hint.endswith("and read head_q instead of head.q in the `from:` of skip 's2' (net.yaml:16:10), or the "
                         "skip feeds nothing"), hint
    spec = spec.replace("  - c1:", "  - head_q: {op: Identity, input: head.q}\n  - c1:")
    spec = spec.replace("to: head.q", "to: head_q").replace("from: head.q", "from: head_q")
    graph = resgraph.check(spec, file="net.yaml")
    assert "s1" in graph.nodes["s2"].inputs and "head.q" not in graph.nodes["s2"].inputs  # (the merged value)


def test_a_layer_written_after_the_call_without_an_input_is_told_to_name_it() -> None:
    spec = _spec("{x: [4, 8, 8]}", "  - head: {block: two}\n  - c1: {op: add, input: [head.p, head.q]}\n",
                 "  - s1: {from: x, to: head.q}\n", blocks=_TWO)
    spec = spec.replace("  - c1:", "  - z: {op: Identity, input: head.p}\n  - c1:").replace(
        "{op: Identity, input: head.p}", "{op: Identity}")
    hints = [d.hint or "" for d in _all_failures(spec)]
    assert any(hint.endswith("(give 'z', written after 'head', its `input:`: it would read head_q)") for hint in hints)


def test_a_skip_into_an_output_nobody_reads_is_told_so() -> None:
    """head.q is listed in `outputs:`: the hint names that as what must read the new layer."""
    spec = _spec("{x: [4, 8, 8]}", "  - head: {block: two}\n  - c1: {op: Identity, input: head.p}\n",
                 "  - s1: {from: x, to: head.q}\n", blocks=_TWO) + "outputs: [c1, head.q]\n"
    _, hint = _failure(spec)
    assert hint.endswith("and read head_q instead of head.q in `outputs:` (net.yaml:15:1), or the skip feeds nothing")


def test_a_spec_failing_at_many_skips_makes_one_hint_per_skip_not_one_per_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-spec checks a hint makes (its fixes, at other sizes) only read whether the spec fails, and
    where: their own skips' hints, each a search, are not made. (They were: a 5,000-layer chain failing at
    100 skips took 163 s to validate instead of 2.)"""
    import resgraph.shapes

    padded = [", padding: 1" if i % 5 != 1 else "" for i in range(150)]
    layers = "".join(f"  - r{i}: {{op: Conv2d, out_channels: 4, kernel_size: 3{pad}}}\n"
                     for i, pad in enumerate(padded))
    skips = "".join(f"  - s{i}: {{from: r{i - 1}, to: r{i + 1}}}\n" for i in range(1, 150, 5))
    spec = f"resgraph: 1\nname: Many\ninputs:\n  x: [4, 200, 200]\nlayers:\n{layers}skips:\n{skips}"
    made = []
    real = resgraph.shapes.skip_hint
    monkeypatch.setattr(resgraph.shapes, "skip_hint", lambda *a, **k: made.append(1) or real(*a, **k))
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec, file="net.yaml")
    assert len(caught.value.diagnostics) == 30 == len(made)
    assert all("Fix: keep the size with `padding: 1`" in (d.hint or "") for d in caught.value.diagnostics)
