"""WideResNet (Zagoruyko & Komodakis 2016, arXiv 1605.07146) as in TRADES (arXiv 1901.08573,
https://github.com/yaodongyu/TRADES), the backbone of the SPAT paper (arXiv 2210.15068),
without its final fc (the head is separate)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from spat.errors import SpatError


class WideBasicBlock(nn.Module):
    """TRADES' pre-activation wide block. When the shape changes, the input itself is replaced
    by ReLU(BN(x)) and both the residual branch and the 1x1 projection shortcut read it; otherwise
    the identity shortcut carries the raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.conv_shortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.conv_shortcut = nn.Conv2d(
                in_planes, out_planes, 1, stride=stride, padding=0, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_shortcut is not None:
            x = F.relu(self.bn1(x))
            out = x
        else:
            out = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-width backbone (arXiv 1605.07146) as in TRADES: conv3x3-16, three groups of
    n = (depth−4)/6 wide blocks with 16k/32k/64k channels and strides 1/2/2, BN-ReLU, global
    average pooling → ``out_dim`` = 64k (640 for k = 10).

    Differences from TRADES' file: any number of input channels; global average pooling
    instead of ``avg_pool2d(out, 8)`` (the same on 32x32 inputs, and any size works); TRADES'
    unused ``sub_block1`` (built but never called in ``forward``, 2.1 M dead parameters for
    WRN-34-10) is omitted, so WRN-34-10 with 10 classes has 46.16 M parameters. Init as TRADES:
    conv weights N(0, 2/(k·k·out_channels)), BN weight 1 and bias 0.
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        check_wrn(depth, widen_factor)
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _group(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = _group(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = _group(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.out_dim = channels[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, 64·widen_factor)."""
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def _group(n: int, in_planes: int, out_planes: int, stride: int, drop: float) -> nn.Sequential:
    blocks = [
        WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                       drop)
        for i in range(n)
    ]
    return nn.Sequential(*blocks)


def check_wrn(depth: int, widen_factor: int) -> None:
    """A :class:`SpatError` unless depth = 6n + 4 with n ≥ 1 and widen_factor ≥ 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise SpatError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), "
                        f"got {depth}")
    if widen_factor < 1:
        raise SpatError(f"WideResNet width must be a positive integer, got {widen_factor}")


def wide_resnet(
    depth: int, widen_factor: int, in_channels: int = 3, image_size: tuple[int, int] = (32, 32)
) -> WideResNet:
    """WRN-depth-widen_factor backbone (arXiv 1605.07146, TRADES' variant); any input size."""
    del image_size  # global average pooling: any size
    return WideResNet(depth, widen_factor, in_channels)


def wrn34_10(in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> WideResNet:
    """WRN-34-10 (TRADES' and SPAT's CIFAR backbone), ``out_dim`` 640."""
    return wide_resnet(34, 10, in_channels, image_size)


def wrn28_10(in_channels: int = 3, image_size: tuple[int, int] = (32, 32)) -> WideResNet:
    """WRN-28-10, ``out_dim`` 640."""
    return wide_resnet(28, 10, in_channels, image_size)
