"""A model's aggregator and aggregator_args: checked against the installed aggregators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fma_connect import (
    AggregatorRegistry,
    APIError,
    WebClient,
    build_aggregator_registry,
    plugin_manager,
)
from fma_connect.admin import AdminClient
from fma_connect.cli import main
from fma_connect.server import rounds, validation
from fma_connect.server.aggregators import Mean
from fma_connect.server.testing import RunningServer, running_server


def _post(server: RunningServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/models/",
        json={"name": "m", "developer": 1, **body},
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )


def _patch(server: RunningServer, model_id: int, body: dict[str, Any]) -> requests.Response:
    return requests.patch(
        f"{server.url}/api/v1/models/{model_id}/",
        json=body,
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    )


def test_an_unknown_aggregator_lists_the_installed_ones(server: RunningServer) -> None:
    answer = _post(server, {"aggregator": "fed_nonesuch"})
    assert answer.status_code == 400
    (message,) = answer.json()["aggregator"]
    assert message.startswith("'fed_nonesuch' (string) is not a valid choice; expected one of: ")
    for name in ("avg_values_if_data", "fed_adam", "fed_avg", "median", "trimmed_mean"):
        assert name in message


@pytest.mark.parametrize(
    ("aggregator", "args", "expected"),
    [
        ("fed_adam", {"eta": -1}, "fed_adam's eta must be a number greater than 0, got -1"),
        ("fed_adam", {"eta": "fast"}, "fed_adam's eta must be a number greater than 0, got 'fast'"),
        ("fed_yogi", {"beta_1": 1}, "beta_1 must be a number at least 0 and less than 1, got 1"),
        ("fed_adam", {"lr": 0.1}, "fed_adam takes no argument 'lr'; it takes eta (the server"),
        ("fed_adam", [0.1], "fed_adam takes an object of named arguments: eta"),
        ("trimmed_mean", {"trim": 0.5}, "trim must be a number at least 0 and less than 0.5"),
        ("median", {"trim": 0.1}, "median takes no arguments, got {'trim': 0.1}"),
        ("avg_values_if_data", {"x": 1}, "avg_values_if_data takes no arguments"),
    ],
)
def test_bad_aggregator_args_get_a_400_saying_what_is_expected(
    server: RunningServer, aggregator: str, args: Any, expected: str
) -> None:
    answer = _post(server, {"aggregator": aggregator, "aggregator_args": args})
    assert answer.status_code == 400
    (message,) = answer.json()["aggregator_args"]
    assert expected in message


def test_aggregator_args_are_kept_and_shown_after_the_aggregator(server: RunningServer) -> None:
    answer = _post(server, {"aggregator": "trimmed_mean", "aggregator_args": {"trim": 0.2}})
    assert answer.status_code == 201
    model = answer.json()
    keys = list(model)
    assert keys[keys.index("aggregator") + 1] == "aggregator_args"
    assert model["aggregator_args"] == {"trim": 0.2}
    listed = requests.get(
        f"{server.url}/api/v1/models/",
        headers={"Authorization": f"Token {server.admin_token}"},
        timeout=10,
    ).json()
    assert listed[0]["aggregator_args"] == {"trim": 0.2}
    plain = _post(server, {"aggregator": "fed_avg"}).json()
    assert plain["aggregator_args"] is None


def test_a_patch_checks_args_against_the_aggregator_they_go_with(server: RunningServer) -> None:
    model = _post(server, {"aggregator": "trimmed_mean", "aggregator_args": {"trim": 0.2}}).json()
    refused = _patch(server, model["id"], {"aggregator_args": {"trim": 0.7}})
    assert refused.status_code == 400 and "trim must be" in refused.json()["aggregator_args"][0]
    # Another aggregator without args: the old ones are dropped, not checked against it.
    changed = _patch(server, model["id"], {"aggregator": "median"})
    assert changed.status_code == 200
    assert changed.json()["aggregator_args"] is None
    both = _patch(server, model["id"], {"aggregator": "fed_adam", "aggregator_args": {"eta": 1}})
    assert both.status_code == 200 and both.json()["aggregator_args"] == {"eta": 1}
    mismatched = _patch(
        server, model["id"], {"aggregator": "median", "aggregator_args": {"eta": 1}}
    )
    assert mismatched.status_code == 400
    assert "median takes no arguments" in mismatched.json()["aggregator_args"][0]


def _registry(*extra: Any) -> AggregatorRegistry:
    registry = build_aggregator_registry(plugin_manager(autoload=False))
    for aggregator in extra:
        registry.add(aggregator)
    return registry


def test_a_model_whose_aggregator_is_gone_gets_a_400_round(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server takes its aggregators from the installed plugins: stand in for them.
    custom = _registry(Mean("plugin_mean", "a plugin's mean", weighted=False))
    for module in (rounds, validation):
        monkeypatch.setattr(module, "default_aggregator_registry", lambda: custom)
    with running_server(data_dir, auto_aggregate="off") as server:
        model = _post(server, {"aggregator": "plugin_mean"}).json()
        client = WebClient(model["id"], url=server.url, retries=0)
        client.register()
        client.send_update([np.ones(3)])
    custom = _registry()  # the plugin was uninstalled
    with running_server(data_dir, auto_aggregate="off") as server:
        admin = AdminClient(server.url, server.admin_token, retries=0)
        with pytest.raises(APIError, match="no aggregator named 'plugin_mean'; installed") as e:
            admin.aggregate(model["id"])
        assert e.value.status_code == 400
        assert admin.list_updates(model["id"])[0]["status"] == 0  # PENDING: it may come back


def _admin_cli(server: RunningServer, *args: str) -> list[str]:
    return ["admin", "--url", server.url, "--token", server.admin_token, *args]


def test_the_cli_sets_aggregator_args(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-model", "robust", "--aggregator", "trimmed_mean"]
    assert main(_admin_cli(server, *args, "--aggregator-args", '{"trim": 0.2}')) == 0
    model = json.loads(capsys.readouterr().out)
    assert (model["aggregator"], model["aggregator_args"]) == ("trimmed_mean", {"trim": 0.2})
    assert main(_admin_cli(server, *args, "--aggregator-args", '{"trim": 2}')) == 1
    assert "trim must be a number at least 0 and less than 0.5, got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_admin_cli(server, *args, "--aggregator-args", "[0.2]"))
    assert "expected a JSON object" in capsys.readouterr().err
