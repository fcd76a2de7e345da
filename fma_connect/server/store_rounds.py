"""What a round leaves in :class:`~.store.Store`: the round committed in one transaction,
the aggregates it makes, the aggregator's state, and clients' scores of aggregates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .database import Connection
from .errors import not_found
from .store_core import (
    COMPLETE,
    INVALID,
    NewBlob,
    Row,
    StoreCore,
    _deleted,
    _insert_blob,
    _require,
    now,
)

__all__ = ["InputsChanged", "RoundRows", "inputs_sha256"]


class RoundRows(StoreCore):
    """The rounds' records: aggregates, aggregator states, scores (a part of
    :class:`~.store.Store`)."""

    def record_round(
        self,
        model_id: int,
        blob: NewBlob | None,
        aggregator: str,
        used: Sequence[int],
        invalid: Mapping[int, str],
        *,
        step: NewBlob | None = None,
        residual: NewBlob | None = None,
        state: NewBlob | None = None,
    ) -> int | None:
        """Commit an aggregation round in one transaction; return the new aggregate's id.

        Args:
            model_id: The model.
            blob: The result's blob; None when no update was usable.
            aggregator: The aggregator's name.
            used: Updates averaged into the result (marked COMPLETE).
            invalid: Updates refused, with the reason (marked INVALID).
            step: The ``sparse`` payload from the previous aggregate (the parent; None:
                the initial model) that decodes to the result, for a sparse step.
            residual: The model's new residual (see ``aggregate_fraction``), which
                replaces the one it had (its row is deleted; the caller deletes its file);
                None: it has none after this round.
            state: The aggregator's new state (a stateful aggregator such as
                ``fed_adam``), which replaces the model's previous one in the same
                transaction, so the state always belongs to the newest aggregate (the
                caller deletes the old file, see :meth:`aggregator_state`); None: the
                state is left as it is.

        The aggregate row records what it was made of: how many updates, the SHA-256 of
        their sorted ids (:func:`inputs_sha256`) and ``blob.sha256`` (the aggregate
        blob's, when the round computed it), which ``admin verify`` checks.

        Raises:
            HTTPError: 404, the model was deleted during the round; what
                :attr:`round_fence` raises (409, the round was taken over).
            InputsChanged: an update of ``used`` is INVALID now (its client or key was
                revoked during the round, which marked it so): nothing is committed, and
                the round runs again without it.
        """
        with self.transaction() as conn:
            _require(conn, "models", model_id, not_found)
            if self.round_fence is not None:
                self.round_fence(conn, model_id)
            changed: list[int] = []
            for start in range(0, len(used), 500):  # a few queries, not one per update
                part = list(used[start : start + 500])
                sql = (
                    f"SELECT id FROM updates WHERE id IN ({', '.join('?' * len(part))}) "
                    "AND status = ? ORDER BY id"
                )
                changed += [row["id"] for row in conn.execute(sql, (*part, INVALID)).fetchall()]
            if changed:
                raise InputsChanged(changed)
            conn.executemany(
                "UPDATE updates SET status = ?, status_reason = ? WHERE id = ?",
                [(INVALID, reason, i) for i, reason in invalid.items()],
            )
            if blob is None:
                return None
            parent = conn.execute(
                "SELECT MAX(id) AS id FROM aggregates WHERE federated_model = ?", (model_id,)
            ).fetchone()["id"]
            blob_id = _insert_blob(conn, model_id, blob)
            step_id = None if step is None else _insert_blob(conn, model_id, step)
            cursor = conn.execute(
                "INSERT INTO aggregates (federated_model, blob, parent, step_blob, aggregator, "
                "created_on, inputs, inputs_sha256, blob_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    model_id,
                    blob_id,
                    parent,
                    step_id,
                    aggregator,
                    now(),
                    len(used),
                    inputs_sha256(used),
                    blob.sha256,
                ),
            )
            aggregate_id = int(cursor.fetchone()["id"])
            conn.executemany(
                "UPDATE updates SET status = ?, applied_aggregate = ? WHERE id = ?",
                [(COMPLETE, aggregate_id, i) for i in used],
            )
            old = conn.execute(
                "SELECT residual_blob FROM models WHERE id = ?", (model_id,)
            ).fetchone()["residual_blob"]
            new = None if residual is None else _insert_blob(conn, model_id, residual)
            conn.execute("UPDATE models SET residual_blob = ? WHERE id = ?", (new, model_id))
            if old is not None:
                conn.execute("DELETE FROM blobs WHERE id = ?", (old,))
            if state is not None:
                _replace_state(conn, model_id, aggregator, state, aggregate_id)
            return aggregate_id

    # -- aggregator states ---------------------------------------------------------

    def aggregator_state(self, model_id: int) -> Row | None:
        """The model's aggregator state, if it has one.

        Returns:
            ``{federated_model, blob, aggregator, aggregate, updated_on, codec,
            filename}``: the state's tensors are in blob ``blob`` (file ``filename``,
            codec ``codec``), written by aggregator ``aggregator`` in the round that
            made aggregate ``aggregate``.
        """
        sql = (
            "SELECT s.*, b.codec AS codec, b.filename AS filename FROM aggregator_states s "
            "JOIN blobs b ON b.id = s.blob WHERE s.federated_model = ?"
        )
        return self.one(sql, (model_id,))

    def replace_aggregator_state(
        self, model_id: int, aggregator: str, blob: NewBlob | None, aggregate: int | None
    ) -> str | None:
        """Replace (``blob`` None: drop) the model's aggregator state.

        Returns:
            The previous state's blob file, which the caller deletes; None when there
            was none.

        Raises:
            HTTPError: 404, the model is gone.
        """
        with self.transaction() as conn:
            _require(conn, "models", model_id, not_found)
            if blob is None:
                return _drop_state(conn, model_id)
            return _replace_state(conn, model_id, aggregator, blob, aggregate)

    # -- aggregates and scores ----------------------------------------------------

    def get_aggregate(self, aggregate_id: int) -> Row | None:
        """Return an aggregate row."""
        return self.one("SELECT * FROM aggregates WHERE id = ?", (aggregate_id,))

    def latest_aggregate(self, model_id: int) -> Row | None:
        """Return the model's newest aggregate."""
        sql = "SELECT * FROM aggregates WHERE federated_model = ? ORDER BY id DESC LIMIT 1"
        return self.one(sql, (model_id,))

    def recent_aggregate_ids(self, model_id: int, limit: int) -> list[int]:
        """Ids of the model's ``limit`` newest aggregates."""
        sql = "SELECT id FROM aggregates WHERE federated_model = ? ORDER BY id DESC LIMIT ?"
        return [row["id"] for row in self.all(sql, (model_id, limit))]

    def insert_score(self, aggregate_id: int, client: str, results: Any) -> int | None:
        """Store a client's validation results; None if it already scored this aggregate.

        Raises:
            HTTPError: 400 naming ``aggregate``, when it is gone (its model was deleted).
        """
        try:
            with self.transaction() as conn:
                _require(
                    conn, "aggregates", aggregate_id, lambda: _deleted("aggregate", aggregate_id)
                )
                cursor = conn.execute(
                    "INSERT INTO scores (aggregate, client, validation_results, created_on) "
                    "VALUES (?, ?, ?, ?) RETURNING id",
                    (aggregate_id, client, orjson.dumps(results).decode(), now()),
                )
                return int(cursor.fetchone()["id"])
        except self.db.integrity_errors:
            return None

    def get_score(self, score_id: int) -> Row | None:
        """Return a score row."""
        return self.one("SELECT * FROM scores WHERE id = ?", (score_id,))


class InputsChanged(Exception):
    """A round's inputs changed while it ran (see :meth:`Store.record_round`)."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"updates {list(ids)} were marked INVALID during the round")
        self.ids = list(ids)


def inputs_sha256(ids: Sequence[int]) -> str:
    """The SHA-256 (hex) of update ids, sorted, as decimal text joined by commas."""
    return hashlib.sha256(",".join(str(i) for i in sorted(ids)).encode()).hexdigest()


def _drop_state(conn: Connection, model_id: int) -> str | None:
    """Delete the model's aggregator state row and its blob row; return the blob file."""
    sql = (
        "SELECT s.blob AS blob, b.filename AS filename FROM aggregator_states s "
        "JOIN blobs b ON b.id = s.blob WHERE s.federated_model = ?"
    )
    old = conn.execute(sql, (model_id,)).fetchone()
    if old is None:
        return None
    conn.execute("DELETE FROM aggregator_states WHERE federated_model = ?", (model_id,))
    conn.execute("DELETE FROM blobs WHERE id = ?", (old["blob"],))
    return str(old["filename"])


def _replace_state(
    conn: Connection, model_id: int, aggregator: str, blob: NewBlob, aggregate: int | None
) -> str | None:
    """Put ``blob`` in as the model's aggregator state; return the old state's blob file."""
    old = _drop_state(conn, model_id)
    blob_id = _insert_blob(conn, model_id, blob)
    conn.execute(
        "INSERT INTO aggregator_states (federated_model, blob, aggregator, aggregate, "
        "updated_on) VALUES (?, ?, ?, ?, ?)",
        (model_id, blob_id, aggregator, aggregate, now()),
    )
    return old
