"""Blobs served from a read-only map: the stored bytes, whole, and nothing left open after.

The map and the file must be released when a response ends, however it ends; the chunks
handed out must stay valid for as long as someone (a transport that keeps what it was
given until it is sent) holds them. Open descriptors and maps are read from /proc.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.server import blobs, weights
from fma_connect.server.blobs import CHUNK, BlobStore
from fma_connect.server.testing import RunningServer

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").exists(), reason="reads open files and maps from /proc"
)

MSGPACK = "application/vnd.fma-connect.msgpack"
#: How long a test waits for the server to let go of a blob before it fails.
_RELEASE_TIMEOUT = 10.0


def _held(path: Path) -> tuple[int, int]:
    """This process's descriptors open on ``path`` and its maps of it (deleted or not)."""
    fds = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:  # closed since the listing (the listing's own, say)
            continue
        fds += target.startswith(str(path))
    with open("/proc/self/maps") as maps:
        mapped = sum(str(path) in line for line in maps)
    return fds, mapped


def _held_under(directory: Path) -> tuple[int, int]:
    fds, maps = 0, 0
    for name in _blob_names(directory):
        f, m = _held(directory / name)
        fds, maps = fds + f, maps + m
    return fds, maps


def _blob_names(directory: Path) -> list[str]:
    # The blobs deleted meanwhile stay listed by name: what /proc shows as "(deleted)".
    return [name for name in os.listdir(directory) if name.endswith(".blob")]


def _wait_released(directory: Path, names: list[str]) -> None:
    """Wait until nothing in this process holds the blobs ``names``; fail after a while."""
    deadline = time.monotonic() + _RELEASE_TIMEOUT
    while True:
        held = [name for name in names if _held(directory / name) != (0, 0)]
        if not held:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still open or mapped: {held}")
        time.sleep(0.02)


def _store(tmp_path: Path, data: bytes) -> tuple[BlobStore, str]:
    store = BlobStore(tmp_path)
    name, nbytes = store.write([data])
    assert nbytes == len(data)
    return store, name


def _pattern(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes()


async def _collect(stream: AsyncIterator[memoryview]) -> list[bytes]:
    return [bytes(chunk) async for chunk in stream]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of two chunks and a bit: several blocks in a few MiB, chunks cut at their ends."""
    block = 2 * CHUNK + 4096
    monkeypatch.setattr(blobs, "READ_BLOCK", block)
    return block


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 12_345], ids=lambda n: f"{n}B"
)
def test_stream_file_serves_the_stored_bytes(tmp_path: Path, small_blocks: int, size: int) -> None:
    data = _pattern(size)
    store, name = _store(tmp_path, data)
    chunks = anyio.run(_collect, store.stream_file(name))
    assert b"".join(chunks) == data
    ends = [min(block + small_blocks, size) for block in range(0, size, small_blocks)]
    expected = [
        min(CHUNK, end - start)
        for block, end in zip(range(0, size, small_blocks), ends, strict=True)
        for start in range(block, end, CHUNK)
    ]
    assert [len(chunk) for chunk in chunks] == expected  # cut at the blocks' ends too
    assert _held(store.path(name)) == (0, 0)


def test_an_empty_blob_streams_nothing_and_closes_its_file(tmp_path: Path) -> None:
    store, name = _store(tmp_path, b"")
    assert anyio.run(_collect, store.stream_file(name)) == []
    assert _held(store.path(name)) == (0, 0)


def test_a_blob_deleted_while_served_is_served_whole(tmp_path: Path, small_blocks: int) -> None:
    data = _pattern(4 * small_blocks + 7)
    store, name = _store(tmp_path, data)
    path = store.path(name)

    async def serve() -> bytes:
        stream = store.stream_file(name)
        store.delete([name])  # after the response began, before its first byte
        first = bytes(await anext(stream))
        rest = [bytes(chunk) async for chunk in stream]
        return first + b"".join(rest)

    assert anyio.run(serve) == data
    assert not path.exists()
    assert _held(path) == (0, 0)


def test_closing_the_stream_mid_body_releases_the_file_and_map(
    tmp_path: Path, small_blocks: int
) -> None:
    store, name = _store(tmp_path, _pattern(3 * small_blocks))
    path = store.path(name)

    async def serve_part() -> None:
        stream = store.stream_file(name)
        chunk = await anext(stream)
        del chunk
        assert _held(path) == (2, 1)  # the file, the map and the map's own descriptor
        await stream.aclose()

    anyio.run(serve_part)
    assert _held(path) == (0, 0)


def test_closing_a_stream_never_iterated_closes_its_file(tmp_path: Path) -> None:
    store, name = _store(tmp_path, b"x" * 10)
    stream = store.stream_file(name)
    assert _held(store.path(name)) == (1, 0)  # opened when the answer was made
    anyio.run(stream.aclose)
    assert _held(store.path(name)) == (0, 0)


def test_chunks_held_after_the_stream_ends_stay_valid_then_release_the_map(
    tmp_path: Path, small_blocks: int
) -> None:
    """A transport may keep the views it was given, not copies, until it sends them."""
    data = _pattern(2 * small_blocks + 99)
    store, name = _store(tmp_path, data)
    path = store.path(name)

    async def keep_all() -> list[memoryview]:
        return [chunk async for chunk in store.stream_file(name)]

    kept = anyio.run(keep_all)
    assert _held(path) == (1, 1)  # the stream ended, its file closed; the views keep the map
    assert b"".join(bytes(view) for view in kept) == data
    del kept
    assert _held(path) == (0, 0)


def test_blocks_are_read_into_the_page_cache_off_the_event_loop(
    tmp_path: Path, small_blocks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pattern(3 * small_blocks + 5)
    store, name = _store(tmp_path, data)
    warmed: list[tuple[int, int, bool]] = []
    real = blobs._warm

    def spy(fd: int, offset: int, length: int) -> None:
        warmed.append((offset, length, threading.current_thread() is threading.main_thread()))
        real(fd, offset, length)

    monkeypatch.setattr(blobs, "_warm", spy)
    assert b"".join(anyio.run(_collect, store.stream_file(name))) == data
    blocks = list(range(0, len(data), small_blocks))
    assert [(offset, length) for offset, length, _ in warmed] == [
        (start, min(small_blocks, len(data) - start)) for start in blocks
    ]
    assert not any(on_main for _, _, on_main in warmed)


def test_warm_falls_back_to_reading_where_sendfile_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pattern(CHUNK + 3)
    store, name = _store(tmp_path, data)
    reads: list[int] = []
    real = os.preadv

    def no_sendfile(*args: Any) -> int:
        raise OSError(22, "Invalid argument")

    def counting(fd: int, buffers: Any, offset: int) -> int:
        reads.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    monkeypatch.setattr(os, "preadv", counting)
    with open(store.path(name), "rb") as file:
        blobs._warm(file.fileno(), 0, len(data))
    assert reads == [0, CHUNK]
    assert b"".join(anyio.run(_collect, store.stream_file(name))) == data


# -- through a real server --------------------------------------------------------------


@pytest.fixture(params=["msgpack", "json"])
def aggregated(
    request: pytest.FixtureRequest, server: RunningServer, admin: AdminClient, small_blocks: int
) -> Iterator[tuple[int, WebClient, str]]:
    """A model whose aggregate of one update, several blocks long, is stored in a codec.

    The model id, a client and the ``Accept`` that gets the stored bytes streamed: as the
    body (msgpack), or inside the stock JSON answer (json).
    """
    codec = request.param
    model = admin.create_model("stream", requirement="require_x_updates", requirement_args=[1])
    # More than the socket buffers between the server and a slow reader hold (24 MB).
    count = 6_000_000 if codec == "msgpack" else 1_500_000
    weights = {"w": np.random.default_rng(1).standard_normal(count).astype(np.float32)}
    with WebClient(model["id"], url=server.url, codec=codec, retries=0) as client:
        client.send_update(weights)
        yield model["id"], client, MSGPACK if codec == "msgpack" else "application/json"


def _get_head(
    server: RunningServer, model_id: int, uuid: str, accept: str
) -> tuple[socket.socket, int, bytes]:
    """GET a model's latest weights on a bare socket that reads slowly.

    Returns:
        The socket, the answer's Content-Length and the body bytes read with the head.
    """
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # a small window
    sock.connect((host, int(port)))
    path = f"/api/v1/models/{model_id}/get_latest_model/"
    headers = f"Host: test\r\nCLIENT-UUID: {uuid}\r\nAccept: {accept}\r\n"
    sock.sendall(f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        more = sock.recv(65536)
        assert more, "the server closed before its answer's head"
        received += more
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    lines = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
    length = int(next(value for name, value in lines if name.strip().lower() == b"content-length"))
    return sock, length, body


def _read(sock: socket.socket, body: bytes, until: int) -> bytes:
    while len(body) < until:
        more = sock.recv(1 << 20)
        assert more, f"the answer ended after {len(body)} bytes"
        body += more
    return body


@pytest.mark.local_blobs(
    "it compares the answer with the blob files and sees them released in /proc"
)
def test_a_download_is_the_stored_blob_and_releases_it(
    server: RunningServer, data_dir: Path, aggregated: tuple[int, WebClient, str]
) -> None:
    model_id, client, accept = aggregated
    directory = data_dir / "blobs"
    sock, length, body = _get_head(server, model_id, client.uuid, accept)
    with sock:
        body = _read(sock, body, length)
    assert len(body) == length
    stored = [(directory / name).read_bytes() for name in _blob_names(directory)]
    aggregate = max(stored, key=lambda blob: blob in body)  # the aggregate's blob
    assert aggregate in body and len(aggregate) > 2 * blobs.READ_BLOCK
    if accept == MSGPACK:
        assert body == aggregate
    _wait_released(directory, _blob_names(directory))


@pytest.mark.local_blobs("it sees the blob files held, then released, in /proc")
def test_a_client_that_disconnects_mid_body_leaves_nothing_open(
    server: RunningServer, data_dir: Path, aggregated: tuple[int, WebClient, str]
) -> None:
    model_id, client, accept = aggregated
    directory = data_dir / "blobs"
    names = _blob_names(directory)
    sock, length, body = _get_head(server, model_id, client.uuid, accept)
    with sock:
        body = _read(sock, body, CHUNK)
        assert _held_under(directory) != (0, 0)  # being served: held
    assert len(body) < length
    _wait_released(directory, names)
    latest = client.check_for_latest_model(update_after=-1)  # the server still answers, whole
    assert latest is not None


# -- the answer around the stream ---------------------------------------------------------


class _Body:
    """An async iterator of numbered chunks that records whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count, self.fail_at = count, fail_at
        self.sent = 0
        self.closed = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self.sent == self.fail_at:
            raise OSError("the disk failed")
        if self.sent == self.count:
            raise StopAsyncIteration
        self.sent += 1
        return b"%d," % self.sent

    async def aclose(self) -> None:
        self.closed = True


def _asgi(response: Any, disconnect_after: int | None = None) -> list[dict[str, Any]]:
    """Run an answer against a fake server; the client goes after that many body messages."""
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        gone = anyio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if gone.is_set():
                return  # as uvicorn's: nothing is written once the client has gone
            sent.append(message)
            if disconnect_after is not None and len(sent) > disconnect_after:
                gone.set()
                await anyio.sleep(0)  # the server notices while this send waits

        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)

    anyio.run(run)
    return sent


def test_an_answer_sends_every_chunk_then_closes_the_iterator() -> None:
    body = _Body(4)
    sent = _asgi(weights._ClosingResponse(body, media_type="application/octet-stream"))
    assert b"".join(message.get("body", b"") for message in sent) == b"1,2,3,4,"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert body.closed


def test_an_answer_stops_when_the_client_goes_and_closes_the_iterator() -> None:
    body = _Body(1000)
    sent = _asgi(weights._ClosingResponse(body), disconnect_after=3)
    assert len(sent) == 4  # the head and three chunks; nothing once it went
    assert body.sent < 10  # it stopped at the next chunk or so, not at the end
    assert body.closed


def test_an_error_mid_body_keeps_its_type_and_closes_the_iterator() -> None:
    body = _Body(10, fail_at=2)
    with pytest.raises(OSError, match="the disk failed"):
        _asgi(weights._ClosingResponse(body))
    assert body.closed
