"""fxprune: find coupled channel groups of a model (and, as the pipeline grows, prune it).

The library never prints; this module does."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence

from fxprune import atomic
from fxprune.app.model_specs import (
    default_shape,
    example_inputs,
    is_detector,
    load_model,
    parse_shape,
)
from fxprune.coverage import coverage
from fxprune.errors import FxPruneError, InputError
from fxprune.graph import ChannelGraph, ChannelGroup
from fxprune.passes.analyze import HEADS, analyze
from fxprune.trace import CAPTURE_KEY, CAPTURES, SPECIALISED_KEY, trace


def _members(group: ChannelGroup, width: int = 64) -> str:
    names = list(dict.fromkeys(m.owner + (" (in)" if m.role == "in" else "") for m in group.params))
    text, shown = "", 0
    for name in names:
        if len(text) + len(name) + 2 > width:
            break
        text, shown = f"{text}, {name}" if text else name, shown + 1
    return text + (f" (+{len(names) - shown} more)" if shown < len(names) else "")


def format_table(graph: ChannelGraph) -> str:
    """A plain-text table of the groups: id, channels, state, members."""
    rows = [("id", "channels", "state", "members")]
    for g in graph.groups:
        state = "prunable" if g.prunable else "frozen"
        if g.prunable and not g.exact:
            state += " (inexact)"
        rows.append((str(g.id), str(g.channels), state, _members(g)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(r[i].ljust(widths[i]) for i in range(3)) + " | " + r[3] for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    frozen = [g for g in graph.groups if not g.prunable]
    if frozen:
        lines += ["", "why frozen:"]
        lines += [f"  group {g.id}: {g.reason}" for g in frozen]
    inexact = [g for g in graph.groups if g.prunable and not g.exact]
    if inexact:
        lines += ["", "inexact (zeroing a channel is not the same as removing it):"]
        lines += [f"  group {g.id}: {g.inexact_reason}" for g in inexact]
    prunable = graph.prunable
    lines += ["", f"{len(graph.groups)} groups, {len(prunable)} prunable, "
                  f"{sum(g.channels for g in prunable)} prunable channels"]
    return "\n".join(lines)


def _inspect(args: argparse.Namespace) -> int:
    shape = parse_shape(args.input_shape) if args.input_shape else None  # refused before loading
    model = load_model(args.model)
    shape = shape or default_shape(args.model, model)
    inputs, kwargs = example_inputs(args.model, model, shape, args.input_dtype)
    start = time.perf_counter()
    gm = trace(model, inputs, example_kwargs=kwargs, capture=args.capture)
    graph = analyze(gm, strict=args.strict, heads=args.heads)
    elapsed = time.perf_counter() - start
    print(format_table(graph))
    share = coverage(gm, graph)
    print(f"{share.share:.1%} of the conv/linear output channels are in prunable groups "
          f"({share.prunable} of {share.channels})")
    print(f"captured ({gm.meta[CAPTURE_KEY]}) and analysed {args.model} at input {shape} in "
          f"{elapsed * 1000:.0f} ms")
    decided = gm.meta.get(SPECIALISED_KEY, ())
    if decided:
        print(f"the graph is specialised to that input size: the model branches on sizes or "
              f"makes ints of them at {len(decided)} place{'s' * (len(decided) > 1)} "
              f"(first at {decided[0].where})")
    if args.json:
        print(f"wrote {atomic.write_text(args.json, graph.to_json(indent=1))}")
    if args.dot:
        from fxprune.export.dot import render_dot

        print(f"wrote {atomic.write_text(args.dot, render_dot(graph))}")
    if args.html:
        from fxprune.export.html import render_html

        page = render_html(graph, title=f"fxprune: channel groups of {args.model}")
        print(f"wrote {atomic.write_text(args.html, page)} (open it in a browser)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fxprune.export.deploy import deploy_report
    from fxprune.export.onnx import export_onnx

    shape = parse_shape(args.input_shape) if args.input_shape else None  # refused before loading
    if is_detector(args.model):
        # measured: SSDlite's best 300 boxes score 0.0117537 each, and onnxruntime orders them
        # otherwise than PyTorch
        raise InputError("a detector built here has random weights, whose scores tie, so its "
                         "boxes cannot be checked in onnxruntime: export it in Python, trained "
                         "or pruned, with fxprune.export_onnx(model, ([image1, image2],), path)")
    if args.compare and args.model.startswith("hf:"):
        raise InputError("--compare times models that take one input tensor; an hf:DIR model "
                         "takes keyword inputs: export it without --compare")
    model = load_model(args.model)
    shape = shape or default_shape(args.model, model)
    inputs, kwargs = example_inputs(args.model, model, shape, args.input_dtype)
    report = export_onnx(model, inputs, args.output, example_kwargs=kwargs, opset=args.opset,
                         dynamic_batch=not args.static_batch, check=not args.no_check)
    print(report)
    if args.compare:
        original = load_model(args.compare)
        print(f"\ndeployment: {args.compare} against {args.model}, onnxruntime on the CPU\n")
        print(deploy_report(original, model, inputs, repeats=args.repeats).to_markdown())
    return 0


def _prune(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from tqdm import tqdm

    from fxprune.app.job import Job, JobConfig, init_distributed
    from fxprune.pruner import describe_undecided

    if is_detector(args.model or ""):
        raise InputError("prune trains an image classifier on --data, which a detector is not: "
                         "prune it in Python (fxprune.trace(model, ([image1, image2],)), then "
                         "prune_channels)")
    if (args.model or "").startswith("hf:"):
        raise InputError("prune trains an image classifier on --data, which an hf:DIR model "
                         "is not: inspect and export it here, and prune it in Python "
                         "(fxprune.trace(model, (), example_kwargs=...), then prune_channels)")
    known = {f.name for f in fields(JobConfig)}
    cfg = JobConfig(**{k: v for k, v in vars(args).items() if k in known and v is not None})
    init_distributed(cfg.device)

    def progress(stage: str, total: int, start: int) -> tqdm:
        return tqdm(range(start, total), initial=start, total=total, desc=f"{stage:8s}",
                    unit="epoch", dynamic_ncols=True)

    job = Job(cfg, resume=args.resume, progress=progress)
    if job.rank == 0:
        print(f"fxprune prune: {cfg.model} on {cfg.data}, method {cfg.method}, output {cfg.out}"
              + (f", {job.world} processes" if job.world > 1 else ""))
    report = job.run()
    if job.rank == 0:
        print(f"\nbaseline {report['baseline_acc']:.2f}% -> before prune "
              f"{report['acc_before_prune']:.2f}% -> after prune {report['acc_after_prune']:.2f}%"
              f" -> fine-tuned {report['final_acc']:.2f}%")
        print(f"MACs {report['macs_ratio']:.2f}x fewer, parameters {report['params_ratio']:.2f}x "
              f"fewer; opt1 converged: {report['converged']}, margin "
              f"{report['margin_decades']:.1f} decades")
        if "latency" in report:
            lat = report["latency"]
            print(f"onnxruntime latency at batch {lat['batch']}: {lat['before_ms']:.3g} ms -> "
                  f"{lat['after_ms']:.3g} ms (target {lat['target_ms']:.3g} ms)")
        print(f"wrote {cfg.out}/report.md, report.json, model.onnx, model.pt2, groups.html")
        if report.get("undecided"):
            epochs = job.opt1_epochs
            print(f"\nopt1 ran out of its {epochs}-epoch budget before deciding: "
                  f"{describe_undecided(report['undecided'])}. Continue it with\n  "
                  + continue_command(args.argv, 2 * epochs))
    return 0


def continue_command(argv: Sequence[str], epochs: int) -> str:
    """`argv` as `fxprune` command that resumes with an opt1 budget of `epochs`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--opt1-epochs":
            skip = True
        elif arg != "--resume" and not arg.startswith("--opt1-epochs="):
            kept.append(arg)
    return shlex.join(["fxprune", *kept, "--resume", "--opt1-epochs", str(epochs)])


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="torchvision:NAME, timm:NAME, hf:DIR (a folder saved by "
                   "transformers), zoo:NAME, path/to/file.py:factory, or a saved .pt2")
    p.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224 (hf:DIR text "
                   "models: batch,sequence, default 1,128)")
    p.add_argument("--input-dtype", default="float32", choices=["float32", "float64", "int64"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show the coupled channel groups of a model")
    _add_model_arguments(p)
    p.add_argument("--strict", action="store_true", help="fail on ops fxprune does not know")
    p.add_argument("--capture", choices=CAPTURES, default="auto",
                   help="symbolic tracing, torch.export, or the first that captures it all")
    p.add_argument("--heads", choices=HEADS, default="whole",
                   help="attention's unit where a model splits features into heads itself: "
                        "whole heads, or one head dimension in every head")
    p.add_argument("--json", help="write the groups as JSON")
    p.add_argument("--dot", help="write the graph as Graphviz dot")
    p.add_argument("--html", help="write a self-contained HTML page drawing the groups")
    p.set_defaults(run=_inspect)
    p = sub.add_parser("export", help="export a model to ONNX, checked against PyTorch")
    _add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch dynamic")
    p.add_argument("--no-check", action="store_true", help="keep the file even if parity fails")
    p.add_argument("--compare", metavar="ORIGINAL",
                   help="also report params, MACs, ONNX size and latency against ORIGINAL")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    p.set_defaults(run=_export)
    p = sub.add_parser("prune", help="the end-to-end job (default: a residual CNN on digits)")
    p.add_argument("model", nargs="?", default=None,
                   help="digits (default), torchvision:NAME, timm:NAME or path/to/file.py:factory")
    p.add_argument("--weights", help="a state_dict file to start from (skips pre-training)")
    p.add_argument("--data", choices=["digits", "cifar10", "cifar100", "imagefolder"])
    p.add_argument("--data-dir", dest="data_dir", help="folder holding the data set")
    p.add_argument("--image-size", dest="image_size", type=int)
    p.add_argument("--method", choices=["catalyst", "l1", "group-lasso", "slimming", "magnitude"])
    p.add_argument("--c", type=float, help="Catalyst's c0 (the sparsity knob; default 1.05)")
    p.add_argument("--g", choices=["group", "full", "bn"],
                   help="Catalyst's G: the layers' slices of each channel (group, the default), "
                        "those and the consumers' input columns (full: decides faster on models "
                        "without BatchNorm), or the norm's scale and shift (bn)")
    p.add_argument("--gamma", type=float, help="regulariser weight (default 0.02)")
    p.add_argument("--kappa", type=float, help="decades of |log10 c| for convergence (default 2)")
    p.add_argument("--target-macs", dest="target_macs", type=float,
                   help="fraction of MACs to keep, e.g. 0.5 (baselines: by ranking)")
    p.add_argument("--target-latency", dest="target_latency", metavar="R",
                   help="onnxruntime CPU latency to reach: a fraction of the original's (0.5) "
                   "or milliseconds (12ms); baselines, channels chosen by score per ms saved")
    p.add_argument("--latency-batch", dest="latency_batch", type=int,
                   help="the batch size latency is measured at (default 1)")
    p.add_argument("--round-to", dest="round_to", type=int, help="keep a multiple of N channels")
    p.add_argument("--pretrain-epochs", dest="pretrain_epochs", type=int)
    p.add_argument("--opt1-epochs", dest="opt1_epochs", type=int, help="opt1 budget (default: "
                   "what 18 / (lr * gamma / (1 - momentum)) optimiser steps take: 100 on digits)")
    p.add_argument("--finetune-epochs", dest="finetune_epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("-o", "--out", help="output folder (default out/prune)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(run=_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `prune` prints the command that continues an unconverged run
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except FxPruneError as exc:
        print(f"fxprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
