"""The one small error hierarchy of fxprune.

Every error a user can reach is an ``FxPruneError``. Errors about the graph name the node
(``node.format_node()``), the pass, and the user's source line, and say what to do.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class InputError(FxPruneError):
    """The model or the example inputs handed to fxprune are unusable."""


class TraceError(FxPruneError):
    """torch.fx could not trace the model, even with failing submodules made leaves."""


class AnalysisError(FxPruneError):
    """The dependency-analysis pass met a graph it cannot reason about (``strict=True``)."""


class PruneError(FxPruneError):
    """A removal request breaks a constraint (frozen group, no channel left, round_to...)."""


class SurgeryError(FxPruneError):
    """Surgery produced a graph whose shapes do not match the plan (a bug: please report it)."""


class ExportError(FxPruneError):
    """The model cannot be exported, or the exported file does not compute what PyTorch does."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: what an fxprune error quotes of a cause."""
    return (str(exc).strip().splitlines() or [""])[0]


def user_line(node: torch.fx.Node) -> str:
    """The last frame of the node's stack trace: the user's source line, or '' if unknown."""
    trace = node.stack_trace or ""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    # fx stack traces end with 'File "...", line N, in fn' followed by the code line.
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("File "):
            code = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{lines[i]}: {code}".strip(": ")
    return ""


def describe(node: torch.fx.Node) -> str:
    """`node.format_node()` plus the user's source line, for error messages and reasons."""
    where = user_line(node)
    text = node.format_node()
    return f"{text} ({where})" if where else text


def as_input_tuple(example_inputs: object) -> tuple[object, ...]:
    """`example_inputs` as a tuple of positional inputs, or `InputError` saying what was given.

    A tensor is the one input; a list or tuple holds one input per forward argument, each a
    tensor or a list, tuple or dict of them, nested as the model takes them (a detector's list
    of images is one input: ``([image1, image2],)``).
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)):
        bad = ("example_inputs", example_inputs)
    else:
        found = (not_tensors(value, f"example_inputs[{i}]") for i, value in enumerate(inputs))
        bad = next((b for b in found if b is not None), None)
    if bad is not None:
        where, value = bad
        raise InputError(
            "example_inputs must be a tensor or a sequence of tensors (each may be a list, tuple "
            f"or dict of tensors, nested), got {type(example_inputs).__name__}: {where} is "
            f"{type(value).__name__}. Pass e.g. torch.randn(1, 3, 224, 224), or ([image1, "
            "image2],) for a model that takes a list of images"
        )
    return tuple(inputs)


def not_tensors(value: object, where: str) -> tuple[str, object] | None:
    """The first place in `value` (a tensor, or a list, tuple or dict nesting them) that holds
    something else, with what it holds; None where all is tensors."""
    if isinstance(value, torch.Tensor):
        return None
    if not isinstance(value, (tuple, list, dict)) or not value:  # an empty one holds no input
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        found = not_tensors(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def check_module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


class TrainingError(FxPruneError):
    """Training went wrong (a NaN loss): the run stops, the last good checkpoint stays."""
