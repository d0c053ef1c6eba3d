"""Shared test helpers: a literal, comparable summary of a ChannelGraph."""

from __future__ import annotations

import fxprune


def summary(graph: fxprune.ChannelGraph) -> dict[frozenset[str], tuple[int, bool, bool]]:
    """{parameter slices of a group ("name:dim"): (channels, prunable, exact)}."""
    return {
        frozenset(f"{m.param}:{m.dim}" for m in g.params): (g.channels, g.prunable, g.exact)
        for g in graph.groups
    }


def group_with(graph: fxprune.ChannelGraph, param: str, dim: int) -> fxprune.ChannelGroup:
    (group,) = {g for g in graph.groups for m in g.params if (m.param, m.dim) == (param, dim)}
    return group


def member(group: fxprune.ChannelGroup, param: str, dim: int) -> fxprune.Member:
    (found,) = [m for m in group.params if (m.param, m.dim) == (param, dim)]
    return found
