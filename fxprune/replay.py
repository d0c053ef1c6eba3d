"""Slim against zeroed where the graph holds opaque calls: compare what those calls read.

A detector's graph calls opaque code (proposal selection, NMS, postprocessing; see
`fxprune.trace`) whose results depend on values: a tiny difference can change which boxes it
keeps, so the final outputs of a slim and a zeroed model are a fragile comparison. What the
opaque calls read (the heads' outputs before box decoding and NMS, the images, the boxes) is
not: `compare_opaque_inputs` runs the reference graph, then the other one with the
reference's opaque results in place of its own, and compares every float tensor each opaque
call reads. Reads the ``fxprune.leaf`` node meta; writes nothing.
"""

from __future__ import annotations

import math

import torch
import torch.fx
from torch.utils._pytree import tree_leaves

from fxprune.trace import LEAF_KEY, _Run


class _Replay(_Run):
    """Runs a graph and records the float tensors each opaque call reads; given the results
    of another run, its opaque calls return those instead of running."""

    def __init__(self, gm: torch.fx.GraphModule, given: dict[str, object] | None = None) -> None:
        super().__init__(gm)
        self.given, self.results = given, {}
        self.reads: dict[str, list[torch.Tensor]] = {}

    def run_node(self, n: torch.fx.Node) -> object:
        if LEAF_KEY not in n.meta:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)  # plain lists and dicts (`_Run`)
        self.reads[n.name] = [t for t in tree_leaves((args, kwargs))
                              if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if self.given is not None:
            return self.given[n.name]
        self.results[n.name] = getattr(self, n.op)(n.target, args, kwargs)
        return self.results[n.name]


def compare_opaque_inputs(gm: torch.fx.GraphModule, reference: torch.fx.GraphModule,
                          example_inputs: tuple[object, ...]) -> dict[str, float]:
    """{"node[i]": how far the i-th float tensor that opaque call `node` reads in `gm` is from
    the same in `reference`, relative to the reference's largest value}, both run on
    `example_inputs` with the reference's opaque results. ``inf`` where the shapes differ, or
    (key "node") where the call reads a different number of tensors. Empty where `reference`
    has no opaque call; the two graphs must name their opaque calls alike (a slim graph and
    the zeroed one from the same analysis do)."""
    with torch.no_grad():
        want = _Replay(reference)
        want.run(*example_inputs)
        got = _Replay(gm, want.results)
        got.run(*example_inputs)
    found: dict[str, float] = {}
    for name, reads in want.reads.items():
        theirs = got.reads.get(name, [])
        if len(theirs) != len(reads):
            found[name] = math.inf
            continue
        for i, (a, b) in enumerate(zip(theirs, reads, strict=True)):
            if a.shape != b.shape:
                found[f"{name}[{i}]"] = math.inf
            elif b.numel():
                found[f"{name}[{i}]"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            else:
                found[f"{name}[{i}]"] = 0.0
    return found
