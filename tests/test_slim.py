"""Surgery: the slim graph equals the zeroed original, on every tiny model."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_equivalent, group_with
from models import MODELS, NO_EXACT_GROUP, NO_PRUNABLE_GROUP, build

import fxprune
from fxprune.baselines import Scorer
from fxprune.passes.plan import piece_keepers, random_request


def _prepare(name: str) -> tuple[torch.fx.GraphModule, fxprune.ChannelGraph, torch.Tensor]:
    model, x = build(name)
    gm = fxprune.trace(model, x)
    return gm, fxprune.analyze(gm), x


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(set(MODELS) - NO_EXACT_GROUP))
def test_slim_equals_zeroed_on_exact_groups(name: str, seed: int) -> None:
    gm, graph, x = _prepare(name)
    remove = random_request(graph, 0.4, seed, exact_only=True)
    # every exact group loses channels, so the comparison below is not a model against itself
    assert set(remove) == {g.id for g in graph.prunable if g.exact} and all(remove.values())
    slim = fxprune.prune_channels(gm, graph, remove)
    zeroed = fxprune.zero_channels(gm, graph, remove)
    assert_equivalent(slim, zeroed, x)
    assert _params(slim) < _params(gm)
    with torch.no_grad():
        assert not torch.allclose(zeroed(x), gm(x))  # the removed channels did matter


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_prunable_group_can_shrink_and_the_model_still_runs(name: str) -> None:
    gm, graph, x = _prepare(name)
    with torch.no_grad():
        before = gm(x)
    remove = random_request(graph, 0.5, 0)
    assert set(remove) == {g.id for g in graph.prunable} and all(remove.values())
    assert bool(remove) == (name not in NO_PRUNABLE_GROUP)
    slim = fxprune.prune_channels(gm, graph, remove)
    with torch.no_grad():
        out = slim(x)
        assert torch.equal(gm(x), before)  # the input graph module is left as it was
    assert out.shape == before.shape
    assert torch.isfinite(out).all()
    if name in NO_PRUNABLE_GROUP:
        assert _params(slim) == _params(gm)
    else:
        assert _params(slim) < _params(gm)


@pytest.mark.parametrize("name", sorted(set(MODELS) - NO_PRUNABLE_GROUP))
def test_every_prunable_group_prunes_on_its_own(name: str) -> None:
    """What `analyze` calls prunable can be pruned alone, by one channel (its last that is not
    the only channel of a piece: `piece_keepers`) or all but one (where a split does not then
    empty a piece: the plan refuses that by name), and where exact the slim model is the
    zeroed one (other groups' sizes must not go stale)."""
    gm, graph, x = _prepare(name)
    with torch.no_grad():
        before = gm(x)
    for g in graph.prunable:
        keep = piece_keepers(g)
        last = max(c for c in range(g.channels) if c not in keep or len(keep) == g.channels)
        for channels in ([last], list(range(1, g.channels))):
            remove = {g.id: channels}
            try:
                slim = fxprune.prune_channels(gm, graph, remove)
            except fxprune.PruneError as exc:
                assert len(channels) > 1 and "keep at least one there" in str(exc)
                continue
            if g.exact:
                assert_equivalent(slim, fxprune.zero_channels(gm, graph, remove), x)
            with torch.no_grad():
                out = slim(x)
            assert out.shape == before.shape and torch.isfinite(out).all()


def test_slim_modules_report_their_new_sizes() -> None:
    gm, graph, x = _prepare("grouped_conv")
    g = group_with(graph, "g.weight", 0)  # 3 units of 4 conv groups, depthwise after it
    slim = fxprune.prune_channels(gm, graph, {g.id: [1]})
    assert (slim.g.out_channels, slim.g.groups) == (8, 4)
    assert (slim.dw.in_channels, slim.dw.out_channels, slim.dw.groups) == (8, 16, 8)
    assert slim.one.in_channels == 16


def test_literal_sizes_in_the_graph_are_rewritten() -> None:
    gm, graph, x = _prepare("literals")
    g = group_with(graph, "conv.weight", 0)
    slim = fxprune.prune_channels(gm, graph, {g.id: [0, 4, 7]})
    code = slim.code
    assert "split(relu, [2, 3], 1)" in code  # [3, 5] minus channel 0 (first), 4 and 7 (second)
    assert "relu.split([3, 2], 1)" in code  # chunk(2): halves 0..3 and 4..7 become uneven
    assert "view(2, 5, 16)" in code and "expand(2, 5, 16)" in code
    assert "slice(0, 5, None)" in code  # y[:, 1:7] keeps 1, 2, 3, 5, 6: now places 0..4
    assert_equivalent(slim, fxprune.zero_channels(gm, graph, {g.id: [0, 4, 7]}), x)


def test_attention_keeps_its_heads_uniform() -> None:
    gm, graph, x = _prepare("tokens")
    g = group_with(graph, "attn.in_proj_weight", 1)
    slim = fxprune.prune_channels(gm, graph, {g.id: [1]})  # one head dim, in both heads
    attn = slim.get_submodule("attn")
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (6, 2, 3)
    assert slim.emb.embedding_dim == 6 and slim.cls.shape == (1, 1, 6)
    with torch.no_grad():
        assert slim(x).shape == gm(x).shape


@pytest.mark.parametrize(
    ("remove", "match"),
    [
        ("unknown", "there is no group 99"),
        ("frozen", "is frozen and cannot be pruned"),
        ("all", "at least one must stay"),
        ("range", "has channels 0..7"),
        ("round", "not a multiple of round_to=4"),
    ],
)
def test_requests_that_break_a_constraint_name_it(remove: object, match: str) -> None:
    gm, graph, _ = _prepare("residual")
    stem = group_with(graph, "stem.0.weight", 0).id
    fc = group_with(graph, "fc.weight", 0).id
    request = {"unknown": {99: [0]}, "frozen": {fc: [0]}, "all": {stem: range(8)},
               "range": {stem: [8]}, "round": {stem: [0, 1, 2]}}[remove]
    with pytest.raises(fxprune.PruneError, match=match):
        fxprune.prune_channels(gm, graph, request, round_to=4)


def test_round_to_is_honoured() -> None:
    gm, graph, x = _prepare("residual")
    stem = group_with(graph, "stem.0.weight", 0).id
    slim = fxprune.prune_channels(gm, graph, {stem: [1, 2, 3, 5]}, round_to=4)
    assert slim.get_submodule("stem.0").out_channels == 4
    assert_equivalent(slim, fxprune.zero_channels(gm, graph, {stem: [1, 2, 3, 5]}), x)


def test_slim_graph_carries_its_new_shapes() -> None:
    gm, graph, _ = _prepare("residual")
    stem = group_with(graph, "stem.0.weight", 0).id
    slim = fxprune.prune_channels(gm, graph, {stem: [0, 1]})
    add = next(n for n in slim.graph.nodes if n.name == "add")
    assert tuple(add.meta["tensor_meta"].shape) == (2, 6, 6, 6)
    again = fxprune.analyze(slim)  # a slim model can be analysed and pruned again
    assert group_with(again, "stem.0.weight", 0).channels == 6


def test_a_concat_input_cannot_be_emptied() -> None:
    from test_properties import Composed

    model = Composed(["concat", "residual"], [2, 2, 2, 2, 2]).eval()
    x = torch.randn(2, 3, 4, 4)
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    g = group_with(graph, "blocks.0.a.weight", 0)  # a (2) and b (3) joined by the residual add
    with pytest.raises(fxprune.PruneError, match="removes every channel of blocks.0.a.weight"):
        fxprune.prune_channels(gm, graph, {g.id: [0, 1]})


def test_slim_model_saves_and_loads_without_its_classes(tmp_path) -> None:  # noqa: ANN001
    gm, graph, x = _prepare("squeeze_excite")
    remove = random_request(graph, 0.5, 0)
    slim = fxprune.prune_channels(gm, graph, remove)
    path = fxprune.save(slim, x, tmp_path / "slim.pt2")
    loaded = fxprune.load(path)
    assert_equivalent(loaded, slim, x)
    assert_equivalent(loaded, slim, torch.cat([x, x, x]))  # another batch size
    assert fxprune.cost(loaded, x).params == fxprune.cost(slim, x).params


def test_a_one_channel_piece_is_kept_by_every_way_of_choosing() -> None:
    """FocalNet's gates are one-channel slices of the conv that also makes the query and the
    context: removing one empties its slice, so the plan refuses it by name, and the
    magnitude scorer and Catalyst's decisions keep it even where it scores lowest."""
    gm, graph, x = _prepare("gated_split")
    g = group_with(graph, "f.weight", 0)
    assert piece_keepers(g) >= {16, 17}
    with pytest.raises(fxprune.PruneError, match="keep at least one there"):
        fxprune.prune_channels(gm, graph, {g.id: [16]})
    with torch.no_grad():
        gm.f.weight[16:].mul_(1e-3)  # the gates score lowest
    remove = Scorer(gm, graph, "magnitude").lowest(gm, 0.5)
    assert remove[g.id] and not {16, 17} & set(remove[g.id])
    fxprune.prune_channels(gm, graph, remove)
    model, _ = build("gated_split")
    pruner = fxprune.CatalystPruner(model, x, c=2.0)  # every channel starts past c = 1
    remove = pruner.decisions()
    g = group_with(pruner.graph, "f.weight", 0)
    assert remove[g.id] and not {16, 17} & set(remove[g.id])
    fxprune.prune_channels(pruner.base, pruner.graph, remove)
