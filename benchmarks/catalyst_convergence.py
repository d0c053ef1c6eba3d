"""Catalyst's convergence on seven architectures: how long opt1 takes to decide, and at what cost.

Each architecture is pre-trained on scikit-learn's digits (1,797 8x8 images; nothing is
downloaded), then opt1 runs the README's loop (SGD lr 0.02, momentum 0.9, weight decay 5e-4,
batch 32, task loss + gamma * ||DW||_{2,1}) until every channel has |log10 c| > kappa or the
epoch cap, and the channels with c > 1 are removed by real surgery. Per run: epochs to
convergence, top-1 before and right after the pruning step, the lowest top-1 seen during opt1,
margin, MACs cut. Each epoch's log10 c of every channel is kept, and the slowest run's
trajectories are plotted, so the channels that stall can be seen.

``--remedy`` names the variants of opt1 to run (``VARIANTS``): ``default`` is fxprune's
(SGD lr 0.02, gamma 0.02, D moved by the regulariser alone, weight decay on every parameter,
the task loss's angular step kept on rows that only a BatchNorm reads), ``full`` the default
with the consumers' input columns in G, ``plain`` the default without the angular step (the
default until then), ``paper`` plain as the paper writes it (D also receives the task loss's
gradient), and the others change one thing: of the paper's, gamma doubled or no weight decay
on D; of plain, gamma halved (``gamma-0.01``: a slower fade), the loss's learning rate halved
with gamma doubled so that the regulariser's step lr * gamma stays (``lr-0.01``), G made of
the norm's scale and shift alone (``bn``, the paper's "Ours-BN"), or no penalty at all
(``no-penalty``: what the loop alone costs; its pruning step means nothing).
``--c 1.0`` runs the transition with nothing to prune in the end.

Every epoch's top-1 is measured after re-estimating BatchNorm's running statistics
(``precise_bn``; training never reads them), and also as it stood (in brackets): the running
averages lag weights that opt1 shrinks by orders of magnitude, so that figure dips by tens of
points the model never lost.

    python benchmarks/catalyst_convergence.py [--archs digitsnet,vgg,...] [--seeds 0,1,2]
        [--c 1.05,1.1,1.2] [--remedy default,plain] [--cap 150] [--out benchmarks/results]

Finished runs are saved as they end (the summary JSON and one .npy of log10 c per run), so a
killed study rerun with the same arguments skips them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import catalyst_digits  # the sibling benchmark: its pre-training recipe
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import fxprune
from fxprune import atomic
from fxprune.app.datasets import digits
from fxprune.app.model_zoo import DigitsNet
from fxprune.app.training import accuracy, precise_bn, train_epoch
from fxprune.pruner import CatalystPruner


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class VGG(nn.Module):
    """Four conv-BN-ReLU blocks, 32-32-pool-64-64 (the model of the issue's report)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(1, 32), _cbr(32, 32), nn.MaxPool2d(2), _cbr(32, 64),
                                      _cbr(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, stride, groups=mid),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    """MobileNet-V2 style: inverted residuals with depthwise 3x3 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(1, 16), InvertedResidual(16, 16, 1),
                                      InvertedResidual(16, 32, 2), InvertedResidual(32, 32, 1),
                                      _cbr(32, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MLP(nn.Module):
    """64 pixels -> 128 -> 128 -> 64 -> 10, Linear-BN-ReLU."""

    def __init__(self) -> None:
        super().__init__()
        layers, cin = [nn.Flatten()], 64
        for width in (128, 128, 64):
            layers += [nn.Linear(cin, width), nn.BatchNorm1d(width), nn.ReLU()]
            cin = width
        self.body = nn.Sequential(*layers, nn.Linear(cin, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DenseNet(nn.Module):
    """Two dense blocks of three conv-BN-ReLU layers (growth 12), each input the concat of all
    before it, with a 1x1 transition and a pool between them."""

    def __init__(self, growth: int = 12) -> None:
        super().__init__()
        self.stem = _cbr(1, 16)
        self.block1 = nn.ModuleList(_cbr(16 + k * growth, growth) for k in range(3))
        self.transition = _cbr(16 + 3 * growth, 32, 1)
        self.block2 = nn.ModuleList(_cbr(32 + k * growth, growth) for k in range(3))
        self.fc = nn.Linear(32 + 3 * growth, 10)

    @staticmethod
    def _dense(x: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
        for layer in layers:
            x = torch.cat([x, layer(x)], 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._dense(self.stem(x), self.block1)
        x = self._dense(F.max_pool2d(self.transition(x), 2), self.block2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Grouped(nn.Module):
    """ResNeXt-style: 1x1 -> grouped 3x3 (4 groups) -> 1x1 with a residual, twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(1, 32)
        self.blocks = nn.ModuleList(
            nn.Sequential(_cbr(32, 64, 1), _cbr(64, 64, 3, groups=4),
                          nn.Conv2d(64, 32, 1, bias=False), nn.BatchNorm2d(32)) for _ in range(2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViT(nn.Module):
    """2x2 patches (16 tokens), width 64, two pre-norm blocks of 4 heads and an MLP of 128."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, 2)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(dim), "attn": Attention(dim, heads), "norm2": nn.LayerNorm(dim),
            "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
        }) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = x + block["attn"](block["norm1"](x))
            x = x + block["mlp"](block["norm2"](x))
        return self.head(self.norm(x).mean(1))


ARCHS = {"digitsnet": DigitsNet, "vgg": VGG, "mobilenet": MobileNet, "mlp": MLP,
         "densenet": DenseNet, "grouped": Grouped, "vit": ViT}


def pretrain(arch: str, loaders: dict, seed: int, epochs: int = 20) -> nn.Module:
    torch.manual_seed(seed)
    return catalyst_digits.pretrain(loaders, epochs, ARCHS[arch]())


# What each variant changes from fxprune's defaults (`DEFAULTS`; see the module's docstring).
# `plain` is the default before the angular step (the study's runs up to then); the variants
# measured against it change one thing from it.
DEFAULTS = {"lr": 0.02, "gamma": 0.02, "loss_gradient": False, "target": "group", "decay_d": True,
            "angular": True}
PLAIN = {"angular": False}
VARIANTS = {"default": {}, "plain": PLAIN, "paper": PLAIN | {"loss_gradient": True},
            "paper-gamma-0.04": PLAIN | {"loss_gradient": True, "gamma": 0.04},
            "paper-no-wd-on-d": PLAIN | {"loss_gradient": True, "decay_d": False},
            "bn": PLAIN | {"target": "bn"},
            "gamma-0.01": PLAIN | {"gamma": 0.01},
            "lr-0.01": PLAIN | {"lr": 0.01, "gamma": 0.04},
            "no-penalty": PLAIN | {"gamma": 0.0}, "full": {"target": "full"}}


def settings(remedy: str) -> dict:
    """The remedy's opt1 settings: `DEFAULTS` with what the variant changes."""
    return DEFAULTS | VARIANTS[remedy]


def opt1(base: nn.Module, loaders: dict, *, c0: float, remedy: str, cap: int,
         seed: int) -> dict | None:
    """One opt1 run to convergence or `cap` epochs, the pruning step, and the figures; None
    where the variant gives no group a catalyst."""
    x = torch.randn(1, 1, 8, 8)
    torch.manual_seed(seed + 1)
    variant = settings(remedy)
    pruner = CatalystPruner(copy.deepcopy(base), x, c=c0, gamma=variant["gamma"],
                            loss_gradient=variant["loss_gradient"], target=variant["target"],
                            angular=variant["angular"])
    if not pruner.initial_norm:  # the "bn" target on a model whose groups hold no norm
        return None
    if variant["decay_d"]:
        optimizer = pruner.sgd(lr=variant["lr"], momentum=0.9, weight_decay=5e-4)
    else:
        d = [p for name, p in pruner.model.named_parameters() if name.endswith(".d")]
        rest = [p for name, p in pruner.model.named_parameters() if not name.endswith(".d")]
        optimizer = torch.optim.SGD([{"params": rest}, {"params": d, "weight_decay": 0.0}],
                                    lr=variant["lr"], momentum=0.9, weight_decay=5e-4)
    # each run its own batch order, so that a run's figures do not depend on which ran before
    train = DataLoader(loaders["train"].dataset, batch_size=32, shuffle=True,
                       generator=torch.Generator().manual_seed(seed + 1))
    in_order = DataLoader(loaders["train"].dataset, batch_size=32)
    baseline = accuracy(pruner.model, loaders["test"])
    start, lowest, lowest_stale, trajectory, history = time.perf_counter(), baseline, baseline, [], []
    epochs = 0
    while epochs < cap and not (epochs and pruner.converged()):
        train_epoch(pruner.model, train, optimizer, penalty=pruner.penalty)
        epochs += 1
        stale = accuracy(pruner.model, loaders["test"])  # BatchNorm's running statistics
        precise_bn(pruner.model, in_order)
        top1 = accuracy(pruner.model, loaders["test"])
        lowest, lowest_stale = min(lowest, top1), min(lowest_stale, stale)
        d = pruner.diagnostics()
        trajectory.append(np.log10(np.concatenate(list(pruner.ratios().values()))))
        history.append({"epoch": epochs, "top1": top1, "top1_stale": stale, "decided": d.decided,
                        "margin": d.margin_decades})
    seconds = time.perf_counter() - start
    d = pruner.diagnostics()
    before = accuracy(pruner.model, loaders["test"])
    after = accuracy(pruner.prune(force=True), loaders["test"])
    final = pruner.finalize()
    macs = fxprune.cost(pruner.base, x).macs / fxprune.cost(final, x).macs
    return {"c0": c0, "remedy": remedy, "seed": seed, "epochs": epochs, "converged": d.converged,
            "baseline": baseline, "before": before, "after": after, "lowest": lowest, "lowest_stale": lowest_stale,
            "margin": d.margin_decades, "pruned": float(d.pruned.mean()), "macs_ratio": macs,
            "seconds": seconds, "history": history, "steps_per_epoch": len(train),
            "trajectory": np.stack(trajectory) if trajectory else np.zeros((0, 0))}


def plot(run: dict, t: np.ndarray, path: Path) -> None:
    """Every channel's log10 c per epoch (`t`: epochs x channels); the channels that end
    undecided drawn in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    undecided = np.abs(t[-1]) <= 2.0
    fig, ax = plt.subplots(figsize=(8, 4.5))
    epochs = np.arange(1, len(t) + 1)
    ax.plot(epochs, t[:, ~undecided], color="0.6", lw=0.5, alpha=0.5)
    if undecided.any():
        ax.plot(epochs, t[:, undecided], color="tab:red", lw=0.8)
    ax.axhline(2, color="k", ls=":", lw=0.8)
    ax.axhline(-2, color="k", ls=":", lw=0.8)
    ax.set(xlabel="opt1 epoch", ylabel="log10 c",
           title=f"{run['arch']} c0={run['c0']} seed {run['seed']} ({run['remedy']}): "
                 f"{undecided.sum()} of {t.shape[1]} channels undecided at the end (red)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--c", default="1.05,1.1,1.15,1.2,1.5")
    parser.add_argument("--remedy", default="default,plain",
                        help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--cap", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 "
                        "is as fast, and several runs can share the machine)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--saved", action="store_true",
                        help="print the tables from the runs already saved; run nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    summary_path, runs_dir = out / "catalyst_convergence.json", out / "catalyst_convergence"
    # finished runs are kept as they end, so a killed study resumes where it stopped
    done = json.loads(summary_path.read_text()) if summary_path.is_file() else []
    key = ("arch", "seed", "c0", "remedy", "cap")
    print("| arch | seed | c0 | remedy | epochs | converged | top-1 base / before / after prune "
          "| lowest in opt1 (stale BN) | margin (decades) | channels pruned | MACs cut | s |")
    print("|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for arch in args.archs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            base = loaders = None
            for c0 in (float(c) for c in args.c.split(",")):
                for remedy in args.remedy.split(","):
                    want = dict(zip(key, (arch, seed, c0, remedy, args.cap)))
                    r = next((d for d in done if all(d.get(k) == v for k, v in want.items())), None)
                    if r is None and args.saved:
                        continue
                    if r is None:
                        if base is None:
                            train, test = digits(seed=seed)
                            loaders = {"train": DataLoader(train, batch_size=32, shuffle=True,
                                                           generator=torch.Generator().manual_seed(seed)),
                                       "test": DataLoader(test, batch_size=512)}
                            base = pretrain(arch, loaders, seed)
                        run = opt1(base, loaders, c0=c0, remedy=remedy, cap=args.cap, seed=seed)
                        if run is None:
                            print(f"| {arch} | {seed} | {c0} | {remedy} | no group holds a "
                                  "catalyst: nothing to run |")
                            continue
                        r = {**want, **run}
                        runs_dir.mkdir(parents=True, exist_ok=True)
                        np.save(runs_dir / f"{_name(r)}.npy", np.asarray(r.pop("trajectory")))
                        done.append(r)
                        atomic.write_text(summary_path, json.dumps(done, indent=1))
                    rows.append(r)
                    print(f"| {arch} | {seed} | {c0} | {remedy} | {r['epochs']} | "
                          f"{'yes' if r['converged'] else 'no'} | {r['baseline']:.1f} / "
                          f"{r['before']:.1f} / {r['after']:.1f} | {r['lowest']:.1f} "
                          f"({r['lowest_stale']:.1f}) | {r['margin']:.1f} | {r['pruned']:.0%} | "
                          f"{r['macs_ratio']:.2f}x | {r['seconds']:.0f} |", flush=True)
    print("\nPer architecture and c0, over the seeds: epochs to convergence (the effective step "
          "lr * gamma / (1 - momentum) times the optimiser steps, at most), runs converged, the "
          "largest change of top-1 at the pruning step, the deepest fall of top-1 during opt1 "
          "below the baseline (with stale BatchNorm statistics), the smallest margin, MACs cut.\n")
    print("| remedy | arch | c0 | epochs | step x steps | converged | pruning step | fall in opt1 "
          "(stale BN) | margin (decades) | MACs cut |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    for group in dict.fromkeys((r["remedy"], r["arch"], r["c0"]) for r in rows):
        runs = [r for r in rows if (r["remedy"], r["arch"], r["c0"]) == group]
        variant = settings(group[0])
        effective = variant["lr"] * variant["gamma"] / (1 - 0.9)
        print(f"| {' | '.join(map(str, group))} | {', '.join(str(r['epochs']) for r in runs)} | "
              f"{max(r['epochs'] * r['steps_per_epoch'] for r in runs) * effective:.1f} | "
              f"{sum(r['converged'] for r in runs)} of {len(runs)} | "
              f"{max(abs(r['after'] - r['before']) for r in runs):.2f} | "
              f"{max(r['baseline'] - r['lowest'] for r in runs):.1f} "
              f"({max(r['baseline'] - r['lowest_stale'] for r in runs):.1f}) | "
              f"{min(r['margin'] for r in runs):.1f} | "
              f"{min(r['macs_ratio'] for r in runs):.2f}-{max(r['macs_ratio'] for r in runs):.2f}x |")
    for remedy in dict.fromkeys(r["remedy"] for r in rows):
        runs = [r for r in rows if r["remedy"] == remedy]
        slowest = max(runs, key=lambda r: (not r["converged"], r["epochs"]))
        if settings(remedy)["gamma"] > 0:  # without a penalty nothing decides
            # drawn from every saved run of the remedy, so that a partial rerun (one
            # architecture, one c0) does not replace the study's slowest with its own
            drawn = max((r for r in done if r["remedy"] == remedy),
                        key=lambda r: (not r["converged"], r["epochs"]))
            plot(drawn, np.load(runs_dir / f"{_name(drawn)}.npy"),
                 out / f"catalyst_convergence_slowest_{remedy}.png")
        converged = [r for r in runs if r["converged"]]
        cut = [r["macs_ratio"] for r in runs if r["c0"] == 1.2]
        cut_text = f"MACs cut at c0 = 1.2 at least {min(cut):.2f}x; " if cut else ""
        print(f"\n{remedy}: {len(converged)} of {len(runs)} runs converged within {args.cap} "
              f"epochs; epochs max {max(r['epochs'] for r in runs)}, median "
              f"{int(np.median([r['epochs'] for r in runs]))}; the pruning step changed top-1 by "
              f"at most {max(abs(r['after'] - r['before']) for r in runs):.2f} points; the lowest "
              f"top-1 in opt1 at most {max(r['baseline'] - r['lowest'] for r in runs):.1f} points "
              f"under the baseline (stale BatchNorm statistics: "
              f"{max(r['baseline'] - r['lowest_stale'] for r in runs):.1f}); {cut_text}"
              f"slowest: {slowest['arch']} seed "
              f"{slowest['seed']} c0 {slowest['c0']} ({slowest['epochs']} epochs)")
    return 0


def _name(r: dict) -> str:
    return f"{r['arch']}_s{r['seed']}_c{r['c0']}_{r['remedy']}_cap{r['cap']}"


if __name__ == "__main__":
    sys.exit(main())
