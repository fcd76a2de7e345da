"""Routes of updates, aggregates, artifacts and scores, and the URLs that serve weights.

Admins read everything; a federated client reads the aggregates and artifacts of the
models it is registered with, and its own updates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..codecs.context import CodecContext
from ..exceptions import UnknownCodecError
from .auth import Identity, authenticate
from .errors import HTTPError, bad_request, detail, forbidden, not_found
from .httputil import (
    JSON,
    JSONResponse,
    drain,
    media_type,
    paginate,
    query_int,
    read_json,
    service,
    spool,
)
from .routes_uploads import RESUMABLE_HEADER, UPLOADS_PATH
from .shapes import aggregate_json, artifact_json, score_json, update_json
from .signed import SignedUpdate, update_signature
from .store_core import Row
from .validation import query_fields
from .validation_parsing import register_path_ids
from .weights import weights_response
from .weights_negotiation import NOT_AN_AGGREGATE, NotAnAggregate, StoredStep, stored_step
from .weights_storage import ModelBases

__all__ = ["ROUTES"]

_PAGE = {"default": 10, "maximum": 20}
_MAX_KEY = 255


def _id(request: Request) -> int:
    value: int = request.path_params["id"]
    return value


def _identity(request: Request) -> Identity:
    identity = authenticate(request, service(request).store)
    if identity.user is None:
        identity.require_client()
    return identity


# -- updates ----------------------------------------------------------------------------


def updates_options(request: Request) -> Response:
    """OPTIONS /model_updates/: the media types an update may be sent in (``Accept-Post``),
    and where resumable uploads start (``FMA-Resumable-Uploads``).

    A client checks this before it sends an update in a codec that only this server
    decodes (a delta codec): the stock service lists none, so nothing is sent in vain.
    Any known client or the admin may ask.
    """
    _identity(request)
    svc = service(request)
    types = [JSON, *(info.codec.media_type for info in svc.registry if not info.codec.json_native)]
    headers = {
        "Allow": "GET, POST, OPTIONS",
        "Accept-Post": ", ".join(types),
        # Large binary updates may come in resumable chunks instead (docs/UPLOADS.md).
        RESUMABLE_HEADER: UPLOADS_PATH,
    }
    return Response(status_code=204, headers=headers)


async def post_update(request: Request) -> Response:
    """POST /model_updates/ (client): a JSON body, or a binary codec body with query fields.

    A request whose Idempotency-Key stored an update already is a replay: it passes the
    same checks of its form (media type, fields) as a fresh one, then gets the original
    update if it carries the same one, else 422.
    """
    svc = service(request)
    identity = await run_in_threadpool(authenticate, request, svc.store)
    client = identity.require_client()
    try:
        signature = update_signature(request.headers, identity.signer)
    except HTTPError:
        await drain(request)
        raise
    signed = None
    if signature is not None and identity.signer is not None:
        signed = SignedUpdate(client, identity.signer, signature)
    key = _idempotency_key(request)
    kind = media_type(request)
    codec = None
    query: dict[str, int | None] = {}
    if kind != JSON and not kind.endswith("+json"):
        try:
            codec = svc.registry.for_media_type(kind)
            query = query_fields(request.query_params)
        except UnknownCodecError:
            accepted = [JSON] + [
                i.codec.media_type for i in svc.registry if not i.codec.json_native
            ]
            await drain(request)
            raise detail(
                415, f'Unsupported media type "{kind}" in request.', accepted=accepted
            ) from None
        except HTTPError:
            await drain(request)
            raise
    if key is not None:
        existing = await run_in_threadpool(svc.store.update_by_key, client, key)
        if existing is not None:  # a retry gets the original update; another body a 422
            with svc.blobs.writer() as replayed:
                await spool(request, replayed)
                row = await run_in_threadpool(
                    svc.replay, existing, None if codec is None else codec.name, query, replayed
                )
            return JSONResponse(update_json(row), status_code=200)
    writer = svc.blobs.writer()
    try:
        if codec is None:
            await spool(request, writer)
            row, created = await run_in_threadpool(
                lambda: svc.add_json_update(client, writer, key, signed=signed)
            )
        else:
            try:
                checked = await run_in_threadpool(
                    lambda: svc.check_update(client, query, json_body=False)
                )
            except HTTPError:
                await drain(request)
                raise
            hasher = None if signed is None else hashlib.sha256()
            await spool(request, writer, hasher)
            if signed is not None and hasher is not None:  # hashed as it arrived
                signed = replace(signed, sha256=hasher.hexdigest())
            row, created = await run_in_threadpool(
                lambda: svc.add_binary_update(checked, codec.name, writer, key, signed=signed)
            )
    finally:
        writer.discard()
    return JSONResponse(update_json(row), status_code=201 if created else 200)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > _MAX_KEY:
        raise bad_request(
            "Idempotency-Key", f"Expected 1 to {_MAX_KEY} characters, got {len(key)}."
        )
    return key


def list_updates(request: Request) -> Response:
    """GET /model_updates/ (admin): ``?federated_model=``, ``?client=``, ``?status=`` filters."""
    authenticate(request, service(request).store).require_admin()
    filters = {
        "federated_model": query_int(request, "federated_model"),
        "status": query_int(request, "status"),
        "client": request.query_params.get("client"),
    }
    return JSONResponse(
        [update_json(row) for row in paginate(request, "updates", filters, **_PAGE)]
    )


def _update(request: Request) -> Row:
    identity = _identity(request)
    row = service(request).store.get_update(_id(request))
    if row is None:
        raise not_found()
    if identity.user is None and row["client"] != identity.client:
        raise forbidden()
    return row


def get_update(request: Request) -> Response:
    """GET /model_updates/<id>/ (admin or the client that sent it)."""
    return JSONResponse(update_json(_update(request)))


def update_data(request: Request) -> Response:
    """GET /model_updates/<id>/data/: the update's weights, in the Accept-ed codec."""
    return _weights(request, _update(request))


# -- aggregates and artifacts -----------------------------------------------------------


def _owned(request: Request, getter: Callable[[int], Row | None]) -> Row:
    """A row of some model, readable by admins and by the clients of that model."""
    identity = _identity(request)
    row = getter(_id(request))
    if row is None:
        raise not_found()
    service(request).model_for_client(
        row["federated_model"], None if identity.user else identity.client
    )
    return row


def list_aggregates(request: Request) -> Response:
    """GET /model_aggregates/ (admin): ``?federated_model=`` filter."""
    authenticate(request, service(request).store).require_admin()
    filters = {"federated_model": query_int(request, "federated_model")}
    rows = paginate(request, "aggregates", filters, **_PAGE)
    return JSONResponse([aggregate_json(row) for row in rows])


def get_aggregate(request: Request) -> Response:
    """GET /model_aggregates/<id>/: the aggregate with ``result`` inline (Accept-ed codec)."""
    svc = service(request)
    row = _owned(request, svc.store.get_aggregate)
    meta = {k: v for k, v in aggregate_json(row).items() if k != "result"}
    return weights_response(
        svc.blobs,
        svc.store.get_blob(row["blob"]),
        svc.registry,
        request.headers.get("accept"),
        field="result",
        meta=meta,
        context=CodecContext(
            bases=ModelBases(svc.store, svc.blobs, svc.registry, row["federated_model"])
        ),
        step=stored_step(svc.store, row),
        aggregate=row["id"],
        ranges=request.headers,
    )


def aggregate_result(request: Request) -> Response:
    """GET /model_aggregates/<id>/result/: the aggregate's weights."""
    svc = service(request)
    row = _owned(request, svc.store.get_aggregate)
    return _weights(request, row, stored_step(svc.store, row), row["id"])


async def publish_aggregate(request: Request) -> Response:
    """POST /model_aggregates/<id>/publish_aggregate/ (admin): ``{"version"}`` -> artifact."""
    svc = service(request)
    (await run_in_threadpool(authenticate, request, svc.store)).require_admin()
    body = await read_json(request, empty_ok=True)
    artifact = await run_in_threadpool(svc.publish, _id(request), body)
    return JSONResponse(artifact_json(artifact), status_code=201)


def list_artifacts(request: Request) -> Response:
    """GET /model_artifacts/ (admin): ``?federated_model=`` filter."""
    authenticate(request, service(request).store).require_admin()
    filters = {"federated_model": query_int(request, "federated_model")}
    rows = paginate(request, "artifacts", filters, **_PAGE)
    return JSONResponse([artifact_json(row) for row in rows])


def get_artifact(request: Request) -> Response:
    """GET /model_artifacts/<id>/ (admin or a client of its model)."""
    return JSONResponse(artifact_json(_owned(request, service(request).store.get_artifact)))


def artifact_values(request: Request) -> Response:
    """GET /model_artifacts/<id>/values/: the artifact's weights."""
    return _weights(request, _owned(request, service(request).store.get_artifact))


def _weights(
    request: Request,
    row: Row,
    step: StoredStep | None = None,
    aggregate: int | NotAnAggregate | None = NOT_AN_AGGREGATE,
) -> Response:
    svc = service(request)
    blob = svc.store.get_blob(row["blob"])
    bases = ModelBases(svc.store, svc.blobs, svc.registry, row["federated_model"])
    context = CodecContext(bases=bases)
    accept = request.headers.get("accept")
    return weights_response(
        svc.blobs,
        blob,
        svc.registry,
        accept,
        context=context,
        step=step,
        aggregate=aggregate,
        ranges=request.headers,
    )


# -- scores -----------------------------------------------------------------------------


async def post_score(request: Request) -> Response:
    """POST /client_aggregate_scores/ (client): validation results for an aggregate."""
    svc = service(request)
    client = (await run_in_threadpool(authenticate, request, svc.store)).require_client()
    body = await read_json(request)
    score = await run_in_threadpool(svc.add_score, client, body)
    return JSONResponse(score_json(score), status_code=201)


def list_scores(request: Request) -> Response:
    """GET /client_aggregate_scores/ (admin): ``?aggregate=`` filter."""
    authenticate(request, service(request).store).require_admin()
    filters = {"aggregate": query_int(request, "aggregate")}
    return JSONResponse([score_json(row) for row in paginate(request, "scores", filters, **_PAGE)])


def get_score(request: Request) -> Response:
    """GET /client_aggregate_scores/<id>/ (admin)."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    row = svc.store.get_score(_id(request))
    if row is None:
        raise not_found()
    return JSONResponse(score_json(row))


register_path_ids()  # {id:id}: 1 to 19 digits, else no route matches (404)
ROUTES = [
    Route("/api/v1/model_updates/", post_update, methods=["POST"]),
    Route("/api/v1/model_updates/", list_updates, methods=["GET"]),
    Route("/api/v1/model_updates/", updates_options, methods=["OPTIONS"]),
    Route("/api/v1/model_updates/{id:id}/", get_update, methods=["GET"]),
    Route("/api/v1/model_updates/{id:id}/data/", update_data, methods=["GET"]),
    Route("/api/v1/model_aggregates/", list_aggregates, methods=["GET"]),
    Route("/api/v1/model_aggregates/{id:id}/", get_aggregate, methods=["GET"]),
    Route("/api/v1/model_aggregates/{id:id}/result/", aggregate_result, methods=["GET"]),
    Route(
        "/api/v1/model_aggregates/{id:id}/publish_aggregate/", publish_aggregate, methods=["POST"]
    ),
    Route("/api/v1/model_artifacts/", list_artifacts, methods=["GET"]),
    Route("/api/v1/model_artifacts/{id:id}/", get_artifact, methods=["GET"]),
    Route("/api/v1/model_artifacts/{id:id}/values/", artifact_values, methods=["GET"]),
    Route("/api/v1/client_aggregate_scores/", post_score, methods=["POST"]),
    Route("/api/v1/client_aggregate_scores/", list_scores, methods=["GET"]),
    Route("/api/v1/client_aggregate_scores/{id:id}/", get_score, methods=["GET"]),
]
