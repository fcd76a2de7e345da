"""AsyncWebClient against the reference server: every call, codecs, restore, into=, uploads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the asyncio client needs the aio extra (py311 env has it)")

import fma_connect
from fma_connect import AsyncWebClient, TokenAuth
from fma_connect.admin import AdminClient
from fma_connect.exceptions import APIError, ConfigurationError, ConnectError, EncodeError
from fma_connect.resumable import MIN_CHUNK
from fma_connect.server.testing import RunningServer

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense.w": rng.standard_normal((40, 30)).astype(np.float32),
        "dense.b": rng.standard_normal(30).astype(np.float64),
        "steps": np.array(seed, np.int64),
    }


@pytest.fixture
def model(admin: AdminClient) -> int:
    created = admin.create_model("aio", requirement="require_x_updates", requirement_args=[2])
    return int(created["id"])


def test_the_package_exports_it_lazily() -> None:
    assert "AsyncWebClient" in fma_connect.__all__
    from fma_connect.aio import AsyncWebClient as direct

    assert fma_connect.AsyncWebClient is direct


def test_the_package_imports_without_aiohttp_and_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "import fma_connect\n"
        "try:\n    fma_connect.AsyncWebClient\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'fma-connect[aio]'" in done.stdout


def test_a_round_through_every_call(server: RunningServer, model: int) -> None:
    async def conversation() -> None:
        async with (
            AsyncWebClient(model, url=server.url, codec="msgpack") as first,
            AsyncWebClient(model, url=server.url, codec="msgpack") as second,
        ):
            with pytest.raises(ConfigurationError, match="await client.register"):
                _ = first.uuid
            registered = await first.register()
            assert first.uuid == registered and uuid.UUID(registered)
            assert await first.check_for_new_model_aggregate() is None
            assert await first.get_current_artifact() is None  # no initial model

            stored = await first.send_update(_weights(1))
            assert stored["client"] == registered and stored["codec"] == "msgpack"
            # The second client registers on first use, as WebClient does.
            await second.send_update(_weights(2), num_examples=10)
            assert uuid.UUID(second.uuid)

            aggregate = await first.wait_for_new_model(30)
            assert aggregate is not None and isinstance(aggregate["id"], int)
            expected = {
                name: (_weights(1)[name] + _weights(2)[name]) / 2 for name in ("dense.w", "dense.b")
            }
            result = aggregate["result"]
            assert set(result) == set(_weights(1))  # restored by name into the update's dict
            for name, array in expected.items():
                np.testing.assert_allclose(result[name], array, rtol=1e-6)
                assert result[name].dtype == _weights(1)[name].dtype
            # Seen: not handed over again, unless asked from an earlier id.
            assert await first.check_for_new_model_aggregate() is None
            again = await first.check_for_new_model_aggregate(update_after=0)
            assert again is not None and again["id"] == aggregate["id"]

            latest = await second.check_for_latest_model()
            assert latest is not None and latest["aggregate"] == aggregate["id"]
            assert await second.check_for_latest_model() is None
            score = await second.send_val_results({"accuracy": 0.5}, aggregate["id"])
            assert score["aggregate"] == aggregate["id"] and score["client"] == second.uuid
            with pytest.raises(APIError) as refused:  # a second score for it
                await second.send_val_results({"accuracy": 0.5}, aggregate["id"])
            assert refused.value.status_code == 400

    run(conversation())


def test_published_artifact_and_wait_timeout(
    server: RunningServer, admin: AdminClient, model: int
) -> None:
    async def conversation() -> None:
        async with (
            AsyncWebClient(model, url=server.url) as first,
            AsyncWebClient(model, url=server.url) as second,
        ):
            assert await first.wait_for_new_model(0.2) is None  # nothing yet: times out
            await first.send_update([np.ones(3)])
            await second.send_update([np.zeros(3)])
            aggregate = await first.wait_for_new_model(30)
            assert aggregate is not None
            np.testing.assert_allclose(aggregate["result"][0], [0.5, 0.5, 0.5])
            admin.publish(aggregate["id"], "1.0.0")
            artifact = await first.get_current_artifact(like=[np.zeros(3, np.float32)])
            assert artifact is not None and artifact["version"] == "1.0.0"
            assert artifact["values"][0].dtype == np.float32
            np.testing.assert_allclose(artifact["values"][0], [0.5, 0.5, 0.5])

    run(conversation())


def test_into_arrays_and_progress(server: RunningServer, model: int) -> None:
    seen: list[tuple[int, int | None]] = []

    async def conversation() -> None:
        async with (
            AsyncWebClient(
                model,
                url=server.url,
                codec="msgpack",
                progress=lambda done, total: seen.append((done, total)),
            ) as first,
            AsyncWebClient(model, url=server.url, codec="msgpack") as second,
        ):
            await first.send_update(_weights(1))
            await second.send_update(_weights(1))
            arrays = {name: np.zeros_like(array) for name, array in _weights(1).items()}
            address = arrays["dense.w"].ctypes.data
            seen.clear()
            latest = await first.check_for_latest_model(into=arrays)
            assert latest is not None and latest["values"] is arrays
            assert arrays["dense.w"].ctypes.data == address  # the same memory, filled
            for name, array in _weights(1).items():
                np.testing.assert_array_equal(arrays[name], array)
            assert seen and seen[-1][0] == seen[-1][1]  # the download, to its end
            with pytest.raises(ConfigurationError, match="not both"):
                await first.check_for_latest_model(like=arrays, into=arrays)

    run(conversation())


def test_a_large_update_goes_as_a_resumable_upload(server: RunningServer, model: int) -> None:
    big = {"w": np.random.default_rng(0).standard_normal(300_000).astype(np.float32)}
    seen: list[int] = []

    async def conversation() -> None:
        async with (
            AsyncWebClient(
                model,
                url=server.url,
                codec="msgpack",
                resumable_from=MIN_CHUNK,
                upload_chunk_size=MIN_CHUNK,
                progress=lambda done, _: seen.append(done),
            ) as first,
            AsyncWebClient(model, url=server.url, codec="msgpack") as second,
        ):
            stored = await first.send_update(big)
            assert stored["codec"] == "msgpack"
            assert first._protocol.uploads_path is not None  # the server offered uploads
            assert seen == sorted(seen) and seen[-1] >= big["w"].nbytes
            await second.send_update(big)
            aggregate = await second.wait_for_new_model(30)
            assert aggregate is not None
            np.testing.assert_array_equal(aggregate["result"]["w"], big["w"])

    run(conversation())


def test_a_delta_codec_sends_against_the_aggregate_it_holds(
    server: RunningServer, model: int
) -> None:
    async def conversation() -> None:
        async with (
            AsyncWebClient(model, url=server.url, codec="delta") as first,
            AsyncWebClient(model, url=server.url, codec="delta") as second,
        ):
            await first.send_update(_weights(1))
            await second.send_update(_weights(3))
            aggregate = await first.wait_for_new_model(30)
            assert aggregate is not None
            held = first._protocol.held
            assert held is not None and held[0] == aggregate["id"]
            nudged = {k: v + 1 for k, v in aggregate["result"].items()}
            stored = await first.send_update(nudged, base_aggregate=aggregate["id"])
            assert stored["base_aggregate"] == aggregate["id"]
            # The other one fetches the base it has not received before encoding.
            await second.send_update(nudged, base_aggregate=aggregate["id"])
            newest = await second.wait_for_new_model(30, update_after=aggregate["id"])
            assert newest is not None
            np.testing.assert_allclose(newest["result"]["dense.w"], nudged["dense.w"])
            with pytest.raises(EncodeError, match="base_aggregate 999"):
                await first.send_update(nudged, base_aggregate=999)

    run(conversation())


def test_refusals_carry_the_sync_clients_hints(server: RunningServer, model: int) -> None:
    async def conversation() -> None:
        stranger = str(uuid.uuid4())
        async with AsyncWebClient(model, stranger, url=server.url, retries=0) as client:
            with pytest.raises(APIError, match="does not know client") as unknown:
                await client.check_for_latest_model()
            assert unknown.value.status_code == 401
        async with AsyncWebClient(10_000, url=server.url, retries=0) as client:
            with pytest.raises(APIError, match="check the url and the model id") as missing:
                await client.register()
            assert missing.value.status_code == 404

    run(conversation())


def test_options_are_checked_as_the_sync_clients_are() -> None:
    with pytest.raises(ConfigurationError, match="without /api/v1"):
        AsyncWebClient(1, url="http://127.0.0.1:1/api/v1")
    with pytest.raises(ConfigurationError, match="uuid must be a UUID"):
        AsyncWebClient(1, "nope", url="http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="aiohttp.ClientSession"):
        AsyncWebClient(1, url="http://127.0.0.1:1", session=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="auth must be") as secret:
        AsyncWebClient(1, url="http://127.0.0.1:1", auth="s3cret")
    assert "s3cret" not in str(secret.value)
    with pytest.raises(ConfigurationError, match="timeout must be"):
        AsyncWebClient(1, url="http://127.0.0.1:1", timeout=-1)
    client = AsyncWebClient(1, url="http://127.0.0.1:1", auth=TokenAuth("t"))
    assert "unregistered" in repr(client)


def test_an_unreachable_service_is_a_connect_error() -> None:
    async def conversation() -> None:
        async with AsyncWebClient(1, url="http://127.0.0.1:9", retries=1) as client:
            with pytest.raises(ConnectError, match="cannot reach the service"):
                await client.register()

    run(conversation())


def test_clients_share_a_session_they_do_not_close(server: RunningServer, model: int) -> None:
    import aiohttp

    async def conversation() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with AsyncWebClient(model, url=server.url, session=session) as client:
                    await client.register()
            assert not session.closed

    run(conversation())
