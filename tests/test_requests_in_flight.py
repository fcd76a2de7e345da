"""Both clients send a batch of requests (an upload's chunks) a few at once.

The drivers are tested here with their one-request step replaced, so that how many run
at once and what happens after an error are the test's to see; the chunks' bytes and
progress through a real server are tested with the uploads (tests/server/test_uploads.py,
tests/reliability/test_resumable.py).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import orjson
import pytest

from fma_connect import WebClient
from fma_connect._messages import Reply, Request, Requests
from fma_connect.exceptions import APIError
from fma_connect.resumable import RESUMABLE_HEADER

aio = pytest.importorskip("fma_connect.aio", reason="the asyncio client needs the aio extra")

URL = "http://127.0.0.1:9"  # never reached: the one-request step is replaced
UUID = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"
WAIT = 10.0  # seconds a request waits for the others to start (a failure, not a pause)


def _requests(count: int) -> Requests:
    return Requests(tuple(Request("PUT", f"chunks/{i}/") for i in range(count)), width=3)


def _reply(request: Request) -> Reply:
    return Reply(204, {}, request.method, request.path, b"")


class _Counting:
    """Counts requests in flight; each waits until ``width`` were in flight once."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.active = self.most = 0
        self.started: list[str] = []
        self.guard = threading.Lock()
        self.full = threading.Event()

    def begin(self, request: Request) -> None:
        with self.guard:
            self.started.append(request.path)
            self.active += 1
            self.most = max(self.most, self.active)
            if self.active == self.width:
                self.full.set()

    def end(self) -> None:
        with self.guard:
            self.active -= 1


def _failing(request: Request, *indices: int) -> None:
    index = int(request.path.split("/")[1])
    if index in indices:
        raise APIError(409, {"detail": f"chunk {index} refused"})


def test_webclient_sends_width_at_once_and_answers_in_order(monkeypatch: Any) -> None:
    client = WebClient(1, url=URL, uuid=UUID)
    counting = _Counting(3)

    def one(request: Request) -> Reply:
        counting.begin(request)
        try:
            assert counting.full.wait(WAIT), "fewer than 3 requests ran at once"
            return _reply(request)
        finally:
            counting.end()

    monkeypatch.setattr(client, "_execute", one)
    replies = client._execute_all(_requests(10))
    assert [reply.url for reply in replies] == [f"chunks/{i}/" for i in range(10)]
    assert counting.most == 3


def test_webclient_raises_the_earliest_error_and_starts_nothing_after_it(
    monkeypatch: Any,
) -> None:
    client = WebClient(1, url=URL, uuid=UUID)
    counting = _Counting(3)
    failed = threading.Event()

    def one(request: Request) -> Reply:
        counting.begin(request)
        try:
            assert counting.full.wait(WAIT), "fewer than 3 requests ran at once"
            if request.path == "chunks/0/":  # still in flight when 1 and 2 fail
                assert failed.wait(WAIT)
            _failing(request, 1, 2)
            return _reply(request)
        except APIError:
            if request.path == "chunks/2/":
                failed.set()
            raise
        finally:
            counting.end()

    monkeypatch.setattr(client, "_execute", one)
    with pytest.raises(APIError, match="chunk 1 refused"):
        client._execute_all(_requests(10))
    assert sorted(counting.started) == ["chunks/0/", "chunks/1/", "chunks/2/"]


def test_async_client_sends_width_at_once_and_answers_in_order(monkeypatch: Any) -> None:
    async def run() -> tuple[list[Reply], int]:
        client = aio.AsyncWebClient(1, url=URL, uuid=UUID)
        active = most = 0
        full = asyncio.Event()

        async def one(request: Request, streamed: list[Reply]) -> Reply:
            nonlocal active, most
            active += 1
            most = max(most, active)
            if active == 3:
                full.set()
            try:
                await asyncio.wait_for(full.wait(), WAIT)
                return _reply(request)
            finally:
                active -= 1

        monkeypatch.setattr(client, "_execute", one)
        try:
            return await client._execute_all(_requests(10), []), most
        finally:
            await client.aclose()

    replies, most = asyncio.run(run())
    assert [reply.url for reply in replies] == [f"chunks/{i}/" for i in range(10)]
    assert most == 3


def test_async_client_raises_the_earliest_error_and_starts_nothing_after_it(
    monkeypatch: Any,
) -> None:
    async def run() -> list[str]:
        client = aio.AsyncWebClient(1, url=URL, uuid=UUID)
        started: list[str] = []
        failed, full = asyncio.Event(), asyncio.Event()

        async def one(request: Request, streamed: list[Reply]) -> Reply:
            started.append(request.path)
            if len(started) == 3:
                full.set()
            await asyncio.wait_for(full.wait(), WAIT)
            if request.path == "chunks/0/":  # still in flight when 1 and 2 fail
                await asyncio.wait_for(failed.wait(), WAIT)
            try:
                _failing(request, 1, 2)
            except APIError:
                if request.path == "chunks/2/":
                    failed.set()
                raise
            return _reply(request)

        monkeypatch.setattr(client, "_execute", one)
        try:
            with pytest.raises(APIError, match="chunk 1 refused"):
                await client._execute_all(_requests(10), [])
        finally:
            await client.aclose()
        return started

    assert sorted(asyncio.run(run())) == ["chunks/0/", "chunks/1/", "chunks/2/"]


def test_send_update_sends_its_chunks_upload_in_flight_at_once(monkeypatch: Any) -> None:
    # The whole sending flow with a stand-in service: the width reaches the command.
    client = WebClient(1, url=URL, uuid=UUID, codec="msgpack", resumable_from=1, upload_in_flight=3)
    widths: list[int] = []

    def one(command: Request | Requests) -> Any:
        if isinstance(command, Requests):
            widths.append(command.width)
            return [_reply(request) for request in command.requests]
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
