"""Capture with torch.export: the groups symbolic tracing finds, and surgery that holds."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_equivalent, summary
from models import MODELS, NO_EXACT_GROUP, build
from test_trace import WithGate
from torch import nn

import fxprune
from fxprune.passes.plan import random_request

# Where the two captures see different programs, and why.
DIFFERENT = {
    # symbolic tracing keeps the fx.wrap'd function one opaque call; torch.export inlines it
    "frozen",
    # one nn.MultiheadAttention module, whose head_dim follows the width, when traced
    # symbolically; exported, its ops (linear, view into heads, sdpa) prune head dims alone
    "tokens",
    # nn.LSTM exports as one aten.lstm over its flat weights, which the table does not know
    "recurrent",
}


def _groups(graph: fxprune.ChannelGraph) -> dict:
    """The groups, less frozen single channels: a conv with one output channel holds them in
    its module's weight, but a bare parameter dim of size one holds no atoms."""
    return {k: v for k, v in summary(graph).items() if v[0] > 1 or v[1]}


@pytest.mark.parametrize("name", sorted(set(MODELS) - DIFFERENT))
def test_both_captures_give_the_same_groups(name: str) -> None:
    model, x = build(name)
    symbolic = fxprune.trace(model, x, capture="symbolic")
    exported = fxprune.trace(model, x, capture="export")
    assert symbolic.meta["fxprune.capture"] == "symbolic"
    assert exported.meta["fxprune.capture"] == "export"
    assert any(str(n.target).startswith("aten.") for n in exported.graph.nodes)
    assert _groups(fxprune.analyze(exported)) == _groups(fxprune.analyze(symbolic))


@pytest.mark.parametrize("name", sorted(set(MODELS) - NO_EXACT_GROUP - {"recurrent"}))
def test_an_exported_graph_prunes_to_the_zeroed_function(name: str) -> None:
    model, x = build(name)
    gm = fxprune.trace(model, x, capture="export")
    graph = fxprune.analyze(gm)
    remove = random_request(graph, 0.4, 0, exact_only=True)
    assert remove
    assert_equivalent(fxprune.prune_channels(gm, graph, remove),
                      fxprune.zero_channels(gm, graph, remove), x)
    every = fxprune.prune_channels(gm, graph, random_request(graph, 0.5, 0))
    with torch.no_grad():
        assert every(x).shape == gm(x).shape


class _Counts(nn.Module):
    """len() of a tensor: symbolic tracing cannot follow it, torch.export can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * len(x)


class _WithCounts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.counts, self.b = nn.Conv2d(3, 4, 1), _Counts(), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.counts(self.a(x)))


def test_auto_traces_symbolically_where_that_works() -> None:
    model, x = build("residual")
    assert fxprune.trace(model, x).meta["fxprune.capture"] == "symbolic"


def test_auto_exports_where_symbolic_tracing_leaves_a_submodule_opaque() -> None:
    x = torch.randn(2, 3, 4, 4)
    with_leaf = fxprune.trace(_WithCounts(), x, capture="symbolic")
    assert [n.target for n in with_leaf.graph.nodes if "fxprune.leaf" in n.meta] == ["counts"]
    gm = fxprune.trace(_WithCounts(), x)
    assert gm.meta["fxprune.capture"] == "export (symbolic tracing left 1 submodules opaque)"
    graph = fxprune.analyze(gm)
    assert [g.channels for g in graph.prunable] == [4]  # a's outputs: no longer frozen


def test_auto_keeps_the_leaves_where_export_fails_too() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(1, 3, 4, 4))  # branches on values
    assert gm.meta["fxprune.capture"] == "symbolic"
    assert [n.target for n in gm.graph.nodes if "fxprune.leaf" in n.meta] == ["gate"]


def test_an_unknown_capture_is_refused() -> None:
    with pytest.raises(fxprune.InputError, match="capture must be one of auto, symbolic, export"):
        fxprune.trace(nn.Conv2d(3, 4, 1), torch.randn(1, 3, 4, 4), capture="jit")


def test_an_exported_slim_graph_exports_to_onnx(tmp_path: object) -> None:
    model, x = build("residual")
    gm = fxprune.trace(model, x, capture="export")
    graph = fxprune.analyze(gm)
    slim = fxprune.prune_channels(gm, graph, random_request(graph, 0.5, 0))
    report = fxprune.export_onnx(slim, x, tmp_path / "slim.onnx")  # checked at two batch sizes
    assert report.max_abs_diff < 1e-4


class _Conv1D(nn.Module):
    """transformers' Conv1D (GPT-2): addmm with a weight stored input-major."""

    def __init__(self, nx: int, nf: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.randn(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.shape[-1]), self.weight)
        return out.view(*x.shape[:-1], -1)


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.proj = _Conv1D(3, 6), _Conv1D(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.gelu(self.fc(x)))


@pytest.mark.parametrize("capture", ["symbolic", "export"])
def test_addmm_weights_are_pruned_like_a_linear(capture: str) -> None:
    x = torch.randn(2, 5, 3)
    gm = fxprune.trace(_Mlp(), x, capture=capture)
    graph = fxprune.analyze(gm)
    assert _groups(graph) == {
        frozenset({"fc.weight:1", "fc.bias:0", "proj.weight:0"}): (6, True, True),
        frozenset({"proj.weight:1", "proj.bias:0"}): (2, False, True),
    }
    remove = random_request(graph, 0.5, 0)
    assert_equivalent(fxprune.prune_channels(gm, graph, remove),
                      fxprune.zero_channels(gm, graph, remove), x)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_pytorch_transformer_layers_are_traced_through_and_prune(layer: str) -> None:
    """nn.TransformerEncoder/DecoderLayer's fast-path checks branch on tensor properties;
    traced through (not kept whole as fx keeps torch.nn modules), they leave no leaf."""
    torch.manual_seed(0)
    if layer == "encoder":
        body = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True), 2)
    else:
        body = nn.TransformerDecoderLayer(16, 4, 24, batch_first=True)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.memory = nn.Linear(8, 16), nn.Linear(8, 16)
            self.body, self.head = body, nn.Linear(16, 3)

        def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            x = self.embed(x)
            return self.head(self.body(x) if layer == "encoder" else self.body(x, self.memory(m)))

    model, inputs = Net().eval(), (torch.randn(2, 5, 8), torch.randn(2, 3, 8))
    gm = fxprune.trace(model, inputs)
    assert gm.meta["fxprune.capture"] == "symbolic"
    assert not any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), type(body))
                   for n in gm.graph.nodes)
    graph = fxprune.analyze(gm)
    ffn = [g for g in graph.prunable if g.channels == 24]
    assert len(ffn) == (2 if layer == "encoder" else 1) and all(g.exact for g in ffn)
    # the residual stream (and the decoder's memory) goes with nn.MultiheadAttention's head
    # dims, 4 of them here
    (hidden,) = [g for g in graph.prunable if any(m.param == "embed.weight" for m in g.params)]
    assert hidden.channels == 4
    assert any(m.param == "memory.weight" for m in hidden.params) == (layer == "decoder")
    remove = {g.id: [0] for g in ffn}
    with torch.no_grad():
        torch.testing.assert_close(fxprune.prune_channels(gm, graph, remove)(*inputs),
                                   fxprune.zero_channels(gm, graph, remove)(*inputs))
        # inexact (LayerNorm, the 1/sqrt(head_dim) scale), but it prunes: 12 of 16 wide
        slim = fxprune.prune_channels(gm, graph, {hidden.id: [1]})
        assert slim(*inputs).shape == (2, 5, 3)
        assert slim.get_submodule("embed").out_features == 12
