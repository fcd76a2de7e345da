"""Metadata of the reference server: users, clients, models, updates, aggregates.

The tables of resumable uploads in progress are here too; their queries are in
:mod:`.uploads`. Payloads live in blob files (:mod:`.blobs`); rows point at them through
the ``blobs`` table. The database is SQLite in the data directory, or a PostgreSQL that
replicas share (:mod:`.database`: what a transaction guarantees on each; the SQL here is
the subset both speak). Its schema is versioned and upgraded at start
(:mod:`.migrations`). A write that returned is on disk, so an acknowledged update
survives a crash or restart. Rows come back as plain dicts; JSON columns are decoded.

A write that needs a row another request may delete meanwhile (an update or a round of
a model being deleted, a score of its aggregate) checks for it in its transaction, and
raises the 4xx :class:`~.errors.HTTPError` the request answers, not a foreign-key error.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid as uuid_module
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from .database import Connection, Database, open_database
from .errors import HTTPError, bad_request, not_found
from .migrations import migrate

__all__ = ["PENDING", "InputsChanged", "NewBlob", "Row", "Store", "inputs_sha256", "now"]

Row = dict[str, Any]

PENDING, RUNNING, COMPLETE, FAILED, INVALID = range(5)

#: Model columns stored as JSON text.
_JSON_COLUMNS = (
    "requirement_args",
    "aggregator_args",
    "update_schema",
    "client_agg_results_schema",
    "validation_results",
    "tensor_names",
)
MODEL_FIELDS = (
    "name",
    "developer",
    "aggregator",
    "allow_aggregation",
    "requirement",
    "requirement_args",
    "update_schema",
    "client_agg_results_schema",
    "furthest_base_agg",
    "aggregate_fraction",
    "aggregate_values",
    "aggregator_args",
    "round_deadline",
    "round_quorum",
    "min_clients",
    "drop_after_missed",
    "enrolment",
)


class NewBlob(NamedTuple):
    """A blob file just written, for its row.

    Attributes:
        codec: The codec of its bytes.
        filename: Its file in the blob store.
        nbytes: Its size.
        tensor_names: The names of its tensors in order, for a codec that carries none
            (plain ``json``) when the sender gave them; None otherwise.
        sha256: The SHA-256 (hex) of its bytes, when computed (a signed update's; it is
            stored with the signature, not in the blob's row).
    """

    codec: str
    filename: str
    nbytes: int
    tensor_names: list[str] | None = None
    sha256: str | None = None


def now() -> str:
    """Return the current UTC time in the stock service's format."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class Store:
    """The server's database: a SQLite file (``<data_dir>/fma.sqlite3``), or the one
    ``database`` names.

    Args:
        path: The SQLite file, used when ``database`` is None.
        database: A ``postgresql://`` URL (see :func:`~.database.open_database`).

    Attributes:
        db: The database (:attr:`~.database.Database.shared` says whether other
            servers use it too).
        schema_found: The schema version the database had before this start (0: new,
            or made before versioning); it is :data:`~.migrations.LATEST` now.

    Raises:
        DatabaseError: it cannot be opened, or its schema is newer than this code.
    """

    def __init__(self, path: Path, database: str | None = None) -> None:
        self.db: Database = open_database(database, path, _JSON_COLUMNS)
        #: Called inside :meth:`record_round`'s transaction with the model's id; it raises
        #: to refuse the commit (a round whose lease was taken over, see :mod:`.leases`).
        self.round_fence: Callable[[Connection, int], None] | None = None
        try:
            self.schema_found, _ = migrate(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def transaction(self) -> AbstractContextManager[Connection]:
        """Run the block as one write transaction (rolled back if it raises)."""
        return self.db.transaction()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query and return every row.

        Integers have 64 bits: a parameter beyond them (an id from a URL, a page
        number) matches no row, instead of failing.
        """
        return self.db.all(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """Run a query and return its first row, or None (see :meth:`all`)."""
        return self.db.one(sql, params)

    def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a ``SELECT COUNT(*) AS n ...`` query."""
        row = self.one(sql, params)
        return int(row["n"]) if row else 0

    # -- users and clients -----------------------------------------------------------

    def ensure_admin(self, token: str | None) -> tuple[str, bool]:
        """Make sure user 1 (``admin``) exists; return its token and whether it is new.

        Args:
            token: The token to use; None keeps the stored one (or generates one).
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT token FROM users WHERE id = 1").fetchone()
            if row is None:
                token = token or secrets.token_hex(20)
                conn.execute(
                    "INSERT INTO users (id, username, token) VALUES (1, 'admin', ?)", (token,)
                )
                return token, True
            if token and token != row["token"]:
                conn.execute("UPDATE users SET token = ? WHERE id = 1", (token,))
                return token, False
            return str(row["token"]), False

    def user_by_token(self, token: str) -> Row | None:
        """Return the user owning ``token``."""
        return self.one("SELECT id, username FROM users WHERE token = ?", (token,))

    def user_by_name(self, username: str) -> Row | None:
        """Return the user called ``username`` (with its token)."""
        return self.one("SELECT * FROM users WHERE username = ?", (username,))

    def user_exists(self, user_id: int) -> bool:
        """Whether a user has this id."""
        return self.one("SELECT id FROM users WHERE id = ?", (user_id,)) is not None

    def client_exists(self, client: str) -> bool:
        """Whether a client has this UUID."""
        return self.one("SELECT uuid FROM clients WHERE uuid = ?", (client,)) is not None

    def register_client(self, model_id: int, client: str | None) -> str:
        """Register ``client`` (a new one if None) with a model; return its UUID.

        Raises:
            HTTPError: 404, the model is gone (deleted since the request looked it up).
        """
        with self.transaction() as conn:
            _require(conn, "models", model_id, not_found)
            if client is None:
                client = str(uuid_module.uuid4())
                conn.execute(
                    "INSERT INTO clients (uuid, created_on) VALUES (?, ?)", (client, now())
                )
            conn.execute(
                "INSERT INTO model_clients (federated_model, client) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (model_id, client),
            )
        return client

    def is_registered(self, model_id: int, client: str) -> bool:
        """Whether ``client`` is registered with the model, and enrolled as it requires.

        A model of ``enrolment`` ``token`` takes only clients it admitted (a token of it
        spent by their enrolment, see ``model_clients.admitted_on``) that have an active
        key; one of ``keys``, only clients whose active key is on its allow-list now (a
        key removed from it is refused at once). A registration alone (an open model's
        ``register_client``, or one made before the model required enrolment) admits to
        open models only. Checked on every request: nothing is cached.
        """
        return self.one(_MEMBER, (model_id, client)) is not None

    def is_member(self, conn: Connection, model_id: int, client: str) -> bool:
        """:meth:`is_registered`, read in the transaction ``conn`` (a write that must
        not outlive a revocation or a removal from the model checks it there)."""
        return conn.execute(_MEMBER, (model_id, client)).fetchone() is not None

    def model_clients(self, model_id: int) -> list[str]:
        """UUIDs of the clients registered with a model, in registration order."""
        sql = "SELECT client FROM model_clients WHERE federated_model = ? ORDER BY rowid"
        return [row["client"] for row in self.all(sql, (model_id,))]

    def client_activity(self, model_id: int) -> list[Row]:
        """The model's registered clients in registration order, with their updates to it.

        Each row: ``uuid``, ``registered_on`` (the client's ``created_on``: registrations
        carry no time of their own), ``last_seen`` (``created_on`` of its newest update
        to the model, or None) and ``updates`` (how many it sent to the model).
        """
        sql = (
            "SELECT mc.client AS uuid, c.created_on AS registered_on, "
            "(SELECT u.created_on FROM updates u WHERE u.federated_model = mc.federated_model "
            "AND u.client = mc.client ORDER BY u.id DESC LIMIT 1) AS last_seen, "
            "(SELECT COUNT(*) FROM updates u WHERE u.federated_model = mc.federated_model "
            "AND u.client = mc.client) AS updates "
            "FROM model_clients mc JOIN clients c ON c.uuid = mc.client "
            "WHERE mc.federated_model = ? ORDER BY mc.rowid"
        )
        return self.all(sql, (model_id,))

    def missed_rounds(self, model_id: int) -> dict[str, int]:
        """Registered client -> the model's rounds in a row that ran without it.

        A client whose newest update to the model is waiting (PENDING or RUNNING) missed
        none; else the count is of the aggregates made after the round of that update
        (after the update itself, when no round took it), or after the client was created
        when it sent none.
        """
        # One query: the model's aggregates are counted where they are, not read out
        # (a decision runs on every update of a waiting round).
        sql = (
            "SELECT mc.client, CASE "
            "WHEN u.status IN (?, ?) THEN 0 "
            "WHEN u.applied_aggregate IS NOT NULL THEN (SELECT COUNT(*) FROM aggregates a "
            "WHERE a.federated_model = mc.federated_model AND a.id > u.applied_aggregate) "
            "ELSE (SELECT COUNT(*) FROM aggregates a WHERE a.federated_model = "
            "mc.federated_model AND a.created_on > COALESCE(u.created_on, c.created_on)) "
            "END AS missed "
            "FROM model_clients mc JOIN clients c ON c.uuid = mc.client "
            "LEFT JOIN updates u ON u.id = (SELECT MAX(id) FROM updates "
            "WHERE federated_model = mc.federated_model AND client = mc.client) "
            "WHERE mc.federated_model = ?"
        )
        rows = self.all(sql, (PENDING, RUNNING, model_id))
        return {row["client"]: int(row["missed"]) for row in rows}

    def status_counts(self, model_id: int) -> dict[str, dict[int, int]]:
        """Client UUID -> status number -> how many of its updates to the model have it."""
        sql = (
            "SELECT client, status, COUNT(*) AS n FROM updates WHERE federated_model = ? "
            "GROUP BY client, status"
        )
        counts: dict[str, dict[int, int]] = {}
        for row in self.all(sql, (model_id,)):
            counts.setdefault(row["client"], {})[row["status"]] = int(row["n"])
        return counts

    def unregister_client(self, model_id: int, client: str) -> bool:
        """Remove a client's registration with a model; return whether it was registered.

        Its updates stay stored (see docs/ROUNDS.md for what a round does with them).
        """
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM model_clients WHERE federated_model = ? AND client = ?",
                (model_id, client),
            )
            return cursor.rowcount > 0

    # -- models ----------------------------------------------------------------------

    def insert_model(
        self,
        fields: Mapping[str, Any],
        clients: Sequence[str],
        initial: NewBlob | None,
    ) -> int:
        """Create a model; ``initial`` is the blob of its initial weights.

        The initial weights become the model's current artifact (version ``0.0.0``).
        """
        stamp = now()
        values = [_model_value(k, fields.get(k)) for k in MODEL_FIELDS]
        columns = ", ".join(MODEL_FIELDS)
        with self.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO models ({columns}, created_on, last_modified) "
                f"VALUES ({', '.join('?' * len(MODEL_FIELDS))}, ?, ?) RETURNING id",
                (*values, stamp, stamp),
            )
            model_id = int(cursor.fetchone()["id"])
            _set_clients(conn, model_id, clients)
            if initial is not None:
                blob = _insert_blob(conn, model_id, initial)
                _insert_artifact(conn, model_id, blob, None, "0.0.0")
        return model_id

    def update_model(
        self, model_id: int, fields: Mapping[str, Any], clients: Sequence[str] | None
    ) -> None:
        """Change some fields of a model (and replace its clients when given)."""
        with self.transaction() as conn:
            if fields.get("enrolment") in ("token", "keys"):
                # A model that starts checking who joins admits none of its members until
                # they enrol as it now requires (a registration made while it was open,
                # or under the other mode, is not an admission).
                conn.execute(
                    "UPDATE model_clients SET admitted_key = NULL, admitted_on = NULL "
                    "WHERE federated_model = ? AND federated_model IN (SELECT id FROM models "
                    "WHERE id = ? AND COALESCE(enrolment, 'open') <> ?)",
                    (model_id, model_id, fields["enrolment"]),
                )
            for key, value in fields.items():
                if key in MODEL_FIELDS:
                    conn.execute(
                        f"UPDATE models SET {key} = ? WHERE id = ?",
                        (_model_value(key, value), model_id),
                    )
            conn.execute("UPDATE models SET last_modified = ? WHERE id = ?", (now(), model_id))
            if clients is not None:
                # Re-registered in the list's order; a client that stays keeps its admission.
                admitted = {
                    row["client"]: (row["admitted_key"], row["admitted_on"])
                    for row in conn.execute(
                        "SELECT client, admitted_key, admitted_on FROM model_clients "
                        "WHERE federated_model = ? AND admitted_on IS NOT NULL",
                        (model_id,),
                    ).fetchall()
                }
                conn.execute("DELETE FROM model_clients WHERE federated_model = ?", (model_id,))
                _set_clients(conn, model_id, clients)
                conn.executemany(
                    "UPDATE model_clients SET admitted_key = ?, admitted_on = ? "
                    "WHERE federated_model = ? AND client = ?",
                    [(key, on, model_id, c) for c, (key, on) in admitted.items() if c in clients],
                )

    def delete_model(self, model_id: int) -> list[str]:
        """Delete a model with everything it owns; return the blob files to remove."""
        with self.transaction() as conn:
            rows = conn.execute("SELECT filename FROM blobs WHERE federated_model = ?", (model_id,))
            files = [row["filename"] for row in rows.fetchall()]
            scores = "SELECT id FROM aggregates WHERE federated_model = ?"
            conn.execute(f"DELETE FROM scores WHERE aggregate IN ({scores})", (model_id,))
            for table in (
                "updates",
                "artifacts",
                "aggregates",
                "aggregator_states",
                "model_clients",
                "blobs",
            ):
                conn.execute(f"DELETE FROM {table} WHERE federated_model = ?", (model_id,))
            conn.execute("DELETE FROM models WHERE id = ?", (model_id,))
        return files

    def get_model(self, model_id: int) -> Row | None:
        """Return a model row (without its clients)."""
        row = self.one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is not None:
            row["allow_aggregation"] = bool(row["allow_aggregation"])
        return row

    # -- blobs -----------------------------------------------------------------------

    def get_blob(self, blob_id: int) -> Row:
        """Return a blob row (every blob id in another row exists)."""
        row = self.one("SELECT * FROM blobs WHERE id = ?", (blob_id,))
        assert row is not None, f"blob {blob_id} is referenced but missing"
        return row

    def blob_filenames(self) -> set[str]:
        """Every blob file a row points at."""
        return {row["filename"] for row in self.all("SELECT filename FROM blobs")}

    # -- updates ---------------------------------------------------------------------

    def insert_update(
        self, fields: Mapping[str, Any], blob: NewBlob, key: str | None
    ) -> tuple[Row, bool]:
        """Store an update; return ``(row, created)``.

        With an idempotency ``key`` already used by this client, nothing is stored and
        the original update comes back with ``created`` False (the caller then deletes
        the blob file it wrote).

        Raises:
            HTTPError: 400 naming ``federated_model``, when the model is gone (deleted
                while the update was being received).
        """
        with self.transaction() as conn:
            model_id = fields["federated_model"]
            _require(conn, "models", model_id, lambda: _deleted("federated_model", model_id))
            if key is not None:
                sql = "SELECT id FROM updates WHERE client = ? AND idempotency_key = ?"
                found = conn.execute(sql, (fields["client"], key)).fetchone()
                if found is not None:
                    return self._update(conn, found["id"]), False
            blob_id = _insert_blob(conn, fields["federated_model"], blob)
            cursor = conn.execute(
                "INSERT INTO updates (federated_model, client, base_aggregate, num_examples, "
                "status, blob, idempotency_key, created_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (
                    fields["federated_model"],
                    fields["client"],
                    fields.get("base_aggregate"),
                    fields.get("num_examples"),
                    PENDING,
                    blob_id,
                    key,
                    now(),
                ),
            )
            return self._update(conn, int(cursor.fetchone()["id"])), True

    def update_by_key(self, client: str, key: str) -> Row | None:
        """Return the update ``client`` sent with idempotency ``key``."""
        sql = f"{_UPDATE_SELECT} WHERE u.client = ? AND u.idempotency_key = ?"
        return self.one(sql, (client, key))

    def get_update(self, update_id: int) -> Row | None:
        """Return an update row (with its blob's codec)."""
        return self.one(f"{_UPDATE_SELECT} WHERE u.id = ?", (update_id,))

    def pending_updates(self, model_id: int) -> list[Row]:
        """The model's PENDING updates, oldest first."""
        sql = f"{_UPDATE_SELECT} WHERE u.federated_model = ? AND u.status = ? ORDER BY u.id"
        return self.all(sql, (model_id, PENDING))

    def set_update_status(self, ids: Sequence[int], status: int, only: int | None = None) -> None:
        """Set the status of some updates (only of those in status ``only``, if given)."""
        sql = "UPDATE updates SET status = ? WHERE id = ?"
        params: list[tuple[int, ...]] = [(status, i) for i in ids]
        if only is not None:
            sql += " AND status = ?"
            params = [(*p, only) for p in params]
        with self.transaction() as conn:
            conn.executemany(sql, params)

    def reset_running(self) -> int:
        """Put updates left RUNNING by a crash back to PENDING; return how many."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE updates SET status = ? WHERE status = ?", (PENDING, RUNNING)
            )
            return cursor.rowcount

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

    # -- aggregates, artifacts, scores ---------------------------------------------

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

    def publish(self, aggregate: Row, version: str) -> int:
        """Make an aggregate the model's current artifact; return the artifact id.

        Raises:
            HTTPError: 404, the aggregate is gone (its model was deleted meanwhile).
        """
        with self.transaction() as conn:
            _require(conn, "aggregates", aggregate["id"], not_found)
            return _insert_artifact(
                conn, aggregate["federated_model"], aggregate["blob"], aggregate["id"], version
            )

    def initial_artifact(self, model_id: int) -> Row | None:
        """The artifact of a model's initial model (made when it was created), if any."""
        sql = (
            "SELECT * FROM artifacts WHERE federated_model = ? AND aggregate IS NULL "
            "ORDER BY id LIMIT 1"
        )
        return self.one(sql, (model_id,))

    def get_artifact(self, artifact_id: int) -> Row | None:
        """Return an artifact row."""
        return self.one("SELECT * FROM artifacts WHERE id = ?", (artifact_id,))

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

    def listing(
        self, kind: str, filters: Mapping[str, Any], limit: int, offset: int
    ) -> tuple[list[Row], int]:
        """Return one page of a table, newest first, and the number of matching rows.

        Args:
            kind: ``models``, ``updates``, ``aggregates``, ``artifacts`` or ``scores``.
            filters: Column -> value equalities (None values are ignored).
            limit: Page size.
            offset: Rows to skip.
        """
        select, alias = _LISTINGS[kind]
        where = [
            (f"{alias}{column} = ?", value)
            for column, value in filters.items()
            if value is not None
        ]
        clause = f" WHERE {' AND '.join(w for w, _ in where)}" if where else ""
        params = [value for _, value in where]
        total = self.count(f"SELECT COUNT(*) AS n FROM ({select}{clause}) AS page", params)
        rows = self.all(
            f"{select}{clause} ORDER BY {alias}id DESC LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return rows, total

    def _update(self, conn: Connection, update_id: int) -> Row:
        row: Row = conn.execute(f"{_UPDATE_SELECT} WHERE u.id = ?", (update_id,)).fetchone()
        return row


#: A registered client that the model's enrolment admits (see Store.is_registered).
_MEMBER = (
    "SELECT mc.client FROM model_clients mc JOIN models m ON m.id = mc.federated_model "
    "WHERE mc.federated_model = ? AND mc.client = ? AND (m.enrolment IS NULL "
    "OR m.enrolment = 'open' "
    "OR (m.enrolment = 'token' AND mc.admitted_on IS NOT NULL AND EXISTS (SELECT 1 "
    "FROM client_keys k WHERE k.client = mc.client AND k.status = 'active')) "
    "OR (m.enrolment = 'keys' AND EXISTS (SELECT 1 FROM client_keys k JOIN allowed_keys a "
    "ON a.key_id = k.key_id AND a.federated_model = m.id "
    "WHERE k.client = mc.client AND k.status = 'active')))"
)

_UPDATE_SELECT = (
    "SELECT u.*, b.codec AS codec, b.nbytes AS nbytes FROM updates u JOIN blobs b ON b.id = u.blob"
)


_LISTINGS = {
    "models": ("SELECT * FROM models", ""),
    "updates": (_UPDATE_SELECT, "u."),
    "aggregates": ("SELECT * FROM aggregates", ""),
    "artifacts": ("SELECT * FROM artifacts", ""),
    "scores": ("SELECT * FROM scores", ""),
}


class InputsChanged(Exception):
    """A round's inputs changed while it ran (see :meth:`Store.record_round`)."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__(f"updates {list(ids)} were marked INVALID during the round")
        self.ids = list(ids)


def inputs_sha256(ids: Sequence[int]) -> str:
    """The SHA-256 (hex) of update ids, sorted, as decimal text joined by commas."""
    return hashlib.sha256(",".join(str(i) for i in sorted(ids)).encode()).hexdigest()


def _model_value(key: str, value: Any) -> Any:
    if key in _JSON_COLUMNS:
        return _json_or_none(value)
    if key == "allow_aggregation":
        return int(bool(value))
    return value


def _require(conn: Connection, table: str, row_id: int, error: Callable[[], HTTPError]) -> None:
    """Raise ``error()`` unless ``table`` has the row (checked inside the write's transaction)."""
    if conn.execute(f"SELECT id FROM {table} WHERE id = ?", (row_id,)).fetchone() is None:
        raise error()


def _deleted(field: str, row_id: int) -> HTTPError:
    return bad_request(field, f'Invalid pk "{row_id}" - object does not exist (it was deleted).')


def _set_clients(conn: Connection, model_id: int, clients: Sequence[str]) -> None:
    conn.executemany(
        "INSERT INTO model_clients (federated_model, client) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(model_id, client) for client in clients],
    )


def _insert_blob(conn: Connection, model_id: int, blob: NewBlob) -> int:
    cursor = conn.execute(
        "INSERT INTO blobs (federated_model, codec, filename, nbytes, tensor_names) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (model_id, blob.codec, blob.filename, blob.nbytes, _json_or_none(blob.tensor_names)),
    )
    return int(cursor.fetchone()["id"])


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


def _insert_artifact(
    conn: Connection, model_id: int, blob_id: int, aggregate_id: int | None, version: str
) -> int:
    cursor = conn.execute(
        "INSERT INTO artifacts (federated_model, blob, aggregate, version, created_on) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id",
        (model_id, blob_id, aggregate_id, version, now()),
    )
    artifact_id = int(cursor.fetchone()["id"])
    conn.execute("UPDATE models SET current_artifact = ? WHERE id = ?", (artifact_id, model_id))
    return artifact_id
