"""The storage seam: what the engine needs from a backend, as protocols.

Every backend (the embedded ``sqlite`` one today, ``postgresql`` next) provides:

* a ``Store``: the observation log (``Log``) plus a transaction runner (``Transactions``) and
  the registry it keeps warm (given by the engine; the store sees it as
  ``domain.readmodel.ReadModel``). The engine holds its store as ``Store`` (built by
  ``store.factory.open_store``) and never names the implementation;
* table modules that run inside the runner's transactions: ``MetadataTables`` (projects, sites,
  devices, variables, accounts, keys, roles), ``AlertTables`` (channels, the alert log, alert
  actions, the rules' progress), ``DeliveryTables`` (consumer positions of deliveries, dead
  letters); a ``FeedSessions`` service (feed tokens and durable feed sessions), the
  ``ConsumerPositions`` of durable consumers, the core operations' storage parts
  (``StoreOps``: moving a device, the health probe) and the face state of
  ``store.face_state``. ``store.factory.Backend`` bundles them; the core takes everything it
  needs of storage from that bundle and these protocols.

The transactional half is generic in the backend's transaction (``TxT``: what a write closure
receives) and read handle (``ConnT``: what a read closure receives), so a table module is typed
against the runner of its own backend; the embedded backend's are ``sqlite.Tx`` and
``sqlite3.Connection`` (``factory.EmbeddedStore``). The contracts below are the ones
``tests/store/conformance/`` checks against every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from streamgauge.domain.alerts import StateKey
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
from streamgauge.domain.readmodel import ReadModel
from streamgauge.domain.records import AccountRec, DeviceRec, ProjectRec, SiteRec, VariableRec
from streamgauge.domain.timeseries import Points, Summaries

if TYPE_CHECKING:
    from streamgauge.domain.alerts import TriggerState
    from streamgauge.domain.channels import ChannelDoc
    from streamgauge.domain.events import MetaEvent
    from streamgauge.domain.feeds import FeedSession, FeedToken
    from streamgauge.domain.filters import Expr

__all__ = [
    "AlertTables",
    "AppendResult",
    "ConsumerPositions",
    "DeliveryPositions",
    "DeliveryTables",
    "FeedSessions",
    "HistoryQuery",
    "IngestColumns",
    "Log",
    "MetadataTables",
    "StateKey",
    "Store",
    "StoreOps",
    "TimeSeriesLog",
    "Transactions",
]

T = TypeVar("T")
TxT_co = TypeVar("TxT_co", covariant=True)
ConnT_co = TypeVar("ConnT_co", covariant=True)
TxT_contra = TypeVar("TxT_contra", contravariant=True)
ConnT_contra = TypeVar("ConnT_contra", contravariant=True)


class Log(Protocol):
    """The observation log: append-only, one cursor per row.

    Cursors are positive integers given in commit order without gaps: the first committed row is
    cursor 1 and every batch takes the next ``accepted`` cursors. A row's key is (series, time);
    the series of a row is (variable, set) of its ``IngestColumns``, created at its first row."""

    registry: ReadModel  # the engine's registry: loaded on open, applies committed events

    @property
    def head(self) -> int:
        """The last committed and published cursor (0 when the log is empty). It moves only
        after ``publish`` has been called with the batch that ends at it."""
        ...

    on_events: Callable[[int, int, list[MetaEvent]], None] | None
    """Set by the engine: called on the event loop with (first, last sequence number, events)
    of each committed transaction that changed metadata, before that transaction's batches
    are published. Sequence numbers are gapless and commit-ordered across all writers."""

    async def events_head(self) -> int:
        """The last metadata event's sequence number (0: none)."""
        ...

    async def read_events(
        self, after: int, upto: int | None, limit: int
    ) -> list[tuple[int, MetaEvent]]:
        """Stored metadata events with ``after < seq <= upto`` (``upto`` None: to the head), in
        order, at most ``limit``."""
        ...

    async def metadata_snapshot(self) -> tuple[int, list[MetaEvent]]:
        """The metadata the tables hold, as the events that build it from nothing, and the
        events head it is current at, read in one snapshot (a node whose position in the
        metadata feed is older than what the feed keeps reloads from it)."""
        ...

    async def durable_head(self) -> int:
        """The last cursor committed by any writer of this log (in the cluster mode, by any
        node; it may be ahead of ``head``): where a node's look at the store's head starts."""
        ...

    async def open(self, publish: Callable[[Batch], None]) -> None:
        """Open (creating or migrating the storage), load the registry (``apply`` of the events
        that build what is stored) and the log's state.
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
        Which rows are duplicates, conflicts or new, and each accepted row's QC flags (stored
        and published with it), are decided by the ``CommitRules`` (``domain.commit``) the
        store was built with, called in commit order: the core's rules, never the store's."""
        ...

    async def read_log(
        self, after: int, upto: int, limit: int, *, project_pk: int | None = None
    ) -> Batch:
        """Committed rows with ``after < cursor <= upto`` in cursor order, all projects, at most
        ``limit`` (the first ones). The batch's ``project_pk`` is 0.

        With ``project_pk`` (a project's catch-up): every row whose series belongs to that
        project, in cursor order, up to ``limit`` rows; rows of other projects may come too
        (the caller filters), but a store reads only the ranges of the log that hold the
        project's rows, so other projects' traffic does not slow it down. A full page (``limit``
        rows) covers the log up to its last row; a shorter one up to ``upto``. The batch's
        ``project_pk`` is ``project_pk``."""
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


class TimeSeriesLog(Protocol):
    """What aggregates, latest values and retention need of the log (docs/timeseries.md).

    The backend keeps a summary per (series, UTC hour, QC flag set) of the numeric values:
    count, sum, min, max, first and last (time, value), never behind the log as reads see it
    (SQLite: folded in as the log is indexed, the unindexed tail summarized at read time;
    PostgreSQL: in the transaction of every append). Retention removes rows older than a
    cutoff per series in bounded steps and records per project the highest cursor it removed
    (``gone``), in the same transaction."""

    gone: dict[int, int]  # project pk -> highest cursor retention removed (after the commit)

    async def refresh_gone(self) -> None:
        """Bring ``gone`` up to what the store holds (PostgreSQL: another node's retention pass
        may have removed rows since; SQLite: this process is the only writer, nothing to do)."""
        ...

    async def settle_summaries(self) -> None:
        """Bring the stored summaries up to the log's head (before a retention pass, so rows it
        removes have been counted in a rollup's summaries)."""
        ...

    async def aggregate_inputs(
        self,
        project_pk: int,
        series: Sequence[int],
        lo_ms: int,
        hi_ms: int,
        qc_remove: int,
        plan: Callable[[Summaries], list[tuple[int, int, int]]],
    ) -> tuple[Summaries, Points]:
        """From one read snapshot: the summaries of ``series`` over the hours meeting
        ``[lo_ms, hi_ms)`` whose QC flags have no bit of ``qc_remove`` (ordered by series,
        hour), then the numeric rows (same QC rule) of the (series, from, to) ranges that
        ``plan`` returns given those summaries."""
        ...

    async def latest_rows(self, lo: int = 0, hi: int | None = None) -> Batch:
        """The newest stored row (greatest time) of every series whose pk is in ``[lo, hi)``
        (``hi`` None: no upper bound), in series order."""
        ...

    async def newest_passing(self, series: Sequence[int], qc_remove: int) -> Batch:
        """For each of ``series``, its newest row without a flag of ``qc_remove``."""
        ...

    async def expired(self, cutoffs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (series, cutoff ms) pairs of ``cutoffs`` that have rows older than the cutoff."""
        ...

    async def expire(
        self,
        project_pk: int,
        cutoffs: Sequence[tuple[int, int]],
        *,
        keep_summaries: bool,
        max_rows: int,
    ) -> tuple[int, bool]:
        """One write transaction removing at most ``max_rows`` rows of (series, cutoff) pairs
        older than the cutoff, from the log and its index, and the summaries of the hours
        removed (recomputing the hour of the cutoff) unless ``keep_summaries`` (a rollup).
        Returns (rows removed, whether nothing expired is left)."""
        ...


class Transactions(Protocol[TxT_co, ConnT_co]):
    """Runs closures of a backend's table modules in its transactions.

    ``write`` runs ``fn`` in one write transaction, serialized with every other write and with
    ``append``: it commits all of ``fn``'s effects or, if ``fn`` raises, none (the exception
    reaches the caller). The metadata events ``fn`` appends to its transaction are stored in it
    and handed to the registry's ``apply`` after the commit, in order, before the next
    transaction starts; hooks ``fn`` queues for after the commit run then too. Neither happens
    if it did not commit. ``read`` runs ``fn`` on a read handle
    that sees every transaction committed before the call; reads run concurrently. Both raise
    ``Unavailable`` once the store is closed."""

    async def write(self, fn: Callable[[TxT_co], T]) -> T: ...

    async def read(self, fn: Callable[[ConnT_co], T], *, key: object = None) -> T:
        """Run ``fn`` on a read handle; waiting reads take turns by ``key`` (a project's
        history reads share one key), so one tenant's scans cannot starve another's read."""
        ...


class Store(Log, TimeSeriesLog, Transactions[TxT_co, ConnT_co], Protocol[TxT_co, ConnT_co]):
    """A backend's store: the log, the transaction runner, the registry it keeps warm."""

    write_seconds: float  # total time spent in write transactions (metrics)

    def index_lag(self) -> int:
        """Rows committed to the log but not yet in its (series, time) index (metrics): reads
        scan them as the unindexed tail. 0 for a backend that indexes in the same
        transaction."""
        ...

    async def append_with(
        self, metadata: Callable[[TxT_co], object], columns: Callable[[], IngestColumns]
    ) -> AppendResult:
        """``metadata`` (writes of the backend's ``MetadataTables``: the devices and variables
        a bridge creates on first sight) and the batch ``columns`` builds, in ONE write
        transaction: both commit or neither (a ``Conflict``, an ``Invalid`` from ``columns``,
        any error leaves no device or variable behind). ``append``'s rules hold for the
        batch. The events ``metadata`` appends are applied to the registry before ``columns``
        is called, so the batch can name what it created; if the transaction then fails they
        are undone before the error reaches the caller (the registry shows them only while
        the transaction runs). ``columns`` runs on the writer: resolve rows there, nothing
        slow."""
        ...


class MetadataTables(Protocol[TxT_contra, ConnT_contra]):
    """Metadata persistence, run inside ``Transactions.write`` (``key_created`` in ``read``).

    Each change checks (reading the registry), writes, and appends its metadata events
    (``domain/events.py``) to the transaction: they are stored with it and applied to the
    registry after the commit, so the registry never shows what did not commit. Bulk creates
    are all or nothing and name a bad item by its index; with ``skip_existing`` an item whose
    id exists is returned unchanged.
    ``Store.open`` loads everything back into the registry: after a reopen the registry holds
    exactly what was committed."""

    def create_projects(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        items: list[ProjectIn],
        *,
        skip_existing: bool,
        admin_account: int | None,
    ) -> list[Project]: ...

    def update_project(
        self, tx: TxT_contra, reg: ReadModel, rec: ProjectRec, patch: dict[str, Any]
    ) -> Project: ...

    def delete_project(self, tx: TxT_contra, reg: ReadModel, rec: ProjectRec) -> None: ...

    def create_sites(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        project: ProjectRec,
        items: list[SiteIn],
        *,
        skip_existing: bool,
    ) -> list[Site]: ...

    def update_site(
        self, tx: TxT_contra, reg: ReadModel, rec: SiteRec, patch: dict[str, Any]
    ) -> Site: ...

    def delete_site(self, tx: TxT_contra, reg: ReadModel, rec: SiteRec) -> None: ...

    def create_devices(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        project: ProjectRec,
        items: list[DeviceIn],
        *,
        skip_existing: bool,
    ) -> list[Device]: ...

    def update_device(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        project: ProjectRec,
        rec: DeviceRec,
        patch: dict[str, Any],
    ) -> Device: ...

    def delete_device(self, tx: TxT_contra, reg: ReadModel, rec: DeviceRec) -> None: ...

    def create_variables(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        project: ProjectRec,
        device: DeviceRec,
        items: list[VariableIn],
        *,
        skip_existing: bool,
        index: int | None = None,
    ) -> list[Variable]: ...

    def update_variable(
        self, tx: TxT_contra, reg: ReadModel, rec: VariableRec, patch: dict[str, Any]
    ) -> Variable: ...

    def delete_variable(self, tx: TxT_contra, reg: ReadModel, rec: VariableRec) -> None: ...

    def create_account(
        self, tx: TxT_contra, reg: ReadModel, project: ProjectRec, id_: str, name: str, role: Role
    ) -> AccountRec: ...

    def rename_account(
        self, tx: TxT_contra, reg: ReadModel, rec: AccountRec, name: str
    ) -> None: ...

    def set_role(
        self, tx: TxT_contra, reg: ReadModel, rec: AccountRec, project_pk: int, role: Role | None
    ) -> None:
        """Give ``rec`` ``role`` on the project (None: take its role away)."""
        ...

    def delete_account(self, tx: TxT_contra, reg: ReadModel, rec: AccountRec) -> None: ...

    def add_key(
        self,
        tx: TxT_contra,
        reg: ReadModel,
        rec: AccountRec,
        key_id: str,
        hash_: str,
        created_at: str,
    ) -> None: ...

    def delete_key(self, tx: TxT_contra, reg: ReadModel, rec: AccountRec, key_id: str) -> None: ...

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
    """Feed tokens and durable feed sessions (the SQLite one: ``store/sqlite/feeds.py``).

    A token is bound to one project; only its digest is stored, ``token_for`` finds it by the
    secret. A session is a durable consumer: its opening arguments and its position in the log.
    ``moved`` changes it in memory; ``flush`` (every second) and ``closed`` (at once) store it;
    ``session`` resumes it (None once it expired: detached for longer than the retention, or
    deleted by ``expire``). ``stop`` stores every moved position; a new instance over the
    same storage, ``start``-ed, has the same tokens and sessions."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def token_for(self, token: str) -> FeedToken | None: ...

    async def find_token(self, token: str) -> FeedToken | None:
        """``token_for``, looking a token not known here up in the store first (created a
        moment ago by another process)."""
        ...

    def project_of(self, session: FeedSession) -> int:
        """The project of the session's token (``NotFound`` once the token was revoked)."""
        ...

    def tokens_of(self, project_pk: int) -> list[FeedToken]: ...

    async def create_token(self, project_pk: int, name: str) -> tuple[FeedToken, str]:
        """A new token of the project and its secret (shown once)."""
        ...

    async def revoke(self, project_pk: int, token_id: str) -> None:
        """Delete the token and its sessions (``NotFound`` if the project has no such token)."""
        ...

    def attach(self, token: FeedToken, close: Callable[[str], None]) -> Callable[[], None]:
        """Register an open connection of ``token``: ``revoke`` calls ``close`` with a reason.
        Returns the function that unregisters it."""
        ...

    def claim(self, token: FeedToken, session_id: str) -> None:
        """A connection is opening ``session_id``: it is not evicted until ``release``."""
        ...

    async def create_session(
        self, token: FeedToken, args: str, position: int, after_time: int | None = None
    ) -> FeedSession:
        """A new session of ``token``, claimed for its connection. At the per-token cap the
        least recently used detached sessions make room; ``SessionLimit`` if all are
        attached."""
        ...

    async def session(self, token: FeedToken, session_id: str) -> FeedSession | None: ...

    def opened(self, session: FeedSession, close: Callable[[], None]) -> None: ...

    async def take_over(self, token: FeedToken, session_id: str) -> None:
        """Close the connection serving the session, if any, and wait until it has ended and
        stored its position (one connection serves a session at a time)."""
        ...

    def release(self, session_id: str) -> None: ...

    def positions(self, session: FeedSession) -> ConsumerPositions:
        """The session's position as a durable consumer's positions (its row)."""
        ...

    def connected(self, project_pk: int) -> list[tuple[FeedToken, FeedSession]]:
        """The sessions of the project's tokens that a connection serves now."""
        ...

    def moved(self, session: FeedSession, position: int, after_time: int | None = None) -> None: ...

    async def closed(self, session: FeedSession) -> None:
        """The connection ended: store its position. The session counts as served until the
        position is stored, so a ``take_over`` meanwhile waits for it."""
        ...

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


class StoreOps(Protocol[TxT_contra, ConnT_contra]):
    """Core operations whose storage part a backend provides beside the table modules (the
    engine calls them: ``Engine.transfer_device``, ``Engine.check_store``)."""

    async def transfer_device(
        self, store: Store[TxT_contra, ConnT_contra], dev: DeviceRec, target: ProjectRec
    ) -> None:
        """Move ``dev`` to ``target`` in one write transaction of ``store``: it keeps its pk,
        variables, series and stored rows (now the target's) and loses its site; the registry
        follows after the commit."""
        ...

    async def probe(self, store: Store[TxT_contra, ConnT_contra]) -> None:
        """A read that touches the storage: raises if the store cannot answer."""
        ...


class DeliveryPositions(ConsumerPositions, Protocol):
    """Where deliveries keep their cursors (``ConsumerPositions``) and their dead letters
    (the SQLite one: ``store/sqlite/deliveries.SqliteDeliveryPositions``)."""

    async def dead_letter(
        self,
        name: str,
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
    ) -> None:
        """Record an item given up on and move ``name``'s cursor past it, in one transaction."""
        ...

    async def dead_letters(self, name: str, limit: int) -> list[dict[str, Any]]: ...
