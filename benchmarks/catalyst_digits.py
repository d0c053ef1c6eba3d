"""Catalyst on the embedded digits task: how c0 sets sparsity, and whether pruning is lossless.

The default model (fxprune.zoo.DigitsNet) is pre-trained on scikit-learn's digits, then for
each c0 opt1 runs (task loss + gamma * ||DW||_{2,1}; SGD lr 0.02, momentum 0.9, weight decay
5e-4, batch 32) until every |log10 c| > kappa = 2 or the epoch cap, channels with c > 1 are
removed by real surgery, D is removed (opt2), and the slim model is fine-tuned. The table
gives what README's "Catalyst defaults" quotes:

    python benchmarks/catalyst_digits.py [--c 1.0,1.2,1.5] [--gamma 0.02] [--cap 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from torch.utils.data import DataLoader

import fxprune
from fxprune import atomic
from fxprune.data import digits
from fxprune.pruner import CatalystPruner
from fxprune.train import accuracy, train_epoch
from fxprune.zoo import DigitsNet


def pretrain(loaders: dict, epochs: int = 15) -> torch.nn.Module:
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        train_epoch(model, loaders["train"], optimizer)
        schedule.step()
    return model.eval()


def run(base: torch.nn.Module, loaders: dict, c0: float, gamma: float, cap: int) -> dict:
    x = torch.randn(1, 1, 8, 8)
    torch.manual_seed(1)
    pruner = CatalystPruner(copy.deepcopy(base), x, c=c0, gamma=gamma)
    optimizer = pruner.sgd(lr=0.02, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    epochs = 0
    while epochs < cap and not (epochs and pruner.converged()):
        train_epoch(pruner.model, loaders["train"], optimizer, penalty=pruner.penalty)
        epochs += 1
    before = accuracy(pruner.model, loaders["test"])
    d = pruner.diagnostics()
    intermediate = pruner.prune(force=True)
    after = accuracy(intermediate, loaders["test"])
    final = pruner.finalize()
    tune = torch.optim.SGD(final.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(10):
        train_epoch(final, loaders["train"], tune)
    macs = fxprune.cost(pruner.base, x).macs / fxprune.cost(final, x).macs
    return {"c0": c0, "gamma": gamma, "epochs": epochs, "converged": d.converged,
            "pruned": float(d.pruned.mean()), "macs_ratio": macs, "margin_decades": d.margin_decades,
            "acc_before": before, "acc_after_prune": after,
            "acc_after_finetune": accuracy(final, loaders["test"]),
            "rank_correlation": d.rank_correlation, "opt1_seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--c", default="1.0,1.2,1.5")
    parser.add_argument("--gamma", type=float, default=0.02)
    parser.add_argument("--cap", type=int, default=60)
    parser.add_argument("--json", default="benchmarks/results/catalyst_digits.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = digits()
    loaders = {"train": DataLoader(train, batch_size=32, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)),
               "test": DataLoader(test, batch_size=512)}
    base = pretrain(loaders)
    print(f"pre-trained DigitsNet: {accuracy(base, loaders['test']):.2f}% top-1 on the "
          f"{len(test)} held-out digits\n")
    print("| c0 | gamma | opt1 epochs | converged | channels pruned | MACs cut | margin "
          "(decades) | acc before / after prune / after fine-tune | rank corr. |")
    print("|---:|---:|---:|---|---:|---:|---:|---|---:|")
    rows = []
    for c0 in (float(c) for c in args.c.split(",")):
        r = run(base, loaders, c0, args.gamma, args.cap)
        rows.append(r)
        print(f"| {c0} | {args.gamma} | {r['epochs']} | {'yes' if r['converged'] else 'no'} "
              f"| {r['pruned']:.0%} | {r['macs_ratio']:.2f}x | {r['margin_decades']:.1f} "
              f"| {r['acc_before']:.1f} / {r['acc_after_prune']:.1f} / "
              f"{r['acc_after_finetune']:.1f} | {r['rank_correlation']:.2f} |", flush=True)
    atomic.write_text(args.json, json.dumps(rows, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
