"""How much of a model analysis leaves prunable: the share of the output channels of every
layer that makes channels (the op table's ``produces``: conv, linear, embedding) that sit in
prunable groups. One prunable group out of 180 is not coverage; this is."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx

from fxprune import ops
from fxprune.graph import ChannelGraph
from fxprune.trace import OWNER_KEY


@dataclass(frozen=True)
class Coverage:
    channels: int  # output channels of the layers that make channels
    prunable: int  # of those, channels in prunable groups

    @property
    def share(self) -> float:
        return self.prunable / self.channels if self.channels else 0.0


def coverage(gm: torch.fx.GraphModule, graph: ChannelGraph) -> Coverage:
    """The share of `gm`'s producer output channels that `graph` (its analysis) can prune.

    A producer is a call_module layer or a parameter used through functional ops whose owner
    derives from a producing layer (timm's StdConv2d, a subclass computing with F.conv2d)."""
    weights: dict[str, int] = {}  # the producers' weights -> their output-channel dim
    for node in gm.graph.nodes:
        if node.op == "call_module":
            entry, weight = ops.lookup_module(gm.get_submodule(node.target)), f"{node.target}.weight"
        elif node.op == "get_attr" and node.target.endswith(".weight") and OWNER_KEY in node.meta:
            entry, weight = ops.parameter_layout(node.meta[OWNER_KEY].cls), node.target
        else:
            continue
        if entry is not None and entry.produces is not None and "weight" in entry.out_params:
            weights[weight] = entry.out_params["weight"]
    params = dict(gm.named_parameters())
    total = sum(params[w].shape[d] for w, d in weights.items() if w in params)
    covered: dict[str, set[int]] = {}  # a layer called twice is a member twice: count it once
    for g in graph.prunable:
        for m in g.params:
            if weights.get(m.param) == m.dim:
                covered.setdefault(m.param, set()).update(m.positions)
    return Coverage(channels=total, prunable=sum(len(p) for p in covered.values()))
