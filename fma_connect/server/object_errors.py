"""The errors of requests to an object store, as the blob layer raises them."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from .errors import ObjectStoreError

__all__ = ["ObjectStoreError", "asking", "store_error"]


def store_error(exc: BaseException, what: str) -> OSError:
    """The :class:`OSError` to raise for a failed request to the store about ``what``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in {"NoSuchKey", "404", "NotFound"}:
            return FileNotFoundError(errno.ENOENT, f"{what}: no such object")
        return ObjectStoreError(f"{what}: the object store answered {code}: {error.get('Message')}")
    return ObjectStoreError(f"{what}: {exc}")


@contextlib.contextmanager
def asking(what: str) -> Iterator[None]:
    """Turn the errors of the store's requests in the block into :func:`store_error`'s."""
    try:
        yield
    except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError) as exc:
        raise store_error(exc, what) from exc
