"""Pruning to a measured latency: the latency-aware plan beside the MACs-targeted plan that
reaches the same measured latency.

For each model, batch size and target (a fraction of the original's onnxruntime CPU latency),
the channels are scored by one-shot magnitude (the L2 norm over each channel's parameters in
its group), and two plans are made:
- ``latency``: `fxprune.latency_table` at that batch, `meet_latency` (channels chosen by score
  per millisecond saved, widths multiples of `preferred_step()`: 16 on a CPU with AVX-512,
  else 8; timed until the measured latency meets the target);
- ``macs``: the globally lowest-scored share of channels (`Scorer.lowest`, the MACs-targeted
  baselines' ranking), the share found by bisection on the latency plan's measured latency
  (within 1.5%), so the two compare at equal latency.
Both are timed by the same paired timer (runs alternating with the unpruned model's). Each row
gives the measured latency over the target, parameters and MACs kept; on digits also top-1
after `--finetune` epochs. The torchvision models have random weights (magnitude scores);
DigitsNet is pre-trained on scikit-learn's digits.

Rows are written to the JSON file as they finish: a rerun skips the rows it holds, so a
killed run resumes; ``--saved`` prints the tables without timing anything.

    python benchmarks/latency_target.py [--models mobilenet_v2,resnet50,vit_b_16,digits]
        [--batches 1,32] [--targets 0.5,0.7] [--repeats 10] [--saved] [--kinds] [--timer-check]

On two CPU cores a table takes 3-7 minutes at batch 1 and for MobileNet-v2 at batch 32;
ResNet-50's 91-plan table at batch 32 took 35 minutes (23 s a plan), and its four rows 5 more.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnxruntime
import torch
import torchvision
from torch.utils.data import DataLoader

import fxprune
from fxprune import atomic
from fxprune.app.datasets import digits
from fxprune.app.training import accuracy, train_epoch
from fxprune.baselines import Scorer
from fxprune.latency import (
    OnnxRuntimeTimer,
    latency_table,
    meet_latency,
    remembered,
    removal_at,
)
from fxprune.target import next_probe

sys.path.insert(0, str(Path(__file__).parent))
from catalyst_digits import pretrain  # noqa: E402

STEPS = 6  # timed plans per bisection, for both plans
MUST = ("mobilenet_v2", "vit_b_16")  # where the latency plan must keep more parameters
EQUAL = 0.015  # the MACs plan's measured latency within 1.5% of the latency plan's


def model_and_input(name: str, loaders: dict | None) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "digits":
        return pretrain(loaders), torch.randn(1, 1, 8, 8)
    return torchvision.models.get_model(name).eval(), torch.randn(1, 3, 224, 224)


def macs_plan(scorer: Scorer, gm: torch.fx.GraphModule, aim_ms: float, measure) -> tuple:
    """The lowest-scored share of channels whose measured latency is that of the latency plan
    (`aim_ms`), so the two compare at equal latency: bisection on the share in [0, 0.95] until
    a plan measures within EQUAL of it, the closest plan kept (either side)."""
    probes, plans = [], []
    while len(probes) < STEPS:
        share = next_probe(probes, aim_ms, 0.0, 0.95)
        removed = scorer.lowest(gm, share)
        probes.append((share, measure(removed)))
        plans.append(removed)
        if abs(probes[-1][1] / aim_ms - 1) <= EQUAL:
            break
    i = min(range(len(probes)), key=lambda k: abs(probes[k][1] - aim_ms))
    return plans[i], probes[i][1], probes


def finetuned_top1(gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph, removed: dict,
                   loaders: dict, epochs: int) -> float:
    slim = fxprune.prune_channels(gm, graph, removed)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(slim.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        train_epoch(slim, loaders["train"], optimizer)
    return accuracy(slim.eval(), loaders["test"])


def rows_for(name: str, batch: int, targets: list[float], args: argparse.Namespace,
             loaders: dict, done: dict) -> list[dict]:
    model, x = model_and_input(name, loaders)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    scorer = Scorer(gm, graph, "magnitude")
    scores = scorer.values(gm)  # additive: the squared norms
    start = time.perf_counter()
    timer = OnnxRuntimeTimer(gm, x, batch=batch, repeats=args.repeats)
    table = latency_table(gm, x, graph=graph, batch=batch, timer=timer,
                          progress=lambda i, n: print(f"  {name} b{batch}: timed {i}/{n}",
                                                      end="\r", flush=True))
    table_s = time.perf_counter() - start
    print(f"  {name} b{batch}: table of {table.timed} plans in {table_s:.0f} s, "
          f"held-out error {table.error():.1%}" + " " * 20, flush=True)
    full = fxprune.cost(gm, x)

    measure = remembered(lambda removed: timer(fxprune.prune_channels(gm, graph, removed), (x,)).ms,
                         table)  # a killed run does not time its plans again

    rows = []
    for fraction in targets:
        key = f"{name}/b{batch}/{fraction}"
        if key in done:
            rows.append(done[key])
            continue
        target_ms = fraction * table.full_ms
        met = meet_latency(table, scores, target_ms, graph, measure, steps=STEPS)
        removed, macs_ms, macs_probes = macs_plan(scorer, gm, met.measured_ms, measure)
        row = {"key": key, "model": name, "batch": batch, "target": fraction,
               "full_ms": table.full_ms, "target_ms": target_ms, "table_error": table.error(),
               "table_plans": table.timed, "table_seconds": table_s}
        for plan, plan_removed, ms, probes in (("latency", met.removed, met.measured_ms, met.probes),
                                               ("macs", removed, macs_ms, macs_probes)):
            slim = fxprune.prune_channels(gm, graph, plan_removed)
            figures = fxprune.cost(slim, x)
            row[plan] = {"ms": ms, "of_target": ms / target_ms, "params": figures.params / full.params,
                         "macs": figures.macs / full.macs, "probes": [list(p) for p in probes]}
            if name == "digits":
                row[plan]["top1"] = finetuned_top1(gm, graph, plan_removed, loaders, args.finetune)
        row["latency"]["predicted_ms"] = met.predicted_ms
        rows.append(row)
        done[key] = row
        atomic.write_text(args.json, json.dumps(list(done.values()), indent=1))
        print_row(row)
    return rows


HEADER = ("| model | batch | target | full ms | plan | measured / target | params kept "
          "| MACs kept | top-1 |\n|---|---:|---:|---:|---|---:|---:|---:|---:|")


def print_row(row: dict) -> None:
    for plan in ("latency", "macs"):
        p = row[plan]
        top1 = f"{p['top1']:.2f}" if "top1" in p else ""
        print(f"| {row['model']} | {row['batch']} | {row['target']} | {row['full_ms']:.3g} | "
              f"{plan} | {p['of_target']:.3f} | {p['params']:.3f} | {p['macs']:.3f} | {top1} |",
              flush=True)


def summary(rows: list[dict]) -> None:
    print("\n" + HEADER)
    for row in rows:
        print_row(row)
    within = [abs(row[p]["of_target"] - 1) <= 0.1 for row in rows for p in ("latency", "macs")]
    print(f"\nmeasured latency within 10% of the target: {sum(within)} of {len(within)} plans")
    for name in MUST:
        mine = [r for r in rows if r["model"] == name]
        if mine:
            more = sum(r["latency"]["params"] > 1.005 * r["macs"]["params"] for r in mine)
            pairs = ", ".join(f"b{r['batch']} at {r['target']}: {r['latency']['params']:.3f} vs "
                              f"{r['macs']['params']:.3f}, at {r['macs']['ms'] / r['latency']['ms']:.3f}"
                              " of its latency" for r in mine)
            print(f"{name}: the latency plan keeps more parameters (by 0.5% or more) in {more} "
                  f"of {len(mine)} rows ({pairs})")
    for row in (r for r in rows if r["model"] == "digits"):
        print(f"digits b{row['batch']} at {row['target']}: top-1 {row['latency']['top1']:.2f} "
              f"(latency plan) vs {row['macs']['top1']:.2f} (MACs plan)")
    mobile = [r for r in rows if r["model"] == "mobilenet_v2" and r["batch"] == 32
              and r["target"] == 0.5]
    if mobile:
        print(f"mobilenet_v2 at batch 32: measured {mobile[0]['latency']['ms'] / mobile[0]['full_ms']:.3f}"
              " of the original latency with the latency plan (target 0.5)")
    errors = {f"{r['model']} b{r['batch']}": r["table_error"] for r in rows}
    print("table's held-out error: " + ", ".join(f"{k} {v:.1%}" for k, v in errors.items()))


def kinds(name: str, batch: int, loaders: dict) -> None:
    """The model's latency table, and per kind of group what a quarter of its channels
    (in every group of the kind) holds: parameters, and the milliseconds the table says it
    saves. Where every kind saves the same milliseconds per parameter, no plan keeps more
    parameters than another at equal latency."""
    model, x = model_and_input(name, loaders)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    table = latency_table(gm, x, graph=graph, batch=batch)
    print(table.to_markdown())
    full = fxprune.cost(gm, x).params
    print("\n| groups | a quarter of their channels: M params | ms saved (table) | ms per M params |")
    print("|---|---:|---:|---:|")
    by_kind: dict[int, list[int]] = {}
    for g, curve in table.curves.items():
        by_kind.setdefault(curve.kind, []).append(g)
    for groups in by_kind.values():
        widths = {g: table.curves[g].channels - table.curves[g].channels // 4 for g in groups}
        slim = fxprune.prune_channels(gm, graph, removal_at(graph, widths))
        params = (full - fxprune.cost(slim, x).params) / 1e6
        saved = table.full_ms - table.predict(widths)
        print(f"| {', '.join(map(str, groups))} | {params:.3g} | {saved:.3g} | {saved / params:.3g} |")


def timer_check(loaders: dict) -> None:
    """How much paired timing of a 0.09 ms model spreads with the timer's fixed ten pairs
    (``min_ms=0``) and with its default of at least 50 ms of runs: DigitsNet at batch 1 timed
    against a copy of itself, and against a half-width DigitsNet, eight times each."""
    import copy

    from fxprune.app.model_zoo import DigitsNet

    model, x = model_and_input("digits", loaders)
    half = DigitsNet(width=16).eval()
    print("| min_ms | pairs | reference ms | itself / reference (min..max of 8) | half width / reference |")
    print("|---:|---:|---:|---|---|")
    for min_ms in (0.0, 50.0):
        timer = OnnxRuntimeTimer(model, x, batch=1, min_ms=min_ms)
        same = [timer(copy.deepcopy(model), (x,)).ms / timer.base_ms for _ in range(8)]
        smaller = [timer(half, (x,)).ms / timer.base_ms for _ in range(8)]
        print(f"| {min_ms:g} | {timer.repeats} | {timer.base_ms:.4f} | {min(same):.3f}..{max(same):.3f} "
              f"| {min(smaller):.3f}..{max(smaller):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,digits,resnet50,vit_b_16")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--targets", default="0.5,0.7")
    parser.add_argument("--repeats", type=int, default=10, help="paired runs per timed plan")
    parser.add_argument("--finetune", type=int, default=5, help="epochs, digits only")
    parser.add_argument("--json", default="benchmarks/results/latency_target.json")
    parser.add_argument("--saved", action="store_true", help="print the saved rows, time nothing")
    parser.add_argument("--kinds", action="store_true",
                        help="only print each model's table, and ms saved per parameter per kind "
                             "of group (times the models the cache lacks)")
    parser.add_argument("--timer-check", action="store_true",
                        help="only show how the paired timer spreads on a 0.09 ms model")
    args = parser.parse_args()
    saved = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else []
    done = {row["key"]: row for row in saved}
    if args.saved:
        summary(saved)
        return 0
    torch.set_flush_denormal(True)  # random weights give subnormals that slow CPU kernels
    print(f"onnxruntime {onnxruntime.__version__} CPU; at least {args.repeats} paired runs and 50 ms "
          "of the reference's runs per plan\n")
    train, test = digits(seed=0)
    loaders = {"train": DataLoader(train, batch_size=32, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)),
               "test": DataLoader(test, batch_size=512)}
    if args.timer_check:
        timer_check(loaders)
        return 0
    if args.kinds:
        for name in args.models.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                print(f"\n{name} at batch {batch}")
                kinds(name, batch, loaders)
        return 0
    targets = [float(t) for t in args.targets.split(",")]
    rows = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            keys = [f"{name}/b{batch}/{t}" for t in targets]
            if all(k in done for k in keys):
                rows += [done[k] for k in keys]
                continue
            rows += rows_for(name, batch, targets, args, loaders, done)
    summary(rows)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
