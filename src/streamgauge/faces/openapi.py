"""The error responses of the OpenAPI document, declared centrally for every operation.

FastAPI declares a 2xx and its own 422 shape; our faces answer other statuses in their own
shapes. ``declare_errors`` walks the generated document and gives each operation the 4xx it can
answer, each referring to its face's error schema (``NativeError``, ``DTError``,
``DTStreamError``, ``TapisError``, ``InfluxV1Error``, ``InfluxV2Error``), by rules on the
method, the path and the face, so a route
added later is covered without a word in its decorator:

* 400 everywhere: every route refuses an undeclared query parameter and a query string that is
  not UTF-8; the DT and Tapis faces also answer invalid bodies and parameters 400.
* 401, 403 and 429 on every operation that authenticates (all but ``PUBLIC``); token
  endpoints answer 401 and 429 but never 403.
* 404 where something is looked up: a path parameter, a body, or a required query parameter
  (the project, instrument or account it names may not exist).
* 409 (a conflict with what is stored) and 413 (the body limit, ``faces/limits.py``) on POST,
  PUT and PATCH.
* 422 on native operations with parameters or a body (the native face's validation status; the
  other faces answer 400).
* 431 (request head too large) and 503 (shutting down, storage unavailable) everywhere.

An operation may add its own with ``responses=`` in its decorator; those are kept.
"""

from __future__ import annotations

import re
from typing import Any

from streamgauge.faces.limits import face_of

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "NativeError": {
        "title": "NativeError",
        "description": "Every error of the native face (/api/v1) and the operations endpoints.",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message", "details"],
                "properties": {
                    "status": {"type": "integer", "description": "The HTTP status."},
                    "code": {"type": "string", "description": "e.g. bad_request, not_found."},
                    "message": {"type": "string", "description": "What was wrong."},
                    "details": {
                        "type": "array",
                        "description": "Where: one entry per problem.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "in": {
                                    "type": "string",
                                    "enum": ["query", "path", "header", "body"],
                                },
                                "index": {"type": "integer", "description": "Row index."},
                                "field": {"type": "string"},
                                "reason": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    },
    "DTError": {
        "title": "DTError",
        "description": "Every non-stream error of the DT face (/v2), as DT's API answers.",
        "type": "object",
        "required": ["error", "code", "help"],
        "properties": {
            "error": {"type": "string", "description": "A summary of what was wrong."},
            "code": {"type": "integer", "description": "The HTTP status."},
            "help": {"type": "string", "description": "DT's error-code documentation."},
        },
    },
    "DTStreamError": {
        "title": "DTStreamError",
        "description": "The one line a DT stream sends when it cannot start (with its status).",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "integer"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"help": {"type": "string"}}},
                    },
                },
            }
        },
    },
    "TapisError": {
        "title": "TapisError",
        "description": "Every error of the Tapis face (/v3): the Tapis envelope.",
        "type": "object",
        "required": ["result", "status", "message", "version", "metadata"],
        "properties": {
            "result": {"type": "null"},
            "status": {"type": "string", "enum": ["error"]},
            "message": {"type": "string", "description": "What was wrong."},
            "version": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {"details": {"type": "array", "items": {"type": "object"}}},
            },
        },
    },
    "InfluxV1Error": {
        "title": "InfluxV1Error",
        "description": "Every error of the InfluxDB 1.x write route (/write), as InfluxDB answers.",
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What was wrong, and where."}},
    },
    "InfluxV2Error": {
        "title": "InfluxV2Error",
        "description": "Every error of the InfluxDB 2.x write route (/api/v2/write).",
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "e.g. invalid, unauthorized, not found."},
            "message": {"type": "string", "description": "What was wrong, and where."},
        },
    },
}

DESCRIPTIONS = {
    400: "Bad request: an invalid parameter, body or page token, or an unknown query parameter",
    401: "Unauthenticated: missing or invalid credentials",
    403: "Forbidden: the caller's role does not allow this",
    404: "Not found: the project or another resource named does not exist (or is not visible)",
    409: "Conflict with what is stored (an id in use, a different value at the same time)",
    413: "The request body is larger than the route's limit",
    422: "The request does not validate (what and where in `details`)",
    429: "Too many failed authentications: retry later",
    431: "The request line and headers are larger than the limit",
    503: "Unavailable: the server is shutting down or storage is closed",
}

# Operations that never authenticate (method, path regex).
PUBLIC = [
    re.compile(p)
    for p in (
        r"^/healthz$",
        r"^/metrics$",
        r"^/v3/streams/(hello|ready|healthcheck)$",
        r"^/v3/(tenants|sites)(/.*)?$",
    )
]
# Operations that take credentials to exchange (401 and 429, never 403).
TOKEN = [re.compile(p) for p in (r"^/v3/oauth2/tokens$", r"^/v2/oauth2/token$")]
WRITES = {"post", "put", "patch"}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
STREAMS = {("get", "/v2/projects/{project}/devices:stream")}


def _schema_for(method: str, path: str) -> str:
    face = face_of(path)
    if face == "dt":
        return "DTStreamError" if (method, path) in STREAMS else "DTError"
    if face in ("influx1", "influx2"):
        return "InfluxV1Error" if face == "influx1" else "InfluxV2Error"
    return "TapisError" if face == "tapis" else "NativeError"


def statuses_for(method: str, path: str, op: dict[str, Any]) -> set[int]:
    """The error statuses operation ``op`` (``method`` on ``path``) can answer."""
    params = op.get("parameters") or []
    has_body = "requestBody" in op
    out = {400, 431, 503}
    public = any(p.match(path) for p in PUBLIC)
    token = any(p.match(path) for p in TOKEN)
    if not public:
        out |= {401, 429}
        if not token:
            out.add(403)
    looks_up = (
        "{" in path or has_body or any(p.get("in") == "query" and p.get("required") for p in params)
    )
    if looks_up and not token:  # public lookups too: GET /v3/tenants/{tenant_id}
        out.add(404)
    if method in WRITES:
        out |= {409, 413}
    if face_of(path) == "native" and (params or has_body):
        out.add(422)
    return out


def declare_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the face error schemas and every operation's error responses to ``doc`` (in place,
    idempotent); FastAPI's own 422 shape is replaced, and dropped where a face answers 400."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(ERROR_SCHEMAS)
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            responses = op.setdefault("responses", {})
            default_422 = responses.get("422", {})
            if "HTTPValidationError" in str(default_422):
                del responses["422"]
            name = _schema_for(method, path)
            for status in sorted(statuses_for(method, path, op)):
                if str(status) in responses:
                    continue
                responses[str(status)] = {
                    "description": DESCRIPTIONS[status],
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                    },
                }
    if "HTTPValidationError" not in str(doc.get("paths")):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return doc
