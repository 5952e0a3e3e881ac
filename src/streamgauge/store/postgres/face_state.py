"""The PostgreSQL implementations of the face-state interfaces (``store/face_state.py``), on
the tables ``dt_accounts`` and ``dt_connectors`` of ``store/postgres/schema.py``.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamgauge.domain import events as ev
from streamgauge.domain.face_state import DTAccountSettings, StoredConnector
from streamgauge.store.api import Store
from streamgauge.store.face_state import FollowedAccounts
from streamgauge.store.postgres.conn import Conn, Tx


class PgDTAccounts(FollowedAccounts):
    """``DTAccountStore`` on the ``dt_accounts`` table."""

    def __init__(self, store: Store[Tx, Conn]) -> None:
        super().__init__()
        self._store = store

    async def _read(self) -> dict[int, DTAccountSettings]:
        return await self._store.read(_load_accounts)

    def put(self, tx: Tx, account_pk: int, settings: DTAccountSettings) -> None:
        tx.execute(
            "INSERT INTO dt_accounts VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (account_pk) DO UPDATE SET "
            "basic_auth = excluded.basic_auth, update_time = excluded.update_time",
            (account_pk, int(settings.basic_auth), settings.create_time, settings.update_time),
        )
        self.recorded(tx, account_pk, settings)


def _load_accounts(conn: Conn) -> dict[int, DTAccountSettings]:
    return {
        pk: DTAccountSettings(bool(basic), ct, ut)
        for pk, basic, ct, ut in conn.execute(
            "SELECT account_pk, basic_auth, create_time, update_time FROM dt_accounts"
        )
    }


class PgDTConnectors:
    """``DTConnectorStore`` on the ``dt_connectors`` table."""

    def __init__(self, store: Store[Tx, Conn]) -> None:
        self._store = store

    async def load(self) -> list[StoredConnector]:
        return await self._store.read(_load_connectors)

    async def insert(
        self, project_pk: int, connector_id: str, doc: dict[str, Any], start: int
    ) -> StoredConnector:
        def run(tx: Tx) -> int:
            cur = tx.execute(
                "INSERT INTO dt_connectors (project_pk, id, doc, start_cursor) "
                "VALUES (%s, %s, %s, %s) RETURNING pk",
                (project_pk, connector_id, orjson.dumps(doc).decode(), start),
            )
            row = cur.fetchone()
            assert row is not None
            tx.events.append(ev.ConnectorChanged(int(row[0]), connector_id))
            return int(row[0])

        pk = await self._store.write(run)
        return StoredConnector(pk, project_pk, connector_id, doc, start)

    async def update(self, pk: int, doc: dict[str, Any], start: int) -> None:
        def run(tx: Tx) -> None:
            row = tx.execute(
                "UPDATE dt_connectors SET doc = %s, start_cursor = %s WHERE pk = %s RETURNING id",
                (orjson.dumps(doc).decode(), start, pk),
            ).fetchone()
            if row is not None:
                tx.events.append(ev.ConnectorChanged(pk, str(row[0])))

        await self._store.write(run)

    async def delete(self, pk: int) -> None:
        def run(tx: Tx) -> None:
            row = tx.execute(
                "DELETE FROM dt_connectors WHERE pk = %s RETURNING id", (pk,)
            ).fetchone()
            if row is not None:
                tx.events.append(ev.ConnectorDropped(pk, str(row[0])))

        await self._store.write(run)


def _load_connectors(conn: Conn) -> list[StoredConnector]:
    return [
        StoredConnector(pk, project_pk, id_, orjson.loads(doc), start)
        for pk, project_pk, id_, doc, start in conn.execute(
            "SELECT pk, project_pk, id, doc, start_cursor FROM dt_connectors ORDER BY pk"
        )
    ]
