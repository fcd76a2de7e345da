"""Timing and peak-memory measurement of one operation, and the benchmark's model.

Peak memory is the process's resident high-water mark (``VmHWM``) during the
operation minus its resident size just before, after resetting the mark through
``/proc/self/clear_refs``; where that is not possible (not Linux), ``ru_maxrss`` is
used instead and the figure is a lower bound (``exact`` is False).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.base import Tensors

__all__ = ["Figures", "make_model", "peak_reset", "read_status", "timed", "timed_pair"]

#: Shares of the model's bytes per tensor: a dense layer, a conv stack, a head, a bias.
_LAYOUT = (("dense.weight", 0.62, 2), ("conv.weight", 0.3, 4), ("head.weight", 0.08, 2))
#: From this size on, one tensor takes 90% (over 4 GiB: msgpack's own bin limit).
HUGE = 4_500_000_000
_HUGE_LAYOUT = (("dense.weight", 0.9, 2), ("conv.weight", 0.08, 4), ("head.weight", 0.02, 2))


def make_model(nbytes: int, seed: int = 0) -> Tensors:
    """A float32 model of ``nbytes`` bytes (to 4): three weight tensors and a bias."""
    rng = np.random.default_rng(seed)
    tensors: Tensors = []
    left = max(nbytes // 4, 4)
    for name, share, ndim in _HUGE_LAYOUT if nbytes >= HUGE else _LAYOUT:
        count = max(int(nbytes * share) // 4, 1)
        if ndim == 4:
            channels = max(int((count / 9) ** 0.5), 1)
            shape: tuple[int, ...] = (channels, channels, 3, 3)
        else:
            cols = max(min(4096, count), 1)
            shape = (max(count // cols, 1), cols)
        if math.prod(shape) >= left:
            break
        left -= math.prod(shape)
        tensors.append((name, rng.standard_normal(shape, dtype=np.float32)))
    tensors.append(("dense.bias", rng.standard_normal(left, dtype=np.float32)))
    return tensors


def read_status(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` and ``Rss*`` lines of ``/proc/<pid>/status``, in bytes ({} if absent)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return values


def peak_reset(pid: int | str = "self") -> bool:
    """Reset the resident high-water mark of a process; False when the system cannot."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return "VmHWM" in read_status(pid)


@dataclass
class Figures:
    """Best wall time over the timed runs, and the largest peak extra memory."""

    seconds: float
    peak_extra: int
    exact: bool


def _rss() -> int:
    return read_status().get("VmRSS", 0)


def timed(run: Callable[[], Any], repeat: int = 1, warmup: bool = True) -> tuple[Figures, Any]:
    """Run ``run`` (once untimed first when ``warmup``), return its figures and last result.

    The warm-up run keeps first-touch page faults of this VM out of the figures, as
    they would be in a long-running client or server.
    """
    if warmup:
        result = run()
        del result
    best, peak, exact = float("inf"), 0, True
    result = None
    for _ in range(max(repeat, 1)):
        del result
        gc.collect()
        exact = peak_reset() and exact
        base = _rss()
        if not exact:
            base = max(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
        high = read_status().get("VmHWM") if exact else None
        if high is None:
            high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(peak, high - base)
    return Figures(best, peak, exact), result


def timed_pair(
    first: Callable[[], Any], second: Callable[[], Any], repeat: int, warmup: bool = True
) -> tuple[Figures, Figures]:
    """Time two ways of doing the same thing, their runs alternating; best of ``repeat``.

    Alternating keeps a drift of this VM (page cache, memory, the server's state) from
    favouring whichever path would otherwise run second: a ratio of the two is then
    fair even when the absolute figures move between runs.
    """
    figures: list[list[Figures]] = [[], []]
    for run_index in range(max(repeat, 1)):
        for i, run in enumerate((first, second)):
            result, _ = timed(run, 1, warmup and run_index == 0)
            figures[i].append(result)
    best = [
        Figures(
            min(f.seconds for f in runs),
            max(f.peak_extra for f in runs),
            all(f.exact for f in runs),
        )
        for runs in figures
    ]
    return best[0], best[1]


def cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
