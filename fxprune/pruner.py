"""CatalystPruner: the Catalyst method (arXiv 2507.14170) as users drive it.

    pruner = CatalystPruner(model, example_inputs, c=1.05, gamma=0.02)
    optimizer = pruner.sgd(lr=0.02, momentum=0.9, weight_decay=5e-4)  # checks the step size
    for x, y in data:                                  # opt1: task loss + gamma * ||DW||_{2,1}
        loss = F.cross_entropy(pruner.model(x), y) + pruner.penalty()
        ...; if pruner.converged(): break
    intermediate = pruner.prune()                      # channels with c > 1 removed, D kept
    final = pruner.finalize()                          # opt2: D removed, original op types

Decisions are read from the model's parameters only, so they are identical on every rank of a
DistributedDataParallel run (DDP keeps parameters equal).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn

from fxprune.errors import PruneError
from fxprune.passes.analyze import analyze
from fxprune.passes.catalyst import (
    Invariant,
    catalyst_penalty,
    catalysts,
    insert_catalysts,
    rescale_rows,
    scale_invariant,
    strip_catalysts,
)
from fxprune.passes.plan import piece_keepers, round_kept
from fxprune.passes.slim import prune_channels
from fxprune.trace import trace

log = logging.getLogger(__name__)

# Defaults measured on the embedded digits task (see README, "Catalyst defaults"):
DEFAULT_C = 1.05  # with the angular step: 1.2-4.9x fewer MACs, top-1 within 3 points in opt1
DEFAULT_GAMMA = 0.02  # with lr 0.02 and momentum 0.9: lambda_eff = 4e-3
DEFAULT_KAPPA = 2.0  # decades of |log10 c| every channel must reach (early stop)
DEFAULT_EPS = 1e-4  # ||DW||_{2,1} below this also ends opt1
DEFAULT_ANGULAR = True  # keep the loss's angular step on scale-invariant rows (`AngularStep`)


@dataclass(frozen=True, kw_only=True, repr=False)
class Diagnostics:
    """What opt1 decided and how clearly. Printed, it is one line (the arrays stay fields)."""

    converged: bool
    margin: float  # smallest c among pruned / largest c among kept (inf if one side is empty)
    margin_decades: float
    decided: float  # share of channels with |log10 c| > kappa
    log10_c_kept: np.ndarray
    log10_c_pruned: np.ndarray
    initial_norm: np.ndarray  # ||G_i|| at insertion, every channel of every catalysed group
    pruned: np.ndarray  # bool, same order
    rank_correlation: float  # Spearman: initial norm against being pruned
    penalty: float


    def __repr__(self) -> str:
        kept, pruned = len(self.log10_c_kept), len(self.log10_c_pruned)
        state = "converged" if self.converged else "not converged"
        return (f"Diagnostics({state}: margin {self.margin_decades:.2f} decades, "
                f"{self.decided:.1%} of {kept + pruned} channels decided, {kept} kept, "
                f"{pruned} pruned, rank correlation with initial norm "
                f"{self.rank_correlation:.2f}, penalty {self.penalty:.4g})")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    from scipy.stats import spearmanr  # scipy arrives with scikit-learn; ranks with ties right

    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def describe_undecided(undecided: dict[int, int], *, shown: int = 8) -> str:
    """'3 channels undecided in groups 4 (2), 7 (1)': the groups opt1 was still deciding."""
    if not undecided:
        return "every channel decided"
    worst = sorted(undecided, key=lambda g: -undecided[g])
    listed = ", ".join(f"{g} ({undecided[g]})" for g in worst[:shown])
    more = f" and {len(worst) - shown} more" if len(worst) > shown else ""
    return (f"{sum(undecided.values())} channels undecided in group"
            f"{'s' if len(worst) > 1 else ''} {listed}{more}")


class AngularStep:
    """Keeps the task loss's angular step on scale-invariant rows as the penalty shrinks them.

    A conv or linear row that only a BatchNorm reads is scale-invariant: the loss's gradient on
    it is at right angles to it and its size goes as 1 / ||w_i||, so an SGD step turns it by
    lr / ||w_i||^2. As the penalty shrinks G (row included), the loss would turn the shrunken
    rows ever faster, which costs accuracy during opt1 (README, "What the fall of top-1 during
    opt1 is made of"), and each such step lengthens the row, which is how the loss defends a
    channel against the penalty. On every backward pass this scales the loss's gradient on each
    such row by s_i = (||w_i|| / ||w_i at the start||)^2 and leaves the penalty's as it is: the
    parameter's hook receives their sum g, the penalty's own read of the parameter has set its
    part p aside (`catalyst_penalty`'s `watch`), and the hook returns s * g + (1 - s) * p,
    which is s times the loss's gradient plus p. One backward pass; no division by s, which
    goes to zero on pruned rows.
    """

    def __init__(self, model: nn.Module, rows: Sequence[Invariant]) -> None:
        params = dict(model.named_parameters())
        self.rows = list(rows)
        self.dims = {inv.weight: inv.dim for inv in self.rows}
        self.start = {name: self._norms(params[name], dim).detach().clamp_min(1e-12)
                      for name, dim in self.dims.items()}
        self._apart: dict[str, torch.Tensor] = {}
        self._watch = {name: functools.partial(self._set_apart, name) for name in self.dims}
        for name in self.dims:
            params[name].register_hook(functools.partial(self._scale, params[name], name))

    def restore(self, gm: nn.Module) -> None:
        """Give every row of `gm`'s scale-invariant weights the median norm its weight's rows
        had at the start, undone in the BatchNorm (`rescale_rows`: the function in eval mode
        does not change). Without it the kept rows leave opt1 at a few thousandths of their
        trained norm, and fine-tuning's steps on them are that many times too large."""
        rescale_rows(gm, self.rows, {name: float(n.median()) for name, n in self.start.items()})

    @staticmethod
    def _norms(w: torch.Tensor, dim: int) -> torch.Tensor:
        """Each row's norm along output dim `dim`, shaped to broadcast against `w`."""
        others = [i for i in range(w.dim()) if i != dim % w.dim()]
        return torch.linalg.vector_norm(w, dim=others, keepdim=True)

    def watch(self) -> dict[str, Callable[[torch.Tensor], None]]:
        """The hooks for `catalyst_penalty`'s `watch`, for a penalty about to be computed. What
        an earlier penalty set aside and no parameter hook took (a backward pass that stopped
        short of the parameters) is dropped."""
        self._apart.clear()
        return self._watch

    def _set_apart(self, name: str, grad: torch.Tensor) -> None:
        held = self._apart.get(name)
        self._apart[name] = grad if held is None else held + grad

    def _scale(self, w: torch.Tensor, name: str, grad: torch.Tensor) -> torch.Tensor:
        s = (self._norms(w.detach(), self.dims[name]) / self.start[name]).square()
        penalty = self._apart.pop(name, None)
        return s * grad if penalty is None else s * grad + (1 - s) * penalty


class CatalystPruner:
    """Extend a model with catalysts, regularise, then prune every channel with c > 1.

    `example_inputs` and `example_kwargs` are passed to `fxprune.trace` (a Hugging Face model's
    ``attention_mask`` and ``use_cache=False`` go in `example_kwargs`). With ``angular=True``
    (the default) the task loss's gradient on every conv or linear row that only a BatchNorm
    reads is scaled as the penalty shrinks the row (`AngularStep`), on every backward pass
    through this pruner's model (the penalty's own gradient is left whole where the loss holds
    `penalty()`), and `prune()` gives the kept rows their trained norm back."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        example_kwargs: Mapping[str, object] | None = None,
        c: float | Mapping[int, float | Sequence[float]] = DEFAULT_C,
        target: str = "group",
        gamma: float = DEFAULT_GAMMA,
        kappa: float = DEFAULT_KAPPA,
        eps: float = DEFAULT_EPS,
        leaf_modules: Iterable[type] = (),
        loss_gradient: bool = False,
        inexact: bool = False,
        angular: bool = DEFAULT_ANGULAR,
    ) -> None:
        self.c, self.target, self.gamma, self.kappa, self.eps = c, target, gamma, kappa, eps
        self.loss_gradient, self.inexact = loss_gradient, inexact  # see fxprune.passes.catalyst
        self.base = trace(model, example_inputs, example_kwargs=example_kwargs,
                          leaf_modules=leaf_modules)
        self.graph = analyze(self.base)
        self.model = insert_catalysts(self.base, self.graph, c=c, target=target,
                                      loss_gradient=loss_gradient, inexact=inexact)
        self.initial_norm = {m.group: m.magnitude(self.model).detach().cpu().numpy()
                             for _, m in catalysts(self.model)}
        self.intermediate: torch.fx.GraphModule | None = None
        self.removed: dict[int, list[int]] | None = None
        shrunk = {s.param for _, m in catalysts(self.model) for s in m.sources}
        rows = [inv for inv in scale_invariant(self.model) if inv.weight in shrunk]
        self.angular = AngularStep(self.model, rows) if angular and rows else None
        if not self.initial_norm:
            why = (" (target='bn' gives one only to groups with a norm's scale or shift of their "
                   "own; target='group' uses the layers' weights)" if target == "bn" else "")
            warnings.warn(f"fxprune: no group of this model can hold a catalyst{why}; nothing "
                          "will be pruned", stacklevel=2)

    # --- opt1 -----------------------------------------------------------------------------

    def penalty(self) -> torch.Tensor:
        """gamma * ||DW||_{2,1}: add it to the task loss."""
        watch = self.angular.watch() if self.angular is not None else None
        return self.gamma * catalyst_penalty(self.model, watch=watch)

    def ratios(self) -> dict[int, np.ndarray]:
        """c per channel, per group id."""
        return {m.group: m.ratios(self.model).cpu().numpy() for _, m in catalysts(self.model)}

    def undecided(self) -> dict[int, int]:
        """Per group id, how many channels still have |log10 c| <= kappa (groups with none are
        left out): where opt1 is still deciding."""
        counts = {g: int(np.sum(np.abs(np.log10(c)) <= self.kappa)) for g, c in self.ratios().items()}
        return {g: n for g, n in counts.items() if n}

    def converged(self) -> bool:
        """The eps rule (||DW||_{2,1} < eps) or the kappa rule (every |log10 c| > kappa)."""
        with torch.no_grad():
            penalty = float(catalyst_penalty(self.model))
        return self._converged(penalty, np.log10(np.concatenate(list(self.ratios().values()))))

    def _converged(self, penalty: float, log_c: np.ndarray) -> bool:
        return penalty < self.eps or bool(np.all(np.abs(log_c) > self.kappa))

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Warn when the effective step lr * gamma / (1 - momentum) breaks the learning-rate
        condition lambda << min((1 - alpha) / c, (1 - alpha) * c) of the paper's Theorem 2,
        or is too large for |log10 c| to reach kappa. Returns the warnings."""
        found = []
        for group in optimizer.param_groups:
            lr, momentum = group["lr"], group.get("momentum", 0.0)
            alpha = lr * group.get("weight_decay", 0.0) / (1 - momentum)
            step = lr * self.gamma / (1 - momentum)
            if alpha >= 1:
                found.append(f"the weight decay step lr*weight_decay/(1-momentum) = {alpha:.3g} "
                             "is at least 1: training diverges; lower lr or weight_decay")
                continue
            cs = (np.concatenate([np.ravel(v) for v in self.c.values()])
                  if isinstance(self.c, Mapping) else [self.c])
            bound = min(min((1 - alpha) / c, (1 - alpha) * c) for c in cs)
            if step > 0.05 * bound:
                found.append(f"the effective step lr*gamma/(1-momentum) = {step:.3g} is not small "
                             f"against {bound:.3g} (the learning-rate condition): decisions may "
                             "invert; lower lr or gamma")
            if step > 0 and math.log10((1 - alpha) / step) <= self.kappa:
                found.append(f"with the effective step {step:.3g}, |log10 c| cannot reach "
                             f"kappa={self.kappa}: opt1 can only end by the eps rule or a budget")
        for text in found:
            warnings.warn(f"fxprune: {text}", stacklevel=2)
        return found

    def sgd(self, *, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
        """SGD over the extended model (catalysts included), checked against the condition."""
        optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                    weight_decay=weight_decay)
        self.check_optimizer(optimizer)
        return optimizer

    # --- pruning ----------------------------------------------------------------------------

    def decisions(self, *, round_to: int = 1,
                  widths: Mapping[int, Sequence[int]] | None = None) -> dict[int, list[int]]:
        """Channels with c > 1, per group; a group never loses every channel, nor a piece of
        it (a concatenated piece, a slice) its lowest-c channel (`piece_keepers`), and where
        `round_to` > 1 the channels with the lowest c among the pruned are kept until the kept
        count is a multiple of it. `widths` (group -> the kept widths it may take, ascending:
        a latency table's `LatencyTable.widths`) rounds a group it names up to the nearest of
        them instead."""
        remove = {}
        for gid, c in self.ratios().items():
            pieces = sorted(piece_keepers(self.graph[gid], -c))
            gone = np.setdiff1d(np.flatnonzero(c > 1), pieces)
            if len(gone) == len(c):
                keep = int(np.argmin(c))
                warnings.warn(f"fxprune: every channel of group {gid} has c > 1; keeping channel "
                              f"{keep} (the lowest c, {c[keep]:.3g})", stacklevel=3)
                gone = gone[gone != keep]
            kept = len(c) - len(gone)
            if widths is not None and gid in widths:
                rounded = next((w for w in widths[gid] if w >= kept), len(c))
            else:
                rounded = round_kept(kept, len(c), round_to)
            gone = gone[np.argsort(c[gone])][rounded - kept:]  # give back the lowest c first
            if len(gone):
                remove[gid] = sorted(gone.tolist())
        return remove

    def prune(self, *, force: bool = False, round_to: int = 1,
              widths: Mapping[int, Sequence[int]] | None = None) -> torch.fx.GraphModule:
        """Remove every channel with c > 1 (rounded as `decisions` rounds); returns the
        intermediate model (D still present).

        Refuses an unconverged model (its pruned channels are not yet ~0, so the step is not
        lossless) unless ``force=True``.
        """
        if not force and not self.converged():
            d = self.diagnostics()
            raise PruneError(
                f"opt1 has not converged ({d.decided:.0%} of channels past kappa={self.kappa}, "
                f"margin {d.margin_decades:.2f} decades): pruning now is not lossless. Train "
                "longer, or pass force=True to prune anyway."
            )
        self.removed = self.decisions(round_to=round_to, widths=widths)
        trained = strip_catalysts(self.model)
        slim = prune_channels(trained, self.graph, self.removed, round_to=round_to)
        if self.angular is not None:
            self.angular.restore(slim)
        self.intermediate = self._carry_catalysts(slim)
        return self.intermediate

    def _carry_catalysts(self, slim: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Re-insert catalysts on the slim graph with each kept channel's trained D."""
        graph = analyze(slim)
        extended = insert_catalysts(slim, graph, c=1.0, target=self.target,
                                    loss_gradient=self.loss_gradient, inexact=self.inexact)
        old = {m.group: m for _, m in catalysts(self.model)}
        for _, new in catalysts(extended):
            param, dim = new.sources[0].param, new.sources[0].dim
            match = next((m for m in old.values()
                          if any((s.param, s.dim) == (param, dim) for s in m.sources)), None)
            if match is None:
                continue
            kept = np.setdiff1d(np.arange(match.d.numel()), self.removed.get(match.group, []))
            with torch.no_grad():
                if len(kept) == new.d.numel():
                    new.d.copy_(match.d.detach()[torch.as_tensor(kept, device=match.d.device)])
        return extended

    def finalize(self) -> torch.fx.GraphModule:
        """opt2: remove D. With the stop-gradient twin, D never changes the forward value, so
        removing it is exact; the result has the original op types and no catalyst node."""
        if self.intermediate is None:
            raise PruneError("call prune() before finalize()")
        return strip_catalysts(self.intermediate)

    # --- reporting --------------------------------------------------------------------------

    def diagnostics(self) -> Diagnostics:
        ratios = self.ratios()
        c = np.concatenate(list(ratios.values())) if ratios else np.ones(0)
        pruned = c > 1
        log_c = np.log10(c)
        top_kept = c[~pruned].max() if (~pruned).any() else float("nan")
        low_pruned = c[pruned].min() if pruned.any() else float("nan")
        margin = low_pruned / top_kept if pruned.any() and (~pruned).any() else float("inf")
        norms = np.concatenate([self.initial_norm[g] for g in ratios]) if ratios else c
        with torch.no_grad():
            penalty = float(catalyst_penalty(self.model)) if ratios else 0.0
        return Diagnostics(
            converged=self._converged(penalty, log_c) if ratios else True,
            margin=float(margin),
            margin_decades=float(np.log10(margin)) if np.isfinite(margin) else float("inf"),
            decided=float(np.mean(np.abs(log_c) > self.kappa)) if len(c) else 1.0,
            log10_c_kept=log_c[~pruned], log10_c_pruned=log_c[pruned],
            initial_norm=norms, pruned=pruned,
            rank_correlation=spearman(norms, pruned.astype(float)),
            penalty=penalty,
        )
