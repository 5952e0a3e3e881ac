"""Server-issued access tokens (JWT, HS256) and derivable key secrets, from one master key.

The master key is 32 random bytes in ``<data>/token-key`` (mode 0600), created on first start.

* ``issue``/``verify``: access tokens for service accounts. Claims: ``sub`` (account id), ``iat``,
  ``exp``, ``jti``, ``iss`` = ``"streamgauge"``, plus the caller's extra claims (the Tapis face adds
  ``tapis/tenant_id`` and ``tapis/username``; a token obtained with a key carries ``key_id`` so
  that deleting the key revokes it). ``verify`` raises ``errors.Unauthorized`` saying what is
  wrong; checking that the account (and key) still exist is the authenticator's job.
* ``secret_for(key_id)``: a key's secret, ``base64url(HMAC-SHA256(master, "key-secret:" +
  key_id))`` without padding. DT's SDK signs its token-grant assertion (RFC 7523, HS256) with the
  key's plaintext secret, so the server must be able to recompute it; only the argon2 hash of the
  secret is stored, and that is what HTTP Basic is checked against.

Errors: every failure of ``verify`` is ``Unauthorized`` (401); a bad key file is ``ValueError``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt

from streamgauge.domain.errors import Unauthorized
from streamgauge.store.files import private_dir, tighten_if_present

ISSUER = "streamgauge"
KEY_FILE = "token-key"
KEY_BYTES = 32
ALGORITHM = "HS256"
RESERVED_CLAIMS = frozenset({"sub", "iat", "exp", "jti", "iss", "nbf"})


class TokenIssuer:
    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the token key must be at least {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def load(cls, data_dir: Path, configured: str | None = None) -> TokenIssuer:
        """The key ``configured`` (hex: ``STREAMGAUGE_TOKEN_KEY``, which every node of a cluster
        shares), else read ``data_dir/token-key``, or create it (0600, 32 random bytes)."""
        if configured is not None:
            return cls(bytes.fromhex(configured))
        path = data_dir / KEY_FILE
        private_dir(data_dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            tighten_if_present(path)
            key = path.read_bytes()
            if len(key) < KEY_BYTES:
                raise ValueError(
                    f"{KEY_FILE} in the data folder is {len(key)} bytes; expected {KEY_BYTES} "
                    "(delete it to make a new one: issued tokens and derived key secrets change)"
                ) from None
            return cls(key)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(key)

    def issue(
        self,
        account_id: str,
        *,
        ttl_seconds: int = 3600,
        claims: Mapping[str, object] | None = None,
        now: int | None = None,
    ) -> tuple[str, int]:
        """A signed access token for ``account_id`` and its expiry (unix seconds)."""
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        extra = dict(claims or {})
        clash = RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValueError(f"claims {sorted(clash)} are set by the issuer")
        iat = int(time.time()) if now is None else now
        exp = iat + ttl_seconds
        payload: dict[str, object] = {
            **extra,
            "sub": account_id,
            "iss": ISSUER,
            "iat": iat,
            "exp": exp,
            "jti": secrets.token_hex(12),
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM), exp

    def verify(self, token: str, *, leeway_seconds: int = 60) -> dict[str, Any]:
        """The claims of a token this server issued; ``Unauthorized`` naming the problem if it is
        malformed, forged (another key or algorithm), expired beyond the leeway, or not ours."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=leeway_seconds,
                options={"require": ["sub", "iat", "exp", "jti", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired: request a new one") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("access token signature is invalid (not issued here)") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthorized(f"access token must be signed with {ALGORITHM}") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"access token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(f"access token was not issued by {ISSUER}") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("access token is not valid yet (issued in the future)") from exc
        except jwt.DecodeError as exc:
            raise Unauthorized("malformed access token: not a JWT") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid access token: {exc}") from exc
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthorized("access token's 'sub' claim must be an account id")
        return claims

    def secret_for(self, key_id: str) -> str:
        """The plaintext secret of key ``key_id``, recomputable from the master key."""
        mac = hmac.new(self._key, b"key-secret:" + key_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
