"""`fxprune inspect`: the table, the files it writes, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxprune.app.cli import main

USER_MODEL = '''
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))

def not_a_model():
    return 42
'''


def _table(out: str) -> list[tuple[str, ...]]:
    """The rows of the group table as (id, channels, state, members), cells stripped: the
    tests check what the table says, not how it is padded."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith("id|"))
    rows = []
    for line in lines[header + 2:]:  # past the header and its rule
        if not line.strip():
            break
        rows.append(tuple(cell.strip() for cell in line.split("|", 3)))
    return rows


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
    # resnet18 has 4 stages of 2 BasicBlocks. Each stage's residual adds tie its block outputs
    # into one group (stage 1 with the stem), and each block's conv1 outputs are a group of
    # their own: per stage the stage width 3 times (4 x 3 = 12 prunable groups, 3 x (64 + 128
    # + 256 + 512) = 2880 channels); fc's 1000 outputs are the model's: frozen. 13 groups.
    rows = _table(out)
    assert [r[0] for r in rows] == [str(i) for i in range(13)]
    assert sorted(int(c) for _, c, state, _ in rows if state == "prunable") == sorted(
        [64, 128, 256, 512] * 3)
    assert rows[12][1:] == ("1000", "frozen", "fc")
    assert rows[1][1:] == ("64", "prunable", "layer1.0.conv1, layer1.0.bn1, layer1.0.conv2 (in)")
    assert rows[0][3].startswith("conv1, bn1, layer1.0.conv1 (in)")
    assert "13 groups, 12 prunable, 2880 prunable channels" in out
    assert "group 12: reaches the model output" in out
    data = json.loads((tmp_path / "g.json").read_text())
    assert [(g["id"], g["channels"], g["prunable"]) for g in data["groups"]] == [
        (int(i), int(c), state == "prunable") for i, c, state, _ in rows]
    assert data["groups"][0]["members"][0]["param"] == "conv1.weight"
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and '"layer1_0_conv1"' in dot


def test_inspect_user_file_factory(user_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"{user_file}:make", "--input-shape", "1,3,8,8"]) == 0
    out = capsys.readouterr().out
    # conv 0 -> bn 1 -> relu -> conv 3: one group of 8 (conv 0's outputs, bn 1, conv 3's
    # inputs), and conv 3's 4 outputs, frozen as the model's output
    assert _table(out) == [("0", "8", "prunable", "0, 1, 3 (in)"), ("1", "4", "frozen", "3")]
    assert "group 1: reaches the model output" in out


def test_inspect_can_capture_with_torch_export(user_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"{user_file}:make", "--input-shape", "1,3,8,8",
                 "--capture", "export"]) == 0
    out = capsys.readouterr().out
    assert [row[:3] for row in _table(out)] == [("0", "8", "prunable"), ("1", "4", "frozen")]
    assert "captured (export) and analysed" in out


def test_inspect_says_where_the_graph_holds_the_example_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "windows.py"
    path.write_text(
        "import torch\n"
        "class Windows(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 2, 1)\n"
        "    def forward(self, x):\n"
        "        y = self.a(x)\n"
        "        if y.shape[-1] % 2:\n"
        "            y = torch.nn.functional.pad(y, (0, 1, 0, 1))\n"
        "        return self.b(y)\n"
        "def make():\n"
        "    return Windows()\n")
    assert main(["inspect", f"{path}:make", "--input-shape", "1,3,5,5"]) == 0
    out = capsys.readouterr().out
    assert _table(out)[0][:3] == ("0", "4", "prunable")
    assert f"branches on sizes or makes ints of them at 1 place (first at {path}:8)" in out


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
        (["inspect", "hf:no/such/folder"], "hf:no/such/folder: the folder does not exist"),
        (["inspect", "hf:{dir}"], "holds no config.json. Give a folder written by transformers"),
        (["export", "hf:{dir}", "-o", "m.onnx", "--compare", "zoo:digits"],
         "an hf:DIR model takes keyword inputs"),
        (["prune", "hf:{dir}"], "prune trains an image classifier on --data"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, user_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{file}", str(user_file)).replace("{dir}", str(user_file.parent))
            for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT classifier saved by transformers: two layers of 4 heads, FFN 64."""
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bert")
    tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)).save_pretrained(folder)
    return folder


def test_inspect_a_hugging_face_folder(hf_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"hf:{hf_folder}", "--input-shape", "2,16"]) == 0
    out = capsys.readouterr().out
    # the hidden size (through every LayerNorm: inexact), per layer the 4 heads and the 64
    # FFN neurons, the pooler's 32; the 2 classes are the model's output
    assert [row[1:3] for row in _table(out)] == [
        ("32", "prunable (inexact)"), ("4", "prunable"), ("64", "prunable"), ("4", "prunable"),
        ("64", "prunable"), ("32", "prunable"), ("2", "frozen")]
    assert _table(out)[6][3] == "classifier.weight, classifier.bias"
    assert "group 6: reaches the model output" in out
    # every output channel but the 2 classes: the three embedding tables' 32, per layer
    # 3 x 32 (query, key, value) + 32 + 64 + 32, the pooler's 32 and the 2 classes
    assert "99.7% of the conv/linear output channels are in prunable groups (576 of 578)" in out
    assert f"captured (export (symbolic tracing failed)) and analysed hf:{hf_folder} at input " \
           "(2, 16)" in out


def test_export_a_hugging_face_folder_with_dynamic_batch_and_sequence(
        hf_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", f"hf:{hf_folder}", "-o", str(tmp_path / "bert.onnx")]) == 0
    out = capsys.readouterr().out
    assert "dynamo exporter, dynamic batch, sequence" in out
    # the default example: 128 token ids (BERT has 512 positions); then batch 3, 4 more tokens
    assert "onnxruntime vs PyTorch at batch 1, sequence 128; batch 3, sequence 132" in out
    assert (tmp_path / "bert.onnx").is_file()


def test_hf_inputs_need_transformers(hf_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    assert main(["inspect", f"hf:{hf_folder}"]) == 2
    assert "hf:DIR needs transformers: pip install 'fxprune[hf]'" in capsys.readouterr().err


def test_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "fxprune", "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and "inspect" in result.stdout
