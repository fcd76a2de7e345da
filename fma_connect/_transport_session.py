"""The requests transport's session (the base of :class:`~._transport.Transport`).

:class:`TransportSession` holds one requests.Session bound to a service's base URL: the
options it was given (checked by :mod:`fma_connect._transport_options`), TLS, urllib3's
jittered retries (:class:`JitterRetry`) mounted for the base URL, request signing, and
the sending of one attempt with its failure mapped (:mod:`fma_connect._transport_errors`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ._messages import (
    BACKOFF_MAX,
    RETRY_STATUSES,
    backoff,
    broken_message,
    join_url,
    timeout_message,
    unreachable_message,
)
from ._tls import Cert, Verify, check_cert, check_verify, ssl_context
from ._transport_bodies import Chunks
from ._transport_errors import _root_cause, _sent, _timed_out
from ._transport_options import (
    _BACKOFF_FACTOR,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    _check_options,
    _check_retries,
    _check_timeout,
    _check_url,
)
from .exceptions import ConnectError, RequestTimeout, TransportError
from .identity import RequestSigner
from .signing import url_with_query

__all__ = ["JitterRetry", "TransportSession"]

_BACKOFF_MAX = BACKOFF_MAX


class JitterRetry(Retry):
    """urllib3 Retry with "full jitter": sleep a uniform time in [0, exponential backoff].

    Many clients retrying after one outage then spread out instead of returning in step.
    Retry-After (429, 503) is honoured by urllib3 before this backoff applies.
    """

    def get_backoff_time(self) -> float:
        """Return a random sleep between 0 and the exponential backoff of this attempt."""
        return random.uniform(0.0, super().get_backoff_time())

    def get_retry_after(self, response: Any) -> float | None:
        """Return the server's Retry-After, capped like the backoff (a server may ask hours)."""
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, _BACKOFF_MAX)


class TransportSession:
    """One requests.Session bound to a service's base URL (the base of ``Transport``).

    ``verify`` and ``cert`` are TLS's, as :mod:`fma_connect._tls` describes.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        verify: Verify = True,
        cert: Cert | None = None,
    ) -> None:
        self.base_url = _check_url(base_url).rstrip("/") + "/"
        self.timeout = _check_timeout(timeout)
        _check_retries(retries)
        _check_options(session, headers, auth)
        # Passed with each request only when given, so a caller's session keeps its own
        # verify/cert (and requests its REQUESTS_CA_BUNDLE) unless told otherwise.
        self.tls: dict[str, Any] = {}
        ssl_context(check_verify(verify), check_cert(cert))  # PEM files now, not at first use
        if verify is not True:
            self.tls["verify"] = os.fspath(verify) if not isinstance(verify, bool) else verify
        if cert is not None:
            self.tls["cert"] = (
                tuple(os.fspath(part) for part in cert)
                if isinstance(cert, tuple)
                else os.fspath(cert)
            )
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        # Sent with each request rather than set on the session, so a caller's session
        # (and other clients sharing it) are left as they were.
        self.headers = dict(headers or {})
        self.auth = auth
        self.retries = retries
        self.backoff_factor = _BACKOFF_FACTOR
        retry = JitterRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=_BACKOFF_FACTOR,
            backoff_max=_BACKOFF_MAX,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        # Mounted for our base URL only, so a caller's own session keeps its other adapters.
        self.session.mount(self.base_url, HTTPAdapter(max_retries=retry))
        #: Signs each attempt (an enrolled client's key, see :meth:`sign_with`), or None.
        self.signer: RequestSigner | None = None

    def sign_with(self, signer: RequestSigner) -> None:
        """Sign every attempt of every request with ``signer`` (an enrolled client's).

        urllib3 resends a GET that broke, timed out or got 429/502/503/504 with the
        headers it was first given (the same nonce: the server would refuse it as a
        replay), so those retries move to ``Transport.request``'s loop, which signs each
        attempt afresh; only a connection that never opened is retried below it (no
        byte reached the service, so nothing was spent).
        """
        self.signer = signer
        retry = JitterRetry(
            total=self.retries,
            connect=self.retries,
            read=0,
            status=0,
            other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            backoff_factor=_BACKOFF_FACTOR,
            backoff_max=_BACKOFF_MAX,
            respect_retry_after_header=False,  # a 503's Retry-After too: request() waits
            raise_on_status=False,
        )
        self.session.mount(self.base_url, HTTPAdapter(max_retries=retry))

    def url(self, path: str) -> str:
        """Resolve ``path`` (API path, site-relative or absolute URL) against the base URL."""
        return join_url(self.base_url, path)

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | Chunks | None,
        headers: dict[str, str],
        params: Mapping[str, Any] | None,
        stream: bool,
    ) -> requests.Response:
        if self.signer is not None:  # signed afresh for each attempt, over the query sent
            url, params = url_with_query(url, params), None
            headers = {**headers, **self.signer(method, url, {**self.headers, **headers})}
        try:
            return self.session.request(
                method,
                url,
                data=body,  # type: ignore[arg-type]  # a sized iterable of buffers is fine
                headers={**self.headers, **headers},
                auth=self.auth,
                params=params,
                timeout=self.timeout,
                stream=stream,
                allow_redirects=method == "GET",
                **self.tls,
            )
        except requests.exceptions.RetryError as exc:
            raise TransportError(
                f"{method} {url}: gave up after retries: {_root_cause(exc)}"
            ) from exc
        except (requests.Timeout, requests.ConnectionError) as exc:
            if _timed_out(exc):
                raise RequestTimeout(timeout_message(method, url, self.timeout)) from exc
            if body is not None and _sent(exc):
                raise ConnectError(broken_message(method, url, _root_cause(exc))) from exc
            raise ConnectError(
                unreachable_message(method, url, self.base_url, _root_cause(exc))
            ) from exc
        except requests.RequestException as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before a resend: Retry-After when given, else full jitter."""
        return backoff(attempt, retry_after, self.backoff_factor)

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session:
            self.session.close()
