"""The data-connector endpoints of the DT face (see :mod:`streamgauge.faces.dt.connectors`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from streamgauge.auth import Action
from streamgauge.core.deliveries import Item
from streamgauge.core.registry import ProjectRec
from streamgauge.domain.errors import BadRequest, NotFound
from streamgauge.faces.dt.connectors import (
    Connector,
    Connectors,
    LogSource,
    connector_json,
    push_once,
    validate,
)
from streamgauge.faces.dt.devices import event_series
from streamgauge.faces.dt.events import EVENT_TYPES, new_xid
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

router = APIRouter(tags=["dt: data connectors"], route_class=DTRoute)


def _connectors(face: DTFace) -> Connectors:
    conns: Connectors = face.connectors
    return conns


def _connector(face: DTFace, proj: ProjectRec, id_: str) -> Connector:
    c = _connectors(face).by_id.get(id_)
    if c is None or c.project_pk != proj.pk:
        raise NotFound(f"no data connector {id_!r} in project {proj.doc.id!r}")
    return c


@router.post("/projects/{project}/dataconnectors")
async def create_connector(request: Request, project: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    body = await json_body(request, 1 << 20)
    doc = validate(body, {}, face.engine.settings.allow_private_targets)
    c = Connector(0, proj.pk, new_xid(), doc)
    await _connectors(face).create(c)
    return json_response(connector_json(face.engine.registry, c))


@router.get("/projects/{project}/dataconnectors")
async def list_connectors(request: Request, project: str) -> Response:
    face = get_face(request)
    who = await face.authenticate(request)
    q = Query(request, ("page_size", "page_token"))
    proj = face.project(who, project, Action.MANAGE)
    items = _connectors(face).of_project(proj.pk)
    fingerprint = q.fingerprint()
    after = decode_token(q, fingerprint)
    if after is not None and not isinstance(after, str):
        raise BadRequest("bad pageToken")
    rest = [c for c in items if after is None or c.id > after]
    n = page_size(q, 1000, 10_000)
    page = rest[:n]
    reg = face.engine.registry
    return json_response(
        {
            "dataConnectors": [connector_json(reg, c) for c in page],
            "nextPageToken": encode_token(fingerprint, page[-1].id) if len(rest) > n else "",
        }
    )


@router.get("/projects/{project}/dataconnectors/{connector}:metrics")
async def connector_metrics(request: Request, project: str, connector: str) -> Response:
    """Pushes over the recent window (3 hours): successes, failed attempts, p99 latency."""
    face, who, proj = await project_call(request, project, Action.MANAGE)
    c = _connector(face, proj, connector)
    success = errors = 0
    p99 = 0.0
    if c.key in face.engine.deliveries:
        st = face.engine.deliveries.stats(c.key)
        success, errors = st.recent_delivered, st.recent_failed
        p99 = (st.latency_ms_p99 or 0.0) / 1000
    return json_response(
        {"metrics": {"successCount": success, "errorCount": errors, "latency99p": f"{p99:.3f}s"}}
    )


@router.post("/projects/{project}/dataconnectors/{connector}:sync")
async def sync_connector(request: Request, project: str, connector: str) -> Response:
    """Push the latest event of each type of every device of the project once more (best
    effort, in the background; not part of the connector's at-least-once queue)."""
    face, who, proj = await project_call(request, project, Action.MANAGE)
    c = _connector(face, proj, connector)
    if c.doc["status"] != "ACTIVE":
        raise BadRequest(f"data connector {c.id!r} is not ACTIVE")
    reg = face.engine.registry
    devices = [reg.devices_by_pk[pk] for pk in sorted(reg.project_devices.get(proj.pk, ()))]
    await face.reported.load_devices(devices)
    wanted = set(c.doc["events"] or EVENT_TYPES)
    source = LogSource(face.engine, c)
    items: list[Item] = []
    for dev in devices:
        series_of = {t: spk for spk, t in event_series(face, dev, set()).items()}
        for event_type, (t, cursor, v) in sorted(face.reported.latest(dev.pk).items()):
            series = series_of.get(event_type)
            if event_type in wanted and series is not None:
                item = source.item(cursor, series, t, v)
                if item is not None:
                    items.append(item)
    secret = c.doc["httpConfig"]["signatureSecret"]
    allow = face.engine.settings.allow_private_targets
    face.spawn(push_once(items, secret, allow_private=allow))
    return json_response({})


@router.get("/projects/{project}/dataconnectors/{connector}")
async def get_connector(request: Request, project: str, connector: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    return json_response(connector_json(face.engine.registry, _connector(face, proj, connector)))


@router.patch("/projects/{project}/dataconnectors/{connector}")
async def update_connector(request: Request, project: str, connector: str) -> Response:
    face = get_face(request)
    who = await face.authenticate(request)
    Query(request, ("update_mask",))
    proj = face.project(who, project, Action.MANAGE)
    c = _connector(face, proj, connector)
    body = await json_body(request, 1 << 20)
    doc = validate(body, c.doc, face.engine.settings.allow_private_targets)
    await _connectors(face).update(c, doc)
    return json_response(connector_json(face.engine.registry, c))


@router.delete("/projects/{project}/dataconnectors/{connector}")
async def delete_connector(request: Request, project: str, connector: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    await _connectors(face).delete(_connector(face, proj, connector))
    return json_response({})
