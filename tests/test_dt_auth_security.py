"""Account settings on every face, argon2 off the event loop, the failed-login limit, and what
the DT face no longer discloses (connector secrets, tokens in URLs, file modes)."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import disruptive as dt
import httpx
import pytest

from streamgauge.auth.principals import FailureLimiter
from streamgauge.config import Settings
from streamgauge.core.engine import load_admin_token
from tests.conftest import Server, start_server
from tests.tapis_helpers import Receiver


def basic(key_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{key_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def dt_account(c: httpx.Client, basic_auth: bool) -> tuple[str, str, str]:
    """A DT service account of p1 (role admin) and a key: (account id, key id, secret)."""
    r = c.post(
        "/v2/projects/p1/serviceaccounts",
        json={"displayName": "robot", "enableBasicAuth": basic_auth, "role": "admin"},
    )
    assert r.status_code == 200, r.text
    sa = r.json()["name"].split("/")[-1]
    r = c.post(f"/v2/projects/p1/serviceaccounts/{sa}/keys")
    assert r.status_code == 200, r.text
    return sa, r.json()["key"]["id"], r.json()["secret"]


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Server]:
    srv = start_server(tmp_path / "data", auth_failure_limit=3, auth_failure_window_seconds=600)
    try:
        yield srv
    finally:
        srv.stop()


# -- item 15: enableBasicAuth on every face ----------------------------------------------------


def test_basic_auth_disabled_on_the_dt_face_holds_on_every_face(server: Server) -> None:
    """issue 11 item 15: ``enableBasicAuth: false`` set through the DT face refuses Basic auth
    with that account's key on the native face, the Tapis face and the Tapis token endpoint
    too, while the DT token grant (not Basic auth) still works; turning it back on opens them
    all."""
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        sa, key_id, secret = dt_account(c, basic_auth=False)
    creds = basic(key_id, secret)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        native = c.get("/api/v1/projects", headers=creds)
        assert native.status_code == 401
        assert "enableBasicAuth" in native.json()["error"]["message"]
        tapis = c.get("/v3/streams/projects", headers=creds)
        assert tapis.status_code == 401 and tapis.json()["status"] == "error"
        assert "enableBasicAuth" in tapis.json()["message"]
        token = c.post(
            "/v3/oauth2/tokens",
            json={"username": key_id, "password": secret, "grant_type": "password"},
        )
        assert token.status_code == 401 and "enableBasicAuth" in token.json()["message"]
        dt_face = c.get("/v2/projects/p1/devices", headers=creds)
        assert dt_face.status_code == 401 and "enableBasicAuth" in dt_face.json()["error"]
        # The key's secret is right: a wrong one is the usual "invalid" (no hint either way).
        wrong = c.get("/api/v1/projects", headers=basic(key_id, "nope"))
        assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]["message"]

    saved = dt.base_url
    dt.base_url = server.url + "/v2"
    try:
        email = f"{sa}@p1.serviceaccount.streamgauge"
        auth = dt.Auth.service_account(key_id, secret, email)
        auth.token_endpoint = server.url + "/v2/oauth2/token"
        assert dt.Device.list_devices("p1", auth=auth) == []
    finally:
        dt.base_url = saved

    with server.client() as c:
        r = c.patch(f"/v2/projects/p1/serviceaccounts/{sa}", json={"enableBasicAuth": True})
        assert r.status_code == 200 and r.json()["enableBasicAuth"] is True
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/api/v1/projects", headers=creds).status_code == 200
        assert c.get("/v3/streams/projects", headers=creds).status_code == 200
        assert c.get("/v2/projects/p1/devices", headers=creds).status_code == 200
        token = c.post(
            "/v3/oauth2/tokens",
            json={"username": key_id, "password": secret, "grant_type": "password"},
        )
        assert token.status_code == 201, token.text


def test_a_new_account_never_inherits_a_deleted_accounts_dt_settings(server: Server) -> None:
    """issue 11 item 15: account pks were SQLite's max(pk) + 1, so an account created after the
    newest one was deleted got its pk, and with it the deleted account's cached DT settings: a
    native account was refused Basic auth for ``enableBasicAuth: false`` it never had."""
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        sa, _, _ = dt_account(c, basic_auth=False)
        assert c.delete(f"/api/v1/projects/p1/serviceaccounts/{sa}").status_code == 204
        r = c.post("/api/v1/projects/p1/serviceaccounts", json={"id": "fresh", "role": "user"})
        assert r.status_code == 201, r.text
        key = c.post("/api/v1/projects/p1/serviceaccounts/fresh/keys").json()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/api/v1/projects", headers=basic(key["key_id"], key["secret"]))
        assert r.status_code == 200, r.text


# -- item 19: argon2 off the loop, failed-login limit -------------------------------------------


def test_argon2_runs_off_the_event_loop_on_every_key_login(server: Server) -> None:
    """issue 11 item 19: every argon2 verification (DT face Basic, Tapis token endpoint,
    native Basic) runs on the hashing pool, never on the event loop's thread; so does hashing a
    new key."""
    auth = server.engine.auth
    threads: list[str] = []
    real = auth._hasher

    class Spy:
        def hash(self, secret: str) -> str:
            threads.append("hash:" + threading.current_thread().name)
            return real.hash(secret)

        def verify(self, hashed: str, secret: str) -> bool:
            threads.append(threading.current_thread().name)
            return real.verify(hashed, secret)

    auth._hasher = Spy()  # type: ignore[assignment]
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        _, key_id, secret = dt_account(c, basic_auth=True)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for creds in (basic(key_id, "wrong-1"), basic(key_id, "wrong-2")):
            assert c.get("/v2/projects/p1/devices", headers=creds).status_code == 401
        body = {"username": key_id, "password": "wrong-3", "grant_type": "password"}
        assert c.post("/v3/oauth2/tokens", json=body).status_code == 401
        assert c.get("/api/v1/projects", headers=basic(key_id, "wrong-4")).status_code == 401
    assert len(threads) == 5, threads
    assert all(name.split(":")[-1].startswith("sg-argon2") for name in threads), threads


def test_wrong_secrets_do_not_stall_other_requests(tmp_path: Path) -> None:
    """issue 11 item 19: concurrent wrong-secret logins to the DT face (16 here, the issue
    measured 64; the limit is off, so each one runs argon2) leave ``/healthz`` answering
    meanwhile: its median latency is a small part of the time the logins take together (on
    the event loop they queued behind the verifications; measured before the fix: one probe
    waited 42 s). Loosely bounded: the machine may be busy."""
    srv = start_server(tmp_path / "data", auth_failure_limit=0)
    try:
        with srv.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            _, key_id, _ = dt_account(c, basic_auth=True)

        async def run() -> tuple[float, list[float], list[int]]:
            async with httpx.AsyncClient(
                base_url=srv.url, timeout=300, limits=httpx.Limits(max_connections=100)
            ) as c:
                latencies: list[float] = []
                done = asyncio.Event()

                async def probe() -> None:
                    while not done.is_set():
                        t0 = time.perf_counter()
                        assert (await c.get("/healthz")).status_code == 200
                        latencies.append(time.perf_counter() - t0)
                        await asyncio.sleep(0.01)

                prober = asyncio.create_task(probe())
                t0 = time.perf_counter()
                replies = await asyncio.gather(
                    *(
                        c.get("/v2/projects/p1/devices", headers=basic(key_id, f"bad-{i}"))
                        for i in range(16)
                    )
                )
                total = time.perf_counter() - t0
                done.set()
                await prober
                return total, latencies, [r.status_code for r in replies]

        total, latencies, codes = asyncio.run(run())
        assert set(codes) <= {401, 429} and 401 in codes, codes
        assert len(latencies) >= 3, (total, latencies)
        assert statistics.median(latencies) < total / 4, (total, latencies)
    finally:
        srv.stop()


def test_failed_logins_are_limited_with_429_and_retry_after_on_every_face(
    limited: Server,
) -> None:
    """issue 11 item 19: past ``auth_failure_limit`` failed logins of a key id, key logins of
    that key id get 429 with an integer ``Retry-After``, in the shape of each face (DT, native,
    Tapis and its token endpoint), without running argon2."""
    with limited.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
        _, key_id, secret = dt_account(c, basic_auth=True)
    calls: list[int] = []
    verify = limited.engine.auth._verify
    limited.engine.auth._verify = lambda h, s: calls.append(1) or verify(h, s)
    bad = basic(key_id, "wrong")
    with httpx.Client(base_url=limited.url, timeout=30) as c:
        for _ in range(3):
            assert c.get("/v2/projects/p1/devices", headers=bad).status_code == 401
        assert len(calls) == 3
        r = c.get("/v2/projects/p1/devices", headers=bad)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["code"] == 429 and "too many failed logins" in r.json()["error"]
        r = c.get("/api/v1/projects", headers=bad)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "too_many_requests"
        r = c.get("/v3/streams/projects", headers=bad)
        assert r.status_code == 429 and r.json()["status"] == "error"
        assert int(r.headers["Retry-After"]) >= 1
        body = {"username": key_id, "password": "wrong", "grant_type": "password"}
        r = c.post("/v3/oauth2/tokens", json=body)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # A stream answers 429 too (its line says 500: 429 crashes DT's SDK stream reader).
        r = c.get("/v2/projects/p1/devices:stream", headers=bad)
        assert r.status_code == 429 and "Retry-After" in r.headers
        assert len(calls) == 3  # no argon2 once limited
        # Bearer tokens are not key logins: the admin is never locked out.
        assert c.get("/api/v1/projects", headers={"Authorization": f"Bearer {limited.token}"})
    limited.engine.auth._verify = verify


def test_the_address_limit_covers_unknown_key_ids(limited: Server) -> None:
    """issue 11 item 19: failures with made-up key ids count against the client's address
    (one address cannot try key ids without end); a key already proven by its owner still
    works when only its key id is blocked, so knowing a key id is not enough to lock its
    owner out."""
    with httpx.Client(base_url=limited.url, timeout=30) as c:
        for i in range(3):
            r = c.get("/api/v1/projects", headers=basic(f"knope{i}", "x"))
            assert r.status_code == 401
        r = c.get("/api/v1/projects", headers=basic("knope9", "x"))
        assert r.status_code == 429 and "address" in r.json()["error"]["message"]


def test_limiter_buckets_refill() -> None:
    """issue 11 item 19: a blocked key may try again after ``window / limit`` seconds, one
    try at a time; a limit of 0 turns the limiter off."""
    now = [0.0]
    lim = FailureLimiter(2, 60.0, clock=lambda: now[0])
    key = ("key", "k1")
    assert lim.retry_after(key) is None
    lim.failed(key)
    lim.failed(key)
    assert lim.retry_after(key) == 30
    now[0] = 29.0
    assert lim.retry_after(key) == 1
    now[0] = 30.0
    assert lim.retry_after(key) is None
    assert FailureLimiter(0).retry_after(key) is None  # off


def test_cached_secret_passes_a_key_id_block(tmp_path: Path) -> None:
    """issue 11 item 19: someone who knows only a key id can exhaust its failures, but the
    key's owner, whose secret was verified before, keeps working."""
    srv = start_server(tmp_path / "data", auth_failure_limit=2, auth_failure_window_seconds=600)
    try:
        with srv.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            _, key_id, secret = dt_account(c, basic_auth=True)
        auth = srv.engine.auth
        good = f"Basic {base64.b64encode(f'{key_id}:{secret}'.encode()).decode()}"
        assert auth.authenticate(good).account is not None  # verified once, no address
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for _ in range(2):
                assert c.get("/v2/projects/p1/devices", headers=basic(key_id, "x")).status_code
        # The address (loopback) is blocked as well; from another address only the key id is.
        assert auth.authenticate(good, "192.0.2.7").account is not None
        with pytest.raises(Exception, match="too many failed logins"):
            auth.authenticate(
                f"Basic {base64.b64encode(f'{key_id}:y'.encode()).decode()}", "192.0.2.7"
            )
    finally:
        srv.stop()


# -- item 22: disclosure -----------------------------------------------------------------------


def test_connector_reads_never_return_the_signature_secret(server: Server) -> None:
    """issue 11 item 22: the signature secret is write-only: create, get, list and update
    replies carry ``signatureSecret: ""`` (the SDK reads the key); the stored secret still
    signs pushes (checked with the SDK in ``tests/test_dt_connectors.py``)."""
    receiver = Receiver().start()
    try:
        with server.client() as c:
            assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            body = {
                "displayName": "d",
                "type": "HTTP_PUSH",
                "status": "ACTIVE",
                "events": [],
                "labels": [],
                "httpConfig": {"url": receiver.url, "signatureSecret": "s3cret", "headers": {}},
            }
            r = c.post("/v2/projects/p1/dataconnectors", json=body)
            assert r.status_code == 200 and r.json()["httpConfig"]["signatureSecret"] == ""
            cid = r.json()["name"].split("/")[-1]
            r = c.get(f"/v2/projects/p1/dataconnectors/{cid}")
            assert r.json()["httpConfig"]["signatureSecret"] == ""
            r = c.get("/v2/projects/p1/dataconnectors")
            assert r.json()["dataConnectors"][0]["httpConfig"]["signatureSecret"] == ""
            r = c.patch(f"/v2/projects/p1/dataconnectors/{cid}", json={"displayName": "e"})
            assert r.json()["httpConfig"]["signatureSecret"] == ""
            assert "s3cret" not in r.text
        face = server.app.state.dt
        assert face.connectors.by_id[cid].doc["httpConfig"]["signatureSecret"] == "s3cret"
    finally:
        receiver.stop()


def test_dt_face_refuses_tokens_in_the_query_string(server: Server) -> None:
    """issue 11 item 22: a bearer token in ``?token=`` (which lands in access logs) is refused
    with a 401 saying to send the Authorization header, on REST and stream routes alike."""
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v2/projects/p1/devices", params={"token": server.token})
        assert r.status_code == 401 and "?token=" in r.json()["error"]
        r = c.get("/v2/projects/p1/devices:stream", params={"token": server.token})
        assert r.status_code == 401 and "?token=" in r.text
    with server.client() as c:  # with the header, an extra token parameter is unknown
        r = c.get("/v2/projects/p1/devices", params={"token": server.token})
        assert r.status_code == 400 and "token" in r.json()["error"]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("store_mode", ["sqlite"], indirect=True)  # the SQLite files
def test_data_folder_and_files_are_private(tmp_path: Path) -> None:
    """issue 11 item 22: the data folder is 0700 and the database (with its -wal and -shm
    files), the admin token and the token key are 0600, whatever the umask; a folder and files
    left world-readable by an older version are tightened on start."""
    old_umask = os.umask(0o022)
    try:
        data = tmp_path / "data"
        data.mkdir(mode=0o755)
        os.chmod(data, 0o755)
        (data / "token-key").write_bytes(os.urandom(32))
        os.chmod(data / "token-key", 0o644)
        token, generated = load_admin_token(Settings(data=data))
        assert generated and mode(data / "admin-token") == 0o600
        os.chmod(data / "admin-token", 0o644)
        assert load_admin_token(Settings(data=data)) == (token, False)
        assert mode(data / "admin-token") == 0o600
        srv = start_server(data)
        try:
            with srv.client() as c:
                assert c.post("/api/v1/projects", json={"id": "p1"}).status_code == 201
            db = data / "streamgauge.db"
            assert mode(data) == 0o700
            assert mode(db) == 0o600
            for suffix in ("-wal", "-shm"):
                side = db.with_name(db.name + suffix)
                assert side.exists() and mode(side) == 0o600, suffix
            assert mode(data / "token-key") == 0o600
        finally:
            srv.stop()
    finally:
        os.umask(old_umask)
