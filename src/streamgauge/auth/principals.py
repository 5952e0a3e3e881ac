"""Who is calling: the deployment admin (bearer token) or a service account (HTTP Basic with a key
id and secret, or a bearer access token the server issued, see ``auth/tokens.py``). Secrets are
stored as argon2 hashes; a successful verification is remembered as a SHA-256 digest so that each
request does not pay argon2's deliberate cost again.

Every face verifies credentials here, so an account's settings hold on every face:

* **Basic auth per account.** ``basic_auth_allowed`` (set by the DT face from each account's
  ``enableBasicAuth``) is asked after a key's secret checks out; an account that does not allow
  it is refused on every face and on the Tapis token endpoint (a key id and secret there are
  Basic auth by another name). The DT token grant (a JWT assertion signed with the secret) is not
  Basic auth and stays open.
* **argon2 off the event loop, bounded.** Hashing and verifying run on a small thread pool
  (``HASH_WORKERS`` threads: argon2 is deliberately expensive and uses several cores by itself);
  the async entry points (``authenticate_async``, ``key_async``), which every face uses, await
  it; the sync ones (``authenticate``, ``key``: for code off the event loop) block on it. At
  most ``MAX_PENDING`` verifications wait at once; beyond that a login is a 429.
* **Failed-login rate limit.** ``FailureLimiter``: at most ``limit`` failed key logins (a wrong
  secret, or an unknown key id) per ``window`` seconds for each key id and for each client
  address, as token buckets (``limit`` at once, then one more every ``window / limit`` seconds).
  Past it a key login is ``TooManyRequests`` (429 with ``Retry-After``) without running argon2,
  whatever the secret: except that a key whose exact secret was verified before (the digest
  cache) still works when only its key id is blocked, so that someone who knows a key id cannot
  lock its owner out (a 256-bit secret cannot be guessed at any rate). With fan-out worker
  processes every failure is counted in every process (``FailureLimiter.on_failed``,
  ``workers/``): the limit is the server's, not one process's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from streamgauge.auth.tokens import TokenIssuer
from streamgauge.core.registry import AccountRec, Registry
from streamgauge.domain.errors import TooManyRequests, Unauthorized

HASH_WORKERS = max(1, (os.cpu_count() or 1) // 4)  # argon2 (parallelism 4) uses 4 cores itself
MAX_PENDING = 128  # verifications queued or running at once (beyond: 429)
MAX_BUCKETS = 100_000  # rate-limit entries kept (the oldest go first beyond it)


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


class FailureLimiter:
    """Token buckets of failed logins, one per key (``("key", id)`` or ``("addr", host)``):
    each holds up to ``limit`` and refills at ``limit / window`` per second; a failure takes
    one; an empty bucket blocks until it refills. ``limit == 0`` turns the limiter off.
    Thread-safe (the sync login path runs in worker threads)."""

    def __init__(
        self,
        limit: int,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (level, when)
        self._lock = threading.Lock()
        # Told the keys of every failure counted here by ``failed`` (from any thread): with
        # fan-out workers (``serve --workers N``) each process tells the others, which
        # ``count`` it, so a client spreading its attempts over processes meets one limit.
        self.on_failed: Callable[[Sequence[tuple[str, str]]], None] | None = None

    def _level(self, key: tuple[str, str], now: float) -> float:
        got = self._buckets.get(key)
        if got is None:
            return float(self.limit)
        level, when = got
        return min(float(self.limit), level + (now - when) * self.limit / self.window)

    def retry_after(self, key: tuple[str, str]) -> int | None:
        """Seconds until ``key`` may fail once more, or None if it may now."""
        if self.limit <= 0:
            return None
        with self._lock:
            level = self._level(key, self._clock())
        if level >= 1.0:
            return None
        return max(1, math.ceil((1.0 - level) * self.window / self.limit))

    def failed(self, *keys: tuple[str, str]) -> None:
        """Count a failed login against each of ``keys`` (and tell ``on_failed``)."""
        if self.limit <= 0:
            return
        self.count(keys)
        listener = self.on_failed
        if listener is not None:
            listener(keys)

    def count(self, keys: Sequence[tuple[str, str]]) -> None:
        """Count a failed login against each of ``keys`` without telling ``on_failed``: one
        another process of the same server saw (``workers/``)."""
        if self.limit <= 0:
            return
        with self._lock:
            now = self._clock()
            for key in keys:
                level = self._level(key, now)
                self._buckets.pop(key, None)  # re-inserted last: the dict stays in age order
                self._buckets[key] = (max(0.0, level - 1.0), now)
            while len(self._buckets) > MAX_BUCKETS:
                del self._buckets[next(iter(self._buckets))]


class Authenticator:
    def __init__(
        self,
        registry: Registry,
        admin_token: str,
        tokens: TokenIssuer | None = None,
        *,
        failure_limit: int = 10,
        failure_window_seconds: float = 60.0,
    ) -> None:
        self._reg = registry
        self._admin = admin_token.encode()
        self.tokens = tokens
        self._hasher = PasswordHasher()
        self._verified: dict[str, bytes] = {}  # key id -> sha256(secret) known good
        self._executor: ThreadPoolExecutor | None = None  # made on first use, again after close
        self._pending = 0
        self._pending_lock = threading.Lock()
        self.limiter = FailureLimiter(failure_limit, failure_window_seconds)
        # Whether an account allows Basic auth (key id + secret); the DT face sets it from each
        # account's enableBasicAuth. Asked on every face.
        self.basic_auth_allowed: Callable[[AccountRec], bool] = lambda account: True

    @property
    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="sg-argon2")
        return self._executor

    def close(self) -> None:
        """Stop the hashing threads (at engine stop; a later login starts them again)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- argon2, off the event loop -------------------------------------------------------------

    def _submit(self, fn: Callable[[], bool]) -> Future[bool]:
        with self._pending_lock:
            if self._pending >= MAX_PENDING:
                raise TooManyRequests(
                    "too many logins in progress: retry shortly (or use an access token)", 1
                )
            self._pending += 1
        try:
            future = self._pool.submit(fn)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def hash(self, secret: str) -> str:
        """The argon2 hash of ``secret`` (blocking: a worker thread, or ``hash_async``)."""
        return self._hasher.hash(secret)

    async def hash_async(self, secret: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, secret)

    def _verify(self, hashed: str, secret: str) -> bool:
        try:
            return bool(self._hasher.verify(hashed, secret))
        except (VerificationError, InvalidHashError):
            return False

    # -- the Authorization header ---------------------------------------------------------------

    def _parse(self, authorization: str | None) -> tuple[str, str, str]:
        """("bearer", token, "") or ("basic", key id, secret)."""
        if not authorization:
            raise Unauthorized("missing credentials: send Authorization: Bearer or Basic")
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return "bearer", value.strip(), ""
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Unauthorized("malformed Basic credentials") from exc
            key_id, sep, secret = decoded.partition(":")
            if not sep:
                raise Unauthorized("malformed Basic credentials: expected key_id:secret")
            return "basic", key_id, secret
        raise Unauthorized(f"unsupported authorization scheme {scheme!r}")

    def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """Blocking (argon2 may run): for worker threads. ``client``: the caller's address."""
        kind, a, b = self._parse(authorization)
        if kind == "bearer":
            return self.bearer(a)
        return self.key(a, b, client)

    async def authenticate_async(
        self, authorization: str | None, client: str | None = None
    ) -> Principal:
        """As ``authenticate``, for the event loop: argon2 runs on the hashing pool."""
        kind, a, b = self._parse(authorization)
        if kind == "bearer":
            return self.bearer(a)
        return await self.key_async(a, b, client)

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

    # -- key id and secret ----------------------------------------------------------------------

    def key(self, key_id: str, secret: str, client: str | None = None) -> Principal:
        """A key login (Basic auth, the Tapis password grant). Blocking: for worker threads."""
        step = self._key_start(key_id, secret, client)
        if isinstance(step, Principal):
            return step
        account, digest = step
        ok = self._submit(lambda: self._verify(account.keys[key_id], secret)).result()
        return self._key_end(account, key_id, digest, ok, client)

    async def key_async(self, key_id: str, secret: str, client: str | None = None) -> Principal:
        """A key login, for the event loop: argon2 runs on the hashing pool."""
        step = self._key_start(key_id, secret, client)
        if isinstance(step, Principal):
            return step
        account, digest = step
        future = self._submit(lambda: self._verify(account.keys[key_id], secret))
        ok = await asyncio.wrap_future(future)
        return self._key_end(account, key_id, digest, ok, client)

    def _limits(self, key_id: str, client: str | None) -> list[tuple[str, str]]:
        keys = [("key", key_id)]
        if client:
            keys.append(("addr", client))
        return keys

    def _key_start(
        self, key_id: str, secret: str, client: str | None
    ) -> Principal | tuple[AccountRec, bytes]:
        """Everything before argon2: the rate limit, the account, the digest cache. Either the
        principal (a known secret) or what argon2 must check."""
        digest = hashlib.sha256(secret.encode()).digest()
        known = self._verified.get(key_id)
        cached = known is not None and hmac.compare_digest(known, digest)
        limited = [
            (key, wait)
            for key in self._limits(key_id, client)
            if (wait := self.limiter.retry_after(key)) is not None
        ]
        if limited and not (cached and all(k[0] == "key" for k, _ in limited)):
            key, wait = max(limited, key=lambda kw: kw[1])
            what = f"key id {key_id!r}" if key[0] == "key" else f"address {client}"
            raise TooManyRequests(
                f"too many failed logins for {what}: retry in {wait} s",
                wait,
                [{"field": "authorization", "reason": f"rate limited, retry in {wait} s"}],
            )
        account_pk = self._reg.key_owner.get(key_id)
        account = self._reg.accounts_by_pk.get(account_pk) if account_pk is not None else None
        if account is None or key_id not in account.keys:
            self._verified.pop(key_id, None)
            if client:
                self.limiter.failed(("addr", client))  # unknown ids get no bucket of their own
            raise Unauthorized("invalid key id or secret")
        if cached:
            return self._allowed(account)
        return account, digest

    def _key_end(
        self, account: AccountRec, key_id: str, digest: bytes, ok: bool, client: str | None
    ) -> Principal:
        if not ok:
            self.limiter.failed(*self._limits(key_id, client))
            raise Unauthorized("invalid key id or secret")
        if key_id in account.keys:  # not deleted meanwhile
            self._verified[key_id] = digest
        return self._allowed(account)

    def _allowed(self, account: AccountRec) -> Principal:
        if not self.basic_auth_allowed(account):
            raise Unauthorized(
                f"service account {account.id!r} does not allow Basic auth (enableBasicAuth is "
                "false): exchange a key for a token at /v2/oauth2/token"
            )
        return Principal(account)
