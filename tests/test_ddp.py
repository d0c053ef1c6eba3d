"""Catalysts under DistributedDataParallel: two CPU processes (gloo) reach identical decisions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fxprune.data import digits
from fxprune.pruner import CatalystPruner
from fxprune.zoo import DigitsNet


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=world)
    torch.manual_seed(0)  # the same initial model on every rank
    pruner = CatalystPruner(DigitsNet(width=8), torch.randn(1, 1, 8, 8), c=1.3, gamma=0.05)
    model = DistributedDataParallel(pruner.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train, _ = digits()
    x, y = train.tensors
    shard = slice(rank * 256, (rank + 1) * 256)  # each rank sees different data
    for step in range(8):
        batch = slice(shard.start + 32 * step, shard.start + 32 * (step + 1))
        loss = F.cross_entropy(model(x[batch]), y[batch]) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ratios = np.concatenate([pruner.ratios()[g] for g in sorted(pruner.ratios())])
    np.save(Path(folder) / f"ratios{rank}.npy", ratios)
    dist.destroy_process_group()


def test_two_ranks_reach_identical_ratios_and_decisions(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    first, second = (np.load(tmp_path / f"ratios{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, 1.3)  # training moved them
    assert np.array_equal(first > 1, second > 1)
