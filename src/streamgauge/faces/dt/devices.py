"""Devices, their labels, event history, and the emulator: DT devices are native devices.

A DT device is a native device of the same id: its DT ``type`` is the native ``type``, its
``labels`` are the native labels (``labels.name`` is the SDK's display name), its
``productNumber`` is ``metadata.productNumber``. Emulated devices (``emu`` + 20 characters) are
native devices created through the emulator endpoints; publishing to one ingests its event rows
(see :mod:`streamgauge.faces.dt.events`) through the engine, with QC, like any other ingest.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from streamgauge.auth import Action, Principal, visible_projects
from streamgauge.core.registry import DeviceRec, ProjectRec
from streamgauge.domain.errors import BadRequest, Invalid, NotFound
from streamgauge.domain.log import HistoryQuery
from streamgauge.domain.model import DeviceIn, VariableIn
from streamgauge.faces.dt.events import (
    EVENT_TYPES,
    Row,
    dumps_ascii,
    event_obj,
    event_type_of,
    new_xid,
    parse_event,
    parse_ts,
)
from streamgauge.faces.dt.face import DTFace, get_face, project_call
from streamgauge.faces.dt.http import (
    DTRoute,
    Query,
    decode_token,
    encode_token,
    json_body,
    json_response,
    page_size,
)

router = APIRouter(tags=["dt: devices"], route_class=DTRoute)

DEVICE_TYPES = (
    "temperature",
    "proximity",
    "touch",
    "humidity",
    "proximityCounter",
    "touchCounter",
    "waterDetector",
    "ccon",
    "co2",
    "motion",
    "deskOccupancy",
    "contact",
)
LIST_DEFAULT = 10_000  # the SDK never sends pageSize (and leaks page tokens): one big page
LIST_MAX = 10_000
_NEVER = int(np.iinfo(np.int64).min)


def device_name(project: str, device: str) -> str:
    return f"projects/{project}/devices/{device}"


def device_json(face: DTFace, dev: DeviceRec) -> dict[str, Any]:
    reg = face.engine.registry
    project = reg.projects_by_pk[dev.project_pk].doc.id
    product = dev.doc.metadata.get("productNumber", "")
    return {
        "name": device_name(project, dev.doc.id),
        "type": dev.doc.type or "",
        "labels": dict(dev.doc.labels),
        "productNumber": product if isinstance(product, str) else str(product),
        "reported": face.reported.reported(dev),
    }


def find_device(
    face: DTFace, who: Principal, project: str, device: str, action: Action
) -> DeviceRec:
    reg = face.engine.registry
    if project == "-":
        for proj in visible_projects(who, reg):
            dev = reg.devices.get((proj.pk, device))
            if dev is not None:
                face.project(who, proj.doc.id, action)
                return dev
        raise NotFound(f"no device {device!r} in any project you can see")
    proj = face.project(who, project, action)
    dev = reg.devices.get((proj.pk, device))
    if dev is None:
        raise NotFound(f"no device {device!r} in project {project!r}")
    return dev


@router.get("/projects/{project}/devices/{device}")
async def get_device(request: Request, project: str, device: str) -> Response:
    """One device; ``-`` as the project searches every project the caller can read."""
    face = get_face(request)
    who = await face.authenticate(request)
    Query(request, ())
    dev = find_device(face, who, project, device, Action.READ)
    await face.reported.load_devices([dev])
    return json_response(device_json(face, dev))


def _label_filters(values: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for text in values:
        key, sep, value = text.partition("=")
        if not key:
            raise BadRequest(
                f"bad label filter {text!r}: expected key or key=value",
                [{"in": "query", "field": "label_filters", "reason": "empty key"}],
            )
        out.append((key, value if sep and value else None))
    return out


def _order_key(face: DTFace, dev: DeviceRec, field: str) -> tuple[int, Any]:
    """A sort key for ``order_by`` (missing values last)."""
    value: Any
    if field in ("name", "id"):
        value = dev.doc.id
    elif field == "type":
        value = dev.doc.type
    elif field.startswith("labels."):
        value = dev.doc.labels.get(field[7:])
    elif field.startswith("reported."):
        node: Any = face.reported.reported(dev)
        for part in field[9:].split("."):
            node = node.get(part) if isinstance(node, dict) else None
        value = node
    else:
        raise BadRequest(
            f"cannot order by {field!r}",
            [
                {
                    "in": "query",
                    "field": "order_by",
                    "reason": "use name, type, labels.<key> or reported.<type>.<field>",
                }
            ],
        )
    if value is None or isinstance(value, dict | list):
        return (1, "")
    if isinstance(value, bool | int | float):
        return (0, (0, float(value), ""))
    return (0, (1, 0.0, str(value)))


@router.get("/projects/{project}/devices")
async def list_devices(request: Request, project: str) -> Response:
    """Devices of a project (``-``: of every project the caller can read, or of ``projects``),
    filtered by ``query``, ``device_ids``, ``device_types``, ``label_filters``; ``order_by``."""
    face = get_face(request)
    who = await face.authenticate(request)
    q = Query(
        request,
        (
            "query",
            "device_ids",
            "device_types",
            "label_filters",
            "order_by",
            "organization",
            "projects",
            "page_size",
            "page_token",
        ),
    )
    reg = face.engine.registry
    if project == "-":
        wanted = {p.removeprefix("projects/") for p in q.all("projects")}
        projects = [p for p in visible_projects(who, reg) if not wanted or p.doc.id in wanted]
    else:
        projects = [face.project(who, project, Action.READ)]
    ids = set(q.all("device_ids"))
    types = set(q.all("device_types"))
    labels = _label_filters(q.all("label_filters"))
    text = (q.one("query") or "").lower()
    devices = []
    for proj in projects:
        for pk in reg.project_devices.get(proj.pk, ()):
            dev = reg.devices_by_pk.get(pk)
            if dev is None:
                continue
            d = dev.doc
            if ids and d.id not in ids:
                continue
            if types and (d.type or "") not in types:
                continue
            if labels and not any(
                k in d.labels and (v is None or d.labels[k] == v) for k, v in labels
            ):
                continue
            if (
                text
                and text not in d.id.lower()
                and not any(text in v.lower() for v in d.labels.values())
            ):
                continue
            devices.append(dev)
    order = q.one("order_by")
    if order and order.lstrip("-").startswith("reported."):
        await face.reported.load_devices(devices)
    devices.sort(key=lambda d: (d.project_pk, d.doc.id))
    if order:
        field = order.lstrip("-")
        keyed = [(_order_key(face, d, field), d) for d in devices]
        present = sorted((kv for kv in keyed if kv[0][0] == 0), key=lambda kv: kv[0][1])
        if order.startswith("-"):
            present.reverse()
        devices = [d for _, d in present] + [d for k, d in keyed if k[0] == 1]
    fingerprint = q.fingerprint()
    offset = decode_token(q, fingerprint) or 0
    if not isinstance(offset, int) or offset < 0:
        raise BadRequest("bad pageToken")
    n = page_size(q, LIST_DEFAULT, LIST_MAX)
    page = devices[offset : offset + n]
    await face.reported.load_devices(page)
    more = offset + n < len(devices)
    return json_response(
        {
            "devices": [device_json(face, d) for d in page],
            "nextPageToken": encode_token(fingerprint, offset + n) if more else "",
        }
    )


def _device_names(body: dict[str, Any], field: str = "devices") -> list[str]:
    names = body.get(field)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest(
            f"{field} must be a list of device names (projects/<p>/devices/<d>)",
            [{"field": field, "reason": "expected a list of strings"}],
        )
    return names


def _split_name(name: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "devices":
        return parts[1], parts[3]
    return None


def _labels_arg(body: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    add = body.get("addLabels", {}) or {}
    remove = body.get("removeLabels", []) or []
    if not isinstance(add, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in add.items()
    ):
        raise BadRequest("addLabels must be an object of strings", [{"field": "addLabels"}])
    if not isinstance(remove, list) or not all(isinstance(k, str) for k in remove):
        raise BadRequest("removeLabels must be a list of strings", [{"field": "removeLabels"}])
    unknown = set(body) - {"devices", "addLabels", "removeLabels"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))} in the body")
    return add, remove


@router.post("/projects/{project}/devices:batchUpdate")
async def batch_update(request: Request, project: str) -> Response:
    """Add and remove labels on several devices; each device that cannot be changed is listed in
    ``batchErrors``. Every device whose labels changed gets a ``labelsChanged`` event."""
    face, who, proj = await project_call(request, project, Action.WRITE)
    body = await json_body(request, face.engine.settings.max_body_bytes)
    names = _device_names(body)
    add, remove = _labels_arg(body)
    reg = face.engine.registry
    errors: list[dict[str, Any]] = []
    changes: list[tuple[DeviceRec, dict[str, str], dict[str, Any]]] = []
    for name in names:
        parts = _split_name(name)
        dev = reg.devices.get((proj.pk, parts[1])) if parts and parts[0] == project else None
        if dev is None:
            errors.append(
                {"device": name, "status": {"code": 404, "message": f"no device {name!r}"}}
            )
            continue
        old = dict(dev.doc.labels)
        new = {k: v for k, v in old.items() if k not in remove}
        new.update(add)
        if new == old:
            continue
        change = {
            "added": {k: v for k, v in new.items() if k not in old},
            "modified": {k: v for k, v in new.items() if k in old and old[k] != v},
            "removed": [k for k in old if k not in new],
        }
        changes.append((dev, new, change))
    if changes:
        await face.engine.metadata.update_devices(
            proj, [(dev, {"labels": new}) for dev, new, _ in changes]
        )
        now = int(time.time() * 1000)
        for dev, _, change in changes:
            await publish_rows(face, proj, dev, parse_event("labelsChanged", change, now))
    return json_response({"batchErrors": errors})


@router.post("/projects/{project}/devices:transfer")
async def transfer(request: Request, project: str) -> Response:
    """Move devices from other projects into this one (manage rights on both projects)."""
    face, who, target = await project_call(request, project, Action.MANAGE)
    body = await json_body(request, face.engine.settings.max_body_bytes)
    names = _device_names(body)
    reg = face.engine.registry
    moved: list[str] = []
    errors: list[dict[str, Any]] = []
    for name in names:
        parts = _split_name(name)
        if parts is None:
            errors.append({"device": name, "status": {"code": 400, "message": "bad device name"}})
            continue
        try:
            source = face.project(who, parts[0], Action.MANAGE)
        except Exception as exc:  # noqa: BLE001 - reported per device
            errors.append({"device": name, "status": {"code": 404, "message": str(exc)}})
            continue
        dev = reg.devices.get((source.pk, parts[1]))
        if dev is None:
            errors.append({"device": name, "status": {"code": 404, "message": "no such device"}})
            continue
        if source.pk == target.pk:
            moved.append(name)
            continue
        if (target.pk, dev.doc.id) in reg.devices:
            errors.append(
                {
                    "device": name,
                    "status": {"code": 409, "message": f"{project} has a device with this id"},
                }
            )
            continue
        await face.engine.transfer_device(dev, target)
        moved.append(device_name(project, dev.doc.id))
    return json_response({"transferredDevices": moved, "transferErrors": errors})


# -- event history ----------------------------------------------------------------------------


def event_series(face: DTFace, dev: DeviceRec, types: set[str]) -> dict[int, str]:
    """Series pk -> event type of the device's event variables (of ``types``, or all)."""
    reg = face.engine.registry
    out: dict[int, str] = {}
    for var_pk in reg.device_variables.get(dev.pk, ()):
        var = reg.variables_by_pk.get(var_pk)
        spk = reg.series.get((var_pk, var.set)) if var is not None else None
        rec = reg.series_by_pk.get(spk) if spk is not None else None
        event_type = event_type_of(reg, rec) if rec is not None else None
        if spk is not None and event_type is not None and (not types or event_type in types):
            out[spk] = event_type
    return out


def _event_types(q: Query) -> set[str]:
    types = set(q.all("event_types"))
    bad = sorted(types - set(EVENT_TYPES))
    if bad:
        raise BadRequest(
            f"unknown event type(s) {', '.join(bad)}",
            [{"in": "query", "field": "event_types", "reason": f"one of {', '.join(EVENT_TYPES)}"}],
        )
    return types


@router.get("/projects/{project}/devices/{device}/events")
async def list_events(request: Request, project: str, device: str) -> Response:
    """Stored events of a device, oldest first, between ``startTime`` (default: 24 hours ago)
    and ``endTime`` (default: now, inclusive), of ``eventTypes``."""
    face = get_face(request)
    who = await face.authenticate(request)
    q = Query(
        request,
        ("event_types", "start_time", "end_time", "page_size", "page_token"),
    )
    dev = find_device(face, who, project, device, Action.READ)
    types = _event_types(q)
    now = int(time.time() * 1000)
    start_text, end_text = q.one("start_time"), q.one("end_time")
    end = parse_ts(end_text, "endTime") if end_text else now
    start = parse_ts(start_text, "startTime") if start_text else end - 86_400_000
    fingerprint = q.fingerprint()
    key = decode_token(q, fingerprint)
    after: tuple[int, int] | None = None
    if key is not None:
        if not (
            isinstance(key, list) and len(key) == 2 and all(isinstance(k, int) for k in key)
        ) or not (-(2**62) < key[0] < 2**62 and 0 <= key[1] < 2**62):
            raise BadRequest("bad pageToken")
        after = (key[0], key[1])
    n = page_size(q, LIST_DEFAULT, LIST_MAX)
    series = event_series(face, dev, types)
    proj_id = face.engine.registry.projects_by_pk[dev.project_pk].doc.id
    events: list[bytes] = []
    more = False
    if series and start <= end:
        batch = await face.engine.history(
            HistoryQuery(
                dev.project_pk,
                series=tuple(series),
                start=start,
                end=end + 1,
                after=after,
                limit=n + 1,
            )
        )
        more = len(batch) > n
        batch = batch.head(n)
        for c, s, t, v in zip(
            batch.cursors.tolist(),
            batch.series.tolist(),
            batch.times.tolist(),
            batch.values,
            strict=True,
        ):
            obj = event_obj(proj_id, dev.doc.id, series[s], v, t, c)
            if obj is not None:
                events.append(dumps_ascii(obj))
        if more:
            after = (int(batch.times[-1]), int(batch.cursors[-1]))
    token = encode_token(fingerprint, list(after)) if more and after else ""
    body = b'{"events":[' + b",".join(events) + b'],"nextPageToken":' + orjson.dumps(token) + b"}"
    return Response(body, 200, media_type="application/json")


# -- the emulator -----------------------------------------------------------------------------


@router.post("/projects/{project}/devices")
async def create_emulated_device(request: Request, project: str) -> Response:
    """The emulator: create an emulated device (``emu`` + 20 characters) of a DT type."""
    face, who, proj = await project_call(request, project, Action.WRITE)
    body = await json_body(request, face.engine.settings.max_body_bytes)
    type_ = body.get("type")
    if type_ not in DEVICE_TYPES:
        raise BadRequest(
            f"type must be a DT device type, got {type_!r}",
            [{"field": "type", "reason": f"one of {', '.join(DEVICE_TYPES)}"}],
        )
    labels = body.get("labels") or {}
    unknown = set(body) - {"type", "labels"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))} in the body")
    device_id = "emu" + new_xid()
    try:
        item = DeviceIn(
            id=device_id,
            type=type_,
            name=labels.get("name") if isinstance(labels, dict) else None,
            labels=labels,
            metadata={"emulated": True, "productNumber": ""},
        )
    except ValidationError as exc:
        raise Invalid(
            "the device does not validate",
            [
                {"field": ".".join(map(str, e["loc"])), "reason": e["msg"]}
                for e in exc.errors()[:10]
            ],
        ) from exc
    await face.engine.metadata.create_devices(proj, [item])
    return json_response(device_json(face, face.engine.registry.devices[(proj.pk, device_id)]))


@router.delete("/projects/{project}/devices/{device}")
async def delete_emulated_device(request: Request, project: str, device: str) -> Response:
    """The emulator: delete an emulated device (real devices cannot be deleted here)."""
    face, who, proj = await project_call(request, project, Action.DELETE)
    reg = face.engine.registry
    dev = reg.devices.get((proj.pk, device))
    if dev is None or not dev.doc.metadata.get("emulated"):
        raise NotFound(f"no emulated device {device!r} in project {project!r}")
    await face.engine.metadata.delete_device(dev)
    face.reported.forget(dev.pk)
    return json_response({})


@router.post("/projects/{project}/devices/{device}:publish")
async def publish(request: Request, project: str, device: str) -> Response:
    """The emulator: publish one event ``{"<eventType>": {...}}`` from an emulated device."""
    face, who, proj = await project_call(request, project, Action.WRITE)
    dev = face.engine.registry.devices.get((proj.pk, device))
    if dev is None or not dev.doc.metadata.get("emulated"):
        raise NotFound(f"no emulated device {device!r} in project {project!r}")
    body = await json_body(request, face.engine.settings.max_body_bytes)
    if len(body) != 1:
        raise BadRequest(
            'publish exactly one event: {"<eventType>": {...}}',
            [{"reason": f"the body has {len(body)} keys"}],
        )
    ((event_type, data),) = body.items()
    await face.reported.load_devices([dev])
    previous = face.reported.latest(dev.pk).get(event_type)
    rows = parse_event(
        event_type, data, server_time(face, dev), None if previous is None else previous[0]
    )
    await publish_rows(face, proj, dev, rows)
    return json_response({})


def server_time(face: DTFace, dev: DeviceRec) -> int:
    """Now, but after every stored event time of the device, so that events published without a
    time within one millisecond are not taken for repeats of each other."""
    reg = face.engine.registry
    now = int(time.time() * 1000)
    for var_pk in reg.device_variables.get(dev.pk, ()):
        var = reg.variables_by_pk.get(var_pk)
        spk = reg.series.get((var_pk, var.set)) if var is not None else None
        if spk is not None and spk < len(reg.latest) and int(reg.latest[spk]) != _NEVER:
            now = max(now, int(reg.latest[spk]) + 1)
    return now


async def publish_rows(face: DTFace, proj: ProjectRec, dev: DeviceRec, rows: list[Row]) -> None:
    """Ingest an event's rows, creating the device's event variables it lacks first."""
    reg = face.engine.registry
    missing: dict[str, str] = {}
    for r in rows:
        if (dev.pk, r.variable) not in reg.variables:
            missing[r.variable] = r.name
    if missing:
        items = [VariableIn(id=v, name=n) for v, n in missing.items()]
        await face.engine.metadata.create_variables(proj, dev, items, if_exists="skip")
    body = orjson.dumps(
        [
            {"device": dev.doc.id, "variable": r.variable, "time": r.time, "value": r.value}
            for r in rows
        ]
    )
    await face.engine.ingest(proj, body, ndjson=False)
