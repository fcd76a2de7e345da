"""The wire-speed benchmark (benchmarks/wire_speed.py, issue 13): its --quick smoke run.

The run is real (bare-socket peers, ``fma-connect serve`` in a subprocess, a worker
process per comparison) on a few MiB, so it checks that every comparison runs and reports
figures that make sense: each rate positive, each ratio to its peer within a plausible
range. No wall-clock figure is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")

from fma_connect.bench import wire
from fma_connect.bench.wire import Contender, alternate, bare_post, durable_write
from fma_connect.bench.wire_budget import PASSES, ingest_budget, least_seconds
from fma_connect.bench.wire_cli import _helper, main
from fma_connect.bench.wire_report import COLUMNS

#: Every comparison the report promises, by its JSON key.
ROWS = (
    "client_upload",
    "client_upload_bare",
    "client_download",
    "client_download_into",
    "client_download_fresh",
    "server_ingest_durable",
    "server_ingest_discard",
    "server_ingest_asgi",
    "server_ingest_floor",
    "server_ingest_floor_durable",
    "server_ingest_one_in_flight",
    "server_ingest_budget",
    "server_egress",
    "server_egress_into",
    "server_egress_preallocated",
    "server_egress_asgi",
    "round_trip",
    "round_trip_into",
    "round_trip_preallocated",
    "poll_latency",
    "update_latency",
    "polls_per_second",
    "server_polls_per_second",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("wire")
    assert main(["--quick", "--output", str(output), "--data-root", str(output)]) == 0
    return output


def test_quick_run_reports_every_comparison_with_plausible_figures(quick_run: Path) -> None:
    document = json.loads((quick_run / "wire_speed.json").read_text(encoding="utf-8"))
    assert document["quick"] is True
    rows = {row["key"]: row for row in document["rows"]}
    assert set(rows) == set(ROWS)
    for key, row in rows.items():
        assert row["ours"] > 0, key
        assert row["peer_rate"] > 0, key
        # A ratio of speeds, not a unit slip (which is a factor of 1000 or more). A smoke
        # run's 4 MiB timings on a shared machine (the suite runs in parallel) scatter by
        # several times either way, so this judges no speed.
        assert 0 < row["ratio"] < 50, (key, row["ratio"])
        assert row["met"] == "-", key  # a smoke run judges no target
    assert rows["client_upload"]["target"] == 0.9
    assert rows["round_trip"]["target"] == pytest.approx(1 / 1.5)
    assert rows["poll_latency"]["target"] is None
    # The comparisons moved the payload (4 MiB of float32), not an empty body.
    for op in ("client_upload", "client_download", "server_ingest", "round_trip"):
        assert document["results"][op]["payload"] == 4 << 20, op


def test_quick_report_is_a_marked_smoke_run_with_the_table(quick_run: Path) -> None:
    report = (quick_run / "wire_speed.md").read_text(encoding="utf-8")
    assert report.startswith("# Wire speed (issue 13) (smoke run: no target judged)")
    assert "| " + " | ".join(COLUMNS) + " |" in report
    table = report.split("| " + " | ".join(COLUMNS) + " |", 1)[1].split("\n\n", 1)[0]
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(ROWS)
    assert "### Where the client upload's time goes" in report
    assert "The msgpack codec's crc32 in the run's processes: " in report
    assert "### The least CPU a server ingest needs here" in report


def test_the_bare_sink_stores_a_body_whole_and_the_ceiling_writes_one(tmp_path: Path) -> None:
    # The ingest's floor and ceiling must do the work they are compared for: every byte
    # on disk, in order (a peer that dropped bytes would be a fast, false floor).
    body = np.random.default_rng(3).integers(0, 256, (9 << 20) + 5, np.uint8)
    with _helper("bare", "1024", str(tmp_path)) as url:
        bare_post(url, body, "/store/floor.bin")
        bare_post(url, body[:10], "/")  # any other POST is still dropped
    assert (tmp_path / "floor.bin").read_bytes() == body.tobytes()
    remove = durable_write(tmp_path, body)
    [written] = tmp_path.glob("ceiling-*.bin")
    assert written.read_bytes() == body.tobytes()
    remove()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["floor.bin"]


def test_each_timed_run_starts_after_its_setup_with_memory_primed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(wire, "prime_memory", lambda nbytes: events.append(f"prime {nbytes}"))
    contender = Contender(
        "a", lambda: events.append("run"), lambda: events.append("setup"), lambda: None
    )
    alternate([contender], 2, warmup=True, prime=123)
    assert events == ["setup", "prime 123", "run"] * 3
    events.clear()
    alternate([contender], 1, warmup=False)  # no priming unless asked
    assert events == ["setup", "run"]


def test_the_ingest_budget_times_every_pass_and_leaves_nothing_behind(tmp_path: Path) -> None:
    arrays: list[np.ndarray] = [np.ones(1 << 18, np.float32), np.arange(1000, dtype=np.float64)]
    body = np.random.default_rng(4).integers(0, 256, (3 << 20) + 7, np.uint8)
    stages = ingest_budget(arrays, body, tmp_path)
    assert set(stages) == set(PASSES)
    assert all(seconds > 0 for seconds in stages.values()), stages
    assert list(tmp_path.iterdir()) == []  # the durable write's file is gone
    # Two BLAKE3 and two crc32 passes, one of each other, spread over the cores given.
    even = dict.fromkeys(PASSES, 1.0)
    assert least_seconds(even, 2) == pytest.approx((2 + 2 + 1 + 1 + 1) / 2)
