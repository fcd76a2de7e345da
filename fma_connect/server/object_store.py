"""Blobs in S3-compatible object storage: :class:`S3BlobStore` (``s3://bucket/prefix``).

Written for AWS S3 and the stores that speak its API (MinIO, Ceph RGW, Cloudflare R2,
Backblaze B2, Wasabi, Garage, ...), through boto3, and tested against moto's standalone
server. Any number of server replicas may share one bucket (and one database): a blob
is written once, under a random name, and never changed, so replicas need no locks.

Objects: a blob ``<name>.blob`` is ``<prefix>/blobs/<name>.blob``; the chunks of an open
resumable upload are ``<prefix>/uploads/<id>/<index>`` (see :mod:`.object_store_uploads`).

Memory is bounded as the local directory's is, with local scratch files under
``<data_dir>/blob-spool/<store>/`` doing what the page cache does for the directory:

- Writing (:class:`~.object_writer.S3BlobWriter`): a blob is spooled to a local file
  as it arrives (the server decodes and checks an update from it before it is stored)
  and streamed to a multipart upload as it grows, in parts of :attr:`S3BlobStore.part_size`
  sent :attr:`S3BlobStore.concurrency` at a time (at most ``part_size * concurrency``
  bytes in memory, 64 MiB by default); the commit sends the tail and completes it. The
  object appears only when complete; a discarded or failed write is aborted and leaves
  none. A round's mean, computed in place (:class:`~.in_place.InPlace`), fills the spool
  file through its writable map as it does a blob file, and is uploaded at the commit.
- Reading a whole blob (:meth:`S3BlobStore.read`, for decoding and aggregation):
  ranged GETs, ``concurrency`` at a time, into an unnamed local file that is then
  mapped read-only, as a blob file is. Aggregation then reads its slices from the page
  cache: memory O(model), disk O(blobs being read), nothing left behind by a crash.
- Serving (:meth:`S3BlobStore.stream_file`): one ranged GET of the span asked for, read
  1 MiB at a time in worker threads, and read on from where it broke if the connection
  to the store breaks.
- Blobs read whole more than once (the bases of deltas, an aggregate converted for JSON
  clients) keep their local file, up to 2 GiB by default, and are read and served from
  it (:class:`~.object_cache.ReadCache`).

The parts: :mod:`.object_client` makes the boto3 client (:func:`make_client`, one
loader of botocore's models for every client); :mod:`.object_transfers` moves bytes
between local files and objects (multipart uploads, ranged GETs into scratch files,
``concurrency`` at a time); :mod:`.object_writer`, :mod:`.object_stream`,
:mod:`.object_cache` and :mod:`.object_store_uploads` write, serve, keep and receive
blobs as above. The store, :class:`S3BlobStore`, is here: names, reads, deletion and
sweeps.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from .blobs import _BLOB_NAME, _SUFFIX, CHUNK, BlobStore, BlobStream
from .object_cache import DEFAULT_CACHE_BYTES, ReadCache
from .object_client import make_client
from .object_errors import ObjectStoreError, asking, store_error
from .object_stream import S3BlobStream
from .object_transfers import S3Transfers
from .object_writer import S3BlobWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .upload_parts import UploadParts

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "SWEEP_GRACE",
    "ObjectStoreError",
    "S3BlobStore",
    "S3BlobWriter",
    "make_client",
]

log = logging.getLogger(__name__)

#: Bytes per part of a multipart upload, and per ranged GET of a whole-blob read.
DEFAULT_PART_SIZE = 16 << 20
#: S3's least part size (all but a multipart upload's last part).
MIN_PART_SIZE = 5 << 20
#: Parts (or ranges) in flight at once per blob written or read.
DEFAULT_CONCURRENCY = 4
#: Seconds an unreferenced object (or an unfinished multipart upload) must be old before
#: :meth:`S3BlobStore.sweep` deletes it: another replica may be committing it right now.
SWEEP_GRACE = 3600.0
_SPOOL = "blob-spool"


class S3BlobStore(S3Transfers, BlobStore):
    """Blobs as objects under ``<prefix>/blobs/`` of an S3 bucket (see the module notes).

    Args:
        client: The S3 client (:func:`make_client`).
        bucket: The bucket.
        prefix: The key prefix (no leading or trailing slash; empty: the bucket's root).
        data_dir: The server's data directory (scratch files go in ``blob-spool/``).
        part_size: Bytes per part of a multipart upload and per ranged GET of a read.
        concurrency: Parts or ranges in flight at once per blob.
        sweep_grace: See :data:`SWEEP_GRACE`.
        cache_bytes: Most bytes of blobs read more than once kept local
            (:class:`~.object_cache.ReadCache`; 0: none).

    Raises:
        ValueError: ``part_size`` is below S3's least part, or ``concurrency`` below 1.
    """

    sweeps_while_shared = True  # what it deletes is older than sweep_grace

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        data_dir: Path,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        sweep_grace: float = SWEEP_GRACE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"parts of {part_size} bytes: S3 takes parts of {MIN_PART_SIZE}+")
        if concurrency < 1:
            raise ValueError(f"expected a concurrency of 1 or more, got {concurrency}")
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.concurrency = concurrency
        self.sweep_grace = sweep_grace
        #: Blobs read more than once, kept local.
        self.cache = ReadCache(cache_bytes)
        #: Local scratch: blobs being written, unnamed files of blobs being read, and the
        #: chunks being received. This store's own: replicas may share a data directory.
        self.directory = data_dir / _SPOOL / secrets.token_hex(8)
        self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def connect(
        cls, bucket: str, prefix: str, data_dir: Path, *, endpoint_url: str | None = None
    ) -> S3BlobStore:
        """The store of ``s3://bucket/prefix``, once the bucket answered.

        Raises:
            ObjectStoreError: the bucket cannot be reached (credentials, a missing
                bucket, the endpoint): said at start-up rather than at the first update.
        """
        client = make_client(endpoint_url)
        where = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")
        try:
            client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError) as exc:
            found = store_error(exc, f"checking {where}")
            reason = "no such bucket" if isinstance(found, FileNotFoundError) else found
            raise ObjectStoreError(
                f"checking {where}: {reason} (credentials come from AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws; an S3-compatible store's URL "
                "from --s3-endpoint-url)"
            ) from exc
        return cls(client, bucket, prefix, data_dir)

    def __repr__(self) -> str:
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}')"

    # -- names ---------------------------------------------------------------------------

    def key(self, filename: str) -> str:
        """The object key of a blob.

        Raises:
            ValueError: ``filename`` is not a name the server gives blobs.
        """
        if not _BLOB_NAME.fullmatch(filename):
            raise ValueError(f"not a blob file name: {filename!r}")
        return f"{self.prefix}blobs/{filename}"

    def path(self, filename: str) -> Path:
        """Refused: a blob here is an object, not a file (use :meth:`read`,
        :meth:`read_range` or :meth:`stream_file`).

        Raises:
            ValueError: always (after checking the name, as the directory's does).
        """
        raise ValueError(
            f"blob {filename!r} is the object s3://{self.bucket}/{self.key(filename)}, not a file"
        )

    def upload_parts(self, data_dir: Path) -> UploadParts:
        """The open uploads' chunks, as objects (:class:`~.object_store_uploads.S3UploadParts`)."""
        from .object_store_uploads import S3UploadParts  # here: it imports this module

        return S3UploadParts(self, self.directory / "uploads")

    # -- writing -------------------------------------------------------------------------

    def writer(self) -> S3BlobWriter:
        """Start a new blob (spooled locally, uploaded by its commit)."""
        return S3BlobWriter(self)

    def adopt(self, path: Path) -> S3BlobWriter:
        """Move the finished local file ``path`` in as a blob to commit (or discard)."""
        return S3BlobWriter(self, path)

    # -- reading -------------------------------------------------------------------------

    def read(self, filename: str) -> Any:
        """Download a blob into an unnamed local file and map it read-only (bytes for an
        empty blob); see the module notes.

        Raises:
            FileNotFoundError: there is no such blob.
            ObjectStoreError: the store failed.
        """
        key = self.key(filename)
        kept = self.cache.mapped(filename)
        if kept is not None:
            return kept
        size = self.size(key)
        if size == 0:
            return b""
        fd = self.scratch()
        try:
            os.ftruncate(fd, size)
            spans = [(at, min(self.part_size, size - at)) for at in range(0, size, self.part_size)]
            self.each(lambda span: self.download(key, fd, *span), spans)
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            self.cache.offer(filename, fd, size, mapped)
            return mapped
        finally:
            os.close(fd)

    def read_range(self, filename: str, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes of a blob from ``offset``; None if the blob is gone, its
        name is not a blob's, it is shorter, or the store fails."""
        try:
            key = self.key(filename)
            with asking(f"reading {key}"):
                answer = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
                )
                data = answer["Body"].read()
        except (OSError, ValueError):
            return None
        return data if len(data) == length else None

    def iter_file(self, filename: str) -> Iterator[bytes]:
        """Start a GET of a blob now and return an iterator over its bytes in 1 MiB chunks."""
        key = self.key(filename)
        with asking(f"reading {key}"):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                with asking(f"reading {key}"):
                    while chunk := body.read(CHUNK):
                        yield chunk
            finally:
                body.close()

        return chunks()

    def stream_file(self, filename: str, start: int = 0, end: int | None = None) -> BlobStream:
        """An async iterator over a blob's bytes ``[start, end)``, for responses: from its
        local copy if one is kept (:class:`~.blobs.BlobStream`, as a local blob is
        served), else from the store (:class:`~.object_stream.S3BlobStream`)."""
        key = self.key(filename)
        fd = self.cache.open(filename)
        if fd is not None:
            return BlobStream(os.fdopen(fd, "rb"), start, end)
        return S3BlobStream(self, key, start, end)

    def open_range(self, key: str, start: int, stop: int | None) -> Any:
        """The streaming body of a GET of ``key``'s bytes ``[start, stop)``; None when
        the span starts past the object's end."""
        span = f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, Range=span)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise store_error(exc, f"reading {key}") from exc
        except (BotoCoreError, urllib3.exceptions.HTTPError) as exc:
            raise store_error(exc, f"reading {key}") from exc

    # -- deleting ------------------------------------------------------------------------

    def delete(self, filenames: Iterable[str]) -> None:
        """Delete blobs (missing ones are ignored).

        Best effort: a failed request is logged, and what it left is swept later
        (:meth:`sweep`), as a crash's leftovers are.
        """
        names = list(filenames)
        keys = [self.key(name) for name in names]
        self.cache.drop(names)
        self.delete_keys(keys)

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete objects, 1000 a request (S3's most); failures are logged (see :meth:`delete`)."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                with asking(f"deleting {len(batch)} objects"):
                    answer = self.client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                    )
            except OSError as exc:
                log.warning("%s; the sweep at the next start removes them", exc)
                continue
            for error in answer.get("Errors", []):
                log.warning("could not delete %s: %s", error.get("Key"), error.get("Message"))

    def listing(self, prefix: str) -> Iterator[tuple[str, float]]:
        """The keys under ``prefix`` (after this store's) and their ages in seconds."""
        pages = self.client.get_paginator("list_objects_v2")
        with asking(f"listing {self.prefix}{prefix}"):
            for page in pages.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}{prefix}"):
                for entry in page.get("Contents", []):
                    yield entry["Key"], time.time() - entry["LastModified"].timestamp()

    def sweep_scratch(self) -> int:
        """Delete the scratch directories of stores that left (a crash's, or an earlier
        run's): those untouched for :attr:`sweep_grace`; return how many went."""
        removed = 0
        for entry in self.directory.parent.iterdir():
            if entry == self.directory or not entry.is_dir():
                continue
            touched = max(
                [entry.stat().st_mtime] + [sub.stat().st_mtime for sub in entry.iterdir()]
            )
            if time.time() - touched >= self.sweep_grace:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def sweep(self, referenced: set[str]) -> int:
        """Delete the blobs not in ``referenced``, the multipart uploads left unfinished,
        and the scratch directories of stores that left; return how many went.

        Objects, uploads and scratch younger than :attr:`sweep_grace` stay: another
        replica may be between its commit and its database's, or using its scratch.
        Safe to call while other replicas run; call it at start-up.
        """
        removed = self.sweep_scratch()
        stale = [
            key
            for key, age in self.listing("blobs/")
            if age >= self.sweep_grace
            and (name := key.rpartition("/")[2]).endswith(_SUFFIX)
            and name not in referenced
        ]
        self.delete_keys(stale)
        pages = self.client.get_paginator("list_multipart_uploads")
        with asking(f"listing the unfinished uploads under {self.prefix}"):
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for upload in page.get("Uploads", []):
                    if time.time() - upload["Initiated"].timestamp() >= self.sweep_grace:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed += 1
        return removed + len(stale)
