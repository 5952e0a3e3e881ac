"""A read-only view of the embedded store, for another process on the same data folder.

The fan-out worker processes (``streamgauge serve --workers N``, ``workers/``) read the log and
the metadata event feed with their own read-only SQLite connections: in WAL mode a reader in
another process sees every transaction committed before its read began, so a batch the writer
announced (after its commit) is there to read. The view never writes: the writer process owns
every write, and a write asked of this view is refused (``Unavailable``: a 503, never a silent
loss).

``open`` loads the registry from the tables and notes, in the same read transaction (one
snapshot), the metadata event and the cursor it is current at (``events_loaded``, ``head``), so
the worker's metadata channel goes on from exactly there. The log state the writer needs (the
series' latest times, QC state, the unindexed tail) is not loaded: this view judges no batch.
Nor does its registry keep the sites' and devices' documents (``Registry.docs``, ``_Docs``):
what a worker asks of them (a feed's station metadata, once per station; the place filters'
site columns, all of a project's sites at once) is read from the database when asked.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Unavailable
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.records import DeviceRec, SiteRec
from streamgauge.store.memory import release_free_memory
from streamgauge.store.sqlite import metadata, retention, snapshot
from streamgauge.store.sqlite.store import SqliteStore, Tx, _connect, _Stage

T = TypeVar("T")

DOCS_CACHE_KIB = 256  # the documents' connection's page cache (``_Docs``)


class _Docs:
    """The sites' and devices' documents of a registry that keeps none (``Registry.docs``),
    read from the database when asked, on a connection of their own (any thread may ask: a
    lock keeps them one at a time). A record the database no longer has (the writer dropped
    it and this process has not applied that yet) is described by what the record holds."""

    def __init__(self, path: Path, durability: str, registry: ReadModel) -> None:
        self._path = path
        self._durability = durability
        self._registry = registry
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        """The connection (under the lock), with a small page cache: reads by primary key."""
        if self._closed:
            raise Unavailable("the store is closed")
        if self._conn is None:
            conn = _connect(self._path, readonly=True, durability=self._durability, index=False)
            conn.execute(f"PRAGMA cache_size=-{DOCS_CACHE_KIB}")
            self._conn = conn
        return self._conn

    def _read(self, table: str, pk: int) -> str | None:
        with self._lock:
            row = (
                self._connection()
                .execute(f"SELECT doc FROM {table} WHERE pk = ?", (pk,))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def _project_id(self, project_pk: int) -> str:
        project = self._registry.projects_by_pk.get(project_pk)
        return "" if project is None else project.doc.id

    def site(self, rec: SiteRec) -> str:
        found = self._read("sites", rec.pk)
        if found is not None:
            return found
        doc = {"id": rec.id, "name": rec.id, "project": self._project_id(rec.project_pk)}
        return orjson.dumps(doc).decode()

    def sites(self, recs: Sequence[SiteRec]) -> list[str]:
        pks = orjson.dumps([rec.pk for rec in recs]).decode()
        with self._lock:
            found = dict(
                self._connection()
                .execute(
                    "SELECT s.pk, s.doc FROM json_each(?) j JOIN sites s ON s.pk = j.value",
                    (pks,),
                )
                .fetchall()
            )
        return [str(found[rec.pk]) if rec.pk in found else self.site(rec) for rec in recs]

    def device(self, rec: DeviceRec) -> str:
        found = self._read("devices", rec.pk)
        if found is not None:
            return found
        doc = {
            "id": rec.id,
            "project": self._project_id(rec.project_pk),
            "site": rec.site,
            "type": rec.type,
            "name": rec.id,
            "labels": rec.labels(),
            "metadata": {},
        }
        return orjson.dumps(doc).decode()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class ReplicaStore(SqliteStore):
    """The embedded store's log, metadata and state, read-only, for a process that does not
    write. Its head is the last cursor it has read committed (``durable_head``)."""

    events_loaded = 0  # the metadata event the registry was loaded at (``open``)
    _docs: _Docs | None = None

    async def open(self, publish: Callable[[Batch], None]) -> None:
        if not self.path.exists():
            raise Unavailable(f"no database at {self.path}: the writer process creates it")
        self._loop = asyncio.get_running_loop()
        self._publish = publish
        self._docs = _Docs(self.path, self.durability, self.registry)
        self.registry.docs = self._docs

        def opened() -> tuple[int, int, dict[int, int]]:
            # (Without the index file: the writer may not have made it yet on a first start.)
            conn = _connect(self.path, readonly=True, durability=self.durability, index=False)
            try:
                conn.execute("BEGIN")  # one snapshot: tables, event head and log head agree
                # Loaded here, the big tables a chunk at a time from their cursors (nothing
                # else uses the registry before ``open`` returns).
                # As the writer's clean stop left it, if it is of these tables (``snapshot.py``).
                self._load_registry(conn, snapshot.fingerprint(conn))
                seq = metadata.events_head(conn)
                head = int(conn.execute("SELECT coalesce(max(cursor), 0) FROM obs").fetchone()[0])
                gone = retention.load_gone(conn)
                conn.execute("COMMIT")
            finally:
                conn.close()
            return seq, head, gone

        seq, head, gone = await asyncio.to_thread(opened)
        gc.collect()
        gc.freeze()  # the registry's objects: long-lived, not traversed by every collection
        release_free_memory()
        self.events_loaded = seq
        self._head = self._writer_head = head
        self.gone = gone

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._readers.shutdown, True)
        if self._docs is not None:
            self._docs.close()

    async def durable_head(self) -> int:
        """The last cursor the writer process committed (read from the database)."""

        def head(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(cursor), 0) FROM obs").fetchone()[0])

        found = await self.read(head)
        self._head = self._writer_head = max(self._head, found)
        return self._head

    async def refresh_gone(self) -> None:
        """Read what retention removed again: the writer process runs retention, and a resume
        served here must get its 410 as the writer would answer it."""
        stored = await self.read(retention.load_gone)
        for project_pk, top in stored.items():
            self.gone[project_pk] = max(self.gone.get(project_pk, 0), top)

    async def write(self, fn: Callable[[Tx], T], *, stage: _Stage | None = None) -> T:
        raise Unavailable("this process serves streams only: writes go to the writer process")
