"""Routes under ``/api/v1/models/``: model CRUD, clients (register, list, remove), weights.

Synchronous handlers run in Starlette's thread pool; handlers that read a body are
async and hand the work to a thread themselves.
"""

from __future__ import annotations

import re
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._transport import LONG_POLL_HEADER
from ..admin import UpdateStatus
from ..codecs.context import CodecContext
from .auth import Identity, authenticate
from .errors import bad_request, forbidden, not_found
from .httputil import JSONResponse, paginate, query_int, read_json, service
from .limits import MODEL_BODY_BYTES
from .shapes import aggregate_json, artifact_json, model_json
from .store_core import Row
from .validation_parsing import register_path_ids
from .waiting import LONG_POLL_CAP
from .weights import weights_response
from .weights_negotiation import stored_step
from .weights_storage import ModelBases

__all__ = ["ROUTES"]

_MODELS_PAGE = {"default": 100, "maximum": 200}
#: A ``wait``: ASCII digits, an optional fraction; short enough to say what it means.
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def _model_id(request: Request) -> int:
    value: int = request.path_params["model_id"]
    return value


def _model_json(request: Request, row: Row) -> JSONResponse:
    return JSONResponse(_model_body(row, service(request).store.model_clients(row["id"])))


def _model_body(row: Row, clients: list[str]) -> dict[str, Any]:
    """A FederatedModel, with the reference server's ``aggregator_args`` after
    ``aggregator`` (the stock service has no such field)."""
    body: dict[str, Any] = {}
    for field, value in model_json(row, clients).items():
        body[field] = value
        if field == "aggregator":
            body["aggregator_args"] = row.get("aggregator_args")
    return body


async def create_model(request: Request) -> Response:
    """POST /models/ (admin): create a federated model."""
    svc = service(request)
    identity = await run_in_threadpool(authenticate, request, svc.store)
    user = identity.require_admin()
    body = await read_json(request, limit=MODEL_BODY_BYTES)  # it carries the initial model

    def run() -> JSONResponse:
        model = svc.model(svc.create_model(body, user))
        response = _model_json(request, model)
        response.status_code = 201
        return response

    return await run_in_threadpool(run)


def list_models(request: Request) -> Response:
    """GET /models/ (admin): the models, newest first."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    rows = paginate(request, "models", {}, **_MODELS_PAGE)
    return JSONResponse([_model_body(row, svc.store.model_clients(row["id"])) for row in rows])


def get_model(request: Request) -> Response:
    """GET /models/<id>/ (admin)."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    return _model_json(request, svc.model(_model_id(request)))


async def patch_model(request: Request) -> Response:
    """PATCH /models/<id>/ (admin): change some fields."""
    svc = service(request)
    (await run_in_threadpool(authenticate, request, svc.store)).require_admin()
    body = await read_json(request)

    def run() -> JSONResponse:
        svc.patch_model(_model_id(request), body)
        return _model_json(request, svc.model(_model_id(request)))

    return await run_in_threadpool(run)


def delete_model(request: Request) -> Response:
    """DELETE /models/<id>/ (admin): delete the model and everything it owns."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    svc.delete_model(_model_id(request))
    return Response(status_code=204)


def register_client(request: Request) -> Response:
    """POST /models/<id>/register_client/: register the caller (a new client if no UUID).

    A model that requires enrolment (``enrolment`` ``token`` or ``keys``) takes new
    clients through ``enrol/`` only; its members may still call this (a no-op).
    """
    svc = service(request)
    identity = authenticate(request, svc.store, registering=True)
    model = svc.model(_model_id(request))
    enrolment = model.get("enrolment") or "open"
    if enrolment != "open" and not (
        identity.client is not None and svc.store.is_registered(model["id"], identity.client)
    ):
        needs = "a one-time enrolment token" if enrolment == "token" else "an allow-listed key"
        raise forbidden(
            f"Federated model {model['id']} requires enrolment ({enrolment!r}): a client joins "
            f"it with a key pair and {needs}, by POST /api/v1/models/{model['id']}/enrol/ "
            "(WebClient(identity=...).enrol(); docs/SECURITY.md)."
        )
    return JSONResponse({"uuid": svc.store.register_client(model["id"], identity.client)})


def _readable_model(request: Request) -> Row:
    return _reader(request)[1]


def _reader(request: Request) -> tuple[Identity, Row]:
    """Who asks (the admin, or a client registered with the model) and the model."""
    svc = service(request)
    identity = authenticate(request, svc.store)
    if identity.user is None:
        identity.require_client()
    model = svc.model_for_client(_model_id(request), None if identity.user else identity.client)
    return identity, model


async def latest_aggregate(request: Request) -> Response:
    """GET /models/<id>/get_latest_aggregate/: ``{}`` or the newest aggregate (result as URL).

    With ``?wait=<seconds>&after=<id or -1>`` (extension, docs/ROUNDS.md) the request is
    held until an aggregate newer than ``after`` exists or ``wait`` (at most
    :data:`~.waiting.LONG_POLL_CAP`) seconds pass. Every answer says the server can hold
    it with ``FMA-Long-Poll: <cap>``.
    """
    svc = service(request)
    identity, model = await run_in_threadpool(_reader, request)

    wait = _wait_seconds(request)

    def read() -> Row | None:
        if wait is not None and identity.client is not None:
            # A held request is answered long after it was authenticated: a client
            # revoked (or removed from the model) meanwhile gets no aggregate.
            signer = None if identity.signer is None else identity.signer.key_id
            svc.keys.check_sender(None, model["id"], identity.client, signer, None)
        return svc.store.latest_aggregate(model["id"])

    def latest() -> Awaitable[Row | None]:
        return run_in_threadpool(read)

    if wait is None:
        aggregate = await latest()
    else:
        after = query_int(request, "after")
        if after is not None and after < -1:
            raise bad_request("after", f"Expected an aggregate id, or -1 for none, got {after}.")
        who = f"user {identity.user}" if identity.user is not None else str(identity.client)
        aggregate = await svc.waiters.hold(
            who, model["id"], -1 if after is None else after, wait, latest, _gone(request)
        )
    headers = {LONG_POLL_HEADER: str(LONG_POLL_CAP)}
    return JSONResponse(aggregate_json(aggregate) if aggregate else {}, headers=headers)


def _wait_seconds(request: Request) -> float | None:
    """The ``wait`` query parameter, lowered to the cap (None: not sent)."""
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    if not _SECONDS.fullmatch(raw):
        raise bad_request(
            "wait",
            f"Expected seconds to hold the request, a number such as 10 or 2.5 (more than "
            f"{LONG_POLL_CAP} is held {LONG_POLL_CAP}), got {raw[:60]!r}.",
        )
    return min(float(raw), LONG_POLL_CAP)


def _gone(request: Request) -> Callable[[], Awaitable[None]]:
    """Returns when the client of a request without a body disconnects."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


def latest_model(request: Request) -> Response:
    """GET /models/<id>/get_latest_model/: the newest aggregate's weights, else the artifact's.

    ``{"values": <weights>, "aggregate": id or null}``, or a binary body in the codec
    ``Accept`` names with ``FMA-Meta: {"aggregate": ...}``; ``{}`` when there is neither.
    """
    model = _readable_model(request)
    svc = service(request)
    aggregate = svc.store.latest_aggregate(model["id"])
    step = None
    if aggregate is not None:
        blob_id, aggregate_id = aggregate["blob"], aggregate["id"]
        step = stored_step(svc.store, aggregate)
    elif model["current_artifact"] is not None:
        artifact = svc.store.get_artifact(model["current_artifact"])
        assert artifact is not None
        blob_id, aggregate_id = artifact["blob"], None
    else:
        return JSONResponse({})
    return weights_response(
        svc.blobs,
        svc.store.get_blob(blob_id),
        svc.registry,
        request.headers.get("accept"),
        field="values",
        meta={"aggregate": aggregate_id},
        context=CodecContext(bases=ModelBases(svc.store, svc.blobs, svc.registry, model["id"])),
        step=step,
        aggregate=aggregate_id,
        ranges=request.headers,
    )


def current_artifact(request: Request) -> Response:
    """GET /models/<id>/get_current_artifact/: ``{}`` or the published artifact (values as URL)."""
    model = _readable_model(request)
    if model["current_artifact"] is None:
        return JSONResponse({})
    artifact = service(request).store.get_artifact(model["current_artifact"])
    assert artifact is not None
    return JSONResponse(artifact_json(artifact))


def trigger_aggregation(request: Request) -> Response:
    """POST /models/<id>/aggregate/ (admin, extension): run a round of the pending updates."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    aggregate = svc.rounds.aggregate(_model_id(request))
    return JSONResponse(aggregate_json(aggregate), status_code=201)


def list_clients(request: Request) -> Response:
    """GET /models/<id>/clients/ (admin, extension): the registered clients and their updates.

    Each: ``uuid``, ``registered_on``, ``last_seen`` (its newest update to the model, or
    null), ``updates`` (how many) and ``statuses`` (how many in each status, by name).
    """
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    model_id = svc.model(_model_id(request))["id"]
    counts = svc.store.status_counts(model_id)
    return JSONResponse(
        [
            {
                **row,
                "statuses": {
                    status.name: counts.get(row["uuid"], {}).get(status.value, 0)
                    for status in UpdateStatus
                },
            }
            for row in svc.store.client_activity(model_id)
        ]
    )


def remove_client(request: Request) -> Response:
    """DELETE /models/<id>/clients/<uuid>/ (admin, extension): unregister a client.

    Its updates stay stored; its PENDING ones no longer count toward a round (the next
    round marks them INVALID). The model's requirement is checked again at once, so an
    ``all_clients`` model that waited only for this client runs its round.
    """
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    model_id = svc.model(_model_id(request))["id"]
    raw = request.path_params["uuid"]
    try:
        client = str(uuid_module.UUID(raw))
    except ValueError:
        raise bad_request("uuid", f"Expected a client UUID, got {raw[:60]!r}.") from None
    if not svc.store.unregister_client(model_id, client):
        raise not_found(f"Client {client} is not registered with federated model {model_id}.")
    svc.rounds.after_update(model_id)
    return Response(status_code=204)


register_path_ids()  # {model_id:id}: 1 to 19 digits, else no route matches (404)
ROUTES = [
    Route("/api/v1/models/", create_model, methods=["POST"]),
    Route("/api/v1/models/", list_models, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/", get_model, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/", patch_model, methods=["PATCH"]),
    Route("/api/v1/models/{model_id:id}/", delete_model, methods=["DELETE"]),
    Route("/api/v1/models/{model_id:id}/register_client/", register_client, methods=["POST"]),
    Route("/api/v1/models/{model_id:id}/get_latest_aggregate/", latest_aggregate, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/get_latest_model/", latest_model, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/get_current_artifact/", current_artifact, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/aggregate/", trigger_aggregation, methods=["POST"]),
    Route("/api/v1/models/{model_id:id}/clients/", list_clients, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/clients/{uuid}/", remove_client, methods=["DELETE"]),
]
