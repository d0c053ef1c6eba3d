"""ONNX export: parity with PyTorch in onnxruntime, dynamic batch, atomic writes, refusals."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from models import MODELS, build
from torch import nn

import fxprune
from fxprune.app.cli import main
from fxprune.app.model_specs import randomize_zero_parameters
from fxprune.export import onnx as onnx_export
from fxprune.export.deploy import deploy_report
from fxprune.export.onnx import export_onnx
from fxprune.passes.plan import random_request

FIXED_BATCH = {"literals"}  # views with a literal batch size of 2


def _slim(model: nn.Module, x: torch.Tensor, fraction: float = 0.3) -> torch.fx.GraphModule:
    gm = fxprune.trace(model, x)
    graph = fxprune.analyze(gm)
    return fxprune.prune_channels(gm, graph, random_request(graph, fraction, 0))


@pytest.mark.parametrize("name", sorted(set(MODELS) - FIXED_BATCH))
def test_pruned_tiny_models_export_with_parity_at_two_batch_sizes(name: str, tmp_path: Path) -> None:
    model, x = build(name)
    report = export_onnx(_slim(model, x), x, tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert report.batch_sizes == (2, 3)
    assert report.max_rel_diff < 1e-3
    onnx.checker.check_model(str(report.path))


def test_a_model_that_fixes_its_batch_says_so_and_exports_statically(tmp_path: Path) -> None:
    model, x = build("literals")
    with pytest.raises(fxprune.ExportError, match="dynamic_batch=False"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())
    report = export_onnx(model, x, tmp_path / "m.onnx", dynamic_batch=False)
    assert report.batch_sizes == (2,)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_large", "efficientnet_b0",
                                  "densenet121", "convnext_tiny", "vit_b_16", "swin_t",
                                  "shufflenet_v2_x1_0"])
def test_pruned_torchvision_models_export_with_parity(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    slim = _slim(randomize_zero_parameters(torchvision.models.get_model(name).eval()), x)
    report = export_onnx(slim, x, tmp_path / f"{name}.onnx")
    assert report.exporter == "dynamo"  # export_onnx itself raises on a parity failure
    assert report.batch_sizes == (2, 3)


def test_parity_failure_raises_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build("residual")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    real = onnx_export._torch_outputs
    monkeypatch.setattr(onnx_export, "_torch_outputs", lambda m, i: [o + 1 for o in real(m, i)])
    with pytest.raises(fxprune.ExportError, match="no file was written"):
        export_onnx(model, x, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left


def test_falls_back_to_the_legacy_exporter_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(onnx_export, "_dynamo", broken)
    model, x = build("residual")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export_onnx(model, x, tmp_path / "m.onnx")
    assert report.exporter == "legacy"
    assert "simulated exporter failure" in report.fallback_reason
    assert any("legacy TorchScript exporter" in str(w.message) for w in caught)
    assert report.max_rel_diff < 1e-3


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_external_data_is_written_beside_the_model_and_found(
        exporter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if exporter == "legacy":
        monkeypatch.setattr(onnx_export, "_dynamo", lambda *a: (_ for _ in ()).throw(RuntimeError("off")))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_onnx(model, x, tmp_path / "m.onnx", external_data=True)
    assert report.exporter == exporter and report.data_path == tmp_path / "m.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    weights = sum(t.numel() * 4 for t in model.parameters())
    # the weights are in the data file (small tensors such as biases may stay inline)
    assert report.path.stat().st_size < weights / 10 and report.data_path.stat().st_size > 0.95 * weights
    assert report.size_bytes == report.path.stat().st_size + report.data_path.stat().st_size
    # moved elsewhere together, the pair still loads (the reference is relative)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in ("m.onnx", "m.onnx.data"):
        (tmp_path / f).rename(moved / f)
    outputs = onnx_export._run_onnx(str(moved / "m.onnx"), (x,))
    torch.testing.assert_close(torch.from_numpy(outputs[0]), model(x).detach(), rtol=1e-3, atol=1e-4)
    # a later export that fits one file takes the stale weights file away
    report = export_onnx(model, x, moved / "m.onnx")
    assert report.data_path is None and [p.name for p in moved.iterdir()] == ["m.onnx"]


def test_weights_past_the_protobuf_limit_go_to_external_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build("residual")
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", weights)  # as if the model were > 2 GB
    assert export_onnx(model, x, tmp_path / "m.onnx").data_path == tmp_path / "m.onnx.data"


def test_fxprune_only_modules_must_be_finished_first(tmp_path: Path) -> None:
    class Marker(nn.Identity):
        fxprune_only = True

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Marker())
    with pytest.raises(fxprune.ExportError, match="finish pruning first"):
        export_onnx(model, torch.randn(1, 3, 4, 4), tmp_path / "m.onnx")


def test_deploy_report_sets_both_models_side_by_side() -> None:
    model, x = build("residual")
    slim = _slim(model, x, fraction=0.5)
    report = deploy_report(model, slim, x, batch_sizes=(1, 4), repeats=3)
    ratios = report.ratios()
    assert ratios["params"] > 1.3 and ratios["macs"] > 1.3 and ratios["onnx_bytes"] > 1.1
    assert set(report.original.latency_ms) == {1, 4}
    assert "onnxruntime latency, batch 4" in report.to_markdown()


def test_cli_exports_a_saved_slim_model_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, x = build("squeeze_excite")
    here = str(Path(__file__).parent)
    (tmp_path / "m.py").write_text(
        f"import sys\nsys.path.insert(0, {here!r})\nfrom models import SqueezeExcite\n"
        "def make():\n    return SqueezeExcite()\n")
    saved = fxprune.save(_slim(model, x, 0.5), x, tmp_path / "slim.pt2")
    code = main(["export", str(saved), "--input-shape", "2,3,6,6", "-o", str(tmp_path / "s.onnx"),
                 "--compare", f"{tmp_path / 'm.py'}:make", "--repeats", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "dynamo exporter, dynamic batch" in out and "| params |" in out
    assert (tmp_path / "s.onnx").is_file()


class Keywords(nn.Module):
    """Token ids, a mask and a scale by keyword, a dict of a tensor and a tuple out: what a
    Hugging Face model looks like to the exporter. (Here, not in models.py: no other test
    takes keyword inputs.)"""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.proj = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, *, scale: float = 1.0) -> dict:
        h = self.emb(ids) * mask[..., None] * scale
        return {"hidden": h, "pooled": (self.proj(h.mean(1)), h.sum(1))}


def _keywords() -> tuple[nn.Module, torch.Tensor, dict]:
    torch.manual_seed(0)
    ids, mask = torch.randint(0, 10, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return Keywords().eval(), ids, {"mask": mask, "scale": 2.0}


def _dims(path: Path) -> dict[str, list[str | int]]:
    """The file's input and output dims, names where symbolic."""
    graph = onnx.load(str(path)).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)}


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_keyword_inputs_export_with_a_dynamic_sequence_and_named_outputs(
        exporter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if exporter == "legacy":
        monkeypatch.setattr(onnx_export, "_dynamo", lambda *a: (_ for _ in ()).throw(RuntimeError("off")))
    model, ids, kwargs = _keywords()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = export_onnx(model, ids, tmp_path / "m.onnx", example_kwargs=kwargs)
    assert report.exporter == exporter
    assert report.input_names == ("ids", "mask")  # the scale is baked in
    assert report.output_names == ("hidden", "pooled.0", "pooled.1")
    assert report.dynamic_dims == {"ids": {0: "batch", 1: "sequence"},
                                   "mask": {0: "batch", 1: "sequence"}}
    assert report.sizes_checked == ({"batch": 2, "sequence": 5}, {"batch": 3, "sequence": 9})
    assert report.static_reason is None and "dynamic batch, sequence" in str(report)
    assert "at batch 2, sequence 5; batch 3, sequence 9" in str(report)
    dims = _dims(report.path)
    assert dims["ids"] == dims["mask"] == ["batch", "sequence"]
    assert dims["pooled.0"] == ["batch", 3]


def test_named_dims_are_the_only_dynamic_ones(tmp_path: Path) -> None:
    model, ids, kwargs = _keywords()
    report = export_onnx(model, ids, tmp_path / "m.onnx", example_kwargs=kwargs,
                         dynamic_dims={"ids": {0: "n"}, "mask": {-2: "n"}})
    assert report.dynamic_dims == {"ids": {0: "n"}, "mask": {0: "n"}}
    assert report.sizes_checked == ({"n": 2}, {"n": 3}) and report.batch_sizes == (2, 3)
    assert _dims(report.path)["ids"] == ["n", 5]
    static = export_onnx(model, ids, tmp_path / "s.onnx", example_kwargs=kwargs, dynamic_dims={})
    assert static.dynamic_dims == {} and static.sizes_checked == ({},)
    assert _dims(static.path)["ids"] == [2, 5]


def test_a_sequence_the_model_fixes_stays_static_unless_asked_for(tmp_path: Path) -> None:
    model, x = build("tokens")  # learned positions for exactly 4 tokens
    report = export_onnx(model, x, tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and report.dynamic_dims == {"ids": {0: "batch"}}
    assert _dims(report.path)["ids"] == ["batch", 4]
    assert "the sequence stays static: at another length, onnxruntime cannot run the " \
           "exported graph at batch 3, sequence 8" in str(report)
    with warnings.catch_warnings(), pytest.raises(fxprune.ExportError, match="sequence 8"):
        warnings.simplefilter("ignore")
        export_onnx(model, x, tmp_path / "d.onnx",
                    dynamic_dims={"ids": {0: "batch", 1: "sequence"}})
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(("options", "message"), [
    ({"dynamic_dims": {"x": {0: "batch"}}}, "names 'x', which is not a tensor input: the "
                                            "tensor inputs are ids, mask"),
    ({"dynamic_dims": {"ids": {2: "batch"}}}, "names dim 2, but 'ids' has 2 dims"),
    ({"dynamic_dims": {"ids": {0: ""}}}, "must be the dim's name, a non-empty string"),
    ({"example_kwargs": {"nope": torch.ones(2)}}, "the example inputs do not fit Keywords.forward"),
    ({"example_kwargs": {"mask": [1, 2]}}, "a keyword input is a tensor or a constant"),
])
def test_unusable_inputs_or_dims_are_refused_before_exporting(
        options: dict, message: str, tmp_path: Path) -> None:
    model, ids, kwargs = _keywords()
    options = {"example_kwargs": kwargs, **options}
    with pytest.raises(fxprune.InputError, match=message):
        export_onnx(model, ids, tmp_path / "m.onnx", **options)
    assert not list(tmp_path.iterdir())
