"""Contract checks and hypothesis strategies for codec authors (and for our own codecs).

Aggregator authors have :func:`check_aggregator` (see :mod:`fma_connect.aggregator_testing`).

A plugin's test suite needs one call::

    from fma_connect.testing import check_codec

    def test_my_codec_keeps_the_contract():
        check_codec(MyCodec())

It checks the codec's attributes, round-trips generated tensors through a simulated
wire (JSON text for JSON-native codecs, one joined buffer for binary ones) and feeds
``decode`` garbage, which must raise :class:`~fma_connect.exceptions.DecodeError` and
nothing else. Needs ``hypothesis`` (``pip install fma-connect[test]``).

What "round-trips" means follows the codec's flags: a lossless codec must return every
dtype numpy has (bfloat16 too, when ml_dtypes is installed), bit for bit, with names,
dtypes and shapes; a codec that is not lossless is fed finite real values only, and its
output is compared with ``tolerance``, matched by position. A lossy codec may state its
own error bound as a method ``tolerance(sent, received) -> bool``: ``check_codec`` uses
it when called without one (so a run over every installed codec checks each against its
own bound), and compares exactly when there is neither.

Binary payloads are decoded from each form a receiver may hold (``bytearray``,
``bytes``, read-only ``memoryview``), and ``encode`` must leave its input untouched.

A codec that uses a context (``uses_context = True``, a delta codec: see
:mod:`fma_connect.codecs.context`) is also round-tripped against generated bases: the
same tensors with other values, bases that lack some tensors or hold them in another
dtype or shape, and no base at all. Decoding against a base other than the one the
payload was encoded against must give back what was sent, or raise ``DecodeError``:
never other values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fma_connect.testing needs hypothesis: pip install 'fma-connect[test]'"
    ) from None

from ._transport import dumps_json
from .codecs.base import Codec, Tensors, codec_problem, read_tag
from .codecs.context import (
    CodecContext,
    ContextCodec,
    MissingBaseError,
    encode_with,
    uses_context,
)
from .exceptions import DecodeError

if TYPE_CHECKING:  # the server extra: imported only when check_aggregator runs
    from .server.aggregators import Aggregator

__all__ = [
    "BODY_FORMS",
    "bases_for",
    "check_aggregator",
    "check_codec",
    "check_round_trip",
    "holding",
    "lossless_dtypes",
    "real_dtypes",
    "tensor_lists",
    "tensors",
    "to_wire_and_back",
]

Tolerance = Callable[[np.ndarray, np.ndarray], bool]


def check_aggregator(
    aggregator: Aggregator,
    *,
    args: Any = None,
    max_examples: int = 50,
    order_matters: bool = False,
    robust_to: int = 0,
) -> None:
    """Run the aggregator contract on a reference-server aggregator; raise AssertionError
    on a breach.

    What it checks is listed in :mod:`fma_connect.aggregator_testing`, which needs the
    ``server`` extra (imported here only when called, so codec authors need not install it).

    Args:
        aggregator: The aggregator under test (see :mod:`fma_connect.server.aggregators`).
        args: The ``aggregator_args`` to run it with (None: its defaults).
        max_examples: Hypothesis examples per property.
        order_matters: Skip the check that the order of updates does not matter.
        robust_to: Check that this many poisoned updates (values 1e6 off) cannot move a
            coordinate out of the honest updates' range.
    """
    from .aggregator_testing import check_aggregator as check

    check(
        aggregator,
        args=args,
        max_examples=max_examples,
        order_matters=order_matters,
        robust_to=robust_to,
    )


#: What the contract checks: a codec, or a codec that takes a context.
AnyCodec = Codec | ContextCodec


def real_dtypes() -> list[np.dtype[Any]]:
    """Bool, every int/uint width, float16/32/64, and bfloat16 when ml_dtypes is installed."""
    names = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
    dtypes = [np.dtype(n) for n in [*names, "float16", "float32", "float64"]]
    try:
        import ml_dtypes
    except ImportError:
        return dtypes
    return [*dtypes, np.dtype(ml_dtypes.bfloat16)]


def lossless_dtypes() -> list[np.dtype[Any]]:
    """Every dtype a lossless codec must carry: :func:`real_dtypes` plus complex64/128."""
    return [*real_dtypes(), np.dtype("complex64"), np.dtype("complex128")]


@st.composite
def tensors(draw: st.DrawFn, dtypes: Sequence[np.dtype[Any]], finite: bool = False) -> np.ndarray:
    """An array of one of ``dtypes`` in any layout a user may hand over.

    Values are drawn as raw bits, so floats include NaN payloads, -0.0, infinities and
    subnormals (unless ``finite``); layouts include 0-d, empty, Fortran-order,
    non-contiguous and big-endian arrays.
    """
    dtype = draw(st.sampled_from(list(dtypes)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    bits = draw(hnp.arrays(np.uint8, (*shape, 2 * dtype.itemsize)))
    array = (bits & 1).astype(bool) if dtype.kind == "b" else bits.view(dtype)
    if finite and dtype.kind in "fV":
        with np.errstate(invalid="ignore"):
            array = np.where(np.isfinite(array.astype(np.float64)), array, 0).astype(dtype)
    array = array[..., 0]  # every other element: a non-contiguous view
    layout = draw(st.sampled_from(["c", "fortran", "strided", "big-endian"]))
    if layout == "strided":
        return array
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "big-endian" and dtype.kind in "iufc" and dtype.itemsize > 1:
        return array.astype(dtype.newbyteorder(">"))
    return array.copy(order="C")


@st.composite
def tensor_lists(draw: st.DrawFn, codec: AnyCodec) -> Tensors:
    """Named tensors suited to ``codec`` (all dtypes if lossless, finite reals otherwise)."""
    dtypes = lossless_dtypes() if codec.lossless else real_dtypes()
    arrays = draw(st.lists(tensors(dtypes, finite=not codec.lossless), max_size=5))
    names = draw(
        st.lists(
            st.text(min_size=1, max_size=12),
            min_size=len(arrays),
            max_size=len(arrays),
            unique=True,
        )
    )
    return list(zip(names, arrays, strict=True))


#: The forms a binary body may reach ``decode`` in (see :func:`to_wire_and_back`).
BODY_FORMS = ("bytearray", "bytes", "memoryview")


def to_wire_and_back(
    codec: AnyCodec,
    tensors: Sequence[tuple[str, np.ndarray]],
    form: str = "bytearray",
    context: CodecContext | None = None,
) -> Tensors:
    """Encode, pass through what a transport does, and decode.

    JSON-native payloads are serialised to JSON text and parsed back; binary payloads
    are joined into one buffer, as a receiver would read them.

    Args:
        codec: The codec under test.
        tensors: What to send.
        form: How a binary body reaches ``decode``: a ``bytearray`` (what the client
            reads into), ``bytes``, or a read-only ``memoryview``.
        context: For a codec that uses one: the context of both ends (default empty).
    """
    context = context if context is not None else CodecContext()
    payload = encode_with(codec, tensors, context)
    if codec.json_native:
        return _decode(codec, orjson.loads(dumps_json(payload)), context)
    body = bytearray()
    for chunk in payload:
        body += memoryview(chunk).cast("B")
    if form == "bytes":
        return _decode(codec, bytes(body), context)
    if form == "memoryview":
        return _decode(codec, memoryview(bytes(body)), context)
    if form != "bytearray":
        raise ValueError(f"form must be one of {BODY_FORMS}, got {form!r}")
    return _decode(codec, body, context)


def _decode(codec: AnyCodec, payload: Any, context: CodecContext) -> Tensors:
    """``codec.decode``, with ``context`` for a codec that uses one (the codec's own result)."""
    if isinstance(codec, ContextCodec) and uses_context(codec):
        return codec.decode(payload, context)
    assert isinstance(codec, Codec)
    return codec.decode(payload)


def _body(
    codec: AnyCodec, tensors: Sequence[tuple[str, np.ndarray]], context: CodecContext
) -> bytes:
    """A binary codec's body for ``tensors``, joined."""
    body = bytearray()
    for chunk in encode_with(codec, tensors, context):
        body += memoryview(chunk).cast("B")
    return bytes(body)


def holding(aggregate: int, tensors: Sequence[tuple[str, np.ndarray]]) -> CodecContext:
    """A context for a delta against ``aggregate``, whose tensors are ``tensors``."""

    def bases(wanted: int | None) -> Sequence[tuple[str, np.ndarray]]:
        if wanted != aggregate:
            raise MissingBaseError(wanted)
        return tensors

    return CodecContext(base_aggregate=aggregate, bases=bases)


@st.composite
def bases_for(draw: st.DrawFn, sent: Tensors, codec: AnyCodec) -> Tensors:
    """A base for ``sent``: per tensor the same dtype and shape with other values (some
    equal, as after a round of training), or missing, or another dtype or shape; and
    tensors ``sent`` lacks."""
    dtypes = lossless_dtypes() if codec.lossless else real_dtypes()
    out: Tensors = []
    for name, array in sent:
        kind = draw(st.sampled_from(["close", "close", "other", "missing", "mismatched"]))
        if kind == "missing":
            continue
        if kind == "mismatched":
            out.append((name, draw(tensors(dtypes, finite=not codec.lossless))))
            continue
        native = np.ascontiguousarray(array, array.dtype.newbyteorder("="))
        if codec.lossless:  # any bits at all
            noise = draw(hnp.arrays(np.uint8, native.nbytes)).view(native.dtype)
            noise = noise.reshape(array.shape)
        elif native.dtype.kind == "f":  # finite values the codec is fed: changes it can send
            factor = draw(st.sampled_from([0.0, 0.5, -1.0]))
            noise = (native.astype(np.float64) * factor).astype(native.dtype)
        else:
            noise = native.copy()
        if kind == "close" and array.size:  # the same values but a few
            keep = draw(hnp.arrays(np.bool_, array.shape))
            noise = np.where(keep, native, noise)
        out.append((name, noise))
    extra = draw(st.lists(tensors(dtypes, finite=not codec.lossless), max_size=2))
    names = {name for name, _ in sent}
    out += [(f"extra.{i}", a) for i, a in enumerate(extra) if f"extra.{i}" not in names]
    return out


def check_round_trip(
    codec: AnyCodec,
    sent: Sequence[tuple[str, np.ndarray]],
    tolerance: Tolerance | None = None,
    form: str = "bytearray",
    context: CodecContext | None = None,
) -> None:
    """Assert that ``sent`` comes back through ``codec`` as its flags promise.

    Args:
        codec: The codec under test.
        sent: What to send.
        tolerance: For a lossy codec, ``tolerance(sent, received)``; default the
            codec's own ``tolerance`` method if it has one, else exact equality.
        form: How a binary body reaches ``decode`` (see :func:`to_wire_and_back`).
        context: For a codec that uses one (see :func:`holding`).
    """
    tolerance = tolerance if tolerance is not None else _own_tolerance(codec)
    snapshot = [_bits(array) for _, array in sent]
    received = to_wire_and_back(codec, sent, form, context)
    for (name, array), original in zip(sent, snapshot, strict=True):
        assert _bits(array) == original, f"encode modified the caller's tensor {name!r}"
    assert len(received) == len(sent), f"sent {len(sent)} tensors, received {len(received)}"
    # Plain JSON lists alone carry no names and flatten empty shapes: every other codec,
    # lossy or not, gives back each tensor's name and shape.
    structured = codec.name != "json"
    for i, ((name, before), (got_name, after)) in enumerate(zip(sent, received, strict=True)):
        assert isinstance(after, np.ndarray), f"tensor {i} decoded to {type(after)}"
        if structured:
            assert got_name == name, f"tensor {i}: sent name {name!r}, received {got_name!r}"
            assert after.shape == before.shape, f"{name!r}: sent {before.shape}, got {after.shape}"
        if codec.lossless:
            assert after.dtype == before.dtype.newbyteorder("="), (
                f"{name!r}: sent {before.dtype}, received {after.dtype}"
            )
            assert _bits(after) == _bits(before), f"{name!r}: bytes differ"
            continue
        assert after.size == before.size, f"tensor {i}: sent {before.size} values, got {after.size}"
        restored = after.reshape(before.shape)
        if tolerance is None:
            exact = restored.astype(before.dtype)
            assert _bits(exact) == _bits(before), f"tensor {i}: values differ"
        else:
            assert tolerance(before, restored), f"tensor {i}: outside the codec's tolerance"


def _own_tolerance(codec: AnyCodec) -> Tolerance | None:
    own = getattr(codec, "tolerance", None)
    return own if callable(own) else None


def _bits(array: np.ndarray) -> bytes:
    little = array.astype(array.dtype.newbyteorder("<")) if array.dtype.byteorder == ">" else array
    return np.ascontiguousarray(little).tobytes()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def check_codec(
    codec: AnyCodec, *, max_examples: int = 100, tolerance: Tolerance | None = None
) -> None:
    """Run the whole codec contract on ``codec``; raise AssertionError on a breach.

    Args:
        codec: The codec under test.
        max_examples: Hypothesis examples per property.
        tolerance: For codecs that are not lossless: ``tolerance(sent, received)`` says
            whether a received tensor is close enough; default the codec's own
            ``tolerance`` method if it has one, else exact equality.
    """
    assert isinstance(codec, Codec), f"{codec!r} lacks the codec attributes"
    problem = codec_problem(codec)
    assert problem is None, f"codec {codec!r}: {problem}"
    if codec.json_native and codec.name != "json":
        # Only plain lists are untagged: a receiver tells every other JSON payload by its tag.
        tagged = read_tag(codec.encode([("t", np.zeros(2, np.float32))]))
        assert tagged is not None and tagged[0] == codec.name, (
            f"a JSON-native codec must encode to a tagged object "
            f'{{"codec": "{codec.name}", "format_version": N, "payload": ...}}'
        )
    run = settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    forms = st.just("bytearray") if codec.json_native else st.sampled_from(BODY_FORMS)

    @run
    @given(tensor_lists(codec), forms)
    def round_trips(sent: Tensors, form: str) -> None:
        check_round_trip(codec, sent, tolerance, form)

    garbage: st.SearchStrategy[Any] = _json_values if codec.json_native else st.binary(max_size=512)

    @run
    @given(garbage)
    def refuses_garbage(payload: Any) -> None:
        with contextlib.suppress(DecodeError):
            _decode(codec, payload, holding(1, []))

    @run
    @given(tensor_lists(codec), st.data())
    def refuses_damage(sent: Tensors, data: st.DataObject) -> None:
        # A truncated or bit-flipped binary body decodes to nothing but DecodeError.
        if codec.json_native:
            return
        context = holding(1, data.draw(bases_for(sent, codec))) if uses_context(codec) else None
        body = _body(codec, sent, context or CodecContext())
        if not body:
            return
        cut = data.draw(st.integers(0, len(body) - 1))
        flip = data.draw(st.integers(0, len(body) - 1))
        damaged = bytearray(body)
        damaged[flip] ^= 1 << data.draw(st.integers(0, 7))
        for payload in (body[:cut], damaged):
            with contextlib.suppress(DecodeError):
                _decode(codec, payload, context or CodecContext())

    @run
    @given(tensor_lists(codec), st.data(), forms)
    def round_trips_against_a_base(sent: Tensors, data: st.DataObject, form: str) -> None:
        check_round_trip(
            codec, sent, tolerance, form, holding(1, data.draw(bases_for(sent, codec)))
        )

    @run
    @given(tensor_lists(codec), st.data())
    def another_base_is_refused(sent: Tensors, data: st.DataObject) -> None:
        # Encoded against one base, decoded against another: what was sent, or an error.
        base, other = data.draw(bases_for(sent, codec)), data.draw(bases_for(sent, codec))
        payload = _body(codec, sent, holding(1, base))
        try:
            received = _decode(codec, payload, holding(1, other))
        except DecodeError:
            return
        assert len(received) == len(sent)
        for (name, before), (_, after) in zip(sent, received, strict=True):
            assert _bits(after) == _bits(before), f"{name!r} decoded against another base"

    round_trips()
    refuses_garbage()
    refuses_damage()
    if uses_context(codec):
        round_trips_against_a_base()
        if codec.lossless and not codec.json_native:
            another_base_is_refused()
