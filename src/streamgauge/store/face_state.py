"""Face state: the storage interfaces of what a face keeps beside the core (section "face state"
of the store API).

Each face that keeps state of its own gets an interface made for it; the engine creates the
backend's implementation and hands it to the face, which never sees SQL or a connection. The
records are in ``streamgauge.domain.face_state``; the SQLite implementations are in
``streamgauge.store.sqlite_face_state``.

Operations that must commit together with a metadata change (a DT account's settings with the
account itself) take the backend's write transaction (``TxT``) as their first argument and only
become visible after it committed; every other operation is one transaction of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from streamgauge.domain import events as ev
from streamgauge.domain.events import MetaEvent
from streamgauge.domain.face_state import DTAccountSettings, StoredConnector

TxT = TypeVar("TxT", contravariant=True)


class DTAccountStore(Protocol[TxT]):
    """The DT settings of service accounts, kept warm in memory after ``load``."""

    @property
    def by_pk(self) -> Mapping[int, DTAccountSettings]:
        """Account pk -> settings, as committed (accounts made on another face have none)."""
        ...

    async def load(self) -> None:
        """Read every account's settings (at start, and again after this node missed events:
        ``Engine.resyncs``). Settings ``follow`` applied while the read ran are kept."""
        ...

    def put(self, tx: TxT, account_pk: int, settings: DTAccountSettings) -> None:
        """Create or update an account's settings in the caller's write transaction (its
        ``create_time`` is kept if the account has settings already); ``by_pk`` shows them after
        the commit. Settings go with their account when it is deleted. The transaction also
        carries them as a ``DTAccountSettingsPut`` event (the metadata feed), which the other
        nodes and processes ``follow``."""
        ...

    def follow(self, account_pk: int, settings: DTAccountSettings) -> None:
        """Settings another node or process committed (its ``DTAccountSettingsPut`` event, in
        the feed's order): ``by_pk`` shows them at once, as ``put`` does after its commit."""
        ...


class _EventTx(Protocol):
    """What of a backend's write transaction ``FollowedAccounts.recorded`` uses."""

    @property
    def events(self) -> list[MetaEvent]: ...

    @property
    def after_commit(self) -> list[Callable[[], None]]: ...


class FollowedAccounts(ABC):
    """The in-memory half of a ``DTAccountStore``, the same for every backend: the settings by
    account, loaded (``_read``, the backend's query), followed, and what a ``put`` adds to its
    transaction (``recorded``)."""

    def __init__(self) -> None:
        self._by_pk: dict[int, DTAccountSettings] = {}
        self._followed: dict[int, DTAccountSettings] | None = None  # while a load reads

    @property
    def by_pk(self) -> Mapping[int, DTAccountSettings]:
        return self._by_pk

    @abstractmethod
    async def _read(self) -> dict[int, DTAccountSettings]:
        """Every account's settings, read from the backend's table."""

    async def load(self) -> None:
        self._followed = {}
        try:
            loaded = await self._read()
            loaded.update(self._followed)  # committed after the read may have looked
            self._by_pk = loaded
        finally:
            self._followed = None

    def recorded(self, tx: _EventTx, account_pk: int, settings: DTAccountSettings) -> None:
        """After a ``put``'s row: its event in the same transaction, ``by_pk`` after commit."""
        tx.events.append(
            ev.DTAccountSettingsPut(
                account_pk, settings.basic_auth, settings.create_time, settings.update_time
            )
        )
        tx.after_commit.append(lambda: self.follow(account_pk, settings))

    def follow(self, account_pk: int, settings: DTAccountSettings) -> None:
        have = self._by_pk.get(account_pk)
        created = settings.create_time if have is None else have.create_time
        now = DTAccountSettings(settings.basic_auth, created, settings.update_time)
        self._by_pk[account_pk] = now
        if self._followed is not None:
            self._followed[account_pk] = now


class DTConnectorStore(Protocol):
    """The DT face's data connectors (their DT documents and start positions)."""

    async def load(self) -> list[StoredConnector]:
        """Every stored connector, in pk order."""
        ...

    async def insert(
        self, project_pk: int, connector_id: str, doc: dict[str, Any], start: int
    ) -> StoredConnector:
        """Store a new connector; the record has its new pk. Its ``connector_id`` is unique in
        the deployment; a connector goes with its project when that is deleted."""
        ...

    async def update(self, pk: int, doc: dict[str, Any], start: int) -> None:
        """Replace a connector's document and start position."""
        ...

    async def delete(self, pk: int) -> None:
        """Forget a connector (nothing happens if there is none with this pk)."""
        ...


__all__ = ["DTAccountStore", "DTConnectorStore", "TxT"]
