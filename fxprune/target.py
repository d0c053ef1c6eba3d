"""Meeting a target by bisection or interpolation: which x to try next, and which tried x to keep.

A *probe* is one measurement ``(x, value)`` of a quantity that moves one way as x grows: the
MACs kept fall as the share of channels removed grows, or as Catalyst's c0 grows, and rise with
a keep fraction (``rising=True``). A probe *meets* the target when its value is at or under it.

The functions are stateless over the list of probes made so far: the next probe depends on
those alone. So a caller whose probes are expensive and persisted (the job's c0 calibration,
one complete training run per probe) resumes the search exactly where it stopped, and a cheap
search is the loop `bisect`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from fxprune.errors import InputError


class Probe(NamedTuple):
    """One measurement: `value` at `x`."""

    x: float
    value: float


def bracket(probes: Sequence[tuple[float, float]], target: float, lo: float, hi: float, *,
            rising: bool = False) -> tuple[float, float]:
    """The tightest ``(lo, hi)`` that `probes` give around the x meeting `target` exactly.

    Value falling as x grows (the default): a probe over the target raises lo, one at or under
    it lowers hi, so hi is the smallest x seen to meet the target (the bound itself when none
    did). ``rising=True``: the reverse, and lo is the largest x seen to meet it.
    """
    for x, value in probes:
        if (value > target) != rising:
            lo = max(lo, x)
        else:
            hi = min(hi, x)
    return lo, hi


def next_probe(probes: Sequence[tuple[float, float]], target: float, lo: float, hi: float, *,
               rising: bool = False) -> float:
    """The x to measure next: the midpoint of `bracket`."""
    lo, hi = bracket(probes, target, lo, hi, rising=rising)
    return (lo + hi) / 2


def best_index(probes: Sequence[tuple[float, float]], target: float) -> int:
    """Which probe to keep: one meeting the target if any does, then the closest to it; the
    earliest among equals (a later probe must be strictly better to replace it)."""
    if not probes:
        raise InputError("best_index needs at least one probe: measure one first")
    return min(range(len(probes)), key=lambda i: (probes[i][1] > target, abs(probes[i][1] - target)))


def bisect(measure: Callable[[float], float], target: float, lo: float, hi: float, steps: int, *,
           rising: bool = False) -> list[Probe]:
    """Measure `steps` probes in ``[lo, hi]``, each at `next_probe` of those before; returns
    them in the order measured (choose one with `best_index` or `bracket`)."""
    probes: list[Probe] = []
    for _ in range(steps):
        x = next_probe(probes, target, lo, hi, rising=rising)
        probes.append(Probe(x, measure(x)))
    return probes


def next_interpolated(probes: Sequence[tuple[float, float]], target: float, lo: float, hi: float,
                      *, at_lo: float) -> float:
    """The x to measure next for a positive value that falls about exponentially as x grows:
    where the line through the log values of the probes around the target crosses
    log(target). `at_lo` is the value at `lo`, known without measuring (Catalyst at c0 = 1
    keeps everything). With no probe at or under the target yet, the line through the last two
    points over it is extended, up to halfway to `hi`. Each step stays a tenth of the bracket
    away from its ends, so a curve far from exponential still narrows it.
    """
    points = sorted([(lo, at_lo), *probes])
    under = [p for p in points if p[1] <= target]
    # a noisy measure (latency) can put a probe over the target right of one under it: the
    # bracket is the nearest over-target point left of the first under-target one
    over = [p for p in points if p[1] > target and (not under or p[0] < under[0][0])]
    left = over[-1] if over else (lo, at_lo)
    if under:
        right = under[0]
        slope = (math.log(max(right[1], 1e-12)) - math.log(left[1])) / (right[0] - left[0])
        x = left[0] + (math.log(target) - math.log(left[1])) / slope if slope < 0 else None
        margin = 0.1 * (right[0] - left[0])
        return (left[0] + right[0]) / 2 if x is None else min(max(x, left[0] + margin), right[0] - margin)
    ceiling = (left[0] + hi) / 2
    if len(over) < 2:
        return ceiling
    (x0, v0), (x1, v1) = over[-2], over[-1]
    slope = (math.log(v1) - math.log(v0)) / (x1 - x0)
    if slope >= 0:
        return ceiling
    return min(x1 + (math.log(target) - math.log(v1)) / slope, ceiling)
