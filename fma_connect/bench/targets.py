"""The issue's targets, judged at the largest size each was measured at.

Each row is ``[target, measured, goal, met]``. Speed and memory targets depend on the
payload's size (fixed per-call costs swamp a small payload, and page-granular peaks
are noise there), so a smoke run shows their figures but judges them ``n/a``; the
targets that hold at any size (wire size, values back as sent) are judged in every run.
"""

from __future__ import annotations

from typing import Any

from .results import Results, label, problem

__all__ = ["NOT_JUDGED", "targets"]

#: The ``met`` cell of a size-dependent target in a smoke run.
NOT_JUDGED = "n/a (smoke run)"
_BASELINES = ("np.save", "safetensors", "pickle5")


class _Rows:
    """The rows being built, judging each as the run allows."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.rows: list[list[str]] = []

    def add(
        self,
        name: str,
        value: float | None,
        goal: str,
        met: bool | None,
        *,
        sized: bool = True,
        shown: str | None = None,
    ) -> None:
        """Add a row; ``sized`` targets are not judged in a smoke run."""
        if shown is None:
            shown = "-" if value is None else f"{value:.2f}x"
        if value is None and shown == "-":
            verdict = "-"
        elif sized and self.results.smoke:
            verdict = NOT_JUDGED
        else:
            verdict = "-" if met is None else _yes(met)
        self.rows.append([name, shown, goal, verdict])


def targets(results: Results) -> list[list[str]]:
    """The issue's targets at the largest size each was measured at: measured, goal, met."""
    rows = _Rows(results)
    _transfers(results, rows)
    _original(results, rows)
    trips = [s for s in results.sizes if (s, "msgpack") in results.roundtrip]
    if trips:
        size = max(trips)
        trip = results.roundtrip[(size, "msgpack")]
        peak = _ratio(trip.get("peak"), size)
        rows.add(
            f"round trip client peak (msgpack), {label(size)}",
            peak,
            "≤ 1.1x payload",
            _le(peak, 1.1),
        )
        peak = _ratio(trip.get("server_anon"), size)
        rows.add(
            f"round trip server peak anonymous memory (msgpack), {label(size)}",
            peak,
            "≤ 1.1x payload",
            _le(peak, 1.1),
        )
    _versus_baselines(results, rows)
    rows.rows.append(_exactness(results))
    return rows.rows


def _transfers(results: Results, rows: _Rows) -> None:
    sizes = [s for s in results.sizes if (s, "upload") in results.transfer]
    if not sizes:
        return
    size = max(sizes)
    up = results.transfer[(size, "upload")]
    ratio = _ratio(up.get("plain_s"), up.get("ours_s"))
    rows.add(f"send_update vs requests.post, {label(size)}", ratio, "≥ 0.8x", _ge(ratio, 0.8))
    peak = _ratio(up.get("ours_peak"), size)
    rows.add(
        f"send_update client peak extra, {label(size)}", peak, "≤ 0.1x payload", _le(peak, 0.1)
    )
    down = results.transfer.get((size, "download")) or {}
    ratio = _ratio(down.get("plain_s"), down.get("ours_s"))
    rows.add(
        f"check_for_latest_model vs streamed GET, {label(size)}",
        ratio,
        "≥ 0.8x",
        _ge(ratio, 0.8),
    )
    peak = _ratio(down.get("ours_peak"), size)
    rows.add(f"download client peak, {label(size)}", peak, "≤ 1.1x payload", _le(peak, 1.1))


def _original(results: Results, rows: _Rows) -> None:
    sizes = [s for s in results.sizes if (s, "original") in results.roundtrip]
    if not sizes:
        return
    size = max(sizes)
    ratio = _ratio(
        results.roundtrip[(size, "original")].get("seconds"),
        (results.roundtrip.get((size, "msgpack")) or {}).get("seconds"),
    )
    rows.add(
        f"round trip msgpack vs original client, {label(size)}", ratio, "≥ 100x", _ge(ratio, 100)
    )
    original = results.baseline.get((size, "original")) or {}
    json_codec = results.codec.get((size, "json")) or {}
    ratio = _ratio(original.get("encode_s"), json_codec.get("encode_s"))
    rows.add(
        f"json encode vs stdlib json over tolist(), {label(size)}", ratio, "≥ 20x", _ge(ratio, 20)
    )
    ratio = _ratio(original.get("decode_s"), json_codec.get("decode_s"))
    rows.add(
        f"json decode vs stdlib json over tolist(), {label(size)}", ratio, "≥ 10x", _ge(ratio, 10)
    )
    # Bytes per value do not depend on how many values there are: judged at any size.
    wire = _ratio(json_codec.get("wire"), size)
    rows.add(f"json wire size, {label(size)}", wire, "≤ 3.2x raw", _le(wire, 3.2), sized=False)


def _versus_baselines(results: Results, rows: _Rows) -> None:
    sizes = [s for s in results.sizes if (s, "msgpack") in results.codec]
    if not sizes:
        return
    size = max(sizes)
    ours = results.codec[(size, "msgpack")]
    for kind in _BASELINES:
        other = results.baseline.get((size, kind))
        why = problem(other)
        if other is None:
            continue  # not measured at this size (baselines stop at 2 GB)
        if why is not None:
            # Said here too: a target that silently disappears reads as one that was met.
            rows.rows.append([f"msgpack vs {kind}, {label(size)}", why, "-", "-"])
            continue
        for what, key in (("encode", "encode_s"), ("decode", "decode_s")):
            ratio = _ratio(other.get(key), ours.get(key))
            name = f"msgpack {what} speed vs {kind}, {label(size)}"
            rows.add(name, ratio, "≥ 1x", ratio is not None and ratio >= 1)
        peak_ours = max(ours.get("encode_peak", 0), ours.get("decode_peak", 0))
        peak_other = max(other.get("encode_peak", 0), other.get("decode_peak", 0))
        rows.add(
            f"msgpack peak memory vs {kind}, {label(size)} (ours / theirs)",
            peak_ours / size,
            "ours ≤ theirs",
            peak_ours <= peak_other,
            shown=f"{peak_ours / size:.2f}x / {peak_other / size:.2f}x",
        )


def _exactness(results: Results) -> list[str]:
    """Whether every lossless decode and round trip of the run gave back every bit."""
    checked = [
        (f"{kind} {name} {label(size)}", figures["exact"])
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


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b > 0:
        return float(a) / float(b)
    return None


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _ge(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def _le(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal
