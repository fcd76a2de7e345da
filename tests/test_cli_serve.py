"""``fma-connect serve``: bad arguments are argparse errors, a restart says how to see the token."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fma_connect.cli import main
from fma_connect.cli_serve import LOG_LEVELS

_TIMEOUT = 30


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("99999", "argument --port: a port is 0-65535 (0: any free port), got 99999"),
        ("-1", "argument --port: a port is 0-65535 (0: any free port), got -1"),
        ("http", "argument --port: expected a port number, got 'http'"),
    ],
)
def test_a_port_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], port: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", f"--port={port}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fma-connect serve")
    assert f"error: {message}" in err


def test_an_unknown_log_level_is_a_usage_error_listing_the_levels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--log-level", "bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument --log-level: invalid choice: 'bogus' (choose from " in err
    listed = err.split("(choose from ", 1)[1]
    assert [level.strip(" '") for level in listed.split(")")[0].split(",")] == list(LOG_LEVELS)


def test_the_log_levels_are_uvicorns() -> None:
    config = pytest.importorskip("uvicorn.config")
    assert sorted(LOG_LEVELS) == sorted(config.LOG_LEVELS)


def _start(data_dir: Path) -> list[str]:
    """Run ``serve --port 0`` until it listens, stop it; return what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FMA_CONNECT_ADMIN_TOKEN", None)
    command = [sys.executable, "-m", "fma_connect", "serve", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--log-level", "WARNING", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("listening on"):
                break
    finally:
        process.terminate()
        process.wait(_TIMEOUT)
        process.stdout.close()
    assert any(line.startswith("listening on") for line in lines), lines
    return lines


def test_a_restart_says_how_to_print_the_stored_token(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    data_dir = tmp_path / "data dir"  # a space: the command shown must still paste
    first = _start(data_dir)
    assert any(line.startswith("admin token (created now") for line in first), first
    again = _start(data_dir)
    where = shlex.quote(str(data_dir.resolve()))
    assert (
        "admin token: the stored one (or FMA_CONNECT_ADMIN_TOKEN); "
        f"run `fma-connect admin-token --data-dir {where}` to print it"
    ) in again
