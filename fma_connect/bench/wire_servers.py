"""The wire benchmark's peers: a bare-socket HTTP server and the ASGI server's empty route.

``python -m fma_connect.bench.wire_servers bare SIZE [DIRECTORY]`` or ``... empty`` serves
on an ephemeral loopback port and prints ``listening on http://127.0.0.1:PORT``, like
``fma-connect serve`` (and :mod:`.servers`, whose listening socket it reuses).

* ``bare``: HTTP/1.1 over bare sockets, a thread per connection, no framework. Every
  ``POST`` body is read into a reused buffer and dropped, then answered ``201`` with a
  small JSON object, which ``WebClient.send_update`` accepts; a ``POST /store/<name>``
  body is stored instead, as it arrives, as the least a server in Python can do with an
  update: each read hashed (BLAKE3, as the server checks a chunk) and written to
  ``DIRECTORY/<name>`` (default: the temporary directory) with the server's fsync
  policy (:func:`~.wire.store_durably`; the benchmark deletes the file). ``GET /<n>``
  answers ``n`` bytes from memory; any other ``GET`` answers the msgpack body of
  :func:`~.measure.make_model` ``(SIZE)``, encoded once at start-up, with the headers
  the reference server sends (``Content-Type``, ``Content-Length``, ``FMA-Meta``), which
  ``WebClient.check_for_latest_model`` decodes. Bodies go out in
  :data:`~.wire.SEND_SLICE` slices, the fastest here. It bounds what a client can reach.
* ``empty``: a Starlette app with an empty ``GET`` route, a ``POST`` route that reads
  and drops its body and a ``GET`` route that streams bytes from memory, run the way
  ``fma-connect serve`` runs its app (the same
  :func:`~fma_connect.server.protocol.server_config`, hence the same ASGI server,
  protocol class and bounds). It bounds what the reference server's routes can reach.
"""

from __future__ import annotations

import re
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from .wire import send_sliced, store_durably

__all__ = ["SINK_ANSWER", "bare_state", "empty_app", "serve_bare", "source_body"]

#: What the bare sink answers to every POST: the fields of a stored update a client reads.
SINK_ANSWER = b'{"id":1,"federated_model":1,"status":0,"codec":"msgpack"}'
#: Bytes a POST body is read in (the same as :mod:`.servers`' raw endpoint).
_READ = 4 << 20
#: ``GET /<n>`` sends ``n`` bytes from a pattern of this size, repeated.
_PATTERN = 64 << 20
#: Connections every server here admits at once (64 threads poll in the small-request test).
BACKLOG = 256
#: The names ``POST /store/<name>`` stores under.
_STORE_NAME = re.compile(rb"/store/([A-Za-z0-9_.-]+)")


def source_body(size: int) -> np.ndarray:
    """The msgpack body of ``make_model(size)`` in one buffer (what the bare source serves)."""
    from ..plugins import default_codec_registry
    from .measure import make_model
    from .ops import _join

    model = make_model(size)
    body = np.frombuffer(_join(default_codec_registry().get("msgpack").encode(model)), np.uint8)
    return body


def _head(reader: Any) -> tuple[bytes, bytes, int] | None:
    """Read a request head; return its method, target and Content-Length (None at EOF)."""
    request = reader.readline()
    if not request:
        return None
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    method, target = request.split()[:2]
    return method, target, length


def _handle(
    conn: socket.socket, pattern: memoryview, body: memoryview, head: bytes, store: Path
) -> None:
    # Buffered: the head is read a line at a time from the buffer, and readinto of a
    # body larger than the buffer goes straight from the socket into the scratch buffer.
    reader = conn.makefile("rb")
    scratch = memoryview(bytearray(_READ))
    with conn, reader:
        while (request := _head(reader)) is not None:
            method, target, length = request
            if method == b"POST":
                pieces = _received(reader, scratch, length)
                name = _STORE_NAME.fullmatch(target)
                try:
                    if name is None:
                        for _ in pieces:
                            pass
                    else:
                        store_durably(store / name.group(1).decode("ascii"), _hashed(pieces))
                except ConnectionError:  # the client went away inside the body
                    return
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(SINK_ANSWER), SINK_ANSWER)
                )
            elif target.strip(b"/").isdigit():
                size = int(target.strip(b"/"))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for start in range(0, size, pattern.nbytes):
                    send_sliced(conn, pattern[: min(pattern.nbytes, size - start)])
            else:
                conn.sendall(head)
                send_sliced(conn, body)


def _received(reader: Any, scratch: memoryview, length: int) -> Iterator[memoryview]:
    """A body's ``length`` bytes, each read into ``scratch`` (valid until the next)."""
    got = 0
    while got < length:
        n = reader.readinto(scratch[: min(_READ, length - got)])
        if not n:
            raise ConnectionError(f"the body ended after {got} of {length} bytes")
        got += n
        yield scratch[:n]


def _hashed(pieces: Iterator[memoryview]) -> Iterator[memoryview]:
    """``pieces``, each hashed as it passes (the digest is not used: it is the cost)."""
    hasher = blake3.blake3()
    for piece in pieces:
        hasher.update(piece)
        yield piece


def bare_state(size: int) -> tuple[memoryview, memoryview, bytes]:
    """What :func:`serve_bare` serves: the ``GET /<n>`` pattern, the msgpack body, its head."""
    from ..plugins import default_codec_registry
    from ..server.weights import META_HEADER

    body = source_body(size)
    media_type = default_codec_registry().get("msgpack").media_type
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nContent-Length: {body.nbytes}\r\n"
        f'{META_HEADER}: {{"aggregate":1}}\r\n\r\n'
    ).encode("ascii")
    return memoryview(np.ones(_PATTERN, np.uint8).data), body.data, head


def serve_bare(
    sock: socket.socket, state: tuple[memoryview, memoryview, bytes], store: Path
) -> None:
    """Serve the bare-socket endpoints (see the module) on a listening socket, forever;
    ``POST /store/<name>`` stores into ``store``."""
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_handle, args=(conn, *state, store), daemon=True).start()


def empty_app() -> Any:
    """A Starlette app with nothing behind its routes.

    ``GET /empty/`` answers ``{}``, ``POST /empty/`` drops its body, ``GET /bytes/<n>``
    streams ``n`` bytes from memory in the chunks the reference server streams a blob in
    (:data:`~fma_connect.server.blobs.CHUNK`).
    """
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from ..server.blobs import CHUNK

    chunk = memoryview(bytes(CHUNK))

    async def empty(request: Request) -> Response:
        return JSONResponse({})

    async def discard(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return JSONResponse({"id": 1}, status_code=201)

    async def some_bytes(request: Request) -> Response:
        size = int(request.path_params["n"])

        async def chunks() -> AsyncIterator[memoryview]:
            for start in range(0, size, CHUNK):
                yield chunk[: min(CHUNK, size - start)]

        headers = {"Content-Length": str(size)}
        return StreamingResponse(chunks(), headers=headers, media_type="application/octet-stream")

    return Starlette(
        routes=[
            Route("/empty/", empty, methods=["GET"]),
            Route("/empty/", discard, methods=["POST"]),
            Route("/bytes/{n:int}", some_bytes, methods=["GET"]),
        ]
    )


def _serve_empty(sock: socket.socket) -> None:
    """Run :func:`empty_app` as ``fma-connect serve`` runs its app (see its ``serve``)."""
    import uvicorn

    from ..server.bounds import Bounds
    from ..server.protocol import server_config

    app = empty_app()
    # The bounds `wire_cli` starts `fma-connect serve` with: every client is 127.0.0.1 here.
    app.state.bounds = Bounds(max_connections_per_client=0)
    config = server_config(app, log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str]) -> None:
    """Serve ``bare SIZE [DIRECTORY]`` or ``empty`` until killed."""
    from .servers import _listen

    # Built before the address is printed: the first request then meets a ready server.
    state = bare_state(int(argv[1])) if argv[0] == "bare" else None
    sock = _listen()
    sock.listen(BACKLOG)  # more than _listen's 16: 64 clients connect at once
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    if state is not None:
        serve_bare(sock, state, Path(argv[2] if len(argv) > 2 else tempfile.gettempdir()))
    else:
        _serve_empty(sock)


if __name__ == "__main__":
    main(sys.argv[1:])
