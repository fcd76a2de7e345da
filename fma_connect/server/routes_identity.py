"""Routes of client identity (extensions, docs/SECURITY.md): enrolment, tokens, allow-lists,
key rotation, revocation, and the admin's verification of a model's stored updates.

::

    POST   /api/v1/models/<id>/enrol/                  a client binds its key and joins the model
    POST   /api/v1/models/<id>/enrolment_tokens/       (admin) a one-time enrolment token
    GET    /api/v1/models/<id>/allowed_keys/           (admin) the model's allow-list
    POST   /api/v1/models/<id>/allowed_keys/           (admin) allow a public key
    DELETE /api/v1/models/<id>/allowed_keys/<key_id>/  (admin) take a key off it
    GET    /api/v1/models/<id>/verify/                 (admin) re-check stored updates
    POST   /api/v1/client_keys/rotate/                 an enrolled client moves to a new key
    GET    /api/v1/clients/<uuid>/keys/                (admin) a client's keys
    POST   /api/v1/clients/<uuid>/revoke/              (admin) revoke a client, or one key
"""

from __future__ import annotations

import base64
import uuid as uuid_module
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..signing import canonical_rotation, decode_b64, key_id_of, public_key_problem, verify
from .auth import authenticate
from .database import Connection
from .enrolment import binding_refused
from .errors import bad_request, detail, forbidden, not_found
from .httputil import JSONResponse, read_json, service
from .jsonvalues import shown
from .keys import Signer
from .signed import check_request
from .store_core import Row
from .validation_parsing import register_path_ids
from .verify import verify_model

__all__ = ["ROUTES"]

#: Most seconds an enrolment token may live (a year).
_MAX_EXPIRY = 366 * 86400.0


def _model_id(request: Request) -> int:
    value: int = request.path_params["model_id"]
    return value


def _public_key(body: dict[str, Any], field: str = "public_key") -> tuple[str, bytes]:
    try:
        raw = decode_b64(body.get(field), field, 32)
    except ValueError as exc:
        raise bad_request(
            field, f"Expected an Ed25519 public key (base64 of its 32 raw bytes): {exc}."
        ) from None
    problem = public_key_problem(raw)
    if problem is not None:  # enrol, allow-key and rotate all come here
        raise bad_request(
            field,
            f"Expected an Ed25519 public key of a real key pair; {body.get(field)!r} is not "
            f"one: {problem}.",
        )
    return base64.b64encode(raw).decode(), raw


# -- enrolment ---------------------------------------------------------------------------


async def enrol(request: Request) -> Response:
    """POST /models/<id>/enrol/: bind the request's key to the caller and register it.

    Body ``{"public_key": <base64>, "token": <enrolment token>}`` (``token`` for a model
    of ``enrolment`` ``token``). The request is signed by that key (proof that the
    caller holds it). Without ``CLIENT-UUID`` the key is bound to a new client. With the
    UUID of a client enrolled with that key (signed by it), the client joins one more
    model. Binding a key to an existing client that has none (never enrolled, or its
    keys revoked) needs a token bound to that client (``enrolment-token --client``), on
    any model: a UUID is no secret, so it alone must not let anyone take the client
    over. The nonce is spent in the enrolment's transaction, after the token or the
    allow-list let it through: a refused enrolment writes nothing. Answers 200
    ``{"uuid", "key_id", "federated_model"}``.
    """
    svc = service(request)
    identity = await run_in_threadpool(lambda: authenticate(request, svc.store, enrolling=True))
    body = await read_json(request)
    public_key, raw = _public_key(body)
    key_id = key_id_of(raw)
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise bad_request("token", f"Expected the enrolment token (a string), got {shown(token)}.")
    model_id = _model_id(request)

    def run() -> JSONResponse:
        model = svc.model(model_id)
        enrolment = model.get("enrolment") or "open"
        client = identity.client
        nonce = None
        if identity.signer is not None:  # enrolled: signed with its active key already
            if identity.signer.key_id != key_id:
                raise detail(
                    409,
                    f"Client {client} is enrolled with key {identity.signer.key_id}, not "
                    f"{key_id}: enrol with that key, or rotate to the new one first.",
                )
        else:  # the key proves itself: the request is signed with it (nonce spent below)
            sent, stamp = check_request(
                request, svc.keys, client, Signer(key_id, raw), status=403, spend=False
            )
            nonce = (client or "", sent, stamp)
        # An existing client without an active key: its UUID alone proves nothing.
        binding = client is not None and identity.signer is None

        def admit(conn: Connection, enrolling: str) -> None:
            if binding and token is None:
                raise forbidden(binding_refused(enrolling, model_id))
            if enrolment == "token" and token is None:
                raise bad_request(
                    "token",
                    f"Federated model {model_id} enrols clients with a one-time token from "
                    "its admin (fma-connect admin enrolment-token); none was sent.",
                )
            if token is not None and (binding or enrolment == "token"):
                svc.keys.spend_token(conn, model_id, token, enrolling, binding=binding)
            if enrolment == "keys" and not svc.keys.is_allowed(conn, model_id, key_id):
                raise forbidden(
                    f"Key {key_id} is not on federated model {model_id}'s allow-list; "
                    "its admin adds it (fma-connect admin allow-key)."
                )

        uuid = svc.keys.enrol(model_id, client, key_id, public_key, admit, nonce)
        return JSONResponse({"uuid": uuid, "key_id": key_id, "federated_model": model_id})

    return await run_in_threadpool(run)


async def issue_token(request: Request) -> Response:
    """POST /models/<id>/enrolment_tokens/ (admin): ``{"expires_in": seconds or null,
    "client": uuid or null}`` -> 201 ``{"token", "federated_model", "expires", "client"}``
    (the token is shown this once). A token bound to a client enrols only that client,
    and only such a token binds a key to an existing client without one."""
    svc = service(request)
    (await run_in_threadpool(authenticate, request, svc.store)).require_admin()
    body = await read_json(request, empty_ok=True)
    expires_in = body.get("expires_in")
    if expires_in is not None and (
        type(expires_in) not in (int, float) or not 0 < expires_in <= _MAX_EXPIRY
    ):
        raise bad_request(
            "expires_in",
            f"Expected seconds the token lives, more than 0 and at most {_MAX_EXPIRY:.0f} "
            f"(or null: until used), got {shown(expires_in)}.",
        )
    client = body.get("client")
    if client is not None:
        try:
            client = str(uuid_module.UUID(client)) if isinstance(client, str) else None
        except ValueError:
            client = None
        if client is None:
            raise bad_request(
                "client",
                f"Expected the UUID of the client the token is for, or null, got "
                f"{shown(body.get('client'))}.",
            )
    model_id = _model_id(request)
    token, expires = await run_in_threadpool(svc.keys.issue_token, model_id, expires_in, client)
    body = {"token": token, "federated_model": model_id, "expires": expires, "client": client}
    return JSONResponse(body, status_code=201)


# -- allow-lists -------------------------------------------------------------------------


def list_allowed(request: Request) -> Response:
    """GET /models/<id>/allowed_keys/ (admin): ``[{key_id, public_key, added_on}]``."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    return JSONResponse(svc.keys.allowed(svc.model(_model_id(request))["id"]))


async def allow_key(request: Request) -> Response:
    """POST /models/<id>/allowed_keys/ (admin): ``{"public_key"}`` -> 201 (200: there already)."""
    svc = service(request)
    (await run_in_threadpool(authenticate, request, svc.store)).require_admin()
    public_key, raw = _public_key(await read_json(request))
    key_id = key_id_of(raw)
    added = await run_in_threadpool(svc.keys.allow, _model_id(request), key_id, public_key)
    body = {"key_id": key_id, "public_key": public_key, "federated_model": _model_id(request)}
    return JSONResponse(body, status_code=201 if added else 200)


def disallow_key(request: Request) -> Response:
    """DELETE /models/<id>/allowed_keys/<key_id>/ (admin): clients with that key are refused
    on the model's routes at once, and the model's waiting updates it signed are INVALID."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    model_id = svc.model(_model_id(request))["id"]
    key_id = request.path_params["key_id"]
    if not svc.keys.disallow(model_id, key_id):
        raise not_found(f"Key {key_id[:64]} is not on federated model {model_id}'s allow-list.")
    return Response(status_code=204)


# -- keys of clients ---------------------------------------------------------------------


async def rotate_key(request: Request) -> Response:
    """POST /client_keys/rotate/ (an enrolled client, signed by its current key):
    ``{"public_key": <new>, "proof": <the new key's signature of the rotation text>}``."""
    svc = service(request)
    identity = await run_in_threadpool(authenticate, request, svc.store)
    client = identity.require_client()
    if identity.signer is None:
        raise forbidden(f"Client {client} has no enrolled key to rotate; enrol one first.")
    body = await read_json(request)
    public_key, raw = _public_key(body)
    try:
        proof = decode_b64(body.get("proof"), "proof", 64)
    except ValueError as exc:
        raise bad_request("proof", f"{exc}.") from None
    old = identity.signer.key_id
    if not verify(raw, canonical_rotation(client, old, public_key), proof):
        raise bad_request(
            "proof",
            "Expected the new key's signature of the rotation text (fma-rotate-v1, the client, "
            f"the old key id {old}, the new public key; docs/SECURITY.md); it does not verify.",
        )
    key_id = key_id_of(raw)
    await run_in_threadpool(svc.keys.rotate, client, old, key_id, public_key)
    return JSONResponse({"uuid": client, "key_id": key_id, "previous": old})


def _client_of(request: Request) -> str:
    raw = request.path_params["uuid"]
    try:
        return str(uuid_module.UUID(raw))
    except ValueError:
        raise bad_request("uuid", f"Expected a client UUID, got {raw[:60]!r}.") from None


def client_keys(request: Request) -> Response:
    """GET /clients/<uuid>/keys/ (admin): the client's keys, oldest first, with status."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    client = _client_of(request)
    if svc.keys.client_state(client) is None:
        raise not_found(f"No client {client}.")
    return JSONResponse([_key_json(row) for row in svc.keys.keys_of(client)])


async def revoke(request: Request) -> Response:
    """POST /clients/<uuid>/revoke/ (admin): ``{}`` revokes the client and all its keys,
    ``{"key_id"}`` one key; refused at once on every route of every replica, and the
    waiting updates of the client (or signed by the key) are INVALID, with the reason."""
    svc = service(request)
    (await run_in_threadpool(authenticate, request, svc.store)).require_admin()
    body = await read_json(request, empty_ok=True)
    key_id = body.get("key_id")
    if key_id is not None and not isinstance(key_id, str):
        raise bad_request("key_id", f"Expected a key id (a string) or null, got {shown(key_id)}.")
    client = _client_of(request)
    revoked = await run_in_threadpool(svc.keys.revoke, client, key_id)
    return JSONResponse({"uuid": client, "revoked_keys": revoked, "client_revoked": key_id is None})


def _key_json(row: Row) -> dict[str, Any]:
    fields = ("key_id", "public_key", "status", "created_on", "retired_on", "revoked_on")
    return {name: row[name] for name in fields}


# -- verification ------------------------------------------------------------------------


def verify_updates(request: Request) -> Response:
    """GET /models/<id>/verify/ (admin): every stored update of the model re-read and
    checked, and every aggregate's inputs (see :func:`~.verify.verify_model`)."""
    svc = service(request)
    authenticate(request, svc.store).require_admin()
    return JSONResponse(verify_model(svc, svc.model(_model_id(request))))


register_path_ids()  # {model_id:id}: 1 to 19 digits, else no route matches (404)
ROUTES = [
    Route("/api/v1/models/{model_id:id}/enrol/", enrol, methods=["POST"]),
    Route("/api/v1/models/{model_id:id}/enrolment_tokens/", issue_token, methods=["POST"]),
    Route("/api/v1/models/{model_id:id}/allowed_keys/", list_allowed, methods=["GET"]),
    Route("/api/v1/models/{model_id:id}/allowed_keys/", allow_key, methods=["POST"]),
    Route("/api/v1/models/{model_id:id}/allowed_keys/{key_id}/", disallow_key, methods=["DELETE"]),
    Route("/api/v1/models/{model_id:id}/verify/", verify_updates, methods=["GET"]),
    Route("/api/v1/client_keys/rotate/", rotate_key, methods=["POST"]),
    Route("/api/v1/clients/{uuid}/keys/", client_keys, methods=["GET"]),
    Route("/api/v1/clients/{uuid}/revoke/", revoke, methods=["POST"]),
]
