"""What the service offers, as the client protocol asks it (no I/O): a part of
:class:`~fma_connect._protocol.ClientProtocol`.

:class:`Offers` asks ``OPTIONS model_updates/`` once what the service decodes and whether
it takes resumable uploads, refuses before anything is sent a codec the service does not
decode, and words a service's refusal (415) of a binary body.
"""

from __future__ import annotations

from typing import Any

from ._messages import Flow, Request
from ._protocol_identity import Identity
from ._transport import API_PREFIX
from .exceptions import APIError, ConfigurationError
from .resumable import RESUMABLE_HEADER

__all__ = ["Offers"]

_API = API_PREFIX


class Offers(Identity):
    """What the service decodes and offers (a part of :class:`~._protocol.ClientProtocol`).

    Attributes:
        resumable_from: Binary payloads from this many bytes go as resumable uploads
            when the service offers them (None: never).
        accepted: The media types the service lists for updates (None: not asked yet).
        uploads_path: Where its resumable uploads start (None: it has none).
    """

    resumable_from: int | None
    accepted: set[str] | None
    uploads_path: str | None

    # -- what the service offers ----------------------------------------------------------

    def _resumable(self, payload: Any) -> Flow[bool]:
        """Whether a binary payload goes as a resumable upload (large, and offered)."""
        if self.resumable_from is None:
            return False
        if sum(memoryview(buffer).nbytes for buffer in payload) < self.resumable_from:
            return False
        if self.accepted is None:
            yield from self._ask_service()
        return self.uploads_path is not None

    def _ask_service(self) -> Flow[str]:
        """Ask ``OPTIONS model_updates/`` what the service decodes and offers, once.

        Returns:
            What went wrong, for a message ('' when the service answered).
        """
        headers = yield from self._client_headers()
        try:
            reply = yield from self.call(
                Request("OPTIONS", f"{_API}model_updates/", headers=headers, resend=True)
            )
        except APIError as exc:  # the stock service may refuse OPTIONS: none listed
            self.accepted = set()
            return f" (OPTIONS answered {exc.status_code}: {str(exc.detail)[:200]})"
        listed = reply.headers.get("Accept-Post", "")
        self.accepted = {
            part.split(";")[0].strip().lower() for part in listed.split(",") if part.strip()
        }
        self.uploads_path = reply.headers.get(RESUMABLE_HEADER) or None
        return ""

    def _check_service_decodes(self) -> Flow[None]:
        """Refuse, before anything is sent, a codec the service does not decode.

        Asked once per client: ``OPTIONS model_updates/`` answers the media types an
        update may be sent in (``Accept-Post``) on the reference server; the stock
        service, which averages only plain JSON, lists none.

        Raises:
            ConfigurationError: the service does not list this client's codec.
        """
        answer = (yield from self._ask_service()) if self.accepted is None else ""
        assert self.accepted is not None  # _ask_service sets it
        if self.codec.media_type.lower() in self.accepted:
            return
        json_codecs = ", ".join(i.codec.name for i in self.registry if i.codec.json_native)
        if not self.accepted:
            self.accepted = None  # asked again next time: the answer may have been an error
            raise ConfigurationError(
                f"the {self.codec.name!r} codec sends updates as deltas that only a service "
                f"which decodes them can average, and this service lists no codecs it "
                f"decodes{answer} (the stock FMA service averages plain JSON only): nothing "
                f"was sent. Use the reference server (fma-connect serve), or a JSON-native "
                f"codec: {json_codecs}"
            )
        raise ConfigurationError(
            f"this service does not decode the {self.codec.name!r} codec "
            f"({self.codec.media_type}); it accepts {', '.join(sorted(self.accepted))}: "
            "nothing was sent. Install the plugin that provides it where the server runs "
            "and restart it, or use one of those codecs"
        )

    def _unsupported_codec_hint(self, exc: APIError) -> str:
        """Why a service refused a binary body (415), and what to do about it."""
        detail = exc.detail if isinstance(exc.detail, dict) else {}
        accepted = detail.get("accepted")
        json_codecs = ", ".join(i.codec.name for i in self.registry if i.codec.json_native)
        if isinstance(accepted, list) and len(accepted) > 1:
            # A server that speaks other binary codecs (the reference server) lacks this
            # codec's plugin; installing it there is the fix, not falling back to JSON.
            return (
                f"This server does not have the {self.codec.name!r} codec "
                f"({self.codec.media_type}); it accepts {', '.join(map(str, accepted))}. "
                f"Install the plugin that provides {self.codec.name!r} where the server "
                "runs and restart it (`fma-connect codecs` there lists its codecs), or use "
                "one of the codecs it accepts"
            )
        return (
            f"This service does not accept {self.codec.name!r} bodies "
            f"({self.codec.media_type}); a JSON-only service (such as the stock FMA "
            f"service) takes the JSON-native codecs: {json_codecs}"
        )
