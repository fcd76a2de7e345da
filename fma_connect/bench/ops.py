"""The benchmark's operations, each run in a fresh process (or in-process for --quick).

Every operation takes a spec (a JSON-able dict) and returns a JSON-able dict of
figures: seconds of the best timed run, ``*_peak`` extra resident bytes, wire bytes.
"""

from __future__ import annotations

import io
import json
import pickle
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import requests

from ..clients import WebClient
from ..codecs.base import Codec, Tensors
from ..codecs.json_lists import JsonListsCodec
from ..exceptions import EncodeError
from ..plugins import default_codec_registry
from .extras import missing
from .measure import make_model, timed, timed_pair
from .wire import response_head

__all__ = ["OPS", "run_op"]

Spec = dict[str, Any]
#: Client identity sent to the discarding endpoint, which checks none (any valid UUID will do).
_SINK_UUID = "00000000-0000-4000-8000-00000000b000"


def _join(chunks: Any) -> memoryview:
    """One writable buffer holding the chunks, as a client or server receives a body."""
    views = [memoryview(c).cast("B") for c in chunks]
    body = np.empty(sum(v.nbytes for v in views), np.uint8)
    offset = 0
    for view in views:
        body[offset : offset + view.nbytes] = np.frombuffer(view, np.uint8)
        offset += view.nbytes
    return body.data


def _same(a: Tensors, b: Tensors) -> bool:
    """Whether ``b`` holds ``a``'s values (by name when it kept them, else by position)."""
    named = dict(b)
    pairs = (
        [(x, named[n]) for n, x in a]
        if set(named) == {n for n, _ in a}
        else [(x, y) for (_, x), (_, y) in zip(a, b, strict=True)]
    )
    return all(_equal(x, np.asarray(y, dtype=x.dtype).reshape(x.shape)) for x, y in pairs)


def _equal(x: np.ndarray, y: np.ndarray) -> bool:
    # Slice by slice: a 5 GB tensor compared at once would need a 5 GB temporary.
    a, b = x.reshape(-1), y.reshape(-1)
    step = 1 << 24
    return all(np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.size, step))


def op_codec(spec: Spec) -> Spec:
    """Encode and decode the model with one installed codec."""
    codec: Codec = default_codec_registry().get(spec["codec"])
    model = make_model(spec["size"])
    repeat, warmup = spec["repeat"], spec["warmup"]
    if codec.json_native:

        def encode() -> Any:
            return orjson.dumps(codec.encode(model), option=orjson.OPT_SERIALIZE_NUMPY)

    else:

        def encode() -> Any:
            return codec.encode(model)

    try:
        enc, payload = timed(encode, repeat, warmup)
    except EncodeError as exc:
        return {"refused": str(exc)}
    body = _join([payload] if codec.json_native else payload)
    del payload
    if isinstance(codec, JsonListsCodec):

        def decode() -> Tensors:
            return codec.decode_document(body)

    elif codec.json_native:

        def decode() -> Tensors:
            return codec.decode(orjson.loads(body))

    else:

        def decode() -> Tensors:
            return codec.decode(body)

    dec, decoded = timed(decode, repeat, warmup)
    exact = _same(model, decoded) if codec.lossless or codec.name == "json" else None
    return {
        "encode_s": enc.seconds,
        "encode_peak": enc.peak_extra,
        "decode_s": dec.seconds,
        "decode_peak": dec.peak_extra,
        "wire": body.nbytes,
        "exact": exact,
        "peak_exact": enc.exact and dec.exact,
    }


def _original_encode(model: Tensors) -> bytes:
    # What the original client did: requests' json= (stdlib json) over tolist().
    return json.dumps([array.tolist() for _, array in model], allow_nan=False).encode()


def _original_decode(body: Any) -> Tensors:
    return [(str(i), np.asarray(layer)) for i, layer in enumerate(json.loads(bytes(body)))]


def _npsave_encode(model: Tensors) -> list[bytes]:
    # Flower's ndarrays_to_parameters: np.save of each array into its own bytes.
    out = []
    for _, array in model:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        out.append(buffer.getvalue())
    return out


def _npsave_decode(blobs: list[bytes]) -> Tensors:
    return [(str(i), np.load(io.BytesIO(b), allow_pickle=False)) for i, b in enumerate(blobs)]


def _safetensors_encode(model: Tensors) -> bytes:
    from safetensors.numpy import save

    out: bytes = save(dict(model))
    return out


def _safetensors_decode(body: bytes) -> Tensors:
    from safetensors.numpy import load

    return list(load(body).items())


def _pickle_encode(model: Tensors) -> bytes:
    return pickle.dumps(model, protocol=5)


def _pickle_decode(body: bytes) -> Tensors:
    loaded: Tensors = pickle.loads(body)  # our own bytes, in this process
    return loaded


#: Baselines that need a library outside the client's dependencies: kind -> its module.
_BASELINE_MODULES = {"safetensors": "safetensors"}
_BASELINES: dict[str, tuple[Callable[[Tensors], Any], Callable[[Any], Tensors]]] = {
    "original": (_original_encode, _original_decode),
    "np.save": (_npsave_encode, _npsave_decode),
    "safetensors": (_safetensors_encode, _safetensors_decode),
    "pickle5": (_pickle_encode, _pickle_decode),
}


def op_baseline(spec: Spec) -> Spec:
    """Encode and decode the model with a baseline format, or memcpy it (the ceiling).

    A baseline whose library is not installed is skipped (``{"skipped": why}``), so the
    report names the extra that installs it instead of showing an import error.
    """
    module = _BASELINE_MODULES.get(spec["kind"])
    why = missing(module) if module is not None else None
    if why is not None:
        return {"skipped": why}
    model = make_model(spec["size"])
    repeat, warmup = spec["repeat"], spec["warmup"]
    if spec["kind"] == "memcpy":
        source = _join([array.data for _, array in model])
        target = np.empty(source.nbytes, np.uint8)
        figures, _ = timed(lambda: np.copyto(target, np.frombuffer(source, np.uint8)), repeat)
        return {"encode_s": figures.seconds, "decode_s": figures.seconds, "wire": source.nbytes}
    encoder, decoder = _BASELINES[spec["kind"]]
    if spec["kind"] == "original":  # minutes at 100 MB: once, and first touches are noise
        repeat, warmup = 1, False
    enc, body = timed(lambda: encoder(model), repeat, warmup)
    dec, decoded = timed(lambda: decoder(body), repeat, warmup)
    wire = sum(len(b) for b in body) if isinstance(body, list) else len(body)
    return {
        "encode_s": enc.seconds,
        "encode_peak": enc.peak_extra,
        "decode_s": dec.seconds,
        "decode_peak": dec.peak_extra,
        "wire": wire,
        "exact": _same(model, decoded),
        "peak_exact": enc.exact and dec.exact,
    }


def op_upload(spec: Spec) -> Spec:
    """send_update (msgpack) vs requests.post of the same pre-encoded bytes, same endpoint."""
    model = make_model(spec["size"])
    repeat, warmup = spec["repeat"], spec["warmup"]
    url = spec["url"].rstrip("/") + "/api/v1/model_updates/?federated_model=1"
    codec = default_codec_registry().get("msgpack")
    body = bytes(_join(codec.encode(model)))
    wire = len(body)
    headers = {"Content-Type": codec.media_type, "CLIENT-UUID": _SINK_UUID}
    weights = dict(model)
    with (
        requests.Session() as session,
        WebClient(1, _SINK_UUID, spec["url"], codec="msgpack") as client,
    ):

        def plain_post(data: bytes = body) -> None:
            session.post(url, data=data, headers=headers).close()

        plain, ours = timed_pair(plain_post, lambda: client.send_update(weights), repeat, warmup)
    return {
        "plain_s": plain.seconds,
        "ours_s": ours.seconds,
        "ours_peak": ours.peak_extra,
        "wire": wire,
    }


def op_download(spec: Spec) -> Spec:
    """check_for_latest_model vs a streamed GET of the same bytes into a preallocated buffer."""
    with WebClient(spec["model"], spec["uuid"], spec["url"], codec="msgpack") as sender:
        sender.send_update(dict(make_model(spec["size"])))  # the aggregate to download
    url = spec["url"].rstrip("/") + f"/api/v1/models/{spec['model']}/get_latest_model/"
    codec = default_codec_registry().get("msgpack")
    headers = {"CLIENT-UUID": spec["uuid"], "Accept": codec.media_type}
    repeat, warmup = spec["repeat"], spec["warmup"]
    with requests.Session() as session:
        probe = session.get(url, headers=headers, stream=True)
        length = int(probe.headers["Content-Length"])
        probe.close()

        def plain_get() -> Any:
            # A fresh buffer of the announced size per download, as any client needs one.
            target = np.empty(length, np.uint8)
            response = session.get(url, headers=headers, stream=True)
            view, got = target.data, 0
            inner: Any = response.raw._fp  # http.client's response: readinto from the socket
            readinto = inner.readinto
            while got < length:
                n = readinto(view[got : got + (16 << 20)])
                if not n:
                    raise RuntimeError("short read")
                got += n
            response.close()
            return target

        with WebClient(spec["model"], spec["uuid"], spec["url"], codec="msgpack") as client:

            def ours_get() -> Any:
                return client.check_for_latest_model(update_after=-1)

            plain, ours = timed_pair(plain_get, ours_get, repeat, warmup)
    return {
        "plain_s": plain.seconds,
        "ours_s": ours.seconds,
        "ours_peak": ours.peak_extra,
        "wire": length,
    }


def op_roundtrip(spec: Spec) -> Spec:
    """send_update, the server's round (one update), check_for_latest_model."""
    model = make_model(spec["size"])
    codec = spec["codec"]
    template = dict(model)
    with WebClient(spec["model"], spec["uuid"], spec["url"], codec=codec) as client:

        def round_trip() -> Any:
            client.send_update(template)
            latest = client.check_for_latest_model(update_after=-1, like=template)
            if latest is None:
                raise RuntimeError("no model came back")
            return latest

        try:
            figures, latest = timed(round_trip, spec["repeat"], spec["warmup"])
        except EncodeError as exc:
            return {"refused": str(exc)}
    # The mean of one update is that update: a lossless codec must give back every bit.
    lossless = default_codec_registry().get(codec).lossless
    exact = _same(model, list(latest["values"].items())) if lossless else None
    return {"seconds": figures.seconds, "peak": figures.peak_extra, "exact": exact}


def op_original_roundtrip(spec: Spec) -> Spec:
    """The original client's path: requests json= over tolist(), then .json() back."""
    model = make_model(spec["size"])
    base = spec["url"].rstrip("/") + "/api/v1/"
    headers = {"CLIENT-UUID": spec["uuid"]}
    with requests.Session() as session:

        def round_trip() -> Any:
            data = [array.tolist() for _, array in model]
            body = {"federated_model": spec["model"], "data": data}
            session.post(base + "model_updates/", json=body, headers=headers).raise_for_status()
            answer = session.get(f"{base}models/{spec['model']}/get_latest_model/", headers=headers)
            values = answer.json()["values"]
            return [np.asarray(layer, dtype=np.float32) for layer in values]

        figures, _ = timed(round_trip, spec["repeat"], warmup=False)
    return {"seconds": figures.seconds, "peak": figures.peak_extra}


def op_raw(spec: Spec) -> Spec:
    """The loopback ceiling: a POST and a GET of the bytes over bare sockets."""
    size = sum(array.nbytes for _, array in make_model(spec["size"]))
    parts = urlsplit(spec["url"])
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    source = np.ones(size, np.uint8)
    target = np.empty(size, np.uint8)
    target.fill(0)

    def post() -> None:
        with socket.create_connection(address) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
            sock.sendall(source.data)
            _expect(sock.makefile("rb"))

    def get() -> None:
        with socket.create_connection(address) as sock:
            sock.sendall(b"GET /%d HTTP/1.1\r\n\r\n" % size)
            reader = sock.makefile("rb", buffering=0)
            length = _expect(reader, header_only=True)
            view, got = target.data, 0
            while got < length:
                n = reader.readinto(view[got : got + (16 << 20)])
                if not n:
                    raise RuntimeError("short read")
                got += n

    up, _ = timed(post, spec["repeat"], spec["warmup"])
    down, _ = timed(get, spec["repeat"], spec["warmup"])
    return {"post_s": up.seconds, "get_s": down.seconds, "wire": size}


def _expect(reader: Any, header_only: bool = False) -> int:
    """Read a response head (and its body unless ``header_only``); return its length."""
    length = response_head(reader)
    if not header_only:
        reader.read(length)
    return length


OPS: dict[str, Callable[[Spec], Spec]] = {
    "codec": op_codec,
    "baseline": op_baseline,
    "upload": op_upload,
    "download": op_download,
    "roundtrip": op_roundtrip,
    "original_roundtrip": op_original_roundtrip,
    "raw": op_raw,
}


def run_op(spec: Spec) -> Spec:
    """Run the operation a spec names."""
    return OPS[spec["op"]](spec)
