"""What the reference server does, behind its HTTP routes: models, updates, rounds, scores.

:class:`Service` is the one entry point; this module holds its start (the data directory,
database, blob store and sweeps) and close. Its parts hold what it does:
:mod:`.service_models` (models, their artifacts and scores) and :mod:`.service_updates`
(the update intake, with :mod:`.json_weights` checking and storing JSON weights).

Everything here is synchronous and thread-safe; the routes run it in a worker thread.
An update is checked against its model's structure (its initial model or latest
aggregate) and stored in one step. Rounds are run by
:class:`~.rounds.Rounds`; updates a crash left RUNNING are PENDING again at start-up.

The database is SQLite in the data directory (one server at a time: the directory is
locked), or a PostgreSQL that any number of replicas share (``database``; see
docs/SCALING.md). At start a server sweeps what a crash left behind. On a database it
owns alone that is everything no row points at; on a shared one, another replica may be
writing right now, so only what is provably orphaned goes (upload files whose upload is
gone, see :meth:`~.uploads.Uploads.sweep`, and objects of an object store older than its
grace period): blob files of a shared directory are not swept there, and a
round a dead replica left RUNNING is taken over when its lease expires (:mod:`.leases`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..registry import CodecRegistry
from ..settings import BLOBS_ENV, DATABASE_ENV, S3_ENDPOINT_URL_ENV
from .blobs import open_blob_store
from .datadir import DataDirLock, prepare
from .deadlines import Clock
from .keys import Keys
from .leases import DEFAULT_LEASE
from .limits import DEFAULT_MAX_TENSORS, PausePoint
from .locks import KeyedLocks
from .rounds import AutoAggregate, Rounds
from .service_updates import UpdateIntake
from .store import Store
from .structure import Structure
from .uploads import DEFAULT_EXPIRY, DEFAULT_UPLOAD_QUOTA, Uploads
from .waiting import Waiters

__all__ = ["Service"]

TOKEN_ENV = "FMA_CONNECT_ADMIN_TOKEN"
log = logging.getLogger("fma_connect.server")


class Service(UpdateIntake):
    """The server's state and operations over one data directory.

    Args:
        data_dir: Holds ``fma.sqlite3`` (unless ``database`` is given), ``blobs/`` and
            ``uploads/``; created if missing. Replicas sharing a database share it too.
        registry: The codecs updates may use.
        admin_token: Token of the admin (user 1); default ``FMA_CONNECT_ADMIN_TOKEN``,
            else the stored one, else a new random one. A token given either way
            replaces the stored one.
        auto_aggregate: When rounds run by themselves (see :class:`~.rounds.Rounds`).
        max_tensors: Most tensors an update (or initial model) may hold.
        upload_expiry: Seconds a resumable upload lives after its last activity.
        upload_quota: Most bytes a client's open resumable uploads may declare.
        max_held: Most ``get_latest_aggregate`` requests held at once (see :mod:`.waiting`).
        database: A ``postgresql://`` URL of a database replicas share; default
            ``FMA_CONNECT_DATABASE``, else SQLite in ``data_dir``.
        blobs: Where payloads live (see :func:`~.blobs.open_blob_store`); default
            ``FMA_CONNECT_BLOBS``, else ``data_dir/blobs``.
        s3_endpoint_url: The S3 endpoint of ``blobs``; default
            ``FMA_CONNECT_S3_ENDPOINT_URL``.
        round_lease: Seconds a round's lease lasts unless renewed (see :mod:`.leases`).
        clock: The time now, for round deadlines (tests move it; see :mod:`.policies`),
            signed requests' timestamps and enrolment tokens' expiry.

    Attributes:
        admin_token: The admin's token.
        admin_token_created: Whether this start created it.
        rounds: Runs the aggregation rounds (``rounds.aggregate`` is the admin trigger).
        uploads: The resumable uploads (:class:`~.uploads.Uploads`).
        waiters: The requests held until a new aggregate (:class:`~.waiting.Waiters`).
        keys: The identity tables: client keys, enrolment tokens, allow-lists, request
            nonces, update signatures (:class:`~.keys.Keys`; docs/SECURITY.md).

    Raises:
        DataDirError: ``data_dir`` is a file, or another server is using it (SQLite).
        DatabaseError: the database cannot be opened, or is newer than this code.
    """

    def __init__(
        self,
        data_dir: Path,
        registry: CodecRegistry,
        *,
        admin_token: str | None = None,
        auto_aggregate: AutoAggregate = "sync",
        max_tensors: int = DEFAULT_MAX_TENSORS,
        upload_expiry: float = DEFAULT_EXPIRY,
        upload_quota: int = DEFAULT_UPLOAD_QUOTA,
        max_held: int = 64,
        database: str | None = None,
        blobs: str | None = None,
        s3_endpoint_url: str | None = None,
        round_lease: float = DEFAULT_LEASE,
        clock: Clock = time.time,
    ) -> None:
        prepare(data_dir)
        database = database or os.environ.get(DATABASE_ENV) or None
        # Replicas on one PostgreSQL may share the directory; SQLite has one server.
        own = database is None or database.lower().startswith("sqlite:")
        self._dir_lock = DataDirLock(data_dir) if own else None
        store = None
        try:
            self.store = store = Store(data_dir / "fma.sqlite3", database)
            self.blobs = open_blob_store(
                blobs or os.environ.get(BLOBS_ENV) or None,
                data_dir,
                endpoint_url=s3_endpoint_url or os.environ.get(S3_ENDPOINT_URL_ENV) or None,
            )
            token = admin_token or os.environ.get(TOKEN_ENV) or None
            self.admin_token, self.admin_token_created = self.store.ensure_admin(token)
            if not self.store.db.shared:
                if self.store.reset_running():
                    log.warning("updates left RUNNING by an interrupted round are PENDING again")
                self.blobs.sweep(self.store.blob_filenames())
            elif self.blobs.sweeps_while_shared:
                self.blobs.sweep(self.store.blob_filenames())
            self.uploads = Uploads(
                self.store, self.blobs, data_dir, expiry=upload_expiry, quota=upload_quota
            )
            self.uploads.sweep()
        except BaseException:
            if store is not None:
                store.close()
            if self._dir_lock is not None:
                self._dir_lock.release()
            raise
        self.registry = registry
        #: The identity tables (client keys, tokens, allow-lists, nonces, signatures).
        self.keys = Keys(self.store, clock)
        self.max_tensors = max_tensors
        self._pause = PausePoint()  # crash tests only (FMA_CONNECT_TEST_PAUSE)
        #: model id -> (blob id, structure) of the blob that established its structure.
        self._structures: dict[int, tuple[int, Structure]] = {}
        # Checking an update against the model's structure and storing it is one step per
        # model, so an update is never stored against a structure that just changed.
        self._intake = KeyedLocks()
        self.waiters = Waiters(max_held)
        self.rounds = Rounds(
            self.store,
            self.blobs,
            registry,
            auto_aggregate=auto_aggregate,
            pause=self._pause,
            stored=self.waiters.notify,
            lease=round_lease,
            clock=clock,
        )

    def close(self) -> None:
        """Stop the aggregation worker and close the database."""
        self.rounds.close()
        self.store.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
