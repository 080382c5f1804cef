"""The shortcuts the build takes for speed give exactly what the plain paths give: a dict spec's
record text is `json.dumps(spec, indent=2)`, equal layer bodies share one typed object, and
memoised shape inference writes the same types as typing each node afresh."""

from __future__ import annotations

import enum
import gc
import json
import math
import pathlib
from typing import Any

import pytest
import torch

import resgraph
from resgraph.errors import SpecError
from resgraph.pipeline import dict_spec_text

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


class Width(enum.IntEnum):
    small = 8


class Tag(str):
    pass


CASES: list[Any] = [
    {}, [], (), "text", 5, None, True, 2.5,
    {"a": [], "b": {}, "c": [[]], "d": [{}]},
    [1, [2, [3, {"x": (4, 5)}]]],
    {"é": "ü\u2603\n\"\\", "x": [True, False, None, 1.5, math.nan, math.inf, -math.inf, -0.0, 1e300, 10**30]},
    {"enum": Width.small, Tag("key"): Tag("value")},
    {1: "int key"}, {"a": {None: 1}}, {"s": {1, 2}}, {"o": object()},
]


@pytest.mark.parametrize("data", CASES, ids=range(len(CASES)))
def test_a_dict_specs_text_is_what_json_dumps_writes(data: Any) -> None:
    try:
        expected = json.dumps(data, indent=2)
    except TypeError:  # a set, an object: not spec data, refused where it stands
        with pytest.raises(SpecError, match="is not spec data"):
            dict_spec_text(data)
        return
    if data in ({1: "int key"}, {"a": {None: 1}}):  # json.dumps writes the key as a string: another spec
        with pytest.raises(SpecError, match="must be a string"):
            dict_spec_text(data)
        return
    assert dict_spec_text(data) == expected


def test_a_dict_that_contains_itself_has_no_text_and_is_refused() -> None:
    data: dict[str, Any] = {}
    data["self"] = data
    with pytest.raises(SpecError, match="self: this dict contains itself"):
        dict_spec_text(data)


def chain(n: int) -> dict[str, Any]:
    layers = [{f"l{i}": {"op": "Linear", "out_features": 8}} for i in range(n)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, n - 2, 2)]
    return {"resgraph": 1, "name": "Chain", "inputs": {"x": [8]}, "layers": layers, "skips": skips}


def test_a_dict_specs_record_is_its_indented_json() -> None:
    spec = chain(6)
    model = resgraph.build(spec, seed=0)
    assert model.build_record.spec == json.dumps(spec, indent=2)
    rebuilt = resgraph.rebuild(model.build_record, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))


def test_equal_bodies_share_one_typed_layer_and_each_node_keeps_its_own_facts() -> None:
    graph = resgraph.check(chain(6))
    layers = [graph.nodes[f"l{i}"].layer for i in range(6)]
    assert all(layer is layers[0] for layer in layers)  # typed once
    assert [graph.nodes[f"l{i}"].meta["type"].shape for i in range(6)] == [(8,)] * 6
    assert [graph.nodes[f"l{i}"].meta["params"] for i in range(6)] == [72] * 6
    assert graph.nodes["s0"].meta["projection"].is_identity


def test_memoised_shapes_tell_apart_equal_layers_on_different_inputs() -> None:
    # fc1 and fc3 are equal bodies typed on inputs of different widths: each gets its own in_features.
    spec = ("resgraph: 1\nname: M\ninputs: {x: [4]}\nlayers:\n"
            "  - fc1: {op: Linear, out_features: 8}\n  - fc2: {op: Linear, out_features: 6}\n"
            "  - fc3: {op: Linear, out_features: 8}\n")
    model = resgraph.build(spec, seed=0)
    assert model.fc1.in_features == 4 and model.fc3.in_features == 6
    graph = model.graph
    assert graph.nodes["fc1"].layer is graph.nodes["fc3"].layer
    assert graph.nodes["fc1"].meta["args"] == {"in_features": 4, "out_features": 8}
    assert graph.nodes["fc3"].meta["args"] == {"in_features": 6, "out_features": 8}
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 6), torch.nn.Linear(6, 8))
    reference.load_state_dict({k.replace("fc1", "0").replace("fc2", "1").replace("fc3", "2"): v
                               for k, v in model.state_dict().items()})
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), reference(x))


def test_equal_bodies_with_errors_are_each_reported_at_their_own_line() -> None:
    spec = ("resgraph: 1\nname: M\ninputs: {x: [8]}\nlayers:\n"
            "  - a: {op: Conv2d, out_channels: 4, kernel_size: 3}\n"
            "  - b: {op: Conv2d, out_channels: 4, kernel_size: 3, input: x}\n")
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    found = sorted((d.location.line, d.message.split(":")[0]) for d in caught.value.diagnostics)
    assert found == [(5, "layer 'a' (Conv2d)"), (6, "layer 'b' (Conv2d)")], caught.value


@pytest.mark.parametrize("spec", [chain(40), EXAMPLES / "resnet50.yaml", EXAMPLES / "unet.yaml"],
                         ids=["chain", "resnet50", "unet"])
def test_a_build_leaves_no_reference_cycles_for_the_collector(spec: Any) -> None:
    """What a build makes and drops is freed at once, by reference counts. A cycle (two nested
    functions calling each other) kept the expander, and every typed body it held, alive until the
    next collection: for a long chain, a collection over hundreds of thousands of objects."""
    resgraph.build(spec, device="meta")  # (imports and first-use caches are not the build's garbage)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        resgraph.build(spec, device="meta")
        gc.collect()
        garbage = sorted({type(value).__qualname__ for value in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert garbage == []


def _typed(graph: Any) -> list[Any]:
    """Every node's typing, in the graph and its block instances: what memoised inference must reproduce."""
    found = []
    for node in graph.nodes.values():
        meta = node.meta
        found.append((graph.qualname + node.name, meta.get("type"), meta.get("args"), meta.get("params"),
                      meta.get("storage"), meta.get("projection")))
        for instance in getattr(node, "instances", ()):
            found += _typed(instance)
    return found


@pytest.mark.parametrize("name", ["tutorial", "resnet50", "densenet121", "unet", "gpt2", "yolov8"])
def test_memoised_typing_of_symbolic_sizes_gives_what_typing_afresh_gives(name: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal layers on inputs of one symbolic size (ResNet's second bottleneck of each stage repeats the
    first's layers after its first conv) are typed once; the types, arguments and guards (so the sizes
    the model admits) are those of typing every node, which records each guard once, at its first site."""
    import resgraph.shapes

    memoised = resgraph.check(EXAMPLES / f"{name}.yaml")
    monkeypatch.setattr(resgraph.shapes, "_memo_key", lambda node, inputs: None)
    afresh = resgraph.check(EXAMPLES / f"{name}.yaml")
    assert _typed(memoised) == _typed(afresh)
    assert [(str(g), g.site) for g in memoised.meta["guards"]] == [(str(g), g.site) for g in afresh.meta["guards"]]
    assert memoised.meta["symbols"] == afresh.meta["symbols"]
    assert [str(e) for e in memoised.meta["size_exprs"]] == [str(e) for e in afresh.meta["size_exprs"]]
    assert memoised.meta["export_static"] == afresh.meta["export_static"]
