"""Routes of resumable uploads: ``/api/v1/uploads/`` (the protocol: docs/UPLOADS.md).

Only the federated client that opened an upload sees it: to anyone else it does not
exist (404). A finished upload answers what ``POST /model_updates/`` answers.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import blake3
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..exceptions import UnknownCodecError
from ..resumable import RESUMABLE_HEADER
from .auth import Identity, authenticate
from .blobs import BlobWriter
from .errors import bad_request, detail
from .httputil import JSONResponse, body_limit, drain, read_json, service
from .keys import REVOKED, Keys, Signer
from .manifests import DIGEST, Manifest, parse_sizes
from .shapes import update_json
from .signed import SignedUpdate, update_signature
from .store_core import Row

__all__ = ["RESUMABLE_HEADER", "ROUTES", "UPLOADS_PATH"]

#: Where uploads start; ``OPTIONS /model_updates/`` names it in :data:`RESUMABLE_HEADER`.
UPLOADS_PATH = "/api/v1/uploads/"
#: A manifest of the most chunks (4096 digests) is about 280 kB.
_MANIFEST_BYTES = 1 << 20
_UPDATE_FIELDS = ("federated_model", "base_aggregate", "num_examples")
#: Where an open upload keeps the update signature sent with its manifest, the key that
#: signed it (a rotation before completion does not lose the upload) and the
#: Idempotency-Key the signature covers (the update's, so a signed upload stores once).
_SIGNATURE = "update_signature"
_SIGNER = "update_key_id"
_KEY = "update_idempotency_key"


def _client(request: Request) -> str:
    return _caller(request).require_client()


def _caller(request: Request) -> Identity:
    return authenticate(request, service(request).store)


async def open_upload(request: Request) -> Response:
    """POST /uploads/: a manifest; 201 a new upload, 200 the same one already open."""
    svc = service(request)
    identity = await run_in_threadpool(_caller, request)
    client = identity.require_client()
    signature = update_signature(request.headers, identity.signer)  # checked at completion
    body = await read_json(request, limit=_MANIFEST_BYTES)
    kind = body.get("media_type")
    try:
        codec = svc.registry.for_media_type(kind) if isinstance(kind, str) else None
    except UnknownCodecError:
        codec = None
    if codec is None or codec.json_native:
        accepted = [i.codec.media_type for i in svc.registry if not i.codec.json_native]
        raise detail(
            415,
            f"Resumable uploads carry a binary codec's body; media_type {str(kind)[:100]!r} is "
            "not one this server decodes (JSON updates go to POST /api/v1/model_updates/).",
            accepted=accepted,
        )
    fields = {name: body[name] for name in _UPDATE_FIELDS if name in body}
    checked = await run_in_threadpool(lambda: svc.check_update(client, fields, json_body=False))
    if signature is not None and identity.signer is not None:
        checked[_SIGNATURE] = signature
        checked[_SIGNER] = identity.signer.key_id
        key = request.headers.get("Idempotency-Key")
        if not key or len(key) > 255:
            raise bad_request(
                "Idempotency-Key",
                "A signed upload carries the Idempotency-Key (at most 255 characters) its "
                f"update signature covers (docs/SECURITY.md); got {str(key)[:60]!r}.",
            )
        checked[_KEY] = key
    size, chunk_size, digests = parse_sizes(body, body_limit(request))
    manifest = Manifest(checked, codec.name, size, chunk_size, digests)
    upload, created = await run_in_threadpool(svc.uploads.open, client, manifest)
    return JSONResponse(upload, status_code=201 if created else 200)


def list_uploads(request: Request) -> Response:
    """GET /uploads/: the client's open uploads."""
    return JSONResponse(service(request).uploads.listing(_client(request)))


def get_upload(request: Request) -> Response:
    """GET /uploads/<id>/: an upload, with the chunks it still lacks."""
    uploads = service(request).uploads
    return JSONResponse(uploads.describe(_client(request), request.path_params["upload"]))


def delete_upload(request: Request) -> Response:
    """DELETE /uploads/<id>/: abandon an upload (its bytes are deleted)."""
    service(request).uploads.abandon(_client(request), request.path_params["upload"])
    return Response(status_code=204)


async def put_chunk(request: Request) -> Response:
    """PUT /uploads/<id>/chunks/<index>/: one chunk's bytes, checked against its digest.

    Written in place as they arrive; a newer request for the same chunk takes over from
    an older one still arriving (which then gets 409). Recorded only once the whole
    chunk arrived and its digest matched (else 422, and it is missing until sent again).
    """
    svc = service(request)
    client = await run_in_threadpool(_client, request)
    upload_id, index = request.path_params["upload"], request.path_params["index"]
    try:
        offset, length, digest, path = await run_in_threadpool(
            svc.uploads.chunk_target, client, upload_id, index
        )
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise detail(411, f"Chunk {index} needs a Content-Length of {length} bytes.")
        if int(declared) != length:
            raise detail(
                400, f"Chunk {index} of upload {upload_id} is {length} bytes; got {declared}."
            )
    except BaseException:
        await drain(request)
        raise
    uploads = svc.uploads
    claim = uploads.writers.claim(upload_id, index)  # each piece written while it holds
    hasher = blake3.blake3()
    written, whole = 0, False
    try:
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:  # deleted since it was looked up (abandoned, superseded)
            await drain(request)
            raise detail(404, f"Upload {upload_id} no longer exists; start it again.") from None
        try:
            async for piece in request.stream():
                if written + len(piece) > length:  # more than declared: framing stops it
                    raise detail(400, f"Chunk {index} is {length} bytes; more arrived.")
                if not uploads.writers.write(claim, upload_id, index, fd, piece, offset + written):
                    raise detail(
                        409, f"Chunk {index} came again in a newer request, or is being completed."
                    )
                hasher.update(piece)
                written += len(piece)
        finally:
            os.close(fd)
        got = hasher.hexdigest()
        if written != length or got != digest:
            raise detail(
                422,
                f"Chunk {index} of upload {upload_id}: expected {length} bytes with {DIGEST} "
                f"{digest}, got {written} bytes with {DIGEST} {got}; send it again.",
            )
        whole = True
    finally:
        await run_in_threadpool(uploads.done, upload_id, index, claim, written, whole)
    return Response(status_code=204)


async def complete_upload(request: Request) -> Response:
    """POST /uploads/<id>/complete/: check every chunk and store the update.

    201 with the update, as ``POST /model_updates/`` answers it (200 when the upload
    was completed before); 409 with the ``missing`` chunks; the 4xx of an update that
    does not pass the server's checks (the upload is then deleted).
    """
    svc = service(request)
    identity = await run_in_threadpool(_caller, request)
    client = identity.require_client()
    await drain(request)

    def add(fields: dict[str, Any], codec: str, writer: BlobWriter, key: str | None) -> _Added:
        fields = dict(fields)
        signature = fields.pop(_SIGNATURE, None)
        signer_id = fields.pop(_SIGNER, None)
        signed_key = fields.pop(_KEY, None)
        signed = None
        if identity.signer is not None:
            if signature is None or signer_id is None:
                raise bad_request(
                    "FMA-Update-Signature",
                    "This client is enrolled: the upload's manifest had to carry the "
                    "signature of its payload, and this one (opened before?) carries none; "
                    "open the upload again.",
                )
            signer = _upload_signer(svc.keys, client, signer_id)
            signed = SignedUpdate(client, signer, signature, request_key=identity.signer.key_id)
            key = signed_key  # the one the signature covers: a replayed upload stores once
        return svc.add_binary_update(fields, codec, writer, key, signed=signed)

    row, created = await run_in_threadpool(
        svc.uploads.complete, client, request.path_params["upload"], add
    )
    return JSONResponse(update_json(row), status_code=201 if created else 200)


_Added = tuple[Row, bool]


def _upload_signer(keys: Keys, client: str, key_id: str) -> Signer:
    """The key that signed an upload's update: the client's, not revoked (rotated since
    the upload opened is fine: it signed while active).

    Raises:
        HTTPError: 401, it was revoked or is not the client's.
    """
    row = keys.key(key_id)
    if row is None or row["client"] != client or row["status"] == REVOKED:
        raise detail(
            401,
            f"The upload's update was signed by key {key_id}, which is revoked or not a key "
            f"of client {client}; nothing was stored. Open the upload again, signed by the "
            "active key.",
        )
    return Signer(key_id, base64.b64decode(row["public_key"]))


ROUTES = [
    Route(UPLOADS_PATH, open_upload, methods=["POST"]),
    Route(UPLOADS_PATH, list_uploads, methods=["GET"]),
    Route(f"{UPLOADS_PATH}{{upload:str}}/", get_upload, methods=["GET"]),
    Route(f"{UPLOADS_PATH}{{upload:str}}/", delete_upload, methods=["DELETE"]),
    Route(f"{UPLOADS_PATH}{{upload:str}}/chunks/{{index:int}}/", put_chunk, methods=["PUT"]),
    Route(f"{UPLOADS_PATH}{{upload:str}}/complete/", complete_upload, methods=["POST"]),
]
