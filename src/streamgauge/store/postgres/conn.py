"""Connections to the PostgreSQL store: the driver (psycopg 3), the store's timeouts, the write
transaction handed to table modules (``Tx``), and the translation of connection errors into
``Unavailable`` (503 with ``Retry-After``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from streamgauge.domain.batch import Batch
from streamgauge.domain.errors import Unavailable
from streamgauge.domain.events import MetaEvent
from streamgauge.store.dbapi import one as one  # (the row helper both backends use)

Conn = psycopg.Connection[tuple[Any, ...]]
RETRY_AFTER = 5  # seconds a client is told to wait when PostgreSQL is unreachable


class Tx:
    """A write transaction: the connection, its metadata events, hooks run after it
    committed."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        # Metadata events: written in the transaction, applied to the registry after the commit.
        self.events: list[MetaEvent] = []
        # How many of ``events`` were applied to the registry before the commit (the metadata
        # of ``append_with``): not applied again after it.
        self.applied = 0
        self.after_commit: list[Callable[[], None]] = []  # run in the writer thread
        self.on_rollback: list[Callable[[], None]] = []  # undo registry changes made early
        self.publish: list[Batch] = []  # handed to the event loop, in order
        # The log's head, read right after the log lock was granted (``PgStore._run``), and the
        # head to store with the commit (None: unchanged), sent with the COMMIT in one round trip.
        self.head = 0
        self.new_head: int | None = None

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[tuple[Any, ...]]:
        return self.conn.execute(sql.encode(), params)


def connect(url: str, *, connect_timeout: float, statement_timeout: float) -> Conn:
    """A connection with the store's timeouts: connecting, each statement (server side), and
    unacknowledged TCP data (client side: a silent network never hangs a thread)."""
    ms = int(statement_timeout * 1000)
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=max(1, int(connect_timeout)),
            options=f"-c statement_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
            keepalives=1,
            keepalives_idle=max(1, int(connect_timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=ms + 5000,
            application_name="streamgauge",
        )
    except psycopg.Error as exc:
        raise Unavailable(
            f"the PostgreSQL store cannot be reached: {first_line(exc)}", retry_after=RETRY_AFTER
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unreachable(exc: psycopg.Error) -> Unavailable:
    return Unavailable(
        f"the PostgreSQL store is unreachable or timed out: {first_line(exc)}",
        retry_after=RETRY_AFTER,
    )


def is_connection_error(exc: psycopg.Error) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.QueryCanceled)
