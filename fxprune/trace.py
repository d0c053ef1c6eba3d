"""Trace a model into a GraphModule whose nodes carry shapes.

Invariant established: every node of the returned graph has ``node.meta["tensor_meta"]``
(shape and dtype, nested for tuple outputs), and call_module nodes for submodules that had to be
made leaves carry ``node.meta["fxprune.leaf"]`` (a ``LeafReason``) saying why. get_attr nodes
carry ``node.meta["fxprune.owner"]`` (a ``ParamOwner``): the class of the module that owns the
tensor, which the GraphModule replaces by a plain container.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from fxprune import ops
from fxprune.errors import (
    InputError,
    TraceError,
    as_input_tuple,
    check_module,
    describe,
    first_line,
)

log = logging.getLogger(__name__)

LEAF_KEY = "fxprune.leaf"
OWNER_KEY = "fxprune.owner"
# Frames inside torch are fx, nn.Module or torch-function machinery, never the user's line.
_SKIP_DIR = os.path.dirname(torch.__file__) + os.sep
MAX_LEAF_RETRIES = 32


@dataclass(frozen=True)
class ParamOwner:
    """The module that owns a get_attr node's tensor, as the user built it (the GraphModule
    keeps only a plain container in its place)."""

    module: str
    cls: type


@dataclass(frozen=True)
class LeafReason:
    """Why a submodule was traced as an opaque leaf (its channels are then frozen)."""

    module: str
    reason: str


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: Iterable[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = set(leaves)
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args: object, **kwargs: object) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        if node.op in ("placeholder", "output"):
            return node  # made by fx itself: no user line to point at
        # fx's own record_stack_traces costs ~10x the trace; one frame is all errors need.
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(_SKIP_DIR):
            frame = frame.f_back
        # Reaching this module means the op was made by the tracer itself, outside the model.
        if frame is not None and frame.f_code.co_filename != __file__:
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            node.stack_trace = (
                f'File "{frame.f_code.co_filename}", line {frame.f_lineno}, '
                f"in {frame.f_code.co_name}\n    {code}\n"
            )
        return node


def _failing_module(model: torch.nn.Module, exc: BaseException) -> tuple[str, str] | None:
    """The innermost submodule of `model` whose forward was running when `exc` was raised,
    and the user's source line there."""
    names = {id(m): name for name, m in model.named_modules()}
    found: tuple[str, str] | None = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            found = (names[id(owner)], f"{frame.f_code.co_filename}:{tb.tb_lineno}")
        tb = tb.tb_next
    return found


def _defaults(model: torch.nn.Module, given: int, named: Iterable[str]) -> dict[str, object]:
    """The forward arguments the example does not give, at their defaults (fx then traces the
    branch the default takes, as a call without them would); an argument with no default that
    is not given is an `InputError`."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read: trace every argument
        return {}
    fixed = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    rest = [p for p in parameters if p.kind in fixed][given:]
    missing = [p.name for p in rest if p.name not in named and p.default is inspect.Parameter.empty]
    if missing:
        raise InputError(f"the model's forward needs {', '.join(missing)}, which the example does "
                         "not give: pass it in example_inputs (in order) or example_kwargs")
    unknown = sorted(set(named) - {p.name for p in rest})
    if unknown:
        raise InputError(f"example_kwargs names {', '.join(unknown)}, which is not a further "
                         f"argument of {type(model).__name__}.forward")
    return {p.name: p.default for p in rest if p.name not in named}


def _symbolic_trace(
    model: torch.nn.Module, leaf_types: tuple[type, ...], concrete: dict[str, object]
) -> tuple[torch.fx.GraphModule, dict[str, LeafReason]]:
    leaves: dict[str, LeafReason] = {}
    for _ in range(MAX_LEAF_RETRIES):
        tracer = _Tracer(leaves, leaf_types)
        try:
            graph = tracer.trace(model, concrete or None)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; we classify below
            where = _failing_module(model, exc)
            if where is None or where[0] == "" or where[0] in leaves:
                line = f" at {where[1]}" if where else ""
                module = f"module '{where[0] or type(model).__name__}'" if where else "the model"
                raise TraceError(
                    f"torch.fx cannot trace {module}{line}: {type(exc).__name__}: {exc}. "
                    "Rewrite the data-dependent control flow there (e.g. with torch.where), "
                    "or pass the module's class in leaf_modules=... to treat it as opaque."
                ) from exc
            name, line = where
            reason = f"made a leaf because tracing failed at {line}: {type(exc).__name__}: {exc}"
            log.info("tracing %s as a leaf: %s", name, reason)
            leaves[name] = LeafReason(module=name, reason=reason)
            continue
        root_name = type(model).__name__
        return torch.fx.GraphModule(tracer.root, graph, root_name), leaves
    raise TraceError(f"gave up after making {MAX_LEAF_RETRIES} submodules leaves: {sorted(leaves)}")


class _ShapeProp(torch.fx.Interpreter):
    """Shape propagation on fake tensors: no real compute, so tracing stays cheap."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        # run_node's InputError already names the node and the user's line; fx's extra
        # traceback would append them again, plus a pointer to tlparse, to the message.
        self.extra_traceback = False

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:
        module = self.fetch_attr(target)
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            # Fake kernels of common modules cost far more than the arithmetic of their shapes.
            entry = ops.lookup_module(module)
            shape = (entry.shape(module, tuple(args[0].shape))
                     if entry is not None and entry.shape is not None else None)
            if shape is not None:
                return args[0].new_empty(shape)
        return super().call_module(target, args, kwargs)

    def run_node(self, n: torch.fx.Node) -> object:
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - any failure here means the inputs do not fit
            raise InputError(
                f"the example inputs do not run through the model: node {describe(n)} failed "
                f"with {type(exc).__name__}: {first_line(exc)}. Check the input shape and dtype."
            ) from exc
        n.meta["tensor_meta"] = _metadata(result)
        return result


def _metadata(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return _extract_tensor_metadata(value)
    if isinstance(value, torch.Size):
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_metadata(v) for v in value)
    return None


# Fake tensors log a kernel's failure with its traceback at ERROR before raising it; a failure
# here is expected (a bad input, or a leaf that needs real data) and reported by fxprune.
_FAKE_LOG = logging.getLogger("torch._subclasses.fake_tensor")


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def propagate_shapes(gm: torch.fx.GraphModule, inputs: tuple[object, ...]) -> None:
    """Fill ``node.meta["tensor_meta"]`` by running `gm` on fake copies of `inputs`.

    Leaf modules that branch on data cannot run on fake tensors; then the graph runs once on
    the real inputs instead.
    """
    was_training = gm.training
    gm.eval()  # never update BatchNorm statistics while looking at shapes
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake = tuple(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs)
        try:
            with mode, torch.no_grad(), _quiet(_FAKE_LOG):
                _ShapeProp(gm).run(*fake)
        except InputError:
            log.info("fake shape propagation failed; running the model once on the real inputs")
            with torch.no_grad():
                _ShapeProp(gm).run(*inputs)
    finally:
        gm.train(was_training)


def trace(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    example_kwargs: Mapping[str, torch.Tensor] | None = None,
    leaf_modules: Iterable[type] = (),
) -> torch.fx.GraphModule:
    """Symbolically trace `model` and record every node's shape and dtype.

    Submodules whose forward cannot be traced (data-dependent control flow) are retried as
    leaves; their channels are then frozen, with the reason in ``node.meta["fxprune.leaf"]``.
    Forward arguments given neither in `example_inputs` nor by name in `example_kwargs` are
    traced at their defaults (the graph keeps them as placeholders with those defaults).
    Raises `InputError` for unusable input and `TraceError` when nothing works.
    """
    model = check_module(model)
    inputs = as_input_tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    as_input_tuple(tuple(kwargs.values()))  # keyword inputs are tensors too
    if isinstance(model, torch.fx.GraphModule):
        gm, leaves = model, {}
    else:
        concrete = _defaults(model, len(inputs), kwargs)
        gm, leaves = _symbolic_trace(model, tuple(leaf_modules), concrete)
    inputs = _placeholder_values(gm, inputs, kwargs)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in leaves:
            node.meta[LEAF_KEY] = leaves[node.target]
        if node.op == "get_attr" and "." in node.target and OWNER_KEY not in node.meta:
            owner = node.target.rpartition(".")[0]
            with contextlib.suppress(AttributeError):
                node.meta[OWNER_KEY] = ParamOwner(owner, type(model.get_submodule(owner)))
    propagate_shapes(gm, inputs)
    return gm


def _placeholder_values(gm: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...],
                        kwargs: Mapping[str, torch.Tensor]) -> tuple[object, ...]:
    """A value for every placeholder, in order: the inputs, then keyword inputs by name, then
    the defaults fx recorded for arguments traced at their defaults."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values: list[object] = list(inputs[:len(placeholders)])
    for node in placeholders[len(values):]:
        name = node.target.lstrip("*")
        if name in kwargs:
            values.append(kwargs[name])
        elif node.args:
            values.append(node.args[0])
        else:
            break
    if len(values) != len(placeholders) or len(inputs) > len(placeholders):
        raise InputError(f"the model's forward takes {len(placeholders)} inputs, "
                         f"{len(inputs) + len(kwargs)} were given")
    return tuple(values)


__all__ = ["LeafReason", "ParamOwner", "trace", "propagate_shapes"]
