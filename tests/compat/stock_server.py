"""Run the STOCK FMA Django service on 127.0.0.1 for compatibility tests (stdlib only).

The service runs in its own virtualenv (``setup_stock_env.sh`` builds it) as a child process
of the test interpreter, hosted by our small project in ``stock_project/``::

    from stock_server import ensure_stock_env, run_stock_server

    venv = ensure_stock_env(".tox-stock")
    with run_stock_server(venv, tmp_path) as server:
        requests.get(f"{server.url}/api/v1/models/",
                     headers={"Authorization": f"Token {server.admin_token}"})
        server.aggregate(model_id)   # one stock aggregation round, synchronously

By hand: ``python tests/compat/stock_server.py VENV_DIR DATA_DIR`` serves until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SETUP_SCRIPT = HERE / "setup_stock_env.sh"


class StockServerError(RuntimeError):
    """The stock server could not be set up, started or driven; the message has its log."""


@dataclass(frozen=True)
class StockServer:
    """A running stock service.

    Attributes:
        url: base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``.
        admin_token: DRF token of the superuser (``Authorization: Token <key>``).
        admin_user_id: the superuser's id, usable as a model's ``developer``.
        admin_username: the superuser's name (for HTTP Basic or ``/api-token-auth/``).
        admin_password: the superuser's password.
        data_dir: holds ``db.sqlite3``, ``media/`` and ``server.log``.
    """

    url: str
    admin_token: str
    admin_user_id: int
    admin_username: str
    admin_password: str
    data_dir: Path

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr (request log, tracebacks of 500s)."""
        return self.data_dir / "server.log"

    def aggregate(self, model_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Run one stock aggregation round for a model now (test harness extension).

        Returns:
            ``{"aggregate": new id or None, "success": bool, "error": traceback or None}``;
            ``aggregate`` is None when the stock task found nothing to do.

        Raises:
            StockServerError: the trigger endpoint did not answer 200.
        """
        request = urllib.request.Request(
            f"{self.url}/test-only/aggregate/{model_id}/",
            method="POST",
            headers={"Authorization": f"Token {self.admin_token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                result: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise StockServerError(f"aggregate({model_id}) → {exc.code}: {body}") from exc
        return result


def ensure_stock_env(venv_dir: str | os.PathLike[str]) -> Path:
    """Build the stock virtualenv unless it is already complete (instant when it is).

    Raises:
        StockServerError: ``setup_stock_env.sh`` failed; the message holds its output.
    """
    done = subprocess.run(
        ["bash", str(SETUP_SCRIPT), str(venv_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StockServerError(f"{SETUP_SCRIPT} failed:\n{done.stdout}{done.stderr}")
    return Path(venv_dir)


@contextlib.contextmanager
def run_stock_server(
    venv_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    debug: bool = False,
    startup_timeout: float = 60.0,
) -> Iterator[StockServer]:
    """Start the stock service on a free 127.0.0.1 port; stop it on exit.

    Migrates a SQLite database in ``data_dir`` (reused if present, so keep one data dir per
    test session or per test), makes a superuser with a token, waits until the API answers.

    Args:
        venv_dir: a virtualenv made by ``setup_stock_env.sh``.
        data_dir: where the database, uploaded/aggregated files and the log go.
        debug: run with Django's DEBUG on, as the stock project's local settings do (500s
            and 404s become Django's debug pages; a POST missing its slash is a 500).
        startup_timeout: seconds to wait for the server to answer.

    Raises:
        StockServerError: the server exited or did not answer in time.
    """
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    ready_file = data / "ready.json"
    ready_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "DJANGO_SETTINGS_MODULE": "stock_project.settings",
        "FMA_SETTINGS_MODULE": "stock_project.settings",
        "FMA_STOCK_DATA_DIR": str(data),
        "FMA_STOCK_DEBUG": "1" if debug else "0",
    }
    python = Path(venv_dir).resolve() / "bin" / "python"
    with open(data / "server.log", "ab") as log:
        process = subprocess.Popen(
            [str(python), "-m", "stock_project.serve", str(ready_file)],
            cwd=data,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        server = _wait_until_ready(process, ready_file, data, startup_timeout)
        yield server
    finally:
        _stop(process)


def _wait_until_ready(
    process: subprocess.Popen[bytes], ready_file: Path, data: Path, timeout: float
) -> StockServer:
    """Wait for the ready file, then for the API to answer an authenticated GET."""
    deadline = time.monotonic() + timeout
    server: StockServer | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StockServerError(
                f"stock server exited with {process.returncode}:\n{_log_tail(data)}"
            )
        if server is None and ready_file.exists():
            info = json.loads(ready_file.read_text())
            server = StockServer(
                url=f"http://127.0.0.1:{info['port']}",
                admin_token=info["token"],
                admin_user_id=info["user_id"],
                admin_username=info["username"],
                admin_password=info["password"],
                data_dir=data,
            )
        if server is not None and _answers(server):
            return server
        time.sleep(0.05)
    raise StockServerError(f"stock server not ready after {timeout}s:\n{_log_tail(data)}")


def _answers(server: StockServer) -> bool:
    request = urllib.request.Request(
        f"{server.url}/api/v1/models/",
        headers={"Authorization": f"Token {server.admin_token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # URLError and HTTPError are OSErrors
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server closes its socket and exits), SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _log_tail(data: Path, lines: int = 40) -> str:
    log = data / "server.log"
    if not log.exists():
        return "(no server.log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def main(argv: list[str]) -> int:
    """``stock_server.py VENV_DIR DATA_DIR``: build the env if needed, serve until Ctrl-C."""
    if len(argv) != 2:
        print(__doc__)
        return 2
    venv = ensure_stock_env(argv[0])
    with run_stock_server(venv, argv[1]) as server:
        print(
            json.dumps(
                {
                    "url": server.url,
                    "admin_token": server.admin_token,
                    "admin_user_id": server.admin_user_id,
                    "log": str(server.log_path),
                }
            ),
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
