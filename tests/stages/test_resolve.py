"""Stage 4, resolve: a `Scope` -> a `Graph` whose every name is checked.

The specification, rule by rule:

- a layer reads the previous layer; the first layer reads the sole input; `input:` names others;
- a skip becomes a node right after its target (after the target's earlier skips), and every
  later reader of the target (a layer, another skip, an output) reads the merged value;
- outputs default to the last layer; a skip's policy defaults to the scope's;
- every name error of a scope (and of its block instances, named by qualname) is reported in
  one `SpecError`, each at its line:col.

Scopes come from `expand(validate(load_text(...)))` so locations are real, or are built by hand.
"""

from __future__ import annotations

import pytest

from resgraph.errors import SpecError
from resgraph.expand import LayerItem, Scope, SkipItem, expand
from resgraph.graph import BlockNode, Graph, GraphBuilder, InputNode, LayerNode, SkipNode
from resgraph.loader import Origin, SourceMap, load_text
from resgraph.ops import OPS
from resgraph.resolve import resolve
from resgraph.shapes import infer_shapes
from resgraph.spec import InputDecl, Projection, Skip
from resgraph.validate import validate

HEADER = "resgraph: 1\nname: M\n"


def scope_of(text: str) -> Scope:
    """The top-level scope of a spec (file name `spec.yaml`)."""
    loaded = load_text(text, "spec.yaml")
    return expand(validate(loaded), loaded.source)


def resolved(text: str) -> Graph:
    return resolve(scope_of(text))


def errors(text: str) -> list[str]:
    """Every diagnostic of resolving `text`, as `line:col: message`."""
    with pytest.raises(SpecError) as caught:
        resolved(text)
    return [f"{d.location.line}:{d.location.column}: {d.message}" for d in caught.value.diagnostics]


def edges(graph: Graph) -> list[tuple[str, str, list[str]]]:
    return [(node.name, node.kind.value, node.inputs) for node in graph.nodes.values()]


# --- default chaining and explicit inputs -------------------------------------------------------------

def test_layers_chain_from_the_sole_input() -> None:
    graph = resolved(HEADER + "inputs: {x: [4]}\nlayers:\n"
                              "  - a: {op: Linear, out_features: 4}\n  - b: {op: ReLU}\n  - c: {op: Tanh}\n")
    assert edges(graph) == [("x", "input", []), ("a", "layer", ["x"]), ("b", "layer", ["a"]), ("c", "layer", ["b"])]
    assert graph.inputs == ["x"] and graph.outputs == ["c"]
    assert isinstance(graph.nodes["x"], InputNode) and graph.nodes["x"].decl == InputDecl(shape=[4])
    assert all(isinstance(graph.nodes[n], LayerNode) for n in "abc")
    assert graph.nodes["a"].layer == OPS["Linear"].model_validate({"op": "Linear", "out_features": 4})


def test_explicit_input_names_one_or_several_nodes_and_the_chain_resumes_after_it() -> None:
    graph = resolved(HEADER + "inputs: {x: [4], y: [4]}\nlayers:\n"
                              "  - a: {op: ReLU, input: y}\n  - b: {op: Tanh}\n"
                              "  - c: {op: add, input: [b, x, a]}\n  - d: {op: Sigmoid}\n")
    assert edges(graph)[2:] == [("a", "layer", ["y"]), ("b", "layer", ["a"]), ("c", "layer", ["b", "x", "a"]),
                                ("d", "layer", ["c"])]
    assert graph.inputs == ["x", "y"]


def test_a_learned_tensor_reads_nothing() -> None:
    graph = resolved(HEADER + "inputs: {x: [3, 4]}\nlayers:\n"
                              "  - cls: {op: parameter, shape: [1, 4]}\n  - cat: {op: concat, input: [cls, x]}\n")
    assert edges(graph)[1:] == [("cls", "layer", []), ("cat", "layer", ["cls", "x"])]


def test_chunk_pieces_each_read_the_chunked_value() -> None:
    graph = resolved(HEADER + "inputs: {x: [4, 2]}\nlayers:\n  - a: {op: ReLU}\n"
                              "  - parts: {op: chunk, chunks: 2, outputs: [p, q]}\n  - m: {op: mul, input: [p, q]}\n")
    assert edges(graph)[1:] == [("a", "layer", ["x"]), ("p", "layer", ["a"]), ("q", "layer", ["a"]),
                                ("m", "layer", ["p", "q"])]


# --- skips --------------------------------------------------------------------------------------------

def test_a_skip_is_placed_right_after_its_target_and_later_readers_see_the_merge() -> None:
    graph = resolved(HEADER + "inputs: {x: [4]}\nlayers:\n"
                              "  - a: {op: Linear, out_features: 4}\n  - b: {op: ReLU}\n  - c: {op: Tanh}\n"
                              "skips:\n  - s: {from: x, to: b}\n")
    assert edges(graph) == [("x", "input", []), ("a", "layer", ["x"]), ("b", "layer", ["a"]),
                            ("s", "skip", ["b", "x"]), ("c", "layer", ["s"])]
    skip = graph.nodes["s"]
    assert isinstance(skip, SkipNode) and skip.target == "b" and skip.var == "b"
    assert skip.skip.source == "x" and skip.policy is Projection.auto


def test_skips_into_one_target_follow_each_other_in_the_order_listed() -> None:
    # s2 is listed first in the file but the order is the skips' list order: s2 then s1.
    graph = resolved(HEADER + "inputs: {x: [4]}\nlayers:\n"
                              "  - a: {op: ReLU}\n  - b: {op: Tanh}\n  - c: {op: Sigmoid}\n"
                              "skips:\n  - s2: {from: x, to: b}\n  - s1: {from: a, to: b}\n"
                              "  - s3: {from: a, to: c}\n")
    assert edges(graph) == [("x", "input", []), ("a", "layer", ["x"]), ("b", "layer", ["a"]),
                            ("s2", "skip", ["b", "x"]), ("s1", "skip", ["s2", "a"]),
                            ("c", "layer", ["s1"]), ("s3", "skip", ["c", "a"])]
    assert graph.outputs == ["s3"]  # the default output is the last layer's merged value


def test_a_skip_from_a_merged_target_reads_the_merged_value() -> None:
    graph = resolved(HEADER + "inputs: {x: [4]}\nlayers:\n"
                              "  - a: {op: ReLU}\n  - b: {op: Tanh}\n  - c: {op: add, input: [a, b]}\n"
                              "skips:\n  - into_a: {from: x, to: a}\n  - from_a: {from: a, to: b}\n")
    assert edges(graph)[1:] == [("a", "layer", ["x"]), ("into_a", "skip", ["a", "x"]),
                                ("b", "layer", ["into_a"]), ("from_a", "skip", ["b", "into_a"]),
                                ("c", "layer", ["into_a", "from_a"])]


def test_explicit_outputs_read_merged_values_in_the_order_listed() -> None:
    graph = resolved(HEADER + "inputs: {x: [4]}\nlayers:\n  - a: {op: ReLU}\n  - b: {op: Tanh}\n"
                              "skips:\n  - s: {from: x, to: a}\noutputs: [b, a, x]\n")
    assert graph.outputs == ["b", "s", "x"]


def test_a_skip_without_projection_takes_the_scope_default_and_its_own_wins() -> None:
    graph = resolved(HEADER + "inputs: {x: [4]}\ndefaults: {projection: pad}\nlayers:\n"
                              "  - a: {op: ReLU}\n  - b: {op: Tanh}\n"
                              "skips:\n  - s: {from: x, to: a}\n  - t: {from: x, to: b, projection: conv}\n")
    assert graph.nodes["s"].policy is Projection.pad and graph.nodes["t"].policy is Projection.conv


def test_a_scope_built_by_hand_resolves_like_a_loaded_one() -> None:
    origin = Origin(SourceMap("hand.yaml"), ())
    linear = OPS["Linear"].model_validate({"op": "Linear", "out_features": 4})
    relu = OPS["ReLU"].model_validate({"op": "ReLU"})
    scope = Scope(name="Hand", inputs={"x": InputDecl(shape=[4])},
                  layers=[LayerItem("fc", linear, origin.child("layers", 0, "fc")),
                          LayerItem("act", relu, origin.child("layers", 1, "act"))],
                  skips=[SkipItem("res", Skip.model_validate({"from": "x", "to": "fc"}),
                                  origin.child("skips", 0, "res"))],
                  outputs=None, projection=Projection.crop, origin=origin)
    graph = resolve(scope)
    assert graph.name == "Hand" and graph.file == "hand.yaml" and graph.qualname == "" and graph.block is None
    assert edges(graph) == [("x", "input", []), ("fc", "layer", ["x"]), ("res", "skip", ["fc", "x"]),
                            ("act", "layer", ["res"])]
    assert graph.nodes["res"].policy is Projection.crop and graph.outputs == ["act"]


# --- block instances ----------------------------------------------------------------------------------

BLOCKS = HEADER + """\
inputs: {x: [4]}
blocks:
  unit:
    params: {width: 4}
    layers:
      - fc: {op: Linear, out_features: "${width}"}
      - act: {op: ReLU}
    skips:
      - s: {from: x, to: act}
layers:
  - stage: {block: unit, repeat: 2}
  - head: {block: unit, with: {width: 2}}
"""


def test_block_calls_become_block_nodes_whose_instances_shape_inference_makes() -> None:
    """A block's body may read its input's shape, so its instances are expanded and resolved when
    shape inference reaches the call: resolving leaves a recipe for them."""
    graph = resolved(BLOCKS)
    assert edges(graph) == [("x", "input", []), ("stage", "block", ["x"]), ("head", "block", ["stage"])]
    stage, head = graph.nodes["stage"], graph.nodes["head"]
    assert isinstance(stage, BlockNode) and isinstance(head, BlockNode)
    assert stage.repeated and not head.repeated
    assert stage.instances == [] and stage.recipe.count == 2 and head.recipe.count == 1
    infer_shapes(graph)
    assert [(g.qualname, g.name, g.block, g.params) for g in stage.instances + head.instances] == [
        ("stage.0.", "Unit", "unit", {"width": 4}), ("stage.1.", "Unit", "unit", {"width": 4}),
        ("head.", "Unit", "unit", {"width": 2})]
    instance = stage.instances[0]
    assert edges(instance) == [("x", "input", []), ("fc", "layer", ["x"]), ("act", "layer", ["fc"]),
                               ("s", "skip", ["act", "x"])]
    assert instance.nodes["x"].decl is None  # the caller supplies a block input's type
    assert instance.outputs == ["s"] and graph.outputs == ["head"]
    assert [name for name, _ in graph.subgraphs()] == ["stage.0", "stage.1", "head"]


def shaped_errors(text: str) -> list[str]:
    """Every diagnostic of resolving `text` and inferring its shapes (which instantiates blocks)."""
    with pytest.raises(SpecError) as caught:
        infer_shapes(resolved(text))
    return [f"{d.location.line}:{d.location.column}: {d.message}" for d in caught.value.diagnostics]


def test_errors_inside_block_instances_are_named_by_qualname_once_for_the_first_instance() -> None:
    """The second repeat reads a broken first one, so it is not reported again; nor is the same line's
    same mistake in another call's instance (`head.act`), which was reported once per call."""
    text = BLOCKS.replace("- act: {op: ReLU}", "- act: {op: ReLU, input: fcc}")
    resolved(text)  # the body is resolved per instance, when shapes reach the call
    assert shaped_errors(text) == ["9:32: layer 'stage.0.act': unknown node 'fcc'; did you mean 'fc'?"]


def test_a_block_with_several_outputs_gives_one_node_per_value() -> None:
    """Its values follow the call, named as references read them; the spec's default output (its
    last layer) is all of them."""
    text = BLOCKS.replace("      - s: {from: x, to: act}\n", "      - s: {from: x, to: act}\n    outputs: [fc, act]\n")
    text = text.replace("  - stage: {block: unit, repeat: 2}\n", "")  # repeat refuses it, in expand
    graph = resolved(text)
    assert edges(graph) == [("x", "input", []), ("head", "block", ["x"]), ("head.fc", "layer", ["head"]),
                            ("head.act", "layer", ["head"])]
    head = graph.nodes["head"]
    assert isinstance(head, BlockNode) and head.values == ["head.fc", "head.act"]
    assert [graph.nodes[v].var for v in head.values] == ["head_fc", "head_act"]
    assert graph.outputs == ["head.fc", "head.act"]
    infer_shapes(graph)
    assert head.instances[0].outputs == ["fc", "s"]
    assert [graph.nodes[v].meta["type"].shape for v in head.values] == [(2,), (2,)]


# --- name errors, all at once -------------------------------------------------------------------------

def test_duplicate_and_reserved_names_are_reported_together_each_at_its_key() -> None:
    text = HEADER + ("inputs: {x: [4]}\nlayers:\n"
                     "  - a: {op: ReLU}\n"  # line 5
                     "  - a: {op: Tanh}\n"
                     "  - eval: {op: ReLU}\n"
                     "  - lambda: {op: ReLU}\n"
                     "  - x: {op: ReLU}\n"
                     "skips:\n"
                     "  - a: {from: x, to: eval}\n")  # line 11
    assert errors(text) == [
        "6:5: layer 'a': the name is already used by the layer at line 5",
        "7:5: layer 'eval': the name is reserved (it would shadow a torch.nn.Module attribute)",
        "8:5: layer 'lambda': the name is reserved (it would shadow a Python keyword)",
        "9:5: layer 'x': the name is already used by the input at line 3",
        "11:5: skip 'a': the name is already used by the layer at line 5",
    ]


def test_every_reference_error_is_reported_at_once_at_the_reference() -> None:
    text = HEADER + ("inputs: {x: [4]}\nlayers:\n"
                     "  - conv: {op: ReLU}\n"  # line 5
                     "  - b: {op: ReLU, input: cnv}\n"  # unknown, with a suggestion
                     "  - c: {op: ReLU, input: d}\n"  # a cycle c -> d -> c
                     "  - d: {op: ReLU, input: c}\n"
                     "  - e: {op: ReLU, input: f}\n"  # a forward reference
                     "  - f: {op: ReLU, input: conv}\n"
                     "  - g: {op: ReLU, input: g}\n"  # reads itself
                     "  - h: {op: add, input: [f, s]}\n"  # a skip is not a node (located at the list)
                     "skips:\n"
                     "  - s: {from: f, to: b}\n"  # line 14: from a later node
                     "  - t: {from: x, to: cnv}\n"
                     "  - u: {from: s, to: f}\n"
                     "  - v: {from: conv, to: x}\n"
                     "  - w: {from: d, to: d}\n"
                     "outputs: [zz, s, g, g]\n")  # line 19
    assert errors(text) == [
        "6:26: layer 'b': unknown node 'cnv'; did you mean 'conv'?",
        "7:26: layer 'c': cycle c -> d -> c",
        "9:26: layer 'e': reads 'f', which comes later",
        "11:26: layer 'g': reads its own output (a cycle)",
        "12:25: layer 'h': 's' is a skip edge, not a node",
        "14:15: skip 's': from: 'f' comes after to: 'b'",
        "15:22: skip 't': to: unknown node 'cnv'; did you mean 'conv'?",
        "16:15: skip 'u': from: 's' is a skip edge, not a node",
        "17:25: skip 'v': to: 'x' is an input; a skip merges into a layer",
        "18:5: skip 'w': from and to are both 'd'; a skip joins two different nodes",
        "19:11: outputs: unknown node 'zz'",
        "19:15: outputs: 's' is a skip edge, not a node",
        "19:21: outputs: 'g' is listed twice",
    ]


def test_declaration_and_reference_errors_are_reported_together() -> None:
    text = HEADER + "inputs: {x: [4]}\nlayers:\n  - a: {op: ReLU}\n  - a: {op: Tanh}\n  - b: {op: ReLU, input: c}\n"
    assert errors(text) == ["6:5: layer 'a': the name is already used by the layer at line 5",
                            "7:26: layer 'b': unknown node 'c'"]


def test_reference_errors_carry_hints_that_say_how_to_fix_them() -> None:
    text = HEADER + ("inputs: {x: [4]}\nlayers:\n  - a: {op: ReLU, input: c}\n  - b: {op: ReLU, input: s}\n"
                     "  - c: {op: ReLU, input: x}\nskips:\n  - s: {from: c, to: a}\n")
    with pytest.raises(SpecError) as caught:
        resolved(text)
    hints = {d.message: d.hint for d in caught.value.diagnostics}
    assert hints == {
        "layer 'a': reads 'c', which comes later": "move 'c' above 'a'; layers run in the order listed",
        "layer 'b': 's' is a skip edge, not a node": "read its target instead: 'a' holds the merged value",
        "skip 's': from: 'c' comes after to: 'a'": "a skip carries an earlier node's output forward; swap from and to",
    }


def test_a_first_layer_of_a_spec_with_several_inputs_must_name_its_input() -> None:
    text = HEADER + "inputs: {x: [4], y: [4]}\nlayers:\n  - a: {op: ReLU}\n"
    with pytest.raises(SpecError) as caught:
        resolved(text)
    (first,) = caught.value.diagnostics
    assert str(first.location) == "spec.yaml:5:5"
    assert first.message == "layer 'a': the spec has several inputs (x, y); say which this layer reads"
    assert first.hint == "add `input: x`"


def test_a_layer_given_the_wrong_number_of_inputs_is_reported_at_its_input_key() -> None:
    text = HEADER + "inputs: {x: [4], y: [4]}\nlayers:\n  - a: {op: ReLU, input: [x, y]}\n"
    assert errors(text) == ["5:19: layer 'a' (ReLU): takes 1 input(s), got 2"]


def test_errors_of_a_hand_built_scope_are_located_in_its_file() -> None:
    origin = Origin(SourceMap("hand.yaml"), ())
    relu = OPS["ReLU"].model_validate({"op": "ReLU", "input": "nope"})
    scope = Scope(name="Hand", inputs={"x": InputDecl(shape=[4])},
                  layers=[LayerItem("a", relu, origin.child("layers"))], skips=[], outputs=None,
                  projection=Projection.auto, origin=origin)
    with pytest.raises(SpecError) as caught:
        resolve(scope)
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic.location) == "hand.yaml" and diagnostic.message == "layer 'a': unknown node 'nope'"


# --- GraphBuilder builds what the resolver builds ---------------------------------------------------------------

def test_graph_builder_builds_what_the_resolver_builds() -> None:
    text = HEADER + ("inputs: {x: [4]}\nlayers:\n  - a: {op: ReLU}\n  - b: {op: Tanh, input: x}\n"
                     "  - m: {op: add, input: [a, b]}\n  - out: {op: Sigmoid}\n"
                     "skips:\n  - s: {from: x, to: m}\n")
    b = GraphBuilder("M")
    b.input("x", [4])
    b.layer("a", "ReLU")
    b.layer("b", "Tanh", "x")
    b.layer("m", "add", ["a", "b"], input=["a", "b"])
    b.skip("s", "x", "m")
    b.layer("out", "Sigmoid")
    built, loaded = b.build(), resolved(text)
    assert edges(built) == edges(loaded) and built.outputs == loaded.outputs == ["out"]
    assert [n.detail() for n in built.nodes.values()] == [n.detail() for n in loaded.nodes.values()]  # the ops


def test_graph_builder_reads_a_layers_own_input_argument() -> None:
    b = GraphBuilder("M")
    b.input("x", [4])
    b.layer("a", "ReLU")
    b.layer("b", "Tanh", "x")
    b.layer("m", "add", input=["a", "b"])
    assert b.build().nodes["m"].inputs == ["a", "b"]
