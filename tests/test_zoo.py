"""The reference zoo reproduces torchvision: exact parameter counts and, for ResNets, key names.

The numbers come from tests/fixtures/torchvision.json, written by generate_torchvision.py in an
environment with torchvision 0.29.1 (torchvision is not a test dependency).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

import resgraph
from conftest import EXAMPLES

FIXTURE = json.loads((EXAMPLES.parent / "tests" / "fixtures" / "torchvision.json").read_text())["models"]
ZOO = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50", "resnet101": "ResNet101",
       "resnet152": "ResNet152", "densenet121": "DenseNet121", "mobilenet_v2": "MobileNetV2",
       "efficientnet_b0": "EfficientNetB0", "vit_b_16": "VisionTransformerB16"}


def test_fixture_holds_the_issue_table() -> None:
    assert {name: entry["parameters"] for name, entry in FIXTURE.items()} == {
        "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
        "resnet152": 60_192_808, "densenet121": 7_978_856, "mobilenet_v2": 3_504_872,
        "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "vit_b_16": 86_567_656}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_parameter_count_equals_torchvision(name: str) -> None:
    model = resgraph.build(EXAMPLES / f"{name}.yaml")
    assert type(model).__name__ == ZOO[name]
    assert sum(p.numel() for p in model.parameters()) == FIXTURE[name]["parameters"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_keys_and_shapes_equal_torchvision_in_order(name: str) -> None:
    model = resgraph.build(EXAMPLES / f"{name}.yaml")
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert ours == FIXTURE[name]["state_dict"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_on_a_small_input(name: str) -> None:
    model = resgraph.build(EXAMPLES / f"{name}.yaml", params={"num_classes": 7, "image_size": 64}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


class TorchvisionBasicBlock(nn.Module):
    """torchvision's BasicBlock, written out: the reference for resgraph's `basic` block."""

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


def test_resnet18_layer2_equals_hand_written_blocks_with_the_same_weights() -> None:
    model = resgraph.build(EXAMPLES / "resnet18.yaml", seed=0).train()
    reference = nn.Sequential(TorchvisionBasicBlock(64, 128, 2), TorchvisionBasicBlock(128, 128, 1)).train()
    reference.load_state_dict(model.layer2.state_dict(), strict=True)
    x = torch.randn(2, 64, 16, 16)
    torch.testing.assert_close(model.layer2(x), reference(x), rtol=0, atol=0)
    assert isinstance(model.layer2, nn.Sequential) and type(model.layer2[0]).__name__ == "Basic"


def test_depth_scaling_turns_efficientnet_b0_into_b1() -> None:
    model = resgraph.build(EXAMPLES / "efficientnet_b0.yaml", params={"depth_mult": 1.1, "image_size": 240})
    assert sum(p.numel() for p in model.parameters()) == FIXTURE["efficientnet_b1"]["parameters"]
    assert [len(stage.blocks) for stage in model.stages] == [2, 3, 3, 4, 4, 5, 2]  # ceil(n * 1.1)


def test_unet_has_the_papers_shapes_and_crops_each_copy() -> None:
    graph = resgraph.check(EXAMPLES / "unet.yaml")  # the paper's 572x572 tile, shapes only
    shape = {name: graph.nodes[name].meta["type"].shape for name in ("enc4", "bottleneck", "copy4", "head")}
    assert shape == {"enc4": (512, 64, 64), "bottleneck": (1024, 28, 28), "copy4": (1024, 56, 56),
                     "head": (2, 388, 388)}
    plans = [graph.nodes[f"copy{i}"].meta["projection"] for i in (4, 3, 2, 1)]
    assert [plan.reason for plan in plans] == ["crop 64x64->56x56", "crop 136x136->104x104",
                                               "crop 280x280->200x200", "crop 568x568->392x392"]

    model = resgraph.build(EXAMPLES / "unet.yaml", params={"size": 188})
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0]) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert sum(m.numel() for m in model.parameters()) == sum(i * o * k * k + o for i, o, k in convs) == 31_030_658
    with torch.no_grad():
        assert model(torch.randn(1, 1, 188, 188)).shape == (1, 2, 4, 4)


def test_preact_resnet_skips_wrap_norm_activation_conv_pairs() -> None:
    model = resgraph.build(EXAMPLES / "preact_resnet.yaml", seed=0)
    block = model.layer2[0]
    code = type(block).code
    assert code.index("self.bn1(x)") < code.index("conv2 += self.shortcut(x)")  # identity path: raw x
    assert isinstance(block.shortcut[0], nn.Conv2d) and len(block.shortcut) == 1  # plain 1x1 conv, stride 2
    assert block.shortcut[0].stride == (2, 2)
    assert not hasattr(model.layer2[1], "shortcut")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_zoo_table_states_what_the_specs_build() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    rows = re.findall(r"^\| `examples/(\w+)\.yaml` \| ([\d,]+) \|", readme, flags=re.MULTILINE)
    # the torchvision zoo, U-Net, the pre-activation ResNet, and the zoo of tests/test_zoo_reach.py
    assert len(rows) == len(ZOO) + 2 + 5
    for name, stated in rows:
        model = resgraph.build(EXAMPLES / f"{name}.yaml", device="meta")  # Llama 2 7B: counted, never allocated
        assert sum(p.numel() for p in model.parameters()) == int(stated.replace(",", "")), name
