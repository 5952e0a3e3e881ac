"""Body signatures for outbound deliveries, pure (clock and ids injectable).

* ``dt_signature``: the ``X-Dt-Signature`` JWT of DT data connectors (HS256 with the connector's
  signature secret; claims ``checksum`` = SHA-1 hex and ``checksum_sha256`` = SHA-256 hex of the
  raw body, ``iat``, ``exp`` = ``iat + 3600``, ``jti`` an xid-style id). A receiver checks it with
  ``jwt.decode(token, secret, algorithms=["HS256"])`` and compares ``checksum_sha256``.
* ``hmac_signature`` / ``verify_hmac_signature``: the native face's header
  ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` (Stripe-style: the timestamp is
  signed too, so a captured request cannot be replayed after the tolerance).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import secrets
import time
import warnings

import jwt

DT_SIGNATURE_HEADER = "X-Dt-Signature"
HMAC_SIGNATURE_HEADER = "X-Streamgauge-Signature"
DT_SIGNATURE_TTL = 3600

_counter = itertools.count(secrets.randbelow(1 << 24))
_machine = secrets.token_bytes(3)


def xid(now: int | None = None) -> str:
    """A 20-character, time-ordered unique id in the layout of rs/xid (4 bytes of unix time,
    3 of machine, 2 of process id, 3 of counter; base32hex, lower case)."""
    t = int(time.time()) if now is None else now
    raw = (
        (t & 0xFFFFFFFF).to_bytes(4, "big")
        + _machine
        + (os.getpid() & 0xFFFF).to_bytes(2, "big")
        + (next(_counter) & 0xFFFFFF).to_bytes(3, "big")
    )
    return base64.b32hexencode(raw).decode().rstrip("=").lower()


def dt_signature(
    secret: str, body: bytes, *, now: int | None = None, jti: str | None = None
) -> str:
    """The ``X-Dt-Signature`` value for ``body``."""
    iat = int(time.time()) if now is None else now
    payload = {
        "checksum": hashlib.sha1(body).hexdigest(),
        "checksum_sha256": hashlib.sha256(body).hexdigest(),
        "exp": iat + DT_SIGNATURE_TTL,
        "iat": iat,
        "jti": jti if jti is not None else xid(iat),
    }
    with warnings.catch_warnings():
        # Connector secrets are user-chosen and may be shorter than 32 bytes, as DT allows.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, secret.encode(), algorithm="HS256", headers={"typ": "JWT"})


def hmac_signature(secret: str, body: bytes, *, now: int | None = None) -> str:
    """``t=<unix>,v1=<hex>`` for ``body``."""
    t = int(time.time()) if now is None else now
    return f"t={t},v1={_mac(secret, t, body)}"


def verify_hmac_signature(
    secret: str,
    body: bytes,
    header: str,
    tolerance_seconds: int = 300,
    *,
    now: int | None = None,
) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its ``t`` is within
    ``tolerance_seconds`` of now. Several ``v1`` values are allowed (secret rotation)."""
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if t is not None or not value.isascii() or not value.isdigit():
                return False
            t = int(value)
        elif name == "v1" and value.isascii():
            candidates.append(value)
    if t is None or not candidates:
        return False
    current = int(time.time()) if now is None else now
    if abs(current - t) > tolerance_seconds:
        return False
    expected = _mac(secret, t, body)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
