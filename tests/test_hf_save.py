"""A pruned Llama (grouped-query attention, SwiGLU) saved with fxprune.hf.save_pretrained loads
back with from_pretrained in its own class, equals the slim graph and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf

import fxprune
import fxprune.hf

tf.logging.set_verbosity_error()


def _llama() -> tuple[torch.nn.Module, torch.fx.GraphModule, fxprune.ChannelGraph, tuple, dict]:
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)).eval()
    ids = torch.randint(0, 100, (2, 7))
    kwargs = {"attention_mask": torch.ones(2, 7, dtype=torch.long), "use_cache": False}
    gm = fxprune.trace(model, (ids,), example_kwargs=kwargs)
    return model, gm, fxprune.analyze(gm), (ids,), kwargs


def _kinds(graph: fxprune.ChannelGraph) -> tuple[list, list]:
    kv = [g for g in graph.prunable if g.channels == 2]  # a key-value head and its 2 queries
    ffn = [g for g in graph.prunable if g.channels == 64]
    assert len(kv) == len(ffn) == 2
    return kv, ffn


def test_a_uniformly_pruned_llama_reloads_equal_and_generates(tmp_path: Path) -> None:
    model, gm, graph, args, kwargs = _llama()
    kv, ffn = _kinds(graph)
    # the hidden size, with the LM head (torch.export names the tied embedding after it)
    (hidden,) = [g for g in graph.prunable if g.channels == 32]
    assert "lm_head.weight" in {m.param for m in hidden.params}
    remove = ({g.id: [1] for g in kv} | {g.id: list(range(0, 64, 4)) for g in ffn}
              | {hidden.id: [3, 30]})
    slim = fxprune.prune_channels(gm, graph, remove)
    tied = slim.get_submodule("model.embed_tokens").weight
    assert tied is slim.get_submodule("lm_head").weight and tied.shape == (100, 30)
    folder = fxprune.hf.save_pretrained(slim, model, tmp_path / "pruned")
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["intermediate_size"], config["hidden_size"]) == (2, 1, 8, 48, 30)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(reloaded) is type(model)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in slim.parameters())
    with torch.no_grad():
        want = slim(*args, **kwargs).logits
        got = reloaded(*args, **kwargs).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        out = reloaded.generate(args[0][:1], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 12)


def test_widths_the_config_cannot_hold_are_refused(tmp_path: Path) -> None:
    model, gm, graph, _, _ = _llama()
    (hidden,) = [g for g in graph.prunable if g.channels == 32]
    slim = fxprune.prune_channels(gm, graph, {hidden.id: [0, 1, 2]})  # 29 over 4 heads
    with pytest.raises(fxprune.InputError, match="LlamaConfig cannot describe the pruned "
                                                 "widths .hidden_size 29, num_attention_heads 4"):
        fxprune.hf.save_pretrained(slim, model, tmp_path / "pruned")


def test_layers_pruned_to_different_widths_are_refused(tmp_path: Path) -> None:
    model, gm, graph, _, _ = _llama()
    _, ffn = _kinds(graph)
    slim = fxprune.prune_channels(gm, graph, {ffn[0].id: [0, 1], ffn[1].id: [0]})
    with pytest.raises(fxprune.InputError, match=r"different intermediate_size \(layer 0: 62, "
                                                 r"layer 1: 63\)"):
        fxprune.hf.save_pretrained(slim, model, tmp_path / "pruned")
    assert not (tmp_path / "pruned").exists()
