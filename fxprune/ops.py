"""The op table: everything fxprune knows about one op lives in its entry here.

Entries are keyed by the fx target: the module class for call_module, the function for
call_function, the method name for call_method. Each `Op` says how channels flow through the op
(its `flow` rule, written in the algebra of `fxprune.passes.flow`), which parameter dims are
sliced along its output and input channels, and whether a catalyst may follow it. An op that is
not in the table is unknown: the channels through it are frozen, never guessed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxprune.passes import flow as fl
from fxprune.passes.flow import UNTRACKED, Flow

if TYPE_CHECKING:
    from fxprune.passes.analyze import Context
    from fxprune.passes.slim import Resize

Rule = Callable[["Context", "Op"], object]
# After surgery sliced the parameters: fix a module's size attributes / a node's constants.
Sync = Callable[[nn.Module, "Resize", torch.fx.Node], None]
Rewrite = Callable[["Resize", torch.fx.Node], None]


@dataclass(frozen=True, kw_only=True)
class Op:
    """How channels flow through one op, how its parameters are sliced, and what surgery must
    update on it."""

    flow: Rule
    out_params: Mapping[str, int] = field(default_factory=dict)  # param -> dim along output channels
    in_params: Mapping[str, int] = field(default_factory=dict)  # param -> dim along input channels
    sync: Sync | None = None  # module attributes that hold channel counts
    rewrite: Rewrite | None = None  # graph constants that hold channel counts
    # A channel-wise op (norm with per-channel statistics, activation) that belongs to the sigma
    # a catalyst wraps: psi(u) = D*u - Dbar*u + sigma(u) with u the producer's output.
    catalyst_after: bool = False


# --- rules -------------------------------------------------------------------------------------


def _unary(cx: Context, op: Op) -> Flow:
    return cx.tflow(0)


def _inexact_unary(cx: Context, op: Op) -> Flow:
    # f(0) is infinite: a zeroed channel turns into inf/nan, so zeroing is not removal.
    flow = cx.tflow(0)
    cx.atoms.mark_inexact(flow.atoms(), f"{cx.where} is infinite at 0")
    return flow


def _elementwise(cx: Context, op: Op) -> Flow:
    operands = [(cx.tflow(a), cx.shape(a)) for a in cx.tensor_args()]
    return fl.elementwise(cx.atoms, operands, cx.out_shape, cx.where)


def _divide(cx: Context, op: Op) -> Flow:
    denominator = cx.arg(1, "other")
    if isinstance(denominator, torch.fx.Node):
        cx.atoms.mark_inexact(cx.tflow(denominator).atoms(), f"divides by a channel at {cx.where}")
    return _elementwise(cx, op)


def _resize(cx: Context, op: Op) -> Flow:
    return fl.resize(cx.atoms, cx.tflow(0), cx.shape(0), cx.out_shape, cx.where)


def _reshape(cx: Context, op: Op) -> Flow:
    return fl.reshape(cx.atoms, cx.tflow(0), cx.shape(0), cx.out_shape, cx.where)


def _sizes(cx: Context) -> list[object]:
    """The size arguments of view / reshape / expand, one per output dim."""
    args = cx.node.args
    packed = len(args) == 2 and isinstance(args[1], (tuple, list))
    return list(args[1] if packed else args[1:])


def _sized(flow: Flow, cx: Context) -> Flow:
    """Couple output dims whose size is read at run time from other tensors' sizes."""
    sizes = _sizes(cx)
    if len(sizes) == len(cx.out_shape):
        for dim, size in enumerate(sizes):
            value = cx.flow(size)
            if isinstance(value, fl.SizeOf):
                fl.sized_by(cx.atoms, flow, dim, value, cx.flows, cx.where)
    return flow


def _view(cx: Context, op: Op) -> Flow:
    return _sized(_reshape(cx, op), cx)


def _expand(cx: Context, op: Op) -> Flow:
    return _sized(_resize(cx, op), cx)


def _transpose(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    if cx.node.target in ("t", torch.t) or ndim < 2 and cx.arg(1, "dim0") is None:
        a, b = 0, 1
    else:
        a, b = cx.arg(1, "dim0") % ndim, cx.arg(2, "dim1") % ndim
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return fl.permute(cx.tflow(0), order)


def _permute(cx: Context, op: Op) -> Flow:
    dims = cx.node.args[1:] if cx.node.op == "call_method" else (cx.arg(1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    ndim = len(cx.shape(0))
    return fl.permute(cx.tflow(0), [d % ndim for d in dims])


def _movedim(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    src, dst = cx.arg(1, "source"), cx.arg(2, "destination")
    order = np.moveaxis(np.arange(ndim), src, dst).tolist()
    return fl.permute(cx.tflow(0), order)


def _reduce_dims() -> Rule:
    def rule(cx: Context, op: Op) -> object:
        ndim = len(cx.shape(0))
        dim = cx.arg(1, "dim", None)
        keepdim = bool(cx.arg(2, "keepdim", False))
        dims = None if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        out = fl.reduce(cx.atoms, cx.tflow(0), ndim, dims, keepdim, cx.where)
        meta = cx.node.meta.get("tensor_meta")
        return out if hasattr(meta, "shape") else (out, out)  # max(x, dim): (values, indices)

    return rule


def _softmax(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    dim = cx.module().dim if cx.node.op == "call_module" else cx.arg(1, "dim")
    return fl.reduce(cx.atoms, cx.tflow(0), ndim, [dim], True, cx.where, kind="normalises")


def _normalize(cx: Context, op: Op) -> Flow:  # F.normalize(x, p, dim=1)
    ndim = len(cx.shape(0))
    return fl.reduce(cx.atoms, cx.tflow(0), ndim, [cx.arg(2, "dim", 1)], True, cx.where,
                     kind="normalises")


def _mixes_along(dim_arg: tuple[int, str]) -> Rule:
    """roll / flip / cumsum: the op moves values along its dims; channels there are frozen."""

    def rule(cx: Context, op: Op) -> Flow:
        ndim = len(cx.shape(0))
        dims = cx.arg(*dim_arg, None)
        dims = list(range(ndim)) if dims is None else ([dims] if isinstance(dims, int) else dims)
        return fl.reduce(cx.atoms, cx.tflow(0), ndim, dims, True, cx.where, kind="moves values")

    return rule


def _cat(cx: Context, op: Op) -> Flow:
    ndim = len(cx.out_shape)
    dim = cx.arg(1, "dim", 0) % ndim
    return fl.concat(cx.atoms, cx.sequence(cx.arg(0, "tensors")), dim, cx.out_shape, cx.where)


def _stack(cx: Context, op: Op) -> Flow:
    dim = cx.arg(1, "dim", 0) % len(cx.out_shape)
    flows = [Flow({d + (d >= dim): ids for d, ids in f.dims.items()})
             for f, _ in cx.sequence(cx.arg(0, "tensors"))]
    shape = list(cx.out_shape)
    shape[dim] = 1
    return fl.elementwise(cx.atoms, [(f, shape) for f in flows], shape, cx.where)


def _split(cx: Context, op: Op) -> tuple[Flow, ...]:
    ndim = len(cx.shape(0))
    dim = cx.arg(2, "dim", 0) % ndim
    sizes = [m.shape[dim] for m in cx.node.meta["tensor_meta"]]
    return fl.pieces(cx.tflow(0), dim, sizes)


def _unbind(cx: Context, op: Op) -> tuple[Flow, ...]:
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dim", 0) % ndim
    flow = cx.tflow(0)
    if dim in flow.dims:
        cx.atoms.freeze(flow.dims[dim], f"unbind over a channel dim at {cx.where}")
    n = cx.shape(0)[dim]
    rest = Flow({d - (d > dim): ids for d, ids in flow.dims.items() if d != dim})
    return (rest,) * n


def _getitem(cx: Context, op: Op) -> object:
    source, index = cx.node.args
    value = cx.flow(source)
    if isinstance(value, tuple):
        return value[index]
    if not isinstance(value, Flow):
        return None
    return _index(cx, value, cx.shape(source), index)


def _index(cx: Context, flow: Flow, shape: tuple[int, ...], index: object) -> Flow:
    entries = list(index) if isinstance(index, tuple) else [index]
    consuming = sum(1 for e in entries if e is not None and e is not Ellipsis)
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries[at:at + 1] = [slice(None)] * (len(shape) - consuming)
    entries += [slice(None)] * (len(shape) - sum(1 for e in entries if e is not None))
    if any(isinstance(e, (torch.fx.Node, list, torch.Tensor)) and not isinstance(e, slice)
           for e in entries):
        cx.atoms.freeze(flow.atoms(), f"advanced indexing at {cx.where}")
        return UNTRACKED
    out, d_in, d_out = {}, 0, 0
    for e in entries:
        if e is None:
            d_out += 1
            continue
        ids = flow.dims.get(d_in)
        if isinstance(e, int):
            if ids is not None:
                cx.atoms.freeze(ids[e:e + 1] if e != -1 else ids[-1:],
                                f"one channel selected by index at {cx.where}")
        else:
            if ids is not None:
                dynamic = any(isinstance(v, torch.fx.Node) for v in (e.start, e.stop, e.step))
                if dynamic or e.step not in (None, 1):
                    cx.atoms.freeze(ids, f"strided or dynamic slice of channels at {cx.where}")
                    out[d_out] = ids
                else:
                    out[d_out] = ids[e]
            d_out += 1
        d_in += 1
    return Flow(out)


def _select(cx: Context, op: Op) -> Flow:  # x.select(dim, i) / x.narrow(dim, start, length)
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dim") % ndim
    if cx.node.target in ("narrow", torch.narrow):
        start = cx.arg(2, "start")
        index = slice(start, start + cx.arg(3, "length"))
    else:
        index = cx.arg(2, "index")
    return _index(cx, cx.tflow(0), cx.shape(0), (slice(None),) * dim + (index,))


def _repeat(cx: Context, op: Op) -> Flow:
    reps = cx.node.args[1:]
    if len(reps) == 1 and isinstance(reps[0], (tuple, list)):
        reps = reps[0]
    pad = len(reps) - len(cx.shape(0))
    return Flow({d + pad: np.tile(ids, reps[d + pad]) for d, ids in cx.tflow(0).dims.items()})


def _matmul(cx: Context, op: Op) -> Flow:
    a, b = cx.tensor_args()[:2]
    return fl.matmul(cx.atoms, (cx.tflow(a), cx.shape(a)), (cx.tflow(b), cx.shape(b)),
                     cx.out_shape, cx.where)


def _sdpa(cx: Context, op: Op) -> Flow:
    q, k, v = (cx.arg(i, n) for i, n in enumerate(("query", "key", "value")))
    scores = fl.matmul(cx.atoms, (cx.tflow(q), cx.shape(q)),
                       (fl.permute(cx.tflow(k), _swap_last(len(cx.shape(k)))),
                        _swapped(cx.shape(k))),
                       list(cx.shape(q)[:-1]) + [cx.shape(k)[-2]], cx.where)
    return fl.matmul(cx.atoms, (scores, list(cx.shape(q)[:-1]) + [cx.shape(k)[-2]]),
                     (cx.tflow(v), cx.shape(v)), cx.out_shape, cx.where)


def _swap_last(n: int) -> list[int]:
    return list(range(n - 2)) + [n - 1, n - 2]


def _swapped(shape: tuple[int, ...]) -> list[int]:
    return list(shape[:-2]) + [shape[-1], shape[-2]]


# --- parametrised ops --------------------------------------------------------------------------


def _conv(cx: Context, op: Op) -> Flow:
    m = cx.module()
    w_out, w_in = op.out_params["weight"], op.in_params["weight"]
    x = cx.tflow(0).dims.get(1)
    groups, c_in, c_out = m.groups, m.in_channels, m.out_channels
    if groups > 1 and groups == c_in:  # depthwise: each output follows its input channel
        if x is None:
            out = cx.atoms.fresh(c_out)
            cx.atoms.freeze(out, f"depthwise conv on an input without channels at {cx.where}")
        else:
            out = np.repeat(x, c_out // c_in)
        cx.member("weight", 0, out if w_out == 0 else x)
    else:
        if x is not None:
            if groups > 1:  # keep every conv group the same width: couple index j of each
                x = cx.atoms.unite(x.reshape(groups, -1), 0, cx.where)
                x = np.tile(x, groups)
            cx.member("weight", w_in, fl.fit(x, m.weight.shape[w_in]))
        out = cx.atoms.fresh(c_out)
        if groups > 1:
            out = np.tile(cx.atoms.unite(out.reshape(groups, -1), 0, cx.where), groups)
        cx.member("weight", w_out, fl.fit(out, m.weight.shape[w_out]))
    if m.bias is not None:
        cx.member("bias", 0, out)
    return Flow({1: out})


def _linear(cx: Context, op: Op) -> Flow:
    m = cx.module()
    flow = cx.tflow(0)
    last = len(cx.shape(0)) - 1
    if last in flow.dims:
        cx.member("weight", 1, flow.dims[last])
    out = cx.atoms.fresh(m.out_features)
    cx.member("weight", 0, out)
    if m.bias is not None:
        cx.member("bias", 0, out)
    return Flow({**{d: i for d, i in flow.dims.items() if d != last}, last: out})


def _functional_linear(cx: Context, op: Op) -> Flow:
    """F.linear(x, weight, bias) with the weight a bare parameter (its dims carry atoms)."""
    x, weight, bias = cx.arg(0, "input"), cx.arg(1, "weight"), cx.arg(2, "bias")
    w = cx.tflow(weight).dims
    flow, last = cx.tflow(x), len(cx.shape(x)) - 1
    out = w.get(0)
    if out is None:
        out = cx.atoms.fresh(cx.out_shape[-1])
        cx.atoms.freeze(out, f"linear weight without channels at {cx.where}")
    fl.elementwise(cx.atoms, [(Flow({0: flow.dims[last]} if last in flow.dims else {}),
                               [cx.shape(x)[-1]]),
                              (Flow({0: w[1]} if 1 in w else {}), [cx.shape(weight)[1]])],
                   [cx.shape(x)[-1]], cx.where)
    if isinstance(bias, torch.fx.Node) and 0 in cx.tflow(bias).dims:
        cx.atoms.union(out, cx.tflow(bias).dims[0], cx.where)
    return Flow({**{d: i for d, i in flow.dims.items() if d != last}, last: out})


def _channel_params(cx: Context, op: Op, ids: np.ndarray) -> None:
    m = cx.module()
    for name, dim in op.out_params.items():
        if getattr(m, name, None) is not None:
            cx.member(name, dim, ids)


def _batchnorm(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    if 1 in flow.dims:
        _channel_params(cx, op, flow.dims[1])
    return flow


def _groupnorm(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    ids = flow.dims.get(1)
    if ids is not None:
        # Statistics are per norm group: only whole norm groups can go.
        cx.atoms.unite(ids.reshape(cx.module().num_groups, -1), 1, cx.where)
        _channel_params(cx, op, ids)
    return flow


def _layernorm(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    if cx.node.op == "call_module":
        m = cx.module()
        k, weight, bias = len(m.normalized_shape), "weight", "bias"
    else:
        k, weight, bias = len(cx.arg(1, "normalized_shape")), cx.arg(2, "weight"), cx.arg(3, "bias")
    ndim = len(cx.shape(0))
    for j, d in enumerate(range(ndim - k, ndim)):
        if d not in flow.dims:
            continue
        ids = flow.dims[d]
        cx.atoms.mark_inexact(ids, f"LayerNorm normalises over the channels at {cx.where}")
        for p in (weight, bias):
            if isinstance(p, str) and getattr(cx.module(), p, None) is not None:
                cx.member(p, j, ids)
            elif isinstance(p, torch.fx.Node):
                pflow = cx.tflow(p)
                if j in pflow.dims:
                    cx.atoms.union(pflow.dims[j], ids, cx.where)
    return flow


def _prelu(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    if cx.module().num_parameters > 1 and 1 in flow.dims:
        cx.member("weight", 0, flow.dims[1])
    return flow


def _embedding(cx: Context, op: Op) -> Flow:
    m = cx.module()
    out = cx.atoms.fresh(m.embedding_dim)
    cx.member("weight", 1, out)
    return Flow({**cx.tflow(0).dims, len(cx.out_shape) - 1: out})


def _pixel_shuffle(cx: Context, op: Op) -> Flow:
    r = cx.module().upscale_factor
    flow = cx.tflow(0)
    if 1 not in flow.dims:
        return UNTRACKED
    # Output channel c gathers input channels c*r^2 .. c*r^2 + r^2 - 1: they go together.
    return Flow({1: cx.atoms.unite(flow.dims[1].reshape(-1, r * r), 1, cx.where)})


def _pixel_unshuffle(cx: Context, op: Op) -> Flow:
    r = cx.module().downscale_factor
    flow = cx.tflow(0)
    return Flow({1: np.repeat(flow.dims[1], r * r)}) if 1 in flow.dims else UNTRACKED


def _channel_shuffle(cx: Context, op: Op) -> Flow:
    g = cx.module().groups if cx.node.op == "call_module" else cx.arg(1, "groups")
    flow = cx.tflow(0)
    if 1 not in flow.dims:
        return UNTRACKED
    unit = cx.atoms.unite(flow.dims[1].reshape(g, -1), 0, cx.where)
    return Flow({1: np.repeat(unit, g)})


def _multihead_attention(cx: Context, op: Op) -> tuple[Flow, Flow]:
    """nn.MultiheadAttention computes head_dim = embed_dim // num_heads from its input and
    returns embed_dim channels, so input, q, k, v and output widths shrink together: one unit is
    one head dimension, the same in every head (q, k and v alike)."""
    m = cx.module()
    if m.bias_k is not None or m.add_zero_attn or not m._qkv_same_embed_dim:
        return cx.unknown("nn.MultiheadAttention with add_bias_kv, add_zero_attn or kdim/vdim")
    inputs = [cx.arg(i, n) for i, n in enumerate(("query", "key", "value"))]
    tracked = [cx.tflow(x).dims.get(len(cx.shape(x)) - 1) for x in inputs]
    if any(ids is None for ids in tracked):
        for ids in tracked:
            if ids is not None:
                cx.atoms.freeze(ids, f"attention inputs of which some carry no channels at {cx.where}")
        return cx.unknown("nn.MultiheadAttention on inputs without channels")
    for ids in tracked[1:]:
        cx.atoms.union(tracked[0], ids, cx.where)
    ids = tracked[0]
    unit = np.tile(cx.atoms.unite(ids.reshape(m.num_heads, -1), 0, cx.where), m.num_heads)
    cx.atoms.mark_inexact(unit, f"attention scales by 1/sqrt(head_dim), which shrinks, at {cx.where}")
    rows = np.concatenate([unit, unit, unit])
    cx.member("in_proj_weight", 1, ids)
    cx.member("in_proj_weight", 0, rows)
    if m.in_proj_bias is not None:
        cx.member("in_proj_bias", 0, rows)
    cx.member("out_proj.weight", 1, unit)
    cx.member("out_proj.weight", 0, unit)
    if m.out_proj.bias is not None:
        cx.member("out_proj.bias", 0, unit)
    return Flow({len(cx.shape(inputs[0])) - 1: unit}), UNTRACKED


def _shifted_window_attention(cx: Context, op: Op) -> Flow:
    """torchvision's Swin attention (an fx-wrapped function). It derives the head dim from the
    input width (C // num_heads) and reshapes its output back to C, so the input, q, k, v and
    output widths shrink together: one unit is one head dimension, the same in every head."""
    x, heads = cx.arg(0, "input"), cx.arg(5, "num_heads")
    c = cx.shape(x)[-1]
    ids = cx.tflow(x).dims.get(len(cx.shape(x)) - 1)
    if ids is None:
        unit = cx.atoms.fresh(c // heads)
        cx.atoms.freeze(unit, f"attention input without channels at {cx.where}")
        ids = np.tile(unit, heads)
    unit = np.tile(cx.atoms.unite(ids.reshape(heads, -1), 0, cx.where), heads)
    cx.atoms.mark_inexact(unit, f"attention scales by 1/sqrt(head_dim), which shrinks, at {cx.where}")
    rows = np.concatenate([unit, unit, unit])
    # per-head tensors: heads are never removed here
    cx.freeze_all((cx.arg(3, "relative_position_bias"), cx.arg(11, "logit_scale")),
                  f"per-head tensor of attention at {cx.where}")
    for arg, name, dim, atoms in ((1, "qkv_weight", 1, ids), (1, "qkv_weight", 0, rows),
                                  (9, "qkv_bias", 0, rows), (2, "proj_weight", 1, unit),
                                  (2, "proj_weight", 0, unit), (10, "proj_bias", 0, unit)):
        pflow = cx.tflow(cx.arg(arg, name))
        if dim in pflow.dims:
            cx.atoms.union(pflow.dims[dim], atoms, cx.where)
    return Flow({len(cx.out_shape) - 1: unit})


def _patch_merging_pad(cx: Context, op: Op) -> Flow:
    """torchvision's Swin patch merging: pads H and W, then concatenates the four 2x2
    neighbours along channels, so the output holds each input channel four times."""
    flow = cx.tflow(0)
    last = len(cx.shape(0)) - 1
    return Flow({last: np.tile(flow.dims[last], 4)}) if last in flow.dims else UNTRACKED


# --- surgery: module attributes and graph constants that hold channel counts ---------------


def _sync_conv(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    new_in, new_out = rx.new_shape(node.args[0])[1], rx.new_shape(node)[1]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise stays depthwise
        m.groups = new_in
    m.in_channels, m.out_channels = new_in, new_out


def _sync_linear(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.in_features, m.out_features = rx.new_shape(node.args[0])[-1], rx.new_shape(node)[-1]


def _sync_batchnorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.num_features = rx.new_shape(node.args[0])[1]


def _sync_groupnorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = rx.new_shape(node.args[0])[1]
    m.num_groups = m.num_channels // per_group


def _sync_layernorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.normalized_shape = tuple(rx.new_shape(node.args[0])[-len(m.normalized_shape):])


def _sync_prelu(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    if m.num_parameters > 1:
        m.num_parameters = rx.new_shape(node.args[0])[1]


def _sync_embedding(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.embedding_dim = rx.new_shape(node)[-1]


def _sync_attention(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    width = rx.new_shape(node.args[0])[-1]
    m.embed_dim = m.kdim = m.vdim = width
    m.head_dim = width // m.num_heads
    m.out_proj.in_features = m.out_proj.out_features = width


def _sync_unflatten(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    dim = m.dim % len(rx.new_shape(node.args[0]))
    m.unflattened_size = tuple(rx.new_shape(node)[dim:dim + len(m.unflattened_size)])


def _rewrite_sizes(rx: Resize, node: torch.fx.Node) -> None:
    """view / reshape / expand: literal sizes that were a channel count become the new one."""
    old, new = rx.old_shape(node), rx.new_shape(node)
    if old == new:
        return
    first = 1
    packed = len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
    sizes = list(node.args[1] if packed else node.args[first:])
    for i, size in enumerate(sizes):
        if isinstance(size, int) and size != -1 and size == old[i] and new[i] != old[i]:
            sizes[i] = new[i]
    node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)


def _rewrite_split(rx: Resize, node: torch.fx.Node) -> None:
    """split / chunk along a pruned dim: explicit new sizes (a chunk may now be uneven)."""
    x = node.args[0]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(rx.old_shape(x))
    if rx.old_shape(x)[dim] == rx.new_shape(x)[dim]:
        return
    sizes = [shape[dim] for shape in rx.new_shape(node)]
    node.target = "split" if node.op == "call_method" else torch.split
    node.args, node.kwargs = (x, sizes, dim), {}


def _rewrite_index(rx: Resize, node: torch.fx.Node) -> None:
    """getitem / narrow / select on a pruned dim: indices move to the kept channels' places."""
    x = node.args[0]
    if not isinstance(x, torch.fx.Node) or not hasattr(x.meta.get("tensor_meta"), "shape"):
        return
    ndim = len(rx.old_shape(x))
    if node.target in ("narrow", torch.narrow, "select", torch.select):
        dim = node.args[1] % ndim
        keep = rx.keep(x, dim)
        if keep is not None:
            start = _moved(keep, node.args[2])
            if node.target in ("narrow", torch.narrow):
                length = _moved(keep, node.args[2] + node.args[3]) - start
                node.args = (x, node.args[1], start, length)
            else:
                node.args = (x, node.args[1], start)
        return
    index = node.args[1]
    entries = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        consuming = sum(1 for e in entries if e is not None and e is not Ellipsis)
        entries[at:at + 1] = [slice(None)] * (ndim - consuming)
    dim = 0
    for k, e in enumerate(entries):
        if e is None:
            continue
        keep = rx.keep(x, dim)
        if keep is not None and isinstance(e, int):
            entries[k] = _moved(keep, e % len(keep))
        elif keep is not None and isinstance(e, slice) and (e.start, e.stop) != (None, None):
            start, stop, _ = e.indices(len(keep))
            entries[k] = slice(_moved(keep, start), _moved(keep, stop), e.step)
        dim += 1
    node.args = (x, tuple(entries) if isinstance(index, tuple) else entries[0])


def _moved(keep: np.ndarray, index: int) -> int:
    """Where old index `index` lands once the dropped channels are gone."""
    return int(keep[:index].sum())


def _rewrite_layer_norm(rx: Resize, node: torch.fx.Node) -> None:
    shape = node.args[1]
    new = tuple(rx.new_shape(node.args[0])[-len(shape):])
    node.args = (node.args[0], new, *node.args[2:])


# --- the table ---------------------------------------------------------------------------------

_CONV = Op(flow=_conv, out_params={"weight": 0, "bias": 0}, in_params={"weight": 1},
           sync=_sync_conv)
_CONV_T = Op(flow=_conv, out_params={"weight": 1, "bias": 0}, in_params={"weight": 0},
             sync=_sync_conv)
_NORM_PARAMS = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}
_BATCHNORM = Op(flow=_batchnorm, out_params=_NORM_PARAMS, sync=_sync_batchnorm,
                catalyst_after=True)
UNARY = Op(flow=_unary)
ACTIVATION = Op(flow=_unary, catalyst_after=True)
ELEMENTWISE = Op(flow=_elementwise)
RESIZE = Op(flow=_resize)
RESHAPE = Op(flow=_reshape)
_SIZES = Op(flow=_view, rewrite=_rewrite_sizes)

MODULES: dict[type, Op] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _CONV),
    **dict.fromkeys((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _CONV_T),
    nn.Linear: Op(flow=_linear, out_params={"weight": 0, "bias": 0}, in_params={"weight": 1},
                  sync=_sync_linear),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), _BATCHNORM),
    nn.GroupNorm: Op(flow=_groupnorm, out_params={"weight": 0, "bias": 0}, sync=_sync_groupnorm),
    nn.LayerNorm: Op(flow=_layernorm, sync=_sync_layernorm),
    nn.PReLU: Op(flow=_prelu, sync=_sync_prelu, catalyst_after=True),
    nn.Embedding: Op(flow=_embedding, out_params={"weight": 1}, sync=_sync_embedding),
    nn.MultiheadAttention: Op(flow=_multihead_attention, sync=_sync_attention,
                              in_params={"in_proj_weight": 1, "out_proj.weight": 1}),
    **dict.fromkeys((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                     nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
                     nn.Softplus, nn.Softsign, nn.LogSigmoid), ACTIVATION),
    **dict.fromkeys((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout), UNARY),
    **dict.fromkeys((nn.Softmax, nn.LogSoftmax), Op(flow=_softmax)),
    nn.Flatten: RESHAPE,
    nn.Unflatten: Op(flow=_reshape, sync=_sync_unflatten),
    **dict.fromkeys((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                     nn.AdaptiveMaxPool3d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d,
                     nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d,
                     nn.ReflectionPad2d, nn.ReplicationPad2d), RESIZE),
    nn.PixelShuffle: Op(flow=_pixel_shuffle),
    nn.PixelUnshuffle: Op(flow=_pixel_unshuffle),
    nn.ChannelShuffle: Op(flow=_channel_shuffle),
}

_SPLIT = Op(flow=_split, rewrite=_rewrite_split)
_TRANSPOSE = Op(flow=_transpose)
_PERMUTE = Op(flow=_permute)
_MATMUL = Op(flow=_matmul)
_CAT = Op(flow=_cat)
_REDUCE = Op(flow=_reduce_dims())
_SOFTMAX = Op(flow=_softmax)
_DIVIDE = Op(flow=_divide)
_INEXACT = Op(flow=_inexact_unary)

FUNCTIONS: dict[Callable[..., object], Op] = {
    **dict.fromkeys((operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
                     torch.maximum, torch.minimum, torch.where, operator.pow, torch.pow,
                     torch.masked_fill), ELEMENTWISE),
    **dict.fromkeys((operator.truediv, torch.div, torch.true_divide), _DIVIDE),
    **dict.fromkeys((torch.rsqrt, torch.log, torch.reciprocal), _INEXACT),
    **dict.fromkeys((torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid,
                     torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.leaky_relu, F.elu, F.mish,
                     F.softplus, F.hardtanh), ACTIVATION),
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, operator.neg, torch.neg,
                     torch.abs, torch.exp, torch.clamp, torch.clip, torch.sqrt, torch.erf,
                     torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                     torchvision.ops.stochastic_depth), UNARY),
    **dict.fromkeys((F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                     F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.avg_pool1d, F.avg_pool2d,
                     F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.interpolate,
                     F.pad, torch.broadcast_to), RESIZE),
    **dict.fromkeys((torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten), RESHAPE),
    torch.reshape: _SIZES,
    **dict.fromkeys((torch.transpose, torch.swapaxes, torch.t), _TRANSPOSE),
    torch.permute: _PERMUTE,
    torch.movedim: Op(flow=_movedim),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _CAT),
    torch.stack: Op(flow=_stack),
    **dict.fromkeys((torch.split, torch.chunk, torch.tensor_split), _SPLIT),
    torch.unbind: Op(flow=_unbind),
    torch.narrow: Op(flow=_select, rewrite=_rewrite_index),
    torch.select: Op(flow=_select, rewrite=_rewrite_index),
    operator.getitem: Op(flow=_getitem, rewrite=_rewrite_index),
    **dict.fromkeys((torch.matmul, operator.matmul, torch.bmm), _MATMUL),
    F.scaled_dot_product_attention: Op(flow=_sdpa),
    **dict.fromkeys((torch.mean, torch.sum, torch.std, torch.var, torch.logsumexp, torch.amax,
                     torch.amin, torch.norm, torch.prod), _REDUCE),
    **dict.fromkeys((torch.max, torch.min), _REDUCE),
    **dict.fromkeys((torch.softmax, F.softmax, F.log_softmax, torch.log_softmax), _SOFTMAX),
    torch.cumsum: Op(flow=_mixes_along((1, "dim"))),
    torch.roll: Op(flow=_mixes_along((2, "dims"))),
    torch.flip: Op(flow=_mixes_along((1, "dims"))),
    F.normalize: Op(flow=_normalize),
    torchvision.models.swin_transformer.shifted_window_attention: Op(
        flow=_shifted_window_attention),
    torchvision.models.swin_transformer._patch_merging_pad: Op(flow=_patch_merging_pad),
    F.layer_norm: Op(flow=_layernorm, rewrite=_rewrite_layer_norm),
    F.linear: Op(flow=_functional_linear),
    F.channel_shuffle: Op(flow=_channel_shuffle),
    torch.channel_shuffle: Op(flow=_channel_shuffle),
}

# Tensor methods share the functions' entries (self is the first argument).
METHODS: dict[str, Op] = {
    **dict.fromkeys(("add", "sub", "mul", "add_", "sub_", "mul_", "pow", "masked_fill",
                     "masked_fill_", "maximum", "minimum"), ELEMENTWISE),
    **dict.fromkeys(("div", "div_", "true_divide"), _DIVIDE),
    **dict.fromkeys(("rsqrt", "log", "reciprocal"), _INEXACT),
    **dict.fromkeys(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"), ACTIVATION),
    **dict.fromkeys(("contiguous", "clone", "detach", "to", "type", "type_as", "float", "half",
                     "double", "bfloat16", "neg", "abs", "exp", "sqrt", "clamp", "clamp_",
                     "clip", "zero_", "fill_", "new_zeros_like", "requires_grad_"), UNARY),
    **dict.fromkeys(("flatten", "squeeze", "unsqueeze", "unflatten"), RESHAPE),
    **dict.fromkeys(("view", "reshape"), _SIZES),
    "expand": Op(flow=_expand, rewrite=_rewrite_sizes),
    **dict.fromkeys(("expand_as", "broadcast_to"), RESIZE),
    **dict.fromkeys(("transpose", "swapaxes", "t"), _TRANSPOSE),
    "permute": _PERMUTE,
    "movedim": Op(flow=_movedim),
    **dict.fromkeys(("split", "chunk", "tensor_split"), _SPLIT),
    "unbind": Op(flow=_unbind),
    "narrow": Op(flow=_select, rewrite=_rewrite_index),
    "select": Op(flow=_select, rewrite=_rewrite_index),
    "repeat": Op(flow=_repeat),
    **dict.fromkeys(("matmul", "bmm"), _MATMUL),
    **dict.fromkeys(("mean", "sum", "std", "var", "logsumexp", "amax", "amin", "norm", "prod"),
                    _REDUCE),
    **dict.fromkeys(("max", "min"), _REDUCE),
    **dict.fromkeys(("softmax", "log_softmax"), _SOFTMAX),
    "cumsum": Op(flow=_mixes_along((1, "dim"))),
    "roll": Op(flow=_mixes_along((2, "dims"))),
    "flip": Op(flow=_mixes_along((1, "dims"))),
}


def lookup(node: torch.fx.Node, module: nn.Module | None) -> Op | None:
    """The table entry for `node`, or None when the op is unknown."""
    if node.op == "call_module" and module is not None:
        for cls in type(module).__mro__:
            if cls in MODULES:
                # A subclass with its own forward is a different op.
                return MODULES[cls] if type(module).forward is cls.forward else None
        return None
    if node.op == "call_function":
        try:
            return FUNCTIONS.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return METHODS.get(node.target)
    return None
