"""Small HTTP helpers shared by the routes: JSON in and out, body spooling, pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .blobs import BlobWriter
from .errors import HTTPError, bad_request, detail, not_found
from .limits import JSON_BODY_BYTES
from .service import Service
from .store_core import Row

__all__ = [
    "JSONResponse",
    "body_limit",
    "drain",
    "paginate",
    "read_json",
    "service",
    "spool",
]

JSON = "application/json"


class JSONResponse(Response):
    """A JSON response written by orjson."""

    media_type = JSON

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content)


def service(request: Request) -> Service:
    """The :class:`Service` behind the app."""
    found: Service = request.app.state.service
    return found


def body_limit(request: Request) -> int:
    """The largest request body the app accepts (an update), in bytes."""
    limit: int = request.app.state.max_body_bytes
    return limit


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lowercased ('' if none)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json(
    request: Request, *, empty_ok: bool = False, limit: int = JSON_BODY_BYTES
) -> dict[str, Any]:
    """Read a JSON object body into memory (an empty body is ``{}`` when ``empty_ok``).

    Args:
        request: The request.
        empty_ok: Whether an empty body is ``{}`` (else 400).
        limit: The route's cap on the body, lowered to the app's ``max_body_bytes``;
            the default suits bodies of a few fields.

    Raises:
        HTTPError: 415 not JSON, 413 too large, 400 malformed or not an object.
    """
    limit = min(limit, body_limit(request))
    _check_length(request, limit)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise _too_large(request, limit, len(chunks))
    if not chunks.strip():
        if empty_ok:
            return {}
        raise bad_request("non_field_errors", "No data provided.")
    kind = media_type(request)
    if kind != JSON and not kind.endswith("+json"):
        raise detail(415, f'Unsupported media type "{kind}" in request.', accepted=[JSON])
    try:
        body = orjson.loads(chunks)
    except orjson.JSONDecodeError as exc:
        raise detail(400, f"JSON parse error - {exc}") from exc
    if not isinstance(body, dict):
        raise bad_request(
            "non_field_errors",
            f"Invalid data. Expected a dictionary, but got {type(body).__name__}.",
        )
    return body


async def spool(request: Request, writer: BlobWriter, hasher: Any = None) -> None:
    """Stream the request body into ``writer`` (never holding it in memory).

    Args:
        request: The request.
        writer: Where the body goes.
        hasher: A ``hashlib`` hash to feed the body to as it arrives (a signed update's
            digest), or None.

    Raises:
        HTTPError: 413 when the body exceeds the app's limit.
    """
    limit = body_limit(request)
    _check_length(request, limit)
    async for chunk in request.stream():
        writer.write(chunk)
        if hasher is not None:
            hasher.update(chunk)
        if writer.nbytes > limit:
            raise _too_large(request, limit, writer.nbytes)


async def drain(request: Request) -> None:
    """Read and drop what is left of the request body (no-op if it was read).

    Answering before a large body is read would make the server close the connection
    while the client is still sending, and the client would see a broken connection
    instead of the answer.
    """
    try:
        async for _ in request.stream():
            pass
    except RuntimeError:  # the stream was consumed already
        pass


def paginate(
    request: Request,
    kind: str,
    filters: Mapping[str, Any],
    *,
    default: int,
    maximum: int,
) -> list[Row]:
    """Return the page of rows ``?page=`` and ``?page_size=`` ask for, newest first.

    Raises:
        HTTPError: 404 ``Invalid page.`` for a page that is not a positive integer or
            lies past the end (page 1 always exists).
    """
    try:
        page = int(request.query_params.get("page", "1"))
    except ValueError:
        page = 0
    try:
        size = min(max(int(request.query_params.get("page_size", default)), 1), maximum)
    except ValueError:
        size = default
    if page < 1:
        raise not_found("Invalid page.")
    rows, total = service(request).store.listing(kind, filters, size, (page - 1) * size)
    if page > 1 and (page - 1) * size >= total:
        raise not_found("Invalid page.")
    return rows


def query_int(request: Request, name: str) -> int | None:
    """An optional integer query parameter (a filter)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(name, f"A valid integer is required, got {raw!r}.") from None
    if not -(2**63) <= value < 2**63:
        raise bad_request(name, f"Expected a 64-bit integer, got {raw!r}.")
    return value


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(request, limit, int(declared), declared=True)


def _too_large(request: Request, limit: int, arrived: int, *, declared: bool = False) -> HTTPError:
    """413 naming the cap and what arrived (its Content-Length, or the bytes read so far)."""
    what = (
        f"its Content-Length is {arrived} bytes"
        if declared
        else f"{arrived} bytes arrived before the server stopped reading"
    )
    option = " (fma-connect serve --max-body-bytes)" if limit == body_limit(request) else ""
    return detail(
        413,
        f"Request body is larger than this server accepts ({limit} bytes) for "
        f"{request.method} {request.url.path}{option}: {what}.",
    )
