"""Surgery rules: after `prune_channels` sliced the parameters, fix what else holds a channel
count: module attributes (an entry's ``sync``) and constants in the graph (its ``rewrite``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fxprune.ops.api import CHANNEL_SIZED_KEY, Resize


def sync_conv(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    new_in, new_out = rx.new_shape(node.args[0])[1], rx.new_shape(node)[1]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise stays depthwise
        m.groups = new_in
    m.in_channels, m.out_channels = new_in, new_out


def sync_linear(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.in_features, m.out_features = rx.new_shape(node.args[0])[-1], rx.new_shape(node)[-1]


def sync_conv1d(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    """transformers' Conv1D (a linear with its weight stored transposed) keeps its width in nf."""
    m.nf = rx.new_shape(node)[-1]


def sync_batchnorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.num_features = rx.new_shape(node.args[0])[1]


def sync_groupnorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = rx.new_shape(node.args[0])[1]
    m.num_groups = 1 if m.num_groups == 1 else m.num_channels // per_group


def sync_layernorm(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.normalized_shape = tuple(rx.new_shape(node.args[0])[-len(m.normalized_shape):])


def sync_recurrent(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    """An RNN's input size, and its flat list of weights (which still holds the old ones)."""
    m.input_size = rx.new_shape(node.args[0])[-1]
    m._init_flat_weights()


def sync_prelu(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    if m.num_parameters > 1:
        m.num_parameters = rx.new_shape(node.args[0])[1]


def sync_embedding(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    m.embedding_dim = rx.new_shape(node)[-1]


def sync_attention(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    width = rx.new_shape(node.args[0])[-1]
    m.embed_dim = m.kdim = m.vdim = width
    m.head_dim = width // m.num_heads
    m.out_proj.in_features = m.out_proj.out_features = width


def sync_unflatten(m: nn.Module, rx: Resize, node: torch.fx.Node) -> None:
    dim = m.dim % len(rx.new_shape(node.args[0]))
    m.unflattened_size = tuple(rx.new_shape(node)[dim:dim + len(m.unflattened_size)])


def rewrite_sizes(rx: Resize, node: torch.fx.Node) -> None:
    """view / reshape / expand: literal sizes that were a channel count become the new one, and
    sizes computed from channels that cannot follow (`CHANNEL_SIZED_KEY`) become literals."""
    old, new = rx.old_shape(node), rx.new_shape(node)
    literal = node.meta.get(CHANNEL_SIZED_KEY, ())
    if old == new and not literal:
        return
    packed = len(node.args) == 2 and isinstance(node.args[1], (tuple, list))
    sizes = list(node.args[1] if packed else node.args[1:])
    for i, size in enumerate(sizes):
        if i in literal or isinstance(size, int) and size != -1 and size == old[i] != new[i]:
            sizes[i] = new[i]
    node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)


def rewrite_unflatten(rx: Resize, node: torch.fx.Node) -> None:
    """unflatten(x, dim, sizes): the sizes of the split dim are the new shape's there."""
    x, dim, sizes = node.args[0], node.args[1], node.args[2]
    dim %= len(rx.old_shape(x))
    node.args = (x, node.args[1], type(sizes)(rx.new_shape(node)[dim:dim + len(sizes)]),
                 *node.args[3:])


def rewrite_conv_groups(rx: Resize, node: torch.fx.Node) -> None:
    """F.conv2d / aten.conv2d(x, w, b, stride, padding, dilation, groups): a depthwise conv's
    group count is its channel count."""
    x = node.args[0]
    old, new = rx.old_shape(x)[1], rx.new_shape(x)[1]
    in_args = len(node.args) > 6
    groups = node.args[6] if in_args else node.kwargs.get("groups", 1)
    if groups == old != new:
        if in_args:
            node.args = (*node.args[:6], new, *node.args[7:])
        else:
            node.kwargs = {**node.kwargs, "groups": new}


def rewrite_split(rx: Resize, node: torch.fx.Node) -> None:
    """split / chunk along a pruned dim: explicit new sizes (a chunk may now be uneven)."""
    x = node.args[0]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim %= len(rx.old_shape(x))
    if rx.old_shape(x)[dim] == rx.new_shape(x)[dim]:
        return
    sizes = [shape[dim] for shape in rx.new_shape(node)]
    node.target = "split" if node.op == "call_method" else torch.split
    node.args, node.kwargs = (x, sizes, dim), {}


def rewrite_index(rx: Resize, node: torch.fx.Node) -> None:
    """getitem / narrow / select on a pruned dim: indices move to the kept channels' places."""
    x = node.args[0]
    if not isinstance(x, torch.fx.Node) or not hasattr(x.meta.get("tensor_meta"), "shape"):
        return
    ndim = len(rx.old_shape(x))
    if node.target in ("narrow", torch.narrow, "select", torch.select, torch.ops.aten.select.int):
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


def rewrite_slice(rx: Resize, node: torch.fx.Node) -> None:
    """aten.slice(x, dim, start, end, step) on a pruned dim: bounds move to the kept channels'
    places."""
    x = node.args[0]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(rx.old_shape(x))
    keep = rx.keep(x, dim)
    if keep is not None:
        start, stop, step = slice(*(list(node.args[2:5]) + [None] * 3)[:3]).indices(len(keep))
        node.args = (x, node.args[1], _moved(keep, start), _moved(keep, stop), step)


def _moved(keep: np.ndarray, index: int) -> int:
    """Where old index `index` lands once the dropped channels are gone."""
    return int(keep[:index].sum())


def rewrite_layer_norm(rx: Resize, node: torch.fx.Node) -> None:
    shape = node.args[1]
    new = tuple(rx.new_shape(node.args[0])[-len(shape):])
    node.args = (node.args[0], new, *node.args[2:])


def rewrite_group_norm(rx: Resize, node: torch.fx.Node) -> None:
    """F.group_norm: whole norm groups went, so the group count follows the channels."""
    x = node.args[0]
    old, new = rx.old_shape(x)[1], rx.new_shape(x)[1]
    groups = node.args[1] if len(node.args) > 1 else node.kwargs["num_groups"]
    count = 1 if groups == 1 else new // (old // groups)
    if len(node.args) > 1:
        node.args = (x, count, *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "num_groups": count}
