"""Catalyst insertion: extend a traced model with one catalyst (D) per prunable group.

For each prunable group, every producer of its channels (a conv or linear whose output rows
belong to the group) becomes a *site*: the channel-wise ops right after it (BatchNorm,
activation: the op table's ``catalyst_after``) are sigma, the producer's output is u, and a
``call_module`` node ``catalyst_<group>`` is inserted after sigma computing

    psi(u) = sigma(u) + (D - stopgrad(D)) * u

so the extended model computes exactly the original function (the twin Dbar is a stop-gradient
copy of D: the reading the prototype found lossless). D starts at c times each channel's group
norm ||G_i||, and by default moves by the regulariser alone: ``loss_gradient=True`` also gives
it the task loss's gradient sum(dL/dpsi * u), the paper's method as written.

Why not as written: benchmarks/catalyst_convergence.py (seven architectures on digits, three
seeds, README "Catalyst's convergence") found that the loss's gradient on D is noise that keeps
D of a kept channel from shrinking below a floor, so its c hovers between 10^-2 and 10^-1 and
the kappa rule never holds: an MLP did not converge in 150 epochs at c0 = 1.5, and in every
run slower than 45 epochs the channels left undecided were mostly kept ones, rising back over
-kappa. With D moved by the regulariser alone, |D| shrinks at a rate set by ||G||, c's fate is
set by how well the task loss defends G (which is where the paper's argument puts it), every
run converged, and the pruning step stayed lossless. Doubling gamma instead halved the time on plain CNNs but
left the reachable |log10 c|, about log10(1 / lambda), too close to kappa (a MobileNet-style
net never converged); leaving D out of weight decay changed little.

The loss's angular step (`fxprune.pruner.AngularStep`, on by default in `CatalystPruner`): the
penalty shrinks G, and the conv and linear rows in G that only a BatchNorm reads are
scale-invariant, so the loss's SGD steps turn a row shrunk tenfold a hundred times faster than
the trained one. That cost accuracy on the way (top-1 fell 1.4 to 3.6 points at c0 = 1, where
nothing is pruned in the end), and the steps lengthen the rows, which is how the loss defends a
channel. Scaling the loss's gradient on those rows by (||w_i|| / ||w_i at the start||)^2 about
halved the fall at equal MACs (DigitsNet, a MobileNet-style net, an MLP; a DenseNet-style net
cut more at the same fall); the default c0 is 1.05, where every run of the study decided
within 36 epochs and top-1 stayed within 2.8 points of the baseline on the nets with BatchNorm. It leaves the kept rows at a
few thousandths of their trained norm, so the pruning step gives it back (`rescale_rows`,
exact in eval mode) and fine-tuning's steps keep their size; a weight gets the angular step
only where its BatchNorm can undo that (running statistics and a scale).

What G holds (`target`): "group" by default. "full" adds the consumers' input columns: where no
norm's scale and shift in G cut a shrinking channel's gradient path (a ViT's GELU MLP and
attention), the consumer's column kept feeding the loss's gradient back into the channel, its G
never became small against D, and a small ViT took up to 112 epochs to decide; with the columns
in G it took at most 26. On nets with BatchNorm "full" prunes much more at the same c0 with
deeper falls, so it is not the default.

Reads the ChannelGraph of `analyze`; returns a new GraphModule (the input stays usable). Groups
with no conv/linear producer, or (``target="bn"``) no norm parameters, get no catalyst.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from fxprune import ops
from fxprune.errors import InputError
from fxprune.graph import ChannelGraph, ChannelGroup, Member
from fxprune.trace import with_code

log = logging.getLogger(__name__)

TARGETS = ("group", "full", "bn")


@dataclass(frozen=True)
class Source:
    """One parameter slice inside G: `param` along `dim`; index positions[k] is channel[k]."""

    param: str
    dim: int


class _Catalyse(torch.autograd.Function):
    """psi = sigma(u) + (D - stopgrad(D)) * u, computed without the zero term.

    Forward: (D - stopgrad(D)) is exactly zero, so psi's value is sigma(u): returned as a view
    where the graph never edits it in place, else cloned (autograd forbids in-place edits of a
    custom Function's outputs that alias its inputs, and models do edit, e.g. `x.add_(y)`; the
    clone cost a CIFAR ResNet-56 4% of its training step). Backward: dpsi/dsigma = 1; dpsi/du
    gets (D - stopgrad(D)) = 0, so nothing; dpsi/dD_i = sum over the channel's positions of
    grad * u. Writing the zero term out in tensor ops cost two extra passes over every
    activation forward and three backward.
    """

    @staticmethod
    def forward(ctx: object, out: torch.Tensor, u: torch.Tensor, d: torch.Tensor,
                index: torch.Tensor | None, dim: int, view: bool) -> torch.Tensor:
        ctx.save_for_backward(u, index)
        ctx.dim, ctx.channels = dim, d.numel()
        return out if view else out.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple:
        u, index = ctx.saved_tensors
        grad_d = None
        if ctx.needs_input_grad[2]:
            reduce = [i for i in range(u.dim()) if i != ctx.dim]
            per_position = (grad * u).sum(reduce)
            grad_d = (per_position if index is None else
                      per_position.new_zeros(ctx.channels).index_add(0, index, per_position))
        return grad, None, grad_d, None, None, None


class Catalyst(nn.Module):
    """D for one channel group, applied at one or more sites (producers of its channels)."""

    fxprune_only = True  # a training-time module: export refuses models that still hold one

    def __init__(self, group: int, d: torch.Tensor, sites: list[tuple[torch.Tensor | None, int]],
                 sources: list[tuple[Source, torch.Tensor | None, torch.Tensor | None]],
                 views: list[bool] | None = None, *, loss_gradient: bool = False) -> None:
        super().__init__()
        self.group = group
        self.loss_gradient = loss_gradient  # does D also receive the task loss's gradient?
        self.d = nn.Parameter(d.clone())
        self.site_dims = [dim for _, dim in sites]
        self.site_views = views or [False] * len(sites)  # True: output may alias (see _Catalyse)
        for k, (index, _) in enumerate(sites):
            self.register_buffer(f"site{k}", index)
        self.sources = [src for src, _, _ in sources]
        for k, (_, positions, channels) in enumerate(sources):
            self.register_buffer(f"src{k}_pos", positions)
            self.register_buffer(f"src{k}_chan", channels)

    def forward(self, out: torch.Tensor, u: torch.Tensor, site: int) -> torch.Tensor:
        if not self.loss_gradient:  # D's gradient comes from the penalty alone: psi is sigma
            return out
        return _Catalyse.apply(out, u, self.d, getattr(self, f"site{site}"),
                               self.site_dims[site], self.site_views[site])

    def slices(self) -> list[Slice]:
        """The parameter slices that make G (see `channel_sums`)."""
        return [(src.param, src.dim, getattr(self, f"src{k}_pos"), getattr(self, f"src{k}_chan"))
                for k, src in enumerate(self.sources)]

    def magnitude(self, root: nn.Module) -> torch.Tensor:
        """||G_i|| of every channel of the group: sqrt(sum of squares + 1e-12)."""
        return group_norms(root, self.slices(), self.d.numel())

    def ratios(self, root: nn.Module) -> torch.Tensor:
        """c_i = |D_i| / ||G_i||."""
        return self.d.detach().abs() / self.magnitude(root).detach()

    def extra_repr(self) -> str:
        return f"group={self.group}, channels={self.d.numel()}, sites={len(self.site_dims)}"


Slice = tuple[str, int, "torch.Tensor | None", "torch.Tensor | None"]  # param, dim, positions, channels


def unless_identity(index: torch.Tensor, n: int) -> torch.Tensor | None:
    """None where `index` is 0..n-1 in order (the common case: a parameter's rows are its
    group's channels in order), so that sums skip the gather or scatter; else `index`."""
    same = index.numel() == n and bool((index.cpu() == torch.arange(n)).all())
    return None if same else index


def channel_sums(root: nn.Module, slices: list[Slice], channels: int, *, power: int) -> torch.Tensor:
    """Per channel, the sum of |x|**power over every parameter slice that holds it
    (differentiable; `power` 2 gives squared group norms, 1 gives L1 norms).

    A slice's positions/channels of None mean the identity (see `unless_identity`). Each
    parameter is reduced by one fused norm, with no copy of it.
    """
    rows, chans = [], []
    for param, dim, positions, chan in slices:
        r = _row_sums(root.get_parameter(param), dim, power)
        rows.append(r if positions is None else r[positions])
        chans.append(chan)
    if all(c is None for c in chans):
        return rows[0] if len(rows) == 1 else torch.stack(rows).sum(0)
    index = torch.cat([torch.arange(channels, device=rows[0].device) if c is None else c
                       for c in chans])
    return rows[0].new_zeros(channels).index_add(0, index, torch.cat(rows))


def group_norms(root: nn.Module, slices: list[Slice], channels: int) -> torch.Tensor:
    """||G_i|| of every channel: sqrt(sum of squares over its slices + 1e-12), differentiable."""
    return (channel_sums(root, slices, channels, power=2) + 1e-12).sqrt()


def _row_sums(p: torch.Tensor, dim: int, power: int) -> torch.Tensor:
    """Sum of |p|**power over every dim but `dim`, by one fused norm (no copy of `p`)."""
    others = [i for i in range(p.dim()) if i != dim]
    if not others:
        return p.square() if power == 2 else p.abs()
    r = torch.linalg.vector_norm(p, ord=power, dim=others)
    return r.square() if power == 2 else r


def catalysts(gm: nn.Module) -> Iterator[tuple[str, Catalyst]]:
    for name, module in gm.named_modules():
        if isinstance(module, Catalyst):
            yield name, module


def catalyst_penalty(gm: nn.Module, *,
                     watch: Mapping[str, Callable[[torch.Tensor], None]] | None = None) -> torch.Tensor:
    """||DW||_{2,1}: the sum over groups and channels of |D_i| ||G_i||, differentiable.

    Computed for all groups at once (one norm per matrix, one square of every vector, one
    scatter into every group's channels): it runs every training step, and per-group sums
    cost a CIFAR ResNet-56 about as much in op dispatch as in arithmetic.

    `watch` maps matrix parameter names to a hook that receives, at backward, the penalty's own
    gradient on that parameter (apart from the task loss's; see `CatalystPruner`'s angular
    step).
    """
    found = [m for _, m in catalysts(gm)]
    if not found:
        raise InputError("the model holds no catalyst: build it with fxprune.insert_catalysts")
    device = found[0].d.device
    key = (tuple(map(id, found)), device)
    cached = gm.__dict__.get("_fxprune_penalty")
    if cached is None or cached[0] != key:
        cached = gm.__dict__["_fxprune_penalty"] = (key, _penalty_plan(gm, found, device))
    matrices, vectors, index = cached[1]
    rows = []
    hooked = watch is not None and torch.is_grad_enabled()
    for param, dim, positions in matrices:
        p = gm.get_parameter(param)
        if hooked and param in watch and p.requires_grad:
            p = p.view_as(p)  # the penalty's own read of p: its hook sees the penalty's gradient
            p.register_hook(watch[param])
        r = _row_sums(p, dim, 2)
        rows.append(r if positions is None else r[positions])
    if vectors:
        flat = [gm.get_parameter(param) for param, _ in vectors]
        flat = [p if positions is None else p[positions] for p, (_, positions) in zip(flat, vectors)]
        rows.append(torch.cat(flat).square())
    d = torch.cat([m.d for m in found])
    sums = d.new_zeros(d.numel()).index_add(0, index, torch.cat(rows))
    return (d.abs() * (sums + 1e-12).sqrt()).sum()


def _penalty_plan(gm: nn.Module, found: list[Catalyst],
                  device: torch.device) -> tuple[list, list, torch.Tensor]:
    """Where each summed row of `catalyst_penalty` goes: matrices reduced over all but `dim`,
    then the vectors (norm scales and shifts, biases) in one piece; `index` maps rows to
    channels of the concatenated D."""
    matrices, vectors, matrix_index, vector_index = [], [], [], []
    offset = 0
    for m in found:
        width = m.d.numel()
        for param, dim, positions, chans in m.slices():
            target = (torch.arange(width, device=device) if chans is None else chans) + offset
            if gm.get_parameter(param).dim() > 1:
                matrices.append((param, dim, positions))
                matrix_index.append(target)
            else:
                vectors.append((param, positions))
                vector_index.append(target)
        offset += width
    return matrices, vectors, torch.cat(matrix_index + vector_index)


@dataclass(frozen=True)
class Invariant:
    """A producer weight whose output rows only a BatchNorm with running statistics and a scale
    reads: in training mode the function does not change with the scale of any one row, and in
    eval mode a row scaled by k is undone exactly by the norm's tensors (`rescale_rows`).
    Each field is a parameter or buffer name of the graph module."""

    weight: str
    dim: int  # the weight's output-channel dim
    bias: str | None  # the producer's bias, scaled with its row
    mean: str
    var: str
    scale: str
    eps: float


def scale_invariant(gm: torch.fx.GraphModule) -> list[Invariant]:
    """The producer weights whose output only a BatchNorm reads (a catalyst reading it too),
    where that norm keeps running statistics and has a scale, as a module or as
    `F.batch_norm` on the model's own tensors. Modules called more than once, functional
    producers and norms without running statistics (InstanceNorm) are left out."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        module = modules[node.target]
        entry = ops.lookup(node, module)
        if entry is None or entry.produces is None or "weight" not in entry.out_params:
            continue
        readers = [u for u in node.users
                   if not (u.op == "call_module" and isinstance(modules.get(u.target), Catalyst))]
        if len(readers) != 1 or readers[0].args[:1] != (node,):
            continue
        tensors = _norm_tensors(modules, readers[0])
        if tensors is not None:
            bias = f"{node.target}.bias" if getattr(module, "bias", None) is not None else None
            found.append(Invariant(f"{node.target}.weight", entry.out_params["weight"], bias,
                                   *tensors))
    return found


def _norm_tensors(modules: dict[str, nn.Module],
                  node: torch.fx.Node) -> tuple[str, str, str, float] | None:
    """(running mean, running var, scale, eps) of a per-channel norm with running statistics
    and a scale, by name; None for anything else."""
    module = modules.get(node.target) if node.op == "call_module" else None
    entry = ops.lookup(node, module) if node.op in ("call_module", "call_function") else None
    if entry is None or not (entry.norm and entry.catalyst_after):
        return None
    if module is not None:
        if getattr(module, "running_var", None) is None or getattr(module, "weight", None) is None:
            return None
        return (f"{node.target}.running_mean", f"{node.target}.running_var",
                f"{node.target}.weight", float(module.eps))
    args = _arguments(node)
    names = [args.get(k) for k in ("running_mean", "running_var", "weight")]
    if not all(isinstance(n, torch.fx.Node) and n.op == "get_attr" for n in names):
        return None
    eps = args.get("eps", 1e-5)
    return (*(n.target for n in names), float(eps)) if isinstance(eps, float) else None


def rescale_rows(gm: nn.Module, rows: Sequence[Invariant], norms: Mapping[str, float]) -> None:
    """Scale every row of each weight in `rows` to the norm `norms[weight]` (rows of norm zero
    stay), with its bias, and undo it in its BatchNorm: running mean times k, running var
    times k^2, and the scale times sqrt(k^2 var + eps) / (k sqrt(var + eps)), so the function
    in eval mode does not change."""
    with torch.no_grad():
        for inv in rows:
            w = gm.get_parameter(inv.weight)
            dims = [i for i in range(w.dim()) if i != inv.dim % w.dim()]
            now = torch.linalg.vector_norm(w.double(), dim=dims)
            k = torch.where(now > 1e-12 * norms[inv.weight], norms[inv.weight] / now,
                            torch.ones_like(now))
            shape = [-1 if i == inv.dim % w.dim() else 1 for i in range(w.dim())]
            w.mul_(k.view(shape).to(w.dtype))
            if inv.bias is not None:
                gm.get_parameter(inv.bias).mul_(k.to(w.dtype))
            mean, var = gm.get_buffer(inv.mean), gm.get_buffer(inv.var)
            scale = gm.get_parameter(inv.scale)
            v = var.double()
            scale.mul_(((k.square() * v + inv.eps).sqrt() / (k * (v + inv.eps).sqrt())).to(scale.dtype))
            mean.mul_(k.to(mean.dtype))
            var.mul_(k.square().to(var.dtype))


def group_slices(gm: nn.Module, group: ChannelGroup, target: str) -> list[Slice]:
    """The parameter slices that make G for `group`: "group" (every trainable slice holding
    the channels: producer rows, biases, norm scale and shift), "full" (those and the
    consumers' input columns that read the channels), "bn" (norm scale and shift), or
    "bn-scale" (norm scale only, network slimming's)."""
    return [(src.param, src.dim, pos, chan) for src, pos, chan in _sources(gm, group, target)]


def _sources(gm: torch.fx.GraphModule, group: ChannelGroup, target: str) -> list:
    params = dict(gm.named_parameters())
    nodes = {n.name: n for n in gm.graph.nodes}
    out = []
    for m in group.params:
        if m.role == "in" and target != "full" or m.param not in params:
            continue
        if target in ("bn", "bn-scale"):
            role = _norm_argument(gm, nodes, m)
            if role is None or target == "bn-scale" and role != "weight":
                continue
        param = params[m.param]
        positions = torch.tensor(m.positions, dtype=torch.long, device=param.device)
        channels = torch.tensor(m.channels, dtype=torch.long, device=param.device)
        out.append((Source(m.param, m.dim), unless_identity(positions, param.shape[m.dim]),
                    unless_identity(channels, group.channels)))
    return out


def _norm_argument(gm: torch.fx.GraphModule, nodes: dict[str, torch.fx.Node],
                   member: Member) -> str | None:
    """The name under which a norm layer reads this parameter ("weight", "bias", ...), or None
    where no norm reads it: a norm module's own attribute, or an argument of a functional norm
    (timm's BatchNormAct2d, a hand-written ``F.batch_norm(x, m, v, self.scale, self.shift)``)."""
    if member.role != "bare":
        owner, _, name = member.param.rpartition(".")
        entry = ops.lookup_module(gm.get_submodule(owner)) if owner else None
        return name if entry is not None and entry.norm else None
    node = nodes.get(member.node)
    for user in node.users if node is not None else ():
        entry = ops.lookup(user, None) if user.op == "call_function" else None
        if entry is None or not entry.norm:
            continue
        for name, value in _arguments(user).items():
            if value is node:
                return name
    return None


def _arguments(node: torch.fx.Node) -> Mapping[str, object]:
    """A function call's arguments by parameter name; empty for a builtin without a Python
    signature."""
    try:
        return inspect.signature(node.target).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):
        return {}


def _sites(gm: torch.fx.GraphModule, group: ChannelGroup) -> list[tuple[torch.fx.Node, object]]:
    """The nodes that make the group's channels (the op table's ``produces``: a conv, linear or
    embedding, as a module or a functional op), with their output tensor member."""
    nodes = {n.name: n for n in gm.graph.nodes}
    sites = []
    for m in group.members:
        node = nodes.get(m.node)
        if (m.param is not None or m.output is not None or node is None
                or node.op not in ("call_module", "call_function")):
            continue
        entry = ops.lookup(node, gm.get_submodule(node.target) if node.op == "call_module" else None)
        if entry is not None and entry.produces is not None:
            if m.dim == entry.produces % len(node.meta["tensor_meta"].shape):
                sites.append((node, m))
    return sites


def _sigma_end(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node:
    """The last of the channel-wise ops that follow `node` one after the other."""
    while len(node.users) == 1:
        (user,) = node.users
        module = gm.get_submodule(user.target) if user.op == "call_module" else None
        entry = ops.lookup(user, module)
        if entry is None or not entry.catalyst_after or user.args[:1] != (node,):
            break
        node = user
    return node


def insert_catalysts(
    gm: torch.fx.GraphModule, graph: ChannelGraph, *,
    c: float | Mapping[int, float | Sequence[float]] = 1.0,
    target: str = "group", loss_gradient: bool = False, inexact: bool = False,
) -> torch.fx.GraphModule:
    """A copy of `gm` with a catalyst after each producer of each prunable group's channels.
    `c` is c0, D's starting ratio to G: one for all groups, or per group id one or one per
    channel (a group the mapping leaves out starts at 1, undecided; a latency target starts the
    groups whose channels cost more further toward pruning; a plan's channels can start past 1
    and the rest well below it).
    `target` says what G is (see `group_slices`).
    With ``loss_gradient=True``, D also receives the task loss's gradient sum(dL/dpsi * u) (the
    paper's method as written); by default it moves by the regulariser alone (see above).

    Groups that are not exact (zeroing a channel is not removing it: a LayerNorm's statistics
    span the channels) get no catalyst unless ``inexact=True``: removing their channels is
    not lossless however small G gets, which is Catalyst's promise (a small ViT's hidden size
    cost 37 points at the pruning step in the convergence study)."""
    if target not in TARGETS:
        raise InputError(f"target must be one of {TARGETS}, got {target!r}")
    per_group = dict(c) if isinstance(c, Mapping) else None
    given = per_group.values() if per_group is not None else [c]
    if any(bool((torch.as_tensor(v) <= 0).any()) for v in given):
        raise InputError(f"c must be positive, got {c}")
    extended = copy.deepcopy(gm)
    for group in graph.prunable:
        if not (group.exact or inexact):
            log.info("catalyst: group %d is not exact (%s): no catalyst", group.id,
                     group.inexact_reason)
            continue
        sources, sites = _sources(extended, group, target), _sites(extended, group)
        if not sources or not sites:
            continue
        name = f"catalyst_{group.id}"
        device = extended.get_parameter(sources[0][0].param).device
        site_specs = [(unless_identity(torch.tensor(m.channels, dtype=torch.long, device=device),
                                       group.channels), m.dim) for _, m in sites]
        ends = [_sigma_end(extended, producer) for producer, _ in sites]
        catalyst = Catalyst(group.id, torch.zeros(group.channels, device=device), site_specs,
                            sources, [_never_edited(extended, end) for end in ends],
                            loss_gradient=loss_gradient)
        with torch.no_grad():
            c0 = c if per_group is None else per_group.get(group.id, 1.0)
            magnitude = catalyst.magnitude(extended)
            catalyst.d.copy_(torch.as_tensor(c0, dtype=magnitude.dtype, device=device) * magnitude)
        extended.add_submodule(name, catalyst)
        for k, ((producer, _), end) in enumerate(zip(sites, ends)):
            with extended.graph.inserting_after(end):
                node = extended.graph.create_node(
                    "call_module", name, (end, producer, k), name=name if k == 0 else f"{name}_site{k}")
            end.replace_all_uses_with(node, delete_user_cb=lambda user, new=node: user is not new)
            node.meta = dict(end.meta)
    extended.graph.lint()
    with_code(extended)
    return extended


def _never_edited(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether every user of `node` only reads it (the op table's ``fresh``), so that a catalyst
    after it may return a view. Anything else (in-place ops, views, the model output) gets a
    copy."""
    for user in node.users:
        module = gm.get_submodule(user.target) if user.op == "call_module" else None
        entry = ops.lookup(user, module) if user.op in ("call_module", "call_function") else None
        if entry is None or not entry.fresh or getattr(module, "inplace", False):
            return False
    return True


def strip_catalysts(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of `gm` without catalysts: each catalyst node is replaced by sigma(u), which is
    what it computes, so the function does not change."""
    plain = copy.deepcopy(gm)
    for node in list(plain.graph.nodes):
        if node.op == "call_module" and isinstance(plain.get_submodule(node.target), Catalyst):
            node.replace_all_uses_with(node.args[0])
            plain.graph.erase_node(node)
    for name, _ in list(catalysts(plain)):
        plain.delete_submodule(name)
    plain.graph.lint()
    with_code(plain)
    return plain
