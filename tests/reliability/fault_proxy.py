"""A forwarding HTTP proxy on 127.0.0.1 that breaks chosen exchanges, for fault tests.

The client talks to the proxy as if it were the service. For each request, a plan
(``plan(exchange) -> Fault | None``) decides what happens: forward it untouched, drop
the connection before or after forwarding it (the client cannot know whether the
service got it), cut it while its body is arriving, answer a status itself (503 with
Retry-After...), or damage the request or response body in transit. The plan sees the
request's head (its body is read after the plan decides). Every exchange is logged
for the test to inspect.

Each request is forwarded on a fresh upstream connection with ``Connection: close``,
so a response is simply everything the service sends; the client's connection is
closed after each answer (requests opens a new one transparently).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 64 << 10


@dataclass
class Exchange:
    """One request seen by the proxy, and what was done with it.

    Attributes:
        index: Position among all requests the proxy received (0-based).
        method: The HTTP method.
        path: The request target (path and query).
        headers: Request headers, names lowercased.
        body: The request body as received.
        fault: The fault applied, or None.
        status: The status the service answered (None when not forwarded).
        returned: The bytes of response body passed on to the client.
    """

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fault: Fault | None = None
    status: int | None = None
    returned: int = 0


@dataclass
class Fault:
    """What to do to an exchange.

    Attributes:
        kind: ``drop-before`` (close without forwarding), ``cut-request`` (read
            ``keep`` bytes of the request body, then reset), ``drop-after`` (forward,
            then close without answering), ``answer`` (answer ``status`` and
            ``headers`` without forwarding), ``damage-request`` (forward
            ``damage(body)`` instead of the body), ``damage-response`` (answer with
            ``damage(body)`` as the response body), ``truncate-response`` (send the
            response head and ``keep`` body bytes, then close the connection).
        status: For ``answer``.
        headers: For ``answer``.
        damage: For the ``damage-*`` kinds: a function of the body (same length kept).
        keep: For ``truncate-response`` and ``cut-request``.
        reset: For ``truncate-response``: end with a RST instead of a plain close.
    """

    kind: str
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    damage: Callable[[bytes], bytes] | None = None
    keep: int = 0
    reset: bool = False


Plan = Callable[[Exchange], Fault | None]


class FaultProxy:
    """The proxy's state: the upstream address, the plan and the log of exchanges."""

    def __init__(self, upstream: str, plan: Plan) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname == "127.0.0.1", "fault tests stay on 127.0.0.1"
        self.upstream = (parts.hostname, parts.port or 80)
        self.plan = plan
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        self.url = ""

    def faults(self, kind: str | None = None) -> list[Exchange]:
        """Exchanges that got a fault (of ``kind``, if given)."""
        with self._lock:
            return [e for e in self.log if e.fault and (kind is None or e.fault.kind == kind)]

    def handle(self, client: socket.socket) -> None:
        """Serve one client connection: one request, then close."""
        head, start = _read_head(client)
        if head is None:
            return
        method, path, headers = head
        with self._lock:
            exchange = Exchange(len(self.log), method, path, headers, b"")
            self.log.append(exchange)
        fault = self.plan(exchange)
        exchange.fault = fault
        kind = fault.kind if fault else None
        length = int(headers.get("content-length", "0"))
        if fault is not None and kind == "cut-request":
            exchange.body = _read_body(client, start, min(fault.keep, length)) or b""
            _reset(client)
            return
        body = _read_body(client, start, length)
        if body is None:
            return
        exchange.body = body
        if kind == "drop-before":
            _reset(client)
            return
        if fault is not None and kind == "answer":
            extra = "".join(f"{k}: {v}\r\n" for k, v in fault.headers.items())
            payload = b'{"detail": "injected by the fault proxy"}'
            client.sendall(
                f"HTTP/1.1 {fault.status} Injected\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\n{extra}connection: close\r\n\r\n".encode()
                + payload
            )
            return
        if fault is not None and kind == "damage-request" and fault.damage is not None:
            body = fault.damage(body)
        response = self._forward(method, path, headers, body)
        response_head, _, response_body = response.partition(b"\r\n\r\n")
        exchange.status = int(response_head.split(b" ", 2)[1])
        if kind == "drop-after":
            _reset(client)
            return
        if fault is not None and kind == "damage-response" and fault.damage is not None:
            response_body = fault.damage(response_body)
        if fault is not None and kind == "truncate-response":
            exchange.returned = len(response_body[: fault.keep])
            client.sendall(response_head + b"\r\n\r\n" + response_body[: fault.keep])
            if fault.reset:
                _reset(client)
            return  # a plain close: the client reads the end of the stream early
        exchange.returned = len(response_body)
        client.sendall(response_head + b"\r\n\r\n" + response_body)

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1"]
        for name, value in headers.items():
            if name not in ("connection", "keep-alive", "content-length"):
                lines.append(f"{name}: {value}")
        lines += [f"content-length: {len(body)}", "connection: close", "", ""]
        with socket.create_connection(self.upstream, timeout=60) as upstream:
            upstream.sendall("\r\n".join(lines).encode("latin1") + body)
            chunks = []
            while chunk := upstream.recv(1 << 20):
                chunks.append(chunk)
        return b"".join(chunks)


def _read_head(client: socket.socket) -> tuple[tuple[str, str, dict[str, str]] | None, bytes]:
    """The request line and headers, and the body bytes that came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(1 << 16)
        if not chunk or len(data) > _MAX_HEAD:
            return None, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", ""), "send sized bodies"
    return (method, path, headers), body


def _read_body(client: socket.socket, start: bytes, length: int) -> bytes | None:
    """``length`` bytes of body (``start`` came with the head); None if the client left."""
    parts = [start[:length]]
    got = len(parts[0])
    while got < length:
        chunk = client.recv(min(1 << 20, length - got))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _reset(client: socket.socket) -> None:
    # SO_LINGER 0: close with a RST, as a crashed peer or a broken network would.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, _Server)
        with contextlib.suppress(OSError):  # the client went away: nothing to forward
            self.server.proxy.handle(self.request)


@contextmanager
def fault_proxy(upstream: str, plan: Plan) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` to ``upstream`` on an ephemeral 127.0.0.1 port."""
    proxy = FaultProxy(upstream, plan)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.proxy = proxy
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def once_per_key(kind: str, every: int = 1, **options: Any) -> Plan:
    """A plan: the first POST of every ``every``-th new Idempotency-Key gets ``kind``."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def plan(exchange: Exchange) -> Fault | None:
        key = exchange.headers.get("idempotency-key")
        if exchange.method != "POST" or key is None:
            return None
        with lock:
            first = key not in seen
            if first:
                seen[key] = len(seen)
            chosen = first and seen[key] % every == 0
        return Fault(kind, **options) if chosen else None

    return plan
