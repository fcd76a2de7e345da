"""What the decoder fuzzers share: hostile payload builders and the guarded decode call.

Used by test_fuzz_decoders.py (hypothesis, in CI) and fuzz_atheris.py (coverage-guided,
run by hand). :func:`decode_guarded` is the property every input must satisfy: the
decoder returns named numeric arrays or raises ``DecodeError``, nothing else, and
allocates no more than the body can justify.
"""

from __future__ import annotations

import base64
import io
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np
import orjson

from fma_connect.codecs import json_lists
from fma_connect.codecs.base import Codec, Tensors
from fma_connect.dtypes import ML_DTYPES_TAGS, NUMPY_TAGS
from fma_connect.exceptions import DecodeError

#: Peak traced allocation allowed while decoding a body of n bytes: BASE + FACTOR * n.
#: Linear in the body: a header claiming 10^12 elements would need terabytes. The base
#: covers msgpack's Unpacker, which starts with a 1 MiB buffer whatever it is fed.
BUDGET_BASE = 2 << 20
BUDGET_FACTOR = 64

#: dtype tags a hostile header may name: the allowlist, then things that must be refused.
HOSTILE_TAGS: tuple[Any, ...] = (
    *NUMPY_TAGS,
    *ML_DTYPES_TAGS,
    "object",
    "O",
    "|O",
    "V8",
    "<f8",
    ">f8",
    "float128",
    "datetime64",
    "S4",
    "U3",
    "[('a', '<f8')]",
    "",
    5,
    None,
    ["float32"],
)

#: .npy ``descr`` values: numeric ones, then object, void, structured, text, time, big-endian.
HOSTILE_DESCRS: tuple[Any, ...] = (
    "<f8",
    "<f4",
    "<i8",
    "|u1",
    "|b1",
    "<c16",
    "<u2",
    "|O",
    "<V8",
    [("a", "<f8")],
    "<U3",
    "|S2",
    "<M8[s]",
    ">f8",
    ">i4",
)

#: Shape entries a hostile header may claim.
HOSTILE_DIMS: tuple[int, ...] = (0, 1, 2, 3, 7, 10**6, 10**12, 2**31, 2**63 - 1, 2**63, 2**64 - 1)


def budget(body_bytes: int) -> int:
    """The largest peak allocation a decode of ``body_bytes`` may make."""
    return BUDGET_BASE + BUDGET_FACTOR * body_bytes


def allowed_dtypes() -> set[np.dtype[Any]]:
    """Every dtype a decoder may return (the wire allowlist, native byte order)."""
    found = {np.dtype(tag) for tag in NUMPY_TAGS}
    try:
        import ml_dtypes
    except ImportError:
        return found
    return found | {np.dtype(getattr(ml_dtypes, tag)) for tag in ML_DTYPES_TAGS}


_ALLOWED = allowed_dtypes()


def decode_guarded(
    codec: Codec, body: bytes, *, parse_json: bool | None = None, value: Any = None
) -> Tensors | None:
    """Decode ``body`` (or the ready ``value``) as a receiver would; check the contract.

    A JSON-native codec gets ``body`` parsed by orjson, as the client and the server
    parse it (a body orjson refuses never reaches the codec: None is returned).
    tracemalloc must be running; the decode's peak allocation is checked against
    :func:`budget` of the body's length.

    Returns:
        The tensors, or None when the body was refused.

    Raises:
        AssertionError: another exception escaped, the output is malformed, or the
            decode allocated more than the body justifies.
    """
    assert tracemalloc.is_tracing(), "decode_guarded needs tracemalloc running"
    json_native = codec.json_native if parse_json is None else parse_json
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    out: Tensors | None = None
    try:
        if value is not None:
            payload = value
        elif json_native:
            payload = orjson.loads(body)
        else:
            payload = body
        out = codec.decode(payload)
    except orjson.JSONDecodeError:
        out = None
    except DecodeError as exc:
        message = str(exc)
        out = None
        assert message, "a DecodeError must say what is wrong"
    peak = tracemalloc.get_traced_memory()[1] - before
    assert peak <= budget(len(body)), (
        f"decoding {len(body)} bytes allocated {peak} bytes (budget {budget(len(body))})"
    )
    if out is not None:
        assert isinstance(out, list)
        for name, array in out:
            assert isinstance(name, str)
            assert isinstance(array, np.ndarray)
            assert array.dtype.newbyteorder("=") in _ALLOWED, array.dtype
    if value is None and codec.name == "json":
        _same_through_the_fast_paths(codec, body, out)
    return out


def _same_through_the_fast_paths(codec: Codec, body: bytes, expected: Tensors | None) -> None:
    """The json codec's whole-document paths agree with orjson + ``decode``."""
    decode_document = getattr(codec, "decode_document", None)
    if decode_document is not None:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            got = decode_document(body)
        except DecodeError:
            got = None
        assert tracemalloc.get_traced_memory()[1] - before <= budget(len(body))
        _assert_same(got, expected, "decode_document")
    fast_layers = getattr(json_lists, "fast_layers", None)
    if fast_layers is not None:
        # No exception at all: None hands the document to orjson.
        fast = fast_layers(memoryview(body))
        if fast is not None:
            _assert_same(fast[1], expected, "fast_layers")
        wrapped = b'{"aggregate": 1, "values": ' + body + b"}"
        fast = fast_layers(memoryview(wrapped), "values")
        if fast is not None:
            assert fast[0] == {"aggregate": 1}
            _assert_same(fast[1], expected, "fast_layers(field)")


def _assert_same(got: Tensors | None, expected: Tensors | None, path: str) -> None:
    if got is None or expected is None:
        assert got is None and expected is None, f"{path} disagrees with orjson + decode"
        return
    assert [n for n, _ in got] == [n for n, _ in expected], path
    for (_, a), (_, b) in zip(got, expected, strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (path, a.dtype, b.dtype, a.shape, b.shape)
        assert a.tobytes() == b.tobytes(), f"{path}: values differ"


def body_of(codec: Codec, tensors: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """The wire body of ``tensors``: JSON text, or the joined binary chunks."""
    payload = codec.encode(tensors)
    if codec.json_native:
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join(bytes(memoryview(chunk).cast("B")) for chunk in payload)


# -- mutations ---------------------------------------------------------------------------

Mutation = tuple[str, int, int, bytes]


def mutate(body: bytes, mutations: Iterable[Mutation]) -> bytes:
    """Apply ``(kind, position, length, data)`` mutations in turn (positions wrap)."""
    out = bytearray(body)
    for kind, position, length, data in mutations:
        at = position % (len(out) + 1)
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and out:
            out[at % len(out)] ^= 1 << (length % 8)
        elif kind == "overwrite":
            out[at : at + len(data)] = data
        elif kind == "insert":
            out[at:at] = data
        elif kind == "delete":
            del out[at : at + length]
        elif kind == "duplicate":
            out[at:at] = out[at : at + length]
    return bytes(out)


# -- msgpack -----------------------------------------------------------------------------


def msgpack_body(
    header: Any, data: bytes = b"", *, align: int = 64, checksum: bool | None = None
) -> bytes:
    """A body made of an arbitrary msgpack ``header``, its checksum, padding, then ``data``.

    Args:
        header: Any msgpack value.
        data: The data region.
        align: Pad header and checksum to a multiple of this.
        checksum: Write the header's crc32 after it, as format version 2 does (None:
            when ``header`` is a map whose ``format_version`` is not 1).
    """
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    if checksum is None:
        checksum = isinstance(header, dict) and header.get("format_version") != 1
    if checksum:
        packed += zlib.crc32(packed).to_bytes(4, "big")
    return packed + bytes(-len(packed) % align) + data


def msgpack_descriptor(
    name: Any, tag: Any, shape: Any, offset: Any, nbytes: Any, crc: Any
) -> dict[str, Any]:
    """One tensor descriptor of a msgpack header, with whatever values are given."""
    return {
        "name": name,
        "dtype": tag,
        "shape": shape,
        "offset": offset,
        "nbytes": nbytes,
        "crc32": crc,
    }


def msgpack_header(descriptors: list[Any], version: int = 2) -> dict[str, Any]:
    """A well-formed msgpack header (of format ``version``) around ``descriptors``."""
    return {"codec": "msgpack", "format_version": version, "tensors": descriptors}


def deep_msgpack(depth: int) -> bytes:
    """A msgpack value nested ``depth`` arrays deep (each a one-element array)."""
    return b"\x91" * depth + b"\x00"


# -- npz-b64 -----------------------------------------------------------------------------


def npy_entry(
    descr: Any, shape: Any, data: bytes, *, fortran: bool = False, version: int = 1
) -> bytes:
    """An ``.npy`` file whose header says whatever it is told (no checks)."""
    header = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    size_bytes = 2 if version == 1 else 4
    prefix = 6 + 2 + size_bytes
    header += b" " * (-(prefix + len(header) + 1) % 64) + b"\n"
    version_bytes = bytes([version, 0])
    return b"\x93NUMPY" + version_bytes + len(header).to_bytes(size_bytes, "little") + header + data


def npz_archive(entries: Sequence[tuple[str, bytes]], *, compressed: bool = False) -> bytes:
    """A zip archive of ``(name, bytes)`` entries (duplicates allowed)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buffer.getvalue()


def manifest_entry(manifest: Any) -> bytes:
    """The ``manifest.npy`` entry holding ``manifest`` as JSON."""
    text = manifest if isinstance(manifest, bytes) else orjson.dumps(manifest)
    return npy_entry("|u1", (len(text),), text)


def npz_tagged(archive: bytes) -> dict[str, Any]:
    """The tagged JSON object carrying ``archive``."""
    return {"codec": "npz-b64", "format_version": 1, "payload": base64.b64encode(archive).decode()}


def npz_body(archive: bytes) -> bytes:
    """The JSON text of the tagged object carrying ``archive``."""
    return orjson.dumps(npz_tagged(archive))


def npz_archive_of(tagged_body: bytes) -> bytes:
    """The raw archive inside an npz-b64 JSON body."""
    return base64.b64decode(orjson.loads(tagged_body)["payload"])


# -- json --------------------------------------------------------------------------------


def deep_list(depth: int, leaf: Any = 1) -> Any:
    """A Python list nested ``depth`` deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def crc32(data: bytes) -> int:
    """zlib's crc32, as the msgpack format stores it."""
    return zlib.crc32(data)
