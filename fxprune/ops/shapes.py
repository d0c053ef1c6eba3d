"""Shape rules: a module's output shape from its attributes and its input's shape.

Tracing propagates shapes on fake tensors; for the commonest modules the arithmetic of their
shapes costs far less than their fake kernels. A rule returns None where it cannot be sure
(a bad input, 'same' padding), and the kernel then decides or complains.
"""

from __future__ import annotations

from torch import nn


def same(module: nn.Module, x: tuple[int, ...]) -> tuple[int, ...]:
    return x


def linear(module: nn.Module, x: tuple[int, ...]) -> tuple[int, ...] | None:
    if len(x) == 0 or x[-1] != module.in_features:
        return None
    return (*x[:-1], module.out_features)


def conv(module: nn.Module, x: tuple[int, ...]) -> tuple[int, ...] | None:
    n = module.weight.dim() - 2
    if isinstance(module.padding, str) or len(x) != n + 2 or x[1] != module.in_channels:
        return None
    spatial = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(x[2:], module.padding, module.dilation, module.kernel_size,
                                    module.stride)
    ]
    if min(spatial) <= 0:
        return None
    return (x[0], module.out_channels, *spatial)
