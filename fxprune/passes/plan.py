"""Turn a removal request into keep-masks, after checking it against the constraints.

A request maps group ids to the channels to delete. The plan says, for every parameter dim and
every node output dim the groups touch, which indices survive. Surgery (`slim`) and its
reference (`zero`) both work from the same plan, so they cannot disagree on what is removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch.fx

from fxprune.errors import PruneError
from fxprune.graph import ChannelGraph, ChannelGroup, Member
from fxprune.ops.api import KeepMasks


@dataclass(frozen=True)
class Plan:
    """Which indices of which parameters and node outputs survive a removal."""

    removed: Mapping[int, tuple[int, ...]]  # group id -> removed channels, sorted
    params: Mapping[tuple[str, int], np.ndarray]  # (param, dim) -> keep mask
    tensors: KeepMasks  # (node, tuple output or None, dim) -> keep mask

    def keep(self, node: str, dim: int, output: int | None = None) -> np.ndarray | None:
        return self.tensors.get((node, output, dim))

    def new_shape(self, node: torch.fx.Node) -> object:
        """The node's output shape after removal (nested tuples for tuple outputs)."""
        meta = node.meta.get("tensor_meta")
        if hasattr(meta, "shape"):
            return self._shrink(node.name, None, tuple(meta.shape))
        if isinstance(meta, (tuple, list)):
            return tuple(self._shrink(node.name, k, tuple(m.shape)) if hasattr(m, "shape") else None
                         for k, m in enumerate(meta))
        return None

    def _shrink(self, node: str, output: int | None, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(self.tensors[(node, output, d)].sum()) if (node, output, d) in self.tensors
                     else size for d, size in enumerate(shape))


def plan(graph: ChannelGraph, remove: Mapping[int, Iterable[int]], *, round_to: int = 1) -> Plan:
    """Check `remove` (group id -> channels to delete) and build the keep-masks.

    Raises `PruneError` naming the group and the constraint a request breaks: unknown or frozen
    group, channel out of range, no channel left, or kept count not a multiple of `round_to`.
    """
    if round_to < 1:
        raise PruneError(f"round_to must be at least 1, got {round_to}")
    removed: dict[int, tuple[int, ...]] = {}
    for gid, channels in remove.items():
        if not 0 <= gid < len(graph.groups):
            raise PruneError(f"there is no group {gid}: the graph has groups 0..{len(graph.groups) - 1}")
        group = graph.groups[gid]
        chans = sorted({int(c) for c in channels})
        if not chans:
            continue
        if not group.prunable:
            raise PruneError(f"group {gid} is frozen and cannot be pruned: {group.reason}")
        if chans[0] < 0 or chans[-1] >= group.channels:
            raise PruneError(f"group {gid} has channels 0..{group.channels - 1}; asked to remove {chans[-1] if chans[-1] >= group.channels else chans[0]}")
        kept = group.channels - len(chans)
        if kept < 1:
            raise PruneError(f"group {gid}: removing all {group.channels} channels; at least one must stay")
        if kept % round_to:
            raise PruneError(
                f"group {gid}: {kept} channels would remain, not a multiple of round_to={round_to}; "
                f"remove {kept % round_to} more or {round_to - kept % round_to} fewer"
            )
        removed[gid] = tuple(chans)
    params: dict[tuple[str, int], np.ndarray] = {}
    tensors: dict[tuple[str, int | None, int], np.ndarray] = {}
    for gid, chans in removed.items():
        gone = np.zeros(graph.groups[gid].channels, dtype=bool)
        gone[list(chans)] = True
        for m in graph.groups[gid].members:
            key: object = (m.param, m.dim) if m.param is not None else (m.node, m.output, m.dim)
            into = params if m.param is not None else tensors
            mask = into.setdefault(key, np.ones(m.length, dtype=bool))
            _drop(mask, m, gone)
    for key, mask in (*params.items(), *tensors.items()):
        if not mask.any():  # e.g. a concat input or a slice that would vanish entirely
            where = f"{key[0]} dim {key[1]}" if key in params else f"the output of {key[0]} dim {key[2]}"
            raise PruneError(
                f"the request removes every channel of {where}; keep at least one there "
                f"(groups {sorted(removed)} are involved)"
            )
    return Plan(removed=removed, params=params, tensors=tensors)


def piece_keepers(group: ChannelGroup, scores: np.ndarray | None = None) -> set[int]:
    """Channels a plan keeps whatever else it removes: in every member holding only some of
    the group's channels (a concatenated piece, a slice such as FocalNet's one-channel gates
    ``gates[:, l:l + 1]``), its best-scored one (its first without scores), so that no piece
    is emptied. A one-channel piece is never removed."""
    keep = set()
    for m in group.members:
        if m.channels and len(set(m.channels)) < group.channels:
            keep.add(m.channels[0] if scores is None else max(m.channels, key=lambda c: scores[c]))
    return keep


def round_kept(kept: int, total: int, round_to: int) -> int:
    """`kept` rounded up to a multiple of `round_to`, at most `total`: a method that rounds keeps
    more channels than it chose, never fewer."""
    return min(total, -(-kept // round_to) * round_to)


def _drop(mask: np.ndarray, member: Member, gone: np.ndarray) -> None:
    positions = np.asarray(member.positions, dtype=np.int64)
    channels = np.asarray(member.channels, dtype=np.int64)
    mask[positions[gone[channels]]] = False


def random_request(graph: ChannelGraph, fraction: float, seed: int, *,
                   exact_only: bool = False) -> dict[int, list[int]]:
    """A valid random request: `fraction` of the channels of every prunable group (of the exact
    ones with `exact_only`), keeping in every member (a concat input, a slice) one channel.
    Sweeps and tests use it."""
    import random

    rng = random.Random(seed)
    remove = {}
    for g in graph.prunable:
        if exact_only and not g.exact:
            continue
        kept = {m.channels[0] for m in g.members if m.channels}
        free = [c for c in range(g.channels) if c not in kept]
        count = min(len(free), max(1, int(g.channels * fraction)))
        remove[g.id] = sorted(rng.sample(free, count))
    return remove
