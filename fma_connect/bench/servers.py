"""The benchmark's helper servers: a bare-socket ceiling and a discarding endpoint.

``python -m fma_connect.bench.servers raw|discard`` serves on an ephemeral loopback
port and prints ``listening on http://127.0.0.1:PORT``, like ``fma-connect serve``.

* ``raw``: HTTP/1.1 over bare sockets with no framework: ``POST`` bodies are read into
  a reused buffer and dropped, ``GET /<n>`` answers ``n`` bytes from memory. It is the
  loopback ceiling the other figures are compared with.
* ``discard``: the reference server's stack (Starlette on uvicorn) with
  ``POST /api/v1/model_updates/`` reading and dropping the body, so that
  ``send_update`` and a plain ``requests.post`` can be compared on the same endpoint.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

__all__ = ["discard_app", "serve_raw"]

_BUFFER = 4 << 20


def _handle(conn: socket.socket, payload: memoryview) -> None:
    reader = conn.makefile("rb", buffering=0)
    scratch = memoryview(bytearray(_BUFFER))
    with conn, reader:
        while True:
            request = reader.readline()
            if not request:
                return
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            method, target = request.split()[:2]
            if method == b"GET":
                size = int(target.strip(b"/") or b"0")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for start in range(0, size, payload.nbytes):
                    conn.sendall(payload[: min(payload.nbytes, size - start)])
                continue
            got = 0
            while got < length:
                n = reader.readinto(scratch[: min(_BUFFER, length - got)])
                if not n:
                    return
                got += n
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def serve_raw(sock: socket.socket, payload_bytes: int = 64 << 20) -> None:
    """Serve the bare-socket endpoints on a listening socket, forever (threads per client)."""
    payload = memoryview(bytearray(b"\x01" * payload_bytes))
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=_handle, args=(conn, payload), daemon=True).start()


def discard_app() -> Any:
    """A Starlette app whose update endpoint reads and drops the body."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def discard(request: Request) -> Response:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"id": 1, "received": size}, status_code=201)

    return Starlette(routes=[Route("/api/v1/model_updates/", discard, methods=["POST"])])


def _listen() -> socket.socket:
    from ..server.serve import bind  # its socket keeps Nagle off, as served ones must

    sock = bind("127.0.0.1", 0)
    sock.listen(16)
    return sock


def main(kind: str) -> None:
    """Serve ``raw`` or ``discard`` until killed."""
    sock = _listen()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    if kind == "raw":
        serve_raw(sock)
    else:
        import uvicorn

        config = uvicorn.Config(discard_app(), log_level="warning", lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
