"""Save a model as a self-contained torch.export program, and load it back.

Format: the ``.pt2`` archive that ``torch.export.save`` writes (a zip file: the graph as JSON
in ``models/model.json``, every weight as raw bytes in ``data/weights/`` described by a JSON
config, and the example inputs). It holds ATen ops only, so a fresh Python process loads it
with ``fxprune.load`` (or ``torch.export.load(path).module()``) without the model's classes.

Guarantees:
- ``save`` writes atomically: a temp file in the target's directory, fsynced, then
  ``os.replace``; a reader sees the old file or the whole new one, and a failed save leaves
  neither a partial file nor the temp file behind.
- Dim 0 of every input is exported as one dynamic ``batch`` dim (``min=1``). A batch of 1 is
  traced as a batch of 2 (torch.export specialises sizes 0 and 1), and the exported guards are
  checked against the whole range, so the program is valid for every batch size. When
  torch.export cannot make the batch dynamic, the program is exported with static shapes and
  a warning is logged: it then accepts only the example's shapes.
- The program records the mode the model is in (BatchNorm, Dropout); a loaded module cannot
  change mode, so call ``model.eval()`` before saving a model for inference.
- ``load`` never unpickles anything beyond tensors and raises ``InputError``, with the
  original exception chained, for a missing, truncated or corrupted file, or one holding
  anything ``save`` never writes: ``fxprune.archive`` checks the file before torch reads it,
  says why ``torch.export.load`` alone is not safe, and what it does not cover.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from fxprune import atomic
from fxprune.archive import check_archive, check_targets
from fxprune.errors import InputError, as_input_tuple, check_module, first_line
from fxprune.trace import with_code

log = logging.getLogger(__name__)
T = TypeVar("T")


# ----------------------------------------------------------------------------------- save


def save(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
) -> Path:
    """Export `model` with torch.export (dynamic batch dim) and write it atomically to `path`.

    The file loads with `load` in any process that has torch, without the model's classes.
    Raises `InputError` for a non-module, non-tensor inputs, or a model torch.export cannot
    export even with static shapes.
    """
    model = with_code(check_module(model))  # torch.export reads forward's signature
    inputs = as_input_tuple(example_inputs)
    path = Path(path)
    if any(m.training for m in model.modules()):
        log.warning(
            "saving %s in training mode: the saved program keeps training behaviour "
            "(batch statistics, dropout) and cannot be switched; call model.eval() first "
            "to save it for inference",
            type(model).__name__,
        )
    _write_atomically(_export(model, inputs), path)
    log.info("saved %s to %s", type(model).__name__, path)
    return path


def _batch_shapes(inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any] | None, ...]:
    # One Dim shared by all inputs: they are one batch, so their dim 0 must agree.
    batch = Dim("batch", min=1)
    return tuple({0: batch} if t.dim() > 0 else None for t in inputs)


def trace_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs to trace with: a batch of 1 doubled, since export specialises size 1."""
    batched = [t for t in inputs if t.dim() > 0]
    if batched and all(t.shape[0] == 1 for t in batched):
        log.info("tracing the batch of 1 as a batch of 2 so that the batch dim stays dynamic")
        return tuple(torch.cat((t, t)) if t.dim() > 0 else t for t in inputs)
    return inputs


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> ExportedProgram:
    """Export with a dynamic batch dim, else with static shapes (and a warning)."""
    shapes = _batch_shapes(inputs)
    if any(s is not None for s in shapes):
        try:
            return torch.export.export(model, trace_inputs(inputs), dynamic_shapes=shapes)
        except Exception as exc:  # noqa: BLE001 - export raises many kinds; static may work
            log.warning(
                "torch.export cannot make dim 0 a dynamic batch dim (%s: %s); exporting with "
                "static shapes, so the saved model accepts only the example's shapes",
                type(exc).__name__,
                first_line(exc),
            )
    try:
        return torch.export.export(model, inputs)
    except Exception as exc:  # noqa: BLE001 - export raises many kinds; report them as one
        raise InputError(
            f"torch.export cannot export {type(model).__name__}: {type(exc).__name__}: "
            f"{first_line(exc)}. Check that the example inputs run through the model and "
            "rewrite data-dependent control flow (e.g. with torch.where or torch.cond)."
        ) from exc


def _write_atomically(program: ExportedProgram, path: Path) -> None:
    with atomic.replacing(path) as f:
        # A file object, not the temp path: torch names the archive root after a path and
        # wants it to end in .pt2, which the temp name does not.
        torch.export.save(program, f)


# ----------------------------------------------------------------------------------- load


def load(path: str | os.PathLike[str]) -> nn.Module:
    """The module saved at `path` by `save` (a GraphModule of ATen ops).

    Raises `InputError` when the file is missing, truncated, corrupted, unreadable by this
    torch, or holds anything ``save`` never writes (pickled objects, code): see the module
    docstring of `fxprune.archive` for what is checked and why.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InputError(
            f"cannot load {path}: {exc.strerror or exc}. Check the path, or write the file "
            "first with fxprune.save(model, example_inputs, path)."
        ) from exc
    # One open handle for the checks and the load: the checked bytes are the loaded bytes.
    with f:
        check_archive(f, path)
        f.seek(0)
        program = _torch_call(path, lambda: torch.export.load(f))
    check_targets(program, path)
    return _torch_call(path, program.module)


def _torch_call(path: Path, fn: Callable[[], T]) -> T:
    """`fn()`, with any error it raises reported as `InputError` about the file at `path`."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the deserializer raises many kinds
        raise InputError(
            f"cannot load {path}: torch.export could not read it ({type(exc).__name__}: "
            f"{first_line(exc)}). The file is damaged, or was written by another torch "
            f"version (this is {torch.__version__}), or its weights live on a device this "
            "machine lacks: re-save the model with fxprune.save."
        ) from exc
