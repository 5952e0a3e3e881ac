"""Service accounts, keys and the OAuth2 token endpoint of the DT face.

DT service accounts are the core's service accounts (one deployment-wide id, a home project and a
role on it from the core permission table; ``role`` is an optional extra field, default ``user``,
and the native ``PATCH /api/v1/projects/{p}/serviceaccounts/{sa}`` changes it too). A key's secret
is shown once, at creation; only its argon2 hash is stored (the server can re-derive the secret
from its token key, which is how it checks the SDK's signed token grant).

``POST /v2/oauth2/token`` implements RFC 7523's JWT-bearer grant exactly as the SDK sends it: a
form body with ``grant_type`` and ``assertion``, an HS256 JWT whose ``kid`` is the key id, ``iss``
the account's email and ``aud`` this endpoint's URL as the client knows it (a string or a list),
clock skew tolerated. A bad grant is a 400 with an OAuth-style body (``error``,
``error_description``), which the SDK reports as "Could not authenticate".
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import jwt
from fastapi import APIRouter, Request, Response

from streamgauge.auth import Action
from streamgauge.core.registry import AccountRec, ProjectRec
from streamgauge.core.services import page
from streamgauge.domain.errors import BadRequest, NotFound, StreamgaugeError
from streamgauge.domain.face_state import DTAccountSettings as AccountSettings
from streamgauge.domain.model import ROLES, Role, now_iso
from streamgauge.faces.dt.events import dumps_ascii, new_xid
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
from streamgauge.faces.http import read_body

router = APIRouter(tags=["dt: service accounts"], route_class=DTRoute)

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_TTL = 3600  # advertised; tokens are accepted 60 s longer (the SDK refreshes only after)
MAX_ASSERTION_TTL = 3600
SKEW = 300  # seconds of clock difference tolerated on iat/exp
LIST_DEFAULT = 1000


def email_of(reg_project: str, account_id: str) -> str:
    return f"{account_id}@{reg_project}.serviceaccount.streamgauge"


def _settings(face: DTFace, a: AccountRec) -> AccountSettings:
    return face.accounts.by_pk.get(a.pk) or AccountSettings(
        True, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"
    )


def account_json(face: DTFace, a: AccountRec) -> dict[str, Any]:
    reg = face.engine.registry
    home = reg.projects_by_pk[a.home_project_pk].doc.id
    s = _settings(face, a)
    return {
        "name": f"projects/{home}/serviceaccounts/{a.id}",
        "email": email_of(home, a.id),
        "displayName": a.name,
        "enableBasicAuth": s.basic_auth,
        "createTime": s.create_time,
        "updateTime": s.update_time,
        "role": a.roles.get(a.home_project_pk, "user"),
    }


def _account(face: DTFace, proj: ProjectRec, sa: str) -> AccountRec:
    return face.engine.accounts.get(proj, sa)


def _fields(body: dict[str, Any]) -> tuple[str | None, bool | None, Role | None]:
    unknown = set(body) - {"displayName", "enableBasicAuth", "role"}
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(sorted(unknown))}",
            [{"field": f, "reason": "not a service account field"} for f in sorted(unknown)],
        )
    name = body.get("displayName")
    if name is not None and (not isinstance(name, str) or len(name) > 256):
        raise BadRequest("displayName must be a string of at most 256 characters")
    basic = body.get("enableBasicAuth")
    if basic is not None and not isinstance(basic, bool):
        raise BadRequest("enableBasicAuth must be true or false")
    role = body.get("role")
    if role is not None and role not in ROLES:
        raise BadRequest(
            f"unknown role {role!r}", [{"field": "role", "reason": f"one of {', '.join(ROLES)}"}]
        )
    return name, basic, role


@router.post("/projects/{project}/serviceaccounts")
async def create_account(request: Request, project: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    name, basic, role = _fields(await json_body(request, 1 << 20))
    id_ = new_xid()
    now = now_iso()
    settings = AccountSettings(bool(basic), now, now)
    rec = await face.engine.accounts.create(
        proj,
        id=id_,
        name=name,
        role=role or "user",
        also=lambda tx, rec: face.accounts.put(tx, rec.pk, settings),
    )
    return json_response(account_json(face, rec))


@router.get("/projects/{project}/serviceaccounts")
async def list_accounts(request: Request, project: str) -> Response:
    face = get_face(request)
    who = await face.authenticate(request)
    q = Query(request, ("page_size", "page_token"))
    proj = face.project(who, project, Action.MANAGE)
    items = [(a.id, account_json(face, a)) for a in face.engine.accounts.of_project(proj)]
    return json_response(_page(q, items, "serviceAccounts"))


def _page(q: Query, items: list[tuple[str, Any]], name: str) -> dict[str, Any]:
    fingerprint = q.fingerprint()
    after = decode_token(q, fingerprint)
    if after is not None and not isinstance(after, str):
        raise BadRequest("bad pageToken")
    got = page(items, page_size(q, LIST_DEFAULT, 10_000), after=after)
    return {
        name: got.items,
        "nextPageToken": encode_token(fingerprint, got.next_key) if got.more else "",
    }


@router.get("/projects/{project}/serviceaccounts/{sa}")
async def get_account(request: Request, project: str, sa: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    return json_response(account_json(face, _account(face, proj, sa)))


@router.patch("/projects/{project}/serviceaccounts/{sa}")
async def update_account(request: Request, project: str, sa: str) -> Response:
    face = get_face(request)
    who = await face.authenticate(request)
    Query(request, ("update_mask",))
    proj = face.project(who, project, Action.MANAGE)
    a = _account(face, proj, sa)
    name, basic, role = _fields(await json_body(request, 1 << 20))
    if role is not None and role == a.roles.get(proj.pk):
        role = None  # not a change, so not asked of the role rule (the service applies it)
    old = _settings(face, a)
    settings = AccountSettings(
        old.basic_auth if basic is None else basic, old.create_time, now_iso()
    )
    await face.engine.accounts.update(
        who,
        proj,
        a,
        name=name,
        role=role,
        also=lambda tx, rec: face.accounts.put(tx, rec.pk, settings),
    )
    return json_response(account_json(face, a))


@router.delete("/projects/{project}/serviceaccounts/{sa}")
async def delete_account(request: Request, project: str, sa: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    a = _account(face, proj, sa)
    await face.engine.accounts.delete(a)
    return json_response({})


# -- keys -------------------------------------------------------------------------------------


def key_json(project: str, sa: str, key_id: str, created: str) -> dict[str, Any]:
    return {
        "name": f"projects/{project}/serviceaccounts/{sa}/keys/{key_id}",
        "id": key_id,
        "createTime": created,
    }


@router.post("/projects/{project}/serviceaccounts/{sa}/keys")
async def create_key(request: Request, project: str, sa: str) -> Response:
    """A new key and its secret (shown only now)."""
    face, who, proj = await project_call(request, project, Action.MANAGE)
    a = _account(face, proj, sa)
    key = await face.engine.accounts.create_key(a)
    return json_response(
        {"key": key_json(project, sa, key.key_id, key.created_at), "secret": key.secret}
    )


async def _keys(face: DTFace, a: AccountRec) -> list[tuple[str, str]]:
    return [(k.key_id, k.created_at) for k in await face.engine.accounts.keys(a)]


@router.get("/projects/{project}/serviceaccounts/{sa}/keys")
async def list_keys(request: Request, project: str, sa: str) -> Response:
    face = get_face(request)
    who = await face.authenticate(request)
    q = Query(request, ("page_size", "page_token"))
    proj = face.project(who, project, Action.MANAGE)
    a = _account(face, proj, sa)
    items = [(k, key_json(project, sa, k, c)) for k, c in await _keys(face, a)]
    return json_response(_page(q, items, "keys"))


@router.get("/projects/{project}/serviceaccounts/{sa}/keys/{key_id}")
async def get_key(request: Request, project: str, sa: str, key_id: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    a = _account(face, proj, sa)
    for k, c in await _keys(face, a):
        if k == key_id:
            return json_response(key_json(project, sa, k, c))
    raise NotFound(f"no key {key_id!r} on service account {sa!r}")


@router.delete("/projects/{project}/serviceaccounts/{sa}/keys/{key_id}")
async def delete_key(request: Request, project: str, sa: str, key_id: str) -> Response:
    face, who, proj = await project_call(request, project, Action.MANAGE)
    a = _account(face, proj, sa)
    await face.engine.accounts.delete_key(a, key_id)
    return json_response({})


# -- OAuth2 -----------------------------------------------------------------------------------


class GrantError(StreamgaugeError):
    status = 400
    code = "invalid_grant"

    def __init__(self, message: str, error: str = "invalid_grant") -> None:
        super().__init__(message)
        self.error = error


def _oauth_error(exc: GrantError) -> Response:
    body = {"error": exc.error, "error_description": exc.message}
    return Response(dumps_ascii(body), 400, media_type="application/json")


def token_urls(request: Request, configured: str | None) -> list[str]:
    """The URLs the assertion's ``aud`` may name: the configured public token URL, and the URL
    this request was sent to (as the client knows it, from its Host header)."""
    urls = [configured] if configured else []
    seen = str(request.url.replace(query=""))
    urls += [seen, seen.rstrip("/")]
    return list(dict.fromkeys(urls))


def exchange(face: DTFace, form: dict[str, list[str]], audiences: list[str]) -> dict[str, Any]:
    grant = form.get("grant_type", [""])[0]
    if grant != GRANT:
        raise GrantError(f"grant_type must be {GRANT}", "unsupported_grant_type")
    assertion = form.get("assertion", [""])[0]
    if not assertion:
        raise GrantError("the form has no assertion", "invalid_request")
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError as exc:
        raise GrantError(f"the assertion is not a JWT: {exc}") from exc
    kid = header.get("kid")
    if header.get("alg") != "HS256" or not isinstance(kid, str) or not kid:
        raise GrantError("the assertion must be HS256 with the key id as kid")
    engine = face.engine
    try:
        account = engine.auth.key_account(kid)
    except StreamgaugeError as exc:
        raise GrantError(f"unknown key {kid!r}") from exc
    home = engine.registry.projects_by_pk[account.home_project_pk].doc.id
    try:
        claims = jwt.decode(
            assertion,
            engine.tokens.secret_for(kid).encode(),
            algorithms=["HS256"],
            audience=audiences,
            issuer=email_of(home, account.id),
            leeway=SKEW,
            options={"require": ["iat", "exp", "aud", "iss"]},
        )
    except jwt.InvalidAudienceError as exc:
        raise GrantError(f"aud must be this token URL ({audiences[0]})") from exc
    except jwt.InvalidIssuerError as exc:
        raise GrantError(
            f"iss must be the service account email {email_of(home, account.id)}"
        ) from exc
    except jwt.InvalidTokenError as exc:
        raise GrantError(f"bad assertion: {exc}") from exc
    if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_TTL + SKEW:
        raise GrantError("exp may be at most one hour after iat")
    token, _ = engine.tokens.issue(
        account.id, ttl_seconds=TOKEN_TTL, claims={"key_id": kid}, now=int(time.time())
    )
    return {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_TTL}


@router.post("/oauth2/token")
async def oauth2_token(request: Request) -> Response:
    """RFC 7523 JWT-bearer grant: a form body with ``grant_type`` and ``assertion``."""
    face = get_face(request)
    try:
        if request.query_params:
            raise GrantError(
                "send the grant as a form body, not query parameters", "invalid_request"
            )
        raw = await read_body(request, 64 * 1024)
        try:
            form = urllib.parse.parse_qs(raw.decode("ascii"), strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise GrantError("the body must be an url-encoded form", "invalid_request") from exc
        urls = token_urls(request, face.engine.settings.dt_token_url)
        return json_response(exchange(face, form, urls))
    except GrantError as exc:
        return _oauth_error(exc)
