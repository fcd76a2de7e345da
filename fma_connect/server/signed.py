"""Checking what enrolled clients sign: each request, and each update's payload.

The texts signed are :mod:`fma_connect.signing`'s (docs/SECURITY.md). A request of an
enrolled client is refused (401; 403 on ``register_client`` and ``enrol``, as the stock
service answers bad credentials there) unless it carries all four signature headers,
names the client's active key, has a timestamp within :data:`~.nonces.WINDOW` seconds of
the server's clock, a nonce never seen before (kept in the database, so a request
replayed to another replica is refused too) and a signature that verifies. The signature
is checked before the nonce is recorded, so unsigned junk costs no write; a stranger's
enrolment spends its nonce only in the enrolment's transaction, once its token or
allow-listed key admitted it (a refused enrolment writes nothing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from ..signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    UPDATE_SIGNATURE_HEADER,
    canonical_request,
    canonical_update,
    decode_b64,
    signed_target,
    verify,
)
from .errors import HTTPError, bad_request, detail
from .keys import Keys, Signer
from .nonces import WINDOW, replayed

__all__ = ["SignedUpdate", "check_request", "check_update", "update_signature"]

_NONCE = re.compile(r"[0-9a-f]{32}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEADERS = (KEY_ID_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)


@dataclass(frozen=True)
class SignedUpdate:
    """What an update's signature is checked with.

    Attributes:
        client: The sender.
        signer: Its key (the one that signed the request carrying the signature).
        signature: The ``FMA-Update-Signature`` sent (base64).
        sha256: The payload's digest when computed as it arrived (None: from the
            stored bytes, at completion).
        request_key: The key that signed the request storing it, when not ``signer``
            (a resumable upload completed after a rotation; None: ``signer``).
    """

    client: str
    signer: Signer
    signature: str
    sha256: str | None = None
    request_key: str | None = None


def check_request(
    request: Request,
    keys: Keys,
    client: str | None,
    signer: Signer,
    status: int = 401,
    *,
    spend: bool = True,
) -> tuple[str, int]:
    """Refuse a request not signed by ``signer`` as the module notes say.

    Args:
        request: The request.
        keys: The identity tables (the clock, the nonces).
        client: The client's canonical UUID (nonces are kept per client), or None for a
            new client enrolling.
        signer: The key that must have signed it.
        status: 401, or 403 on the routes that answer bad credentials so.
        spend: Record the nonce now (False: the caller spends it in the transaction of
            what the request does, so a request refused there writes nothing; enrol).

    Returns:
        The request's nonce and timestamp.

    Raises:
        HTTPError: ``status``, saying what was expected and what arrived.
    """
    headers = request.headers
    who = f"Client {client}" if client else "An enrolling client"
    missing = [name for name in _HEADERS if not headers.get(name)]
    if missing:
        raise detail(
            status,
            f"{who} is enrolled with key {signer.key_id}: every request must be signed "
            f"(headers {', '.join(_HEADERS)}; docs/SECURITY.md). Missing: {', '.join(missing)}.",
        )
    sent_key = headers[KEY_ID_HEADER]
    if sent_key != signer.key_id:
        raise detail(
            status,
            f"Expected a signature by the active key {signer.key_id}"
            f"{f' of client {client}' if client else ''}, got one by key {sent_key[:64]!r} "
            "(rotated, revoked or another client's).",
        )
    raw_time, nonce = headers[TIMESTAMP_HEADER], headers[NONCE_HEADER]
    if not _TIMESTAMP.fullmatch(raw_time):
        raise detail(status, f"Expected {TIMESTAMP_HEADER} in Unix seconds, got {raw_time[:40]!r}.")
    timestamp = int(raw_time)
    off = timestamp - keys.clock()
    if abs(off) > WINDOW:
        side = "ahead of" if off > 0 else "behind"
        raise detail(
            status,
            f"{TIMESTAMP_HEADER} {timestamp} is {abs(off):.0f} s {side} "
            f"the server's clock; at most {WINDOW:.0f} s either way is accepted (an old "
            "request is not replayed; check the client's clock).",
        )
    if not _NONCE.fullmatch(nonce):
        raise detail(
            status, f"Expected {NONCE_HEADER} of 32 lowercase hex digits, got {nonce[:40]!r}."
        )
    try:
        signature = decode_b64(headers[SIGNATURE_HEADER], SIGNATURE_HEADER, 64)
    except ValueError as exc:
        raise detail(status, f"{exc}.") from None
    text = canonical_request(
        request.method, _target(request), timestamp, nonce, headers.get("CLIENT-UUID"), sent_key
    )
    if not verify(signer.public_key, text, signature):
        raise detail(
            status,
            f"The request's signature does not verify with key {signer.key_id}: the method, "
            "path, query, timestamp, nonce or client differ from what was signed, or another "
            "key signed it (docs/SECURITY.md gives the text signed).",
        )
    if spend and not keys.spend_nonce(client or "", nonce, timestamp):
        raise replayed(nonce, status)
    return nonce, timestamp


def _target(request: Request) -> str:
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return signed_target(f"http://x{path}?{query}" if query else f"http://x{path}")


def update_signature(headers: Mapping[str, str], signer: Signer | None) -> str | None:
    """The ``FMA-Update-Signature`` of an update request, checked against who sent it.

    Raises:
        HTTPError: 400, an enrolled client sent none, or a client without a key sent one.
    """
    signature = headers.get(UPDATE_SIGNATURE_HEADER)
    if signer is not None and not signature:
        raise bad_request(
            UPDATE_SIGNATURE_HEADER,
            f"This client is enrolled (key {signer.key_id}): every update carries the "
            "signature of its payload (docs/SECURITY.md); none was sent.",
        )
    if signer is None and signature:
        raise bad_request(
            UPDATE_SIGNATURE_HEADER,
            "This client has no enrolled key to check an update signature with; enrol it "
            "first, or send the update without the header.",
        )
    return signature or None


def check_update(
    signed: SignedUpdate,
    fields: Mapping[str, Any],
    tensor_names: Any,
    codec: str,
    idempotency_key: str | None,
    sha256: str,
) -> None:
    """Refuse an update whose signature does not cover it as stored (its fields, codec,
    Idempotency-Key and payload digest).

    Raises:
        HTTPError: 400 naming ``Idempotency-Key`` (a signed update carries one) or
            ``FMA-Update-Signature``.
    """
    if idempotency_key is None:
        raise bad_request(
            "Idempotency-Key",
            "A signed update carries an Idempotency-Key (a new one per update), and its "
            "signature covers it (docs/SECURITY.md); none was sent.",
        )
    try:
        signature = decode_b64(signed.signature, UPDATE_SIGNATURE_HEADER, 64)
    except ValueError as exc:
        raise bad_request(UPDATE_SIGNATURE_HEADER, f"{exc}.") from None
    text = canonical_update(signed.client, fields, tensor_names, codec, idempotency_key, sha256)
    if not verify(signed.signer.public_key, text, signature):
        raise refused_update(signed.signer.key_id, sha256)


def refused_update(key_id: str, sha256: str) -> HTTPError:
    """The 400 of an update signature that does not verify."""
    return bad_request(
        UPDATE_SIGNATURE_HEADER,
        f"Expected an Ed25519 signature by key {key_id} of the update as the server "
        f"received it (payload sha256 {sha256}, its fields, codec and Idempotency-Key); it "
        "does not verify: the payload, a field or the key changed on the way (an old signed "
        "update sent again under a new Idempotency-Key, say), or another key signed it. "
        "Nothing was stored.",
    )
