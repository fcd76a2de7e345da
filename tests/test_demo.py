"""The demo federation: real server, real clients, a model that beats any client alone."""

from __future__ import annotations

import io

import pytest

from fma_connect.cli import main
from fma_connect.demo import run_demo

pytest.importorskip("sklearn", reason="the demo trains on scikit-learn's bundled digits")


@pytest.mark.parametrize("codec", ["json", "msgpack", "npz-b64"])
def test_the_federation_beats_every_client_trained_alone(codec: str) -> None:
    out = io.StringIO()
    result = run_demo(clients=3, rounds=3, codec=codec, out=out, progress=False)
    assert [r.round for r in result.rounds] == [1, 2, 3]
    assert all(r.wire_bytes > 0 for r in result.rounds)
    assert result.final_accuracy > result.best_single_client + 0.2
    printed = out.getvalue()
    assert "final accuracy" in printed
    assert f"codec {codec}" in printed


def test_torch_clients_reach_the_same_kind_of_model() -> None:
    pytest.importorskip("torch")
    result = run_demo(
        clients=3, rounds=3, codec="msgpack", framework="torch", progress=False, out=io.StringIO()
    )
    assert result.final_accuracy > result.best_single_client + 0.2


def test_cli_demo_exits_zero_when_the_federation_wins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rounds", "2", "--codec", "msgpack"]) == 0
    assert "final accuracy" in capsys.readouterr().out


def test_cli_demo_reports_an_unknown_codec_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--codec", "nope"]) == 1
    assert "no codec named 'nope'; installed codecs:" in capsys.readouterr().err
