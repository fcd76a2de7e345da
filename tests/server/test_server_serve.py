"""``fma-connect serve`` and ``admin-token``: the token is never lost, one server per data dir."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fma_connect.server.testing import running_server_process

_TIMEOUT = 30


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FMA_CONNECT_ADMIN_TOKEN", None)
    return env


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fma_connect", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=_TIMEOUT,
        check=False,
    )


@contextmanager
def _serving(data_dir: Path) -> Iterator[list[str]]:
    """Run ``serve --port 0`` until it listens; yield the lines it printed so far."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fma_connect", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line:
                listening.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(_TIMEOUT), "".join(lines)
        yield lines
    finally:
        process.terminate()
        process.wait(_TIMEOUT)
        reader.join(_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def test_a_busy_port_stores_no_token_and_admin_token_prints_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        failed = _cli("serve", "--port", port, "--data-dir", str(data))
    assert failed.returncode != 0
    assert "cannot listen" in failed.stderr
    assert "Traceback" not in failed.stderr
    missing = _cli("admin-token", "--data-dir", str(data))
    assert missing.returncode != 0
    assert "no admin token" in missing.stderr

    with _serving(data) as lines:
        shown = [m.group(1) for m in map(re.compile(r"admin token.*: (\w+)$").search, lines) if m]
    assert len(shown) == 1, lines  # created by this start, so it was printed
    stored = _cli("admin-token", "--data-dir", str(data))
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.strip() == shown[0]


def test_a_second_server_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server_process(data):
        second = _cli("serve", "--port", "0", "--data-dir", str(data))
        assert second.returncode != 0
        assert "in use" in second.stderr
        assert "Traceback" not in second.stderr
    # Once the first one has stopped, the directory is free again.
    with _serving(data) as lines:
        assert any("listening on" in line for line in lines)


def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    result = _cli("serve", "--port", "0", "--data-dir", str(file))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(file) in result.stderr
    assert "not a directory" in result.stderr
    token = _cli("admin-token", "--data-dir", str(file))
    assert token.returncode != 0
    assert "Traceback" not in token.stderr


def test_connections_to_the_served_socket_have_nagle_off() -> None:
    # Without TCP_NODELAY each request on a kept-alive connection waits ~40 ms for a
    # delayed ACK; asyncio sets it only on connections accepted from an IPPROTO_TCP socket.
    import asyncio

    from fma_connect.server.serve import bind

    async def accept_one(listener: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[asyncio.BaseTransport] = loop.create_future()

        class Capture(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        server = await loop.create_server(Capture, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        transport = await asyncio.wait_for(accepted, _TIMEOUT)
        nodelay: int = transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        writer.close()
        transport.close()
        server.close()
        await server.wait_closed()
        return nodelay

    listener = bind("127.0.0.1", 0)
    listener.listen()
    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(accept_one(listener)) != 0
