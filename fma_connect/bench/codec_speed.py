"""Encode + decode time of one large synthetic update per scheme, against a 1 Gbit/s link.

Compression pays for itself on a link when encoding and decoding take less time than
the bytes it saves would: issue 12 asks for encode + decode of a 100M-parameter float32
update (400 MB) in at most half the 3.2 s its raw bytes take at 1 Gbit/s. Each scheme
encodes the same update (one copy, made once), the encoded chunks are joined into one
body as a receiver holds it (timed with the encode: a receiver needs it whole), and the
body is decoded. Memory stays at the update, one body and one decoded copy at a time.

A codec that works against a base (``uses_context = True``, see
``fma_connect.codecs.context``) encodes the update as it would in a federation: against
the aggregate it started from. The update is then that base plus a small step
(``STEP`` times standard normal noise, the base being standard normal), and the base is
a second copy in memory, made only when such a codec is measured.

The figures are wall times of this process, best of ``repeat`` runs: on a shared machine
they are indicative only. Each scheme's runs come right after a memcpy of the same bytes
into a fresh buffer, the ceiling of any pass over them, timed the same way: the report
gives encode + decode as a multiple of two such copies, next to the link target.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .._transport import dumps_json
from ..codecs.base import Codec, Tensors, decode_with
from ..codecs.context import CodecContext, ContextCodec, encode_with, uses_context
from ..registry import CodecRegistry
from .measure import make_model, timed
from .schemes import Scheme

__all__ = ["LINK_BITS_PER_SECOND", "SpeedResult", "link_seconds", "measure_speeds"]

#: The reference link of the target: 1 Gbit/s.
LINK_BITS_PER_SECOND = 1e9
#: A round's step relative to the weights, for codecs that encode against a base.
STEP = 0.01
#: The id the synthetic base goes by in a codec's context.
_BASE_ID = 1


def link_seconds(raw_bytes: int, bits_per_second: float = LINK_BITS_PER_SECOND) -> float:
    """How long ``raw_bytes`` take on the link (400 MB: 3.2 s at 1 Gbit/s)."""
    return raw_bytes * 8 / bits_per_second


@dataclass(frozen=True)
class SpeedResult:
    """One scheme's encode and decode of the synthetic update.

    Attributes:
        label: The scheme's label.
        codec: Its codec's wire name ("" when skipped).
        raw_bytes: Bytes of the update's tensors.
        wire_bytes: Bytes of the encoded body.
        encode_seconds: Encoding, the chunks joined into one body.
        decode_seconds: Decoding that body.
        encode_peak: Extra resident bytes while encoding (0 where not measurable).
        decode_peak: Extra resident bytes while decoding.
        skipped: Why the scheme was not measured, or None.
        memcpy_seconds: The ceiling, measured next to this scheme's runs: copying the
            update's bytes into a fresh buffer, as encode and decode each at least write
            their output.
    """

    label: str
    codec: str = ""
    raw_bytes: int = 0
    wire_bytes: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_peak: int = 0
    decode_peak: int = 0
    skipped: str | None = None
    memcpy_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """Encode + decode."""
        return self.encode_seconds + self.decode_seconds

    @property
    def throughput(self) -> float:
        """Raw megabytes (10^6 bytes) encoded and decoded per second of both."""
        return self.raw_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def memcpy_ratio(self) -> float:
        """Encode + decode time over two copies of the raw bytes (the floor: 1)."""
        return self.seconds / (2 * self.memcpy_seconds) if self.memcpy_seconds > 0 else 0.0

    @property
    def link_ratio(self) -> float:
        """Encode + decode time over the link time of the raw bytes (target: <= 0.5)."""
        return self.seconds / link_seconds(self.raw_bytes)


def measure_speeds(
    schemes: Iterable[Scheme],
    registry: CodecRegistry,
    params: int,
    *,
    repeat: int = 2,
    seed: int = 0,
    on_result: Callable[[SpeedResult], None] | None = None,
) -> list[SpeedResult]:
    """Time each scheme's codec on one synthetic float32 update of ``params`` parameters.

    Args:
        schemes: The schemes; one whose codec is not installed is skipped with a note.
        registry: The installed codecs.
        params: Parameters of the update (float32: 4 bytes each).
        repeat: Timed runs of each step (the best counts).
        seed: Seed of the update's values (standard normal).
        on_result: Called with each result as it is measured.
    """
    chosen = [(s, s.unavailable(registry)) for s in schemes]
    codecs = {s.label: s.make_codec(registry) for s, reason in chosen if reason is None}
    update = make_model(4 * params, seed)
    base: Tensors | None = None
    if any(uses_context(c) for c in codecs.values()):
        rng = np.random.default_rng(seed + 1)
        base, update = (
            update,
            [(n, a + STEP * rng.standard_normal(a.shape, a.dtype)) for n, a in update],
        )
    results = []
    for scheme, reason in chosen:
        if reason is not None:
            result = SpeedResult(scheme.label, skipped=reason)
        else:
            try:
                result = _measure(scheme.label, codecs.pop(scheme.label), update, base, repeat)
            except Exception as exc:  # one failing codec must not lose the others' figures
                result = SpeedResult(scheme.label, skipped=f"failed: {type(exc).__name__}: {exc}")
        results.append(result)
        if on_result is not None:
            on_result(result)
        gc.collect()  # the last body and decoded copy go before the next scheme's
    return results


def _context(base: Tensors | None) -> CodecContext:
    """A context holding ``base`` as the aggregate the update started from."""
    if base is None:
        return CodecContext()
    return CodecContext(base_aggregate=_BASE_ID, bases=lambda _: base)


def _measure(
    label: str, codec: Codec | ContextCodec, update: Tensors, base: Tensors | None, repeat: int
) -> SpeedResult:
    # A fresh context per run: a codec's state (a residual) must not carry between runs.
    make_context = (lambda: _context(base)) if uses_context(codec) else (lambda: None)
    copy, _ = timed(lambda: _memcpy(update), repeat, warmup=False)  # same page faults
    encode, body = timed(lambda: _body(codec, update, make_context()), repeat, warmup=False)
    decode, decoded = timed(lambda: _decode(codec, body, make_context()), repeat, warmup=False)
    del decoded
    return SpeedResult(
        label,
        codec.name,
        sum(a.nbytes for _, a in update),
        len(body),
        encode.seconds,
        decode.seconds,
        encode.peak_extra,
        decode.peak_extra,
        memcpy_seconds=copy.seconds,
    )


def _memcpy(tensors: Tensors) -> np.ndarray:
    """The tensors' bytes copied into one fresh buffer: what a pass over them costs."""
    body = np.empty(sum(a.nbytes for _, a in tensors), np.uint8)
    offset = 0
    for _, array in tensors:
        body[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
        offset += array.nbytes
    return body


def _body(
    codec: Codec | ContextCodec, tensors: Tensors, context: CodecContext | None
) -> memoryview:
    """The encoded payload as one buffer, as a receiver holds the request body."""
    payload = encode_with(codec, tensors, context or CodecContext())
    if codec.json_native:
        return memoryview(dumps_json(payload))
    views = [memoryview(chunk).cast("B") for chunk in payload]
    del payload  # views keep what they need; a generator's chunks are not held twice
    body = np.empty(sum(v.nbytes for v in views), np.uint8)
    offset = 0
    while views:
        view = views.pop(0)  # each chunk freed once copied
        body[offset : offset + view.nbytes] = np.frombuffer(view, np.uint8)
        offset += view.nbytes
    return body.data


def _decode(
    codec: Codec | ContextCodec, body: memoryview, context: CodecContext | None
) -> Sequence[tuple[str, Any]]:
    payload = orjson.loads(body) if codec.json_native else body
    return decode_with(codec, payload, context=context)  # type: ignore[arg-type]
