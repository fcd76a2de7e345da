"""ClientKey: an enrolled federated client's Ed25519 key pair, and what it signs.

::

    key = ClientKey.generate()
    key.save("client.key")                      # 0600, never over an existing file
    client = WebClient(model_id, url=url, identity=ClientKey.load("client.key"))
    client.enrol(token="...")                   # binds key.public_key to client.uuid

Once enrolled, every HTTP attempt the client makes is signed afresh (new timestamp and
nonce, so a retry is never a replay) and every update carries a detached signature of
its payload's SHA-256; the texts signed are in :mod:`fma_connect.signing`. Needs the
``cryptography`` library: ``pip install 'fma-connect[identity]'``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .exceptions import ConfigurationError
from .signing import (
    KEY_ID_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    canonical_request,
    canonical_rotation,
    canonical_update,
    key_id_of,
    new_nonce,
    require_cryptography,
    signed_target,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ClientKey", "RequestSigner", "payload_sha256"]

#: ``signer(method, url, headers) -> headers to add``: what a transport calls for each
#: attempt (``url`` with its query, ``headers`` those it is about to send).
RequestSigner = Callable[[str, str, Mapping[str, str]], dict[str, str]]


class ClientKey:
    """An Ed25519 private key, with its public half and id.

    Build one with :meth:`generate` or :meth:`load`; the constructor takes a
    ``cryptography`` ``Ed25519PrivateKey``.

    Attributes:
        public_key: The raw 32-byte public key, base64 (what the server stores and an
            admin allow-lists).
        key_id: Its id: 32 hex digits of its SHA-256 (:func:`~fma_connect.signing.key_id_of`).
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        require_cryptography()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigurationError(
                f"ClientKey takes an Ed25519 private key (ClientKey.generate() or "
                f"ClientKey.load(path)), got {type(private_key).__name__}"
            )
        self._key = private_key
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode()
        self.key_id = key_id_of(raw)

    @classmethod
    def generate(cls) -> ClientKey:
        """A new random key pair."""
        require_cryptography()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClientKey:
        """Read a private key written by :meth:`save` (PEM, PKCS#8, unencrypted).

        Warns (``UserWarning``) when the file is readable or writable by its group or by
        others (POSIX): anyone who reads it can act as the client.

        Raises:
            ConfigurationError: the file cannot be read or holds no Ed25519 private key.
        """
        require_cryptography()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            data = Path(path).read_bytes()
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigurationError(f"cannot read the client key {path}: {exc}") from exc
        if os.name == "posix" and mode & 0o077:
            warnings.warn(
                f"the client key {path} is open to its group or others (mode "
                f"{stat.S_IMODE(mode):04o}): anyone who reads it can act as the client; "
                f"chmod 600 {path}",
                stacklevel=2,
            )
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"{path} holds no unencrypted PEM private key ({exc}); create one with "
                "`fma-connect keys create PATH`"
            ) from exc
        try:
            return cls(key)  # type: ignore[arg-type]  # checked by the constructor
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key to a new file ``path``, readable by its owner only (0600).

        Raises:
            ConfigurationError: ``path`` exists already (a key is never overwritten:
                its client could no longer prove who it is), or cannot be written.
        """
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        pem = self._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        target = Path(path)
        if target.exists():
            raise _exists(path)
        # Written whole to a temporary file beside it (0600 from the first byte, synced),
        # then linked to its name: the name appears only with the whole key behind it (a
        # crash never leaves a half-written key), and a link, unlike a rename, never
        # replaces a file that appeared meanwhile.
        try:
            fd, temporary = tempfile.mkstemp(prefix=".fma-key-", dir=target.parent)
        except OSError as exc:
            raise ConfigurationError(f"cannot write the client key {path}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, target)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot write the client key {path}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        _sync_directory(target.parent)

    def sign(self, message: bytes) -> str:
        """The Ed25519 signature of ``message``, base64."""
        return base64.b64encode(self._key.sign(message)).decode()

    def request_headers(
        self, method: str, url: str, client: str | None, *, now: float | None = None
    ) -> dict[str, str]:
        """The signature headers of one attempt of a request to ``url`` (with its query).

        Args:
            method: The HTTP method.
            url: The URL as sent (the query included).
            client: The ``CLIENT-UUID`` sent, or None.
            now: Unix seconds (default: the time now).
        """
        timestamp = int(time.time() if now is None else now)
        nonce = new_nonce()
        text = canonical_request(method, signed_target(url), timestamp, nonce, client, self.key_id)
        return {
            KEY_ID_HEADER: self.key_id,
            TIMESTAMP_HEADER: str(timestamp),
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: self.sign(text),
        }

    def sign_update(
        self,
        client: str,
        fields: Mapping[str, Any],
        tensor_names: Sequence[str] | None,
        sha256: str,
        *,
        codec: str,
        idempotency_key: str,
    ) -> str:
        """The detached signature of an update (see :func:`~fma_connect.signing.canonical_update`).

        Args:
            client: The sender's UUID.
            fields: ``federated_model``, ``base_aggregate`` and (optional) ``num_examples``.
            tensor_names: The names sent with plain JSON layers, or None.
            sha256: :func:`payload_sha256` of the payload.
            codec: The name of the payload's codec (``json`` for plain lists).
            idempotency_key: The ``Idempotency-Key`` the update is sent with (a new one
                per update: it makes the signature good for that one stored update).
        """
        text = canonical_update(client, fields, tensor_names, codec, idempotency_key, sha256)
        return self.sign(text)

    def sign_rotation(self, client: str, old_key_id: str) -> str:
        """This (new) key's proof that it is held, for rotating ``client`` off ``old_key_id``."""
        return self.sign(canonical_rotation(client, old_key_id, self.public_key))

    def __repr__(self) -> str:
        return f"ClientKey(key_id={self.key_id!r})"  # never the private half


def _exists(path: str | os.PathLike[str]) -> ConfigurationError:
    return ConfigurationError(
        f"{path} exists already: a client key is never overwritten (its client would lose "
        "its identity); choose another path, or delete it yourself"
    )


def _sync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def payload_sha256(payload: Any, *, json_native: bool) -> str:
    """The SHA-256 (hex) of the bytes the reference server stores for an update's payload.

    A binary payload (a sequence of buffers) is stored as sent. A JSON-native payload
    travels inside the JSON body, and the server stores its ``data`` value re-written
    compactly by orjson (its parse of the body, written back): that text is what can be
    checked again from storage, so it is what is hashed (the value parsed and written
    back the same way here).
    """
    digest = hashlib.sha256()
    if json_native:
        text = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        digest.update(orjson.dumps(orjson.loads(text)))
    else:
        for buffer in payload:
            digest.update(memoryview(buffer).cast("B"))
    return digest.hexdigest()
