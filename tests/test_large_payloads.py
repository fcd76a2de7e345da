"""Large payloads: sliced uploads, inactivity timeouts, progress, the JSON fast path and limits."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import numpy as np
import orjson
import pytest

from fma_connect import WebClient
from fma_connect._transport import SEND_SLICE, Chunks
from fma_connect.codecs.json_lists import (
    MAX_DOCUMENT_BYTES,
    JsonListsCodec,
    check_document_size,
    estimate_size,
    fast_layers,
)
from fma_connect.exceptions import DecodeError, EncodeError


def test_chunks_are_sent_in_bounded_slices_with_progress_to_the_total() -> None:
    big = np.arange(3 * SEND_SLICE // 4 + 5, dtype=np.int32)
    calls: list[tuple[int, int | None]] = []
    body = Chunks([b"head", big], progress=lambda done, total: calls.append((done, total)))

    pieces = list(body)

    assert all(p.nbytes <= SEND_SLICE for p in pieces)
    assert b"".join(bytes(p) for p in pieces) == b"head" + big.tobytes()
    assert len(pieces) > 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (len(body), len(body))


class _SlowReader:
    """An HTTP server that reads request bodies in small sips with pauses, then answers 201."""

    def __init__(self, sip: int, pause: float) -> None:
        self.sip, self.pause = sip, pause
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.pauses = 0
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb", buffering=0) as reader:
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while self.received < length:
                chunk = reader.read(min(self.sip, length - self.received))
                if not chunk:
                    return
                self.received += len(chunk)
                time.sleep(self.pause)
                self.pauses += 1
            answer = orjson.dumps({"id": 1})
            conn.sendall(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )


def test_a_long_upload_is_not_cut_off_by_the_timeouts() -> None:
    # The upload lasts several times the (connect, read) timeouts; each slice still moves.
    # A second each: a loaded machine (the suite runs in parallel) can stall a thread for
    # half of one, which must not count as the server going silent.
    server = _SlowReader(sip=64 << 10, pause=0.01)
    weights = {"w": np.ones(24 << 20, np.uint8)}
    calls: list[int] = []
    with WebClient(
        1,
        "00000000-0000-4000-8000-000000000001",
        server.url,
        codec="msgpack",
        timeout=(1.0, 1.0),
        retries=0,
        progress=lambda done, total: calls.append(done),
    ) as client:
        answer = client.send_update(weights)

    assert answer == {"id": 1}
    assert server.received >= weights["w"].nbytes
    assert server.pauses * server.pause > 1.0 * 3  # the server's own sleeps, not a clock
    assert calls[-1] >= weights["w"].nbytes


def test_downloads_report_progress_and_decode_to_writable_arrays(tmp_path: Any) -> None:
    pytest.importorskip("starlette")
    from fma_connect.admin import AdminClient
    from fma_connect.server.testing import running_server

    weights: dict[str, np.ndarray] = {
        "w": np.arange(3 << 20, dtype=np.float32),
        "b": np.ones(7, np.int64),
    }
    with running_server(tmp_path) as server, AdminClient(server.url, server.admin_token) as admin:
        model = admin.create_model("big", requirement="require_x_updates", requirement_args=[1])
        calls: list[tuple[int, int | None]] = []
        with WebClient(
            model["id"],
            url=server.url,
            codec="msgpack",
            progress=lambda done, total: calls.append((done, total)),
        ) as client:
            client.send_update(weights)
            calls.clear()
            latest = client.check_for_latest_model(update_after=-1)

    assert latest is not None
    back = latest["values"]
    np.testing.assert_array_equal(back["w"], weights["w"])
    assert back["w"].flags.writeable
    back["w"][0] = 5.0  # writable in place, no copy needed
    assert calls and calls[-1][0] == calls[-1][1]
    assert calls[-1][0] > weights["w"].nbytes


FAST_PATH_CASES = [
    b"[[1,2],[3,4]]",
    b"[1.5, [1,2], [[1.0],[2]], 3]",
    b"[[[1,2],[3]]]",
    b"[[1,[2]]]",
    b"[[[1]],[2]]",
    b"[[true,false]]",
    b"[[]]",
    b"[5, -0.0, 1e-300, 0.1]",
    b"[[9223372036854775807]]",
    b"[[18446744073709551615]]",
    b'[["a"]]',
    b"[[1, 2.0]]",
    b" [ [ 1 , 2 ] , [ 3 , 4 ] ] ",
]


@pytest.mark.parametrize("document", FAST_PATH_CASES)
def test_json_document_decode_matches_the_orjson_path(document: bytes) -> None:
    codec = JsonListsCodec()
    try:
        expected = [
            (n, a.dtype, a.shape, a.tolist()) for n, a in codec.decode(orjson.loads(document))
        ]
    except DecodeError:
        with pytest.raises(DecodeError):
            codec.decode_document(document)
        return
    got = codec.decode_document(document)
    assert [(n, a.dtype, a.shape, a.tolist()) for n, a in got] == expected


def test_json_fast_path_is_bit_exact_for_float32_and_float64_text() -> None:
    pytest.importorskip("simdjson")
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        values = rng.standard_normal(20_000) * 10.0 ** rng.integers(-12, 12, 20_000)
        array = values.astype(dtype).reshape(100, 200)
        document = orjson.dumps([array], option=orjson.OPT_SERIALIZE_NUMPY)
        fast = fast_layers(memoryview(document))
        assert fast is not None
        decoded = fast[1][0][1]
        np.testing.assert_array_equal(decoded.astype(dtype), array)
        assert decoded.tobytes() == np.asarray(orjson.loads(document)[0]).tobytes()


def test_ragged_json_is_refused() -> None:
    with pytest.raises(DecodeError, match="rectangular"):
        JsonListsCodec().decode_document(b"[[[1, 2], [3]]]")


def test_json_documents_over_the_parser_limit_are_refused_with_their_size() -> None:
    with pytest.raises(DecodeError, match=r"2,147,483,648 bytes.*binary codec"):
        check_document_size(MAX_DOCUMENT_BYTES, encoding=False)
    check_document_size(MAX_DOCUMENT_BYTES - 1, encoding=False)
    huge = np.broadcast_to(np.float32(1.25), (600_000_000,))  # no memory behind it
    estimate = estimate_size([huge])
    assert estimate > MAX_DOCUMENT_BYTES
    with pytest.raises(EncodeError, match="msgpack"):
        check_document_size(estimate, encoding=True)
