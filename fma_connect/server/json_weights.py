"""JSON weights (an initial model's, or an update's ``data``) checked and stored.

What orjson cannot tell (an integer beyond 64 bits, read as a float) is looked for in
the text; every tensor must be finite, since the server averages them, and there must be
at least one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from ..codecs.base import Tensors
from ..exceptions import CodecError, TooManyTensorsError
from ..registry import CodecRegistry
from .blobs import BlobStore
from .errors import bad_request
from .limits import check_tensors_schema, too_many_tensors
from .mean import all_finite
from .store_core import NewBlob
from .structure import Structure, structure_of
from .weights_storage import decode_data

__all__ = ["NO_TENSORS", "not_finite", "store_json_weights"]

NO_TENSORS = "The update holds no tensors; send at least one."
#: A JSON integer literal of 19 digits or more (fraction and exponent digits excluded).
_LONG_INTEGER = re.compile(rb"(?<![\w.+-])-?[0-9]{19,}(?![0-9.eE])")


def store_json_weights(
    blobs: BlobStore,
    registry: CodecRegistry,
    max_tensors: int,
    value: Any,
    field: str,
    raw: Any = None,
    schema: Any = None,
    names: list[str] | None = None,
    *,
    digest: bool = False,
) -> tuple[NewBlob, Structure]:
    """Check and store JSON weights; return their blob and their structure.

    Args:
        blobs: Where they are stored.
        registry: The codecs they may use.
        max_tensors: Most tensors they may hold.
        value: The parsed weights.
        field: The request field they came in (for errors).
        raw: The request body they were parsed from, to find integers beyond 64 bits
            (which orjson turns into floats).
        schema: An ``update_schema`` to check the tensors' plain-lists form against.
        names: The names of plain layer lists, in order (see :func:`tensor_names`).
        digest: Also give the SHA-256 of the bytes stored (a signed update's).
    """
    try:
        # Plain layers and npz-b64 are counted before any array is made.
        codec, tensors = decode_data(value, registry, max_tensors=max_tensors)
    except TooManyTensorsError as exc:
        raise too_many_tensors(exc.count, exc.limit, field) from exc
    except CodecError as exc:
        raise bad_request(field, str(exc)) from exc
    if names is not None:
        if codec != "json":
            raise bad_request(
                "tensor_names",
                f"tensor_names name plain layer lists; a {codec} payload names its own "
                "tensors: drop tensor_names.",
            )
        if len(names) != len(tensors):
            raise bad_request(
                f"{field}_tensor_names" if field != "data" else "tensor_names",
                f"Expected one name per layer of {field}: {len(tensors)} names, got {len(names)}.",
            )
        tensors = [(name, array) for name, (_, array) in zip(names, tensors, strict=True)]
    check_tensors_schema(schema, tensors)
    problem = NO_TENSORS if not tensors else not_finite(tensors)
    if problem is not None:
        raise bad_request(field, problem)
    if codec == "json" and raw is not None:
        problem = _integer_beyond_64_bits(raw, tensors)
        if problem is not None:
            raise bad_request(field, problem)
    shape = structure_of(tensors)
    del tensors
    stored = orjson.dumps(value)
    sha256 = hashlib.sha256(stored).hexdigest() if digest else None
    filename, nbytes = blobs.write([stored])
    return NewBlob(codec, filename, nbytes, names, sha256), shape


def not_finite(tensors: Tensors) -> str | None:
    """Why weights cannot be averaged: a tensor holds NaN or infinity (else None)."""
    for name, array in tensors:
        if not all_finite(array):
            return (
                f"Tensor {name!r} holds NaN or infinite values; the server averages updates, "
                "so every value must be finite."
            )
    return None


def _integer_beyond_64_bits(raw: Any, tensors: Tensors) -> str | None:
    """Why plain JSON weights cannot be stored: an integer beyond int64 and uint64.

    orjson reads such integers as floats, so they can only be told apart from large
    floats in the text; the text is searched only when a float that large is there.
    """
    large = any(
        array.dtype.kind == "f" and array.size and max(array.max(), -array.min()) >= 2.0**63
        for _, array in tensors
    )
    if not large:
        return None
    for match in _LONG_INTEGER.finditer(memoryview(raw).cast("B")):
        if not -(2**63) <= int(match.group()) < 2**64:
            return (
                f"The integer {match.group().decode()} is beyond the 64-bit range of int64 "
                "and uint64; send it as a float (e.g. 1e20) or use a binary codec."
            )
    return None
