"""Count what a model costs: multiply-accumulates, FLOPs and parameters.

Guarantees:
- ``cost`` runs the model once on the inputs it is given, on their device, under
  ``torch.no_grad()`` with every submodule in eval mode; each submodule's own ``training`` flag
  is put back afterwards, even when the forward raises. Nothing is moved between devices. On
  the meta device (weights and inputs made under ``torch.device("meta")``) the run computes
  shapes alone, so a model too large for memory is counted without any weight allocated.
- FLOP convention: ``flops`` is exactly what ``torch.utils.flop_counter.FlopCounterMode``
  reports, which counts one multiply-add as 2 FLOPs (its conv, mm, addmm, bmm and attention
  formulas all carry that factor 2), so ``macs == flops // 2``. Only those matmul-like ops are
  counted: bias adds, norms, activations, pooling and other elementwise ops are not, which is
  the convention of the usual published figures (ResNet-18 at 224x224: 1.814 GMACs).
- Attention is counted however torch runs it: the CPU's fused scaled_dot_product_attention
  kernel gets the formula torch's counter gives the GPU kernels (2 MACs per query-key pair per
  head dim: scores and weighted values), and nn.MultiheadAttention's and
  nn.TransformerEncoderLayer's fused inference path, which the counter cannot see into, is
  turned off while counting (``torch.backends.mha``), so their projections count too.
- Recurrent layers count their input and hidden matrix products at every step: nn.GRU and
  nn.RNN through the matmuls torch runs them as, nn.LSTM on the CPU through its oneDNN kernel
  (a formula of ours, as for attention).
- ``params`` is the number of parameter elements, each shared parameter counted once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.errors import InputError, as_input_tuple, check_module, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Cost:
    """The cost of one forward pass on the example inputs (see the module docstring)."""

    macs: int
    flops: int
    params: int

    def ratio(self, other: Cost) -> dict[str, float]:
        """``self / other`` for macs and params: ``before.ratio(after)`` gives the reduction
        factors ``before / after`` (2.0 means the pruned model is half the cost).

        A zero in ``other`` gives ``inf`` (or ``nan`` for 0/0) rather than raising, so a ratio
        table never fails on a model with no counted ops.
        """
        return {
            "macs": _divide(self.macs, other.macs),
            "params": _divide(self.params, other.params),
        }


def _divide(a: int, b: int) -> float:
    if b == 0:
        return float("nan") if a == 0 else float("inf")
    return a / b


def count_params(model: nn.Module) -> int:
    """Parameter elements; `parameters()` yields a shared parameter once (tied weights)."""
    return sum(p.numel() for p in model.parameters())


def _attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size,
                     *args: object, out_shape: object = None, **kwargs: object) -> int:
    """q @ k^T and weights @ v, 2 FLOPs per multiply-add, for any batch dims (a key-value head
    shared by several query heads counts once per query head, as the kernel computes it)."""
    *batch, queries, width = query_shape
    return 2 * math.prod(batch) * queries * key_shape[-2] * (width + value_shape[-1])


def _rnn_layer_flops(input_shape: torch.Size, w_ih_shape: torch.Size, w_hh_shape: torch.Size,
                     *args: object, out_shape: object = None, **kwargs: object) -> int:
    """One direction of one recurrent layer as oneDNN runs it (the CPU's LSTM): every step
    multiplies its input by w_ih and the hidden state by w_hh, 2 FLOPs per multiply-add. The
    gates' elementwise products are not counted, as no elementwise op is."""
    steps = math.prod(input_shape[:-1])  # time x batch, in either order
    return 2 * steps * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


# Ops that torch's FlopCounterMode has no formula for, though they are matrix products.
_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
             torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops}


def count_flops(model: nn.Module, inputs: tuple[object, ...],
                kwargs: Mapping[str, object] | None = None) -> int:
    """FLOPs of one forward pass, in eval mode and without autograd."""
    # Set the flags directly instead of calling .eval(): modules from torch.export's
    # .module() raise on .train()/.eval(), and a per-module record keeps mixed modes intact.
    modes = [(m, m.training) for m in model.modules()]
    for m, _ in modes:
        m.training = False
    counter = FlopCounterMode(display=False, custom_mapping=_FORMULAS)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(*inputs, **(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - any failure here means the inputs do not fit
        raise InputError(
            f"the example inputs do not run through the model: {type(exc).__name__}: "
            f"{first_line(exc)}. Check the number, shape, dtype and device of the inputs."
        ) from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, mode in modes:
            m.training = mode
    return counter.get_total_flops()


def cost(model: nn.Module, example_inputs: torch.Tensor | Sequence[object], *,
         example_kwargs: Mapping[str, object] | None = None) -> Cost:
    """MACs, FLOPs (2 per MAC) and parameter count of `model` on `example_inputs`.

    `example_kwargs` are passed by name, as to `fxprune.trace` (a graph captured by torch.export
    takes its keyword inputs, such as a Hugging Face model's ``use_cache``, by name only). Works
    for plain modules, torch.fx GraphModules and modules from ``torch.export``, on any device,
    meta included: the model runs where its inputs are. Raises `InputError` when `model` is not
    a module, the inputs are not tensors, or the inputs do not run through the model.
    """
    model = check_module(model)
    inputs = as_input_tuple(example_inputs)
    flops = count_flops(model, inputs, example_kwargs)
    result = Cost(macs=flops // 2, flops=flops, params=count_params(model))
    log.debug("cost of %s: %s", type(model).__name__, result)
    return result
