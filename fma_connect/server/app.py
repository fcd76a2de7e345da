"""The Starlette application of the reference server: routes, JSON errors, lifecycle.

Every error is answered as JSON, including unknown routes (404), wrong methods (405)
and unexpected failures (500). A GET to a known route without its trailing slash is
redirected (301) as the stock service does; other methods get a 404 that says so.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from ..plugins import default_codec_registry
from ..registry import CodecRegistry
from . import routes_models, routes_records
from .errors import NOT_FOUND, HTTPError
from .httputil import JSONResponse
from .limits import DEFAULT_MAX_TENSORS
from .rounds import AutoAggregate
from .service import Service

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_TENSORS", "create_app"]

#: Largest request body accepted by default (an update is streamed to disk, not held).
DEFAULT_MAX_BODY_BYTES = 16 << 30
log = logging.getLogger("fma_connect.server")


def create_app(
    data_dir: str | Path,
    *,
    registry: CodecRegistry | None = None,
    admin_token: str | None = None,
    auto_aggregate: AutoAggregate = "sync",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
) -> Starlette:
    """Build the server's ASGI app over a data directory (opened now, closed at shutdown).

    Args:
        data_dir: Where the database and blob files live; created if missing.
        registry: The codecs to accept and answer in; default: every installed codec.
        admin_token: The admin's token; default ``FMA_CONNECT_ADMIN_TOKEN``, else the
            stored one, else a new one (``app.state.service.admin_token`` holds it).
        auto_aggregate: ``sync`` (a round runs in the request that meets the model's
            requirement), ``background`` (in a worker thread) or ``off``.
        max_body_bytes: Largest request body; larger ones get 413 (from Content-Length
            before reading, or as soon as a chunked body grows past it).
        max_tensors: Most tensors an update or initial model may hold; more get 400.
    """
    service = Service(
        Path(data_dir),
        registry if registry is not None else default_codec_registry(),
        admin_token=admin_token,
        auto_aggregate=auto_aggregate,
        max_tensors=max_tensors,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            service.close()

    app = Starlette(
        routes=[*routes_models.ROUTES, *routes_records.ROUTES],
        exception_handlers={
            HTTPError: _http_error,
            HTTPException: _starlette_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found(request)
    if exc.status_code == 405:
        message = f'Method "{request.method}" not allowed.'
        return JSONResponse({"detail": message}, status_code=405, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    body = {"detail": f"Internal server error ({type(exc).__name__}); see the server log."}
    return JSONResponse(body, status_code=500)


def _not_found(request: Request) -> Response:
    path = request.url.path
    if not path.endswith("/"):
        scope = {**request.scope, "path": path + "/"}
        if any(route.matches(scope)[0] != Match.NONE for route in request.app.router.routes):
            if request.method in ("GET", "HEAD"):
                query = f"?{request.url.query}" if request.url.query else ""
                return RedirectResponse(path + "/" + query, status_code=301)
            message = f"{NOT_FOUND} Routes end with '/': {request.method} {path}/"
            return JSONResponse({"detail": message}, status_code=404)
    return JSONResponse({"detail": NOT_FOUND}, status_code=404)
