"""Weights received into the caller's own arrays (``into=``), through the reference server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fma_connect._downloads as downloads
import fma_connect._into as into_module
import fma_connect._transport as transport
from fma_connect import WebClient
from fma_connect.admin import AdminClient
from fma_connect.exceptions import ConfigurationError, DecodeError, FrameworkError
from fma_connect.server.testing import RunningServer


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense.w": rng.standard_normal((300, 70)).astype(np.float32),
        "dense.b": rng.standard_normal(70).astype(np.float64),
        "steps": np.array(seed, np.int64),
        "empty": np.zeros((0, 3), np.float16),
        "odd": rng.integers(0, 255, 13).astype(np.uint8),  # not a multiple of the alignment
    }


def _zeros_like(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.zeros_like(array) for name, array in weights.items()}


@pytest.fixture
def model(server: RunningServer, admin: AdminClient) -> int:
    created = admin.create_model("into", requirement="require_x_updates", requirement_args=[1])
    return int(created["id"])


def _client(server: RunningServer, model: int, codec: str = "msgpack") -> WebClient:
    client = WebClient(model, url=server.url, codec=codec)
    client.register()
    return client


class _Spy:
    """Counts the bodies written straight into ``into=`` arrays, and the copies made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.placed = 0
        self.copies = 0
        real_placed, real_copyto = into_module.Into.placed, np.copyto

        def placed(into: into_module.Into) -> Any:
            self.placed += 1
            return real_placed(into)

        def copyto(*args: Any, **kwargs: Any) -> None:
            self.copies += 1
            real_copyto(*args, **kwargs)

        monkeypatch.setattr(into_module.Into, "placed", placed)
        monkeypatch.setattr(np, "copyto", copyto)


def test_the_latest_model_is_read_into_the_arrays_given(
    server: RunningServer, model: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(server, model)
    sent = _weights(1)
    client.send_update(sent)
    expected = client.check_for_latest_model(update_after=-2)
    assert expected is not None
    spy = _Spy(monkeypatch)
    arrays = _zeros_like(sent)
    addresses = {name: array.ctypes.data for name, array in arrays.items()}

    latest = client.check_for_latest_model(update_after=-2, into=arrays)

    assert latest is not None and latest["values"] is arrays
    assert spy.placed == 1 and spy.copies == 0  # from the socket into the arrays, no copy
    for name, array in arrays.items():
        assert array.ctypes.data == addresses[name]  # the same memory, overwritten
        assert array.dtype == sent[name].dtype and array.shape == sent[name].shape
        np.testing.assert_array_equal(array, expected["values"][name])
        np.testing.assert_array_equal(array, sent[name])


def test_every_call_that_receives_weights_takes_into(
    server: RunningServer, model: int, admin: AdminClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(server, model)
    sent = _weights(2)
    client.send_update(sent)
    spy = _Spy(monkeypatch)

    new = client.check_for_new_model_aggregate(update_after=-1, into=_zeros_like(sent))
    waited = client.wait_for_new_model(5.0, update_after=-1, into=_zeros_like(sent))
    assert new is not None
    admin.publish(new["id"], version="1")
    artifact = client.get_current_artifact(into=_zeros_like(sent))

    for answer, field in ((new, "result"), (waited, "result"), (artifact, "values")):
        assert answer is not None
        for name, array in answer[field].items():
            np.testing.assert_array_equal(array, sent[name])
    assert spy.placed == 3


def test_answers_that_cannot_be_placed_are_decoded_and_copied_in(
    server: RunningServer, model: int
) -> None:
    json_client = _client(server, model, codec="json")
    sent = [np.arange(12, dtype=np.float64).reshape(3, 4), np.ones(5, np.float64)]
    json_client.send_update(sent)
    arrays = [np.zeros((3, 4)), np.zeros(5)]
    latest = json_client.check_for_latest_model(update_after=-2, into=arrays)
    assert latest is not None and latest["values"] is arrays
    np.testing.assert_array_equal(arrays[0], sent[0])
    np.testing.assert_array_equal(arrays[1], sent[1])

    # msgpack answer, arrays of other dtypes (cast as like= casts) or not contiguous
    msgpack_client = WebClient(model, uuid=json_client.uuid, url=server.url, codec="msgpack")
    strided = np.zeros((3, 8))[:, ::2]
    other = [strided, np.zeros(5, np.float32)]
    msgpack_client.check_for_latest_model(update_after=-2, into=other)
    np.testing.assert_array_equal(strided, sent[0])
    np.testing.assert_array_equal(other[1], sent[1].astype(np.float32))


def test_weights_of_other_shapes_are_refused_and_the_arrays_left_alone(
    server: RunningServer, model: int
) -> None:
    client = _client(server, model)
    client.send_update({"w": np.ones((4, 4), np.float32)})
    wrong = {"w": np.full((2, 8), 7, np.float32)}
    with pytest.raises(FrameworkError, match=r"expected shape \(2, 8\), received \(4, 4\)"):
        client.check_for_latest_model(update_after=-2, into=wrong)
    assert (wrong["w"] == 7).all()
    renamed = {"v": np.full((4, 4), 7, np.float32)}
    with pytest.raises(FrameworkError, match="names differ"):
        client.check_for_latest_model(update_after=-2, into=renamed)
    assert (renamed["v"] == 7).all()


def test_a_download_cut_mid_body_resumes_into_the_arrays(
    server: RunningServer, model: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(server, model)
    sent = {"w": np.random.default_rng(3).standard_normal(250_000).astype(np.float32)}
    client.send_update(sent)
    real = downloads.Download._read
    cuts: list[int] = []

    def breaking(self: downloads.Download, window: Any, until: int) -> Any:
        stop = min(until, self.got + 300_000)  # the link drops every 300 kB
        error = real(self, window, stop)
        if error is None and stop < until:
            cuts.append(self.got)
            return ConnectionResetError("cut by the test")
        return error

    monkeypatch.setattr(downloads.Download, "_read", breaking)
    monkeypatch.setattr(transport.Transport, "_backoff", lambda *_: 0.0)
    arrays = {"w": np.zeros(250_000, np.float32)}
    assert client.check_for_latest_model(update_after=-2, into=arrays) is not None
    assert len(cuts) >= 3
    np.testing.assert_array_equal(arrays["w"], sent["w"])


def test_bytes_damaged_in_transit_are_reported(
    server: RunningServer, model: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(server, model)
    client.send_update({"w": np.ones(100_000, np.float32)})  # beyond the first 64 KiB
    real = downloads.Download._read
    flipped: list[int] = []

    def flipping(self: downloads.Download, window: Any, until: int) -> Any:
        error = real(self, window, until)
        if self.got == self.length and not flipped:  # the last bytes are in: damage one
            window(self.length - 5)[0] ^= 1
            flipped.append(1)
        return error

    monkeypatch.setattr(downloads.Download, "_read", flipping)
    with pytest.raises(DecodeError, match="crc32"):
        client.check_for_latest_model(update_after=-2, into={"w": np.zeros(100_000, np.float32)})
    assert flipped


@pytest.mark.parametrize(
    ("into", "message"),
    [
        ([np.zeros(3), 1.5], "'1' is a float"),
        ([np.zeros(3), np.zeros(2)[:0], np.frombuffer(b"\0" * 8)], "'2' is read-only"),
        ("weights", "into= must be a tree of numpy arrays"),
    ],
)
def test_into_must_be_writable_numpy_arrays(
    server: RunningServer, model: int, into: Any, message: str
) -> None:
    client = WebClient(model, url=server.url)
    with pytest.raises(ConfigurationError, match=message):
        client.check_for_latest_model(into=into)


def test_into_arrays_must_not_share_memory_nor_come_with_like(
    server: RunningServer, model: int
) -> None:
    client = WebClient(model, url=server.url)
    whole = np.zeros(10)
    with pytest.raises(ConfigurationError, match="'0' and '1' share memory"):
        client.check_for_latest_model(into=[whole[:6], whole[4:]])
    with pytest.raises(ConfigurationError, match="like= or into=, not both"):
        client.check_for_latest_model(like=[whole], into=[whole])


def test_torch_weights_are_received_in_place_through_numpy_views(
    server: RunningServer, model: int
) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Linear(20, 3)
    client = _client(server, model)
    sent = {
        name: np.full(tuple(p.shape), 0.25, np.float32) for name, p in module.state_dict().items()
    }
    client.send_update(sent)
    with pytest.raises(ConfigurationError, match="detach"):
        client.check_for_latest_model(update_after=-2, into=module.state_dict())
    views = {name: t.detach().numpy() for name, t in module.state_dict().items()}
    client.check_for_latest_model(update_after=-2, into=views)
    assert torch.equal(module.weight.detach(), torch.full((3, 20), 0.25))


def test_a_body_listing_named_tensors_in_another_order_goes_into_them_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fma_connect.codecs.msgpack_numpy import MsgpackCodec

    sent: list[tuple[str, np.ndarray]] = [
        ("z", np.arange(6, dtype=np.float32)),
        ("a", np.arange(4, dtype=np.int64)),
    ]
    body = b"".join(bytes(c) for c in MsgpackCodec().encode(sent))
    arrays = {"a": np.zeros(4, np.int64), "z": np.zeros(6, np.float32)}  # sorted: a, z
    into = into_module.Into(arrays)
    place = into.placer(MsgpackCodec())
    assert place is not None
    segments = place(memoryview(bytearray(body[:100])), len(body))
    assert isinstance(segments, int) and 100 < segments <= len(body)  # more head, please
    segments = place(memoryview(bytearray(body[:segments])), len(body))
    assert isinstance(segments, list)
    downloads.Scatter(segments).fill(memoryview(body))
    spy = _Spy(monkeypatch)
    assert into.restore(into.placed()) is arrays
    assert spy.copies == 0
    np.testing.assert_array_equal(arrays["z"], sent[0][1])
    np.testing.assert_array_equal(arrays["a"], sent[1][1])
