"""What enrolled clients sign, written once for the client and the reference server.

An enrolled client holds an Ed25519 key pair (:class:`~fma_connect.identity.ClientKey`).
It signs every HTTP attempt, and every update's payload; the server checks both
(docs/SECURITY.md). The texts signed are UTF-8 lines joined by ``\\n`` (no trailing
newline)::

    request:  fma-request-v1 / METHOD / target / timestamp / nonce / client uuid / key id
    update:   fma-update-v1 / client uuid / federated_model / base_aggregate /
              num_examples / tensor_names (JSON) / codec / Idempotency-Key /
              sha256 of the stored payload
    rotation: fma-rotate-v1 / client uuid / old key id / new public key

``target`` is the request's path from its first ``/api/v1/`` on (so a proxy that mounts
the service under a prefix changes nothing), then ``?`` and the query exactly as sent
when there is one. ``timestamp`` is Unix seconds as a decimal integer; ``nonce`` 32
lowercase hex digits; the client uuid of a request is empty when it sent no
``CLIENT-UUID`` (a new client enrolling). A null field of an update is written ``null``,
``tensor_names`` as compact JSON (``["a","b"]``), the digest as 64 lowercase hex digits.
``codec`` is the codec name the payload is stored under (``json`` for plain lists, else
the codec's tag, e.g. ``msgpack``): a payload read under another codec is another update.
The ``Idempotency-Key`` is the one the update is sent (and stored) with, which a signed
update must carry: it makes each signed update one stored update, so an old signed body
sent again under a fresh request signature and a new key does not verify, and with its
own key it is the update stored already (docs/SECURITY.md).

Only :func:`verify` and :func:`require_cryptography` import ``cryptography`` (when called).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
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
    "public_key_problem",
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
    fields: Mapping[str, Any],
    tensor_names: Sequence[str] | None,
    codec: str,
    idempotency_key: str,
    sha256: str,
) -> bytes:
    """The text an update signature covers: every stored field aggregation uses
    (``fields``' ``federated_model``, and its ``base_aggregate`` and ``num_examples``,
    absent or None as null), the codec its payload is read with, its Idempotency-Key,
    and the SHA-256 (hex) of the payload bytes the server stores."""
    names = "null" if tensor_names is None else orjson.dumps(list(tensor_names)).decode()
    lines = (
        "fma-update-v1",
        client,
        str(fields["federated_model"]),
        _or_null(fields.get("base_aggregate")),
        _or_null(fields.get("num_examples")),
        names,
        codec,
        idempotency_key,
        sha256,
    )
    return "\n".join(lines).encode()


def canonical_rotation(client: str, old_key_id: str, new_public_key: str) -> bytes:
    """The text the new key signs when a client rotates to it (proof it holds it)."""
    return "\n".join(("fma-rotate-v1", client, old_key_id, new_public_key)).encode()


# Ed25519's curve -x^2 + y^2 = 1 + d x^2 y^2 over GF(p) (RFC 8032, section 5.1).
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def public_key_problem(public_key: bytes) -> str | None:
    """Why 32 bytes are not an Ed25519 public key a client may enrol, or None.

    Refused: an encoding that is not canonical (y not below p, or x = 0 marked
    negative), bytes that are no point of the curve, and the 8 points of small order
    (the neutral point ``01 00 .. 00`` among them). With a small-order key, signatures
    that verify can be made without any private key (and one signature may verify for
    many messages), so such a key identifies no one. Decoded as RFC 8032 section 5.1.3
    does; the order is checked by multiplying the point by the cofactor 8.
    """
    if len(public_key) != 32:
        return f"an Ed25519 public key is 32 bytes, got {len(public_key)}"
    number = int.from_bytes(public_key, "little")
    sign, y = number >> 255, number & ((1 << 255) - 1)
    if y >= _P:
        return "its encoding is not canonical (y is not below 2^255 - 19)"
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        if sign:
            return "its encoding is not canonical (x = 0 cannot be negative)"
        x = 0
    else:
        x = pow(x2, (_P + 3) // 8, _P)
        if (x * x - x2) % _P:
            x = x * _SQRT_M1 % _P
        if (x * x - x2) % _P:
            return "it is not a point of the Ed25519 curve"
        if x & 1 != sign:
            x = _P - x
    point = (x, y)
    for _ in range(3):  # times 8
        point = _double(point)
    if point == (0, 1):
        return (
            "it is a point of small order (anyone can make signatures that verify with "
            "it); generate a real key (fma-connect keys create)"
        )
    return None


def _double(point: tuple[int, int]) -> tuple[int, int]:
    """``point + point`` on Ed25519 (affine; the addition law is complete there)."""
    x, y = point
    xy = x * y % _P
    dxy = _D * xy * xy % _P
    return (
        2 * xy * pow(1 + dxy, _P - 2, _P) % _P,
        (y * y + x * x) * pow(1 - dxy, _P - 2, _P) % _P,
    )


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
