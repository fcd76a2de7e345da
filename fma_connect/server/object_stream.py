"""A blob's bytes streamed from an object store to a response: :class:`S3BlobStream`."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import anyio.to_thread
import urllib3.exceptions
from botocore.exceptions import BotoCoreError

from .blobs import CHUNK, BlobStream
from .object_errors import ObjectStoreError, store_error

if TYPE_CHECKING:
    from .object_store import S3BlobStore

__all__ = ["S3BlobStream"]

#: Times a stream reads on after its connection to the store broke.
_RESUMES = 3


class S3BlobStream(BlobStream):
    """A blob's bytes from the object store, as :class:`~.blobs.BlobStream` gives a file's.

    One ranged GET of the span, read :data:`~.blobs.CHUNK` bytes at a time in a worker
    thread (the event loop never waits on the store), so a response holds about one
    chunk in memory. A connection to the store that breaks is opened again from where it
    broke, up to three times. The GET starts at the first chunk: a blob deleted before
    then (a model deleted while its aggregate starts to download) ends the body early,
    and the client sees a short response.
    """

    def __init__(self, store: S3BlobStore, key: str, start: int = 0, end: int | None = None):
        self._chunks = _object_chunks(store, key, start, end)

    async def aclose(self) -> None:
        """Close the GET; the chunks stop."""
        await self._chunks.aclose()


async def _object_chunks(
    store: S3BlobStore, key: str, start: int, stop: int | None
) -> AsyncGenerator[memoryview, None]:
    """The chunks of :class:`S3BlobStream`."""
    offset, body, broken = start, None, 0
    try:
        while stop is None or offset < stop:
            if body is None:
                body = await anyio.to_thread.run_sync(store.open_range, key, offset, stop)
                if body is None:
                    return
            try:
                chunk = await anyio.to_thread.run_sync(body.read, CHUNK)
            except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
                body.close()
                body, broken = None, broken + 1
                if broken > _RESUMES:
                    raise store_error(exc, f"reading {key}") from exc
                continue
            if not chunk:
                if stop is not None:
                    raise ObjectStoreError(f"reading {key}: {stop - offset} bytes short")
                return
            offset += len(chunk)
            yield memoryview(chunk)
    finally:
        if body is not None:
            body.close()
