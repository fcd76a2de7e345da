"""The Starlette application of the reference server: routes, JSON errors, lifecycle.

Every error is answered as JSON, including unknown routes (404), wrong methods (405),
unexpected failures (500), a request body that stalls (408, see :mod:`.bounds`) and,
served by :func:`~fma_connect.server.protocol.server_config`, malformed HTTP. A GET to
a known route without its trailing slash is redirected (301) as the stock service does;
other methods get a 404 that says so. A client that disconnects in the middle of its
request is an ordinary event: one INFO line, and nothing of the request is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from ..plugins import default_codec_registry
from ..registry import CodecRegistry
from . import routes_identity, routes_models, routes_records, routes_uploads
from .bounds import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_HEADER_BYTES,
    BodyGuard,
    BodyProgress,
    BodyStalled,
    Bounds,
    default_max_connections,
)
from .deadlines import Clock
from .errors import NOT_FOUND, HTTPError, ObjectStoreError
from .httputil import JSONResponse
from .leases import DEFAULT_LEASE
from .limits import DEFAULT_MAX_TENSORS
from .rounds import AutoAggregate
from .service import Service
from .uploads import DEFAULT_EXPIRY

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
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_connections: int | None = None,
    max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    upload_expiry: float = DEFAULT_EXPIRY,
    upload_quota: int | None = None,
    database: str | None = None,
    blobs: str | None = None,
    s3_endpoint_url: str | None = None,
    round_lease: float = DEFAULT_LEASE,
    clock: Clock = time.time,
) -> Starlette:
    """Build the server's ASGI app over a data directory (opened now, closed at shutdown).

    Args:
        data_dir: Where the database and blob files live; created if missing.
        registry: The codecs to accept and answer in; default: every installed codec.
        admin_token: The admin's token; default ``FMA_CONNECT_ADMIN_TOKEN``, else the
            stored one, else a new one (``app.state.service.admin_token`` holds it).
        auto_aggregate: ``sync`` (a round runs in the request that meets the model's
            requirement), ``background`` (in a worker thread) or ``off``.
        max_body_bytes: Largest update (and initial model: the smaller of this and
            :data:`~fma_connect.server.limits.MODEL_BODY_BYTES`); other bodies take at
            most :data:`~fma_connect.server.limits.JSON_BODY_BYTES`. Larger ones get
            413 (from Content-Length before reading, or as soon as a chunked body grows
            past it).
        max_tensors: Most tensors an update or initial model may hold; more get 400.
        header_timeout: Seconds a request head may take to arrive whole (408).
        idle_timeout: Seconds of silence allowed while a body moves, either way: a
            request body gets 408, a response the client stops reading is aborted.
        max_connections: Most connections at once; more are answered 503 with
            ``Retry-After``. None: :func:`~fma_connect.server.bounds.default_max_connections`.
        max_connections_per_client: The same per client address (0: no cap).
        max_header_bytes: Largest request head (431).
        upload_expiry: Seconds a resumable upload lives after its last activity (see
            docs/UPLOADS.md); then it is refused and deleted.
        upload_quota: Most bytes one client's open resumable uploads may declare
            (None: twice ``max_body_bytes``).
        database: The metadata database: a ``postgresql://user:password@host:port/name``
            URL, which any number of replicas (servers started with the same URL, behind
            one load balancer) share; None: ``FMA_CONNECT_DATABASE``, else SQLite in
            ``data_dir`` (one server per directory). See docs/SCALING.md.
        blobs: Where payloads live: ``s3://bucket/prefix``, or None
            (``FMA_CONNECT_BLOBS``, else ``data_dir/blobs``).
        s3_endpoint_url: The S3 endpoint for ``blobs`` (an S3-compatible store's URL).
        round_lease: Seconds a replica's lease on a running round lasts unless renewed:
            how soon another replica takes over the round of one that died.
        clock: The time now, for round deadlines, signed requests' timestamps (the
            ±300 s window) and enrolment tokens' expiry: ``time.time``; tests pass a
            clock they move (see :mod:`.policies`, docs/SECURITY.md).

    The connection-level bounds (all but ``idle_timeout`` on request bodies) are
    enforced by the server that runs the app: build its config with
    :func:`~fma_connect.server.protocol.server_config`.

    Raises:
        ValueError: a bound out of range (see :class:`~fma_connect.server.bounds.Bounds`).
    """
    if max_connections is None:
        max_connections = default_max_connections()
    bounds = Bounds(
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_client,
        max_header_bytes=max_header_bytes,
    )
    service = Service(
        Path(data_dir),
        registry if registry is not None else default_codec_registry(),
        admin_token=admin_token,
        auto_aggregate=auto_aggregate,
        max_tensors=max_tensors,
        upload_expiry=upload_expiry,
        upload_quota=upload_quota if upload_quota is not None else 2 * max_body_bytes,
        # Held requests may take half the connections: the others stay free to serve.
        max_held=max(1, max_connections // 2),
        database=database,
        blobs=blobs,
        s3_endpoint_url=s3_endpoint_url,
        round_lease=round_lease,
        clock=clock,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            service.close()

    app = Starlette(
        routes=[
            *routes_models.ROUTES,
            *routes_records.ROUTES,
            *routes_uploads.ROUTES,
            *routes_identity.ROUTES,
        ],
        middleware=[Middleware(BodyGuard, idle_timeout=bounds.idle_timeout)],
        exception_handlers={
            HTTPError: _http_error,
            HTTPException: _starlette_error,
            BodyStalled: _body_stalled,
            ClientDisconnect: _client_gone,
            ObjectStoreError: _store_away,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    app.state.bounds = bounds
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    if exc.status >= 500:  # the server's fault (e.g. a stored blob that does not decode)
        log.error("%s %s answered %s: %s", request.method, request.url.path, exc.status, exc.body)
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _not_found(request)
    if exc.status_code == 405:
        message = f'Method "{request.method}" not allowed.'
        return JSONResponse({"detail": message}, status_code=405, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _body_stalled(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyStalled)
    log.info(
        "%s %s from %s: %s Answered 408.", request.method, request.url.path, _who(request), exc
    )
    # The rest of the body may still come: close rather than read it as the next request.
    headers = {"Connection": "close"}
    return JSONResponse({"detail": str(exc)}, status_code=408, headers=headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    progress = BodyProgress.of(request.scope)
    received = "" if progress is None else f" after {progress.received} bytes of its body"
    log.info(
        "%s %s: client %s disconnected%s; nothing kept",
        request.method,
        request.url.path,
        _who(request),
        received,
    )
    return Response(status_code=499)  # nobody reads it: the server drops it


async def _store_away(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: the object store failed: %s", request.method, request.url.path, exc)
    body = {"detail": "The payload store is unavailable; try again shortly."}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


def _who(request: Request) -> str:
    client = request.client
    who = f"{client.host}:{client.port}" if client is not None else "unknown"
    uuid = request.headers.get("client-uuid")
    return f"{who} (CLIENT-UUID {uuid[:64]!r})" if uuid else who


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
