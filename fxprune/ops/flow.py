"""The channel algebra the dependency analysis is written in.

A *channel atom* is one channel of one producer (a conv's output row, a bare parameter's index).
`Atoms` keeps two union-finds over atoms: ``chan`` merges atoms that must be removed together
(the same channel seen from coupled producers), ``group`` merges atoms that live in the same
index space (made by one producer, or coupled with it). A group of the result is a ``group``
component; its channels are the ``chan`` components inside it.

A `Flow` says which dims of a tensor carry channels and the atom behind each index along them.
Dims that carry no channel (batch, space, sequence) are simply absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Flow:
    """Channel atoms along the tracked dims of one tensor value (dims are non-negative)."""

    dims: Mapping[int, np.ndarray] = field(default_factory=dict)

    def atoms(self) -> np.ndarray:
        if not self.dims:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(list(self.dims.values()))


UNTRACKED = Flow()


@dataclass(frozen=True)
class SizeOf:
    """An int computed from tensor sizes: which (node, dim) sizes it was read from, and whether
    it is one of them exactly (x.shape[1]) or derived by arithmetic (x.shape[1] // 2)."""

    sources: frozenset[tuple[object, int]]
    exact: bool = True


class _UnionFind:
    """Union-find over int ids, vectorised with numpy (parents always point to smaller ids,
    so the oldest atom is the root and channel order follows graph order)."""

    def __init__(self) -> None:
        self._parent = np.empty(1024, dtype=np.int64)
        self.size = 0

    def extend(self, parents: np.ndarray) -> None:
        need = self.size + len(parents)
        if need > len(self._parent):
            grown = np.empty(max(need, 2 * len(self._parent)), dtype=np.int64)
            grown[: self.size] = self._parent[: self.size]
            self._parent = grown
        self._parent[self.size:need] = parents
        self.size = need

    def roots(self, ids: np.ndarray) -> np.ndarray:
        parent = self._parent
        r = parent[ids]
        while True:
            up = parent[r]
            if (up == r).all():  # np.array_equal checks more, and costs twice as much
                parent[ids] = r  # path compression
                return r
            r = up

    def all_roots(self) -> np.ndarray:
        parent = self._parent[: self.size].copy()
        while True:
            up = parent[parent]
            if (up == parent).all():
                return parent
            parent = up

    def union(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Merge a[i] with b[i] for all i; returns where they were in different sets."""
        ra, rb = self.roots(a), self.roots(b)
        merged = ra != rb
        while True:
            differ = ra != rb
            if not differ.any():
                return merged
            lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
            self._parent[hi] = lo  # where one root gets several writes, the next round fixes it
            ra, rb = self.roots(a), self.roots(b)


class Atoms:
    """Channel atoms, their couplings, and the reasons that freeze them or make them inexact."""

    def __init__(self) -> None:
        self.chan = _UnionFind()
        self.group = _UnionFind()
        self.frozen: dict[int, str] = {}
        self.inexact: dict[int, str] = {}
        self.joins: list[tuple[int, str]] = []  # (atom, node name) where two spaces were coupled
        self.site = ""  # the node being analysed: where a union couples, for `joins`
        self._discarded = np.zeros(1024, dtype=bool)  # by atom id, grown with the atoms
        self._blocks: dict[int, int] = {}  # first atom -> size, of each `fresh` block
        self._released: dict[int, int] = {}  # end -> first atom, of blocks given back

    def __len__(self) -> int:
        return self.chan.size

    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        self.chan.extend(ids)
        self.group.extend(np.full(n, ids[0] if n else 0, dtype=np.int64))
        if n:
            self._blocks[int(ids[0])] = n
        return ids

    def release(self, ids: np.ndarray) -> None:
        """Give back a block that `fresh` made and that nothing holds any more (a parameter's
        own atoms once it adopted an op's channels): discarded, and where it and every block
        after it are given back, removed, so that the next atoms take its ids. timm's
        EfficientNet-B0 gives back 84k atoms, four per channel of each norm, which would
        otherwise make up four fifths of what the result's groups are sorted from."""
        self.discard(ids)
        if not len(ids) or self._blocks.get(int(ids[0])) != len(ids):
            return  # not one whole block: it only stays discarded
        self._released[int(ids[0]) + len(ids)] = int(ids[0])
        end = len(self)
        while end in self._released:  # the newest atoms are all given back: drop them
            start = self._released.pop(end)
            del self._blocks[start]
            self._discarded[start:end] = False
            self.chan.size = self.group.size = end = start

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple atom a[i] with atom b[i] for every i (arrays broadcast)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:
            a, b = np.broadcast_arrays(a, b)
        a, b = a.ravel(), b.ravel()
        if len(a) == 0 or (a == b).all():
            return
        self.chan.union(a, b)
        merged = self.group.union(a, b)
        if merged.any():
            self.joins.append((int(a[merged][0]), self.site))

    def unite(self, ids: np.ndarray, axis: int) -> np.ndarray:
        """Couple the atoms of `ids` along `axis` (they become one channel); returns ids[..0..]."""
        ids = np.moveaxis(np.asarray(ids), axis, 0)
        if len(ids) > 1:
            first = np.broadcast_to(ids[0], ids[1:].shape)
            self.union(first, ids[1:])
        return ids[0]

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for a in np.unique(np.asarray(ids)).tolist():
            self.frozen.setdefault(a, reason)

    def discard(self, ids: np.ndarray) -> None:
        """These atoms were never channels (a conv kernel's spatial dims): a group made only of
        discarded atoms is not a group."""
        if len(self._discarded) < len(self):
            grown = np.zeros(max(len(self), 2 * len(self._discarded)), dtype=bool)
            grown[: len(self._discarded)] = self._discarded
            self._discarded = grown
        self._discarded[np.asarray(ids, dtype=np.int64).ravel()] = True

    def discarded(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of `ids` was discarded (a mask, not a set: parameters discard
        thousands of atoms each, and a set of Python ints costs ~30 ns an atom)."""
        ids = np.asarray(ids, dtype=np.int64)
        mask = np.zeros(ids.shape, dtype=bool)
        inside = ids < len(self._discarded)
        mask[inside] = self._discarded[ids[inside]]
        return mask

    def live(self) -> np.ndarray:
        """A mask over all atoms: True where the atom was not discarded."""
        mask = np.ones(len(self), dtype=bool)
        held = min(len(self), len(self._discarded))
        mask[:held] = ~self._discarded[:held]
        return mask

    def mark_inexact(self, ids: np.ndarray, reason: str) -> None:
        for a in np.unique(np.asarray(ids)).tolist():
            self.inexact.setdefault(a, reason)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return self.chan.roots(ids.ravel()).reshape(ids.shape)


def fit(ids: np.ndarray, size: int) -> np.ndarray:
    """Atoms for a parameter dim of `size` when the tensor dim repeats them (grouped conv)."""
    if len(ids) == size:
        return ids
    return ids.reshape(-1, size)[0]


def elementwise(
    atoms: Atoms,
    inputs: Sequence[tuple[Flow, Sequence[int]]],
    out_shape: Sequence[int],
    why: str,
) -> Flow:
    """Broadcasting elementwise op: channels at the same index of every operand are coupled.

    An operand takes part in a dim when its size there equals the output's (size-1 operands are
    broadcast). Where one taking part is tracked and another is not, the tracked channels meet
    something surgery cannot shrink: they are frozen.
    """
    ndim = len(out_shape)
    aligned = []
    for flow, shape in inputs:
        pad = ndim - len(shape)
        aligned.append(({d + pad: ids for d, ids in flow.dims.items()}, [1] * pad + list(shape)))
    out: dict[int, np.ndarray] = {}
    for d in range(ndim):
        taking_part = [(dims, shape) for dims, shape in aligned if shape[d] == out_shape[d]]
        tracked = [dims[d] for dims, _ in taking_part if d in dims]
        if not tracked:
            continue
        if len(tracked) < len(taking_part):
            for ids in tracked:
                atoms.freeze(ids, f"combined with a tensor whose dim {d} carries no channels at {why}")
            continue
        for ids in tracked[1:]:
            atoms.union(tracked[0], ids)
        out[d] = tracked[0]
    # Operands broadcast along a tracked output dim (size 1 there) keep their own channels,
    # which are coupled to all of the output's: freeze rather than guess.
    for dims, shape in aligned:
        for d, ids in dims.items():
            if d not in out and shape[d] != out_shape[d]:
                atoms.freeze(ids, f"broadcast against a larger dim at {why}")
    return Flow(out)


def resize(atoms: Atoms, flow: Flow, in_shape: Sequence[int], out_shape: Sequence[int],
           why: str) -> Flow:
    """Ops that act on each channel independently (pooling, interpolation, padding, expand):
    dims keep their channels where the size is unchanged; a tracked dim whose size changes is
    frozen. Shapes are right-aligned (expand may add leading dims)."""
    pad = len(out_shape) - len(in_shape)
    out = {}
    for d, ids in flow.dims.items():
        if in_shape[d] == out_shape[d + pad]:
            out[d + pad] = ids
        else:
            atoms.freeze(ids, f"dim {d} changes size from {in_shape[d]} to {out_shape[d + pad]} at {why}")
    return Flow(out)


def permute(flow: Flow, order: Sequence[int]) -> Flow:
    """Output dim i is input dim order[i]."""
    where = {src: i for i, src in enumerate(order)}
    return Flow({where[d]: ids for d, ids in flow.dims.items()})


def across(atoms: Atoms, flow: Flow, ndim: int, dims: Iterable[int] | None, why: str,
           over_channels: str = "inexact", kind: str = "reduces") -> set[int]:
    """An op that combines values across `dims` (None: all): reductions, softmax, cumsum.
    Returns the dims. What it does to the channels of a channel dim among them, by
    `over_channels`: ``"exact"`` where a zeroed channel adds nothing (sum, p-norms), so
    removing it changes nothing either; ``"inexact"`` where the result still follows the
    channels but a zeroed one would have counted (mean, var, max, softmax: removal is not
    zeroing); ``"freeze"`` where channels lose their identity (values moved along the dim, an
    index into it)."""
    across = set(range(ndim)) if dims is None else {d % ndim for d in dims}
    for d in across & set(flow.dims):
        if over_channels == "freeze":
            atoms.freeze(flow.dims[d], f"{kind} over its channel dim {d} at {why}")
        elif over_channels == "inexact":
            atoms.mark_inexact(flow.dims[d], f"{kind} over its channel dim {d} at {why}, where a "
                                             "zeroed channel still counts")
    return across


def reduce(atoms: Atoms, flow: Flow, ndim: int, dims: Iterable[int] | None, keepdim: bool,
           why: str, over_channels: str = "inexact", kind: str = "reduces") -> Flow:
    """Reductions (mean, sum, max, ...) over `dims` (None: all); see `across`."""
    reduced = across(atoms, flow, ndim, dims, why, over_channels, kind)
    if keepdim:
        return Flow({d: ids for d, ids in flow.dims.items() if d not in reduced})
    kept = [d for d in range(ndim) if d not in reduced]
    return Flow({kept.index(d): ids for d, ids in flow.dims.items() if d not in reduced})


def dim_groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair contiguous runs of input and output dims with equal products (size-1 dims alone)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_shape) or j < len(out_shape):
        if i < len(in_shape) and in_shape[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(out_shape) and out_shape[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        ins, outs = [i], [j]
        p_in, p_out = in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while p_in != p_out:
            if p_in < p_out:
                p_in *= in_shape[i]
                ins.append(i)
                i += 1
            else:
                p_out *= out_shape[j]
                outs.append(j)
                j += 1
        groups.append((ins, outs))
    return groups


def reshape(atoms: Atoms, flow: Flow, in_shape: Sequence[int], out_shape: Sequence[int],
            why: str, prefer: Sequence[int | None] = ()) -> Flow:
    """view / reshape / flatten / unflatten / squeeze / unsqueeze.

    Merging a channel dim with others repeats each channel's atom (flatten before a linear);
    dims that only repeat one value (a broadcast, as in grouped-query attention's
    ``expand(...).reshape(...)``) add nothing. Splitting a channel dim into several keeps the
    channels along one of them and couples them along the others, so the view stays
    rectangular after surgery: along the first output dim in `prefer` that is one of them
    (whole heads, or the C of a linear's output viewed as (C, H, W) before a conv), else along
    the innermost (the same index in every head or shuffle group).
    """
    out: dict[int, np.ndarray] = {}
    for ins, outs in dim_groups(list(in_shape), list(out_shape)):
        tracked = [d for d in ins if d in flow.dims]
        if not tracked:
            continue
        real = [d for d in tracked if not atoms.discarded(flow.dims[d]).all()]
        if len(tracked) > 1 and len(real) == 1 and outs:
            tracked = real
        if not outs or len(tracked) > 1:
            for d in tracked:
                atoms.freeze(flow.dims[d], f"reshape merges or drops channel dims at {why}")
            continue
        (d,) = tracked
        sizes = [in_shape[k] for k in ins]
        grid = np.broadcast_to(
            flow.dims[d].reshape([s if k == d else 1 for k, s in zip(ins, sizes)]), sizes
        ).reshape([out_shape[k] for k in outs])
        roots = atoms.roots(grid).reshape(grid.shape)
        varying = [a for a in range(grid.ndim) if not (roots == roots.take([0], axis=a)).all()]
        if not varying:  # a single channel spread over several dims
            atoms.freeze(grid, f"every channel here is coupled into one (e.g. by repeated channel shuffles) at {why}")
            continue
        inner = next((outs.index(d) for d in prefer if d in outs and outs.index(d) in varying),
                     varying[-1])
        grid = np.moveaxis(grid, inner, -1).reshape(-1, grid.shape[inner])
        if len(varying) > 1:
            atoms.unite(grid, 0)
        out[outs[inner]] = grid[0]
    return Flow(out)


def sized_by(atoms: Atoms, out: Flow, dim: int, size: SizeOf, flows: Mapping[object, object],
             why: str) -> bool:
    """Output `dim` of a view/expand has a size read from other tensors at run time: after
    surgery it must still be the output's size.

    Read from channel dims only, it follows the output where every channel appears as often on
    one side as on the other (``x.shape[1]``) or the size is computed from channels of the
    output's own group (``c // heads``). Otherwise (another group's width, a dim without
    channels where the output has some, or both) the size cannot follow: returns True when
    surgery can write the new size as a literal (it came from channels alone, so it never varies
    with the input), and freezes the channels where it cannot (a size that mixes channels with
    spatial or batch sizes, or channels sized by a dim without channels).
    """
    out_ids = out.dims.get(dim)
    sources = []
    for src, d in size.sources:
        flow = flows.get(src)
        sources.append(flow.dims.get(d) if isinstance(flow, Flow) else None)
    if all(ids is None for ids in sources):
        if out_ids is not None:
            atoms.freeze(out_ids, f"a size read from a dim without channels shapes channels at {why}")
        return False
    if any(ids is None for ids in sources):
        for ids in [out_ids, *sources]:
            if ids is not None:
                atoms.freeze(ids, f"a size computed from channels and other sizes at {why}")
        return False
    if out_ids is None:
        return True

    def follows(src_ids: np.ndarray) -> bool:
        if size.exact:
            return _same_counts(atoms, out_ids, src_ids)
        return atoms.group.roots(out_ids[:1])[0] == atoms.group.roots(src_ids[:1])[0]

    return not all(follows(ids) for ids in sources)


def _same_counts(atoms: Atoms, a: np.ndarray, b: np.ndarray) -> bool:
    ra, ca = np.unique(atoms.roots(a), return_counts=True)
    rb, cb = np.unique(atoms.roots(b), return_counts=True)
    return np.array_equal(ra, rb) and np.array_equal(ca, cb)


def concat(atoms: Atoms, inputs: Sequence[tuple[Flow, Sequence[int]]], dim: int,
           out_shape: Sequence[int], why: str) -> Flow:
    """torch.cat: channels along `dim` are the inputs' in order; other dims are coupled."""
    along = [flow.dims.get(dim) for flow, _ in inputs]
    rest = elementwise(
        atoms,
        [(Flow({d: ids for d, ids in flow.dims.items() if d != dim}),
          [1 if d == dim else s for d, s in enumerate(shape)]) for flow, shape in inputs],
        [1 if d == dim else s for d, s in enumerate(out_shape)],
        why,
    )
    dims = dict(rest.dims)
    if any(ids is not None for ids in along):
        # A tensor whose dim carries no channels (the model's input: a U-Net that concatenates
        # the image with its features) keeps all of its own; frozen atoms hold its place, so
        # that the others' channels still prune.
        held = []
        for ids, (_, shape) in zip(along, inputs, strict=True):
            if ids is None and len(shape) != len(out_shape):
                continue  # torch.cat skips an empty 1-d tensor whatever the dim
            if ids is None:
                ids = atoms.fresh(shape[dim])
                atoms.freeze(ids, f"a tensor whose dim {dim} carries no channels, concatenated "
                                  f"at {why}")
            held.append(ids)
        dims[dim] = np.concatenate(held)
    return Flow(dims)


def pieces(flow: Flow, dim: int, sizes: Sequence[int]) -> tuple[Flow, ...]:
    """split / chunk along `dim`: each piece gets its slice of the channels."""
    out = []
    start = 0
    for size in sizes:
        dims = {}
        for d, ids in flow.dims.items():
            if d == dim:
                dims[d] = ids[start:start + size]
            else:
                dims[d] = ids
        out.append(Flow(dims))
        start += size
    return tuple(out)


def matmul(atoms: Atoms, a: tuple[Flow, Sequence[int]], b: tuple[Flow, Sequence[int]],
           out_shape: Sequence[int], why: str) -> Flow:
    """a @ b: the contracted dims are coupled; rows come from a, columns from b, batch dims
    broadcast like an elementwise op."""
    (fa, sa), (fb, sb) = a, b
    if len(sa) < 2 or len(sb) < 2:  # vector products are rare in vision models: stay safe
        for flow in (fa, fb):
            atoms.freeze(flow.atoms(), f"matrix-vector product at {why}")
        return UNTRACKED
    ka, kb = fa.dims.get(len(sa) - 1), fb.dims.get(len(sb) - 2)
    if ka is not None and kb is not None:
        atoms.union(ka, kb)
    elif ka is not None or kb is not None:
        atoms.freeze(ka if ka is not None else kb,
                     f"contracted with a dim that carries no channels at {why}")
    batch = elementwise(
        atoms,
        [(Flow({d: i for d, i in fa.dims.items() if d < len(sa) - 2}), list(sa[:-2])),
         (Flow({d: i for d, i in fb.dims.items() if d < len(sb) - 2}), list(sb[:-2]))],
        list(out_shape[:-2]), why,
    )
    n = len(out_shape)
    dims = dict(batch.dims)
    if len(sa) - 2 in fa.dims:
        dims[n - 2] = fa.dims[len(sa) - 2]
    if len(sb) - 1 in fb.dims:
        dims[n - 1] = fb.dims[len(sb) - 1]
    return Flow(dims)
