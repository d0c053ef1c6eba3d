"""Coverage: every torchvision classifier through fxprune and through Torch-Pruning.

Per model (random weights with all-zero layers given small random values, 1x3xSxS input,
each model in its own subprocess with a 16 GB address-space cap (--cap-gb) so that one blow-up cannot
take the sweep down):

- fxprune: traced, analysed, 30% of every prunable group removed at random, slim == zeroed
  on the exact groups (1e-5 relative), ONNX export with parity (`export_onnx`);
- Torch-Pruning: dependency graph built, 30% pruned with MagnitudeImportance (classifier
  ignored), forward runs with the original output shape, ONNX export (legacy exporter).

    python benchmarks/coverage.py [--models resnet18,vit_b_16]     # default: all (hours)

Rows are written to the JSON file as each model finishes; a rerun keeps the rows already
there (so a killed sweep resumes) unless --fresh is given; models named in --models are
always rerun.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision


def _size(name: str) -> int:
    from fxprune.app.model_specs import input_size

    return input_size(name)


def fxprune_side(name: str, folder: Path, out: dict) -> None:
    import fxprune
    from fxprune.app.model_specs import randomize_zero_parameters
    from fxprune.passes.plan import random_request

    model = randomize_zero_parameters(torchvision.models.get_model(name).eval())
    x = torch.randn(1, 3, _size(name), _size(name))
    gm = fxprune.trace(model, x)
    out["traced"] = True
    graph = fxprune.analyze(gm)
    out["analysed"] = True
    out["prunable"] = len(graph.prunable)
    exact = random_request(graph, 0.3, 0, exact_only=True)
    with torch.no_grad():
        a = fxprune.prune_channels(gm, graph, exact)(x)
        b = fxprune.zero_channels(gm, graph, exact)(x)
    out["zero_equivalent"] = bool(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) <= 1e-5)
    slim = fxprune.prune_channels(gm, graph, random_request(graph, 0.3, 1))
    out["pruned"] = True
    report = fxprune.export_onnx(slim, x, folder / "fx.onnx")
    out["onnx_parity"] = report.max_abs_diff < 1e-4 or report.max_rel_diff < 1e-3


def torch_pruning_side(name: str, folder: Path, out: dict) -> None:
    import torch_pruning as tp

    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, _size(name), _size(name))
    with torch.no_grad():
        shape = model(x).shape
    # the classifier: Torch-Pruning must be told not to prune the classes (the last Linear,
    # or SqueezeNet's final 1x1 conv); fxprune finds that the output's channels are fixed
    classifier = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    pruner = tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.3, ignored_layers=classifier)
    out["graph"] = True
    pruner.step()
    out["pruned"] = True
    with torch.no_grad():
        out["forward"] = tuple(model(x).shape) == tuple(shape)
    torch.onnx.export(model, (x,), str(folder / "tp.onnx"), dynamo=False)
    out["onnx"] = True


def one(name: str, side: str, cap_gb: float) -> dict:
    cap = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_flush_denormal(True)
    out: dict = {}  # filled step by step, so a failure still shows how far the tool got
    with tempfile.TemporaryDirectory() as folder:
        try:
            (fxprune_side if side == "fxprune" else torch_pruning_side)(name, Path(folder), out)
        except Exception as exc:  # noqa: BLE001 - the table reports where each tool stopped
            out["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"
    return out


def run(name: str, side: str, timeout: int, cap_gb: float) -> dict:
    start = time.perf_counter()
    out = _run(name, side, timeout, cap_gb)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _run(name: str, side: str, timeout: int, cap_gb: float) -> dict:
    try:
        result = subprocess.run([sys.executable, __file__, "--one", name, "--side", side,
                                 "--cap-gb", str(cap_gb)],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": f"crashed (exit {result.returncode}): {result.stderr.strip()[-100:]}"}
    return json.loads(lines[-1])


def cell(r: dict, keys: list[str]) -> str:
    if "error" in r:
        done = [k for k in keys if r.get(k)]
        return f"{'/'.join(done) or 'nothing'}; failed: {r['error']}"
    return "yes" if all(r.get(k) for k in keys) else "no: " + ", ".join(k for k in keys if not r.get(k))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--cap-gb", type=float, default=16.0, help="address-space cap per side")
    parser.add_argument("--json", default="benchmarks/results/coverage.json")
    parser.add_argument("--fresh", action="store_true", help="ignore rows already in --json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.side, args.cap_gb)))
        return 0
    from fxprune import atomic

    names = (args.models.split(",") if args.models
             else torchvision.models.list_models(module=torchvision.models))
    fx_keys = ["traced", "analysed", "pruned", "zero_equivalent", "onnx_parity"]
    tp_keys = ["graph", "pruned", "forward", "onnx"]
    print("| model | fxprune: traced, analysed, pruned, slim == zeroed, ONNX parity "
          "| Torch-Pruning: graph, pruned 30%, forward, ONNX |")
    print("|---|---|---|")
    done = {}
    if not args.fresh and Path(args.json).exists():
        done = {r["model"]: r for r in json.loads(Path(args.json).read_text())}
    rows = []
    for name in names:
        row = done.get(name)
        if row is None or args.models:
            row = {"model": name, "fxprune": run(name, "fxprune", args.timeout, args.cap_gb),
                   "torch_pruning": run(name, "tp", args.timeout, args.cap_gb)}
        rows.append(row)
        keep = rows + [r for n, r in done.items() if n not in {x["model"] for x in rows}]
        atomic.write_text(args.json, json.dumps(keep, indent=1))
        print(f"| {name} | {cell(row['fxprune'], fx_keys)} | {cell(row['torch_pruning'], tp_keys)} |",
              flush=True)
    ok_fx = sum("error" not in r["fxprune"] and all(r["fxprune"].get(k) for k in fx_keys) for r in rows)
    ok_tp = sum("error" not in r["torch_pruning"] and all(r["torch_pruning"].get(k) for k in tp_keys)
                for r in rows)
    print(f"\nall steps held: fxprune {ok_fx} of {len(rows)}, Torch-Pruning {ok_tp} of {len(rows)}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
