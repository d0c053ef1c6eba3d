"""Catalyst: insertion, the regulariser's recursion, and lossless pruning on a real task."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import assert_equivalent, group_with
from models import MODELS, NO_PRUNABLE_GROUP, build
from torch import nn
from torch.utils.data import DataLoader

import fxprune
from fxprune.app.datasets import digits
from fxprune.app.model_zoo import DigitsNet
from fxprune.app.training import accuracy, train_epoch
from fxprune.passes import catalyst as catalyst_pass
from fxprune.passes.catalyst import (
    _sites,
    catalyst_penalty,
    catalysts,
    insert_catalysts,
    strip_catalysts,
)
from fxprune.pruner import CatalystPruner, spearman

# --- 1. the extended model at initialisation is the original ------------------------------


# target="bn" catalyses only groups holding a norm layer's per-channel parameters: BatchNorm
# (residual's two groups), GroupNorm and InstanceNorm (norms' two), LayerNorm (channels_last's
# stem group; its MLP group has none), a BatchNorm2d subclass that calls F.batch_norm
# (subclassed's first group), and bare parameters passed to F.batch_norm and F.group_norm
# (functional's two groups; an RMS norm written out of a mean is no norm layer); the
# generators' BatchNorms after a viewed linear and a transposed conv (dcgan's two), a U-Net's
# first level, and a diffusion block's GroupNorms (its residual stream and its inner width).
NORM_GROUPS = {"residual": 2, "norms": 2, "channels_last": 1, "subclassed": 1, "functional": 2,
               "generator": 1, "dcgan": 2, "unet": 1, "diffusion_block": 2}
EXTENDED = [(n, t) for n in sorted(set(MODELS) - NO_PRUNABLE_GROUP) for t in ("group", "full")] + [
    (n, "bn") for n in sorted(NORM_GROUPS)]


@pytest.mark.parametrize(("name", "target"), EXTENDED)
def test_extended_tiny_models_equal_the_original(name: str, target: str) -> None:
    model, x = build(name)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    extended = insert_catalysts(gm, graph, c=1.3, target=target, inexact=True)
    # catalysts are there to be checked: one per prunable group that a layer makes (not the
    # features of a table held as a buffer), or per group with a norm layer
    made = [g for g in graph.prunable if _sites(gm, g)]
    expected = NORM_GROUPS[name] if target == "bn" else len(made)
    assert len(list(catalysts(extended))) == expected > 0
    with torch.no_grad():
        torch.testing.assert_close(extended(x), gm(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bn_target_catalyses_only_groups_with_norm_parameters(name: str) -> None:
    model, x = build(name)
    gm = fxprune.trace(model, x)
    extended = insert_catalysts(gm, fxprune.analyze(gm), target="bn", inexact=True)
    assert len(list(catalysts(extended))) == NORM_GROUPS.get(name, 0)


@pytest.mark.parametrize("name", sorted(set(MODELS) - NO_PRUNABLE_GROUP))
def test_only_exact_groups_get_a_catalyst_unless_asked(name: str) -> None:
    model, x = build(name)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    made = {g.id for g in graph.prunable if _sites(gm, g)}
    exact = {g.id for g in graph.prunable if g.exact}
    assert {m.group for _, m in catalysts(insert_catalysts(gm, graph))} == made & exact
    assert {m.group for _, m in catalysts(insert_catalysts(gm, graph, inexact=True))} == made


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_b_16"])
def test_extended_torchvision_models_equal_the_original(name: str) -> None:
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    pruner = CatalystPruner(model, x, c=1.5)
    names = [n.name for n in pruner.model.graph.nodes if n.op == "call_module"
             and n.target.startswith("catalyst_")]
    assert names and "catalyst_" in pruner.model.code
    with torch.no_grad():
        torch.testing.assert_close(pruner.model(x), model(x), rtol=0, atol=1e-6)


class _EditsInPlace(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8)
        self.pool, self.head = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.bn2(self.conv2(x.mul_(2)))  # edits the first catalyst's output in place
        return self.head(self.pool(x).flatten(1))  # the second is only read


def test_outputs_edited_in_place_are_copied_and_the_others_are_views() -> None:
    torch.manual_seed(0)
    model = _EditsInPlace().train()
    pruner = CatalystPruner(model, torch.randn(2, 3, 8, 8), loss_gradient=True)
    views = {m.group: m.site_views for _, m in catalysts(pruner.model)}
    assert sorted(views.values()) == [[False], [True]]
    for net in (pruner.model, CatalystPruner(torchvision.models.resnet18(num_classes=4).train(),
                                             torch.randn(1, 3, 32, 32), loss_gradient=True).model):
        loss = net(torch.randn(4, 3, 32, 32)).square().mean()
        loss.backward()  # no "view modified in place" error anywhere
        found = [m for _, m in catalysts(net)]
        assert found and all(m.d.grad is not None for m in found)


def test_a_norm_layer_is_never_a_site_of_its_own() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.LayerNorm([4, 4]), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    pruner = CatalystPruner(model, torch.randn(2, 3, 8, 8))
    sites = {m.group: len(m.site_dims) for _, m in catalysts(pruner.model)}
    assert sites and all(n == 1 for n in sites.values()), sites  # the convs, not the norms


def test_catalysts_start_at_c_times_the_group_norm() -> None:
    model, x = build("residual")
    pruner = CatalystPruner(model, x, c=1.7)
    ratios = pruner.ratios()
    assert {len(c) for c in ratios.values()} == {8, 6}  # residual's two prunable groups
    for c in ratios.values():
        np.testing.assert_allclose(c, 1.7, rtol=1e-5)


def test_c0_may_be_given_per_channel() -> None:
    """A plan's channels can start past c = 1 and the rest far below it (benchmarks/minilm.py);
    the extended model still computes the original."""
    model, x = build("residual")
    base = fxprune.analyze(fxprune.trace(model, x))
    g = group_with(base, "a.0.weight", 0)  # 6 channels
    c0 = [1.2, 0.05, 0.05, 1.2, 0.05, 0.05]
    pruner = CatalystPruner(model, x, c={g.id: c0})
    np.testing.assert_allclose(pruner.ratios()[g.id], c0, rtol=1e-5)
    assert_equivalent(pruner.model, pruner.base, x)
    with pytest.raises(fxprune.InputError, match="c must be positive"):
        CatalystPruner(model, x, c={g.id: [1.2, 0.0, 1, 1, 1, 1]})


# --- 2. the regulariser alone follows the recursion, whatever the magnitude ----------------

LR, GAMMA, WD = 0.05, 0.04, 5e-3


def _penalty_only(scale: float, c0: float, steps: int = 60) -> np.ndarray:
    torch.manual_seed(0)
    model = DigitsNet(width=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    pruner = CatalystPruner(model, torch.randn(1, 1, 8, 8), c=c0, gamma=GAMMA)
    optimizer = torch.optim.SGD(pruner.model.parameters(), lr=LR, weight_decay=WD)
    history = []
    for _ in range(steps):
        history.append(np.concatenate(list(pruner.ratios().values())))
        optimizer.zero_grad()
        pruner.penalty().backward()
        optimizer.step()
    return np.array(history)


def _recursion(c0: float, steps: int) -> np.ndarray:
    alpha, lam, c = LR * WD, LR * GAMMA, [c0]
    for _ in range(steps - 1):
        c.append(((1 - alpha) * c[-1] - lam) / ((1 - alpha) - lam * c[-1]))
    return np.array(c)


@pytest.mark.parametrize("c0", [0.8, 1.0, 1.25])
def test_penalty_alone_follows_the_recursion(c0: float) -> None:
    history = _penalty_only(1.0, c0)
    expected = _recursion(c0, len(history))
    np.testing.assert_allclose(history, np.broadcast_to(expected[:, None], history.shape), rtol=1e-4)
    if c0 == 1.0:
        assert np.abs(history - 1).max() < 1e-4  # c = 1 is a fixed point
    elif c0 < 1:
        assert history[-1].max() < 0.95 * c0  # kept channels' c shrinks
    else:
        assert history[-1].min() > 1.05 * c0  # pruned channels' c grows


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_recursion_does_not_depend_on_magnitude(scale: float) -> None:
    base = _penalty_only(1.0, 1.25)
    np.testing.assert_allclose(np.log10(_penalty_only(scale, 1.25)), np.log10(base), atol=1e-3)


# --- 3-4. digits: lossless pruning, c as the sparsity knob ----------------------------------
# (how Catalyst's decisions correlate with the initial magnitude, against the baselines, is
# measured over seeds by benchmarks/catalyst_digits.py, not asserted here)


@pytest.fixture(scope="module")
def task() -> dict:
    torch.manual_seed(0)
    train, test = digits()
    loaders = {"train": DataLoader(train, batch_size=32, shuffle=True,
                                   generator=torch.Generator().manual_seed(0)),
               "test": DataLoader(test, batch_size=512)}
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 15)
    for _ in range(15):
        train_epoch(model, loaders["train"], optimizer)
        schedule.step()
    return {"model": model.eval(), "x": torch.randn(1, 1, 8, 8), **loaders}


def _opt1(task: dict, c: float, epochs: int) -> CatalystPruner:
    torch.manual_seed(1)
    pruner = CatalystPruner(copy.deepcopy(task["model"]), task["x"], c=c, gamma=0.02)
    optimizer = pruner.sgd(lr=0.02, momentum=0.9, weight_decay=5e-4)
    for _ in range(epochs):
        train_epoch(pruner.model, task["train"], optimizer, penalty=pruner.penalty)
        if pruner.converged():
            break
    return pruner


@pytest.fixture(scope="module")
def converged(task: dict) -> CatalystPruner:
    return _opt1(task, 1.2, 60)


def test_pruning_a_converged_model_is_lossless(task: dict, converged: CatalystPruner,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    pruner, x = converged, task["x"]
    assert pruner.converged()
    before = accuracy(pruner.model, task["test"])
    intermediate = pruner.prune()
    after = accuracy(intermediate, task["test"])
    d = pruner.diagnostics()
    assert d.margin >= 1e4, f"margin {d.margin:.3g}"
    kept, pruned = len(d.log10_c_kept), len(d.log10_c_pruned)
    assert repr(d).startswith("Diagnostics(converged: margin ")
    assert f"{kept} kept, {pruned} pruned" in repr(d) and len(repr(d)) < 200
    assert abs(before - after) <= 0.1, f"{before:.2f} -> {after:.2f}"
    assert list(catalysts(intermediate))  # D still present on the kept channels
    final = pruner.finalize()
    assert not list(catalysts(final)) and "catalyst" not in final.code
    assert fxprune.cost(pruner.base, x).macs >= 2 * fxprune.cost(final, x).macs
    assert abs(accuracy(final, task["test"]) - after) <= 0.1
    report = fxprune.export_onnx(final, x, tmp_path_factory.mktemp("onnx") / "final.onnx")
    assert report.max_abs_diff < 1e-4
    with pytest.raises(fxprune.ExportError, match="finish pruning first"):
        fxprune.export_onnx(intermediate, x, tmp_path_factory.mktemp("onnx") / "inter.onnx")


def test_a_larger_c_prunes_more(task: dict) -> None:
    shares = [float(np.mean(np.concatenate(list(_opt1(task, c, 12).ratios().values())) > 1))
              for c in (1.2, 1.5)]
    assert shares[1] > shares[0]


# --- 6. guards -------------------------------------------------------------------------------


def _set_ratios(pruner: CatalystPruner, wanted: dict[int, list[float]]) -> None:
    """Set D so that each listed group's channels have the given c = |D| / ||G||."""
    with torch.no_grad():
        for _, m in catalysts(pruner.model):
            if m.group in wanted:
                m.d.copy_(torch.tensor(wanted[m.group]) * m.magnitude(pruner.model))


def test_unconverged_prune_needs_force() -> None:
    model, x = build("residual")
    pruner = CatalystPruner(model, x, c=1.2)
    stem = group_with(pruner.graph, "stem.0.weight", 0).id
    a = group_with(pruner.graph, "a.0.weight", 0).id
    # stem: channels 0..2 kept (c < 1), the rest pruned; a: every c > 1, channel 4 the lowest
    _set_ratios(pruner, {stem: [0.5] * 3 + [1.2] * 5, a: [1.8, 1.7, 1.6, 1.5, 1.1, 1.9]})
    with pytest.raises(fxprune.PruneError, match="not converged"):
        pruner.prune()
    assert pruner.intermediate is None
    with pytest.warns(UserWarning, match=f"every channel of group {a} has c > 1; keeping channel 4"):
        intermediate = pruner.prune(force=True)
    assert pruner.removed == {stem: [3, 4, 5, 6, 7], a: [0, 1, 2, 3, 5]}
    assert intermediate.get_submodule("stem.0").out_channels == 3
    assert intermediate.get_submodule("a.0").out_channels == 1
    assert list(catalysts(intermediate))  # D is kept until finalize
    final = pruner.finalize()
    # forced pruning is plain removal: the trained model with those channels zeroed
    zeroed = fxprune.zero_channels(strip_catalysts(pruner.model), pruner.graph, pruner.removed)
    assert_equivalent(intermediate, zeroed, x)
    assert_equivalent(final, zeroed, x)
    with torch.no_grad():
        assert final(x).shape == model(x).shape


def test_a_group_never_loses_every_channel() -> None:
    model, x = build("residual")
    pruner = CatalystPruner(model, x, c=3.0)  # every channel starts with c > 1
    with pytest.warns(UserWarning, match="keeping channel"):
        pruner.prune(force=True)
    final = pruner.finalize()
    assert final.get_submodule("stem.0").out_channels == 1
    assert final.get_submodule("a.0").out_channels == 1
    with torch.no_grad():
        assert final(x).shape == model(x).shape


def test_a_too_large_step_is_warned_about() -> None:
    model, x = build("residual")
    pruner = CatalystPruner(model, x, c=1.2, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.sgd(lr=0.1, momentum=0.9)
    assert any("learning-rate condition" in str(w.message) for w in caught)


def test_penalty_is_differentiable_and_reaches_every_catalyst() -> None:
    model, x = build("concat")
    pruner = CatalystPruner(model, x)
    pruner.penalty().backward()
    found = [m for _, m in catalysts(pruner.model)]
    assert len(found) == 3  # concat's three prunable groups: a, b and c's outputs
    assert all(m.d.grad is not None and m.d.grad.abs().sum() > 0 for m in found)
    assert float(catalyst_penalty(pruner.model)) > 0


@pytest.mark.parametrize("target", ["group", "full"])
@pytest.mark.parametrize("name", ["residual", "concat", "shuffle", "grouped_conv", "norms", "tokens"])
def test_penalty_equals_the_sum_over_groups_of_d_times_the_group_norm(name: str, target: str) -> None:
    model, x = build(name)
    gm = CatalystPruner(model, x, c=1.3, inexact=True, target=target).model
    torch.manual_seed(0)
    with torch.no_grad():
        for _, m in catalysts(gm):
            m.d.mul_(torch.rand_like(m.d) + 0.5)  # D no longer proportional to ||G||
    found = [m for _, m in catalysts(gm)]
    assert found
    written_out = sum(float((m.d.abs() * m.magnitude(gm)).sum()) for m in found)
    assert float(catalyst_penalty(gm)) == pytest.approx(written_out, rel=1e-6)
    expected = torch.autograd.grad(sum((m.d.abs() * m.magnitude(gm)).sum() for m in found),
                                   list(gm.parameters()), allow_unused=True)
    got = torch.autograd.grad(catalyst_penalty(gm), list(gm.parameters()), allow_unused=True)
    for (pname, _), e, g in zip(gm.named_parameters(), expected, got):
        assert (e is None) == (g is None), pname
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=pname)


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("index", [[0, 1, 2, 3, 0, 1], None])  # 6 positions, 4 channels; identity
def test_catalyst_gradients_equal_the_written_out_formula(index: list[int] | None, view: bool) -> None:
    from fxprune.passes.catalyst import _Catalyse

    u = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    d = torch.rand(4 if index else 6, dtype=torch.float64, requires_grad=True)
    index = torch.tensor(index) if index else None
    weight = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    ours = (_Catalyse.apply(torch.relu(u), u, d, index, 1, view) * weight).sum()
    dd = d if index is None else d[index]
    formula = ((torch.relu(u) + (dd - dd.detach()).view(1, -1, 1, 1) * u) * weight).sum()
    assert float(ours.detach()) == float(formula.detach())
    for a, b in zip(torch.autograd.grad(ours, (u, d)), torch.autograd.grad(formula, (u, d))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3, 4], [0, 0, 1, 1], 2 / 5**0.5),  # ties take average ranks: 1.5, 1.5, 3.5, 3.5
        ([3, 1, 2], [1, 0, 1], 3**0.5 / 2),  # ranks (3, 1, 2) against (2.5, 1, 2.5)
    ],
)
def test_spearman_on_known_inputs(a: list[float], b: list[float], expected: float) -> None:
    assert spearman(np.array(a, float), np.array(b, float)) == pytest.approx(expected, abs=1e-12)


def test_spearman_is_nan_where_a_side_is_constant_or_too_short() -> None:
    assert np.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.zeros(3)))
    assert np.isnan(spearman(np.ones(3), np.array([1.0, 2.0, 3.0])))
    assert np.isnan(spearman(np.array([1.0]), np.array([0.0])))


def test_a_bn_target_on_a_model_without_norms_says_why_nothing_holds_a_catalyst() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match="target='bn' gives one only to groups with a norm"):
        pruner = CatalystPruner(model, torch.randn(2, 8), target="bn")
    with pytest.raises(fxprune.InputError, match="holds no catalyst"):
        pruner.penalty()


# --- the angular step (AngularStep) -----------------------------------------------------------


def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),  # row invariant
                         nn.Conv2d(8, 6, 3), nn.ReLU(),  # no norm: the loss's step is left alone
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.BatchNorm1d(5), nn.ReLU(),
                         nn.Linear(5, 2))


def test_only_rows_that_a_per_channel_norm_alone_reads_are_scale_invariant() -> None:
    pruner = CatalystPruner(_conv_bn_net(), torch.randn(2, 3, 8, 8))
    assert pruner.angular.dims == {"0.weight": 0, "6.weight": 0}
    assert [(r.bias, r.mean, r.scale) for r in pruner.angular.rows] == [
        ("0.bias", "1.running_mean", "1.weight"), ("6.bias", "7.running_mean", "7.weight")]
    assert CatalystPruner(_conv_bn_net(), torch.randn(2, 3, 8, 8), angular=False).angular is None


def test_the_angular_step_scales_the_loss_gradient_and_keeps_the_penalty_gradient() -> None:
    x = torch.randn(4, 3, 8, 8)
    plain = CatalystPruner(_conv_bn_net(), x, angular=False)
    angular = CatalystPruner(_conv_bn_net(), x)
    factor = torch.linspace(0.1, 2.0, 8).view(-1, 1, 1, 1)  # rows shrunk and grown since the start
    for pruner in (plain, angular):
        with torch.no_grad():
            pruner.model.get_parameter("0.weight").mul_(factor)
    params = dict(plain.model.named_parameters())
    loss = plain.model(x).square().mean()
    from_loss = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
    from_penalty = dict(zip(params, torch.autograd.grad(plain.penalty(), list(params.values()),
                                                        allow_unused=True)))
    (angular.model(x).square().mean() + angular.penalty()).backward()
    got = dict(angular.model.named_parameters())
    s = factor.square()
    torch.testing.assert_close(got["0.weight"].grad, s * from_loss["0.weight"] + from_penalty["0.weight"])
    s6 = (params["6.weight"].detach().norm(dim=1, keepdim=True)
          / angular.angular.start["6.weight"]).square()
    torch.testing.assert_close(s6, torch.ones_like(s6))
    for name in ("3.weight", "0.bias", "1.weight"):  # no scale-invariant row: the plain sum
        want = sum(g[name] for g in (from_loss, from_penalty) if g[name] is not None)
        torch.testing.assert_close(got[name].grad, want)
    # a backward without the penalty: the loss's gradient scaled, nothing left over
    angular.model.zero_grad()
    angular.model(x).square().mean().backward()
    torch.testing.assert_close(got["0.weight"].grad, s * from_loss["0.weight"])
    assert not angular.angular._apart


def test_the_full_target_adds_the_consumers_input_columns_to_g() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    x = torch.randn(2, 6)
    norms = {}
    for target in ("group", "full"):
        pruner = CatalystPruner(model, x, target=target)
        (catalyst,) = [m for _, m in catalysts(pruner.model)]
        norms[target] = catalyst.magnitude(pruner.model)
    fc1, fc2 = model[0], model[2]
    rows = fc1.weight.detach().square().sum(1) + fc1.bias.detach().square()
    torch.testing.assert_close(norms["group"], (rows + 1e-12).sqrt())
    torch.testing.assert_close(norms["full"], (rows + fc2.weight.detach().square().sum(0) + 1e-12).sqrt())


class _FunctionalBN(nn.Module):
    """A conv, then F.batch_norm on tensors of its own (as timm's norm-act layers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.weight, self.bias = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.register_buffer("running_mean", torch.randn(8))
        self.register_buffer("running_var", torch.rand(8) + 0.1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(self.conv(x), self.running_mean, self.running_var, self.weight,
                         self.bias, self.training, 0.1, 1e-3)
        return self.head(F.relu(y))


@pytest.mark.parametrize("functional", [False, True], ids=["module", "functional"])
def test_rescaled_rows_leave_the_function_in_eval_mode_unchanged(functional: bool) -> None:
    torch.manual_seed(0)
    model = _FunctionalBN() if functional else _conv_bn_net()
    x = torch.randn(4, 3, 8, 8)
    if not functional:  # running statistics of its own, not the defaults
        model.train()
        with torch.no_grad():
            model(x)
    gm = fxprune.trace(model.eval(), x)
    rows = catalyst_pass.scale_invariant(gm)
    assert [r.weight for r in rows] == (["conv.weight"] if functional else ["0.weight", "6.weight"])
    with torch.no_grad():
        for r in rows:  # rows shrunk unevenly, down to the thousandths opt1 leaves them at
            w = gm.get_parameter(r.weight)
            w.mul_(torch.logspace(-3, 0, w.shape[0]).view(-1, *[1] * (w.dim() - 1)))
        before = gm(x)
    catalyst_pass.rescale_rows(gm, rows, {r.weight: 2.0 for r in rows})
    for r in rows:
        norms = gm.get_parameter(r.weight).detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full_like(norms, 2.0))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), before, rtol=1e-4, atol=1e-5)
