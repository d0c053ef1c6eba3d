"""The pruning job's report: report.json, report.md and its PNG plots, written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from fxprune import atomic
from fxprune.pruner import describe_undecided

PLOTS = ("log10_c.png", "decision_vs_magnitude.png", "training.png", "channels.png")


def _png(fig: object) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _plots(out: Path, report: dict, history: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    written = []
    if report.get("log10_c_kept") is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        kept, pruned = report["log10_c_kept"], report["log10_c_pruned"]
        bins = np.linspace(min(kept + pruned + [-1]), max(kept + pruned + [1]), 40)
        ax.hist(kept, bins=bins, label=f"kept ({len(kept)})", color="#3a7bd5")
        ax.hist(pruned, bins=bins, label=f"pruned ({len(pruned)})", color="#e4572e", alpha=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel="log10 c = log10 |D| / ||G||", ylabel="channels",
               title=f"Catalyst decisions, margin {report.get('margin_decades', float('nan')):.1f} decades")
        ax.legend()
        atomic.write_bytes(out / PLOTS[0], _png(fig))
        written.append(PLOTS[0])
    if report.get("initial_norm") is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        norm = np.asarray(report["initial_norm"])
        pruned = np.asarray(report["pruned"], dtype=bool)
        ax.scatter(norm[~pruned], np.zeros((~pruned).sum()), s=12, label="kept", color="#3a7bd5")
        ax.scatter(norm[pruned], np.ones(pruned.sum()), s=12, label="pruned", color="#e4572e")
        ax.set(xscale="log", xlabel="initial channel norm ||G_i||", yticks=[0, 1],
               yticklabels=["kept", "pruned"],
               title=f"decision against initial magnitude (Spearman {report.get('rank_correlation', float('nan')):.2f})")
        atomic.write_bytes(out / PLOTS[1], _png(fig))
        written.append(PLOTS[1])
    if history:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        steps = np.arange(len(history))
        top.plot(steps, [h["acc"] for h in history], color="#3a7bd5")
        bottom.plot(steps, [h["loss"] for h in history], color="#444444")
        top.set(ylabel="top-1 (%)", title="accuracy and task loss over the run")
        bottom.set(ylabel="task loss", xlabel="epoch of the run", yscale="log")
        stage = None
        for i, h in enumerate(history):
            if h["stage"] != stage:
                stage = h["stage"]
                for ax in (top, bottom):
                    ax.axvline(i - 0.5, color="#999999", ls="--", lw=0.8)
                top.text(i, top.get_ylim()[0], f" {stage}", va="bottom", fontsize=8)
        atomic.write_bytes(out / PLOTS[2], _png(fig))
        written.append(PLOTS[2])
    if report.get("channels"):
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(report["channels"])), 3.5))
        names = list(report["channels"])
        before = [report["channels"][n][0] for n in names]
        after = [report["channels"][n][1] for n in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, before, 0.4, label="before", color="#bbbbbb")
        ax.bar(x + 0.2, after, 0.4, label="after", color="#3a7bd5")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="output channels", title="channels per layer")
        ax.legend()
        atomic.write_bytes(out / PLOTS[3], _png(fig))
        written.append(PLOTS[3])
    return written


def _fmt(value: object, spec: str = ".2f") -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def _latency_rows(latency: dict | None) -> list[str]:
    if latency is None:
        return []
    error = latency.get("table_error")
    return [f"| onnxruntime latency, {latency['device']}, batch {latency['batch']} | "
            f"{latency['before_ms']:.3g} ms -> {latency['after_ms']:.3g} ms "
            f"({latency['before_ms'] / latency['after_ms']:.2f}x faster; target "
            f"{latency['target_ms']:.3g} ms, the table predicted {latency['predicted_ms']:.3g} ms"
            + (f", {error:.0%} off on held-out plans" if error is not None else "") + ") |"]


def write_report(out: Path, report: dict, history: list[dict]) -> None:
    """report.json (everything), report.md (the summary and plots)."""
    data = {k: v for k, v in report.items()
            if k not in ("log10_c_kept", "log10_c_pruned", "initial_norm", "pruned")}
    data["history"] = history
    atomic.write_text(out / "report.json", json.dumps(data, indent=1, default=float))
    plots = _plots(out, report, history)
    cfg = report["config"]
    lines = [
        f"# fxprune prune: {cfg['model']} on {cfg['data']} with {cfg['method']}", "",
        "| | value |", "|---|---:|",
        f"| baseline top-1 | {_fmt(report.get('baseline_acc'))} % |",
        f"| top-1 right before pruning | {_fmt(report.get('acc_before_prune'))} % |",
        f"| top-1 right after pruning | {_fmt(report.get('acc_after_prune'))} % |",
        f"| final top-1 (after fine-tuning) | {_fmt(report.get('final_acc'))} % |",
        f"| MACs | {_fmt(report.get('macs_before'), ',')} -> {_fmt(report.get('macs_after'), ',')} "
        f"({_fmt(report.get('macs_ratio'))}x fewer) |",
        f"| parameters | {_fmt(report.get('params_before'), ',')} -> "
        f"{_fmt(report.get('params_after'), ',')} ({_fmt(report.get('params_ratio'))}x fewer) |",
        *_latency_rows(report.get("latency")),
        f"| opt1 converged | {report.get('converged')}"
        + (f" ({describe_undecided(report['undecided'])}; continue with `--resume` and a larger "
           "`--opt1-epochs`)" if report.get("undecided") else "") + " |",
        f"| margin (Catalyst: smallest pruned c / largest kept c; baselines: smallest kept "
        f"score / largest pruned) | {_fmt(report.get('margin'), '.3g')} "
        f"({_fmt(report.get('margin_decades'), '.1f')} decades) |",
        f"| rank correlation, initial norm vs pruned | {_fmt(report.get('rank_correlation'))} |",
        f"| ONNX | {report.get('onnx', {}).get('path')} (max abs diff "
        f"{_fmt(report.get('onnx', {}).get('max_abs_diff'), '.1e')}) |",
        "", "Wall time per stage (seconds): " + ", ".join(
            f"{k} {v:.1f}" for k, v in report.get("seconds", {}).items()), "",
        "The channel groups: [groups.html](groups.html)", "",
    ]
    lines += [f"![{p}]({p})" for p in plots]
    atomic.write_text(out / "report.md", "\n".join(lines) + "\n")
