"""Durable, at-least-once outbound deliveries (data connectors, alert actions).

A *delivery* is a named consumer (``key``) of a ``Source``: anything that can list its items after a
cursor, in cursor order (the observation log, the alert log, ...). One asyncio worker per key:

    load cursor --> fetch items after it --> POST the first --2xx--> cursor = its cursor --+
         ^            |  none: idle until notify()            |                            |
         |            v  or the poll timer                    +--fail--> item older than   |
         +------------+-----------------------------------------------  retention? --yes--> dead
                                                              |  no: sleep backoff.delays  letter,
                                                              +--> (or Retry-After), retry  cursor
                                                                                            moves
* Items go out one at a time, in cursor order; the next is sent only after the previous one was
  acknowledged (2xx) or dead-lettered. Other statuses, timeouts and connection errors are failures.
* The cursor is persisted (table ``delivery_cursors``) only after a 2xx, at most every
  ``FLUSH_EVERY`` items or ``FLUSH_SECONDS`` and whenever the worker goes idle, pauses or stops;
  a crash can only re-deliver acknowledged items, never skip one. A dead letter and the cursor move
  past it are one transaction (table ``delivery_dead_letters``).
* ``start_after=None`` means "from the source's end now" for a brand-new key only (the position is
  persisted at once); a key with a stored cursor always resumes from it, after a restart too.
* ``sign`` runs before each attempt, so signatures carry the attempt's time.
* Replacing or removing a running key (``add`` on it: every edit of an alert channel does) lets
  an attempt in flight finish first (within its timeout), so the item the target already got
  is not sent again by the next worker; ``stop`` (shutdown) abandons it: it is re-sent after
  the restart.
* ``check_target`` is pure (scheme, host, literal private addresses). Every request goes out
  through ``outbound_client`` (``PinnedTransport``): when private targets are forbidden (the
  default) the host is resolved once, every address is checked, and the connection is made to
  the checked address (no DNS rebinding); proxy settings of the environment are ignored and
  redirects are not followed.
* Outcomes and stats carry a failed reply's status and standard reason phrase only, never the
  receiver's body (it may be an internal service's secret).

Errors: ``check_target`` raises ``errors.Invalid``; ``stats`` of an unknown key ``errors.NotFound``.
Failures of sources, signers and receivers never escape a worker: they are logged, counted in
``stats`` (``last_error``) and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from streamgauge import __version__
from streamgauge.core.backoff import delays, next_delay, retry_after
from streamgauge.core.consumers import Consumer
from streamgauge.core.hub import Flag
from streamgauge.domain.errors import Invalid, NotFound
from streamgauge.metrics import Metrics
from streamgauge.store.api import DeliveryPositions

log = logging.getLogger("streamgauge.deliveries")

FETCH_LIMIT = 100  # items read from a source per step
FLUSH_EVERY = 100  # acknowledged items between two cursor writes, at most
FLUSH_SECONDS = 1.0  # seconds between two cursor writes while busy, at most
WINDOW_SECONDS = 3 * 3600  # the "recent" window of stats (DT's :metrics covers 3 h)
WINDOW_MAX = 10_000  # attempts kept for the window, at most


@dataclass(frozen=True, slots=True)
class Item:
    cursor: int  # position in the source, strictly increasing
    url: str
    body: bytes
    headers: Mapping[str, str]
    born_ms: int  # when the event happened / was logged (for dead-letter retention)
    method: str = "POST"


class Source(Protocol):
    async def fetch(self, after: int, limit: int) -> Sequence[Item]:
        """Up to ``limit`` items with ``cursor > after``, ascending."""
        ...


# A source may also define ``async def head(self) -> int`` (its last cursor): a new key with
# ``start_after=None`` then starts there at once instead of paging through the source to its end.


@dataclass(frozen=True)
class Outcome:
    attempt: int  # 1 for the first attempt of an item
    status: int | None  # HTTP status, None when no response (timeout, refused, refused target)
    error: str | None
    latency_ms: float
    delivered: bool
    dead_lettered: bool


@dataclass
class DeliveryStats:
    """What a ``:metrics`` endpoint shows. Counters are since the process started."""

    delivered: int
    failed_attempts: int
    dead_lettered: int
    cursor: int  # last acknowledged (or dead-lettered) cursor
    pending_hint: int | None  # items fetched and not yet done (a lower bound); None: not known
    last_status: int | None
    last_error: str | None  # the last failure's reason (kept after later successes)
    last_success_ms: int | None
    latency_ms_p50: float | None  # over attempts with a response in the recent window
    latency_ms_p99: float | None
    paused: bool = False
    recent_delivered: int = 0  # in the recent window (3 h)
    recent_failed: int = 0  # failed attempts in the recent window


OutcomeHook = Callable[[Item, Outcome], Awaitable[None] | None]
Signer = Callable[[Item], Mapping[str, str]]


# -- targets (pure) -------------------------------------------------------------------------------


def _private(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_unspecified
        or addr.is_multicast
        or addr.is_reserved
    )


def _host(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, or ``Invalid`` naming what is wrong."""

    def bad(reason: str) -> Invalid:
        details = [{"field": "url", "reason": reason}]
        return Invalid(f"bad delivery target {url!r}: {reason}", details)

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"not a URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise bad(f"the scheme must be http or https, not {scheme or 'missing'!r}")
    host = parts.hostname
    if not host:
        raise bad("the URL has no host")
    return scheme, host, port


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse a target URL that is not http(s), has no host, or (when ``allow_private`` is False)
    names a loopback, private, link-local or otherwise non-public address (or ``localhost``).
    Names are not resolved here: the worker checks what they resolve to before each send."""
    _, host, _ = _host(url)
    if allow_private:
        return
    reason = _private_reason(host)
    if reason:
        raise Invalid(
            f"bad delivery target {url!r}: {reason}; private targets are not allowed here",
            [{"field": "url", "reason": reason}],
        )


def _private_reason(host: str) -> str | None:
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host!r} is the local machine"
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None
    if _private(addr):
        return f"{host} is a loopback, private, link-local or reserved address"
    return None


async def resolve_checked(url: str, *, allow_private: bool) -> str | None:
    """``check_target``, then (private targets forbidden) resolve the host once and check every
    address it resolves to; the address to connect to (None: connect by name, private targets
    being allowed). Connecting to the returned address, not to the name again, is what keeps a
    name that answers differently the second time (DNS rebinding) from reaching the inside."""
    check_target(url, allow_private=allow_private)
    if allow_private:
        return None
    scheme, host, port = _host(url)
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))  # a literal, checked above
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise Invalid(
            f"bad delivery target {url!r}: cannot resolve {host!r} ({exc})",
            [{"field": "url", "reason": "host does not resolve"}],
        ) from exc
    addrs = [ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]) for *_, sockaddr in infos]
    if not addrs:
        raise Invalid(
            f"bad delivery target {url!r}: {host!r} has no address",
            [{"field": "url", "reason": "host does not resolve"}],
        )
    for addr in addrs:
        if _private(addr):
            raise Invalid(
                f"bad delivery target {url!r}: {host!r} resolves to {addr}, a loopback, private "
                "or link-local address; private targets are not allowed here",
                [{"field": "url", "reason": f"resolves to private address {addr}"}],
            )
    return str(addrs[0])


async def check_resolved(url: str, *, allow_private: bool) -> None:
    """``check_target``, then (private targets forbidden) every address the host resolves to."""
    await resolve_checked(url, allow_private=allow_private)


class PinnedTransport(httpx.AsyncBaseTransport):
    """The transport of every outbound request: checks the target (``resolve_checked``) right
    before it is sent, then connects to the checked address itself, keeping the original
    ``Host`` header and TLS server name (SNI and certificate checks use the name). A refused
    target raises ``errors.Invalid`` (nothing is sent)."""

    def __init__(
        self,
        allow_private: bool | Callable[[], bool],
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._allow = allow_private
        # Made at the first request: its TLS context (the CA bundle parsed) costs a server's
        # start a tenth of a second, for deliveries that may never come.
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        allow = self._allow() if callable(self._allow) else self._allow
        addr = await resolve_checked(str(request.url), allow_private=allow)
        if addr is not None and addr != request.url.host:
            name = request.url.host
            request.url = request.url.copy_with(host=addr)  # Host header keeps the name
            request.extensions = {**request.extensions, "sni_hostname": name}
        if self._inner is None:
            self._inner = httpx.AsyncHTTPTransport(trust_env=False)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


def outbound_client(
    *, allow_private: bool | Callable[[], bool], timeout: float = 10.0
) -> httpx.AsyncClient:
    """An HTTP client for requests to user-given targets: checked and pinned targets
    (``PinnedTransport``), no proxy settings from the environment, no redirects."""
    return httpx.AsyncClient(
        transport=PinnedTransport(allow_private),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
        headers={"User-Agent": f"streamgauge/{__version__}"},
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` (0..1) quantile by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]


# -- the engine -----------------------------------------------------------------------------------


class Delivery(Consumer):
    """One delivery: a durable consumer (``core/consumers``) of a ``Source`` whose position is
    its cursor in ``DeliveryPositions`` (loaded, saved, forgotten and started by the consumer's
    own code: a new key starts at ``start_after``, else at the source's end, ``head``). Its
    task is the delivery loop of ``Deliveries`` (one item at a time, retries, dead letters),
    woken by ``notify``."""

    def __init__(
        self,
        key: str,
        source: Source,
        positions: DeliveryPositions,
        start_after: int | None,
        sign: Signer | None,
        timeout: float,
        retention: float,
        on_outcome: OutcomeHook | None,
        paused: bool = False,
    ) -> None:
        super().__init__(key, None, positions, start=start_after)
        self.positions = positions
        self.source = source
        self.sign = sign
        self.timeout = timeout
        self.retention = retention
        self.on_outcome = on_outcome
        self.paused = paused
        self.stopping = False  # retired: stop at the next point between two attempts
        self.unsaved = 0
        self.flushed_at = 0.0
        self.pending: int | None = None
        self.control = asyncio.Event()  # pause, resume
        self.task: asyncio.Task[None] | None = None
        self.stats = DeliveryStats(0, 0, 0, 0, None, None, None, None, None, None)
        # (monotonic time, latency ms if a response came, delivered)
        self.window: deque[tuple[float, float | None, bool]] = deque(maxlen=WINDOW_MAX)

    @property
    def key(self) -> str:
        return self.name

    @property
    def cursor(self) -> int | None:
        """Last acknowledged or dead-lettered (None until loaded)."""
        return self.position

    @cursor.setter
    def cursor(self, value: int) -> None:
        self.position = value

    @property
    def wake(self) -> Flag:
        """New data, pause, resume."""
        return self._wake

    async def head(self) -> int:
        """The source's end now (a new key without ``start_after`` starts there)."""
        head = getattr(self.source, "head", None)
        if callable(head):
            return int(await head())
        after = 0
        while True:
            items = await self.source.fetch(after, 1000)
            if not items:
                return after
            after = max(after, items[-1].cursor)


class Deliveries:
    """Every outbound delivery of one engine; ``engine.deliveries``."""

    def __init__(
        self,
        positions: DeliveryPositions,
        *,
        metrics: Metrics | None = None,
        allow_private_targets: bool = False,
        poll_seconds: float = 5.0,
        retry_first_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
    ) -> None:
        self._positions = positions  # the backend's (``store.api.DeliveryPositions``)
        self._metrics = metrics
        self.allow_private_targets = allow_private_targets
        self._poll = poll_seconds
        self._retry_first = retry_first_seconds
        self._retry_max = max(retry_max_seconds, retry_first_seconds)
        self._workers: dict[str, Delivery] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._started = False

    # -- control ----------------------------------------------------------------------------------

    def add(
        self,
        key: str,
        source: Source,
        *,
        start_after: int | None = None,
        sign: Signer | None = None,
        timeout_seconds: float = 10.0,
        retention_seconds: float = 12 * 3600,
        on_outcome: OutcomeHook | None = None,
    ) -> None:
        """Start delivering ``source`` under ``key``. A key that is already running is replaced
        (its stored cursor is kept): use this to change a delivery's settings."""
        if timeout_seconds <= 0 or retention_seconds < 0:
            raise ValueError("timeout_seconds must be positive and retention_seconds not negative")
        paused = False
        if key in self._workers:
            paused = self._workers[key].paused
            self.remove(key, forget=False)
        w = Delivery(
            key,
            source,
            self._positions,
            start_after,
            sign,
            timeout_seconds,
            retention_seconds,
            on_outcome,
            paused,
        )
        self._workers[key] = w
        if self._started:
            w.task = asyncio.get_running_loop().create_task(self._run(w), name=f"delivery {key}")

    def remove(self, key: str, *, forget: bool = True) -> None:
        """Stop a delivery. ``forget`` drops its stored cursor and dead letters (the consumer is
        gone); otherwise its cursor is saved and a later ``add`` resumes from it."""
        w = self._workers.pop(key, None)
        if w is None and not forget:
            return
        prior = self._retiring.get(key)
        task = asyncio.get_running_loop().create_task(self._retire(key, w, forget, prior))
        self._retiring[key] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._retiring.get(key) is t:
                del self._retiring[key]

        task.add_done_callback(done)

    def pause(self, key: str) -> None:
        """Stop sending (an attempt in flight finishes); the cursor is kept."""
        w = self._worker(key)
        w.paused = True
        w.control.set()
        w.wake.set()

    def resume(self, key: str) -> None:
        w = self._worker(key)
        w.paused = False
        w.control.set()
        w.wake.set()

    def notify(self) -> None:
        """New items may exist: wake idle workers (called on every committed batch and alert)."""
        for w in self._workers.values():
            w.wake.set()

    def delivery(self, key: str) -> Delivery:
        """The delivery (a durable consumer) under ``key``; ``errors.NotFound`` if none."""
        return self._worker(key)

    def __contains__(self, key: object) -> bool:
        return key in self._workers

    def keys(self) -> list[str]:
        return list(self._workers)

    def stats(self, key: str) -> DeliveryStats:
        w = self._worker(key)
        horizon = time.monotonic() - WINDOW_SECONDS
        recent = [entry for entry in w.window if entry[0] >= horizon]
        latencies = [ms for _, ms, _ in recent if ms is not None]
        return replace(
            w.stats,
            cursor=w.cursor if w.cursor is not None else w.stats.cursor,
            pending_hint=w.pending,
            latency_ms_p50=percentile(latencies, 0.5),
            latency_ms_p99=percentile(latencies, 0.99),
            paused=w.paused,
            recent_delivered=sum(1 for *_, ok in recent if ok),
            recent_failed=sum(1 for *_, ok in recent if not ok),
        )

    async def dead_letters(self, key: str, limit: int = 100) -> list[dict[str, Any]]:
        """The key's dead letters, newest first: cursor, method, url, headers, body (bytes),
        born_ms, failed_ms, attempts, last_status, last_error."""
        return await self._positions.dead_letters(key, limit)

    async def cursor(self, key: str) -> int | None:
        """The key's persisted cursor (None if it has none)."""
        return await self._positions.load(key)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._client = outbound_client(allow_private=lambda: self.allow_private_targets)
        self._started = True
        loop = asyncio.get_running_loop()
        for w in self._workers.values():
            w.task = loop.create_task(self._run(w), name=f"delivery {w.key}")

    async def stop(self) -> None:
        """Stop every worker (an attempt in flight is abandoned: it is re-sent after a restart)
        and save their cursors. The workers stay registered; ``start`` runs them again."""
        if not self._started:
            return
        self._started = False
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*list(self._retiring.values()), return_exceptions=True)
        for w in self._workers.values():
            w.task = None
            await self._flush(w)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the worker -------------------------------------------------------------------------------

    def _worker(self, key: str) -> Delivery:
        w = self._workers.get(key)
        if w is None:
            raise NotFound(f"no delivery {key!r}")
        return w

    async def _retire(
        self, key: str, w: Delivery | None, forget: bool, prior: asyncio.Task[None] | None
    ) -> None:
        if prior is not None:
            await asyncio.gather(prior, return_exceptions=True)
        if w is not None and w.task is not None:
            # An attempt in flight is let finish (it has its own timeout): cancelled after the
            # target got the item but before its answer moved the cursor, the item would be
            # sent again by the worker that replaces this one (every edit of a channel
            # replaces its deliveries' workers).
            w.stopping = True
            w.control.set()
            w.wake.set()
            await asyncio.wait({w.task}, timeout=w.timeout + 1.0)
            w.task.cancel()
            await asyncio.gather(w.task, return_exceptions=True)
        try:
            if forget:
                await self._positions.forget(key)
            elif w is not None:
                await self._flush(w)
        except Exception:
            log.exception("delivery %s: could not save its state on removal", key)

    def _schedule(self) -> Iterator[float]:
        return delays(first=self._retry_first, cap=self._retry_max)

    async def _run(self, w: Delivery) -> None:
        prior = self._retiring.get(w.key)
        if prior is not None:
            await asyncio.gather(prior, return_exceptions=True)
        schedule: Iterator[float] | None = None
        while not w.stopping:
            try:
                if w.cursor is None:
                    await self._load(w)
                await self._step(w)
                schedule = None
            except _RetryLater as exc:
                schedule = schedule or self._schedule()
                await self._sleep(w, next_delay(schedule, exc.after))
            except Exception as exc:
                log.exception("delivery %s: unexpected failure; retrying", w.key)
                w.stats.last_error = f"internal error: {exc!r}"
                schedule = schedule or self._schedule()
                await self._sleep(w, next(schedule))

    async def _load(self, w: Delivery) -> None:
        stored = await w.load()
        w.stats.cursor = stored
        w.flushed_at = time.monotonic()

    async def _step(self, w: Delivery) -> None:
        """Fetch after the cursor and deliver what comes, until idle, paused or a failure that
        must wait (``_RetryLater``)."""
        while w.paused and not w.stopping:
            await self._flush(w)
            w.control.clear()
            if w.paused and not w.stopping:
                await w.control.wait()
        if w.stopping:
            return
        assert w.cursor is not None
        w.wake.clear()
        try:
            fetched = await w.source.fetch(w.cursor, FETCH_LIMIT)
        except Exception as exc:
            log.warning("delivery %s: its source failed: %r", w.key, exc)
            w.stats.last_error = f"source failed: {exc!r}"
            raise _RetryLater(None) from exc
        items = _ascending(fetched, w.cursor, w.key)
        w.pending = len(items)
        if not items:
            await self._flush(w)
            if not w.paused and not w.stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll):
                        await w.wake.wait()
            return
        for item in items:
            attempt = 0
            schedule: Iterator[float] | None = None
            while True:
                if w.paused or w.stopping:
                    return  # the rest is fetched again on resume (or by the next worker)
                attempt += 1
                outcome, wait = await self._attempt(w, item, attempt)
                if outcome.delivered or outcome.dead_lettered:
                    break
                schedule = schedule or self._schedule()
                await self._sleep(w, next_delay(schedule, wait))
            w.pending -= 1
            if outcome.delivered:
                w.cursor = item.cursor
                w.unsaved += 1
                if w.unsaved >= FLUSH_EVERY or time.monotonic() - w.flushed_at >= FLUSH_SECONDS:
                    await self._flush(w)

    async def _sleep(self, w: Delivery, seconds: float) -> None:
        """Wait before a retry; pause, resume and removal cut it short."""
        w.control.clear()
        if w.paused or w.stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await w.control.wait()

    async def _attempt(self, w: Delivery, item: Item, attempt: int) -> tuple[Outcome, float | None]:
        """One try at ``item``: its outcome (dead-lettered when it failed and is too old), and
        the receiver's Retry-After in seconds, if any."""
        status: int | None = None
        error: str | None = None
        wait: float | None = None
        latency: float | None = None
        try:
            headers = httpx.Headers(item.headers)
            if "content-type" not in headers:
                headers["Content-Type"] = "application/json"
            if w.sign is not None:
                headers.update(w.sign(item))
            client = self._client
            if client is None:
                raise RuntimeError("deliveries are not started")
            started = time.perf_counter()
            async with (
                asyncio.timeout(w.timeout),  # the whole exchange, not each phase
                client.stream(
                    item.method,
                    item.url,
                    content=item.body,
                    headers=headers,
                    timeout=httpx.Timeout(w.timeout),
                ) as resp,
            ):
                status = resp.status_code
                if not 200 <= status < 300:
                    wait = retry_after(resp.headers.get("Retry-After"))
                    error = _status_reason(status)  # never the receiver's body
            latency = (time.perf_counter() - started) * 1000
        except Invalid as exc:
            error = exc.message
        except (httpx.TimeoutException, TimeoutError):
            status = None
            error = f"no response within {w.timeout:g} s"
        except httpx.ConnectError as exc:  # the reason is the local OS's (refused, ...)
            error = f"ConnectError: {exc}" if str(exc) else "ConnectError"
        except httpx.HTTPError as exc:  # others may quote what the receiver sent: name only
            error = type(exc).__name__
        except Exception as exc:  # a signer's bug must not kill the worker
            error = f"{type(exc).__name__}: {exc}"
        delivered = error is None
        dead = False
        now = _now_ms()
        if not delivered and now - item.born_ms > w.retention * 1000:
            await w.positions.dead_letter(
                w.key,
                cursor=item.cursor,
                method=item.method,
                url=item.url,
                headers=item.headers,
                body=item.body,
                born_ms=item.born_ms,
                now_ms=now,
                attempts=attempt,
                last_status=status,
                last_error=error,
            )
            dead = True
            w.cursor = w.saved = item.cursor
            w.unsaved = 0
        outcome = Outcome(attempt, status, error, latency or 0.0, delivered, dead)
        self._record(w, outcome, latency, now)
        if w.on_outcome is not None:
            try:
                result = w.on_outcome(item, outcome)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("delivery %s: its on_outcome hook failed", w.key)
        return outcome, wait

    def _record(self, w: Delivery, o: Outcome, latency: float | None, now_ms: int) -> None:
        s = w.stats
        s.last_status = o.status
        w.window.append((time.monotonic(), latency, o.delivered))
        if o.delivered:
            s.delivered += 1
            s.last_success_ms = now_ms
            label = "delivered"
        else:
            s.failed_attempts += 1
            s.last_error = o.error
            label = "dead_lettered" if o.dead_lettered else "failed"
            if o.dead_lettered:
                s.dead_lettered += 1
                log.warning("delivery %s: dead-lettered an item: %s", w.key, o.error)
        if self._metrics is not None:
            self._metrics.outbound_attempts.labels(label).inc()
            if latency is not None:
                self._metrics.outbound_seconds.observe(latency / 1000)

    async def _flush(self, w: Delivery) -> None:
        if w.cursor is None or w.cursor == w.saved:
            return
        await w.save()
        w.unsaved = 0
        w.flushed_at = time.monotonic()


class _RetryLater(Exception):
    def __init__(self, after: float | None) -> None:
        super().__init__("retry later")
        self.after = after


def _ascending(items: Sequence[Item], after: int, key: str) -> list[Item]:
    """The items after ``after`` in strictly ascending cursor order (a misbehaving source is
    logged, and its out-of-order tail is fetched again next time)."""
    out: list[Item] = []
    last = after
    for item in items:
        if item.cursor <= last:
            log.warning(
                "delivery %s: its source gave cursor %d after %d; ignoring the rest of the page",
                key,
                item.cursor,
                last,
            )
            break
        out.append(item)
        last = item.cursor
    return out


def _status_reason(status: int) -> str:
    """A failed reply as outcomes and stats show it: the status and its standard phrase. The
    receiver's body is never read into them: the project's users see outcomes, and a target
    inside the network must not be readable through them."""
    phrase = httpx.codes.get_reason_phrase(status)
    return f"HTTP {status} {phrase}" if phrase else f"HTTP {status}"


def _now_ms() -> int:
    return int(time.time() * 1000)
