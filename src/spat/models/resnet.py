"""ResNet-18 (He et al. 2016, arXiv 1512.03385) and PreAct ResNet-18 (He et al. 2016, identity
mappings, arXiv 1603.05027) with the CIFAR stem used throughout adversarial-training work:
a 3x3 stride-1 first convolution and no max-pool, then four stages of BasicBlocks [2, 2, 2, 2]
with 64/128/256/512 channels and strides 1/2/2/2, and global average pooling (so any input size
works). Without the final fc: the head is separate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, + shortcut (1x1 conv-BN on a change of
    shape), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv + shortcut; the projection
    shortcut (1x1 conv, no BN) takes the pre-activated input, as in arXiv 1603.05027."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet-18 backbone, CIFAR stem (arXiv 1512.03385): conv3x3-64-BN-ReLU, BasicBlock
    [2, 2, 2, 2], global average pooling → ``out_dim`` = 512. torch's default init."""

    def __init__(
        self, in_channels: int = 3, num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        layers = []
        for (planes, stride), n in zip(STAGES, num_blocks, strict=True):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, 512)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class PreActResNet(nn.Module):
    """PreAct ResNet-18 backbone, CIFAR stem (arXiv 1603.05027): conv3x3-64 (no BN/ReLU: the
    first block pre-activates), PreActBlock [2, 2, 2, 2], final BN-ReLU (the pre-activation
    network's last block output is not activated otherwise), global average pooling →
    ``out_dim`` = 512. torch's default init."""

    def __init__(
        self, in_channels: int = 3, num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        layers = []
        for (planes, stride), n in zip(STAGES, num_blocks, strict=True):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_planes)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, 512)."""
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def resnet18(in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> ResNet:
    """ResNet-18 backbone with the CIFAR stem (arXiv 1512.03385); any input size."""
    del image_size  # global average pooling: any size
    return ResNet(in_channels, (2, 2, 2, 2))


def preact_resnet18(
    in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> PreActResNet:
    """PreAct ResNet-18 backbone with the CIFAR stem (arXiv 1603.05027); any input size."""
    del image_size  # global average pooling: any size
    return PreActResNet(in_channels, (2, 2, 2, 2))
