"""What the code both SQL backends share (``store/metadata.py``, ``store/alerttables.py``,
``store/deliverytables.py``) uses of a backend's handles: a read connection (``sqlite3`` or
psycopg's) and a write transaction (``sqlite.store.Tx``, ``postgres.conn.Tx``) both run
``execute`` and give a DB-API cursor; a write transaction also carries the metadata events it
stores. Each backend's own types satisfy these protocols as they are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streamgauge.domain.events import MetaEvent


class Cursor(Protocol):
    """The rows of a statement: fetched one at a time, all at once, or iterated."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Executes(Protocol):
    """A read connection (and the base of a write transaction): runs one statement with its
    parameters, bound to the backend's placeholders."""

    def execute(self, sql: str, params: Any = ..., /) -> Cursor: ...


class WriteTx(Executes, Protocol):
    """A write transaction: its statements, and the metadata events stored with it (applied to
    the registry after the commit)."""

    events: list[MetaEvent]


def one(cur: Cursor) -> tuple[Any, ...]:
    """The one row a statement returns (an aggregate, ``RETURNING``)."""
    row: tuple[Any, ...] | None = cur.fetchone()
    if row is None:
        raise RuntimeError("the statement returned no row")
    return row
