"""Dependency analysis: find the channels that must be removed together.

Reads ``node.meta["tensor_meta"]`` (from `fxprune.trace`) and ``node.meta["fxprune.leaf"]``.
Writes ``node.meta["fxprune.groups"]`` (a `NodeGroups`) on every node whose output carries
channels, and returns a `ChannelGraph`. The graph module itself is not changed.

Each node's op table entry (`fxprune.ops`) says how channels flow through it. Channels that
reach a model input or output, or an op that is not in the table, are frozen with a reason.
"""

from __future__ import annotations

import logging
import operator
import types
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx

from fxprune import ops
from fxprune.errors import InputError
from fxprune.graph import ChannelGraph, ChannelGroup, Member
from fxprune.ops.api import Context, untracked_like
from fxprune.ops.flow import Flow, SizeOf
from fxprune.trace import LEAF_KEY, OWNER_KEY, fetch_attr

log = logging.getLogger(__name__)

GROUPS_KEY = "fxprune.groups"


@dataclass(frozen=True, slots=True)
class NodeGroups:
    """The channel groups held along each tracked dim of a node's output."""

    dims: tuple[tuple[int, tuple[int, ...]], ...]  # (dim, group ids) pairs


def _describe_op(node: torch.fx.Node, module: torch.nn.Module | None) -> str:
    """A short description of the node's op; `module` is a call_module node's module."""
    if module is not None:
        return type(module).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "get_attr":
        return f"param {node.target}"
    return "input" if node.op == "placeholder" else "output"


def _visit(cx: Context, node: torch.fx.Node) -> object:
    meta = node.meta.get("tensor_meta")
    if node.op == "placeholder":
        return untracked_like(meta)
    if node.op == "output":
        cx.freeze_all(node.args, f"reaches the model output {cx.where}")
        return None
    if node.op == "get_attr":
        value = fetch_attr(cx.modules, cx.gm, node.target)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or _sizes_only(node):
            return untracked_like(meta)
        owner = node.meta.get(OWNER_KEY)
        known = _param_dims(cx, owner.cls, node.target.rpartition(".")[2]) if owner else None
        dims = {}
        for d, size in enumerate(value.shape):
            if size > 1 and (known is None or d in known):
                dims[d] = cx.atoms.fresh(size)
                cx._param(node.name, node.target, d, dims[d], "bare")
        return Flow(dims)
    # ints read from tensor sizes are tracked; other values carry no channels (an in-place
    # assignment returns nothing, but its table entry freezes what it writes into)
    if meta is None and node.target is not operator.setitem:
        return _size_value(cx, node)
    module = cx.module() if node.op == "call_module" else None
    entry = ops.lookup(node, module)
    if entry is None:
        leaf = node.meta.get(LEAF_KEY)
        if leaf is not None:
            kind = ("submodule" if node.op == "call_module" else
                    "method" if isinstance(node.target, types.MethodType) else "function")
            return cx.unknown(f"{kind} '{leaf.module}' {leaf.reason}")
        name = _describe_op(node, module)
        return cx.unknown(f"unknown op {name} (fxprune does not know how channels flow through it)")
    cx.entry = entry
    return entry.flow(cx, entry)


def _param_dims(cx: Context, owner: type, name: str) -> frozenset[int] | None:
    """`ops.param_channel_dims`, looked up once per class and parameter name (timm's
    EfficientNet-B0 reads 196 parameters of a few kinds)."""
    key = ("param_dims", owner, name)
    if key not in cx.memo:
        cx.memo[key] = ops.param_channel_dims(owner, name)
    return cx.memo[key]


def _sizes_only(node: torch.fx.Node) -> bool:
    """Whether the node's value is used for its sizes alone (a table cached on the model whose
    shape forward checks): such a tensor carries no channels."""
    return all(u.op == "call_function" and u.target is getattr and u.args[1:] == ("shape",)
               or u.op == "call_method" and u.target in ("size", "dim") for u in node.users)


_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
               operator.mod, operator.neg}


def _size_value(cx: Context, node: torch.fx.Node) -> object:
    """Provenance of ints computed from tensor sizes (x.shape, x.size(1), c // heads)."""
    args = node.args
    if node.op == "call_method" and node.target == "size" and isinstance(args[0], torch.fx.Node):
        if len(args) > 1 or "dim" in node.kwargs:
            d = args[1] if len(args) > 1 else node.kwargs["dim"]
            return SizeOf(frozenset({(args[0], d % len(cx.shape(args[0])))}))
        return _shape_of(cx, args[0])
    if node.op != "call_function":
        return None
    if node.target is torch.ops.aten.sym_size.int:  # an exported graph's x.size(d)
        return SizeOf(frozenset({(args[0], args[1] % len(cx.shape(args[0])))}))
    if node.target is getattr and args[1:] == ("shape",) and isinstance(args[0], torch.fx.Node):
        return _shape_of(cx, args[0])
    if node.target is operator.getitem and isinstance(cx.flow(args[0]), tuple):
        value = cx.flow(args[0])[args[1]]
        return value if isinstance(value, (SizeOf, tuple)) else None
    if node.target in _ARITHMETIC:
        sizes = [cx.flow(a) for a in args if isinstance(a, torch.fx.Node)]
        sizes = [v for v in sizes if isinstance(v, SizeOf)]
        if sizes:
            return SizeOf(frozenset().union(*(v.sources for v in sizes)), exact=False)
    return None


def _shape_of(cx: Context, x: torch.fx.Node) -> tuple[SizeOf, ...]:
    return tuple(SizeOf(frozenset({(x, d)})) for d in range(len(cx.shape(x))))


HEADS = ("whole", "dim")


def analyze(gm: torch.fx.GraphModule, *, strict: bool = False, heads: str = "whole") -> ChannelGraph:
    """Group the channels of a traced model (from `fxprune.trace`) that must go together.

    With ``strict=True`` an op missing from the op table raises `AnalysisError` instead of
    freezing the channels through it. ``heads`` is the unit of attention where a model splits
    its features into heads itself (view/reshape before a matrix product or
    scaled_dot_product_attention): ``"whole"`` removes whole heads (head_dim kept, fewer
    heads, a key-value head with the query heads that share it), ``"dim"`` removes one head
    dimension in every head.
    """
    if heads not in HEADS:
        raise InputError(f"analyze: heads must be one of {', '.join(HEADS)}, got {heads!r}")
    if not isinstance(gm, torch.fx.GraphModule):
        raise InputError(f"analyze takes the GraphModule returned by fxprune.trace, got {type(gm).__name__}")
    if any("tensor_meta" not in n.meta for n in gm.graph.nodes if n.op != "output"):
        raise InputError("the graph has no shapes: trace it with fxprune.trace(model, example_inputs)")
    cx = Context(gm, strict, ops.lookup, heads)
    for node in gm.graph.nodes:
        cx.at(node)
        cx.flows[node] = _visit(cx, node)
    return _collect(cx)


def _mask(ids: np.ndarray, n: int) -> np.ndarray:
    """A boolean mask over `n` atoms, set at `ids`: a set of atoms in linear time (np.unique
    sorts; on a model's 100k atoms, several times over, that cost ~10 ms)."""
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    return mask


def _collect(cx: Context) -> ChannelGraph:
    atoms = cx.atoms
    n = len(atoms)
    group_of, chan_of = atoms.group.all_roots(), atoms.chan.all_roots()
    # Frozen groups that hold no trainable parameter (coordinate tables and other buffers used
    # as data) say nothing a user can act on: leave them out.
    trainable = {f"{path}.{name}" if path else name for path, m in cx.modules.items()
                 for name, p in m._parameters.items() if p is not None}
    with_params = _mask(np.array([group_of[ids[0]] for _, p, _, ids, _ in cx.members
                                  if p in trainable and len(ids)], dtype=np.int64), n)
    frozen_roots = _mask(group_of[_atom_array(atoms.frozen)], n)
    live_roots = _mask(group_of[atoms.live()], n)
    every = np.arange(n)
    is_root = group_of == every  # a root is its own group
    group_roots = np.flatnonzero(is_root & live_roots & (with_params | ~frozen_roots)).tolist()
    # gid_of[a] = id of atom a's group in the result, or -1 where the group is left out
    gid_of = np.full(n, -1, dtype=np.int64)
    gid_of[group_roots] = np.arange(len(group_roots))
    gid_of = gid_of[group_of]
    # local[c] = index of channel root c within its group (roots sort in graph order)
    local = np.full(n, -1, dtype=np.int64)
    # (only the groups kept: most atoms are discarded ones, four per channel of a timm norm)
    roots = np.flatnonzero((chan_of == every) & (gid_of >= 0))
    order = np.argsort(group_of[roots], kind="stable")
    by_group = group_of[roots][order]
    starts = np.flatnonzero(np.r_[len(order) > 0, by_group[1:] != by_group[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    local[roots[order]] = np.arange(len(order)) - np.repeat(starts, sizes)
    counts = dict(zip(by_group[starts].tolist(), sizes.tolist()))
    frozen = _first_reasons(atoms.frozen, gid_of)
    inexact = _first_reasons(atoms.inexact, gid_of)
    coupled: dict[int, list[str]] = defaultdict(list)
    for a, site in atoms.joins:
        g = int(gid_of[a])
        if g >= 0:
            coupled[g].append(site)
    members = _members(cx, gid_of, local[chan_of], len(group_roots))

    groups = []
    for g_id in range(len(group_roots)):
        count = counts[group_roots[g_id]]
        reason = frozen.get(g_id)
        owners = {m.param for m in members[g_id] if m.param is not None}
        if reason is None and len(owners) == 1 and all(
                m.role == "bare" for m in members[g_id] if m.param is not None):
            reason = f"only the parameter {owners.pop()} holds these channels; nothing reads them"
        if reason is None and count < 2:
            reason = "a single channel: at least one channel is always kept"
        groups.append(ChannelGroup(
            id=g_id,
            channels=count,
            prunable=reason is None,
            reason=reason,
            exact=g_id not in inexact,
            inexact_reason=inexact.get(g_id),
            members=tuple(members[g_id]),
            coupled_by=tuple(dict.fromkeys(coupled[g_id])),
        ))
    graph = cx.gm.graph
    modules = cx.modules
    return ChannelGraph(
        groups=tuple(groups),
        node_order=tuple(n.name for n in graph.nodes),
        edges=tuple((i.name, n.name) for n in graph.nodes for i in n.all_input_nodes),
        node_ops={n.name: _describe_op(n, modules[n.target] if n.op == "call_module" else None)
                  for n in graph.nodes},
    )


def _atom_array(atom_ids: Iterable[int]) -> np.ndarray:
    """A collection of atom ids (a set, or a dict's keys) as an int array."""
    return np.fromiter(atom_ids, dtype=np.int64)


def _first_reasons(reasons: Mapping[int, str], gid_of: np.ndarray) -> dict[int, str]:
    """For each result group, the reason recorded on its lowest atom (`reasons`: atom ->
    reason); groups left out of the result (id -1 in `gid_of`) are skipped."""
    ordered = np.sort(_atom_array(reasons))
    ids, first = np.unique(gid_of[ordered], return_index=True)
    return {g: reasons[a] for g, a in zip(ids.tolist(), ordered[first].tolist()) if g >= 0}


def _members(cx: Context, gid_of: np.ndarray, local_of: np.ndarray,
             n_groups: int) -> dict[int, list[Member]]:
    """Every group's members: the parameter slices in `cx.members`, then each node output dim
    that holds its channels. Also writes ``node.meta[GROUPS_KEY]`` on the nodes that hold any.

    A member is one slice (a parameter dim, or a node's output dim) restricted to the indices
    whose atoms fall in one group; `gid_of` gives each atom's group id (-1: left out) and
    `local_of` its channel within the group.
    """
    # Slice k is (node, param, dim, output, role) with its atoms in arrays[k].
    slices: list[tuple[str, str | None, int, int | None, str]] = []
    arrays: list[np.ndarray] = []
    for node_name, param, dim, ids, role in cx.members:
        slices.append((node_name, param, dim, None, role))
        arrays.append(ids)
    outputs: list[tuple[torch.fx.Node, int, int]] = []  # (node, dim, slice) of node outputs
    for node, value in cx.flows.items():
        values = value if isinstance(value, tuple) else (value,)
        for k, v in enumerate(values):
            if isinstance(v, Flow):
                for dim, ids in sorted(v.dims.items()):
                    outputs.append((node, dim, len(slices)))
                    slices.append((node.name, None, dim,
                                   k if isinstance(value, tuple) else None, "out"))
                    arrays.append(ids)
    # Most slices share their atom array with others (a norm or an activation passes its
    # input's on, a module's parameters hold its output's): split each distinct array once.
    distinct = {id(ids): ids for ids in arrays}
    parts = dict(zip(distinct, _split(list(distinct.values()), gid_of, local_of, n_groups)))
    members: dict[int, list[Member]] = defaultdict(list)
    held: dict[int, list[int]] = defaultdict(list)  # slice -> the groups it holds, ascending
    for k, ((node_name, param, dim, output, role), ids) in enumerate(zip(slices, arrays)):
        for g, positions, channels in parts[id(ids)]:
            members[g].append(Member(node_name, param, dim, len(ids), positions, channels,
                                     output, role))
            held[k].append(g)
    node_groups: dict[torch.fx.Node, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for node, dim, k in outputs:
        if k in held:
            node_groups[node].append((dim, tuple(held[k])))
    for node, dims in node_groups.items():
        node.meta[GROUPS_KEY] = NodeGroups(tuple(dims))
    return members


def _split(arrays: list[np.ndarray], gid_of: np.ndarray, local_of: np.ndarray,
           n_groups: int) -> list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]]:
    """For each atom array, the groups its atoms fall in (ascending, groups left out skipped),
    each with the positions in the array that hold it and the channel of the group at each.

    One vectorised pass over all arrays; equal index tuples (most are ranges) are shared.
    """
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays).astype(np.int64, copy=False) if arrays else np.empty(0, np.int64)
    array_of = np.repeat(np.arange(len(arrays)), lengths)
    position = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    groups = gid_of[flat]
    kept = np.flatnonzero(groups >= 0)
    # One run per (array, group) pair: arrays in order, groups ascending, positions ascending.
    key = array_of[kept] * n_groups + groups[kept]
    by_key = np.argsort(key, kind="stable")
    key, kept = key[by_key], kept[by_key]
    starts = np.flatnonzero(np.diff(key, prepend=-1))
    ends = np.append(starts[1:], len(key)).tolist()
    first = kept[starts]
    positions, channels = position[kept], local_of[flat[kept]]
    shared: dict[bytes, tuple[int, ...]] = {}

    def as_tuple(values: np.ndarray) -> tuple[int, ...]:
        found = shared.get(values.tobytes())
        if found is None:
            found = shared[values.tobytes()] = tuple(values.tolist())
        return found

    out: list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]] = [[] for _ in arrays]
    for i, g, a, b in zip(array_of[first].tolist(), groups[first].tolist(), starts.tolist(), ends):
        out[i].append((g, as_tuple(positions[a:b]), as_tuple(channels[a:b])))
    return out
