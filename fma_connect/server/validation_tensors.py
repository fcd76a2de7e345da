"""Checking what is sent beside plain JSON layer lists: their names and their dtypes.

Plain layer lists carry neither; fma_connect's clients send them in their own fields
(``tensor_names``, ``initial_model_dtypes``; the stock service ignores both). Each
refusal is :class:`~.errors.HTTPError` 400 with a DRF-shaped body, as the checks of
:mod:`.validation` raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..codecs.base import Tensors
from ..dtypes import dtype_from_tag
from ..exceptions import DecodeError
from .errors import bad_request
from .jsonvalues import shown
from .mean import all_finite

__all__ = ["MAX_NAME_LENGTH", "cast_layers", "tensor_dtypes", "tensor_names"]

#: The longest tensor name accepted (torch's longest state_dict keys are ~100 characters).
MAX_NAME_LENGTH = 1024


def tensor_names(body: Mapping[str, Any], key: str, data: Any) -> list[str] | None:
    """Read the names of plain layer lists sent next to them (``tensor_names``).

    Plain JSON layer lists carry no names; fma_connect clients send them in this field
    (the stock service ignores it), so that updates are paired tensor by tensor by name,
    never by position alone.

    Returns:
        The names, or None when the field is absent or null.

    Raises:
        HTTPError: 400 when they are not unique non-empty strings.
    """
    names = body.get(key)
    if names is None:
        return None
    if not isinstance(names, list) or not all(
        isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH for name in names
    ):
        raise bad_request(
            key,
            f"Expected a list of tensor names (non-empty strings of at most {MAX_NAME_LENGTH} "
            f"characters), one per layer, got {shown(names)}.",
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise bad_request(key, f"Tensor names must be unique; {name!r} appears twice.")
        seen.add(name)
    return names


def tensor_dtypes(body: Mapping[str, Any], key: str) -> list[np.dtype[Any]] | None:
    """Read the dtypes of plain layer lists sent next to them (``initial_model_dtypes``).

    Plain JSON numbers carry no dtype: parsed, a float32 model becomes float64 (twice the
    bytes in every answer). fma_connect's AdminClient sends each layer's dtype tag in
    this field (the stock service ignores it).

    Returns:
        The dtypes, or None when the field is absent or null.

    Raises:
        HTTPError: 400 when it is not a list of dtype tags.
    """
    tags = body.get(key)
    if tags is None:
        return None
    if not isinstance(tags, list):
        raise bad_request(key, f"Expected a list of dtype tags, one per layer, got {shown(tags)}.")
    try:
        return [dtype_from_tag(tag) for tag in tags]
    except DecodeError as exc:
        raise bad_request(key, f"{exc}.") from exc


def cast_layers(tensors: Tensors, dtypes: list[np.dtype[Any]], key: str) -> Tensors:
    """Plain layers in the dtypes sent for them (see :func:`tensor_dtypes`).

    A float dtype takes the nearest value of each number, as ``np.array(layer, dtype)``
    does; an integer or bool dtype takes the numbers only if each is one of its values.

    Raises:
        HTTPError: 400 when the counts differ or a layer's numbers do not fit its dtype.
    """
    if len(dtypes) != len(tensors):
        raise bad_request(
            key, f"Expected one dtype per layer: {len(tensors)} layers, got {len(dtypes)} dtypes."
        )
    out: Tensors = []
    for i, ((name, array), dtype) in enumerate(zip(tensors, dtypes, strict=True)):
        with np.errstate(over="ignore", invalid="ignore"):
            cast = array.astype(dtype)
        if dtype.kind in "biu":
            fits = array.dtype.kind in "biu" and np.array_equal(cast.astype(array.dtype), array)
        else:
            fits = array.dtype.kind != "c" or dtype.kind == "c"
            fits = fits and all_finite(cast)
        if not fits:
            raise bad_request(
                key,
                f"Layer {i} ({name}) holds numbers that are not {dtype.name} values "
                f"(it holds {array.dtype.name} ones): send its dtype or other numbers.",
            )
        out.append((name, cast))
    return out
