"""Trace a model into a GraphModule whose nodes carry shapes.

Invariant established: every node of the returned graph has ``node.meta["tensor_meta"]``
(shape and dtype, nested for tuple outputs), and call_module nodes for submodules that had to be
made leaves carry ``node.meta["fxprune.leaf"]`` (a ``LeafReason``) saying why. get_attr nodes
carry ``node.meta["fxprune.owner"]`` (a ``ParamOwner``): the class of the module that owns the
tensor, which the GraphModule replaces by a plain container. ``gm.meta["fxprune.specialised"]``
lists the values computed from sizes that the forward needed as plain Python values (the
conditions it branched on, ints), taken from the example's shapes.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import logging
import operator
import os
import sys
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from fxprune import ops
from fxprune.errors import (
    InputError,
    TraceError,
    as_input_tuple,
    check_module,
    describe,
    first_line,
)
from fxprune.ops.api import ShapeRule

log = logging.getLogger(__name__)

LEAF_KEY = "fxprune.leaf"
CAPTURE_KEY = "fxprune.capture"  # gm.meta: how the graph was captured (see `trace`)
CAPTURES = ("auto", "symbolic", "export")
SPECIALISED_KEY = "fxprune.specialised"  # gm.meta: `Specialised` values, from example shapes
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


@dataclass(frozen=True)
class Specialised:
    """A value computed from sizes that Python needed as a plain bool or int (a condition, an
    ``int(n ** 0.5)``), taken from the example's shapes: the graph holds what it chose (the
    branch taken, the int), so it is valid for inputs of the sizes where the value is the same
    (a window that fits the feature map, a patch grid that needs no interpolation)."""

    where: str
    value: int


class _Proxy(torch.fx.Proxy):
    """A proxy that becomes an int where Python needs one (``int(...)``, ``range(...)``), has
    a length where it is a sequence of sizes (``*x.shape[:-1]``), and records assignment into
    it (``x[..., 2] = y``) as an ``operator.setitem`` node."""

    def __setitem__(self, key: object, value: object) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __len__(self) -> int:
        value = self.tracer.sequence(self)
        if value is None:
            return super().__len__()  # fx's error: len() of a traced tensor
        return len(value)

    def __int__(self) -> int:
        return self.tracer.concrete(self, int)

    def __index__(self) -> int:
        return self.tracer.concrete(self, int)


class _Tracer(torch.fx.Tracer):
    def __init__(self, leaves: Iterable[str], leaf_types: tuple[type, ...],
                 example: _Example | None = None) -> None:
        super().__init__()
        self.leaves = set(leaves)
        self.leaf_types = leaf_types
        self.example = example
        self.specialised: list[Specialised] = []
        self._env: dict[torch.fx.Node, object] = {}
        # id -> qualified name of the root's parameters, and of its buffers (made on first use)
        self._names: tuple[dict[int, str], dict[int, str]] | None = None

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _Proxy(node, self)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        return self.concrete(obj, bool)

    def iter(self, obj: torch.fx.Proxy) -> Iterator[object]:
        """Iterating a sequence of sizes (``*x.shape[:-1]``): one proxy per element; only the
        length, the rank, comes from the example."""
        value = self.sequence(obj)
        if value is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(len(value))])

    def sequence(self, obj: torch.fx.Proxy) -> tuple | list | None:
        """The proxy's value where it is a sequence (of sizes), else None."""
        value = self._value(obj.node) if self.example is not None else None
        return value if isinstance(value, (tuple, list)) else None

    def concrete(self, obj: torch.fx.Proxy, kind: type) -> int:
        """Control flow on a proxy, or an int made of one: decided on the example inputs where
        the value depends on sizes alone (computed on fake tensors, so a value that depends on
        data still fails and its submodule becomes a leaf)."""
        value = self._value(obj.node) if self.example is not None else None
        if not isinstance(value, (bool, int, float)):
            if kind is bool:
                return super().to_bool(obj)
            raise TypeError(f"{kind.__name__}() of a traced value that is not a size")
        frame = _user_frame(sys._getframe(1), self_too=True)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
        self.specialised.append(Specialised(where, kind(value)))
        return kind(value)

    def _value(self, node: torch.fx.Node) -> object:
        """The node's value on fake copies of the example, the graph so far run up to it."""
        if node not in self._env:
            try:
                # fx patches nn.Module calls while it traces; the run must see the real ones
                with (_unpatched(), self.example.mode, torch.no_grad(), _quiet(_FAKE_LOG),
                      _kept_state(self.root.modules())):
                    run = torch.fx.Interpreter(self.root, garbage_collect_values=False, graph=self.graph)
                    run.env = self._env
                    values = iter(self.example.values(self.graph))
                    for n in self.graph.nodes:
                        if n.op == "placeholder":
                            self._env[n] = next(values)
                        elif n not in self._env:
                            self._env[n] = run.run_node(n)
                        if n is node:
                            break
            except Exception:  # noqa: BLE001 - a value that fake tensors cannot give: no decision
                return None
        return self._env.get(node)

    # fx finds the name of a parameter or buffer that forward reads, or passes to an op, by
    # walking all of the root's at every use: quadratic in the model's size. These two
    # overrides look the name up instead, and leave a tensor not found to fx.

    def getattr(self, attr: str, attr_val: object,
                parameter_proxy_cache: dict[str, torch.fx.Proxy]) -> object:
        name = self._name(attr_val, buffer=False) if isinstance(attr_val, torch.nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = self._name(attr_val, buffer=True)
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:  # param_shapes_constant is off: a plain proxy
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_arg(self, a: object) -> torch.fx.node.Argument:
        if isinstance(a, torch.Tensor):
            name = self._name(a, buffer=not isinstance(a, torch.nn.Parameter))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def _name(self, value: torch.Tensor, buffer: bool) -> str | None:
        """The name under which the root holds `value` as a parameter (or buffer): its first
        in named_parameters() (named_buffers()) order, which is what fx's walk finds. None
        where it holds no such tensor, or no longer under that name."""
        if self._names is None:
            self._names = ({id(p): n for n, p in self.root.named_parameters()},
                           {id(b): n for n, b in self.root.named_buffers()})
        name = self._names[buffer].get(id(value))
        if name is None:
            return None
        # Check it is still there, through the modules' own dicts: fx patches getattr on
        # modules while tracing, to call this tracer's.
        *path, attr = name.split(".")
        module: torch.nn.Module | None = self.root
        for part in path:
            module = module._modules.get(part)
            if module is None:
                return None
        held = module._buffers if buffer else module._parameters
        return name if held.get(attr) is value else None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves or isinstance(m, self.leaf_types):
            return True
        # fx keeps every torch.nn module whole; those the op table does not know
        # (nn.TransformerEncoder, nn.TransformerDecoderLayer, ...) are traced through instead
        return super().is_leaf_module(m, module_qualified_name) and (
            ops.lookup_module(m) is not None)

    def create_node(self, *args: object, **kwargs: object) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        if node.op in ("placeholder", "output"):
            return node  # made by fx itself: no user line to point at
        # fx's own record_stack_traces costs ~10x the trace; one frame is all errors need.
        frame = _user_frame(sys._getframe(1))
        # Reaching this module means the op was made by the tracer itself, outside the model.
        if frame is not None and frame.f_code.co_filename != __file__:
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            node.stack_trace = (
                f'File "{frame.f_code.co_filename}", line {frame.f_lineno}, '
                f"in {frame.f_code.co_name}\n    {code}\n"
            )
        return node


# The tracer's stand-ins for fx's own methods: their frames are fx's, not the user's line.
_FX_OVERRIDES = frozenset({_Tracer.getattr.__code__, _Tracer.create_arg.__code__})


def _user_frame(frame: types.FrameType | None, self_too: bool = False) -> types.FrameType | None:
    """The first frame outside torch (and this module, with `self_too`): the user's line, or
    this module's for what the tracer does itself."""
    while frame is not None and (frame.f_code.co_filename.startswith(_SKIP_DIR)
                                 or frame.f_code in _FX_OVERRIDES
                                 or self_too and frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame


class _Example:
    """Fake copies of the example inputs, for the placeholders of a graph being traced."""

    def __init__(self, inputs: tuple[object, ...], kwargs: Mapping[str, object]) -> None:
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.inputs = tuple(self._fake(v) for v in inputs)
        self.kwargs = {k: self._fake(v) for k, v in kwargs.items()}

    def _fake(self, value: object) -> object:
        return self.mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    def values(self, graph: torch.fx.Graph) -> tuple[object, ...]:
        return _placeholder_values(graph, self.inputs, self.kwargs)


@contextlib.contextmanager
def _kept_state(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Undo what a forward run while tracing assigns to `modules`: a module that caches a
    value on itself (ConViT's relative indices) or a norm in training mode would otherwise keep
    a proxy or a fake tensor in place of its real tensor. What the tracer itself adds (fx's
    tensor constants) stays."""
    saved = [(m, dict(m.__dict__), dict(m._buffers), dict(m._parameters)) for m in modules]
    try:
        yield
    finally:
        for m, attributes, buffers, parameters in saved:
            for name, value in list(m.__dict__.items()):
                if name not in attributes and isinstance(value, (torch.fx.Proxy, FakeTensor)):
                    del m.__dict__[name]
            m.__dict__.update(attributes)
            for table, kept in ((m._buffers, buffers), (m._parameters, parameters)):
                for name in [k for k in table if k not in kept]:
                    if isinstance(table[name], (torch.fx.Proxy, FakeTensor)):
                        del table[name]
                table.update(kept)


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
    model: torch.nn.Module, leaf_types: tuple[type, ...], concrete: dict[str, object],
    example: _Example,
) -> tuple[torch.fx.GraphModule, dict[str, LeafReason]]:
    leaves: dict[str, LeafReason] = {}
    for _ in range(MAX_LEAF_RETRIES):
        tracer = _Tracer(leaves, leaf_types, example)
        try:
            with _kept_state(model.modules()):  # a forward that caches a traced value on itself
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
        gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
        gm.meta[SPECIALISED_KEY] = tuple(tracer.specialised)
        if tracer.specialised:
            log.info("%d values computed from sizes taken from the example's shapes",
                     len(tracer.specialised))
        return gm, leaves
    raise TraceError(f"gave up after making {MAX_LEAF_RETRIES} submodules leaves: {sorted(leaves)}")


class _ShapeProp(torch.fx.Interpreter):
    """Shape propagation on fake tensors: no real compute, so tracing stays cheap.

    With a `mode`, tensors read by get_attr nodes (parameters used directly in the graph) are
    made fake once, up front: a real tensor among an op's inputs makes the fake mode convert it
    again and skip its cache for that op.
    """

    def __init__(self, gm: torch.fx.GraphModule, mode: FakeTensorMode | None = None) -> None:
        super().__init__(gm)
        self.mode = mode
        # Most nodes repeat a few layouts: their metadata is worked out once per layout.
        self._layouts: dict[tuple[object, ...], TensorMetadata] = {}
        # fetch_attr walks a dotted path per call: resolve each module name, and each module
        # class's shape rule, once.
        self._modules = dict(gm.named_modules(remove_duplicate=False))
        self._shape_rules: dict[type, ShapeRule | None] = {}
        # run_node's InputError already names the node and the user's line; fx's extra
        # traceback would append them again, plus a pointer to tlparse, to the message.
        self.extra_traceback = False

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> object:
        value = super().get_attr(target, args, kwargs)
        if self.mode is None or not isinstance(value, torch.Tensor):
            return value
        if value.layout is torch.strided and not value.is_quantized:
            # made from a meta tensor directly: the fake mode's conversion of a real tensor
            # (which keeps a memo and its storage's details) costs about 50 times as much
            with unset_fake_temporarily():
                meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                           device="meta")
            return FakeTensor(self.mode, meta, value.device)
        return self.mode.from_tensor(value)

    def call_function(self, target: object, args: tuple, kwargs: dict) -> object:
        # timm's norm-act layers call F.batch_norm: its fake kernel costs about 50 times the
        # check of its per-channel tensors' sizes against the input's channels
        if target is torch.nn.functional.batch_norm and args and isinstance(args[0], FakeTensor):
            x = args[0]
            per_channel = [*args[1:5], *(kwargs.get(k) for k in ("weight", "bias"))]
            if x.dim() >= 2 and all(t is None or isinstance(t, torch.Tensor) and t.shape == (x.shape[1],)
                                    for t in per_channel):
                return _empty(x, tuple(x.shape))
        return super().call_function(target, args, kwargs)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:
        module = self._modules[target]
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            # Fake kernels of common modules cost far more than the arithmetic of their shapes.
            rule = self._shape_rule(module)
            shape = rule(module, args[0]) if rule is not None else None
            if shape is not None:
                return _empty(args[0], shape)
        return module(*args, **kwargs)

    def _shape_rule(self, module: torch.nn.Module) -> ShapeRule | None:
        """The op table's shape rule for the module's class, if it has one."""
        cls = type(module)
        if cls not in self._shape_rules:
            entry = ops.lookup_module(module)  # decided by the class alone
            self._shape_rules[cls] = entry.shape if entry is not None else None
        return self._shape_rules[cls]

    def run_node(self, n: torch.fx.Node) -> object:
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - any failure here means the inputs do not fit
            raise InputError(
                f"the example inputs do not run through the model: node {describe(n)} failed "
                f"with {type(exc).__name__}: {first_line(exc)}. Check the input shape and dtype."
            ) from exc
        n.meta["tensor_meta"] = self._metadata(result)
        return result

    def _metadata(self, value: object) -> object:
        """``TensorMetadata`` of a tensor (nested like a tuple or list of them), else None."""
        if isinstance(value, torch.Tensor):
            if value.layout is not torch.strided or value.is_quantized:
                return _extract_tensor_metadata(value)
            # A dense tensor's metadata follows from these alone.
            layout = (value.shape, value.stride(), value.dtype, value.requires_grad)
            meta = self._layouts.get(layout)
            if meta is None:
                meta = self._layouts[layout] = _extract_tensor_metadata(value)
            return meta._replace(qparams={})  # no dict shared between nodes
        if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
            return type(value)(self._metadata(v) for v in value)
        return None


def _empty(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``like.new_empty(shape)``. A fake tensor is made directly from a meta tensor: the fake
    mode's dispatch of new_empty (a cache key built from its arguments) costs several times the
    tensor itself."""
    if not isinstance(like, FakeTensor):
        return like.new_empty(shape)
    with unset_fake_temporarily():
        meta = torch.empty(shape, dtype=like.dtype, device="meta")
    return FakeTensor(like.fake_mode, meta, like.device)


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


def _on_meta(gm: torch.nn.Module, inputs: tuple[object, ...]) -> bool:
    """Whether any input, parameter or buffer is a meta tensor (shape and dtype, no data)."""
    return any(isinstance(t, torch.Tensor) and t.is_meta
               for t in (*inputs, *gm.parameters(), *gm.buffers()))


def propagate_shapes(gm: torch.fx.GraphModule, inputs: tuple[object, ...]) -> None:
    """Fill ``node.meta["tensor_meta"]`` by running `gm` on fake copies of `inputs`.

    Leaf modules that branch on data cannot run on fake tensors; then the graph runs once on
    the real inputs instead. A model on the meta device (``torch.device("meta")``: no weight
    in memory) runs on fake tensors like any other; where that fails there is no data to fall
    back on, and the `InputError` says so.
    """
    # never update BatchNorm statistics while looking at shapes (the modules in training mode
    # switch, not every module twice); an exported graph has the mode it was captured in
    # written into its ops
    exported = gm.meta.get(CAPTURE_KEY, "").startswith("export")
    training = [] if exported else [m for m in gm.modules() if m.training]
    for m in training:
        m.training = False
    # modules the table does not know (leaves) run their own code, which may cache a tensor
    opaque = {sub for node in gm.graph.nodes if node.op == "call_module"
              for module in [gm.get_submodule(node.target)]
              if ops.lookup_module(module) is None for sub in module.modules()}
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake = tuple(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs)
        try:
            with mode, torch.no_grad(), _quiet(_FAKE_LOG), _kept_state(opaque):
                _ShapeProp(gm, mode).run(*fake)
        except InputError as fake_failed:
            log.info("fake shape propagation failed; running the model once on the real inputs")
            try:
                with torch.no_grad():
                    _ShapeProp(gm).run(*inputs)
            except InputError as exc:
                if not _on_meta(gm, inputs):
                    raise
                raise InputError(
                    f"{fake_failed} The model or its inputs are on the meta device, whose tensors "
                    "hold no data: every tensor input must be on meta too (or on the model's "
                    "device), and no submodule may read values (branch on them, call .item() or "
                    ".tolist()). Materialise the weights there (model.to_empty(device='cpu'), "
                    "then load or initialise them) or make that code traceable."
                ) from exc
    finally:
        for m in training:
            m.training = True


def trace(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    example_kwargs: Mapping[str, torch.Tensor] | None = None,
    leaf_modules: Iterable[type] = (),
    capture: str = "auto",
) -> torch.fx.GraphModule:
    """Capture `model` as a graph and record every node's shape and dtype.

    `capture` says how: ``"symbolic"`` (torch.fx symbolic tracing: the graph calls the model's
    own modules), ``"export"`` (torch.export, non-strict: functional ATen ops on the model's
    parameters, specialised to the example's shapes), or ``"auto"``: symbolic where it works,
    torch.export where it fails or leaves a submodule opaque, symbolic with leaves where
    torch.export fails too. The path taken is in ``gm.meta["fxprune.capture"]``.

    Symbolically, submodules whose forward cannot be traced (data-dependent control flow) are
    retried as leaves; their channels are then frozen, with the reason in
    ``node.meta["fxprune.leaf"]``. Forward arguments given neither in `example_inputs` nor by
    name in `example_kwargs` are traced at their defaults (the graph keeps them as placeholders
    with those defaults). Raises `InputError` for unusable input and `TraceError` when nothing
    works.
    """
    if capture not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    model = check_module(model)
    inputs = as_input_tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    odd = [k for k, v in kwargs.items()
           if not isinstance(v, (torch.Tensor, bool, int, float, str, type(None)))]
    if odd:
        raise InputError(f"example_kwargs {', '.join(odd)}: a keyword input is a tensor or a "
                         "constant (bool, number, string, None)")
    if isinstance(model, torch.fx.GraphModule):
        gm, leaves, how = model, {}, model.meta.get(CAPTURE_KEY, "symbolic")
    elif capture == "export":
        gm, leaves, how = _export(model, inputs, kwargs), {}, "export"
    else:
        gm, leaves, how = _capture_symbolic(model, inputs, kwargs, tuple(leaf_modules),
                                            fallback=capture == "auto")
    gm.meta[CAPTURE_KEY] = how
    inputs = _placeholder_values(gm.graph, inputs, kwargs)
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:  # read by a check that took no branch
            gm.graph.erase_node(node)
            continue
        if node.op == "call_module" and node.target in leaves:
            node.meta[LEAF_KEY] = leaves[node.target]
        if node.op == "get_attr" and "." in node.target and OWNER_KEY not in node.meta:
            owner = node.target.rpartition(".")[0]
            with contextlib.suppress(AttributeError):
                node.meta[OWNER_KEY] = ParamOwner(owner, type(model.get_submodule(owner)))
    propagate_shapes(gm, inputs)
    return gm


def _capture_symbolic(model: torch.nn.Module, inputs: tuple[object, ...],
                      kwargs: dict[str, object], leaf_types: tuple[type, ...], *,
                      fallback: bool) -> tuple[torch.fx.GraphModule, dict[str, LeafReason], str]:
    """Symbolic tracing; with `fallback`, torch.export where it fails or makes leaves."""
    concrete = _defaults(model, len(inputs), kwargs)
    concrete.update({k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
    try:
        gm, leaves = _symbolic_trace(model, leaf_types, concrete, _Example(inputs, kwargs))
    except TraceError as symbolic:
        if not fallback:
            raise
        try:
            return _export(model, inputs, kwargs), {}, "export (symbolic tracing failed)"
        except TraceError as exported:
            raise TraceError(f"{symbolic} And {exported}") from symbolic
    if leaves and fallback:
        try:
            exported = _export(model, inputs, kwargs)
        except TraceError as exc:
            log.info("torch.export failed too, keeping %d leaves: %s", len(leaves), exc)
            return gm, leaves, "symbolic"
        regions = [n for n in exported.graph.nodes
                   if isinstance(n.target, torch._ops.HigherOrderOperator)]
        if regions:  # an autocast or checkpoint region is as opaque as a leaf, and larger
            log.info("torch.export wraps %s in a region, keeping %d leaves", regions[0], len(leaves))
            return gm, leaves, "symbolic"
        return exported, {}, f"export (symbolic tracing left {len(leaves)} submodules opaque)"
    return gm, leaves, "symbolic"


def _export(model: torch.nn.Module, inputs: tuple[object, ...],
            kwargs: dict[str, object]) -> torch.fx.GraphModule:
    """torch.export, non-strict, as a GraphModule of ATen ops on the model's parameters."""
    try:
        with _kept_state(model.modules()):
            program = torch.export.export(model, inputs, kwargs or None, strict=False,
                                          dynamic_shapes=_batch_dims(model, inputs, kwargs))
    except Exception as exc:  # noqa: BLE001 - export raises many kinds; the message says which
        raise TraceError(f"torch.export cannot capture {type(model).__name__}: "
                         f"{type(exc).__name__}: {first_line(exc)}") from exc
    return program.module(check_guards=False)


def _batch_dims(model: torch.nn.Module, inputs: tuple[object, ...],
                kwargs: dict[str, object]) -> dict[str, object] | None:
    """Dim 0 of every tensor input free to vary (the batch), and dim 1 of integer ones (token
    ids and attention masks: the sequence), where the example's size there is not 1
    (torch.export would fix it at 1 anyway); torch.export keeps a dim fixed where the model
    needs it so."""
    try:
        bound = inspect.signature(model.forward).bind(*inputs, **kwargs)
    except (TypeError, ValueError):
        return None

    def spec(value: object) -> object:
        if isinstance(value, dict):
            return {k: spec(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return type(value)(spec(v) for v in value)
        if not isinstance(value, torch.Tensor):
            return None
        free = [0] + ([1] if value.dim() == 2 and not value.is_floating_point() else [])
        return {d: torch.export.Dim.AUTO for d in free if d < value.dim() and value.shape[d] > 1} or None

    return {name: spec(value) for name, value in bound.arguments.items()}


def _placeholder_values(graph: torch.fx.Graph, inputs: tuple[object, ...],
                        kwargs: Mapping[str, object]) -> tuple[object, ...]:
    """A value for every placeholder, in order: the inputs, then keyword inputs by name, then
    the defaults fx recorded for arguments traced at their defaults."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
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
