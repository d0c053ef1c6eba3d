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
from fxprune.trace import LEAF_KEY, propagate_shapes, with_code


def _placeholder_inputs(gm: torch.fx.GraphModule) -> tuple[object, ...]:
    """Zeros of every input's shape (nested as the input is: a list of images); arguments
    traced at their defaults keep them."""
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))

    def zeros(meta: object) -> object:  # None where `meta` holds no tensor
        if hasattr(meta, "shape"):  # TensorMetadata is itself a NamedTuple: test it first
            return torch.zeros(tuple(meta.shape), dtype=meta.dtype, device=device)
        items = (meta.items() if isinstance(meta, dict)
                 else enumerate(meta) if isinstance(meta, (tuple, list)) else ())
        made = {k: zeros(m) for k, m in items}
        if all(v is None for v in made.values()):
            return None
        return made if isinstance(meta, dict) else type(meta)(made.values())

    values = [(zeros(n.meta.get("tensor_meta")), n) for n in gm.graph.nodes if n.op == "placeholder"]
    return tuple(v if v is not None else (n.args[0] if n.args else None) for v, n in values)


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
    with_code(slim)
    _check(slim, new, old)
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


def _check(slim: torch.fx.GraphModule, expected: Mapping[str, object],
           old: Mapping[str, object]) -> None:
    try:
        propagate_shapes(slim, _placeholder_inputs(slim))
    except InputError as exc:
        raise SurgeryError(f"the slim graph does not run: {exc}. This is a bug in fxprune's "
                           "surgery: please report it with the model.") from exc
    # After an opaque call (a leaf), sizes may depend on the data (a detector's number of
    # proposals): there only the sizes that pruning changes are checked.
    opaque: set[str] = set()
    for node in slim.graph.nodes:
        if LEAF_KEY in node.meta or any(a.name in opaque for a in node.all_input_nodes):
            opaque.add(node.name)
        got, want = _shape(node), expected[node.name]
        if node.name in opaque:
            got, want = (_pruned_dims(got, want, old[node.name]),
                         _pruned_dims(want, want, old[node.name]))
        if got != want:
            raise SurgeryError(
                f"surgery left {describe(node)} with shape {_shape(node)}, expected "
                f"{expected[node.name]}. This is a bug in fxprune's surgery: please report it "
                "with the model."
            )


def _pruned_dims(shape: object, new: object, old: object) -> object:
    """`shape` as (dim, size) pairs at the dims whose size the plan changes (`new` differs from
    `old` there), each shape of a tuple of them: all the plan fixes where the other sizes are
    the data's. A shape that does not line up with the plan's stays as it is."""
    def is_shape(s: object) -> bool:
        return isinstance(s, tuple) and all(isinstance(d, int) for d in s)

    if new is None:  # no tensor there in the example (an opaque call's None): nothing to check
        return None

    lined_up = isinstance(shape, tuple) and isinstance(old, tuple) and len(shape) == len(new) == len(old)
    if is_shape(new) and is_shape(shape) and lined_up:
        return tuple((d, shape[d]) for d in range(len(new)) if new[d] != old[d])
    if isinstance(new, tuple) and lined_up:
        return tuple(map(_pruned_dims, shape, new, old))
    return shape
