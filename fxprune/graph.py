"""The result of dependency analysis: coupled channel groups and their members."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import networkx as nx


@dataclass(frozen=True, slots=True)  # slots: analysis makes thousands (a third faster)
class Member:
    """One place a group's channels live: a parameter slice or a node's output dim.

    Along ``dim`` (of length ``length``), index ``positions[k]`` holds group channel
    ``channels[k]``; the other indices belong to other groups. ``index_map`` spells it out.
    """

    node: str
    param: str | None  # qualified parameter/buffer name, None for a node's output tensor
    dim: int
    length: int
    positions: tuple[int, ...]
    channels: tuple[int, ...]
    output: int | None = None  # which element of a tuple-valued node, if any
    # "out": holds the channels; "in": reads them (a consumer's columns); "bare": a parameter
    # used directly in the graph (cls token, position embedding, layer scale)
    role: str = "out"

    @property
    def index_map(self) -> tuple[int, ...]:
        """The group channel at each index along ``dim``, or -1 where another group's is."""
        full = [-1] * self.length
        for p, c in zip(self.positions, self.channels):
            full[p] = c
        return tuple(full)

    @property
    def kind(self) -> str:
        return "tensor" if self.param is None else "param"

    @property
    def owner(self) -> str:
        """The module (or bare parameter) the slice belongs to."""
        if self.param is None:
            return self.node
        if self.role == "bare" or "." not in self.param:
            return self.param
        return self.param.rsplit(".", 1)[0]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together, index by index, wherever they appear."""

    id: int
    channels: int
    prunable: bool
    reason: str | None  # why the group is frozen, else None
    exact: bool  # zeroing a channel's parameters is equivalent to removing it
    inexact_reason: str | None
    members: tuple[Member, ...]
    coupled_by: tuple[str, ...]  # nodes where separate producers were coupled

    @property
    def params(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.param is not None)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.node for m in self.members))


@dataclass(frozen=True)
class ChannelGraph:
    """Every channel group of a traced model, with the graph's nodes for context."""

    groups: tuple[ChannelGroup, ...]
    node_order: tuple[str, ...]  # graph order of the model's nodes
    edges: tuple[tuple[str, str], ...]  # data edges between nodes
    node_ops: dict[str, str]  # node -> short op description

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __getitem__(self, group_id: int) -> ChannelGroup:
        return self.groups[group_id]

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def groups_of(self, node: str) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if node in g.nodes)

    def to_networkx(self) -> nx.MultiDiGraph:
        """Nodes of the model graph (attribute ``groups``: ids of the groups it holds) and
        its data edges; each group is also a node (``kind='group'``) linked to its members."""
        g = nx.MultiDiGraph()
        for name in self.node_order:
            g.add_node(name, kind="node", op=self.node_ops[name],
                       groups=[grp.id for grp in self.groups if name in grp.nodes])
        g.add_edges_from(self.edges, kind="data")
        for grp in self.groups:
            key = f"group:{grp.id}"
            g.add_node(key, kind="group", channels=grp.channels, prunable=grp.prunable,
                       reason=grp.reason, exact=grp.exact)
            for m in grp.members:
                g.add_edge(key, m.node, kind="member", param=m.param, dim=m.dim)
        return g

    def to_dict(self) -> dict:
        return {
            "groups": [asdict(grp) for grp in self.groups],
            "nodes": [{"name": n, "op": self.node_ops[n]} for n in self.node_order],
            "edges": [list(e) for e in self.edges],
        }

    def to_json(self, **kwargs: object) -> str:
        return json.dumps(self.to_dict(), **kwargs)
