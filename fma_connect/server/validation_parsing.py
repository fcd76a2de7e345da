"""Parsing request input before its fields are checked: a JSON body that must be an
object, an integer in a query, a row id in a URL path.

Each refusal is :class:`~.errors.HTTPError` 400 with a DRF-shaped body, as the checks
of :mod:`.validation` raise; a path id too long for a row matches no route (404).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import orjson
from starlette.convertors import Convertor, register_url_convertor

from .errors import HTTPError, bad_request
from .jsonvalues import shown

__all__ = ["json_object", "optional_int", "register_path_ids"]

#: An integer as a query writes it: ASCII digits, no sign but "-", no "_" (``int()`` takes
#: "1_0" and other scripts' digits) and no more digits than ``int()`` reads by default.
_INTEGER = re.compile(rf"-?[0-9]{{1,{sys.int_info.default_max_str_digits}}}")


def json_object(raw: Any) -> dict[str, Any]:
    """Parse a JSON request body (bytes-like) that must be an object.

    Raises:
        HTTPError: 400 when it is not JSON, or not an object.
    """
    try:
        body = orjson.loads(memoryview(raw))
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, {"detail": f"JSON parse error - {exc}"}) from exc
    if not isinstance(body, dict):
        raise bad_request(
            "non_field_errors",
            f"Invalid data. Expected a dictionary, but got {type(body).__name__}.",
        )
    return body


def optional_int(raw: str | None, field: str) -> int | None:
    """Parse an integer query parameter (absent, empty or ``null`` -> None).

    Raises:
        HTTPError: 400 for anything but a plain integer (see :data:`_INTEGER`); one
            beyond 64 bits is an integer, refused by the checks of its field.
    """
    if raw is None or raw.strip().lower() in ("", "null", "none"):
        return None
    if not _INTEGER.fullmatch(raw.strip()):
        raise bad_request(field, f"A valid integer is required, got {shown(raw)}.")
    return int(raw)


class _RowId(Convertor[int]):
    """A row id in a URL path: 1 to 19 digits.

    SQLite ids are 64-bit, so a longer one names no row: it matches no route (404),
    instead of reaching ``int()``, which refuses more than 4300 digits.
    """

    regex = "[0-9]{1,19}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


def register_path_ids() -> None:
    """Make ``{name:id}`` in route paths a row id (see :class:`_RowId`); idempotent."""
    register_url_convertor("id", _RowId())
