"""The reference surgery is checked against: same architecture, removed channels zeroed.

Returns a new GraphModule (the input stays usable) in which every parameter slice of every
removed channel, in every member of its group, is zero. For groups whose ``exact`` is true,
this model and the slim one from `prune_channels` compute the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.fx

from fxprune.graph import ChannelGraph
from fxprune.ops.api import get_tensor
from fxprune.passes.plan import plan
from fxprune.trace import with_code


def zero_channels(
    gm: torch.fx.GraphModule,
    graph: ChannelGraph,
    remove: Mapping[int, Iterable[int]],
    *,
    round_to: int = 1,
) -> torch.fx.GraphModule:
    """A copy of `gm` with the parameters of the channels `remove` names set to zero."""
    the_plan = plan(graph, remove, round_to=round_to)
    zeroed = with_code(copy.deepcopy(gm))
    with torch.no_grad():
        for (param, dim), keep in the_plan.params.items():
            tensor = get_tensor(zeroed, param)
            index = torch.as_tensor(np.flatnonzero(~keep), device=tensor.device)
            tensor.index_fill_(dim, index, 0)
    return zeroed
