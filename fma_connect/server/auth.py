"""Who is calling: an admin (token or HTTP Basic) and/or a federated client (``CLIENT-UUID``).

Admins send ``Authorization: Token <key>``, or HTTP Basic with their user name and the
token as password. Federated clients send ``CLIENT-UUID: <uuid>``; for a client that
never enrolled a key, the UUID is its only credential (stock-compatible mode). A client
that enrolled a key (docs/SECURITY.md) must sign every request with its active key
(:mod:`.signed`); a revoked client, or one whose keys were all revoked, is refused.
Its state is read from the database on every request, so a revocation holds at once on
every replica. Failures answer as the stock service does: a malformed or unknown UUID
is 401 (403 on ``register_client``), a wrong token 401.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid as uuid_module
from dataclasses import dataclass

from starlette.requests import Request

from .errors import HTTPError, detail, forbidden, unauthorized
from .keys import Keys, Signer
from .signed import check_request
from .store import Store

__all__ = ["Identity", "authenticate"]

CLIENT_HEADER = "CLIENT-UUID"


@dataclass(frozen=True)
class Identity:
    """The authenticated caller.

    Attributes:
        user: Id of the admin user, or None.
        client: UUID of the federated client, or None.
        signer: The enrolled client's key, which signed the request (None: a client
            without a key, or no client).
    """

    user: int | None = None
    client: str | None = None
    signer: Signer | None = None

    def require_admin(self) -> int:
        """Return the admin's user id.

        Raises:
            HTTPError: 401 without credentials, 403 for a federated client.
        """
        if self.user is not None:
            return self.user
        if self.client is not None:
            raise forbidden()
        raise unauthorized()

    def require_client(self) -> str:
        """Return the client's UUID.

        Raises:
            HTTPError: 401 without a ``CLIENT-UUID``, 403 for an admin without one.
        """
        if self.client is not None:
            return self.client
        if self.user is not None:
            raise forbidden("This action needs a federated client: send the CLIENT-UUID header.")
        raise unauthorized()


def authenticate(
    request: Request, store: Store, *, registering: bool = False, enrolling: bool = False
) -> Identity:
    """Check the request's credentials.

    Args:
        request: The request.
        store: Where users and clients are.
        registering: Answer a bad ``CLIENT-UUID`` with 403 instead of 401, as
            ``register_client`` does.
        enrolling: As ``registering``, and let through a client whose keys were all
            revoked, unsigned (``enrol`` then requires a token bound to it).

    Raises:
        HTTPError: the credentials that were sent are not valid.
    """
    user = _user(request, store)
    status = 403 if registering or enrolling else 401
    client, signer = _client(request, request.app.state.service.keys, status, enrolling)
    return Identity(user, client, signer)


def _user(request: Request, store: Store) -> int | None:
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "token":
        if not credentials or " " in credentials:
            raise unauthorized("Invalid token header. Token string should not contain spaces.")
        user = store.user_by_token(credentials)
        if user is None:
            raise unauthorized("Invalid token.")
        return int(user["id"])
    if scheme.lower() == "basic":
        try:
            username, _, password = (
                base64.b64decode(credentials, validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized(
                "Invalid basic header. Credentials not correctly base64 encoded."
            ) from None
        found = store.user_by_name(username)
        # Constant time (bytes: compare_digest refuses non-ASCII str).
        if found is None or not secrets.compare_digest(found["token"].encode(), password.encode()):
            raise unauthorized("Invalid username/password.")
        return int(found["id"])
    return None  # another scheme: not ours, as DRF ignores it


def _client(
    request: Request, keys: Keys, status: int, enrolling: bool
) -> tuple[str | None, Signer | None]:
    raw = request.headers.get(CLIENT_HEADER)
    if raw is None:
        return None, None
    try:
        client = str(uuid_module.UUID(raw.strip()))
    except ValueError:
        shown = raw if len(raw) <= 64 else f"{raw[:61]}..."  # a header may be kilobytes
        raise _client_error(status, f'"{shown}" is not a valid UUID.') from None
    state = keys.client_state(client)  # one query, as the lookup of the UUID alone was
    if state is None:
        raise _client_error(status, "Invalid UUID")
    if state["revoked_on"] is not None:
        raise _client_error(status, f"Client {client} was revoked (on {state['revoked_on']}).")
    if not state["keys"]:
        return client, None  # never enrolled: the UUID is its credential
    if state["key_id"] is None:  # enrolled once: never again on its UUID alone
        if enrolling:
            return client, None
        raise _client_error(
            status,
            f"Client {client} has no active key (its key was revoked): enrol a new key, with "
            "an enrolment token or an allow-listed key (docs/SECURITY.md).",
        )
    signer = Signer(state["key_id"], base64.b64decode(state["public_key"]))
    check_request(request, keys, client, signer, status)
    return client, signer


def _client_error(status: int, message: str) -> HTTPError:
    return detail(status, message)
