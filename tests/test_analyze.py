"""Dependency analysis on one tiny model per coupling, expected groups written out literally."""

from __future__ import annotations

import pytest
import torch
from helpers import group_with, member, summary
from models import NO_EXACT_GROUP, NO_PRUNABLE_GROUP, build

import fxprune

P, F, EXACT, INEXACT = True, False, True, False


def S(*names: str) -> frozenset[str]:
    return frozenset(names)


def _bn(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{p}:0" for p in ("weight", "bias", "running_mean", "running_var"))


EXPECTED = {
    "residual": {
        S("stem.0.weight:0", *_bn("stem.1"), "a.0.weight:1", "b.0.weight:0", "b.0.bias:0",
          *_bn("b.1"), "fc.weight:1"): (8, P, EXACT),
        S("a.0.weight:0", *_bn("a.1"), "b.0.weight:1"): (6, P, EXACT),
        S("fc.weight:0", "fc.bias:0"): (4, F, EXACT),
    },
    "broadcast": {
        S("a.weight:0", "a.bias:0", "b.weight:0", "b.bias:0", "g.weight:0", "g.bias:0",
          "head.weight:1"): (5, P, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "squeeze_excite": {
        S("conv.weight:0", "conv.bias:0", "fc1.weight:1", "fc2.weight:0", "fc2.bias:0",
          "out.weight:1"): (8, P, EXACT),
        S("fc1.weight:0", "fc1.bias:0", "fc2.weight:1"): (4, P, EXACT),
        S("out.weight:0", "out.bias:0"): (2, F, EXACT),
    },
    "concat": {
        S("a.weight:0", "a.bias:0", "aa.weight:1", "ab.weight:1", "nested.weight:1"): (4, P, EXACT),
        S("b.weight:0", "b.bias:0", "ab.weight:1", "nested.weight:1"): (6, P, EXACT),
        S("c.weight:0", "c.bias:0", "nested.weight:1"): (3, P, EXACT),
        S("aa.weight:0", "aa.bias:0", "ab.weight:0", "ab.bias:0", "nested.weight:0",
          "nested.bias:0"): (2, F, EXACT),
    },
    "split": {
        S("conv.weight:0", "conv.bias:0", "p.weight:1", "q.weight:1", "r.weight:1",
          "s.weight:1"): (12, P, EXACT),
        S("p.weight:0", "p.bias:0", "q.weight:0", "q.bias:0", "r.weight:0", "r.bias:0",
          "s.weight:0", "s.bias:0"): (2, F, EXACT),
    },
    "flatten_linear": {
        S("conv.weight:0", "conv.bias:0", "fc.weight:1"): (3, P, EXACT),
        S("fc.weight:0", "fc.bias:0"): (5, F, EXACT),
    },
    "channels_last": {
        S("stem.weight:0", "stem.bias:0", "dw.weight:0", "dw.bias:0", "norm.weight:0",
          "norm.bias:0", "up.weight:1", "down.weight:0", "down.bias:0", "scale:0",
          "head.weight:1"): (8, P, INEXACT),
        S("up.weight:0", "up.bias:0", "down.weight:1"): (16, P, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "grouped_conv": {
        S("a.weight:0", "a.bias:0", "g.weight:1"): (2, P, EXACT),
        S("g.weight:0", "g.bias:0", "dw.weight:0", "dw.bias:0", "one.weight:1"): (3, P, EXACT),
        S("one.weight:0", "one.bias:0", "head.weight:1"): (1, F, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "conv_nd": {
        S("c1.weight:0", "c1.bias:0", "c3.weight:1"): (4, P, EXACT),
        S("c3.weight:0", "c3.bias:0", "t.weight:0"): (3, P, EXACT),
        S("t.weight:1", "t.bias:0", "head.weight:1"): (2, P, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "norms": {
        S("a.weight:0", "a.bias:0", "gn.weight:0", "gn.bias:0", "b.weight:1"): (4, P, EXACT),
        S("b.weight:0", "b.bias:0", "inorm.weight:0", "inorm.bias:0", "act.weight:0",
          "head.weight:1"): (2, P, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "tokens": {
        # attention derives head_dim from its input width: the embedding dim, q, k, v and the
        # output shrink together, by head dimension (4 units of 2 heads); the 1/sqrt(head_dim)
        # scale changes with it, so zeroing is not removal (inexact)
        S("emb.weight:1", "cls:2", "pos:2", "attn.in_proj_weight:1", "attn.in_proj_weight:0",
          "attn.in_proj_bias:0", "attn.out_proj.weight:1", "attn.out_proj.weight:0",
          "attn.out_proj.bias:0", "head.weight:1"): (4, P, INEXACT),
        S("pos:1"): (5, F, EXACT),
        S("head.weight:0", "head.bias:0"): (3, F, EXACT),
    },
    "hand_attention": {
        S("qkv.weight:0", "qkv.bias:0", "proj.weight:1"): (2, P, EXACT),  # whole heads
        S("proj.weight:0", "proj.bias:0"): (8, F, EXACT),
    },
    "shuffle": {
        S("a.weight:0", "a.bias:0", "b.weight:0", "b.bias:0", "head.weight:1"): (4, P, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "frozen": {
        S("a.weight:0", "a.bias:0", "free.weight:0", "free.bias:0"): (4, F, EXACT),
        S("b.weight:0", "b.bias:0"): (4, F, EXACT),
        S("c.weight:0", "c.bias:0"): (4, F, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "channel_reductions": {
        S("rms_in.weight:0", "rms_in.bias:0", "rms_w:0", "head.weight:1"): (6, P, INEXACT),
        S("soft.weight:0", "soft.bias:0", "head.weight:1"): (5, P, INEXACT),
        S("unit.weight:0", "unit.bias:0", "head.weight:1"): (4, P, EXACT),
        S("cbam.weight:0", "cbam.bias:0", "head.weight:1"): (4, P, INEXACT),
        S("sum.weight:0", "sum.bias:0"): (3, P, EXACT),
        S("spatial.weight:0", "spatial.bias:0"): (1, F, EXACT),
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "sized_heads": {
        S("embed.weight:0", "embed.bias:0", "qkv.weight:1", "proj.weight:0", "proj.bias:0",
          "head.weight:1"): (8, P, EXACT),
        S("qkv.weight:0", "qkv.bias:0", "proj.weight:1"): (2, P, EXACT),  # whole heads
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    "aggregate": {
        S("a.weight:0", "a.bias:0", "b.weight:0", "b.bias:0", "c.weight:0", "c.bias:0",
          "head.weight:1"): (6, P, EXACT),
        S("slide.weight:0", "slide.bias:0"): (4, F, EXACT),
        S("aggregate.weight:0", "aggregate.bias:0"): (1, F, EXACT),
        S("smear.weight:0", "smear.bias:0"): (1, F, EXACT),
        S("head.weight:0", "head.bias:0", "tail.weight:0", "tail.bias:0"): (2, F, EXACT),
    },
    "halo": {
        S("a.weight:0", "a.bias:0", "b.weight:1"): (4, P, EXACT),
        S("c.weight:0", "c.bias:0"): (4, F, EXACT),
        S("b.weight:0", "b.bias:0", "d.weight:0", "d.bias:0"): (2, F, EXACT),
    },
    "gathers": {
        S("a.weight:0", "a.bias:0", "table:1", "rel:1", "head.weight:1"): (4, P, EXACT),
        S("table:0"): (5, F, EXACT),  # gathered rows
        S("rel:0"): (6, F, EXACT),  # summed away: only rel holds them
        S("b.weight:0", "b.bias:0", "tail.weight:1"): (2, P, EXACT),  # 2 columns each
        S("head.weight:0", "head.bias:0", "tail.weight:0", "tail.bias:0"): (2, F, EXACT),
    },
    "biased_attention": {
        # whole heads: each head's q, k and v rows, its bias from the MLP and its out columns
        S("qkv.weight:0", "qkv.bias:0", "bias.weight:0", "bias.bias:0", "out.weight:1"):
            (2, P, EXACT),
        S("coords:2", "bias.weight:1"): (2, P, EXACT),  # the table's features are a buffer's
        S("out.weight:0", "out.bias:0"): (3, F, EXACT),
    },
    "generator": {
        # each of the 4 channels of the (4, 2, 2) view owns 4 rows of its linear
        S("fc_view.weight:0", "fc_view.bias:0", "up_view.weight:0"): (4, P, EXACT),
        S("fc_unflatten.weight:0", "fc_unflatten.bias:0", "up_unflatten.weight:0"): (4, P, EXACT),
        S("fc_reshape.weight:0", "fc_reshape.bias:0", "bn.weight:0", "bn.bias:0",
          "bn.running_mean:0", "bn.running_var:0", "up_reshape.weight:0"): (4, P, EXACT),
        S("fc_last.weight:0", "fc_last.bias:0", "up_last.weight:0"): (4, P, EXACT),
        S("fc_middle.weight:0", "fc_middle.bias:0", "up_middle.weight:0"): (4, P, EXACT),
        S(*(f"up_{f}.{p}" for f in ("view", "unflatten", "reshape", "last", "middle")
            for p in ("weight:1", "bias:0"))): (2, F, EXACT),
    },
    # generators and decoders: the conv input channels that read a linear's or a transposed
    # conv's outputs are in their group
    "dcgan": {
        # each of the 16 channels of the (16, 4, 4) view owns 16 rows of fc
        S("fc.weight:0", "fc.bias:0", *_bn("bn0"), "up1.weight:0"): (16, P, EXACT),
        S("up1.weight:1", *_bn("bn1"), "up2.weight:0"): (8, P, EXACT),
        S("up2.weight:1", "up2.bias:0"): (3, F, EXACT),
    },
    "vae_decoder": {
        S("fc.weight:0", "fc.bias:0", "up1.weight:0"): (8, P, EXACT),
        S("up1.weight:1", "up1.bias:0", "up2.weight:0"): (6, P, EXACT),
        S("up2.weight:1", "up2.bias:0"): (3, F, EXACT),
    },
    "autoencoder": {
        S("enc1.weight:0", "enc1.bias:0", "enc2.weight:1"): (4, P, EXACT),  # 4 columns each
        S("enc2.weight:0", "enc2.bias:0", "dec1.weight:0"): (12, P, EXACT),
        S("dec1.weight:1", "dec1.bias:0", "dec2.weight:0"): (8, P, EXACT),
        S("dec2.weight:1", "dec2.bias:0"): (3, F, EXACT),
    },
    "espcn": {
        S("c1.weight:0", "c1.bias:0", "c2.weight:1"): (8, P, EXACT),
        # each of c3's 4 input channels owns 2x2 = 4 rows of c2
        S("c2.weight:0", "c2.bias:0", "c3.weight:1"): (4, P, EXACT),
        S("c3.weight:0", "c3.bias:0"): (3, F, EXACT),  # 3 output colours of 2x2 sub-pixels
    },
    "unet": {
        # the skip connections: each level's channels are read again after the cat
        S("d1.0.weight:0", *_bn("d1.1"), "d2.weight:1", "u1.weight:1"): (4, P, EXACT),
        S("d2.weight:0", "d2.bias:0", "mid.weight:1", "u2.weight:1"): (8, P, EXACT),
        S("mid.weight:0", "mid.bias:0", "up2.weight:0"): (8, P, EXACT),
        S("up2.weight:1", "up2.bias:0", "u2.weight:1"): (6, P, EXACT),
        S("u2.weight:0", "u2.bias:0", "up1.weight:0"): (6, P, EXACT),
        S("up1.weight:1", "up1.bias:0", "u1.weight:1"): (4, P, EXACT),
        S("u1.weight:0", "u1.bias:0", "out.weight:1"): (4, P, EXACT),  # the image's 3 stay
        S("out.weight:0", "out.bias:0"): (2, F, EXACT),
    },
    "diffusion_block": {
        # the residual stream, in 4 GroupNorm groups of 2
        S("inp.weight:0", "inp.bias:0", "norm1.weight:0", "norm1.bias:0", "conv1.weight:1",
          "conv2.weight:0", "conv2.bias:0", "attn_norm.weight:0", "attn_norm.bias:0",
          "qkv.weight:1", "proj.weight:0", "proj.bias:0", "out.weight:1"): (4, P, EXACT),
        # the block's inner width: the time embedding's Linear added to conv1's outputs
        S("conv1.weight:0", "conv1.bias:0", "time.weight:0", "time.bias:0", "norm2.weight:0",
          "norm2.bias:0", "conv2.weight:1"): (4, P, EXACT),
        # attention: 6 pairs of q and k channels, and 6 channels of v
        S("qkv.weight:0", "qkv.bias:0", "proj.weight:1"): (12, P, EXACT),
        S("out.weight:0", "out.bias:0"): (3, F, EXACT),
    },
    "grouped_query": {
        S("embed.weight:0", "embed.bias:0", "norm:0", "q.weight:1", "k.weight:1", "v.weight:1",
          "o.weight:0", "o.bias:0", "gate.weight:1", "up.weight:1", "down.weight:0",
          "head.weight:1"): (8, P, INEXACT),  # the hidden size; the RMS norm's mean
        # a key-value head with the two query heads that share it
        S("q.weight:0", "q.bias:0", "k.weight:0", "k.bias:0", "v.weight:0", "v.bias:0",
          "o.weight:1"): (2, P, EXACT),
        S("gate.weight:0", "up.weight:0", "down.weight:1"): (6, P, EXACT),
        S("head.weight:0", "head.bias:0"): (3, F, EXACT),
    },
    "recurrent": {
        S("a.weight:0", "a.bias:0", "rnn.weight_ih_l0:1", "rnn.weight_ih_l0_reverse:1"):
            (6, P, EXACT),
        S("head.weight:1"): (8, F, EXACT),  # the LSTM's hidden units, both directions
        S("head.weight:0", "head.bias:0"): (2, F, EXACT),
    },
    # the same couplings as the modules they stand for; no group for the kernel dims
    "functional": {
        S("w1:0", "b1:0", "scale:0", "shift:0", "mean:0", "var:0", "w2:1"): (6, P, EXACT),
        S("w2:0", "gn_w:0", "gn_b:0", "fc:1"): (2, P, EXACT),  # 2 norm groups of 2
        S("fc:0"): (5, F, EXACT),
    },
    # f's rows: the query (with h's outputs), the context (through dw, into h) and two
    # one-channel gates, which `piece_keepers` keeps
    "gated_split": {
        S("f.weight:0", "f.bias:0", "dw.weight:0", "dw.bias:0", "h.weight:0", "h.bias:0",
          "h.weight:1", "out.weight:1"): (18, P, EXACT),
        S("out.weight:0", "out.bias:0"): (4, F, EXACT),
    },
    "shared_heads": {
        # by head dimension, the same index in every head: the query's with the shared key's,
        # the value's with its columns of out in both heads, a's and b's per batch-merged head
        S("q.weight:0", "q.bias:0", "k.weight:0", "k.bias:0"): (4, P, EXACT),
        S("v.weight:0", "v.bias:0", "out.weight:1"): (4, P, EXACT),
        S("a.weight:0", "a.bias:0", "b.weight:0", "b.bias:0", "out.weight:1"): (4, P, EXACT),
        S("out.weight:0", "out.bias:0"): (3, F, EXACT),
    },
    # StdConv b standardises each filter over its inputs: a's channels are inexact
    "subclassed": {
        S("a.weight:0", "a.bias:0", *_bn("bn"), "b.weight:1"): (8, P, INEXACT),
        S("b.weight:0", "b.bias:0", "fc.weight:1"): (4, P, EXACT),
        S("fc.weight:0", "fc.bias:0"): (3, F, EXACT),
    },
}


def analyze(name: str, **options: object) -> fxprune.ChannelGraph:
    model, x = build(name)
    return fxprune.analyze(fxprune.trace(model, x), **options)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_groups(name: str) -> None:
    assert summary(analyze(name)) == EXPECTED[name]


def test_models_without_a_prunable_or_exact_group_are_the_listed_ones() -> None:
    # other tests skip or relax their checks for exactly these models
    prunable = {n for n, groups in EXPECTED.items() if any(p for _, p, _ in groups.values())}
    exact = {n for n, groups in EXPECTED.items() if any(p and e for _, p, e in groups.values())}
    assert set(EXPECTED) - prunable == NO_PRUNABLE_GROUP
    assert set(EXPECTED) - exact == NO_EXACT_GROUP


def test_cat_of_the_same_tensor_maps_both_halves_to_its_channels() -> None:
    graph = analyze("concat")
    a = group_with(graph, "a.weight", 0)
    assert member(a, "aa.weight", 1).index_map == (0, 1, 2, 3, 0, 1, 2, 3)
    # nested cat([cat([c, a]), c, b]): a sits at columns 3..6, other groups are -1 there
    assert member(a, "nested.weight", 1).index_map == (-1,) * 3 + (0, 1, 2, 3) + (-1,) * 9
    c = group_with(graph, "c.weight", 0)
    assert member(c, "nested.weight", 1).index_map == (0, 1, 2) + (-1,) * 4 + (0, 1, 2) + (-1,) * 6


def test_split_chunk_and_slices_take_their_share_of_channels() -> None:
    g = group_with(analyze("split"), "conv.weight", 0)
    assert member(g, "p.weight", 1).index_map == (0, 1, 2, 3, 4)
    assert member(g, "q.weight", 1).index_map == tuple(range(5, 12))
    assert member(g, "r.weight", 1).index_map == tuple(range(6))
    assert member(g, "s.weight", 1).index_map == (2, 3, 4, 5)


def test_flatten_gives_each_channel_its_spatial_columns() -> None:
    g = group_with(analyze("flatten_linear"), "conv.weight", 0)
    assert member(g, "fc.weight", 1).index_map == (0,) * 4 + (1,) * 4 + (2,) * 4


def test_grouped_and_depthwise_conv_keep_groups_uniform() -> None:
    graph = analyze("grouped_conv")
    # groups=4 over 8 inputs: unit j is input j of every conv group
    assert member(group_with(graph, "a.weight", 0), "a.weight", 0).index_map == (0, 1) * 4
    g = group_with(graph, "g.weight", 0)
    assert member(g, "g.weight", 0).index_map == (0, 1, 2) * 4
    # depthwise with multiplier 2: both outputs of input channel i follow it
    assert member(g, "dw.weight", 0).index_map == tuple(c for c in (0, 1, 2) * 4 for _ in (0, 1))


def test_heads_are_pruned_whole_by_default() -> None:
    g = group_with(analyze("hand_attention"), "qkv.weight", 0)
    # qkv rows: (q|k|v) x 2 heads x 4 dims; unit h is head h's 4 rows of q, k and v
    assert member(g, "qkv.weight", 0).index_map == (0, 0, 0, 0, 1, 1, 1, 1) * 3
    assert member(g, "proj.weight", 1).index_map == (0, 0, 0, 0, 1, 1, 1, 1)


def test_heads_can_be_pruned_by_head_dimension_in_every_head() -> None:
    graph = analyze("hand_attention", heads="dim")
    g = group_with(graph, "qkv.weight", 0)
    # unit j is dim j of every head of q, k and v
    assert member(g, "qkv.weight", 0).index_map == (0, 1, 2, 3) * 6
    assert member(g, "proj.weight", 1).index_map == (0, 1, 2, 3) * 2
    assert group_with(analyze("sized_heads", heads="dim"), "qkv.weight", 0).channels == 4


def test_a_key_value_head_goes_with_the_query_heads_that_share_it() -> None:
    g = group_with(analyze("grouped_query"), "k.weight", 0)
    assert member(g, "q.weight", 0).index_map == (0,) * 8 + (1,) * 8
    assert member(g, "k.weight", 0).index_map == (0,) * 4 + (1,) * 4
    assert member(g, "o.weight", 1).index_map == (0,) * 8 + (1,) * 8


def test_a_linear_viewed_as_channels_and_space_keeps_its_outermost_channels() -> None:
    g = group_with(analyze("generator"), "fc_view.weight", 0)
    assert member(g, "fc_view.weight", 0).index_map == tuple(c for c in range(4) for _ in range(4))
    g = group_with(analyze("generator"), "fc_last.weight", 0)  # channels last: innermost
    assert member(g, "fc_last.weight", 0).index_map == (0, 1, 2, 3) * 4
    g = group_with(analyze("generator"), "fc_middle.weight", 0)  # (H, C, W): 2 rows in 8
    assert member(g, "fc_middle.weight", 0).index_map == tuple(
        c for _ in range(2) for c in range(4) for _ in range(2))


def test_generators_and_decoders_give_each_channel_its_share_of_the_layer_before() -> None:
    g = group_with(analyze("dcgan"), "fc.weight", 0)  # (16, 4, 4): 16 rows per channel
    assert member(g, "fc.weight", 0).index_map == tuple(c for c in range(16) for _ in range(16))
    assert member(g, "up1.weight", 0).index_map == tuple(range(16))
    g = group_with(analyze("vae_decoder"), "fc.weight", 0)  # unflatten to (8, 2, 2)
    assert member(g, "fc.weight", 0).index_map == tuple(c for c in range(8) for _ in range(4))
    unet = analyze("unet")  # cat([up2(m), s2]) and cat([s1, up1(y)])
    assert member(group_with(unet, "up2.weight", 1), "u2.weight", 1).index_map == (
        tuple(range(6)) + (-1,) * 8)
    assert member(group_with(unet, "d2.weight", 0), "u2.weight", 1).index_map == (
        (-1,) * 6 + tuple(range(8)))
    assert member(group_with(unet, "up1.weight", 1), "u1.weight", 1).index_map == (
        (-1,) * 4 + tuple(range(4)))
    assert member(group_with(unet, "u1.weight", 0), "out.weight", 1).index_map == (
        (0, 1, 2, 3) + (-1,) * 3)  # cat([y, x]): the image's channels are in no group
    g = group_with(analyze("autoencoder"), "enc1.weight", 0)  # pixel_unshuffle(2)
    assert member(g, "enc2.weight", 1).index_map == tuple(c for c in range(4) for _ in range(4))
    g = group_with(analyze("espcn"), "c2.weight", 0)
    assert member(g, "c2.weight", 0).index_map == tuple(c for c in range(4) for _ in range(4))
    g = group_with(analyze("diffusion_block"), "qkv.weight", 0)
    # rows (q | k | v) of 6: unit i is q's and k's row i together, unit 6 + i is v's row i
    assert member(g, "qkv.weight", 0).index_map == tuple(range(6)) * 2 + tuple(range(6, 12))
    assert member(g, "proj.weight", 1).index_map == tuple(range(6, 12))
    g = group_with(analyze("diffusion_block"), "time.weight", 0)
    assert member(g, "time.weight", 0).index_map == (0, 0, 1, 1, 2, 2, 3, 3)


def test_heads_option_is_checked() -> None:
    with pytest.raises(fxprune.InputError, match="heads must be one of whole, dim"):
        analyze("hand_attention", heads="heads")


def test_channel_shuffle_couples_the_same_index_of_each_shuffle_group() -> None:
    g = group_with(analyze("shuffle"), "a.weight", 0)
    assert member(g, "b.weight", 0).index_map == (0, 1, 2, 3)
    assert member(g, "head.weight", 1).index_map == (0, 0, 1, 1, 2, 2, 3, 3)


def test_groupnorm_and_pixel_shuffle_remove_whole_units() -> None:
    graph = analyze("norms")
    assert member(group_with(graph, "a.weight", 0), "gn.weight", 0).index_map == (0, 0, 1, 1, 2, 2, 3, 3)
    assert member(group_with(graph, "b.weight", 0), "b.weight", 0).index_map == (0,) * 4 + (1,) * 4


@pytest.mark.parametrize(
    ("param", "reason"),
    [
        ("a.weight", "moves values over its channel dim 1 at %cumsum"),
        ("b.weight", "takes indices over its channel dim 1 at %max"),
        ("c.weight", "unknown op _opaque"),
        ("head.weight", "reaches the model output"),
    ],
)
def test_frozen_groups_say_why_and_where(param: str, reason: str) -> None:
    g = group_with(analyze("frozen"), param, 0)
    assert not g.prunable
    assert reason in g.reason
    if "output" not in reason:
        assert "models.py" in g.reason  # the user's source line


def test_layernorm_makes_its_group_inexact_with_a_reason() -> None:
    g = group_with(analyze("channels_last"), "stem.weight", 0)
    assert g.prunable and not g.exact
    assert "LayerNorm" in g.inexact_reason


def test_unknown_ops_raise_in_strict_mode() -> None:
    model, x = build("frozen")
    with pytest.raises(fxprune.AnalysisError, match="_opaque"):
        fxprune.analyze(fxprune.trace(model, x), strict=True)


def test_coupling_nodes_are_recorded() -> None:
    g = group_with(analyze("residual"), "stem.0.weight", 0)
    assert g.coupled_by == ("add",)


def test_graph_is_annotated_and_left_unchanged() -> None:
    model, x = build("residual")
    gm = fxprune.trace(model, x)
    code = gm.code
    graph = fxprune.analyze(gm)
    assert gm.code == code
    node = next(n for n in gm.graph.nodes if n.name == "add")
    held = node.meta["fxprune.groups"].dims
    assert held == ((1, (group_with(graph, "stem.0.weight", 0).id,)),)


def test_a_conv_sliding_along_channels_freezes_them() -> None:
    g = group_with(analyze("aggregate"), "slide.weight", 0)
    assert not g.prunable and "a conv slides over channels along dim 2 at %smear" in g.reason


def test_windows_unfolded_along_channels_freeze_them() -> None:
    g = group_with(analyze("halo"), "c.weight", 0)
    assert not g.prunable and "slides windows over its channel dim 1 at %unfold_2" in g.reason


def test_a_model_without_parameters_has_no_groups() -> None:
    assert fxprune.analyze(fxprune.trace(torch.nn.Identity(), torch.randn(2, 3))).groups == ()


def test_a_functional_norm_and_bias_couple_nothing() -> None:
    """A norm's or a bias's parameters read only by a functional op (timm's norm-act layers)
    hold that op's channels, as a module's would: the groups name real couplings (an add, a
    multiply) in coupled_by, not every norm the channels pass."""
    graph = analyze("functional")
    assert group_with(graph, "w1", 0).coupled_by == ()
    roles = {m.param: m.role for m in group_with(graph, "w1", 0).members if m.param}
    assert roles == {"w1": "bare", "b1": "bare", "scale": "bare", "shift": "bare",
                     "mean": "bare", "var": "bare", "w2": "in"}


def test_atoms_given_back_are_reused_once_every_newer_block_is_given_back_too() -> None:
    """`Atoms.release`: a functional norm's four parameters adopt its channels, and their own
    atoms are given back; the newest blocks go first, so until then an older one stays
    discarded, and a block that is not one whole `fresh` block only stays discarded."""
    from fxprune.ops.flow import Atoms

    atoms = Atoms()
    kept = atoms.fresh(3)
    mean, var = atoms.fresh(4), atoms.fresh(4)
    atoms.release(mean)  # var is newer and still held
    assert len(atoms) == 11 and atoms.discarded(mean).all()
    atoms.release(var)  # now both go
    assert len(atoms) == 3 and not atoms.discarded(mean).any()
    assert atoms.fresh(2).tolist() == [3, 4]
    atoms.release(kept[1:])  # part of a block
    assert len(atoms) == 5 and atoms.discarded(kept[1:]).all() and not atoms.discarded(kept[:1]).any()


def test_functional_norms_leave_no_atoms_of_their_own() -> None:
    """A timm-style norm-act layer (F.batch_norm on its own parameters) adopts its input's
    channels and gives its four parameters' atoms back: a conv followed by one holds as many
    atoms as the conv alone (32 more before), and the groups stay what they were."""
    from models import BatchNormAct

    from fxprune.ops.api import Context
    from fxprune.passes.analyze import _visit

    def atoms_of(model: torch.nn.Module) -> int:
        gm = fxprune.trace(model.eval(), torch.randn(2, 3, 4, 4))
        cx = Context(gm, False, fxprune.ops.lookup)
        for node in gm.graph.nodes:
            cx.at(node)
            cx.flows[node] = _visit(cx, node)
        return len(cx.atoms)

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 1)
    assert atoms_of(torch.nn.Sequential(conv, BatchNormAct(8))) == atoms_of(torch.nn.Sequential(conv))
    graph = fxprune.analyze(fxprune.trace(torch.nn.Sequential(conv, BatchNormAct(8)).eval(),
                                          torch.randn(2, 3, 4, 4)))
    group = group_with(graph, "0.weight", 0)
    assert {m.param for m in group.members if m.param} == {
        "0.weight", "0.bias", "1.running_mean", "1.running_var", "1.weight", "1.bias"}
