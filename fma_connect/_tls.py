"""The clients' TLS options (``verify=``, ``cert=``) and what a failed handshake means.

The options follow requests' conventions, so both clients take the same values:

- ``verify``: True checks the service's certificate against the default CA bundle
  (requests: certifi's, or ``REQUESTS_CA_BUNDLE``; aiohttp: the system's); a path
  checks it against that PEM file (or ``c_rehash``ed directory) of CAs instead; False
  checks nothing, which lets anyone on the path read and change the traffic.
- ``cert``: for a service that requires client certificates (mutual TLS), the path of
  a PEM file holding the client's certificate and key, or a ``(cert, key)`` pair.

A failed handshake reaches the caller as :class:`~fma_connect.exceptions.ConnectError`;
:func:`tls_hint` adds what to do about it, since OpenSSL's own words ("unable to get
local issuer certificate") do not say.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any

from .exceptions import ConfigurationError

__all__ = ["Cert", "Verify", "check_cert", "check_verify", "ssl_context", "ssl_reason", "tls_hint"]

#: ``verify=``: True, False, or a CA bundle (file or directory).
Verify = bool | str | os.PathLike[str]
#: ``cert=``: one PEM file with the certificate and key, or a (cert, key) pair.
Cert = str | os.PathLike[str] | tuple[str | os.PathLike[str], str | os.PathLike[str]]

_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")


def check_verify(verify: object) -> Verify:
    """``verify`` if it is True, False or the path of an existing CA file or directory.

    Raises:
        ConfigurationError: it is not.
    """
    if isinstance(verify, bool):
        return verify
    if isinstance(verify, str | os.PathLike) and Path(verify).exists():
        return verify
    raise ConfigurationError(
        "verify must be True (check the service's certificate against the default CAs), "
        "the path of a PEM file or directory of the CAs to trust instead, or False (check "
        f"nothing); got {verify!r}" + (" (no such file)" if isinstance(verify, str) else "")
    )


def check_cert(cert: object) -> Cert | None:
    """``cert`` if it is None, an existing PEM file, or a pair of them.

    Raises:
        ConfigurationError: it is not.
    """
    files = cert if isinstance(cert, tuple) else (cert,)
    if cert is None or (
        len(files) in (1, 2)
        and all(isinstance(f, str | os.PathLike) and Path(f).is_file() for f in files)
    ):
        return cert  # type: ignore[return-value]  # checked above
    raise ConfigurationError(
        "cert must be the path of a PEM file with the client's certificate and private "
        f"key, a (certificate, key) pair of paths, or None; got {cert!r} (no such file, "
        "or not a path)"
    )


def ssl_context(verify: Verify, cert: Cert | None) -> ssl.SSLContext | bool:
    """What aiohttp takes as ``ssl=`` for these options (True: its default checks).

    Raises:
        ConfigurationError: a file is not a PEM CA bundle, certificate or key.
    """
    if verify is True and cert is None:
        return True
    try:
        if verify is True or verify is False:
            context = ssl.create_default_context()
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        else:
            # Given CAs, create_default_context loads them *instead of* the system's, as
            # requests' verify=path trusts that bundle alone.
            where = Path(verify)
            context = ssl.create_default_context(
                cafile=None if where.is_dir() else where, capath=where if where.is_dir() else None
            )
        if cert is not None:
            pair: tuple[Any, Any] = cert if isinstance(cert, tuple) else (cert, None)
            context.load_cert_chain(*pair)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"verify={verify!r}, cert={cert!r}: not PEM CA certificates, or a certificate "
            f"and its key ({ssl_reason(exc)})"
        ) from exc
    return context


def ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's message without its codes: "certificate verify failed: certificate has expired"."""
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return _OPENSSL_NOISE.sub("", text).strip() or type(exc).__name__


def tls_hint(url: str, cause: str) -> str:
    """What to do about a connection to ``url`` that failed with ``cause``, if it is
    TLS's doing: ``"; ..."`` to append to the message, or "".

    A TLS port closes a plain HTTP connection unanswered, and so does a mutual-TLS
    service a connection without a client certificate (under TLS 1.3 the client learns
    only at its first read or write: a close unanswered, or an EOF "in violation of
    protocol"), so those get a hint too.
    """
    text = cause.lower()
    if "certificate has expired" in text:
        return "; the service's certificate has expired (or this machine's clock is wrong)"
    if "mismatch" in text or "doesn't match" in text:
        return "; the service's certificate is for another host name than the URL's"
    if "certificate verify failed" in text:
        return (
            "; the service's certificate is not signed by a CA this client trusts: pass "
            "verify= (on the command line --cacert) the path of the PEM file of the CA that "
            "signed it"
        )
    if "wrong version number" in text or "record layer failure" in text:
        return "; the service does not speak TLS on this port: use an http:// URL"
    closed = ("without response", "server disconnected", "eof occurred in violation")
    if any(words in text for words in closed):
        if url.startswith("https:"):
            return (
                "; if the service requires client certificates (mutual TLS), pass cert= (on "
                "the command line --cert) a certificate and key that its CA signed"
            )
        return "; if the service serves HTTPS on this port, use an https:// URL"
    return ""
