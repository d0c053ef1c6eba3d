"""Catalysts under DistributedDataParallel: two CPU processes (gloo) reach identical decisions."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from fxprune.app.datasets import digits
from fxprune.app.model_zoo import DigitsNet
from fxprune.pruner import CatalystPruner

C0 = 1.0  # every channel starts on the decision boundary c = 1: a rank out of step would flip some


def _flat(module: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).numpy()


def _worker(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=world)
    torch.manual_seed(0)  # the same initial model on every rank
    pruner = CatalystPruner(DigitsNet(width=8), torch.randn(1, 1, 8, 8), c=C0, gamma=0.05)
    initial = _flat(pruner.model)
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
    np.save(Path(folder) / f"params{rank}.npy", np.stack([initial, _flat(pruner.model)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group may be emptied (and rescued) here
        decisions = pruner.decisions()
    (Path(folder) / f"decisions{rank}.json").write_text(json.dumps(decisions))
    dist.destroy_process_group()


def test_two_ranks_reach_identical_ratios_and_decisions(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    first, second = (np.load(tmp_path / f"ratios{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, C0)  # training moved them
    # the parameters agree bit for bit, although each rank saw other data, and training moved them
    (start0, end0), (start1, end1) = (np.load(tmp_path / f"params{r}.npy") for r in (0, 1))
    np.testing.assert_array_equal(start0, start1)
    np.testing.assert_array_equal(end0, end1)
    assert not np.allclose(end0, start0)
    # the same decisions, and not trivial ones: some channels go, some stay
    decided = [json.loads((tmp_path / f"decisions{r}.json").read_text()) for r in (0, 1)]
    assert decided[0] == decided[1]
    removed = sum(len(v) for v in decided[0].values())
    assert removed == np.sum(first > 1)  # exactly the channels with c > 1, no group emptied
    assert 0 < removed < len(first), (removed, len(first))
