"""TLS for ``fma-connect serve``: the server's certificate, and optionally mutual TLS.

:func:`server_context` loads the certificate chain and key once, at start, so a wrong
file stops the start with a message naming it instead of failing each handshake later.
With a client CA, every connection must present a certificate signed by that CA
(mutual TLS): a transport-level gate in front of the client identities of
:mod:`.auth`, not a replacement for them.

:func:`is_loopback` decides whether ``serve`` warns about plain HTTP: on a loopback
address only this machine can listen in; on any other, client UUIDs, admin tokens and
weights cross the network in clear text.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

__all__ = ["TLSError", "is_loopback", "server_context"]


class TLSError(ValueError):
    """The TLS options cannot make a server context (the message says which file and why)."""


def server_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str] | None = None,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) for uvicorn.

    Args:
        cert: PEM file of the server's certificate chain (leaf first); it may hold the
            private key too.
        key: PEM file of the private key, when ``cert`` does not hold it.
        client_ca: PEM file of the CA(s) that sign client certificates: with it, every
            connection must present one (mutual TLS).

    Raises:
        TLSError: a file is missing or unreadable, the key does not match the
            certificate, or the CA file holds no certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for label, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not Path(path).is_file():
            why = "not a file" if Path(path).exists() else "no such file"
            raise TLSError(f"{label} {os.fspath(path)}: {why}")
    if key is None and b"PRIVATE KEY-----" not in Path(cert).read_bytes():
        raise TLSError(
            f"--tls-cert {os.fspath(cert)} holds no private key: give its key file as "
            "--tls-key FILE (or put the key in the certificate file)"
        )
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TLSError(
            f"--tls-cert {os.fspath(cert)}"
            + (f" with --tls-key {os.fspath(key)}" if key is not None else "")
            + f": not a PEM certificate chain and its matching private key ({_why(exc)})"
        ) from exc
    except OSError as exc:
        raise TLSError(f"--tls-cert/--tls-key: {exc.strerror}: {exc.filename}") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(
                f"--tls-client-ca {os.fspath(client_ca)}: not a PEM file of CA certificates "
                f"({_why(exc)})"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError) -> str:
    # OpenSSL's reason codes read "NO_CERTIFICATE_OR_CRL_FOUND"; some errors have none.
    reason = getattr(exc, "reason", None)
    return reason.lower().replace("_", " ") if isinstance(reason, str) else str(exc)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) is reachable from this machine only.

    A name other than ``localhost`` counts as not loopback: it may resolve anywhere.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
