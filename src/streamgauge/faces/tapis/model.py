"""Tapis documents <-> the core model.

A Tapis project is a native project with the same id, a site a site, an instrument a device (at
the site), a variable a variable. Tapis-only fields (``funding_resource``, ``project_url``,
``active``, ``description`` of a site, ``inst_description``, ``topic_category_id``, ``tags``,
``var_name``, ``units``, ``shortname``, ``measured_property_id``, ...) and the Tapis
``created_at``/``last_updated`` stamps are kept in the native document's ``metadata["_tapis"]``;
the user's own ``metadata`` is the rest of that dict.

What a body may hold is every field of the bundled spec's ``New*``/``Update*`` schema, the
fields Tapis' own tests and docs send (the ids of the enclosing resources in each document,
``topic_category_id`` on variables too), and the fields the server adds (``chords_id``,
``created_at``, ...), so that a document read can be sent back; the ids must agree with the
path, the server's fields keep the server's value. Another field is a 400 naming it. Replies
carry every field of the spec's response schema (``chords_id`` is the integer key of the
site, instrument or variable; ``bucket`` the project name, as in Tapis 1.2 and later).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from streamgauge.core.registry import DeviceRec, Registry, SiteRec, VariableRec
from streamgauge.domain.errors import Invalid
from streamgauge.domain.model import ID_RE, Metadata, Name, Project

TAPIS = "_tapis"

Text = Annotated[str, StringConstraints(max_length=4096)]


class _In(BaseModel):
    """A Tapis body: no field beyond the listed ones, no NaN or infinity in a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Echo = Any
"""A field the server sets (``created_at``, ``chords_id``, ...). Tapis accepts a document
back with it (a GET, edited, sent again); here it is accepted and the server's value kept."""

TopicId = (
    Annotated[str, StringConstraints(max_length=256)]
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | None
)


class NewProject(_In):
    project_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    owner: Name  # stored in the native project's owner and pi (at most 256 characters)
    pi: Name
    description: Text = ""
    funding_resource: Text | None = None
    project_url: Text | None = None
    active: bool = True
    metadata: Metadata = Field(default_factory=dict)
    project_id: str | None = Field(
        default=None, description="If sent, the project_name without spaces (Tapis' rule)."
    )
    bucket: Echo = None
    permissions: Echo = None
    created_at: Echo = None
    last_updated: Echo = None


class _SiteEcho(_In):
    project_id: str | None = Field(default=None, description="If sent, the path's project_id.")
    chords_id: Echo = None
    location: Echo = None
    owner: Echo = None
    created_at: Echo = None
    last_updated: Echo = None
    instruments: Echo = None


class NewSite(_SiteEcho):
    site_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    site_id: str
    description: Text
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    elevation: float
    metadata: Metadata = Field(default_factory=dict)


class UpdateSite(_SiteEcho):
    site_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    description: Text
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    elevation: float
    metadata: Metadata | None = None
    site_id: str | None = Field(default=None, description="If sent, the path's site_id.")


class _InstEcho(_In):
    project_id: str | None = Field(default=None, description="If sent, the path's project_id.")
    site_id: str | None = Field(default=None, description="If sent, the path's site_id.")
    chords_id: Echo = None
    site_chords_id: Echo = None
    owner: Echo = None
    created_at: Echo = None
    last_updated: Echo = None
    variables: Echo = None


class NewInstrument(_InstEcho):
    inst_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    inst_id: str
    inst_description: Text
    topic_category_id: TopicId = None
    tags: list[Text] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)


class UpdateInst(_InstEcho):
    inst_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    inst_description: Text | None = None
    topic_category_id: TopicId = None
    tags: list[Text] | None = None
    metadata: Metadata | None = None
    inst_id: str | None = Field(default=None, description="If sent, the path's inst_id.")


class _VarFields(_In):
    units: Text | None = None
    measured_property_id: float | str | None = None
    shortname: Text | None = None
    topic_category_id: TopicId = None
    unit_abbrev: Text | None = None
    measured_property: Text | None = None
    project_id: str | None = Field(default=None, description="If sent, the path's project_id.")
    site_id: str | None = Field(default=None, description="If sent, the path's site_id.")
    inst_id: str | None = Field(default=None, description="If sent, the path's inst_id.")
    unit: Echo = None
    chords_id: Echo = None
    owner: Echo = None
    created_at: Echo = None
    last_updated: Echo = None


VAR_KEPT = ("units", "shortname", "measured_property_id", "topic_category_id", "unit_abbrev",
            "measured_property")  # fmt: skip
"""The Tapis fields of a variable kept (in ``metadata._tapis``) and returned as sent."""


class NewVariable(_VarFields):
    var_id: str
    var_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    metadata: Metadata = Field(default_factory=dict)


class UpdateVariable(_VarFields):
    var_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    metadata: Metadata | None = None
    var_id: str | None = Field(default=None, description="If sent, the path's var_id.")


def same_id(sent: str | None, actual: str, field: str, index: int | None = None) -> None:
    """An id the body repeats (Tapis' own tests send ``project_id``, ``site_id``, ... in each
    document) must be the one the path (or the name) gives; else a 400 naming it."""
    if sent is None or sent == actual:
        return
    detail: dict[str, Any] = {"field": field, "reason": f"this document's {field} is {actual!r}"}
    if index is not None:
        detail["index"] = index
    raise Invalid(f"{field} {sent!r} in the body differs from {actual!r}", [detail])


def check_id(value: str, field: str, index: int | None = None, *, inst: bool = False) -> str:
    """A Tapis id that is also a valid native id (instrument ids without ``.`` or ``:``)."""
    bad = None
    if not ID_RE.match(value):
        bad = "1-128 of A-Za-z0-9_.:- starting with a letter or digit"
    elif inst and ("." in value or ":" in value):
        bad = "no '.' or ':' (a channel condition key is '<inst_id>.<var_id>')"
    if bad is None:
        return value
    detail: dict[str, Any] = {"field": field, "reason": bad}
    if index is not None:
        detail["index"] = index
    raise Invalid(f"bad {field} {value!r}", [detail])


def split_metadata(md: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(user metadata, Tapis-only fields) of a native document's metadata."""
    extra = md.get(TAPIS)
    user = {k: v for k, v in md.items() if k != TAPIS}
    return user, extra if isinstance(extra, dict) else {}


def with_tapis(user: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**user, TAPIS: extra}


def members(reg: Registry, project_pk: int) -> list[str]:
    return sorted(a.id for a in reg.accounts.values() if project_pk in a.roles)


def project_doc(reg: Registry, pk: int, p: Project) -> dict[str, Any]:
    user, extra = split_metadata(p.metadata)
    return {
        "project_id": p.id,
        "project_name": p.name,
        "description": p.description,
        "owner": p.owner,
        "pi": p.pi,
        "funding_resource": extra.get("funding_resource"),
        "project_url": extra.get("project_url"),
        "active": extra.get("active", True),
        "bucket": p.name,
        "metadata": user,
        "permissions": {"users": members(reg, pk)},
        "created_at": p.created_at,
        "last_updated": extra.get("last_updated", p.created_at),
    }


def _owner(reg: Registry, project_pk: int) -> str | None:
    p = reg.projects_by_pk.get(project_pk)
    return p.doc.owner if p is not None else None


def site_doc(reg: Registry, rec: SiteRec, instruments: list[dict[str, Any]]) -> dict[str, Any]:
    s = rec.doc
    user, extra = split_metadata(s.metadata)
    location = (
        {"type": "Point", "coordinates": [s.lon, s.lat]}
        if s.lat is not None and s.lon is not None
        else None
    )
    return {
        "site_id": s.id,
        "site_name": s.name,
        "project_id": s.project,
        "chords_id": rec.pk,
        "owner": _owner(reg, rec.project_pk),
        "description": extra.get("description", ""),
        "latitude": s.lat,
        "longitude": s.lon,
        "elevation": s.elevation,
        "location": location,
        "metadata": user,
        "created_at": extra.get("created_at"),
        "last_updated": extra.get("last_updated"),
        "instruments": instruments,
    }


def variable_doc(reg: Registry, rec: VariableRec, site_id: str | None) -> dict[str, Any]:
    v = rec.doc
    user, extra = split_metadata(v.metadata)
    device = reg.devices_by_pk.get(rec.device_pk)
    return {
        "var_id": v.id,
        "var_name": extra.get("var_name", v.name),
        "units": extra.get("units", v.unit),
        "unit": v.unit,
        "unit_abbrev": extra.get("unit_abbrev"),
        "shortname": extra.get("shortname", v.id),
        "measured_property_id": extra.get("measured_property_id"),
        "measured_property": extra.get("measured_property"),
        "topic_category_id": extra.get("topic_category_id"),
        "chords_id": rec.pk,
        "owner": _owner(reg, device.project_pk) if device is not None else None,
        "metadata": user,
        "inst_id": v.device,
        "site_id": site_id,
        "project_id": v.project,
        "created_at": extra.get("created_at"),
        "last_updated": extra.get("last_updated"),
    }


def instrument_doc(reg: Registry, rec: DeviceRec, variables: list[VariableRec]) -> dict[str, Any]:
    d = rec.doc
    user, extra = split_metadata(d.metadata)
    return {
        "inst_id": d.id,
        "inst_name": d.name,
        "inst_description": extra.get("inst_description", ""),
        "topic_category_id": extra.get("topic_category_id"),
        "tags": extra.get("tags", []),
        "chords_id": rec.pk,
        "owner": _owner(reg, rec.project_pk),
        "metadata": user,
        "site_id": d.site,
        "project_id": d.project,
        "created_at": extra.get("created_at"),
        "last_updated": extra.get("last_updated"),
        "variables": [
            variable_doc(reg, v, d.site) for v in sorted(variables, key=lambda v: v.doc.id)
        ],
    }
