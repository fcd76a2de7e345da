"""ClientKey files, and signing on both clients: every attempt (retries included) signed
afresh over what is sent; updates carry one signature whatever the retries; and the
same signed conversation on WebClient and AsyncWebClient gives the same results."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

pytest.importorskip("aiohttp", reason="the asyncio client needs the aio extra (py311 env has it)")

from fma_connect import AsyncWebClient, ClientKey, ConfigurationError, WebClient
from fma_connect.admin import AdminClient
from fma_connect.cli import main
from fma_connect.exceptions import APIError
from fma_connect.server.testing import running_server
from fma_connect.signing import canonical_request, verify

UUID = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"
LATEST = orjson.dumps({"values": [[1.0, 2.0]], "aggregate": 3})


@dataclass
class Seen:
    """A request the recorder got: method, target as sent, headers (lowercase names)."""

    method: str
    target: str
    headers: dict[str, str]


@dataclass
class Recorder:
    """An HTTP server on loopback that answers ``(status, body)`` in turn and keeps what
    it was sent."""

    answers: list[tuple[int, bytes]]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorder.seen.append(Seen(self.command, self.path, headers))
                status, body = recorder.answers.pop(0)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- key files ------------------------------------------------------------------------------


def test_a_key_is_saved_0600_never_overwritten_and_loaded_back(tmp_path: Path) -> None:
    key = ClientKey.generate()
    path = tmp_path / "client.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigurationError, match="never overwritten"):
        ClientKey.generate().save(path)
    loaded = ClientKey.load(path)
    assert (loaded.key_id, loaded.public_key) == (key.key_id, key.public_key)
    assert len(base64.b64decode(key.public_key)) == 32
    assert "PRIVATE" not in repr(key) and key.key_id in repr(key)
    (tmp_path / "junk").write_text("not a key")
    (tmp_path / "junk").chmod(0o600)
    with pytest.raises(ConfigurationError, match="no unencrypted PEM private key"):
        ClientKey.load(tmp_path / "junk")
    # Written whole, then linked to its name: no temporary file is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.key", "junk"]


def test_loading_a_key_others_can_read_warns(tmp_path: Path) -> None:
    path = tmp_path / "client.key"
    ClientKey.generate().save(path)
    path.chmod(0o640)
    with pytest.warns(UserWarning, match=r"open to its group or others \(mode 0640\)"):
        ClientKey.load(path)
    path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ClientKey.load(path)


def test_keys_enrol_takes_the_token_from_stdin_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fma_connect.cli import _parser as build_parser
    from fma_connect.cli_keys import TOKEN_ENV, _enrolment_token

    path = tmp_path / "k.pem"
    ClientKey.generate().save(path)
    argv = ["keys", "enrol", str(path), "--model", "1", "--cacert", str(tmp_path / "ca.pem")]
    args = build_parser().parse_args(argv)
    assert str(args.cacert).endswith("ca.pem") and args.cert is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert _enrolment_token(args) == "from-env"
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert _enrolment_token(build_parser().parse_args([*argv, "--token-stdin"])) == "from-stdin"
    assert _enrolment_token(build_parser().parse_args([*argv, "--token", "opt"])) == "opt"


def test_keys_create_prints_the_public_key_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.pem"
    assert main(["keys", "create", str(path)]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["public_key"] == ClientKey.load(path).public_key
    assert main(["keys", "create", str(path)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_without_cryptography_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    with pytest.raises(ConfigurationError, match=r"fma-connect\[identity\]"):
        ClientKey.generate()


def test_identity_must_be_a_client_key() -> None:
    with pytest.raises(ConfigurationError, match="identity must be a fma_connect.ClientKey"):
        WebClient(1, identity="client.key")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="identity="):
        WebClient(1, url="http://127.0.0.1:9").enrol()


# -- every attempt signed afresh ------------------------------------------------------------


def _checked(key: ClientKey, server: Recorder) -> list[str]:
    """The nonces of the requests ``server`` saw, each signature verified over its own
    method, target, timestamp and nonce."""
    nonces = []
    for seen in server.seen:
        h = seen.headers
        text = canonical_request(
            seen.method, seen.target, int(h["fma-timestamp"]), h["fma-nonce"], UUID, key.key_id
        )
        assert verify(base64.b64decode(key.public_key), text, base64.b64decode(h["fma-signature"]))
        nonces.append(h["fma-nonce"])
    return nonces


@pytest.fixture
def retried() -> Iterator[Recorder]:
    """A service that answers a first request 503 (``Retry-After: 0``), the next 200."""
    server = Recorder([(503, b"{}"), (200, LATEST)])
    yield server
    server.close()


def test_webclient_signs_each_attempt_of_a_retried_get_afresh(retried: Recorder) -> None:
    key, server = ClientKey.generate(), retried
    with WebClient(7, UUID, server.url, identity=key) as client:
        client._transport.backoff_factor = 0
        assert client.check_for_latest_model(update_after=-5) is not None
    nonces = _checked(key, server)
    assert len(nonces) == 2 and len(set(nonces)) == 2
    assert server.seen[0].target.endswith("/get_latest_model/")


def test_asyncwebclient_signs_each_attempt_of_a_retried_get_afresh(retried: Recorder) -> None:
    key, server = ClientKey.generate(), retried

    async def call() -> Any:
        async with AsyncWebClient(7, UUID, server.url, identity=key) as client:
            client._transport.backoff_factor = 0
            return await client.check_for_latest_model(update_after=-5)

    assert asyncio.run(call()) is not None
    nonces = _checked(key, server)
    assert len(nonces) == 2 and len(set(nonces)) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_resent_update_keeps_its_update_signature_and_signs_the_request_afresh(
    kind: str,
) -> None:
    stored = orjson.dumps({"id": 1, "federated_model": 7})
    server = Recorder([(503, b"{}"), (201, stored)])
    key = ClientKey.generate()
    options: dict[str, Any] = {"identity": key, "retry_updates": True, "codec": "msgpack"}
    try:
        if kind == "sync":
            with WebClient(7, UUID, server.url, **options) as client:
                client._transport.backoff_factor = 0
                client._protocol.accepted = set()  # skip OPTIONS: the script answers updates
                client.send_update([np.ones(3)])
        else:

            async def call() -> None:
                async with AsyncWebClient(7, UUID, server.url, **options) as client:
                    client._transport.backoff_factor = 0
                    client._protocol.accepted = set()
                    await client.send_update([np.ones(3)])

            asyncio.run(call())
    finally:
        server.close()
    first, second = server.seen
    assert first.headers["fma-update-signature"] == second.headers["fma-update-signature"]
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.target == second.target and "federated_model=7" in first.target
    assert len(set(_checked(key, server))) == 2


# -- the same signed conversation, both clients ----------------------------------------------


def _conversation(data_dir: Path, asynchronous: bool) -> list[Any]:
    """Enrol two clients on a token model, one round, rotate a key, a refused enrolment."""
    with running_server(data_dir) as (url, token):
        admin = AdminClient(url, token, retries=0)
        model = admin.create_model(
            "signed", enrolment="token", requirement="require_x_updates", requirement_args=[2]
        )["id"]
        tokens = [admin.enrolment_token(model)["token"] for _ in range(2)]
        keys = [ClientKey.generate() for _ in range(3)]
        script: list[tuple[int, str, tuple[Any, ...]]] = [
            (0, "enrol", (tokens[0],)),
            (1, "enrol", (tokens[1],)),
            (0, "send_update", ([np.full(3, 1.0)],)),
            (1, "send_update", ([np.full(3, 3.0)],)),
            (0, "check_for_new_model_aggregate", ()),
            (1, "rotate_key", (keys[2],)),
            (1, "check_for_latest_model", (0,)),
            (0, "enrol", (tokens[0],)),  # refused: a token enrols once
        ]
        results: list[Any] = []
        if asynchronous:

            async def run() -> None:
                clients = [AsyncWebClient(model, url=url, identity=k, retries=0) for k in keys[:2]]
                for who, name, args in script:
                    try:
                        results.append(await getattr(clients[who], name)(*args))
                    except APIError as exc:
                        results.append(("error", exc.status_code, str(exc.detail)))
                for client in clients:
                    await client.aclose()

            asyncio.run(run())
        else:
            clients = [WebClient(model, url=url, identity=k, retries=0) for k in keys[:2]]
            for who, name, args in script:
                try:
                    results.append(getattr(clients[who], name)(*args))
                except APIError as exc:
                    results.append(("error", exc.status_code, str(exc.detail)))
        report = admin.verify(model)
        assert report["ok"] and report["signed"] == 2, report
        return [_plain(r, keys) for r in results]


def _plain(value: Any, keys: list[ClientKey]) -> Any:
    """A result with what differs between runs (uuids, key ids, times) taken out."""
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.tobytes())
    if isinstance(value, dict):
        return {k: _plain(v, keys) for k, v in value.items() if k not in ("created_on", "client")}
    if isinstance(value, list | tuple):
        return [_plain(v, keys) for v in value]
    if isinstance(value, str):
        for i, key in enumerate(keys):
            value = value.replace(key.key_id, f"key{i}")
        value = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "TIME", value)
        return "uuid" if len(value) == 36 and value.count("-") == 4 else value
    return value


def test_signed_calls_give_the_same_results_on_both_clients(tmp_path: Path) -> None:
    synchronous = _conversation(tmp_path / "sync", asynchronous=False)
    asynchronous = _conversation(tmp_path / "async", asynchronous=True)
    assert synchronous == asynchronous
    assert synchronous[-1][:2] == ["error", 403] and "used already" in synchronous[-1][2]
    assert synchronous[5] == "key2"
