"""Analysis speed: fxprune against Torch-Pruning on torchvision and timm models.

A model is a torchvision classifier's name (``resnet50``) or ``timm:NAME`` (built by
``timm.create_model(NAME, pretrained=False)``). For each (random weights, eval mode, one input of
the model's own size: 1x3x224x224 for the default models) this times

* fxprune: ``fxprune.trace(model, x)`` + ``fxprune.analyze(gm)`` + listing ``graph.groups``;
* Torch-Pruning: ``tp.DependencyGraph().build_dependency(model, example_inputs=x)`` + listing
  ``DG.get_all_groups(ignored_layers=[classifier], root_module_types=[Conv2d, Linear])``, the
  classifier being timm's ``get_classifier()``, or torchvision's last Linear.

Denormal flushing is turned on, each tool is warmed up once per model, and then the median of
``--repeats`` runs is reported; the two tools alternate within each repeat (and swap order
every other repeat) so that machine noise hits both. Results go to stdout as a markdown table
and to ``benchmarks/results/analysis_speed.json`` (``--json`` to change).

Run it from the repository root::

    python benchmarks/analysis_speed.py [--models resnet50,timm:vit_tiny_patch16_224] [--repeats 5]

Torch-Pruning comes from the ``bench`` extra (``pip install -e .[bench]``); without it only the
fxprune column is measured and Torch-Pruning is reported as "not installed".
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

import fxprune
from fxprune.app.model_specs import default_shape, load_model

try:
    import torch_pruning as tp
except ImportError:
    tp = None

DEFAULT_MODELS = (
    "resnet50",
    "densenet121",
    "vit_b_16",
    "convnext_tiny",
    "efficientnet_b0",
    "timm:resnet50",
    "timm:vit_tiny_patch16_224",
    "timm:convnext_tiny",
    "timm:efficientnet_b0",
)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "analysis_speed.json"
PARITY, STRETCH = 1.0, 5.0  # speed-ups: no slower than Torch-Pruning; the older 5x goal
RESNET50_MAX_MS = 100.0


def run_fxprune(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Trace, analyze and list the groups; return group counts."""
    graph = fxprune.analyze(fxprune.trace(model, x))
    groups = list(graph.groups)
    return {"groups": len(groups), "prunable": sum(g.prunable for g in groups)}


def classifier(model: nn.Module) -> list[nn.Module]:
    """The layers Torch-Pruning must leave alone (the classes): timm's ``get_classifier()`` (two
    heads for distilled models), else the last Linear."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        heads = head if isinstance(head, tuple) else (head,)
        return [h for h in heads if isinstance(h, nn.Module)]
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]


def run_torch_pruning(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Build Torch-Pruning's dependency graph and list every group rooted at a conv/linear."""
    ignored = classifier(model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    groups = list(
        dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear])
    )
    return {"groups": len(groups)}


def timed(
    fn: Callable[[nn.Module, torch.Tensor], dict[str, int]], model: nn.Module, x: torch.Tensor
) -> tuple[float, dict[str, int]]:
    """Run `fn` once; return wall time in ms and its result."""
    gc.collect()
    start = time.perf_counter()
    result = fn(model, x)
    return (time.perf_counter() - start) * 1e3, result


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model `name` names (a torchvision classifier, or timm:NAME) in eval mode with random
    weights, and a random input of its own size."""
    spec = name if name.startswith("timm:") else f"torchvision:{name}"
    model = load_model(spec)
    return model, torch.randn(default_shape(spec, model))


def bench_model(name: str, repeats: int) -> dict:
    """Warm up each tool once, then time `repeats` alternating runs of both."""
    torch.manual_seed(0)
    model, x = build(name)
    tools: dict[str, Callable[[nn.Module, torch.Tensor], dict[str, int]]] = {"fxprune": run_fxprune}
    out: dict[str, dict] = {"fxprune": {}, "torch_pruning": {}}
    if tp is None:
        out["torch_pruning"] = {"status": "not installed"}
    else:
        tools["torch_pruning"] = run_torch_pruning
    for tool, fn in list(tools.items()):  # warm-up; a tool that fails here is not repeated
        try:
            out[tool] = {"status": "ok", **timed(fn, model, x)[1]}
        except Exception as exc:  # noqa: BLE001 - a failing tool is a result, not a crash
            first_line = (str(exc).splitlines() or [""])[0][:80]
            out[tool] = {"status": f"failed: {type(exc).__name__}: {first_line}"}
            del tools[tool]
    samples: dict[str, list[float]] = {tool: [] for tool in tools}
    for i in range(repeats):
        order = list(tools) if i % 2 == 0 else list(reversed(tools))
        for tool in order:
            samples[tool].append(timed(tools[tool], model, x)[0])
    for tool, ms in samples.items():
        out[tool].update(median_ms=statistics.median(ms), samples_ms=ms)
    fx_ms, tp_ms = out["fxprune"].get("median_ms"), out["torch_pruning"].get("median_ms")
    speedup = tp_ms / fx_ms if fx_ms and tp_ms else None
    return {"model": name, **out, "speedup": speedup}


def cell(entry: dict, key: str, fmt: str) -> str:
    """Format `entry[key]`, or the entry's status when the tool did not run."""
    return format(entry[key], fmt) if key in entry else entry["status"]


def targets_line(rows: list[dict]) -> str:
    """State the targets and whether each is met."""
    unknown = [r["model"] for r in rows if r["speedup"] is None]

    def speed(bar: float) -> str:
        slow = [r["model"] for r in rows if r["speedup"] is not None and r["speedup"] < bar]
        verdict = "MET" if not slow and not unknown else "NOT MET"
        verdict += f" (below {bar:g}x: {', '.join(slow)})" if slow else ""
        return verdict + (f" (no comparison: {', '.join(unknown)})" if unknown else "")

    resnet = next((r["fxprune"] for r in rows if r["model"] == "resnet50"), None)
    if resnet is None or "median_ms" not in resnet:
        budget = "not measured"
    else:
        met = resnet["median_ms"] < RESNET50_MAX_MS
        budget = f"{'MET' if met else 'NOT MET'} ({resnet['median_ms']:.1f} ms)"
    return (f"Targets: no slower than Torch-Pruning on each model: {speed(PARITY)}. "
            f"ResNet-50 under {RESNET50_MAX_MS:g} ms: {budget}. "
            f"{STRETCH:g}x faster than Torch-Pruning on each model: {speed(STRETCH)}.")


def table(rows: list[dict]) -> str:
    """Render the results as a markdown table."""
    lines = [
        "| model | fxprune trace+analyze (ms) | Torch-Pruning build+groups (ms) "
        "| speed-up (TP / fxprune) | fxprune groups (prunable) | TP groups |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fx, tpr = r["fxprune"], r["torch_pruning"]
        groups = f"{fx['groups']} ({fx['prunable']})" if "groups" in fx else fx["status"]
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        lines.append(
            f"| {r['model']} | {cell(fx, 'median_ms', '.1f')} | {cell(tpr, 'median_ms', '.1f')} "
            f"| {speedup} | {groups} | {cell(tpr, 'groups', 'd')} |"
        )
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    """Write `data` atomically: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated models: torchvision names, or timm:NAME",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool and model")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    torch.set_flush_denormal(True)
    # torch_pruning.__version__ lags the release (1.6.1 says "1.6.0"): ask the distribution.
    tp_version = importlib.metadata.version("torch-pruning") if tp is not None else "not installed"
    try:
        timm_version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        timm_version = "not installed"
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm_version}, "
        f"torch-pruning {tp_version}, {torch.get_num_threads()} threads; "
        f"torch.set_flush_denormal(True); 1 warm-up + median of {args.repeats} "
        "alternating repeats (time.perf_counter)\n"
    )
    rows = [
        bench_model(name.strip(), args.repeats) for name in args.models.split(",") if name.strip()
    ]
    load = os.getloadavg()[0]  # other processes on the CPUs skew the multi-threaded forward
    print(table(rows))
    print()
    print(targets_line(rows))
    print(f"1-minute load average after the run: {load:.2f} on {os.cpu_count()} CPUs")
    write_json(
        args.json,
        {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm_version,
            "torch_pruning": tp_version,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "flush_denormal": True,
            "load_average_1min": load,
            "repeats": args.repeats,
            "targets": targets_line(rows),
            "results": rows,
        },
    )
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
