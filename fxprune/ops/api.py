"""What the op table's rules are written against: `Op` (one table entry), `Context` (what a
flow rule sees during analysis) and `Resize` (what a sync or rewrite rule sees during surgery).

This module and the rest of `fxprune.ops` import no pass: the passes import them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
from torch import nn

from fxprune.errors import AnalysisError, describe
from fxprune.ops.flow import UNTRACKED, Atoms, Flow

Rule = Callable[["Context", "Op"], object]
# node.meta key, written by analysis on a view/reshape/expand: the output dims whose size
# argument is computed from channel counts in a way surgery cannot keep right (another group's
# width), so surgery writes the new size there as a literal.
CHANNEL_SIZED_KEY = "fxprune.channel_sized"
# After surgery sliced the parameters: fix a module's size attributes / a node's constants.
Sync = Callable[[nn.Module, "Resize", torch.fx.Node], None]
Rewrite = Callable[["Resize", torch.fx.Node], None]
# The output shape from the op's module (None for a function or method), args and kwargs, or
# None to run the op (see `fxprune.ops.shapes`).
ShapeRule = Callable[[nn.Module | None, tuple, dict], "tuple[int, ...] | None"]


@dataclass(frozen=True, kw_only=True)
class Op:
    """Everything fxprune knows about one op: how channels flow through it, how its parameters
    are sliced, what surgery must update on it, and its part in the catalyst rewrite."""

    flow: Rule
    out_params: Mapping[str, int] = field(default_factory=dict)  # param -> dim along output channels
    in_params: Mapping[str, int] = field(default_factory=dict)  # param -> dim along input channels
    sync: Sync | None = None  # module attributes that hold channel counts
    rewrite: Rewrite | None = None  # graph constants that hold channel counts
    # A channel-wise op (norm with per-channel statistics, activation) that belongs to the sigma
    # a catalyst wraps: psi(u) = D*u - Dbar*u + sigma(u) with u the producer's output.
    catalyst_after: bool = False
    # The output dim along which the op makes new channels from its weight (conv: 1, linear and
    # embedding: -1): a catalyst site, a producer for L1 scores, a layer in the job's widths.
    produces: int | None = None
    # A normalisation layer: its weight and bias are per-channel scale and shift (the "bn" and
    # "bn-scale" targets, network slimming's).
    norm: bool = False
    # Returns a new tensor and never edits or aliases its input (unless built with
    # inplace=True): a catalyst read only by such ops may return a view (see _Catalyse).
    fresh: bool = False
    shape: ShapeRule | None = None  # output shape without running the op (fast tracing)
    # A module of another library that symbolic tracing keeps as one call, as it keeps torch's
    # own: traced through, its forward's arithmetic on buffers would be folded into constants.
    whole: bool = False
    # An ATen op that is a known function with its arguments in another order (aten.batch_norm
    # is F.batch_norm's): where each of the function's positional arguments sits in the op's.
    positions: tuple[int, ...] | None = None
    # Returns its input itself in every mode (nn.Identity): symbolic tracing records no call,
    # which on timm's models (an Identity for every norm-act layer's drop) is an eighth of
    # the graph.
    passthrough: bool = False


class Context:
    """What a flow rule sees: the node, its inputs' flows and shapes, and the atoms."""

    def __init__(self, gm: torch.fx.GraphModule, strict: bool,
                 lookup: Callable[[torch.fx.Node, nn.Module | None], Op | None],
                 heads: str = "whole") -> None:
        self.gm = gm
        self.strict = strict
        self.heads = heads  # attention's unit where a split makes heads: "whole" or "dim"
        self._lookup = lookup
        self.atoms = Atoms()
        self.flows: dict[torch.fx.Node, object] = {}
        self.params: dict[tuple[str, int], np.ndarray] = {}
        self.members: list[tuple[str, str, int, np.ndarray, str]] = []
        self._bare: dict[int, int] = {}  # first atom of a bare parameter dim -> its member
        self.entry: Op | None = None
        self.node: torch.fx.Node
        self._where: str | None = None
        # get_submodule walks the dotted path with getattr: resolve each module name once
        self.modules = dict(gm.named_modules(remove_duplicate=False))
        self.memo: dict[object, object] = {}  # what a pass works out once per analysis

    def entry_of(self, node: torch.fx.Node) -> Op | None:
        """The op table entry of any node (a rule looking ahead at the current one's users)."""
        module = self.modules.get(node.target) if node.op == "call_module" else None
        return self._lookup(node, module)

    def at(self, node: torch.fx.Node) -> None:
        """Move to `node`: what the rules read and where the atoms record couplings."""
        self.node, self._where, self.entry = node, None, None
        self.atoms.site = node.name

    @property
    def where(self) -> str:
        """The current node and the user's source line (`describe`), for reasons; worked out
        on first use, as most nodes never need one."""
        if self._where is None:
            self._where = describe(self.node)
        return self._where

    # inputs of the current node
    def arg(self, i: int, name: str, default: object = None) -> object:
        args = self.node.args
        positions = self.entry.positions if self.entry is not None else None
        if positions is not None:
            if i >= len(positions):
                return self.node.kwargs.get(name, default)
            i = positions[i]
        if i < len(args):
            return args[i]
        return self.node.kwargs.get(name, default)

    def tensor_args(self) -> list[torch.fx.Node]:
        flat = list(self.node.args) + list(self.node.kwargs.values())
        return [a for a in flat if isinstance(a, torch.fx.Node) and is_tensor(a)]

    def flow(self, value: object) -> object:
        return self.flows.get(value) if isinstance(value, torch.fx.Node) else None

    def tflow(self, value: object) -> Flow:
        if isinstance(value, int) and not isinstance(value, bool):
            value = self.arg(value, "input")
        flow = self.flow(value)
        return flow if isinstance(flow, Flow) else UNTRACKED

    def shape(self, value: object) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = self.arg(value, "input")
        if isinstance(value, torch.fx.Node):
            meta = value.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                return tuple(meta.shape)
        return ()

    def sequence(self, value: object) -> list[tuple[Flow, tuple[int, ...]]]:
        """(flow, shape) of each tensor in a list argument, or in a tuple-valued node."""
        if isinstance(value, torch.fx.Node):
            flows = self.flow(value)
            metas = value.meta.get("tensor_meta")
            return [(f if isinstance(f, Flow) else UNTRACKED, tuple(m.shape))
                    for f, m in zip(flows, metas)]
        return [(self.tflow(v), self.shape(v)) for v in value]

    @property
    def out_shape(self) -> tuple[int, ...]:
        meta = self.node.meta.get("tensor_meta")
        return tuple(meta.shape) if hasattr(meta, "shape") else ()

    def module(self) -> torch.nn.Module:
        return self.modules[self.node.target]

    # effects
    def member(self, param: str, dim: int, ids: np.ndarray) -> None:
        """Record that `param` (of the current module) is sliced along `dim` by `ids`."""
        qualified = f"{self.node.target}.{param}" if self.node.op == "call_module" else param
        role = "in" if self.entry is not None and self.entry.in_params.get(param) == dim else "out"
        self._param(self.node.name, qualified, dim, ids, role)

    def _param(self, node: str, qualified: str, dim: int, ids: np.ndarray, role: str) -> None:
        key = (qualified, dim)
        if key in self.params:  # shared or tied parameter: both uses are one channel space
            self.atoms.union(self.params[key], ids)
        else:
            self.params[key] = ids
        if role == "bare" and len(ids):
            self._bare[int(ids[0])] = len(self.members)
        self.members.append((node, qualified, dim, ids, role))

    def reads(self, ids: np.ndarray) -> None:
        """The bare parameter dim holding exactly the atoms `ids` is read as input channels
        (a functional conv's or linear's weight columns): its role is "in", as a module's."""
        at = self._bare.get(int(ids[0])) if len(ids) else None
        if at is not None and np.array_equal(self.members[at][3], ids):
            node, qualified, dim, held, _ = self.members[at]
            self.members[at] = (node, qualified, dim, held, "in")

    def adopt(self, value: object, dim: int, ids: np.ndarray, role: str = "in") -> bool:
        """A parameter read here and nowhere else (its get_attr node has this one user) takes
        the channels `ids` along `dim`. As a functional conv's or linear's weight (role "in")
        it reads them as a module's weight would, and the spaces they come from stay apart (a
        conv reading a concatenation of two layers' channels); as a functional norm's scale or
        statistics (role "bare", which the catalyst pass looks for) it holds them, with no
        union to pay for (timm's norm-act layers have four each). False where the parameter is
        used elsewhere too (tied, or computed on first, as in weight standardisation): then the
        rule couples its atoms with `ids` instead."""
        if not (isinstance(value, torch.fx.Node) and value.op == "get_attr"
                and len(value.users) == 1):
            return False
        held = self.tflow(value).dims.get(dim)
        at = self._bare.get(int(held[0])) if held is not None and len(held) == len(ids) else None
        if at is None or (self.members[at][3] is not held
                          and not np.array_equal(self.members[at][3], held)):
            return False
        node, qualified, d, _, _ = self.members[at]
        self.members[at] = (node, qualified, d, ids, role)
        self.params[(qualified, d)] = ids
        self.flows[value] = Flow({**self.tflow(value).dims, dim: ids})
        # the parameter's own atoms for that dim are no channels now, and nothing holds them
        del self._bare[int(held[0])]
        self.atoms.release(held)
        return True

    def not_channels(self, value: object, dims: Iterable[int]) -> None:
        """`value`'s `dims` carry no channels (a conv weight's kernel dims, or its input dim
        where the input has none): the atoms its flow holds there are discarded, and a group
        made of nothing else is not a group."""
        flow = self.tflow(value)
        for dim in dims:
            if dim in flow.dims:
                self.atoms.discard(flow.dims[dim])

    def freeze_all(self, value: object, reason: str) -> None:
        if isinstance(value, Flow):
            self.atoms.freeze(value.atoms(), reason)
        elif isinstance(value, (tuple, list)):
            for v in value:
                self.freeze_all(v, reason)
        elif isinstance(value, dict):
            for v in value.values():
                self.freeze_all(v, reason)
        elif isinstance(value, torch.fx.Node):
            self.freeze_all(self.flow(value), reason)

    def unknown(self, why: str) -> object:
        reason = f"{why}: {self.where}"
        if self.strict:
            raise AnalysisError(
                f"analyze: {reason}. Add the op to fxprune.ops, or call analyze(strict=False) to "
                "freeze the channels through it."
            )
        self.freeze_all((self.node.args, self.node.kwargs), reason)
        return untracked_like(self.node.meta.get("tensor_meta"))


def is_tensor(node: torch.fx.Node) -> bool:
    return hasattr(node.meta.get("tensor_meta"), "shape")


def untracked_like(meta: object) -> object:
    if hasattr(meta, "shape"):  # TensorMetadata is itself a NamedTuple: test it first
        return UNTRACKED
    if isinstance(meta, (tuple, list)):
        return tuple(untracked_like(m) for m in meta)
    if isinstance(meta, dict):  # a detector's {"boxes": ..., "scores": ...}
        return {k: untracked_like(m) for k, m in meta.items()}
    return UNTRACKED if meta is not None else None


# (node name, tuple output index or None, dim) -> keep mask over that dim
KeepMasks = Mapping[tuple[str, "int | None", int], np.ndarray]


class Resize:
    """What sync and rewrite rules see: old and new shapes of nodes, and keep-masks."""

    def __init__(self, keep: KeepMasks, old: Mapping[str, object], new: Mapping[str, object]) -> None:
        self._keep, self._old, self._new = keep, old, new

    def old_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        return self._old[node.name]

    def new_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        return self._new[node.name]

    def keep(self, node: torch.fx.Node, dim: int) -> np.ndarray | None:
        return self._keep.get((node.name, None, dim))


def set_tensor(root: torch.nn.Module, qualified: str, value: torch.Tensor) -> None:
    """Replace a parameter or buffer by its qualified name (a parameter stays a parameter)."""
    owner_name, _, name = qualified.rpartition(".")
    owner = root.get_submodule(owner_name)
    if name in owner._parameters:
        old = owner._parameters[name]
        owner._parameters[name] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def get_tensor(root: torch.nn.Module, qualified: str) -> torch.Tensor:
    """A parameter or buffer by its qualified name."""
    owner_name, _, name = qualified.rpartition(".")
    return getattr(root.get_submodule(owner_name), name)
