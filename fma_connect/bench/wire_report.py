"""The wire benchmark's report: one row per comparison, judged against issue 13's targets.

Rates are megabytes (10**6 bytes) of payload (the raw tensor bytes) per second of the
best run; a ratio is always ours over the peer's rate, so 1.0 means "at the peer" and a
target is a lower bound on it (the round trip's "time <= 1.5x the ceilings" is a ratio
>= 1/1.5). Peaks are extra resident memory as a multiple of the payload: the client's
(``VmHWM``) and the server's anonymous memory (``RssAnon`` sampled every 5 ms).

Here are the comparisons the report holds, with their targets (:func:`rows`), and the
report itself; a row and how a comparison's figures make one are :mod:`.wire_rows`.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from .wire_breakdown import breakdown, table
from .wire_budget import INGEST_TARGET, budget_row, budget_section
from .wire_rows import Results, Row, multiple, small_rows, transfer

__all__ = ["COLUMNS", "as_json", "render", "rows"]


def rows(results: Results) -> list[Row]:
    """The report's rows from the figures of a run (as :mod:`.wire_cli` collects them)."""
    out: list[Row] = []
    up = transfer(
        "client_upload",
        results,
        "client_upload",
        "peer",
        (
            "client upload: `send_update` (msgpack) to a bare-socket sink",
            "`requests.post` of the same encoded bytes, same sink",
            "the client's own cost (flatten, encode, crc32, chunked send) over its HTTP library",
        ),
        0.9,
    )
    payload = results["client_upload"]["payload"]
    peak = results["client_upload"]["paths"]["ours"]["client_peak"]
    up.peaks, up.peak_ok = f"client +{multiple(peak, payload)} (<= 0.1x)", peak <= 0.1 * payload
    out.append(up)
    up_bare = transfer(
        "client_upload_bare",
        results,
        "client_upload",
        "bare",
        (
            up.path,
            "a bare-socket POST of the same bytes in 1 MiB slices, same sink",
            "the client and its HTTP library over the loopback socket's ceiling",
        ),
        None,
    )
    up_bare.peaks = up.peaks.split(" (")[0]
    out.append(up_bare)

    down = transfer(
        "client_download",
        results,
        "client_download",
        "peer",
        (
            "client download: `check_for_latest_model` (msgpack) from a bare-socket source",
            "`http.client` `readinto` a preallocated buffer, same source",
            "the client's own cost (fresh buffer, crc32 check, decode) over reading the socket",
        ),
        0.9,
    )
    payload = results["client_download"]["payload"]
    peak = results["client_download"]["paths"]["ours"]["client_peak"]
    down.peaks, down.peak_ok = f"client +{multiple(peak, payload)} (<= 1.1x)", peak <= 1.1 * payload
    out.append(down)
    down_into = transfer(
        "client_download_into",
        results,
        "client_download",
        "peer",
        (
            "client download: `check_for_latest_model(into=arrays)` (msgpack) from the same "
            "source, into the arrays of the last fetch",
            down.peer,
            "the client's own cost (header parse, crc32 check) over reading the socket, "
            "both into memory already touched",
        ),
        0.9,
        "into",
    )
    peak = results["client_download"]["paths"]["into"]["client_peak"]
    down_into.peaks = f"client +{multiple(peak, payload)} (<= 1.1x)"
    down_into.peak_ok = peak <= 1.1 * payload
    out.append(down_into)
    down_fresh = transfer(
        "client_download_fresh",
        results,
        "client_download",
        "peer_fresh",
        (
            down.path,
            "`http.client` `readinto` a fresh buffer (allocated as the client allocates "
            "its own), same source",
            "the client's own cost over reading the socket, both into new memory",
        ),
        None,
    )
    down_fresh.peaks = down.peaks.split(" (")[0]
    out.append(down_fresh)

    ingest = results["server_ingest"]
    payload = ingest["payload"]
    anon = ingest["paths"]["ours"]["server_anon"]
    ingest_path = "server ingest: `send_update` into `fma-connect serve` (acknowledged = durable)"
    durable = transfer(
        "server_ingest_durable",
        results,
        "server_ingest",
        "durable",
        (
            ingest_path,
            "the same bytes written from memory to a file in the server's blob directory, "
            "plain system calls with the server's fsync policy (a background sync every "
            "64 MiB, fsync file + directory), no network",
            "the server's cost over the disk (the socket, per-chunk writes and hashes, "
            "HTTP parsing, the database)",
        ),
        INGEST_TARGET,
    )
    durable.peaks = f"server anon +{multiple(anon, payload)} (<= 0.1x)"
    durable.peak_ok = anon <= 0.1 * payload
    out.append(durable)
    discard = transfer(
        "server_ingest_discard",
        results,
        "server_ingest",
        "discard",
        (
            ingest_path,
            "a raw POST of the same bytes to the discarding bare-socket sink",
            "everything the server adds to the loopback network, the disk included",
        ),
        None,
    )
    discard.peaks = f"server anon +{multiple(anon, payload)}"
    out.append(discard)
    asgi = transfer(
        "server_ingest_asgi",
        results,
        "server_ingest",
        "asgi",
        (
            ingest_path,
            "a bare-socket POST of the same bytes to an empty Starlette route that drops "
            "them, same ASGI server and options",
            "the ASGI server's own ceiling for a request body: what our route, the disk and "
            "the database add over it",
        ),
        None,
    )
    asgi.peaks = discard.peaks
    out.append(asgi)
    floor_peer = (
        "the bare-socket sink storing the same bytes as they arrive: each read hashed "
        "(BLAKE3) and written, the server's fsync policy, one thread, no framework"
    )
    floor = transfer(
        "server_ingest_floor",
        results,
        "server_ingest",
        "floor",
        (
            ingest_path,
            floor_peer,
            "what our protocol (manifest, chunks, completion's checks), HTTP server and "
            "database add over the least a receiver in Python does with the bytes",
        ),
        None,
    )
    floor.peaks = discard.peaks
    out.append(floor)
    one = transfer(
        "server_ingest_one_in_flight",
        results,
        "server_ingest",
        "durable",
        (
            "server ingest, the client sending one chunk at a time (`upload_in_flight=1`)",
            durable.peer,
            "what chunks in flight (four by default) cost or save a server on the same "
            "machine as its client",
        ),
        None,
        ours_name="one_in_flight",
    )
    one.peaks = f"server anon +{multiple(ingest['paths']['one_in_flight']['server_anon'], payload)}"
    out.append(one)
    least = transfer(
        "server_ingest_floor_durable",
        results,
        "server_ingest",
        "durable",
        (
            floor_peer,
            durable.peer,
            "how near the durable ceiling a receiver in Python can come at all: the socket "
            "and the hash on top of the write",
        ),
        None,
        ours_name="floor",
    )
    out.append(least)
    out.append(budget_row(results))

    # Each of our two receive paths is judged against the bare GET into the same kind
    # of memory, so that the ratio bounds the server and the client, not the first touch
    # of new memory (slow where a VM hands freed memory back to its host); the third row
    # is the cross comparison, reported.
    egress = transfer(
        "server_egress",
        results,
        "server_egress",
        "peer_fresh",
        (
            "server egress: `check_for_latest_model` (into a fresh buffer) from "
            "`fma-connect serve`",
            "a bare-socket GET of as many bytes into a fresh buffer, allocated as the "
            "client allocates its own",
            "the server's send path and the client's receive path over the loopback network",
        ),
        0.6,
    )
    figures = results["server_egress"]
    payload = figures["payload"]
    egress.peaks = (
        f"server anon +{multiple(figures['paths']['ours']['server_anon'], payload)}, "
        f"client +{multiple(figures['paths']['ours']['client_peak'], payload)}"
    )
    out.append(egress)
    egress_into = transfer(
        "server_egress_into",
        results,
        "server_egress",
        "peer",
        (
            "server egress: `check_for_latest_model(into=arrays)` from `fma-connect serve`",
            "a bare-socket GET of as many bytes into a preallocated buffer",
            "the server's send path and the client's receive path into its arrays",
        ),
        0.6,
        "into",
    )
    egress_into.peaks = (
        f"server anon +{multiple(figures['paths']['into']['server_anon'], payload)}, "
        f"client +{multiple(figures['paths']['into']['client_peak'], payload)}"
    )
    out.append(egress_into)
    out.append(_cross("server_egress_preallocated", results, "server_egress", egress, egress_into))
    egress_asgi = transfer(
        "server_egress_asgi",
        results,
        "server_egress",
        "asgi",
        (
            egress.path,
            "a bare-socket GET of as many bytes streamed from memory by a Starlette route in "
            "the server's 1 MiB chunks, same ASGI server and options",
            "the ASGI server's own ceiling for a response body: what reading the blob and "
            "the client add over it",
        ),
        None,
    )
    egress_asgi.peaks = egress.peaks
    out.append(egress_asgi)

    ceilings = (
        "the sum of its stages' ceilings: bare POST + durable write + the mean at memcpy "
        "speed + durable write of the result + bare GET into a {}"
    )
    trip = transfer(
        "round_trip",
        results,
        "round_trip",
        "peer_fresh",
        (
            "round trip: `send_update`, the server's round over it (admin aggregate), "
            "`check_for_latest_model` (into a fresh buffer)",
            ceilings.format("fresh buffer"),
            "everything end to end against each stage at its own ceiling",
        ),
        1 / 1.5,
    )
    trip.target_text = ">= 0.67 (time <= 1.5x)"
    _as_time(trip)
    figures = results["round_trip"]
    trip.peaks = (
        f"server anon +{multiple(figures['paths']['ours']['server_anon'], figures['payload'])}"
    )
    out.append(trip)
    trip_into = transfer(
        "round_trip_into",
        results,
        "round_trip",
        "peer",
        (
            "round trip, fetching with `check_for_latest_model(into=arrays)`",
            ceilings.format("preallocated buffer"),
            trip.bounds,
        ),
        1 / 1.5,
        "into",
    )
    trip_into.target_text = trip.target_text
    _as_time(trip_into)
    anon = figures["paths"]["into"]["server_anon"]
    trip_into.peaks = f"server anon +{multiple(anon, figures['payload'])}"
    out.append(trip_into)
    trip_cross = _cross("round_trip_preallocated", results, "round_trip", trip, trip_into)
    _as_time(trip_cross)
    out.append(trip_cross)
    out.extend(small_rows(results["small_requests"]))
    return out


def _cross(key: str, results: Results, op: str, fresh: Row, preallocated: Row) -> Row:
    """The reported row of ``op``'s path into a fresh buffer (``fresh``) against the peer
    reading into a preallocated one (``preallocated``'s): the first touch of new memory
    is then part of what it bounds."""
    texts = (fresh.path, preallocated.peer, fresh.bounds + ", and the first touch of new memory")
    row = transfer(key, results, op, "peer", texts, None)
    row.peaks = fresh.peaks
    return row


def _as_time(row: Row) -> None:
    """Show a round trip's ratio as the time it took against its ceilings'."""
    if row.ratio:
        row.ours_text += f" ({1 / row.ratio:.1f}x the ceilings' time)"


#: The main table's columns.
COLUMNS = [
    *("path", "bounds", "ours", "peer", "peer figure", "ratio (best runs)"),
    *("ratio (medians)", "target", "met", "peaks"),
]


def render(results: Results, *, judged: bool) -> str:
    """The markdown report: the main table, then where the time goes (stages, profile)."""
    report_rows = rows(results)
    parts = [
        "## Ours against a peer that is not the bottleneck",
        "",
        table(
            COLUMNS,
            [
                [
                    r.path,
                    r.bounds,
                    r.ours_text,
                    r.peer,
                    r.peer_text,
                    f"{r.ratio:.2f}",
                    "-" if r.median_ratio is None else f"{r.median_ratio:.2f}",
                    r.target_text,
                    r.met(judged),
                    r.peaks or "-",
                ]
                for r in report_rows
            ],
        ),
        "",
        "Every timed run (seconds, in the order run), and the ratios of the medians: where "
        "one path's runs scatter (a shared disk's fsyncs), its best run may be a lucky one.",
        "",
    ]
    for op in ("client_upload", "client_download", "server_ingest", "server_egress", "round_trip"):
        paths = results[op]["paths"]
        runs = "; ".join(
            f"{name} " + ", ".join(f"{s:.3f}" for s in path["runs"]) for name, path in paths.items()
        )
        ours = statistics.median(paths["ours"]["runs"])
        medians = ", ".join(
            f"{name} {statistics.median(path['runs']) / ours:.2f}"
            for name, path in paths.items()
            if name != "ours"
        )
        parts.append(f"- {op}: {runs} (ratios of medians: {medians})")
    parts += ["", *breakdown(results), *budget_section(results)]
    return "\n".join(parts) + "\n"


def as_json(results: Results, *, judged: bool) -> dict[str, Any]:
    """The rows (as dicts, with ``met``) and the raw figures, for wire_speed.json."""
    return {
        "rows": [{**asdict(r), "met": r.met(judged)} for r in rows(results)],
        "results": dict(results),
    }
