"""Export a model to ONNX and prove the file computes what PyTorch computes.

Invariant: a file `export_onnx` leaves at `path` passed ``onnx.checker`` and, with
``check=True``, matched PyTorch in onnxruntime on the example inputs and on a second batch
size, within tolerance. Anything else raises and leaves no file behind (the file is written
beside the target and renamed into place only once it passed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fxprune.errors import ExportError, as_input_tuple, check_module
from fxprune.save import trace_inputs

log = logging.getLogger(__name__)

ATOL, RTOL = 1e-4, 1e-3
PROTOBUF_LIMIT = 2**31 - 1  # bytes: one ONNX protobuf file cannot be larger


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What was written and how closely onnxruntime matches PyTorch."""

    path: Path
    data_path: Path | None  # the weights' file beside `path`, where they are external data
    exporter: str  # "dynamo" (torch.export based) or "legacy" (TorchScript based)
    opset: int
    size_bytes: int  # the model and its external data together
    dynamic_batch: bool
    batch_sizes: tuple[int, ...]  # where parity was checked
    max_abs_diff: float
    max_rel_diff: float
    fallback_reason: str | None = None

    def __str__(self) -> str:
        lines = [
            f"wrote {self.path}{f' and {self.data_path.name}' if self.data_path else ''} "
            f"({self.size_bytes / 1e6:.2f} MB, opset {self.opset}, "
            f"{self.exporter} exporter{', dynamic batch' if self.dynamic_batch else ''})",
            f"onnxruntime vs PyTorch at batch {', '.join(map(str, self.batch_sizes))}: "
            f"max abs diff {self.max_abs_diff:.2e}, max rel diff {self.max_rel_diff:.2e}",
        ]
        if self.fallback_reason:
            lines.append(f"fell back to the legacy exporter: {self.fallback_reason}")
        return "\n".join(lines)


def _refuse_fxprune_only(model: nn.Module) -> None:
    """Catalysts and other training-time modules have no meaning in a deployed graph."""
    for name, module in model.named_modules():
        if getattr(module, "fxprune_only", False):
            raise ExportError(
                f"the model still holds the fxprune-only module '{name}' "
                f"({type(module).__name__}): finish pruning first (CatalystPruner.finalize() "
                "returns the model without catalysts), then export that."
            )


def _second_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example inputs at another batch size (3, or 1 when the example has 3)."""
    batch = 1 if inputs[0].shape[0] == 3 else 3
    generator = torch.Generator().manual_seed(0)
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=generator, dtype=t.dtype).to(t.device))
        else:
            out.append(t[:1].expand(shape).contiguous() if batch <= t.shape[0] or t.shape[0] == 1
                       else t.repeat(batch, *([1] * (t.dim() - 1)))[:batch])
    return tuple(out)


def _dynamo(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, opset: int | None,
            dynamic_batch: bool, external_data: bool) -> int:
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        shapes = tuple({0: batch} for _ in inputs)
    # The exporter prints its progress; keep the library quiet (the report says what happened).
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = trace_inputs(inputs) if dynamic_batch else inputs
        program = torch.onnx.export(model, traced, dynamo=True, opset_version=opset,
                                    dynamic_shapes=shapes, external_data=False, verbose=False)
        program.save(path, external_data=external_data)
    return int(program.model.opset_imports.get("", opset or 18))


def _legacy(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: str, opset: int | None,
            dynamic_batch: bool, external_data: bool) -> int:
    opset = opset or 17
    names = [f"input_{i}" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    if axes is not None:
        axes["output"] = {0: "batch"}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["output"], dynamic_axes=axes)
    if external_data and not Path(path + ".data").exists():
        import onnx

        onnx.save_model(onnx.load(path), path, save_as_external_data=True,
                        location=Path(path).name + ".data")
    return opset


def _publish(staging: Path, target: Path) -> Path | None:
    """Move what the exporter wrote in `staging` beside `target`: side files (external data)
    first, the model last, each by an atomic rename; returns the data file, if any."""
    data = None
    for f in sorted(staging.iterdir()):
        if f.name != target.name:
            os.chmod(f, 0o644)
            os.replace(f, target.parent / f.name)
            data = target.parent / f.name if f.name == target.name + ".data" else data
    if data is None:  # a smaller model replaces a larger one: its old weights file goes
        (target.parent / (target.name + ".data")).unlink(missing_ok=True)
    os.chmod(staging / target.name, 0o644)
    os.replace(staging / target.name, target)
    return data


def _run_onnx(path: str, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)


def _torch_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    flat = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float().cpu().numpy() for o in flat]


def _parity(model: nn.Module, path: str, batches: Sequence[tuple[torch.Tensor, ...]]) -> tuple[float, float]:
    worst_abs = worst_rel = 0.0
    for inputs in batches:
        try:
            ours = _run_onnx(path, inputs)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(
                f"onnxruntime cannot run the exported graph at batch {inputs[0].shape[0]}: "
                f"{(str(exc).strip().splitlines() or [''])[0]}. If the model fixes its batch "
                "size (e.g. view(2, ...)), export with dynamic_batch=False."
            ) from exc
        theirs = _torch_outputs(model, inputs)
        if len(ours) != len(theirs):
            raise ExportError(f"onnxruntime gave {len(ours)} outputs, PyTorch {len(theirs)}")
        for a, b in zip(ours, theirs):
            if a.shape != b.shape:
                raise ExportError(f"onnxruntime output shape {a.shape} != PyTorch {b.shape}")
            diff = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
            scale = float(np.abs(b).max(initial=0.0))
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(scale, 1e-12))
    return worst_abs, worst_rel


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
    external_data: bool | None = None,
) -> ExportReport:
    """Write `model` to `path` as ONNX and report how closely onnxruntime matches PyTorch.

    Uses the torch.export-based exporter (``dynamo=True``) and falls back to the legacy one,
    with a warning saying why, only where it fails. With ``check=True`` a difference beyond
    1e-4 absolute and 1e-3 relative raises `ExportError` and no file is left behind.
    The weights go to ``<path>.data`` beside the model when ``external_data=True`` or, by
    default, when they would pass protobuf's 2 GB limit (ViT-H/14, RegNet-Y-128GF).
    """
    model = check_module(model)
    inputs = as_input_tuple(example_inputs)
    _refuse_fxprune_only(model)
    was_training = {m: m.training for m in model.modules()}
    for m in model.modules():
        m.training = False  # export what is deployed: BatchNorm statistics, no dropout
    if external_data is None:
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        external_data = weights > 0.9 * PROTOBUF_LIMIT  # room for the graph itself
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written in a hidden folder beside the target and moved in once checked, so a failed or
    # killed export leaves nothing, and external data keeps the name the model refers to.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = str(staging / target.name)
    try:
        fallback = None
        try:
            opset_used = _dynamo(model, inputs, tmp, opset, dynamic_batch, external_data)
            exporter = "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other one
            fallback = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            warnings.warn(f"fxprune: the torch.export-based ONNX exporter failed ({fallback}); "
                          "using the legacy TorchScript exporter instead", stacklevel=2)
            for f in staging.iterdir():  # whatever the failed exporter left
                f.unlink()
            opset_used = _legacy(model, inputs, tmp, opset, dynamic_batch, external_data)
            exporter = "legacy"
        import onnx

        onnx.checker.check_model(tmp, full_check=True)
        batches = [inputs] + ([_second_batch(inputs)] if dynamic_batch else [])
        worst_abs, worst_rel = _parity(model, tmp, batches)
        if check and worst_abs > ATOL and worst_rel > RTOL:
            raise ExportError(
                f"onnxruntime differs from PyTorch by {worst_abs:.2e} (relative {worst_rel:.2e}), "
                f"beyond {ATOL:g} absolute and {RTOL:g} relative; no file was written. Try "
                "another opset, or check=False to keep the file and inspect it."
            )
        size = sum(f.stat().st_size for f in staging.iterdir())
        data = _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for m, mode in was_training.items():
            m.training = mode
    return ExportReport(
        path=target, data_path=data, exporter=exporter, opset=opset_used, size_bytes=size,
        dynamic_batch=dynamic_batch, batch_sizes=tuple(b[0].shape[0] for b in batches),
        max_abs_diff=worst_abs, max_rel_diff=worst_rel, fallback_reason=fallback,
    )
