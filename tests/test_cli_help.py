"""Every ``fma-connect`` command's --help says what it does, in the words users need."""

from __future__ import annotations

import pytest

from fma_connect.cli import main

ADMIN_ACTIONS = [
    "create-model",
    "models",
    "delete-model",
    "updates",
    "aggregates",
    "aggregate",
    "publish",
    "clients",
    "remove-client",
]
COMMANDS = [["codecs"], ["serve"], ["demo"], ["admin"], ["admin-token"], ["bench"]] + [
    ["admin", action] for action in ADMIN_ACTIONS
]


def help_of(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    """The --help output of ``command``."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_a_description(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    blocks = help_of(capsys, *command).split("\n\n")
    # usage, then the description, then the argument lists
    assert not blocks[1].startswith(("options:", "positional arguments:")), blocks[:2]


def test_admin_lists_each_action_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(capsys, "admin").split())
    assert "aggregates list a model's aggregates" in text
    assert "list its aggregates" not in text


def test_admin_aggregate_says_it_ignores_the_requirement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(help_of(capsys, "admin", "aggregate").split())  # argparse wraps lines
    assert "Run an aggregation round of a model's pending updates now" in text
    assert "whether or not the model's requirement is met" in text


def test_create_model_says_what_no_requirement_means(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(capsys, "admin", "create-model").split())
    assert "Default: none, so every single update makes its own aggregate" in text
    assert "use all_clients or require_x_updates for federated averaging" in text
