"""Tiny models, one per coupling fxprune must handle; reused across tests.

Each entry of MODELS is (factory, example input shape). Keep every model small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cbr(cin: int, cout: int, **kw: object) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False, **kw),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """stem -> (conv-bn-relu, conv-bn) + identity -> linear: add couples stem and conv b."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a = _cbr(3, 8), _cbr(8, 6)
        self.b = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.fc(x.mean((2, 3)))


class BroadcastOps(nn.Module):
    """sub, and mul by a (N, C, 1, 1) tensor: broadcasting keeps the channel coupling."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.g = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(3, 5, 1)
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.g(x).mean((2, 3), keepdim=True)
        return self.head((self.a(x) - self.b(x)) * gate)


class SqueezeExcite(nn.Module):
    """conv -> SE (pool, fc, fc, sigmoid) gating -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.out(x * s)


class Concat(nn.Module):
    """cat of two sources, cat([x, x]) and a nested cat, each read by a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(3, 3, 1)
        self.ab, self.aa = nn.Conv2d(10, 2, 1), nn.Conv2d(8, 2, 1)
        self.nested = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.a(x), self.b(x), self.c(x)
        return (self.ab(torch.cat([a, b], 1)) + self.aa(torch.cat([a, a], dim=1))
                + self.nested(torch.cat([torch.cat([c, a], 1), c, b], 1)))


class Split(nn.Module):
    """split, chunk, unbind over a non-channel dim, and channel slicing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 1)
        self.p, self.q, self.r = nn.Conv2d(5, 2, 1), nn.Conv2d(7, 2, 1), nn.Conv2d(6, 2, 1)
        self.s = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        p, q = torch.split(y, [5, 7], dim=1)
        r1, _ = y.chunk(2, dim=1)
        rows = torch.stack(y.unbind(2), 2)
        return self.p(p) + self.q(q) + self.r(r1) + self.s(rows[:, 2:6])


class FlattenLinear(nn.Module):
    """conv -> flatten with spatial size 2x2 -> linear: each channel owns 4 columns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 3, 3), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class ChannelsLast(nn.Module):
    """A ConvNeXt-style block: depthwise conv, permute, LayerNorm, MLP, layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.scale, self.head = nn.Parameter(torch.ones(8)), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))) * self.scale
        return self.head(x + y.permute(0, 3, 1, 2))


class GroupedConv(nn.Module):
    """grouped conv (groups=4), depthwise with multiplier 2, and a one-channel conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 12, 3, groups=4)
        self.dw = nn.Conv2d(12, 24, 3, groups=12)
        self.one, self.head = nn.Conv2d(24, 1, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.one(self.dw(self.g(self.a(x)))))


class ConvNd(nn.Module):
    """conv1d, conv3d and a transposed conv with groups."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c3 = nn.Conv1d(3, 4, 3), nn.Conv3d(4, 6, 1)
        self.t = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 18)
        y = self.c1(x).view(x.shape[0], 4, 2, 2, 4)
        z = self.c3(y).flatten(2, 3)
        return self.head(self.t(z))


class Norms(nn.Module):
    """GroupNorm (whole norm groups), InstanceNorm, PReLU, pixel shuffle, interpolate."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.gn = nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8)
        self.b, self.inorm = nn.Conv2d(8, 8, 1), nn.InstanceNorm2d(8, affine=True)
        self.act, self.ps = nn.PReLU(8), nn.PixelShuffle(2)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.inorm(self.b(self.gn(self.a(x)))))
        return self.head(F.interpolate(self.ps(y), scale_factor=0.5))


class Tokens(nn.Module):
    """Embedding, cls token, position embedding, nn.MultiheadAttention and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, 8)), nn.Parameter(torch.zeros(1, 5, 8))
        self.attn, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(x[:, 0])


class HandAttention(nn.Module):
    """Hand-written attention that reshapes into heads with view/transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = 2, nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, 8)
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return x + self.proj((attn @ v).transpose(1, 2).reshape(n, length, -1))


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: view, transpose, view."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y)


def _opaque(x: torch.Tensor) -> torch.Tensor:
    return x.flip(0) * 2


torch.fx.wrap("_opaque")


class Frozen(nn.Module):
    """Channels that lose their identity: values moved along the channel dim (cumsum), an index
    into it (max's indices), an unknown function; and a group that reaches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.free, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).cumsum(1)
        values, index = self.b(x).max(1, keepdim=True)
        return self.head(F.relu(self.free(x)) + a + _opaque(self.c(x))) + values * index


class ChannelReductions(nn.Module):
    """Reductions over channels: a sum and an L2 normalisation are exact (a zeroed channel adds
    nothing); an RMS norm written out (mean of squares), a softmax and CBAM's channel mean and
    max are inexact (a zeroed channel still counts); none of them freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.rms_in, self.rms_w = nn.Conv2d(3, 6, 1), nn.Parameter(torch.rand(6) + 0.5)
        self.soft, self.unit, self.sum = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 1)
        self.cbam, self.spatial = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 1, 3, padding=1)
        self.head = nn.Linear(19, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rms_in(x)
        r = r * torch.rsqrt(r.pow(2).mean(1, keepdim=True) + 1e-6) * self.rms_w.view(1, -1, 1, 1)
        s = self.soft(x).softmax(dim=1)
        u = F.normalize(self.unit(x), dim=1)
        c = self.cbam(x)
        pooled = torch.cat([c.mean(1, keepdim=True), c.amax(1, keepdim=True)], 1)
        c = c * torch.sigmoid(self.spatial(pooled))
        t = self.sum(x).sum(1, keepdim=True)
        return self.head(torch.cat([r, s, u, c], 1).mean((2, 3))) + t.mean((2, 3))


class SizedHeads(nn.Module):
    """XCiT's and CoaT's attention: qkv split into heads by a size computed from the input's
    width (``C // heads``, another group's channels than qkv's), and merged back to that width:
    surgery writes those sizes as literals."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 2
        self.embed, self.qkv = nn.Linear(3, 8), nn.Linear(8, 24)
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.head(x + self.proj(y))


class Aggregate(nn.Module):
    """CoaT's head: three branches stacked as a Conv1d's channels, so that their own channels
    lie along its length (pointwise there: they pass through); and a conv that slides along
    channels (they are frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(3, 6), nn.Linear(3, 6)
        self.aggregate = nn.Conv1d(3, 1, 1)
        self.slide, self.smear = nn.Linear(3, 4), nn.Conv1d(1, 1, 3, padding=1)
        self.head, self.tail = nn.Linear(6, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aggregate(torch.stack([self.a(x), self.b(x), self.c(x)], dim=1)).squeeze(1)
        z = self.smear(self.slide(x).unsqueeze(1)).squeeze(1)
        return self.head(y) + self.tail(z)


class Halo(nn.Module):
    """HaloNet's attention: windows unfolded along the spatial dims (channels keep their
    places), and windows unfolded along channels (frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.c, self.d = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
        z = self.c(x).unfold(1, 2, 2).mean(-1)
        return self.b(y) + self.d(z)[..., ::2, ::2]


class Gathers(nn.Module):
    """A table's rows gathered by an index tensor (TinyViT's attention biases, relative
    positions: the gathered dim is frozen, the other keeps its channels), an einsum with a
    parameter (MViT-v2), and repeat_interleave (GCViT: each channel owns its copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 2)
        self.table, self.rel = nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(6, 4))
        self.register_buffer("idx", torch.tensor([0, 2, 4]))
        self.head, self.tail = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) + self.table[self.idx]
        r = torch.einsum("bnc,kc->bnk", y, self.rel)
        z = self.b(x).repeat_interleave(2, dim=2)
        return self.head(y) + self.tail(z) + r.sum(-1, keepdim=True)


class BiasedAttention(nn.Module):
    """Attention with a bias per head from a small MLP (timm's relative-position ViTs): the
    MLP's outputs are heads, which this attention does not prune, so they are frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.bias, self.out = nn.Linear(8, 24), nn.Linear(2, 2), nn.Linear(8, 3)
        self.register_buffer("coords", torch.randn(5, 5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 5, 8)
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, 2, -1).permute(2, 0, 3, 1, 4)
        mask = self.bias(self.coords).permute(2, 0, 1).unsqueeze(0)  # (1, heads, L, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # contiguous: torch.onnx's decomposition of sdpa keeps strides a plain view rejects
        return self.out(y.transpose(1, 2).contiguous().reshape(n, length, -1))


class Recurrent(nn.Module):
    """Sequencer's bidirectional LSTM over the rows of a feature map: its input features are
    prunable with the layer that makes them; its hidden units are not pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.rnn = nn.LSTM(6, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, 3)
        y, _ = self.rnn(self.a(x))
        return self.head(y)


class Functional(nn.Module):
    """Bare parameters through F.conv2d, F.batch_norm (running statistics as buffers),
    F.group_norm and F.linear: the same couplings as the modules they stand for."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(6, 3, 3, 3)), nn.Parameter(torch.randn(6))
        self.scale, self.shift = nn.Parameter(torch.rand(6) + 0.5), nn.Parameter(torch.randn(6))
        self.register_buffer("mean", torch.randn(6))
        self.register_buffer("var", torch.rand(6) + 0.5)
        self.w2 = nn.Parameter(torch.randn(4, 6, 1, 1))
        self.gn_w, self.gn_b = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))
        self.fc = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.w1, self.b1, padding=1)
        x = F.relu(F.batch_norm(x, self.mean, self.var, self.scale, self.shift))
        x = F.group_norm(F.conv2d(x, self.w2), 2, self.gn_w, self.gn_b)
        return F.linear(x.mean((2, 3)), self.fc)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d whose forward calls F.batch_norm, then an act."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                   self.bias, False, 0.1, self.eps))


class StdConv(nn.Conv2d):
    """timm's StdConv2d: each filter standardised over its inputs by F.batch_norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class Subclassed(nn.Module):
    """Subclasses of known layers with their own forward are traced through, not frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn = StdConv(3, 8, 3, padding=1), BatchNormAct(8)
        self.b = StdConv(8, 4, 3, padding=1)  # standardising over one input needs a kernel
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.bn(self.a(x))).mean((2, 3)))


class Generator(nn.Module):
    """DCGAN's generator and a VAE's decoder: a linear's features viewed as (C, H, W) before a
    transposed conv, by view, unflatten, and reshape with the batch read from the input (each
    of the C channels owns H*W rows of the linear); channels last, and channels in the middle
    (H, C, W), then permuted."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_view, self.fc_unflatten = nn.Linear(3, 16), nn.Linear(3, 16)
        self.fc_reshape, self.fc_last, self.fc_middle = (nn.Linear(3, 16) for _ in range(3))
        self.bn = nn.BatchNorm2d(4)
        self.up_view, self.up_unflatten, self.up_reshape, self.up_last, self.up_middle = (
            nn.ConvTranspose2d(4, 2, 2, stride=2) for _ in range(5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, 3)
        a = self.up_view(F.relu(self.fc_view(z)).view(-1, 4, 2, 2))
        b = self.up_unflatten(self.fc_unflatten(z).unflatten(1, (4, 2, 2)))
        c = self.up_reshape(self.bn(self.fc_reshape(z).reshape(z.shape[0], 4, 2, 2)))
        d = self.up_last(self.fc_last(z).view(-1, 2, 2, 4).permute(0, 3, 1, 2))
        e = self.up_middle(self.fc_middle(z).view(-1, 2, 4, 2).transpose(1, 2))
        return a + b + c + d + e


class DCGAN(nn.Module):
    """DCGAN's generator: a linear viewed as (16, 4, 4), then transposed convs with BatchNorm
    up to an image."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn0 = nn.Linear(4, 16 * 4 * 4), nn.BatchNorm2d(16)
        self.up1, self.bn1 = nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.up2 = nn.ConvTranspose2d(8, 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, 4)
        x = F.relu(self.bn0(self.fc(z).view(-1, 16, 4, 4)))
        return torch.tanh(self.up2(F.relu(self.bn1(self.up1(x)))))


class VAEDecoder(nn.Module):
    """A VAE's decoder: a linear unflattened to (8, 2, 2), transposed convs, a sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8 * 2 * 2)
        self.up1, self.up2 = nn.ConvTranspose2d(8, 6, 2, stride=2), nn.ConvTranspose2d(6, 3, 2, stride=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, 4)
        x = F.relu(self.fc(z)).unflatten(1, (8, 2, 2))
        return torch.sigmoid(self.up2(F.relu(self.up1(x))))


class AutoEncoder(nn.Module):
    """A conv autoencoder: down by space-to-depth (F.pixel_unshuffle: each channel becomes
    2x2 = 4) and a strided conv, up by transposed convs to the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(16, 12, 3, 2, 1)
        self.dec1 = nn.ConvTranspose2d(12, 8, 3, 2, 1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(8, 3, 3, 2, 1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.enc2(F.pixel_unshuffle(F.relu(self.enc1(x)), 2)))
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z))))


class ESPCN(nn.Module):
    """ESPCN's sub-pixel upscaling, twice: a conv makes r*r channels per channel of the next
    stage and pixel shuffle (F.pixel_shuffle, then nn.PixelShuffle) spreads them over space."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 5, padding=2), nn.Conv2d(8, 4 * 2 * 2, 3, padding=1)
        self.c3, self.shuffle = nn.Conv2d(4, 3 * 2 * 2, 3, padding=1), nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(self.c2(torch.tanh(self.c1(x))), 2)
        return self.shuffle(self.c3(torch.tanh(x)))


class UNet(nn.Module):
    """A small U-Net: two levels down by strided convs, up by transposed convs, each level's
    features concatenated with the upsampled ones before a conv; the output conv reads the
    input image beside the features (whose channels stay)."""

    def __init__(self) -> None:
        super().__init__()
        self.d1, self.d2 = _cbr(3, 4), nn.Conv2d(4, 8, 3, 2, 1)
        self.mid = nn.Conv2d(8, 8, 3, 2, 1)
        self.up2, self.u2 = nn.ConvTranspose2d(8, 6, 2, stride=2), nn.Conv2d(6 + 8, 6, 3, padding=1)
        self.up1, self.u1 = nn.ConvTranspose2d(6, 4, 2, stride=2), nn.Conv2d(4 + 4, 4, 3, padding=1)
        self.out = nn.Conv2d(4 + 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.d1(x)
        s2 = F.relu(self.d2(s1))
        m = F.relu(self.mid(s2))
        y = F.relu(self.u2(torch.cat([self.up2(m), s2], 1)))
        y = F.relu(self.u1(torch.cat([s1, self.up1(y)], 1)))
        return self.out(torch.cat([y, x], 1))


class DiffusionBlock(nn.Module):
    """A diffusion U-Net's block: a sinusoidal time embedding through a Linear added as
    (N, C, 1, 1), GroupNorm and SiLU around convs, a residual, and one-head self-attention over
    the spatial positions (q, k, v from one 1x1 conv) with its own GroupNorm and residual. The
    time is the noise level read from the input, so that one tensor goes in."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.time = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(4, 8)
        self.register_buffer("freqs", torch.tensor([1.0, 10.0]))
        self.norm1, self.conv1 = nn.GroupNorm(4, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(4, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.attn_norm, self.qkv = nn.GroupNorm(4, 8), nn.Conv2d(8, 3 * 6, 1)
        self.proj, self.out = nn.Conv2d(6, 8, 1), nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x.flatten(1).std(1, keepdim=True) * self.freqs  # (N, 2)
        t = self.time(torch.cat([angles.sin(), angles.cos()], 1))
        x = self.inp(x)
        h = self.conv1(F.silu(self.norm1(x))) + t[:, :, None, None]
        x = x + self.conv2(F.silu(self.norm2(h)))
        n, _, height, width = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).flatten(2).chunk(3, dim=1)  # (N, 6, HW) each
        attn = (q.transpose(1, 2) @ k * 6 ** -0.5).softmax(dim=-1)  # (N, HW, HW)
        y = (v @ attn.transpose(1, 2)).view(n, 6, height, width)
        return self.out(x + self.proj(y))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GroupedQuery(nn.Module):
    """Llama's decoder layer: 4 query heads share 2 key-value heads (repeat_kv's expand and
    reshape), rotary embeddings rotate the halves of each head, an RMS norm, and a SwiGLU
    feed-forward (gate and up go together)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(3, 8), nn.Parameter(torch.rand(8) + 0.5)
        self.q, self.k, self.v, self.o = nn.Linear(8, 16), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 8)
        self.gate, self.up = nn.Linear(8, 6, bias=False), nn.Linear(8, 6, bias=False)
        self.down, self.head = nn.Linear(6, 8, bias=False), nn.Linear(8, 3)
        angles = torch.arange(5.0)[:, None] * torch.tensor([1.0, 0.1, 1.0, 0.1])
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 5, 3)
        x = self.embed(x)
        n, length, _ = x.shape
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm
        q, k, v = (p(h).view(n, length, -1, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        q = q * self.cos + _rotate_half(q) * self.sin
        k = k * self.cos + _rotate_half(k) * self.sin
        k, v = (t[:, :, None].expand(n, 2, 2, length, 4).reshape(n, 4, length, 4) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(n, length, -1))
        return self.head(x + self.down(F.silu(self.gate(x)) * self.up(x)))


class SharedHeads(nn.Module):
    """Heads that are no unit, so channels stay by head dimension: multi-query attention
    (mobilenetv5: 2 query heads share one key and value head, the output merges the heads with
    the value's channels) and heads merged with the batch (HaloNet's reshape(B * heads, ...))."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.a, self.b, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 4, 4)
        n, _, h, w = x.shape
        q = self.q(x).reshape(n, 2, 4, -1).transpose(-1, -2)
        k, v = (p(x).reshape(n, 4, -1).transpose(1, 2).unsqueeze(1) for p in (self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2)
        y = y.reshape(n, h, w, y.shape[-1] * 2).permute(0, 3, 1, 2)
        a, b = (p(x).reshape(n * 2, 4, -1) for p in (self.a, self.b))
        z = (a.transpose(1, 2) @ b).softmax(-1) @ b.transpose(1, 2)
        return self.out(torch.cat([y, z.transpose(1, 2).reshape(n, 8, h, w)], 1))


class GatedSplit(nn.Module):
    """FocalNet's modulation: one conv makes the query, the context and one gate per level,
    split apart; each gate is a one-channel slice scaling the whole context, so it can never
    be removed (the slice would be empty) while its neighbours can."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Conv2d(3, 8 + 8 + 2, 1)
        self.dw, self.h = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, ctx, gates = torch.split(self.f(x), (8, 8, 2), 1)
        ctx = self.dw(ctx)
        mixed = ctx * gates[:, 0:1] + ctx.mean((2, 3), keepdim=True) * gates[:, 1:]
        return self.out(q * self.h(mixed))


MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...], torch.dtype]] = {
    "residual": (Residual, (2, 3, 6, 6), torch.float32),
    "broadcast": (BroadcastOps, (2, 3, 4, 4), torch.float32),
    "squeeze_excite": (SqueezeExcite, (2, 3, 6, 6), torch.float32),
    "concat": (Concat, (2, 3, 4, 4), torch.float32),
    "split": (Split, (2, 3, 4, 4), torch.float32),
    "flatten_linear": (FlattenLinear, (2, 3, 4, 4), torch.float32),
    "channels_last": (ChannelsLast, (2, 3, 5, 5), torch.float32),
    "grouped_conv": (GroupedConv, (2, 3, 7, 7), torch.float32),
    "conv_nd": (ConvNd, (2, 3, 18), torch.float32),
    "norms": (Norms, (2, 3, 4, 4), torch.float32),
    "tokens": (Tokens, (2, 4), torch.int64),
    "hand_attention": (HandAttention, (2, 5, 8), torch.float32),
    "shuffle": (Shuffle, (2, 3, 4, 4), torch.float32),
    "frozen": (Frozen, (2, 3, 4, 4), torch.float32),
    "channel_reductions": (ChannelReductions, (2, 3, 4, 4), torch.float32),
    "sized_heads": (SizedHeads, (2, 5, 3), torch.float32),
    "aggregate": (Aggregate, (2, 3), torch.float32),
    "halo": (Halo, (2, 3, 4, 4), torch.float32),
    "gathers": (Gathers, (2, 3, 3), torch.float32),
    "biased_attention": (BiasedAttention, (2, 5, 8), torch.float32),
    "recurrent": (Recurrent, (2, 5, 3), torch.float32),
    "functional": (Functional, (2, 3, 4, 4), torch.float32),
    "subclassed": (Subclassed, (2, 3, 4, 4), torch.float32),
    "generator": (Generator, (2, 3), torch.float32),
    "dcgan": (DCGAN, (2, 4), torch.float32),
    "vae_decoder": (VAEDecoder, (2, 4), torch.float32),
    "autoencoder": (AutoEncoder, (2, 3, 8, 8), torch.float32),
    "espcn": (ESPCN, (2, 3, 8, 8), torch.float32),
    "unet": (UNet, (2, 3, 8, 8), torch.float32),
    "diffusion_block": (DiffusionBlock, (2, 3, 8, 8), torch.float32),
    "grouped_query": (GroupedQuery, (2, 5, 3), torch.float32),
    "gated_split": (GatedSplit, (2, 3, 4, 4), torch.float32),
    "shared_heads": (SharedHeads, (2, 3, 4, 4), torch.float32),
}


# Where a random request comes out empty, said once: the frozen model has no prunable group
# (mean and softmax over channels, an unknown op, the output); the tokens model's one group
# goes through attention's 1/sqrt(head_dim), so it is inexact. test_analyze checks both sets
# against its table of expected groups.
NO_PRUNABLE_GROUP = frozenset({"frozen"})
NO_EXACT_GROUP = NO_PRUNABLE_GROUP | {"tokens"}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model `name`, seeded, in eval mode, with a matching example input."""
    cls, shape, dtype = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randint(0, 10, shape) if dtype == torch.int64 else torch.randn(shape)
    return model, x


class Literals(nn.Module):
    """Channel counts written as literals: split sizes, chunk, view sizes, slices, expand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bias = nn.Conv2d(3, 8, 1), nn.Parameter(torch.zeros(1, 8, 1))
        self.p, self.q, self.r = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1), nn.Conv2d(4, 2, 1)
        self.s, self.fc = nn.Conv2d(6, 2, 1), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        a, b = torch.split(y, [3, 5], dim=1)
        c, _ = y.chunk(2, dim=1)
        flat = y.view(2, 8, 16) + self.bias.expand(2, 8, 16)
        out = self.p(a) + self.q(b) + self.r(c) + self.s(y[:, 1:7])
        return out + self.fc(flat.mean(-1)).view(2, 2, 1, 1)


MODELS["literals"] = (Literals, (2, 3, 4, 4), torch.float32)


class FrozenNorm(nn.Module):
    """conv -> torchvision's FrozenBatchNorm2d (its statistics, weight and bias are buffers)
    -> relu -> conv: the norm is sliced with the conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops.misc import FrozenBatchNorm2d

        self.conv, self.norm, self.head = nn.Conv2d(3, 6, 3), FrozenBatchNorm2d(6), nn.Conv2d(6, 2, 1)
        for name in ("weight", "bias", "running_mean"):
            self.norm.get_buffer(name).normal_()
        self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(x))))


class TinyDetector(nn.Module):
    """A detector's interface: a list of images in, a list of dicts out. Two methods read
    values (branch on them), so each is traced as one opaque call: `prepare` returns a None
    the forward tests, `select` picks locations per image; the layers between them prune."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = _cbr(3, 8), nn.Conv2d(8, 3, 1)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        x, extra = self.prepare(images)
        if extra is not None:
            x = x + extra
        return self.select(self.head(self.body(x)).flatten(2))

    def prepare(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.stack(images)
        return (x, None) if x.abs().max() >= 0 else (x, x)

    def select(self, scores: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for s in scores:  # per image: (classes, locations)
            keep = torch.nonzero(s.amax(0) > 0).flatten()
            out.append({"scores": s.amax(0)[keep], "labels": s[:, keep].argmax(0)})
        return out

