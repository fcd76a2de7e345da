"""The benchmark's --quick smoke run: it completes and prints the tables it promises.

No figure is checked against a threshold: timings belong to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from fma_connect.bench import add_arguments, parse_size, run_bench
from fma_connect.bench.report import (
    CODEC_COLUMNS,
    TARGET_COLUMNS,
    TRANSFER_COLUMNS,
    Results,
    targets,
)


def _header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |"


def test_quick_run_prints_every_table_with_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    markdown = tmp_path / "results.md"
    args = parser.parse_args(
        ["--quick", "--codecs", "json", "msgpack", "--markdown", str(markdown)]
    )

    assert run_bench(args, "fma-connect bench --quick") == 0

    out = capsys.readouterr().out
    for columns in (CODEC_COLUMNS, TRANSFER_COLUMNS, TARGET_COLUMNS):
        assert _header(columns) in out
    rows = [line for line in out.splitlines() if line.startswith("| 256 KB |")]
    names = {line.split("|")[2].strip() for line in rows}
    assert {"msgpack", "json", "memcpy (ceiling)", "pickle5"} <= names
    assert "original client (stdlib json over tolist())" in names
    assert "np.save per array (Flower)" in names
    assert "bare-socket POST (ceiling)" in names
    assert "check_for_latest_model (msgpack), same URL" in names
    codec_row = next(line for line in rows if line.split("|")[2].strip() == "msgpack")
    assert len(codec_row.strip("|").split("|")) == len(CODEC_COLUMNS)
    assert "round trip msgpack vs original client, 256 KB" in out
    exactness = next(line for line in out.splitlines() if line.startswith("| values back as sent"))
    assert exactness.endswith("| all | yes |"), exactness
    report = markdown.read_text(encoding="utf-8")
    assert report.startswith("# Benchmark results")
    assert "Command: `fma-connect bench --quick`" in report


def test_sizes_parse_decimal_and_binary_units() -> None:
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1GB") == 10**9
    assert parse_size("5GiB") == 5 * 2**30
    assert parse_size("256kb") == 256_000


def test_json_encode_floor_script_prints_its_paths_and_tensors() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "json_encode_floor.py"
    done = subprocess.run(
        [sys.executable, str(script), "--mb", "1", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in rows}
    paths = (
        "stdlib json over tolist()",
        "json codec (nested lists)",
        "same values written flat (floor)",
    )
    for path in paths:
        seconds, ratio = cells[path]
        assert float(seconds) > 0 and float(ratio.rstrip("x")) > 0
    assert cells["stdlib json over tolist()"][1] == "1.00x"
    assert {"dense.weight", "conv.weight", "head.weight", "dense.bias"} <= set(cells)


def test_a_payload_that_came_back_different_fails_the_exactness_target() -> None:
    results = Results(sizes=[10**6])
    results.codec[(10**6, "msgpack")] = {"exact": True}
    results.roundtrip[(10**6, "msgpack")] = {"exact": False}
    results.roundtrip[(10**6, "json")] = {"exact": None}  # lossy: nothing promised
    row = next(r for r in targets(results) if r[0].startswith("values back as sent"))
    assert row[1:] == ["1 of 2 (not: round trip msgpack 1 MB)", "all", "**no**"]
