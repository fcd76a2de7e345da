"""The ``json`` codec: plain nested lists, one per tensor, in layer order.

This is the form the stock FMA service aggregates (``avg_values_if_data`` and
``average_layers`` average a list of layers element-wise), so it is the default.
Plain JSON cannot carry names, dtypes or the shape of an empty tensor: the client
keeps those in its :class:`~fma_connect.spec.Spec` and restores them on the way back.
Finite real values come back exactly (float32 and float16 are written in their
shortest round-tripping form); NaN and infinities are refused, because JSON has no
spelling for them and orjson would silently write ``null``; complex tensors are refused.

Size: orjson cannot parse a document of 2 GiB or more (and crashes writing one), so
payloads whose JSON would reach :data:`MAX_DOCUMENT_BYTES` are refused on both sides
with an error that names the size; send those with a binary codec (``msgpack``).

Speed: :meth:`JsonListsCodec.decode_document` parses a whole document (bytes) into
arrays. With pysimdjson installed (``pip install 'fma-connect[fast]'``) the numbers of
each layer go straight into a float64 or int64 buffer without a Python object per
number, bit-exact (correctly rounded, as orjson) and checked to be rectangular;
anything it does not handle (bools, huge integers, other shapes of document) takes the
orjson path, which defines the results.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from ..dtypes import tag_of
from ..exceptions import DecodeError, EncodeError
from ..hookspecs import hookimpl
from .base import Tensors, check_max_tensors

__all__ = ["MAX_DOCUMENT_BYTES", "JsonListsCodec", "check_document_size", "release_parser"]

#: Smallest JSON document refused: orjson fails on (or crashes writing) 2 GiB and more.
MAX_DOCUMENT_BYTES = 2 << 30
_MAX_NDIM = 64  # numpy's limit on dimensions
_SAMPLE = 4096


_local = threading.local()


def release_parser() -> None:
    """Free this thread's JSON parser and the buffers it keeps for the next document.

    The fast path reuses one pysimdjson parser per thread, because allocating its
    buffers afresh costs more than the parse; they stay as large as the largest
    document the thread decoded until this is called (or the thread ends).
    """
    _local.__dict__.pop("parser", None)


def _parser(simdjson: Any) -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def check_document_size(nbytes: int, *, encoding: bool) -> None:
    """Refuse a JSON document of ``nbytes`` that orjson could not handle.

    Raises:
        EncodeError / DecodeError: ``nbytes`` is :data:`MAX_DOCUMENT_BYTES` or more.
    """
    if nbytes < MAX_DOCUMENT_BYTES:
        return
    error = EncodeError if encoding else DecodeError
    verb = "would take about" if encoding else "is"
    raise error(
        f"the JSON document {verb} {nbytes:,} bytes ({nbytes / 2**30:.2f} GiB); JSON parsers "
        f"such as orjson accept less than {MAX_DOCUMENT_BYTES:,} bytes: send weights this "
        "large with a binary codec, e.g. WebClient(codec='msgpack')"
    )


class JsonListsCodec:
    """Plain JSON lists; wire-compatible with the stock FMA Django service."""

    name = "json"
    media_type = "application/json"
    lossless = False
    json_native = True

    def encode(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
        """Return one JSON-ready value per tensor (arrays are written by orjson).

        Raises:
            EncodeError: a tensor cannot be written, or the document would be too large
                for JSON parsers (estimated from a sample; see :data:`MAX_DOCUMENT_BYTES`).
        """
        layers = [_json_ready(name, array) for name, array in tensors]
        check_document_size(estimate_size(layers), encoding=True)
        return layers

    def decode_document(self, document: Any) -> Tensors:
        """Decode a whole JSON document (bytes-like) holding the list of layers.

        Raises:
            DecodeError: not JSON, not a list of rectangular numeric layers, or too large.
        """
        view = memoryview(document).cast("B")
        check_document_size(view.nbytes, encoding=False)
        fast = fast_layers(view)
        if fast is not None:
            return fast[1]
        try:
            value = orjson.loads(view)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"json payload is not valid JSON: {exc}") from exc
        return self.decode(value)

    def decode(self, payload: Any, *, max_tensors: int | None = None) -> Tensors:
        """Turn a list of layers (nested lists of numbers) into arrays named by position.

        Raises:
            TooManyTensorsError: there are more than ``max_tensors`` layers (checked
                before any array is made).
            DecodeError: ``payload`` is not a list of rectangular numeric layers.
        """
        if not isinstance(payload, list):
            raise DecodeError(
                f"json payload must be a list of layers, got {type(payload).__name__}"
            )
        check_max_tensors(len(payload), max_tensors)
        return [(str(i), _layer_array(i, layer)) for i, layer in enumerate(payload)]


def estimate_size(layers: Sequence[Any]) -> int:
    """Estimate the bytes orjson writes for ``layers``, from a sample of each large one."""
    total = 2
    for layer in layers:
        if not isinstance(layer, np.ndarray) or layer.size <= _SAMPLE:
            total += len(orjson.dumps(layer, option=orjson.OPT_SERIALIZE_NUMPY)) + 1
            continue
        flat = layer.reshape(-1)
        step = flat.size // _SAMPLE
        sample = np.ascontiguousarray(flat[: step * _SAMPLE : step])
        per_item = len(orjson.dumps(sample, option=orjson.OPT_SERIALIZE_NUMPY)) / sample.size
        rows = math.prod(layer.shape[:-1]) if layer.ndim > 1 else 1
        # 3% over the sample's rate: orjson crashes writing 2 GiB, so err on the high side.
        total += math.ceil(per_item * flat.size * 1.03) + 2 * rows + 1
    return total


def _json_ready(name: str, array: np.ndarray) -> Any:
    tag_of(array.dtype, name)
    if array.dtype.kind == "c":
        raise EncodeError(
            f"tensor {name!r} is complex ({array.dtype}); plain JSON lists cannot carry "
            "complex numbers: use a binary codec such as 'msgpack'"
        )
    if array.dtype.kind == "V" or array.dtype.name == "float16":
        # ml_dtypes floats (bfloat16...) are opaque to orjson; float32 holds them exactly.
        # float16 too: orjson writes it via float32 anyway, this only makes it explicit.
        array = array.astype(np.float32)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise EncodeError(
                f"tensor {name!r} holds {bad} NaN or infinite value(s); JSON cannot represent "
                "them: clean the weights, or use a binary codec such as 'msgpack'"
            )
    if array.ndim == 0:
        return array.item()
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _layer_array(index: int, layer: Any) -> np.ndarray:
    if isinstance(layer, bool | int | float):
        layer = [layer]
        scalar = True
    elif isinstance(layer, list):
        scalar = False
    else:
        raise DecodeError(
            f"json layer {index} must be a number or a nested list of numbers, "
            f"got {type(layer).__name__}"
        )
    try:
        array = np.asarray(layer)
    except (ValueError, OverflowError) as exc:
        raise DecodeError(
            f"json layer {index} is not a rectangular list of numbers: {exc}"
        ) from exc
    if array.dtype.kind == "f" and array.size and np.abs(array).max() >= 2.0**63:
        array = _exact_uint64(array, layer)
    if array.dtype.kind not in "biuf":
        raise DecodeError(
            f"json layer {index} must hold numbers only, got elements of type {array.dtype}"
        )
    return array.reshape(()) if scalar else array


def _exact_uint64(array: np.ndarray, layer: list[Any]) -> np.ndarray:
    # numpy reads integers above int64's range as float64; uint64 weights need them exact.
    values = np.array(layer, dtype=object)
    if all(type(v) is int and 0 <= v < 2**64 for v in values.flat):
        return values.astype(np.uint64)
    return array


def fast_layers(
    document: memoryview, field: str | None = None
) -> tuple[dict[str, Any], Tensors] | None:
    """Decode the plain layer lists of a JSON document without Python floats, or None.

    Args:
        document: The whole document.
        field: None when the document is the list of layers; else the key of the
            layers in a top-level object whose other values are all scalars.

    Returns:
        The other fields of the object (``{}`` without ``field``) and the tensors (named
        by position, dtypes as :meth:`JsonListsCodec.decode` gives), or None when the
        fast path does not apply (pysimdjson missing, other shapes of
        document, values it leaves to orjson); the caller then parses with orjson.
    """
    try:
        import simdjson
    except ImportError:
        return None
    try:
        root = _parser(simdjson).parse(document)
    except (ValueError, TypeError, RuntimeError):
        return None  # orjson reports what is wrong with it
    layers: Any = root
    fields: dict[str, Any] = {}
    if field is not None:
        if not isinstance(root, simdjson.Object) or field not in root:
            return None
        for key in root.keys():  # noqa: SIM118  (a simdjson Object, not a dict)
            # Scalars elsewhere and no "[" in a key: every "[" of the text is a layer's.
            if key != field and ("[" in key or not _is_scalar(root[key])):
                return None
            if key != field:
                fields[key] = root[key]
        layers = root[field]
    if not isinstance(layers, simdjson.Array):
        return None
    out: Tensors = []
    patterns = []
    for i, layer in enumerate(layers):
        decoded = _fast_layer(layer, simdjson.Array)
        if decoded is None:
            return None
        array, pattern = decoded
        out.append((str(i), array))
        patterns.append(pattern)
    # Shapes came from the first element of each list, and number counts match them; the
    # brackets and commas of the text must be exactly those of such rectangular lists,
    # so ragged lists ([[1, 2], [3]]) and nested ones ([[1, [2]]]) take the orjson path.
    if _structure(document) != b"[" + b",".join(patterns) + b"]":
        return None
    return fields, out


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float)


def _fast_layer(layer: Any, array_type: Any) -> tuple[np.ndarray, bytes] | None:
    """A layer's array and the brackets and commas its text must have, or None."""
    if isinstance(layer, bool) or not isinstance(layer, int | float | array_type):
        return None
    if not isinstance(layer, array_type):
        if isinstance(layer, int) and not -(2**63) <= layer < 2**63:
            return None
        return np.asarray(layer).reshape(()), b""
    shape: list[int] = []
    node: Any = layer
    while isinstance(node, array_type):
        shape.append(len(node))
        if not shape[-1]:
            break
        node = node[0]
    if len(shape) > _MAX_NDIM:  # orjson's path refuses it with a DecodeError
        return None
    pattern = _pattern(shape)
    count = math.prod(shape)
    if count == 0:  # [[], [0]] has the brackets and commas of [[], []]: orjson decides
        return None
    flat: np.ndarray
    try:
        flat = np.frombuffer(layer.as_buffer(of_type="i"), np.int64)
    except (TypeError, ValueError):
        try:
            flat = np.frombuffer(layer.as_buffer(of_type="d"), np.float64)
        except (TypeError, ValueError):
            return None  # bools, strings, nulls, numbers out of range: orjson decides
        if flat.size == count and not max(flat.max(), -flat.min()) < 2.0**63:
            return None  # maybe uint64 integers, which need exact parsing
    if flat.size != count:
        return None
    return flat.reshape(shape), pattern  # writable: it views simdjson's own buffer


def _pattern(shape: list[int]) -> bytes:
    """The brackets and commas of a rectangular nested list of ``shape``, in text order."""
    pattern = b""
    for depth, n in enumerate(reversed(shape)):
        # Innermost: n numbers and n - 1 commas; above: n copies of the level below.
        inner = ((pattern + b",") * n)[:-1] if depth else b"," * max(n - 1, 0)
        pattern = b"[" + inner + b"]"
    return pattern


_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b"[],")))


def _structure(document: memoryview) -> bytes:
    """The document's brackets and commas between its first "[" and its last "]"."""
    step = 16 << 20  # slices keep the copies small and warm
    found = b"".join(
        document[i : i + step].tobytes().translate(None, _NOT_STRUCTURE)
        for i in range(0, document.nbytes, step)
    )
    first, last = found.find(b"["), found.rfind(b"]")
    return found[first : last + 1] if first >= 0 else b""


@hookimpl
def fma_connect_register_codecs(registry: Any) -> None:
    """Register the ``json`` codec."""
    registry.add(JsonListsCodec())
