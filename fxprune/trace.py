"""Trace a model into a GraphModule whose nodes carry shapes.

Invariant established: every node of the returned graph has ``node.meta["tensor_meta"]``
(shape and dtype, nested like tuple, list and dict outputs), and the nodes of what had to be
made opaque carry ``node.meta["fxprune.leaf"]`` (a ``LeafReason``) saying why: call_module
nodes for submodules, call_function nodes for a method other than forward (of a submodule, of
the model, or of an object a submodule holds) or a plain function that a forward calls. get_attr nodes
carry ``node.meta["fxprune.owner"]`` (a ``ParamOwner``): the class of the module that owns the
tensor, which the GraphModule replaces by a plain container. ``gm.meta["fxprune.specialised"]``
lists the values computed from sizes that the forward needed as plain Python values (the
conditions it branched on, ints), taken from the example's shapes. Ranks (``x.ndim``,
``x.dim()``) are taken from the example too and leave no node; as every node's shape fixes its
rank, they are not listed.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import linecache
import logging
import operator
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.fx._lazy_graph_module import _LazyGraphModule
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.utils._pytree import tree_leaves, tree_map_only

from fxprune import ops
from fxprune.errors import (
    InputError,
    TraceError,
    as_input_tuple,
    check_module,
    describe,
    first_line,
    not_tensors,
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
_UNKNOWN = object()  # a cache miss, where None is a value
_PLAIN = frozenset({int, float, bool, str, type(None)})  # graph arguments as they are
MAX_LEAF_RETRIES = 32


@dataclass(frozen=True)
class ParamOwner:
    """The module that owns a get_attr node's tensor, as the user built it (the GraphModule
    keeps only a plain container in its place)."""

    module: str
    cls: type


@dataclass(frozen=True)
class LeafReason:
    """Why a submodule, method or function was traced as an opaque leaf (the channels it reads
    are then frozen); `module` is its dotted name ("rpn.filter_proposals")."""

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

    # A rank taken from the example leaves no node: timm's norm-act layers check
    # ``_assert(x.ndim == 4, ...)`` (four nodes a layer, a fifth of EfficientNet-B0's graph).

    @property
    def ndim(self) -> int | torch.fx.Proxy:
        return self.tracer.rank(self, "ndim")

    def dim(self) -> int | torch.fx.Proxy:
        return self.tracer.rank(self, "dim")

    def ndimension(self) -> int | torch.fx.Proxy:
        return self.tracer.rank(self, "ndimension")


class _ModuleStack(collections.OrderedDict):
    """fx's stack of the modules being called, copied into every node's meta: copy.copy of
    an OrderedDict goes through __reduce_ex__, several times slower than this."""

    def __copy__(self) -> collections.OrderedDict:
        return collections.OrderedDict(self)


class _Tracer(torch.fx.Tracer):
    # A buffer that forward reads is a get_attr node, as a parameter is. fx's default hands
    # the tensor itself to forward, where an op given it and a traced size fails: ConViT's
    # ``self.rel_indices.expand(B, -1, -1, -1)``, once a forward has cached the table there.
    proxy_buffer_attributes = True

    def __init__(self, leaves: Iterable[str], leaf_types: tuple[type, ...],
                 example: _Example | None = None,
                 methods: Mapping[tuple[str, str], LeafReason] | None = None,
                 functions: Mapping[types.FunctionType, LeafReason] | None = None,
                 modules: Mapping[str, torch.nn.Module] | None = None) -> None:
        # plain functions made opaque are wrapped wherever a traced forward calls them
        super().__init__(autowrap_functions=tuple(functions or ()))
        self.leaves = set(leaves)
        self.leaf_types = leaf_types
        self.example = example
        self.methods = dict(methods or {})  # (module, method name) -> why it is opaque
        self.functions = set(functions or ())
        self.specialised: list[Specialised] = []
        self._env: dict[torch.fx.Node, object] = {}  # values on fake copies of the example
        self._run: _ShapeProp | None = None  # computes them, in graph order (`_value`)
        self._last: torch.fx.Node | None = None  # the last node of the graph in `_env`
        # While `_value` runs the graph, fx's patches of nn.Module (calls, attributes) let
        # everything through to the module itself: reverting them costs about 1 ms each time
        # (every assignment to nn.Module invalidates the type caches of all its subclasses).
        self._running = False
        self._real: dict[torch.fx.Node, object] = {}  # values on the example itself (`_value`)
        self._data: dict[torch.fx.Node, bool] = {}  # whether a node's value depends on data
        # id -> qualified name of the root's parameters, and of its buffers (made on first use)
        self._names: tuple[dict[int, str], dict[int, str]] | None = None
        # the root's modules by name (``named_modules(remove_duplicate=False)``), walked once
        self.modules = modules
        self._entries: dict[type, ops.Op | None] = {}  # op table entries by module class
        self.module_stack = _ModuleStack()
        # (code, line) -> a node's stack_trace: a block's code makes the same nodes per block
        self._stack_traces: dict[tuple[types.CodeType, int], str] = {}

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
        """The proxy's value where it is a sequence (of sizes, or an input's tensors), else
        None. An input's length is taken from the example (a detector's number of images)."""
        value = self._value(obj.node) if self.example is not None else None
        if not isinstance(value, (tuple, list)):
            return None
        if obj.node.op == "placeholder":
            frame = _user_frame(sys._getframe(1), self_too=True)
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
            if Specialised(where, len(value)) not in self.specialised:
                self.specialised.append(Specialised(where, len(value)))
        return value

    def concrete(self, obj: torch.fx.Proxy, kind: type) -> int:
        """Control flow on a proxy, or an int made of one: decided on the example inputs where
        the value depends on sizes alone (computed on fake tensors, so a value that depends on
        data, or on the sizes of what an opaque call computed from data, still fails and the
        code that needs it becomes a leaf)."""
        value = self._value(obj.node) if self.example is not None else None
        if not isinstance(value, (bool, int, float)) or self._from_data(obj.node):
            if kind is bool:
                return super().to_bool(obj)
            raise TypeError(f"{kind.__name__}() of a traced value that is not a size")
        frame = _user_frame(sys._getframe(1), self_too=True)
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
        self.specialised.append(Specialised(where, kind(value)))
        return kind(value)

    def rank(self, obj: torch.fx.Proxy, how: str) -> int | torch.fx.Proxy:
        """The number of dims of the tensor `obj` stands for, taken from the example (`how`
        is ``"ndim"``, ``"dim"`` or ``"ndimension"``, as the forward asked). Not recorded as
        `Specialised`: every node's shape already fixes its rank. Where the example gives no
        tensor there, fx's node, as without an example."""
        value = self._value(obj.node) if self.example is not None else None
        if isinstance(value, torch.Tensor):
            return value.dim()
        attribute = torch.fx.Proxy.__getattr__(obj, how)
        return attribute if how == "ndim" else attribute()

    def fake_values(self) -> _FakeValues | None:
        """What `_value` computed, for `propagate_shapes` to go on from; None where a node ran
        on the example itself (propagate_shapes then runs the graph on it whole, as before)."""
        if self.example is None or any(self._data.get(n) for n in self._env):
            return None
        return _FakeValues(self.example.mode, self._env)

    def _value(self, node: torch.fx.Node) -> object:
        """The node's value on fake copies of the example, the graph so far run up to it.

        Each call runs only the nodes added since the last, with propagate_shapes' shape rules,
        and trace() hands the values on to it (`fake_values`): the graph runs once in all.
        A node that cannot run on fake tensors (a leaf that reads values: a detector's
        proposal selection) runs on the example itself, and its result is made fake: the ops
        after it then see the sizes the example gives there (the number of proposals kept)."""
        if node not in self._env:
            try:
                self._running = True  # the run must see the real modules (`call_module`)
                with self.example.mode, torch.no_grad(), _quiet(_FAKE_LOG):
                    if self._run is None:
                        run = _ShapeProp(self.root, self.example.mode, self.graph,
                                         modules=self._named_modules())
                        run.env, run.args_iter = self._env, iter(self.example.values(self.graph))
                        self._run = run
                        # every input at once (fx made them all before forward ran): what
                        # propagate_shapes goes on from then holds all or none of them
                        for placeholder in self.graph.find_nodes(op="placeholder")[-1:]:
                            self._run_to(placeholder)
                    self._run_to(node)
            except Exception:  # noqa: BLE001 - a value that fake tensors cannot give: no decision
                return None
            finally:
                self._running = False
        return self._env.get(node)

    def _run_to(self, node: torch.fx.Node) -> None:
        """Run the nodes from the first not yet run up to `node` (the graph grows at its end
        only, while tracing)."""
        todo = []
        n = self._last.next if self._last is not None else next(iter(self.graph.nodes))
        while node not in self._env and (not todo or todo[-1] is not node):
            todo.append(n)
            n = n.next
        with _kept_state(self._own_code(todo)):
            for n in todo:
                try:
                    self._env[n] = self._run.run_node(n)
                except Exception:  # noqa: BLE001 - it reads values: run the example
                    if n.op == "placeholder":
                        raise
                    self._data[n] = True
                    with _kept_state(self.root.modules()):  # the run reaches every leaf
                        real = self._real_value(n)
                    self._env[n] = tree_map_only(torch.Tensor, self.example.mode.from_tensor, real)
                self._last = n

    def _own_code(self, nodes: Iterable[torch.fx.Node]) -> set[torch.nn.Module]:
        """The modules whose own code runs where `nodes` run, which may cache what it computes
        on them: leaves, and all modules where an opaque method or function runs (rare, and
        these may reach any of them). Keeping every module's state on each call of `_value`
        would cost more than the run itself."""
        modules: set[torch.nn.Module] = set()
        for n in nodes:
            if n.op == "call_module":
                modules.update(_opaque_modules(self._run._modules[n.target]))
            elif n.op == "call_function" and (LEAF_KEY in n.meta or n.target in self.functions):
                return set(self.root.modules())
        return modules

    def _from_data(self, node: torch.fx.Node) -> bool:
        """Whether the node's value depends on a value that ran on the example itself (its
        sizes are then the example's data's, such as a number of boxes kept: never decided on
        while tracing). A rank is never data."""
        if node not in self._data:
            stack = [node]
            while stack:  # depth first, without recursion: graphs are deep
                n = stack[-1]
                todo = [a for a in n.all_input_nodes if a not in self._data]
                if todo:
                    stack.extend(todo)
                    continue
                stack.pop()
                self._data[n] = n.target not in ("dim", "ndimension") and any(
                    self._data[a] for a in n.all_input_nodes)
        return self._data[node]

    def _real_value(self, node: torch.fx.Node) -> object:
        """The node's value on the example inputs themselves (never fake). What the run writes
        into the buffers of modules in training mode (a norm's statistics) is put back."""
        with unset_fake_temporarily():
            kept = [(b, b.clone()) for m in self.root.modules() if m.training
                    for b in m._buffers.values() if b is not None]
            try:
                run = _Run(self.root, garbage_collect_values=False, graph=self.graph)
                run.env = self._real
                values = iter(self.example.values(self.graph, real=True))
                for n in self.graph.nodes:
                    if n.op == "placeholder":
                        self._real[n] = next(values)
                    elif n not in self._real:
                        self._real[n] = run.run_node(n)
                    if n is node:
                        return self._real[n]
            finally:
                with torch.no_grad():
                    for buffer, value in kept:
                        buffer.copy_(value)
        return None

    def unpack(self, proxy: torch.fx.Proxy) -> object:
        """An opaque call's result as the example's value is built: a tuple, list or dict holding
        a None or an empty container (a detector's transform returns (images, None) without
        targets) becomes one of proxies, Nones and empty containers, so that the model's ``if
        targets is not None`` sees the None and ``losses.update(...)`` an empty dict."""
        value = self._value(proxy.node) if self.example is not None else None

        def holds_none(v: object) -> bool:  # or an empty container (a detector's losses)
            return v is None or type(v) in (tuple, list, dict) and (
                not v or any(holds_none(x) for x in _items(v).values()))

        def build(p: torch.fx.Proxy, v: object) -> object:
            if v is None:
                return None
            items = _items(v)
            if not items or not holds_none(v):
                return type(v)() if type(v) in (tuple, list, dict) and not v else p
            built = {k: build(p[k], x) for k, x in items.items()}
            return built if isinstance(v, dict) else type(v)(built.values())

        return build(proxy, value) if holds_none(value) and value is not None else proxy

    def call_module(self, m: torch.nn.Module, forward: object, args: tuple,
                    kwargs: dict) -> object:
        if self._running:  # `_value` runs a module: fx's patch of nn.Module.__call__ steps aside
            return forward(*args, **kwargs)
        if len(args) == 1 and not kwargs and not isinstance(m, self.leaf_types):
            entry = self._entry(m)
            if entry is not None and entry.passthrough:
                return args[0]
        result = super().call_module(m, forward, args, kwargs)
        if (isinstance(result, torch.fx.Proxy) and result.node.op == "call_module"
                and result.node.target == self.path_of_module(m) and self._entry(m) is None):
            return self.unpack(result)  # the call of a leaf, not the last op of a traced module
        return result

    @contextlib.contextmanager
    def opaque_methods(self, root: torch.nn.Module) -> Iterator[None]:
        """While tracing, the methods in `self.methods` are recorded as one call each (of the
        method bound to the model as given, so it must not read parameters that pruning
        changes: thresholds and box coders are what a detector's postprocessing reads)."""
        patched = []
        for (name, method), reason in self.methods.items():
            module = _attribute(root, name)
            if method in vars(module):  # one object under two names
                continue
            module.__dict__[method] = self._opaque(getattr(module, method), reason)
            patched.append((module, method))
        try:
            yield
        finally:
            for module, method in patched:
                del module.__dict__[method]

    def _opaque(self, bound: object, reason: LeafReason) -> object:
        return functools.partial(self._call_opaque, bound, reason)

    def _call_opaque(self, bound: Callable[..., object], reason: LeafReason, *args: object,
                     **kwargs: object) -> object:
        if not any(isinstance(a, torch.fx.Proxy) for a in tree_leaves((args, kwargs))):
            return bound(*args, **kwargs)
        proxy = self.create_proxy("call_function", bound, args, kwargs)
        proxy.node.meta[LEAF_KEY] = reason
        return self.unpack(proxy)

    # fx finds the name of a parameter or buffer that forward reads, or passes to an op, by
    # walking all of the root's at every use: quadratic in the model's size. These two
    # overrides look the name up instead, and leave a tensor not found to fx.

    def getattr(self, attr: str, attr_val: object,
                parameter_proxy_cache: dict[str, torch.fx.Proxy]) -> object:
        if self._running or not isinstance(attr_val, torch.Tensor):  # fx returns those as they are
            return attr_val
        name = self._name(attr_val, buffer=False) if isinstance(attr_val, torch.nn.Parameter) else None
        if name is None and self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = self._name(attr_val, buffer=True)
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:  # param_shapes_constant is off: a plain proxy
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def create_arg(self, a: object) -> torch.fx.node.Argument:
        # The commonest arguments first: fx tests each for a parameter, tensor, module, named
        # tuple and opaque type before it reaches these, and every node's args and kwargs
        # (a tuple and a dict) pass through here too.
        if isinstance(a, torch.fx.Proxy):
            return a.node
        if type(a) in _PLAIN:
            return a
        if type(a) in (tuple, list, dict):  # fx's own handling of their items, without the checks
            return torch.fx.proxy.TracerBase.create_arg(self, a)
        if isinstance(a, torch.Tensor):
            name = self._name(a, buffer=not isinstance(a, torch.nn.Parameter))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        try:
            return super().create_arg(a)
        except NotImplementedError:
            # An object of the model's own that fx cannot write into a graph, passed to a wrapped
            # function: read from where the model holds it. A torchvision detector that has run
            # hands its RoI pooler's cached LevelMapper to _multiscale_roi_align.
            name = self._held(a)
            if name is None:
                raise
            return self.create_node("get_attr", name, (), {})

    def _entry(self, m: torch.nn.Module) -> ops.Op | None:
        """`ops.lookup_module`, which depends on the module's class alone: once per class
        (each module call asks up to three times)."""
        cls = type(m)
        if cls not in self._entries:
            self._entries[cls] = ops.lookup_module(m)
        return self._entries[cls]

    def _named_modules(self) -> Mapping[str, torch.nn.Module]:
        """The root's modules by dotted name, duplicates included (walked once)."""
        if self.modules is None:
            self.modules = dict(self.root.named_modules(remove_duplicate=False))
        return self.modules

    def _held(self, value: object) -> str | None:
        """The dotted name of a plain attribute of one of the root's modules that is `value`
        itself (the first in named_modules() order), or None."""
        for path, module in self._named_modules().items():
            for attr, held in vars(module).items():
                if held is value and not attr.startswith("_"):
                    return f"{path}.{attr}" if path else attr
        return None

    def _name(self, value: torch.Tensor, buffer: bool) -> str | None:
        """The name under which the root holds `value` as a parameter (or buffer): its first
        in named_parameters() (named_buffers()) order, which is what fx's walk finds. None
        where it holds no such tensor, or no longer under that name."""
        if self._names is None:
            self._names = ({}, {})
            for path, module in self._named_modules().items():  # a module held twice: its first name
                prefix = f"{path}." if path else ""
                for names, held in zip(self._names, (module._parameters, module._buffers)):
                    for attr, tensor in held.items():
                        if tensor is not None:
                            names.setdefault(id(tensor), prefix + attr)
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
        # (nn.TransformerEncoder, nn.TransformerDecoderLayer, ...) are traced through instead,
        # and those of other libraries that it knows are kept whole where it says so
        entry = self._entry(m)
        return entry is not None and (entry.whole or super().is_leaf_module(m, module_qualified_name))

    def create_node(self, *args: object, **kwargs: object) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        if node.op in ("placeholder", "output"):
            return node  # made by fx itself: no user line to point at
        # fx's own record_stack_traces costs ~10x the trace; one frame is all errors need.
        frame = _user_frame(sys._getframe(1))
        # Reaching this module means the op was made by the tracer itself, outside the model.
        if frame is not None and frame.f_code.co_filename != __file__:
            where = (frame.f_code, frame.f_lineno)
            stack_trace = self._stack_traces.get(where)
            if stack_trace is None:
                code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
                stack_trace = self._stack_traces[where] = (
                    f'File "{frame.f_code.co_filename}", line {frame.f_lineno}, '
                    f"in {frame.f_code.co_name}\n    {code}\n"
                )
            node.stack_trace = stack_trace
        return node


def _codes(*functions: object) -> frozenset[types.CodeType]:
    """The code of `functions` and of the functions defined inside them."""
    found, todo = set(), [f.__code__ for f in functions]
    while todo:
        code = todo.pop()
        found.add(code)
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(found)


# The tracer's stand-ins for fx's own methods, and its opaque calls: their frames are fx's,
# not the user's line.
_FX_OVERRIDES = _codes(_Tracer.getattr, _Tracer.create_arg, _Tracer.call_module,
                       _Tracer._call_opaque, _Tracer.unpack)


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
        self.real = (inputs, kwargs)
        self.inputs = tuple(self._fake(v) for v in inputs)
        self.kwargs = {k: self._fake(v) for k, v in kwargs.items()}

    def _fake(self, value: object) -> object:
        return tree_map_only(torch.Tensor, self.mode.from_tensor, value)

    def values(self, graph: torch.fx.Graph, real: bool = False) -> tuple[object, ...]:
        return _placeholder_values(graph, *(self.real if real else (self.inputs, self.kwargs)))


def _attribute(root: torch.nn.Module, name: str) -> object:
    """The submodule, or the helper object a submodule holds, at dotted path `name`."""
    obj: object = root
    for part in name.split(".") if name else ():
        obj = getattr(obj, part)
    return obj


def fetch_attr(modules: Mapping[str, torch.nn.Module], root: torch.nn.Module, target: str) -> object:
    """What a get_attr node reads: a parameter or buffer looked up in its module (`modules`:
    the root's, by name), without a getattr walk (while tracing, every step of one goes
    through fx's patch of nn.Module.__getattr__); anything else by the walk."""
    owner, _, name = target.rpartition(".")
    module = modules.get(owner)
    if module is not None:
        for table in (module._parameters, module._buffers):
            if name in table:
                return table[name]
    return _attribute(root, target)


def _items(value: object) -> dict[object, object]:
    """The items of a tuple, list or dict (by index or key); {} for anything else."""
    if isinstance(value, dict):
        return dict(value)
    if type(value) in (tuple, list):  # a named tuple or torch.Size is no container here
        return dict(enumerate(value))
    return {}


def _opaque_modules(module: torch.nn.Module) -> Iterable[torch.nn.Module]:
    """The module and its submodules where the op table does not know it (a leaf runs its own
    code, which may cache a tensor on them), else none."""
    return module.modules() if ops.lookup_module(module) is None else ()


@dataclass(frozen=True)
class _FakeValues:
    """Values of a graph's first nodes on fake copies of the example (in `mode`), computed
    while tracing it; each node run has its ``tensor_meta``."""

    mode: FakeTensorMode
    env: dict[torch.fx.Node, object]


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
            for table, kept in ((m.__dict__, attributes), (m._buffers, buffers),
                                (m._parameters, parameters)):
                if table.keys() != kept.keys():  # a name added (rare): drop what tracing left
                    for name in [k for k in table if k not in kept]:
                        if isinstance(table[name], (torch.fx.Proxy, FakeTensor)):
                            del table[name]
                table.update(kept)


@dataclass(frozen=True)
class _Failure:
    """Where tracing failed: the innermost submodule of the model whose code was running, or
    a helper object a submodule holds (a detector's box coder, "rpn.box_coder"); the source
    line there; the method of its class that was running ("forward", another one such as
    ``filter_proposals``, or "" where it was none of them); and the plain function outside
    torch it had called, where the failure was inside one (``keypointrcnn_inference``)."""

    owner: str
    line: str
    method: str
    function: types.FunctionType | None
    helper: bool  # owner is a helper object, not a submodule


def _failing_module(model: torch.nn.Module, exc: BaseException) -> _Failure | None:
    modules = dict(model.named_modules())
    names = {id(m): name for name, m in modules.items()}
    helpers = {id(v): f"{name}.{attr}" if name else attr for name, m in modules.items()
               for attr, v in vars(m).items()
               if not attr.startswith("_") and hasattr(v, "__dict__")
               and not isinstance(v, (torch.nn.Module, torch.Tensor, type, types.FunctionType,
                                      types.MethodType, types.ModuleType))}
    found: _Failure | None = None
    caller: types.FrameType | None = None  # the frame of `found`'s method
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        name = names.get(id(owner), helpers.get(id(owner))) if owner is not None else None
        if name is not None:
            method = getattr(type(owner), frame.f_code.co_name, None)
            own = getattr(method, "__code__", None) is frame.f_code and (
                frame.f_code.co_name == "forward" or not hasattr(torch.nn.Module, frame.f_code.co_name))
            found = _Failure(name, f"{frame.f_code.co_filename}:{tb.tb_lineno}",
                             frame.f_code.co_name if own else "", None, id(owner) not in names)
            caller = frame
        elif caller is not None:
            # a function a module's forward calls by a global name of its file: fx wraps it
            # there (autowrap_functions) when asked to
            function = caller.f_globals.get(frame.f_code.co_name)
            if (found.method == "forward" and not found.helper
                    and isinstance(function, types.FunctionType) and function.__code__ is frame.f_code
                    and not frame.f_code.co_filename.startswith(_SKIP_DIR)):
                found = _Failure(found.owner, found.line, found.method, function, found.helper)
            caller = None
        tb = tb.tb_next
    if found is not None and found.helper and found.method in ("", "forward"):
        return None  # a helper object is made opaque by its methods alone
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
) -> tuple[torch.fx.GraphModule, dict[str, LeafReason], _FakeValues | None]:
    leaves: dict[str, LeafReason] = {}
    methods: dict[tuple[str, str], LeafReason] = {}
    functions: dict[types.FunctionType, LeafReason] = {}
    modules = dict(model.named_modules(remove_duplicate=False))  # one walk for every retry
    for _ in range(MAX_LEAF_RETRIES):
        tracer = _Tracer(leaves, leaf_types, example, methods, functions, modules)
        try:
            # a forward that caches a traced value on itself
            with _kept_state(modules.values()), tracer.opaque_methods(model):
                graph = tracer.trace(model, concrete or None)
        except Exception as exc:  # noqa: BLE001 - fx raises many kinds; we classify below
            where = _failing_module(model, exc)
            # the smallest part made opaque: a plain function the module called, else a
            # method other than forward (the module's layers stay in the graph), else the module
            function = where is not None and where.function is not None
            method = where is not None and not function and where.method not in ("", "forward")
            if where is None or where.owner in leaves or (where.owner, where.method) in methods or (
                    where.function in functions) or (where.owner == "" and not method and not function):
                line = f" at {where.line}" if where else ""
                module = f"module '{where.owner or type(model).__name__}'" if where else "the model"
                raise TraceError(
                    f"torch.fx cannot trace {module}{line}: {type(exc).__name__}: {exc}. "
                    "Rewrite the data-dependent control flow there (e.g. with torch.where), "
                    "or pass the module's class in leaf_modules=... to treat it as opaque."
                ) from exc
            why = f"made a leaf because tracing failed at {where.line}: {type(exc).__name__}: {exc}"
            if function:
                log.info("tracing %s as a leaf: %s", where.function.__qualname__, why)
                functions[where.function] = LeafReason(module=where.function.__qualname__, reason=why)
            elif method:
                name = f"{where.owner}.{where.method}" if where.owner else where.method
                log.info("tracing %s as a leaf: %s", name, why)
                methods[(where.owner, where.method)] = LeafReason(module=name, reason=why)
            else:
                log.info("tracing %s as a leaf: %s", where.owner, why)
                leaves[where.owner] = LeafReason(module=where.owner, reason=why)
            continue
        for node in graph.nodes:
            if node.op == "call_function" and node.target in functions:
                node.meta[LEAF_KEY] = functions[node.target]
        # The graph's Python code is generated on the first call, not here: analysis and
        # inspection never run it, and on timm's EfficientNet-B0 it costs a quarter of trace().
        gm = _graph_module(tracer.root, graph, type(model).__name__)
        gm.meta[SPECIALISED_KEY] = tuple(tracer.specialised)
        if tracer.specialised:
            log.info("%d values computed from sizes taken from the example's shapes",
                     len(tracer.specialised))
        # opaque methods and functions (their nodes carry their reasons) leave every layer in
        # the graph: no reason to try torch.export, which fails on what reads values anyway
        return gm, leaves, tracer.fake_values()
    raise TraceError(f"gave up after making {MAX_LEAF_RETRIES} submodules leaves: {sorted(leaves)}")


def _graph_module(root: torch.nn.Module, graph: torch.fx.Graph, name: str) -> _LazyGraphModule:
    """``GraphModule(root, graph, name)``, built through the modules' own dicts.

    fx copies each node's target (a submodule, parameter or buffer) through nn.Module's
    getattr and setattr at every step of its dotted path; on timm's EfficientNet-B0 that was a
    tenth of `trace`. The result is the same: the targets under their names, in plain
    containers where a path passes through a module the graph does not call. A target that is
    not a submodule, parameter or buffer (a constant fx made, an object a module holds) is
    copied by fx's own code.
    """
    gm = _LazyGraphModule(root, torch.fx.Graph(), name)
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            _copy_target(root, gm, node.target)
    gm.graph = graph  # the generated code waits for the first call, as fx's would
    if graph._tracer_cls is not None and "<locals>" not in graph._tracer_cls.__qualname__:
        gm._tracer_cls = graph._tracer_cls
    gm._tracer_extras = graph._tracer_extras or {}
    return gm


def _copy_target(root: torch.nn.Module, gm: torch.nn.Module, target: str) -> None:
    *path, field = target.split(".")
    source, copy = root, gm
    for part in path:
        inner = source._modules.get(part)
        if inner is None:  # a path through an attribute that is no submodule
            torch.fx.graph_module._copy_attr(root, gm, target)
            return
        held = copy._modules.get(part)
        if held is inner:  # a module above the target is held whole already
            return
        if held is None:
            held = copy._modules[part] = torch.nn.Module()
        source, copy = inner, held
    for table in ("_modules", "_parameters", "_buffers"):
        value = getattr(source, table).get(field)
        if value is not None:
            getattr(copy, table)[field] = value
            if table == "_buffers" and field in source._non_persistent_buffers_set:
                copy._non_persistent_buffers_set.add(field)
            return
    torch.fx.graph_module._copy_attr(source, copy, field)


class _Run(torch.fx.Interpreter):
    """An interpreter that hands opaque calls (leaves) plain lists and dicts, as the graph
    module's code does, not fx's immutable ones: a detector's postprocessing writes into the
    dicts it is given."""

    def fetch_args_kwargs_from_env(self, n: torch.fx.Node) -> tuple[tuple, dict]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        if LEAF_KEY in n.meta:
            args, kwargs = _thawed(args), _thawed(kwargs)
        return args, kwargs


def _thawed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_thawed(v) for v in value]
    if type(value) is tuple:
        return tuple(_thawed(v) for v in value)
    return value


class _ShapeProp(_Run):
    """Shape propagation on fake tensors: no real compute, so tracing stays cheap.

    With a `mode`, tensors read by get_attr nodes (parameters used directly in the graph) are
    made fake once, up front: a real tensor among an op's inputs makes the fake mode convert it
    again and skip its cache for that op.
    """

    def __init__(self, gm: torch.nn.Module, mode: FakeTensorMode | None = None,
                 graph: torch.fx.Graph | None = None,
                 modules: dict[str, torch.nn.Module] | None = None) -> None:
        # A graph given apart from its module is one being traced: it grows, so no value can
        # be freed after what is its last use so far. Nor need a fake value be freed: it holds
        # no data, and working out last uses costs a walk of the whole graph.
        super().__init__(gm, garbage_collect_values=graph is None and mode is None, graph=graph)
        self.mode = mode
        # Most nodes repeat a few layouts: their metadata is worked out once per layout.
        self._layouts: dict[tuple[object, ...], TensorMetadata] = {}
        # fetch_attr walks a dotted path per call: resolve each module name once, and each
        # op's shape rule (by module class, or by function or method) once.
        self._modules = modules if modules is not None else dict(gm.named_modules(remove_duplicate=False))
        self._shape_rules: dict[object, ShapeRule | None] = {}
        self._parameters: dict[tuple[object, ...], FakeTensor] = {}
        # What a shape rule makes: one fake tensor per layout, shared by the nodes that have it
        # (constructing one costs about half of a ruled node's run). Ruled ops only read their
        # inputs; every other op, which may change its input's sizes in place (unsqueeze_) or
        # cache it, is handed its own copy (`_own_copies`).
        self._outputs: dict[tuple[object, ...], FakeTensor] = {}
        self._shared: set[int] = set()  # ids of the tensors in _outputs
        # run_node's InputError already names the node and the user's line; fx's extra
        # traceback would append them again, plus a pointer to tlparse, to the message.
        self.extra_traceback = False

    def fetch_attr(self, target: str) -> object:
        return fetch_attr(self._modules, self.module, target)

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> object:
        value = super().get_attr(target, args, kwargs)
        if self.mode is None or not isinstance(value, torch.Tensor):
            return value
        if value.layout is torch.strided and not value.is_quantized:
            # made from a meta tensor directly: the fake mode's conversion of a real tensor
            # (which keeps a memo and its storage's details) costs about 50 times as much. One
            # per layout: parameters of one shape (a norm's four) stand for each other here, as
            # nothing changes a parameter's shape.
            layout = (value.shape, value.stride(), value.dtype, value.device)
            fake = self._parameters.get(layout)
            if fake is None:
                with unset_fake_temporarily():
                    meta = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                               device="meta")
                fake = self._parameters[layout] = FakeTensor(self.mode, meta, value.device)
            return fake
        return self.mode.from_tensor(value)

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:
        return self._modules[target](*args, **kwargs)

    def _by_rule(self, n: torch.fx.Node, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The node's output made from its op's shape rule in the op table, or None where it
        has none or the rule is unsure. Only on fake (or meta) tensors: values are never made
        up where a real run was asked for. Fake kernels of common ops cost far more than the
        arithmetic of their shapes."""
        module = self._modules[n.target] if n.op == "call_module" else None
        key: object = type(module) if module is not None else (n.op, n.target)
        try:
            rule = self._shape_rules.get(key, _UNKNOWN)
        except TypeError:  # an unhashable target
            return None
        if rule is _UNKNOWN:
            entry = ops.lookup(n, module)  # a module's entry is decided by its class alone
            rule = self._shape_rules[key] = entry.shape if entry is not None else None
        if rule is None:
            return None
        like = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if like is None or not (isinstance(like, FakeTensor) or like.is_meta):
            return None
        shape = rule(module, args, kwargs)
        if shape is None:
            return None
        if not isinstance(like, FakeTensor):
            return like.new_empty(shape)
        layout = (shape, like.dtype, like.device)
        out = self._outputs.get(layout)
        if out is None:
            out = self._outputs[layout] = _empty(like, shape)
            self._shared.add(id(out))
        return out

    def _own_copies(self, n: torch.fx.Node, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The node's arguments (`args`, `kwargs` as fetched), each input whose value is a shared
        tensor given a copy of its own: one per input node, so that ``query is key`` holds
        exactly where it did in the model (nn.MultiheadAttention takes another path for
        self-attention)."""
        shared = {a: self.env[a] for a in n.all_input_nodes if id(self.env.get(a)) in self._shared}
        if not shared:
            return args, kwargs
        self.env.update({a: _empty(v, tuple(v.shape)) for a, v in shared.items()})
        try:
            return self.fetch_args_kwargs_from_env(n)
        finally:
            self.env.update(shared)

    def run_node(self, n: torch.fx.Node) -> object:
        # Interpreter.run_node's context (a node-meta scope for passes that create nodes, a
        # debug log) costs as much as a rule's whole op: nothing here creates nodes.
        try:
            if n.op == "get_attr":
                result = self.get_attr(n.target, (), {})
            else:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                result = self._by_rule(n, args, kwargs) if n.op.startswith("call_") else None
                if result is None:
                    if self._shared:
                        args, kwargs = self._own_copies(n, args, kwargs)
                    result = getattr(self, n.op)(n.target, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure here means the inputs do not fit
            raise InputError(
                f"the example inputs do not run through the model: node {describe(n)} failed "
                f"with {type(exc).__name__}: {first_line(exc)}. Check the input shape and dtype."
            ) from exc
        n.meta["tensor_meta"] = self._metadata(result)
        return result

    def _metadata(self, value: object) -> object:
        """``TensorMetadata`` of a tensor (nested like a tuple, list or dict of them), else
        None."""
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
        if isinstance(value, dict):  # a detector's outputs: {"boxes": ..., "scores": ...}
            return {k: self._metadata(v) for k, v in value.items()}
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
    # not setLevel: it clears the level cache of every logger (about 1 ms with torch's), and
    # the tracer goes quiet once per value it needs
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def _on_meta(gm: torch.nn.Module, inputs: tuple[object, ...]) -> bool:
    """Whether any input, parameter or buffer is a meta tensor (shape and dtype, no data)."""
    return any(isinstance(t, torch.Tensor) and t.is_meta
               for t in (*tree_leaves(inputs), *gm.parameters(), *gm.buffers()))


def propagate_shapes(gm: torch.fx.GraphModule, inputs: tuple[object, ...]) -> None:
    """Fill ``node.meta["tensor_meta"]`` by running `gm` on fake copies of `inputs`.

    Leaf modules that branch on data cannot run on fake tensors; then the graph runs once on
    the real inputs instead. A model on the meta device (``torch.device("meta")``: no weight
    in memory) runs on fake tensors like any other; where that fails there is no data to fall
    back on, and the `InputError` says so.
    """
    _propagate(gm, inputs, None)


def _propagate(gm: torch.fx.GraphModule, inputs: tuple[object, ...],
               known: _FakeValues | None) -> None:
    """`propagate_shapes`, going on from the values the tracer computed (`known`) where the
    run in eval mode gives the same: only the nodes after them run."""
    # never update BatchNorm statistics while looking at shapes (the modules in training mode
    # switch, not every module twice); an exported graph has the mode it was captured in
    # written into its ops
    exported = gm.meta.get(CAPTURE_KEY, "").startswith("export")
    modules = dict(gm.named_modules(remove_duplicate=False))  # one walk for all that follows
    # a module held under two names is listed twice: switched twice, harmlessly
    # (a plain container, where the graph module holds part of a module, never runs)
    training = [] if exported else [m for m in modules.values()
                                     if m.training and type(m) is not torch.nn.Module]
    for m in training:
        m.training = False
    # modules the table does not know (leaves) run their own code, which may cache a tensor
    opaque = {sub for node in gm.graph.nodes if node.op == "call_module"
              for sub in _opaque_modules(modules[node.target])}
    if known is not None and training and (opaque or any(
            LEAF_KEY in n.meta for n in gm.graph.nodes if n.op == "call_function")):
        known = None  # code of the model's own ran in training mode while tracing
    try:
        mode = known.mode if known is not None else FakeTensorMode(allow_non_fake_inputs=True)
        fake = tree_map_only(torch.Tensor, mode.from_tensor, inputs)
        try:
            with mode, torch.no_grad(), _quiet(_FAKE_LOG), _kept_state(opaque):
                # the tracer ran the inputs all or none (`_Tracer._value`)
                _ShapeProp(gm, mode, modules=modules).run(
                    *fake, initial_env=known.env if known else None)
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
    example_inputs: torch.Tensor | Sequence[object],
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

    `example_inputs` holds one value per positional argument of forward: a tensor, or a list,
    tuple or dict of tensors, nested (a detector's list of images: ``([image1, image2],)``); a
    single tensor may be passed as is. Outputs may be nested likewise.

    Symbolically, code that cannot be traced (data-dependent control flow) is retried as an
    opaque leaf, the smallest part that holds it: a plain function a forward calls, else a
    method other than forward (a detector's proposal selection, NMS and postprocessing: the
    layers around it stay in the graph), else the submodule. The channels such a leaf reads are
    frozen, with the reason in ``node.meta["fxprune.leaf"]``; only a submodule made a leaf
    makes ``"auto"`` try torch.export. An opaque call that cannot run on fake tensors runs once
    on the example itself while tracing. Forward arguments given neither in `example_inputs` nor by
    name in `example_kwargs` are traced at their defaults (the graph keeps them as placeholders
    with those defaults). Raises `InputError` for unusable input and `TraceError` when nothing
    works.
    """
    if capture not in CAPTURES:
        raise InputError(f"capture must be one of {', '.join(CAPTURES)}, got {capture!r}")
    model = check_module(model)
    inputs = as_input_tuple(example_inputs)
    kwargs = dict(example_kwargs or {})
    odd = [k for k, v in kwargs.items() if not isinstance(v, (bool, int, float, str, type(None)))
           and not_tensors(v, k) is not None]
    if odd:
        raise InputError(f"example_kwargs {', '.join(odd)}: a keyword input is a tensor or a "
                         "constant (bool, number, string, None), or a list, tuple or dict of "
                         "tensors, nested")
    known: _FakeValues | None = None  # values the symbolic tracer computed on the way
    if isinstance(model, torch.fx.GraphModule):
        gm, leaves, how = model, {}, model.meta.get(CAPTURE_KEY, "symbolic")
    else:
        try:
            if capture == "export":
                gm, leaves, how = _export(model, inputs, kwargs), {}, "export"
            else:
                gm, leaves, how, known = _capture_symbolic(
                    model, inputs, kwargs, tuple(leaf_modules), fallback=capture == "auto")
        except (TraceError, InputError) as exc:
            if not isinstance(example_inputs, list) or len(example_inputs) < 2:
                raise
            raise type(exc)(f"{exc} (example_inputs, a list of {len(example_inputs)} tensors, "
                            f"are {len(example_inputs)} inputs: for a model that takes one list "
                            "of tensors, such as a detector's images, pass ([image1, image2],))"
                            ) from exc
    gm.meta[CAPTURE_KEY] = how
    inputs = _placeholder_values(gm.graph, inputs, kwargs)
    modules = dict(model.named_modules(remove_duplicate=False))  # gm holds plain containers
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:  # read by a check that took no branch
            gm.graph.erase_node(node)
            continue
        if node.op == "call_module" and node.target in leaves:
            node.meta[LEAF_KEY] = leaves[node.target]
        if node.op == "get_attr" and "." in node.target and OWNER_KEY not in node.meta:
            owner = node.target.rpartition(".")[0]
            if owner in modules:
                node.meta[OWNER_KEY] = ParamOwner(owner, type(modules[owner]))
    _propagate(gm, inputs, known)
    return gm


def with_code(gm: torch.nn.Module) -> torch.nn.Module:
    """`gm` with its forward generated from its graph now, where it is a graph module.

    `trace` leaves that to the module's first call, as analysis never runs it; a module
    handed on (a pass's result, or one given to torch.export or ONNX export, which read
    forward's signature before calling it) needs it done.
    """
    if isinstance(gm, torch.fx.GraphModule):
        gm.recompile()
        _LazyGraphModule.force_recompile(gm)
    return gm


def _capture_symbolic(model: torch.nn.Module, inputs: tuple[object, ...],
                      kwargs: dict[str, object], leaf_types: tuple[type, ...], *,
                      fallback: bool
                      ) -> tuple[torch.fx.GraphModule, dict[str, LeafReason], str, _FakeValues | None]:
    """Symbolic tracing; with `fallback`, torch.export where it fails or makes leaves. Also
    the values the symbolic tracer computed on fake tensors, where its graph is returned."""
    concrete = _defaults(model, len(inputs), kwargs)
    concrete.update({k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
    try:
        gm, leaves, known = _symbolic_trace(model, leaf_types, concrete, _Example(inputs, kwargs))
    except TraceError as symbolic:
        if not fallback:
            raise
        try:
            return _export(model, inputs, kwargs), {}, "export (symbolic tracing failed)", None
        except TraceError as exported:
            raise TraceError(f"{symbolic} And {exported}") from symbolic
    if leaves and fallback:
        try:
            exported = _export(model, inputs, kwargs)
        except TraceError as exc:
            log.info("torch.export failed too, keeping %d leaves: %s", len(leaves), exc)
            return gm, leaves, "symbolic", known
        regions = [n for n in exported.graph.nodes
                   if isinstance(n.target, torch._ops.HigherOrderOperator)]
        if regions:  # an autocast or checkpoint region is as opaque as a leaf, and larger
            log.info("torch.export wraps %s in a region, keeping %d leaves", regions[0], len(leaves))
            return gm, leaves, "symbolic", known
        return exported, {}, f"export (symbolic tracing left {len(leaves)} submodules opaque)", None
    return gm, leaves, "symbolic", known


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


__all__ = ["LeafReason", "ParamOwner", "trace", "propagate_shapes", "with_code"]
