"""`fxprune prune`: the end-to-end job, resumable after a kill, one process or many (DDP).

Stages: data and model; pre-training (when no weights are given); opt1 (Catalyst or a
baseline's regulariser) until converged or the budget; prune; opt2 (Catalyst: remove D);
fine-tune; ONNX export with the parity check and the slim model saved; report.

A checkpoint (``OUT/checkpoint.pt``, loadable with ``weights_only=True``) is written atomically
at the end of every epoch. It holds the stage, the epoch, the trained state, the optimiser,
every random state and the history, so a rerun with ``resume=True`` continues and ends with the
same result as an uninterrupted run. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from fxprune import atomic
from fxprune.baselines import METHODS as BASELINES
from fxprune.baselines import Scorer, initial_norms
from fxprune.cost import cost
from fxprune.datasets import load_data
from fxprune.errors import InputError, TrainingError
from fxprune.graph import ChannelGraph
from fxprune.passes.analyze import analyze
from fxprune.passes.catalyst import strip_catalysts
from fxprune.passes.slim import prune_channels
from fxprune.pruner import DEFAULT_C, DEFAULT_GAMMA, DEFAULT_KAPPA, CatalystPruner, spearman
from fxprune.trace import trace
from fxprune.train import accuracy, train_epoch

log = logging.getLogger(__name__)
METHODS = ("catalyst", *BASELINES)


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    model: str = "digits"  # "digits" (the embedded DigitsNet), torchvision:NAME, file.py:factory
    weights: str | None = None  # a state_dict file (weights_only); skips pre-training
    data: str = "digits"
    data_dir: str | None = None
    image_size: int = 224
    method: str = "catalyst"
    c: float = DEFAULT_C
    gamma: float = DEFAULT_GAMMA
    kappa: float = DEFAULT_KAPPA
    strength: float = 2e-3  # the baselines' regulariser weight (group lasso, slimming)
    target_macs: float | None = None  # fraction of the original MACs to keep (baselines)
    prune_share: float = 0.4  # baselines without a MACs target: share of channels removed
    round_to: int = 1
    pretrain_epochs: int = 15
    opt1_epochs: int = 60
    finetune_epochs: int = 10
    batch_size: int = 32
    lr: float = 0.02
    pretrain_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    out: str = "out/prune"


@dataclass
class State:
    """Everything a checkpoint holds (plain containers and tensors: weights_only loadable)."""

    stage: str = "pretrain"
    epoch: int = 0  # epochs finished in the current stage
    model: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None
    loader_rng: torch.Tensor | None = None
    pretrained: dict = field(default_factory=dict)
    opt1_done: dict = field(default_factory=dict)
    removed: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


class Job:
    """One run of the pipeline; `run()` returns the report dict (also written as JSON)."""

    def __init__(self, cfg: JobConfig, *, resume: bool = False,
                 progress: Callable[[str, int, int], Iterator] | None = None) -> None:
        if cfg.method not in METHODS:
            raise InputError(f"unknown method '{cfg.method}': choose one of {', '.join(METHODS)}")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = torch.device(cfg.device)
        self.progress = progress
        self.bar = None
        self.state = self._load_checkpoint() if resume else State()
        torch.manual_seed(cfg.seed)
        self.data = load_data(cfg.data, cfg.data_dir, seed=cfg.seed, image_size=cfg.image_size)
        self.example = torch.zeros((1, *self.data.input_shape), device=self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        sampler = (DistributedSampler(self.data.train, self.world, self.rank, seed=cfg.seed)
                   if self.world > 1 else None)
        self.sampler = sampler
        self.train_loader = DataLoader(self.data.train, batch_size=cfg.batch_size,
                                       shuffle=sampler is None, sampler=sampler,
                                       generator=self.generator)
        self.test_loader = DataLoader(self.data.test, batch_size=256)

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _load_checkpoint(self) -> State:
        path = self.checkpoint_path
        if not path.is_file():
            raise InputError(f"nothing to resume: {path} does not exist (run without --resume)")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return State(**saved)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets one message
            raise InputError(f"the checkpoint {path} is corrupted or not fxprune's "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                             "delete it to start over") from exc

    def _save_checkpoint(self) -> None:
        self.state.rng = torch.get_rng_state()
        self.state.loader_rng = self.generator.get_state()
        if self.rank != 0:
            return
        buffer = io.BytesIO()
        torch.save(asdict(self.state), buffer)
        atomic.write_bytes(self.checkpoint_path, buffer.getvalue())

    def _restore_rng(self) -> None:
        if self.state.rng is not None:
            torch.set_rng_state(self.state.rng)
            self.generator.set_state(self.state.loader_rng)

    # --- building blocks -----------------------------------------------------------------------

    def _base_model(self) -> nn.Module:
        from fxprune.models import load_model
        from fxprune.zoo import DigitsNet

        torch.manual_seed(self.cfg.seed)
        if self.cfg.model in ("digits", "zoo:digits"):
            model = DigitsNet(num_classes=self.data.num_classes,
                              in_channels=self.data.input_shape[0])
        elif self.cfg.model == "zoo:cifar_resnet56":
            from fxprune.zoo import cifar_resnet56

            model = cifar_resnet56(self.data.num_classes)
        else:
            model = load_model(self.cfg.model)
        return model.to(self.device)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def _epochs(self, stage: str, total: int) -> Iterator[int]:
        start = self.state.epoch if self.state.stage == stage else 0
        if start:
            self._restore_rng()
        epochs = range(start, total)
        if self.progress is not None and self.rank == 0:
            epochs = self.bar = self.progress(stage, total, start)
        for epoch in epochs:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            yield epoch

    def _train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                     penalty: Callable[[], torch.Tensor] | None) -> float:
        return train_epoch(model, self.train_loader, optimizer, penalty=penalty, device=self.device)

    def _record(self, **row: object) -> None:
        self.state.history.append({"stage": self.state.stage, **row})
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v)
                                  for k, v in row.items() if k != "epoch"})

    def _sgd(self, params: Iterator[nn.Parameter], lr: float) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)

    # --- stages --------------------------------------------------------------------------------

    def run(self) -> dict:
        start = time.perf_counter()
        model = self._base_model()
        trace(model, self.example)  # bad model/input pairs fail here, before any training
        if self.state.stage == "pretrain":
            self._pretrain(model)
        model.load_state_dict(self.state.pretrained)
        model.eval()
        gm = trace(model, self.example)
        graph = analyze(gm)
        if self.state.stage == "opt1":
            self._opt1(gm, graph)
        slim = self._slim(gm, graph)
        if self.state.stage == "finetune":
            self._finetune(slim)
        slim.load_state_dict(self.state.model)
        if self.state.stage == "export":
            self._export(gm, graph, slim)
        self.state.seconds["total_this_process"] = time.perf_counter() - start
        return self.report()

    def _resume(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> nn.Module:
        """Restore a stage interrupted mid-way; returns the model to train (DDP-wrapped)."""
        if self.state.epoch:
            model.load_state_dict(self.state.model)
            optimizer.load_state_dict(self.state.optimizer)
            if schedule is not None:
                schedule.load_state_dict(self.state.scheduler)
        return self._wrap(model)

    def _end_epoch(self, stage: str, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                   started: float, schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
        """Record the finished epoch in the state and write the checkpoint."""
        self.state.epoch, self.state.model = epoch + 1, model.state_dict()
        self.state.optimizer = optimizer.state_dict()
        if schedule is not None:
            self.state.scheduler = schedule.state_dict()
        self._timed(stage, time.perf_counter() - started)
        self._save_checkpoint()

    def _timed(self, stage: str, seconds: float) -> None:
        self.state.seconds[stage] = self.state.seconds.get(stage, 0.0) + seconds

    def _pretrain(self, model: nn.Module) -> None:
        cfg = self.cfg
        if cfg.weights is not None:
            try:
                weights = torch.load(cfg.weights, map_location=self.device, weights_only=True)
                model.load_state_dict(weights)
            except Exception as exc:  # noqa: BLE001 - report any unusable weights file
                raise InputError(f"cannot load weights from {cfg.weights}: {exc}") from exc
        else:
            optimizer = self._sgd(model.parameters(), cfg.pretrain_lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.pretrain_epochs)
            trained = self._resume(model, optimizer, schedule)
            for epoch in self._epochs("pretrain", cfg.pretrain_epochs):
                t = time.perf_counter()
                loss = self._train_epoch(trained, optimizer, None)
                schedule.step()
                self._record(epoch=epoch, loss=loss, acc=accuracy(model, self.test_loader,
                                                                  device=self.device))
                self._end_epoch("pretrain", epoch, model, optimizer, t, schedule)
        self.state.pretrained = copy.deepcopy(model.state_dict())
        self.state.figures["baseline_acc"] = accuracy(model, self.test_loader, device=self.device)
        self._next("opt1")

    def _next(self, stage: str) -> None:
        self.state.stage, self.state.epoch = stage, 0
        self.state.optimizer, self.state.scheduler = {}, {}
        self._save_checkpoint()

    def _opt1(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> None:
        cfg = self.cfg
        if cfg.method != "catalyst":
            self._regularise(gm, graph)
        elif cfg.target_macs is None:
            pruner, converged = self._catalyst_run(gm, cfg.c)
            self.state.opt1_done = {"model": pruner.model.state_dict(), "converged": converged,
                                    "c": cfg.c}
        else:
            self._calibrate(gm, graph)
        self._next("prune")

    def _catalyst_run(self, gm: torch.fx.GraphModule, c: float) -> tuple[CatalystPruner, bool]:
        """opt1 at c0 = `c` until converged or the budget; resumes mid-run from the state."""
        cfg = self.cfg
        pruner = CatalystPruner(gm, self.example, c=c, gamma=cfg.gamma, kappa=cfg.kappa)
        optimizer = pruner.sgd(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        trained = self._resume(pruner.model, optimizer)
        for epoch in self._epochs("opt1", cfg.opt1_epochs):
            t = time.perf_counter()
            loss = self._train_epoch(trained, optimizer, pruner.penalty)
            d = pruner.diagnostics()
            self._record(epoch=epoch, c0=c, loss=loss, penalty=d.penalty, decided=d.decided,
                         margin=d.margin_decades,
                         acc=accuracy(pruner.model, self.test_loader, device=self.device))
            self._end_epoch("opt1", epoch, pruner.model, optimizer, t)
            if d.converged:
                break
        return pruner, pruner.converged()

    def _calibrate(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> None:
        """Meet --target-macs with Catalyst by choosing c0 (the sparsity knob): complete opt1
        runs at c0 found by bisection; the run closest to the target (at or under it first)
        is the one pruned. Each finished probe is recorded, so a resumed job skips it."""
        cfg = self.cfg
        probes = self.state.figures.setdefault("calibration", [])
        full = cost(gm, self.example).macs
        while len(probes) < CALIBRATION_PROBES:
            c = _next_c(probes, cfg.target_macs)
            pruner, converged = self._catalyst_run(gm, c)
            slim = prune_channels(strip_catalysts(pruner.model), graph,
                                  pruner.decisions(round_to=cfg.round_to))
            macs = cost(slim, self.example).macs / full
            probes.append({"c": c, "macs_fraction": macs, "converged": converged})
            if probes[-1] is min(probes, key=lambda p: _miss(p["macs_fraction"], cfg.target_macs)):
                self.state.opt1_done = {"model": pruner.model.state_dict(),
                                        "converged": converged, "c": c}
            self.state.epoch, self.state.model, self.state.optimizer = 0, {}, {}
            self._save_checkpoint()
        best = min(probes, key=lambda p: _miss(p["macs_fraction"], cfg.target_macs))
        self.state.figures.update(target_macs=cfg.target_macs, chosen_c=best["c"],
                                  target_macs_reached=best["macs_fraction"])

    def _regularise(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> None:
        """opt1 of a baseline: its regulariser (group lasso, slimming) for the budget; the
        one-shot methods (l1, magnitude) train no further."""
        cfg = self.cfg
        model = copy.deepcopy(gm)
        scorer = Scorer(model, graph, cfg.method)
        strength = cfg.strength if cfg.method in ("group-lasso", "slimming") else 0.0
        optimizer = self._sgd(model.parameters(), cfg.lr)
        trained = self._resume(model, optimizer)
        for epoch in self._epochs("opt1", cfg.opt1_epochs if strength else 0):
            t = time.perf_counter()
            loss = self._train_epoch(trained, optimizer, lambda: strength * scorer.penalty(model))
            self._record(epoch=epoch, loss=loss,
                         acc=accuracy(model, self.test_loader, device=self.device))
            self._end_epoch("opt1", epoch, model, optimizer, t)
        self.state.opt1_done = {"model": model.state_dict(), "converged": True}

    def _slim(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> torch.fx.GraphModule:
        """Prune (and, for Catalyst, opt2) once; afterwards, and on resume, rebuild the slim
        architecture from the recorded decisions and load its latest weights."""
        if self.state.stage == "prune":
            t = time.perf_counter()
            self.state.model = self._decide(gm, graph).state_dict()
            self._timed("prune", time.perf_counter() - t)
            self._next("finetune")
        slim = prune_channels(gm, graph, self.state.removed)
        slim.load_state_dict(self.state.model)
        return slim

    def _decide(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> torch.fx.GraphModule:
        cfg, f = self.cfg, self.state.figures
        if cfg.method == "catalyst":
            c = self.state.opt1_done.get("c", cfg.c)
            pruner = CatalystPruner(gm, self.example, c=c, gamma=cfg.gamma, kappa=cfg.kappa)
            if self.state.opt1_done:
                pruner.model.load_state_dict(self.state.opt1_done["model"])
            f["acc_before_prune"] = accuracy(pruner.model, self.test_loader, device=self.device)
            d = pruner.diagnostics()
            if not d.converged:
                log.warning("opt1 did not converge within %d epochs (margin %.2f decades): the "
                            "pruning step is not lossless", cfg.opt1_epochs, d.margin_decades)
            intermediate = pruner.prune(force=True, round_to=cfg.round_to)
            f["acc_after_prune"] = accuracy(intermediate, self.test_loader, device=self.device)
            final = pruner.finalize()
            removed = pruner.removed
            f.update(converged=d.converged, margin=d.margin, margin_decades=d.margin_decades,
                     rank_correlation=d.rank_correlation,
                     log10_c_kept=d.log10_c_kept.tolist(), log10_c_pruned=d.log10_c_pruned.tolist(),
                     initial_norm=d.initial_norm.tolist(), pruned=d.pruned.tolist())
        else:
            model = copy.deepcopy(gm)
            if self.state.opt1_done:
                model.load_state_dict(self.state.opt1_done["model"])
            scorer = Scorer(model, graph, cfg.method)
            removed = self._baseline_removal(model, graph, scorer)
            f["acc_before_prune"] = accuracy(model, self.test_loader, device=self.device)
            final = prune_channels(model, graph, removed, round_to=cfg.round_to)
            f["acc_after_prune"] = accuracy(final, self.test_loader, device=self.device)
            with torch.no_grad():
                scores = {g: s.cpu().numpy() for g, s in scorer.scores(model).items()}
            kept = [v for g, s in scores.items() for i, v in enumerate(s) if i not in removed.get(g, [])]
            gone = [v for g, s in scores.items() for i, v in enumerate(s) if i in removed.get(g, [])]
            norms = initial_norms(gm, graph)
            pruned = np.concatenate([np.isin(np.arange(len(n)), removed.get(g, []))
                                     for g, n in norms.items()])
            f.update(converged=self.state.opt1_done.get("converged", True),
                     # a baseline keeps the high scores: its margin is how far the lowest
                     # kept score sits above the highest pruned one
                     margin=(min(kept) / max(gone)) if gone and kept and max(gone) > 0 else math.inf,
                     rank_correlation=spearman(np.concatenate(list(norms.values())),
                                               pruned.astype(float)))
            f["margin_decades"] = math.log10(f["margin"]) if f["margin"] > 0 else -math.inf
        self.state.removed = {int(g): [int(i) for i in v] for g, v in removed.items()}
        if self.world > 1:  # decisions come from synchronised parameters: prove they agree
            every = [None] * self.world
            dist.all_gather_object(every, self.state.removed)
            if any(r != self.state.removed for r in every):
                raise TrainingError("ranks disagree on which channels to prune; are the models "
                                    "wrapped in DistributedDataParallel on every rank?")
        return final

    def _baseline_removal(self, model: nn.Module, graph: ChannelGraph, scorer: Scorer) -> dict:
        cfg = self.cfg
        if cfg.target_macs is None:
            return scorer.lowest(model, cfg.prune_share, round_to=cfg.round_to)
        full = cost(model, self.example).macs
        lo, hi, best = 0.0, 0.95, {}
        for _ in range(12):  # bisection on the share removed: MACs fall as it grows
            share = (lo + hi) / 2
            removed = scorer.lowest(model, share, round_to=cfg.round_to)
            macs = cost(prune_channels(model, graph, removed), self.example).macs / full
            if macs <= cfg.target_macs:
                best, hi = removed, share
            else:
                lo = share
        return best or scorer.lowest(model, hi, round_to=cfg.round_to)

    def _finetune(self, slim: torch.fx.GraphModule) -> None:
        cfg = self.cfg
        optimizer = self._sgd(slim.parameters(), cfg.lr)
        trained = self._resume(slim, optimizer)
        for epoch in self._epochs("finetune", cfg.finetune_epochs):
            t = time.perf_counter()
            loss = self._train_epoch(trained, optimizer, None)
            self._record(epoch=epoch, loss=loss, acc=accuracy(slim, self.test_loader,
                                                              device=self.device))
            self._end_epoch("finetune", epoch, slim, optimizer, t)
        self.state.model = slim.state_dict()
        self._next("export")

    def _export(self, gm: torch.fx.GraphModule, graph: ChannelGraph,
                slim: torch.fx.GraphModule) -> None:
        from fxprune.export.onnx import export_onnx
        from fxprune.save import save

        t = time.perf_counter()
        f = self.state.figures
        f["final_acc"] = accuracy(slim, self.test_loader, device=self.device)
        before, after = cost(gm, self.example), cost(slim, self.example)
        f.update(macs_before=before.macs, macs_after=after.macs, params_before=before.params,
                 params_after=after.params, macs_ratio=before.macs / after.macs,
                 params_ratio=before.params / after.params)
        f["channels"] = _channels_per_layer(gm, slim)
        if self.rank == 0:
            report = export_onnx(slim.cpu(), self.example.cpu(), self.out / "model.onnx")
            f["onnx"] = {"path": str(report.path), "exporter": report.exporter,
                         "max_abs_diff": report.max_abs_diff, "bytes": report.size_bytes}
            save(slim.eval(), self.example.cpu(), self.out / "model.pt2")
            from fxprune.export.html import render_html

            atomic.write_text(self.out / "groups.html",
                              render_html(graph, title=f"fxprune: channel groups of {self.cfg.model}"))
        self._timed("export", time.perf_counter() - t)
        self.state.stage = "done"
        self._save_checkpoint()
        if self.rank == 0:
            from fxprune.report import write_report

            write_report(self.out, self.report(), self.state.history)

    def report(self) -> dict:
        f = self.state.figures
        return {"config": asdict(self.cfg), "stage": self.state.stage, "removed": self.state.removed,
                "seconds": self.state.seconds, **f}


CALIBRATION_PROBES = 4


def _next_c(probes: list[dict], target: float) -> float:
    """Bisection on c0 in [1, 2]: MACs kept fall as c0 grows. The first probe is the default."""
    if not probes:
        return DEFAULT_C
    lo, hi = 1.0, 2.0
    for p in probes:
        if p["macs_fraction"] > target:
            lo = max(lo, p["c"])
        else:
            hi = min(hi, p["c"])
    return (lo + hi) / 2


def _miss(fraction: float, target: float) -> tuple[bool, float]:
    """Order probes: at or under the target first, then by distance to it."""
    return (fraction > target, abs(fraction - target))


def _channels_per_layer(before: nn.Module, after: nn.Module) -> dict[str, list[int]]:
    slim = dict(after.named_modules())
    out = {}
    for name, m in before.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and name in slim:
            width = m.out_channels if hasattr(m, "out_channels") else m.out_features
            new = slim[name]
            out[name] = [width, new.out_channels if hasattr(new, "out_channels") else new.out_features]
    return out


def init_distributed(device: str) -> None:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
