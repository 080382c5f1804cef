"""What keeps large builds lean gives exactly what the plain paths give.

- Graph nodes and source origins have slots, no `__dict__` (a 10,000-layer chain holds 15,000 of
  each), and still copy and pickle.
- Code generation computes each type's facts (shape comment, elements per sample) once per type
  object, and its text is the same when every node has a type object of its own.
- A long forward is written and compiled in parts: see test_forward_parts.py.
- The typed spec holds the layer and skip entries as given, not copies, and nothing changes them.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
from typing import Any

import pytest
import torch

import resgraph
import resgraph.codegen as codegen
from conftest import BUILDING_EXAMPLES, EXAMPLES, small_params
from resgraph.codegen import generate_forward, in_place_adds
from resgraph.errors import SpecError
from resgraph.graph import BlockNode, Graph, GraphBuilder, InputNode, LayerNode, SkipNode
from resgraph.loader import Origin, SourceMap
from resgraph.pipeline import check_loaded, load
from resgraph.shapes import infer_shapes
from resgraph.sizes import solve_sizes


def chain(n: int, width: int = 8) -> dict[str, Any]:
    layers = [{f"l{i}": {"op": "Linear", "out_features": width}} for i in range(n)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, n - 2, 2)]
    return {"resgraph": 1, "name": "Chain", "inputs": {"x": [width]}, "layers": layers, "skips": skips}


def checked(spec: dict[str, Any]) -> Graph:
    graph = check_loaded(load(spec), None)[1]
    graph.meta["sizes"] = solve_sizes(graph)
    return graph


def test_nodes_and_origins_have_no_instance_dict() -> None:
    graph = checked(chain(6))
    kinds = {type(node) for node in graph.nodes.values()}
    assert kinds == {InputNode, LayerNode, SkipNode}
    for node in graph.nodes.values():
        assert not hasattr(node, "__dict__"), type(node).__name__
        assert not hasattr(node.origin, "__dict__")
    assert all("__slots__" in vars(kind) for kind in (InputNode, LayerNode, SkipNode, BlockNode))
    with pytest.raises(AttributeError):
        graph.nodes["l0"].note = "x"  # type: ignore[attr-defined]  # a typo'd attribute is an error now


def test_origins_copy_and_pickle_through_their_constructor() -> None:
    source = SourceMap("spec.yaml", values={("layers", 0): (3, 5)})
    origin = Origin(source, ("layers",)).child(0, "fc")
    for clone in (copy.copy(origin), copy.deepcopy(origin), pickle.loads(pickle.dumps(origin))):
        assert clone.path == ("layers", 0, "fc") and clone.locate() == origin.locate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        origin.path = ()  # type: ignore[misc]


def test_graphs_of_slotted_nodes_copy_and_pickle() -> None:
    graph = checked(chain(6))
    for clone in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph))):
        assert list(clone.nodes) == list(graph.nodes)
        assert clone.nodes["s0"].var == "l2" and clone.nodes["l3"].inputs == graph.nodes["l3"].inputs
        assert generate_forward(clone) == generate_forward(graph)


def with_own_types(graph: Graph) -> Graph:
    """A copy of `graph` in which no two nodes share a type object (as if nothing were memoised)."""
    clone = copy.deepcopy(graph)
    for node in clone.nodes.values():
        node.meta["type"] = dataclasses.replace(node.meta["type"])
    return clone


@pytest.mark.parametrize("width", [8, 16_384])  # 16,384: every value is LARGE, so the `del` lines are written too
def test_type_facts_are_computed_once_per_type_object_with_the_same_text(width: int,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    graph = checked(chain(300, width))
    types = {id(node.meta["type"]) for node in graph.nodes.values()}
    assert len(types) < 10  # shape inference shares equal results: what the cache relies on
    counted: list[str] = []
    plain = codegen.shape_comment

    def counting(node: Any) -> str:
        counted.append(node.name)
        return plain(node)

    monkeypatch.setattr(codegen, "shape_comment", counting)
    source = generate_forward(graph)
    assert len(counted) <= len(types)
    separate = with_own_types(graph)
    counted.clear()
    assert generate_forward(separate) == source
    assert len(counted) == sum(1 for node in separate.nodes.values() if not isinstance(node, InputNode))
    for shapes in (True, False):
        for in_place in (True, False):
            assert generate_forward(separate, shapes=shapes, in_place=in_place) == generate_forward(
                graph, shapes=shapes, in_place=in_place)
    assert in_place_adds(separate) == in_place_adds(graph) == {f"s{i}" for i in range(0, 298, 2)}
    if width == 16_384:
        assert "    del l0\n" in source


def test_every_line_of_a_chain_is_its_node_statement() -> None:
    """The generated text of a chain read line by line: one statement per node, in graph order."""
    graph = checked(chain(40))
    lines = generate_forward(graph).splitlines()
    body = [line for line in lines[1:-1] if not line.lstrip().startswith(("if ", "raise "))]
    expected = []
    for node in graph.nodes.values():
        if isinstance(node, LayerNode):
            source = graph.nodes[node.inputs[0]].var
            expected.append(f"    {node.name} = self.{node.name}({source})  # (N, 8)")
        elif isinstance(node, SkipNode):
            expected.append(f"    {node.target} += {node.skip.source}  # (N, 8) skip {node.name}: add "
                            f"{node.skip.source} (identity)")
    assert body == expected and lines[-1] == "    return l39"


def test_a_name_that_is_no_identifier_is_still_refused() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    graph = infer_shapes(b.build())
    graph.nodes["fc"].variable = "fc\n"  # `$` in a pattern would let it through
    with pytest.raises(AssertionError, match="unvalidated name reached codegen: 'fc\\\\n'"):
        generate_forward(graph)


def test_the_typed_spec_holds_the_entries_as_given() -> None:
    """A 10,000-layer spec's entries are not copied into the typed spec (the copy held 8 MiB for the
    model's life): its layers and skips lists hold the very entries validated."""
    spec = chain(6)
    model = resgraph.build(spec, seed=0)
    assert all(a is b for a, b in zip(model.spec.layers, spec["layers"], strict=True))
    assert all(a is b for a, b in zip(model.spec.skips, spec["skips"], strict=True))


@pytest.mark.parametrize("example", [*BUILDING_EXAMPLES, "tutorial_literal.yaml"])
def test_checking_and_building_never_change_the_spec_given(example: str) -> None:
    """Nothing resgraph does to a spec given as a dict changes it: the typed spec holds its entries,
    and every stage only reads them (a failing build too: tutorial_literal)."""
    path = EXAMPLES / example
    data = load(path).data
    before = copy.deepcopy(data)
    try:
        model = resgraph.build(data, params=small_params(example), file=str(path), device="meta")
        resgraph.summary(model)
        resgraph.to_python(model)
    except SpecError:
        assert example == "tutorial_literal.yaml"
    else:
        assert example != "tutorial_literal.yaml"
    assert data == before


def test_a_spec_with_invalid_entries_is_not_changed_by_their_removal() -> None:
    spec = chain(6)
    spec["layers"][2] = {"l2": {"op": "Linear", "out_features": "eight"}}
    spec["skips"].append({"bad name": {"from": "l0", "to": "l1"}})
    before = copy.deepcopy(spec)
    with pytest.raises(SpecError) as failure:
        resgraph.build(spec)
    assert len(failure.value.diagnostics) >= 2
    assert spec == before


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The entry templates `concrete` evaluates, and the bodies it types, in order."""
    from resgraph import evaluate

    seen: dict[str, list[Any]] = {"evaluated": [], "typed": []}
    evaluate_tree, validate_python = evaluate.evaluate_tree, type(evaluate.LAYER).validate_python

    def evaluating(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, dict) and ("op" in value or "from" in value):
            seen["evaluated"].append(value)
        return evaluate_tree(value, *args, **kwargs)

    def typing(self: Any, body: Any) -> Any:
        seen["typed"].append(body)
        return validate_python(self, body)

    monkeypatch.setattr(evaluate, "evaluate_tree", evaluating)
    monkeypatch.setattr(type(evaluate.LAYER), "validate_python", typing)
    return seen


def test_equal_templates_without_expressions_are_typed_once_and_never_evaluated(work: dict[str, list[Any]]) -> None:
    graph = checked(chain(300))
    assert work == {"evaluated": [], "typed": [{"op": "Linear", "out_features": 8}]}  # 1 of 300 layers
    assert all(graph.nodes[f"l{i}"].layer is graph.nodes["l0"].layer for i in range(300))
    assert [graph.nodes[f"s{i}"].skip.source for i in range(0, 298, 2)] == [f"l{i}" for i in range(0, 298, 2)]


def test_templates_with_expressions_are_evaluated_at_each_entry(work: dict[str, list[Any]]) -> None:
    spec = chain(30)
    spec["params"] = {"width": 8}
    spec["layers"] = [{f"l{i}": {"op": "Linear", "out_features": "${width}" if i % 2 else 8}} for i in range(30)]
    graph = checked(spec)
    assert len(work["evaluated"]) == 15  # the odd ones; the even ones are equal as written
    assert work["typed"] == [{"op": "Linear", "out_features": 8}]  # equal results: typed once, one object
    assert all(graph.nodes[f"l{i}"].layer is graph.nodes["l0"].layer for i in range(30))


def test_a_template_typed_as_written_is_scaled_once_and_another_written_as_its_result_is_scaled_too() -> None:
    spec = {"resgraph": 1, "name": "Scaled", "scale": {"width": 0.5}, "inputs": {"x": [3, 8, 8]},
            "layers": [{"c1": {"op": "Conv2d", "out_channels": 64, "kernel_size": 1}},
                       {"c2": {"op": "Conv2d", "out_channels": 32, "kernel_size": 1}},
                       {"c3": {"op": "Conv2d", "out_channels": 64, "kernel_size": 1}},
                       {"c4": {"op": "Conv2d", "out_channels": 32, "kernel_size": 1}}]}
    graph = checked(spec)
    assert [graph.nodes[f"c{i}"].layer.out_channels for i in (1, 2, 3, 4)] == [32, 16, 32, 16]


def test_changing_a_dict_spec_after_the_build_changes_nothing_built() -> None:
    """The typed spec holds the entries given, but the graph, code and summary were typed from
    copies: lists a layer keeps (a generic op's arguments) are its own."""
    spec = {"resgraph": 1, "name": "Padded", "inputs": {"x": [3, 8, 8]},
            "layers": [{"pad": {"op": "ConstantPad2d", "padding": [1, 1, 1, 1], "value": 0.0}},
                       {"pad2": {"op": "ConstantPad2d", "padding": [1, 1, 1, 1], "value": 0.0}}]}
    model = resgraph.build(spec)
    before = (str(resgraph.summary(model)), model.code, repr(model.graph.nodes["pad"].layer))
    spec["layers"][0]["pad"]["padding"][:] = [7, 7, 7, 7]
    assert (str(resgraph.summary(model)), model.code, repr(model.graph.nodes["pad"].layer)) == before
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3, 12, 12)


@pytest.mark.parametrize(("entry", "message"), [
    ({}, "an entry is one `NAME: {...}` pair"), ("fc", "an entry is one `NAME: {...}` pair"),
    ({"a": {}, "b": {}}, "an entry is one `NAME: {...}` pair"),
    ({"bad name": {}}, "'bad name' is not a valid name"), ({"fc": 3}, "fc: the body is a mapping, not int")])
def test_a_spec_model_built_directly_still_refuses_malformed_entries(entry: Any, message: str) -> None:
    from pydantic import ValidationError

    from resgraph.spec import BlockDef, Spec

    for section in ("layers", "skips"):
        with pytest.raises(ValidationError, match=re.escape(message)):
            Spec.model_validate({"resgraph": 1, "name": "N", "inputs": {"x": [4]},
                                 "layers": [{"fc": {"op": "Linear", "out_features": 4}}], section: [entry]})
        with pytest.raises(ValidationError, match=re.escape(message)):
            BlockDef.model_validate({"layers": [{"fc": {"op": "Linear", "out_features": 4}}], section: [entry]})
