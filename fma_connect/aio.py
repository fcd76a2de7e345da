"""AsyncWebClient: the federated client for asyncio code, over aiohttp.

The same client as :class:`~fma_connect.clients.WebClient` — constructor options,
methods, return values, exceptions, codecs, framework restore, ``like=`` / ``into=``,
progress, retries, idempotent resends, resumable uploads, long-polling — with its
methods as coroutines. Both speak one protocol (:mod:`fma_connect._protocol`); only
how bytes move differs::

    async with AsyncWebClient(model_id, url=url, codec="msgpack") as client:
        await client.register()
        await client.send_update(weights)
        latest = await client.wait_for_new_model(60)

Thousands of clients run in one process on one event loop (``fma-connect simulate``);
give them one ``aiohttp.ClientSession`` (``session=``) to share its connection pool.
Needs the ``aio`` extra: ``pip install fma-connect[aio]``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid as uuid_module
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

try:
    import aiohttp
except ImportError as exc:  # the optional extra is missing: say how to get it
    raise ImportError(
        "fma_connect.aio (AsyncWebClient) needs aiohttp: pip install 'fma-connect[aio]'"
    ) from exc

from . import settings
from ._aio_transport import AsyncTransport
from ._in_flight import in_tasks
from ._messages import Close, Command, Flow, ReadBody, Reply, Request, Requests, Sleep
from ._protocol import ClientProtocol, read_timeout_of
from ._tls import Cert, Verify
from ._transport import DEFAULT_RETRIES, DEFAULT_TIMEOUT, Progress
from .codecs.base import Codec
from .codecs.context import ContextCodec
from .exceptions import ConfigurationError
from .identity import ClientKey
from .registry import CodecRegistry
from .resumable import DEFAULT_CHUNK_SIZE, DEFAULT_IN_FLIGHT, DEFAULT_RESUMABLE_FROM
from .spec import Spec

__all__ = ["AsyncWebClient"]

T = TypeVar("T")


class AsyncWebClient:
    """REST client of one federated model on an FMA service, for asyncio.

    Args:
        federated_model_id, uuid, url, codec, timeout, retries, headers, registry,
        progress, retry_updates, codec_state, resumable_from, upload_chunk_size,
        upload_in_flight, verify, cert: As for :class:`~fma_connect.clients.WebClient`,
            with the same defaults (``verify=True`` checks against the system's CAs, as
            aiohttp does).
        identity: As for :class:`~fma_connect.clients.WebClient`: each attempt is
            signed afresh, each update's payload signed (docs/SECURITY.md).
        session: An ``aiohttp.ClientSession`` to use (share one among many clients);
            the client closes only a session it created. Its own session keeps up to
            16 connections.
        auth: None, :class:`fma_connect.TokenAuth`, an ``aiohttp.BasicAuth`` or a
            ``(user, password)`` pair.

    Differences from WebClient, where asyncio forces them: ``uuid`` cannot register
    (a property cannot await): it raises until ``await register()`` or any call has
    registered the client. Encoding and decoding run on the event loop, as they run
    on the caller's thread in WebClient. Use ``async with`` or ``await aclose()``.
    Await one call at a time on a client (as WebClient is one client per thread);
    many clients run concurrently.

    Raises:
        ConfigurationError: an option is not what it must be (the message says what).
    """

    def __init__(
        self,
        federated_model_id: int,
        uuid: str | uuid_module.UUID | None = None,
        url: str | None = None,
        *,
        codec: str | Codec | ContextCodec = "json",
        timeout: float | tuple[float, float] | None = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Any = None,
        registry: CodecRegistry | None = None,
        progress: Progress | None = None,
        retry_updates: bool = False,
        codec_state: str | os.PathLike[str] | None = None,
        resumable_from: int | None = DEFAULT_RESUMABLE_FROM,
        upload_chunk_size: int = DEFAULT_CHUNK_SIZE,
        upload_in_flight: int = DEFAULT_IN_FLIGHT,
        verify: Verify = True,
        cert: Cert | None = None,
        identity: ClientKey | None = None,
    ) -> None:
        self._url = url if url is not None else settings.default_url
        self._protocol = ClientProtocol(
            federated_model_id,
            uuid,
            codec=codec,
            registry=registry,
            progress=progress,
            retry_updates=retry_updates,
            codec_state=codec_state,
            resumable_from=resumable_from,
            upload_chunk_size=upload_chunk_size,
            upload_in_flight=upload_in_flight,
            read_timeout=read_timeout_of(timeout),
            clock=time.monotonic,
            identity=identity,
        )
        self._transport = AsyncTransport(
            self._url,
            timeout=timeout,
            retries=retries,
            session=session,
            headers=headers,
            auth=auth,
            verify=verify,
            cert=cert,
        )
        if identity is not None:
            self._transport.signer = self._protocol.request_signature

    # -- properties -------------------------------------------------------------------

    @property
    def uuid(self) -> str:
        """Client UUID.

        Raises:
            ConfigurationError: not registered yet; ``await client.register()`` first
                (any call that needs the UUID registers the client too).
        """
        if self._protocol.uuid is None:
            raise ConfigurationError(
                "this AsyncWebClient has no uuid yet: `await client.register()` first (a "
                "property cannot await; any call that needs the uuid registers too)"
            )
        return self._protocol.uuid

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return self._url

    @property
    def federated_model_id(self) -> int:
        """Id of the federated model for which to send updates."""
        return self._protocol.federated_model_id

    @property
    def codec(self) -> Codec | ContextCodec:
        """The codec updates are sent in."""
        return self._protocol.codec

    @property
    def spec(self) -> Spec | None:
        """The structure of the last update sent, used to restore received weights."""
        return self._protocol.spec

    async def aclose(self) -> None:
        """Release the client's connections (its session, if it created one)."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncWebClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the calls, as WebClient's --------------------------------------------------------

    async def register(self) -> str:
        """As :meth:`WebClient.register <fma_connect.clients.WebClient.register>`."""
        return await self._run(self._protocol.register())

    async def enrol(self, token: str | None = None) -> str:
        """As :meth:`WebClient.enrol <fma_connect.clients.WebClient.enrol>`."""
        return await self._run(self._protocol.enrol(token))

    async def rotate_key(self, new: ClientKey) -> str:
        """As :meth:`WebClient.rotate_key <fma_connect.clients.WebClient.rotate_key>`."""
        return await self._run(self._protocol.rotate_key(new))

    async def send_update(
        self,
        data: Any,
        base_aggregate: int | np.integer[Any] | None = None,
        *,
        num_examples: int | None = None,
    ) -> dict[str, Any]:
        """As :meth:`WebClient.send_update <fma_connect.clients.WebClient.send_update>`."""
        return await self._run(self._protocol.send_update(data, base_aggregate, num_examples))

    async def check_for_new_model_aggregate(
        self,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """As :meth:`WebClient.check_for_new_model_aggregate
        <fma_connect.clients.WebClient.check_for_new_model_aggregate>`."""
        flow = self._protocol.check_for_new_model_aggregate(update_after, like, into)
        return await self._run(flow)

    async def wait_for_new_model(
        self,
        timeout: float,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """As :meth:`WebClient.wait_for_new_model
        <fma_connect.clients.WebClient.wait_for_new_model>`: long-polls a service that
        holds requests, else polls with backoff (``asyncio.sleep``, the loop runs on)."""
        flow = self._protocol.wait_for_new_model(timeout, update_after, like, into)
        return await self._run(flow)

    async def get_current_artifact(
        self, *, like: Any = None, into: Any = None
    ) -> dict[str, Any] | None:
        """As :meth:`WebClient.get_current_artifact
        <fma_connect.clients.WebClient.get_current_artifact>`."""
        return await self._run(self._protocol.get_current_artifact(like, into))

    async def check_for_latest_model(
        self,
        update_after: int | np.integer[Any] | None = None,
        *,
        like: Any = None,
        into: Any = None,
    ) -> dict[str, Any] | None:
        """As :meth:`WebClient.check_for_latest_model
        <fma_connect.clients.WebClient.check_for_latest_model>`."""
        return await self._run(self._protocol.check_for_latest_model(update_after, like, into))

    async def send_val_results(self, results: Any, aggregate_id: int) -> dict[str, Any]:
        """As :meth:`WebClient.send_val_results
        <fma_connect.clients.WebClient.send_val_results>`."""
        return await self._run(self._protocol.send_val_results(results, aggregate_id))

    def __repr__(self) -> str:
        # The UUID is the client's only credential on the stock service: a prefix only.
        uuid = self._protocol.uuid
        shown = "unregistered" if uuid is None else repr(f"{uuid[:8]}...")
        return (
            f"AsyncWebClient(federated_model_id={self.federated_model_id!r}, "
            f"url={self._url!r}, codec={self.codec.name!r}, uuid={shown})"
        )

    # -- moving the protocol's bytes --------------------------------------------------

    async def _run(self, flow: Flow[T]) -> T:
        """Drive a protocol flow: await each command, send its result back (errors are
        thrown in at the ``yield`` that asked, as :func:`~fma_connect._messages.run_flow`)."""
        streamed: list[Reply] = []
        try:
            command = next(flow)
            while True:
                try:
                    result = await self._execute(command, streamed)
                except Exception as exc:
                    command = flow.throw(exc)
                else:
                    command = flow.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value
        finally:
            # A streamed answer the flow neither read nor closed (it raised first) gives
            # its connection back now, not when the garbage collector finds it.
            for reply in streamed:
                reply.raw.response.release()

    async def _execute(self, command: Command, streamed: list[Reply]) -> Any:
        if isinstance(command, Request):
            reply = await self._transport.request(
                command.method,
                command.path,
                body=command.body,
                content_type=command.content_type,
                headers=command.headers,
                params=command.params,
                stream=command.stream,
                resend=command.resend,
            )
            if command.stream:
                streamed.append(reply)
            return reply
        if isinstance(command, Requests):
            sends = [
                functools.partial(self._execute, request, streamed) for request in command.requests
            ]
            return await in_tasks(sends, command.width)
        if isinstance(command, ReadBody):
            streamed.remove(command.reply)  # released by the read, whatever happens
            return await self._transport.read_body_placed(
                command.reply, command.place, command.progress
            )
        if isinstance(command, Close):
            streamed.remove(command.reply)
            command.reply.raw.response.release()
            return None
        if isinstance(command, Sleep):
            await asyncio.sleep(command.seconds)
            return None
        raise AssertionError(f"unknown protocol command {command!r}")
