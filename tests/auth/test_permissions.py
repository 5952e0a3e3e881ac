"""Service accounts, keys, roles and the permission table, through the native API."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Server, make_station, rows
from tests.conftest import expect_error as _err

API = "/api/v1/projects"


def basic(key_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def sa_client(server: Server, key: dict[str, str]) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers=basic(key["key_id"], key["secret"]), timeout=10
    )


def new_account(client: httpx.Client, project: str, sa: str, role: str = "user") -> dict[str, str]:
    r = client.post(f"{API}/{project}/serviceaccounts", json={"id": sa, "role": role})
    assert r.status_code == 201, r.text
    r = client.post(f"{API}/{project}/serviceaccounts/{sa}/keys")
    assert r.status_code == 201, r.text
    key: dict[str, str] = r.json()
    return key


# -- accounts and keys ----------------------------------------------------------------------------


def test_account_create_get_patch_list(client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    r = client.post(f"{API}/p1/serviceaccounts", json={"id": "ci", "name": "CI", "role": "user"})
    assert r.status_code == 201, r.text
    assert r.json() == {"id": "ci", "name": "CI", "project": "p1", "roles": {"p1": "user"}}
    assert client.get(f"{API}/p1/serviceaccounts/ci").json() == r.json()

    r = client.patch(f"{API}/p1/serviceaccounts/ci", json={"role": "manager"})
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == {"p1": "manager"} and r.json()["name"] == "CI"
    r = client.patch(f"{API}/p1/serviceaccounts/ci", json={"name": "Build bot"})
    assert r.json()["name"] == "Build bot" and r.json()["roles"] == {"p1": "manager"}

    err = _err(client.patch(f"{API}/p1/serviceaccounts/ci", json={"id": "renamed"}), 422)
    assert any(d.get("field") == "id" for d in err["details"]), err
    assert client.get(f"{API}/p1/serviceaccounts/ci").status_code == 200

    r = client.post(f"{API}/p1/serviceaccounts", json={})
    assert r.status_code == 201
    gen = r.json()["id"]
    assert gen and r.json()["roles"] == {"p1": "user"}

    listed = client.get(f"{API}/p1/serviceaccounts").json()
    assert {a["id"] for a in listed["serviceaccounts"]} == {"ci", gen}

    err = _err(client.post(f"{API}/p1/serviceaccounts", json={"id": "x", "role": "god"}), 422)
    assert any(d.get("field") == "role" for d in err["details"]), err
    err = _err(client.post(f"{API}/p1/serviceaccounts", json={"id": "bad id"}), 422)
    assert any(d.get("field") == "id" for d in err["details"]), err


def test_account_ids_unique_across_projects(client: httpx.Client) -> None:
    for p in ("p1", "p2"):
        assert client.post(API, json={"id": p}).status_code == 201
    assert client.post(f"{API}/p1/serviceaccounts", json={"id": "bot"}).status_code == 201
    _err(client.post(f"{API}/p2/serviceaccounts", json={"id": "bot"}), 409)
    _err(client.post(f"{API}/p1/serviceaccounts", json={"id": "bot"}), 409)
    assert client.get(f"{API}/p2/serviceaccounts").json()["serviceaccounts"] == []
    _err(client.get(f"{API}/p2/serviceaccounts/bot"), 404)  # lives in p1


def test_keys_authenticate_list_without_secret_and_revoke(
    server: Server, client: httpx.Client
) -> None:
    make_station(client, "p1", devices=1)
    key = new_account(client, "p1", "reader", "user")
    assert set(key) >= {"key_id", "secret"} and key["secret"]
    key2 = client.post(f"{API}/p1/serviceaccounts/reader/keys").json()
    assert key2["key_id"] != key["key_id"]

    r = client.get(f"{API}/p1/serviceaccounts/reader/keys")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert {k["key_id"] for k in keys} == {key["key_id"], key2["key_id"]}
    assert all("secret" not in k for k in keys)
    assert key["secret"] not in r.text

    with sa_client(server, key) as c:
        assert c.get(f"{API}/p1").status_code == 200
        assert c.get(f"{API}/p1").status_code == 200  # cached verification path
    bad = {"key_id": key["key_id"], "secret": key["secret"] + "x"}
    with sa_client(server, bad) as c:
        _err(c.get(f"{API}/p1"), 401)

    r = client.delete(f"{API}/p1/serviceaccounts/reader/keys/{key['key_id']}")
    assert r.status_code == 204
    with sa_client(server, key) as c:
        _err(c.get(f"{API}/p1"), 401)
    with sa_client(server, key2) as c:
        assert c.get(f"{API}/p1").status_code == 200
    _err(client.delete(f"{API}/p1/serviceaccounts/reader/keys/{key['key_id']}"), 404)

    # deleting the account kills its remaining keys
    assert client.delete(f"{API}/p1/serviceaccounts/reader").status_code == 204
    with sa_client(server, key2) as c:
        _err(c.get(f"{API}/p1"), 401)


BAD_AUTH = [
    None,
    "Bearer wrong-token",
    "Bearer",
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(b"no-colon-here").decode(),
    "Basic " + base64.b64encode(b"kdeadbeef:secret").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    "Basic",
    "Digest abc",
    "garbage",
]


def test_missing_or_bad_credentials_are_401(server: Server) -> None:
    for auth in BAD_AUTH:
        headers = {"Authorization": auth} if auth is not None else {}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as c:
            for r in (c.get(API), c.get(f"{API}/p1"), c.post(API, json={"id": "z"})):
                err = _err(r, 401)
                assert err["code"] == "unauthorized", auth
                assert "www-authenticate" in r.headers
    with server.client() as admin:
        assert admin.get(f"{API}/z").status_code == 404


# -- visibility, project creation, cross-project roles --------------------------------------------


def test_account_creates_project_becomes_admin_and_sees_only_its_own(
    server: Server, client: httpx.Client
) -> None:
    make_station(client, "base", devices=1)
    make_station(client, "secret", devices=1)
    key = new_account(client, "base", "maker", "user")
    with sa_client(server, key) as c:
        listed = {p["id"] for p in c.get(API).json()["projects"]}
        assert listed == {"base"}
        _err(c.get(f"{API}/secret"), 404)
        _err(c.get(f"{API}/secret/devices"), 404)
        _err(c.get(f"{API}/secret/observations"), 404)
        _err(c.post(f"{API}/secret/observations", json=rows(1)), 404)
        _err(c.delete(f"{API}/secret"), 404)
        _err(c.get(f"{API}/nonexistent"), 404)

        r = c.post(API, json={"id": "mine"})
        assert r.status_code == 201, r.text
        assert {p["id"] for p in c.get(API).json()["projects"]} == {"base", "mine"}
        # admin there: may manage it
        r = c.post(f"{API}/mine/serviceaccounts", json={"id": "helper", "role": "user"})
        assert r.status_code == 201, r.text
        # an existing id it cannot see: skip must not leak or skip over it
        r = c.post(API, params={"if_exists": "skip"}, json={"id": "secret"})
        assert r.status_code == 404, r.text
        assert {p["id"] for p in c.get(API).json()["projects"]} == {"base", "mine"}
        assert c.delete(f"{API}/mine").status_code == 204
    roles = client.get(f"{API}/base/serviceaccounts/maker").json()["roles"]
    assert roles == {"base": "user"}


def test_grant_and_revoke_role_on_other_project_effective_at_once(
    server: Server, client: httpx.Client
) -> None:
    make_station(client, "p1", devices=1)
    make_station(client, "p2", devices=1)
    key = new_account(client, "p1", "roamer", "user")
    with sa_client(server, key) as c:
        _err(c.get(f"{API}/p2/devices"), 404)

        r = client.put(f"{API}/p2/roles/roamer", json={"role": "user"})
        assert r.status_code == 200, r.text
        assert r.json() == {"account": "roamer", "project": "p2", "role": "user"}
        assert c.get(f"{API}/p2/devices").status_code == 200
        _err(c.post(f"{API}/p2/observations", json=rows(1)), 403)
        assert {p["id"] for p in c.get(API).json()["projects"]} == {"p1", "p2"}

        assert client.put(f"{API}/p2/roles/roamer", json={"role": "manager"}).status_code == 200
        assert c.post(f"{API}/p2/observations", json=rows(1)).status_code == 200
        _err(c.delete(f"{API}/p2/devices/d0"), 403)

        roles = client.get(f"{API}/p2/roles").json()["roles"]
        assert {"account": "roamer", "role": "manager"} in roles
        acct = client.get(f"{API}/p1/serviceaccounts/roamer").json()
        assert acct["roles"] == {"p1": "user", "p2": "manager"}

        assert client.delete(f"{API}/p2/roles/roamer").status_code == 204
        _err(c.get(f"{API}/p2/devices"), 404)
        assert {p["id"] for p in c.get(API).json()["projects"]} == {"p1"}
        _err(client.delete(f"{API}/p2/roles/roamer"), 404)

    _err(client.put(f"{API}/p2/roles/nobody", json={"role": "user"}), 404)
    err = _err(client.put(f"{API}/p2/roles/roamer", json={"role": "owner"}), 422)
    assert any(d.get("field") == "role" for d in err["details"]), err
    _err(client.put(f"{API}/p2/roles/roamer", json={"role": "user", "x": 1}), 422)


def test_patch_role_change_is_effective_at_once(server: Server, client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    key = new_account(client, "p1", "bot", "user")
    with sa_client(server, key) as c:
        _err(c.post(f"{API}/p1/observations", json=rows(1)), 403)
        assert client.patch(f"{API}/p1/serviceaccounts/bot", json={"role": "manager"}).json()[
            "roles"
        ] == {"p1": "manager"}
        assert c.post(f"{API}/p1/observations", json=rows(1)).status_code == 200
        client.patch(f"{API}/p1/serviceaccounts/bot", json={"role": "admin"})
        assert c.get(f"{API}/p1/serviceaccounts").status_code == 200


def test_manager_cannot_escalate_via_accounts(server: Server, client: httpx.Client) -> None:
    make_station(client, "p1", devices=1)
    key = new_account(client, "p1", "mgr", "manager")
    with sa_client(server, key) as c:
        _err(c.patch(f"{API}/p1/serviceaccounts/mgr", json={"role": "admin"}), 403)
        _err(c.put(f"{API}/p1/roles/mgr", json={"role": "admin"}), 403)
        _err(c.post(f"{API}/p1/serviceaccounts/mgr/keys"), 403)
        _err(c.delete(f"{API}/p1"), 403)
    assert client.get(f"{API}/p1/serviceaccounts/mgr").json()["roles"] == {"p1": "manager"}


# -- the matrix -----------------------------------------------------------------------------------

Action = Callable[[httpx.Client, str], httpx.Response]


def _stream_status(c: httpx.Client, p: str) -> httpx.Response:
    with c.stream("GET", f"{API}/{p}/stream") as r:
        return r  # status only; closing at once


_n = iter(range(1_000_000))

ACTIONS: dict[str, Action] = {
    "read metadata": lambda c, p: c.get(f"{API}/{p}/devices"),
    "read project": lambda c, p: c.get(f"{API}/{p}"),
    "read observations": lambda c, p: c.get(f"{API}/{p}/observations"),
    "stream": _stream_status,
    "create device": lambda c, p: c.post(f"{API}/{p}/devices", json={"id": f"new{next(_n)}"}),
    "update device": lambda c, p: c.patch(f"{API}/{p}/devices/d0", json={"name": "n"}),
    "ingest": lambda c, p: c.post(
        f"{API}/{p}/observations", json=rows(1, start_ms=1_600_000_000_000 + next(_n))
    ),
    "delete device": lambda c, p: c.delete(f"{API}/{p}/devices/d1"),
    "manage accounts": lambda c, p: c.post(
        f"{API}/{p}/serviceaccounts", json={"id": f"sub{next(_n)}"}
    ),
    "list accounts": lambda c, p: c.get(f"{API}/{p}/serviceaccounts"),
}

OK = {
    "read metadata": 200,
    "read project": 200,
    "read observations": 200,
    "stream": 200,
    "create device": 201,
    "update device": 200,
    "ingest": 200,
    "delete device": 204,
    "manage accounts": 201,
    "list accounts": 200,
}

ALLOWED = {
    "admin": set(ACTIONS),
    "manager": {
        "read metadata",
        "read project",
        "read observations",
        "stream",
        "create device",
        "update device",
        "ingest",
    },
    "user": {"read metadata", "read project", "read observations", "stream"},
    None: set(),  # no role on the project
}


def test_role_action_matrix(server: Server, client: httpx.Client) -> None:
    make_station(client, "base", devices=1)
    keys: dict[str | None, dict[str, str]] = {}
    for role in ("admin", "manager", "user"):
        keys[role] = new_account(client, "base", f"acct-{role}", "user")
    keys[None] = new_account(client, "base", "acct-none", "user")

    failures = []
    for role, key in keys.items():
        project = f"target-{role or 'none'}"
        make_station(client, project, devices=2)  # d1 is there for the delete
        if role is not None:
            r = client.put(f"{API}/{project}/roles/acct-{role}", json={"role": role})
            assert r.status_code == 200, r.text
        with sa_client(server, key) as c:
            for name, act in ACTIONS.items():
                if role is None:
                    want = 404
                else:
                    want = OK[name] if name in ALLOWED[role] else 403
                r = act(c, project)
                if r.status_code != want:
                    failures.append((role, name, r.status_code, want))
                elif want >= 400 and name != "stream":
                    assert r.json()["error"]["status"] == want
    assert not failures, failures
    # the forbidden writes changed nothing
    for project in ("target-user", "target-none"):
        assert client.get(f"{API}/{project}/devices/d1").status_code == 200
        assert client.get(f"{API}/{project}/observations").json()["observations"] == []


def test_admin_token_can_do_everything(client: httpx.Client) -> None:
    make_station(client, "p1", devices=2)
    for name, act in ACTIONS.items():
        r = act(client, "p1")
        assert r.status_code == OK[name], (name, r.text)


# -- one rule for role changes, on every face -----------------------------------------------------


def _token(server: Server, key: dict[str, str]) -> str:
    r = httpx.post(
        f"{server.url}/v3/oauth2/tokens",
        json={"username": key["key_id"], "password": key["secret"], "grant_type": "password"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["result"]["access_token"]["access_token"]
    return token


def _change(
    server: Server, face: str, key: dict[str, str], target: str, role: str | None, now: str | None
) -> int:
    """Set ``target``'s role on ``shared`` to ``role`` (None: revoke ``now``) through ``face``,
    as the account of ``key``; the HTTP status."""
    if face == "native":
        with sa_client(server, key) as c:
            if role is None:
                return c.delete(f"{API}/shared/roles/{target}").status_code
            return c.put(f"{API}/shared/roles/{target}", json={"role": role}).status_code
    body = {"user": target, "resource_type": "project", "resource_id": "shared"}
    headers = {"X-Tapis-Token": _token(server, key)}
    if role is None:
        url, body = f"{server.url}/v3/streams/roles/revokeRole", {**body, "role_name": now}
    else:
        url, body = f"{server.url}/v3/streams/roles", {**body, "role_name": role}
    return httpx.post(url, json=body, headers=headers, timeout=10).status_code


# (caller, target, new role or None to revoke, allowed?)
ROLE_CHANGES = [
    ("mgr", "tgt", "user", True),
    ("mgr", "tgt", "manager", True),
    ("mgr", "tgt", "admin", False),
    ("mgr", "mgr", "user", False),  # own role
    ("mgr", "mgr", "manager", False),
    ("mgr", "tgt", None, False),  # revokes are for admins
    ("mgr", "adm2", "user", False),  # an admin's role is an admin's to change
    ("usr", "tgt", "user", False),
    ("usr", "usr", "manager", False),
    ("usr", "tgt", None, False),
    ("adm", "tgt", "admin", True),
    ("adm", "tgt", None, True),
    ("adm", "adm", "user", False),  # own role, even an admin
    ("adm", "adm", None, False),
    ("adm", "adm2", "manager", True),
]


@pytest.mark.parametrize("face", ["native", "tapis"])
def test_role_changes_follow_one_rule_on_every_face(
    server: Server, client: httpx.Client, face: str
) -> None:
    """issue 11 item 14: one permission table governs every face. A manager granting user or
    manager is allowed, granting admin refused, changing its own role refused, a user granting
    refused, revoking is for admins: the same operation gets the same answer through
    ``PUT/DELETE /api/v1/projects/{p}/roles/{account}`` and through ``/v3/streams/roles``."""
    make_station(client, "home", devices=1)
    assert client.post(API, json={"id": "shared"}).status_code == 201
    start = {"adm": "admin", "adm2": "admin", "mgr": "manager", "usr": "user", "tgt": "user"}
    keys = {name: new_account(client, "home", name) for name in start}
    answers = []
    for caller, target, role, allowed in ROLE_CHANGES:
        for name, r in start.items():  # the same starting point for every change
            assert client.put(f"{API}/shared/roles/{name}", json={"role": r}).status_code == 200
        status = _change(server, face, keys[caller], target, role, start[target])
        want = (200 if face == "native" else 201) if allowed else 403
        if role is None and allowed:
            want = 204 if face == "native" else 200
        answers.append((caller, target, role, status, want))
        roles = {x["account"]: x["role"] for x in client.get(f"{API}/shared/roles").json()["roles"]}
        if allowed:
            assert roles.get(target) == role, (caller, target, role, roles)
        else:
            assert roles.get(target) == start[target], (caller, target, role, roles)
    assert [a for a in answers if a[3] != a[4]] == []


def test_role_change_table_is_the_documented_one() -> None:
    """issue 11 item 14: the grant table written once in ``auth.permissions`` (its docstring
    shows it) is Tapis' rule."""
    from streamgauge.auth import permissions

    assert permissions.GRANTS == {
        "admin": {"admin", "manager", "user"},
        "manager": {"manager", "user"},
        "user": set(),
    }
    assert permissions.REVOKERS == {"admin"}
    rows = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in (permissions.__doc__ or "").splitlines()
        if line.strip().split(" ")[0] in permissions.GRANTS and "  " in line.strip()
    }
    assert rows == {
        "admin": "admin, manager, user any role",
        "manager": "manager, user nothing",
        "user": "nothing nothing",
    }


def test_dt_face_role_change_follows_the_same_rule(server: Server, client: httpx.Client) -> None:
    """issue 11 item 14: the DT face's ``PATCH .../serviceaccounts/{sa}`` with a ``role`` goes
    through the same rule: a project admin may not change its own role there either, and may
    change another account's."""
    make_station(client, "lab", devices=1)
    admin_key = new_account(client, "lab", "boss", role="admin")
    new_account(client, "lab", "other")
    with sa_client(server, admin_key) as c:
        own = c.patch(f"{server.url}/v2/projects/lab/serviceaccounts/boss", json={"role": "user"})
        assert own.status_code == 403, own.text
        assert "own role" in own.text
        other = c.patch(
            f"{server.url}/v2/projects/lab/serviceaccounts/other", json={"role": "manager"}
        )
        assert other.status_code == 200, other.text
    roles = {x["account"]: x["role"] for x in client.get(f"{API}/lab/roles").json()["roles"]}
    assert roles["boss"] == "admin" and roles["other"] == "manager"
