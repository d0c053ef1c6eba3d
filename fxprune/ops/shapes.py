"""Shape rules: an op's output shape from its inputs (and its module's attributes).

Tracing propagates shapes on fake tensors; for the commonest ops the arithmetic of their shapes
costs far less than their fake kernels (2-14x less with the fake tensor made from its result:
``python benchmarks/shape_rules.py``).
A rule is called as ``rule(module, args, kwargs)``, `module` being None for a function or a
method (whose ``self`` is ``args[0]``). It promises an output of the first tensor input's dtype
and device, laid out contiguously, and returns None wherever it cannot be sure of that (a bad
input, 'same' padding, a dtype the op would promote, an input whose layout the output's
follows), and the kernel then decides or complains.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _only(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The single tensor input of a module called as ``module(x)``."""
    return args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None


def same(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """A module whose output has its input's shape (a norm, dropout, softmax). Functions are
    left to their kernels: the same entries hold dtype casts (``x.float()``, ``x.to(...)``)."""
    x = _only(args, kwargs) if module is not None else None
    return tuple(x.shape) if x is not None else None


def activation(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """An elementwise activation of a floating tensor, as a module or a function; its other
    arguments are numbers (a slope, bounds, ``inplace``)."""
    if module is not None:
        return same(module, args, kwargs)
    x = args[0] if args else None
    if (not isinstance(x, torch.Tensor) or not x.is_floating_point() or "out" in kwargs
            or any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values()))):
        return None
    return tuple(x.shape)


def broadcast(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """``a + b``, ``a * b``, ``a / b`` and the like: the operands' broadcast shape, where every
    tensor operand is contiguous, floating and of one dtype and device (so nothing is promoted)
    and the others are real numbers."""
    if module is not None or len(args) != 2 or set(kwargs) - {"alpha"}:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(type(a) not in (int, float, bool) for a in args
                          if not isinstance(a, torch.Tensor)):
        return None
    first = tensors[0]
    if not first.is_floating_point() or any(
            t.dtype != first.dtype or t.device != first.device or not t.is_contiguous()
            for t in tensors):
        return None
    try:
        return tuple(torch.broadcast_shapes(*(t.shape for t in tensors)))
    except RuntimeError:  # shapes that do not broadcast: the kernel says so
        return None


def reduction(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """``x.mean(dims, keepdim)``, ``x.sum(...)``, ``x.amax(...)`` of a contiguous floating
    tensor over the dims given (no dims, a ``dtype`` or an ``out``: the kernel decides)."""
    if module is not None or not args or len(args) > 3 or set(kwargs) - {"dim", "keepdim"}:
        return None
    x, dim, keepdim = (*args, *(None,) * (3 - len(args)))
    dim, keepdim = kwargs.get("dim", dim), kwargs.get("keepdim", keepdim) or False
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not x.is_contiguous():
        return None
    dims = [dim] if type(dim) is int else dim
    if (not isinstance(dims, (tuple, list)) or not dims or type(keepdim) is not bool
            or any(type(d) is not int or not -x.dim() <= d < x.dim() for d in dims)):
        return None
    reduced = {d % x.dim() for d in dims}
    if len(reduced) != len(dims):
        return None  # a dim named twice: the kernel's error
    return tuple(1 if d in reduced else s for d, s in enumerate(x.shape)
                 if keepdim or d not in reduced)


def batch_norm(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (timm's norm-act
    layers): the input's shape, where every per-channel tensor has the input's channels."""
    x = args[0] if module is None and args else None
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    per_channel = [*args[1:5], *(kwargs.get(k) for k in ("running_mean", "running_var",
                                                           "weight", "bias"))]
    if all(t is None or isinstance(t, torch.Tensor) and t.shape == (x.shape[1],)
           for t in per_channel):
        return tuple(x.shape)
    return None


def linear(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    x = _only(args, kwargs) if module is not None else None
    if x is None or x.dim() == 0 or x.shape[-1] != module.in_features:
        return None
    return (*x.shape[:-1], module.out_features)


def conv(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    x = _only(args, kwargs) if module is not None else None
    if x is None:
        return None
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


def flatten(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    """``nn.Flatten``, ``torch.flatten`` and ``x.flatten``: dims start to end (inclusive) made
    one, where the input is contiguous (the output is then a contiguous view of it) and has a
    dim at all."""
    if module is not None:
        x, start, end = _only(args, kwargs), module.start_dim, module.end_dim
    else:
        names = ("start_dim", "end_dim")
        if not args or len(args) > 3 or set(kwargs) - set(names) or set(kwargs) & set(names[:len(args) - 1]):
            return None
        x, start, end = (*args, *(None,) * (3 - len(args)))
        start = kwargs.get("start_dim", 0 if start is None else start)
        end = kwargs.get("end_dim", -1 if end is None else end)
    if (not isinstance(x, torch.Tensor) or x.dim() == 0 or not x.is_contiguous()
            or type(start) is not int or type(end) is not int
            or not -x.dim() <= start < x.dim() or not -x.dim() <= end < x.dim()):
        return None
    start, end = start % x.dim(), end % x.dim()
    if start > end:
        return None  # the kernel's error
    return (*x.shape[:start], math.prod(x.shape[start:end + 1]), *x.shape[end + 1:])


def adaptive_pool(n: int) -> Callable[[nn.Module | None, tuple, dict], tuple[int, ...] | None]:
    """Adaptive pooling over the last `n` dims: each becomes its ``output_size`` (None keeps
    the input's). The kernel decides where the input is not contiguous (its output keeps the
    input's layout, channels last) and where the pool returns indices too."""

    def rule(module: nn.Module | None, args: tuple, kwargs: dict) -> tuple[int, ...] | None:
        x = _only(args, kwargs) if module is not None else None
        if x is None:
            return None
        size = module.output_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size,) * n
        if (getattr(module, "return_indices", False) or x.dim() not in (n + 1, n + 2)
                or x.numel() == 0 or not x.is_contiguous()):
            return None
        return (*x.shape[:-n], *(x.shape[d - n] if s is None else s for d, s in enumerate(size)))

    return rule
