"""Surgery: emit a slim graph module with the requested channels removed.

Reads the ChannelGraph of `analyze` and ``node.meta["tensor_meta"]``. Returns a new
GraphModule (the input stays usable) in which every member of every pruned group is sliced
consistently, module size attributes (the op table's ``sync``) and graph constants such as
view sizes, split sizes and slice bounds (its ``rewrite``) hold the new channel counts, and
``tensor_meta`` holds the new shapes. Before returning, the slim graph is run on fake inputs and
every node's shape is checked against the plan, so a wrong cut fails here, not in the user's
deployment.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.fx

from fxprune import ops
from fxprune.errors import InputError, SurgeryError, describe
from fxprune.graph import ChannelGraph
from fxprune.ops.api import CHANNEL_SIZED_KEY, Resize, get_tensor, set_tensor
from fxprune.passes.plan import plan
from fxprune.trace import propagate_shapes


def _placeholder_inputs(gm: torch.fx.GraphModule) -> tuple[object, ...]:
    """Zeros of every input's shape; arguments traced at their defaults keep them."""
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    values: list[object] = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        meta = n.meta.get("tensor_meta")
        values.append(torch.zeros(tuple(meta.shape), dtype=meta.dtype, device=device)
                      if hasattr(meta, "shape") else (n.args[0] if n.args else None))
    return tuple(values)


def _aliases(gm: torch.nn.Module) -> dict[str, list[str]]:
    """The other names of each tied parameter (torch.export keeps one name of a tied LM head
    and its embedding in the graph, but the module still holds both)."""
    names: dict[int, list[str]] = {}
    for name, p in gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n: [m for m in group if m != n] for group in names.values() if len(group) > 1
            for n in group}


def prune_channels(
    gm: torch.fx.GraphModule,
    graph: ChannelGraph,
    remove: Mapping[int, Iterable[int]],
    *,
    round_to: int = 1,
) -> torch.fx.GraphModule:
    """A new GraphModule without the channels `remove` names (group id -> channel indices).

    Raises `PruneError` when the request breaks a constraint (see `fxprune.passes.plan`).
    """
    the_plan = plan(graph, remove, round_to=round_to)
    slim = copy.deepcopy(gm)
    old = {n.name: _shape(n) for n in gm.graph.nodes}
    new = {n.name: the_plan.new_shape(n) for n in gm.graph.nodes}
    aliases = _aliases(slim)
    with torch.no_grad():
        for (param, dim), keep in the_plan.params.items():
            tensor = get_tensor(slim, param)
            index = torch.as_tensor(np.flatnonzero(keep), device=tensor.device)
            set_tensor(slim, param, tensor.index_select(dim, index).clone())
            for other in aliases.get(param, ()):  # tied: the same tensor under other names
                owner, _, name = other.rpartition(".")
                setattr(slim.get_submodule(owner), name, get_tensor(slim, param))
    resize = Resize(the_plan.tensors, old, new)
    for node in slim.graph.nodes:
        module = slim.get_submodule(node.target) if node.op == "call_module" else None
        entry = ops.lookup(node, module)
        if entry is None or (old[node.name] == new[node.name] and not _reads_pruned(node, old, new)
                             and CHANNEL_SIZED_KEY not in node.meta):
            continue
        if entry.sync is not None and module is not None:
            entry.sync(module, resize, node)
        if entry.rewrite is not None:
            entry.rewrite(resize, node)
    slim.graph.lint()
    slim.recompile()
    _check(slim, new)
    return slim


def _shape(node: torch.fx.Node) -> object:
    meta = node.meta.get("tensor_meta")
    if hasattr(meta, "shape"):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        return tuple(tuple(m.shape) if hasattr(m, "shape") else None for m in meta)
    return None


def _reads_pruned(node: torch.fx.Node, old: Mapping[str, object], new: Mapping[str, object]) -> bool:
    return any(old[a.name] != new[a.name] for a in node.all_input_nodes)


def _check(slim: torch.fx.GraphModule, expected: Mapping[str, object]) -> None:
    try:
        propagate_shapes(slim, _placeholder_inputs(slim))
    except InputError as exc:
        raise SurgeryError(f"the slim graph does not run: {exc}. This is a bug in fxprune's "
                           "surgery: please report it with the model.") from exc
    for node in slim.graph.nodes:
        got = _shape(node)
        if got != expected[node.name]:
            raise SurgeryError(
                f"surgery left {describe(node)} with shape {got}, expected {expected[node.name]}. "
                "This is a bug in fxprune's surgery: please report it with the model."
            )
