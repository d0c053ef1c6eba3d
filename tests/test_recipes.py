"""The GPU recipe runs end to end (on the CPU, one epoch per stage) on a tiny CIFAR folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_job import _cifar_folder

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
