"""The federation benchmark (benchmarks/federation.py): its --quick run and its byte counter.

The quick run is a real federation on the reference server, so its figures are checked
for plausibility only (training helps, bytes flow, quantizing sends fewer); no wall-clock
figure is checked.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("sklearn", reason="the federation trains on scikit-learn's bundled digits")

from fma_connect.bench.counting_proxy import ByteCounts, counting_proxy
from fma_connect.bench.federation_cli import main
from fma_connect.bench.schemes import parse_schemes
from fma_connect.exceptions import ConfigurationError
from fma_connect.server.testing import running_server

#: The summary table's columns, as federation.md writes them.
SUMMARY = (
    "| scheme | codec | final accuracy | vs msgpack (points) | up MB | down MB "
    "| up / msgpack | down / msgpack | bit-exact |"
)


def _rows(markdown: str, header: str) -> dict[str, list[str]]:
    """The rows of the table under ``header``, by their first cell."""
    lines = markdown.splitlines()
    start = lines.index(header) + 2  # past the header and its |---| line
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def test_quick_run_reports_each_scheme_with_plausible_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quick", "--rounds", "2", "--speed-params", "100000"]
    # Built-in codecs only: the plugins (quantize-*) are installed in the plugins env alone.
    argv += ["--schemes", "msgpack", "sparse 5% float16", "--output", str(tmp_path)]
    assert main(argv) == 0

    report = (tmp_path / "federation.md").read_text(encoding="utf-8")
    assert report.startswith("# Federation benchmark (smoke run)")
    rows = _rows(report, SUMMARY)
    assert set(rows) == {"msgpack", "sparse 5% float16"}
    for cells in rows.values():
        # Two rounds lift the aggregate well above chance (0.1) on the ten digits.
        assert float(cells[2]) > 0.3
        assert float(cells[4].replace(",", "")) > 0
        assert float(cells[5].replace(",", "")) > 0
    msgpack, sparse = rows["msgpack"], rows["sparse 5% float16"]
    assert float(sparse[4].replace(",", "")) < float(msgpack[4].replace(",", "")) / 10
    assert msgpack[8] == "yes"  # lossless: every update and model checked bit for bit
    assert sparse[8] == "lossy"

    figures = json.loads((tmp_path / "federation.json").read_text(encoding="utf-8"))
    runs = {run["label"]: run for run in figures["schemes"]}
    assert [r["round"] for r in runs["msgpack"]["rounds"]] == [1, 2]
    # Every round sends a whole model per client each way: 10 clients x 167,178 x 4 bytes.
    assert all(r["up"] > 10 * 167_178 * 4 for r in runs["msgpack"]["rounds"])
    assert [s["label"] for s in figures["speed"]] == ["msgpack", "sparse 5% float16"]
    assert figures["speed"][1]["wire_bytes"] < figures["speed"][0]["wire_bytes"] / 3

    png = tmp_path / "federation.png"
    assert png.exists() or "PNG skipped: matplotlib is not installed" in report
    printed = capsys.readouterr().out
    assert "msgpack: 2 rounds, accuracy" in printed
    assert "sparse 5% float16: 2 rounds, accuracy" in printed


def test_a_scheme_whose_codec_is_missing_is_skipped_with_a_note(tmp_path: Path) -> None:
    argv = ["--quick", "--rounds", "1", "--clients", "2", "--speed-params", "0"]
    argv += ["--schemes", "msgpack", "no-such-codec", "--output", str(tmp_path)]
    assert main(argv) == 0
    report = (tmp_path / "federation.md").read_text(encoding="utf-8")
    rows = _rows(report, SUMMARY)
    assert rows["no-such-codec"][1].startswith("skipped: codec 'no-such-codec' is not installed")
    assert "## Encode + decode" not in report


def test_schemes_take_codec_objects_with_parameters() -> None:
    plain, preset, built = parse_schemes(
        [
            "zstd+quantize-f16",
            "msgpack",
            "f16=fma_connect_quantize.codec:QuantizeCodec(name='quantize-f16')",
        ]
    )
    assert (plain.label, plain.codec) == ("zstd+quantize-f16", "zstd+quantize-f16")
    assert preset.codec == "msgpack"
    assert built.label == "f16" and callable(built.codec)
    pytest.importorskip("fma_connect_quantize")
    first, second = built.codec(), built.codec()
    assert first.name == "quantize-f16" and first is not second  # one object per client
    with pytest.raises(ConfigurationError, match="keyword arguments only"):
        parse_schemes(["x=module:Codec(1)"])
    with pytest.raises(ConfigurationError, match="must be literals"):
        parse_schemes(["x=module:Codec(a=b)"])
    with pytest.raises(ConfigurationError, match="given twice"):
        parse_schemes(["msgpack", "msgpack"])


def test_the_proxy_counts_every_byte_each_way(tmp_path: Path) -> None:
    request = b"GET /api/v1/models/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with running_server(tmp_path) as server, counting_proxy(server.url) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401")  # no admin token: the server answered
        assert proxy.counts() == ByteCounts(up=len(request), down=len(answer))
        assert proxy.connections == 1
