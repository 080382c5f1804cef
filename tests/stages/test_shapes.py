"""Stage 5, infer shapes: every node typed statically, results written to `node.meta`.

The specification:

- an input's type is its declared shape and dtype; its layout is the declared one, else
  `channels_first` from 3 dims on and `features_last` below; a channels-first input is on the
  grid of scale 1 (`TensorType.scale`), which convs, pools and upsampling then step;
- inference runs once with each free input dim (`free_dims`) as a `SymInt`; afterwards every
  `node.meta["type"]` holds plain ints (the declared size), and `graph.meta` holds the `symbols`,
  the `guards` (every decision made on a symbolic size, with the node it was made at) and the
  `size_exprs`;
- a layer's `meta` holds `type`, `args` (the constructor arguments, inferred sizes included, as
  torch takes them), `params` (its parameter count, None where only building can tell) and
  `storage` (how its output shares memory with its inputs: views, in-place writes, outputs
  autograd keeps);
- a skip's `meta` holds its `projection` plan, the plan's `params` and the merged `type`;
- a block node's instances are typed in a chain, and the block node takes the last one's type;
- a skip the policy refuses is reported with a hint chosen by the refusal's kind: the layers that
  changed the size, and a fix that works for that cause;
- a shape error is reported at its layer (an uncurated op's bad argument at that argument),
  every independent error in one `SpecError`, and nodes downstream of a failure are skipped;
- an in-place op may not overwrite a value that something else still reads.

Graphs are built by hand with `GraphBuilder`; where a test checks line:col, the graph is
resolved from a spec text and `infer_shapes` is called on it directly.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import torch
from torch import nn

from resgraph.errors import Diagnostic, SpecError
from resgraph.expand import expand
from resgraph.graph import Graph, GraphBuilder
from resgraph.loader import load_text
from resgraph.ops import Merge, TensorType
from resgraph.ops.base import Storage, grid_origin
from resgraph.projections import StepKind, plan_projection, step_code
from resgraph.resolve import resolve
from resgraph.shapes import declared_type, free_dims, infer_shapes, total_parameters
from resgraph.spec import BlockCall, InputDecl, Projection
from resgraph.symbolic import Guard, SymInt
from resgraph.validate import validate


def messages(graph: Graph) -> list[str]:
    """The messages of the SpecError that typing `graph` raises."""
    with pytest.raises(SpecError) as caught:
        infer_shapes(graph)
    return [d.message for d in caught.value.diagnostics]


def typed_text(text: str) -> Graph:
    """A graph resolved from a spec text (`spec.yaml`), so its nodes have real positions."""
    loaded = load_text(text, "spec.yaml")
    return resolve(expand(validate(loaded), loaded.source))


def located(graph: Graph) -> list[str]:
    """`line:col: message` of every diagnostic typing `graph` raises."""
    with pytest.raises(SpecError) as caught:
        infer_shapes(graph)
    return [f"{d.location.line}:{d.location.column}: {d.message}" for d in caught.value.diagnostics]


def merge(builder: GraphBuilder, name: str, op: str, inputs: list[str], **args: Any) -> str:
    """A merge layer: its `input` argument and the builder's inputs name the same nodes."""
    return builder.layer(name, op, inputs, input=inputs, **args)


# --- inputs --------------------------------------------------------------------------------------------

def at(*steps: int | Fraction) -> tuple[Fraction, ...]:
    """A grid scale: input pixels per step, per spatial dim."""
    return tuple(Fraction(s) for s in steps)


@pytest.mark.parametrize(("shape", "options", "expected"), [
    ([3, 8, 8], {}, TensorType((3, 8, 8), "float32", "channels_first", at(1, 1))),
    ([2, 4, 4, 4], {}, TensorType((2, 4, 4, 4), "float32", "channels_first", at(1, 1, 1))),
    ([5, 4], {}, TensorType((5, 4), "float32", "features_last")),
    ([4], {}, TensorType((4,), "float32", "features_last")),
    ([16], {"dtype": "int64"}, TensorType((16,), "int64", "features_last")),
    ([8, 8, 3], {"layout": "features_last"}, TensorType((8, 8, 3), "float32", "features_last")),
    ([3, 10], {"layout": "channels_first"}, TensorType((3, 10), "float32", "channels_first", at(1))),
])
def test_an_input_is_typed_by_its_declaration(shape: list[int], options: dict[str, str],
                                              expected: TensorType) -> None:
    b = GraphBuilder("Net")
    b.input("x", shape, **options)
    b.layer("out", "Identity")
    graph = infer_shapes(b.build())
    assert graph.nodes["x"].meta == {"type": expected}
    assert graph.nodes["out"].meta["type"] == expected
    assert declared_type(InputDecl(shape=shape, **options)) == expected


@pytest.mark.parametrize(("shape", "options", "free"), [
    ([3, 8, 8], {}, [(1, "H"), (2, "W")]),  # a map's spatial dims; its channels are fixed by the weights
    ([2, 4, 4, 4], {}, [(1, "D"), (2, "H"), (3, "W")]),
    ([3, 10], {"layout": "channels_first"}, [(1, "L")]),
    ([5, 4], {}, [(0, "L")]),  # a sequence's leading dims; its features are fixed
    ([2, 5, 4], {"layout": "features_last"}, [(0, "L1"), (1, "L2")]),
    ([4], {}, []),
    ([16], {"dtype": "int64"}, [(0, "L")]),  # every dim of token ids
])
def test_free_dims_are_the_sizes_a_model_may_be_called_with_at_other_values(shape: list[int],
                                                                             options: dict[str, str],
                                                                             free: list[tuple[int, str]]) -> None:
    assert free_dims(declared_type(InputDecl(shape=shape, **options))) == free


def test_grids_are_stepped_by_strides_and_upsampling_and_lost_by_adaptive_pools() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 16, 16])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, stride=2, padding=1)
    b.layer("up", "Upsample", scale_factor=4)
    b.layer("tconv", "ConvTranspose2d", out_channels=4, kernel_size=2, stride=2)
    b.layer("pool", "MaxPool2d", kernel_size=3, stride=[2, 4])
    b.layer("act", "ReLU")
    b.layer("fixed", "AdaptiveAvgPool2d", output_size=2)
    b.layer("flat", "Flatten")
    graph = infer_shapes(b.build())
    assert {name: graph.nodes[name].meta["type"].scale for name in list(graph.nodes)[1:]} == {
        "conv": at(2, 2), "up": at(Fraction(1, 2), Fraction(1, 2)), "tconv": at(Fraction(1, 4), Fraction(1, 4)),
        "pool": at(Fraction(1, 2), 1), "act": at(Fraction(1, 2), 1), "fixed": None, "flat": None}


# --- symbolic sizes -------------------------------------------------------------------------------------------

def all_types(graph: Graph) -> list[TensorType]:
    """Every type a node (or a skip's projection) holds, in block instances too."""
    found = []
    for node in graph.nodes.values():
        found += [node.meta["type"]] + ([node.meta["projection"].output] if "projection" in node.meta else [])
        for instance in getattr(node, "instances", []):
            found += all_types(instance)
    return found


def test_inference_leaves_plain_ints_and_records_symbols_guards_and_size_expressions() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 9, 9])
    b.layer("conv", "Conv2d", out_channels=8, kernel_size=3, stride=2, padding=1)
    b.skip("s", "x", "conv")
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 1}),
            [unit("stage.0.", 8, op="Conv2d")])
    graph = infer_shapes(b.build())
    types = all_types(graph)
    assert len(types) == 8 and all(type(d) is int for t in types for d in t.shape)
    assert graph.nodes["conv"].meta["type"].shape == (8, 5, 5) == graph.nodes["stage"].meta["type"].shape
    assert graph.meta["symbols"] == {"x.H": ("x", 1, 9), "x.W": ("x", 2, 9)}
    guards = graph.meta["guards"]
    assert guards and all(isinstance(g, Guard) for g in guards)
    # Each decision is attributed to the node it was first made at: the conv's output is at least 1, the skip's
    # shapes differ and its /2 projection gives the conv's size. The instance's 1x1 conv decides again that
    # the same size is at least 1: one guard.
    assert {g.site for g in guards} == {"conv", "s"}
    assert [str(expr) for expr in graph.meta["size_exprs"]] == ["x.H", "x.W", "(x.H - 1) // 2 + 1",
                                                                "(x.W - 1) // 2 + 1"]


def test_given_input_types_may_be_symbolic() -> None:
    # A block instance's caller types its inputs; a symbolic size flows through and is left as its value.
    b = GraphBuilder("Unit")
    b.input("x")
    b.layer("conv", "Conv2d", out_channels=2, kernel_size=3, padding=1, stride=2)
    graph = infer_shapes(b.build(), [TensorType((3, SymInt.symbol("x.H", 10), 6), scale=at(1, 1))])
    assert graph.nodes["conv"].meta["type"] == TensorType((2, 5, 3), scale=at(2, 2))
    assert type(graph.nodes["x"].meta["type"].shape[1]) is int and graph.meta["symbols"] == {}


# --- layers: type, args, params --------------------------------------------------------------------------

LAYER_CASES = [
    # (op, written arguments, input shape, output shape, full constructor arguments)
    ("Conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}, (3, 8, 8), (4, 4, 4),
     {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}),
    ("Conv1d", {"out_channels": 6, "kernel_size": 3, "groups": 2, "bias": False}, (4, 10), (6, 8),
     {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "groups": 2, "bias": False}),
    ("ConvTranspose2d", {"out_channels": 2, "kernel_size": 2, "stride": 2}, (4, 3, 5), (2, 6, 10),
     {"in_channels": 4, "out_channels": 2, "kernel_size": 2, "stride": 2}),
    ("Linear", {"out_features": 3}, (5, 7), (5, 3), {"in_features": 7, "out_features": 3}),
    ("BatchNorm2d", {}, (6, 4, 4), (6, 4, 4), {"num_features": 6}),
    ("LayerNorm", {"eps": 1e-6}, (5, 8), (5, 8), {"normalized_shape": 8, "eps": 1e-6}),
    ("GroupNorm", {"num_groups": 2}, (4, 3, 3), (4, 3, 3), {"num_channels": 4, "num_groups": 2}),
    ("MaxPool2d", {"kernel_size": 2}, (3, 9, 9), (3, 4, 4), {"kernel_size": 2}),
    ("Flatten", {}, (3, 2, 2), (12,), {}),
    ("PReLU", {"num_parameters": 3}, (3, 4), (3, 4), {"num_parameters": 3}),
    ("MultiheadAttention", {"num_heads": 2}, (5, 8), (5, 8), {"embed_dim": 8, "batch_first": True, "num_heads": 2}),
]


@pytest.mark.parametrize(("op", "written", "shape", "out", "args"), LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_a_layer_gets_its_type_full_arguments_and_parameter_count(op: str, written: dict[str, Any],
                                                                  shape: tuple[int, ...], out: tuple[int, ...],
                                                                  args: dict[str, Any]) -> None:
    b = GraphBuilder("Net")
    b.input("x", list(shape))
    b.layer("layer", op, **written)
    meta = infer_shapes(b.build()).nodes["layer"].meta
    assert meta["type"].shape == out and meta["args"] == args
    # The reference: torch builds the module from exactly these arguments and runs it.
    module = getattr(nn, op)(**meta["args"])
    with torch.no_grad():
        x = torch.randn(2, *shape)
        y = module(x, x, x, need_weights=False)[0] if op == "MultiheadAttention" else module(x)
    assert tuple(y.shape) == (2, *out)
    assert meta["params"] == sum(p.numel() for p in module.parameters())


def test_layouts_follow_the_op() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 4, 4])
    b.layer("conv", "Conv2d", out_channels=2, kernel_size=1)
    b.layer("flat", "Flatten")
    b.layer("fc", "Linear", out_features=3)
    b.layer("act", "ReLU")
    graph = infer_shapes(b.build())
    assert [graph.nodes[n].meta["type"].layout for n in ("conv", "flat", "fc", "act")] == [
        "channels_first", "features_last", "features_last", "features_last"]


def test_code_ops_and_learned_tensors_have_arguments_and_counts_too() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 6])
    b.layer("token", "parameter", shape=[4, 1])
    merge(b, "cat", "concat", ["token", "x"], dim=2)
    b.layer("swap", "transpose", dim0=1, dim1=2)
    graph = infer_shapes(b.build())
    token, cat, swap = (graph.nodes[n].meta for n in ("token", "cat", "swap"))
    assert token == {"type": TensorType((4, 1), "float32", "features_last"), "args": {}, "params": 4,
                     "storage": Storage(fixed=token["storage"].fixed)}
    assert token["storage"].fixed is not None  # broadcast over the batch: never written in place
    assert cat["type"].shape == (4, 7) and cat["params"] == 0 and cat["storage"] == Storage()
    # (a sequence made a map: its grid starts here, at unit steps, counted from its own origin)
    grid = swap["type"].scale
    assert grid_origin(grid) != 0 and list(grid) == [Fraction(1)]
    assert swap == {"type": TensorType((7, 4), "float32", "channels_first", grid),
                    "args": {"dim0": 1, "dim1": 2}, "params": 0, "storage": Storage(aliases=0)}  # a view of cat
    assert total_parameters(graph) == 4


def test_an_uncurated_op_is_typed_and_counted_by_a_meta_device_probe() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 4, 4])
    b.layer("pad", "ZeroPad2d", padding=[1, 2, 0, 1])  # (left, right, top, bottom)
    b.layer("conv", "Conv2d", out_channels=2, kernel_size=1)
    graph = infer_shapes(b.build())
    pad = graph.nodes["pad"].meta
    # Its output depends on the exact input size, so the free sizes are specialised: no grid scale left.
    assert pad == {"type": TensorType((3, 5, 7), "float32", "channels_first"), "args": {"padding": (1, 2, 0, 1)},
                   "params": 0, "storage": Storage()}
    assert graph.nodes["conv"].meta["args"]["in_channels"] == 3 and total_parameters(graph) == 2 * 3 + 2


# --- skips ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("merge_kind", "policy", "merged", "params"), [
    ("add", "auto", (8, 4, 4), 4 * 8 + 2 * 8),  # conv 4->8 /2 + BatchNorm(8)
    ("concat", "conv", (12, 4, 4), 4 * 4),  # conv 4->4 /2: concat keeps the source's channels
    ("mul", "conv", (8, 4, 4), 4 * 8),  # (4, 8, 8) does not broadcast with (8, 4, 4): as add
])
def test_a_skip_records_its_plan_the_plans_parameters_and_the_merged_type(merge_kind: str, policy: str,
                                                                          merged: tuple[int, ...],
                                                                          params: int) -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=8, kernel_size=3, stride=2, padding=1)
    b.skip("s", "x", "conv", merge=merge_kind, projection=policy)
    b.layer("act", "ReLU")
    graph = infer_shapes(b.build())
    meta = graph.nodes["s"].meta
    plan = plan_projection(Projection(policy), Merge(merge_kind), TensorType((4, 8, 8), scale=at(1, 1)),
                           TensorType((8, 4, 4), scale=at(2, 2)))
    assert meta["projection"] == plan and meta["type"].shape == merged and meta["params"] == params
    assert graph.nodes["act"].meta["type"].shape == merged  # later readers see the merged value


def test_a_skip_steps_by_the_grids_not_by_the_sizes() -> None:
    # 9 -> 5 -> 3 through two 1x1 stride-2 pools: the target's grid is 4 input pixels apart, so the skip
    # subsamples by 4 (rows 0, 4, 8: the ones the pools kept), where 9 -> 3 alone would say 3.
    b = GraphBuilder("Net")
    b.input("x", [4, 9, 9])
    b.layer("p1", "MaxPool2d", kernel_size=1, stride=2)
    b.layer("p2", "MaxPool2d", kernel_size=1, stride=2)
    b.skip("s", "x", "p2", projection="pad")
    (step,) = infer_shapes(b.build()).nodes["s"].meta["projection"].steps
    assert step.kind is StepKind.subsample and step.args == {"stride": (4, 4)}
    x = torch.randn(2, 4, 9, 9)
    kept = eval(step_code(step, "x", 4, "p2"), {"torch": torch}, {"x": x})  # noqa: S307 (resgraph's own code)
    assert torch.equal(kept, nn.MaxPool2d(1, stride=2)(nn.MaxPool2d(1, stride=2)(x)))


def test_a_skip_that_fits_is_an_identity_without_parameters() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, padding=1)
    b.skip("s", "x", "conv")
    meta = infer_shapes(b.build()).nodes["s"].meta
    assert meta["projection"].is_identity and meta["params"] == 0 and meta["type"].shape == (4, 8, 8)


def test_a_skip_takes_its_policy_from_the_node() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=8, kernel_size=3, stride=2, padding=1)
    b.skip("s", "x", "conv", default=Projection.pad)
    meta = infer_shapes(b.build()).nodes["s"].meta
    assert [s.kind.value for s in meta["projection"].steps] == ["subsample", "pad"] and meta["params"] == 0


def refused(builder: GraphBuilder) -> tuple[str, str | None]:
    """The message and hint of the one diagnostic typing the builder's graph raises."""
    with pytest.raises(SpecError) as caught:
        infer_shapes(builder.build())
    (diagnostic,) = caught.value.diagnostics
    return diagnostic.message, diagnostic.hint


def test_a_map_shrunk_on_one_grid_names_the_layers_and_the_padding_that_keeps_the_size() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3)
    b.layer("act", "ReLU")
    b.skip("s", "x", "act")
    assert refused(b) == (
        "skip 's': cannot add 'x' (3, 8, 8) to 'act' (4, 6, 6): "
        "the spatial size shrinks on one grid (no net stride between them): 8x8 -> 6x6",
        "shrunk by 'conv' (Conv2d, kernel 3, stride 1, padding 0, dilation 1): 8x8 -> 6x6. Fix: keep the size with "
        "`padding: 1` on 'conv'; or set `projection: crop` on this skip (the maps share a grid, so a centre crop "
        "aligns them)")


def test_a_stride_that_floored_an_odd_size_proposes_the_input_sizes_that_fit() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 9, 9])
    b.layer("pool", "MaxPool2d", kernel_size=2)
    b.skip("s", "x", "pool")
    assert refused(b) == (
        "skip 's': cannot add 'x' (4, 9, 9) to 'pool' (4, 4, 4): "
        "spatial size 9x9 -> 4x4 does not match a stride of 2 (which gives 5x5)",
        "'pool' (MaxPool2d, kernel 2, stride 2, padding 0, dilation 1): 9x9 -> 4x4: a stride of 2 floored size 9 to 4. "
        "Fix: an input size at which this skip fits: 'x' 8x8 (or 10x10, 6x6); or make it round up as the strides "
        "do: `ceil_mode: true` on 'pool'")


@pytest.mark.parametrize(("size", "layers", "cause"), [
    # 10 is even: "floored an odd size" was wrong for any stride but 2
    ([10, 10], [("down", "Conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 3})],
     "'down' (Conv2d, kernel 3, stride 3, padding 0, dilation 1): 10x10 -> 3x3: a stride of 3 floored size 10 to 3. "),
    ([9, 10], [("down", "Conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 3})],  # 9 is divided: not named
     "'down' (Conv2d, kernel 3, stride 3, padding 0, dilation 1): 9x10 -> 3x3: a stride of 3 floored size 10 to 3. "),
    # the kernel took more than the flooring: 2, not 10 // 3
    ([10, 10], [("down", "Conv2d", {"out_channels": 4, "kernel_size": 5, "stride": 3})],
     "'down' (Conv2d, kernel 5, stride 3, padding 0, dilation 1): 10x10 -> 2x2: a stride of 3 met size 10, which it "
     "does not divide. "),
    # two layers listed: each is named
    ([9, 9], [("p", "MaxPool2d", {"kernel_size": 2}), ("q", "MaxPool2d", {"kernel_size": 3})],
     "'p' (MaxPool2d, kernel 2, stride 2, padding 0, dilation 1): 9x9 -> 4x4; 'q' (MaxPool2d, kernel 3, stride 3, "
     "padding 0, dilation 1): 4x4 -> 1x1: a stride of 2 floored size 9 to 4 in 'p' and a stride of 3 floored size 4 "
     "to 1 in 'q'. "),
    # on one grid, shrunk: the padding works at a multiple of the stride
    ([31, 31], [("c", "Conv2d", {"out_channels": 4, "kernel_size": 3}), ("p", "MaxPool2d", {"kernel_size": 3}),
                ("u", "Upsample", {"scale_factor": 3})],
     "Fix: keep the size with `padding: 1` on 'c' and an input size that is a multiple of 3 (a stride of 3 floored "
     "size 29 to 9 in 'p'); "),
], ids=["stride-3-even-size", "one-dim", "kernel-took-more", "two-layers", "one-grid"])
def test_a_stride_that_did_not_divide_a_size_is_said_exactly(size: list[int], layers: list[tuple[str, str, dict]],
                                                              cause: str) -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, *size])
    for name, op, arguments in layers:
        b.layer(name, op, **arguments)
    b.skip("s", "x", layers[-1][0])
    _, hint = refused(b)
    assert hint is not None and cause in hint and "odd" not in hint, hint


def test_an_off_centre_crop_names_the_layer_that_dropped_a_row_and_the_sizes_that_fit() -> None:
    # pool /2 floors 9 to 4, the upsample doubles it to 8, a 3x3 conv leaves 6: a margin of 3.
    b = GraphBuilder("Net")
    b.input("x", [4, 9, 9])
    b.layer("pool", "MaxPool2d", kernel_size=2)
    b.layer("up", "Upsample", scale_factor=2)
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3)
    b.skip("s", "x", "conv", projection="crop")
    assert refused(b) == (
        "skip 's': cannot add 'x' (4, 9, 9) to 'conv' (4, 6, 6): a centre crop of 9x9 to 6x6 would be off-centre: "
        "the margins 3x3 are not even, so the two maps are not centred on each other (a layer between them dropped "
        "an odd row, e.g. a stride or pool on an odd size)",
        "'pool' (MaxPool2d, kernel 2, stride 2, padding 0, dilation 1): 9x9 -> 4x4; 'up' (Upsample, scale 2.0): "
        "4x4 -> 8x8; 'conv' (Conv2d, kernel 3, stride 1, padding 0, dilation 1): 8x8 -> 6x6: a layer dropped an odd "
        "row. Fix: an input size at which this skip fits: 'x' 8x8 (or 10x10, 6x6)")


def test_a_target_grown_past_its_source_proposes_the_sizes_that_fit_or_a_fixed_upsample() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 15, 15])
    b.layer("down", "Conv2d", out_channels=4, kernel_size=3, stride=2, padding=1)
    b.layer("up", "Upsample", scale_factor=2)
    b.skip("s", "x", "up")
    assert refused(b) == (
        "skip 's': cannot add 'x' (4, 15, 15) to 'up' (4, 16, 16): "
        "the spatial size grows on one grid (no net stride between them): 15x15 -> 16x16",
        "'down' (Conv2d, kernel 3, stride 2, padding 1, dilation 1): 15x15 -> 8x8; 'up' (Upsample, scale 2.0): "
        "8x8 -> 16x16: the target grew past the source. Fix: an input size at which this skip fits: 'x' 14x14 "
        "(or 16x16, 12x12); or give the upsampling layer an explicit `size:` (then the model has one input size)")


def test_a_target_on_a_finer_grid_is_refused_with_the_upsampling_layer() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 4, 4])
    b.layer("up", "Upsample", scale_factor=2)
    b.skip("s", "x", "up")
    assert refused(b) == (
        "skip 's': cannot add 'x' (4, 4, 4) to 'up' (4, 8, 8): the target is on a finer grid (upsampled x2 relative "
        "to the source; 4x4 -> 8x8); projections only downsample",
        "'up' (Upsample, scale 2.0): 4x4 -> 8x8. Fix: take the skip from a layer at the target's scale, or upsample "
        "the source first")


def test_grids_a_fraction_apart_are_refused() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 12, 12])
    b.layer("pool", "MaxPool2d", kernel_size=3)
    b.layer("up", "Upsample", scale_factor=2)
    b.skip("s", "x", "up")
    assert refused(b)[0] == ("skip 's': cannot add 'x' (4, 12, 12) to 'up' (4, 8, 8): "
                             "the grids differ by a ratio of 3/2, not an integer step (12x12 -> 8x8)")


@pytest.mark.parametrize("merge_kind", ["concat", "mul"])
def test_auto_refuses_to_merge_across_scales_and_says_how_to_ask_for_it(merge_kind: str) -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("pool", "MaxPool2d", kernel_size=2)
    b.skip("s", "x", "pool", merge=merge_kind)
    assert refused(b) == (
        f"skip 's': cannot {merge_kind} 'x' (4, 8, 8) into 'pool' (4, 4, 4): the source and target are on different "
        f"spatial scales (8x8 vs 4x4, /2); `auto` does not {merge_kind} across scales silently, since it is usually a "
        "skip from the wrong layer",
        "if it is intended, say how: `projection: conv` (a strided 1x1 conv), `avgpool` or `pad` on this skip")


def test_crop_refuses_a_strided_target_and_names_the_policies_that_follow_the_stride() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3, stride=2, padding=1)
    b.skip("s", "x", "conv", projection="crop")
    assert refused(b) == (
        "skip 's': cannot add 'x' (4, 8, 8) to 'conv' (4, 4, 4): crop would misalign the grids: the target is a "
        "strided map (8x8 -> 4x4, /2), and a centre crop of the source does not line up with the positions the "
        "stride kept",
        "use projection: auto or conv (a strided 1x1 conv) or avgpool, which follow the stride")


def test_a_features_last_gate_into_a_channels_first_map_is_refused() -> None:
    b = GraphBuilder("Net")
    b.input("x", [8, 4, 4])
    b.input("g", [1, 1, 8], layout="features_last")
    b.layer("conv", "Conv2d", "x", out_channels=8, kernel_size=1)
    b.skip("s", "g", "conv", merge="mul")
    assert refused(b) == (
        "skip 's': cannot mul 'g' (1, 1, 8) into 'conv' (8, 4, 4): the gate (1, 1, 8) is features-last but the target "
        "(8, 4, 4) is channels-first: broadcasting would pair its features with the target's last dim",
        "permute the gate to the target's layout first (e.g. `op: permute`), or produce it with a 1x1 conv and a pool")


def test_a_one_grid_shrink_with_an_odd_margin_is_not_told_to_crop() -> None:
    def net(projection: str | None) -> GraphBuilder:
        b = GraphBuilder("Net")
        b.input("x", [4, 9, 9])
        b.layer("pool", "MaxPool2d", kernel_size=2)
        b.layer("up", "Upsample", scale_factor=2)  # 9 -> 4 -> 8, on the input's grid
        b.skip("s", "x", "up", projection=projection)
        return b

    message, hint = refused(net(None))
    assert "shrinks on one grid" in message and hint is not None
    assert "off-centre" in refused(net("crop"))[0]  # the crop the hint would propose is refused...
    assert "projection: crop" not in hint  # ...so it is no fix
    assert "an input size at which this skip fits: 'x' 8x8 (or 10x10, 6x6)" in hint


def test_a_refused_projection_carries_the_policys_hint() -> None:
    b = GraphBuilder("Net")
    b.input("x", [8, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=1)
    b.skip("s", "x", "conv", projection="pad")
    with pytest.raises(SpecError) as caught:
        infer_shapes(b.build())
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == ("skip 's': cannot add 'x' (8, 8, 8) to 'conv' (4, 8, 8): "
                                  "pad cannot reduce 8 channels to 4")
    assert diagnostic.hint == "use projection: auto or conv, which learn a 1x1 projection"


# --- errors: located, independent ones all reported, dependents skipped --------------------------------------

def test_independent_errors_are_all_reported_and_their_dependents_skipped() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("c1", "Conv2d", out_channels=4, kernel_size=3)  # wrong: x has no spatial dims
    b.layer("c2", "Conv2d", out_channels=4, kernel_size=3)  # would be wrong too, but reads c1: skipped
    b.layer("fc", "Linear", "x", out_features=3)
    b.layer("bad", "Conv1d", out_channels=2, kernel_size=1)  # an independent error
    b.layer("after", "ReLU")  # skipped
    assert messages(b.build()) == ["layer 'c1' (Conv2d): expects (C, H, W) per sample, got (4,)",
                                   "layer 'bad' (Conv1d): expects (C, L) per sample, got (3,)"]


def test_a_failed_add_skip_still_types_its_target_so_later_layers_are_checked() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=1)
    b.skip("s", "x", "conv", projection="none")
    b.layer("fc", "Conv1d", out_channels=2, kernel_size=1)
    assert messages(b.build()) == [
        "skip 's': cannot add 'x' (3, 8, 8) to 'conv' (4, 8, 8): shapes differ and projection is 'none'",
        "layer 'fc' (Conv1d): expects (C, L) per sample, got (4, 8, 8)"]


def test_a_failed_concat_skip_leaves_its_readers_unchecked() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=1)
    b.skip("s", "x", "conv", merge="concat", dim=2, projection="none")
    b.layer("fc", "Conv1d", out_channels=2, kernel_size=1)  # its input type is unknown: skipped
    assert messages(b.build()) == [
        "skip 's': cannot concat 'x' (3, 8, 8) into 'conv' (4, 8, 8): shapes differ and projection is 'none'"]


def test_a_bad_skip_dim_is_reported_at_the_skip() -> None:
    b = GraphBuilder("Net")
    b.input("x", [3, 8, 8])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=1)
    b.skip("s", "x", "conv", merge="concat", dim=0)
    assert messages(b.build()) == ["skip 's': dim=0 is the batch dimension; use a dim between 1 and 3"]


SHAPE_ERRORS = """\
resgraph: 1
name: M
inputs: {x: [3, 8, 8], v: [4]}
layers:
  - conv: {op: Conv2d, out_channels: 4, kernel_size: 9, input: x}
  - after: {op: ReLU}
  - fc: {op: Linear, out_features: 2, input: v}
  - shrink: {op: Hardshrink, lamda: 0.5}
  - pool: {op: MaxPool2d, kernel_size: 2, padding: 2, input: x}
skips:
  - s: {from: fc, to: pool}
"""


def test_errors_are_located_at_the_layer_or_at_the_argument_that_is_wrong() -> None:
    """An unknown argument of an uncurated op is found when the layer is typed (in expand); shape
    inference goes on without that layer and reports the rest."""
    diagnostics: list[Diagnostic] = []
    loaded = load_text(SHAPE_ERRORS, "spec.yaml")
    graph = resolve(expand(validate(loaded), loaded.source, diagnostics=diagnostics), diagnostics=diagnostics)
    infer_shapes(graph, diagnostics=diagnostics)
    assert [f"{d.location.line}:{d.location.column}: {d.message}" for d in diagnostics] == [
        "8:30: layer 'shrink' (Hardshrink): torch.nn.Hardshrink has no argument 'lamda'; did you mean 'lambd'?",
        "5:5: layer 'conv' (Conv2d): input (3, 8, 8) is too small for kernel_size=9 with padding=0, dilation=1: "
        "output size would be (0, 0)",
        "9:5: layer 'pool' (MaxPool2d): padding=2 must be at most half the kernel size (2)",
    ]


def test_hand_built_graphs_are_located_in_their_file() -> None:
    b = GraphBuilder("Net", file="net.yaml")
    b.input("x", [4])
    b.layer("conv", "Conv2d", out_channels=4, kernel_size=3)
    with pytest.raises(SpecError) as caught:
        infer_shapes(b.build())
    assert str(caught.value) == "net.yaml: error: layer 'conv' (Conv2d): expects (C, H, W) per sample, got (4,)"


# --- block instances ---------------------------------------------------------------------------------------

def unit(qualname: str, width: int, op: str = "Linear") -> Graph:
    """One instance of a block `unit`: Linear(width) -> ReLU, its input typed by the caller."""
    b = GraphBuilder("Unit")
    b.input("x")
    if op == "Linear":
        b.layer("fc", "Linear", out_features=width)
    else:
        b.layer("fc", op, out_channels=width, kernel_size=1)
    b.layer("act", "ReLU")
    graph = b.build()
    graph.qualname, graph.block, graph.params = qualname, "unit", {"width": width}
    return graph


def test_block_instances_are_typed_in_a_chain() -> None:
    b = GraphBuilder("Net")
    b.input("x", [5, 4])
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [unit("stage.0.", 6), unit("stage.1.", 2)])
    b.layer("head", "Linear", out_features=1)
    graph = infer_shapes(b.build())
    first, second = graph.nodes["stage"].instances
    assert first.nodes["x"].meta["type"].shape == (5, 4) and first.nodes["fc"].meta["args"]["in_features"] == 4
    assert second.nodes["x"].meta["type"].shape == (5, 6) and second.nodes["fc"].meta["args"]["in_features"] == 6
    stage = graph.nodes["stage"].meta
    assert stage["type"] == TensorType((5, 2), "float32", "features_last")
    assert stage["params"] == (4 * 6 + 6) + (6 * 2 + 2) == total_parameters(first) + total_parameters(second)
    assert graph.nodes["head"].meta["args"]["in_features"] == 2
    assert total_parameters(graph) == stage["params"] + 3


def test_an_error_inside_an_instance_names_it_by_qualname_and_skips_the_block_readers() -> None:
    b = GraphBuilder("Net")
    b.input("x", [5, 4])
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [unit("stage.0.", 6), unit("stage.1.", 2, op="Conv2d")])
    b.layer("head", "Conv3d", out_channels=1, kernel_size=1)  # reads the failed block: skipped
    b.layer("other", "Conv3d", "x", out_channels=1, kernel_size=1)  # independent: reported
    assert messages(b.build()) == ["layer 'stage.1.fc' (Conv2d): expects (C, H, W) per sample, got (5, 6)",
                                   "layer 'other' (Conv3d): expects (C, D, H, W) per sample, got (5, 4)"]


# --- in-place hazards --------------------------------------------------------------------------------------

def test_an_inplace_op_on_a_value_nobody_else_reads_is_fine() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.layer("drop", "Dropout", p=0.1, inplace=True)
    b.layer("act", "ReLU", inplace=True)
    infer_shapes(b.build())


def test_inplace_hazards_name_every_other_reader() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.layer("act", "ReLU", inplace=True)
    b.layer("gate", "Sigmoid", "fc")
    merge(b, "out", "mul", ["act", "gate", "fc"])
    with pytest.raises(SpecError) as caught:
        infer_shapes(b.build())
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == ("layer 'act' (ReLU): inplace: true would overwrite 'fc', "
                                  "but 'gate', 'out' also read it")
    assert diagnostic.hint == "remove `inplace: true`"


def test_an_inplace_op_may_not_overwrite_a_skip_source_an_input_or_an_output() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("first", "ReLU", inplace=True)  # overwrites the caller's input
    b.layer("fc", "Linear", out_features=4)
    b.layer("act", "Tanh")
    b.layer("drop", "Dropout", "fc", inplace=True)  # fc is also the skip's source
    b.skip("s", "fc", "drop")
    b.layer("last", "ReLU", "act", inplace=True)  # act is an output
    assert messages(b.build(["act", "last"])) == [
        "layer 'first' (ReLU): inplace: true would overwrite 'x', but it is an input or output of the model",
        "layer 'drop' (Dropout): inplace: true would overwrite 'fc', but 'act', 's' also read it",
        "layer 'last' (ReLU): inplace: true would overwrite 'act', but it is an input or output of the model",
    ]


def test_an_inplace_op_on_a_block_input_is_refused_inside_the_instance() -> None:
    inner = GraphBuilder("Unit")
    inner.input("x")
    inner.layer("act", "ReLU", inplace=True)
    instance = inner.build()
    instance.qualname, instance.block = "body.", "unit"
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.block("body", BlockCall.model_validate({"block": "unit"}), [instance])
    assert messages(b.build()) == [
        "layer 'body.act' (ReLU): inplace: true would overwrite 'x', but it is an input or output of block 'unit'"]


def test_inplace_hazards_and_shape_errors_are_reported_together() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("act", "ReLU", inplace=True)
    b.layer("conv", "Conv2d", out_channels=1, kernel_size=1)
    assert len(messages(b.build())) == 2


def test_an_uncurated_inplace_op_is_checked_like_a_curated_one() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.layer("cut", "RReLU", inplace=True)
    merge(b, "out", "add", ["fc", "cut"])  # reads fc, which `cut` overwrote: out == 2 * cut
    assert messages(b.build()) == [
        "layer 'cut' (RReLU): inplace: true would overwrite 'fc', but 'out' also reads it"]


def _instance(qualname: str, *ops: tuple[str, dict[str, Any]]) -> Graph:
    b = GraphBuilder("Unit")
    b.input("x")
    for i, (op, args) in enumerate(ops):
        b.layer(f"n{i}", op, **args)
    graph = b.build()
    graph.qualname, graph.block = qualname, "unit"
    return graph


def test_a_block_that_passes_its_input_through_shares_its_memory() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=4)
    b.block("same", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [_instance("same.0.", ("Identity", {})), _instance("same.1.", ("reshape", {"shape": [4]}))])
    b.layer("act", "ReLU", inplace=True)
    merge(b, "out", "add", ["act", "fc"])
    graph = b.build()
    assert messages(graph) == ["layer 'act' (ReLU): inplace: true would overwrite 'fc' (through 'same', which shares "
                               "its memory), but 'out' also reads it"]
    assert graph.nodes["same"].meta["storage"] == Storage(aliases=0)


def test_a_block_output_keeps_what_autograd_keeps_along_the_chain() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [_instance("stage.0.", ("Sigmoid", {})), _instance("stage.1.", ("Identity", {}))])
    b.layer("act", "ReLU", inplace=True)
    graph = b.build()
    assert messages(graph) == ["layer 'act' (ReLU): inplace: true would overwrite 'stage', but layer 'stage' "
                               "(block unit) keeps its output for the backward pass, which would then fail (autograd: "
                               "modified by an inplace operation)"]
    assert graph.nodes["stage"].meta["storage"] == Storage(saves_output=True)  # the Sigmoid's output, passed on
