"""Fuzzing every built-in decoder: only DecodeError escapes, allocations stay bounded.

Each property feeds ``decode`` bodies a receiver could get: valid encodings damaged in
transit (truncated, bit-flipped, bytes inserted, deleted, duplicated, overwritten), and
crafted ones (hostile headers, dtypes, shapes, nesting, archives). Every input goes
through :func:`fuzz_support.decode_guarded`, which also bounds the decode's peak
allocation (tracemalloc) by a linear budget of the body's length. The counts land in the
"fuzz inputs" figures.

``FMA_FUZZ_EXAMPLES`` sets hypothesis examples per property (default 250); each example
feeds one or more inputs. The longer coverage-guided campaign is fuzz_atheris.py.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest
from fuzz_support import (
    BUDGET_BASE,
    HOSTILE_DESCRS,
    HOSTILE_DIMS,
    HOSTILE_TAGS,
    Mutation,
    body_of,
    crc32,
    decode_guarded,
    deep_list,
    deep_msgpack,
    manifest_entry,
    msgpack_body,
    msgpack_descriptor,
    msgpack_header,
    mutate,
    npy_entry,
    npz_archive,
    npz_archive_of,
    npz_body,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_figures import Figures

from fma_connect.codecs.json_lists import JsonListsCodec
from fma_connect.codecs.msgpack_numpy import MsgpackCodec
from fma_connect.codecs.npz_base64 import NpzBase64Codec
from fma_connect.testing import tensor_lists

EXAMPLES = int(os.environ.get("FMA_FUZZ_EXAMPLES", "250"))
#: A decode that has not returned after this long is a hang: dump the stacks and exit.
HANG_GUARD_SECONDS = 600

fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

JSON = JsonListsCodec()
MSGPACK = MsgpackCodec()
NPZ = NpzBase64Codec()


@pytest.fixture(autouse=True)
def _traced_and_hang_guarded() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_GUARD_SECONDS, exit=True)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()


def _count(figures: Figures, codec: str, n: int = 1) -> None:
    figures.add("fuzz inputs", codec, n)


mutations: st.SearchStrategy[list[Mutation]] = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "duplicate"]),
        st.integers(0, 1 << 16),
        st.integers(0, 64),
        st.binary(max_size=16),
    ),
    min_size=1,
    max_size=4,
)


# -- damage in transit, every codec -------------------------------------------------------


@pytest.mark.parametrize("codec", [JSON, MSGPACK, NPZ], ids=lambda c: c.name)
def test_damaged_bodies_raise_only_decode_error(codec: Any, figures: Figures) -> None:
    @fuzz
    @given(tensor_lists(codec), mutations)
    def check(sent: Any, damage: list[Mutation]) -> None:
        body = body_of(codec, sent)
        assert decode_guarded(codec, body) is not None  # the intact body decodes
        decode_guarded(codec, mutate(body, damage))
        _count(figures, codec.name, 2)

    check()


def test_npz_archives_damaged_inside_the_base64_raise_only_decode_error(figures: Figures) -> None:
    # Damage to the archive itself (the base64 text stays valid, so it reaches the zip reader).
    @fuzz
    @given(tensor_lists(NPZ), mutations)
    def check(sent: Any, damage: list[Mutation]) -> None:
        archive = npz_archive_of(body_of(NPZ, sent))
        decode_guarded(NPZ, npz_body(mutate(archive, damage)))
        _count(figures, NPZ.name)

    check()


def test_every_truncation_and_single_bit_flip_of_a_body_is_detected(figures: Figures) -> None:
    # Exhaustive on a small body. Every truncation is refused. A flipped bit is refused,
    # except where no reader looks (zip metadata such as timestamps; msgpack: the zero
    # padding between two tensors): the tensors' names, bytes, dtypes and shapes then
    # still arrive intact, which is asserted. (msgpack format 1, with no checksum over
    # its header, let a flip inside a tensor name through; format 2 refuses it.)
    tensors: list[tuple[str, np.ndarray]] = [
        ("w", np.arange(6, dtype=np.float32)),
        ("b", np.array([1, -2], np.int16)),
    ]
    for codec in (MSGPACK, NPZ):
        body = body_of(codec, tensors)
        archive = npz_archive_of(body) if codec is NPZ else body
        for cut in range(len(archive)):
            damaged = npz_body(archive[:cut]) if codec is NPZ else archive[:cut]
            assert decode_guarded(codec, damaged) is None, f"{codec.name}: cut at {cut} decoded"
        # msgpack: the last tensor starts 64 bytes into the data region, after the first.
        first_tensor = len(archive) - 64 - tensors[1][1].nbytes
        between = range(first_tensor + tensors[0][1].nbytes, first_tensor + 64)
        refused = harmless = 0
        for position in range(len(archive)):
            for bit in range(8):
                flipped = bytearray(archive)
                flipped[position] ^= 1 << bit
                damaged = npz_body(bytes(flipped)) if codec is NPZ else bytes(flipped)
                out = decode_guarded(codec, damaged)
                if out is None:
                    refused += 1
                    continue
                assert [n for n, _ in out] == ["w", "b"], f"{codec.name}: flip at {position}"
                for (_, got), (_, want) in zip(out, tensors, strict=True):
                    assert got.dtype == want.dtype and got.shape == want.shape
                    np.testing.assert_array_equal(got, want)
                assert codec is NPZ or position in between, f"msgpack: flip at {position}"
                harmless += 1
        assert refused + harmless == len(archive) * 8
        figures.add("single-bit flips", f"{codec.name} refused", refused)
        figures.add("single-bit flips", f"{codec.name} in unread bytes (data intact)", harmless)
        figures.add("single-bit flips", f"{codec.name} truncations refused", len(archive))
        _count(figures, codec.name, len(archive) * 9)


# -- msgpack: crafted headers ---------------------------------------------------------------

dims = st.one_of(st.sampled_from(HOSTILE_DIMS), st.integers(-3, 2**64 - 1))
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.just(1), min_size=60, max_size=70),
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=3),
)


@st.composite
def crafted_msgpack_bodies(draw: st.DrawFn) -> bytes:
    descriptors = []
    data = draw(st.binary(max_size=512))
    for _ in range(draw(st.integers(0, 4))):
        tag = draw(st.sampled_from(HOSTILE_TAGS))
        shape = draw(shapes)
        offset = draw(st.one_of(st.sampled_from([0, 64, 2**63, 2**64 - 1]), st.integers(-1, 600)))
        consistent = draw(st.booleans())
        nbytes: Any
        if consistent and isinstance(shape, list) and isinstance(tag, str):
            try:
                itemsize = np.dtype(tag).itemsize
            except TypeError:
                itemsize = 4
            claimed = int(np.prod([int(d) for d in shape], dtype=object)) * itemsize
            nbytes = min(max(claimed, -(2**63)), 2**64 - 1)  # what msgpack can carry
        else:
            nbytes = draw(st.one_of(st.integers(-1, 600), st.sampled_from([2**40, 8 * 10**12])))
        crc: Any = draw(st.one_of(st.integers(0, 2**32 - 1), st.just(-1)))
        if draw(st.booleans()) and isinstance(offset, int) and isinstance(nbytes, int):
            crc = crc32(data[max(offset, 0) : max(offset, 0) + max(nbytes, 0)])
        descriptor: Any = msgpack_descriptor(
            draw(st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), st.none())),
            tag,
            shape,
            offset,
            nbytes,
            crc,
        )
        if draw(st.integers(0, 9)) == 0:
            descriptor = draw(
                st.sampled_from([None, [], "x", {"name": "a"}, {**descriptor, "x": 1}])
            )
        descriptors.append(descriptor)
    header: Any = msgpack_header(descriptors, version=draw(st.sampled_from([2, 2, 1])))
    variant = draw(st.integers(0, 11))
    if variant == 0:
        header["format_version"] = draw(
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=2), st.none())
        )
    elif variant == 1:
        header["codec"] = draw(st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)))
    elif variant == 2:
        header["tensors"] = draw(
            st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=3))
        )
    elif variant == 3:
        del header[draw(st.sampled_from(sorted(header)))]
    elif variant == 4:
        header = draw(msgpack_values)
    align = draw(st.sampled_from([64, 64, 1, 7]))
    # None: the checksum where the header's version has one; else present or absent.
    checksum = draw(st.sampled_from([None, None, None, True, False]))
    return msgpack_body(header, data, align=align, checksum=checksum)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=16,
)


def test_crafted_msgpack_headers_raise_only_decode_error(figures: Figures) -> None:
    @fuzz
    @given(crafted_msgpack_bodies())
    def check(body: bytes) -> None:
        decode_guarded(MSGPACK, body)
        _count(figures, MSGPACK.name)

    check()


def test_random_bytes_raise_only_decode_error(figures: Figures) -> None:
    @fuzz
    @given(st.binary(max_size=2048))
    def check(body: bytes) -> None:
        decode_guarded(MSGPACK, body)
        decode_guarded(JSON, body)
        decode_guarded(NPZ, body)
        _count(figures, MSGPACK.name)
        _count(figures, JSON.name)
        _count(figures, NPZ.name)

    check()


# -- npz-b64: crafted archives ----------------------------------------------------------------

npy_shapes = st.one_of(
    st.lists(st.sampled_from(HOSTILE_DIMS), max_size=4).map(tuple),
    st.lists(st.integers(-2, 4), max_size=3).map(tuple),
    st.just((1,) * 70),
    st.sampled_from(["x", None, 3, [2]]),
)


@st.composite
def crafted_npz_bodies(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(0, 3))
    names: Any = [f"n{i}" for i in range(count)]
    tags: Any = [draw(st.sampled_from(HOSTILE_TAGS)) for _ in range(count)]
    manifest: Any = {"names": names, "dtypes": tags}
    variant = draw(st.integers(0, 7))
    if variant == 0:
        manifest = draw(msgpack_values.filter(lambda v: not isinstance(v, bytes)).map(_jsonable))
    elif variant == 1:
        manifest = b"[" * draw(st.integers(1, 5000))  # nesting far past any parser's depth
    elif variant == 2:
        manifest["names"] = draw(
            st.lists(st.one_of(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1)), max_size=4)
        )
    entries: list[tuple[str, bytes]] = [("manifest.npy", manifest_entry(manifest))]
    for i in range(count + draw(st.integers(-1, 1))):
        descr = draw(st.sampled_from(HOSTILE_DESCRS))
        shape = draw(npy_shapes)
        size = draw(st.integers(0, 256))
        if draw(st.booleans()) and isinstance(shape, tuple) and isinstance(descr, str):
            with contextlib.suppress(TypeError, ValueError):
                size = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize
            size = min(max(size, 0), 4096)
        entry = npy_entry(
            descr,
            shape,
            draw(st.binary(min_size=size, max_size=size)),
            fortran=draw(st.booleans()),
            version=draw(st.sampled_from([1, 1, 2, 3, 9])),
        )
        name = draw(st.sampled_from([f"t{i}.npy", f"t{i}.npy", "t0.npy", f"t{i}", "../x.npy"]))
        entries.append((name, entry))
    archive = npz_archive(entries, compressed=draw(st.integers(0, 9)) == 0)
    return npz_body(archive)


def _jsonable(value: Any) -> Any:
    # msgpack_values may hold bytes and ExtType leaves: JSON gets their repr.
    return orjson.loads(orjson.dumps(value, default=repr))


def test_crafted_npz_archives_raise_only_decode_error(figures: Figures) -> None:
    @fuzz
    @given(crafted_npz_bodies())
    def check(body: bytes) -> None:
        decode_guarded(NPZ, body)
        _count(figures, NPZ.name)

    check()


def test_tagged_objects_of_any_shape_raise_only_decode_error(figures: Figures) -> None:
    values = st.fixed_dictionaries(
        {
            "codec": st.one_of(st.just("npz-b64"), st.text(max_size=4), st.integers(0, 9)),
            "format_version": st.one_of(st.just(1), st.integers(-1, 3), st.booleans(), st.none()),
            "payload": st.one_of(
                st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/=", max_size=64),
                st.text(max_size=16),
                st.integers(-(2**63), 2**64 - 1),
                st.none(),
            ),
        }
    )

    @fuzz
    @given(st.one_of(values, msgpack_values.map(_jsonable)))
    def check(value: Any) -> None:
        body = orjson.dumps(value)
        decode_guarded(NPZ, body)
        _count(figures, NPZ.name)

    check()


# -- json: crafted values ---------------------------------------------------------------------

json_scalars = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.sampled_from([2**63, 2**64 - 1, -(2**63), 1.8446744073709552e19, 1e308, -0.0, 5e-324]),
)
json_layers = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


def test_crafted_json_layers_raise_only_decode_error(figures: Figures) -> None:
    @fuzz
    @given(st.one_of(st.lists(json_layers, max_size=6), json_layers))
    def check(value: Any) -> None:
        body = orjson.dumps(value)
        decode_guarded(JSON, body)
        _count(figures, JSON.name)

    check()


def test_rectangular_json_layers_decode_or_are_refused(figures: Figures) -> None:
    # Nested lists that look like tensors, with one element swapped for anything.
    @fuzz
    @given(
        st.lists(st.integers(0, 4), min_size=1, max_size=4),
        st.sampled_from(["int", "float", "bool", "mixed"]),
        st.one_of(st.none(), json_scalars, st.just([]), st.just([1, 2])),
        st.integers(0, 10**6),
    )
    def check(shape: list[int], kind: str, swap: Any, where: int) -> None:
        size = int(np.prod(shape))
        layouts: dict[str, list[Any]] = {
            "int": list(range(size)),
            "float": [i / 7 for i in range(size)],
            "bool": [i % 2 == 0 for i in range(size)],
            "mixed": [i if i % 2 else i / 3 for i in range(size)],
        }
        values = layouts[kind]
        if size and swap is not None:
            values[where % size] = swap
        layer = _nest(values, shape) if size else []
        decode_guarded(JSON, orjson.dumps([layer]))
        _count(figures, JSON.name)

    check()


def _nest(values: list[Any], shape: list[int]) -> Any:
    if len(shape) == 1:
        return values
    step = len(values) // shape[0]
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


# -- crafted one-offs: huge claims, deep nesting, pickles -----------------------------------


def _peak_of(call: Any) -> int:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    call()
    return tracemalloc.get_traced_memory()[1] - before


def test_msgpack_headers_claiming_huge_tensors_are_refused_before_allocating(
    figures: Figures,
) -> None:
    data = bytes(64)
    claims = [
        # 10^12 float64 elements, consistently described: refused as truncated.
        msgpack_descriptor("a", "float64", [10**6, 10**6], 0, 8 * 10**12, 0),
        # The same shape with nbytes understated: refused as inconsistent.
        msgpack_descriptor("a", "float64", [10**6, 10**6], 0, 8, crc32(data[:8])),
        # A zero dimension beside dimensions numpy cannot index.
        msgpack_descriptor("a", "float64", [0, 2**63, 2**63], 0, 0, 0),
        msgpack_descriptor("a", "float64", [0, 10**18, 10**18], 0, 0, 0),
        msgpack_descriptor("a", "float64", [1] * 65, 0, 8, crc32(data[:8])),
    ]
    for claim in claims:
        for version in (1, 2):
            body = msgpack_body(msgpack_header([claim], version), data)
            assert decode_guarded(MSGPACK, body) is None, (version, claim)
    # Container and string lengths far beyond the body: msgpack must not pre-allocate.
    for prefix in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"):
        body = prefix + bytes(16)
        assert _peak_of(lambda body=body: decode_guarded(MSGPACK, body)) < BUDGET_BASE
    _count(figures, MSGPACK.name, 2 * len(claims) + 3)


def test_npz_headers_claiming_huge_tensors_are_refused_before_allocating(
    figures: Figures,
) -> None:
    manifest = manifest_entry({"names": ["a"], "dtypes": ["float64"]})
    for shape in [(10**6, 10**6), (10**8,), (2**62,), (2**63 - 1, 2), (0, 2**63 - 1, 4)]:
        archive = npz_archive(
            [("manifest.npy", manifest), ("t0.npy", npy_entry("<f8", shape, bytes(64)))]
        )
        body = npz_body(archive)
        assert _peak_of(lambda body=body: decode_guarded(NPZ, body)) < BUDGET_BASE, shape
    # A zip entry claiming far more bytes than the archive holds.
    oversized = bytearray(
        npz_archive([("manifest.npy", manifest), ("t0.npy", npy_entry("<f8", (8,), bytes(64)))])
    )
    central = oversized.rfind(b"PK\x01\x02")
    oversized[central + 24 : central + 28] = (2**32 - 2).to_bytes(4, "little")  # uncompressed size
    assert decode_guarded(NPZ, npz_body(bytes(oversized))) is None
    _count(figures, NPZ.name, 6)


def test_nesting_is_bounded_in_every_codec(figures: Figures) -> None:
    # json: layers nested far deeper than numpy's 64 dimensions, as a Python value...
    for depth in (65, 1000, 100_000):
        assert decode_guarded(JSON, b"[]", value=[deep_list(depth)]) is None
    # ... and as JSON text, through every path that parses a document (orjson refuses
    # more than 1024 levels; numpy more than 64 dimensions).
    for depth in (65, 100, 1000, 100_000):
        text = b"[" + b"[" * depth + b"1" + b"]" * depth + b"]"
        assert decode_guarded(JSON, text) is None, depth
    # msgpack: a header nested 10^5 arrays deep.
    for depth in (1000, 100_000):
        assert decode_guarded(MSGPACK, deep_msgpack(depth)) is None
    # npz-b64: a manifest nested 10^5 deep.
    deep = b"[" * 100_000 + b"]" * 100_000
    archive = npz_archive([("manifest.npy", npy_entry("|u1", (len(deep),), deep))])
    assert decode_guarded(NPZ, npz_body(archive)) is None
    _count(figures, JSON.name, 7)
    _count(figures, MSGPACK.name, 2)
    _count(figures, NPZ.name, 1)


def test_json_fast_paths_agree_with_orjson_on_ragged_and_empty_layers(figures: Figures) -> None:
    # Found by the atheris campaign: [[], [0]] was read as an empty (2, 0) layer by the
    # whole-document path, dropping the 0, where orjson + decode refuse it as ragged.
    documents = [
        b"[[[], [0]]]",
        b"[[[0], []]]",
        b"[[[], []]]",
        b"[[], 3, [[]]]",
        b"[[[[]], [[0]]]]",
        b"[[[], [[]]]]",
        b"[[1, [2]]]",
        b"[[[1, 2], [3]]]",
        b"[[[1, 2], [3, [4]]]]",
    ]
    for document in documents:
        decode_guarded(JSON, document)  # compares every path with orjson + decode
    assert decode_guarded(JSON, b"[[[], [0]]]") is None
    _count(figures, JSON.name, len(documents) + 1)


_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "pwned"


class _Hostile:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _record_unpickling, ()


def test_object_void_and_structured_dtypes_are_refused_and_nothing_unpickles(
    figures: Figures,
) -> None:
    import io

    pickled = io.BytesIO()
    np.save(pickled, np.array([_Hostile()], dtype=object), allow_pickle=True)
    manifest = manifest_entry({"names": ["a"], "dtypes": ["float64"]})
    bodies = [
        npz_body(npz_archive([("manifest.npy", manifest), ("t0.npy", pickled.getvalue())])),
        npz_body(
            npz_archive([("manifest.npy", manifest), ("t0.npy", npy_entry("<V8", (1,), bytes(8)))])
        ),
        npz_body(
            npz_archive(
                [("manifest.npy", manifest), ("t0.npy", npy_entry([("a", "<f8")], (1,), bytes(8)))]
            )
        ),
    ]
    for body in bodies:
        assert decode_guarded(NPZ, body) is None
    for tag in ("object", "O", "|O", "V8", "[('a', '<f8')]", "S4", "U3", "datetime64"):
        body = msgpack_body(
            msgpack_header([msgpack_descriptor("a", tag, [1], 0, 8, crc32(bytes(8)))]), bytes(8)
        )
        assert decode_guarded(MSGPACK, body) is None, tag
    # A pickle where the JSON codec expects numbers is just an unknown value.
    assert decode_guarded(JSON, orjson.dumps([[pickled.getvalue().hex()]])) is None
    assert _UNPICKLED == []
    _count(figures, NPZ.name, len(bodies))
    _count(figures, MSGPACK.name, 8)
    _count(figures, JSON.name, 1)


def test_zip_crcs_are_verified(figures: Figures) -> None:
    values = np.arange(100, dtype=np.float64)
    archive = bytearray(npz_archive_of(body_of(NPZ, [("a", values)])))
    at = archive.find(values[50:51].tobytes())
    archive[at] ^= 0x01
    with pytest.raises(Exception, match="CRC-32") as refused:
        NPZ.decode(orjson.loads(npz_body(bytes(archive))))
    assert type(refused.value).__name__ == "DecodeError"
    assert "corrupt" in str(refused.value)
    _count(figures, NPZ.name)
