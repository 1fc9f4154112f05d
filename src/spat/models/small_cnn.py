"""TRADES' SmallCNN for MNIST-like inputs (Zhang et al. 2019, arXiv 1901.08573; the
architecture of https://github.com/yaodongyu/TRADES), without its final fc (the head is
separate)."""

from __future__ import annotations

import torch
from torch import nn

from spat.errors import SpatError

#: Inputs at least this many pixels on each side use TRADES' unpadded convolutions.
UNPADDED_MIN_SIZE = 28


class SmallCNN(nn.Module):
    """conv3x3-32, relu, conv3x3-32, relu, maxpool2, conv3x3-64, relu, conv3x3-64, relu, maxpool2,
    fc-200, relu, dropout 0.5, fc-200, relu → ``out_dim`` = 200 penultimate features.

    The convolutions are unpadded, as in TRADES, when both sides of the input are at least
    28 px (28x28 MNIST → 4x4x64 = 1024 flattened, exactly TRADES' network; 32x32 → 5x5x64).
    Smaller inputs (e.g. 8x8 digits) would shrink to nothing, so there every convolution uses
    padding 1 (8x8 → 2x2x64). The flatten size is computed from ``image_size``, so the network
    only accepts inputs of that size. Init as TRADES: Kaiming-normal conv weights, conv biases
    zero, linear layers torch's default. (TRADES also zero-initialises its final fc, which here
    is the separate head; see :func:`spat.models.build_model`.)
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: tuple[int, int] = (28, 28),
        drop: float = 0.5,
    ) -> None:
        super().__init__()
        h, w = int(image_size[0]), int(image_size[1])
        self.padded = min(h, w) < UNPADDED_MIN_SIZE
        pad = 1 if self.padded else 0
        fh, fw = _feature_size(h, pad), _feature_size(w, pad)
        if fh < 1 or fw < 1:
            raise SpatError(f"small_cnn needs inputs of at least 4x4 pixels, got {h}x{w}")
        self.image_size = (h, w)
        self.flat_dim = 64 * fh * fw
        self.out_dim = 200
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=pad),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 3, padding=pad),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.fc = nn.Sequential(
            nn.Linear(self.flat_dim, 200),
            nn.ReLU(),
            nn.Dropout(drop),
            nn.Linear(200, 200),
            nn.ReLU(),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape (N, 200)."""
        return self.fc(torch.flatten(self.feature_extractor(x), 1))


def _feature_size(n: int, pad: int) -> int:
    """Side length after two (conv, conv, maxpool2) stages."""
    for _ in range(2):
        n = (n + 4 * pad - 4) // 2  # two 3x3 convs with padding `pad`, then maxpool 2
    return n


def small_cnn(in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> SmallCNN:
    """TRADES' SmallCNN backbone (arXiv 1901.08573), ``out_dim`` 200."""
    return SmallCNN(in_channels, image_size)
