"""The embedded default model: a small residual CNN for 8x8 digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class DigitsNet(nn.Module):
    """conv 32 -> residual block of two 32-convs -> pool -> conv 64 -> conv 64 -> linear 10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.stem = _cbr(in_channels, width)
        self.block = nn.Sequential(_cbr(width, width), nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.conv3, self.conv4 = _cbr(width, 2 * width), _cbr(2 * width, 2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = self.conv4(self.conv3(F.max_pool2d(x, 2)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
