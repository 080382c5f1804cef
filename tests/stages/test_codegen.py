"""Stage 6, codegen: a typed graph -> the source of its `forward`.

The specification:

- one statement per node, in graph order: `name = self.name(inputs)` for a module, the op's own
  expression for a code op, `name = self.name(inputs)` for a block call, and for a skip
  `target = target <merge> <projected source>` (concat puts the source first), or
  `target += <projected source>` for an add into a fresh target (see tests/test_in_place.py);
- a projection's code steps are written inline, its module steps are the skip's submodule; no
  size that depends on the input is a constant in the source: a crop is `_center_crop(source,
  target)` (a helper in `HELPERS`, defined beside the forward), which crops at run time;
- when `graph.meta["sizes"]` holds the solved sizes, the forward starts with an input guard that
  checks each input's rank, fixed dims and free dims' rules and raises one ValueError naming it;
- every line ends with the node's full shape (batch as N); a skip's comment says how it merges
  and why it projects; with `shapes=False` nothing instance-specific is written, so instances
  of one block with different shapes get the same source;
- a large value (LARGE elements per sample or more) is deleted after its last reader; small
  values, returned values and values read by the last statement are not; with `shapes=False`
  every value is deleted;
- the source compiles and computes what the same forward written by hand computes;
- every node name that reaches the source is an identifier.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from resgraph.codegen import HELPERS, LARGE, generate_forward, helpers_used, input_guard, shape_comment
from resgraph.graph import Graph, GraphBuilder
from resgraph.shapes import infer_shapes
from resgraph.sizes import solve_sizes
from resgraph.spec import BlockCall


def typed(builder: GraphBuilder, outputs: list[str] | None = None) -> Graph:
    return infer_shapes(builder.build(outputs))


def merge(builder: GraphBuilder, name: str, op: str, inputs: list[str], **args: Any) -> str:
    """A merge layer: its `input` argument and the builder's inputs name the same nodes."""
    return builder.layer(name, op, inputs, input=inputs, **args)


def compiled(source: str) -> Any:
    """The forward function a source defines (as lowering compiles it: `torch` and the helpers it calls in scope)."""
    namespace: dict[str, Any] = {"torch": torch}
    for helper in helpers_used(source):
        exec(compile(HELPERS[helper], "<helper>", "exec"), namespace)  # noqa: S102 (resgraph's own helper)
    exec(compile(source, "<generated>", "exec"), namespace)  # noqa: S102 (generated from a typed graph)
    return namespace["forward"]


def basic() -> Graph:
    """A residual unit on a (4, 64, 64) map: every value is LARGE, so each dies after its last use."""
    b = GraphBuilder("Basic")
    b.input("x", [4, 64, 64])
    b.layer("conv1", "Conv2d", out_channels=8, kernel_size=3, padding=1)
    b.layer("relu", "ReLU")
    b.layer("conv2", "Conv2d", out_channels=8, kernel_size=3, padding=1)
    b.skip("down", "x", "conv2")
    b.layer("out", "ReLU")
    return typed(b)


def mixer() -> Graph:
    """Two small token inputs, merges, a learned token, code ops and a zero-padding skip."""
    b = GraphBuilder("Mixer")
    b.input("x", [3, 4])
    b.input("y", [3, 4])
    b.layer("fc", "Linear", "x", out_features=4)
    b.layer("gate", "Sigmoid", "y")
    merge(b, "gated", "mul", ["fc", "gate"])
    b.skip("keep", "y", "gated", merge="concat", dim=2)
    b.layer("cls", "parameter", shape=[1, 8])
    merge(b, "tokens", "concat", ["cls", "gated"], dim=1)
    b.layer("swap", "transpose", dim0=1, dim1=2)
    b.skip("widen", "x", "swap", projection="pad")
    return typed(b, ["swap", "fc"])


# --- whole sources, as strings ---------------------------------------------------------------------------

def test_a_residual_unit() -> None:
    assert generate_forward(basic()) == (
        "def forward(self, x):\n"
        "    conv1 = self.conv1(x)  # (N, 8, 64, 64)\n"
        "    relu = self.relu(conv1)  # (N, 8, 64, 64)\n"
        "    del conv1\n"
        "    conv2 = self.conv2(relu)  # (N, 8, 64, 64)\n"
        "    del relu\n"
        "    conv2 += self.down(x)  # (N, 8, 64, 64) skip down: add x (auto projection: 4->8 channels)\n"
        "    del x\n"
        "    out = self.out(conv2)  # (N, 8, 64, 64)\n"
        "    return out\n")


def test_a_residual_unit_without_shapes() -> None:
    assert generate_forward(basic(), shapes=False) == (
        "def forward(self, x):\n"
        "    conv1 = self.conv1(x)\n"
        "    relu = self.relu(conv1)\n"
        "    del conv1\n"
        "    conv2 = self.conv2(relu)\n"
        "    del relu\n"
        "    conv2 += self.down(x)  # skip down: add x (auto projection)\n"
        "    del x\n"
        "    out = self.out(conv2)\n"
        "    return out\n")


def test_merges_code_ops_a_learned_tensor_and_an_inline_projection() -> None:
    assert generate_forward(mixer()) == (
        "def forward(self, x, y):\n"
        "    fc = self.fc(x)  # (N, 3, 4)\n"
        "    gate = self.gate(y)  # (N, 3, 4)\n"
        "    gated = fc * gate  # (N, 3, 4)\n"
        "    gated = torch.cat([y, gated], dim=2)  # (N, 3, 8) skip keep: concat y (identity)\n"
        "    cls = self.cls.expand(x.shape[0], -1, -1)  # (N, 1, 8)\n"
        "    tokens = torch.cat([cls, gated], dim=1)  # (N, 4, 8)\n"
        "    swap = tokens.transpose(1, 2)  # (N, 8, 4)\n"
        "    swap = swap + torch.nn.functional.pad(x, (0, 0, 2, 3))  "
        "# (N, 8, 4) skip widen: add x (pad projection: 3->8 channels)\n"
        "    return swap, fc\n")


def test_block_calls_call_the_instance_module() -> None:
    b = GraphBuilder("Net")
    b.input("x", [6])
    b.input("y", [8])
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [unit("stage.0.", 8), unit("stage.1.", 8)], "x")
    b.block("pair", BlockCall.model_validate({"block": "pair"}), [pair("pair.")], ["stage", "y"])
    assert generate_forward(typed(b)) == (
        "def forward(self, x, y):\n"
        "    stage = self.stage(x)  # (N, 8)\n"
        "    pair = self.pair(stage, y)  # (N, 8)\n"
        "    return pair\n")


def unit(qualname: str, width: int) -> Graph:
    """An instance of a block `unit`: Linear(width) -> ReLU, plus a skip from its input."""
    b = GraphBuilder("Unit")
    b.input("x")
    b.layer("fc", "Linear", out_features=width)
    b.layer("act", "ReLU")
    b.skip("s", "x", "act")
    graph = b.build()
    graph.qualname, graph.block = qualname, "unit"
    return graph


def pair(qualname: str) -> Graph:
    b = GraphBuilder("Pair")
    b.input("a")
    b.input("b")
    merge(b, "sum", "add", ["a", "b"])
    graph = b.build()
    graph.qualname, graph.block = qualname, "pair"
    return graph


# --- skips and merges -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("merge_kind", "policy", "statement"), [
    ("add", "auto", "t += self.s(x)"),  # a conv's fresh output: added in place (test_in_place.py)
    ("mul", "conv", "t = t * self.s(x)"),  # auto refuses a gate across scales: the skip says how
    ("concat", "conv", "t = torch.cat([self.s(x), t], dim=1)"),
])
def test_a_projecting_skip_calls_its_submodule_and_merges(merge_kind: str, policy: str, statement: str) -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("t", "Conv2d", out_channels=8, kernel_size=1, stride=2)
    b.skip("s", "x", "t", merge=merge_kind, projection=policy)
    assert generate_forward(typed(b)).splitlines()[2].split("  #")[0] == f"    {statement}"


STRIDED = {"kernel_size": 1, "stride": 2}  # 8x8 -> 4x4 on a grid twice as coarse
SHRUNK = {"kernel_size": 5}  # 8x8 -> 4x4 on the input's grid (a crop aligns it)


@pytest.mark.parametrize(("policy", "conv", "projected"), [
    ("pad", STRIDED, "torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))"),
    ("crop", SHRUNK, "self.s(_center_crop(x, t))"),
    ("avgpool", STRIDED, "self.s(x)"),
])
def test_code_steps_are_inline_and_come_before_the_submodule(policy: str, conv: dict[str, int], projected: str) -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("t", "Conv2d", out_channels=8, **conv)
    b.skip("s", "x", "t", projection=policy)
    assert generate_forward(typed(b)).splitlines()[2].split("  #")[0] == f"    t += {projected}"


# --- size-generic code: runtime crops and the input guard --------------------------------------------------------

def cropped() -> Graph:
    """x (4, H, W) -> an unpadded 5x5 conv to 8 channels, plus x centre-cropped to its size (crop + 1x1 conv)."""
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=8, kernel_size=5)
    b.skip("s", "x", "conv", projection="crop")
    return typed(b)


def test_a_crop_reads_the_sizes_at_run_time() -> None:
    graph = cropped()
    source = generate_forward(graph, shapes=False)
    assert source.splitlines()[2] == ("    conv += self.s(_center_crop(x, conv))"
                                      "  # skip s: add x (crop projection)")
    assert helpers_used(source) == ["_center_crop"] and helpers_used(generate_forward(basic())) == []
    torch.manual_seed(0)
    owner = SimpleNamespace(conv=nn.Conv2d(4, 8, 5), s=nn.Sequential(nn.Conv2d(4, 8, 1, bias=False)))
    forward = compiled(source)
    with torch.no_grad():
        for size in [(8, 8), (13, 10)]:  # the declared size, and another one with odd and unequal sides
            x = torch.randn(2, 4, *size)
            expected = owner.conv(x) + owner.s(x[:, :, 2:-2, 2:-2])  # a 5x5 conv drops 2 rows on each side
            assert torch.equal(forward(owner, x), expected)


def test_center_crop_crops_each_spatial_dim_to_the_reference_centred() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(HELPERS["_center_crop"], "<helper>", "exec"), namespace)  # noqa: S102 (resgraph's own helper)
    x = torch.arange(2 * 3 * 9 * 12 * 7.0).reshape(2, 3, 9, 12, 7)
    like = torch.empty(1, 1, 5, 4, 7)
    assert torch.equal(namespace["_center_crop"](x, like), x[:, :, 2:7, 4:8, :])


def test_the_input_guard_states_the_rank_the_fixed_dims_and_each_free_dims_rule() -> None:
    graph = cropped()
    assert input_guard(graph) == []  # sizes not solved: no guard
    graph.meta["sizes"] = solve_sizes(graph)
    assert generate_forward(graph, shapes=False).splitlines()[:3] == [
        "def forward(self, x):",
        "    if not torch.compiler.is_compiling() and "
        "(x.dim() != 4 or x.shape[1] != 4 or x.shape[2] < 5 or x.shape[3] < 5):",
        "        raise ValueError(\"Net: input 'x' must be (N, 4, H, W) with H >= 5, W >= 5 (declared (N, 4, 8, 8)); "
        "got \" + str(tuple(x.shape)))",
    ]


@pytest.mark.parametrize("shape", [(2, 4, 8), (2, 4, 8, 8, 1), (2, 3, 8, 8), (2, 4, 4, 8), (2, 4, 8, 4)])
def test_a_call_with_a_shape_the_guard_refuses_raises_a_value_error_naming_the_input(shape: tuple[int, ...]) -> None:
    graph = cropped()
    graph.meta["sizes"] = solve_sizes(graph)
    forward = compiled(generate_forward(graph))
    owner = SimpleNamespace(conv=nn.Conv2d(4, 8, 5), s=nn.Sequential(nn.Conv2d(4, 8, 1, bias=False)))
    with pytest.raises(ValueError) as caught:
        forward(owner, torch.zeros(shape))
    assert str(caught.value) == ("Net: input 'x' must be (N, 4, H, W) with H >= 5, W >= 5 (declared (N, 4, 8, 8)); "
                                 f"got {shape}")
    with torch.no_grad():
        assert forward(owner, torch.zeros(2, 4, 5, 9)).shape == (2, 8, 1, 5)  # the smallest H works


def test_every_input_has_its_guard_and_a_rule_that_refuses_nothing_is_not_written() -> None:
    b = GraphBuilder("Net")
    b.input("tokens", [6], dtype="int64")
    b.input("x", [5, 4])
    b.layer("embed", "Embedding", "tokens", num_embeddings=10, embedding_dim=4)
    b.layer("fc", "Linear", "x", out_features=4)
    graph = typed(b)
    graph.meta["sizes"] = solve_sizes(graph)
    assert generate_forward(graph).splitlines()[1:5] == [
        "    if not torch.compiler.is_compiling() and (tokens.dim() != 2):",
        "        raise ValueError(\"Net: input 'tokens' must be (N, L) (declared (N, 6)); got \" + "
        "str(tuple(tokens.shape)))",
        "    if not torch.compiler.is_compiling() and (x.dim() != 3 or x.shape[2] != 4):",
        "        raise ValueError(\"Net: input 'x' must be (N, L, 4) (declared (N, 5, 4)); got \" + "
        "str(tuple(x.shape)))",
    ]


def test_the_input_guard_refuses_a_size_between_the_values_of_a_set_rule() -> None:
    # x (2, L): pool /2 and upsample x2 give 2 * (L // 2), an unpadded conv 2 less; x is cropped to it (centred at
    # even L only). A stride-4 conv then meets a learned (2, 2) tensor: 10 <= L <= 13. Valid: L in {10, 12}.
    b = GraphBuilder("Net")
    b.input("x", [2, 12], layout="channels_first")
    b.layer("pool", "MaxPool1d", kernel_size=2)
    b.layer("up", "Upsample", scale_factor=2)
    b.layer("conv", "Conv1d", out_channels=2, kernel_size=3)
    b.skip("s", "x", "conv", projection="crop")
    b.layer("down", "Conv1d", out_channels=2, kernel_size=4, stride=4)
    b.layer("pos", "parameter", shape=[2, 2])
    merge(b, "out", "add", ["down", "pos"])
    graph = typed(b)
    graph.meta["sizes"] = solve_sizes(graph)
    (_, length) = graph.meta["sizes"].of("x")
    assert length.rule.describe("L") == "L in {10, 12}"
    owner = SimpleNamespace(pool=nn.MaxPool1d(2), up=nn.Upsample(scale_factor=2), conv=nn.Conv1d(2, 2, 3),
                            down=nn.Conv1d(2, 2, 4, stride=4), pos=nn.Parameter(torch.zeros(1, 2, 2)))
    forward = compiled(generate_forward(graph))
    with torch.no_grad():
        assert forward(owner, torch.randn(1, 2, 12)).shape == (1, 2, 2)
        with pytest.raises(ValueError, match=re.escape("with L in {10, 12}")):
            forward(owner, torch.randn(1, 2, 11))


def test_several_skips_into_one_target_update_it_in_turn() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("a", "Linear", out_features=4)
    b.layer("b", "Tanh")
    b.skip("s1", "x", "b")
    b.skip("s2", "a", "b", merge="mul")
    b.layer("c", "ReLU")
    assert [line.split("  #")[0].strip() for line in generate_forward(typed(b)).splitlines()[1:]] == [
        "a = self.a(x)", "b = self.b(a)", "b = b + x", "b = b * a", "c = self.c(b)", "return c"]


@pytest.mark.parametrize(("op", "args", "shape", "expression"), [
    ("transpose", {"dim0": 1, "dim1": 2}, [3, 4], "x.transpose(1, 2)"),
    ("permute", {"dims": [0, 2, 3, 1]}, [3, 4, 5], "x.permute(0, 2, 3, 1)"),
    ("reshape", {"shape": [2, -1]}, [3, 4], "x.reshape(x.shape[0], 2, -1)"),
    ("mean", {"dim": [2, 3], "keepdim": True}, [3, 4, 5], "x.mean(dim=(2, 3), keepdim=True)"),
    ("select", {"dim": 1, "index": 0}, [3, 4], "x.select(1, 0)"),
    ("parameter", {"shape": [2, 4]}, [3, 4], "self.op.expand(x.shape[0], -1, -1)"),
])
def test_code_ops_are_expressions_on_their_input(op: str, args: dict[str, Any], shape: list[int],
                                                 expression: str) -> None:
    b = GraphBuilder("Net")
    b.input("x", shape)
    b.layer("op", op, **args)
    assert generate_forward(typed(b)).splitlines()[1].split("  #")[0] == f"    op = {expression}"


def test_a_merge_layer_of_three_inputs() -> None:
    b = GraphBuilder("Net")
    b.input("x", [2, 4])
    b.layer("a", "ReLU")
    b.layer("c", "Tanh", "x")
    merge(b, "cat", "concat", ["a", "x", "c"], dim=-1)
    merge(b, "sum", "add", ["a", "x", "c"])
    lines = generate_forward(typed(b)).splitlines()
    assert lines[3] == "    cat = torch.cat([a, x, c], dim=-1)  # (N, 2, 12)"
    assert lines[4] == "    sum = a + x + c  # (N, 2, 4)"


def test_shape_comment_includes_the_batch() -> None:
    graph = basic()
    assert shape_comment(graph.nodes["conv1"]) == "(N, 8, 64, 64)"
    assert shape_comment(graph.nodes["x"]) == "(N, 4, 64, 64)"


# --- del placement ------------------------------------------------------------------------------------------

def dels(source: str) -> list[tuple[str, str]]:
    """(the statement before, the names deleted) for every `del` line."""
    lines = source.splitlines()
    return [(lines[i - 1].split("  #")[0].strip(), line.strip().removeprefix("del "))
            for i, line in enumerate(lines) if line.strip().startswith("del ")]


def chain(shape: list[int], outputs: list[str] | None = None) -> Graph:
    """x -> a -> b -> c -> d (shape-keeping ops), with `a` also read by d."""
    b = GraphBuilder("Chain")
    b.input("x", shape)
    b.layer("a", "ReLU")
    b.layer("b", "Tanh")
    b.layer("c", "Sigmoid")
    merge(b, "d", "add", ["c", "a"])
    b.layer("e", "ReLU")
    return typed(b, outputs)


def test_a_large_value_dies_after_its_last_reader() -> None:
    # LARGE elements per sample: a is read by b and by d, so it dies after d, not after b.
    assert dels(generate_forward(chain([LARGE]))) == [("a = self.a(x)", "x"), ("c = self.c(b)", "b"),
                                                      ("d = c + a", "a, c")]


def test_small_values_are_left_to_the_end_of_forward() -> None:
    assert dels(generate_forward(chain([LARGE - 1]))) == []


def test_returned_values_are_never_deleted() -> None:
    assert dels(generate_forward(chain([LARGE], ["e", "a", "x"]))) == [("c = self.c(b)", "b"), ("d = c + a", "c")]


def test_nothing_is_deleted_after_the_last_statement() -> None:
    b = GraphBuilder("Net")
    b.input("x", [LARGE])
    b.layer("a", "ReLU")
    merge(b, "out", "add", ["a", "x"])
    assert dels(generate_forward(typed(b))) == []


def test_without_shapes_every_value_dies_after_its_last_reader() -> None:
    assert dels(generate_forward(chain([4]), shapes=False)) == [("a = self.a(x)", "x"), ("c = self.c(b)", "b"),
                                                                ("d = c + a", "a, c")]


def test_a_skip_target_dies_only_after_the_merged_value_is_read() -> None:
    # conv2's variable is rewritten by the skip; the skip reads x last, so x dies after it (see basic()).
    assert dels(generate_forward(basic())) == [("relu = self.relu(conv1)", "conv1"),
                                               ("conv2 = self.conv2(relu)", "relu"),
                                               ("conv2 += self.down(x)", "x")]


# --- instances share source without shapes -------------------------------------------------------------------

def instance(qualname: str, shape: list[int], width: int, stride: int) -> Graph:
    b = GraphBuilder("Unit")
    b.input("x", shape)
    b.layer("conv", "Conv2d", out_channels=width, kernel_size=3, stride=stride, padding=1)
    b.layer("act", "ReLU")
    b.skip("s", "x", "act")
    graph = typed(b)
    graph.qualname = qualname
    return graph


def test_without_shapes_instances_of_different_shapes_have_the_same_source() -> None:
    first, second = instance("u.0.", [4, 64, 64], 8, 2), instance("u.1.", [8, 16, 16], 16, 1)
    assert generate_forward(first) != generate_forward(second)  # their shapes differ...
    assert generate_forward(first, shapes=False) == generate_forward(second, shapes=False)  # ...their code does not


# --- the source compiles and computes the hand-written forward --------------------------------------------------

def test_the_generated_forward_runs_like_the_hand_written_one() -> None:
    graph = basic()
    torch.manual_seed(0)
    owner = SimpleNamespace(conv1=nn.Conv2d(4, 8, 3, padding=1), relu=nn.ReLU(), conv2=nn.Conv2d(8, 8, 3, padding=1),
                            down=nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.BatchNorm2d(8)).eval(),
                            out=nn.ReLU())
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        expected = owner.out(owner.conv2(owner.relu(owner.conv1(x))) + owner.down(x))
        for shapes in (True, False):
            assert torch.equal(compiled(generate_forward(graph, shapes=shapes))(owner, x), expected)


def test_the_mixer_forward_runs_like_the_hand_written_one() -> None:
    torch.manual_seed(0)
    owner = SimpleNamespace(fc=nn.Linear(4, 4), gate=nn.Sigmoid(), cls=nn.Parameter(torch.randn(1, 1, 8)))
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        fc = owner.fc(x)
        gated = torch.cat([y, fc * torch.sigmoid(y)], dim=2)
        tokens = torch.cat([owner.cls.expand(2, -1, -1), gated], dim=1).transpose(1, 2)
        padded = torch.cat([torch.zeros(2, 2, 4), x, torch.zeros(2, 3, 4)], dim=1)
        swap, out_fc = compiled(generate_forward(mixer()))(owner, x, y)
    assert torch.equal(swap, tokens + padded)
    assert torch.equal(out_fc, fc)


def test_a_name_that_is_not_an_identifier_never_reaches_the_source() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4])
    b.layer("fc", "Linear", out_features=8)
    b.skip("s\n    import os\n    ", "x", "fc")  # GraphBuilder, unlike the resolver, does not check names
    with pytest.raises(AssertionError, match="unvalidated name"):
        generate_forward(typed(b))
