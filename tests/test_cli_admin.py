"""``fma-connect admin``: an --initial-model FILE must hold a JSON list; statuses are named."""

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
    sent = responses.calls[0].request.body
    assert sent is not None
    assert orjson.loads(sent)["initial_model"] == [[1.5, 2.5], [3.5]]
    assert orjson.loads(capsys.readouterr().out) == {"id": 1, "name": "x"}


@responses.activate
def test_updates_show_each_status_as_its_number_and_its_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    responses.get(f"{BASE}/api/v1/models/1/", json={"id": 1})
    rows = [
        {"id": 2, "federated_model": 1, "status": 4, "status_reason": "NaN in dense"},
        {"id": 1, "federated_model": 1, "status": 2, "status_reason": None},
    ]
    responses.get(f"{BASE}/api/v1/model_updates/", json=rows)
    assert main(["admin", "--url", BASE, "--token", "t", "updates", "1"]) == 0
    out = capsys.readouterr().out
    assert orjson.loads(out) == [
        {
            "id": 2,
            "federated_model": 1,
            "status": 4,
            "status_name": "INVALID",
            "status_reason": "NaN in dense",
        },
        {
            "id": 1,
            "federated_model": 1,
            "status": 2,
            "status_name": "COMPLETE",
            "status_reason": None,
        },
    ]
    assert '"status": 4,\n    "status_name": "INVALID",' in out  # the name reads next to the number
