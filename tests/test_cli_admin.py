"""``fma-connect admin create-model --initial-model FILE``: the file must hold a JSON list."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import responses

from fma_connect.cli import main

BASE = "http://fma.test"


def create(path: Path) -> int:
    return main(
        ["admin", "--url", BASE, "--token", "t", "create-model", "x", "--initial-model", str(path)]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("[[1, 2]", "is not valid JSON"),
        (
            '{"a": [1, 2]}',
            "expected a JSON list of layers such as [[0.1, 0.2], [0.3]], got an object",
        ),
        ('"weights"', "got a string"),
        ("3", "got a number"),
        ("null", "got null"),
    ],
)
@responses.activate
def test_an_initial_model_that_is_not_a_json_list_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "initial.json"
    path.write_text(text)
    assert create(path) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --initial-model {path}: ")
    assert message in err
    assert not responses.calls  # nothing was sent


@responses.activate
def test_an_initial_model_list_is_sent_as_its_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    responses.post(f"{BASE}/api/v1/models/", status=201, json={"id": 1, "name": "x"})
    path = tmp_path / "initial.json"
    path.write_text("[[1.5, 2.5], [3.5]]")
    assert create(path) == 0
    assert orjson.loads(responses.calls[0].request.body)["initial_model"] == [[1.5, 2.5], [3.5]]
    assert orjson.loads(capsys.readouterr().out) == {"id": 1, "name": "x"}
