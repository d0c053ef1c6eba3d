"""A Llama on the meta device (no weight in memory): traced, analysed, pruned and counted
without materialising a parameter, as `benchmarks/llm_scale.py` does at 8B. The expected
numbers are worked out by hand from the config below."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fxprune

tf = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="transformers")

# 2 layers, hidden 64, 8 query heads of 8 sharing 4 key-value heads (2 query heads each),
# FFN 160, vocabulary 128, lm_head not tied to the embedding.
CONFIG = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=4, head_dim=8, intermediate_size=160, tie_word_embeddings=False)
SEQ = 4
NO_CACHE = {"use_cache": False}


def _on_meta() -> tuple[nn.Module, torch.Tensor]:
    with torch.device("meta"):
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**CONFIG)).eval()
    return model, torch.zeros(1, SEQ, dtype=torch.long, device="meta")


@pytest.fixture(scope="module")
def traced() -> tuple[nn.Module, torch.fx.GraphModule, fxprune.ChannelGraph, torch.Tensor]:
    model, ids = _on_meta()
    gm = fxprune.trace(model, (ids,), example_kwargs=NO_CACHE, capture="export")
    return model, gm, fxprune.analyze(gm), ids


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers, and any other tensor a graph's get_attr node reads."""
    found = [*module.parameters(), *module.buffers()]
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            if node.op == "get_attr":
                value = module
                for part in node.target.split("."):
                    value = getattr(value, part)
                found.append(value)
    return [t for t in found if isinstance(t, torch.Tensor)]


def _by_param(group: fxprune.ChannelGroup) -> dict[tuple[str, int], np.ndarray]:
    return {(m.param.removeprefix("model.layers."), m.dim): np.asarray(m.index_map)
            for m in group.params}


# Hand count: embedding and lm_head 128 * 64 each, final norm 64; per layer q and o 64 * 64,
# k and v 32 * 64, gate/up/down 3 * 64 * 160, two norms 2 * 64.
PARAMS_BEFORE = 2 * 128 * 64 + 64 + 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 160 + 2 * 64)
# After one key-value head of 4 (with its 2 query heads) and 32 FFN neurons of 160 per layer:
# q and o 48 * 64, k and v 24 * 64, gate/up/down 3 * 64 * 128.
PARAMS_AFTER = 2 * 128 * 64 + 64 + 2 * (2 * 48 * 64 + 2 * 24 * 64 + 3 * 64 * 128 + 2 * 64)
# MACs on 4 tokens: every linear but the embedding lookup, per token (layers, then lm_head),
# plus attention's two products (scores, weighted values) over all 4 x 4 positions, per head.
MACS_BEFORE = SEQ * (2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 160) + 128 * 64) + 2 * 8 * 2 * SEQ * SEQ * 8
MACS_AFTER = SEQ * (2 * (48 * 64 * 2 + 24 * 64 * 2 + 3 * 64 * 128) + 128 * 64) + 2 * 6 * 2 * SEQ * SEQ * 8


def test_hand_counts_are_literal() -> None:
    """The expressions above, as numbers: a change to one of them shows here."""
    assert (PARAMS_BEFORE, PARAMS_AFTER) == (102_720, 84_288)
    assert (MACS_BEFORE, MACS_AFTER) == (380_928, 306_176)


def test_groups_on_meta(traced) -> None:
    model, gm, graph, _ = traced
    assert gm.meta["fxprune.capture"] == "export"
    assert all(t.is_meta for t in _tensors(model) + _tensors(gm))
    kv = [g for g in graph.groups if ("0.self_attn.k_proj.weight", 0) in _by_param(g)
          or ("1.self_attn.k_proj.weight", 0) in _by_param(g)]
    ffn = [g for g in graph.groups if ("0.mlp.gate_proj.weight", 0) in _by_param(g)
           or ("1.mlp.gate_proj.weight", 0) in _by_param(g)]
    assert [(g.channels, g.prunable, g.exact) for g in kv] == [(4, True, True)] * 2
    assert [(g.channels, g.prunable, g.exact) for g in ffn] == [(160, True, True)] * 2
    for layer, group in enumerate(kv):
        maps = _by_param(group)
        assert set(maps) == {(f"{layer}.self_attn.{p}.weight", d)
                             for p, d in (("q_proj", 0), ("k_proj", 0), ("v_proj", 0), ("o_proj", 1))}
        # key-value head i: its 8 key (and value) rows, and the 16 rows of query heads 2i, 2i+1
        np.testing.assert_array_equal(maps[f"{layer}.self_attn.k_proj.weight", 0], np.repeat(np.arange(4), 8))
        np.testing.assert_array_equal(maps[f"{layer}.self_attn.v_proj.weight", 0], np.repeat(np.arange(4), 8))
        np.testing.assert_array_equal(maps[f"{layer}.self_attn.q_proj.weight", 0], np.repeat(np.arange(4), 16))
        np.testing.assert_array_equal(maps[f"{layer}.self_attn.o_proj.weight", 1], np.repeat(np.arange(4), 16))
    for layer, group in enumerate(ffn):
        assert set(_by_param(group)) == {(f"{layer}.mlp.gate_proj.weight", 0),
                                         (f"{layer}.mlp.up_proj.weight", 0),
                                         (f"{layer}.mlp.down_proj.weight", 1)}
    # the hidden size (RMSNorm: prunable, not exact) and the vocabulary (the output: frozen)
    rest = sorted((g.channels, g.prunable, g.exact) for g in graph.groups if g not in kv + ffn)
    assert rest == [(64, True, False), (128, False, True)]


def test_prune_on_meta(traced) -> None:
    model, gm, graph, ids = traced
    kv = [g.id for g in graph.groups if g.channels == 4]
    ffn = [g.id for g in graph.groups if g.channels == 160]
    remove = {**{g: [3] for g in kv}, **{g: list(range(128, 160)) for g in ffn}}
    slim = fxprune.prune_channels(gm, graph, remove)
    assert all(t.is_meta for t in _tensors(slim))
    shapes = {name: tuple(p.shape) for name, p in slim.named_parameters()}
    for layer in (0, 1):
        prefix = f"model.layers.{layer}."
        assert shapes[prefix + "self_attn.q_proj.weight"] == (48, 64)
        assert shapes[prefix + "self_attn.k_proj.weight"] == (24, 64)
        assert shapes[prefix + "self_attn.v_proj.weight"] == (24, 64)
        assert shapes[prefix + "self_attn.o_proj.weight"] == (64, 48)
        assert shapes[prefix + "mlp.gate_proj.weight"] == (128, 64)
        assert shapes[prefix + "mlp.up_proj.weight"] == (128, 64)
        assert shapes[prefix + "mlp.down_proj.weight"] == (64, 128)
    assert shapes["lm_head.weight"] == (128, 64)
    before = fxprune.cost(gm, (ids,), example_kwargs=NO_CACHE)
    after = fxprune.cost(slim, (ids,), example_kwargs=NO_CACHE)
    assert (before.params, after.params) == (102_720, 84_288)
    assert (before.macs, after.macs) == (380_928, 306_176)
    assert before.params == sum(p.numel() for p in model.parameters())
    out = slim(ids, **NO_CACHE)  # the slim graph runs on meta: shapes alone
    logits = out if isinstance(out, torch.Tensor) else out["logits"]
    assert logits.is_meta and tuple(logits.shape) == (1, SEQ, 128)


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) if x.sum() > 0 else self.a(x)  # reads values: no meta run can


class _WithBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.branch, self.last = nn.Linear(8, 8), _Branching(), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.branch(self.first(x)))


def test_meta_model_that_reads_values_says_so() -> None:
    with torch.device("meta"):
        model = _WithBranch()
    with pytest.raises(fxprune.InputError, match="meta device, whose tensors hold no data"):
        fxprune.trace(model, torch.zeros(2, 8, device="meta"), capture="symbolic")
    # the same model with real weights still traces (the branch becomes a leaf)
    real = _WithBranch()
    gm = fxprune.trace(real, torch.ones(2, 8), capture="symbolic")
    assert any(n.op == "call_module" and n.target == "branch" for n in gm.graph.nodes)


def test_benchmark_one_layer() -> None:
    """benchmarks/llm_scale.py at one layer of the 8B config, a small vocabulary."""
    path = Path(__file__).parents[1] / "benchmarks" / "llm_scale.py"
    spec = importlib.util.spec_from_file_location("llm_scale", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run(layers=1, vocab=256, seq=2, capture="export")
    # one layer: q and o 4096 * 4096, k and v 1024 * 4096, gate/up/down 3 * 4096 * 14336, two
    # norms; embedding and lm_head 256 * 4096, final norm. After: 6 of 8 key-value heads
    # (q and o 3072 * 4096, k and v 768 * 4096) and 11469 of 14336 FFN neurons.
    assert result["params"]["before"] == result["params"]["expected_before"] == 220_213_248
    assert result["params"]["after"] == result["params"]["expected_after"] == 174_497_792
    assert result["pruned_groups"] == {"ffn": 1, "kv": 1}
    assert result["materialised_bytes"] == 0
    assert result["layer0_shapes"]["mlp.down_proj.weight"] == (4096, 11469)
    assert result["layer0_shapes"]["self_attn.k_proj.weight"] == (768, 4096)
    assert "Trace + analyse" in bench.report(result)
