"""Hugging Face models through fxprune's torch.export capture (needs transformers).

Tiny random configs (nothing is downloaded), inputs as keyword arguments with an attention
mask. For each model: how it was captured, its groups (channels, prunable, exact), the share
of linear output channels in prunable groups, and whether removing 30% of every exact group
gives the zeroed model's output. Run it from the repository root::

    pip install transformers && python benchmarks/hf_capture.py
"""

from __future__ import annotations

import torch

import fxprune
from fxprune.passes.plan import random_request


def models() -> dict[str, tuple[torch.nn.Module, dict]]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2Model,
        LlamaConfig,
        LlamaForCausalLM,
    )

    mask = {"attention_mask": torch.ones(2, 7, dtype=torch.long)}
    return {
        "BertForSequenceClassification": (BertForSequenceClassification(BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64)), mask),
        "GPT2Model": (GPT2Model(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4)),
                      {**mask, "use_cache": False}),
        "LlamaForCausalLM": (LlamaForCausalLM(LlamaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64)), {**mask, "use_cache": False}),
    }


def first(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else next(iter(output.values()))


def main() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 7))
    print("| model | captured | groups: channels (prunable, exact) | share | slim == zeroed |")
    print("|---|---|---|---:|---|")
    for name, (model, kwargs) in models().items():
        gm = fxprune.trace(model.eval(), (ids,), example_kwargs=kwargs)
        graph = fxprune.analyze(gm)
        groups = ", ".join(f"{g.channels}{' P' if g.prunable else ''}{' E' if g.exact else ''}"
                           for g in graph.groups)
        remove = random_request(graph, 0.3, 0, exact_only=True)
        with torch.no_grad():
            slim = first(fxprune.prune_channels(gm, graph, remove)(ids, **kwargs))
            zeroed = first(fxprune.zero_channels(gm, graph, remove)(ids, **kwargs))
        same = torch.allclose(slim, zeroed, atol=1e-5) if remove else "no exact group"
        print(f"| {name} | {gm.meta['fxprune.capture']} | {groups} | "
              f"{fxprune.coverage(gm, graph).share:.3f} | {same} |")
    print("\nP: prunable, E: exact (slim == zeroed).")


if __name__ == "__main__":
    main()
