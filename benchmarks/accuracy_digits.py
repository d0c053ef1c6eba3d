"""Accuracy at equal MACs on digits: Catalyst against L1, group lasso, network slimming,
one-shot magnitude and Torch-Pruning's GroupNormPruner.

For each seed, DigitsNet is pre-trained once; every method then starts from those weights
with the same opt1 budget (``--opt1-epochs``, SGD lr 0.02, momentum 0.9, weight decay 5e-4)
and the same fine-tuning (``--finetune-epochs``), at 2x and 3x fewer MACs:

- fxprune's methods run through ``fxprune.app.job.Job`` (the `fxprune prune` pipeline), the
  baselines meeting the MACs target by ranking, Catalyst by choosing c0 (four complete opt1
  runs on the first seed; the other seeds reuse its c0 and report the MACs they reach);
- Torch-Pruning's GroupNormPruner (group-L2 sparse training, then global pruning with
  GroupMagnitudeImportance at the ratio that meets the MACs target), in its own loop.

Reported per method and level, as mean and spread (min..max) over the seeds: top-1 right
after pruning (before fine-tuning), after fine-tuning, the margin in decades (Catalyst:
smallest pruned c over largest kept c; the others: lowest kept score over highest pruned)
and the rank correlation of the decisions with the initial channel magnitude.

    python benchmarks/accuracy_digits.py [--seeds 0,1,2] [--levels 2,3]   # about 20 min, CPU
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fxprune import atomic
from fxprune.app.datasets import digits
from fxprune.app.job import Job, JobConfig
from fxprune.app.model_zoo import DigitsNet
from fxprune.app.training import accuracy, train_epoch
from fxprune.baselines import initial_norms
from fxprune.cost import cost
from fxprune.passes.analyze import analyze
from fxprune.pruner import DEFAULT_C, spearman
from fxprune.target import bisect, bracket
from fxprune.trace import trace

METHODS = ("catalyst", "l1", "group-lasso", "slimming", "magnitude", "tp-groupnorm")


def pretrained(seed: int, folder: Path) -> Path:
    """Pre-train with the job's own settings once per seed; returns the state_dict file."""
    out = folder / f"pretrain{seed}"
    job = Job(JobConfig(seed=seed, opt1_epochs=0, finetune_epochs=0, method="l1",
                        prune_share=0.0, out=str(out)))
    job.run()
    path = folder / f"weights{seed}.pt"
    torch.save(job.state.pretrained, path)
    return path


def fxprune_run(method: str, seed: int, level: float, weights: Path, folder: Path, args: argparse.Namespace,
                c: float | None) -> dict:
    cfg = JobConfig(seed=seed, weights=str(weights), method=method, opt1_epochs=args.opt1_epochs,
                    finetune_epochs=args.finetune_epochs,
                    target_macs=None if c is not None else 1 / level, c=c or DEFAULT_C,
                    out=str(folder / f"{method}-{seed}-{level}"))
    r = Job(cfg).run()
    return {"acc_after_prune": r["acc_after_prune"], "acc_after_finetune": r["final_acc"],
            "margin_decades": r["margin_decades"], "rank_correlation": r["rank_correlation"],
            "macs_ratio": r["macs_ratio"], "c": r.get("chosen_c", c)}


def tp_run(seed: int, level: float, weights: Path, args: argparse.Namespace) -> dict:
    import torch_pruning as tp

    torch.manual_seed(seed)
    train, test = digits(seed=seed)
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    test_loader = DataLoader(test, batch_size=256)
    model = DigitsNet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.zeros(1, 1, 8, 8)
    gm = trace(copy.deepcopy(model), x)
    norms = initial_norms(gm, analyze(gm))  # same channel order as fxprune's groups
    importance = tp.importance.GroupMagnitudeImportance(p=2)

    def pruner(m: torch.nn.Module, ratio: float) -> tp.pruner.GroupNormPruner:
        return tp.pruner.GroupNormPruner(m, x, importance, reg=args.tp_reg, global_pruning=True,
                                         pruning_ratio=ratio, ignored_layers=[m.fc])

    sparse = pruner(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    for _ in range(args.opt1_epochs):  # group-L2 sparse training, Torch-Pruning's way
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            sparse.regularize(model)
            optimizer.step()
    full = cost(model, x).macs

    def macs_after(ratio: float) -> float:  # falls as the pruning ratio grows
        trial = copy.deepcopy(model)
        pruner(trial, ratio).step()
        return cost(trial, x).macs

    probes = bisect(macs_after, full / level, 0.0, 0.95, 10)
    # the smallest pruning ratio that met the MACs target (0.95 if none did)
    _, ratio = bracket(probes, full / level, 0.0, 0.95)
    slim = copy.deepcopy(model)
    tp_pruner = pruner(slim, ratio)
    tp_pruner.step()
    pruned = _tp_pruned(model, slim, norms)  # before fine-tuning moves the scales
    after_prune = accuracy(slim, test_loader)
    optimizer = torch.optim.SGD(slim.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    for _ in range(args.finetune_epochs):
        train_epoch(slim, loader, optimizer)
    return {"acc_after_prune": after_prune, "acc_after_finetune": accuracy(slim, test_loader),
            "margin_decades": float("nan"),
            "rank_correlation": spearman(np.concatenate(list(norms.values())), pruned),
            "macs_ratio": full / cost(slim, x).macs, "c": None}


def _tp_pruned(before: torch.nn.Module, after: torch.nn.Module, norms: dict) -> np.ndarray:
    """Which channels Torch-Pruning removed, in fxprune's group order: a channel survives when
    its BatchNorm scale is still present (scales are distinct floats after training)."""
    flags = []
    bn_after = {n: m for n, m in after.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    leaders = {0: "stem.1", 1: "block.0.1", 2: "conv3.1", 3: "conv4.1"}
    for gid in sorted(norms):
        name = leaders[gid]
        old = dict(before.named_modules())[name].weight.detach()
        new = set(bn_after[name].weight.detach().tolist())
        flags.append(np.array([float(v) not in new for v in old.tolist()]))
    return np.concatenate(flags).astype(float)


def summary(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    mean = float(np.mean(vals))
    return f"{mean:.2f} ({min(vals):.2f}..{max(vals):.2f})" if len(vals) > 1 else f"{mean:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--levels", default="2,3")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--opt1-epochs", type=int, default=50)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--tp-reg", type=float, default=1e-3)
    parser.add_argument("--json", default="benchmarks/results/accuracy_digits.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    levels = [float(v) for v in args.levels.split(",")]
    methods = args.methods.split(",")
    rows: dict[tuple[str, float], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="fxprune-accuracy-") as tmp:
        folder = Path(tmp)
        weights = {s: pretrained(s, folder) for s in seeds}
        for level in levels:
            c = None
            for seed in seeds:
                for method in methods:
                    if method == "tp-groupnorm":
                        r = tp_run(seed, level, weights[seed], args)
                    else:
                        r = fxprune_run(method, seed, level, weights[seed], folder, args,
                                        c if method == "catalyst" else None)
                        if method == "catalyst":
                            c = r["c"]  # later seeds reuse the first seed's c0
                    rows.setdefault((method, level), []).append(r)
                    print(f"  seed {seed}, {level:g}x, {method}: {json.dumps(r)}", file=sys.stderr, flush=True)
    print(f"DigitsNet on digits, seeds {args.seeds}; opt1 budget {args.opt1_epochs} epochs, "
          f"fine-tuning {args.finetune_epochs} epochs; mean (min..max) over seeds\n")
    print("| target | method | MACs cut | top-1 after pruning | after fine-tuning | margin "
          "(decades) | rank corr. with initial norm |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (method, level), runs in rows.items():
        print(f"| {level:g}x | {method} | {summary([r['macs_ratio'] for r in runs])} "
              f"| {summary([r['acc_after_prune'] for r in runs])} "
              f"| {summary([r['acc_after_finetune'] for r in runs])} "
              f"| {summary([r['margin_decades'] for r in runs])} "
              f"| {summary([r['rank_correlation'] for r in runs])} |")
    atomic.write_text(args.json, json.dumps(
        [{"method": m, "level": lv, "runs": runs} for (m, lv), runs in rows.items()], indent=1,
        default=float))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
