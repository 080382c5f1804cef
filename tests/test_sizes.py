"""Input sizes: PyTorch's own size arithmetic, models that work at every size their architecture admits,
the input guard, and `resgraph sizes` (checked against building at each size).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import resgraph
from conftest import EXAMPLES, ROOT
from resgraph.sizes import solve_sizes

# --- hand-written references (torchvision's ResNet, written out: its state_dict keys) --------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module], depths: list[int], expansion: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for index, (planes, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            blocks = []
            for i in range(depth):
                blocks.append(block(inplanes, planes, 2 if i == 0 and index > 0 else 1))
                inplanes = planes * expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * expansion, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


REFERENCES = {"resnet18.yaml": (BasicBlock, [2, 2, 2, 2], 1), "resnet50.yaml": (Bottleneck, [3, 4, 6, 3], 4)}


# --- sizes a network admits -----------------------------------------------------------------------

@pytest.mark.parametrize("example", ["resnet18.yaml", "resnet34.yaml", "resnet50.yaml", "resnet101.yaml",
                                     "resnet152.yaml"])
def test_the_zoo_resnets_check_at_every_common_size_with_the_same_parameters(example: str) -> None:
    counts = {size: resgraph.count_parameters(EXAMPLES / example, params={"image_size": size})
              for size in (224, 225, 240, 299, 600)}
    assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize("example", sorted(REFERENCES))
def test_a_resnet_compiled_at_224_equals_torchvision_at_299(example: str) -> None:
    """At 299, PyTorch's 3x3 stride-2 convs map 75 -> 38, and so must the 1x1 downsample projections."""
    model = resgraph.build(EXAMPLES / example, seed=0).eval()
    block, depths, expansion = REFERENCES[example]
    reference = ResNet(block, depths, expansion).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        built_at_299 = resgraph.build(EXAMPLES / example, params={"image_size": 299}).eval()
        built_at_299.load_state_dict(model.state_dict())
        torch.testing.assert_close(built_at_299(x), model(x), rtol=0, atol=0)


def small_unet(size: int) -> resgraph.CompiledModule:
    return resgraph.build(EXAMPLES / "unet.yaml", params={"size": size, "width": 4}, seed=0).eval()


def test_unet_compiled_once_works_at_every_tile_size_it_admits(tmp_path: pathlib.Path) -> None:
    model = small_unet(572)
    source = tmp_path / "unet_export.py"
    source.write_text(resgraph.to_python(model))
    spec = __import__("importlib.util").util.spec_from_file_location("unet_export", source)
    module = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exported = module.UNet().eval()
    exported.load_state_dict(model.state_dict(), strict=True)
    for size in (572, 604, 636):
        reference = small_unet(size)
        reference.load_state_dict(model.state_dict())
        x = torch.randn(1, 1, size, size)
        with torch.no_grad():
            expected = reference(x)
            assert expected.shape == (1, 2, size - 184, size - 184)
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
            torch.testing.assert_close(exported(x), expected, rtol=0, atol=0)


def test_unet_torch_export_keeps_the_tile_size_dynamic() -> None:
    model = small_unet(188)
    shapes = model.dynamic_shapes()
    program = torch.export.export(model, model.example_inputs(), dynamic_shapes=shapes)
    for size in (188, 220, 252):
        x = torch.randn(1, 1, size, size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x))


def test_a_size_the_architecture_does_not_admit_is_refused_by_the_input_guard() -> None:
    model = small_unet(572)
    expected = ("input 'x' must be (N, 1, H, W) with H in {188 + 16k}, W in {188 + 16k} (declared (N, 1, 572, 572)); "
                "got (1, 1, 573, 572)")
    with pytest.raises(ValueError, match=re.escape(expected)):
        model(torch.randn(1, 1, 573, 572))


@pytest.mark.parametrize(("call", "got"), [((2, 3, 32, 32), "(2, 3, 32, 32)"), ((2, 3, 224), "(2, 3, 224)"),
                                           ((2, 4, 224, 224), "(2, 4, 224, 224)")])
def test_the_input_guard_names_the_input_the_shape_it_needs_and_what_it_got(call: tuple[int, ...], got: str) -> None:
    model = resgraph.build(EXAMPLES / "vit_b_16.yaml", params={"depth": 1}, seed=0)
    with pytest.raises(ValueError) as caught:
        model(torch.randn(*call))
    assert str(caught.value) == ("VisionTransformerB16: input 'x' must be (N, 3, H, W) with 224 <= H <= 239, "
                                 f"224 <= W <= 239 (declared (N, 3, 224, 224)); got {got}")
    assert model(torch.randn(1, 3, 230, 239)).shape == (1, 1000)  # any size in the range works


def test_the_guard_does_not_reach_compiled_graphs() -> None:
    model = resgraph.build(EXAMPLES / "tutorial.yaml", seed=0).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=True)
    for size in (32, 40):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x))


# --- the solver, against building at each size ------------------------------------------------------

def builds_at(example: str, size: int, params: dict[str, int]) -> bool:
    channels = resgraph.load_spec(EXAMPLES / example, params=params).input_decls()["x"].shape[0]
    try:
        resgraph.check(EXAMPLES / example, params=params, input_shapes={"x": (channels, size, size)})
    except resgraph.SpecError:
        return False
    return True


@pytest.mark.parametrize(("example", "params", "low", "high", "rule"), [
    ("unet.yaml", {"width": 4}, 150, 420, "H in {188 + 16k}"),
    ("resnet50.yaml", {}, 1, 70, "any H"),
    ("vit_b_16.yaml", {"depth": 1}, 200, 260, "224 <= H <= 239"),
    ("efficientnet_b0.yaml", {}, 1, 60, "any H"),
    ("mobilenet_v2.yaml", {}, 1, 40, "any H"),
    ("densenet121.yaml", {}, 1, 40, "H >= 29"),
    ("preact_resnet.yaml", {}, 1, 40, "any H"),
])
def test_the_solver_agrees_with_checking_at_every_size(example: str, params: dict[str, int], low: int, high: int,
                                                       rule: str) -> None:
    report = resgraph.valid_sizes(EXAMPLES / example, params=params, low=low, high=high)
    height = report.of("x")[1]
    assert height.rule.describe("H") == rule
    square = set(report.square_valid["x"])
    brute = {size for size in range(low, high + 1) if builds_at(example, size, params)}
    assert square == brute


@pytest.mark.parametrize("declared", [(12, 12), (9, 14)])
def test_the_input_guard_admits_exactly_the_sizes_torch_runs_when_height_and_width_differ(
        declared: tuple[int, int]) -> None:
    # Kernels, strides and dilations that differ per axis: H's rule is not W's, whether the declared
    # sizes are equal or not (the solver shares one dim's answer with another only when their
    # guards are the same).
    spec = textwrap.dedent(f"""\
        resgraph: 1
        name: Aniso
        inputs:
          x: [2, {declared[0]}, {declared[1]}]
        layers:
          - conv: {{op: Conv2d, out_channels: 3, kernel_size: [3, 1], stride: [1, 2]}}
          - pool: {{op: MaxPool2d, kernel_size: [2, 1], stride: [2, 1]}}
          - conv2: {{op: Conv2d, out_channels: 3, kernel_size: [1, 3], dilation: [1, 2]}}
        """)
    model = resgraph.build(spec, seed=0)
    reference = nn.Sequential(nn.Conv2d(2, 3, (3, 1), stride=(1, 2)), nn.MaxPool2d((2, 1), (2, 1)),
                              nn.Conv2d(3, 3, (1, 3), dilation=(1, 2)))

    def runs(module: nn.Module, x: torch.Tensor) -> bool:
        try:
            module(x)
        except (RuntimeError, ValueError):
            return False
        return True

    with torch.no_grad():
        admitted = {(h, w) for h in range(1, 14) for w in range(1, 14) if runs(model, torch.zeros(1, 2, h, w))}
        torch_runs = {(h, w) for h in range(1, 14) for w in range(1, 14) if runs(reference, torch.zeros(1, 2, h, w))}
    assert admitted == torch_runs and (4, 9) in admitted and (9, 4) not in admitted


def test_invalid_sizes_name_the_first_node_that_fails() -> None:
    report = resgraph.valid_sizes(EXAMPLES / "unet.yaml", low=560, high=580)
    height = report.of("x")[1]
    assert height.valid == (572,)
    assert height.failures[571] == "copy4" and height.failures[573] == "copy1"


def test_input_shapes_override_the_declared_ones_without_editing_the_spec(tmp_path: pathlib.Path) -> None:
    graph = resgraph.check(EXAMPLES / "resnet50.yaml", input_shapes={"x": (3, 299, 299)})
    assert graph.nodes["layer2"].meta["type"].shape == (512, 38, 38)
    model = resgraph.build(EXAMPLES / "tutorial.yaml", input_shapes={"x": (3, 33, 33)})
    assert model.graph.nodes["res2_conv2"].meta["type"].shape == (128, 33, 33)
    path = tmp_path / "m.pt"
    resgraph.save(model, path)
    assert resgraph.load(path).build_record.input_shapes == {"x": (3, 33, 33)}
    with pytest.raises(resgraph.UsageError, match="the spec has no input 'y'"):
        resgraph.check(EXAMPLES / "tutorial.yaml", input_shapes={"y": (3, 32, 32)})


def test_an_input_shape_given_with_a_batch_dim_is_named_at_the_input_when_the_check_fails() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(EXAMPLES / "tutorial.yaml", input_shapes={"x": (8, 3, 32, 32)})
    first, *rest = sorted(caught.value.diagnostics, key=lambda d: d.location.line)
    assert first.location.line == 8 and first.message == (
        "input x: the input shape given, [8, 3, 32, 32], has one dim more than the spec declares, [3, 32, 32]: "
        "input shapes are per sample, without the batch dim")
    assert first.hint == "give [3, 32, 32]"
    assert rest and "expects (C, H, W) per sample, got (8, 3, 32, 32)" in rest[0].message
    # Another rank that builds is meant: nothing is said. Nor for a shape of the declared rank.
    header = "resgraph: 1\nname: Net\ninputs: {x: [16]}\nlayers:\n"
    lengths = resgraph.check(header + "  - fc: {op: Linear, out_features: 2}\n", input_shapes={"x": (4, 16)})
    assert lengths.nodes["fc"].meta["type"].shape == (4, 2)
    with pytest.raises(resgraph.SpecError) as caught:  # an extra trailing dim is not a batch dim
        resgraph.check(EXAMPLES / "tutorial.yaml", input_shapes={"x": (3, 32, 32, 1)})
    assert not any("batch dim" in d.message for d in caught.value.diagnostics)
    fixed = header + "  - fc: {op: Linear, in_features: 16, out_features: 2}\n"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(fixed, input_shapes={"x": (8,)})
    assert [d.location.line for d in caught.value.diagnostics] == [5]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resgraph", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_sizes_prints_each_rule_with_the_smallest_and_declared_size() -> None:
    result = cli("sizes", "examples/unet.yaml")
    assert result.returncode == 0, result.stderr
    assert "  H in {188 + 16k}: 188 (smallest), 204, 220, ..., 572 (declared), ..., 2044 (117 sizes)" in result.stdout
    assert "invalid, e.g. 571 (fails at 'copy4'), 573 (fails at 'copy1')" in result.stdout
    data = json.loads(cli("sizes", "examples/resnet50.yaml", "--json", "--range", "1..64").stdout)
    height = data["inputs"]["x"]["dims"][1]
    assert height["rule"] == "any H" and height["valid"] == list(range(1, 65)) and height["declared"] == 224


def test_cli_input_flag_overrides_a_shape() -> None:
    result = cli("validate", "examples/resnet50.yaml", "--input", "x=3,299,299")
    assert result.returncode == 0, result.stderr
    bad = cli("validate", "examples/resnet50.yaml", "--input", "x=3,two,299")
    assert bad.returncode == 2 and "expected NAME=SIZE,SIZE,..." in bad.stderr


def test_the_solver_runs_on_a_hand_built_graph() -> None:
    from resgraph.graph import GraphBuilder
    from resgraph.shapes import infer_shapes

    b = GraphBuilder("Net")
    b.input("x", [4, 16], layout="channels_first")  # (C, L): a 1-d map
    b.layer("conv", "Conv1d", out_channels=4, kernel_size=2, stride=2)
    b.skip("res", "x", "conv")
    report = solve_sizes(infer_shapes(b.build()), low=1, high=40)
    (length,) = [dim for dim in report.dims if dim.free]
    assert length.rule.describe("L") == "L: multiples of 2"  # a 2-wide stride-2 conv floors odd lengths


# --- uncurated torch.nn classes: sizes from the meta device ---------------------------------------

RECURRENT = """resgraph: 1
name: Recurrent
inputs:
  x: [20, 16]
layers:
  - lstm: {op: LSTM, hidden_size: 8, output: 0}
  - gru: {op: GRU, hidden_size: 6, num_layers: 2, bidirectional: true, output: 0}
  - norm: {op: LayerNorm}
"""


def test_a_recurrent_layer_keeps_the_sequence_length_free_while_changing_the_features() -> None:
    """An LSTM or GRU maps (L, F) to (L, H) at any L: the spec admits every length, and the model
    built at 20 gives, at each, what torch's own modules give with the same weights."""
    height = resgraph.valid_sizes(RECURRENT, low=1, high=64).of("x")[0]
    assert height.rule.describe("L") == "any L" and height.valid == tuple(range(1, 65))
    model = resgraph.build(RECURRENT, seed=0).eval()
    lstm, gru = nn.LSTM(16, 8, batch_first=True), nn.GRU(8, 6, num_layers=2, bidirectional=True, batch_first=True)
    lstm.load_state_dict(model.lstm.state_dict())
    gru.load_state_dict(model.gru.state_dict())
    for length in (1, 7, 20, 33):
        x = torch.randn(2, length, 16)
        with torch.no_grad():
            expected = nn.functional.layer_norm(gru(lstm(x)[0])[0], (12,), model.norm.weight, model.norm.bias)
            torch.testing.assert_close(model(x), expected)


def test_an_uncurated_op_that_needs_particular_sizes_still_fixes_them() -> None:
    """ChannelShuffle keeps its input's shape, but only where its groups divide dim 1: a length torch
    refuses is never admitted, and the guard refuses it before torch would."""
    spec = RECURRENT.replace("  - lstm: {op: LSTM, hidden_size: 8, output: 0}\n", "").replace(
        "  - gru: {op: GRU, hidden_size: 6, num_layers: 2, bidirectional: true, output: 0}\n",
        "  - shuffle: {op: ChannelShuffle, groups: 4}\n")
    valid = resgraph.valid_sizes(spec, low=1, high=64).of("x")[0].valid
    assert 20 in valid and not {21, 22, 23} & set(valid)
    with pytest.raises(RuntimeError):
        nn.ChannelShuffle(4)(torch.randn(2, 22, 16))
    with pytest.raises(ValueError, match=r"input 'x' must be \(N, L, 16\)"):
        resgraph.build(spec)(torch.randn(2, 22, 16))


# --- 1-d maps: a 2-dim input that Conv1d reads is (C, L) ------------------------------------------

RESNET_1D = """resgraph: 1
name: ResNet1d
inputs:
  x: [2, 1001]
blocks:
  down:
    layers:
      - conv1: {op: Conv1d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1, bias: false}
      - bn1: {op: BatchNorm1d}
      - relu: {op: ReLU}
      - conv2: {op: Conv1d, out_channels: 8, kernel_size: 3, padding: 1, bias: false}
    skips:
      - downsample: {from: x, to: conv2}
layers:
  - stage: {block: down}
  - pool: {op: AdaptiveAvgPool1d, output_size: 1}
"""


class Down1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(2, 8, 3, 2, 1, bias=False), nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, 1, 1, bias=False)
        self.downsample = nn.Sequential(nn.Conv1d(2, 8, 1, 2, bias=False), nn.BatchNorm1d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn1(self.conv1(x)))) + self.downsample(x)


@pytest.mark.parametrize("direct", [True, False], ids=["read by a layer", "read by a block call"])
def test_a_two_dim_input_read_by_conv1d_is_a_map_whose_length_is_free(direct: bool) -> None:
    """Written `[2, 1001]` without a layout and read by a Conv1d, the input is (C, L): the channels
    are fixed and every length works, as in torch; it is not a sequence of 1001 features."""
    head = "  - head: {op: Conv1d, out_channels: 2, kernel_size: 1}\n"
    spec = RESNET_1D if not direct else RESNET_1D.replace("  - stage:", head + "  - stage:")
    report = resgraph.valid_sizes(spec, low=1, high=64)
    channels, length = report.of("x")
    assert (channels.name, channels.free, length.name, length.free) == ("C", False, "L", True)
    assert length.valid == tuple(range(1, 65))
    # Through a block whose first layer calls another block: the same (C, L) map.
    nested = RESNET_1D.replace("blocks:\n", "blocks:\n  outer:\n    layers:\n      - inner: {block: down}\n").replace(
        "{block: down}\n  - pool", "{block: outer}\n  - pool")
    dims = resgraph.valid_sizes(nested, low=1, high=8).of("x")
    assert [(d.name, d.free) for d in dims] == [("C", False), ("L", True)]
    model = resgraph.build(spec, seed=0).eval()
    reference = Down1d().eval()
    reference.load_state_dict(model.stage.state_dict())
    for size in (1001, 1000, 69, 7):
        x = torch.randn(2, 2, size)
        with torch.no_grad():
            given = model.head(x) if direct else x
            torch.testing.assert_close(model(x), nn.functional.adaptive_avg_pool1d(reference(given), 1))


# --- a position table bounds the sequence length ----------------------------------------------------

POSITIONS = """resgraph: 1
name: Positions
inputs:
  tokens: {shape: [10], dtype: int64}
layers:
  - wte: {op: Embedding, num_embeddings: 50, embedding_dim: 8, input: tokens}
  - positions: {op: arange, input: tokens, dim: 1}
  - wpe: {op: Embedding, num_embeddings: 16, embedding_dim: 8}
  - embedded: {op: add, input: [wte, wpe]}
"""


def test_positions_counted_at_run_time_admit_the_lengths_the_position_table_covers() -> None:
    """GPT-2's learned positions: `Embedding(16)` of `arange(L)` works for L <= 16 and torch fails
    with an IndexError beyond; resgraph admits exactly those lengths, and its guard refuses the rest."""
    length = resgraph.valid_sizes(POSITIONS, low=1, high=40).of("tokens")[0]
    assert length.valid == tuple(range(1, 17)) and length.failures[17] == "wpe"
    model = resgraph.build(POSITIONS, seed=0)
    table = nn.Embedding(16, 8)
    table.load_state_dict(model.wpe.state_dict())
    for size in (1, 16):
        tokens = torch.randint(0, 50, (2, size))
        torch.testing.assert_close(model(tokens), model.wte(tokens) + table(torch.arange(size)))
    with pytest.raises(IndexError):
        table(torch.arange(17))
    with pytest.raises(ValueError, match=r"input 'tokens' must be \(N, L\) with 1 <= L <= 16"):
        model(torch.randint(0, 50, (2, 17)))
    shifted = POSITIONS.replace("dim: 1}", "dim: 1, start: 2, step: 2}")  # ids 2, 4, ..., 2L: L <= 7
    at_five = resgraph.valid_sizes(shifted, input_shapes={"tokens": (5,)}, low=1, high=40)
    assert at_five.of("tokens")[0].valid == tuple(range(1, 8))
    with pytest.raises(resgraph.SpecError, match="its ids go up to 20, but the table has num_embeddings=16"):
        resgraph.check(shifted)


# --- dims that must be equal across inputs: a mask over the sequence ------------------------------

MASKED = """resgraph: 1
name: Masked
inputs:
  x: [6, 8]
  padding: {shape: [6], dtype: bool}
  blocked: {shape: [6, 6], dtype: bool}
layers:
  - attn: {op: MultiheadAttention, num_heads: 2, input: [x, padding, blocked], masks: [key_padding_mask, attn_mask]}
  - out: {op: add, input: [attn, x]}
"""


def test_a_mask_over_the_sequence_follows_its_length_at_every_size() -> None:
    """The masks' dims must equal x's sequence length: alone none of them admits another size, together
    they admit every one. Compiled once at 6, the model equals torch's attention at other lengths, its
    guard refuses masks that do not fit the sequence, and torch.export keeps the length dynamic."""
    report = resgraph.valid_sizes(MASKED, low=1, high=40)
    length, mask_length = report.of("x")[0], report.of("padding")[0]
    assert length.valid == mask_length.valid == tuple(range(1, 41))
    assert length.linked == ("blocked.L1", "blocked.L2", "padding.L") and mask_length.linked[-1] == "x.L"
    assert "any L (equal to blocked.L1, blocked.L2, padding.L)" in report.format("Masked")
    model = resgraph.build(MASKED, seed=0).eval()
    reference = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    reference.load_state_dict(model.attn.state_dict())
    for size in (6, 11, 1):
        x, padding = torch.randn(2, size, 8), torch.zeros(2, size, dtype=torch.bool)
        blocked = torch.rand(2, size, size) > 0.7
        blocked[..., 0] = False
        with torch.no_grad():
            expected = reference(x, x, x, key_padding_mask=padding, attn_mask=blocked.repeat_interleave(2, 0),
                                 need_weights=False)[0] + x
            torch.testing.assert_close(model(x, padding, blocked), expected)
    with pytest.raises(ValueError, match=r"input 'padding' must be \(N, L\) with L = x\.L \(declared \(N, 6\)\); "
                                         r"got \(2, 10\)"):
        model(torch.randn(2, 11, 8), torch.zeros(2, 10, dtype=torch.bool), torch.zeros(2, 11, 11, dtype=torch.bool))
    exported = torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes()).module()
    x = torch.randn(3, 9, 8)
    mask, blocked = torch.zeros(3, 9, dtype=torch.bool), torch.zeros(3, 9, 9, dtype=torch.bool)
    torch.testing.assert_close(exported(x, mask, blocked), model(x, mask, blocked))


@pytest.mark.parametrize("span", ["1..100000000", "1..10000000000000000000000", "5..4611686018427387905"])
def test_a_range_too_wide_or_past_2_62_is_a_usage_error(span: str) -> None:
    # Every size in the range is evaluated at once: 1..10^8 ran out of memory (MemoryError traceback),
    # and a size past int64 raised a ValueError traceback.
    result = subprocess.run([sys.executable, "-m", "resgraph", "sizes", "examples/tutorial.yaml", "--range", span],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"resgraph: error: size range {span}: at most 1,048,576 sizes, up to 2^62")
    low, high = map(int, span.split(".."))
    with pytest.raises(resgraph.UsageError, match="at most 1,048,576 sizes"):
        resgraph.valid_sizes(EXAMPLES / "tutorial.yaml", low=low, high=high)
    with pytest.raises(resgraph.UsageError, match="at most 1,048,576 sizes"):  # the solver itself, on a checked graph
        solve_sizes(resgraph.check(EXAMPLES / "tutorial.yaml"), low=low, high=high)


def test_a_narrow_range_of_large_sizes_still_works() -> None:
    report = resgraph.valid_sizes(EXAMPLES / "tutorial.yaml", low=10**9, high=10**9 + 100)
    assert report.range == (10**9, 10**9 + 100)


@pytest.mark.parametrize("op", ["add", "mul", "sub"])
def test_an_input_dim_declared_1_in_an_elementwise_op_takes_1_or_the_size_it_meets(op: str) -> None:
    """torch broadcasts a dim of 1 at any size of the other operand, and so does the guard: `y.L in (1, x.L)`,
    as an sdpa mask's dim declared 1 does (it held y.L to 1)."""
    spec = f"resgraph: 1\nname: A\ninputs:\n  x: [4, 8]\n  y: [1, 8]\nlayers:\n  - s: {{op: {op}, input: [x, y]}}\n"
    model = resgraph.build(spec)
    function = {"add": torch.add, "mul": torch.mul, "sub": torch.sub}[op]
    for rows, y_rows in ((4, 1), (4, 4), (7, 1), (7, 7)):
        x, y = torch.randn(2, rows, 8), torch.randn(2, y_rows, 8)
        torch.testing.assert_close(model(x, y), function(x, y))
    with pytest.raises(ValueError, match=r"y\.L in \(1, x\.L\)"):
        model(torch.randn(2, 4, 8), torch.randn(2, 3, 8))
    assert "together: y.L in (1, x.L), as 's' needs" in resgraph.valid_sizes(spec).format("A")
