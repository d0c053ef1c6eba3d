"""What pruning buys at deployment: size, MACs and onnxruntime latency, before and after.

`deploy_report` exports both models with `export_onnx` (parity checked) into a temporary
folder and times each in onnxruntime on the CPU: warm-up runs first, then the median of
repeated runs, at each batch size. Latency is measured in one process, one model after the
other, so compare the ratios, not the absolute times, across machines.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxprune.cost import cost
from fxprune.errors import as_input_tuple
from fxprune.export.onnx import export_onnx


@dataclass(frozen=True, kw_only=True)
class ModelFigures:
    params: int
    macs: int
    onnx_bytes: int
    latency_ms: dict[int, float]  # batch size -> median onnxruntime latency


@dataclass(frozen=True, kw_only=True)
class DeployReport:
    original: ModelFigures
    slim: ModelFigures

    def ratios(self) -> dict[str, float]:
        """original / slim: 2.0 means the slim model costs half (or runs twice as fast)."""
        o, s = self.original, self.slim
        out = {"params": o.params / s.params, "macs": o.macs / s.macs,
               "onnx_bytes": o.onnx_bytes / s.onnx_bytes}
        out.update({f"latency_b{b}": o.latency_ms[b] / s.latency_ms[b] for b in o.latency_ms})
        return out

    def to_markdown(self) -> str:
        o, s, r = self.original, self.slim, self.ratios()
        rows = [("params", f"{o.params / 1e6:.2f} M", f"{s.params / 1e6:.2f} M", r["params"]),
                ("MACs", f"{o.macs / 1e9:.3f} G", f"{s.macs / 1e9:.3f} G", r["macs"]),
                ("ONNX size", f"{o.onnx_bytes / 1e6:.2f} MB", f"{s.onnx_bytes / 1e6:.2f} MB",
                 r["onnx_bytes"])]
        rows += [(f"onnxruntime latency, batch {b}", f"{o.latency_ms[b]:.2f} ms",
                  f"{s.latency_ms[b]:.2f} ms", r[f"latency_b{b}"]) for b in o.latency_ms]
        lines = ["| | original | slim | original / slim |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {a} | {b} | {ratio:.2f}x |" for name, a, b, ratio in rows]
        return "\n".join(lines)


def ort_latency(path: str | Path, inputs: Sequence[torch.Tensor], *, warmup: int = 3,
                repeats: int = 20) -> float:
    """Median milliseconds of one onnxruntime run on `inputs` (after `warmup` runs)."""
    run = ort_session(path, inputs)
    for _ in range(warmup):
        run()
    return statistics.median(run() for _ in range(repeats))


def ort_session(path: str | Path, inputs: Sequence[torch.Tensor], *, device: str = "cpu",
                spinning: bool = True) -> Callable[[], float]:
    """A function running the file once on `inputs` in onnxruntime (the CPU, or the CUDA
    execution provider for ``device="cuda"``) and returning the milliseconds it took.
    ``spinning=False`` stops idle worker threads from spinning, which two sessions taking
    turns need: spinning threads of one take the cores from the other's run (paired runs
    of one file against itself then spread by 75% instead of 3%)."""
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=providers)
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}

    def run() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - start) * 1000

    return run


def at_batch(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like `inputs` at `batch`: random floats, integers repeating the example's
    (token ids stay in the vocabulary)."""
    generator = torch.Generator().manual_seed(batch)
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=generator, dtype=t.dtype))
        else:
            out.append(torch.from_numpy(np.resize(t.cpu().numpy(), shape)))
    return tuple(out)


def _figures(model: nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path, name: str,
             batch_sizes: Sequence[int], repeats: int) -> ModelFigures:
    report = export_onnx(model, inputs, folder / f"{name}.onnx")
    measured = cost(model, inputs)
    latency = {b: ort_latency(report.path, at_batch(inputs, b), repeats=repeats)
               for b in batch_sizes}
    return ModelFigures(params=measured.params, macs=measured.macs,
                        onnx_bytes=report.size_bytes, latency_ms=latency)


def deploy_report(
    original: nn.Module,
    slim: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
) -> DeployReport:
    """Params, MACs, ONNX size and onnxruntime latency of both models, side by side."""
    inputs = as_input_tuple(example_inputs)
    with tempfile.TemporaryDirectory(prefix="fxprune-deploy-") as folder:
        return DeployReport(
            original=_figures(original, inputs, Path(folder), "original", batch_sizes, repeats),
            slim=_figures(slim, inputs, Path(folder), "slim", batch_sizes, repeats),
        )
