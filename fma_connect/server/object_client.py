"""The boto3 S3 client of an object store (:func:`make_client`), and what every client shares.

Every client made here reads credentials, region and options from the AWS environment
afresh, but shares one loader of botocore's service models for the process (parsing
them is slow enough to be felt at every server start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["make_client"]

#: botocore's loader of its service models, shared by every client made here (it caches
#: what it parsed; see :func:`make_client`).
_LOADER = botocore.session.get_session().get_component("data_loader")


def make_client(endpoint_url: str | None = None, *, max_connections: int = 32) -> S3Client:
    """A boto3 S3 client: credentials, region and options from the AWS environment
    variables and config files, as every AWS tool reads them.

    Args:
        endpoint_url: An S3-compatible store's URL (None: AWS, or ``AWS_ENDPOINT_URL_S3``).
            With one, checksums are sent only where S3 requires them: the CRC32 headers
            newer boto3 sends by default are refused by several S3-compatible stores.
        max_connections: Connections kept to the store (every stream being served and
            every part in flight holds one).
    """
    options: dict[str, Any] = {}
    if endpoint_url is not None:
        options = {
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    config = Config(
        max_pool_connections=max_connections,
        retries={"mode": "standard", "max_attempts": 5},
        **options,
    )
    # A session per client, so each reads the environment's credentials afresh; but one
    # loader of botocore's service models for the process: parsing them costs ~0.1-0.2 s
    # a session here, paid at every server start (and in every test's).
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core)
    return session.client("s3", endpoint_url=endpoint_url, config=config)
