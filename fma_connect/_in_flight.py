"""Calls run a few at once: how both clients carry out :class:`~._messages.Requests`
(an upload's chunks), ``WebClient`` in threads and ``AsyncWebClient`` in tasks.

Each starts the next call as soon as one of its own ends. The first error, of the
earliest call that failed, is raised once the calls in flight end; no call starts after
an error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

__all__ = ["in_tasks", "in_threads"]

T = TypeVar("T")


def in_threads(calls: Sequence[Callable[[], T]], width: int) -> list[T]:
    """Run ``calls`` from ``width`` threads; return their results, in order."""
    results: list[Any] = [None] * len(calls)
    failed: list[tuple[int, BaseException]] = []
    guard = threading.Lock()
    waiting = iter(range(len(calls)))

    def run() -> None:
        while True:
            with guard:
                index = None if failed else next(waiting, None)
            if index is None:
                return
            try:
                results[index] = calls[index]()
            except BaseException as exc:  # raised below, in the caller's thread
                with guard:
                    failed.append((index, exc))

    threads = [
        threading.Thread(target=run, name="fma-send", daemon=True)
        for _ in range(min(width, len(calls)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # interrupted: no call starts after those in flight
        with guard:
            failed.append((-1, RuntimeError("interrupted")))
        raise
    if failed:
        raise min(failed, key=lambda item: item[0])[1]
    return results


async def in_tasks(calls: Sequence[Callable[[], Awaitable[T]]], width: int) -> list[T]:
    """Await ``calls`` from ``width`` tasks; return their results, in order."""
    results: list[Any] = [None] * len(calls)
    failed: list[tuple[int, Exception]] = []
    waiting = iter(range(len(calls)))

    async def run() -> None:
        for index in waiting:  # shared: each index goes to one task
            if failed:
                return
            try:
                results[index] = await calls[index]()
            except Exception as exc:  # raised below, in the caller
                failed.append((index, exc))
                return

    await asyncio.gather(*(run() for _ in range(min(width, len(calls)))))
    if failed:
        raise min(failed, key=lambda item: item[0])[1]
    return results
