"""Following the metadata feed from the store, including past what it still keeps.

``meta_events`` is bounded (the stores prune events older than an hour, and beyond a count):
a node whose registry is behind what is kept (it was away, or its bus was, for longer) cannot
replay the events it missed. It reloads instead: ``read_meta`` notices that the events after
its position are gone and returns one *reload run* in their place, the store's metadata as of
an events head (``Store.metadata_snapshot``); applying it (``reload_events``) turns the registry
into exactly that metadata: every record the tables hold is put, and every record the registry
holds that the tables do not is dropped (cascades as for any drop). Work events (channels, data
connectors) are not in the tables' snapshot: their services reload what is stored instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamgauge.core.cluster import MetaRun, Run, meta_runs
from streamgauge.core.registry import Registry
from streamgauge.domain import events as ev


async def read_meta(store: Any, after: int, upto: int | None, limit: int) -> list[Run[MetaRun]]:
    """Stored metadata runs after ``after`` (to ``upto``; None: to the head), or, when the
    store no longer keeps the next event (pruned), one reload run up to the head of a
    snapshot of the tables. ``store``: a ``store.api.Store``."""
    head = await store.events_head()  # first: every event up to it was committed before
    if head <= after:
        return []
    rows = await store.read_events(after, upto, limit)
    if rows and rows[0][0] == after + 1:
        return meta_runs(rows)
    at, events = await store.metadata_snapshot()
    return [(after + 1, at, MetaRun(after + 1, at, events, reload=True))]


def reload_events(reg: Registry, loaded: Sequence[ev.MetaEvent]) -> list[ev.MetaEvent]:
    """The events that make ``reg`` hold exactly the metadata ``loaded`` describes (the
    tables as events, as ``store.*.metadata.load`` gives them): drops for what is gone first,
    then every record put (a device now in another project moved)."""
    projects = {e.pk for e in loaded if isinstance(e, ev.ProjectPut)}
    sites = {e.pk for e in loaded if isinstance(e, ev.SitePut)}
    devices = {e.pk: e for e in loaded if isinstance(e, ev.DevicePut)}
    variables = {e.pk for e in loaded if isinstance(e, ev.VariablePut)}
    series = {e.pk for e in loaded if isinstance(e, ev.SeriesAdded)}
    accounts = {e.pk for e in loaded if isinstance(e, ev.AccountPut)}
    roles = {(e.account_pk, e.project_pk) for e in loaded if isinstance(e, ev.RolePut)}
    keys = {(e.account_pk, e.key_id) for e in loaded if isinstance(e, ev.KeyPut)}
    out: list[ev.MetaEvent] = []
    out += [ev.ProjectDropped(pk) for pk in reg.projects_by_pk if pk not in projects]
    out += [
        ev.SiteDropped(r.pk, r.project_pk, r.doc.id)
        for r in reg.sites.values()
        if r.pk not in sites
    ]
    out += [ev.DeviceDropped(pk) for pk in reg.devices_by_pk if pk not in devices]
    out += [ev.VariableDropped(pk) for pk in reg.variables_by_pk if pk not in variables]
    out += [ev.SeriesDropped(pk) for pk in reg.series_by_pk if pk not in series]
    out += [ev.AccountDropped(pk) for pk in reg.accounts_by_pk if pk not in accounts]
    for acc in reg.accounts_by_pk.values():
        out += [ev.RoleDropped(acc.pk, p) for p in acc.roles if (acc.pk, p) not in roles]
        out += [ev.KeyDropped(acc.pk, k) for k in acc.keys if (acc.pk, k) not in keys]
    for e in loaded:
        if isinstance(e, ev.DevicePut):
            was = reg.devices_by_pk.get(e.pk)
            if was is not None and was.project_pk != e.project_pk:
                out.append(ev.DeviceMoved(e.pk, e.project_pk, e.doc))
                continue
        out.append(e)
    return out


def apply_reload(reg: Registry, run: MetaRun) -> None:
    """Apply a reload run (``read_meta``) to ``reg``."""
    reg.apply_all(reload_events(reg, run.events))
