"""Tracing: leaf fallback for untraceable submodules, and clear errors for bad input."""

from __future__ import annotations

import logging
import operator

import pytest
import torch
import torch.nn.functional as F
from helpers import group_with, summary
from torch import nn

import fxprune
from fxprune.trace import propagate_shapes


class Gate(nn.Module):
    """Data-dependent control flow: symbolic tracing cannot follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Conv2d(3, 4, 1), Gate(), nn.Conv2d(4, 2, 1)
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gate(self.a(x)) + 0) + self.b(self.c(x))


class RootBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.mean() > 0:  # the model itself branches on data: nothing to make a leaf
            return y
        return -y


class Windows(nn.Module):
    """Branches and ints on sizes, as in MobileViT, EfficientViT and ConViT: pad to a multiple
    of the window only where needed, a grid side from the token count, a table built for it,
    assigned into and cached on the module."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.table = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if y.shape[-1] % 2:
            y = torch.nn.functional.pad(y, (0, 1, 0, 1))
        side = int((y.shape[-1] * y.shape[-2]) ** 0.5)
        if self.table.shape[0] != side:
            table = torch.zeros(side, 2)
            table[:, 1] = 1.0
            self.table = table
        return self.b(y) + self.table.sum()


@pytest.mark.parametrize("size", [4, 5])
def test_conditions_and_ints_on_sizes_are_taken_from_the_example(size: int) -> None:
    model = Windows()
    x = torch.randn(1, 3, size, size)
    gm = fxprune.trace(model, x)
    assert not any("fxprune.leaf" in n.meta for n in gm.graph.nodes)
    decided = gm.meta["fxprune.specialised"]
    assert [d.value for d in decided] == [size % 2, size + size % 2]  # padded?, the grid side
    assert all("test_trace.py" in d.where for d in decided)
    assert torch.equal(model.table, torch.zeros(1))  # the model's own state is left as it was
    torch.testing.assert_close(gm(x), Windows.forward(model, x))
    graph = fxprune.analyze(gm)
    assert group_with(graph, "a.weight", 0).prunable


class CachedTable(nn.Module):
    """ConViT's positional table: a buffer rebuilt where the token count changes, then
    expanded to the batch. Once the model has run, the buffer fits and forward expands it
    without rebuilding."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.register_buffer("table", torch.zeros(1, 1, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_batch, tokens, _ = x.shape
        if self.table.shape[1] != tokens:
            self.table = torch.ones(1, tokens, 3)
        return self.b(self.a(x + self.table.expand(n_batch, -1, -1)))


@pytest.mark.parametrize("ran", [False, True], ids=["fresh", "after-a-forward"])
def test_a_buffer_cached_by_forward_is_traced_through(ran: bool) -> None:
    model, x = CachedTable(), torch.randn(2, 5, 3)
    if ran:
        model(x)
    table = model.table.clone()
    gm = fxprune.trace(model, x)
    assert gm.meta["fxprune.capture"] == "symbolic"
    assert not any("fxprune.leaf" in n.meta for n in gm.graph.nodes)
    assert torch.equal(model.table, table)  # the model's own state is left as it was
    torch.testing.assert_close(gm(x), model(x))
    assert summary(fxprune.analyze(gm)) == {
        frozenset({"a.weight:0", "a.bias:0", "b.weight:1"}): (4, True, True),
        frozenset({"b.weight:0", "b.bias:0"}): (2, False, True)}


class RankChecks(nn.Module):
    """Checks of a rank, as timm's norm-act layers make (``_assert(x.ndim == 4, ...)``, in
    every layer of EfficientNet) and models branch on, after a traced op and after a leaf."""

    def __init__(self, gate: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
        self.gate = Gate() if gate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(self.a(x))
        torch._assert(y.ndim == 4, f"expected 4D input (got {y.ndim}D input)")
        if y.dim() == 4 and y.ndimension() > 2:
            y = y.relu()
        return self.b(y)


@pytest.mark.parametrize("gate", [False, True])
def test_ranks_are_taken_from_the_example_and_leave_no_node(gate: bool) -> None:
    model = RankChecks(gate)
    x = torch.randn(1, 3, 4, 4)
    gm = fxprune.trace(model, x)
    ops = [n.target for n in gm.graph.nodes if n.op in ("call_module", "call_method", "call_function")]
    assert ops == (["a", "gate", "relu", "b"] if gate else ["a", "relu", "b"])
    assert gm.meta["fxprune.specialised"] == ()  # every shape fixes the rank anyway
    torch.testing.assert_close(gm(x), model(x))
    graph = fxprune.analyze(gm)
    if gate:  # the leaf's output: its rank from the example's value there
        assert "submodule 'gate' made a leaf" in group_with(graph, "a.weight", 0).reason
    else:
        assert summary(graph) == {frozenset({"a.weight:0", "a.bias:0", "b.weight:1"}): (4, True, True),
                                  frozenset({"b.weight:0", "b.bias:0"}): (2, False, True)}


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_the_values_computed_while_tracing_give_the_shapes_of_a_full_run(
        gate: bool, training: bool) -> None:
    """trace() propagates shapes from the values the tracer computed for the ranks: the
    same as propagate_shapes running the graph anew."""
    model = nn.Sequential(RankChecks(gate), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 3))
    x = torch.randn(2, 3, 3, 3)
    gm = fxprune.trace(model.train(training), x)
    traced = {n.name: n.meta["tensor_meta"] for n in gm.graph.nodes}
    propagate_shapes(gm, (x,))
    assert traced == {n.name: n.meta["tensor_meta"] for n in gm.graph.nodes}
    assert gm.training is training


def test_a_condition_on_values_still_makes_a_leaf() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(1, 3, 4, 4))
    assert [n.target for n in gm.graph.nodes if "fxprune.leaf" in n.meta] == ["gate"]


def test_assignment_into_a_tensor_freezes_its_channels() -> None:
    class Assign(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            y[:, 0] = 0.0
            return self.b(y)

    graph = fxprune.analyze(fxprune.trace(Assign(), torch.randn(2, 3)))
    g = group_with(graph, "a.weight", 0)
    assert not g.prunable and "assigned into in place at %setitem" in g.reason


def test_untraceable_submodule_becomes_a_leaf_with_its_channels_frozen() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(1, 3, 4, 4))
    (leaf,) = [n for n in gm.graph.nodes if "fxprune.leaf" in n.meta]
    assert leaf.target == "gate"
    assert "test_trace.py" in leaf.meta["fxprune.leaf"].reason
    graph = fxprune.analyze(gm)
    frozen = group_with(graph, "a.weight", 0)
    assert not frozen.prunable
    assert "submodule 'gate' made a leaf" in frozen.reason
    assert group_with(graph, "c.weight", 0).prunable


def test_untraceable_model_raises_trace_error_naming_the_line() -> None:
    with pytest.raises(fxprune.TraceError) as info:
        fxprune.trace(RootBranch(), torch.randn(1, 3, 4, 4))
    message = str(info.value)
    assert "RootBranch" in message and "test_trace.py" in message
    assert "torch.where" in message  # says what to do


@pytest.mark.parametrize(
    ("model", "inputs", "match"),
    [
        (lambda x: x, torch.randn(1, 3), "must be a torch.nn.Module"),
        (nn.Conv2d(3, 4, 1), [1, 2, 3], "sequence of tensors"),
        (nn.Conv2d(3, 4, 1), (torch.randn(1, 3, 4, 4), torch.randn(1)), "takes 1 inputs, 2 were given"),
        (nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(1, 5, 4, 4), r"node %_0 .* failed"),
    ],
)
def test_bad_input_is_rejected_before_any_work(model: object, inputs: object, match: str) -> None:
    with pytest.raises(fxprune.InputError, match=match):
        fxprune.trace(model, inputs)


def test_analyze_wants_a_traced_graph_module() -> None:
    with pytest.raises(fxprune.InputError, match="fxprune.trace"):
        fxprune.analyze(nn.Conv2d(3, 4, 1))
    with pytest.raises(fxprune.InputError, match="no shapes"):
        fxprune.analyze(torch.fx.symbolic_trace(nn.Conv2d(3, 4, 1)))


def test_trace_does_not_touch_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    gm = fxprune.trace(model, torch.randn(2, 3, 4, 4) + 5)
    assert torch.equal(gm.get_submodule("1").running_mean, before)
    assert gm.training


def test_a_leaf_run_on_the_example_leaves_batchnorm_statistics_alone() -> None:
    """A leaf that reads values runs on the example itself while tracing, and so do the layers
    before it: a norm among them, in training mode, must not update its statistics."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), RankChecks(gate=True)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fxprune.trace(model, torch.randn(2, 3, 4, 4) + 5, capture="symbolic")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_shapes_are_recorded_on_every_node() -> None:
    gm = fxprune.trace(WithGate(), torch.randn(2, 3, 5, 5))
    shapes = {n.name: tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if n.op != "output"}
    assert shapes["a"] == (2, 4, 5, 5)
    assert shapes["b"] == (2, 2, 5, 5)


def test_identity_layers_leave_no_node_and_the_module_still_runs() -> None:
    """nn.Identity returns its input itself (the op table's ``passthrough``): timm puts one in
    every norm-act layer, so tracing records no call of it; Dropout, which acts in training,
    stays a node."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Identity(), nn.Dropout(0.5), nn.Identity(),
                          nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 5, 5)
    gm = fxprune.trace(model, x)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["0", "2", "4"]
    assert torch.equal(gm(x), model(x))
    graph = fxprune.analyze(gm)
    assert group_with(graph, "0.weight", 0).prunable


def test_a_traced_module_writes_its_code_when_first_needed() -> None:
    """trace() generates no Python code (analysis never runs it); a call, ``gm.code`` or
    `with_code` does, and forward then takes the model's own arguments by name."""
    import inspect

    from fxprune.trace import with_code

    gm = fxprune.trace(WithGate(), torch.randn(2, 3, 5, 5))
    assert list(inspect.signature(with_code(gm).forward).parameters) == ["x"]
    assert "def forward(self, x" in gm.code


def _randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


# (op, args, kwargs): a function, or a method's name with self first
_RULE_ANSWERS = [
    ("add", operator.add, (_randn(2, 3, 4, 4), _randn(1, 3, 1, 1)), {}),
    ("mul by a number", operator.mul, (_randn(2, 3), 2), {}),
    ("number minus tensor", operator.sub, (1.5, _randn(2, 3)), {}),
    ("torch.add alpha", torch.add, (_randn(2, 3), _randn(3)), {"alpha": 2}),
    ("divide", operator.truediv, (_randn(4), _randn(2, 1)), {}),
    ("half times half", operator.mul, (_randn(2, 3, dtype=torch.half), _randn(3, dtype=torch.half)), {}),
    ("method mul", "mul", (_randn(2, 3, 1), _randn(5)), {}),
    ("mean keepdim", "mean", (_randn(2, 3, 4, 5), (2, 3), True), {}),
    ("mean by keyword", "mean", (_randn(2, 3, 4, 5),), {"dim": -1}),
    ("sum", torch.sum, (_randn(2, 3, 4, 5), [1, -1]), {}),
    ("amax", "amax", (_randn(2, 3, 4), 1), {"keepdim": True}),
    ("silu", F.silu, (_randn(2, 3),), {}),
    ("leaky relu", F.leaky_relu, (_randn(3), 0.1), {"inplace": False}),
    ("sigmoid method", "sigmoid", (_randn(2, 2),), {}),
    ("batch_norm", F.batch_norm, (_randn(2, 3, 4), torch.zeros(3), torch.ones(3), _randn(3),
                                  _randn(3), False, 0.1, 1e-5), {}),
    ("flatten", torch.flatten, (_randn(2, 3, 4, 5), 1), {}),
    ("flatten the middle", "flatten", (_randn(2, 3, 4, 5),), {"start_dim": 1, "end_dim": -2}),
    ("flatten everything", torch.flatten, (torch.arange(6).view(2, 3),), {}),
    ("flatten one dim", "flatten", (_randn(2, 3), -1, -1), {}),
]
_RULE_DECLINES = [
    ("int plus float", operator.add, (torch.arange(4), 0.5), {}),
    ("int plus int", operator.add, (torch.arange(4), torch.arange(4)), {}),
    ("half plus float", operator.add, (_randn(3, dtype=torch.half), _randn(3)), {}),
    ("not contiguous", operator.add, (_randn(3, 4).t(), _randn(3)), {}),
    ("shapes that do not broadcast", operator.add, (_randn(3), _randn(4)), {}),
    ("complex number", operator.mul, (_randn(3), 1j), {}),
    ("divide with rounding", torch.div, (_randn(3), _randn(3)), {"rounding_mode": "floor"}),
    ("mean of everything", "mean", (_randn(2, 3),), {}),
    ("mean to a dtype", "mean", (_randn(2, 3), 1), {"dtype": torch.float64}),
    ("a dim named twice", "sum", (_randn(2, 3), (1, -1)), {}),
    ("a dim out of range", "sum", (_randn(2, 3), 2), {}),
    ("sum of ints", "sum", (torch.arange(6).view(2, 3), 1), {}),
    ("sigmoid of ints", torch.sigmoid, (torch.arange(3),), {}),
    ("an out argument", F.hardtanh, (_randn(3), -1.0, 1.0), {"out": _randn(3)}),
    ("batch_norm of other channels", F.batch_norm, (_randn(2, 3, 4), torch.zeros(4),
                                                    torch.ones(4)), {}),
    ("flatten not contiguous", torch.flatten, (_randn(3, 4).t(),), {}),
    ("flatten backwards", torch.flatten, (_randn(2, 3, 4), 2, 1), {}),
    ("flatten a scalar", torch.flatten, (torch.tensor(1.0),), {}),
    ("flatten start given twice", "flatten", (_randn(2, 3), 1), {"start_dim": 0}),
]


def _rule(op: object) -> object:
    entry = fxprune.ops.METHODS[op] if isinstance(op, str) else fxprune.ops.FUNCTIONS[op]
    assert entry.shape is not None, f"{op} has no shape rule"
    return entry.shape


def _run(op: object, args: tuple, kwargs: dict) -> torch.Tensor:
    return getattr(args[0], op)(*args[1:], **kwargs) if isinstance(op, str) else op(*args, **kwargs)


@pytest.mark.parametrize("case", _RULE_ANSWERS, ids=[c[0] for c in _RULE_ANSWERS])
def test_a_shape_rule_gives_what_the_kernel_gives(case: tuple) -> None:
    """Where a rule answers, its promise holds: the kernel's shape, the first tensor's dtype
    and device."""
    _, op, args, kwargs = case
    out = _run(op, args, kwargs)
    first = next(a for a in args if isinstance(a, torch.Tensor))
    assert _rule(op)(None, args, kwargs) == tuple(out.shape)
    assert (out.dtype, out.device) == (first.dtype, first.device)


@pytest.mark.parametrize("case", _RULE_DECLINES, ids=[c[0] for c in _RULE_DECLINES])
def test_a_shape_rule_leaves_promotions_layouts_and_errors_to_the_kernel(case: tuple) -> None:
    _, op, args, kwargs = case
    assert _rule(op)(None, args, kwargs) is None


def test_the_traced_shapes_of_ops_with_rules_are_the_kernels(caplog: pytest.LogCaptureFixture) -> None:
    """A model made of the ops with rules: tracing (rules on fake tensors, with no fallback to
    a real run) records the shapes and dtypes a real run gives."""

    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.batch_norm(self.conv(x), self.bn.running_mean, self.bn.running_var,
                             self.bn.weight, self.bn.bias)
            s = F.silu(y).mean((2, 3), keepdim=True).sigmoid()
            z = 1.0 - y * s / 2 + torch.add(y, s, alpha=0.5)
            return torch.flatten(z.amax(-1) + z.sum(dim=[1, 2]).unsqueeze(1), 1)

    model, x = Ops().eval(), torch.randn(2, 3, 6, 6)
    with caplog.at_level(logging.INFO, logger="fxprune.trace"):
        gm = fxprune.trace(model, x)
    assert not [r for r in caplog.records if "propagation failed" in r.getMessage()]
    traced = {n.name: (n.meta["tensor_meta"].shape, n.meta["tensor_meta"].dtype)
              for n in gm.graph.nodes if n.op != "output"}
    real: dict[str, tuple[torch.Size, torch.dtype]] = {}
    interpreter = torch.fx.Interpreter(gm)
    original = interpreter.run_node

    def record(n: torch.fx.Node) -> object:
        value = original(n)
        if n.op != "output":
            real[n.name] = (value.shape, value.dtype)
        return value

    interpreter.run_node = record
    interpreter.run(x)
    assert traced == real


def test_the_traced_module_holds_what_fx_s_own_graph_module_would() -> None:
    """trace() builds its GraphModule through the modules' dicts: the same submodules,
    parameters and buffers under the same names as fx's ``GraphModule(model, graph)``, a
    non-persistent buffer still left out of the state dict, and the same outputs."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.scale = nn.Parameter(torch.ones(3, 1, 1))
            self.register_buffer("shift", torch.zeros(3, 1, 1), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.scale + self.shift + torch.tensor(0.5)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.ModuleList([Block(), Block()])
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stages[1](self.stages[0](x))

    model, x = Model().eval(), torch.randn(2, 3, 4, 4)
    gm = fxprune.trace(model, x, capture="symbolic")
    reference = torch.fx.GraphModule(model, gm.graph)

    def held(m: nn.Module) -> tuple:
        return ({k: type(v) for k, v in m.named_modules() if k}, dict(m.named_parameters()),
                dict(m.named_buffers()), list(m.state_dict()))

    assert held(gm) == held(reference)
    assert "stages.0.shift" not in gm.state_dict() and "unused" not in dict(gm.named_modules())
    assert torch.equal(gm(x), model(x))


def test_ops_see_their_inputs_as_the_model_made_them() -> None:
    """Ruled ops share one fake tensor per layout while tracing; an op without a rule still
    gets one object per input node. nn.MultiheadAttention given two nodes of one layout as
    query and key must not see ``query is key`` (self-attention, whose fast path returns an
    empty tensor where a real run here returns None)."""

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            q, k = x * 2, x + 1  # two nodes with one layout
            return self.attn(q, k, k, need_weights=False)

    model, x = Attention().eval(), torch.randn(2, 5, 8)
    gm = fxprune.trace(model, x, capture="symbolic")
    with torch.no_grad():
        real = model(x)
    traced = next(n for n in gm.graph.nodes if n.op == "call_module").meta["tensor_meta"]
    assert [None if m is None else tuple(m.shape) for m in traced] == [
        None if t is None else tuple(t.shape) for t in real] == [(2, 5, 8), None]
