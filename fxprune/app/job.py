"""`fxprune prune`: the end-to-end job, resumable after a kill, one process or many (DDP).

The job walks `STAGES` in order, one method each: pre-training (when no weights are given);
opt1 (Catalyst or a baseline's regulariser) until converged or the budget; prune (Catalyst:
then opt2, removing D), which returns the method's `Decision`; fine-tuning; ONNX export with
the parity check and the slim model saved; then the report. `run` is the only place that
advances the stage.

A checkpoint (``OUT/checkpoint.pt``, loadable with ``weights_only=True``: plain containers and
tensors) is written atomically at the end of every epoch, of every calibration probe and of
every stage. It holds the stage, the epoch, the trained state, the optimiser, every random state,
the calibration's probes, the decision and the history, so a rerun with ``resume=True``
continues and ends with the same result as an uninterrupted run. Under torchrun only rank 0
writes.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from fxprune import atomic, ops
from fxprune.app.datasets import load_data
from fxprune.app.training import accuracy, precise_bn, train_epoch
from fxprune.baselines import METHODS as BASELINES
from fxprune.baselines import Scorer, initial_norms
from fxprune.cost import cost
from fxprune.errors import InputError, TrainingError, first_line
from fxprune.graph import ChannelGraph
from fxprune.latency import (
    LatencyTable,
    OnnxRuntimeTimer,
    Timer,
    latency_c,
    latency_table,
    meet_latency,
    parse_target,
    remembered,
)
from fxprune.passes.analyze import analyze
from fxprune.passes.catalyst import TARGETS, strip_catalysts
from fxprune.passes.slim import prune_channels
from fxprune.pruner import (
    DEFAULT_C,
    DEFAULT_GAMMA,
    DEFAULT_KAPPA,
    CatalystPruner,
    describe_undecided,
    spearman,
)
from fxprune.target import best_index, bisect, bracket, next_interpolated
from fxprune.trace import trace

log = logging.getLogger(__name__)
METHODS = ("catalyst", *BASELINES)
STAGES = ("pretrain", "opt1", "prune", "finetune", "export", "done")
CALIBRATION_PROBES = 4  # complete opt1 runs that Catalyst spends on meeting --target-macs
Row = dict[str, object]  # one epoch's line of the history


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    model: str = "digits"  # "digits" (the embedded DigitsNet), torchvision:NAME, file.py:factory
    weights: str | None = None  # a state_dict file (weights_only); skips pre-training
    data: str = "digits"
    data_dir: str | None = None
    image_size: int = 224
    method: str = "catalyst"
    c: float = DEFAULT_C
    g: str = "group"  # Catalyst's G (`fxprune.passes.catalyst.group_slices`): group, full or bn
    gamma: float = DEFAULT_GAMMA
    kappa: float = DEFAULT_KAPPA
    strength: float = 2e-3  # the baselines' regulariser weight (group lasso, slimming)
    target_macs: float | None = None  # fraction of the original MACs to keep (baselines)
    # measured onnxruntime latency to reach: a fraction of the original's ("0.5") or "12ms"
    target_latency: str | None = None
    latency_batch: int = 1  # the batch the latency is measured at
    prune_share: float = 0.4  # baselines without a MACs target: share of channels removed
    round_to: int = 1
    pretrain_epochs: int = 15
    opt1_epochs: int | None = None  # None: `opt1_budget`, from the effective step
    finetune_epochs: int = 10
    batch_size: int = 32
    lr: float = 0.02
    pretrain_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    out: str = "out/prune"


@dataclass(frozen=True, kw_only=True)
class CalibrationProbe:
    """One complete opt1 run of the calibration: its c0 and the fraction of the MACs (or of
    the measured latency) its decisions keep."""

    c: float
    fraction: float
    converged: bool


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Catalyst meeting --target-macs or --target-latency by choosing c0 (the sparsity knob):
    the runs made so far. The next c0 depends on them alone, so a resumed job continues the
    search where it stopped."""

    target: float  # the fraction of `quantity` to keep
    quantity: str = "macs"  # or "latency"
    probes: tuple[CalibrationProbe, ...] = ()

    @property
    def done(self) -> bool:
        return len(self.probes) >= CALIBRATION_PROBES

    def next_c(self) -> float:
        """The default first, then in [1, 2] where the log of what is kept, falling about
        exponentially as c0 grows (and all of it at c0 = 1), crosses the target's: the share
        pruned climbs steeply just past 1, and plain bisection's four runs overshot a 3x
        target to 8x on DigitsNet."""
        if not self.probes:
            return DEFAULT_C
        return next_interpolated(self._points(), self.target, 1.0, 2.0, at_lo=1.0)

    def best(self) -> CalibrationProbe:
        """The run pruned: at or under the target first, then the closest to it."""
        return self.probes[best_index(self._points(), self.target)]

    def _points(self) -> list[tuple[float, float]]:
        return [(p.c, p.fraction) for p in self.probes]

    def figures(self) -> dict[str, object]:
        out: dict[str, object] = {"calibration": [asdict(p) for p in self.probes]}
        if self.done:
            best = self.best()
            out.update({"chosen_c": best.c, f"target_{self.quantity}": self.target,
                        f"target_{self.quantity}_reached": best.fraction})
        return out

    @classmethod
    def from_plain(cls, saved: dict) -> Calibration:
        return cls(target=saved["target"], quantity=saved["quantity"],
                   probes=tuple(CalibrationProbe(**p) for p in saved["probes"]))


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What a method decided at the prune stage and how clearly: the report's figures."""

    removed: dict[int, list[int]]  # group id -> channels removed
    acc_before_prune: float
    acc_after_prune: float
    converged: bool
    # Catalyst: smallest pruned c over largest kept c; a baseline (which keeps the high scores):
    # lowest kept score over highest pruned.
    margin: float
    margin_decades: float
    rank_correlation: float  # Spearman: initial channel norm against being pruned
    # Catalyst only, for the report's plots: log10 c of every channel and its initial norm.
    log10_c_kept: list[float] | None = None
    log10_c_pruned: list[float] | None = None
    initial_norm: list[float] | None = None
    pruned: list[bool] | None = None
    undecided: dict[int, int] | None = None  # group id -> channels with |log10 c| <= kappa

    def figures(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "removed" and v is not None}


@dataclass
class State:
    """Everything a checkpoint holds: its `asdict` is plain containers and tensors."""

    stage: str = STAGES[0]
    epoch: int = 0  # epochs finished in the current training loop
    stopped: bool = False  # that loop ended early (converged): a resume must not train on
    model: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    rng: torch.Tensor | None = None
    loader_rng: torch.Tensor | None = None
    pretrained: dict = field(default_factory=dict)
    baseline_acc: float | None = None
    calibration: Calibration | None = None
    opt1_done: dict = field(default_factory=dict)  # the model to prune: "model", "converged", "c"
    decision: Decision | None = None
    figures: dict = field(default_factory=dict)  # what the export stage measured
    history: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @classmethod
    def from_plain(cls, saved: dict) -> State:
        calibration, decision = saved.pop("calibration"), saved.pop("decision")
        return cls(**saved,
                   calibration=None if calibration is None else Calibration.from_plain(calibration),
                   decision=None if decision is None else Decision(**decision))


# Catalyst's ratios leave c = 1 at a rate set by the effective step lr * gamma / (1 - momentum)
# per optimiser step, whatever the model: in benchmarks/catalyst_convergence.py opt1 decided
# every channel of seven architectures within effective step x optimiser steps = 14 (README);
# the default budget leaves a quarter more.
OPT1_STEP_SUM = 18.0


def opt1_budget(cfg: JobConfig, steps_per_epoch: int) -> int:
    """--opt1-epochs, or the epochs that hold OPT1_STEP_SUM / effective step optimiser steps."""
    if cfg.opt1_epochs is not None:
        return cfg.opt1_epochs
    step = cfg.lr * cfg.gamma / (1 - cfg.momentum)
    return max(1, math.ceil(OPT1_STEP_SUM / (step * max(steps_per_epoch, 1))))


class Job:
    """One run of the pipeline; `run()` returns the report dict (also written as JSON)."""

    def __init__(self, cfg: JobConfig, *, resume: bool = False,
                 progress: Callable[[str, int, int], Iterator] | None = None) -> None:
        if cfg.method not in METHODS:
            raise InputError(f"unknown method '{cfg.method}': choose one of {', '.join(METHODS)}")
        if cfg.g not in TARGETS:
            raise InputError(f"unknown G '{cfg.g}': choose one of {', '.join(TARGETS)}")
        if cfg.target_latency is not None:
            parse_target(cfg.target_latency)  # refuse a bad target before any training
            if cfg.target_macs is not None:
                raise InputError("give --target-macs or --target-latency, not both")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = torch.device(cfg.device)
        self.progress = progress
        self.bar = None
        self.resumed = resume
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
        self.opt1_epochs = opt1_budget(cfg, len(self.train_loader))
        if resume:
            self._extend_opt1()
        # in order, and with its own generator (a loader draws a seed per pass): re-estimating
        # BatchNorm statistics leaves the training's random numbers as they were
        self.stats_loader = DataLoader(self.data.train, batch_size=cfg.batch_size,
                                       generator=torch.Generator())
        self.model: nn.Module | None = None  # the user's model, built by `run`
        self._analysed: tuple[torch.fx.GraphModule, ChannelGraph] | None = None
        self._slim_model: torch.fx.GraphModule | None = None

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _load_checkpoint(self) -> State:
        path = self.checkpoint_path
        if not path.is_file():
            raise InputError(f"nothing to resume: {path} does not exist (run without --resume)")
        try:
            return State.from_plain(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets one message
            raise InputError(f"the checkpoint {path} is corrupted or not fxprune's "
                             f"({type(exc).__name__}: {first_line(exc)[:200]}); "
                             "delete it to start over") from exc

    def _extend_opt1(self) -> None:
        """A finished job whose Catalyst opt1 ran out of budget unconverged goes back to opt1
        when resumed with a larger --opt1-epochs: the weights and optimiser at the end of its
        budget continue training, and what came after (decision, fine-tuning, export) is
        redone. The random state is the one saved last, so the continued run is not
        bit-identical to one given the larger budget from the start."""
        done = self.state.opt1_done
        if (STAGES.index(self.state.stage) <= STAGES.index("opt1") or "optimizer" not in done
                or self.opt1_epochs <= done["epochs"]):
            return
        log.warning("continuing opt1 from epoch %d to %d", done["epochs"], self.opt1_epochs)
        self.state = replace(
            self.state, stage="opt1", epoch=done["epochs"], stopped=False, model=done["model"],
            optimizer=done["optimizer"], scheduler={}, opt1_done={}, decision=None, figures={},
            history=[h for h in self.state.history if h["stage"] in ("pretrain", "opt1")])

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

    # --- the stage machine ---------------------------------------------------------------------

    def run(self) -> dict:
        start = time.perf_counter()
        self.model = self._base_model()
        trace(self.model, self.example)  # bad model/input pairs fail here, before any training
        if self.resumed:
            # the random state saved with the checkpoint: nothing between a stage's checkpoint
            # and its first epoch draws random numbers, so the resumed job draws what the
            # interrupted one would have (a loop resumed mid-way restores it again, in `_train`)
            self._restore_rng()
        stages = {"pretrain": self._pretrain, "opt1": self._opt1, "prune": self._prune,
                  "finetune": self._finetune, "export": self._export}
        finished_here = False
        while self.state.stage != "done":
            stages[self.state.stage]()
            self._advance()
            finished_here = True
        if finished_here and self.rank == 0:
            from fxprune.app.report import write_report

            write_report(self.out, self.report(), self.state.history)
        self.state.seconds["total_this_process"] = time.perf_counter() - start
        return self.report()

    def _advance(self) -> None:
        """Enter the next stage with a fresh training loop, and write the checkpoint."""
        self.state.stage = STAGES[STAGES.index(self.state.stage) + 1]
        self._fresh_loop()
        self._save_checkpoint()

    def _fresh_loop(self) -> None:
        self.state.epoch, self.state.stopped = 0, False
        self.state.optimizer, self.state.scheduler = {}, {}

    def report(self) -> dict:
        s = self.state
        out = {"config": asdict(self.cfg), "opt1_budget": self.opt1_epochs, "stage": s.stage,
               "removed": s.decision.removed if s.decision is not None else {},
               "seconds": s.seconds}
        if s.baseline_acc is not None:
            out["baseline_acc"] = s.baseline_acc
        if s.calibration is not None:
            out.update(s.calibration.figures())
        if s.decision is not None:
            out.update(s.decision.figures())
        return {**out, **s.figures}

    # --- building blocks -----------------------------------------------------------------------

    def _base_model(self) -> nn.Module:
        from fxprune.app.model_specs import load_model
        from fxprune.app.model_zoo import DigitsNet

        torch.manual_seed(self.cfg.seed)
        if self.cfg.model in ("digits", "zoo:digits"):
            model = DigitsNet(num_classes=self.data.num_classes,
                              in_channels=self.data.input_shape[0])
        elif self.cfg.model == "zoo:cifar_resnet56":
            from fxprune.app.model_zoo import cifar_resnet56

            model = cifar_resnet56(self.data.num_classes)
        else:
            model = load_model(self.cfg.model)
        return model.to(self.device)

    def _analysed_model(self) -> tuple[torch.fx.GraphModule, ChannelGraph]:
        """The pre-trained model traced and analysed (once per process): what every method
        starts from and what the slim model is cut from."""
        if self._analysed is None:
            self.model.load_state_dict(self.state.pretrained)
            self.model.eval()
            gm = trace(self.model, self.example)
            self._analysed = gm, analyze(gm)
        return self._analysed

    def _slim(self) -> torch.fx.GraphModule:
        """The slim architecture rebuilt from the decision, with the latest weights (once per
        process: fine-tuning trains this module and export reads it)."""
        if self._slim_model is None:
            gm, graph = self._analysed_model()
            self._slim_model = prune_channels(gm, graph, self.state.decision.removed)
            self._slim_model.load_state_dict(self.state.model)
        return self._slim_model

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def _sgd(self, params: Iterator[nn.Parameter], lr: float) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)

    def _train(self, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, *,
               penalty: Callable[[], torch.Tensor] | None = None,
               schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
               watch: Callable[[float], tuple[Row, bool]] | None = None) -> None:
        """The epoch loop of every training stage: `epochs` epochs of `model` (DDP-wrapped when
        distributed), each recorded in the history and ended by a checkpoint.

        `watch(loss)` gives the epoch's row (it must hold the loss) and whether to stop early.
        A loop interrupted mid-way resumes from its last checkpoint: weights, optimiser,
        schedule and the random state saved then, which the uninterrupted process had at the
        start of the next epoch.
        """
        state = self.state
        if state.epoch:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            if schedule is not None:
                schedule.load_state_dict(state.scheduler)
            self._restore_rng()
        trained = self._wrap(model)
        start = epochs if state.stopped else state.epoch
        todo = range(start, epochs)
        if self.progress is not None and self.rank == 0:
            todo = self.bar = self.progress(state.stage, epochs, start)
        for epoch in todo:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            t = time.perf_counter()
            loss = train_epoch(trained, self.train_loader, optimizer, penalty=penalty,
                               device=self.device)
            if schedule is not None:
                schedule.step()
            if state.stage == "opt1":
                # the regularisers shrink whole channels by orders of magnitude within a few
                # epochs, and BatchNorm's running averages lag them: evaluation would show a
                # dip of tens of points that the model never had (see precise_bn)
                precise_bn(model, self.stats_loader, device=self.device)
            row, stop = watch(loss) if watch is not None else ({"loss": loss}, False)
            self._record(epoch=epoch, **row, acc=accuracy(model, self.test_loader, device=self.device))
            state.epoch, state.stopped, state.model = epoch + 1, bool(stop), model.state_dict()
            state.optimizer = optimizer.state_dict()
            if schedule is not None:
                state.scheduler = schedule.state_dict()
            self._timed(state.stage, time.perf_counter() - t)
            self._save_checkpoint()
            if stop:
                break

    def _record(self, **row: object) -> None:
        self.state.history.append({"stage": self.state.stage, **row})
        if self.bar is not None:
            self.bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v)
                                  for k, v in row.items() if k != "epoch"})

    def _timed(self, stage: str, seconds: float) -> None:
        self.state.seconds[stage] = self.state.seconds.get(stage, 0.0) + seconds

    # --- stages --------------------------------------------------------------------------------

    def _pretrain(self) -> None:
        cfg, model = self.cfg, self.model
        if cfg.weights is not None:
            try:
                weights = torch.load(cfg.weights, map_location=self.device, weights_only=True)
                model.load_state_dict(weights)
            except Exception as exc:  # noqa: BLE001 - report any unusable weights file
                raise InputError(f"cannot load weights from {cfg.weights}: {exc}") from exc
        else:
            optimizer = self._sgd(model.parameters(), cfg.pretrain_lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.pretrain_epochs)
            self._train(model, optimizer, cfg.pretrain_epochs, schedule=schedule)
        self.state.pretrained = copy.deepcopy(model.state_dict())
        self.state.baseline_acc = accuracy(model, self.test_loader, device=self.device)

    def _opt1(self) -> None:
        cfg = self.cfg
        gm, graph = self._analysed_model()
        if cfg.method != "catalyst":
            self.state.opt1_done = self._regularise(gm, graph)
        elif cfg.target_macs is None and cfg.target_latency is None:
            pruner = self._catalyst_opt1(gm, cfg.c)
            converged = pruner.converged()
            self.state.opt1_done = {"model": pruner.model.state_dict(), "converged": converged,
                                    "c": cfg.c, "epochs": self.state.epoch}
            if not converged:  # what `--resume` with a larger budget continues from
                self.state.opt1_done["optimizer"] = self.state.optimizer
        else:
            self._calibrate(gm, graph)

    def _catalyst_opt1(self, gm: torch.fx.GraphModule, c: float,
                       per_group: Mapping[int, float] | None = None) -> CatalystPruner:
        """opt1 at c0 = `c` (or `per_group`'s c0, derived from it) until converged or the
        budget."""
        cfg = self.cfg
        pruner = CatalystPruner(gm, self.example, c=c if per_group is None else per_group,
                                target=cfg.g, gamma=cfg.gamma, kappa=cfg.kappa)
        optimizer = pruner.sgd(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

        def watch(loss: float) -> tuple[Row, bool]:
            d = pruner.diagnostics()
            return {"c0": c, "loss": loss, "penalty": d.penalty, "decided": d.decided,
                    "margin": d.margin_decades}, d.converged

        self._train(pruner.model, optimizer, self.opt1_epochs, penalty=pruner.penalty,
                    watch=watch)
        return pruner

    def _calibrate(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> None:
        """Complete opt1 runs at the c0 the calibration asks for; the run closest to the target
        is kept for pruning. Each finished run is checkpointed, so a resumed job skips it.
        For a latency target each group's c0 grows with the milliseconds its channels cost
        (`fxprune.latency.latency_c`), and each run's plan is timed."""
        cfg = self.cfg
        if cfg.target_latency is not None:
            timer, table, target_ms = self._latency_setup(copy.deepcopy(gm).cpu(), graph)
            target, quantity = target_ms / table.full_ms, "latency"
            # kept widths the table shows fast, per group, as the baselines' plans keep
            # (DigitsNet's odd widths ran 1.2-1.5x slower than the unpruned model at batch 32)
            widths = {g: table.widths(g) for g in table.curves}

            def kept(slim: torch.fx.GraphModule) -> float:
                return timer(copy.deepcopy(slim).cpu(), (self.example.cpu(),)).ms / table.full_ms
        else:
            full = cost(gm, self.example).macs
            target, quantity, widths = cfg.target_macs, "macs", None

            def kept(slim: torch.fx.GraphModule) -> float:
                return cost(slim, self.example).macs / full
        if self.state.calibration is None:
            self.state.calibration = Calibration(target=target, quantity=quantity)
        while not self.state.calibration.done:
            c = self.state.calibration.next_c()
            per_group = latency_c(table, c) if quantity == "latency" else None
            pruner = self._catalyst_opt1(gm, c, per_group)
            converged = pruner.converged()
            removed = pruner.decisions(round_to=cfg.round_to, widths=widths)
            slim = prune_channels(strip_catalysts(pruner.model), graph, removed)
            probe = CalibrationProbe(c=c, fraction=kept(slim), converged=converged)
            calibration = replace(self.state.calibration,
                                  probes=(*self.state.calibration.probes, probe))
            if calibration.best() is probe:
                self.state.opt1_done = {"model": pruner.model.state_dict(),
                                        "converged": converged, "c": c}
                if per_group is not None:
                    self.state.opt1_done.update(c_groups=per_group, widths=widths)
                    widths_kept = {g: graph[g].channels - len(v) for g, v in removed.items()}
                    self._report_latency(table, target_ms, probe.fraction * table.full_ms,
                                         table.predict(widths_kept), [])
            self.state.calibration = calibration
            self._fresh_loop()
            self.state.model = {}  # the best run's weights are in opt1_done
            self._save_checkpoint()

    def _regularise(self, gm: torch.fx.GraphModule, graph: ChannelGraph) -> dict:
        """opt1 of a baseline: its regulariser (group lasso, slimming) for the budget; the
        one-shot methods (l1, magnitude) train no further."""
        cfg = self.cfg
        model = copy.deepcopy(gm)
        scorer = Scorer(model, graph, cfg.method)
        strength = cfg.strength if cfg.method in ("group-lasso", "slimming") else 0.0
        optimizer = self._sgd(model.parameters(), cfg.lr)
        self._train(model, optimizer, self.opt1_epochs if strength else 0,
                    penalty=lambda: strength * scorer.penalty(model))
        return {"model": model.state_dict(), "converged": True}

    def _prune(self) -> None:
        """Decide (and, for Catalyst, opt2) once; the slim weights go to the checkpoint."""
        t = time.perf_counter()
        gm, graph = self._analysed_model()
        if self.cfg.method == "catalyst":
            decision, final = self._catalyst_decision(gm)
        else:
            decision, final = self._baseline_decision(gm, graph)
        if self.world > 1:  # decisions come from synchronised parameters: prove they agree
            every = [None] * self.world
            dist.all_gather_object(every, decision.removed)
            if any(r != decision.removed for r in every):
                raise TrainingError("ranks disagree on which channels to prune; are the models "
                                    "wrapped in DistributedDataParallel on every rank?")
        self.state.decision = decision
        self.state.model = final.state_dict()
        self._timed("prune", time.perf_counter() - t)

    def _catalyst_decision(self, gm: torch.fx.GraphModule) -> tuple[Decision, torch.fx.GraphModule]:
        cfg, done = self.cfg, self.state.opt1_done
        pruner = CatalystPruner(gm, self.example, c=done.get("c_groups", done.get("c", cfg.c)),
                                target=cfg.g, gamma=cfg.gamma, kappa=cfg.kappa)
        if done:
            pruner.model.load_state_dict(done["model"])
        before = accuracy(pruner.model, self.test_loader, device=self.device)
        d = pruner.diagnostics()
        undecided = pruner.undecided()
        if not d.converged:
            log.warning("opt1 did not converge within %d epochs (margin %.2f decades): %s; the "
                        "pruning step is not lossless", done.get("epochs", self.opt1_epochs),
                        d.margin_decades, describe_undecided(undecided))
        intermediate = pruner.prune(force=True, round_to=cfg.round_to, widths=done.get("widths"))
        after = accuracy(intermediate, self.test_loader, device=self.device)
        final = pruner.finalize()
        decision = Decision(
            removed=_plain_removal(pruner.removed), acc_before_prune=before, acc_after_prune=after,
            converged=d.converged, margin=d.margin, margin_decades=d.margin_decades,
            rank_correlation=d.rank_correlation, log10_c_kept=d.log10_c_kept.tolist(),
            log10_c_pruned=d.log10_c_pruned.tolist(), initial_norm=d.initial_norm.tolist(),
            pruned=d.pruned.tolist(), undecided=undecided)
        return decision, final

    def _baseline_decision(self, gm: torch.fx.GraphModule,
                           graph: ChannelGraph) -> tuple[Decision, torch.fx.GraphModule]:
        cfg = self.cfg
        model = copy.deepcopy(gm)
        if self.state.opt1_done:
            model.load_state_dict(self.state.opt1_done["model"])
        scorer = Scorer(model, graph, cfg.method)
        removed = self._baseline_removal(model, graph, scorer)
        before = accuracy(model, self.test_loader, device=self.device)
        final = prune_channels(model, graph, removed, round_to=cfg.round_to)
        after = accuracy(final, self.test_loader, device=self.device)
        with torch.no_grad():
            scores = {g: s.cpu().numpy() for g, s in scorer.scores(model).items()}
        kept = [v for g, s in scores.items() for i, v in enumerate(s) if i not in removed.get(g, [])]
        gone = [v for g, s in scores.items() for i, v in enumerate(s) if i in removed.get(g, [])]
        # a baseline keeps the high scores: its margin is how far the lowest kept score sits
        # above the highest pruned one
        margin = float(min(kept) / max(gone)) if gone and kept and max(gone) > 0 else math.inf
        norms = initial_norms(gm, graph)
        pruned = np.concatenate([np.isin(np.arange(len(n)), removed.get(g, []))
                                 for g, n in norms.items()])
        decision = Decision(
            removed=_plain_removal(removed), acc_before_prune=before, acc_after_prune=after,
            converged=self.state.opt1_done.get("converged", True), margin=margin,
            margin_decades=math.log10(margin) if margin > 0 else -math.inf,
            rank_correlation=spearman(np.concatenate(list(norms.values())), pruned.astype(float)))
        return decision, final

    def _baseline_removal(self, model: nn.Module, graph: ChannelGraph,
                          scorer: Scorer) -> dict[int, list[int]]:
        cfg = self.cfg
        if cfg.target_latency is not None:
            return self._latency_removal(model, graph, scorer)
        if cfg.target_macs is None:
            return scorer.lowest(model, cfg.prune_share, round_to=cfg.round_to)
        full = cost(model, self.example).macs

        def macs_kept(share: float) -> float:  # falls as the share removed grows
            removed = scorer.lowest(model, share, round_to=cfg.round_to)
            return cost(prune_channels(model, graph, removed), self.example).macs / full

        probes = bisect(macs_kept, cfg.target_macs, 0.0, 0.95, steps=12)
        # the smallest share that met the target (the most MACs kept under it); 0.95 if none did
        _, share = bracket(probes, cfg.target_macs, 0.0, 0.95)
        return scorer.lowest(model, share, round_to=cfg.round_to)

    def _latency_setup(self, model: nn.Module,
                       graph: ChannelGraph) -> tuple[Timer, LatencyTable, float]:
        """The onnxruntime timer, the model's latency table (cached in OUT/latency, so a
        resumed job does not time it again) and the target in milliseconds. `model` is a CPU
        copy: onnxruntime times it on the CPU."""
        cfg = self.cfg
        example = self.example.cpu()
        timer = OnnxRuntimeTimer(model, example, batch=cfg.latency_batch)
        table = replace(latency_table(model, example, graph=graph, batch=cfg.latency_batch,
                                      cache=self.out / "latency", timer=timer),
                        round_to=cfg.round_to)
        kind, value = parse_target(cfg.target_latency)
        return timer, table, value * table.full_ms if kind == "fraction" else value

    def _report_latency(self, table: LatencyTable, target_ms: float, measured_ms: float,
                        predicted_ms: float, probes: Sequence[tuple[float, float]]) -> None:
        self.state.figures["latency"] = {
            "before_ms": table.full_ms, "after_ms": measured_ms, "target_ms": target_ms,
            "predicted_ms": predicted_ms, "backend": table.backend, "device": table.device,
            "batch": table.batch, "table_error": table.error(), "probes": [list(p) for p in probes]}

    def _latency_removal(self, model: nn.Module, graph: ChannelGraph,
                         scorer: Scorer) -> dict[int, list[int]]:
        """Channels chosen by score per millisecond saved (`fxprune.latency`), the plan timed
        until its measured onnxruntime latency meets --target-latency."""
        cpu = copy.deepcopy(model).cpu()
        timer, table, target_ms = self._latency_setup(cpu, graph)
        measure = remembered(lambda removed: timer(prune_channels(cpu, graph, removed),
                                                   (self.example.cpu(),)).ms,
                             table, cache=self.out / "latency")  # a resumed job times none again
        met = meet_latency(table, scorer.values(cpu), target_ms, graph, measure)
        self._report_latency(table, target_ms, met.measured_ms, met.predicted_ms, met.probes)
        return met.removed

    def _finetune(self) -> None:
        slim = self._slim()
        optimizer = self._sgd(slim.parameters(), self.cfg.lr)
        self._train(slim, optimizer, self.cfg.finetune_epochs)
        self.state.model = slim.state_dict()

    def _export(self) -> None:
        from fxprune.export.onnx import export_onnx
        from fxprune.save import save

        t = time.perf_counter()
        gm, graph = self._analysed_model()
        slim = self._slim()
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


def _plain_removal(removed: dict) -> dict[int, list[int]]:
    """Plain ints (no numpy scalars): the checkpoint loads with weights_only."""
    return {int(g): [int(i) for i in v] for g, v in removed.items()}


def _channels_per_layer(before: torch.fx.GraphModule,
                        after: torch.fx.GraphModule) -> dict[str, list[int]]:
    """Output channels of every layer that makes channels (the op table's ``produces``: conv,
    linear, embedding), before and after pruning, read from the graphs' shapes."""
    slim = {n.name: n for n in after.graph.nodes}
    out = {}
    for node in before.graph.nodes:
        if node.op != "call_module" or node.name not in slim:
            continue
        entry = ops.lookup(node, before.get_submodule(node.target))
        if entry is not None and entry.produces is not None:
            dim = entry.produces
            out[node.target] = [node.meta["tensor_meta"].shape[dim],
                                slim[node.name].meta["tensor_meta"].shape[dim]]
    return out


def init_distributed(device: str) -> None:
    """Join the torchrun process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
