"""What enrolled clients sign, written once for the client and the reference server.

An enrolled client holds an Ed25519 key pair (:class:`~fma_connect.identity.ClientKey`).
It signs every HTTP attempt, and every update's payload; the server checks both
(docs/SECURITY.md). The texts signed are UTF-8 lines joined by ``\\n`` (no trailing
newline)::

    request:  fma-request-v1 / METHOD / target / timestamp / nonce / client uuid / key id
    update:   fma-update-v1 / client uuid / federated_model / base_aggregate /
              num_examples / tensor_names (JSON) / sha256 of the stored payload
    rotation: fma-rotate-v1 / client uuid / old key id / new public key

``target`` is the request's path from its first ``/api/v1/`` on (so a proxy that mounts
the service under a prefix changes nothing), then ``?`` and the query exactly as sent
when there is one. ``timestamp`` is Unix seconds as a decimal integer; ``nonce`` 32
lowercase hex digits; the client uuid of a request is empty when it sent no
``CLIENT-UUID`` (a new client enrolling). A null field of an update is written ``null``,
``tensor_names`` as compact JSON (``["a","b"]``), the digest as 64 lowercase hex digits.

Only :func:`verify` and :func:`require_cryptography` import ``cryptography`` (when called).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import orjson

from .exceptions import ConfigurationError

__all__ = [
    "CLIENT_HEADER",
    "IDENTITY_EXTRA",
    "KEY_ID_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "UPDATE_SIGNATURE_HEADER",
    "canonical_request",
    "canonical_rotation",
    "canonical_update",
    "decode_b64",
    "header",
    "key_id_of",
    "new_nonce",
    "require_cryptography",
    "signed_target",
    "url_with_query",
    "verify",
]

CLIENT_HEADER = "CLIENT-UUID"
KEY_ID_HEADER = "FMA-Key-Id"
TIMESTAMP_HEADER = "FMA-Timestamp"
NONCE_HEADER = "FMA-Nonce"
SIGNATURE_HEADER = "FMA-Signature"
#: The detached signature of an update's payload (``POST /model_updates/``, ``POST /uploads/``).
UPDATE_SIGNATURE_HEADER = "FMA-Update-Signature"
#: The pip extra that brings ``cryptography``.
IDENTITY_EXTRA = "fma-connect[identity]"
_API = "/api/v1/"


def require_cryptography() -> None:
    """Import ``cryptography`` or say which extra brings it.

    Raises:
        ConfigurationError: it is not installed.
    """
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"client keys (Ed25519) need the cryptography library: pip install "
            f"'{IDENTITY_EXTRA}' (or 'fma-connect[server]' where the server runs)"
        ) from exc


def key_id_of(public_key: bytes) -> str:
    """A key's id: the first 32 hex digits of the SHA-256 of its raw 32 bytes."""
    return hashlib.sha256(public_key).hexdigest()[:32]


def decode_b64(text: object, what: str, size: int) -> bytes:
    """The ``size`` bytes that the standard base64 ``text`` holds.

    Raises:
        ValueError: ``text`` is not base64 of exactly ``size`` bytes (the message names
            ``what``, what was expected and what arrived).
    """
    shown = repr(text)[:80]
    if not isinstance(text, str):
        raise ValueError(f"{what} must be base64 of {size} bytes, got {shown}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} must be base64 of {size} bytes, got {shown}") from None
    if len(raw) != size:
        raise ValueError(f"{what} must be base64 of {size} bytes, got {len(raw)} bytes")
    return raw


def new_nonce() -> str:
    """A fresh request nonce: 16 random bytes as 32 hex digits."""
    return secrets.token_hex(16)


def signed_target(url: str) -> str:
    """The ``target`` line of a request to ``url`` (see the module notes)."""
    parts = urlsplit(url)
    path = parts.path
    at = path.find(_API)
    if at > 0:
        path = path[at:]
    return f"{path}?{parts.query}" if parts.query else path


def canonical_request(
    method: str, target: str, timestamp: int, nonce: str, client: str | None, key_id: str
) -> bytes:
    """The text a request signature covers."""
    lines = ("fma-request-v1", method.upper(), target, str(timestamp), nonce, client or "", key_id)
    return "\n".join(lines).encode()


def canonical_update(
    client: str,
    federated_model: int,
    base_aggregate: int | None,
    num_examples: int | None,
    tensor_names: Sequence[str] | None,
    sha256: str,
) -> bytes:
    """The text an update signature covers: every stored field aggregation uses, and the
    SHA-256 (hex) of the payload bytes the server stores."""
    names = "null" if tensor_names is None else orjson.dumps(list(tensor_names)).decode()
    lines = (
        "fma-update-v1",
        client,
        str(federated_model),
        _or_null(base_aggregate),
        _or_null(num_examples),
        names,
        sha256,
    )
    return "\n".join(lines).encode()


def canonical_rotation(client: str, old_key_id: str, new_public_key: str) -> bytes:
    """The text the new key signs when a client rotates to it (proof it holds it)."""
    return "\n".join(("fma-rotate-v1", client, old_key_id, new_public_key)).encode()


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` by ``public_key``."""
    require_cryptography()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header of a plain dict, whatever the case of its name."""
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _or_null(value: int | None) -> str:
    return "null" if value is None else str(value)


def url_with_query(url: str, params: Mapping[str, object] | None) -> str:
    """``url`` with ``params`` encoded into its query, as a signed request is sent: the
    signature covers the query, so the transport writes it itself (None values dropped,
    as requests drops them)."""
    if not params:
        return url
    from urllib.parse import urlencode

    query = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"
