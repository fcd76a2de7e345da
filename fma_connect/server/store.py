"""Metadata of the reference server: users, clients, models, updates, aggregates.

:class:`Store` is the one entry point; its parts hold the tables' code:
:mod:`.store_core` (the database, transactions, queries, and what they share),
:mod:`.store_clients` (registrations and admission), :mod:`.store_models` (models and
their artifacts), :mod:`.store_updates` (updates) and :mod:`.store_rounds` (rounds,
aggregates, aggregator states, scores). Users, blob rows and listings are here.

The tables of resumable uploads in progress are here too; their queries are in
:mod:`.uploads`. Payloads live in blob files (:mod:`.blobs`); rows point at them through
the ``blobs`` table.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from .store_clients import ClientRows
from .store_core import Row
from .store_models import ModelRows
from .store_rounds import RoundRows
from .store_updates import _UPDATE_SELECT, UpdateRows

__all__ = ["Store"]


class Store(ClientRows, ModelRows, UpdateRows, RoundRows):
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

    # -- users -----------------------------------------------------------------------

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

    # -- blobs -----------------------------------------------------------------------

    def get_blob(self, blob_id: int) -> Row:
        """Return a blob row (every blob id in another row exists)."""
        row = self.one("SELECT * FROM blobs WHERE id = ?", (blob_id,))
        assert row is not None, f"blob {blob_id} is referenced but missing"
        return row

    def blob_filenames(self) -> set[str]:
        """Every blob file a row points at."""
        return {row["filename"] for row in self.all("SELECT filename FROM blobs")}

    # -- listings --------------------------------------------------------------------

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


_LISTINGS = {
    "models": ("SELECT * FROM models", ""),
    "updates": (_UPDATE_SELECT, "u."),
    "aggregates": ("SELECT * FROM aggregates", ""),
    "artifacts": ("SELECT * FROM artifacts", ""),
    "scores": ("SELECT * FROM scores", ""),
}
