"""The server's connections read into one shared buffer (server/protocol.py): bodies
arrive whole and unmixed, in large pieces, and the head bounds still hold after a body.

Each test serves a small Starlette app with the server's own protocol on 127.0.0.1 and
talks to it over raw sockets, so the reads and the pipelining are the test's to choose.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fma_connect.server.bounds import Bounds
from fma_connect.server.protocol import server_config
from fma_connect.server.testing import serving_in_thread

MAX_HEADER_BYTES = 8192


async def _digest(request: Request) -> JSONResponse:
    """Answer the body's SHA-256 and the sizes of the pieces the app was handed."""
    await asyncio.sleep(float(request.query_params.get("wait", "0")))  # the socket fills
    hasher, pieces = hashlib.sha256(), list[int]()
    async for piece in request.stream():
        hasher.update(piece)
        pieces.append(len(piece))
    return JSONResponse({"sha256": hasher.hexdigest(), "pieces": pieces})


@pytest.fixture
def url() -> Iterator[tuple[str, int]]:
    app = Starlette(routes=[Route("/digest", _digest, methods=["PUT"])])
    app.state.bounds = Bounds(max_header_bytes=MAX_HEADER_BYTES)
    config = server_config(app, host="127.0.0.1", port=0, log_level="warning")
    with serving_in_thread(config) as port:
        yield "127.0.0.1", port


def _put(body_length: int, query: str = "") -> bytes:
    return b"PUT /digest%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
        query.encode(),
        body_length,
    )


def _responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read ``count`` responses (each with a Content-Length) off a connection."""
    sock.settimeout(30)
    got, answers = b"", list[tuple[int, bytes]]()
    while len(answers) < count:
        while b"\r\n\r\n" not in got:
            more = sock.recv(65536)
            assert more, f"the connection closed after {len(answers)} answers"
            got += more
        head, got = got.split(b"\r\n\r\n", 1)
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        while len(got) < length:
            more = sock.recv(65536)
            assert more, "the connection closed inside a body"
            got += more
        answers.append((int(head.split(b" ", 2)[1]), got[:length]))
        got = got[length:]
    return answers


def _body(nbytes: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, np.uint8).tobytes()


def test_a_large_body_arrives_whole_in_pieces_larger_than_asyncios_reads(
    url: tuple[str, int],
) -> None:
    body = _body(32 << 20, 1)
    with socket.create_connection(url) as sock:
        # The app waits before reading, so the socket's buffers fill meanwhile and the
        # server's reads after that take what they hold.
        sock.sendall(_put(len(body), "?wait=0.3"))
        sender = threading.Thread(target=sock.sendall, args=(body,))
        sender.start()
        [(status, answer)] = _responses(sock, 1)
        sender.join()
    reply = orjson.loads(answer)
    assert status == 200
    assert reply["sha256"] == hashlib.sha256(body).hexdigest()
    assert sum(reply["pieces"]) == len(body)
    assert max(reply["pieces"]) > 256 << 10, reply["pieces"]


def test_bodies_on_two_connections_at_once_do_not_mix(url: tuple[str, int]) -> None:
    bodies = [_body(8 << 20, seed) for seed in (2, 3)]
    socks = [socket.create_connection(url) for _ in bodies]
    try:
        for sock, body in zip(socks, bodies, strict=True):
            sock.sendall(_put(len(body)))
        step = 256 << 10  # alternate the two bodies' bytes, so the server reads both
        for start in range(0, len(bodies[0]), step):
            for sock, body in zip(socks, bodies, strict=True):
                sock.sendall(body[start : start + step])
        replies = [_responses(sock, 1)[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    for (status, answer), body in zip(replies, bodies, strict=True):
        assert status == 200
        assert orjson.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()


def test_requests_pipelined_after_a_body_in_the_same_read_are_answered_in_order(
    url: tuple[str, int],
) -> None:
    first, second = _body(3 << 20, 4), b"after the body"
    with socket.create_connection(url) as sock:
        sock.sendall(_put(len(first)) + first + _put(len(second)) + second)
        answers = _responses(sock, 2)
    assert [status for status, _ in answers] == [200, 200]
    digests = [orjson.loads(answer)["sha256"] for _, answer in answers]
    assert digests == [hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()]


def test_a_head_too_large_after_a_body_is_still_refused_431(url: tuple[str, int]) -> None:
    body = _body(1 << 20, 5)
    with socket.create_connection(url) as sock:
        # The next head begins in the body's read (not counted, see the module), then
        # grows in reads of its own, which are.
        sock.sendall(_put(len(body)) + body + b"PUT /digest HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        [first] = _responses(sock, 1)
        sock.sendall(b"a" * (4 * MAX_HEADER_BYTES))  # the head never ends
        [second] = _responses(sock, 1)
    assert first[0] == 200
    assert second[0] == 431
    assert str(MAX_HEADER_BYTES) in orjson.loads(second[1])["detail"]
