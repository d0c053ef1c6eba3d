"""parse_shape: the two accepted spellings, and every malformed shape refused with how to
write it (never read as a shorter shape)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fxprune.app.cli import main
from fxprune.app.model_specs import parse_shape
from fxprune.errors import InputError

HOW = "e.g. 1,3,224,224 or 1x3x224x224"


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        ("1x3x224x224", (1, 3, 224, 224)),
        ("2, 3, 8, 8", (2, 3, 8, 8)),  # spaces around a size are fine
        ("16", (16,)),
    ],
)
def test_parse_shape_reads_commas_and_x(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1,3,x", "'x' is not an integer"),  # was read as (1, 3)
        ("1,3,", "a size is missing"),  # was read as (1, 3)
        ("1x3x", "a size is missing"),  # was read as (1, 3)
        ("1,,3", "a size is missing"),  # was read as (1, 3)
        ("", "a size is missing"),
        ("a,b", "'a' is not an integer"),
        ("1,3.5", "'3.5' is not an integer"),
        ("1x3,8", "'1x3' is not an integer"),  # one separator per shape
        ("1,0,8", "size 0 is not positive"),
        ("1,-3,8", "size -3 is not positive"),
    ],
)
def test_parse_shape_refuses_malformed_shapes(text: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        parse_shape(text)
    message = str(info.value)
    assert f"cannot read input shape '{text}': {problem}." in message
    assert HOW in message


def test_cli_reports_a_malformed_shape_instead_of_tracing_a_shorter_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shape is refused before the model spec is even read.
    code = main(["inspect", str(tmp_path / "absent.py") + ":make", "--input-shape", "1,3,x"])

    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read input shape '1,3,x': 'x' is not an integer" in err
    assert HOW in err
