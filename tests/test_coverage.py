"""Coverage: the share of the producers' output channels in prunable groups."""

from __future__ import annotations

import torch
from torch import nn

import fxprune


class _SharedLayer(nn.Module):
    """One Linear called twice: two members of its group, four channels, counted once."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_a_layer_called_twice_counts_once() -> None:
    gm = fxprune.trace(_SharedLayer(), torch.randn(2, 4))
    graph = fxprune.analyze(gm)
    covered = fxprune.coverage(gm, graph)
    # fc's 4 outputs are prunable (coupled with its own input), head's 2 are the model output
    assert (covered.channels, covered.prunable) == (6, 4)
