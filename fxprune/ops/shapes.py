"""Shape rules: a module's output shape from its attributes and its input.

Tracing propagates shapes on fake tensors; for the commonest modules the arithmetic of their
shapes costs far less than their fake kernels. A rule returns None where it cannot be sure
(a bad input, 'same' padding, an output whose layout the input's decides), and the kernel
then decides or complains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def same(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def linear(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    if x.dim() == 0 or x.shape[-1] != module.in_features:
        return None
    return (*x.shape[:-1], module.out_features)


def conv(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    n = module.weight.dim() - 2
    if isinstance(module.padding, str) or x.dim() != n + 2 or x.shape[1] != module.in_channels:
        return None
    spatial = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(x.shape[2:], module.padding, module.dilation,
                                    module.kernel_size, module.stride)
    ]
    if min(spatial) <= 0:
        return None
    return (x.shape[0], module.out_channels, *spatial)


def adaptive_pool(n: int) -> Callable[[nn.Module, torch.Tensor], tuple[int, ...] | None]:
    """Adaptive pooling over the last `n` dims: each becomes its ``output_size`` (None keeps
    the input's). The kernel decides where the input is not contiguous (its output keeps the
    input's layout, channels last) and where the pool returns indices too."""

    def rule(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
        size = module.output_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size,) * n
        if (getattr(module, "return_indices", False) or x.dim() not in (n + 1, n + 2)
                or x.numel() == 0 or not x.is_contiguous()):
            return None
        return (*x.shape[:-n], *(x.shape[d - n] if s is None else s for d, s in enumerate(size)))

    return rule
