"""Body signatures (``core/signing.py``), checked the way receivers check them."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import warnings

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamgauge.core.signing import (
    dt_signature,
    hmac_signature,
    verify_hmac_signature,
    xid,
)

SECRET = "a-connector-signature-secret-of-40-chars!"
BODY = b'{"event":{"eventId":"e1","eventType":"touch"},"labels":{},"metadata":{}}'


def dt_receive(token: str, secret: str, body: bytes) -> dict[str, object]:
    """What DT's ``dtintegrations.HttpPush`` does: decode with PyJWT (checks ``exp``), compare
    the SHA-256 checksum, then parse the body."""
    payload: dict[str, object] = jwt.decode(token, secret, algorithms=["HS256"])
    if payload["checksum_sha256"] != hashlib.sha256(body).hexdigest():
        raise ValueError("checksum mismatch")
    json.loads(body)
    return payload


def test_dt_signature_verifies_like_dt_receivers() -> None:
    token = dt_signature(SECRET, BODY)
    payload = dt_receive(token, SECRET, BODY)
    assert payload["checksum"] == hashlib.sha1(BODY).hexdigest()
    assert payload["exp"] == payload["iat"] + 3600  # type: ignore[operator]
    assert abs(int(payload["iat"]) - time.time()) < 60  # type: ignore[call-overload]
    assert re.fullmatch(r"[0-9a-v]{20}", str(payload["jti"]))
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_dt_signature_is_exact_for_a_fixed_time_and_id() -> None:
    token = dt_signature(SECRET, BODY, now=1_700_000_000, jti="cn3ldi6h0tlp3vsdkq0g")
    assert jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False}) == {
        "checksum": hashlib.sha1(BODY).hexdigest(),
        "checksum_sha256": hashlib.sha256(BODY).hexdigest(),
        "exp": 1_700_003_600,
        "iat": 1_700_000_000,
        "jti": "cn3ldi6h0tlp3vsdkq0g",
    }
    # the same inputs give the same bytes (a pure function)
    assert token == dt_signature(SECRET, BODY, now=1_700_000_000, jti="cn3ldi6h0tlp3vsdkq0g")


def test_dt_signature_fails_for_another_body_secret_or_an_old_time() -> None:
    token = dt_signature(SECRET, BODY)
    with pytest.raises(ValueError, match="checksum"):
        dt_receive(token, SECRET, BODY + b" ")
    with pytest.raises(jwt.InvalidSignatureError):
        dt_receive(token, SECRET + "x", BODY)
    old = dt_signature(SECRET, BODY, now=int(time.time()) - 7200)
    with pytest.raises(jwt.ExpiredSignatureError):
        dt_receive(old, SECRET, BODY)


def test_short_secrets_sign_without_a_warning() -> None:
    """DT's own fixtures use the 11-byte secret ``test-secret``; PyJWT warns about keys that
    short, and the warning (an error in these tests) must not escape the signer."""
    token = dt_signature("test-secret", BODY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        assert dt_receive(token, "test-secret", BODY)["checksum_sha256"]


def test_xid_is_time_ordered_and_unique() -> None:
    ids = [xid(1_700_000_000) for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(re.fullmatch(r"[0-9a-v]{20}", i) for i in ids)
    assert xid(1_700_000_000) < xid(1_800_000_000)


def test_hmac_signature_format_and_value() -> None:
    header = hmac_signature("s3cret", b"hello", now=1_700_000_000)
    expected = hmac.new(b"s3cret", b"1700000000.hello", hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_hmac_signature("s3cret", b"hello", header, now=1_700_000_100)


def test_hmac_verification_refuses_what_it_must() -> None:
    now = 1_700_000_000
    header = hmac_signature("s3cret", b"hello", now=now)
    assert not verify_hmac_signature("other", b"hello", header, now=now)
    assert not verify_hmac_signature("s3cret", b"hello!", header, now=now)
    assert not verify_hmac_signature("s3cret", b"hello", header, now=now + 301)
    assert not verify_hmac_signature("s3cret", b"hello", header, now=now - 301)
    assert verify_hmac_signature("s3cret", b"hello", header, 1000, now=now + 301)
    v1 = header.split("v1=")[1]
    assert not verify_hmac_signature("s3cret", b"hello", f"v1={v1}", now=now)  # no t
    assert not verify_hmac_signature("s3cret", b"hello", f"t={now}", now=now)  # no v1
    assert not verify_hmac_signature("s3cret", b"hello", f"t={now + 1},v1={v1}", now=now)
    assert not verify_hmac_signature("s3cret", b"hello", f"t=x,v1={v1}", now=now)
    # rotation: any one matching v1 is enough
    assert verify_hmac_signature("s3cret", b"hello", f"t={now},v1=00,v1={v1}", now=now)


@given(header=st.text(max_size=200), body=st.binary(max_size=50))
def test_hmac_verification_never_raises_on_garbage(header: str, body: bytes) -> None:
    assert verify_hmac_signature("s3cret", body, header, now=1_700_000_000) in (True, False)
