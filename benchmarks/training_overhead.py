"""Training overhead of the catalysts: one SGD step of the extended model against the plain one.

For ResNet-18 (batch 8 at 224x224) and the CIFAR ResNet-56 (batch 64 at 32x32), on the CPU,
this times a full training step (forward, cross-entropy, backward, SGD step); the extended
model's step also computes gamma * ||DW||_{2,1}. The models alternate, and the median of
``--repeats`` steps each is reported as a ratio (target: at most 1.10), with the extended
model's step also timed without the penalty, to show where the overhead lies.

    python benchmarks/training_overhead.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

from fxprune import atomic
from fxprune.app.model_zoo import cifar_resnet56
from fxprune.pruner import CatalystPruner

CASES = {"resnet18": (lambda: torchvision.models.resnet18(), (8, 3, 224, 224), 1000),
         "cifar_resnet56": (lambda: cifar_resnet56(), (64, 3, 32, 32), 10)}


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              optimizer: torch.optim.Optimizer, penalty: object) -> float:
    start = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    if penalty is not None:
        loss = loss + penalty()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/results/training_overhead.json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; median of "
          f"{args.repeats} steps after 3 warm-up steps, the runs alternating\n")
    print("| model | batch | plain step (ms) | catalyst nodes, no penalty (ms) "
          "| with catalysts and penalty (ms) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for name, (factory, shape, classes) in CASES.items():
        torch.manual_seed(0)
        plain = factory().train()
        pruner = CatalystPruner(factory().train(), torch.randn(1, *shape[1:]), c=1.2)
        extended = pruner.model.train()
        x, y = torch.randn(shape), torch.randint(0, classes, (shape[0],))
        runs = {"plain": (plain, None), "nodes": (extended, None), "catalyst": (extended, pruner.penalty)}
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, (m, _) in runs.items()}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(args.repeats + 3):
            for k, (model, penalty) in runs.items():
                t = step_time(model, x, y, opts[k], penalty)
                if i >= 3:
                    times[k].append(t)
        p, n, c = (statistics.median(times[k]) * 1000 for k in runs)
        rows.append({"model": name, "batch": shape[0], "plain_ms": p, "nodes_only_ms": n,
                     "catalyst_ms": c, "ratio": c / p})
        print(f"| {name} | {shape[0]} | {p:.1f} | {n:.1f} | {c:.1f} | {c / p:.3f} |", flush=True)
    met = all(r["ratio"] <= 1.10 for r in rows)
    print(f"\ntarget: ratio at most 1.10: {'met' if met else 'NOT met'}")
    atomic.write_text(args.json, json.dumps(rows, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
