"""Where the wire benchmark's time goes: stage breakdowns of the upload, download, round trip.

The client's stages were each timed alone, best of the runs but not alternated (so
their figures are indicative); the round trip's are those of its fastest alternated run.
Each is shown against its comparison's peer, whose time is the unit: a stage that runs
before or after the transfer, overlapping nothing, caps the ratio at
``peer / (peer + stage)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["breakdown", "mbs", "rate_text", "table"]

Results = Mapping[str, Any]


def mbs(payload: int, seconds: float) -> float:
    """Megabytes (10**6 bytes) of payload per second."""
    return payload / seconds / 1e6 if seconds > 0 else 0.0


def rate_text(value: float, unit: str = "MB/s") -> str:
    """A rate as the report shows it."""
    return f"{value:,.0f} {unit}" if value >= 10 else f"{value:.2f} {unit}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(columns: list[str], lines: list[list[str]]) -> str:
    """A markdown table."""
    head = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(head + ["| " + " | ".join(_cell(c) for c in line) + " |" for line in lines])


def _stagetable(
    title: str, stages: Mapping[str, float], payload: int, reference: tuple[str, float]
) -> list[str]:
    """A stage breakdown: seconds, MB/s, and each stage's time over ``reference``'s."""
    name, seconds = reference
    lines = [
        [
            stage,
            f"{s:.3f}",
            rate_text(mbs(payload, s)) if s >= 1e-3 else "-",  # too short to rate
            f"{s / seconds:.2f}" if seconds > 0 else "-",
        ]
        for stage, s in stages.items()
    ]
    columns = ["stage", "seconds", "MB/s of payload", f"time / {name}"]
    return [f"### {title}", "", table(columns, lines), ""]


def _cap(peer: float, serial: float) -> str:
    """The ratio reached when ``serial`` seconds add to the peer's, nothing overlapped."""
    return f"{peer / (peer + serial):.2f}" if peer + serial > 0 else "-"


def breakdown(results: Results) -> list[str]:
    """Markdown sections: the upload's and download's stages, the round trip's stages."""
    up = results["client_upload"]
    peer = up["paths"]["peer"]["seconds"]
    encode = up["stages"]["encode (crc32 included)"]
    parts = _stagetable(
        "Where the client upload's time goes (stages timed alone, best of the runs, not "
        f"alternated; crc32 here: {up['crc32']})",
        {"send_update, whole (best)": up["paths"]["ours"]["seconds"], **up["stages"]},
        up["payload"],
        ("the peer's POST", peer),
    )
    parts += [
        f"The encode (its crc32 pass) runs before the first byte is sent: serial with the "
        f"socket, it alone caps the upload's ratio at {_cap(peer, encode)}.",
        "",
    ]
    profile = [[p["function"], f"{p['seconds']:.3f}", str(p["calls"])] for p in up["profile"]]
    parts += [
        "One `send_update` under cProfile, the functions that took the most time themselves:",
        "",
        table(["function", "own seconds", "calls"], profile),
        "",
    ]
    down = results["client_download"]
    peer = down["paths"]["peer"]["seconds"]
    faults = down["stages"]["first touch of a fresh buffer"]
    faults -= down["stages"]["touch of a touched buffer"]
    decode = down["stages"]["decode (crc32 included)"]
    parts += _stagetable(
        "Where the client download's time goes (stages timed alone, as the upload's)",
        {
            "check_for_latest_model, whole (best)": down["paths"]["ours"]["seconds"],
            **down["stages"],
        },
        down["payload"],
        ("the peer's GET", peer),
    )
    parts += [
        "The client reads into a fresh buffer (its page faults: first touch less a touched "
        f"buffer's, {max(faults, 0):.3f} s) and checks the crc32 after the last byte: "
        f"serial with the socket, they cap the download's ratio at "
        f"{_cap(peer, max(faults, 0) + decode)}.",
        "",
    ]
    trip = results["round_trip"]["paths"]
    for ours, peer, fetched_into in (
        ("ours", "peer_fresh", "a fresh buffer"),
        ("into", "peer", "memory already touched"),
    ):
        parts += _stagetable(
            f"The round trip's stages (its fastest run) and their ceilings, fetched into "
            f"{fetched_into}",
            {
                **{f"ours: {k}": v for k, v in trip[ours]["stages"].items()},
                **{f"ceiling: {k}": v for k, v in trip[peer]["stages"].items()},
            },
            results["round_trip"]["payload"],
            ("the ceilings' sum", trip[peer]["seconds"]),
        )
    return parts
