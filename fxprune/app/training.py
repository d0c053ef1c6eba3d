"""Minimal training and evaluation loops shared by the pruning job, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from fxprune.errors import TrainingError


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                penalty: Callable[[], torch.Tensor] | None = None,
                device: torch.device | str = "cpu") -> float:
    """One epoch of task loss (+ `penalty()` if given); returns the mean task loss."""
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        objective = loss + penalty() if penalty is not None else loss
        if not torch.isfinite(objective):
            raise TrainingError(f"the loss became {float(objective.detach())}: lower the learning "
                                "rate (or gamma); the last checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy in percent, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = count = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(1)
        correct += int((pred == y.to(device)).sum())
        count += len(y)
    model.train(was_training)
    return 100.0 * correct / max(count, 1)
