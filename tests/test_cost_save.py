"""cost(): MACs/FLOPs/params against hand arithmetic and ResNet-18's published figure.
save()/load(): round trips, a fresh process without the model's class, a missing file,
atomicity. Damaged and tampered archives are in test_archive.py."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fxprune.cost import Cost, cost
from fxprune.errors import InputError
from fxprune.save import load, save

# ------------------------------------------------------------------------------------ cost


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_cost_matches_hand_arithmetic() -> None:
    batch = 2
    # conv: each of the 8x8 output positions of each of the 8 output channels is a 3x3 kernel
    # over 3 input channels; padding=1 keeps 8x8.
    conv_macs = batch * (8 * 8) * 8 * (3 * 3 * 3)  # = 27648
    # linear: 8*8*8 = 512 inputs to each of 10 outputs.
    fc_macs = batch * 512 * 10  # = 10240
    # bias, BatchNorm, ReLU, Dropout: elementwise, not counted (module docstring).
    conv_params = 8 * 3 * 3 * 3 + 8  # weight + bias = 224
    bn_params = 8 + 8  # weight + bias (running stats are buffers)
    fc_params = 512 * 10 + 10  # = 5130

    c = cost(ConvLinear(), torch.randn(batch, 3, 8, 8))

    assert c == Cost(
        macs=conv_macs + fc_macs,
        flops=2 * (conv_macs + fc_macs),  # FlopCounterMode: one multiply-add = 2 FLOPs
        params=conv_params + bn_params + fc_params,
    )
    assert c.params == sum(p.numel() for p in ConvLinear().parameters())


class Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cost_counts_attention_on_the_cpu(kv_heads: int) -> None:
    """The CPU's fused attention kernel: scores (10 x 12 per head, over 8 dims) and weighted
    values (over 6 dims), per query head, also where two query heads share a key-value head."""
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, kv_heads, 12, 8), torch.randn(2, kv_heads, 12, 6)
    assert cost(Attention(), (q, k, v)).macs == 2 * 4 * 10 * 12 * (8 + 6)


def test_cost_counts_multihead_attentions_fused_inference_path() -> None:
    """nn.MultiheadAttention in eval mode without grad runs one fused op the counter cannot see
    into: its projections (4 of 16 x 16 per token) and attention (5 x 5 x 16) must count."""
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(1, 5, 16)
    assert cost(mha, (x, x, x)).macs == 5 * 4 * 16 * 16 + 5 * 5 * 16 * 2


@pytest.mark.parametrize(("layer", "gates"), [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_cost_counts_recurrent_layers(layer: type[nn.Module], gates: int, device: str) -> None:
    """Every step of every layer and direction multiplies its input by w_ih and its hidden
    state by w_hh: 2 sequences x 5 steps, 32 hidden units per gate, inputs of 16 features to
    the first layer and of 2 x 32 to the second. The CPU's LSTM runs one oneDNN kernel that
    torch's counter has no formula for (it counted 0)."""
    with torch.device(device):
        rnn = layer(16, 32, num_layers=2, batch_first=True, bidirectional=True)
        x = torch.randn(2, 5, 16)
    per_direction = 2 * 5 * gates * 32 * ((16 + 32) + (64 + 32))
    assert cost(rnn, x).macs == 2 * per_direction


def test_cost_counts_a_shared_parameter_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False)
            self.b.weight = self.a.weight  # tied: one tensor, two modules

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model = Tied()
    per_module = sum(p.numel() for m in (model.a, model.b) for p in m.parameters())
    assert per_module == 2 * 256

    c = cost(model, torch.randn(1, 16))

    assert c.params == 256
    assert c.macs == 2 * 16 * 16


def test_cost_runs_in_eval_without_grad_and_restores_every_mode() -> None:
    model = ConvLinear()
    model.bn.eval()  # mixed modes must come back as they were, not all train or all eval
    stats = model.bn.running_mean.clone()
    x = torch.randn(2, 3, 8, 8)

    cost(model, x)
    model.bn.train()
    cost(model, x)  # in train mode this forward would update the running stats

    assert model.training and model.conv.training and model.bn.training
    model.bn.eval()
    cost(model, x)
    assert model.training and not model.bn.training
    torch.testing.assert_close(model.bn.running_mean, stats)


def test_cost_of_graph_module_equals_cost_of_module() -> None:
    model, x = ConvLinear(), torch.randn(1, 3, 8, 8)
    assert cost(torch.fx.symbolic_trace(model), [x]) == cost(model, x)


def test_ratio_is_self_over_other() -> None:
    before = Cost(macs=400, flops=800, params=100)
    after = Cost(macs=100, flops=200, params=50)

    assert before.ratio(after) == {"macs": 4.0, "params": 2.0}
    assert after.ratio(before) == {"macs": 0.25, "params": 0.5}
    assert before.ratio(Cost(macs=0, flops=0, params=50))["macs"] == float("inf")


def test_resnet18_matches_published_figures() -> None:
    c = cost(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))

    assert abs(c.macs - 1.814e9) / 1.814e9 < 0.01
    assert c.flops == 2 * c.macs
    assert c.params == 11_689_512


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("not a module", torch.randn(1, 3, 8, 8), "must be a torch.nn.Module"),
        (ConvLinear(), [1, 2], "tensor or a sequence of tensors"),
        (ConvLinear(), "x", "tensor or a sequence of tensors"),
        (ConvLinear(), torch.randn(1, 5, 8, 8), "do not run through the model"),
    ],
)
def test_cost_rejects_bad_input(model: object, inputs: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        cost(model, inputs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- save/load


class ConvBnReluLinear(nn.Module):
    """Lives only in this test module: a fresh process cannot import it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def traced() -> torch.fx.GraphModule:
    model = ConvBnReluLinear()
    with torch.no_grad():  # non-trivial statistics, so BatchNorm is not an identity
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return torch.fx.symbolic_trace(model.eval())


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.fx.GraphModule, Path]:
    gm = traced()
    return gm, save(gm, torch.randn(3, 3, 4, 4), tmp_path / "model.pt2")


@pytest.mark.parametrize("saved_batch", [1, 3])
def test_round_trip_at_saved_and_other_batch_sizes(tmp_path: Path, saved_batch: int) -> None:
    gm = traced()
    path = save(gm, torch.randn(saved_batch, 3, 4, 4), tmp_path / "model.pt2")
    loaded = load(path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]  # no temp file left
    for batch in (saved_batch, 1, 5):
        x = torch.randn(batch, 3, 4, 4)
        torch.testing.assert_close(loaded(x), gm(x))
    assert cost(loaded, x) == cost(gm, x)  # the loaded module cannot .eval(); cost copes


def test_a_model_that_cannot_have_a_dynamic_batch_is_saved_static(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class FixedBatch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(2, -1).sum(0)  # only valid when the batch divides evenly

    x = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="fxprune.save"):
        loaded = load(save(FixedBatch(), x, tmp_path / "fixed.pt2"))

    assert "static shapes" in caplog.text
    torch.testing.assert_close(loaded(x), FixedBatch()(x))


CHILD = textwrap.dedent(
    """
    import importlib.util, sys
    import torch
    from fxprune.save import load

    model = load(sys.argv[1])
    x = torch.load(sys.argv[2], weights_only=True)
    torch.save(model(x).detach(), sys.argv[3])
    # The model's class was never importable here, and loading imported no test code.
    assert importlib.util.find_spec("test_cost_save") is None
    assert not [m for m in sys.modules if "test_cost_save" in m]
    """
)


def test_saved_file_loads_in_a_fresh_process_without_the_class(
    saved: tuple[torch.fx.GraphModule, Path], tmp_path: Path
) -> None:
    gm, path = saved
    x = torch.randn(2, 3, 4, 4)
    torch.save(x, tmp_path / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        cwd=tmp_path,  # not the tests folder: the child cannot import this module
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), gm(x))


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        load(tmp_path / "absent.pt2")


def test_failed_save_leaves_no_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(program: object, f: io.BufferedWriter) -> None:
        f.write(b"half an archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save(traced(), torch.randn(2, 3, 4, 4), tmp_path / "model.pt2")
    assert list(tmp_path.iterdir()) == []

    # Over an existing file, a failed save leaves the old file as it was.
    (tmp_path / "model.pt2").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        save(traced(), torch.randn(2, 3, 4, 4), tmp_path / "model.pt2")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt2"]
    assert (tmp_path / "model.pt2").read_bytes() == b"old"


@pytest.mark.parametrize(("model", "inputs"), [("x", torch.randn(1)), (ConvBnReluLinear(), [1.0])])
def test_save_rejects_bad_input(tmp_path: Path, model: object, inputs: object) -> None:
    with pytest.raises(InputError):
        save(model, inputs, tmp_path / "model.pt2")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
