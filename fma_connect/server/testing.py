"""Run the reference server for tests: in a thread, or as a process that can be killed.

::

    with running_server(tmp_path) as (url, token):
        WebClient(model_id, url=url).send_update(weights)

Both bind 127.0.0.1 on an ephemeral port and wait until the server answers. Both take
``database=`` (a ``postgresql://`` URL); several processes on one such database and one
data directory are replicas of one service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn

from .app import create_app
from .protocol import server_config

__all__ = [
    "RoundRobinProxy",
    "RunningServer",
    "ServerProcess",
    "running_server",
    "running_server_process",
    "serving_in_thread",
]

_READY_TIMEOUT = 30.0
_LISTENING = re.compile(r"listening on (https?://\S+)")
#: A line the child's log writes for an error (uvicorn's format) or a traceback.
_ERROR_LINE = re.compile(r"(ERROR|CRITICAL):|Traceback \(most recent call last\)")
log = logging.getLogger("fma_connect.server")


class RunningServer(NamedTuple):
    """Where a test server listens and its admin token."""

    url: str
    admin_token: str


@contextmanager
def running_server(
    data_dir: str | Path, *, tls: ssl.SSLContext | None = None, **options: Any
) -> Iterator[RunningServer]:
    """Serve :func:`~fma_connect.server.create_app` in a thread for the block.

    Args:
        data_dir: The server's data directory.
        tls: Serve HTTPS with this context (:func:`~fma_connect.server.tls.server_context`),
            at ``https://127.0.0.1:PORT`` (so its certificate names that address).
        **options: Passed to :func:`~fma_connect.server.create_app` (``database=``,
            ``auto_aggregate=``, ...).

    Yields:
        ``(url, admin_token)``; the app's :class:`~fma_connect.server.Service` is not
        exposed, so tests see only what a client sees.

    Raises:
        RuntimeError: the server did not start within 30 s.
    """
    app = create_app(data_dir, **options)
    config = server_config(
        app, tls=tls, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    with serving_in_thread(config) as port:
        scheme = "http" if tls is None else "https"
        yield RunningServer(f"{scheme}://127.0.0.1:{port}", app.state.service.admin_token)


@contextmanager
def serving_in_thread(config: uvicorn.Config) -> Iterator[int]:
    """Run a uvicorn server of ``config`` (one port, 0 for an ephemeral one) in a thread
    for the block; yield the port it listens on.

    Raises:
        RuntimeError: the server did not start within 30 s.
    """
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fma-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + _READY_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError("the test server did not start; see the log above")
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(_READY_TIMEOUT)


@dataclass
class ServerProcess:
    """A server running as ``python -m fma_connect serve`` in a child process.

    Attributes:
        url: Where it listens.
        admin_token: Its admin token.
        process: The child process.
        output: The lines it has printed so far (stdout and stderr, the log included).
    """

    url: str
    admin_token: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """Kill the process at once (SIGKILL), as a crash would."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """Stop the process gracefully (SIGTERM), killing it if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running_server_process(
    data_dir: str | Path,
    *,
    admin_token: str | None = None,
    args: tuple[str, ...] = (),
    database: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run ``fma-connect serve`` on an ephemeral port in a child process for the block.

    The child's error lines (and tracebacks) are logged again, as they arrive, to this
    process's ``fma_connect.server`` logger, so a test suite watching that logger for
    server errors sees the child's too.

    Args:
        data_dir: The server's data directory.
        admin_token: The admin token to use (default: a random one).
        args: Extra ``serve`` arguments.
        database: The ``--database`` URL (None: the child's ``FMA_CONNECT_DATABASE``, if
            this process has it set, else SQLite in ``data_dir``).
        env: Environment variables set for the child only (a pause point for one replica).

    Raises:
        RuntimeError: the process exited or did not announce its address within 30 s.
    """
    token = admin_token or secrets.token_hex(20)
    child_env = {
        **os.environ,
        "FMA_CONNECT_ADMIN_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "fma_connect",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        *(("--database", database) if database else ()),
    ]
    process = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
    )
    handle = None
    output: list[str] = []
    try:
        handle = ServerProcess(_wait_for_url(process, output), token, process, output)
        yield handle
    finally:
        if handle is not None:
            handle.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_for_url(process: subprocess.Popen[str], seen: list[str]) -> str:
    assert process.stdout is not None
    result: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if _ERROR_LINE.match(line):
                # Into this process's server log, where a test suite's log check sees it.
                log.error("fma-connect serve (pid %s): %s", process.pid, line.rstrip())
            found = _LISTENING.search(line)
            if found and not result:
                result.append(found.group(1))
        # Keep draining after the address is known, so the child never blocks on a full pipe.

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + _READY_TIMEOUT
    while not result:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fma-connect serve did not start:\n{''.join(seen)}")
        time.sleep(0.02)
    return result[0]


class RoundRobinProxy:
    """A TCP load balancer on 127.0.0.1 for tests: each connection goes to the next of
    ``backends`` (``http://host:port`` URLs) in turn, skipping one that refuses it (a
    killed replica), as an HTTP load balancer's health check would.

    Use as a context manager; :attr:`url` is where clients connect. Bytes are copied as
    they come, by two threads per connection: for tests and benchmarks on loopback, not
    for production.
    """

    def __init__(self, backends: Sequence[str]) -> None:
        self._backends = [_host_port(url) for url in backends]
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._closing = False
        self._open: set[socket.socket] = set()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="fma-test-proxy", daemon=True)

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def send_next_to(self, index: int) -> None:
        """Send the next new connection to backend ``index`` (then on in turn from there):
        for a test that needs one request on a chosen replica behind the proxy."""
        with self._lock:
            self._next = index

    def _connect(self) -> socket.socket | None:
        for _ in range(len(self._backends)):
            with self._lock:
                backend = self._backends[self._next % len(self._backends)]
                self._next += 1
            try:
                return socket.create_connection(backend, timeout=10)
            except OSError:
                continue  # down: the next one
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        pump = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        pump.start()
        _pump(client, upstream)
        pump.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy ``source`` to ``target`` until either ends."""
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)
