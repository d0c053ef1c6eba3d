"""Pruned Hugging Face checkpoints that load back in the user's own class.

    slim = fxprune.prune_channels(gm, graph, remove)        # gm: fxprune.trace(model, ...)
    fxprune.hf.save_pretrained(slim, model, "pruned/")       # config.json + model.safetensors
    AutoModelForCausalLM.from_pretrained("pruned/")          # the pruned model, generate() works

The slim graph keeps the original's parameter names, so its weights are the checkpoint's; the
config gets the new widths (``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``; ``head_dim`` written out, as fewer heads no longer divide the hidden
size). A config holds one width of each kind for every layer: where layers were pruned to
different widths, `save_pretrained` says which and refuses (prune uniformly, or keep the slim
graph, which runs as it is).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from fxprune.errors import InputError

# The decoder-layer parameters whose shapes say each config width (Llama's naming, which
# Mistral, Qwen2/3, SmolLM and most decoder-only models share): (config field, parameter
# suffix, dim, divisor) -- the width is shape[dim] // divisor, with divisor "head_dim".
_WIDTHS = (
    ("num_attention_heads", "self_attn.q_proj.weight", 0, "head_dim"),
    ("num_key_value_heads", "self_attn.k_proj.weight", 0, "head_dim"),
    ("intermediate_size", "mlp.gate_proj.weight", 0, 1),
)
_LAYER = re.compile(r"\.layers\.(\d+)\.(.+)$")


def pruned_config(slim: nn.Module, original: nn.Module) -> object:
    """The original's config with the slim model's widths (see the module docstring)."""
    config = getattr(original, "config", None)
    if config is None or not hasattr(original, "get_input_embeddings"):
        raise InputError(f"save_pretrained takes the original Hugging Face model (a "
                         f"PreTrainedModel), got {type(original).__name__}")
    state = dict(slim.state_dict())
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_layer: dict[str, dict[int, int]] = defaultdict(dict)
    for name, tensor in state.items():
        match = _LAYER.search(name)
        if match is None:
            continue
        for field, suffix, dim, divisor in _WIDTHS:
            if match.group(2) == suffix:
                size = tensor.shape[dim]
                per_layer[field][int(match.group(1))] = size // (head_dim if divisor == "head_dim" else divisor)
    if not per_layer:
        raise InputError(f"save_pretrained knows decoder layers named like Llama's "
                         f"(layers.N.self_attn.q_proj, layers.N.mlp.gate_proj); "
                         f"{type(original).__name__} has none")
    fields = config.to_dict()
    for field, widths in per_layer.items():
        if len(set(widths.values())) > 1:
            listing = ", ".join(f"layer {i}: {w}" for i, w in sorted(widths.items()))
            raise InputError(f"the pruned layers have different {field} ({listing}); a config "
                             "holds one per model. Prune every layer to the same width, or use "
                             "the slim graph itself (it runs as it is).")
        fields[field] = next(iter(widths.values()))
    embedding = original.get_input_embeddings()
    names = [n for n, p in original.named_parameters(remove_duplicate=False)
             if p is embedding.weight]
    fields["hidden_size"] = next(state[n] for n in names if n in state).shape[1]
    fields["head_dim"] = head_dim
    from huggingface_hub.errors import StrictDataclassError  # transformers' own dependency

    try:
        return config.__class__.from_dict(fields)
    except (ValueError, TypeError, StrictDataclassError) as exc:  # the config class's checks
        raise InputError(f"{config.__class__.__name__} cannot describe the pruned widths "
                         f"(hidden_size {fields['hidden_size']}, num_attention_heads "
                         f"{fields.get('num_attention_heads')}): {exc}. Prune to widths it "
                         "accepts (e.g. a hidden size that is a multiple of the heads).") from exc


def save_pretrained(slim: nn.Module, original: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write `slim` (a pruned graph of `original`, a Hugging Face model) as a checkpoint that
    ``from_pretrained(directory)`` loads in `original`'s own class. The folder appears whole or
    not at all (written beside it, then renamed into place)."""
    config = pruned_config(slim, original)
    rebuilt = original.__class__(config)
    missing, unexpected = rebuilt.load_state_dict(slim.state_dict(), strict=False)
    tied = {k for k in missing if k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False)}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise InputError(f"the slim model's weights do not fit {type(original).__name__} with "
                         f"the pruned config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with torch.no_grad():
            rebuilt.eval().save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
