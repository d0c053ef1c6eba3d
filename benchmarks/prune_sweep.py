"""Surgery sweep: prune 30% of every prunable group of torchvision models, report the cost.

For each model (random weights, all-zero layers such as ViT's head given small random values
so that outputs are not vacuously equal; eval mode, 1x3xSxS input, S = 299 for Inception-v3 and 224
otherwise), this traces and analyses it, removes 30% of the channels of every prunable group
at random (seeded; every member keeps a channel), and prints MACs and parameters before and
after, whether the slim model runs with the original output shape, and the largest relative
difference between the slim model and the zeroed original over the exact groups alone
(surgery's correctness oracle). Results go to stdout as a markdown table and to
``benchmarks/results/prune_sweep.json``.

    python benchmarks/prune_sweep.py                  # the 14 models the tests name
    python benchmarks/prune_sweep.py --all            # every torchvision classification model
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torchvision

import fxprune
from fxprune import atomic
from fxprune.app.model_specs import input_size, randomize_zero_parameters
from fxprune.passes.plan import random_request

NAMED = ["resnet50", "resnext50_32x4d", "densenet121", "googlenet", "inception_v3",
         "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
         "convnext_tiny", "shufflenet_v2_x1_0", "vit_b_16", "swin_t", "squeezenet1_0"]


def removal(graph: fxprune.ChannelGraph, fraction: float, seed: int, exact_only: bool) -> dict:
    return random_request(graph, fraction, seed, exact_only=exact_only)


def measure(name: str, fraction: float) -> dict:
    torch.manual_seed(0)
    size = input_size(name)
    model = randomize_zero_parameters(torchvision.models.get_model(name).eval())
    x = torch.randn(1, 3, size, size)
    start = time.perf_counter()
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    exact = removal(graph, fraction, 0, exact_only=True)
    with torch.no_grad():
        slim_exact = fxprune.prune_channels(gm, graph, exact)
        zeroed = fxprune.zero_channels(gm, graph, exact)
        a, b = slim_exact(x), zeroed(x)
        diff = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        slim = fxprune.prune_channels(gm, graph, removal(graph, fraction, 1, exact_only=False))
        runs = tuple(slim(x).shape) == tuple(model(x).shape)
    before, after = fxprune.cost(model, x), fxprune.cost(slim, x)
    return {
        "model": name, "groups": len(graph.groups), "prunable": len(graph.prunable),
        "exact": sum(g.exact for g in graph.prunable),
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params,
        "runs": runs, "max_rel_diff_exact": diff, "seconds": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="every torchvision classifier")
    parser.add_argument("--models", help="comma-separated torchvision names")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--json", default="benchmarks/results/prune_sweep.json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # random weights give subnormals that slow CPU kernels
    names = (torchvision.models.list_models(module=torchvision.models) if args.all
             else args.models.split(",") if args.models else NAMED)
    rows = []
    print(f"{args.fraction:.0%} of every prunable group removed at random; torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}; flush-denormal on\n")
    print("| model | groups (prunable, exact) | GMACs before | after | ratio | Mparams before "
          "| after | ratio | runs | slim vs zeroed (exact groups) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in names:
        try:
            r = measure(name, args.fraction)
        except Exception as exc:  # noqa: BLE001 - a sweep reports failures and goes on
            r = {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            print(f"| {name} | failed: {r['error']} |||||||||")
            rows.append(r)
            continue
        rows.append(r)
        print(f"| {name} | {r['groups']} ({r['prunable']}, {r['exact']}) "
              f"| {r['macs_before'] / 1e9:.2f} | {r['macs_after'] / 1e9:.2f} "
              f"| {r['macs_before'] / r['macs_after']:.2f}x "
              f"| {r['params_before'] / 1e6:.1f} | {r['params_after'] / 1e6:.1f} "
              f"| {r['params_before'] / r['params_after']:.2f}x | {'yes' if r['runs'] else 'NO'} "
              f"| {r['max_rel_diff_exact']:.1e} |", flush=True)
    failed = [r["model"] for r in rows if "error" in r or not r["runs"] or r["max_rel_diff_exact"] > 1e-5]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} models pruned, ran and matched the zeroed "
          f"original to 1e-5" + (f"; failed: {', '.join(failed)}" if failed else ""))
    atomic.write_text(args.json, json.dumps(rows, indent=1))
    print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
