"""Deployment speed: does half the MACs give (nearly) half the onnxruntime latency?

For each model (torchvision, random weights, 1x3x224x224), channels are removed by one-shot
magnitude (the smallest L2 norm over each channel's producing parameters) from every prunable
group, keeping a multiple of 8 channels (``round_to=8``), with one keep fraction for all groups
found by bisection so the slim model has about half the MACs. Both models are exported with
``fxprune.export_onnx`` (parity checked) and timed in onnxruntime on the CPU (warm-up, then
the median of ``--repeats`` runs) at batch 1 and 32. The table sets the latency speed-up beside
the MACs reduction; the target is a latency speed-up of at least 0.85 of the MACs reduction at
batch 32 on the conv nets.

    python benchmarks/deploy_speed.py [--models resnet50,mobilenet_v2,vit_b_16] [--repeats 10]

The JSON file keeps the rows of models not run, so one model can be rerun on its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import torchvision

import fxprune
from fxprune import atomic
from fxprune.baselines import initial_norms
from fxprune.target import bisect

CONV_NETS = {"resnet50", "mobilenet_v2"}


def magnitude_removal(norms: dict[int, np.ndarray], graph: fxprune.ChannelGraph, keep: float,
                      round_to: int) -> dict[int, list[int]]:
    """The lowest-norm channels of every prunable group, keeping `keep` of each rounded to the
    nearest multiple of `round_to` (the figures were made so; the library's ``round_kept``
    rounds up)."""
    remove = {}
    for g in graph.prunable:
        kept = max(round_to, int(round(g.channels * keep / round_to)) * round_to)
        if g.channels < 2 * round_to or kept >= g.channels:
            continue
        order = np.argsort(norms.get(g.id, np.zeros(g.channels)))  # no parameter: no order
        remove[g.id] = sorted(order[: g.channels - kept].tolist())
    return remove


def half_macs(model: torch.nn.Module, x: torch.Tensor, round_to: int) -> tuple[torch.nn.Module, float]:
    """The slim model whose MACs ratio is closest to 2, and that ratio: 7 steps of bisection
    on the keep fraction in [0.3, 1]."""
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    full = fxprune.cost(gm, x).macs
    # in float64, as the figures were made: float32 norms tie where float64 ones do not (a
    # random-init BatchNorm scale of 1 dominates), which moved mobilenet_v2's plan at some keeps
    norms = initial_norms(copy.deepcopy(gm).double(), graph)
    plans, ratios = {}, {}

    def macs_kept(keep: float) -> float:  # rises with the keep fraction
        plans[keep] = magnitude_removal(norms, graph, keep, round_to)
        macs = fxprune.cost(fxprune.prune_channels(gm, graph, plans[keep], round_to=round_to), x).macs
        ratios[keep] = full / macs
        return macs / full

    probes = bisect(macs_kept, 0.5, 0.3, 1.0, 7, rising=True)
    keep = min((p.x for p in probes), key=lambda k: abs(ratios[k] - 2))  # the first closest
    return fxprune.prune_channels(gm, graph, plans[keep], round_to=round_to), ratios[keep]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2,vit_b_16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default="benchmarks/results/deploy_speed.json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # random weights give subnormals that slow CPU kernels
    print(f"onnxruntime {onnxruntime.__version__} CPU, {torch.get_num_threads()} threads; "
          f"median of {args.repeats} runs after 3 warm-up runs; flush-denormal on\n")
    print("| model | MACs ratio | latency speed-up b1 | b32 | speed-up / MACs ratio at b32 |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        slim, _ = half_macs(model, x, round_to=8)
        report = fxprune.deploy_report(model, slim, x, batch_sizes=(1, 32), repeats=args.repeats)
        r = report.ratios()
        row = {"model": name, **r, "efficiency_b32": r["latency_b32"] / r["macs"],
               "original": report.original.__dict__, "slim": report.slim.__dict__}
        rows.append(row)
        print(f"| {name} | {r['macs']:.2f}x | {r['latency_b1']:.2f}x | {r['latency_b32']:.2f}x "
              f"| {row['efficiency_b32']:.2f} |", flush=True)
    # the other models' rows stay: `--models vit_b_16` reruns one row of the table
    path = Path(args.json)
    ran = {r["model"] for r in rows}
    kept = [r for r in json.loads(path.read_text()) if r["model"] not in ran] if path.exists() else []
    rows = kept + rows
    conv = [r for r in rows if r["model"] in CONV_NETS]
    if conv:
        met = all(r["efficiency_b32"] >= 0.85 for r in conv)
        print(f"\ntarget (conv nets, batch 32, rows in {path}): latency speed-up >= 0.85 x MACs "
              f"reduction: {'met' if met else 'NOT met'}")
    atomic.write_text(path, json.dumps(rows, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
