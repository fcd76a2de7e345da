"""AsyncWebClient's HTTP behaviour against a scripted server on loopback: retries with
Retry-After, idempotent resends, what is not resent, timeouts, resumed downloads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest

pytest.importorskip("aiohttp", reason="the asyncio client needs the aio extra (py311 env has it)")

from fma_connect.aio import AsyncWebClient
from fma_connect.exceptions import (
    APIError,
    ConnectError,
    RequestTimeout,
    TransportError,
)
from fma_connect.plugins import default_codec_registry

T = TypeVar("T")
UUID = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@dataclass
class Seen:
    """One request the scripted server read."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


#: An answer: the raw bytes to send, with ``close`` after them (None: close unanswered).
Answer = Callable[[Seen], tuple[bytes | None, bool]]


def http(status: int, body: bytes = b"{}", **headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if "Content_Type" not in headers:
        head.append("Content-Type: application/json")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def answer(status: int, body: bytes = b"{}", **headers: str) -> Answer:
    return lambda _: (http(status, body, **headers), False)


def drop(_: Seen) -> tuple[bytes | None, bool]:
    return None, True


@dataclass
class Scripted:
    """An HTTP/1.1 server that answers requests in turn from ``answers``."""

    answers: list[Answer]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client went away: nothing more to answer
            self._requests(conn)

    def _requests(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while True:
                line = reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, value = header.decode().split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body)
                self.seen.append(seen)
                raw, close = self.answers.pop(0)(seen)
                if raw is not None:
                    conn.sendall(raw)
                if raw is None or close:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Any:
    servers: list[Scripted] = []

    def make(*answers: Answer) -> Scripted:
        servers.append(Scripted(list(answers)))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _client(url: str, **options: Any) -> AsyncWebClient:
    client = AsyncWebClient(7, UUID, url, **options)
    client._transport.backoff_factor = 0  # no sleeping between tries in tests
    return client


LATEST = orjson.dumps({"values": [[1.0, 2.0]], "aggregate": 3})


def test_a_get_answered_503_is_retried_after_its_retry_after(scripted: Any) -> None:
    server = scripted(
        answer(503, Retry_After="0"), answer(429, Retry_After="0"), answer(200, LATEST)
    )

    async def call() -> Any:
        async with _client(server.url) as client:
            return await client.check_for_latest_model()

    latest = run(call())
    assert latest == {"values": [[1.0, 2.0]], "aggregate": 3}
    assert len(server.seen) == 3


def test_a_get_gives_up_after_its_retries_with_the_last_status(scripted: Any) -> None:
    server = scripted(*[answer(503, b'{"detail": "busy"}')] * 3)

    async def call() -> None:
        async with _client(server.url, retries=2) as client:
            await client.check_for_latest_model()

    with pytest.raises(APIError) as refused:
        run(call())
    assert refused.value.status_code == 503 and refused.value.detail == {"detail": "busy"}
    assert len(server.seen) == 3


def test_a_get_whose_connection_broke_is_sent_again(scripted: Any) -> None:
    # Three in a row: more than aiohttp's own single resend of an idempotent request.
    server = scripted(drop, drop, drop, answer(200, LATEST))

    async def call() -> Any:
        async with _client(server.url) as client:
            return await client.check_for_latest_model()

    assert run(call()) == {"values": [[1.0, 2.0]], "aggregate": 3}
    assert len(server.seen) == 4


def test_a_service_that_cannot_hold_requests_is_polled(scripted: Any) -> None:
    server = scripted(*[answer(200, b"{}")] * 3)  # no FMA-Long-Poll header

    async def call() -> Any:
        async with _client(server.url, retries=0) as client:
            return await client.wait_for_new_model(0.8)

    assert run(call()) is None
    assert len(server.seen) == 3  # asked, slept 0.5 s, asked, slept the 0.3 s left, asked
    assert "wait=" in server.seen[0].target
    assert all("wait=" not in seen.target for seen in server.seen[1:])


def test_an_update_answered_503_is_not_resent_unless_asked(scripted: Any) -> None:
    server = scripted(answer(503))

    async def call() -> None:
        async with _client(server.url) as client:
            await client.send_update([np.ones(2)])

    with pytest.raises(APIError) as refused:
        run(call())
    assert refused.value.status_code == 503 and len(server.seen) == 1


def test_retry_updates_resends_with_the_same_idempotency_key(scripted: Any) -> None:
    stored = orjson.dumps({"id": 1, "federated_model": 7})
    server = scripted(answer(503, Retry_After="0"), drop, answer(201, stored))

    async def call() -> Any:
        async with _client(server.url, retry_updates=True) as client:
            return await client.send_update([np.ones(2)])

    assert run(call())["id"] == 1
    keys = {seen.headers["idempotency-key"] for seen in server.seen}
    assert len(server.seen) == 3 and len(keys) == 1
    assert all(seen.headers["client-uuid"] == UUID for seen in server.seen)
    assert orjson.loads(server.seen[0].body)["data"] == [[1.0, 1.0]]


def test_an_update_whose_connection_broke_is_an_unknown_outcome(scripted: Any) -> None:
    server = scripted(drop)

    async def call() -> None:
        async with _client(server.url) as client:
            await client.send_update([np.ones(2)])

    with pytest.raises(ConnectError, match="outcome is unknown.*retry_updates=True"):
        run(call())
    assert len(server.seen) == 1


def test_silence_past_the_read_timeout_is_a_request_timeout(scripted: Any) -> None:
    def silent(_: Seen) -> tuple[bytes | None, bool]:
        time.sleep(1.5)
        return None, True

    server = scripted(silent)

    async def call() -> None:
        async with _client(server.url, timeout=(2.0, 0.3), retries=0) as client:
            await client.check_for_latest_model()

    with pytest.raises(RequestTimeout, match="no answer within the"):
        run(call())


def _binary_latest() -> tuple[bytes, dict[str, str], list[np.ndarray]]:
    weights: list[np.ndarray] = [np.arange(200_000, dtype=np.float32), np.ones((3, 4))]
    codec = default_codec_registry().get("msgpack")
    buffers = codec.encode([(str(i), w) for i, w in enumerate(weights)])
    body = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
    headers = {
        "Content_Type": codec.media_type,
        "FMA_Meta": orjson.dumps({"aggregate": 4}).decode(),
        "Accept_Ranges": "bytes",
        "ETag": '"v4"',
    }
    return body, headers, weights


def test_a_download_that_breaks_off_resumes_with_a_range_request(scripted: Any) -> None:
    body, headers, weights = _binary_latest()
    cut = len(body) // 3

    def half(_: Seen) -> tuple[bytes | None, bool]:
        return http(200, body, **headers)[: -(len(body) - cut)], True

    def rest(seen: Seen) -> tuple[bytes | None, bool]:
        start = int(seen.headers["range"].removeprefix("bytes=").rstrip("-"))
        ranged = {**headers, "Content_Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        return http(206, body[start:], **ranged), False

    server = scripted(half, rest)

    async def call() -> Any:
        async with _client(server.url, codec="msgpack") as client:
            return await client.check_for_latest_model()

    latest = run(call())
    assert latest is not None and latest["aggregate"] == 4
    for got, sent in zip(latest["values"], weights, strict=True):
        np.testing.assert_array_equal(got, sent)
    second = server.seen[1]
    assert second.headers["if-range"] == '"v4"'
    assert 0 < int(second.headers["range"].removeprefix("bytes=").rstrip("-")) <= cut


def test_a_changed_body_is_not_stitched_onto_the_old_one(scripted: Any) -> None:
    body, headers, _ = _binary_latest()

    def half(_: Seen) -> tuple[bytes | None, bool]:
        return http(200, body, **headers)[: -(len(body) // 2)], True

    server = scripted(half, answer(200, body, **{**headers, "ETag": '"v5"'}))

    async def call() -> None:
        async with _client(server.url, codec="msgpack") as client:
            await client.check_for_latest_model()

    with pytest.raises(TransportError, match="may have changed meanwhile"):
        run(call())


def test_a_body_cut_without_ranges_is_an_error_not_a_short_buffer(scripted: Any) -> None:
    body, headers, _ = _binary_latest()
    del headers["ETag"]

    def half(_: Seen) -> tuple[bytes | None, bool]:
        return http(200, body, **headers)[: -(len(body) // 2)], True

    server = scripted(half)

    async def call() -> None:
        async with _client(server.url, codec="msgpack") as client:
            await client.check_for_latest_model()

    with pytest.raises(ConnectError, match="download of .* broke"):
        run(call())
