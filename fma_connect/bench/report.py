"""The benchmark's report: markdown tables, the issue's targets as ratios, a PNG chart.

Throughputs are megabytes (10**6 bytes) of raw tensor data per second of wall time,
whatever the wire size; peaks are extra resident memory as a multiple of the payload.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Results", "machine_notes", "render", "targets", "write_chart"]

Figures = dict[str, Any]
CODEC_COLUMNS = [
    "size",
    "codec / baseline",
    "encode MB/s",
    "decode MB/s",
    "wire / raw",
    "round trip MB/s",
    "encode peak",
    "decode peak",
    "round trip client peak",
    "round trip server peak",
]
TRANSFER_COLUMNS = ["size", "transfer", "MB/s", "vs ceiling", "client peak"]
TARGET_COLUMNS = ["target", "measured", "goal", "met"]


@dataclass
class Results:
    """Every figure of a run, keyed by (size in bytes, case name)."""

    sizes: list[int]
    codec: dict[tuple[int, str], Figures] = field(default_factory=dict)
    baseline: dict[tuple[int, str], Figures] = field(default_factory=dict)
    transfer: dict[tuple[int, str], Figures] = field(default_factory=dict)
    roundtrip: dict[tuple[int, str], Figures] = field(default_factory=dict)


def _label(size: int) -> str:
    from . import label

    return label(size)


def _rate(size: int, seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds <= 0:
        return "-"
    value = size / seconds / 1e6
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def _times(size: int, nbytes: Any) -> str:
    if not isinstance(nbytes, int | float):
        return "-"
    return f"{nbytes / size:.2f}x"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    lines = [_row(columns), "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join([*lines, *(_row(r) for r in rows)])


def _problem(figures: Figures | None) -> str | None:
    if figures is None:
        return "not run"
    if "refused" in figures:
        text = str(figures["refused"])
        return "refused: " + (text if len(text) < 90 else text[:87] + "...")
    if "error" in figures:
        return "error: " + str(figures["error"])[:120]
    return None


def _codec_rows(results: Results) -> list[list[str]]:
    rows = []
    names = sorted({name for _, name in results.codec}, key=_codec_order)
    for size in results.sizes:
        for name in names:
            rows.append(_figures_row(size, name, results.codec.get((size, name)), results))
        for kind in ("original", "np.save", "safetensors", "pickle5", "memcpy"):
            figures = results.baseline.get((size, kind))
            if figures is not None:
                shown = {
                    "original": "original client (stdlib json over tolist())",
                    "np.save": "np.save per array (Flower)",
                    "safetensors": "safetensors library (save/load)",
                    "memcpy": "memcpy (ceiling)",
                }.get(kind, kind)
                trip = kind if kind == "original" else None
                rows.append(_figures_row(size, kind, figures, results, shown, trip))
    return rows


def _codec_order(name: str) -> tuple[int, str]:
    return ({"msgpack": 0, "json": 1, "npz-b64": 2}.get(name, 3), name)


def _figures_row(
    size: int,
    name: str,
    figures: Figures | None,
    results: Results,
    shown: str | None = None,
    trip_name: str | None = "",
) -> list[str]:
    cells = [_label(size), shown or name]
    problem = _problem(figures)
    trip = results.roundtrip.get((size, name if trip_name == "" else trip_name or ""))
    trip_cells = ["-", "-", "-"]
    if trip is not None and _problem(trip) is None:
        trip_cells = [
            _rate(size, trip.get("seconds")),
            _times(size, trip.get("peak")),
            _times(size, trip.get("server_anon")),
        ]
    if problem is not None or figures is None:
        return [*cells, problem or "-", "", "", trip_cells[0], "", "", *trip_cells[1:]]
    wire = figures.get("wire")
    return [
        *cells,
        _rate(size, figures.get("encode_s")),
        _rate(size, figures.get("decode_s")),
        f"{wire / size:.2f}" if isinstance(wire, int) else "-",
        trip_cells[0],
        _times(size, figures.get("encode_peak")),
        _times(size, figures.get("decode_peak")),
        *trip_cells[1:],
    ]


def _transfer_rows(results: Results) -> list[list[str]]:
    rows = []
    for size in results.sizes:
        raw = results.transfer.get((size, "raw")) or {}
        up = results.transfer.get((size, "upload")) or {}
        down = results.transfer.get((size, "download")) or {}
        post_ceiling, get_ceiling = raw.get("post_s"), raw.get("get_s")
        entries = [
            ("bare-socket POST (ceiling)", raw.get("post_s"), post_ceiling, None),
            ("bare-socket GET (ceiling)", raw.get("get_s"), get_ceiling, None),
            (
                "requests.post, pre-encoded, discarding endpoint",
                up.get("plain_s"),
                post_ceiling,
                None,
            ),
            (
                "send_update (msgpack), same endpoint",
                up.get("ours_s"),
                post_ceiling,
                up.get("ours_peak"),
            ),
            ("streamed GET into a preallocated buffer", down.get("plain_s"), get_ceiling, None),
            (
                "check_for_latest_model (msgpack), same URL",
                down.get("ours_s"),
                get_ceiling,
                down.get("ours_peak"),
            ),
        ]
        for name, seconds, ceiling, peak in entries:
            vs = (
                f"{ceiling / seconds:.2f}"
                if isinstance(seconds, float) and isinstance(ceiling, float)
                else "-"
            )
            rows.append([_label(size), name, _rate(size, seconds), vs, _times(size, peak)])
    return rows


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
        return float(a) / float(b)
    return None


def targets(results: Results) -> list[list[str]]:
    """The issue's targets at the largest size each was measured at: measured, goal, met."""
    rows: list[list[str]] = []

    def add(name: str, value: float | None, goal: str, met: bool | None, unit: str = "x") -> None:
        shown = "-" if value is None else f"{value:.2f}{unit}"
        rows.append([name, shown, goal, "-" if met is None or value is None else _yes(met)])

    gb = [s for s in results.sizes if (s, "upload") in results.transfer]
    if gb:
        size = max(gb)
        up = results.transfer[(size, "upload")]
        ratio = _ratio(up.get("plain_s"), up.get("ours_s"))
        add(f"send_update vs requests.post, {_label(size)}", ratio, "≥ 0.8x", _ge(ratio, 0.8))
        peak = _ratio(up.get("ours_peak"), size)
        add(
            f"send_update client peak extra, {_label(size)}", peak, "≤ 0.1x payload", _le(peak, 0.1)
        )
        down = results.transfer.get((size, "download")) or {}
        ratio = _ratio(down.get("plain_s"), down.get("ours_s"))
        add(
            f"check_for_latest_model vs streamed GET, {_label(size)}",
            ratio,
            "≥ 0.8x",
            _ge(ratio, 0.8),
        )
        peak = _ratio(down.get("ours_peak"), size)
        add(f"download client peak, {_label(size)}", peak, "≤ 1.1x payload", _le(peak, 1.1))
    with_original = [s for s in results.sizes if (s, "original") in results.roundtrip]
    if with_original:
        size = max(with_original)
        ratio = _ratio(
            results.roundtrip[(size, "original")].get("seconds"),
            (results.roundtrip.get((size, "msgpack")) or {}).get("seconds"),
        )
        add(
            f"round trip msgpack vs original client, {_label(size)}",
            ratio,
            "≥ 100x",
            _ge(ratio, 100),
        )
        original = results.baseline.get((size, "original")) or {}
        json_codec = results.codec.get((size, "json")) or {}
        ratio = _ratio(original.get("encode_s"), json_codec.get("encode_s"))
        add(
            f"json encode vs stdlib json over tolist(), {_label(size)}",
            ratio,
            "≥ 20x",
            _ge(ratio, 20),
        )
        ratio = _ratio(original.get("decode_s"), json_codec.get("decode_s"))
        add(
            f"json decode vs stdlib json over tolist(), {_label(size)}",
            ratio,
            "≥ 10x",
            _ge(ratio, 10),
        )
        wire = _ratio(json_codec.get("wire"), size)
        add(f"json wire size, {_label(size)}", wire, "≤ 3.2x raw", _le(wire, 3.2))
    trips = [s for s in results.sizes if (s, "msgpack") in results.roundtrip]
    if trips:
        size = max(trips)
        trip = results.roundtrip[(size, "msgpack")]
        peak = _ratio(trip.get("peak"), size)
        add(
            f"round trip client peak (msgpack), {_label(size)}",
            peak,
            "≤ 1.1x payload",
            _le(peak, 1.1),
        )
        peak = _ratio(trip.get("server_anon"), size)
        add(
            f"round trip server peak anonymous memory (msgpack), {_label(size)}",
            peak,
            "≤ 1.1x payload",
            _le(peak, 1.1),
        )
    rows += _versus_baselines(results)
    rows.append(_exactness(results))
    return rows


def _exactness(results: Results) -> list[str]:
    """Whether every lossless decode and round trip of the run gave back every bit."""
    checked = [
        (f"{kind} {name} {_label(size)}", figures["exact"])
        for kind, table in (("codec", results.codec), ("round trip", results.roundtrip))
        for (size, name), figures in table.items()
        if isinstance(figures, dict) and figures.get("exact") is not None
    ]
    wrong = [what for what, exact in checked if not exact]
    shown = f"{len(checked) - len(wrong)} of {len(checked)}"
    if wrong:
        shown += f" (not: {', '.join(wrong)})"
    return [
        "values back as sent (lossless codecs and json: decode, round trip)",
        shown,
        "all",
        _yes(not wrong),
    ]


def _versus_baselines(results: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    sizes = [s for s in results.sizes if (s, "msgpack") in results.codec]
    if not sizes:
        return rows
    size = max(sizes)
    ours = results.codec[(size, "msgpack")]
    for kind in ("np.save", "safetensors", "pickle5"):
        other = results.baseline.get((size, kind)) or {}
        if not other or _problem(other) is not None:
            continue  # not measured at this size (baselines stop at 2 GB)
        for what, key in (("encode", "encode_s"), ("decode", "decode_s")):
            ratio = _ratio(other.get(key), ours.get(key))
            name = f"msgpack {what} speed vs {kind}, {_label(size)}"
            rows.append([name, _fmt(ratio), "≥ 1x", _yes(ratio is not None and ratio >= 1)])
        peak_ours = max(ours.get("encode_peak", 0), ours.get("decode_peak", 0))
        peak_other = max(other.get("encode_peak", 0), other.get("decode_peak", 0))
        name = f"msgpack peak memory vs {kind}, {_label(size)} (ours / theirs)"
        rows.append(
            [
                name,
                f"{peak_ours / size:.2f}x / {peak_other / size:.2f}x",
                "ours ≤ theirs",
                _yes(peak_ours <= peak_other),
            ]
        )
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _ge(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _le(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def render(results: Results) -> str:
    """The report: codec table, transfer table and targets, in markdown."""
    return "\n".join(
        [
            "## Codecs and baselines",
            "",
            _table(CODEC_COLUMNS, _codec_rows(results)),
            "",
            "## Transfers",
            "",
            _table(TRANSFER_COLUMNS, _transfer_rows(results)),
            "",
            "## Targets",
            "",
            _table(TARGET_COLUMNS, targets(results)),
            "",
        ]
    )


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_notes(command: str, seconds: float) -> str:
    """A markdown header: the command, the machine and the library versions."""
    from .measure import cpu_name

    memory = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            memory = int(info.readline().split()[1]) * 1024
    except OSError:
        pass
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in (
            "numpy",
            "orjson",
            "requests",
            "urllib3",
            "uvicorn",
            "starlette",
            "isal",
            "pysimdjson",
            "safetensors",
            "msgpack",
        )
    )
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Command: `{command}` ({seconds / 60:.1f} minutes, {time.strftime('%Y-%m-%d')}).",
            "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}.",
            "",
            f"Libraries: {versions}.",
            "",
            "MB/s are 10^6 bytes of raw tensor data per second, best of the timed runs after "
            "one warm-up run (in each transfer comparison the runs of the two paths "
            "alternate, so a drift of the machine favours neither); peaks are the extra "
            "resident memory of the measuring process "
            "(VmHWM after a reset through /proc/self/clear_refs, minus VmRSS before) as a "
            "multiple of the payload, each measurement in a fresh process. The reference "
            "server runs in its own process; its peak is sampled anonymous memory (RssAnon; "
            "memory-mapped blob pages are page cache, not counted). A round trip is "
            "send_update, the server's round over that one update (stored to disk, averaged "
            "from the memory-mapped blob, stored again), then check_for_latest_model.",
            "",
        ]
    )


def write_chart(results: Results, path: Path) -> None:
    """Write a PNG: encode, decode and round-trip throughput per case at each size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results.sizes
    figure, axes = plt.subplots(len(sizes), 1, figsize=(12, 4.2 * len(sizes)), squeeze=False)
    for axis, size in zip(axes[:, 0], sizes, strict=True):
        names = [n for s, n in results.codec if s == size]
        names.sort(key=_codec_order)
        codecs = len(names)
        names += [k for s, k in results.baseline if s == size]
        encode, decode, trip = [], [], []
        for i, name in enumerate(names):
            table = results.codec if i < codecs else results.baseline
            figures = table.get((size, name)) or {}
            encode.append(_mbps(size, figures.get("encode_s")))
            decode.append(_mbps(size, figures.get("decode_s")))
            # Baselines have no round trip of their own, except the original client's path.
            key = name if i < codecs or name == "original" else ""
            trip.append(_mbps(size, (results.roundtrip.get((size, key)) or {}).get("seconds")))
        names = [n if i < codecs else f"{n} (baseline)" for i, n in enumerate(names)]
        positions = range(len(names))
        width = 0.27
        axis.bar([p - width for p in positions], encode, width, label="encode")
        axis.bar(list(positions), decode, width, label="decode")
        axis.bar([p + width for p in positions], trip, width, label="round trip (server)")
        axis.set_yscale("log")
        axis.set_ylabel("MB/s (log)")
        axis.set_title(f"{_label(size)} float32 model")
        axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize=8)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _mbps(size: int, seconds: Any) -> float:
    if isinstance(seconds, int | float) and seconds > 0:
        return size / seconds / 1e6
    return 0.0
