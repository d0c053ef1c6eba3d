"""Catalyst on the embedded digits task: how c0 sets sparsity, and whether pruning is lossless.

The default model (fxprune.app.model_zoo.DigitsNet) is pre-trained on scikit-learn's digits, then for
each c0 opt1 runs (task loss + gamma * ||DW||_{2,1}; SGD lr 0.02, momentum 0.9, weight decay
5e-4, batch 32) until every |log10 c| > kappa = 2 or the epoch cap, channels with c > 1 are
removed by real surgery, D is removed (opt2), and the slim model is fine-tuned. The table
gives what README's "Catalyst defaults" quotes.

Each row also gives the Spearman rank correlation between a channel's initial norm ||G_i||
and its being pruned, for Catalyst and for group lasso and network slimming (``--baselines``)
trained from the same weights for ``--baseline-epochs`` and pruned at Catalyst's share of
channels. Each seed (``--seeds``) draws its own data split, initialisation and batch order;
the last table gives each correlation's mean over the seeds.

    python benchmarks/catalyst_digits.py [--c 1.0,1.2,1.5] [--gamma 0.02] [--cap 60]
        [--seeds 0,1,2] [--baselines group-lasso,slimming] [--baseline-epochs 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

import fxprune
from fxprune import atomic
from fxprune.app.datasets import digits
from fxprune.app.model_zoo import DigitsNet
from fxprune.app.training import accuracy, train_epoch
from fxprune.baselines import Scorer, initial_norms
from fxprune.pruner import CatalystPruner, spearman


def pretrain(loaders: dict, epochs: int = 15, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """`model` (a new DigitsNet by default) trained on digits: SGD lr 0.05, cosine schedule."""
    model = DigitsNet() if model is None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        train_epoch(model, loaders["train"], optimizer)
        schedule.step()
    return model.eval()


def run(base: torch.nn.Module, loaders: dict, c0: float, gamma: float, cap: int, seed: int) -> dict:
    x = torch.randn(1, 1, 8, 8)
    torch.manual_seed(seed + 1)
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
    return {"seed": seed, "c0": c0, "gamma": gamma, "epochs": epochs, "converged": d.converged,
            "pruned": float(d.pruned.mean()), "macs_ratio": macs, "margin_decades": d.margin_decades,
            "acc_before": before, "acc_after_prune": after,
            "acc_after_finetune": accuracy(final, loaders["test"]),
            "rank_correlation": d.rank_correlation, "opt1_seconds": time.perf_counter() - start}


def baseline_correlation(base: torch.nn.Module, loaders: dict, method: str, share: float, *,
                         strength: float, epochs: int, seed: int) -> float:
    """Train `base` under `method`'s regulariser, remove its globally lowest-scored `share` of
    channels, and return the rank correlation of those decisions with the initial ||G_i||."""
    torch.manual_seed(seed + 1)
    model = fxprune.trace(copy.deepcopy(base), torch.randn(1, 1, 8, 8))
    graph = fxprune.analyze(model)
    norms = initial_norms(model, graph)
    scorer = Scorer(model, graph, method)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    # its own batch order, so that Catalyst's runs see the batches they saw without baselines
    train = DataLoader(loaders["train"].dataset, batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(seed + 1))
    for _ in range(epochs):
        train_epoch(model, train, optimizer, penalty=lambda: strength * scorer.penalty(model))
    removed = scorer.lowest(model, share)
    groups = sorted(norms)
    pruned = np.concatenate([np.isin(np.arange(len(norms[g])), removed.get(g, [])) for g in groups])
    return spearman(np.concatenate([norms[g] for g in groups]), pruned.astype(float))


def mean(values: list[float]) -> str:
    finite = [v for v in values if np.isfinite(v)]
    return f"{np.mean(finite):.2f}" if finite else "nan"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--c", default="1.0,1.2,1.5")
    parser.add_argument("--gamma", type=float, default=0.02)
    parser.add_argument("--cap", type=int, default=60)
    parser.add_argument("--seeds", default="0", help="comma-separated; each its own split, "
                        "initialisation and batch order")
    parser.add_argument("--baselines", default="group-lasso,slimming",
                        help="methods whose decisions' rank correlation is set beside Catalyst's "
                        "(empty: none)")
    parser.add_argument("--baseline-epochs", type=int, default=20)
    parser.add_argument("--baseline-strength", type=float, default=2e-3)
    parser.add_argument("--json", default="benchmarks/results/catalyst_digits.json")
    args = parser.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    baselines = [m for m in args.baselines.split(",") if m]
    columns = ["catalyst", *baselines]
    tasks = {}
    for seed in seeds:
        torch.manual_seed(seed)
        train, test = digits(seed=seed)
        loaders = {"train": DataLoader(train, batch_size=32, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed)),
                   "test": DataLoader(test, batch_size=512)}
        tasks[seed] = pretrain(loaders), loaders
        print(f"seed {seed}: pre-trained DigitsNet, {accuracy(tasks[seed][0], loaders['test']):.2f}% "
              f"top-1 on the {len(test)} held-out digits", flush=True)
    print("\n| seed | c0 | gamma | opt1 epochs | converged | channels pruned | MACs cut | margin "
          "(decades) | acc before / after prune / after fine-tune | rank corr. with initial "
          f"norm ({' / '.join(columns)}) |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---|---:|")
    rows = []
    for seed, (base, loaders) in tasks.items():
        for c0 in (float(c) for c in args.c.split(",")):
            r = run(base, loaders, c0, args.gamma, args.cap, seed)
            for method in baselines:  # at Catalyst's sparsity, from the same weights
                r[_rho(method)] = float("nan") if r["pruned"] in (0, 1) else baseline_correlation(
                    base, loaders, method, r["pruned"], strength=args.baseline_strength,
                    epochs=args.baseline_epochs, seed=seed)  # nan: one side is empty
            rows.append(r)
            rhos = " / ".join(f"{r[_rho(m)]:.2f}" for m in columns)
            print(f"| {seed} | {c0} | {args.gamma} | {r['epochs']} | "
                  f"{'yes' if r['converged'] else 'no'} | {r['pruned']:.0%} | "
                  f"{r['macs_ratio']:.2f}x | {r['margin_decades']:.1f} | {r['acc_before']:.1f} / "
                  f"{r['acc_after_prune']:.1f} / {r['acc_after_finetune']:.1f} | {rhos} |",
                  flush=True)
    print(f"\nrank correlation with the initial norm, mean over seeds {args.seeds} (nan where "
          "nothing or everything is pruned)\n")
    versus = " | seeds where Catalyst's is the smallest in size" if baselines else ""
    print(f"| c0 | {' | '.join(columns)}{versus} |")
    print("|---:|" + "---:|" * (len(columns) + bool(baselines)))
    for c0 in dict.fromkeys(r["c0"] for r in rows):
        runs = [r for r in rows if r["c0"] == c0]
        means = " | ".join(mean([r[_rho(m)] for r in runs]) for m in columns)
        smallest = sum(all(abs(r["rank_correlation"]) < abs(r[_rho(m)]) for m in baselines)
                       for r in runs)
        print(f"| {c0} | {means}" + (f" | {smallest} of {len(runs)}" if baselines else "") + " |")
    atomic.write_text(args.json, json.dumps(rows, indent=1))
    print(f"\nwrote {args.json}")
    return 0


def _rho(method: str) -> str:
    return "rank_correlation" if method == "catalyst" else f"rank_correlation_{method}"


if __name__ == "__main__":
    sys.exit(main())
