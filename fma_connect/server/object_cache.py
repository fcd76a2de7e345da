"""Blobs of an object store read lately, kept local: :class:`ReadCache`.

A blob never changes once committed, so a copy read from the store stays right for as
long as it is kept. Reading a blob whole downloads it into an unnamed local file (see
:meth:`~.object_store.S3BlobStore.read`); the blobs read more than once (an aggregate a
delta is computed from for each client, the base of a delta codec, one converted to
JSON for each JSON client) keep that file here, so the next reads map it again instead
of downloading it again, and streams of it are served from it as a local blob is.

A blob is kept from its second read (an update is read once, by its round, and would
only push out the blobs read again and again), up to :attr:`ReadCache.capacity` bytes in
all, the least recently read going first. Files still mapped by a reader outlive their
place here: the disk they use is freed when the last map of them goes.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from typing import NamedTuple

__all__ = ["DEFAULT_CACHE_BYTES", "ReadCache"]

#: Bytes of blobs a store keeps local by default.
DEFAULT_CACHE_BYTES = 2 << 30
#: Names of blobs read once that are remembered (to keep them at their second read).
_SEEN = 4096


class _Kept(NamedTuple):
    fd: int  # the unnamed file, open to read
    size: int
    mapped: mmap.mmap


class ReadCache:
    """Unnamed local files of blobs read lately (see the module notes).

    Args:
        capacity: Most bytes of blobs kept (0: none).
    """

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes of blobs kept now."""
        return self._held

    def mapped(self, name: str) -> mmap.mmap | None:
        """The read-only map of a kept blob (None: not kept)."""
        with self._lock:
            kept = self._kept.get(name)
            if kept is None:
                return None
            self._kept.move_to_end(name)
            return kept.mapped

    def open(self, name: str) -> int | None:
        """A new descriptor of a kept blob's file, for the caller to close (None: not kept)."""
        with self._lock:
            kept = self._kept.get(name)
            if kept is None:
                return None
            self._kept.move_to_end(name)
            return os.dup(kept.fd)  # under the lock: an eviction closes the file's own

    def offer(self, name: str, fd: int, size: int, mapped: mmap.mmap) -> bool:
        """Keep a blob just read (its file ``fd`` is duplicated, not taken) if it was read
        before and fits; return whether it is kept."""
        if size > self.capacity:
            return False
        with self._lock:
            if name in self._kept:
                return True
            if name not in self._seen:
                self._seen[name] = None
                if len(self._seen) > _SEEN:
                    self._seen.popitem(last=False)
                return False
            del self._seen[name]
            self._kept[name] = _Kept(os.dup(fd), size, mapped)
            self._held += size
            while self._held > self.capacity:
                self._evict(next(iter(self._kept)))
        return True

    def drop(self, names: list[str]) -> None:
        """Forget blobs (deleted)."""
        with self._lock:
            for name in names:
                self._seen.pop(name, None)
                if name in self._kept:
                    self._evict(name)

    def _evict(self, name: str) -> None:
        kept = self._kept.pop(name)
        self._held -= kept.size
        os.close(kept.fd)  # the map, and readers' maps, stay valid
