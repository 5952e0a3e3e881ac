"""Who is calling: the deployment admin (bearer token) or a service account (HTTP Basic with a key
id and secret, or a bearer access token the server issued, see ``auth/tokens.py``). Secrets are
stored as argon2 hashes; a successful verification is remembered as a SHA-256 digest so that each
request does not pay argon2's deliberate cost again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from streamgauge.auth.tokens import TokenIssuer
from streamgauge.errors import Unauthorized
from streamgauge.store.registry import AccountRec, Registry


@dataclass(frozen=True, slots=True)
class Principal:
    account: AccountRec | None  # None: the deployment admin

    @property
    def is_admin(self) -> bool:
        return self.account is None

    @property
    def name(self) -> str:
        return "admin" if self.account is None else self.account.id


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "k" + secrets.token_hex(10)


class Authenticator:
    def __init__(
        self, registry: Registry, admin_token: str, tokens: TokenIssuer | None = None
    ) -> None:
        self._reg = registry
        self._admin = admin_token.encode()
        self.tokens = tokens
        self._hasher = PasswordHasher()
        self._verified: dict[str, bytes] = {}  # key id -> sha256(secret) known good

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing credentials: send Authorization: Bearer or Basic")
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.bearer(value.strip())
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Unauthorized("malformed Basic credentials") from exc
            key_id, sep, secret = decoded.partition(":")
            if not sep:
                raise Unauthorized("malformed Basic credentials: expected key_id:secret")
            return self.key(key_id, secret)
        raise Unauthorized(f"unsupported authorization scheme {scheme!r}")

    def bearer(self, token: str) -> Principal:
        if hmac.compare_digest(token.encode(), self._admin):
            return Principal(None)
        if self.tokens is not None and token.count(".") == 2:
            return self.access_token(token)
        raise Unauthorized("invalid bearer token")

    def access_token(self, token: str) -> Principal:
        """A service account's access token (a JWT this server issued). The account must still
        exist and, for a token obtained with a key (claim ``key_id``), so must that key."""
        if self.tokens is None:
            raise Unauthorized("access tokens are not enabled")
        claims = self.tokens.verify(token)
        account = self._reg.accounts.get(claims["sub"])
        if account is None:
            raise Unauthorized(f"access token's service account {claims['sub']!r} does not exist")
        key_id = claims.get("key_id")
        if key_id is not None and key_id not in account.keys:
            raise Unauthorized("access token's key was deleted: request a new token")
        return Principal(account)

    def key_account(self, key_id: str) -> AccountRec:
        """The service account owning ``key_id`` (for grants that prove the key's secret some
        other way, e.g. an RFC 7523 assertion signed with ``tokens.secret_for(key_id)``)."""
        account_pk = self._reg.key_owner.get(key_id)
        account = self._reg.accounts_by_pk.get(account_pk) if account_pk is not None else None
        if account is None or key_id not in account.keys:
            raise Unauthorized(f"unknown key id {key_id!r}")
        return account

    def key(self, key_id: str, secret: str) -> Principal:
        account_pk = self._reg.key_owner.get(key_id)
        account = self._reg.accounts_by_pk.get(account_pk) if account_pk is not None else None
        if account is None or key_id not in account.keys:
            self._verified.pop(key_id, None)
            raise Unauthorized("invalid key id or secret")
        digest = hashlib.sha256(secret.encode()).digest()
        known = self._verified.get(key_id)
        if known is not None and hmac.compare_digest(known, digest):
            return Principal(account)
        try:
            self._hasher.verify(account.keys[key_id], secret)
        except (VerificationError, InvalidHashError) as exc:
            raise Unauthorized("invalid key id or secret") from exc
        self._verified[key_id] = digest
        return Principal(account)
