"""The benchmark's --quick smoke run: it completes, prints the tables it promises, says it
is a smoke run, and skips what a missing extra would provide, naming the extra.

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
from fma_connect.bench.ops import run_op
from fma_connect.bench.report import (
    CODEC_COLUMNS,
    TARGET_COLUMNS,
    TRANSFER_COLUMNS,
    Results,
    render,
    targets,
)

INSTALL = "pip install 'fma-connect[bench]'"
#: Targets that hold at any payload size, so a smoke run judges them.
ANY_SIZE = ("json wire size", "values back as sent")


def _header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _target_rows(out: str) -> dict[str, list[str]]:
    """Target name -> [measured, goal, met], from a printed report's targets table."""
    table = out.split("## Targets", 1)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")]
    return {row[0].strip(): [c.strip() for c in row[1:]] for row in rows[1:]}


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
    # A smoke run says so above its tables, and judges only what holds at any size.
    assert out.startswith("**Smoke run** (`--quick`: 256 KB,")
    assert report.startswith("# Benchmark results (smoke run)")
    assert "## Targets (smoke run: only wire size and exactness are judged)" in out
    # (A baseline not installed here, safetensors without the bench extra, is skipped.)
    verdicts = {
        name: met
        for name, (measured, _, met) in _target_rows(out).items()
        if not measured.startswith("skipped: ")
    }
    judged = {name for name in verdicts if name.startswith(ANY_SIZE)}
    assert len(judged) == 2 and all(verdicts[name] in ("yes", "**no**") for name in judged)
    sized = {name: met for name, met in verdicts.items() if name not in judged}
    assert len(sized) >= 10 and set(sized.values()) == {"n/a (smoke run)"}, sized


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


def _failing_results(smoke: bool) -> Results:
    """Figures of one size where every speed target and the wire size target fail."""
    size = 10**6
    results = Results(sizes=[size], smoke=smoke)
    results.transfer[(size, "upload")] = {"plain_s": 1.0, "ours_s": 2.0, "ours_peak": size}
    results.codec[(size, "json")] = {"encode_s": 1.0, "decode_s": 1.0, "wire": 4 * size}
    results.baseline[(size, "original")] = {"encode_s": 1.0, "decode_s": 1.0}
    results.roundtrip[(size, "original")] = {"seconds": 1.0}
    results.roundtrip[(size, "msgpack")] = {"seconds": 1.0, "exact": True}
    return results


def test_a_smoke_run_shows_size_dependent_targets_as_not_judged() -> None:
    full = {row[0]: row[3] for row in targets(_failing_results(smoke=False))}
    smoke = {row[0]: row[3] for row in targets(_failing_results(smoke=True))}
    assert full.keys() == smoke.keys()
    speed = "send_update vs requests.post, 1 MB"
    assert full[speed] == "**no**" and smoke[speed] == "n/a (smoke run)"
    assert full["round trip msgpack vs original client, 1 MB"] == "**no**"
    assert smoke["round trip msgpack vs original client, 1 MB"] == "n/a (smoke run)"
    # Bytes per value do not depend on the size: a smoke run still fails a wire size miss.
    assert full["json wire size, 1 MB"] == smoke["json wire size, 1 MB"] == "**no**"
    assert "n/a (smoke run)" not in full.values()
    assert not render(_failing_results(smoke=False)).startswith("**Smoke run**")
    assert render(_failing_results(smoke=True)).startswith("**Smoke run** (`--quick`: 1 MB,")


def test_a_missing_baseline_library_is_skipped_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import fails as if not installed
    spec = {"op": "baseline", "kind": "safetensors", "size": 4096, "repeat": 1, "warmup": False}
    figures = run_op(spec)
    assert figures == {"skipped": f"safetensors is not installed ({INSTALL})"}

    results = Results(sizes=[4096])
    results.codec[(4096, "msgpack")] = run_op({**spec, "op": "codec", "codec": "msgpack"})
    results.baseline[(4096, "safetensors")] = figures
    out = render(results)
    row = next(line for line in out.splitlines() if "safetensors library" in line)
    assert f"| skipped: safetensors is not installed ({INSTALL}) |" in row
    assert "ModuleNotFoundError" not in out
    assert _target_rows(out)["msgpack vs safetensors, 4.1 KB"][0].startswith("skipped: ")


def test_without_matplotlib_the_report_is_printed_and_the_chart_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    chart = tmp_path / "chart.png"
    args = _args("--quick", "--sizes", "16KB", "--codecs", "msgpack", "--chart", str(chart))

    assert run_bench(args, "fma-connect bench --quick") == 0

    captured = capsys.readouterr()
    assert "## Targets" in captured.out
    skipped = f"chart skipped: matplotlib is not installed ({INSTALL})"
    assert captured.err.count(skipped) == 2  # before the run and after its report
    assert not chart.exists()


def test_without_the_server_the_run_stops_at_once_naming_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)

    assert run_bench(_args("--quick"), "fma-connect bench --quick") == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: the benchmark runs the reference server, but uvicorn is not installed "
        f"({INSTALL})\n"
    )
