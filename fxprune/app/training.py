"""Minimal training and evaluation loops shared by the pruning job, tests and benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def fresh_statistics(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Every norm of `model` that keeps running statistics (BatchNorm, and InstanceNorm where
    asked to), found by those statistics, not by class: reset, in training mode, averaging
    cumulatively (momentum None) over what the block runs through the model; their momentum
    and mode are restored after it."""
    norms = [m for m in model.modules()
             if getattr(m, "track_running_stats", False) and hasattr(m, "reset_running_stats")]
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        yield norms
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)


@torch.no_grad()
def precise_bn(model: nn.Module, loader: DataLoader, *, batches: int = 50,
               device: torch.device | str = "cpu") -> None:
    """Re-estimate every BatchNorm's running statistics over `batches` training batches, in
    place ("precise BN", Wu and Johnson 2021). Training mode never reads them, so this changes
    what evaluation sees and nothing of the training trajectory. Catalyst's opt1 shrinks
    whole channels by orders of magnitude within a few epochs; the running averages (momentum
    0.1) then describe weights that no longer exist, and top-1 in eval mode drops by tens of
    points that a re-estimate shows were never lost (benchmarks/catalyst_convergence.py)."""
    was_training = model.training
    with fresh_statistics(model) as norms:
        if not norms:
            return
        model.train()
        for k, (x, _) in enumerate(loader):
            if k == batches:
                break
            model(x.to(device))
    model.train(was_training)
