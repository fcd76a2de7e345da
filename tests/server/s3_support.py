"""An S3-compatible object store for tests: moto's standalone server on loopback.

Fixtures, for a test module that registers this module as a plugin
(``pytest_plugins = ["s3_support"]``; ``from s3_support import S3Bucket`` for the type):

- ``moto_endpoint`` (session): the URL of one moto server on 127.0.0.1, on an
  ephemeral port, for the whole run;
- ``s3_bucket``: a fresh, empty bucket for each test (:class:`S3Bucket`), with the AWS
  environment set so that boto3 finds the server and fake credentials (and nothing of
  the machine's own ``~/.aws``);
- ``s3_blobs_url``: that bucket as a server's ``blobs`` URL (``s3://<bucket>/<prefix>``),
  for ``create_app(blobs=..., s3_endpoint_url=s3_bucket.endpoint_url)``;
- ``s3_blobs_env``: the same, set as ``FMA_CONNECT_BLOBS`` and
  ``FMA_CONNECT_S3_ENDPOINT_URL`` for every server the test starts (in-process or a
  child process), as the ``database`` fixture sets ``FMA_CONNECT_DATABASE``: what runs
  an unchanged server test against the object store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Bucket", "moto_endpoint", "s3_blobs_env", "s3_blobs_url", "s3_bucket"]

_buckets = itertools.count()


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


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server for the run, on 127.0.0.1 and an ephemeral port."""
    pytest.importorskip("moto", reason="the object-store tests need moto[server] (test extra)")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> S3Bucket:
    """A new empty bucket on the moto server, and an AWS environment that points at it."""
    import boto3

    empty = tmp_path_factory.mktemp("aws") / "none"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.session.Session().client("s3", endpoint_url=moto_endpoint)
    bucket = f"fma-test-{next(_buckets)}"
    client.create_bucket(Bucket=bucket)
    return S3Bucket(moto_endpoint, bucket, client)


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
