"""Property-based fuzzing of the whole pipeline (hypothesis).

1. Generated specs (random chains of image and feature ops, random skips, merges and projection
   policies) either build a module whose forward runs, with every inferred shape equal to the
   actual one, or are refused with a located SpecError.
2. Mutated specs (dropped keys, wrong types, odd names and numbers, deep nesting, corrupted
   text, nested lists and mappings as values, odd file names) never raise anything but
   resgraph's own errors, each with a line and column; what builds also summarizes, renders
   and exports to Python source that only defines classes.
3. Block specs whose parameters are nested lists (stage tables) and mappings, called with
   `repeat:` and `${...}` over those tables, and layers taking mapping arguments, go through the
   same: build, summary, diagram and `.py` export, or a located error.

CI runs a bounded profile; set RESGRAPH_FUZZ_EXAMPLES=20000 for a long local run.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import os
from typing import Any

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import resgraph

EXAMPLES = int(os.environ.get("RESGRAPH_FUZZ_EXAMPLES", "100"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

IMAGE_OPS = st.one_of(
    st.builds(lambda c, k, s, p: {"op": "Conv2d", "out_channels": c, "kernel_size": k, "stride": s, "padding": p},
              st.integers(1, 6), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1)),
    st.just({"op": "BatchNorm2d"}), st.just({"op": "ReLU"}), st.just({"op": "GELU"}), st.just({"op": "Identity"}),
    st.builds(lambda k: {"op": "MaxPool2d", "kernel_size": k}, st.integers(1, 2)),
    st.builds(lambda k: {"op": "AvgPool2d", "kernel_size": k, "ceil_mode": True}, st.integers(1, 3)),
    st.builds(lambda g: {"op": "GroupNorm", "num_groups": g}, st.integers(1, 2)),
)
FEATURE_OPS = st.one_of(
    st.builds(lambda f: {"op": "Linear", "out_features": f}, st.integers(1, 8)),
    st.just({"op": "LayerNorm"}), st.just({"op": "Tanh"}), st.just({"op": "Dropout", "p": 0.0}),
)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A chain of layers over an image or a feature input, with random skips between them."""
    image = draw(st.booleans())
    shape = [draw(st.integers(1, 4)), draw(st.integers(3, 10)), draw(st.integers(3, 10))] if image else \
        [draw(st.integers(1, 8))]
    layers, names = [], ["x"]
    for i in range(draw(st.integers(1, 6))):
        if image and draw(st.integers(0, 5)) == 0:
            body, image = {"op": "Flatten"}, False
        else:
            body = dict(draw(IMAGE_OPS if image else FEATURE_OPS))
        layers.append({f"l{i}": body})
        names.append(f"l{i}")
    skips = []
    for j in range(draw(st.integers(0, 3))):
        target = draw(st.integers(1, len(names) - 1))
        source = draw(st.integers(0, target - 1))
        skip = {"from": names[source], "to": names[target],
                "merge": draw(st.sampled_from(["add", "concat", "mul"])),
                "projection": draw(st.sampled_from(["auto", "conv", "avgpool", "pad", "crop", "none"]))}
        skips.append({f"s{j}": skip})
    spec = {"resgraph": 1, "name": "Fuzz", "inputs": {"x": shape}, "layers": layers}
    if skips:
        spec["skips"] = skips
    return spec


def assert_located(error: resgraph.SpecError) -> None:
    assert error.diagnostics
    for diagnostic in error.diagnostics:
        assert diagnostic.location.line >= 1 and diagnostic.location.column >= 1, diagnostic.format()
        assert diagnostic.message


@PROFILE
@given(specs())
def test_generated_specs_build_with_true_shapes_or_are_refused(spec: dict[str, Any]) -> None:
    text = yaml.safe_dump(spec, sort_keys=False)
    try:
        model = resgraph.build(text, file="fuzz.yaml", seed=0).eval()
    except resgraph.SpecError as error:
        assert_located(error)
        return
    graph = model.graph
    actual: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: actual.__setitem__(name, tuple(o.shape[1:])))
    x = torch.randn(2, *spec["inputs"]["x"])
    with torch.no_grad():
        out = model(x)
    for name, shape in actual.items():
        node = graph.nodes[name]
        expected = node.meta["type"].shape if node.kind.value == "layer" else None
        if expected is not None:
            assert shape == expected, name
    assert tuple(out.shape[1:]) == graph.nodes[graph.outputs[0]].meta["type"].shape


class FuzzAnything(nn.Module):
    """A layer taking any keyword arguments (mappings, nested lists, ...), as registered layers may."""

    def __init__(self, in_features: int, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.scale = nn.Parameter(torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


if "FuzzAnything" not in resgraph.ops.generic.CUSTOM_OPS:
    resgraph.register_op("FuzzAnything", FuzzAnything)

# Plain values as a spec can write them: scalars, and lists and mappings of them, nested.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=6))
PLAIN = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                     max_leaves=12)
# File names as they come: quotes, backslashes (Windows paths), newlines, control characters,
# bidirectional overrides, undecodable bytes (surrogates) and format placeholders.
FILE_NAMES = st.one_of(
    st.just("fuzz.yaml"),
    st.text(alphabet=st.sampled_from(list('"\'"\n\r\t\x1b\x00\u202e{}%$;:/ aZ\udcff\udc80é')), max_size=12)
    .map(lambda name: name + ".yaml"),
    st.sampled_from(['a"""; import os; os.system("touch PWNED"); """b.yaml', "C:\\Users\\net.yaml",
                     "C:\\N{x}\\x41.yaml", "end\\"]),
)


def assert_usable(model: torch.nn.Module) -> None:
    """What a user does next with a built model never raises anything but resgraph's errors."""
    summary = resgraph.summary(model)
    str(summary)
    json.dumps(summary.to_dict())
    resgraph.render(model).source  # noqa: B018 - building the DOT text is the check
    try:
        source = resgraph.to_python(model)
    except resgraph.SpecError as error:  # a value with no Python form: refused, with its place
        assert_located(error)
        return
    tree = ast.parse(source)
    assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.ClassDef)) for node in tree.body[1:])


@st.composite
def block_specs(draw: st.DrawFn) -> tuple[str, str]:
    """A stage table (nested lists) driving repeated block instances, plus mapping-valued arguments."""
    rows = draw(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 2)), min_size=1, max_size=3))
    table: list[Any] = [list(row) for row in rows]
    if draw(st.booleans()):  # a row that is a mapping, a deeper list, a string...: refused where it is read
        table.insert(draw(st.integers(0, len(table))), draw(PLAIN))
    extra = draw(PLAIN)
    options = draw(st.dictionaries(st.sampled_from(["mode", "table", "meta", "notes"]), PLAIN, max_size=2))
    spec = {
        "resgraph": 1, "name": draw(st.sampled_from(["Fuzz", "None", "class", "torch", "nn", "float"])),
        "params": {"stages": table, "extra": extra},
        "blocks": {"stage": {
            "params": {"row": "required", "table": draw(PLAIN), "meta": {"a": draw(PLAIN)}},
            "layers": [
                {"conv": {"op": "Conv2d", "out_channels": "${row[0]}", "kernel_size": 3, "padding": 1,
                          "stride": "${row[1]}"}},
                {"super": {"op": "FuzzAnything", **options}},
                {"nn": {"op": "ReLU"}},
            ],
        }},
        "inputs": {"x": [2, 8, 8]},
        "layers": [
            {"body": {"block": "stage", "repeat": len(table), "with": {"row": "${stages[index]}"}}},
            {"pool": {"op": "AdaptiveAvgPool2d", "output_size": 1}},
            {"flat": {"op": "Flatten"}},
            {"any": {"op": "FuzzAnything", "config": extra}},
        ],
    }
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), draw(FILE_NAMES)


@PROFILE
@given(block_specs())
def test_stage_tables_and_mapping_arguments_build_export_or_are_refused(case: tuple[str, str]) -> None:
    text, file = case
    try:
        model = resgraph.build(text, file=file, seed=0)
    except resgraph.SpecError as error:
        assert_located(error)
        return
    model(torch.randn(2, 2, 8, 8))
    assert_usable(model)


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth):
        value = [value]
    return value


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([math.nan, math.inf, -math.inf, 1e308]),
    st.text(max_size=20), st.text(alphabet="éλ中🙂-. ", min_size=0, max_size=5), st.just("x" * 10_000),
    st.lists(st.integers(), max_size=4), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.builds(deep_list, st.just(100)), st.just("${__import__('os')}"), st.just("${1 / 0}"),
    PLAIN, st.lists(st.lists(st.integers(-3, 64), max_size=3), min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "mode", "in_features"]), PLAIN, min_size=1, max_size=3),
    st.just("${[[1, 2], [3, 4]]}"), st.just({"op": "FuzzAnything", "m": {"k": [1, {"j": None}]}}),
)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if len(prefix) > 12:  # junk can be 100 lists deep; mutating its inside adds nothing
        return found
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> str:
    # Mutated in place below: copy what was drawn, so a strategy that hands out a shared object
    # (sampled_from, just) draws the same value on a replay (Hypothesis' FlakyStrategyDefinition).
    spec = copy.deepcopy(draw(specs()))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(paths(spec)))
        parent = spec
        for part in target[:-1]:
            parent = parent[part]
        key = target[-1]
        action = draw(st.sampled_from(["replace", "delete", "rename", "swap"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = parent.pop(key)
        elif action == "swap" and isinstance(parent, dict) and len(parent) > 1:
            other = draw(st.sampled_from(sorted(parent, key=str)))
            parent[key], parent[other] = parent[other], parent[key]
        else:
            parent[key] = copy.deepcopy(draw(JUNK))
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    if draw(st.booleans()):  # corrupt the text itself
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet="{}[]:-&*!|>'\"#%@`\t\n ", max_size=4)) + text[at:]
    return text


@PROFILE
@given(mutated(), FILE_NAMES)
def test_mutated_specs_only_raise_located_resgraph_errors(text: str, file: str) -> None:
    try:
        model = resgraph.build(text, file=file, max_params=10_000_000)
    except resgraph.SpecError as error:
        assert_located(error)
        return
    assert isinstance(model, torch.nn.Module)
    assert_usable(model)


def test_regression_mul_of_different_ranks_is_not_broadcast_against_the_batch() -> None:
    """Found by the fuzzer: (N, 7) * (N, 1, 3, 7) was typed as broadcastable per sample."""
    text = ("resgraph: 1\nname: F\ninputs:\n  x: [1, 3, 7]\nlayers:\n  - l0: {op: Flatten}\n"
            "  - l1: {op: Linear, out_features: 7}\nskips:\n  - s: {from: x, to: l1, merge: mul}\n")
    try:
        resgraph.build(text, file="fuzz.yaml")
    except resgraph.SpecError as error:
        assert_located(error)
        assert "ranks differ" in error.diagnostics[0].message
    else:
        raise AssertionError("a rank-changing mul skip must be refused")


def test_regression_the_parameter_limit_error_is_located() -> None:
    """Found by the fuzzer: the --max-params error had no line and column."""
    text = "resgraph: 1\nname: F\ninputs:\n  x: [1000]\nlayers:\n  - a: {op: Linear, out_features: 1000}\n"
    try:
        resgraph.build(text, file="fuzz.yaml", max_params=1000)
    except resgraph.SpecError as error:
        assert_located(error)
        assert str(error.diagnostics[0].location) == "fuzz.yaml:6:5"
        assert "(3.8 MiB as float32)" in error.diagnostics[0].message
