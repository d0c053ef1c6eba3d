"""Example inputs that do not fit the model: fxprune's own message only (the node and the
user's source line), none of the lines torch.fx's Interpreter appends to errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models import build

from fxprune.app.cli import main
from fxprune.errors import InputError
from fxprune.trace import trace

# fx's Interpreter.run appends these to any error raised while it runs a node.
FX_LINES = ("tlparse", "While executing", "Original traceback")


@pytest.mark.parametrize(
    ("shape", "node"),
    [
        ((2, 4, 4, 4), "call_module[target=conv]"),  # 4 channels into a 3-channel conv
        ((2, 3, 5, 5), "call_module[target=fc]"),  # 27 features into a 12-feature linear
    ],
)
def test_input_error_names_the_node_and_line_and_nothing_from_fx(
    shape: tuple[int, ...], node: str
) -> None:
    model, _ = build("flatten_linear")

    with pytest.raises(InputError) as info:
        trace(model, torch.randn(shape))

    message = str(info.value)
    assert message.startswith("the example inputs do not run through the model: node ")
    assert node in message
    assert "models.py" in message and "self.fc(torch.flatten(F.relu(self.conv(x)), 1))" in message
    assert "\n" not in message
    for line in FX_LINES:
        assert line not in message
    assert isinstance(info.value.__cause__, RuntimeError)  # the original stays chained


def test_cli_prints_one_clean_line_for_inputs_that_do_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_file = tmp_path / "user_model.py"
    user_file.write_text(
        "from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Conv2d(3, 8, 3))\n"
    )

    assert main(["inspect", f"{user_file}:make", "--input-shape", "1,5,8,8"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("fxprune: error: the example inputs do not run through the model")
    assert "call_module[target=0]" in err
    assert err.count("\n") == 1  # one line
    for line in FX_LINES:
        assert line not in err
