"""What a shape rule saves: an op's fake kernel against the op table's shape rule for it.

The shape run that `fxprune.trace` does on fake tensors makes each node's output from its op's
shape rule where the op table gives one (`fxprune.ops.shapes`), and runs the fake kernel
otherwise. For a few ops as timm's EfficientNet-B0 calls them, this times both in one process,
alternating: the kernel under the fake mode (its dispatch cache warm), and the rule plus the
fake tensor made from its shape (what `_ShapeProp` does). Medians of ``--repeats`` rounds of
500 calls, in microseconds per call.

    python benchmarks/shape_rules.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import functools
import operator
import statistics
import timeit

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fxprune.ops import FUNCTIONS, METHODS
from fxprune.trace import _empty

CALLS = 500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    x = mode.from_tensor(torch.randn(1, 96, 56, 56))
    gate = mode.from_tensor(torch.randn(1, 96, 1, 1))
    stats = [mode.from_tensor(torch.randn(96)) for _ in range(4)]
    cases = {  # name: (the kernel, the table entry's rule, args, kwargs)
        "x + y (broadcast)": (operator.add, FUNCTIONS[operator.add].shape, (x, gate), {}),
        "x * 0.5": (operator.mul, FUNCTIONS[operator.mul].shape, (x, 0.5), {}),
        "x.mean((2, 3), keepdim=True)": (torch.Tensor.mean, METHODS["mean"].shape,
                                         (x, (2, 3), True), {}),
        "F.silu(x)": (F.silu, FUNCTIONS[F.silu].shape, (x,), {}),
        "F.batch_norm(x, ...)": (F.batch_norm, FUNCTIONS[F.batch_norm].shape,
                                 (x, *stats, False, 0.1, 1e-5), {}),
    }
    print("| op | fake kernel (us) | shape rule + fake tensor (us) | ratio |\n|---|---:|---:|---:|")
    with mode, torch.no_grad():
        for name, (kernel, rule, a, kw) in cases.items():
            by_kernel = functools.partial(kernel, *a, **kw)
            by_rule = functools.partial(lambda r, a, kw: _empty(a[0], r(None, a, kw)), rule, a, kw)
            kernel_us, rule_us = [], []
            for _ in range(args.repeats):  # alternating, so a busy spell hits both
                kernel_us.append(timeit.timeit(by_kernel, number=CALLS) / CALLS * 1e6)
                rule_us.append(timeit.timeit(by_rule, number=CALLS) / CALLS * 1e6)
            k, r = statistics.median(kernel_us), statistics.median(rule_us)
            print(f"| {name} | {k:.0f} | {r:.0f} | {k / r:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
