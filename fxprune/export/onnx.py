"""Export a model to ONNX and prove the file computes what PyTorch computes.

Invariant: a file `export_onnx` leaves at `path` passed ``onnx.checker`` and, with
``check=True``, matched PyTorch in onnxruntime on the example inputs and, where some dims are
dynamic, on inputs where every dynamic dim has another size (a second batch size, a longer
sequence), within tolerance. Anything else raises and leaves no file behind (the file is
written beside the target and renamed into place only once it passed).

Inputs may be positional or by keyword (Hugging Face models take ``input_ids``,
``attention_mask``, ``pixel_values``...); the ONNX inputs are the tensors among them, named
after the forward's parameters, in the order of the forward's signature; an input that is a
list or dict of tensors (a detector's images) gives one ONNX input per tensor, named after its
place (``images_0``, ``images_1``), with fixed shapes: the trace fixed how many there are.
Outputs may be any pytree of tensors (a tuple, a dict, a ``ModelOutput``, a detector's list of
dicts); the ONNX outputs are its tensors in pytree order, named after their path in it
(``logits``, ``text_model_output.pooler_output``, ``output_0``, ``output_0.boxes``; a single
tensor is ``output``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from fxprune.errors import ExportError, InputError, as_input_tuple, check_module, first_line
from fxprune.trace import with_code

log = logging.getLogger(__name__)

ATOL, RTOL = 1e-4, 1e-3
PROTOBUF_LIMIT = 2**31 - 1  # bytes: one ONNX protobuf file cannot be larger
SEQUENCE_STEP = 4  # a dynamic dim other than the batch is checked this much longer

DynamicDims = Mapping[str, Mapping[int, str]]  # input name -> {dim: the dim's name}


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """What was written and how closely onnxruntime matches PyTorch."""

    path: Path
    data_path: Path | None  # the weights' file beside `path`, where they are external data
    exporter: str  # "dynamo" (torch.export based) or "legacy" (TorchScript based)
    opset: int
    size_bytes: int  # the model and its external data together
    dynamic_batch: bool  # dim 0 of some input is dynamic
    batch_sizes: tuple[int, ...]  # where parity was checked: dim 0 of the first input, or
    # the number of images of a detector
    max_abs_diff: float
    max_rel_diff: float
    fallback_reason: str | None = None
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    dynamic_dims: DynamicDims | None = None  # what was made dynamic, by input name
    sizes_checked: tuple[Mapping[str, int], ...] = ()  # per parity check: dim name -> size
    static_reason: str | None = None  # why the default sequence was left static

    def __str__(self) -> str:
        names = list(dict.fromkeys(n for dims in (self.dynamic_dims or {}).values()
                                   for n in dims.values()))
        dynamic = f", dynamic {', '.join(names)}" if names else ""
        if names == ["batch"] or not names:
            where = f"batch {', '.join(map(str, self.batch_sizes))}"
        else:
            where = "; ".join(", ".join(f"{n} {s}" for n, s in sizes.items())
                              for sizes in self.sizes_checked)
        lines = [
            f"wrote {self.path}{f' and {self.data_path.name}' if self.data_path else ''} "
            f"({self.size_bytes / 1e6:.2f} MB, opset {self.opset}, {self.exporter} exporter"
            f"{dynamic})",
            f"onnxruntime vs PyTorch at {where}: "
            f"max abs diff {self.max_abs_diff:.2e}, max rel diff {self.max_rel_diff:.2e}",
        ]
        if self.fallback_reason:
            lines.append(f"fell back to the legacy exporter: {self.fallback_reason}")
        if self.static_reason:
            lines.append(f"the sequence stays static: {self.static_reason}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Inputs:
    """The example inputs in the order of the forward's signature, and the tensors among them
    under the names the ONNX inputs get."""

    args: tuple[object, ...]
    kwargs: dict[str, object]
    names: tuple[str, ...]  # of the tensors, in pytree order of (args, kwargs)
    nested: frozenset[str] = frozenset()  # the names of tensors inside a list, tuple or dict

    @property
    def tensors(self) -> list[torch.Tensor]:
        return [t for t in pytree.tree_leaves((self.args, self.kwargs))
                if isinstance(t, torch.Tensor)]

    def feed(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.tensors))

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> _Inputs:
        """The same inputs with the tensors replaced, in order."""
        leaves, spec = pytree.tree_flatten((self.args, self.kwargs))
        it = iter(tensors)
        args, kwargs = pytree.tree_unflatten(
            [next(it) if isinstance(v, torch.Tensor) else v for v in leaves], spec)
        return replace(self, args=tuple(args), kwargs=dict(kwargs))

    @property
    def batch(self) -> int:
        """Dim 0 of the first tensor input, or the length of a list before it (a detector's
        images)."""
        first = next(v for v in (*self.args, *self.kwargs.values())
                     if isinstance(v, (torch.Tensor, list, tuple, dict)))
        if isinstance(first, torch.Tensor):
            return first.shape[0] if first.dim() else 1
        return len(first)


def _key_name(key: object) -> str:
    """One step of a pytree path: a MappingKey's key, a SequenceKey's index, an attribute."""
    for attr in ("key", "idx", "name"):  # MappingKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _tensor_names(name: str, value: object) -> list[str]:
    """The names of the tensors in one input: its own, or, in a list or dict of tensors, its
    name and each tensor's place (``images_0``)."""
    if isinstance(value, torch.Tensor):
        return [name]
    return ["_".join([name, *map(_key_name, path)])
            for path, leaf in pytree.tree_flatten_with_path(value)[0]
            if isinstance(leaf, torch.Tensor)]


def _bind(model: nn.Module, args: tuple[torch.Tensor, ...], kwargs: Mapping[str, object]) -> _Inputs:
    """The inputs checked against `model.forward`'s signature, keyword inputs put in its order
    (torch.export matches dynamic shapes to keyword inputs in that order), every tensor named
    after its parameter (``args_0`` for a ``*args`` parameter, ``input_0`` where the signature
    cannot be read)."""
    odd = [k for k, v in kwargs.items()
           if not isinstance(v, (torch.Tensor, bool, int, float, str, type(None)))]
    if odd:
        raise InputError(f"example_kwargs {', '.join(odd)}: a keyword input is a tensor or a "
                         "constant (bool, number, string, None)")
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or C forward: positional inputs only
        if kwargs:
            raise InputError(f"cannot read the signature of {type(model).__name__}.forward, so "
                             "its keyword inputs cannot be placed: pass them positionally") from None
        arg_names = [f"input_{i}" for i in range(len(args))]
        names = [n for name, a in zip(arg_names, args) for n in _tensor_names(name, a)]
        return _Inputs(args, {}, tuple(names), _nested(arg_names, args))
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InputError(f"the example inputs do not fit {type(model).__name__}.forward"
                         f"{signature}: {exc}; pass them in order in example_inputs, or by "
                         "name in example_kwargs") from exc
    params = list(signature.parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL),
                len(args))
    arg_names = [params[i].name if i < star else f"{params[star].name}_{i - star}"
                 for i in range(len(args))]
    position = {p.name: i for i, p in enumerate(params)}
    ordered = dict(sorted(kwargs.items(), key=lambda kv: position.get(kv[0], len(params))))
    names = [n for name, a in zip(arg_names, args) for n in _tensor_names(name, a)]
    names += [k for k, v in ordered.items() if isinstance(v, torch.Tensor)]
    return _Inputs(args, ordered, tuple(names), _nested(arg_names, args))


def _nested(arg_names: Sequence[str], args: Sequence[object]) -> frozenset[str]:
    """The names of the tensors that are inside a list, tuple or dict input."""
    return frozenset(n for name, a in zip(arg_names, args) if not isinstance(a, torch.Tensor)
                     for n in _tensor_names(name, a))


def _dims(inputs: _Inputs, dynamic_dims: DynamicDims | None,
          dynamic_batch: bool) -> tuple[dict[str, dict[int, str]], frozenset[tuple[str, int]]]:
    """The dims to make dynamic, by input name, and those of them that may stay fixed.

    Given dims are checked, and must all be dynamic in the file. By default the batch (dim 0
    of every tensor input) must be, and the sequence (dim 1 of integer 2-D inputs, where the
    example's is longer than 1) is where the model allows it: these are the dims
    `fxprune.trace` leaves free in torch.export, and a model with learned positions for a
    fixed length keeps its sequence fixed. Tensors inside a list (a detector's images, whose
    dim 0 is their channels) stay fixed."""
    feed = inputs.feed()
    if dynamic_dims is None:
        dims: dict[str, dict[int, str]] = {}
        loose = set()
        for name, t in feed.items():
            if name in inputs.nested:
                continue
            d = {0: "batch"} if dynamic_batch and t.dim() > 0 else {}
            if t.dim() == 2 and not t.is_floating_point() and t.shape[1] > 1:
                d[1] = "sequence"
                loose.add((name, 1))
            if d:
                dims[name] = d
        return dims, frozenset(loose)
    dims = {}
    for name, axes in dynamic_dims.items():
        if name not in feed:
            raise InputError(f"dynamic_dims names '{name}', which is not a tensor input: the "
                             f"tensor inputs are {', '.join(feed) or 'none'}")
        dims[name] = {}
        for dim, label in axes.items():
            rank = feed[name].dim()
            if not isinstance(dim, int) or not -rank <= dim < rank:
                raise InputError(f"dynamic_dims['{name}'] names dim {dim!r}, but '{name}' has "
                                 f"{rank} dims: give dims from 0 to {rank - 1}")
            if not isinstance(label, str) or not label:
                raise InputError(f"dynamic_dims['{name}'][{dim}] must be the dim's name, a "
                                 f"non-empty string such as 'batch', got {label!r}")
            dims[name][dim % rank] = label
    return {name: axes for name, axes in dims.items() if axes}, frozenset()


def _without(dims: Mapping[str, Mapping[int, str]],
             drop: Iterable[tuple[str, int]]) -> dict[str, dict[int, str]]:
    drop = set(drop)
    kept = {name: {d: label for d, label in axes.items() if (name, d) not in drop}
            for name, axes in dims.items()}
    return {name: axes for name, axes in kept.items() if axes}


def _sizes(inputs: _Inputs, dims: Mapping[str, Mapping[int, str]]) -> dict[str, int]:
    """Each dynamic dim's size in `inputs`, by the dim's name (its first input's)."""
    sizes: dict[str, int] = {}
    for name, t in inputs.feed().items():
        for dim, label in dims.get(name, {}).items():
            sizes.setdefault(label, t.shape[dim])
    return sizes


def _resized(inputs: _Inputs, dims: Mapping[str, Mapping[int, str]], sizes: Mapping[str, int],
             seed: int = 0) -> _Inputs:
    """`inputs` with each dynamic dim at `sizes[its name]`. Floating-point tensors are drawn
    anew; the others (token ids, masks) are tiled along the dims that change, so their values
    stay valid (ids within the vocabulary, a mask of zeros and ones)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for name, t in inputs.feed().items():
        axes = dims.get(name, {})
        shape = [sizes[axes[d]] if d in axes else n for d, n in enumerate(t.shape)]
        if list(t.shape) == shape:
            out.append(t)
        elif t.is_floating_point():
            out.append(torch.randn(shape, generator=generator, dtype=t.dtype).to(t.device))
        else:
            for d, n in enumerate(shape):
                if n != t.shape[d]:
                    t = torch.cat([t] * math.ceil(n / t.shape[d]), d).narrow(d, 0, n)
            out.append(t.contiguous())
    return inputs.with_tensors(out)


def _second_shape(inputs: _Inputs, dims: Mapping[str, Mapping[int, str]]) -> _Inputs | None:
    """The inputs with every dynamic dim at another size: the batch (a dim 0) at 3, or 1 where
    the example has 3; any other dim (the sequence) SEQUENCE_STEP longer."""
    first_dim: dict[str, int] = {}
    for axes in dims.values():
        for d, label in axes.items():
            first_dim.setdefault(label, d)
    sizes = {label: ((1 if n == 3 else 3) if first_dim[label] == 0 else n + SEQUENCE_STEP)
             for label, n in _sizes(inputs, dims).items()}
    return _resized(inputs, dims, sizes) if sizes else None


def _traced(inputs: _Inputs, dims: Mapping[str, Mapping[int, str]]) -> _Inputs:
    """The inputs to export with: a dynamic dim of size 1 doubled, since torch.export
    specialises sizes 0 and 1."""
    sizes = _sizes(inputs, dims)
    if all(n != 1 for n in sizes.values()):
        return inputs
    log.info("exporting at size 2 where the example has size 1 so that the dim stays dynamic")
    return _resized(inputs, dims, {label: 2 if n == 1 else n for label, n in sizes.items()})


def _output_names(output: object) -> tuple[str, ...]:
    """Each tensor of the output, in pytree order, named after its path: ``logits``,
    ``text_model_output.pooler_output``, ``output_0`` in a tuple, ``output`` alone."""
    if isinstance(output, torch.Tensor):
        return ("output",)
    try:
        leaves = pytree.tree_flatten_with_path(output)[0]
    except Exception:  # noqa: BLE001 - a type registered without key paths: number them
        leaves = [((pytree.SequenceKey(i),), v) for i, v in enumerate(pytree.tree_leaves(output))]
    names: list[str] = []
    for path, value in leaves:
        if isinstance(value, torch.Tensor):
            name = ".".join(map(_key_name, path))
            name = f"output_{name}" if not name or name[0].isdigit() else name
            names.append(name if name not in names else f"{name}_{len(names)}")
    return tuple(names)


def _call(model: nn.Module, inputs: _Inputs) -> object:
    with torch.no_grad():
        return model(*inputs.args, **inputs.kwargs)


class _Flat(nn.Module):
    """`model` with its tensor inputs positional and its output a flat tuple of tensors: what
    the TorchScript-based exporter can trace."""

    def __init__(self, model: nn.Module, inputs: _Inputs) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs
        self.training = False  # the legacy exporter exports a module in training mode as such

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        filled = self.inputs.with_tensors(tensors)
        out = self.model(*filled.args, **filled.kwargs)
        return tuple(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def _refuse_fxprune_only(model: nn.Module) -> None:
    """Catalysts and other training-time modules have no meaning in a deployed graph."""
    for name, module in model.named_modules():
        if getattr(module, "fxprune_only", False):
            raise ExportError(
                f"the model still holds the fxprune-only module '{name}' "
                f"({type(module).__name__}): finish pruning first (CatalystPruner.finalize() "
                "returns the model without catalysts), then export that."
            )


def _dynamo(model: nn.Module, inputs: _Inputs, dims: Mapping[str, Mapping[int, str]],
            loose: frozenset[tuple[str, int]], outputs: Sequence[str], path: str,
            opset: int | None, external_data: bool) -> int:
    """Export with torch.onnx's torch.export-based exporter; returns the opset."""
    shapes = None
    if dims:
        # Per input in signature order: Dim.DYNAMIC (export fails where the model fixes the
        # dim), or Dim.AUTO for a loose dim (torch.onnx leaves it symbolic even where the model
        # fixes it: the parity check finds out). Their names are given below.
        names = iter(inputs.names)

        def spec(value: object) -> dict[int, object] | None:
            if not isinstance(value, torch.Tensor):
                return None  # a constant: export bakes it in
            name = next(names)
            return {d: torch.export.Dim.AUTO if (name, d) in loose
                    else torch.export.Dim.DYNAMIC for d in dims.get(name, {})}

        # a list of tensors gets a list of specs
        shapes = tuple(pytree.tree_map(spec, value)
                       for value in (*inputs.args, *inputs.kwargs.values()))
    traced = _traced(inputs, dims)
    # The exporter prints its progress; keep the library quiet (the report says what happened).
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, traced.args, kwargs=traced.kwargs or None,
                                    dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                    input_names=list(inputs.names), output_names=list(outputs),
                                    external_data=False, verbose=False)
        # torch.onnx names a dim after its symbol (s27): give it its name (two symbols may get
        # one name where the model leaves them apart, the batches of CLIP's text and images)
        rename = {value.shape[d].value: label
                  for value in program.model.graph.inputs
                  for d, label in dims.get(value.name, {}).items()
                  if isinstance(getattr(value.shape[d], "value", None), str)}
        if rename:
            program.rename_axes(rename)
        program.save(path, external_data=external_data)
    return int(program.model.opset_imports.get("", opset or 18))


def _legacy(model: nn.Module, inputs: _Inputs, dims: Mapping[str, Mapping[int, str]],
            outputs: Sequence[str], path: str, opset: int | None, external_data: bool) -> int:
    """Export with the TorchScript-based exporter, which marks the dims dynamic as asked
    without checking that the model allows it (the parity check does)."""
    opset = opset or 17
    axes: dict[str, dict[int, str]] = {name: dict(d) for name, d in dims.items()}
    batch = next((d[0] for d in dims.values() if 0 in d), None)
    if batch is not None:  # the outputs share the inputs' batch
        axes.update({name: {0: batch} for name in outputs})
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Flat(model, inputs), tuple(inputs.tensors), path, dynamo=False,
                          opset_version=opset, input_names=list(inputs.names),
                          output_names=list(outputs), dynamic_axes=axes or None)
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


def _run_onnx(path: str, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> list[np.ndarray]:
    """The file's outputs in onnxruntime, fed in order (a sequence) or by name (a mapping)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    if isinstance(inputs, Mapping):
        feed = {i.name: inputs[i.name].detach().cpu().numpy() for i in session.get_inputs()}
    else:
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)


def _torch_outputs(model: nn.Module, inputs: _Inputs) -> list[np.ndarray]:
    """The model's output tensors in pytree order: the ONNX outputs' order."""
    leaves = pytree.tree_leaves(_call(model, inputs))
    return [o.detach().float().cpu().numpy() for o in leaves if isinstance(o, torch.Tensor)]


def _parity(model: nn.Module, path: str, checks: Sequence[_Inputs],
            dims: Mapping[str, Mapping[int, str]],
            outputs: Sequence[str]) -> tuple[float, float, str]:
    """The largest absolute and relative differences over the outputs, and the output with
    the largest absolute one."""
    worst_abs = worst_rel = 0.0
    where = outputs[0] if outputs else ""
    for inputs in checks:
        try:
            ours = _run_onnx(path, inputs.feed())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            sizes = _sizes(inputs, dims) or {"batch": inputs.batch}
            raise ExportError(
                f"onnxruntime cannot run the exported graph at "
                f"{', '.join(f'{n} {s}' for n, s in sizes.items())}: {first_line(exc)}. "
                "If the model fixes one of these sizes (e.g. view(2, ...)), leave that dim "
                "out of dynamic_dims, or export with dynamic_batch=False for the batch."
            ) from exc
        theirs = _torch_outputs(model, inputs)
        if len(ours) != len(theirs):
            raise ExportError(f"onnxruntime gave {len(ours)} outputs, PyTorch {len(theirs)}")
        for name, a, b in zip(outputs, ours, theirs):
            if a.shape != b.shape:
                # a detector's count of boxes is data-dependent: here the runtimes disagree
                raise ExportError(f"onnxruntime's {name} has shape {a.shape}, PyTorch's "
                                  f"{b.shape}: the file does not compute what PyTorch does")
            diff = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
            scale = float(np.abs(b).max(initial=0.0))
            if diff > worst_abs:
                worst_abs, where = diff, name
            worst_rel = max(worst_rel, diff / max(scale, 1e-12))
    return worst_abs, worst_rel, where


@dataclass(frozen=True)
class _Written:
    exporter: str
    opset: int
    fallback: str | None  # why the torch.export-based exporter was not used
    checks: list[_Inputs]  # the inputs parity was checked on
    max_abs_diff: float
    max_rel_diff: float


def _write_checked(model: nn.Module, inputs: _Inputs, dims: Mapping[str, Mapping[int, str]],
                   loose: frozenset[tuple[str, int]], outputs: Sequence[str], path: str,
                   opset: int | None, external_data: bool, check: bool,
                   exporter: str) -> _Written:
    """Write the file at `path` (torch.export-based exporter, else the legacy one; only the
    legacy one with ``exporter="legacy"``) and check it in onnxruntime. Raises `ExportError`
    where onnxruntime cannot run the file or, with `check`, differs beyond tolerance."""
    fallback, used = None, "legacy"
    if exporter == "auto":
        try:
            opset_used = _dynamo(model, inputs, dims, loose, outputs, path, opset, external_data)
            used = "dynamo"
        except Exception as exc:  # noqa: BLE001 - any exporter failure: try the other one
            fallback = f"{type(exc).__name__}: {first_line(exc)[:300]}"
            for f in Path(path).parent.iterdir():  # whatever the failed exporter left
                f.unlink()
    if used == "legacy":
        try:
            opset_used = _legacy(model, inputs, dims, outputs, path, opset, external_data)
        except Exception as exc:  # noqa: BLE001 - torch.jit.trace and the ONNX symbolics raise their own
            tried = f"the torch.export-based one: {fallback}; " if fallback else ""
            raise ExportError(
                f"no exporter takes the model: {tried}the legacy one: {type(exc).__name__}: "
                f"{first_line(exc)[:300]}"
            ) from exc
    import onnx

    onnx.checker.check_model(path, full_check=True)
    second = _second_shape(inputs, dims)
    checks = [inputs] + ([second] if second is not None else [])
    worst_abs, worst_rel, where = _parity(model, path, checks, dims, outputs)
    if check and worst_abs > ATOL and worst_rel > RTOL:
        raise ExportError(
            f"onnxruntime differs from PyTorch by {worst_abs:.2e} at {where} (relative "
            f"{worst_rel:.2e}), beyond {ATOL:g} absolute and {RTOL:g} relative; no file was written. Try "
            "another opset, or check=False to keep the file and inspect it."
        )
    return _Written(used, opset_used, fallback, checks, worst_abs, worst_rel)


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    example_kwargs: Mapping[str, object] | None = None,
    dynamic_dims: DynamicDims | None = None,
    opset: int | None = None,
    dynamic_batch: bool = True,
    check: bool = True,
    external_data: bool | None = None,
    exporter: str = "auto",
) -> ExportReport:
    """Write `model` to `path` as ONNX and report how closely onnxruntime matches PyTorch.

    `example_kwargs` are keyword inputs, as in `fxprune.trace` (tensors, or constants such as
    ``use_cache=False`` that the file bakes in). `dynamic_dims` names the dims left free, by
    input name: ``{"input_ids": {0: "batch", 1: "sequence"}}`` (dims with one name are one dim
    of the file). By default the batch (dim 0 of every tensor input; none with
    ``dynamic_batch=False``) and the sequence (dim 1 of integer 2-D inputs) are free, not the
    dims of tensors in a list (a detector's images); ``{}`` exports static shapes. Parity is checked on the example and on inputs where every dynamic
    dim has another size (batch 3, the sequence 4 longer).

    Uses the torch.export-based exporter (``dynamo=True``) and falls back to the legacy one,
    with a warning saying why, only where it fails. With ``check=True`` a difference beyond
    1e-4 absolute and 1e-3 relative raises `ExportError` and no file is left behind.
    The weights go to ``<path>.data`` beside the model when ``external_data=True`` or, by
    default, when they would pass protobuf's 2 GB limit (ViT-H/14, RegNet-Y-128GF).
    ``exporter="legacy"`` uses the TorchScript exporter alone: deprecated, but about 25x
    faster to write (0.33 s against 8.1 s for MobileNet-v2), which `fxprune.latency_table`
    needs for its many timed files; onnxruntime runs the two files alike.
    """
    if exporter not in ("auto", "legacy"):
        raise InputError(f"exporter must be 'auto' or 'legacy', got {exporter!r}")
    model = with_code(check_module(model))  # the exporters read forward's signature
    inputs = _bind(model, as_input_tuple(example_inputs), dict(example_kwargs or {}))
    if not inputs.names:
        raise InputError("the example inputs hold no tensor: pass e.g. torch.randn(1, 3, 224, 224)")
    dims, loose = _dims(inputs, dynamic_dims, dynamic_batch)
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
        outputs = _output_names(_call(model, inputs))
        # Loose dims (the default sequence) first; where the file does not hold at another
        # size, again with them fixed.
        attempts = [dims, _without(dims, loose)] if loose else [dims]
        static = None
        for i, attempt in enumerate(attempts):
            try:
                written = _write_checked(model, inputs, attempt, loose, outputs, tmp, opset,
                                         external_data, check or i < len(attempts) - 1,
                                         exporter)
                break
            except ExportError as exc:
                if i == len(attempts) - 1:
                    raise
                static = f"at another length, {first_line(exc)[:300]}"
                log.info("exporting with the sequence static: %s", static)
                for f in staging.iterdir():
                    f.unlink()
        dims = attempt
        if written.fallback:
            warnings.warn(f"fxprune: the torch.export-based ONNX exporter failed "
                          f"({written.fallback}); used the legacy TorchScript exporter instead",
                          stacklevel=2)
        size = sum(f.stat().st_size for f in staging.iterdir())
        data = _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for m, mode in was_training.items():
            m.training = mode
    checks = written.checks
    return ExportReport(
        path=target, data_path=data, exporter=written.exporter, opset=written.opset,
        size_bytes=size, dynamic_batch=any(0 in d for d in dims.values()),
        batch_sizes=tuple(c.batch for c in checks),
        max_abs_diff=written.max_abs_diff, max_rel_diff=written.max_rel_diff,
        fallback_reason=written.fallback, input_names=inputs.names, output_names=outputs,
        dynamic_dims=dims, sizes_checked=tuple(_sizes(c, dims) for c in checks),
        static_reason=static,
    )
