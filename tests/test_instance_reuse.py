"""Equal block instances are made once: shape inference copies an instance whose call, context names
read, `with:` values and input types equal an earlier one's (`BlockRecipe.equal_instances_by`,
`shapes._copy_instance`), and the copies share the generated forward's source. The models built
are exactly the ones made without the shortcut: same weights from a seed, same outputs, same code,
every instance named."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import resgraph
from resgraph import codegen, expand, shapes
from resgraph.errors import SpecError
from resgraph.graph import Graph


def mlp(depth: int, fc1: Any = "${width}", with_: dict[str, Any] | None = None) -> dict[str, Any]:
    """The benchmark's residual MLP, with fc1's width as given (an expression may read `index`)."""
    return {
        "resgraph": 1, "name": "ResidualMLP", "params": {"width": 8, "depth": depth},
        "blocks": {"block": {
            "params": {"width": 8},
            "layers": [{"fc1": {"op": "Linear", "out_features": fc1}}, {"act": {"op": "ReLU"}},
                       {"fc2": {"op": "Linear", "out_features": "${width}"}}],
            "skips": [{"residual": {"from": "x", "to": "fc2"}}]}},
        "inputs": {"x": ["${width}"]},
        "layers": [{"blocks": {"block": "block", "repeat": "${depth}", "with": with_ or {"width": "${width}"}}}]}


# Nested blocks: the inner block reads `block_index`, inherited from its top-level instance, so the
# stages differ from one another, but the inner repeat's instances inside one stage are equal.
NESTED = {
    "resgraph": 1, "name": "Nested", "params": {"width": 8},
    "blocks": {
        "inner": {"params": {"w": "required"},
                  "layers": [{"fc": {"op": "Linear", "out_features": "${w}"}}, {"act": {"op": "GELU"}},
                             {"drop": {"op": "Dropout", "p": "${0.1 * block_index / num_blocks}"}}],
                  "skips": [{"res": {"from": "x", "to": "fc"}}]},
        "plain": {"layers": [{"fc": {"op": "Linear", "out_features": "${in_features}"}}, {"act": {"op": "Tanh"}}]},
        "stage": {"params": {"w": "required", "n": 2},
                  "layers": [{"first": {"op": "Linear", "out_features": "${w}"}},
                             {"body": {"block": "inner", "repeat": "${n}", "with": {"w": "${w}"}}},
                             {"norm": {"op": "LayerNorm"}}]},
        "pair": {"layers": [{"a": {"op": "Linear", "out_features": 6}},
                            {"b": {"op": "Linear", "out_features": 6, "input": "x"}}],
                 "outputs": ["a", "b"]},
        "twice": {"layers": [{"fc": {"op": "Linear", "out_features": 6}}, {"p": {"block": "pair"}},
                             {"sum": {"op": "add", "input": ["p.a", "p.b"]}},
                             {"deep": {"block": "plain", "repeat": 2}}]},
    },
    "inputs": {"x": ["${width}"]},
    "layers": [{"s1": {"block": "stage", "repeat": 3, "with": {"w": 12}}},
               {"s2": {"block": "stage", "repeat": 2, "collect": True, "with": {"w": "${width}", "n": 3}}},
               {"t": {"block": "twice", "repeat": 4, "input": "s2.1"}},
               {"head": {"op": "Linear", "out_features": 5}}]}


# Conv stages at symbolic sizes (H and W are free): each stage's first instance strides, the others
# are equal (their input sizes are one expression), as in ResNet.
CONVS = {
    "resgraph": 1, "name": "Convs",
    "blocks": {"basic": {
        "params": {"planes": "required", "stride": 1},
        "layers": [{"conv1": {"op": "Conv2d", "out_channels": "${planes}", "kernel_size": 3, "stride": "${stride}",
                              "padding": 1, "bias": False}},
                   {"bn1": {"op": "BatchNorm2d"}}, {"relu1": {"op": "ReLU"}},
                   {"conv2": {"op": "Conv2d", "out_channels": "${planes}", "kernel_size": 3, "padding": 1}},
                   {"bn2": {"op": "BatchNorm2d"}}],
        "skips": [{"downsample": {"from": "x", "to": "bn2"}}]}},
    "inputs": {"x": [3, 20, 20]},
    "layers": [{"stem": {"op": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}},
               {"layer1": {"block": "basic", "repeat": 3, "with": {"planes": 8}}},
               {"layer2": {"block": "basic", "repeat": 3,
                           "with": {"planes": 16, "stride": "${2 if index == 0 else 1}"}}},
               {"pool": {"op": "AdaptiveAvgPool2d", "output_size": 1}}, {"flat": {"op": "Flatten"}},
               {"fc": {"op": "Linear", "out_features": 4}}]}


@pytest.fixture
def count_work(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many instances are expanded and resolved, and how many forwards generated (not served
    from an equal instance's)."""
    counts = {"instantiate": 0, "resolve": 0, "forward": 0}

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(shapes, "instantiate", counted("instantiate", shapes.instantiate))
    monkeypatch.setattr(shapes, "resolve", counted("resolve", shapes.resolve))
    monkeypatch.setattr(codegen, "variables_of", counted("forward", codegen.variables_of))  # once per generation
    return counts


@pytest.fixture
def no_reuse(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Turns the shortcut off: every instance is expanded, resolved and typed anew, as before it."""
    def turn_off() -> None:
        monkeypatch.setattr(expand.BlockRecipe, "equal_instances_by", lambda self, index: None)
    yield turn_off


def test_equal_instances_are_made_and_generated_once(count_work: dict[str, int]) -> None:
    model = resgraph.build(mlp(200), seed=0)
    # The first instance is expanded and resolved (and the top level resolved); the 199 others copied.
    assert count_work["instantiate"] == 1 and count_work["resolve"] == 1
    # One forward for the top level, one for all 200 instances.
    assert count_work["forward"] == 2
    assert [name for name, _ in model.graph.subgraphs()] == [f"blocks.{i}" for i in range(200)]
    assert {model.blocks[i].code for i in range(200)} == {model.blocks[0].code}


def test_instances_that_read_their_index_are_each_made(count_work: dict[str, int]) -> None:
    model = resgraph.build(mlp(20, fc1="${8 + index}"), seed=0)
    assert count_work["instantiate"] == 20 and count_work["resolve"] == 20
    assert [model.blocks[i].fc1.out_features for i in range(20)] == [8 + i for i in range(20)]


@pytest.mark.parametrize(("width", "made"), [("${8 if index % 2 == 0 else 8}", 1), ("${8 + index % 2}", 3)])
def test_with_values_that_read_the_index_count_by_their_values(count_work: dict[str, int], width: str,
                                                               made: int) -> None:
    # `with:` is evaluated per instance in the caller's names; the block's own text reads no index.
    # Widths 8, 9, 8, 9...: instance 1 is given 8 features and instance 2 nine (the skip projects
    # them), so instances 0, 1 and 2 differ, and 3, 4, 5 equal 1, 2, 1 (as ResNet's stages, whose
    # first instance strides and the others do not).
    model = resgraph.build(mlp(6, with_={"width": width}), seed=0)
    assert count_work["instantiate"] == made
    assert [model.blocks[i].fc2.out_features for i in range(6)] == [8 if i % 2 == 0 or made == 1 else 9
                                                                     for i in range(6)]


def test_nested_instances_are_copied_where_equal_and_made_where_not(count_work: dict[str, int]) -> None:
    model = resgraph.build(NESTED, seed=0)
    made = count_work["instantiate"]
    # s1's and s2's stages read block_index (through `inner`): each stage is made, and inside each,
    # its first inner instance (the others equal it). `twice` reads nothing that varies, but its
    # first instance is given 8 features and the others 6: t.0 and t.1 are made (each with its
    # `pair` and first `plain`), t.2 and t.3 are copies of t.1.
    assert made == (3 + 3) + (2 + 2) + 2 * (1 + 1 + 1)
    names = [name for name, _ in model.graph.subgraphs()]
    assert "s1.2.body.1" in names and "s2.1.body.2" in names and "t.3.p" in names and "t.3.deep.1" in names
    drops = [model.s1[i].body[0].drop.p for i in range(3)]
    assert drops == sorted(set(drops))  # different per stage: those were not shared


def graph_facts(graph: Graph) -> list[Any]:
    """Everything about a graph and its instances that later stages read: names, kinds, inputs,
    qualnames and every meta value, instance by instance."""
    facts: list[Any] = []
    for name, instance in [("", graph), *graph.subgraphs()]:
        nodes = [(n.name, n.kind, n.inputs, n.var, {k: repr(v) for k, v in n.meta.items() if k != "shared"})
                 for n in instance.nodes.values()]
        facts.append((name, instance.qualname, instance.name, instance.block, instance.params, instance.inputs,
                      instance.outputs, nodes, [instance.label(n) for n in instance.nodes.values()]))
    # The decisions made on symbolic sizes, where they were made, and the sizes they allow.
    facts.append([(str(guard), guard.site) for guard in graph.meta["guards"]])
    facts.append([str(expr) for expr in graph.meta["size_exprs"]])
    return facts


def model_facts(model: resgraph.CompiledModule, x: torch.Tensor) -> dict[str, Any]:
    model.eval()
    with torch.no_grad():
        output = model(x)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "output": output,
            "sizes": repr(model.graph.meta["sizes"]),  # the input sizes the guards allow
            "codes": [(name, getattr(module, "code", None)) for name, module in model.named_modules()],
            "graph": graph_facts(model.graph), "summary": str(resgraph.summary(model)),
            "python": resgraph.to_python(model)}


@pytest.mark.parametrize("spec", [mlp(30), mlp(12, fc1="${8 + index}"), mlp(7, with_={"width": "${8 + index % 2}"}),
                                  NESTED, CONVS], ids=["mlp", "indexed", "alternating", "nested", "convs"])
def test_the_models_built_are_the_ones_built_without_copies(spec: dict[str, Any],
                                                            no_reuse: Callable[[], None]) -> None:
    x = torch.randn(3, 3, 20, 20) if spec is CONVS else torch.randn(3, 8)
    copied = model_facts(resgraph.build(spec, seed=7), x)
    no_reuse()
    made = model_facts(resgraph.build(spec, seed=7), x)
    assert copied["state"].keys() == made["state"].keys()  # the same parameters, in the same order
    assert list(copied["state"]) == list(made["state"])
    assert all(torch.equal(copied["state"][k], made["state"][k]) for k in made["state"])  # same seeded draws
    assert torch.equal(copied["output"], made["output"])
    for key in ("codes", "graph", "summary", "python", "sizes"):
        assert copied[key] == made[key], key


# The inner call's `with:` reads `index`: the inner call's own instance index, evaluated per inner
# instance. The outer block reads no name that varies, so its instances are equal.
INNER_INDEX = {
    "resgraph": 1, "name": "InnerIndex",
    "blocks": {
        "inner": {"params": {"w": "required"}, "layers": [{"fc": {"op": "Linear", "out_features": "${w}"}}]},
        "outer": {"layers": [{"first": {"op": "Linear", "out_features": 8}},
                             {"body": {"block": "inner", "repeat": 3, "with": {"w": "${8 + index}"}}},
                             {"last": {"op": "Linear", "out_features": 8}}],
                  "skips": [{"res": {"from": "x", "to": "last"}}]}},
    "inputs": {"x": [8]},
    "layers": [{"o": {"block": "outer", "repeat": 4}}]}


def test_an_inner_calls_index_in_its_with_values_is_not_read_by_the_outer_block(
        count_work: dict[str, int], no_reuse: Callable[[], None]) -> None:
    x = torch.randn(2, 8)
    copied = model_facts(resgraph.build(INNER_INDEX, seed=3), x)
    assert count_work["instantiate"] == 1 + 3  # o.0 and its three inner instances; o.1-o.3 are copies
    no_reuse()
    made = model_facts(resgraph.build(INNER_INDEX, seed=3), x)
    assert all(torch.equal(copied["state"][k], made["state"][k]) for k in made["state"])
    assert torch.equal(copied["output"], made["output"])
    for key in ("codes", "graph", "summary", "python", "sizes"):
        assert copied[key] == made[key], key
    model = resgraph.build(INNER_INDEX, seed=3)
    assert [[model.o[i].body[j].fc.out_features for j in range(3)] for i in range(4)] == [[8, 9, 10]] * 4


def test_copies_own_their_nodes_and_meta() -> None:
    graph = resgraph.check(mlp(4))
    instances = [instance for _, instance in graph.subgraphs()]
    first, second = instances[0], instances[1]
    assert [i.qualname for i in instances] == ["blocks.0.", "blocks.1.", "blocks.2.", "blocks.3."]
    for name in first.nodes:
        assert first.nodes[name] is not second.nodes[name]
        assert first.nodes[name].meta is not second.nodes[name].meta
        assert first.nodes[name].inputs is not second.nodes[name].inputs
    second.nodes["fc1"].meta["note"] = "written by a later stage"
    assert "note" not in first.nodes["fc1"].meta
    assert second.label(second.nodes["fc1"]) == "layer 'blocks.1.fc1' (Linear)"
    assert first.meta["shared"] is second.meta["shared"]  # where their one forward is kept


def test_nested_copies_are_named_under_their_own_instance() -> None:
    graph = resgraph.check(NESTED)
    by_name = dict(graph.subgraphs())
    assert by_name["t.2.deep.1"].qualname == "t.2.deep.1."
    assert by_name["t.2.deep.1"] is not by_name["t.0.deep.1"]
    assert by_name["t.2.p"].label(by_name["t.2.p"].nodes["a"]) == "layer 't.2.p.a' (Linear)"


def test_an_error_in_a_later_instance_names_that_instance() -> None:
    # Instance 3 alone widens fc2, and its skip may not be projected: its own name is in the message.
    spec = mlp(6)
    block = spec["blocks"]["block"]
    block["layers"][2]["fc2"]["out_features"] = "${9 if index == 3 else 8}"
    block["skips"][0]["residual"]["projection"] = "none"
    with pytest.raises(SpecError, match=r"skip 'blocks\.3\.residual': cannot add") as raised:
        resgraph.check(spec)
    assert len(raised.value.diagnostics) == 1


def test_the_expansion_bound_counts_copied_instances(monkeypatch: pytest.MonkeyPatch,
                                                     no_reuse: Callable[[], None]) -> None:
    monkeypatch.setattr(expand, "MAX_EXPANDED_NODES", 50)
    resgraph.check(mlp(12))  # 12 instances of 4 layers and skips each: 49 in all with the top level's one
    spec = mlp(12)
    spec["blocks"]["outer"] = {"layers": [{"inner": {"block": "block", "repeat": 4}}]}
    spec["layers"] = [{"blocks": {"block": "outer", "repeat": 4}}]  # 4 x (1 + 4 x 4) + 1 = 69
    messages = []
    for _ in range(2):
        with pytest.raises(SpecError, match="would expand the model to more than 50 layers and skips") as raised:
            resgraph.check(spec)
        messages.append([str(d) for d in raised.value.diagnostics])
        no_reuse()
    assert messages[0] == messages[1]  # reported where and as it was without copies


def test_without_the_shortcut_every_instance_is_made(count_work: dict[str, int], no_reuse: Callable[[], None]) -> None:
    no_reuse()  # (what the comparisons above build against)
    resgraph.build(mlp(10), seed=0)
    assert count_work["instantiate"] == 10 and count_work["forward"] == 11


def test_equal_instances_at_symbolic_sizes_are_copied(count_work: dict[str, int]) -> None:
    model = resgraph.build(CONVS, seed=0)
    # layer1's 3x3 convs keep the size (as expressions too: x.H), so its instances are all given
    # the stem's type: layer1.0 is made, layer1.1 and layer1.2 copied. layer2.0 strides, so
    # layer2.1 (given 16 channels at (x.H - 1) // 2 + 1) is made, and layer2.2 copied.
    assert count_work["instantiate"] == 3
    assert model(torch.randn(1, 3, 36, 28)).shape == (1, 4)  # still any size the guards allow


def test_with_values_equal_in_python_but_shown_apart_are_not_one_instance() -> None:
    # -0.0 == 0.0 (and 1 == 1.0 == True), but a summary shows each instance's own parameters.
    spec = {"resgraph": 1, "name": "Signs", "inputs": {"x": [4]},
            "blocks": {"A": {"params": {"p": 0.0}, "layers": [{"d": {"op": "Dropout", "p": "${p}"}}]}},
            "layers": [{"s": {"block": "A", "repeat": 3, "with": {"p": "${-0.0 if index == 1 else 0.0}"}}}]}
    params = [instance.params["p"] for _, instance in resgraph.build(spec).graph.subgraphs()]
    assert [str(p) for p in params] == ["0.0", "-0.0", "0.0"]
