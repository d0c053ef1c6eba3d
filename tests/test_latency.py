"""The latency target's logic on DigitsNet with a deterministic timing backend; real
onnxruntime timings are in benchmarks/latency_target.py only."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.app.job import Job, JobConfig
from fxprune.app.model_zoo import DigitsNet
from fxprune.baselines import Scorer
from fxprune.latency import (
    OnnxRuntimeTimer,
    Timing,
    latency_table,
    meet_latency,
    parse_target,
    plan_latency,
)

STEP = 8


def params_timer(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Timing:
    """1 us per parameter, and 0.5 ms more for every weight whose output count is not a
    multiple of STEP (a kernel off its fast path): a cost of layers, bilinear in widths."""
    ms = sum(p.numel() for p in model.parameters()) * 1e-3
    ms += sum(0.5 for p in model.parameters() if p.dim() > 1 and p.shape[0] % STEP)
    return Timing(ms, 0.0)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.fx.GraphModule, fxprune.ChannelGraph, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    gm = fxprune.trace(DigitsNet(width=64).eval(), x)
    return gm, fxprune.analyze(gm), x


def _table(digits, **kw: object) -> fxprune.latency.LatencyTable:
    gm, graph, x = digits
    return latency_table(gm, x, graph=graph, timer=kw.pop("timer", params_timer),
                         cache=kw.pop("cache", False), step=STEP, **kw)


def _widths(graph: fxprune.ChannelGraph, removed: dict[int, list[int]]) -> dict[int, int]:
    return {g.id: g.channels - len(removed.get(g.id, [])) for g in graph.prunable}


def test_the_table_predicts_held_out_plans_of_a_cost_of_layers(digits) -> None:
    table = _table(digits, checks=6)
    # each layer costs in x out: a sum of per-group terms and of products of the groups
    # meeting in a layer, which is what the table fits
    assert table.error() < 1e-3
    kinds = {c.kind for c in table.curves.values()} | {p.kind for p in table.pairs}
    assert len(table.checks) == 6 and table.timed == 1 + (2 * len(kinds) + 8) + 6
    assert all(curve.a > 0 for curve in table.curves.values())
    assert table.full_ms == pytest.approx(params_timer(digits[0], (digits[2],)).ms)
    assert "held-out plans" in table.to_markdown()


def test_plans_keep_widths_the_table_shows_fast_and_meet_the_measured_target(digits) -> None:
    gm, graph, x = digits
    table = _table(digits)
    scores = Scorer(gm, graph, "magnitude").values(gm)
    target = 0.5 * table.full_ms

    def measure(removed: dict[int, list[int]]) -> float:
        return params_timer(fxprune.prune_channels(gm, graph, removed), (x,)).ms

    met = meet_latency(table, scores, target, graph, measure, tolerance=0.03)
    assert 0.97 * target <= met.measured_ms <= target
    assert all(w % STEP == 0 for w in _widths(graph, met.removed).values())
    # the share of channels a MACs plan removes to reach the same latency: its widths fall
    # off the fast path, so it keeps fewer parameters
    share = next(s for s in np.arange(0.3, 0.95, 0.01)
                 if measure(Scorer(gm, graph, "magnitude").lowest(gm, s)) <= met.measured_ms)
    macs_plan = fxprune.prune_channels(gm, graph, Scorer(gm, graph, "magnitude").lowest(gm, share))
    latency_plan = fxprune.prune_channels(gm, graph, met.removed)
    assert fxprune.cost(latency_plan, x).params > fxprune.cost(macs_plan, x).params


def test_a_table_off_by_a_factor_is_met_within_three_timed_plans(digits) -> None:
    """Where every plan measures 8% slower than the table predicts, the next probe divides the
    aim by that factor: the band is met by the third timed plan (the second lands just under
    it, as plans move in blocks of channels), where halving the bracket took six."""
    gm, graph, _ = digits
    table = _table(digits)
    scores = Scorer(gm, graph, "magnitude").values(gm)
    target = 0.5 * table.full_ms

    def measure(removed: dict[int, list[int]]) -> float:
        return 1.08 * table.predict(_widths(graph, removed))

    met = meet_latency(table, scores, target, graph, measure, tolerance=0.03)
    assert 0.97 * target <= met.measured_ms <= target
    assert len(met.probes) <= 3 and met.probes[0][1] > target


def test_a_table_that_over_promises_more_the_deeper_the_cut_is_met_by_secant_steps(digits) -> None:
    """Where a plan saves a third of what the table promises (MobileNet-v2 at batch 32 saved
    less the deeper the cut), dividing the aim by the last plan's factor creeps toward the
    target; the secant through the two nearest probes meets it within six plans."""
    gm, graph, _ = digits
    table = _table(digits)
    scores = Scorer(gm, graph, "magnitude").values(gm)
    target = 0.75 * table.full_ms

    def measure(removed: dict[int, list[int]]) -> float:
        return table.full_ms - (table.full_ms - table.predict(_widths(graph, removed))) / 3

    met = meet_latency(table, scores, target, graph, measure, tolerance=0.03)
    assert 0.97 * target <= met.measured_ms <= target, met.probes


def test_a_noisy_timing_does_not_send_the_search_to_half_the_target(digits) -> None:
    """Timing noise can make a narrower plan measure slower than a wider one (MobileNet-v2 at
    batch 32). The next probe then scales the bracket's own bound, rather than halving a bracket
    that still reaches down to zero."""
    gm, graph, _ = digits
    table = _table(digits)
    scores = Scorer(gm, graph, "magnitude").values(gm)
    target = 0.5 * table.full_ms
    noise = iter([1.10, 1.13, 1.30])  # the third plan, narrower, measures slower than the second

    def measure(removed: dict[int, list[int]]) -> float:
        return next(noise, 1.10) * table.predict(_widths(graph, removed))

    met = meet_latency(table, scores, target, graph, measure, tolerance=0.03)
    assert min(m for _, m in met.probes) > 0.75 * target  # halving went to 0.46 of it
    assert 0.9 * target <= met.measured_ms <= target  # and ended at 0.80


def test_a_plan_reached_twice_with_two_timings_does_not_stop_the_search(digits) -> None:
    """A target out of the table's reach gives the same plan at every table target; timed
    without `remembered`, its timings differ by noise while its prediction does not. That is no
    slope to follow (it divided by zero)."""
    gm, graph, _ = digits
    table = _table(digits)
    scores = Scorer(gm, graph, "magnitude").values(gm)
    noise = iter([1.0, 1.2, 1.1, 1.3, 1.0, 1.2])

    def measure(removed: dict[int, list[int]]) -> float:
        return next(noise) * table.predict(_widths(graph, removed))

    met = meet_latency(table, scores, 0.01 * table.full_ms, graph, measure)
    assert len(met.probes) == 6  # every plan timed; none met the target


def test_the_plan_removes_what_costs_least_score_per_millisecond(digits) -> None:
    gm, graph, x = digits
    table = _table(digits)
    cheap = max(table.curves, key=lambda g: table.curves[g].a / graph[g].channels)
    scores = {g: np.full(graph[g].channels, 1.0 if g == cheap else 100.0) for g in table.curves}
    removed = plan_latency(table, scores, 0.97 * table.full_ms, graph)
    assert list(removed) == [cheap]
    # equal scores: the plan narrows by one step at a time, not in one jump to the floor
    flat = {g: np.ones(graph[g].channels) for g in table.curves}
    removed = plan_latency(table, flat, table.full_ms - 1e-6, graph)
    assert [len(v) for v in removed.values()] == [STEP]
    # channels go in ascending score order
    scores[cheap] = np.arange(graph[cheap].channels, dtype=float)
    removed = plan_latency(table, scores, 0.97 * table.full_ms, graph)
    assert removed[cheap] == sorted(removed[cheap]) == list(range(len(removed[cheap])))


class _Killed(Exception):
    pass


def test_the_table_is_cached_and_a_killed_build_resumes(digits, tmp_path: Path) -> None:
    calls = []

    def timer(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Timing:
        if len(calls) == 5:
            raise _Killed
        calls.append(1)
        return params_timer(model, inputs)

    with pytest.raises(_Killed):
        _table(digits, timer=timer, cache=tmp_path)
    del calls[:]

    def counted(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Timing:
        calls.append(1)
        return params_timer(model, inputs)

    resumed = _table(digits, timer=counted, cache=tmp_path)
    assert len(calls) == resumed.timed - 5
    del calls[:]
    again = _table(digits, timer=counted, cache=tmp_path)
    assert not calls and again == resumed
    assert again == _table(digits)


@pytest.fixture(scope="module")
def tiny_vit() -> tuple[torch.fx.GraphModule, fxprune.ChannelGraph, torch.Tensor]:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    gm = fxprune.trace(VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=4,
                                         hidden_dim=64, mlp_dim=128).eval(), x)
    return gm, fxprune.analyze(gm), x


def test_a_channel_spanning_several_indices_moves_in_smaller_steps(tiny_vit) -> None:
    """A ViT's hidden size is a group of head-dim channels, each spanning one index per head
    (and three per head in the q/k/v projection): 2 of them make 8 indices of every tensor."""
    gm, graph, x = tiny_vit
    table = latency_table(gm, x, graph=graph, timer=params_timer, cache=False, step=STEP)
    hidden, mlp = sorted(graph.prunable, key=lambda g: g.channels)
    assert (hidden.channels, mlp.channels) == (16, 128)
    assert table.widths(hidden.id) == list(range(2, 17, 2))
    assert table.widths(mlp.id) == list(range(8, 129, 8))
    for member in hidden.members:  # every tensor the hidden size spans stays a multiple of 8
        span = len(member.positions) // hidden.channels
        assert all(w * span % STEP == 0 for w in table.widths(hidden.id)), member


def test_catalyst_keeps_the_widths_the_table_offers_each_group(tiny_vit) -> None:
    """Catalyst's decisions round each group up to its table's widths: the ViT's hidden size
    to a multiple of 2 channels (8 indices), where a flat multiple of 16 (the job's rounding
    before: the step of a CPU with AVX-512) kept all 16."""
    gm, graph, x = tiny_vit
    table = latency_table(gm, x, graph=graph, timer=params_timer, cache=False, step=STEP)
    hidden, mlp = sorted(graph.prunable, key=lambda g: g.channels)
    pruner = fxprune.CatalystPruner(gm, x)
    c = {g: np.full(graph[g].channels, 0.5) for g in (hidden.id, mlp.id)}
    c[hidden.id][:11] = np.linspace(1.5, 2.5, 11)  # 5 kept: 6 is the table's next width
    c[mlp.id][:101] = 2.0  # 27 kept: 32
    pruner.ratios = lambda: c
    widths = {g: table.widths(g) for g in table.curves}
    kept = {g: graph[g].channels - len(v) for g, v in pruner.decisions(widths=widths).items()}
    assert kept == {hidden.id: 6, mlp.id: 32}
    flat = pruner.decisions(round_to=16)
    assert hidden.id not in flat and len(flat[mlp.id]) == 128 - 32
    # the channel given back is the pruned one with the lowest c
    assert pruner.decisions(widths=widths)[hidden.id] == list(range(1, 11))


def test_the_job_keeps_round_to_under_a_latency_target(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fxprune.app.job.OnnxRuntimeTimer", lambda *a, **kw: params_timer)
    monkeypatch.setattr("fxprune.latency.preferred_step", lambda device: STEP)
    cfg = JobConfig(method="magnitude", target_latency="0.6", round_to=3, pretrain_epochs=1,
                    finetune_epochs=0, out=str(tmp_path))
    report = Job(cfg).run()
    changed = [after for before, after in report["channels"].values() if after != before]
    assert changed and all(after % 24 == 0 for after in changed)  # lcm(3, STEP)


@pytest.mark.parametrize(("capability", "device", "step"),
                         [("AVX512", "cpu", 16), ("AVX2", "cpu", 8), ("AVX512", "cuda", 8)])
def test_the_step_follows_the_fast_kernels_block(capability: str, device: str, step: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert fxprune.latency.preferred_step(device) == step


@pytest.mark.parametrize(("text", "parsed"), [("0.5", ("fraction", 0.5)), ("12ms", ("ms", 12.0)),
                                               (" 3.5 MS", ("ms", 3.5))])
def test_latency_targets_read_as_a_fraction_or_milliseconds(text: str, parsed: tuple) -> None:
    assert parse_target(text) == parsed


@pytest.mark.parametrize("text", ["1.5", "0", "fast", "-2ms", "ms"])
def test_a_bad_latency_target_says_what_to_write(text: str) -> None:
    with pytest.raises(fxprune.InputError, match=r"\(0.5\) or milliseconds \(12ms\)"):
        parse_target(text)


def test_an_unknown_backend_or_a_list_input_is_refused(digits) -> None:
    gm, graph, x = digits
    with pytest.raises(fxprune.InputError, match="backend must be one of onnxruntime"):
        latency_table(gm, x, backend="tensorrt")
    with pytest.raises(fxprune.InputError, match="a detector's"):
        latency_table(gm, ([x[0], x[0]],), timer=params_timer)


def test_the_job_meets_a_latency_target_and_reports_it(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fxprune.app.job.OnnxRuntimeTimer", lambda *a, **kw: params_timer)
    monkeypatch.setattr("fxprune.latency.preferred_step", lambda device: STEP)  # not the CPU's
    cfg = JobConfig(method="magnitude", target_latency="0.6", pretrain_epochs=1,
                    finetune_epochs=0, out=str(tmp_path))
    report = Job(cfg).run()
    latency = report["latency"]
    assert latency["target_ms"] == pytest.approx(0.6 * latency["before_ms"])
    # DigitsNet's 32-channel groups move in steps of a quarter: within 10%, not 3%
    assert 0.9 * latency["target_ms"] <= latency["after_ms"] <= latency["target_ms"]
    assert "onnxruntime latency, cpu, batch 1" in (tmp_path / "report.md").read_text()
    assert any((tmp_path / "latency").iterdir())  # the table's cache, for a resumed job


def test_catalyst_meets_a_latency_target_by_choosing_c(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fxprune.app.job.OnnxRuntimeTimer", lambda *a, **kw: params_timer)
    monkeypatch.setattr("fxprune.latency.preferred_step", lambda device: STEP)
    cfg = JobConfig(target_latency="0.5", pretrain_epochs=2, opt1_epochs=4, finetune_epochs=0,
                    out=str(tmp_path))
    report = Job(cfg).run()
    probes = report["calibration"]
    assert len(probes) == 4 and report["target_latency"] == pytest.approx(0.5)
    for before, after in zip(probes, probes[1:]):  # bisection on c0
        assert (after["c"] > before["c"]) == (before["fraction"] > 0.5)
    chosen = next(p for p in probes if p["c"] == report["chosen_c"])
    latency = report["latency"]
    assert latency["after_ms"] == pytest.approx(chosen["fraction"] * latency["before_ms"])
    # the model the job wrote runs at the latency the calibration measured
    slim = fxprune.load(tmp_path / "model.pt2")
    assert params_timer(slim, ()).ms == pytest.approx(latency["after_ms"])
    assert latency["after_ms"] < latency["before_ms"]
    # Catalyst's kept widths are the table's, as the baselines' are
    assert all(after % STEP == 0 or after == before for before, after in report["channels"].values())


def test_groups_whose_channels_cost_more_start_further_toward_pruning(digits) -> None:
    table = _table(digits)
    c = fxprune.latency.latency_c(table, 1.2)
    per_channel = {g: curve.a / curve.channels for g, curve in table.curves.items()}
    ranked = sorted(per_channel, key=per_channel.get)
    assert [c[g] for g in ranked] == sorted(c.values())
    assert all(1.05 - 1e-9 <= v <= 1.8 + 1e-9 for v in c.values())  # c0 - 1 scaled within 4x
    assert fxprune.latency.latency_c(table, 1.0) == dict.fromkeys(table.curves, 1.0)


def test_the_onnxruntime_timer_takes_a_graph_captured_by_torch_export() -> None:
    """The timer writes files with the fast legacy exporter, which cannot take a graph captured
    by torch.export (a Hugging Face model's): those go through torch.export's exporter. Only
    that a time comes back is checked; how long is the benchmark's business."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    gm = fxprune.trace(model, x, capture="export")
    graph = fxprune.analyze(gm)
    timer = OnnxRuntimeTimer(gm, x, batch=2, warmup=1, repeats=2)
    slim = fxprune.prune_channels(gm, graph, {graph.prunable[0].id: [0, 1]})
    timing = timer(slim, (x,))
    assert timer.base_ms > 0 and timing.ms > 0


def test_a_fast_model_is_timed_over_more_pairs() -> None:
    """Runs of a fraction of a millisecond are mostly waking threads: the timer takes as many
    pairs as make `min_ms` of the reference's runs, and never fewer than `repeats`."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(2, 8)
    assert OnnxRuntimeTimer(model, x, warmup=1, repeats=3, min_ms=0).repeats == 3
    timer = OnnxRuntimeTimer(model, x, warmup=1, repeats=3, min_ms=100)
    assert timer.repeats >= 20 and timer.repeats >= 50 / timer.base_ms  # a run takes well under 5 ms


def test_a_coarse_last_step_gives_way_to_finer_groups_that_land_on_the_target(digits) -> None:
    """The group the scores favour saves most per step: its next step would land far under
    the target, so the plan finishes with the other groups (slack=1 turns that off)."""
    gm, graph, x = digits
    table = _table(digits)

    def step_ms(g: int) -> float:
        return table.curves[g].a * STEP / graph[g].channels

    coarse = max(table.curves, key=step_ms)
    scores = {g: np.full(graph[g].channels, 1.0 if g == coarse else 50.0) for g in table.curves}
    target = table.full_ms - 0.1 * step_ms(coarse)  # a tenth of one coarse step to save

    def predicted(removed: dict[int, list[int]]) -> float:
        return table.predict(_widths(graph, removed))

    greedy = plan_latency(table, scores, target, graph, slack=1.0)
    assert list(greedy) == [coarse] and predicted(greedy) < 0.95 * target
    fine = plan_latency(table, scores, target, graph)
    assert coarse not in fine
    assert 0.95 * target <= predicted(fine) <= target


@pytest.mark.parametrize(("method", "power"), [("magnitude", 2), ("group-lasso", 2), ("l1", 1),
                                              ("slimming", 1)])
def test_a_plans_values_add_up_where_a_norm_would_not(digits, method: str, power: int) -> None:
    """A knapsack's values must add: the squared norm over a channel's parameters, not the
    norm (which weighs a channel spanning k layers sqrt(k) layers' worth); sums stay sums."""
    gm, graph, _ = digits
    scorer = Scorer(gm, graph, method)
    values = scorer.values(gm)
    with torch.no_grad():
        for g, s in scorer.scores(gm).items():
            np.testing.assert_allclose(values[g], s.double().numpy() ** power, rtol=1e-6)
            assert list(np.argsort(values[g], kind="stable")) == list(np.argsort(s.numpy(), kind="stable"))


def test_a_searchs_timings_are_remembered_so_a_killed_search_resumes(digits, tmp_path: Path) -> None:
    gm, graph, _ = digits
    table = _table(digits)
    calls = []

    def measure(removed: dict[int, list[int]]) -> float:
        calls.append(removed)
        return 1.0 + len(calls)

    plans = [{}, {graph.prunable[0].id: [0, 1]}, {graph.prunable[0].id: [1, 0]}]
    first = fxprune.latency.remembered(measure, table, cache=tmp_path)
    assert [first(p) for p in plans] == [2.0, 3.0, 3.0]  # the same removal in another order
    again = fxprune.latency.remembered(measure, table, cache=tmp_path)  # a resumed run
    assert [again(p) for p in plans] == [2.0, 3.0, 3.0] and len(calls) == 2
    other = fxprune.latency.remembered(measure, _table(digits, seed=1), cache=tmp_path)
    assert other(plans[0]) == 4.0  # another table (here: other plans) times afresh


def test_a_model_of_few_width_combinations_gets_the_cheapest_one_under_the_target() -> None:
    """DigitsNet(width=16) at steps of 8: 2 x 2 x 4 x 4 combinations, all tried. The plan is
    the one of least removed score predicted under the target, where the greedy's nested
    plans can only stop at the cliffs between them."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    gm = fxprune.trace(DigitsNet(width=16).eval(), x)
    graph = fxprune.analyze(gm)
    table = latency_table(gm, x, graph=graph, timer=params_timer, cache=False, step=STEP)
    scores = {g: np.random.default_rng(g).random(graph[g].channels) for g in table.curves}
    spans = [table.widths(g) for g in table.curves]
    assert np.prod([len(s) for s in spans]) == 64
    closer = 0
    for fraction in np.linspace(0.35, 0.95, 13):
        target = fraction * table.full_ms
        removed = plan_latency(table, scores, target, graph)
        widths = _widths(graph, removed)
        assert table.predict(widths) <= target
        lost = sum(scores[g][c].sum() for g, c in removed.items())
        # the oracle: every combination, the least score lost (each group's lowest first)
        best = min(sum(np.sort(scores[g])[:graph[g].channels - w].sum() for g, w in zip(table.curves, combo))
                   for combo in itertools.product(*spans)
                   if table.predict(dict(zip(table.curves, combo))) <= target)
        assert lost == pytest.approx(best)
        greedy = plan_latency(table, scores, target, graph, exact=0)
        closer += table.predict(widths) > table.predict(_widths(graph, greedy)) + 1e-9
    assert closer > 0  # somewhere the combination lands nearer the target than the greedy
