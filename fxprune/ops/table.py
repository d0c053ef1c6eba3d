"""The op table: everything fxprune knows about one op lives in its entry here.

Entries are keyed by the fx target: the module class for call_module, the function for
call_function, the method name for call_method. Each `Op` (see `fxprune.ops.api`) says how
channels flow through the op (its `flow` rule in `fxprune.ops.rules`, written in the algebra of
`fxprune.ops.flow`), which parameter dims are sliced along its output and input channels, what
surgery must update (`fxprune.ops.surgery`), whether it makes channels, whether a catalyst may
follow it, and how its shape follows from its input. An op that is not in the table is unknown:
the channels through it are frozen, never guessed. Adding an op is adding its entry.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fxprune.ops import rules, shapes, surgery
from fxprune.ops.api import Op

_CONV = Op(flow=rules.conv, out_params={"weight": 0, "bias": 0}, in_params={"weight": 1},
           sync=surgery.sync_conv, produces=1, fresh=True, shape=shapes.conv)
_CONV_T = Op(flow=rules.conv, out_params={"weight": 1, "bias": 0}, in_params={"weight": 0},
             sync=surgery.sync_conv, produces=1, fresh=True)
_NORM_PARAMS = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}
_BATCHNORM = Op(flow=rules.batchnorm, out_params=_NORM_PARAMS, sync=surgery.sync_batchnorm,
                catalyst_after=True, norm=True, fresh=True, shape=shapes.same)
UNARY = Op(flow=rules.unary, shape=shapes.same)
ACTIVATION = Op(flow=rules.unary, catalyst_after=True, shape=shapes.activation)
ELEMENTWISE = Op(flow=rules.elementwise)
# x + y makes a new tensor; x.add_(y) does not
ARITHMETIC = Op(flow=rules.elementwise, fresh=True, shape=shapes.broadcast)
RESIZE = Op(flow=rules.resize)
POOL = Op(flow=rules.resize, fresh=True)
RESHAPE = Op(flow=rules.reshape)
_FLATTEN = replace(RESHAPE, shape=shapes.flatten)
_SIZES = Op(flow=rules.view, rewrite=surgery.rewrite_sizes)
_UNFLATTEN = Op(flow=rules.reshape, rewrite=surgery.rewrite_unflatten)

MODULES: dict[type, Op] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), _CONV),
    **dict.fromkeys((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), _CONV_T),
    nn.Linear: Op(flow=rules.linear, out_params={"weight": 0, "bias": 0}, in_params={"weight": 1},
                  sync=surgery.sync_linear, produces=-1, fresh=True, shape=shapes.linear),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                     nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), _BATCHNORM),
    nn.GroupNorm: Op(flow=rules.groupnorm, out_params={"weight": 0, "bias": 0},
                     sync=surgery.sync_groupnorm, norm=True, fresh=True, shape=shapes.same),
    nn.LayerNorm: Op(flow=rules.layernorm, sync=surgery.sync_layernorm, norm=True, fresh=True,
                     shape=shapes.same),
    nn.PReLU: Op(flow=rules.prelu, sync=surgery.sync_prelu, catalyst_after=True,
                 shape=shapes.same),
    nn.Embedding: Op(flow=rules.embedding, out_params={"weight": 1}, sync=surgery.sync_embedding,
                     produces=-1),
    nn.MultiheadAttention: Op(flow=rules.multihead_attention, sync=surgery.sync_attention,
                              out_params={"in_proj_weight": 0, "in_proj_bias": 0},
                              in_params={"in_proj_weight": 1, "out_proj.weight": 1}),
    **dict.fromkeys((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                     nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
                     nn.Softplus, nn.Softsign, nn.LogSigmoid), ACTIVATION),
    nn.Identity: replace(UNARY, passthrough=True),
    **dict.fromkeys((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), UNARY),
    **dict.fromkeys((nn.Softmax, nn.LogSoftmax), Op(flow=rules.softmax, shape=shapes.same)),
    nn.Flatten: _FLATTEN,
    nn.Unflatten: Op(flow=rules.reshape, sync=surgery.sync_unflatten),
    **dict.fromkeys((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d), POOL),
    **dict.fromkeys((nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d),
                    replace(POOL, shape=shapes.adaptive_pool(1))),
    **dict.fromkeys((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
                    replace(POOL, shape=shapes.adaptive_pool(2))),
    **dict.fromkeys((nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
                    replace(POOL, shape=shapes.adaptive_pool(3))),
    **dict.fromkeys((nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
                     nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d),
                    RESIZE),
    **dict.fromkeys((nn.LSTM, nn.GRU, nn.RNN), Op(
        flow=rules.recurrent, sync=surgery.sync_recurrent,
        in_params={"weight_ih_l0": 1, "weight_ih_l0_reverse": 1})),
    nn.PixelShuffle: Op(flow=rules.pixel_shuffle),
    nn.PixelUnshuffle: Op(flow=rules.pixel_unshuffle),
    nn.ChannelShuffle: Op(flow=rules.channel_shuffle),
}

_SPLIT = Op(flow=rules.split, rewrite=surgery.rewrite_split)
_TRANSPOSE = Op(flow=rules.transpose)
_PERMUTE = Op(flow=rules.permute)
_MATMUL = Op(flow=rules.matmul)
_CAT = Op(flow=rules.cat, fresh=True)
# Over channels: a zeroed channel adds nothing to a sum or a norm; it still counts in a mean,
# a variance, a maximum (see `fl.reduce`).
_SUM = Op(flow=rules.reduce_dims("exact"), shape=shapes.reduction)
_NORM = Op(flow=rules.reduce_dims("exact", dim_at=2))
_REDUCE = Op(flow=rules.reduce_dims("inexact"))
_MEAN = replace(_REDUCE, shape=shapes.reduction)  # max and min may return (values, indices)
_SOFTMAX = Op(flow=rules.softmax)
_DIVIDE = Op(flow=rules.divide, shape=shapes.broadcast)
_INEXACT = Op(flow=rules.inexact_unary)

FUNCTIONS: dict[Callable[..., object], Op] = {
    **dict.fromkeys((operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul),
                    ARITHMETIC),
    **dict.fromkeys((torch.maximum, torch.minimum, torch.where, operator.pow, torch.pow,
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
                     F.pad), RESIZE),
    torch.broadcast_to: Op(flow=rules.broadcast),
    torch.flatten: _FLATTEN,
    **dict.fromkeys((torch.squeeze, torch.unsqueeze), RESHAPE),
    torch.unflatten: _UNFLATTEN,
    torch.reshape: _SIZES,
    **dict.fromkeys((torch.transpose, torch.swapaxes, torch.t), _TRANSPOSE),
    torch.permute: _PERMUTE,
    torch.movedim: Op(flow=rules.movedim),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _CAT),
    torch.stack: Op(flow=rules.stack),
    **dict.fromkeys((torch.split, torch.chunk, torch.tensor_split), _SPLIT),
    torch.unbind: Op(flow=rules.unbind),
    torch.narrow: Op(flow=rules.select, rewrite=surgery.rewrite_index),
    torch.select: Op(flow=rules.select, rewrite=surgery.rewrite_index),
    operator.getitem: Op(flow=rules.getitem, rewrite=surgery.rewrite_index),
    operator.setitem: Op(flow=rules.assigns),
    **dict.fromkeys((torch.matmul, operator.matmul, torch.bmm), _MATMUL),
    torch.addmm: Op(flow=rules.addmm, produces=-1, fresh=True),
    F.scaled_dot_product_attention: Op(flow=rules.sdpa),
    torch.sum: _SUM,
    torch.norm: _NORM,
    **dict.fromkeys((torch.mean, torch.amax, torch.amin), _MEAN),
    **dict.fromkeys((torch.std, torch.var, torch.logsumexp, torch.prod, torch.max, torch.min),
                    _REDUCE),
    **dict.fromkeys((torch.softmax, F.softmax, F.log_softmax, torch.log_softmax), _SOFTMAX),
    torch.cumsum: Op(flow=rules.mixes_along((1, "dim"))),
    torch.repeat_interleave: Op(flow=rules.repeat_interleave),
    torch.einsum: Op(flow=rules.einsum),
    torch.roll: Op(flow=rules.mixes_along((2, "dims"))),
    torch.flip: Op(flow=rules.mixes_along((1, "dims"))),
    F.normalize: Op(flow=rules.normalize),
    F.layer_norm: Op(flow=rules.layernorm, rewrite=surgery.rewrite_layer_norm, norm=True,
                     fresh=True),
    F.linear: Op(flow=rules.functional_linear, produces=-1, fresh=True),
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d),
                    Op(flow=rules.functional_conv, rewrite=surgery.rewrite_conv_groups,
                       produces=1, fresh=True)),
    F.batch_norm: Op(flow=rules.functional_batch_norm, catalyst_after=True, norm=True,
                     fresh=True, shape=shapes.batch_norm),
    F.instance_norm: Op(flow=rules.functional_instance_norm, catalyst_after=True, norm=True,
                        fresh=True),
    F.group_norm: Op(flow=rules.functional_group_norm, rewrite=surgery.rewrite_group_norm,
                     norm=True, fresh=True),
    F.embedding: Op(flow=rules.functional_embedding, produces=-1),
    F.prelu: Op(flow=rules.functional_prelu, catalyst_after=True),
    F.channel_shuffle: Op(flow=rules.channel_shuffle),
    torch.channel_shuffle: Op(flow=rules.channel_shuffle),
    torch.pixel_shuffle: Op(flow=rules.pixel_shuffle),  # F.pixel_shuffle is torch's
    torch.pixel_unshuffle: Op(flow=rules.pixel_unshuffle),
}

# Tensor methods share the functions' entries (self is the first argument).
METHODS: dict[str, Op] = {
    **dict.fromkeys(("add", "sub", "mul"), replace(ELEMENTWISE, shape=shapes.broadcast)),
    **dict.fromkeys(("add_", "sub_", "mul_", "pow", "masked_fill", "masked_fill_", "maximum",
                     "minimum"), ELEMENTWISE),
    **dict.fromkeys(("div", "div_", "true_divide"), _DIVIDE),
    **dict.fromkeys(("rsqrt", "log", "reciprocal"), _INEXACT),
    **dict.fromkeys(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"), ACTIVATION),
    **dict.fromkeys(("contiguous", "clone", "detach", "to", "type", "type_as", "float", "half",
                     "double", "bfloat16", "neg", "abs", "exp", "sqrt", "clamp", "clamp_",
                     "clip", "zero_", "fill_", "new_zeros_like", "requires_grad_"), UNARY),
    "flatten": _FLATTEN,
    **dict.fromkeys(("squeeze", "unsqueeze"), RESHAPE),
    "unflatten": _UNFLATTEN,
    **dict.fromkeys(("view", "reshape"), _SIZES),
    **dict.fromkeys(("view_as", "reshape_as"), RESHAPE),
    "expand": Op(flow=rules.expand, rewrite=surgery.rewrite_sizes),
    **dict.fromkeys(("expand_as", "broadcast_to"), Op(flow=rules.broadcast)),
    **dict.fromkeys(("transpose", "swapaxes", "t"), _TRANSPOSE),
    "permute": _PERMUTE,
    "movedim": Op(flow=rules.movedim),
    **dict.fromkeys(("split", "chunk", "tensor_split"), _SPLIT),
    "unbind": Op(flow=rules.unbind),
    "narrow": Op(flow=rules.select, rewrite=surgery.rewrite_index),
    "select": Op(flow=rules.select, rewrite=surgery.rewrite_index),
    "repeat": Op(flow=rules.repeat),
    **dict.fromkeys(("matmul", "bmm"), _MATMUL),
    "sum": _SUM,
    "norm": _NORM,
    **dict.fromkeys(("mean", "amax", "amin"), _MEAN),
    **dict.fromkeys(("std", "var", "logsumexp", "prod", "max", "min"), _REDUCE),
    **dict.fromkeys(("softmax", "log_softmax"), _SOFTMAX),
    "cumsum": Op(flow=rules.mixes_along((1, "dim"))),
    "unfold": Op(flow=rules.windows),
    "repeat_interleave": Op(flow=rules.repeat_interleave),
    "roll": Op(flow=rules.mixes_along((2, "dims"))),
    "flip": Op(flow=rules.mixes_along((1, "dims"))),
}


# The ATen ops that torch.export emits (`fxprune.trace(capture="export")`), each the entry of
# the function or method it is, with its arguments in the same order unless `positions` says.
aten = torch.ops.aten
_BN_ORDER = (0, 3, 4, 1, 2, 5, 6, 7)  # aten: (x, weight, bias, mean, var, ...); F: (x, mean, var, weight, bias, ...)
ATEN: dict[object, Op] = {
    **dict.fromkeys((aten.conv1d.default, aten.conv2d.default, aten.conv3d.default),
                    FUNCTIONS[F.conv2d]),
    **dict.fromkeys((aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                     aten.conv_transpose3d.input),
                    Op(flow=rules.functional_conv_transpose, produces=1, fresh=True)),
    aten.linear.default: FUNCTIONS[F.linear],
    aten.addmm.default: FUNCTIONS[torch.addmm],
    aten.batch_norm.default: replace(FUNCTIONS[F.batch_norm], positions=_BN_ORDER),
    aten.instance_norm.default: replace(FUNCTIONS[F.instance_norm], positions=_BN_ORDER),
    aten.group_norm.default: FUNCTIONS[F.group_norm],
    aten.layer_norm.default: FUNCTIONS[F.layer_norm],
    aten.embedding.default: replace(FUNCTIONS[F.embedding], positions=(1, 0)),
    aten.prelu.default: FUNCTIONS[F.prelu],
    **dict.fromkeys((aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
                     aten.silu_.default, aten.sigmoid.default, aten.tanh.default,
                     aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default,
                     aten.hardtanh.default, aten.hardtanh_.default, aten.leaky_relu.default,
                     aten.elu.default, aten.mish.default, aten.softplus.default), ACTIVATION),
    **dict.fromkeys((aten.contiguous.default, aten.clone.default, aten.dropout.default,
                     aten.alias.default, aten.detach.default, aten.to.dtype,
                     aten.to.dtype_layout, aten.to.device, aten.to.other,
                     aten._to_copy.default, aten.type_as.default, aten.neg.default,
                     aten.abs.default, aten.exp.default, aten.sqrt.default, aten.clamp.default,
                     aten.clamp_min.default, aten.clamp_max.default, aten.erf.default,
                     aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default,
                     aten.full_like.default), UNARY),
    **dict.fromkeys((aten.rsqrt.default, aten.reciprocal.default, aten.log.default), _INEXACT),
    **dict.fromkeys((aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.add.Scalar,
                     aten.sub.Scalar, aten.mul.Scalar), ARITHMETIC),
    **dict.fromkeys((aten.add_.Tensor, aten.sub_.Tensor, aten.mul_.Tensor,
                     aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.maximum.default,
                     aten.minimum.default, aten.where.self, aten.masked_fill.Scalar),
                    ELEMENTWISE),
    **dict.fromkeys((aten.div.Tensor, aten.div.Scalar, aten.div_.Tensor), _DIVIDE),
    **dict.fromkeys((aten.view.default, aten.reshape.default, aten._unsafe_view.default), _SIZES),
    aten.expand.default: METHODS["expand"],
    **dict.fromkeys((aten.view_as.default, aten.reshape_as.default, aten.flatten.using_ints,
                     aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
                     aten.unsqueeze.default), RESHAPE),
    aten.unflatten.int: _UNFLATTEN,
    aten.expand_as.default: METHODS["expand_as"],
    **dict.fromkeys((aten.transpose.int, aten.t.default), _TRANSPOSE),
    aten.permute.default: _PERMUTE,
    aten.movedim.int: FUNCTIONS[torch.movedim],
    aten.cat.default: _CAT,
    aten.stack.default: FUNCTIONS[torch.stack],
    **dict.fromkeys((aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default), _SPLIT),
    aten.unbind.int: FUNCTIONS[torch.unbind],
    aten.select.int: FUNCTIONS[torch.select],
    aten.slice.Tensor: Op(flow=rules.slice_dim, rewrite=surgery.rewrite_slice),
    aten.index.Tensor: Op(flow=rules.index_tensors),
    aten.repeat.default: METHODS["repeat"],
    **dict.fromkeys((aten.matmul.default, aten.bmm.default, aten.mm.default), _MATMUL),
    aten.scaled_dot_product_attention.default: FUNCTIONS[F.scaled_dot_product_attention],
    aten.einsum.default: FUNCTIONS[torch.einsum],
    aten.sum.dim_IntList: _SUM,
    aten.linalg_vector_norm.default: _NORM,
    **dict.fromkeys((aten.mean.dim, aten.amax.default, aten.amin.default, aten.max.dim,
                     aten.min.dim, aten.var.correction, aten.std.correction,
                     aten.logsumexp.default, aten.prod.dim_int), _REDUCE),
    **dict.fromkeys((aten.softmax.int, aten._softmax.default, aten.log_softmax.int), _SOFTMAX),
    aten.cumsum.default: FUNCTIONS[torch.cumsum],
    aten.roll.default: FUNCTIONS[torch.roll],
    aten.flip.default: FUNCTIONS[torch.flip],
    aten.unfold.default: METHODS["unfold"],
    aten.repeat_interleave.self_int: FUNCTIONS[torch.repeat_interleave],
    **dict.fromkeys((aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
                     aten.adaptive_avg_pool3d.default,
                     aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
                     aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default,
                     aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.vec,
                     aten.pad.default, aten.constant_pad_nd.default), RESIZE),
    aten.pixel_shuffle.default: Op(flow=rules.pixel_shuffle),
    aten.pixel_unshuffle.default: Op(flow=rules.pixel_unshuffle),
    aten.channel_shuffle.default: FUNCTIONS[torch.channel_shuffle],
    **dict.fromkeys((aten.arange.default, aten.arange.start, aten.arange.start_step,
                     aten.zeros.default, aten.ones.default, aten.full.default,
                     aten.scalar_tensor.default), Op(flow=rules.creates)),
}


# Functions of other libraries keyed by their qualified name, so that a rename there (these are
# torchvision's fx-wrapped Swin functions, one of them private) unknowns the op instead of
# breaking `import fxprune`.
NAMED_FUNCTIONS: dict[str, Op] = {
    "torchvision.models.swin_transformer.shifted_window_attention": Op(
        flow=rules.shifted_window_attention),
    "torchvision.models.swin_transformer._patch_merging_pad": Op(flow=rules.patch_merging_pad),
    # the fx-wrapped parts of torchvision's MultiScaleRoIAlign (detection's box and mask heads)
    "torchvision.ops.poolers._setup_scales": Op(flow=rules.sizes_only),
    "torchvision.ops.poolers._filter_input": Op(flow=rules.pick_features),
    "torchvision.ops.poolers._multiscale_roi_align": Op(flow=rules.roi_pool),
}


# Modules of other libraries that override a known module's forward but compute the same
# thing, keyed by qualified class name (nothing of theirs is imported). timm's "same" layers pad
# at run time from the input size (which fx cannot trace, so they stay leaves), then convolve or
# pool as their parent does; the padding makes the conv's shape rule wrong, so it has none.
NAMED_MODULES: dict[str, Op] = {
    "timm.layers.conv2d_same.Conv2dSame": replace(_CONV, shape=None),
    "timm.layers.pool2d_same.MaxPool2dSame": POOL,
    "timm.layers.pool2d_same.AvgPool2dSame": POOL,
    # a BatchNorm2d whose statistics, weight and bias are buffers (detection backbones')
    "torchvision.ops.misc.FrozenBatchNorm2d": replace(_BATCHNORM, sync=None, norm=False,
                                                      whole=True),
    # GPT-2's linear layers: addmm(bias, x, weight) with the weight stored (in, out)
    "transformers.pytorch_utils.Conv1D": Op(
        flow=rules.linear, out_params={"weight": 1, "bias": 0}, in_params={"weight": 0},
        sync=surgery.sync_conv1d, produces=-1, fresh=True),
}


def lookup(node: torch.fx.Node, module: nn.Module | None) -> Op | None:
    """The table entry for `node`, or None when the op is unknown."""
    if node.op == "call_module" and module is not None:
        return lookup_module(module)
    if node.op == "call_function":
        try:
            entry = FUNCTIONS.get(node.target) or ATEN.get(node.target)
        except TypeError:  # unhashable target
            return None
        if entry is None:
            name = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', '')}"
            entry = NAMED_FUNCTIONS.get(name)
        return entry
    if node.op == "call_method":
        return METHODS.get(node.target)
    return None


def parameter_layout(owner: type) -> Op | None:
    """The entry of class `owner`, or of the known class it derives from, whatever its forward:
    for facts about its parameters, which a subclass computing with its parent's parameters
    keeps (timm's BatchNormAct2d is a BatchNorm2d's parameters, StdConv2d a conv's: its kernel
    dims are never channels). Which channels flow where is `lookup`'s, never this."""
    for cls in owner.__mro__:
        named = NAMED_MODULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if named is not None or cls in MODULES:
            return named or MODULES[cls]
    return None


def param_channel_dims(owner: type, name: str) -> frozenset[int] | None:
    """The dims of parameter `name` of a module of class `owner` that can carry channels, or
    None where the table does not know the parameter."""
    entry = parameter_layout(owner)
    if entry is None:
        return None
    dims = {d for p, d in (*entry.out_params.items(), *entry.in_params.items()) if p == name}
    return frozenset(dims) or None


def lookup_module(module: nn.Module) -> Op | None:
    """The table entry for a module, or None when its class is unknown."""
    named = NAMED_MODULES.get(f"{type(module).__module__}.{type(module).__qualname__}")
    if named is not None:
        return named
    for cls in type(module).__mro__:
        if cls in MODULES:
            # A subclass with its own forward is a different op.
            return MODULES[cls] if type(module).forward is cls.forward else None
    return None
