"""The benchmark's --quick smoke run: it completes and prints the tables it promises.

No figure is checked against a threshold: timings belong to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from fma_connect.bench import add_arguments, parse_size, run_bench
from fma_connect.bench.report import CODEC_COLUMNS, TARGET_COLUMNS, TRANSFER_COLUMNS


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
    report = markdown.read_text(encoding="utf-8")
    assert report.startswith("# Benchmark results")
    assert "Command: `fma-connect bench --quick`" in report


def test_sizes_parse_decimal_and_binary_units() -> None:
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1GB") == 10**9
    assert parse_size("5GiB") == 5 * 2**30
    assert parse_size("256kb") == 256_000
