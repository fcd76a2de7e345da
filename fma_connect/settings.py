"""Client settings.

``default_url`` is the service a WebClient talks to when no ``url`` is given: the
``FMA_CONNECT_URL`` environment variable when set at import, else the reference
server's address. Like the original client's setting, it is a plain string a program
may reassign (``fma_connect.settings.default_url = "http://fma.internal:8000/"``).

The reference server's settings are its ``fma-connect serve`` options; each has an
environment variable the option defaults to, named here (``FMA_CONNECT_`` and the
option's name): the data directory, the database replicas share, the blob store and its
S3 endpoint. They are read when a server starts, not at import.
"""

from __future__ import annotations

import os

__all__ = [
    "BLOBS_ENV",
    "DATABASE_ENV",
    "DATA_DIR_ENV",
    "DEFAULT_URL",
    "S3_ENDPOINT_URL_ENV",
    "default_url",
]

#: Where ``fma-connect serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8000/"

default_url: str = os.environ.get("FMA_CONNECT_URL") or DEFAULT_URL

#: ``fma-connect serve --data-dir``.
DATA_DIR_ENV = "FMA_CONNECT_DATA_DIR"
#: ``fma-connect serve --database``: a ``postgresql://`` URL (unset: SQLite in the data dir).
DATABASE_ENV = "FMA_CONNECT_DATABASE"
#: ``fma-connect serve --blobs``: ``s3://bucket/prefix`` (unset: ``<data dir>/blobs``).
BLOBS_ENV = "FMA_CONNECT_BLOBS"
#: ``fma-connect serve --s3-endpoint-url``: an S3-compatible store's URL.
S3_ENDPOINT_URL_ENV = "FMA_CONNECT_S3_ENDPOINT_URL"
