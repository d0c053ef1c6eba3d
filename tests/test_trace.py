"""Tracing: leaf fallback for untraceable submodules, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import group_with
from torch import nn

import fxprune


class Gate(nn.Module):
    """Data-dependent control flow: symbolic tracing cannot follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Conv2d(3, 4, 1), Gate(), nn.Conv2d(4, 2, 1)
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gate(self.a(x)) + 0) + self.b(self.c(x))


class RootBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.mean() > 0:  # the model itself branches on data: nothing to make a leaf
            return y
        return -y


def test_untraceable_submodule_becomes_a_leaf_with_its_channels_frozen() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(1, 3, 4, 4))
    (leaf,) = [n for n in gm.graph.nodes if "fxprune.leaf" in n.meta]
    assert leaf.target == "gate"
    assert "test_trace.py" in leaf.meta["fxprune.leaf"].reason
    graph = fxprune.analyze(gm)
    frozen = group_with(graph, "a.weight", 0)
    assert not frozen.prunable
    assert "submodule 'gate' made a leaf" in frozen.reason
    assert group_with(graph, "c.weight", 0).prunable


def test_untraceable_model_raises_trace_error_naming_the_line() -> None:
    with pytest.raises(fxprune.TraceError) as info:
        fxprune.trace(RootBranch(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "RootBranch" in message and "test_trace.py" in message
    assert "torch.where" in message  # says what to do


@pytest.mark.parametrize(
    ("model", "inputs", "match"),
    [
        (lambda x: x, torch.randn(1, 3), "must be a torch.nn.Module"),
        (nn.Conv2d(3, 4, 1), [1, 2, 3], "sequence of tensors"),
        (nn.Conv2d(3, 4, 1), (torch.randn(1, 3, 4, 4), torch.randn(1)), "takes 1 inputs, 2 were given"),
        (nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(1, 5, 4, 4), r"node %_0 .* failed"),
    ],
)
def test_bad_input_is_rejected_before_any_work(model: object, inputs: object, match: str) -> None:
    with pytest.raises(fxprune.InputError, match=match):
        fxprune.trace(model, inputs)


def test_analyze_wants_a_traced_graph_module() -> None:
    with pytest.raises(fxprune.InputError, match="fxprune.trace"):
        fxprune.analyze(nn.Conv2d(3, 4, 1))
    with pytest.raises(fxprune.InputError, match="no shapes"):
        fxprune.analyze(torch.fx.symbolic_trace(nn.Conv2d(3, 4, 1)))


def test_trace_does_not_touch_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    gm = fxprune.trace(model, torch.randn(2, 3, 4, 4) + 5)
    assert torch.equal(gm.get_submodule("1").running_mean, before)
    assert gm.training


def test_shapes_are_recorded_on_every_node() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(2, 3, 5, 5))
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["a"] == (2, 4, 5, 5)
    assert shapes["b"] == (2, 2, 5, 5)
