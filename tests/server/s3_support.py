"""An S3-compatible object store for tests: moto's standalone server on loopback.

A pytest plugin that tests/conftest.py registers for the whole run (``pytest_plugins``;
``from s3_support import S3Bucket`` for the type). It imports boto3 and moto only inside
its fixtures, so a run without them (the tensorflow env) still collects. Its fixtures:

- ``moto_endpoint`` (session): the URL of one moto server for the whole run, a child
  process on 127.0.0.1 and an ephemeral port;
- ``s3_bucket``: a fresh, empty bucket for each test (:class:`S3Bucket`), with the AWS
  environment set so that boto3 finds the server and fake credentials (and nothing of
  the machine's own ``~/.aws``); emptied and deleted after the test, so the server's
  memory and spool files do not grow with the run;
- ``s3_blobs_url``: that bucket as a server's ``blobs`` URL (``s3://<bucket>/<prefix>``),
  for ``create_app(blobs=..., s3_endpoint_url=s3_bucket.endpoint_url)``;
- ``s3_blobs_env``: the same, set as ``FMA_CONNECT_BLOBS`` and
  ``FMA_CONNECT_S3_ENDPOINT_URL`` for every server the test starts (in-process or a
  child process), as the ``database`` fixture sets ``FMA_CONNECT_DATABASE``: what runs
  an unchanged server test against the object store (tests/conftest.py uses it for the
  server suite's ``[postgresql]`` runs).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Bucket", "StoredBlobs", "moto_endpoint", "s3_blobs_env", "s3_blobs_url", "s3_bucket"]

_buckets = itertools.count()

#: The moto server's command line (``moto_server``, run by this interpreter).
_MOTO_MAIN = "from moto.server import main; main()"
_MOTO_LISTENING = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")
_MOTO_START_TIMEOUT = 30.0


#: The fake AWS credentials and region the tests use (moto accepts any).
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Bucket:
    """A test's bucket on the moto server.

    Attributes:
        endpoint_url: The server's URL.
        name: The bucket.
        client: A boto3 client of the server (to look at what the code under test left).
    """

    endpoint_url: str
    name: str
    client: S3Client

    def keys(self, prefix: str = "") -> list[str]:
        """The keys of the bucket's objects under ``prefix``, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return sorted(str(entry["Key"]) for page in pages for entry in page.get("Contents", []))

    def multipart_uploads(self) -> list[str]:
        """The keys of the bucket's unfinished multipart uploads."""
        answer = self.client.list_multipart_uploads(Bucket=self.name)
        return sorted(str(upload["Key"]) for upload in answer.get("Uploads", []))

    def remove(self) -> None:
        """Delete the bucket: its unfinished multipart uploads, its objects, then itself.

        Best effort: a bucket the test deleted is gone already, and one that a lingering
        server thread wrote to meanwhile stays.
        """
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):  # NoSuchBucket, BucketNotEmpty: see above
            uploads = self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
            for upload in uploads:
                self.client.abort_multipart_upload(
                    Bucket=self.name, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            keys = self.keys()
            for start in range(0, len(keys), 1000):  # at most 1000 keys per call
                batch = keys[start : start + 1000]
                self.client.delete_objects(
                    Bucket=self.name, Delete={"Objects": [{"Key": key} for key in batch]}
                )
            self.client.delete_bucket(Bucket=self.name)


class StoredBlobs:
    """The blobs a test's servers stored, in a directory or in a bucket (the server suite's
    ``stored_blobs`` fixture, see tests/conftest.py): for a test that checks what was
    stored or deleted (or loses a payload on purpose) on either store, rather than looking
    in the local directory as a ``local_blobs`` test does.

    Args:
        directory: The local store's directory (``<data dir>/blobs``).
        bucket: The bucket of an S3 store (None: the directory's store).
        blobs_url: The S3 store's ``s3://bucket/prefix``.
    """

    def __init__(self, directory: Path, bucket: S3Bucket | None, blobs_url: str | None) -> None:
        self._directory = directory
        self._bucket = bucket
        # The store's blobs are under <prefix>/blobs/ of the bucket (see S3BlobStore).
        prefix = urlsplit(blobs_url).path.strip("/") if blobs_url else ""
        self._prefix = f"{prefix}/blobs/" if prefix else "blobs/"

    def names(self) -> list[str]:
        """Every name in the store (scratch files included, in the directory), sorted."""
        if self._bucket is not None:
            return [key.removeprefix(self._prefix) for key in self._bucket.keys(self._prefix)]
        if not self._directory.is_dir():
            return []
        return sorted(path.name for path in self._directory.iterdir())

    def delete_all(self) -> None:
        """Lose every stored blob, as a disk or a bucket might."""
        for name in self.names():
            if self._bucket is not None:
                self._bucket.client.delete_object(Bucket=self._bucket.name, Key=self._prefix + name)
            else:
                (self._directory / name).unlink()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto S3 server for the run, on 127.0.0.1 and an ephemeral port.

    It runs in a child process, not in a thread of the test process: what moto holds and
    computes is then not counted by a test that measures its own memory (tracemalloc),
    and does not take the GIL from the servers under test. Its log is ``moto.log`` in the
    session's temporary directory.
    """
    pytest.importorskip("moto", reason="the object-store tests need moto[server] (test extra)")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_MAIN, "-H", "127.0.0.1", "-p", "0"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield _wait_for_moto(process, log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_moto(process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL the moto server announced in its log.

    Raises:
        RuntimeError: it exited, or said nothing within 30 s.
    """
    deadline = time.monotonic() + _MOTO_START_TIMEOUT
    while (found := _MOTO_LISTENING.search(log.read_text())) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"the moto server did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return found.group(1)


@pytest.fixture(scope="session")
def _moto_client(moto_endpoint: str) -> S3Client:
    """A boto3 client of the moto server for the whole run (a client takes ~0.1 s to make)."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=_CREDENTIALS["AWS_SESSION_TOKEN"],
        region_name=_CREDENTIALS["AWS_DEFAULT_REGION"],
    )
    return session.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def s3_bucket(
    moto_endpoint: str,
    _moto_client: S3Client,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[S3Bucket]:
    """A new empty bucket on the moto server, and an AWS environment that points at it."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    for name, value in {
        **_CREDENTIALS,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"fma-test-{next(_buckets)}"
    _moto_client.create_bucket(Bucket=bucket)
    made = S3Bucket(moto_endpoint, bucket, _moto_client)
    yield made
    made.remove()


@pytest.fixture
def s3_blobs_url(s3_bucket: S3Bucket) -> str:
    """The test's bucket as a server's blobs URL, under a prefix (as deployments use)."""
    return f"s3://{s3_bucket.name}/fma"


@pytest.fixture
def s3_blobs_env(s3_blobs_url: str, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every server the test starts keeps its blobs in the test's bucket; return its URL."""
    from fma_connect.settings import BLOBS_ENV, S3_ENDPOINT_URL_ENV

    monkeypatch.setenv(BLOBS_ENV, s3_blobs_url)
    monkeypatch.setenv(S3_ENDPOINT_URL_ENV, s3_bucket.endpoint_url)
    return s3_blobs_url
