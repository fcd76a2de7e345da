"""The federation benchmark's report: markdown tables and a PNG of accuracy against bytes.

Ratios compare each scheme with the baseline run, msgpack (the first scheme that ran
when msgpack did not): ``0.251 (3.98x fewer)`` means a quarter of its bytes. Accuracy
differences are in percentage points. MB are 10^6 bytes.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from .codec_speed import LINK_BITS_PER_SECOND, SpeedResult, link_seconds
from .extras import missing
from .federation import FederationConfig, SchemeRun
from .measure import cpu_name
from .mlp import parameter_count

__all__ = [
    "baseline",
    "plot_problem",
    "render",
    "rounds_table",
    "speed_table",
    "summary_table",
    "write_plot",
]

BASELINE_CODEC = "msgpack"
#: The speed target: encode + decode within this share of the raw bytes' link time.
SPEED_TARGET = 0.5


def baseline(runs: Sequence[SchemeRun]) -> SchemeRun | None:
    """The run the others are compared with: msgpack's, else the first that ran."""
    ran = [r for r in runs if r.ran]
    return next((r for r in ran if r.codec == BASELINE_CODEC), ran[0] if ran else None)


def _mb(count: int) -> str:
    return f"{count / 1e6:,.2f}"


def _ratio(value: int, base: int) -> str:
    if base <= 0 or value <= 0:
        return "-"
    ratio = value / base
    # "fewer" only where it rounds to more than 1x: "1 (1x fewer)" would say nothing.
    return f"{ratio:.3g} ({1 / ratio:.3g}x fewer)" if ratio < 0.995 else f"{ratio:.3g}"


def summary_table(runs: Sequence[SchemeRun]) -> str:
    """One row per scheme: final accuracy, total MB each way and their ratios to the baseline."""
    base = baseline(runs)
    name = base.label if base else BASELINE_CODEC
    lines = [
        f"| scheme | codec | final accuracy | vs {name} (points) | up MB | down MB "
        f"| up / {name} | down / {name} | bit-exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if not run.ran:
            why = f"skipped: {run.skipped}" if run.skipped else f"**failed**: {run.error}"
            lines.append(f"| {run.label} | {why} |  |  |  |  |  |  |  |")
            continue
        total = run.total
        base_total = base.total if base else total
        points = (run.final_accuracy - base.final_accuracy) * 100 if base else 0.0
        exact = {True: "yes", False: "**no**", None: "lossy"}[run.exact]
        lines.append(
            f"| {run.label} | {run.codec} | {run.final_accuracy:.3f} | {points:+.1f} "
            f"| {_mb(total.up)} | {_mb(total.down)} | {_ratio(total.up, base_total.up)} "
            f"| {_ratio(total.down, base_total.down)} | {exact} |"
        )
    return "\n".join(lines)


def rounds_table(runs: Sequence[SchemeRun]) -> str:
    """Every round of every scheme: accuracy, bytes each way, and the running totals."""
    lines = [
        "| scheme | round | accuracy | up bytes | down bytes | cumulative up MB "
        "| cumulative down MB | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        up = down = 0
        for r in run.rounds:
            up, down = up + r.up, down + r.down
            lines.append(
                f"| {run.label} | {r.round} | {r.accuracy:.3f} | {r.up:,} | {r.down:,} "
                f"| {_mb(up)} | {_mb(down)} | {r.seconds:.2f} |"
            )
    return "\n".join(lines)


def speed_table(results: Sequence[SpeedResult]) -> str:
    """Encode + decode of the synthetic update per scheme, against two memcpys of its bytes
    (measured beside each scheme) and the 1 Gbit/s link time."""
    link = f"{LINK_BITS_PER_SECOND / 1e9:g} Gbit/s"
    lines = [
        f"| scheme | codec | raw MB | wire / raw | encode s | decode s | encode + decode s "
        f"| MB/s | memcpy s | / 2 memcpy | / {link} link time | <= {SPEED_TARGET} "
        "| encode peak | decode peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results:
        if s.skipped is not None:
            lines.append(f"| {s.label} | skipped: {s.skipped} |" + "  |" * 12)
            continue
        ratio = s.link_ratio
        lines.append(
            f"| {s.label} | {s.codec} | {_mb(s.raw_bytes)} | {s.wire_bytes / s.raw_bytes:.3f} "
            f"| {s.encode_seconds:.3f} | {s.decode_seconds:.3f} | {s.seconds:.3f} "
            f"| {s.throughput:,.0f} | {s.memcpy_seconds:.3f} | {s.memcpy_ratio:.1f}x "
            f"| {ratio:.2f} | {'yes' if ratio <= SPEED_TARGET else 'no'} "
            f"| {s.encode_peak / s.raw_bytes:.2f}x | {s.decode_peak / s.raw_bytes:.2f}x |"
        )
    return "\n".join(lines)


def render(
    runs: Sequence[SchemeRun],
    speeds: Sequence[SpeedResult],
    config: FederationConfig,
    *,
    command: str,
    seconds: float,
    smoke: bool,
    notes: Sequence[str] = (),
) -> str:
    """The whole report as markdown.

    Args:
        runs: The schemes' federations.
        speeds: The schemes' encode + decode timings (none: the section is left out).
        config: The federation they ran.
        command: The command line, for the header.
        seconds: How long the whole benchmark took.
        smoke: Whether it was a ``--quick`` run (the title says so).
        notes: Paragraphs to add before the tables (e.g. the PNG, or why it is missing).
    """
    from .mlp import init_mlp

    params = parameter_count(init_mlp(config.layers, config.seed))
    t = config.training
    layers = "-".join(str(n) for n in config.layers)
    raw = speeds[0].raw_bytes if speeds and speeds[0].raw_bytes else 0
    parts = [
        "# Federation benchmark" + (" (smoke run)" if smoke else ""),
        "",
        f"Command: `{command}` ({seconds / 60:.1f} minutes, {time.strftime('%Y-%m-%d')}).",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}.",
        "",
        f"Federation: {config.clients} clients with non-IID shares of scikit-learn's digits "
        f"(two label-sorted shards each), a {layers} ReLU MLP of {params:,} float32 "
        f"parameters, {config.rounds} rounds of fed_avg (all_clients) on the reference server "
        f"over 127.0.0.1; each round every client pulls the latest model, trains "
        f"{t.epochs} epochs of SGD (learning rate {t.learning_rate}, momentum {t.momentum}, "
        f"batch {t.batch}) and sends its update. Seed {config.seed}: the same data, initial "
        "model and training order for every scheme.",
        "",
        "Bytes are counted on the wire by a TCP relay between the clients and the server "
        "(HTTP heads included): up is client to server, down is server to client. Round 1's "
        "download is the initial model; the accuracy is the held-out accuracy of each round's "
        "aggregate as the server holds it. Bit-exact: every update stored, and every model "
        "received, as sent (checked each round for lossless codecs).",
        "",
        *[line for note in notes for line in (note, "")],
        "## Accuracy against bytes",
        "",
        summary_table(runs),
        "",
    ]
    if speeds:
        parts += [
            f"## Encode + decode of a {raw / 4:,.0f}-parameter float32 update",
            "",
            f"The raw {raw / 1e6:,.0f} MB take {link_seconds(raw):.3g} s on a 1 Gbit/s link; "
            f"the target is encode + decode within {SPEED_TARGET}x that. Best of the timed "
            "runs, on a shared machine: indicative only.",
            "",
            speed_table(speeds),
            "",
        ]
    parts += ["## Per round", "", rounds_table(runs), ""]
    return "\n".join(parts)


def plot_problem() -> str | None:
    """Why the PNG cannot be drawn here (matplotlib missing, naming the extra), or None."""
    return missing("matplotlib")


def write_plot(runs: Sequence[SchemeRun], path: Path) -> None:
    """A PNG of accuracy against cumulative MB: upload on the left, download on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, axes = plt.subplots(1, 2, figsize=(12, 6.4), sharey=True)
    shown = [run for run in runs if run.ran]
    # A colour and a marker per scheme: 20 colours, then the markers tell them apart.
    colours = plt.get_cmap("tab20").colors
    markers = "osD^v"
    for axis, direction in zip(axes, ("up", "down"), strict=True):
        for i, run in enumerate(shown):
            total, xs = 0, []
            for r in run.rounds:
                total += r.up if direction == "up" else r.down
                xs.append(total / 1e6)
            axis.plot(
                xs,
                [r.accuracy for r in run.rounds],
                color=colours[i % len(colours)],
                marker=markers[i // len(colours) % len(markers)],
                markersize=3,
                label=run.label,
            )
        # Log scale: compressed schemes sit orders of magnitude left of msgpack. Ticks at
        # 1-2-5 steps, written as plain numbers, read at any span (a decade or six).
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel(f"cumulative {'upload' if direction == 'up' else 'download'} MB (log)")
        axis.set_title(f"accuracy against {'upload' if direction == 'up' else 'download'} bytes")
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("held-out accuracy")
    # Below both plots: inside one, it hides the curves that matter.
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.03 + 0.035 * -(-len(shown) // 3), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
