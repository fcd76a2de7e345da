"""Raw HTTP/1.1 over sockets, for tests that must send what no client library sends."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

#: Seconds a test socket waits for the server before the test fails (a hang guard).
TIMEOUT = 10.0


def connect(
    url: str, *, source: str | None = None, receive_buffer: int | None = None
) -> socket.socket:
    """A TCP connection to the server at ``url`` (from ``source``, an address of this host).

    ``receive_buffer`` sets SO_RCVBUF before connecting, so the kernel buffers little
    of what the server sends to a client that does not read.
    """
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(TIMEOUT)
        sock.connect((parts.hostname, parts.port))
    except OSError:
        sock.close()
        raise
    return sock


def head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """A request head (request line, Host and ``headers``)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\r\n".join([*lines, "", ""]).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length: ``(status, headers, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without answering: {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of its answer"
        body += chunk
    return int(status_line.split(" ")[1]), headers, body[:length]


def json_error(sock: socket.socket, status: int) -> Any:
    """Read a JSON error answer with ``status`` and return its ``detail``."""
    got, headers, body = read_response(sock)
    assert got == status, (got, body)
    assert headers["content-type"] == "application/json", headers
    detail = json.loads(body)["detail"]
    assert isinstance(detail, str) and detail, body
    return detail


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closing)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
