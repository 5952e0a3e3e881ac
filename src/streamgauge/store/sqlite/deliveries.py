"""Tables of the delivery engine in SQLite: each consumer's durable cursor and its dead letters.
``store/deliverytables.py`` holds their SQL, shared with PostgreSQL; here it is bound to SQLite's
transactions (``Tx``, run through ``SqliteStore.write``) and read connections
(``SqliteStore.read``). The module's functions are the ``store.api.DeliveryTables`` of the
SQLite backend.
"""

from __future__ import annotations

import sqlite3

from streamgauge.store.deliverytables import MAX_DEAD_LETTERS as MAX_DEAD_LETTERS
from streamgauge.store.deliverytables import DeliveryTablesSQL, StoredDeliveryPositions
from streamgauge.store.sqlite.store import Tx

_tables: DeliveryTablesSQL[Tx, sqlite3.Connection] = DeliveryTablesSQL()
get_cursor = _tables.get_cursor
set_cursor = _tables.set_cursor
forget = _tables.forget
dead_letter = _tables.dead_letter
dead_letters = _tables.dead_letters


class SqliteDeliveryPositions(StoredDeliveryPositions[Tx, sqlite3.Connection]):
    """``StoredDeliveryPositions`` on SQLite's tables."""

    tables = _tables
