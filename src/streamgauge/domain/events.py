"""Metadata changes as data: the events every metadata write produces.

A metadata write (a project created, a device moved, a key added, a series first seen by
ingest, ...) appends its events to the write transaction; the store writes them in that same
transaction (the SQLite backend to its ``meta_events`` table) and, once it committed, hands
them to the registry, whose ``apply`` is the only thing that changes the registry's metadata
(``core/registry.py``). A failed transaction writes no event and applies none.

Events are values: frozen ``msgspec`` structs, each with a ``type`` tag, keyed by the stable
integer pks of the tables. ``encode``/``decode`` give their serialized form (JSON; documents
with the fields they have set), which the cluster mode ships between nodes: a registry
that applies, in order, the events of every committed transaction since it was empty holds
exactly the metadata of the node that wrote them.

Cascades are the registry's: ``ProjectDropped`` also drops the project's sites, devices,
variables and series, every role on it and the service accounts whose home it was;
``DeviceDropped`` its variables and series; ``VariableDropped`` its series; ``AccountDropped``
its keys and roles.

Not only metadata: ``WORK_EVENTS`` (an alert channel or a DT data connector created, changed or
deleted, a DT account's settings changed) go through the same feed, so that the node running
that work (the cluster's work lease), and every node and worker process for settings they all
apply, follows a change made on any node at once. The registry ignores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from streamgauge.domain.channels import ChannelDoc
from streamgauge.domain.model import Device, Project, Role, Site, Variable

__all__ = [
    "WORK_EVENTS",
    "AccountDropped",
    "AccountPut",
    "ChannelDropped",
    "ChannelPut",
    "ConnectorChanged",
    "ConnectorDropped",
    "DTAccountSettingsPut",
    "DeviceDropped",
    "DeviceMoved",
    "FeedTokenDropped",
    "FeedTokenPut",
    "DevicePut",
    "DeviceStored",
    "KeyDropped",
    "KeyPut",
    "MetaEvent",
    "ProjectDropped",
    "ProjectPut",
    "RoleDropped",
    "RolePut",
    "SeriesAdded",
    "SeriesDropped",
    "SiteDropped",
    "SitePut",
    "SiteStored",
    "VariableDropped",
    "VariablePut",
    "VariableStored",
    "decode",
    "encode",
    "encode_many",
    "kind",
]


class _Event(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class ProjectPut(_Event, frozen=True, tag="project_put"):
    """A project created, or its document replaced."""

    pk: int
    doc: Project


class ProjectDropped(_Event, frozen=True, tag="project_dropped"):
    pk: int


class SitePut(_Event, frozen=True, tag="site_put"):
    pk: int
    project_pk: int
    doc: Site


class SiteStored(_Event, frozen=True, tag="site_stored"):
    """A site as its table holds it (JSON text of a valid ``Site``): what a store yields on
    open, applied like ``SitePut`` without validating a model (see ``VariableStored``)."""

    pk: int
    project_pk: int
    doc: str


class SiteDropped(_Event, frozen=True, tag="site_dropped"):
    pk: int
    project_pk: int
    id: str


class DevicePut(_Event, frozen=True, tag="device_put"):
    """A device created, or its document replaced (same project)."""

    pk: int
    project_pk: int
    doc: Device


class DeviceStored(_Event, frozen=True, tag="device_stored"):
    """A device as its table holds it (JSON text of a valid ``Device``): what a store yields
    on open, applied like ``DevicePut`` without validating a model (see ``VariableStored``)."""

    pk: int
    project_pk: int
    doc: str


class DeviceMoved(_Event, frozen=True, tag="device_moved"):
    """A device moved to project ``project_pk`` with its variables and series (it keeps its
    pk); ``doc`` is its new document. Its variables' new documents follow as ``VariablePut``."""

    pk: int
    project_pk: int
    doc: Device


class DeviceDropped(_Event, frozen=True, tag="device_dropped"):
    pk: int


class VariablePut(_Event, frozen=True, tag="variable_put"):
    """A variable created, or its document replaced (its QC limits follow)."""

    pk: int
    device_pk: int
    doc: Variable


class VariableStored(_Event, frozen=True, tag="variable_stored"):
    """A variable as its table holds it, the document as stored (JSON text): what a store
    yields on open to rebuild the registry, applied like ``VariablePut`` without validating
    a model per variable (the document was valid when it was written)."""

    pk: int
    device_pk: int
    doc: str


class VariableDropped(_Event, frozen=True, tag="variable_dropped"):
    pk: int


class SeriesAdded(_Event, frozen=True, tag="series_added"):
    """A series (variable, set) first seen by ingest, with the ids its rows are named by.
    Applying it again is a no-op."""

    pk: int
    project_pk: int
    device_pk: int
    variable_pk: int
    set: int
    device_id: str
    variable_id: str


class SeriesDropped(_Event, frozen=True, tag="series_dropped"):
    """A series forgotten: what undoes ``SeriesAdded`` when the append that added it failed."""

    pk: int


class AccountPut(_Event, frozen=True, tag="account_put"):
    """A service account created, or renamed (its roles and keys are kept)."""

    pk: int
    id: str
    name: str
    home_project_pk: int


class AccountDropped(_Event, frozen=True, tag="account_dropped"):
    pk: int


class RolePut(_Event, frozen=True, tag="role_put"):
    account_pk: int
    project_pk: int
    role: Role


class RoleDropped(_Event, frozen=True, tag="role_dropped"):
    account_pk: int
    project_pk: int


class KeyPut(_Event, frozen=True, tag="key_put"):
    """A key of a service account, with its argon2 hash (never the secret)."""

    account_pk: int
    key_id: str
    hash: str


class KeyDropped(_Event, frozen=True, tag="key_dropped"):
    account_pk: int
    key_id: str


class ChannelPut(_Event, frozen=True, tag="channel_put"):
    """An alert channel created, or its document replaced (its triggers start over, OK). The
    document travels with it: the node running the rules compiles it at once, before the next
    batch it judges."""

    pk: int
    project_pk: int
    doc: ChannelDoc


class ChannelDropped(_Event, frozen=True, tag="channel_dropped"):
    pk: int


class ConnectorChanged(_Event, frozen=True, tag="connector_changed"):
    """A DT data connector created or changed: its record (document, signature secret, start
    position) is read from the store, so the secret never travels in an event."""

    pk: int
    id: str


class ConnectorDropped(_Event, frozen=True, tag="connector_dropped"):
    pk: int
    id: str


class DTAccountSettingsPut(_Event, frozen=True, tag="dt_account_settings_put"):
    """A service account's DT settings created or changed (``enableBasicAuth`` and the DT
    times; ``create_time`` is kept when the account had settings already): every node and
    worker process applies them at once, so a key login anywhere obeys ``enableBasicAuth``
    from the next request on. Settings go with their account (``AccountDropped``)."""

    account_pk: int
    basic_auth: bool
    create_time: str
    update_time: str


class FeedTokenPut(_Event, frozen=True, tag="feed_token_put"):
    """A push-feed token created (the embedded store: ``store/sqlite/feeds.py``), with the
    SHA-256 digest of its secret (hex; never the secret): the fan-out worker process that
    serves the token's sessions knows it at once."""

    pk: int
    id: str
    project_pk: int
    name: str
    digest: str
    created: str


class FeedTokenDropped(_Event, frozen=True, tag="feed_token_dropped"):
    """A push-feed token revoked (its sessions deleted): the process serving its connections
    closes them (1008)."""

    pk: int


MetaEvent = (
    ProjectPut
    | ProjectDropped
    | SitePut
    | SiteStored
    | SiteDropped
    | DevicePut
    | DeviceStored
    | DeviceMoved
    | DeviceDropped
    | VariablePut
    | VariableStored
    | VariableDropped
    | SeriesAdded
    | SeriesDropped
    | AccountPut
    | AccountDropped
    | RolePut
    | RoleDropped
    | KeyPut
    | KeyDropped
    | ChannelPut
    | ChannelDropped
    | ConnectorChanged
    | ConnectorDropped
    | DTAccountSettingsPut
    | FeedTokenPut
    | FeedTokenDropped
)

# Changes to the work that must happen once (alert channels, data connectors), and face
# settings every process applies (a DT account's settings, feed tokens): the registry ignores
# them; the nodes and worker processes that did not make them hand them to the services that
# follow them (``Engine.followers``), so the node holding the work lease, and every process
# checking a login, follows at once.
WORK_EVENTS = (
    ChannelPut,
    ChannelDropped,
    ConnectorChanged,
    ConnectorDropped,
    DTAccountSettingsPut,
    FeedTokenPut,
    FeedTokenDropped,
)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, ChannelDoc):
        return obj.model_dump(mode="json")
    if isinstance(obj, Project | Site | Device | Variable):
        # Only the fields set: what a document leaves unset (a variable's QC limits left to
        # the catalog) stays unset on the other side.
        return obj.model_dump(mode="json", exclude_unset=True)
    raise TypeError(f"cannot encode {type(obj).__name__} in a metadata event")


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ in (Project, Site, Device, Variable, ChannelDoc):
        return type_.model_validate(obj)
    raise TypeError(f"cannot decode {type_.__name__} in a metadata event")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder(MetaEvent, dec_hook=_dec_hook)


def encode(event: MetaEvent) -> bytes:
    """The event's serialized form: one JSON object with its ``type`` tag."""
    return _encoder.encode(event)


def encode_many(events: Sequence[MetaEvent]) -> bytes:
    """A JSON array of the events' serialized forms (one call for a whole transaction)."""
    return _encoder.encode(events)


_many_decoder = msgspec.json.Decoder(list[MetaEvent], dec_hook=_dec_hook)


def decode_many(data: bytes | str) -> list[MetaEvent]:
    """The events ``encode_many`` gave ``data`` for."""
    return _many_decoder.decode(data)


def decode(data: bytes | str) -> MetaEvent:
    """The event ``encode`` gave ``data`` for; ``msgspec.ValidationError`` if it is none."""
    return _decoder.decode(data)


def kind(event: MetaEvent) -> str:
    """The event's ``type`` tag (``"project_put"``, ...)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
