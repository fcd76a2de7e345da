"""What the reference server refuses to take in, and the pause points of its crash tests.

Limits (each configurable: :func:`~fma_connect.server.create_app` arguments and
``fma-connect serve`` options):

* the request body (413 with a JSON error naming the cap and what arrived), checked
  from ``Content-Length`` before anything is read, and while streaming a chunked body:
  an update at most ``max_body_bytes`` (it is spooled to disk); a model's creation, which
  carries the initial model, the smaller of that and :data:`MODEL_BODY_BYTES`; every
  other body (scores, publish, patch...) :data:`JSON_BODY_BYTES`, since it is read into
  memory and holds a few fields;
* the tensors in one update (or initial model): at most ``max_tensors`` (400), counted
  before any tensor is built (from the msgpack header, the npz-b64 archive directory,
  the length of the plain-lists ``data``; codecs that cannot tell are counted after
  decoding, see :func:`~fma_connect.codecs.base.decode_with`);
* a model's ``update_schema`` (JSON Schema, as in the stock service) is checked on the
  ``data`` of a plain-lists JSON update as sent, and on the plain-lists form of any
  other update (binary, or a tagged object such as npz-b64: what the same weights would
  be in the ``json`` codec), so no codec bypasses it.

Pause points let a test kill the server at a chosen moment: with
``FMA_CONNECT_TEST_PAUSE=<point>:<file>`` in its environment, a server that reaches
``<point>`` creates ``<file>`` and blocks that request for good (the test then sends
SIGKILL). Points: ``update-stored`` (an update's blob is on disk, its row is not),
``round-running`` (a round's updates are RUNNING, nothing is written yet) and
``round-stored`` (the aggregate's blob is on disk, its row is not).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson

from ..codecs.base import Tensors
from ..codecs.json_lists import MAX_DOCUMENT_BYTES, JsonListsCodec
from ..exceptions import EncodeError
from .errors import HTTPError, bad_request
from .validation import check_against_schema

__all__ = [
    "DEFAULT_MAX_TENSORS",
    "JSON_BODY_BYTES",
    "MODEL_BODY_BYTES",
    "PAUSE_ENV",
    "PAUSE_POINTS",
    "PausePoint",
    "check_tensors_schema",
    "too_many_tensors",
]

#: Most tensors one update may hold. The largest common models have a few thousand;
#: each tensor costs the server ~1.5 KB and ~20 µs (msgpack; npz-b64 ~45 µs) to decode
#: and check, so this bounds one request's tensors to ~30 MB (docs/RELIABILITY.md, 6).
DEFAULT_MAX_TENSORS = 20_000
#: Largest body of the routes that take a few JSON fields (scores, publish, patch...).
JSON_BODY_BYTES = 1 << 20
#: Largest body creating a model: the initial model travels in it as JSON, which orjson
#: cannot parse from 2 GiB on (``max_body_bytes`` lowers it).
MODEL_BODY_BYTES = MAX_DOCUMENT_BYTES - 1
PAUSE_ENV = "FMA_CONNECT_TEST_PAUSE"
PAUSE_POINTS = ("update-stored", "round-running", "round-stored")


def too_many_tensors(count: int, limit: int, field: str = "data") -> HTTPError:
    """The 400 ``{field: [why]}`` refusing an update of ``count`` tensors, over ``limit``.

    Decoding with ``decode_with(..., max_tensors=limit)`` raises
    :class:`~fma_connect.exceptions.TooManyTensorsError`, which carries both numbers.
    """
    return bad_request(
        field,
        f"The weights hold {count} tensors; this server accepts at most {limit} "
        "(fma-connect serve --max-tensors).",
    )


def check_tensors_schema(schema: Any, tensors: Tensors) -> None:
    """Check an update's tensors against the model's ``update_schema`` (None: no check).

    For updates in any codec but plain ``json`` (binary bodies, tagged JSON objects):
    the schema sees the plain-lists form of the tensors, as a ``json`` update of the
    same weights would send them.

    Raises:
        HTTPError: 400 when the weights do not match, or have no plain JSON form
            (complex, NaN or infinite values) to check.
    """
    if schema is None:
        return
    try:
        layers = orjson.loads(
            orjson.dumps(JsonListsCodec().encode(tensors), option=orjson.OPT_SERIALIZE_NUMPY)
        )
    except (EncodeError, orjson.JSONEncodeError) as exc:
        raise bad_request(
            "data", f"The model's update_schema cannot be checked on these weights: {exc}"
        ) from exc
    check_against_schema(schema, layers, "data")


class PausePoint:
    """The test pause point configured by ``FMA_CONNECT_TEST_PAUSE`` (see the module)."""

    def __init__(self, setting: str | None = None) -> None:
        setting = os.environ.get(PAUSE_ENV) if setting is None else setting
        self.point: str | None = None
        self.marker: Path | None = None
        if setting:
            point, _, marker = setting.partition(":")
            if point not in PAUSE_POINTS or not marker:
                raise ValueError(f"{PAUSE_ENV} must be <point>:<file>, point one of {PAUSE_POINTS}")
            self.point, self.marker = point, Path(marker)

    def reached(self, point: str) -> None:
        """At the configured point: create the marker file and block forever."""
        if point != self.point or self.marker is None:
            return
        self.marker.write_text(point)
        threading.Event().wait()
