"""A TCP relay on 127.0.0.1 that counts every byte crossing it, in each direction.

::

    with running_server(data_dir) as server, counting_proxy(server.url) as proxy:
        client = WebClient(model_id, url=proxy.url)
        before = proxy.counts()
        client.send_update(weights)
        sent = proxy.counts() - before  # sent.up: the request, head and body; sent.down: the answer

Clients connect to the proxy as if it were the server. Each connection is relayed byte
for byte to a connection of its own to the upstream server (kept alive as long as the
client keeps it), so what is counted is exactly what the client's HTTP stack wrote and
read: request and status lines, headers, bodies, chunk framing. TCP/IP headers, the
handshake and retransmissions are below it and not counted.

A byte is counted before it is passed on. A client holds an answer only after the
proxy relayed it, and the server answers only after it read the request, so once a call
returns every byte of its exchange is in the counts: snapshots taken between calls
attribute bytes to them exactly.

Unlike ``tests/reliability/fault_proxy.py``, which parses each HTTP exchange to break
it on purpose (one request per connection), this relay knows nothing of HTTP. It can
break connections too, at byte offsets: :meth:`CountingProxy.cut_at` resets the
connection that carries a chosen byte, as a dropped link would, wherever in a request
or answer that byte falls.
"""

from __future__ import annotations

import bisect
import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ByteCounts", "CountingProxy", "counting_proxy"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ByteCounts:
    """Bytes relayed so far, or between two snapshots (``later - earlier``).

    Attributes:
        up: Client to server (requests).
        down: Server to client (answers).
    """

    up: int = 0
    down: int = 0

    def __sub__(self, other: ByteCounts) -> ByteCounts:
        return ByteCounts(self.up - other.up, self.down - other.down)

    def __add__(self, other: ByteCounts) -> ByteCounts:
        return ByteCounts(self.up + other.up, self.down + other.down)


class CountingProxy:
    """The relay's state: where it listens, the upstream address, and the counts."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.url = ""  # set once the relay listens
        self.connections = 0
        self._up = 0
        self._down = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closing = False
        #: Totals of bytes (up, down) at which the carrying connection is reset.
        self._cuts: tuple[list[int], list[int]] = ([], [])
        self.cuts_made = 0

    def cut_at(self, *, up: Sequence[int] = (), down: Sequence[int] = ()) -> None:
        """Reset the connection relaying each of these byte totals, in each direction.

        Args:
            up: Totals of client-to-server bytes (as :meth:`counts` counts them).
            down: Totals of server-to-client bytes.
        """
        with self._lock:
            for cuts, more in zip(self._cuts, (up, down), strict=True):
                cuts.extend(more)
                cuts.sort()

    def counts(self) -> ByteCounts:
        """The bytes relayed so far, in each direction."""
        with self._lock:
            return ByteCounts(self._up, self._down)

    def relay(self, client: socket.socket) -> None:
        """Relay one client connection until both sides have finished sending."""
        upstream = socket.create_connection(self.upstream)
        # Small requests (a poll) must not wait for Nagle's delayed ACK, as on a direct link.
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self._open.update((client, upstream))
            closing = self._closing
        if closing:  # accepted as the relay shut down: cut it as close_connections would
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        down = threading.Thread(
            target=self._pump, args=(upstream, client, False), name="counting-proxy-down"
        )
        down.start()
        try:
            self._pump(client, upstream, True)
        finally:
            down.join()
            with self._lock:
                self._open.difference_update((client, upstream))
            upstream.close()

    def close_connections(self) -> None:
        """Cut every relayed connection, so their threads end."""
        with self._lock:
            self._closing = True
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, source: socket.socket, target: socket.socket, up: bool) -> None:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        with contextlib.suppress(OSError):  # either side went away: the relay just ends
            while received := source.recv_into(buffer):
                with self._lock:
                    before = self._up if up else self._down
                    cuts = self._cuts[0 if up else 1]
                    # A cut inside these bytes: pass on those before it, then reset.
                    cut = bisect.bisect_right(cuts, before)
                    if cut < len(cuts) and cuts[cut] < before + received:
                        received = cuts.pop(cut) - before
                        self.cuts_made += 1
                        cut_here = True
                    else:
                        cut_here = False
                    if up:
                        self._up += received
                    else:
                        self._down += received
                target.sendall(view[:received])
                if cut_here:
                    for sock in (source, target):
                        _reset(sock)
                    return
        # Pass the end of the stream on, so the other side sees the close it would see.
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), as a broken link looks to both ends."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    proxy: CountingProxy


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, _Server)
        with contextlib.suppress(OSError):  # the upstream refused: the client sees a close
            self.server.proxy.relay(self.request)


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """Run a :class:`CountingProxy` to ``upstream`` on an ephemeral 127.0.0.1 port.

    Args:
        upstream: The server's base URL (``http://host:port``).
    """
    proxy = CountingProxy(upstream)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.proxy = proxy
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="counting-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        proxy.close_connections()
        server.server_close()  # joins the connections' threads, which the cut has ended
        thread.join(10)
