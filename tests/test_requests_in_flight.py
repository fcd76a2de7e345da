"""Both clients send a batch of requests (an upload's chunks) a few at once.

The runners (``fma_connect._in_flight``) are tested with calls that count how many run
at once and fail on purpose; the whole sending flow with a stand-in service, for the
width it is given. The chunks' bytes and progress through a real server are tested
with the uploads (tests/server/test_uploads.py, tests/reliability/test_resumable.py).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
import pytest

from fma_connect import WebClient
from fma_connect._in_flight import in_tasks, in_threads
from fma_connect._messages import Reply, Request, Requests
from fma_connect.resumable import RESUMABLE_HEADER

URL = "http://127.0.0.1:9"  # never reached: the client's one-request step is replaced
UUID = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"
WAIT = 10.0  # seconds a call waits for the others to start (a failure, not a pause)


class _Refused(Exception):
    pass


class _Calls:
    """Ten calls that each wait until three ran at once; some fail once all three ran."""

    def __init__(self, failing: tuple[int, ...] = ()) -> None:
        self.failing = failing
        self.active = self.most = 0
        self.started: list[int] = []
        self.guard = threading.Lock()
        self.full = threading.Event()  # three ran at once
        self.failed = threading.Event()  # the last failing call failed

    def begin(self, index: int) -> None:
        with self.guard:
            self.started.append(index)
            self.active += 1
            self.most = max(self.most, self.active)
            if self.active == 3:
                self.full.set()

    def end(self, index: int) -> int:
        with self.guard:
            self.active -= 1
        if index in self.failing:
            if index == self.failing[-1]:
                self.failed.set()
            raise _Refused(f"call {index} refused")
        return index

    def call(self, index: int) -> int:
        self.begin(index)
        assert self.full.wait(WAIT), "fewer than 3 calls ran at once"
        if index == 0 and self.failing:  # still in flight when the others fail
            assert self.failed.wait(WAIT)
        return self.end(index)

    def threaded(self) -> list[Callable[[], int]]:
        return [functools.partial(self.call, i) for i in range(10)]

    def awaited(self) -> list[Callable[[], Awaitable[int]]]:
        async def call(index: int) -> int:
            self.begin(index)
            await asyncio.to_thread(self.full.wait, WAIT)
            assert self.full.is_set(), "fewer than 3 calls ran at once"
            if index == 0 and self.failing:
                await asyncio.to_thread(self.failed.wait, WAIT)
            return self.end(index)

        return [functools.partial(call, i) for i in range(10)]


def test_threads_run_width_calls_at_once_and_answer_in_order() -> None:
    calls = _Calls()
    assert in_threads(calls.threaded(), 3) == list(range(10))
    assert calls.most == 3


def test_threads_raise_the_earliest_error_and_start_nothing_after_it() -> None:
    calls = _Calls(failing=(1, 2))
    with pytest.raises(_Refused, match="call 1 refused"):
        in_threads(calls.threaded(), 3)
    assert sorted(calls.started) == [0, 1, 2]


def test_tasks_run_width_calls_at_once_and_answer_in_order() -> None:
    calls = _Calls()
    assert asyncio.run(in_tasks(calls.awaited(), 3)) == list(range(10))
    assert calls.most == 3


def test_tasks_raise_the_earliest_error_and_start_nothing_after_it() -> None:
    calls = _Calls(failing=(1, 2))
    with pytest.raises(_Refused, match="call 1 refused"):
        asyncio.run(in_tasks(calls.awaited(), 3))
    assert sorted(calls.started) == [0, 1, 2]


def test_send_update_sends_its_chunks_upload_in_flight_at_once(monkeypatch: Any) -> None:
    # The whole sending flow with a stand-in service: the width reaches the command.
    client = WebClient(1, url=URL, uuid=UUID, codec="msgpack", resumable_from=1, upload_in_flight=3)
    widths: list[int] = []

    def one(command: Request | Requests) -> Any:
        if isinstance(command, Requests):
            widths.append(command.width)
            return [Reply(204, {}, "PUT", put.path, b"") for put in command.requests]
        if command.method == "OPTIONS":
            headers = {"Accept-Post": client.codec.media_type, RESUMABLE_HEADER: "uploads/"}
            return Reply(200, headers, "OPTIONS", command.path, b"")
        if command.path == "uploads/":  # the announcement: every chunk is missing
            chunks = len(orjson.loads(bytes(command.body))["chunks"])
            state = {"id": "u", "missing": list(range(chunks)), "received_bytes": 0}
            return Reply(201, {}, "POST", command.path, orjson.dumps(state))
        assert command.path == "uploads/u/complete/", command.path
        return Reply(201, {}, "POST", command.path, b'{"id": 7}')

    monkeypatch.setattr(client, "_execute", one)
    stored = client.send_update({"w": np.zeros(1 << 16, np.float32)})
    assert stored["id"] == 7
    assert widths == [3]
