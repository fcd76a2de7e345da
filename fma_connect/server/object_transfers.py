"""Moving bytes between local files and objects, in parts: the transfers under
:class:`~.object_store.S3BlobStore`.

A local file uploaded as an object (one PUT, or a multipart upload of
:attr:`~.object_store.S3BlobStore.part_size` parts), objects concatenated by the store
itself, ranged GETs written into a local file, and the unnamed scratch files they fill;
parts and ranges go :attr:`~.object_store.S3BlobStore.concurrency` at a time. Every
operation here takes object keys, not blob names. (The chunks of resumable uploads are
:mod:`.object_store_uploads`'.)
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from .blobs import _TMP_PREFIX, CHUNK
from .file_writes import write_all
from .object_errors import ObjectStoreError, asking

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["MAX_PARTS", "S3Transfers"]

#: S3's most parts of one multipart upload.
MAX_PARTS = 10_000
_T = TypeVar("_T")
_R = TypeVar("_R")


class S3Transfers:
    """The transfers of :class:`~.object_store.S3BlobStore` (a part of it, which sets
    these attributes; see its arguments)."""

    client: S3Client
    bucket: str
    part_size: int
    concurrency: int
    #: Local scratch (see :class:`~.object_store.S3BlobStore`).
    directory: Path

    # -- writing -------------------------------------------------------------------------

    def put_file(self, fd: int, nbytes: int, key: str) -> None:
        """Upload the first ``nbytes`` of the open file ``fd`` as the object ``key``.

        One PUT up to :attr:`part_size`, else a multipart upload (aborted if any part
        fails: no object, no parts left billed). The file must be ``nbytes`` long.
        """
        if nbytes <= self.part_size:
            # A file body: boto3 streams it, so a PUT holds no part of it in memory.
            with asking(f"writing {key}"), os.fdopen(os.dup(fd), "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            return
        part = max(self.part_size, math.ceil(nbytes / MAX_PARTS))

        def send(upload_id: str, number: int) -> CompletedPartTypeDef:
            # Read in the worker: at most `concurrency` parts are in memory at once.
            data = os.pread(fd, part, (number - 1) * part)
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            return {"ETag": answer["ETag"], "PartNumber": number}

        self.multipart(key, send, range(1, math.ceil(nbytes / part) + 1))

    def copy_parts(self, sources: Sequence[str], key: str) -> None:
        """Make the object ``key`` the concatenation of the objects ``sources``, copied
        by the store itself (each but the last at least
        :data:`~.object_store.MIN_PART_SIZE` long)."""
        if len(sources) == 1:
            with asking(f"copying {sources[0]} to {key}"):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=key,
                    CopySource={"Bucket": self.bucket, "Key": sources[0]},
                )
            return

        def copy(upload_id: str, number: int) -> CompletedPartTypeDef:
            answer = self.client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": sources[number - 1]},
            )
            return {"ETag": answer["CopyPartResult"]["ETag"], "PartNumber": number}

        self.multipart(key, copy, range(1, len(sources) + 1))

    def multipart(
        self, key: str, part: Callable[[str, int], CompletedPartTypeDef], numbers: Sequence[int]
    ) -> None:
        """One multipart upload of ``key`` whose part ``n`` is ``part(upload id, n)``."""
        with asking(f"writing {key} in {len(numbers)} parts"):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
            try:
                parts = self.each(lambda number: part(upload_id, number), numbers)
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with contextlib.suppress(BotoCoreError, ClientError):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                raise

    def each(self, task: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``task`` of every item, :attr:`concurrency` at a time; the first error stops
        those not started and is raised."""
        if len(items) <= 1:
            return [task(item) for item in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items)), "fma-s3") as pool:
            futures = [pool.submit(task, item) for item in items]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # -- reading -------------------------------------------------------------------------

    def size(self, key: str) -> int:
        """The length of the object ``key``."""
        with asking(f"reading {key}"):
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]

    def scratch(self) -> int:
        """A new local file with no name (a crash leaves nothing), open to read and write."""
        path = self.directory / f"{_TMP_PREFIX}{secrets.token_hex(16)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(path)
        return fd

    def download(self, key: str, fd: int, offset: int, length: int, at: int | None = None) -> None:
        """Write ``length`` bytes of ``key`` from ``offset`` into ``fd`` at ``at`` (default:
        ``offset``), 1 MiB at a time.

        Raises:
            FileNotFoundError: there is no such object.
            ObjectStoreError: the store failed, or the object is shorter.
        """
        position = offset if at is None else at
        end = position + length
        with asking(f"reading {key}"):
            answer = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            body = answer["Body"]
            try:
                while position < end and (chunk := body.read(min(CHUNK, end - position))):
                    position = write_all(fd, chunk, position)
            finally:
                body.close()
        if position != end:
            raise ObjectStoreError(f"reading {key}: {end - position} bytes short")
