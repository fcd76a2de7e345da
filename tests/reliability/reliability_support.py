"""Helpers of the server reliability tests: weights, a numpy reference, data-dir checks."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import orjson

PENDING, RUNNING, COMPLETE, FAILED, INVALID = range(5)


def make_tree(seed: int, size: int = 6) -> dict[str, np.ndarray]:
    """A small model: a float32 kernel and bias, and an int32 counter."""
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.standard_normal((size, 4)).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
        "count": rng.integers(-1000, 1000, size=3).astype(np.int32),
    }


def as_received(tree: dict[str, np.ndarray], codec: str) -> list[np.ndarray]:
    """The arrays the server decodes from ``tree`` sent in ``codec``.

    Lossless codecs deliver the arrays themselves; plain JSON delivers what parsing the
    shortest decimal text of each number gives (float64 for floats, int64 for ints).
    """
    arrays = list(tree.values())
    if codec != "json":
        return arrays
    return [
        np.asarray(orjson.loads(orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY))) for a in arrays
    ]


def reference_mean(received: Sequence[list[np.ndarray]], template: dict[str, Any]) -> list[Any]:
    """The unweighted mean a round must produce, computed here with numpy.

    Floats are summed in float64 in the given (arrival) order, divided by the count
    and cast to the template's dtype; integers are averaged exactly and rounded half
    to even.
    """
    count = len(received)
    out: list[Any] = []
    for i, want in enumerate(template.values()):
        column = [arrays[i] for arrays in received]
        if want.dtype.kind in "iu":
            sums = [sum(int(a.reshape(-1)[k]) for a in column) for k in range(want.size)]
            means = [round(Fraction(total, count)) for total in sums]
            out.append(np.array(means, dtype=want.dtype).reshape(want.shape))
            continue
        total = np.zeros(want.shape, np.float64)
        for array in column:
            total += array.astype(np.float64)
        out.append((total / count).astype(want.dtype))
    return out


def assert_tree_equal(actual: dict[str, Any], expected: Sequence[np.ndarray]) -> None:
    """Every leaf equals the expected array exactly, dtype included."""
    assert len(actual) == len(expected)
    for (name, got), want in zip(actual.items(), expected, strict=True):
        assert isinstance(got, np.ndarray), name
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=name)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def check_data_dir(data_dir: Path) -> dict[str, int]:
    """Assert the data directory is consistent (no partial write is visible); count rows.

    No temporary blob file is left, every blob file has its row and every row its file,
    and every update, aggregate and artifact points at an existing blob row. Run it
    while no server writes to ``data_dir`` (stopped, or between requests).

    Returns:
        Row counts: ``updates``, ``aggregates``, ``blobs``, ``running``.
    """
    blobs = data_dir / "blobs"
    files = {entry.name for entry in blobs.iterdir()}
    temporary = sorted(name for name in files if name.startswith(".tmp-"))
    assert temporary == [], f"temporary blob files left: {temporary}"
    with sqlite3.connect(f"file:{data_dir / 'fma.sqlite3'}?mode=ro", uri=True) as db:
        rows = {name for (name,) in db.execute("SELECT filename FROM blobs")}
        assert files == rows, (
            f"files without rows: {files - rows}; rows without files: {rows - files}"
        )
        for table in ("updates", "aggregates", "artifacts"):
            dangling = db.execute(
                f"SELECT COUNT(*) FROM {table} t LEFT JOIN blobs b ON b.id = t.blob "
                "WHERE b.id IS NULL"
            ).fetchone()[0]
            assert dangling == 0, f"{dangling} {table} rows point at no blob"
        counts = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("updates", "aggregates", "blobs")
        }
        counts["running"] = db.execute(
            "SELECT COUNT(*) FROM updates WHERE status = ?", (RUNNING,)
        ).fetchone()[0]
    return counts


def leftovers(data_dir: Path) -> dict[str, int]:
    """Count what an interrupted write left, before a restart cleans it up.

    Returns:
        ``temporary`` files, ``unreferenced`` blob files (no row), ``running`` updates.
    """
    files = {entry.name for entry in (data_dir / "blobs").iterdir()}
    with sqlite3.connect(f"file:{data_dir / 'fma.sqlite3'}?mode=ro", uri=True) as db:
        rows = {name for (name,) in db.execute("SELECT filename FROM blobs")}
        running = db.execute(
            "SELECT COUNT(*) FROM updates WHERE status = ?", (RUNNING,)
        ).fetchone()[0]
    temporary = {name for name in files if name.startswith(".tmp-")}
    return {
        "temporary": len(temporary),
        "unreferenced": len(files - rows - temporary),
        "running": running,
    }
