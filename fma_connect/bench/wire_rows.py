"""The rows of the wire benchmark's report: :class:`Row`, and how a comparison becomes one.

:func:`transfer` makes the row of a large-payload comparison (ours against one peer, best
runs and medians), :func:`small_rows` those of the small requests; which comparisons the
report holds, with their targets, is :func:`.wire_report.rows`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .wire_breakdown import mbs, rate_text

__all__ = ["Results", "Row", "multiple", "small_rows", "transfer"]

Results = Mapping[str, Any]


@dataclass
class Row:
    """One comparison of the report.

    Attributes:
        key: A stable name (the JSON's and the tests').
        path: What ours does.
        bounds: What the comparison bounds: what the gap to the peer is made of.
        ours: Our rate (MB/s, or requests/s), or a latency's p50 as a rate (1/s).
        ours_text: How the report shows ours.
        peer: The peer's path.
        peer_rate: The peer's rate, in ours' unit.
        peer_text: How the report shows the peer.
        ratio: ``ours / peer_rate``.
        target: The lowest ratio issue 13 accepts (None: reported only).
        target_text: How the report shows the target.
        peaks: The peaks, shown as they are.
        peak_ok: Whether the row's peak targets hold (None: none apply).
        median_ratio: The same ratio of the two paths' median runs (None: a row without
            timed runs). Shown beside the best runs' ratio, which the target judges: where a
            peer's runs scatter (a shared disk's fsyncs), its best run may be a lucky one.
    """

    key: str
    path: str
    bounds: str
    ours: float
    ours_text: str
    peer: str
    peer_rate: float
    peer_text: str
    ratio: float
    target: float | None
    target_text: str
    peaks: str
    peak_ok: bool | None = None
    median_ratio: float | None = None

    def met(self, judged: bool) -> str:
        """``yes``/``no`` (with what failed), ``-`` for a reported row or a smoke run."""
        if not judged or (self.target is None and self.peak_ok is None):
            return "-"
        ratio_ok = self.target is None or self.ratio >= self.target
        if ratio_ok and self.peak_ok is not False:
            return "yes"
        return (
            "no ("
            + ", ".join(
                what for what, ok in (("ratio", ratio_ok), ("peak", self.peak_ok)) if ok is False
            )
            + ")"
        )


def multiple(nbytes: float, payload: int) -> str:
    """``nbytes`` as a multiple of the payload, as the peaks are shown (``0.50x``)."""
    return f"{nbytes / payload:.2f}x"


def transfer(
    key: str,
    results: Results,
    op: str,
    peer_name: str,
    texts: tuple[str, str, str],
    target: float | None,
    ours_name: str = "ours",
) -> Row:
    """The row of comparison ``op``: path ``ours_name`` against path ``peer_name``.

    Args:
        key: The row's stable name.
        results: The run's figures.
        op: The comparison (a key of ``results``).
        peer_name: The peer's path in it.
        texts: What ours does, what the peer does, what the comparison bounds.
        target: The lowest ratio the issue accepts (None: reported only).
        ours_name: Our path in it.
    """
    figures = results[op]
    payload, paths = figures["payload"], figures["paths"]
    ours = mbs(payload, paths[ours_name]["seconds"])
    peer = mbs(payload, paths[peer_name]["seconds"])
    ours_median = statistics.median(paths[ours_name]["runs"])
    median_ratio = statistics.median(paths[peer_name]["runs"]) / ours_median
    return Row(
        key,
        texts[0],
        texts[2],
        ours,
        rate_text(ours),
        texts[1],
        peer,
        rate_text(peer),
        ours / peer if peer else 0.0,
        target,
        "report" if target is None else f">= {target:g}",
        "",
        median_ratio=median_ratio,
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def small_rows(small: Results) -> list[Row]:
    """The rows of the small requests: latencies and requests per second, reported."""
    out = []
    same_server = "same ASGI server and options"
    for key, what, peer in (
        (
            "poll_latency",
            "poll latency: `check_for_new_model_aggregate` (nothing new) on `fma-connect serve`",
            f"GET of an empty Starlette route, {same_server}",
        ),
        (
            "update_latency",
            "1 MB update latency: `send_update` (msgpack) into `fma-connect serve`, durable",
            f"`requests.post` of the same body to an empty route that drops it, {same_server}",
        ),
    ):
        figures = small["polls" if key == "poll_latency" else "updates"]
        ours, theirs = figures["ours"], figures["peer"]
        out.append(
            Row(
                key,
                what,
                "our routes, storage and client over the ASGI server's floor, per request",
                1 / ours["p50"],
                f"p50 {_ms(ours['p50'])}, p99 {_ms(ours['p99'])}",
                peer,
                1 / theirs["p50"],
                f"p50 {_ms(theirs['p50'])}, p99 {_ms(theirs['p99'])}",
                theirs["p50"] / ours["p50"],
                None,
                "report (ratio of p50s)",
                "",
            )
        )
    rates, threads = small["rates"], small["threads"]
    for key, what, mine, peer, bounds in (
        (
            "polls_per_second",
            f"polls/s, {threads} client threads: `check_for_new_model_aggregate` "
            "on `fma-connect serve`",
            "ours",
            f"`requests` GET of the empty route, {same_server}",
            "our server and client over the ASGI server's empty route",
        ),
        (
            "server_polls_per_second",
            f"polls/s, {threads} bare-socket client threads: GET of the poll URL "
            "on `fma-connect serve`",
            "server",
            f"the same bare-socket clients' GET of the empty route, {same_server}",
            "our server's overhead alone (a cheap client, the same on both sides)",
        ),
    ):
        ours_rate, peer_rate = rates[mine], rates["peer" if mine == "ours" else "server_peer"]
        out.append(
            Row(
                key,
                what,
                bounds,
                ours_rate,
                rate_text(ours_rate, "req/s"),
                peer,
                peer_rate,
                rate_text(peer_rate, "req/s"),
                ours_rate / peer_rate if peer_rate else 0.0,
                None,
                "report",
                "",
            )
        )
    return out
