"""``fma-connect admin``: --initial-model FILE must hold a JSON list; statuses named; clients."""

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


def help_text(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    """The --help output of ``fma-connect admin <command>``, its lines joined."""
    with pytest.raises(SystemExit) as exit_:
        main(["admin", *command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_updates_help_says_what_each_status_means(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "updates")
    for shown in (
        "0 PENDING (waiting for a round)",
        "1 RUNNING (in a round now)",
        "2 COMPLETE (averaged into an aggregate)",
        "3 FAILED",
        '4 INVALID (refused by a round; "status_reason" says why)',
    ):
        assert shown in text


@pytest.mark.parametrize("action", ["clients", "remove-client"])
def test_client_actions_say_they_need_the_reference_server(
    capsys: pytest.CaptureFixture[str], action: str
) -> None:
    assert "(reference server only)" in help_text(capsys, action)


CLIENT = "5642f47f-0645-4446-b2b5-e04a1ed68e37"


@responses.activate
def test_clients_prints_the_models_clients(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {
            "uuid": CLIENT,
            "registered_on": "2026-01-01T00:00:00.000000Z",
            "last_seen": None,
            "updates": 0,
            "statuses": {"PENDING": 0, "RUNNING": 0, "COMPLETE": 0, "FAILED": 0, "INVALID": 0},
        }
    ]
    responses.get(f"{BASE}/api/v1/models/1/clients/", json=rows)
    assert main(["admin", "--url", BASE, "--token", "t", "clients", "1"]) == 0
    assert orjson.loads(capsys.readouterr().out) == rows


@responses.activate
def test_remove_client_deletes_its_registration(capsys: pytest.CaptureFixture[str]) -> None:
    responses.delete(f"{BASE}/api/v1/models/1/clients/{CLIENT}/", status=204)
    assert main(["admin", "--url", BASE, "--token", "t", "remove-client", "1", CLIENT]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"removed": CLIENT, "federated_model": 1}
    assert [call.request.method for call in responses.calls] == ["DELETE"]


@responses.activate
def test_remove_client_prints_the_services_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    message = "Expected a client UUID, got 'nope'."
    responses.delete(f"{BASE}/api/v1/models/1/clients/nope/", status=400, json={"uuid": [message]})
    assert main(["admin", "--url", BASE, "--token", "t", "remove-client", "1", "nope"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: An API error occurred (status_code=400)")
    assert message in captured.err


@pytest.mark.parametrize(
    ("action", "method", "path"),
    [
        (["clients", "1"], "GET", "/api/v1/models/1/clients/"),
        (["remove-client", "1", CLIENT], "DELETE", f"/api/v1/models/1/clients/{CLIENT}/"),
    ],
)
@responses.activate
def test_client_actions_against_the_stock_service_say_they_need_the_reference_server(
    capsys: pytest.CaptureFixture[str], action: list[str], method: str, path: str
) -> None:
    # The stock service (Django) has no such route: an HTML 404, while the model exists.
    responses.add(method, f"{BASE}{path}", status=404, body="<h1>Not Found</h1>")
    responses.get(f"{BASE}/api/v1/models/1/", json={"id": 1})
    assert main(["admin", "--url", BASE, "--token", "t", *action]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: An API error occurred (status_code=404)")
    assert f"{method} {BASE}{path} needs the reference server (fma-connect serve)" in err
    assert "the stock FMA service has no such route" in err


@responses.activate
def test_client_actions_of_a_missing_model_say_so(capsys: pytest.CaptureFixture[str]) -> None:
    responses.get(f"{BASE}/api/v1/models/7/clients/", status=404, json={"detail": "Not found."})
    responses.get(f"{BASE}/api/v1/models/7/", status=404, json={"detail": "Not found."})
    assert main(["admin", "--url", BASE, "--token", "t", "clients", "7"]) == 1
    err = capsys.readouterr().err
    assert "Not found." in err
    assert "reference server" not in err
