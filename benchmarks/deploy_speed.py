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
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime
import torch
import torchvision

import fxprune
from fxprune import atomic

CONV_NETS = {"resnet50", "mobilenet_v2"}


def channel_norms(gm: torch.fx.GraphModule, group: fxprune.ChannelGroup) -> np.ndarray:
    """Squared L2 norm of every parameter slice that holds each channel."""
    params = dict(gm.named_parameters())
    norms = np.zeros(group.channels)
    for m in group.params:
        if m.role == "in" or m.param not in params:
            continue
        t = params[m.param].detach().movedim(m.dim, 0).reshape(m.length, -1)
        sq = (t.double() ** 2).sum(1).numpy()
        np.add.at(norms, np.asarray(m.channels), sq[np.asarray(m.positions)])
    return norms


def magnitude_removal(gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph, keep: float,
                      round_to: int) -> dict[int, list[int]]:
    remove = {}
    for g in graph.prunable:
        kept = max(round_to, int(round(g.channels * keep / round_to)) * round_to)
        if g.channels < 2 * round_to or kept >= g.channels:
            continue
        order = np.argsort(channel_norms(gm, g))
        remove[g.id] = sorted(order[: g.channels - kept].tolist())
    return remove


def half_macs(model: torch.nn.Module, x: torch.Tensor, round_to: int) -> tuple[torch.nn.Module, float]:
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    full = fxprune.cost(gm, x).macs
    lo, hi, best = 0.3, 1.0, None
    for _ in range(7):  # bisection on the keep fraction; MACs fall monotonically with it
        mid = (lo + hi) / 2
        slim = fxprune.prune_channels(gm, graph, magnitude_removal(gm, graph, mid, round_to),
                                      round_to=round_to)
        ratio = full / fxprune.cost(slim, x).macs
        if best is None or abs(ratio - 2) < abs(best[1] - 2):
            best = (slim, ratio)
        lo, hi = (lo, mid) if ratio < 2 else (mid, hi)
    return best


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
    conv = [r for r in rows if r["model"] in CONV_NETS]
    met = all(r["efficiency_b32"] >= 0.85 for r in conv)
    print(f"\ntarget (conv nets, batch 32): latency speed-up >= 0.85 x MACs reduction: "
          f"{'met' if met else 'NOT met'}")
    atomic.write_text(args.json, json.dumps(rows, indent=1, default=str))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
