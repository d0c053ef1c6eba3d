"""`fxprune inspect`: the table, the files it writes, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fxprune.cli import main

USER_MODEL = '''
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

def not_a_model():
    return 42
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODEL)
    return path


def test_inspect_torchvision_model_writes_json_and_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", "torchvision:resnet18", "--json", str(tmp_path / "g.json"),
                 "--dot", str(tmp_path / "g.dot")])
    out = capsys.readouterr().out
    assert code == 0
    assert "13 groups, 12 prunable" in out
    assert "group 12: reaches the model output" in out
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["groups"]) == 13
    assert data["groups"][0]["members"][0]["param"] == "conv1.weight"
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and '"layer1_0_conv1"' in dot


def test_inspect_user_file_factory(user_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"{user_file}:make", "--input-shape", "1,3,8,8"]) == 0
    out = capsys.readouterr().out
    assert "0  | 8        | prunable | 0, 1, 3 (in)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "torchvision:resnet5"], "torchvision has no classification model 'resnet5'"),
        (["inspect", "resnet50"], "use torchvision:NAME"),
        (["inspect", "missing.py:make"], "model file 'missing.py' not found"),
        (["inspect", "{file}:nothing"], "defines no callable 'nothing'"),
        (["inspect", "{file}:not_a_model"], "returned int, not a torch.nn.Module"),
        (["inspect", "{file}:make", "--input-shape", "1,4,8,8"], "do not run through the model"),
        (["inspect", "{file}:make", "--input-shape", "a,b"], "cannot read input shape"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, user_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{file}", str(user_file)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "fxprune", "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "inspect" in result.stdout
