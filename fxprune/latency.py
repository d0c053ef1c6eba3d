"""Latency as a pruning target: how a model's measured latency moves with its groups' widths.

`latency_table` measures it on the deployment backend itself. A plan (a width per prunable
group, each a multiple of `step`, the block size of the backend's fast kernels) is made real
by surgery, written with `export_onnx` and timed in onnxruntime, its runs alternating with
the unpruned model's, so a machine that slows down for a while slows both sides alike.

Random plans, all groups moving at once, fit the table. Removing a share r of a group's
channels saves ``a * r`` ms, and two groups that meet in a layer (one's channels in, the
other's out) save ``c * r * s`` more: a layer costs about in x out, so its saving is not the
sum of each side's. Groups whose members have equal shapes (the blocks of one stage) share
their coefficients, so a few dozen timed plans fit a ResNet-50. More random plans, held out,
say how well the table predicts (`LatencyTable.checks`).

`plan_latency` chooses channels for a latency. It is greedy over the table: each step removes
the channels that cost the least score per millisecond saved, to a multiple of `step`.
`meet_latency` then times the plan itself and moves the table's target until the measured
latency meets the real one, each move scaled by how far the table was off.

The table is cached in a JSON file. The key covers the model (its graph and shapes), the
backend, device, batch, step, sampling and library versions. The file is rewritten after
every timed plan, so a killed run resumes where it stopped; `remembered` keeps the timings of
a search's plans the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxprune import atomic
from fxprune.errors import ExportError, InputError, as_input_tuple, first_line
from fxprune.graph import ChannelGraph, ChannelGroup
from fxprune.passes.analyze import analyze
from fxprune.passes.plan import piece_keepers
from fxprune.passes.slim import prune_channels
from fxprune.target import best_index, bracket
from fxprune.trace import trace

log = logging.getLogger(__name__)
BACKENDS = ("onnxruntime",)
CACHE_FORMAT = 5  # part of the cache key: a change in how models are timed starts afresh
# how far apart two timings of a search must be for their slope to count: the same ViT-B/16
# plan measured 146.8 and 155.2 ms (10 pairs each, on two shared cores)
NOISE = 0.05


@dataclass(frozen=True)
class Timing:
    """One timed model: the median milliseconds of a run, and the spread of the runs
    (interquartile range over the median: 0.02 means the middle half lies within 2%)."""

    ms: float
    spread: float


Timer = Callable[[nn.Module, tuple[torch.Tensor, ...]], Timing]


class OnnxRuntimeTimer:
    """Time models as they are deployed, against `reference` (the unpruned model): each is
    written with `export_onnx` (legacy exporter, parity checked) and run in onnxruntime on
    random inputs at `batch`, its runs alternating with the reference's. A model's time is
    the reference's (timed once, at the start) times the median ratio of paired runs, so a
    machine that slows down for a while slows both sides of every pair alike. Idle worker
    threads do not spin (`ort_session`), or each session would slow the other.

    Each model is timed over `repeats` pairs, or more where that takes under `min_ms` of the
    reference's runs: a run of a tenth of a millisecond is mostly waking threads, and ten
    pairs of such a model timed against itself can come out a third slow, where a thousand
    agree within about 1% (``python benchmarks/latency_target.py --timer-check``)."""

    def __init__(self, reference: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 *, batch: int = 1, device: str = "cpu", warmup: int = 3,
                 repeats: int = 10, min_ms: float = 50.0) -> None:
        from fxprune.export.deploy import at_batch

        self.device, self.warmup = device, warmup
        self.folder = tempfile.TemporaryDirectory(prefix="fxprune-latency-")  # goes with self
        self.feed = at_batch(as_input_tuple(example_inputs), batch)
        self.reference = self._session(reference, as_input_tuple(example_inputs), "reference")
        for _ in range(warmup):
            self.reference()
        first = [self.reference() for _ in range(2 * repeats)]
        self.repeats = max(repeats, math.ceil(min_ms / max(statistics.median(first), 1e-6)))
        rest = [self.reference() for _ in range(2 * (self.repeats - repeats))]
        self.base_ms = statistics.median(first + rest)

    def __call__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Timing:
        run = self._session(model, inputs, "candidate")
        for _ in range(self.warmup):
            run()
            self.reference()
        ratios = [run() / self.reference() for _ in range(self.repeats)]
        q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        return Timing(self.base_ms * median, (q3 - q1) / median)

    def _session(self, model: nn.Module, inputs: tuple[torch.Tensor, ...],
                 name: str) -> Callable[[], float]:
        from fxprune.export.deploy import ort_session
        from fxprune.export.onnx import export_onnx

        path = Path(self.folder.name) / f"{name}.onnx"
        try:
            export_onnx(model, inputs, path, exporter="legacy")
        except ExportError as exc:  # a graph captured by torch.export (a Hugging Face model)
            log.info("the legacy exporter fails (%s); exporting with torch.export", first_line(exc))
            export_onnx(model, inputs, path)
        return ort_session(path, self.feed, device=self.device, spinning=False)


def preferred_step(device: str = "cpu") -> int:
    """The channel multiple the backend's fast kernels want. onnxruntime's CPU convolutions
    work on blocks of 16 channels with AVX-512 and of 8 otherwise (MLAS's NCHWc layout), and
    CUDA's tensor cores on multiples of 8. On an AVX-512 machine, tables of DigitsNet at batch
    256 predicted held-out plans within 8% at multiples of 16 and within 23-37% at multiples
    of 8 (same plans timed)."""
    if device.startswith("cuda"):
        return 8
    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


@dataclass(frozen=True, kw_only=True)
class Curve:
    """What removing a share r of one group's channels saves on its own: ``a * r``
    milliseconds, `a` fitted for its `kind` (the groups whose members have equal shapes)."""

    group: int
    channels: int
    kind: int
    a: float
    least: int  # the fewest channels the group can keep (one per member that holds a share)
    step: int  # its widths' multiple: every tensor it spans then a multiple of the table's step


@dataclass(frozen=True, kw_only=True)
class Pair:
    """Two groups meeting in a layer (one's channels in, the other's out): removing shares
    r and s saves ``c * r * s`` more (c < 0: the layer's saving is not counted twice)."""

    groups: tuple[int, int]
    kind: tuple[int, int]
    c: float


@dataclass(frozen=True)
class Check:
    """A held-out plan: its widths, the table's prediction and the measured latency."""

    widths: dict[int, int]
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured: negative where the table promises too much."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True, kw_only=True)
class LatencyTable:
    """Measured latency of a model as its groups' widths change (see the module docstring)."""

    key: str
    backend: str
    device: str
    batch: int
    step: int
    full_ms: float
    spread: float  # of the paired runs of the full model
    curves: dict[int, Curve]
    pairs: tuple[Pair, ...]
    checks: tuple[Check, ...]
    timed: int  # models timed to build the table
    # the plans' kept widths also a multiple of it (`--round-to`); not timed, so set it with
    # `dataclasses.replace` on a built table
    round_to: int = 1

    def widths(self, group: int) -> list[int]:
        """The widths a plan may give `group`: multiples of its curve's step (every width for
        a group of at most that many channels) and of `round_to`, from its least, and its full
        width."""
        curve = self.curves[group]
        step = math.lcm(curve.step if curve.channels > curve.step else 1, self.round_to)
        start = max(step, -(-curve.least // step) * step)
        return [*range(start, curve.channels, step), curve.channels]

    def predict(self, widths: Mapping[int, int]) -> float:
        """Predicted milliseconds with each group at its width (the rest at full width)."""
        r = {g: 1 - w / self.curves[g].channels for g, w in widths.items()}
        return (self.full_ms - sum(self.curves[g].a * x for g, x in r.items())
                - sum(p.c * r.get(p.groups[0], 0.0) * r.get(p.groups[1], 0.0) for p in self.pairs))

    def error(self) -> float | None:
        """Mean absolute relative error of the prediction on the held-out plans."""
        if not self.checks:
            return None
        return float(np.mean([abs(c.error) for c in self.checks]))

    def to_markdown(self) -> str:
        lines = [f"latency table: {self.backend} on {self.device}, batch {self.batch}: full "
                 f"model {self.full_ms:.3g} ms (spread {self.spread:.1%}), {len(self.curves)} "
                 f"groups, {self.timed} models timed",
                 "", "| groups | channels | ms saved on its own at 1/4, 1/2, 3/4 removed |",
                 "|---|---:|---|"]
        kinds: dict[int, list[Curve]] = {}
        for curve in self.curves.values():
            kinds.setdefault(curve.kind, []).append(curve)
        for curves in kinds.values():
            saved = ", ".join(f"{curves[0].a * r:.3g}" for r in (0.25, 0.5, 0.75))
            names = ", ".join(str(c.group) for c in curves)
            lines.append(f"| {names} | {curves[0].channels} | {saved} |")
        if self.checks:
            lines += ["", f"held-out plans: mean |predicted - measured| / measured = "
                      f"{self.error():.1%} over {len(self.checks)}"]
        return "\n".join(lines)


def latency_table(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    graph: ChannelGraph | None = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    batch: int = 1,
    step: int | None = None,
    samples: int | None = None,
    checks: int = 4,
    repeats: int = 10,
    cache: str | os.PathLike[str] | bool = True,
    timer: Timer | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyTable:
    """Time `model` as its prunable groups' widths change (see the module docstring).

    `samples` random plans (by default 8 more than twice the coefficients) fit the curves;
    `checks` more, held out, say how well they predict. Widths are multiples of `step`
    (by default `preferred_step`).
    `timer` replaces the backend (tests pass a deterministic one); an `OnnxRuntimeTimer`
    passed in is put on the table's scale (its reference takes the table's full time), so
    plans timed with it later compare with the table. `cache`: a folder, True
    for ``$XDG_CACHE_HOME/fxprune/latency`` (``~/.cache`` by default), or False. `progress`
    is called with (models timed, models to time) after each.
    """
    if timer is None and backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r} "
                         "(or pass timer= to time the models yourself)")
    step = preferred_step(device) if step is None else step
    if batch < 1 or step < 1:
        raise InputError(f"batch and step must be at least 1, got {batch} and {step}")
    inputs = as_input_tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InputError("latency_table times models whose inputs are tensors (one per forward "
                         "argument); a list of images (a detector's) cannot be timed yet")
    gm = model if isinstance(model, torch.fx.GraphModule) else trace(model, inputs)
    graph = analyze(gm) if graph is None else graph
    kinds = _kinds(gm, graph)
    pairs = _pairs(graph, kinds)
    samples = samples if samples is not None else 2 * (len(set(kinds.values()))
                                                        + len({p.kind for p in pairs})) + 8
    key = _key(gm, inputs, backend, device, batch, step, samples, checks, seed)
    store = _Store(_cache_file(cache, key), key)
    total, done = 1 + samples + checks, 0

    def timed(name: str, widths: Mapping[int, int]) -> Timing:
        nonlocal done, timer
        timing = store.get(name)
        if timing is None:
            if timer is None:  # made at the first plan the cache lacks: it times the model
                timer = OnnxRuntimeTimer(gm, inputs, batch=batch, device=device, repeats=repeats)
            slim = prune_channels(gm, graph, removal_at(graph, widths))
            timing = timer(slim, inputs)
            store.put(name, timing)
        done += 1
        if progress is not None:
            progress(done, total)
        return timing

    full = timed("full", {})
    if isinstance(timer, OnnxRuntimeTimer):
        # its later timings on the table's scale, the reference taking the time the table
        # holds for it (from the cache, perhaps from a quieter or busier hour)
        timer.base_ms = full.ms
    shape = LatencyTable(
        key=key, backend=backend, device=device, batch=batch, step=step, full_ms=full.ms,
        spread=full.spread, checks=(), timed=total, pairs=pairs,
        curves={g.id: Curve(group=g.id, channels=g.channels, kind=kinds[g.id], a=0.0,
                            least=_least(g), step=_channel_step(g, step))
                for g in graph.prunable})
    rng = np.random.default_rng(seed)
    plans = [{g: int(rng.choice(shape.widths(g))) for g in shape.curves}
             for _ in range(samples + checks)]
    measured = [timed(f"plan{i}", w).ms for i, w in enumerate(plans)]
    table = _fit(shape, plans[:samples], measured[:samples])
    held_out = tuple(Check(w, table.predict(w), m)
                     for w, m in zip(plans[samples:], measured[samples:]))
    return replace(table, checks=held_out)


def _fit(table: LatencyTable, plans: Sequence[Mapping[int, int]],
         measured: Sequence[float]) -> LatencyTable:
    """Least squares over the plans: the milliseconds each saved against, per kind, the sum
    of its groups' removed shares, and per kind of pair the sum of their products (a small
    ridge keeps a kind no plan moved at 0)."""
    singles = sorted({c.kind for c in table.curves.values()})
    doubles = sorted({p.kind for p in table.pairs})
    column = {k: i for i, k in enumerate([*singles, *doubles])}
    x = np.zeros((len(plans), len(column)))
    for row, widths in enumerate(plans):
        r = {g: 1 - w / table.curves[g].channels for g, w in widths.items()}
        for g, share in r.items():
            x[row, column[table.curves[g].kind]] += share
        for p in table.pairs:
            x[row, column[p.kind]] += r.get(p.groups[0], 0.0) * r.get(p.groups[1], 0.0)
    y = table.full_ms - np.asarray(measured)
    ridge = 1e-6 * max(float(np.mean(x * x)), 1e-12) * len(plans)
    coef = np.linalg.solve(x.T @ x + ridge * np.eye(len(column)), x.T @ y)
    return replace(
        table,
        curves={g: replace(c, a=float(coef[column[c.kind]])) for g, c in table.curves.items()},
        pairs=tuple(replace(p, c=float(coef[column[p.kind]])) for p in table.pairs))


def plan_latency(table: LatencyTable, scores: Mapping[int, np.ndarray], target_ms: float,
                 graph: ChannelGraph, *, slack: float = 0.05,
                 exact: int = 4096) -> dict[int, list[int]]:
    """The channels to remove so the table predicts at most `target_ms`: greedy, each step
    narrowing the group whose next width costs the least score per millisecond it saves
    (any narrower width, not only the next one: a few low scores may hide behind a high
    one), channels removed in ascending score order. Stops where no width saves more (the
    target may then be out of reach). `scores` must add up, over channels and over the
    parameters a channel holds: `Scorer.values` (squared norms), not norms.

    A step coarser than what is left to save (a narrow group in blocks of 16 channels saves a
    large share at once) would land far below the target:
    where a step takes the prediction under ``(1 - slack) * target_ms``, the plan finishes
    with the other groups instead if they land within that band, and takes the step
    otherwise.

    Where the groups' widths make at most `exact` combinations, the plan is the one of least
    score predicted at most `target_ms`, every combination tried: the greedy's plans are
    nested, and a few coarse groups leave cliffs between them (DigitsNet at batch 32, four
    groups of 2 to 4 widths: nested plans measured 0.62 and 0.84 of the original, nothing
    between, where the table predicts combinations all through that range)."""
    groups = [g for g in scores if g in table.curves]
    order, prefix, options = {}, {}, {}
    for g in groups:
        s = np.asarray(scores[g], dtype=np.float64)
        keep = piece_keepers(graph[g], s)
        order[g] = [c for c in np.argsort(s, kind="stable") if c not in keep]
        prefix[g] = np.concatenate([[0.0], np.cumsum(s[order[g]])])
        options[g] = table.widths(g)[:-1]
    neighbours: dict[int, list[tuple[int, float]]] = {g: [] for g in table.curves}
    for p in table.pairs:
        a, b = p.groups
        neighbours[a].append((b, p.c))
        neighbours[b].append((a, p.c))

    def share(width: dict[int, int], g: int) -> float:
        """The share of `g`'s channels removed (none for a group without scores)."""
        return 1 - width[g] / graph[g].channels if g in width else 0.0

    def cheapest(width: dict[int, int], g: int) -> tuple[float, int] | None:
        """The next width of `g` with the least score per share removed (the milliseconds a
        share saves are the same for every width of g, so this ranking holds until g moves)."""
        channels, spent = graph[g].channels, prefix[g][graph[g].channels - width[g]]
        found = None
        for w in reversed(options[g]):  # the nearest first: a tie keeps the smaller step
            if w >= width[g]:
                continue
            per_share = (prefix[g][channels - w] - spent) / (1 - w / channels - share(width, g))
            if found is None or per_share < found[0]:
                found = (per_share, w)
        return found

    floor = (1 - slack) * target_ms

    def greedy(width: dict[int, int], predicted: float, excluded: frozenset[int],
               lookahead: bool) -> float:
        """Narrow groups (not `excluded`) in `width` until the table predicts at most
        `target_ms`; returns the prediction. Where the best step would land below `floor`,
        a copy finishes without that group (one level deep) and is kept if it lands between
        the two."""
        best_width = {g: cheapest(width, g) for g in groups if g not in excluded}
        while predicted > target_ms:
            best = None
            for g, found in best_width.items():
                rate = table.curves[g].a + sum(c * share(width, h) for h, c in neighbours[g])
                if found is None or rate <= 0:  # rate: ms per share
                    continue
                ratio = found[0] / rate  # score per millisecond saved
                if best is None or ratio < best[0]:
                    best = (ratio, g, found[1], rate)
            if best is None:
                break
            _, g, w, rate = best
            after = predicted - rate * (1 - w / graph[g].channels - share(width, g))
            if lookahead and after < floor:
                trial = dict(width)
                finished = greedy(trial, predicted, excluded | {g}, lookahead=False)
                if floor <= finished <= target_ms:
                    width.update(trial)
                    return finished
            predicted, width[g] = after, w
            best_width[g] = cheapest(width, g)
        return predicted

    width = {g: graph[g].channels for g in groups}
    if math.prod(len(options[g]) + 1 for g in groups) <= exact:
        width = _cheapest_combination(table, groups, prefix, target_ms) or width
    else:
        greedy(width, table.full_ms, frozenset(), lookahead=True)
    return {g: sorted(int(c) for c in order[g][:graph[g].channels - width[g]])
            for g in groups if width[g] < graph[g].channels}


def _cheapest_combination(table: LatencyTable, groups: Sequence[int],
                          prefix: Mapping[int, np.ndarray], target_ms: float) -> dict[int, int] | None:
    """The widths of least removed score that the table predicts at most `target_ms`, every
    combination of the groups' widths tried; None where none is."""
    best = None
    for combo in itertools.product(*(table.widths(g) for g in groups)):
        width = dict(zip(groups, combo))
        if table.predict(width) > target_ms:
            continue
        spent = sum(prefix[g][table.curves[g].channels - w] for g, w in width.items())
        if best is None or spent < best[0]:
            best = (spent, width)
    return None if best is None else best[1]


@dataclass(frozen=True)
class Met:
    """What `meet_latency` chose: the removal, its measured and predicted latency, and every
    (table target, measured) probe it made."""

    removed: dict[int, list[int]]
    measured_ms: float
    predicted_ms: float
    probes: tuple[tuple[float, float], ...]


def meet_latency(table: LatencyTable, scores: Mapping[int, np.ndarray], target_ms: float,
                 graph: ChannelGraph, measure: Callable[[dict[int, list[int]]], float], *,
                 steps: int = 6, tolerance: float = 0.03) -> Met:
    """`plan_latency` at a table target moved until the measured latency (`measure` of a
    removal, in ms) is at most `target_ms` and within `tolerance` of it, or `steps` plans were
    timed; the plan kept is the closest at or under the target, else the closest.

    Each probe aims at the middle of that band. The first trusts the table; the second divides
    the aim by how far the table's prediction of the first was off (a factor near one: ViT-B/16's
    first plan measured 7% under); the next follow the secant of measured against predicted
    through the two probes nearest the aim, where those stay inside the bracket the probes
    give. Where timing noise puts it past the bracket (a narrower plan measured slower), the
    bracket's bound is scaled by its own miss; only where that fails too is it bisected."""
    probes: list[tuple[float, float]] = []
    plans = []
    hi = table.full_ms
    aim = target_ms * (1 - tolerance / 2)
    predictions = []  # the table's, of each probe's plan
    while len(probes) < steps:
        x = aim if not probes else _next_table_target(probes, predictions, target_ms, aim, hi)
        removed = plan_latency(table, scores, x, graph)
        measured = measure(removed)
        predicted = table.predict({g: graph[g].channels - len(c) for g, c in removed.items()})
        probes.append((x, measured))
        predictions.append(predicted)
        plans.append(removed)
        if target_ms * (1 - tolerance) <= measured <= target_ms:
            break
    i = best_index(probes, target_ms)
    return Met(plans[i], probes[i][1], predictions[i], tuple(probes))


def _next_table_target(probes: Sequence[tuple[float, float]], predictions: Sequence[float],
                       target_ms: float, aim: float, hi: float) -> float:
    """The table target of the next probe: where the secant through the two probes nearest the
    aim, measured against the table's prediction of each plan, meets the aim (a table that
    over-promises more the deeper the cut: MobileNet-v2 at batch 32 measured 77.7, 73.4, 72.1,
    71.3, 70.5 and 68.5 ms at table targets 66 down to 40, each step dividing the aim by the
    last plan's factor). With one probe, or two whose times differ by no more than the timer's
    noise (a slope from noise sent MobileNet-v2 at batch 32 from 97.3 and 96.8 ms to 71.6, for
    a target of 94), or two of the same prediction (one plan timed twice), the line goes through
    zero: the aim divided by the nearest plan's factor."""
    lo, up = bracket(probes, target_ms, 0.0, hi, rising=True)
    near = sorted(range(len(probes)), key=lambda i: abs(probes[i][1] - aim))
    p1, m1 = predictions[near[0]], probes[near[0]][1]
    guess = aim * p1 / m1 if m1 > 0 and p1 > 0 else lo
    if len(near) > 1:
        p2, m2 = predictions[near[1]], probes[near[1]][1]
        if abs(m1 - m2) > NOISE * aim and (m1 - m2) * (p1 - p2) > 0:  # a rising slope
            guess = p1 + (aim - m1) * (p1 - p2) / (m1 - m2)
    if not lo < guess < up:
        # timing noise (a plan measured slower than a wider one) put the guess past the
        # bracket: scale the bound's own table target by how far it missed, not halve to 0
        bound = up if guess >= up else lo
        measured = next((m for x, m in probes if x == bound), 0.0)
        guess = bound * aim / measured if measured > 0 else guess
    return guess if lo < guess < up else (lo + up) / 2


def remembered(measure: Callable[[dict[int, list[int]]], float], table: LatencyTable, *,
               cache: str | os.PathLike[str] | bool = True) -> Callable[[dict[int, list[int]]], float]:
    """`measure` (a removal's milliseconds) with each timing kept in a file beside the table's
    (`cache` as for `latency_table`), keyed by the table and the removal: a search killed
    part-way (ResNet-50 at batch 32 takes half a minute a plan) resumes without timing again,
    and a plan the search reaches twice keeps its first timing, not the luckier one."""
    key = f"{table.key}-plans"
    store = _Store(_cache_file(cache, key), key)

    def measure_once(removed: dict[int, list[int]]) -> float:
        plain = sorted((int(g), sorted(int(c) for c in chosen)) for g, chosen in removed.items())
        name = hashlib.sha256(json.dumps(plain).encode()).hexdigest()[:20]
        timing = store.get(name)
        if timing is None:
            timing = Timing(measure(removed), 0.0)
            store.put(name, timing)
        return timing.ms

    return measure_once


def removal_at(graph: ChannelGraph, widths: Mapping[int, int]) -> dict[int, list[int]]:
    """A removal leaving each group at its width (`widths`, as a table's plans give them): the
    highest channels go first, sparing those `piece_keepers` holds."""
    out = {}
    for g, w in widths.items():
        group = graph[g]
        if w >= group.channels:
            continue
        keep = piece_keepers(group)
        free = [c for c in range(group.channels - 1, -1, -1) if c not in keep]
        out[g] = sorted(free[:group.channels - w])
    return out


def latency_c(table: LatencyTable, c0: float, *, spread: float = 4.0) -> dict[int, float]:
    """Catalyst's c0 per group for a latency target: ``c0 - 1`` scaled by the milliseconds a
    channel of the group saves on its own against the average channel's (clipped to
    [1/spread, spread]), so the groups whose channels cost more start further toward
    pruning. The calibration then chooses c0 as it does for a MACs target."""
    rate = {g: max(curve.a, 0.0) / curve.channels for g, curve in table.curves.items()}
    channels = sum(curve.channels for curve in table.curves.values())
    mean = sum(max(curve.a, 0.0) for curve in table.curves.values()) / max(channels, 1)
    if mean <= 0:
        return dict.fromkeys(table.curves, c0)
    return {g: 1 + (c0 - 1) * float(np.clip(r / mean, 1 / spread, spread)) for g, r in rate.items()}


def parse_target(text: str) -> tuple[str, float]:
    """``"0.5"`` -> ("fraction", 0.5) of the original latency; ``"12ms"`` -> ("ms", 12.0)."""
    value = text.strip().lower()
    try:
        if value.endswith("ms"):
            ms = float(value[:-2])
            if ms > 0:
                return "ms", ms
        else:
            fraction = float(value)
            if 0 < fraction < 1:
                return "fraction", fraction
    except ValueError:
        pass
    raise InputError(f"a latency target is a fraction of the original latency in (0, 1) "
                     f"(0.5) or milliseconds (12ms), got {text!r}")


# --- the pieces ------------------------------------------------------------------------------


def _least(group: ChannelGroup) -> int:
    return max(1, len(piece_keepers(group)))


def _channel_step(group: ChannelGroup, step: int) -> int:
    """The fewest channels of `group` whose removal keeps every tensor it spans a multiple of
    `step` long. A channel spans one index of a conv's output, and twelve of ViT-B/16's hidden
    size (a head dimension, in each of its 12 heads): there, 4 channels make 48 indices, where
    16 (a quarter of the group, and of the model's latency) made steps too coarse to land on
    a target."""
    spans = {len(m.positions) // group.channels for m in group.members}
    return math.lcm(*(step // math.gcd(step, k) for k in spans if k > 0))


def _kinds(gm: torch.fx.GraphModule, graph: ChannelGraph) -> dict[int, int]:
    """Per prunable group, its kind: groups with members of equal shapes (the blocks of one
    stage) share their curve's coefficients."""
    shapes = {n.name: tuple(getattr(n.meta.get("tensor_meta"), "shape", ()) or ())
              for n in gm.graph.nodes}
    seen: dict[tuple, int] = {}
    out = {}
    for g in graph.prunable:
        signature = (g.channels, tuple(sorted(
            (graph.node_ops.get(m.node, ""), (m.param or "").rsplit(".", 1)[-1], m.dim,
             m.length, len(m.positions), m.role, shapes.get(m.node, ())) for m in g.members)))
        out[g.id] = seen.setdefault(signature, len(seen))
    return out


def _pairs(graph: ChannelGraph, kinds: Mapping[int, int]) -> tuple[Pair, ...]:
    """Prunable groups that meet in a node (a layer reading one and making the other)."""
    by_node: dict[str, list[int]] = {}
    for g in graph.prunable:
        for node in g.nodes:
            by_node.setdefault(node, []).append(g.id)
    met = sorted({(a, b) for ids in by_node.values() for a in ids for b in ids if a < b})
    return tuple(Pair(groups=(a, b), kind=tuple(sorted((kinds[a], kinds[b]))), c=0.0)
                 for a, b in met)


def _key(gm: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], *settings: object) -> str:
    import onnxruntime

    import fxprune

    h = hashlib.sha256(gm.code.encode())
    for name, p in (*gm.named_parameters(), *gm.named_buffers()):
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
    h.update(repr([(tuple(t.shape), t.dtype) for t in inputs]).encode())
    h.update(repr((CACHE_FORMAT, settings, torch.__version__, onnxruntime.__version__,
                   fxprune.__version__)).encode())
    return h.hexdigest()[:20]


def _cache_file(cache: str | os.PathLike[str] | bool, key: str) -> Path | None:
    if cache is False:
        return None
    if cache is True:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        cache = root / "fxprune" / "latency"
    return Path(cache) / f"{key}.json"


class _Store:
    """Timings by name, read from and written back to the cache file after each."""

    def __init__(self, path: Path | None, key: str) -> None:
        self.path, self.key, self.timings = path, key, {}
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
                if saved.get("key") == key:
                    self.timings = {k: Timing(*v) for k, v in saved["timings"].items()}
            except (OSError, ValueError, TypeError, KeyError):
                log.warning("ignoring the unreadable latency cache %s", path)

    def get(self, name: str) -> Timing | None:
        return self.timings.get(name)

    def put(self, name: str, timing: Timing) -> None:
        self.timings[name] = timing
        if self.path is not None:
            plain = {k: [t.ms, t.spread] for k, t in self.timings.items()}
            atomic.write_text(self.path, json.dumps({"key": self.key, "timings": plain}))
