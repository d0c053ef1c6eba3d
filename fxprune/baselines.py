"""The methods Catalyst is measured against, scored on the same channel groups.

- ``group-lasso``: regularise with sum ||G_i|| (DepGraph's group-L2 sparse learning), prune the
  smallest ||G_i||;
- ``slimming``: regularise with the L1 norm of the norm layers' scales (network slimming),
  prune the smallest |scale|;
- ``l1``: no regulariser, prune the smallest L1 norm of the producing conv/linear rows;
- ``magnitude``: no regulariser, prune the smallest ||G_i|| (one-shot).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fxprune import ops
from fxprune.graph import ChannelGraph
from fxprune.passes.catalyst import channel_sums, group_norms, group_slices
from fxprune.passes.plan import piece_keepers, round_kept

METHODS = ("group-lasso", "slimming", "l1", "magnitude")
_TARGET = {"group-lasso": "group", "magnitude": "group", "slimming": "bn-scale", "l1": "group"}
_POWER = {"group-lasso": 2, "magnitude": 2, "slimming": 1, "l1": 1}


class Scorer:
    """Per-channel scores of one method over every prunable group (differentiable)."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.graph = graph
        self.slices = {}
        for g in graph.prunable:
            slices = group_slices(model, g, _TARGET[method])
            if method == "l1":  # the producing conv/linear rows only
                slices = [s for s in slices if _is_producer(model, s[0])]
            if slices:
                self.slices[g.id] = (slices, g.channels)

    def scores(self, model: nn.Module) -> dict[int, torch.Tensor]:
        if _POWER[self.method] == 2:
            return {gid: group_norms(model, slices, channels)
                    for gid, (slices, channels) in self.slices.items()}
        return {gid: channel_sums(model, slices, channels, power=1)
                for gid, (slices, channels) in self.slices.items()}

    def values(self, model: nn.Module) -> dict[int, np.ndarray]:
        """What removing each channel loses, additive over channels and over the parameters a
        channel holds, as a knapsack's values must be (`fxprune.latency.plan_latency`): the
        squared norm for the norm methods, the sums as they are. Ranks channels as `scores`
        does. A norm is not additive: ViT-B/16's hidden channel spans 12 blocks, so its norm
        weighs sqrt(12) blocks' worth, and by norm per millisecond a plan favours removing the
        channels that hold the most parameters."""
        with torch.no_grad():
            return {g: s.detach().cpu().double().numpy() ** _POWER[self.method]
                    for g, s in self.scores(model).items()}

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The method's regulariser: the sum of all scores (zero for one-shot methods)."""
        if self.method in ("l1", "magnitude"):
            return torch.zeros((), device=next(model.parameters()).device)
        return torch.stack([s.sum() for s in self.scores(model).values()]).sum()

    def lowest(self, model: nn.Module, share: float, *, round_to: int = 1) -> dict[int, list[int]]:
        """Remove the globally lowest-scored `share` of channels (each group keeps one, every
        piece of a group its best-scored channel (`piece_keepers`), and a multiple of
        `round_to` channels where it loses any: rounding keeps more)."""
        with torch.no_grad():
            scores = {g: s.detach().cpu().numpy() for g, s in self.scores(model).items()}
        kept = {g: piece_keepers(self.graph[g], s) for g, s in scores.items()}
        flat = sorted((float(v), g, i) for g, s in scores.items() for i, v in enumerate(s)
                      if i not in kept[g])
        budget = int(round(share * sum(len(s) for s in scores.values())))
        remove: dict[int, list[int]] = {}
        for _, g, i in flat:
            if budget == 0:
                break
            if len(remove.get(g, [])) < len(scores[g]) - 1:
                remove.setdefault(g, []).append(i)
                budget -= 1
        out = {}
        for g, chosen in remove.items():  # chosen is in ascending score order
            total = len(scores[g])
            kept = round_kept(total - len(chosen), total, round_to)
            if kept < total:
                out[g] = sorted(chosen[: total - kept])
        return out


def _is_producer(model: nn.Module, param: str) -> bool:
    """Whether `param` is the weight of a module that makes channels (the op table's
    ``produces``: conv, linear, embedding)."""
    owner, _, name = param.rpartition(".")
    entry = ops.lookup_module(model.get_submodule(owner)) if owner else None
    return entry is not None and entry.produces is not None and name == "weight"


def initial_norms(model: nn.Module, graph: ChannelGraph) -> dict[int, np.ndarray]:
    """||G_i|| per channel per prunable group (group target), as numbers."""
    with torch.no_grad():
        return {g: s.cpu().numpy() for g, s in Scorer(model, graph, "magnitude").scores(model).items()}
