"""The fma-connect command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fma_connect.cli import main


def test_codecs_lists_each_codec_with_its_plugin_and_distribution(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["codecs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "name",
        "media",
        "type",
        "lossless",
        "JSON-native",
        "plugin",
        "distribution",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["msgpack"][1:4] == ["application/vnd.fma-connect.msgpack", "yes", "no"]
    assert rows["json"][1:4] == ["application/json", "no", "yes"]
    assert rows["npz-b64"][-2:] == ["fma-connect", __import__("fma_connect").__version__]


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fma_connect", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("fma-connect ")
