"""Access tokens and derivable key secrets (``auth/tokens.py``), alone and through a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import time
from pathlib import Path

import httpx
import jwt
import pytest

from streamgauge.auth.tokens import KEY_FILE, TokenIssuer
from streamgauge.domain.errors import Unauthorized
from tests.auth.test_permissions import basic, new_account
from tests.conftest import Server, expect_error, make_station, rows

API = "/api/v1/projects"


@pytest.fixture
def issuer(tmp_path: Path) -> TokenIssuer:
    return TokenIssuer.load(tmp_path)


# -- the key file ---------------------------------------------------------------------------------


def test_load_creates_a_private_key_file_once(tmp_path: Path) -> None:
    first = TokenIssuer.load(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert len(path.read_bytes()) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = TokenIssuer.load(tmp_path / "data")
    token, _ = first.issue("sa1")
    assert again.verify(token)["sub"] == "sa1"
    assert again.secret_for("k1") == first.secret_for("k1")


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="5 bytes"):
        TokenIssuer.load(tmp_path)


# -- issue and verify -----------------------------------------------------------------------------


def test_issue_then_verify_gives_the_claims(issuer: TokenIssuer) -> None:
    now = int(time.time())
    token, exp = issuer.issue("sa1", ttl_seconds=600, claims={"tapis/tenant_id": "dev"})
    claims = issuer.verify(token)
    assert claims["sub"] == "sa1" and claims["iss"] == "streamgauge"
    assert claims["tapis/tenant_id"] == "dev"
    assert claims["exp"] == exp and now <= claims["iat"] <= now + 5
    assert exp - claims["iat"] == 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    other, _ = issuer.issue("sa1")
    assert issuer.verify(other)["jti"] != claims["jti"]


def test_reserved_claims_cannot_be_overridden(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="sub"):
        issuer.issue("sa1", claims={"sub": "admin"})
    with pytest.raises(ValueError, match="ttl"):
        issuer.issue("sa1", ttl_seconds=0)


def test_expiry_and_leeway(issuer: TokenIssuer) -> None:
    now = int(time.time())
    token, exp = issuer.issue("sa1", ttl_seconds=100, now=now - 130)  # expired 30 s ago
    assert exp == now - 30
    assert issuer.verify(token, leeway_seconds=60)["sub"] == "sa1"
    with pytest.raises(Unauthorized, match="expired"):
        issuer.verify(token, leeway_seconds=0)
    old, _ = issuer.issue("sa1", ttl_seconds=100, now=now - 1000)
    with pytest.raises(Unauthorized, match="expired"):
        issuer.verify(old)


def test_forged_tokens_are_refused(issuer: TokenIssuer, tmp_path: Path) -> None:
    other = TokenIssuer.load(tmp_path / "elsewhere")
    token, _ = other.issue("sa1")
    with pytest.raises(Unauthorized, match="signature"):
        issuer.verify(token)
    now = int(time.time())
    claims = {"sub": "sa1", "iss": "streamgauge", "iat": now, "exp": now + 60, "jti": "x"}
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(Unauthorized, match="HS256"):
        issuer.verify(unsigned)
    good, _ = issuer.issue("sa1")
    head, body, sig = good.split(".")
    tampered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    with pytest.raises(Unauthorized):
        issuer.verify(f"{head}.{tampered}.{sig}")
    with pytest.raises(Unauthorized, match="malformed"):
        issuer.verify("not.a.jwt")
    foreign = jwt.encode({**claims, "iss": "someone"}, issuer._key, algorithm="HS256")
    with pytest.raises(Unauthorized, match="issued by"):
        issuer.verify(foreign)
    no_sub = {k: v for k, v in claims.items() if k != "sub"}
    with pytest.raises(Unauthorized, match="'sub'"):
        issuer.verify(jwt.encode(no_sub, issuer._key, algorithm="HS256"))


# -- derived key secrets --------------------------------------------------------------------------


def test_secret_for_is_base64url_hmac_of_the_key_id(tmp_path: Path) -> None:
    master = bytes(range(32))
    (tmp_path / KEY_FILE).write_bytes(master)
    issuer = TokenIssuer.load(tmp_path)
    mac = hmac.new(master, b"key-secret:k123", hashlib.sha256).digest()
    expected = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    assert issuer.secret_for("k123") == expected
    assert "=" not in expected and len(expected) == 43
    assert issuer.secret_for("k124") != expected


# -- through a real server ------------------------------------------------------------------------


def test_new_keys_get_the_derived_secret_and_basic_still_works(server: Server) -> None:
    with server.client() as admin:
        make_station(admin, "p1", devices=1)
        key = new_account(admin, "p1", "sa1")
    assert key["secret"] == server.engine.tokens.secret_for(key["key_id"])
    with httpx.Client(base_url=server.url, timeout=10) as c:
        assert c.get(f"{API}/p1", headers=basic(key["key_id"], key["secret"])).status_code == 200
        r = c.get(f"{API}/p1", headers=basic(key["key_id"], key["secret"] + "x"))
        expect_error(r, 401)


def test_bearer_access_token_on_a_native_endpoint(server: Server) -> None:
    with server.client() as admin:
        make_station(admin, "p1", devices=2)
        key = new_account(admin, "p1", "reader", role="user")
        assert admin.post(f"{API}/p1/observations", json=rows(4)).status_code == 200
        make_station(admin, "p2", devices=1)
    tokens = server.engine.tokens
    token, _ = tokens.issue("reader", claims={"key_id": key["key_id"]})
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        r = c.get(f"{API}/p1/observations")
        assert r.status_code == 200, r.text
        assert len(r.json()["observations"]) == 4
        expect_error(c.post(f"{API}/p1/observations", json=rows(1)), 403)  # a user only reads
        assert c.get(f"{API}/p2").status_code in (403, 404)  # no role on p2


def test_bad_access_tokens_are_401_with_a_reason(server: Server, tmp_path: Path) -> None:
    with server.client() as admin:
        make_station(admin, "p1", devices=1)
        key = new_account(admin, "p1", "sa1")
        new_account(admin, "p1", "sa2")
    tokens = server.engine.tokens

    def get(token: str) -> str:
        r = httpx.get(
            f"{server.url}{API}/p1", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        message: str = expect_error(r, 401)["message"]
        return message

    expired, _ = tokens.issue("sa1", ttl_seconds=10, now=int(time.time()) - 1000)
    assert "expired" in get(expired)
    forged, _ = TokenIssuer.load(tmp_path / "other").issue("sa1")
    assert "signature" in get(forged)
    ghost, _ = tokens.issue("nobody")
    assert "'nobody' does not exist" in get(ghost)
    assert "invalid bearer token" in get("plainly-wrong")

    # deleting the key revokes tokens obtained with it; deleting the account revokes the rest
    with_key, _ = tokens.issue("sa1", claims={"key_id": key["key_id"]})
    without_key, _ = tokens.issue("sa2")
    ok = {"Authorization": f"Bearer {with_key}"}
    assert httpx.get(f"{server.url}{API}/p1", headers=ok, timeout=10).status_code == 200
    with server.client() as admin:
        r = admin.delete(f"{API}/p1/serviceaccounts/sa1/keys/{key['key_id']}")
        assert r.status_code == 204
    assert "key was deleted" in get(with_key)
    ok2 = {"Authorization": f"Bearer {without_key}"}
    assert httpx.get(f"{server.url}{API}/p1", headers=ok2, timeout=10).status_code == 200
    with server.client() as admin:
        assert admin.delete(f"{API}/p1/serviceaccounts/sa2").status_code == 204
    assert "does not exist" in get(without_key)


def test_key_account_finds_the_owner_or_refuses(server: Server) -> None:
    with server.client() as admin:
        make_station(admin, "p1", devices=1)
        key = new_account(admin, "p1", "sa1")
    auth = server.engine.auth
    assert auth.key_account(key["key_id"]).id == "sa1"
    with pytest.raises(Unauthorized, match="unknown key id"):
        auth.key_account("kmissing")
