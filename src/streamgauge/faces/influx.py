"""The InfluxDB-compatible write face: ``POST /write`` (1.x) and ``POST /api/v2/write`` (2.x).

A body of line protocol (``core/lineproto.py``) becomes one observation per field: the device
tag (``device``, or the project's ``device_tag``) names the device, the field key the variable.
Other tags are ignored, or with the project's ``tags_as_labels`` merged into the device's
labels; with the project's ``autocreate``, devices and variables are created on first sight
(catalog units for catalog names). A body is stored whole or not at all, the devices,
variables and labels it brings included (one transaction with its points); the reply is 204
after the commit, as InfluxDB answers.

Credentials, as InfluxDB takes them: 1.x ``u``/``p`` query parameters, HTTP Basic, or
``Authorization: Token <token>``; 2.x ``Authorization: Token <token>``. A token is the admin
token or an access token; a password (``p``, Basic, or ``Token id:secret``) is a service
account key's secret with the key id as user name; a ``p`` that is a token works with any user.

Errors in InfluxDB's shapes, asserted by ``tests/faces/test_influx.py``::

    1.x  {"error": "line 2: unable to parse '...': ..."}
    2.x  {"code": "invalid", "message": "line 2: unable to parse '...': ..."}
"""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from streamgauge.auth import Action, Principal
from streamgauge.core import ingest, lineproto
from streamgauge.core.engine import Engine
from streamgauge.domain.errors import (
    BadRequest,
    Conflict,
    Invalid,
    PayloadTooLarge,
    StreamgaugeError,
    Unauthorized,
)
from streamgauge.faces.http import read_body

router = APIRouter(tags=["influxdb"])

V2_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    413: "request too large",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
}

BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/plain": {"schema": {"type": "string"}}},
        "description": "InfluxDB line protocol: `measurement,device=D1 field=1.5 TIMESTAMP`.",
    }
}


def v1_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as InfluxDB 1.x answers it."""
    return Response(
        orjson.dumps({"error": message}), status, headers=headers, media_type="application/json"
    )


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as InfluxDB 2.x answers it."""
    body = {"code": V2_CODES.get(status, "invalid"), "message": message}
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def bad_request_response(exc: BadRequest, path: str = "") -> Response:
    """A refused request before routing (the shared query-string check), in the shape of the
    API version ``path`` belongs to."""
    return (v2_error if path.startswith("/api/v2/") else v1_error)(exc.status, exc.message)


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _login(engine: Engine, request: Request, user: str | None, password: str) -> Principal:
    """A password: a token (admin or access token, whatever the user name), else the secret
    of the key whose id is the user name."""
    try:
        return engine.auth.bearer(password)
    except Unauthorized:
        if not user:
            raise
    client = request.client.host if request.client else None
    return await engine.auth.key_async(user, password, client)


async def _principal(
    engine: Engine,
    request: Request,
    authorization: str | None,
    user: str | None = None,
    password: str | None = None,
) -> Principal:
    if password is not None:
        return await _login(engine, request, user, password)
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "token":
        value = value.strip()
        key_id, sep, secret = value.partition(":")
        if sep and key_id and "." not in key_id:  # `Token id:secret` (InfluxDB 1.8's v2 API)
            return await _login(engine, request, key_id, secret)
        return engine.auth.bearer(value)
    if scheme.lower() == "basic":  # the 1.x clients send their user name and password so
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        name, sep, secret = decoded.partition(":")
        if not sep:
            raise Unauthorized("malformed Basic credentials: expected user:password")
        return await _login(engine, request, name, secret)
    if not authorization:
        raise Unauthorized("unable to parse authentication credentials")
    client = request.client.host if request.client else None
    return await engine.auth.authenticate_async(authorization, client)


async def _body(request: Request, limit: int) -> bytes:
    body = await read_body(request, limit)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: use gzip or none")
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the gzip body is corrupt: {exc}") from exc
    if len(out) > limit or inflate.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflate.eof:
        raise BadRequest("the gzip body is truncated")
    return out


async def write(
    engine: Engine, project_id: str, who: Principal, precision: str | None, body: bytes
) -> None:
    """Store the body's points in ``project_id``, all or nothing."""
    s = engine.settings
    try:
        ns = lineproto.precision_ns(precision)
    except ValueError as exc:
        raise BadRequest(str(exc), [{"in": "query", "field": "precision"}]) from exc
    project = engine.metadata.project(who, project_id, Action.WRITE)
    doc = project.doc
    try:
        points = lineproto.parse(
            body,
            precision=ns,
            device_tag=doc.device_tag,
            check_ids=doc.autocreate,
            max_errors=s.max_batch_errors,
        )
    except lineproto.LineErrors as exc:
        raise BadRequest(exc.message()) from exc
    if not points:
        return
    now_ms = int(time.time() * 1000)
    limit = now_ms + int(s.max_future_seconds * 1000)
    rows: list[ingest.Row] = []
    origin: list[tuple[lineproto.Point, str]] = []
    wanted: dict[str, tuple[set[str], dict[str, str] | None]] = {}
    late: list[lineproto.LineError] = []
    for pt in points:
        t = now_ms if pt.time_ms is None else pt.time_ms
        if t > limit:
            late.append(lineproto.LineError(pt.line, "timestamp is ahead of the server clock"))
        for key, value in pt.fields.items():
            rows.append(ingest.Row(pt.device, key, t, value))
            origin.append((pt, key))
        if doc.autocreate or doc.tags_as_labels:
            variables, labels = wanted.setdefault(pt.device, (set(), None))
            variables.update(pt.fields)
            if doc.tags_as_labels and pt.tags:
                wanted[pt.device] = (variables, {**(labels or {}), **pt.tags})
    if late:
        raise BadRequest(lineproto.LineErrors(late[: s.max_batch_errors]).message())
    writes = engine.metadata.ensure_writes(project, wanted, create=doc.autocreate)
    try:  # what autocreate and tags_as_labels write commits with the points, or nothing does
        await engine.ingest_rows(
            project, rows, metadata=None if writes is None else _unindexed(writes)
        )
    except (Invalid, Conflict) as exc:
        raise BadRequest(_lines(exc, origin)) from exc


def _unindexed(writes: Callable[[Any], None]) -> Callable[[Any], None]:
    """``writes`` whose refusals name no row index (theirs count devices, not the body's
    points, so ``_lines`` must not read them as line numbers)."""

    def run(tx: Any) -> None:
        try:
            writes(tx)
        except (Invalid, Conflict) as exc:
            raise BadRequest(f"creating the body's devices and variables: {exc.message}") from exc

    return run


def _lines(exc: StreamgaugeError, origin: list[tuple[lineproto.Point, str]]) -> str:
    """The message of a rejected batch with each bad row named by its line and field."""
    errors = []
    for d in exc.details:
        index = d.get("index")
        if not isinstance(index, int) or not 0 <= index < len(origin):
            errors.append(str(d.get("reason", exc.message)))
            continue
        pt, key = origin[index]
        reason = str(d.get("reason", exc.message))
        if isinstance(exc, Conflict):
            reason = f"field {key!r}: {reason}"
        errors.append(f"line {pt.line}: {reason}")
    return "; ".join(errors) or exc.message


async def _serve(
    request: Request,
    project_id: str | None,
    what: str,
    precision: str | None,
    authorization: str | None,
    user: str | None = None,
    password: str | None = None,
) -> None:
    engine = _engine(request)
    who = await _principal(engine, request, authorization, user, password)
    if not project_id:
        raise BadRequest(f"{what} is required", [{"in": "query", "field": what}])
    body = await _body(request, engine.settings.max_body_bytes)
    await write(engine, project_id, who, precision, body)


def _shape(exc: StreamgaugeError, v2: bool, project_id: str | None) -> Response:
    status = 400 if exc.status == 422 else exc.status
    message = exc.message
    if status == 404 and project_id:
        message = (
            f'bucket "{project_id}" not found' if v2 else f'database not found: "{project_id}"'
        )
    headers = dict(exc.headers)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="streamgauge", Token'
    return (v2_error if v2 else v1_error)(status, message, headers)


@router.post("/write", status_code=204, response_class=Response, openapi_extra=BODY)
async def write_v1(
    request: Request,
    db: Annotated[str | None, Query(description="The project (InfluxDB database).")] = None,
    precision: Annotated[
        str | None, Query(description="Timestamp unit: ns (default), u, ms, s, m, h.")
    ] = None,
    u: Annotated[str | None, Query(description="User name: a key id.")] = None,
    p: Annotated[str | None, Query(description="Password: the key's secret, or a token.")] = None,
    rp: Annotated[str | None, Query(description="Retention policy (ignored).")] = None,
    consistency: Annotated[str | None, Query(description="Ignored.")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """InfluxDB 1.x write: line protocol into project `db`; 204 once stored."""
    try:
        await _serve(request, db, "database", precision, authorization, u, p)
    except StreamgaugeError as exc:
        return _shape(exc, False, db)
    return Response(status_code=204)


@router.post("/api/v2/write", status_code=204, response_class=Response, openapi_extra=BODY)
async def write_v2(
    request: Request,
    bucket: Annotated[str | None, Query(description="The project (InfluxDB bucket).")] = None,
    org: Annotated[str | None, Query(description="Organization (ignored).")] = None,
    orgID: Annotated[str | None, Query(description="Organization id (ignored).")] = None,  # noqa: N803
    precision: Annotated[
        str | None, Query(description="Timestamp unit: ns (default), us, ms, s.")
    ] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """InfluxDB 2.x write: line protocol into project `bucket`; 204 once stored."""
    try:
        await _serve(request, bucket, "bucket", precision, authorization)
    except StreamgaugeError as exc:
        return _shape(exc, True, bucket)
    return Response(status_code=204)
