"""Tapis documents <-> the core model.

A Tapis project is a native project with the same id, a site a site, an instrument a device (at
the site), a variable a variable. Tapis-only fields (``funding_resource``, ``project_url``,
``active``, ``description`` of a site, ``inst_description``, ``tags``, ``var_name``, ``units``,
``shortname``, ...) and the Tapis ``last_updated`` stamp are kept in the native document's
``metadata["_tapis"]``; the user's own ``metadata`` is the rest of that dict.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from streamgauge.errors import Invalid
from streamgauge.model import ID_RE, Device, Metadata, Project, Site, Variable
from streamgauge.store.registry import Registry

TAPIS = "_tapis"

Text = Annotated[str, StringConstraints(max_length=4096)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewProject(_In):
    project_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    owner: Text
    pi: Text
    description: Text = ""
    funding_resource: Text | None = None
    project_url: Text | None = None
    active: bool = True
    metadata: Metadata = Field(default_factory=dict)


class NewSite(_In):
    site_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    site_id: str
    description: Text
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    elevation: float
    metadata: Metadata = Field(default_factory=dict)


class UpdateSite(_In):
    site_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    description: Text
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    elevation: float
    metadata: Metadata | None = None


class NewInstrument(_In):
    inst_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    inst_id: str
    inst_description: Text
    topic_category_id: Text | None = None
    tags: list[Text] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)


class UpdateInst(_In):
    inst_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    inst_description: Text | None = None
    tags: list[Text] | None = None
    metadata: Metadata | None = None


class NewVariable(_In):
    var_id: str
    var_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    units: Text | None = None
    measured_property_id: float | str | None = None
    shortname: Text | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpdateVariable(_In):
    var_name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    units: Text | None = None
    measured_property_id: float | str | None = None
    shortname: Text | None = None
    metadata: Metadata | None = None


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
        "metadata": user,
        "permissions": {"users": members(reg, pk)},
        "created_at": p.created_at,
        "last_updated": extra.get("last_updated", p.created_at),
    }


def site_doc(s: Site, instruments: list[dict[str, Any]]) -> dict[str, Any]:
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


def variable_doc(v: Variable, site_id: str | None) -> dict[str, Any]:
    user, extra = split_metadata(v.metadata)
    return {
        "var_id": v.id,
        "var_name": extra.get("var_name", v.name),
        "units": extra.get("units", v.unit),
        "unit": v.unit,
        "shortname": extra.get("shortname", v.id),
        "measured_property_id": extra.get("measured_property_id"),
        "metadata": user,
        "inst_id": v.device,
        "site_id": site_id,
        "project_id": v.project,
        "created_at": extra.get("created_at"),
        "last_updated": extra.get("last_updated"),
    }


def instrument_doc(d: Device, variables: list[Variable]) -> dict[str, Any]:
    user, extra = split_metadata(d.metadata)
    return {
        "inst_id": d.id,
        "inst_name": d.name,
        "inst_description": extra.get("inst_description", ""),
        "topic_category_id": extra.get("topic_category_id"),
        "tags": extra.get("tags", []),
        "metadata": user,
        "site_id": d.site,
        "project_id": d.project,
        "created_at": extra.get("created_at"),
        "last_updated": extra.get("last_updated"),
        "variables": [variable_doc(v, d.site) for v in sorted(variables, key=lambda v: v.id)],
    }
