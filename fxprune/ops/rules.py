"""Flow rules: how channels pass through each op during analysis (see `fxprune.ops.table`).

Each rule takes the `Context` of the node being analysed and the op's table entry, records the
parameter slices the op's channels live in (``cx.member``), couples, freezes or marks channels
inexact through ``cx.atoms``, and returns the flow of the op's output.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from fxprune.ops import flow as fl
from fxprune.ops.api import CHANNEL_SIZED_KEY, Context, Op, Rule, is_tensor, untracked_like
from fxprune.ops.flow import UNTRACKED, Flow


def unary(cx: Context, op: Op) -> Flow:
    return cx.tflow(0)


def inexact_unary(cx: Context, op: Op) -> Flow:
    # f(0) is infinite: a zeroed channel turns into inf/nan, so zeroing is not removal.
    flow = cx.tflow(0)
    cx.atoms.mark_inexact(flow.atoms(), f"{cx.where} is infinite at 0")
    return flow


def elementwise(cx: Context, op: Op) -> Flow:
    operands = [(cx.tflow(a), cx.shape(a)) for a in cx.tensor_args()]
    return fl.elementwise(cx.atoms, operands, cx.out_shape, cx.where)


def divide(cx: Context, op: Op) -> Flow:
    denominator = cx.arg(1, "other")
    if isinstance(denominator, torch.fx.Node):  # a value broadcast along channels is none
        ids = cx.tflow(denominator).atoms()
        cx.atoms.mark_inexact(ids[~cx.atoms.discarded(ids)], f"divides by a channel at {cx.where}")
    return elementwise(cx, op)


def resize(cx: Context, op: Op) -> Flow:
    return fl.resize(cx.atoms, cx.tflow(0), cx.shape(0), cx.out_shape, cx.where)


def reshape(cx: Context, op: Op) -> Flow:
    flow, shape, out = cx.tflow(0), cx.shape(0), cx.out_shape
    splits = any(any(d in flow.dims for d in ins) and sum(out[k] > 1 for k in outs) > 1
                 for ins, outs in fl.dim_groups(list(shape), list(out)))
    prefer = _split_unit(cx) if splits else ()
    if prefer and op.flow is view:
        # a dim sized at run time from dims without channels (halonet's B * heads) cannot hold
        # whole units: `_sized` would freeze them there
        sizes = [cx.flow(size) for size in _sizes(cx)]
        if len(sizes) == len(out):
            prefer = tuple(d for d in prefer if d is None or not isinstance(sizes[d], fl.SizeOf)
                           or any(k in cx.tflow(src).dims for src, k in sizes[d].sources))
    return fl.reshape(cx.atoms, flow, shape, out, cx.where, prefer)


def _sizes(cx: Context) -> list[object]:
    """The size arguments of view / reshape / expand, one per output dim."""
    return _size_args(cx.node)


def _size_args(node: torch.fx.Node) -> list[object]:
    args = node.args
    packed = len(args) == 2 and isinstance(args[1], (tuple, list))
    return list(args[1] if packed else args[1:])


def _sized(flow: Flow, cx: Context) -> Flow:
    """Output dims whose size is read at run time from other tensors' sizes: those that surgery
    must write as literals are recorded on the node (`CHANNEL_SIZED_KEY`)."""
    sizes = _sizes(cx)
    literal = []
    if len(sizes) == len(cx.out_shape):
        for dim, size in enumerate(sizes):
            value = cx.flow(size)
            if isinstance(value, fl.SizeOf) and fl.sized_by(cx.atoms, flow, dim, value, cx.flows,
                                                            cx.where):
                literal.append(dim)
    if literal:
        cx.node.meta[CHANNEL_SIZED_KEY] = tuple(literal)
    else:
        cx.node.meta.pop(CHANNEL_SIZED_KEY, None)
    return flow


def view(cx: Context, op: Op) -> Flow:
    return _sized(reshape(cx, op), cx)


def broadcast(cx: Context, op: Op) -> Flow:
    """expand_as / broadcast_to: dims of size 1 that grow repeat one value, as a broadcast in
    an elementwise op would: they get atoms of their own, discarded (never a group by
    themselves), so that the op they meet couples them with its channels and surgery shrinks
    them with those (``x / x.norm(dim=1, keepdim=True).expand_as(x)``)."""
    in_shape, out_shape = cx.shape(0), cx.out_shape
    flow = fl.resize(cx.atoms, cx.tflow(0), in_shape, out_shape, cx.where)
    pad = len(out_shape) - len(in_shape)
    dims = dict(flow.dims)
    for d, size in enumerate(out_shape):
        if d not in dims and size > 1 and (d < pad or in_shape[d - pad] == 1):
            dims[d] = cx.atoms.fresh(size)
            cx.atoms.discard(dims[d])
    return Flow(dims)


def expand(cx: Context, op: Op) -> Flow:
    """x.expand(sizes): a broadcast whose sizes may be read from other tensors."""
    return _sized(broadcast(cx, op), cx)


def transpose(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    if cx.node.target in ("t", torch.t, torch.ops.aten.t.default) or ndim < 2 and cx.arg(1, "dim0") is None:
        a, b = 0, 1
    else:
        a, b = cx.arg(1, "dim0") % ndim, cx.arg(2, "dim1") % ndim
    order = list(range(ndim))
    order[a], order[b] = order[b], order[a]
    return fl.permute(cx.tflow(0), order)


def permute(cx: Context, op: Op) -> Flow:
    dims = cx.node.args[1:] if cx.node.op == "call_method" else (cx.arg(1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    ndim = len(cx.shape(0))
    return fl.permute(cx.tflow(0), [d % ndim for d in dims])


def movedim(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    src, dst = cx.arg(1, "source"), cx.arg(2, "destination")
    order = np.moveaxis(np.arange(ndim), src, dst).tolist()
    return fl.permute(cx.tflow(0), order)


def reduce_dims(over_channels: str, dim_at: int = 1) -> Rule:
    """sum / mean / var / amax / max(x, dim) ...: see `fl.reduce` for `over_channels`. The dim
    is argument `dim_at` (2 for ``norm(x, p, dim)``), keepdim the next.

    max and min over channels also return indices into them; where those are read, the channels
    are frozen (an index does not follow surgery). ``torch.max(a, b)`` is elementwise.
    """

    def rule(cx: Context, op: Op) -> object:
        ndim = len(cx.shape(0))
        dim = cx.arg(dim_at, "dim", None)
        if isinstance(dim, torch.fx.Node):
            return elementwise(cx, op)
        keepdim = bool(cx.arg(dim_at + 1, "keepdim", False))
        dims = None if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        meta = cx.node.meta.get("tensor_meta")
        if hasattr(meta, "shape"):
            return fl.reduce(cx.atoms, cx.tflow(0), ndim, dims, keepdim, cx.where, over_channels)
        indices_read = any(u.target is not operator.getitem or u.args[1] != 0 for u in cx.node.users)
        out = fl.reduce(cx.atoms, cx.tflow(0), ndim, dims, keepdim, cx.where,
                        "freeze" if indices_read else over_channels,
                        "takes indices" if indices_read else "reduces")
        return out, out  # (values, indices)

    return rule


def softmax(cx: Context, op: Op) -> Flow:
    ndim = len(cx.shape(0))
    dim = cx.module().dim if cx.node.op == "call_module" else cx.arg(1, "dim")
    fl.across(cx.atoms, cx.tflow(0), ndim, [dim], cx.where, kind="normalises")
    return cx.tflow(0)


def normalize(cx: Context, op: Op) -> Flow:
    """F.normalize(x, p, dim=1): a zeroed channel adds nothing to the p-norm (p > 0)."""
    p = cx.arg(1, "p", 2.0)
    fl.across(cx.atoms, cx.tflow(0), len(cx.shape(0)), [cx.arg(2, "dim", 1)], cx.where,
              "exact" if isinstance(p, (int, float)) and p > 0 else "inexact", kind="normalises")
    return cx.tflow(0)


def mixes_along(dim_arg: tuple[int, str]) -> Rule:
    """roll / flip / cumsum: the op moves values along its dims; channels there are frozen."""

    def rule(cx: Context, op: Op) -> Flow:
        ndim = len(cx.shape(0))
        dims = cx.arg(*dim_arg, None)
        dims = None if dims is None else ([dims] if isinstance(dims, int) else dims)
        fl.across(cx.atoms, cx.tflow(0), ndim, dims, cx.where, "freeze", kind="moves values")
        return cx.tflow(0)

    return rule


def windows(cx: Context, op: Op) -> Flow:
    """x.unfold(dim, size, step): sliding windows along `dim`, their positions in a new last
    dim. Channels on other dims keep their places; channels along `dim` are frozen."""
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dimension") % ndim
    flow = cx.tflow(0)
    fl.across(cx.atoms, flow, ndim, [dim], cx.where, "freeze", kind="slides windows")
    return Flow({d: ids for d, ids in flow.dims.items() if d != dim})


def assigns(cx: Context, op: Op) -> None:
    """x[index] = y, in place: the graph's values no longer say what x holds afterwards, so the
    channels of both are frozen."""
    cx.freeze_all(cx.node.args, f"assigned into in place at {cx.where}")


def cat(cx: Context, op: Op) -> Flow:
    ndim = len(cx.out_shape)
    dim = cx.arg(1, "dim", 0) % ndim
    return fl.concat(cx.atoms, cx.sequence(cx.arg(0, "tensors")), dim, cx.out_shape, cx.where)


def stack(cx: Context, op: Op) -> Flow:
    dim = cx.arg(1, "dim", 0) % len(cx.out_shape)
    flows = [Flow({d + (d >= dim): ids for d, ids in f.dims.items()})
             for f, _ in cx.sequence(cx.arg(0, "tensors"))]
    shape = list(cx.out_shape)
    shape[dim] = 1
    return fl.elementwise(cx.atoms, [(f, shape) for f in flows], shape, cx.where)


def split(cx: Context, op: Op) -> tuple[Flow, ...]:
    ndim = len(cx.shape(0))
    dim = cx.arg(2, "dim", 0) % ndim
    sizes = [m.shape[dim] for m in cx.node.meta["tensor_meta"]]
    return fl.pieces(cx.tflow(0), dim, sizes)


def unbind(cx: Context, op: Op) -> tuple[Flow, ...]:
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dim", 0) % ndim
    flow = cx.tflow(0)
    if dim in flow.dims:
        cx.atoms.freeze(flow.dims[dim], f"unbind over a channel dim at {cx.where}")
    n = cx.shape(0)[dim]
    rest = Flow({d - (d > dim): ids for d, ids in flow.dims.items() if d != dim})
    return (rest,) * n


def getitem(cx: Context, op: Op) -> object:
    source, index = cx.node.args
    value = cx.flow(source)
    if isinstance(value, (tuple, dict)):
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
    advanced = [k for k, e in enumerate(entries) if isinstance(e, (torch.fx.Node, list, torch.Tensor))]
    if advanced:
        return _gather(cx, flow, entries, advanced)
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
                    # which channels it takes is not known here: none is tracked past it
                    cx.atoms.freeze(ids, f"strided or dynamic slice of channels at {cx.where}")
                else:
                    out[d_out] = ids[e]
            d_out += 1
        d_in += 1
    return Flow(out)


def _gather(cx: Context, flow: Flow, entries: list[object], advanced: list[int]) -> Flow:
    """x[:, idx] with one integer index tensor among full slices (a relative-position table
    gathered by an index table): the indexed dim's channels are frozen, the others keep their
    places around the index's dims. Anything else is frozen whole."""
    (k,) = advanced if len(advanced) == 1 else (None,)
    index = entries[k] if k is not None else None
    meta = index.meta.get("tensor_meta") if isinstance(index, torch.fx.Node) else None
    plain = all(e == slice(None) for i, e in enumerate(entries) if i != k)
    if k is None or not plain or not hasattr(meta, "shape") or meta.dtype == torch.bool:
        cx.atoms.freeze(flow.atoms(), f"advanced indexing at {cx.where}")
        return UNTRACKED
    if k in flow.dims:
        cx.atoms.freeze(flow.dims[k], f"channels gathered by an index tensor at {cx.where}")
    n = len(meta.shape)
    return Flow({d if d < k else d - 1 + n: ids for d, ids in flow.dims.items() if d != k})


def slice_dim(cx: Context, op: Op) -> Flow:
    """aten.slice(x, dim, start, end, step): x[..., start:end:step] along `dim`."""
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dim", 0) % ndim
    index = slice(cx.arg(2, "start"), cx.arg(3, "end"), cx.arg(4, "step", 1))
    return _index(cx, cx.tflow(0), cx.shape(0), (slice(None),) * dim + (index,))


def index_tensors(cx: Context, op: Op) -> Flow:
    """aten.index(x, [None, idx]): advanced indexing with full slices where None."""
    entries = [slice(None) if i is None else i for i in cx.arg(1, "indices")]
    return _index(cx, cx.tflow(0), cx.shape(0), tuple(entries))


def creates(cx: Context, op: Op) -> object:
    """A new tensor from sizes alone (arange, zeros, full): no channels."""
    return untracked_like(cx.node.meta.get("tensor_meta"))


def select(cx: Context, op: Op) -> Flow:  # x.select(dim, i) / x.narrow(dim, start, length)
    ndim = len(cx.shape(0))
    dim = cx.arg(1, "dim") % ndim
    if cx.node.target in ("narrow", torch.narrow):
        start = cx.arg(2, "start")
        index = slice(start, start + cx.arg(3, "length"))
    else:
        index = cx.arg(2, "index")
    return _index(cx, cx.tflow(0), cx.shape(0), (slice(None),) * dim + (index,))


def repeat(cx: Context, op: Op) -> Flow:
    # the counts from the shapes: an argument may be computed from sizes (a traced value)
    out = cx.out_shape
    pad = len(out) - len(cx.shape(0))
    return Flow({d + pad: np.tile(ids, out[d + pad] // len(ids))
                 for d, ids in cx.tflow(0).dims.items()})


def repeat_interleave(cx: Context, op: Op) -> Flow:
    """x.repeat_interleave(r, dim): each index along `dim` repeated r times in place, so a
    channel there owns its r copies. Without a dim (flattened), or with per-index repeats from
    a tensor, the channels are frozen."""
    flow, dim, repeats = cx.tflow(0), cx.arg(2, "dim"), cx.arg(1, "repeats")
    if dim is None or isinstance(repeats, torch.fx.Node) and is_tensor(repeats):
        cx.atoms.freeze(flow.atoms(), f"repeat_interleave without a dim or with repeats per index at {cx.where}")
        return UNTRACKED
    dim %= len(cx.shape(0))
    dims = dict(flow.dims)
    if dim in dims:
        dims[dim] = np.repeat(dims[dim], cx.out_shape[dim] // cx.shape(0)[dim])
    return Flow(dims)


def einsum(cx: Context, op: Op) -> Flow:
    """torch.einsum with an explicit output: dims that share a letter are coupled, as a
    matmul's contracted dims are; a letter in the output carries its channels there. A letter
    tracked in one operand and not in another (of the same size) is frozen."""
    equation, *operands = cx.node.args
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = list(operands[0])
    equation = equation.replace(" ", "")
    if "..." in equation or "->" not in equation:
        return cx.unknown("einsum with '...' or without '->'")
    inputs, output = equation.split("->")
    seen: dict[str, list[tuple[np.ndarray | None, int]]] = {}
    for spec, x in zip(inputs.split(","), operands):
        flow, shape = cx.tflow(x), cx.shape(x)
        for d, letter in enumerate(spec):
            seen.setdefault(letter, []).append((flow.dims.get(d), shape[d]))
    out = {}
    for letter, uses in seen.items():
        full = max(size for _, size in uses)
        taking_part = [ids for ids, size in uses if size == full]  # size 1 broadcasts
        tracked = [ids for ids in taking_part if ids is not None]
        if not tracked:
            continue
        if len(tracked) < len(taking_part):
            for ids in tracked:
                cx.atoms.freeze(ids, f"summed with a dim that carries no channels at {cx.where}")
        for ids in tracked[1:]:
            cx.atoms.union(tracked[0], ids)
        if letter in output:
            out[output.index(letter)] = tracked[0]
    return Flow(out)


def matmul(cx: Context, op: Op) -> Flow:
    a, b = cx.tensor_args()[:2]
    return fl.matmul(cx.atoms, (cx.tflow(a), cx.shape(a)), (cx.tflow(b), cx.shape(b)),
                     cx.out_shape, cx.where)


def sdpa(cx: Context, op: Op) -> Flow:
    """F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)."""
    q, k, v = (cx.arg(i, n) for i, n in enumerate(("query", "key", "value")))
    head = cx.tflow(q).dims.get(len(cx.shape(q)) - 1)
    if head is not None and cx.arg(6, "scale") is None:  # the default scale is 1/sqrt(q.size(-1))
        cx.atoms.mark_inexact(head, f"attention scales by 1/sqrt(head_dim), which shrinks, at {cx.where}")
    shape = list(cx.shape(q)[:-1]) + [cx.shape(k)[-2]]
    scores = fl.matmul(cx.atoms, (cx.tflow(q), cx.shape(q)),
                       (fl.permute(cx.tflow(k), _swap_last(len(cx.shape(k)))),
                        _swapped(cx.shape(k))), shape, cx.where)
    mask = cx.arg(3, "attn_mask")
    if isinstance(mask, torch.fx.Node) and is_tensor(mask):  # added to the scores
        scores = fl.elementwise(cx.atoms, [(scores, shape), (cx.tflow(mask), cx.shape(mask))],
                                shape, cx.where)
    return fl.matmul(cx.atoms, (scores, shape), (cx.tflow(v), cx.shape(v)), cx.out_shape,
                     cx.where)


def _swap_last(n: int) -> list[int]:
    return list(range(n - 2)) + [n - 1, n - 2]


def _swapped(shape: tuple[int, ...]) -> list[int]:
    return list(shape[:-2]) + [shape[-1], shape[-2]]


# --- parametrised ops --------------------------------------------------------------------------


def _along_positions(cx: Context, kernel: tuple[int, ...], stride: object,
                     padding: object) -> dict[int, np.ndarray]:
    """Channels on a conv's batch or spatial dims (CoaT's aggregate: a Conv1d across stacked
    features, whose length is the channels): kept where the conv is pointwise along that dim
    (kernel 1, stride 1, no padding), frozen where it slides over them."""
    def at(value: object, k: int) -> object:
        return value[k] if isinstance(value, (tuple, list)) else value

    out = {}
    for d, ids in cx.tflow(0).dims.items():
        if d == 1:
            continue
        k = d - 2
        if d == 0 or kernel[k] == 1 and at(stride, k) == 1 and at(padding, k) in (0, "same", "valid"):
            out[d] = ids
        else:
            cx.atoms.freeze(ids, f"a conv slides over channels along dim {d} at {cx.where}")
    return out


def conv(cx: Context, op: Op) -> Flow:
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
                x = cx.atoms.unite(x.reshape(groups, -1), 0)
                x = np.tile(x, groups)
            cx.member("weight", w_in, fl.fit(x, m.weight.shape[w_in]))
        out = cx.atoms.fresh(c_out)
        if groups > 1:
            out = np.tile(cx.atoms.unite(out.reshape(groups, -1), 0), groups)
        cx.member("weight", w_out, fl.fit(out, m.weight.shape[w_out]))
    if m.bias is not None:
        cx.member("bias", 0, out)
    return Flow({**_along_positions(cx, m.kernel_size, m.stride, m.padding), 1: out})


def linear(cx: Context, op: Op) -> Flow:
    """nn.Linear, and layers that store its weight transposed (transformers' Conv1D): the
    entry says which weight dim reads the input's last dim and which makes the output's."""
    m = cx.module()
    flow = cx.tflow(0)
    last = len(cx.shape(0)) - 1
    w_in, w_out = op.in_params["weight"], op.out_params["weight"]
    if last in flow.dims:
        cx.member("weight", w_in, flow.dims[last])
    out = cx.atoms.fresh(m.weight.shape[w_out])
    cx.member("weight", w_out, out)
    if m.bias is not None:
        cx.member("bias", 0, out)
    return Flow({**{d: i for d, i in flow.dims.items() if d != last}, last: out})


def _reads(cx: Context, weight: object, dim: int, ids: np.ndarray | None) -> None:
    """A functional layer's weight reads the input channels `ids` along `dim`: where the input
    has none there (the model's input) that dim is no channel; a weight read only here adopts
    them (`Context.adopt`); otherwise its atoms there are coupled with them."""
    w = cx.tflow(weight).dims
    if ids is None:
        cx.not_channels(weight, [dim])
    elif dim not in w:
        cx.atoms.freeze(ids, f"weight without input channels at {cx.where}")
    elif not cx.adopt(weight, dim, ids):
        cx.atoms.union(ids, w[dim])
        cx.reads(w[dim])


def _makes(cx: Context, weight: object, dim: int, size: int) -> np.ndarray:
    """The output channels a functional layer's weight makes along `dim`; frozen fresh atoms
    where the weight carries none there (computed from something else)."""
    out = cx.tflow(weight).dims.get(dim)
    if out is None:
        out = cx.atoms.fresh(size)
        cx.atoms.freeze(out, f"weight without output channels at {cx.where}")
    return out


def functional_linear(cx: Context, op: Op) -> Flow:
    """F.linear(x, weight, bias) with the weight a bare parameter (its dims carry atoms)."""
    x, weight, bias = cx.arg(0, "input"), cx.arg(1, "weight"), cx.arg(2, "bias")
    flow, last = cx.tflow(x), len(cx.shape(x)) - 1
    out = _makes(cx, weight, 0, cx.out_shape[-1])
    _reads(cx, weight, 1, flow.dims.get(last))
    _couple_params(cx, out, (bias,))
    return Flow({**{d: i for d, i in flow.dims.items() if d != last}, last: out})


def functional_conv(cx: Context, op: Op) -> Flow:
    """F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups) with the weight a
    parameter, bare or computed from one (weight standardisation): the weight's dim 0 carries
    the output channels, its dim 1 the input channels of one conv group."""
    weight, bias, groups = cx.arg(1, "weight"), cx.arg(2, "bias"), cx.arg(6, "groups", 1)
    x = cx.tflow(0).dims.get(1)
    cx.not_channels(weight, list(range(2, len(cx.shape(weight)))))  # kernel dims
    c_in, c_out = cx.shape(0)[1], cx.shape(weight)[0]
    out = _makes(cx, weight, 0, c_out)
    if groups > 1 and groups == c_in:  # depthwise: each output follows its input channel
        if x is None:
            cx.atoms.freeze(out, f"depthwise conv on an input without channels at {cx.where}")
        else:
            cx.atoms.union(np.repeat(x, c_out // c_in), out)
    else:
        if groups > 1:  # keep every conv group the same width: couple index j of each
            out = np.tile(cx.atoms.unite(out.reshape(groups, -1), 0), groups)
            if x is not None:
                x = cx.atoms.unite(x.reshape(groups, -1), 0)
        _reads(cx, weight, 1, x)
    _couple_params(cx, out, (bias,))
    kernel = cx.shape(weight)[2:]
    return Flow({**_along_positions(cx, kernel, cx.arg(3, "stride", 1), cx.arg(4, "padding", 0)),
                 1: out})


def addmm(cx: Context, op: Op) -> Flow:
    """addmm(bias, x, w) = bias + x @ w (transformers' Conv1D in GPT-2): the weight's dim 0
    reads x's features, its dim 1 makes the output's, with the bias."""
    bias, x, w = cx.arg(0, "input"), cx.arg(1, "mat1"), cx.arg(2, "mat2")
    _reads(cx, w, 0, cx.tflow(x).dims.get(1))
    out = _makes(cx, w, 1, cx.out_shape[1])
    _couple_params(cx, out, (bias,))
    return Flow({1: out})


def functional_conv_transpose(cx: Context, op: Op) -> Flow:
    """aten.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, ...):
    the weight's dim 0 carries the input channels, its dim 1 the output channels of one conv
    group, so with groups output index j of every group goes together (as for the module)."""
    weight, bias, groups = cx.arg(1, "weight"), cx.arg(2, "bias"), cx.arg(6, "groups", 1)
    x = cx.tflow(0).dims.get(1)
    cx.not_channels(weight, list(range(2, len(cx.shape(weight)))))
    out = np.tile(_makes(cx, weight, 1, cx.shape(weight)[1]), groups)
    if x is not None and groups > 1:  # keep every conv group the same width
        x = np.tile(cx.atoms.unite(x.reshape(groups, -1), 0), groups)
    _reads(cx, weight, 0, x)
    _couple_params(cx, out, (bias,))
    return Flow({1: out})


def _couple_params(cx: Context, ids: np.ndarray | None, params: tuple[object, ...]) -> None:
    """Per-channel parameters (bare or computed) along dim 0 follow the channels `ids`: a
    parameter read only here adopts them (`Context.adopt`), the others are coupled."""
    if ids is None:
        return
    dims = []
    for p in params:
        if not isinstance(p, torch.fx.Node) or 0 not in cx.tflow(p).dims:
            continue
        if not cx.adopt(p, 0, ids, role="bare"):
            dims.append(cx.tflow(p).dims[0])
    if dims and all(len(d) == len(ids) for d in dims):
        # one union for all: a batch norm's four cost four times the overhead of one
        cx.atoms.union(np.tile(ids, len(dims)), np.concatenate(dims))
        return
    for d in dims:
        cx.atoms.union(ids, d)


def functional_batch_norm(cx: Context, op: Op) -> Flow:
    """F.batch_norm(x, running_mean, running_var, weight, bias, training, ...): per-channel
    parameters along dim 1. With batch statistics (training=True, as in weight standardisation)
    the statistics run over every other dim: channels there are normalised together."""
    flow = cx.tflow(0)
    _couple_params(cx, flow.dims.get(1), tuple(cx.arg(i, n) for i, n in (
        (1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))))
    if cx.arg(5, "training", False) is not False:
        for d, ids in flow.dims.items():
            if d != 1:
                cx.atoms.mark_inexact(ids, f"batch statistics normalise over the channels at {cx.where}")
    return flow


def functional_instance_norm(cx: Context, op: Op) -> Flow:
    """F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, ...):
    per-channel parameters along dim 1, statistics over the spatial dims of each channel."""
    flow = cx.tflow(0)
    _couple_params(cx, flow.dims.get(1), tuple(cx.arg(i, n) for i, n in (
        (1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))))
    if cx.arg(5, "use_input_stats", True) is not False:
        for d, ids in flow.dims.items():
            if d >= 2:
                cx.atoms.mark_inexact(ids, f"instance statistics normalise over the channels at {cx.where}")
    return flow


def functional_group_norm(cx: Context, op: Op) -> Flow:
    """F.group_norm(x, num_groups, weight, bias, eps): statistics per norm group, so only whole
    norm groups can go."""
    flow = cx.tflow(0)
    ids = flow.dims.get(1)
    if ids is not None:
        _norm_groups(cx, ids, cx.arg(1, "num_groups"))
    _couple_params(cx, ids, (cx.arg(2, "weight"), cx.arg(3, "bias")))
    return flow


def _norm_groups(cx: Context, ids: np.ndarray, groups: int) -> None:
    """Group norm statistics are per norm group: only whole norm groups can go, exactly. With
    one group (a LayerNorm over channels and space, as in PoolFormer) that would be all of
    them: channels go one by one instead, and the statistics change (inexact)."""
    if groups == 1:
        cx.atoms.mark_inexact(ids, f"GroupNorm with one group normalises over the channels at {cx.where}")
    else:
        cx.atoms.unite(ids.reshape(groups, -1), 1)


def functional_embedding(cx: Context, op: Op) -> Flow:
    """F.embedding(indices, weight, ...): the weight's dim 1 is the output's last dim."""
    w = cx.tflow(cx.arg(1, "weight")).dims
    return Flow({len(cx.out_shape) - 1: w[1]}) if 1 in w else UNTRACKED


def functional_prelu(cx: Context, op: Op) -> Flow:
    """F.prelu(x, weight): one slope per channel of dim 1, or one for all."""
    flow = cx.tflow(0)
    _couple_params(cx, flow.dims.get(1), (cx.arg(1, "weight"),))
    return flow


def _channel_params(cx: Context, op: Op, ids: np.ndarray) -> None:
    m = cx.module()
    for name, dim in op.out_params.items():
        if getattr(m, name, None) is not None:
            cx.member(name, dim, ids)


def batchnorm(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    if 1 in flow.dims:
        _channel_params(cx, op, flow.dims[1])
    return flow


def groupnorm(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    ids = flow.dims.get(1)
    if ids is not None:
        _norm_groups(cx, ids, cx.module().num_groups)
        _channel_params(cx, op, ids)
    return flow


def layernorm(cx: Context, op: Op) -> Flow:
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
                    cx.atoms.union(pflow.dims[j], ids)
    return flow


def prelu(cx: Context, op: Op) -> Flow:
    flow = cx.tflow(0)
    if cx.module().num_parameters > 1 and 1 in flow.dims:
        cx.member("weight", 0, flow.dims[1])
    return flow


def embedding(cx: Context, op: Op) -> Flow:
    m = cx.module()
    out = cx.atoms.fresh(m.embedding_dim)
    cx.member("weight", 1, out)
    return Flow({**cx.tflow(0).dims, len(cx.out_shape) - 1: out})


def recurrent(cx: Context, op: Op) -> tuple:
    """nn.LSTM / nn.GRU / nn.RNN: the input features are read by the first layer's input
    weights (both directions); the hidden units, which four gates and the recurrence share,
    are not pruned: the output's features are frozen."""
    m = cx.module()
    x = cx.tflow(0).dims.get(len(cx.shape(0)) - 1)
    if x is not None:
        for suffix in ("", "_reverse") if m.bidirectional else ("",):
            cx.member(f"weight_ih_l0{suffix}", 1, x)
    meta = cx.node.meta["tensor_meta"]
    shape = tuple(meta[0].shape)
    out = cx.atoms.fresh(shape[-1])
    cx.atoms.freeze(out, f"the hidden units of {type(m).__name__} are not pruned at {cx.where}")
    return (Flow({len(shape) - 1: out}), *untracked_like(meta)[1:])


def pixel_shuffle(cx: Context, op: Op) -> Flow:
    r = cx.module().upscale_factor if cx.node.op == "call_module" else cx.arg(1, "upscale_factor")
    flow = cx.tflow(0)
    if 1 not in flow.dims:
        return UNTRACKED
    # Output channel c gathers input channels c*r^2 .. c*r^2 + r^2 - 1: they go together.
    return Flow({1: cx.atoms.unite(flow.dims[1].reshape(-1, r * r), 1)})


def pixel_unshuffle(cx: Context, op: Op) -> Flow:
    r = (cx.module().downscale_factor if cx.node.op == "call_module"
         else cx.arg(1, "downscale_factor"))
    flow = cx.tflow(0)
    return Flow({1: np.repeat(flow.dims[1], r * r)}) if 1 in flow.dims else UNTRACKED


def channel_shuffle(cx: Context, op: Op) -> Flow:
    g = cx.module().groups if cx.node.op == "call_module" else cx.arg(1, "groups")
    flow = cx.tflow(0)
    if 1 not in flow.dims:
        return UNTRACKED
    unit = cx.atoms.unite(flow.dims[1].reshape(g, -1), 0)
    return Flow({1: np.repeat(unit, g)})


def multihead_attention(cx: Context, op: Op) -> tuple[Flow, Flow]:
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
        cx.atoms.union(tracked[0], ids)
    ids = tracked[0]
    unit = np.tile(cx.atoms.unite(ids.reshape(m.num_heads, -1), 0), m.num_heads)
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


def shifted_window_attention(cx: Context, op: Op) -> Flow:
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
    unit = np.tile(cx.atoms.unite(ids.reshape(heads, -1), 0), heads)
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
            cx.atoms.union(pflow.dims[dim], atoms)
    return Flow({len(cx.out_shape) - 1: unit})


def patch_merging_pad(cx: Context, op: Op) -> Flow:
    """torchvision's Swin patch merging: pads H and W, then concatenates the four 2x2
    neighbours along channels, so the output holds each input channel four times."""
    flow = cx.tflow(0)
    last = len(cx.shape(0)) - 1
    return Flow({last: np.tile(flow.dims[last], 4)}) if last in flow.dims else UNTRACKED


def sizes_only(cx: Context, op: Op) -> object:
    """An op that reads only the sizes of its tensor inputs (torchvision's RoI pooler working
    out its scales from the feature maps' sizes): no channels flow through it."""
    return untracked_like(cx.node.meta.get("tensor_meta"))


def pick_features(cx: Context, op: Op) -> object:
    """torchvision's RoI pooler selecting feature maps by name (``_filter_input(x, names)``):
    the list of the named maps, each with its own channels."""
    x, names = cx.arg(0, "x"), cx.arg(1, "featmap_names")
    if not isinstance(x, dict):  # a dict made by an op, not in the graph: nothing to follow
        return cx.unknown("a dict of feature maps that is not built in the graph")
    return tuple(cx.tflow(x[k]) for k in names if k in x)


def roi_pool(cx: Context, op: Op) -> Flow:
    """torchvision's multi-scale RoI pooling (``_multiscale_roi_align(maps, boxes, ...)``):
    each box is pooled channel by channel from one of the maps, so every map's channels and the
    output's dim 1 are one space; a zero channel pools to zero."""
    levels = cx.sequence(cx.arg(0, "x_filtered"))
    width = cx.out_shape[1]
    operands = [(Flow({1: f.dims[1]} if 1 in f.dims else {}), (1, shape[1])) for f, shape in levels]
    return fl.elementwise(cx.atoms, operands, (1, width), cx.where)


# --- where a split keeps its channels ---------------------------------------------------------


def _split_unit(cx: Context) -> tuple[int, ...]:
    """The output dims of a view that splits channels (see `fl.reshape`) along which its users
    take them as channels, looking ahead through ops that only move dims: a conv's or norm's
    dim 1 (a linear's features viewed as (C, H, W)); an attention's heads (the batch dims of a
    matrix product or of scaled_dot_product_attention) unless ``cx.heads`` is "dim". Empty where
    no such user is near: the innermost dim then."""
    frontier = [(cx.node, tuple(range(len(cx.out_shape))))]  # our out dim at each position
    seen = 0
    while frontier and seen < 64:
        node, dims = frontier.pop(0)
        for user in node.users:
            seen += 1
            entry = cx.entry_of(user)
            rule = entry.flow if entry is not None else None
            if rule in _CHANNELS_AT_1 and user.args and user.args[0] is node:
                return dims[1:2]
            if rule in _PRODUCTS:
                return () if cx.heads == "dim" else _shared_batch_dims(user, node, dims)
            moved = _moved_dims(user, rule, node, dims)
            if moved is not None:
                frontier.append((user, moved))
    return ()


def _shared_batch_dims(product: torch.fx.Node, node: torch.fx.Node,
                       dims: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """The batch dims of a matrix product that `node` (whose dims sit at `dims`) takes part
    in, less those along which another operand broadcasts: multi-query attention's one key and
    value head (mobilenetv5's MultiQueryAttention2d) meets every query head, so the output's
    heads end up merged with the value's channels and are no unit."""
    n = len(dims)
    out = list(dims[:-2])
    operands = [*product.args[:3], *(product.kwargs.get(k) for k in ("query", "key", "value"))]
    for other in operands:
        meta = other.meta.get("tensor_meta") if isinstance(other, torch.fx.Node) else None
        if other is node or not hasattr(meta, "shape"):
            continue
        m = len(meta.shape)
        for p in range(n - 2):
            q = p - n + m  # batch dims align from the right
            if q < 0 or meta.shape[q] == 1:
                out[p] = None
    return tuple(out)


def _moved_dims(user: torch.fx.Node, rule: object, node: torch.fx.Node,
                dims: tuple[int | None, ...]) -> tuple[int | None, ...] | None:
    """Where the dims of `node` sit in `user`'s output, for ops that keep or permute them."""
    n = len(dims)
    if rule in _POINTWISE:
        meta = user.meta.get("tensor_meta")
        if not hasattr(meta, "shape") or len(meta.shape) < n:
            return None
        return (None,) * (len(meta.shape) - n) + dims
    if rule is transpose:
        if len(user.args) < 3:
            return (dims[1], dims[0], *dims[2:]) if n == 2 else None
        order = list(range(n))
        a, b = user.args[1] % n, user.args[2] % n
        order[a], order[b] = order[b], order[a]
        return tuple(dims[k] for k in order)
    if rule is permute:
        order = user.args[1:] if user.op == "call_method" else (user.args[1],)
        if len(order) == 1 and isinstance(order[0], (tuple, list)):
            order = order[0]
        return tuple(dims[k % n] for k in order) if len(order) == n else None
    if rule is split:  # a tuple of pieces, each with our dims (see getitem)
        return dims
    if rule in (broadcast, expand, repeat, slice_dim):  # sizes change; leading dims may come
        meta = user.meta.get("tensor_meta")
        return (None,) * (len(meta.shape) - n) + dims if hasattr(meta, "shape") else None
    if rule is select and user.target in ("select", torch.select, torch.ops.aten.select.int):
        return dims[:user.args[1] % n] + dims[user.args[1] % n + 1:]
    if rule in (reshape, view):  # follow merges that take at most one of our dims each
        meta = user.meta.get("tensor_meta")
        in_meta = node.meta.get("tensor_meta")
        if not hasattr(meta, "shape") or not hasattr(in_meta, "shape"):
            return None
        # a size computed by arithmetic where our dim lands is a merge the shapes may not show
        # (SAM's reshape(3, B * heads, N, -1) with a batch of 1): not followed
        sizes = _size_args(user) if rule is view else []
        out = [None] * len(meta.shape)
        for ins, outs in fl.dim_groups(list(in_meta.shape), list(meta.shape)):
            ours = [dims[k] for k in ins if dims[k] is not None and in_meta.shape[k] > 1]
            if len(ours) > 1 or ours and len(outs) != 1:
                return None
            if ours:
                size = sizes[outs[0]] if len(sizes) == len(meta.shape) else None
                if isinstance(size, torch.fx.Node) and size.target in _SIZE_ARITHMETIC:
                    return None
                out[outs[0]] = ours[0]
        return tuple(out)
    if rule is unbind:
        dim = (user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)) % n
        return dims[:dim] + dims[dim + 1:]
    if rule is getitem:
        if not hasattr(node.meta.get("tensor_meta"), "shape"):
            return dims  # one tensor of unbind's tuple
        index = user.args[1] if isinstance(user.args[1], tuple) else (user.args[1],)
        if not all(e is None or e is Ellipsis or isinstance(e, (int, slice)) for e in index):
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            rest = n - sum(1 for e in index if e is not None and e is not Ellipsis)
            index = index[:at] + (slice(None),) * rest + index[at + 1:]
        out, k = [], 0
        for e in index:
            if e is None:
                out.append(None)
                continue
            if isinstance(e, slice):
                out.append(dims[k])
            k += 1
        return (*out, *dims[k:])
    return None


_POINTWISE = frozenset({unary, inexact_unary, elementwise, divide})
_SIZE_ARITHMETIC = frozenset({operator.mul, operator.floordiv, operator.add, operator.sub})
_CHANNELS_AT_1 = frozenset({conv, functional_conv, functional_conv_transpose, batchnorm,
                            functional_batch_norm, groupnorm, functional_group_norm,
                            functional_instance_norm})
_PRODUCTS = frozenset({matmul, sdpa})
