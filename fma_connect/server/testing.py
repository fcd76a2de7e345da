"""Run the reference server for tests: in a thread, or as a process that can be killed.

::

    with running_server(tmp_path) as (url, token):
        WebClient(model_id, url=url).send_update(weights)

Both bind 127.0.0.1 on an ephemeral port and wait until the server answers.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn

from .app import create_app
from .protocol import server_config

__all__ = ["RunningServer", "ServerProcess", "running_server", "running_server_process"]

_READY_TIMEOUT = 30.0
_LISTENING = re.compile(r"listening on (http://\S+)")
#: A line the child's log writes for an error (uvicorn's format) or a traceback.
_ERROR_LINE = re.compile(r"(ERROR|CRITICAL):|Traceback \(most recent call last\)")
log = logging.getLogger("fma_connect.server")


class RunningServer(NamedTuple):
    """Where a test server listens and its admin token."""

    url: str
    admin_token: str


@contextmanager
def running_server(data_dir: str | Path, **options: Any) -> Iterator[RunningServer]:
    """Serve :func:`~fma_connect.server.create_app` in a thread for the block.

    Args:
        data_dir: The server's data directory.
        **options: Passed to :func:`~fma_connect.server.create_app`.

    Yields:
        ``(url, admin_token)``; the app's :class:`~fma_connect.server.Service` is not
        exposed, so tests see only what a client sees.

    Raises:
        RuntimeError: the server did not start within 30 s.
    """
    app = create_app(data_dir, **options)
    config = server_config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
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
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", app.state.service.admin_token)
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
    data_dir: str | Path, *, admin_token: str | None = None, args: tuple[str, ...] = ()
) -> Iterator[ServerProcess]:
    """Run ``fma-connect serve`` on an ephemeral port in a child process for the block.

    The child's error lines (and tracebacks) are logged again, as they arrive, to this
    process's ``fma_connect.server`` logger, so a test suite watching that logger for
    server errors sees the child's too.

    Args:
        data_dir: The server's data directory.
        admin_token: The admin token to use (default: a random one).
        args: Extra ``serve`` arguments.

    Raises:
        RuntimeError: the process exited or did not announce its address within 30 s.
    """
    token = admin_token or secrets.token_hex(20)
    env = {**os.environ, "FMA_CONNECT_ADMIN_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "fma_connect",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
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
