"""LLM scale: an 8B Llama traced, analysed and pruned on the meta device, no weight in memory.

The model is Llama 3 8B's architecture (32 layers, hidden 4096, 32 query and 8 key-value
heads of 128, FFN 14336, vocabulary 128256: 8.03 B parameters) built under
``torch.device("meta")``: every parameter has a shape and a dtype and no storage. The token
ids are meta tensors too. Stages, each timed (wall seconds) with its peak resident memory
(the process's VmHWM, reset before the stage through /proc/self/clear_refs; where that is not
possible, ru_maxrss, the peak since the process started):

- build: the model on meta;
- trace: ``fxprune.trace`` (torch.export, since symbolic tracing fails on transformers 5), with
  shapes propagated on fake tensors;
- analyse: ``fxprune.analyze``: the coupled channel groups;
- prune: ``fxprune.prune_channels`` with a plan removing 20% of every FFN group's neurons
  (gate/up rows and down columns) and 25% of every key-value group (a key-value head with the
  query heads that share it); there are no weights to rank, so the last channels of each group
  go. The slim graph's shapes are checked against the plan on fake tensors, as always;
- cost: ``fxprune.cost`` before and after (its FlopCounterMode run works on meta tensors:
  shapes alone), MACs counted on the example sequence and divided by its tokens.

Then parameters and MACs per token before and after, checked against a count from the config,
and what Torch-Pruning would need for the same. Run it from the repository root::

    python benchmarks/llm_scale.py                 # the full 32 layers (15-25 s on 2 CPUs)
    python benchmarks/llm_scale.py --layers 2      # a quick run at a smaller depth
    python benchmarks/llm_scale.py --torch-pruning # also try Torch-Pruning's graph on meta
    python benchmarks/llm_scale.py --json benchmarks/results/llm_scale.json

Needs transformers (5.x). Targets (issue 13): trace and analysis under 10 s and under 4 GB
resident at 32 layers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import resource
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import fxprune
from fxprune.atomic import write_text
from fxprune.trace import CAPTURES

GIB = 1024 ** 3
TARGET_SECONDS, TARGET_GIB = 10.0, 4.0


class Memory:
    """Peak resident memory per stage: VmHWM after resetting it (Linux >= 4.0), else the
    process-wide ru_maxrss (then a stage's peak may be an earlier stage's)."""

    def __init__(self) -> None:
        self.per_stage = self._reset()

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        return int(found.group(1)) * 1024 if found else None

    def _reset(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return self._status("VmHWM") is not None

    def start(self) -> None:
        if self.per_stage:
            self._reset()

    def peak(self) -> int:
        if self.per_stage:
            return self._status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux

    def now(self) -> int | None:
        return self._status("VmRSS")


def llama_config(layers: int, vocab: int) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=4096, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       intermediate_size=14336, tie_word_embeddings=False)


def expected_params(cfg: object, kv_heads: int, ffn: int) -> int:
    """Parameters of a Llama with `kv_heads` key-value heads (and their query heads) and `ffn`
    neurons per layer: embedding, lm_head, final norm, and per layer q/k/v/o, gate/up/down and
    two RMSNorms (no biases)."""
    h, d = cfg.hidden_size, cfg.head_dim
    q_heads = kv_heads * cfg.num_attention_heads // cfg.num_key_value_heads
    attention = h * d * (2 * q_heads + 2 * kv_heads)
    layer = attention + 3 * h * ffn + 2 * h
    return 2 * cfg.vocab_size * h + h + cfg.num_hidden_layers * layer


def plan(graph: fxprune.ChannelGraph, ffn_share: float,
         kv_share: float) -> tuple[dict[int, list[int]], dict[str, int]]:
    """The last `ffn_share` of every FFN group and `kv_share` of every key-value group, found
    by the parameters they slice (gate_proj's rows; k_proj's rows)."""
    remove: dict[int, list[int]] = {}
    kinds = {"ffn": 0, "kv": 0}
    for group in graph.groups:
        sliced = {(m.param.rsplit(".", 2)[-2], m.dim) for m in group.params}
        kind = ("ffn" if ("gate_proj", 0) in sliced else
                "kv" if ("k_proj", 0) in sliced else None)
        if kind is None or not group.prunable:
            continue
        share = ffn_share if kind == "ffn" else kv_share
        count = int(group.channels * share)
        remove[group.id] = list(range(group.channels - count, group.channels))
        kinds[kind] += 1
    return remove, kinds


def run(layers: int, vocab: int, seq: int, capture: str) -> dict:
    from transformers import LlamaForCausalLM

    memory = Memory()
    stages: list[dict] = []

    def stage(name: str, work: Callable[[], object]) -> object:
        memory.start()
        start, cpu = time.perf_counter(), time.process_time()
        result = work()
        stages.append({"stage": name, "seconds": time.perf_counter() - start,
                       "cpu_seconds": time.process_time() - cpu,
                       "peak_rss": memory.peak(), "rss_after": memory.now()})
        return result

    baseline = memory.now()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cfg = llama_config(layers, vocab)

    def build() -> torch.nn.Module:
        with torch.device("meta"):
            return LlamaForCausalLM(cfg).eval()

    model = stage("build (meta)", build)
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    kwargs = {"use_cache": False}
    gm = stage("trace", lambda: fxprune.trace(model, (ids,), example_kwargs=kwargs,
                                              capture=capture))
    graph = stage("analyse", lambda: fxprune.analyze(gm))
    remove, kinds = plan(graph, 0.2, 0.25)
    slim = stage("prune", lambda: fxprune.prune_channels(gm, graph, remove))
    before, after = stage("cost (before, after)", lambda: (
        fxprune.cost(gm, (ids,), example_kwargs=kwargs),
        fxprune.cost(slim, (ids,), example_kwargs=kwargs)))

    tensors = [t for m in (model, gm, slim) for t in (*m.parameters(), *m.buffers())]
    materialised = sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)
    ffn_left = cfg.intermediate_size - int(cfg.intermediate_size * 0.2)
    kv_left = cfg.num_key_value_heads - int(cfg.num_key_value_heads * 0.25)
    layer0 = "model.layers.0."
    shapes = {name.removeprefix(layer0): tuple(p.shape) for name, p in slim.named_parameters()
              if name.startswith(layer0) and name.endswith("proj.weight")}
    groups = [{"id": g.id, "channels": g.channels, "prunable": g.prunable, "exact": g.exact}
              for g in graph.groups]
    return {
        "config": {"layers": layers, "hidden": cfg.hidden_size,
                   "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
                   "head_dim": cfg.head_dim, "ffn": cfg.intermediate_size, "vocab": vocab,
                   "seq": seq, "capture": gm.meta["fxprune.capture"]},
        "baseline_rss": baseline,
        "load_average": load,
        "cpus": os.cpu_count(),
        "per_stage_peak": memory.per_stage,
        "stages": stages,
        "nodes": len(gm.graph.nodes),
        "groups": groups,
        "pruned_groups": kinds,
        "plan": {"ffn_left": ffn_left, "kv_heads_left": kv_left},
        "params": {"before": before.params, "after": after.params,
                   "expected_before": expected_params(cfg, cfg.num_key_value_heads,
                                                      cfg.intermediate_size),
                   "expected_after": expected_params(cfg, kv_left, ffn_left)},
        "macs_per_token": {"before": before.macs / seq, "after": after.macs / seq},
        "layer0_shapes": shapes,
        "materialised_bytes": materialised,
        "memory_total": _mem_total(),
    }


def _mem_total() -> int | None:
    """The machine's RAM in bytes (Linux), else None."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"^MemTotal:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def gib(size: int | None) -> str:
    return f"{size / GIB:.2f}" if size is not None else "?"


def torch_pruning_on_meta(cfg: object, seq: int) -> str:
    """Try Torch-Pruning's dependency graph on the same model on meta: what happened."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "Torch-Pruning on the meta model: not tried, torch_pruning is not installed"
    version = importlib.metadata.version("torch-pruning")
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(cfg).eval()
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its note on the RMSNorm weights it cannot place
            tp.DependencyGraph().build_dependency(
                model, example_inputs={"input_ids": ids, "use_cache": False})
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return (f"Torch-Pruning {version}'s build_dependency on this meta model failed after "
                f"{time.perf_counter() - start:.2f} s: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}")
    return (f"Torch-Pruning {version}'s build_dependency on this meta model built a graph "
            f"in {time.perf_counter() - start:.2f} s")


def report(result: dict) -> str:
    c = result["config"]
    lines = [
        f"Llama, {c['layers']} layers, hidden {c['hidden']}, {c['heads']} query / "
        f"{c['kv_heads']} key-value heads of {c['head_dim']}, FFN {c['ffn']}, vocabulary "
        f"{c['vocab']}; on the meta device, input ids 1 x {c['seq']} (meta); "
        f"captured by {c['capture']}, {result['nodes']} nodes.",
        "",
        "| stage | wall s | CPU s | peak RSS GiB | RSS after GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['seconds']:.2f} | {s['cpu_seconds']:.2f} | "
                     f"{gib(s['peak_rss'])} | {gib(s['rss_after'])} |")
    traced = sum(s["seconds"] for s in result["stages"] if s["stage"] in ("trace", "analyse"))
    peak = max(s["peak_rss"] for s in result["stages"])
    how = ("per stage (VmHWM reset before each)" if result["per_stage_peak"]
           else "ru_maxrss: the process's peak so far")
    load = result["load_average"]
    lines += [
        "",
        f"CPU s: this process's CPU time (all threads); wall s includes waiting for the "
        f"{result['cpus']} CPUs"
        + (f" (load average {load:.1f} at the start)" if load is not None else "") + ".",
        f"Peak RSS: {how}; the process held {gib(result['baseline_rss'])} GiB before building "
        "the model (Python, torch, transformers). Bytes in non-meta parameters or buffers of "
        f"the model, the graph and the slim graph: {result['materialised_bytes']}.",
        f"Trace + analyse: {traced:.2f} s (target < {TARGET_SECONDS:.0f} s: "
        f"{'met' if traced < TARGET_SECONDS else 'NOT met'}); peak RSS of any stage "
        f"{gib(peak)} GiB (target < {TARGET_GIB:.0f} GiB: "
        f"{'met' if peak < TARGET_GIB * GIB else 'NOT met'}).",
    ]
    p, m = result["params"], result["macs_per_token"]
    kinds, kept = result["pruned_groups"], result["plan"]
    lines += [
        "",
        f"Plan: the last 20% of each of {kinds['ffn']} FFN groups ({c['ffn']} -> "
        f"{kept['ffn_left']} neurons) and the last 25% of each of {kinds['kv']} key-value "
        f"groups ({c['kv_heads']} -> {kept['kv_heads_left']} key-value heads, with their query "
        "heads).",
        "",
        "| | before | after | after / before |",
        "|---|---:|---:|---:|",
        f"| parameters | {p['before']:,} | {p['after']:,} | {p['after'] / p['before']:.3f} |",
        f"| MACs per token (sequence of {c['seq']}) | {m['before']:,.0f} | {m['after']:,.0f} | "
        f"{m['after'] / m['before']:.3f} |",
        "",
        f"Parameters from the config by hand: {p['expected_before']:,} before, "
        f"{p['expected_after']:,} after: "
        f"{'match' if (p['before'], p['after']) == (p['expected_before'], p['expected_after']) else 'MISMATCH'}."
        " MACs are fxprune.cost's (torch's FlopCounterMode on meta tensors: matrix products "
        "only, attention's included at this sequence length, the embedding lookup not).",
        "Layer 0 after: " + ", ".join(f"{k} {tuple(v)}" for k, v in result["layer0_shapes"].items())
        + ".",
        "",
    ]
    fp32, bf16 = p["before"] * 4, p["before"] * 2
    total = result["memory_total"]
    lines.append(
        "Torch-Pruning builds its dependency graph (DependencyGraph.build_dependency) by running "
        "the model's eager forward with autograd and following grad_fn, so it needs the weights "
        f"materialised: {fp32 / 1e9:.1f} GB in float32 ({bf16 / 1e9:.1f} GB in bfloat16) before "
        "activations and the autograd graph"
        + (f", against {total / 1e9:.1f} GB of RAM on this machine" if total else "")
        + ". It was not run on materialised weights at this size.")
    if result.get("torch_pruning"):
        lines.append(result["torch_pruning"] + ".")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (default 32)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary (default 128256)")
    parser.add_argument("--seq", type=int, default=128,
                        help="tokens in the example input (default 128; above 1, fxprune.trace "
                             "leaves the sequence length free, which costs torch.export time)")
    parser.add_argument("--capture", default="export", choices=CAPTURES,
                        help="fxprune.trace's capture (default export; auto tries symbolic "
                             "tracing first, which fails on transformers 5)")
    parser.add_argument("--torch-pruning", action="store_true",
                        help="also try Torch-Pruning's build_dependency on the same meta model")
    parser.add_argument("--json", type=Path, help="write the results here (atomically)")
    args = parser.parse_args()
    result = run(args.layers, args.vocab, args.seq, args.capture)
    if args.torch_pruning:
        result["torch_pruning"] = torch_pruning_on_meta(llama_config(args.layers, args.vocab),
                                                        args.seq)
    print(report(result))
    if args.json is not None:
        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
