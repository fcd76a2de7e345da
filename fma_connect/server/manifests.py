"""What a resumable upload is: its manifest, checked, and the digest of its chunks.

See :mod:`.uploads` for what the server does with one, and docs/UPLOADS.md for the
protocol.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import blake3
import orjson

from ..resumable import MAX_CHUNK, MAX_CHUNKS, MIN_CHUNK
from .errors import bad_request, detail
from .store_core import Row

__all__ = ["DIGEST", "Manifest", "digest_of", "parse_sizes"]

#: The chunk digest: BLAKE3 (256 bits, hex), about 4 GB/s a core here against
#: SHA-256's 1.8 (hashlib with SHA-NI), and as collision-resistant for content addressing.
DIGEST = "blake3"
_HEX = re.compile(r"[0-9a-f]{64}")


def digest_of(data: Any) -> str:
    """The hex BLAKE3 digest of a bytes-like object."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """An update announced for a resumable upload (see :func:`parse_sizes`).

    Attributes:
        fields: The update's fields as :meth:`~.service.Service.check_update` returns them.
        codec: The name of the binary codec of its bytes.
        size: Its size in bytes (at least 1).
        chunk_size: The size of every chunk but the last.
        digests: The hex BLAKE3 digest of each chunk, in order.
    """

    fields: dict[str, Any]
    codec: str
    size: int
    chunk_size: int
    digests: tuple[str, ...]

    @classmethod
    def from_row(cls, row: Row, digests: tuple[str, ...]) -> Manifest:
        """The manifest of an ``uploads`` row, whose ``chunks`` are ``digests``."""
        return cls(
            fields=orjson.loads(row["fields"]),
            codec=row["codec"],
            size=row["size"],
            chunk_size=row["chunk_size"],
            digests=digests,
        )

    def span(self, index: int) -> tuple[int, int]:
        """The offset and length of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.size - start)

    def key(self) -> str:
        """What identifies the same update announced again (a resumed or restarted client)."""
        identity = {
            "fields": self.fields,
            "codec": self.codec,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "digests": self.digests,
        }
        return digest_of(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS))


def parse_sizes(body: Mapping[str, Any], max_bytes: int) -> tuple[int, int, tuple[str, ...]]:
    """Check a manifest's ``size``, ``chunk_size`` and ``chunks``.

    Raises:
        HTTPError: 400 naming each bad field, 413 for a size over ``max_bytes``.
    """
    size, chunk_size, chunks = body.get("size"), body.get("chunk_size"), body.get("chunks")
    if type(size) is not int or size < 1:
        raise bad_request("size", f"Expected the payload's size in bytes (>= 1), got {size!r}.")
    if size > max_bytes:
        raise detail(
            413,
            f"The update is larger than this server accepts ({max_bytes} bytes; fma-connect "
            f"serve --max-body-bytes): its manifest declares {size} bytes.",
        )
    if type(chunk_size) is not int or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise bad_request(
            "chunk_size",
            f"Expected an integer from {MIN_CHUNK} to {MAX_CHUNK}, got {chunk_size!r}.",
        )
    count = math.ceil(size / chunk_size)
    if count > MAX_CHUNKS:
        raise bad_request(
            "chunk_size",
            f"{size} bytes in chunks of {chunk_size} make {count} chunks; at most "
            f"{MAX_CHUNKS} are taken: choose chunks of at least {math.ceil(size / MAX_CHUNKS)}.",
        )
    if not isinstance(chunks, list) or len(chunks) != count:
        got = f"{len(chunks)} items" if isinstance(chunks, list) else repr(chunks)[:80]
        raise bad_request(
            "chunks",
            f"Expected a list of the {count} chunks' {DIGEST} digests (64 hex digits each), "
            f"got {got}.",
        )
    bad = next((i for i, d in enumerate(chunks) if not _is_digest(d)), None)
    if bad is not None:
        raise bad_request(
            "chunks",
            f"Expected 64 lowercase hex digits for chunk {bad}, got {str(chunks[bad])[:80]!r}.",
        )
    return size, chunk_size, tuple(chunks)


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and _HEX.fullmatch(value) is not None
