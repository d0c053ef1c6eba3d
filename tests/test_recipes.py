"""The GPU recipe runs end to end (on the CPU, one epoch per stage) on a tiny CIFAR folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_job import _cifar_folder

import fxprune

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_cifar_resnet56_recipe_smoke(tmp_path: Path, device: str) -> None:
    _cifar_folder(tmp_path / "data", 10)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cifar_resnet56.py"), "--data-dir",
         str(tmp_path / "data"), "--out", str(out), "--smoke", "--device", device],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ResNet-56 / CIFAR-10" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["model"] == "zoo:cifar_resnet56" and (out / "model.onnx").is_file()


def test_the_convergence_study_resumes_and_traces_every_architecture(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from catalyst_convergence import ARCHS

    for name, make in ARCHS.items():  # each architecture holds catalysts in several groups
        model = make().eval()
        graph = fxprune.analyze(fxprune.trace(model, torch.randn(2, 1, 8, 8)))
        assert sum(g.prunable for g in graph.groups) >= 3, name
    command = [sys.executable, str(ROOT / "benchmarks" / "catalyst_convergence.py"), "--archs",
               "mlp", "--seeds", "0", "--c", "1.2", "--cap", "2", "--remedy", "paper", "--out", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads((tmp_path / "catalyst_convergence.json").read_text())
    assert [(r["arch"], r["epochs"]) for r in rows] == [("mlp", 2)]
    assert (tmp_path / "catalyst_convergence" / "mlp_s0_c1.2_paper_cap2.npy").is_file()
    assert (tmp_path / "catalyst_convergence_slowest_paper.png").is_file()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.stdout.splitlines()[2] == first.stdout.splitlines()[2]  # read back, not rerun
    assert json.loads((tmp_path / "catalyst_convergence.json").read_text()) == rows


def test_minilm_trains_on_no_held_out_sentence() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import minilm
    from stdlib_text import sentences

    held_out = sentences(minilm.EVAL_MODULES, 512)
    assert minilm.train_modules("listed") == minilm.TRAIN_MODULES
    modules = minilm.train_modules("stdlib")
    assert not {m.split(".")[0] for m in minilm.EVAL_MODULES} & set(modules)
    # the listed modules' docstrings repeat some held-out sentences word for word
    assert set(sentences(minilm.TRAIN_MODULES, 4096)) & set(held_out)
    for which in ("listed", "stdlib"):
        text = minilm.training_text(which, 100_000, held_out)
        assert text and not set(text) & set(held_out), which
    assert len(minilm.training_text("stdlib", 100, held_out)) == 100
