"""fxprune.archive, through load(): truncated and foreign files, and archives holding what
torch.export.load would unpickle or run, each refused before anything runs."""

from __future__ import annotations

import io
import json
import pathlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from models import build
from torch import nn

from fxprune.errors import InputError
from fxprune.save import load, save


@pytest.fixture
def saved(tmp_path: Path) -> tuple[nn.Module, Path]:
    # A batch of 3, so the saved program has a dynamic batch dim and symbolic shapes.
    model, _ = build("flatten_linear")
    return model, save(model, torch.randn(3, 3, 4, 4), tmp_path / "model.pt2")


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_file_raises_input_error(saved: tuple[nn.Module, Path], keep: float) -> None:
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])

    with pytest.raises(InputError, match="truncated or damaged") as info:
        load(path)
    assert info.value.__cause__ is not None  # the original error stays chained


def test_not_an_archive_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_text("not a model")
    with pytest.raises(InputError, match="not an intact fxprune archive"):
        load(path)


# ----------------------------------------------------- archives torch.export.load would run


class _Touch:
    """Unpickling this creates `marker`: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def _pickled_weight(files: dict[str, bytes], marker: Path) -> None:
    key = "archive/data/weights/model_weights_config.json"
    config = json.loads(files[key])
    meta = config["config"]["fc.bias"]
    meta["use_pickle"] = True
    files[key] = json.dumps(config).encode()
    buffer = io.BytesIO()
    torch.save(_Touch(marker), buffer)
    files["archive/data/weights/" + meta["path_name"]] = buffer.getvalue()


def _pickled_sample_inputs(files: dict[str, bytes], marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save(_Touch(marker), buffer)
    files["archive/data/sample_inputs/model.pt"] = buffer.getvalue()


def _code_in_symbolic_shape(files: dict[str, bytes], marker: Path) -> None:
    # sympy.sympify evaluates its string argument as Python.
    key = "archive/models/model.json"
    text = files[key].decode()
    assert "Symbol(" in text  # the batch dim is dynamic, so the graph has symbolic shapes
    files[key] = text.replace(
        "Symbol(", f"__import__('pathlib').Path({str(marker)!r}).touch() or Symbol(", 1
    ).encode()


def _code_in_guard(files: dict[str, bytes], marker: Path) -> None:
    # ExportedProgram.module() compiles guards_code into a check that runs on every call.
    key = "archive/models/model.json"
    program = json.loads(files[key])
    program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).touch() is None"]
    files[key] = json.dumps(program).encode()


def _rewrite(path: Path, tamper: Callable[[dict[str, bytes]], None]) -> None:
    with zipfile.ZipFile(path) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    tamper(files)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_rewritten_archive_still_loads(saved: tuple[nn.Module, Path]) -> None:
    """The control for the test below: rewriting the zip alone does not make load fail."""
    model, path = saved
    _rewrite(path, lambda files: None)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(load(path)(x), model(x))


@pytest.mark.parametrize(
    "tamper", [_pickled_weight, _pickled_sample_inputs, _code_in_symbolic_shape, _code_in_guard]
)
def test_archive_that_would_run_code_is_refused_before_it_runs(
    saved: tuple[nn.Module, Path],
    tmp_path: Path,
    tamper: Callable[[dict[str, bytes], Path], None],
) -> None:
    # Each of these runs code under a plain torch.export.load(path).module()(x) (torch 2.14.1).
    _, path = saved
    marker = tmp_path / "ran"
    _rewrite(path, lambda files: tamper(files, marker))

    with pytest.raises(InputError, match="refusing to load"):
        load(path)
    assert not marker.exists()
