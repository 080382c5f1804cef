"""Hand-written PyTorch references, with the same module names as the resgraph specs so the
same weights load into both (strict=True)."""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck, written out."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
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
        # torchvision's order: the shortcut is computed last, just before the add (computing it first
        # keeps it alive through the block and reads x while it is still in cache: 1-8% faster at
        # batch 8 in loaded runs, a different program from torchvision's)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out += identity  # torchvision adds in place
        return self.relu(out)


class ResNet50(nn.Module):
    """torchvision's resnet50(), written out."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, stages = 64, []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [Bottleneck(inplanes, planes, stride)]
            layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes * 4
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))) + x


class ResidualMLP(nn.Module):
    """The residual MLP of bench/specs/residual_mlp_200.yaml, written out."""

    def __init__(self, width: int = 32, depth: int = 200) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Block(width) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class TutorialResNet(nn.Module):
    """examples/tutorial.yaml written out: the tutorial's ResidualBlock(3, 64) then ResidualBlock(64, 128),
    each shortcut a 1x1 conv + BatchNorm projection (the one resgraph inserts; same names)."""

    def __init__(self) -> None:
        super().__init__()
        self.res1_conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.res1_relu = nn.ReLU()
        self.res1_conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.shortcut1 = nn.Sequential(nn.Conv2d(3, 64, 1, bias=False), nn.BatchNorm2d(64))
        self.relu = nn.ReLU()
        self.res2_conv1 = nn.Conv2d(64, 128, 3, padding=1)
        self.res2_relu = nn.ReLU()
        self.res2_conv2 = nn.Conv2d(128, 128, 3, padding=1)
        self.shortcut2 = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.res1_conv2(self.res1_relu(self.res1_conv1(x))) + self.shortcut1(x)  # (N, 64, H, W)
        out = self.relu(out)
        return self.res2_conv2(self.res2_relu(self.res2_conv1(out))) + self.shortcut2(out)  # (N, 128, H, W)
