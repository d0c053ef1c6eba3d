"""Meeting a target by bisection (fxprune.target): the probes made, the bracket, the choice."""

from __future__ import annotations

import math

import pytest

from fxprune.errors import InputError
from fxprune.target import Probe, best_index, bisect, bracket, next_interpolated, next_probe


def _falling(x: float) -> float:
    """MACs kept against the share removed: a staircase, as rounding to whole channels gives."""
    return 1.0 - int(x * 20) / 20


def test_the_first_probe_is_the_middle_of_the_bounds() -> None:
    assert next_probe([], 0.5, 0.0, 0.95) == 0.475
    assert bracket([], 0.5, 1.0, 2.0) == (1.0, 2.0)


def test_a_probe_over_the_target_raises_lo_and_one_under_lowers_hi() -> None:
    # value falling as x grows: 0.6 > 0.5 needs a larger x, 0.4 <= 0.5 allows a smaller one
    assert bracket([(0.3, 0.6), (0.7, 0.4)], 0.5, 0.0, 1.0) == (0.3, 0.7)
    assert next_probe([(0.3, 0.6), (0.7, 0.4)], 0.5, 0.0, 1.0) == pytest.approx(0.5)
    # a probe exactly at the target meets it
    assert bracket([(0.7, 0.5)], 0.5, 0.0, 1.0) == (0.0, 0.7)
    # probes outside the bracket do not widen it
    assert bracket([(0.1, 0.9), (0.9, 0.1), (0.2, 0.8)], 0.5, 0.0, 1.0) == (0.2, 0.9)


def test_rising_values_swap_the_sides() -> None:
    # MACs kept against a keep fraction: over the target needs a smaller x
    assert bracket([(0.8, 0.6), (0.4, 0.3)], 0.5, 0.3, 1.0, rising=True) == (0.4, 0.8)


def test_bisect_halves_the_bracket_towards_the_target() -> None:
    probes = bisect(_falling, 0.5, 0.0, 0.95, 12)
    assert [p.x for p in probes[:3]] == pytest.approx([0.475, 0.7125, 0.59375])
    assert [p.value for p in probes[:3]] == pytest.approx([0.55, 0.3, 0.45])
    lo, hi = bracket(probes, 0.5, 0.0, 0.95)
    assert _falling(hi) <= 0.5 < _falling(lo) and hi - lo == pytest.approx(0.95 / 2 ** 12)
    # hi is the smallest share measured that meets the target: 10 steps of 0.05 removed
    assert hi == min(p.x for p in probes if p.value <= 0.5) and hi >= 0.5


def test_bisect_on_a_rising_value_finds_the_largest_x_that_meets() -> None:
    probes = bisect(lambda x: x * x, 0.25, 0.3, 1.0, 10, rising=True)
    lo, hi = bracket(probes, 0.25, 0.3, 1.0, rising=True)
    assert lo * lo <= 0.25 < hi * hi and lo == pytest.approx(0.5, abs=1e-3)


def test_a_target_no_probe_meets_leaves_the_bound() -> None:
    probes = bisect(lambda x: 1.0, 0.5, 0.0, 0.95, 5)
    assert bracket(probes, 0.5, 0.0, 0.95)[1] == 0.95
    assert all(later.x > earlier.x for earlier, later in zip(probes, probes[1:]))


def test_the_best_probe_meets_the_target_first_then_is_closest() -> None:
    probes = [Probe(1.2, 0.55), Probe(1.6, 0.30), Probe(1.4, 0.48), Probe(1.3, 0.51)]
    assert best_index(probes, 0.5) == 2  # 0.48 meets; 0.51 is closer but over
    assert best_index(probes[:1] + probes[3:], 0.5) == 1  # none meets: the closest, 0.51
    assert best_index([(1.0, 0.4), (2.0, 0.4)], 0.5) == 0  # equals: the earliest stays


def test_no_probe_is_an_error() -> None:
    with pytest.raises(InputError, match="at least one probe"):
        best_index([], 0.5)


def _kept(c: float) -> float:
    """What a steep c0 keeps (not quite exponential): all at 1, a third near 1.07."""
    return math.exp(-40.0 * (c - 1.0) ** 1.3)


def test_interpolation_meets_a_steep_target_where_bisection_overshoots() -> None:
    target = 1 / 3
    probes = [(1.05, _kept(1.05))]
    for _ in range(3):
        x = next_interpolated(probes, target, 1.0, 2.0, at_lo=1.0)
        probes.append((x, _kept(x)))
    best = probes[best_index(probes, target)]
    assert 0.9 * target <= best[1] <= target
    halved = [(1.05, _kept(1.05))]
    for _ in range(3):
        x = next_probe(halved, target, 1.0, 2.0)
        halved.append((x, _kept(x)))
    assert halved[best_index(halved, target)][1] < 0.5 * target  # bisection's four: far under


def test_interpolation_stays_inside_the_bracket_on_any_curve() -> None:
    probes = [(1.2, 0.51), (1.6, 0.01)]  # a cliff past 1.2: the log line aims at 1.202
    assert next_interpolated(probes, 0.5, 1.0, 2.0, at_lo=1.0) == pytest.approx(1.24)
    assert next_interpolated([(1.3, 0.95)], 0.5, 1.0, 2.0, at_lo=0.9) == 1.65  # rising: halfway


def test_interpolation_brackets_with_the_nearest_over_target_probe_left_of_the_first_under() -> None:
    # noise: 1.09 measured under the target, 1.1 over it again
    probes = [(1.05, 0.7), (1.09, 0.45), (1.1, 0.52)]
    x = next_interpolated(probes, 0.5, 1.0, 2.0, at_lo=1.0)
    assert 1.05 < x < 1.09
