"""Tables of the delivery engine in PostgreSQL (the twin of ``store/sqlite/deliveries.py``):
each consumer's durable cursor and its dead letters. ``store/deliverytables.py`` holds their
SQL, shared with SQLite; here it is bound to PostgreSQL's placeholder, transactions (``Tx``, run
through ``PgStore.write``) and read connections (``PgStore.read``). The module's functions are
the ``store.api.DeliveryTables`` of the PostgreSQL backend.
"""

from __future__ import annotations

from streamgauge.store.deliverytables import MAX_DEAD_LETTERS as MAX_DEAD_LETTERS
from streamgauge.store.deliverytables import DeliveryTablesSQL, StoredDeliveryPositions
from streamgauge.store.postgres.conn import Conn, Tx


class PgDeliveryTables(DeliveryTablesSQL[Tx, Conn]):
    PARAM = "%s"


_tables = PgDeliveryTables()
get_cursor = _tables.get_cursor
set_cursor = _tables.set_cursor
forget = _tables.forget
dead_letter = _tables.dead_letter
dead_letters = _tables.dead_letters


class PgDeliveryPositions(StoredDeliveryPositions[Tx, Conn]):
    """``StoredDeliveryPositions`` on PostgreSQL's tables."""

    tables = _tables
