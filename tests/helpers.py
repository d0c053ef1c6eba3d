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


def assert_equivalent(a: object, b: object, x: object, *, rtol: float = 1e-5) -> None:
    """Two models give the same output on `x`, to `rtol` relative to the output's scale."""
    import torch

    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert out_a.shape == out_b.shape
    scale = out_b.abs().max().clamp_min(1e-12)
    diff = (out_a - out_b).abs().max() / scale
    assert diff <= rtol, f"outputs differ by {float(diff):.3g} (relative), more than {rtol}"


def count_params(model: object) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_prunes_to_the_zeroed_function(gm: object, graph: fxprune.ChannelGraph, x: object,
                                         out_shape: tuple[int, ...], *, exact: bool = True) -> None:
    """30% of every exact group removed at random gives the zeroed original, and a smaller
    model; 30% of every prunable group removed runs, smaller, with the original output shape.
    ``exact=False``: the model has no exact prunable group, asserted, so nothing to compare."""
    import torch

    from fxprune.passes.plan import random_request

    if exact:
        request = random_request(graph, 0.3, 0, exact_only=True)
        assert any(request.values()), "nothing to compare slim and zeroed on"
        slim = fxprune.prune_channels(gm, graph, request)
        assert_equivalent(slim, fxprune.zero_channels(gm, graph, request), x)
        assert count_params(slim) < count_params(gm)
    else:
        assert not any(g.prunable and g.exact for g in graph.groups)
    everything = fxprune.prune_channels(gm, graph, random_request(graph, 0.3, 1))
    with torch.no_grad():
        out = everything(x)
    assert tuple(out.shape) == tuple(out_shape) and torch.isfinite(out).all()
    assert count_params(everything) < count_params(gm)
