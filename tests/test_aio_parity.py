"""One conversation, two clients: WebClient and AsyncWebClient give the same results.

The same script of calls runs once with each client, each against a fresh reference
server (so ids match), and every result is compared: values (dtype, shape, bits), ids,
fields, and the errors raised (type, status, message).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the asyncio client needs the aio extra (py311 env has it)")

from fma_connect import AsyncWebClient, WebClient
from fma_connect.admin import AdminClient
from fma_connect.exceptions import APIError, FMAConnectError
from fma_connect.resumable import MIN_CHUNK
from fma_connect.server.testing import running_server

STRANGER = "3f2b6c1e-8d4a-4f0b-9c1d-2e5a7b9c0d1f"
#: The initial model, in plain lists: the shapes of ``_weights`` (flattened in key order).
INITIAL = [np.ones(100).tolist(), np.zeros((200, 100)).tolist()]


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # 80 kB: more than MIN_CHUNK, so the "big" client sends it as a resumable upload.
        "w": rng.standard_normal((200, 100)).astype(np.float32),
        "b": rng.standard_normal(100).astype(np.float64),
    }


#: (client, method, args, kwargs); "into" in kwargs is replaced by fresh zero arrays.
SCRIPT: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
    ("a", "register", (), {}),
    ("b", "register", (), {}),
    ("a", "check_for_latest_model", (), {}),
    ("a", "check_for_latest_model", (), {}),  # seen: None
    ("a", "get_current_artifact", (), {}),
    ("a", "check_for_new_model_aggregate", (), {}),
    ("a", "send_update", (_weights(1),), {}),
    ("b", "send_update", (_weights(2),), {"num_examples": 4}),
    ("a", "wait_for_new_model", (30,), {}),
    ("b", "check_for_new_model_aggregate", (), {}),
    ("b", "check_for_new_model_aggregate", (), {}),
    ("b", "check_for_latest_model", (0,), {"into": "arrays"}),
    (
        "a",
        "check_for_latest_model",
        (0,),
        {"like": {"w": np.zeros((200, 100), np.float16), "b": np.zeros(100)}},
    ),
    ("b", "send_val_results", ({"accuracy": 0.75},), {"aggregate_id": 1}),
    ("b", "send_val_results", ({"accuracy": 0.75},), {"aggregate_id": 1}),  # 400
    ("b", "send_val_results", ({"accuracy": float("nan")}, 1), {}),  # EncodeError
    ("a", "check_for_latest_model", (), {"like": [1], "into": "arrays"}),  # both
    ("a", "check_for_new_model_aggregate", ("one",), {}),  # ConfigurationError
    ("a", "wait_for_new_model", (0.1,), {}),  # nothing newer: None
    ("big", "send_update", (_weights(9),), {}),  # resumable upload
    ("a", "send_update", (_weights(8),), {}),
    ("a", "wait_for_new_model", (30,), {}),
    ("stranger", "check_for_latest_model", (), {}),  # 401 with the identity hint
    ("missing", "register", (), {}),  # 404 with its hint
    ("offline", "register", (), {}),  # nothing listens: ConnectError, worded alike
]


def _options(url: str, model: int) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    return {
        "a": ((model,), {"url": url, "codec": "msgpack", "retries": 0}),
        "b": ((model,), {"url": url, "retries": 0}),
        "big": (
            (model,),
            {
                "url": url,
                "codec": "msgpack",
                "resumable_from": MIN_CHUNK,
                "upload_chunk_size": MIN_CHUNK,
            },
        ),
        "stranger": ((model, STRANGER), {"url": url, "retries": 0}),
        "missing": ((model + 100,), {"url": url, "retries": 0}),
        "offline": ((model,), {"url": "http://127.0.0.1:9", "retries": 0}),
    }


def _model(url: str, token: str) -> int:
    with AdminClient(url, token, retries=0) as admin:
        created = admin.create_model(
            "parity",
            requirement="require_x_updates",
            requirement_args=[2],
            initial_model=INITIAL,
        )
    return int(created["id"])


def _normal(value: Any, url: str, uuids: dict[str, str]) -> Any:
    """A result with what differs between runs replaced: the URL, UUIDs, timestamps."""
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, dict):
        return {k: _normal(v, url, uuids) for k, v in value.items() if k not in ("created_on",)}
    if isinstance(value, list | tuple):
        return [_normal(v, url, uuids) for v in value]
    if isinstance(value, str):
        text = value.replace(url, "URL")
        for role, uuid in uuids.items():
            text = text.replace(uuid, role).replace(uuid[:8], role)
        return re.sub(r"127\.0\.0\.1:\d+", "HOST", text)
    return value


def _outcome(result: Any, error: BaseException | None) -> Any:
    if error is None:
        return ("ok", result)
    assert isinstance(error, FMAConnectError), error
    status = error.status_code if isinstance(error, APIError) else None
    return ("error", type(error).__name__, status, str(error))


def _arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if kwargs.get("into") == "arrays":
        kwargs = {**kwargs, "into": {n: np.zeros_like(a) for n, a in _weights(1).items()}}
    return args, kwargs


def _sync_transcript(data_dir: Path) -> list[Any]:
    with running_server(data_dir) as (url, token):
        options = _options(url, _model(url, token))
        clients = {role: WebClient(*a, **k) for role, (a, k) in options.items()}
        transcript = []
        for role, method, args, kwargs in SCRIPT:
            call_args, call_kwargs = _arguments(args, kwargs)
            result, error = None, None
            try:
                result = getattr(clients[role], method)(*call_args, **call_kwargs)
            except FMAConnectError as exc:
                error = exc
            uuids = {r: c._protocol.uuid for r, c in clients.items() if c._protocol.uuid}
            transcript.append(_normal(_outcome(result, error), url, uuids))
        for client in clients.values():
            client.close()
        return transcript


def _async_transcript(data_dir: Path) -> list[Any]:
    with running_server(data_dir) as (url, token):
        options = _options(url, _model(url, token))

        async def conversation() -> list[Any]:
            clients = {role: AsyncWebClient(*a, **k) for role, (a, k) in options.items()}
            transcript = []
            for role, method, args, kwargs in SCRIPT:
                call_args, call_kwargs = _arguments(args, kwargs)
                result, error = None, None
                try:
                    result = await getattr(clients[role], method)(*call_args, **call_kwargs)
                except FMAConnectError as exc:
                    error = exc
                uuids = {r: c._protocol.uuid for r, c in clients.items() if c._protocol.uuid}
                transcript.append(_normal(_outcome(result, error), url, uuids))
            for client in clients.values():
                await client.aclose()
            return transcript

        return asyncio.run(conversation())


def test_both_clients_give_the_same_results_for_the_same_conversation(tmp_path: Path) -> None:
    sync = _sync_transcript(tmp_path / "sync")
    asynchronous = _async_transcript(tmp_path / "async")
    assert len(sync) == len(asynchronous) == len(SCRIPT)
    for step, (expected, got) in enumerate(zip(sync, asynchronous, strict=True)):
        assert got == expected, f"step {step} {SCRIPT[step][:2]} differs"
    # The conversation exercised what it claims: values, Nones, and each kind of error.
    kinds = {outcome[1] for outcome in sync if outcome[0] == "error"}
    assert kinds == {"APIError", "EncodeError", "ConfigurationError", "ConnectError"}
    assert sum(1 for outcome in sync if outcome == ["ok", None]) >= 4
    for step in (8, 21):  # both rounds ran, and their aggregates arrived
        aggregate = sync[step][1]
        assert aggregate["id"] == (1 if step == 8 else 2)
        assert set(aggregate["result"]) == {"w", "b"}
