"""The storage seam: what the engine needs from a backend, as protocols.

Every backend (the embedded ``sqlite`` one today, ``postgresql`` next) provides:

* a ``Store``: the observation log (``Log``) plus a transaction runner (``Transactions``) and
  the ``Registry`` it keeps warm. The engine holds its store as ``Store`` (built by
  ``store.factory.open_store``) and never names the implementation;
* table modules that run inside the runner's transactions: ``MetadataTables`` (projects, sites,
  devices, variables, accounts, keys, roles), ``AlertTables`` (channels, the alert log, alert
  actions, the rules' progress), ``DeliveryTables`` (consumer positions of deliveries, dead
  letters); and a ``FeedSessions`` service (feed tokens and durable feed sessions).

The transactional half is generic in the backend's transaction (``TxT``: what a write closure
receives) and read handle (``ConnT``: what a read closure receives), so a table module is typed
against the runner of its own backend; the embedded backend's are ``sqlite.Tx`` and
``sqlite3.Connection`` (``factory.EmbeddedStore``). The contracts below are the ones
``tests/store/conformance/`` checks against every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from streamgauge.core.registry import (
    AccountRec,
    DeviceRec,
    ProjectRec,
    Registry,
    SiteRec,
    VariableRec,
)
from streamgauge.domain.batch import Batch
from streamgauge.domain.log import AppendResult, HistoryQuery, IngestColumns
from streamgauge.domain.model import (
    Device,
    DeviceIn,
    Project,
    ProjectIn,
    Role,
    Site,
    SiteIn,
    Variable,
    VariableIn,
)

if TYPE_CHECKING:
    from streamgauge.core.alerts import TriggerState
    from streamgauge.core.channels import ChannelDoc
    from streamgauge.core.filterlang import Expr
    from streamgauge.domain.feeds import FeedSession, FeedToken

__all__ = [
    "AlertTables",
    "AppendResult",
    "ConsumerPositions",
    "DeliveryTables",
    "FeedSessions",
    "HistoryQuery",
    "IngestColumns",
    "Log",
    "MetadataTables",
    "StateKey",
    "Store",
    "Transactions",
]

T = TypeVar("T")
TxT_co = TypeVar("TxT_co", covariant=True)
ConnT_co = TypeVar("ConnT_co", covariant=True)
TxT_contra = TypeVar("TxT_contra", contravariant=True)
ConnT_contra = TypeVar("ConnT_contra", contravariant=True)

StateKey = tuple[int, int]  # (channel pk, trigger index) of an alert rule's state


class Log(Protocol):
    """The observation log: append-only, one cursor per row.

    Cursors are positive integers given in commit order without gaps: the first committed row is
    cursor 1 and every batch takes the next ``accepted`` cursors. A row's key is (series, time);
    the series of a row is (variable, set) of its ``IngestColumns``, created at its first row."""

    registry: Registry

    @property
    def head(self) -> int:
        """The last committed and published cursor (0 when the log is empty). It moves only
        after ``publish`` has been called with the batch that ends at it."""
        ...

    async def open(self, publish: Callable[[Batch], None]) -> None:
        """Open (creating or migrating the storage), load the registry and the log's state.
        ``publish`` is called on the event loop with every committed batch, in cursor order,
        before the ``append`` that wrote it returns."""
        ...

    async def close(self) -> None:
        """Finish the queued writes and close; idempotent. Everything committed survives: a
        store opened again on the same storage has the same head, log and metadata."""
        ...

    async def append(self, columns: IngestColumns) -> AppendResult:
        """Append a batch, all or nothing, in one transaction.

        A row whose key is stored (or repeated earlier in the batch) with the same value is a
        duplicate: counted, not written. With another value it is a conflict: ``Conflict`` is
        raised, its ``details`` name each conflicting row (``{"index": i, "reason": ...}``, by
        index in the batch, ascending), and nothing of the batch is written. The accepted rows
        get consecutive cursors ``first_cursor..last_cursor`` (both None when none is new).
        Each accepted row is stored and published with its QC flags: today the store runs the
        checks of ``core.qc`` against the registry's limits (when quality control is on);
        issue 12 moves them to the core, which will hand the flags in ``columns.qc``."""
        ...

    async def read_log(self, after: int, upto: int, limit: int) -> Batch:
        """Committed rows with ``after < cursor <= upto`` in cursor order, all projects, at most
        ``limit`` (the first ones). The batch's ``project_pk`` is 0."""
        ...

    async def cursor_before(self, received_ms: int) -> int:
        """The last cursor committed before ``received_ms`` (wall clock, ms), 0 if none: where
        a replay of what arrived since then starts."""
        ...

    async def next_time(self, query: HistoryQuery) -> int | None:
        """The time of the first row of ``query`` (its series, after ``query.after``, within
        ``start``/``end``; QC removal aside), or None: where a windowed read goes on after a
        gap. Bounded work (an index seek per series), never a scan."""
        ...

    async def history(self, query: HistoryQuery) -> Batch:
        """Rows of ``query.project_pk`` ordered by (time, cursor), at most ``query.limit``:
        only ``query.series`` if given, ``start <= time < end``, after the keyset ``after``
        (time, cursor), only at ``times`` if given, without rows having any QC flag bit of
        ``qc_remove``."""
        ...

    async def history_judged(
        self, query: HistoryQuery, expr: Expr
    ) -> tuple[Batch, tuple[int, int] | None, int]:
        """One page of ``query`` (``query.limit`` candidate rows) judged by a filter expression
        per station report (the project's rows of one station at one time that pass the QC
        removal). Returns the passing rows, the (time, cursor) of the page's last candidate
        (None: no candidate) and the number of candidates."""
        ...


class Transactions(Protocol[TxT_co, ConnT_co]):
    """Runs closures of a backend's table modules in its transactions.

    ``write`` runs ``fn`` in one write transaction, serialized with every other write and with
    ``append``: it commits all of ``fn``'s effects or, if ``fn`` raises, none (the exception
    reaches the caller). Hooks ``fn`` queues for after the commit (registry updates) run before
    the next transaction starts and only if it committed. ``read`` runs ``fn`` on a read handle
    that sees every transaction committed before the call; reads run concurrently. Both raise
    ``Unavailable`` once the store is closed."""

    async def write(self, fn: Callable[[TxT_co], T]) -> T: ...

    async def read(self, fn: Callable[[ConnT_co], T], *, key: object = None) -> T:
        """Run ``fn`` on a read handle; waiting reads take turns by ``key`` (a project's
        history reads share one key), so one tenant's scans cannot starve another's read."""
        ...


class Store(Log, Transactions[TxT_co, ConnT_co], Protocol[TxT_co, ConnT_co]):
    """A backend's store: the log, the transaction runner, the registry it keeps warm."""

    write_seconds: float  # total time spent in write transactions (metrics)


class MetadataTables(Protocol[TxT_contra, ConnT_contra]):
    """Metadata persistence, run inside ``Transactions.write`` (``key_created`` in ``read``).

    Each change checks, writes, and queues its registry update for after the commit, so the
    registry never shows what did not commit. Bulk creates are all or nothing and name a bad
    item by its index; with ``skip_existing`` an item whose id exists is returned unchanged.
    ``Store.open`` loads everything back into the registry: after a reopen the registry holds
    exactly what was committed."""

    def create_projects(
        self,
        tx: TxT_contra,
        reg: Registry,
        items: list[ProjectIn],
        *,
        skip_existing: bool,
        admin_account: int | None,
    ) -> list[Project]: ...

    def update_project(
        self, tx: TxT_contra, reg: Registry, rec: ProjectRec, patch: dict[str, Any]
    ) -> Project: ...

    def delete_project(self, tx: TxT_contra, reg: Registry, rec: ProjectRec) -> None: ...

    def create_sites(
        self,
        tx: TxT_contra,
        reg: Registry,
        project: ProjectRec,
        items: list[SiteIn],
        *,
        skip_existing: bool,
    ) -> list[Site]: ...

    def update_site(
        self, tx: TxT_contra, reg: Registry, rec: SiteRec, patch: dict[str, Any]
    ) -> Site: ...

    def delete_site(self, tx: TxT_contra, reg: Registry, rec: SiteRec) -> None: ...

    def create_devices(
        self,
        tx: TxT_contra,
        reg: Registry,
        project: ProjectRec,
        items: list[DeviceIn],
        *,
        skip_existing: bool,
    ) -> list[Device]: ...

    def update_device(
        self,
        tx: TxT_contra,
        reg: Registry,
        project: ProjectRec,
        rec: DeviceRec,
        patch: dict[str, Any],
    ) -> Device: ...

    def delete_device(self, tx: TxT_contra, reg: Registry, rec: DeviceRec) -> None: ...

    def create_variables(
        self,
        tx: TxT_contra,
        reg: Registry,
        project: ProjectRec,
        device: DeviceRec,
        items: list[VariableIn],
        *,
        skip_existing: bool,
        index: int | None = None,
    ) -> list[Variable]: ...

    def update_variable(
        self, tx: TxT_contra, reg: Registry, rec: VariableRec, patch: dict[str, Any]
    ) -> Variable: ...

    def delete_variable(self, tx: TxT_contra, reg: Registry, rec: VariableRec) -> None: ...

    def create_account(
        self, tx: TxT_contra, reg: Registry, project: ProjectRec, id_: str, name: str, role: Role
    ) -> AccountRec: ...

    def rename_account(self, tx: TxT_contra, reg: Registry, rec: AccountRec, name: str) -> None: ...

    def set_role(
        self, tx: TxT_contra, reg: Registry, rec: AccountRec, project_pk: int, role: Role | None
    ) -> None:
        """Give ``rec`` ``role`` on the project (None: take its role away)."""
        ...

    def delete_account(self, tx: TxT_contra, reg: Registry, rec: AccountRec) -> None: ...

    def add_key(
        self,
        tx: TxT_contra,
        reg: Registry,
        rec: AccountRec,
        key_id: str,
        hash_: str,
        created_at: str,
    ) -> None: ...

    def delete_key(self, tx: TxT_contra, reg: Registry, rec: AccountRec, key_id: str) -> None: ...

    def key_created(self, conn: ConnT_contra, account_pk: int) -> list[tuple[str, str]]:
        """(key id, created at) of the account's keys, by key id."""
        ...


class AlertTables(Protocol[TxT_contra, ConnT_contra]):
    """Channels, the alert log, alert actions and the alert rules' progress.

    Functions taking a transaction run in ``Transactions.write``, the others in ``read``. Alert
    ids increase in commit order, so an action consumer's position is an alert id. The rules'
    progress (the last log cursor judged, when it was written, the trigger states) is saved in
    the same transaction as the alerts it produced."""

    def load_channels(self, conn: ConnT_contra) -> list[tuple[int, int, ChannelDoc]]:
        """(pk, project pk, document) of every channel."""
        ...

    def insert_channel(self, tx: TxT_contra, project_pk: int, doc: ChannelDoc) -> int:
        """The new channel's pk: never one a deleted channel had (positions of its action
        deliveries and trigger states are keyed by it)."""
        ...

    def update_channel(self, tx: TxT_contra, pk: int, doc: ChannelDoc) -> None: ...

    def delete_channel(self, tx: TxT_contra, pk: int) -> None:
        """Delete the channel and its actions (its trigger states go with ``forget_states``)."""
        ...

    def channel_exists(self, tx: TxT_contra, channel_pk: int) -> bool: ...

    def insert_alert(
        self, tx: TxT_contra, channel_pk: int, created_ms: int, record: dict[str, Any]
    ) -> int:
        """Log an alert; returns its id (greater than every id before)."""
        ...

    def insert_action(
        self,
        tx: TxT_contra,
        alert_id: int,
        slot: int,
        channel_pk: int,
        method: str,
        target: str,
        body: bytes,
    ) -> None: ...

    def slot_items(
        self, conn: ConnT_contra, channel_pk: int, slot: int, after: int, limit: int
    ) -> list[tuple[int, str, bytes, int]]:
        """(alert id, target, body, created ms) of one (channel, slot)'s HTTP actions (never
        ``ACTOR`` ones) with alert id > ``after``, ascending."""
        ...

    def slots(self, conn: ConnT_contra, channel_pk: int) -> list[int]:
        """The channel's action slots holding HTTP (not ``ACTOR``) actions."""
        ...

    def last_alert(self, conn: ConnT_contra) -> int:
        """The greatest alert id (0: none)."""
        ...

    def record_outcome(
        self, tx: TxT_contra, alert_id: int, slot: int, outcome: dict[str, Any], done: bool
    ) -> None:
        """Store an action's outcome; once done it stays done."""
        ...

    def actor_todo(
        self, conn: ConnT_contra, project_pk: int, limit: int
    ) -> list[tuple[int, int, int, str, bytes, str | None]]:
        """One project's ``ACTOR`` actions not done, in (alert id, slot) order: (alert id,
        slot, channel pk, actor id, body, outcome)."""
        ...

    def actor_projects(self, conn: ConnT_contra) -> list[int]:
        """The projects having ``ACTOR`` actions not done."""
        ...

    def list_alerts(
        self, conn: ConnT_contra, channel_pk: int, skip: int, limit: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, a page of the channel's alerts, newest first)."""
        ...

    def alert_project(self, conn: ConnT_contra, alert_id: int) -> str | None:
        """The id of the project the alert belongs to (None: no such alert)."""
        ...

    def load_progress(self, conn: ConnT_contra) -> tuple[int, int, dict[StateKey, TriggerState]]:
        """(last log cursor judged, when it was saved (ms), the stored trigger states)."""
        ...

    def save_progress(
        self,
        tx: TxT_contra,
        cursor: int,
        alive_ms: int,
        states: dict[StateKey, TriggerState | None],
    ) -> None:
        """Store the position and the changed states (None: forget that state); states of
        channels deleted meanwhile are skipped."""
        ...

    def forget_states(self, tx: TxT_contra, channel_pk: int) -> None: ...

    def log_after(
        self, conn: ConnT_contra, after: int, upto: int, limit: int
    ) -> list[tuple[int, int, int, Any, int, int]]:
        """Log rows (cursor, series, time, value, qc, received ms) with ``after < cursor <=
        upto``, in cursor order, at most ``limit``: what the rules replay on start."""
        ...


class DeliveryTables(Protocol[TxT_contra, ConnT_contra]):
    """Consumer positions of outbound deliveries (a named cursor per delivery key) and the dead
    letters a delivery gave up on. A dead letter and the position past it are one
    transaction."""

    def get_cursor(self, conn: ConnT_contra, key: str) -> int | None:
        """The stored position of ``key`` (None: never stored, or forgotten)."""
        ...

    def set_cursor(self, tx: TxT_contra, key: str, cursor: int, now_ms: int) -> None: ...

    def forget(self, tx: TxT_contra, key: str) -> None:
        """Delete the position and the dead letters of ``key``."""
        ...

    def dead_letter(  # records the item given up on and moves the position past it
        self,
        tx: TxT_contra,
        key: str,
        *,
        cursor: int,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        born_ms: int,
        now_ms: int,
        attempts: int,
        last_status: int | None,
        last_error: str | None,
    ) -> None: ...

    def dead_letters(self, conn: ConnT_contra, key: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` dead letters of ``key``, newest first."""
        ...


class FeedSessions(Protocol):
    """Feed tokens and durable feed sessions (``store.feeds.FeedStore``).

    A token is bound to one project; only its digest is stored, ``token_for`` finds it by the
    secret. A session is a durable consumer: its opening arguments and its position in the log.
    ``moved`` changes it in memory; ``flush`` (every second) and ``closed`` (at once) store it;
    ``session`` resumes it (None once it expired: detached for longer than the retention, or
    deleted by ``expire``). ``stop`` stores every moved position; a new instance over the
    same storage, ``start``-ed, has the same tokens and sessions."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def token_for(self, token: str) -> FeedToken | None: ...

    def project_of(self, session: FeedSession) -> int:
        """The pk of the project of the session's token (``NotFound`` once it was revoked)."""
        ...

    def attach(self, token: FeedToken, close: Callable[[str], None]) -> Callable[[], None]:
        """Register an open connection of ``token`` (closed on revoke); returns the detach."""
        ...

    def claim(self, token: FeedToken, session_id: str) -> None:
        """A connection is opening ``session_id``: it is not evicted until ``release``."""
        ...

    async def take_over(self, token: FeedToken, session_id: str) -> None:
        """Close the connection serving this session, if any, and wait until it has saved its
        position."""
        ...

    def tokens_of(self, project_pk: int) -> list[FeedToken]: ...

    async def create_token(self, project_pk: int, name: str) -> tuple[FeedToken, str]:
        """A new token of the project and its secret (shown once)."""
        ...

    async def revoke(self, project_pk: int, token_id: str) -> None:
        """Delete the token and its sessions (``NotFound`` if the project has no such token)."""
        ...

    async def create_session(
        self, token: FeedToken, args: str, position: int, after_time: int | None = None
    ) -> FeedSession: ...

    async def session(self, token: FeedToken, session_id: str) -> FeedSession | None: ...

    def opened(self, session: FeedSession, close: Callable[[], None]) -> None: ...

    def release(self, session_id: str) -> None: ...

    def moved(self, session: FeedSession, position: int, after_time: int | None = None) -> None: ...

    async def closed(self, session: FeedSession) -> None: ...

    async def flush(self) -> None: ...

    async def expire(self) -> int:
        """Delete detached sessions unused for longer than the retention; returns how many."""
        ...

    def sessions_of(self, token: FeedToken) -> int: ...


class ConsumerPositions(Protocol):
    """The stored positions of durable consumers (``core/consumers``): for each consumer name,
    the last log cursor it has covered. A position saved is the one loaded after a restart."""

    async def load(self, name: str) -> int | None:
        """The stored position of ``name``; None if it has none."""
        ...

    async def save(self, name: str, position: int) -> None: ...

    async def forget(self, name: str) -> None:
        """Drop the position of ``name`` (a later ``load`` gives None)."""
        ...
