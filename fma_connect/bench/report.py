"""The benchmark's report: markdown tables, the issue's targets as ratios, a PNG chart.

Throughputs are megabytes (10**6 bytes) of raw tensor data per second of wall time,
whatever the wire size; peaks are extra resident memory as a multiple of the payload.
The figures live in :mod:`.results`, the targets are judged in :mod:`.targets`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

from .results import Figures, Results, label, problem
from .targets import NOT_JUDGED, targets

__all__ = ["Results", "machine_notes", "render", "smoke_note", "targets", "write_chart"]

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
    cells = [label(size), shown or name]
    why = problem(figures)
    trip = results.roundtrip.get((size, name if trip_name == "" else trip_name or ""))
    trip_cells = ["-", "-", "-"]
    if trip is not None and problem(trip) is None:
        trip_cells = [
            _rate(size, trip.get("seconds")),
            _times(size, trip.get("peak")),
            _times(size, trip.get("server_anon")),
        ]
    if why is not None or figures is None:
        return [*cells, why or "-", "", "", trip_cells[0], "", "", *trip_cells[1:]]
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
            rows.append([label(size), name, _rate(size, seconds), vs, _times(size, peak)])
    return rows


def smoke_note(results: Results) -> str:
    """What a smoke run is and is not: said above its tables, so no figure is taken as a result."""
    sizes = ", ".join(label(size) for size in results.sizes)
    return (
        f"**Smoke run** (`--quick`: {sizes}, in this process, no warm-up, one timed run). "
        "It checks that every path works; its figures are not benchmarks. The speed and "
        f"memory targets depend on the payload's size, so they read {NOT_JUDGED}: run "
        "without `--quick` to judge them."
    )


def render(results: Results) -> str:
    """The report: codec table, transfer table and targets, in markdown."""
    heading = ["## Targets", ""]
    if results.smoke:
        heading = ["## Targets (smoke run: only wire size and exactness are judged)", ""]
    return "\n".join(
        [
            *([smoke_note(results), ""] if results.smoke else []),
            "## Codecs and baselines",
            "",
            _table(CODEC_COLUMNS, _codec_rows(results)),
            "",
            "## Transfers",
            "",
            _table(TRANSFER_COLUMNS, _transfer_rows(results)),
            "",
            *heading,
            _table(TARGET_COLUMNS, targets(results)),
            "",
        ]
    )


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


_METHOD = (
    "MB/s are 10^6 bytes of raw tensor data per second, best of the timed runs after "
    "one warm-up run (in each transfer comparison the runs of the two paths "
    "alternate, so a drift of the machine favours neither); peaks are the extra "
    "resident memory of the measuring process "
    "(VmHWM after a reset through /proc/self/clear_refs, minus VmRSS before) as a "
    "multiple of the payload, each measurement in a fresh process. The reference "
    "server runs in its own process; its peak is sampled anonymous memory (RssAnon; "
    "memory-mapped blob pages are page cache, not counted). A round trip is "
    "send_update, the server's round over that one update (stored to disk, averaged "
    "from the memory-mapped blob, stored again), then check_for_latest_model."
)


def machine_notes(command: str, seconds: float, *, smoke: bool = False) -> str:
    """A markdown header: the command, the machine and the library versions.

    Args:
        command: The command line of the run.
        seconds: How long it took.
        smoke: Whether it was a ``--quick`` smoke run (the title says so, and the notes
            on method, which describe a full run, are left out).
    """
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
    method = [] if smoke else [_METHOD, ""]
    return "\n".join(
        [
            "# Benchmark results (smoke run)" if smoke else "# Benchmark results",
            "",
            f"Command: `{command}` ({seconds / 60:.1f} minutes, {time.strftime('%Y-%m-%d')}).",
            "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}.",
            "",
            f"Libraries: {versions}.",
            "",
            *method,
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
        # A baseline that could not run (e.g. safetensors not installed) gets no empty bars.
        names += [k for (s, k), f in results.baseline.items() if s == size and problem(f) is None]
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
        axis.set_title(f"{label(size)} float32 model")
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
