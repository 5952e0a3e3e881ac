"""The bus on NATS JetStream (``--bus nats://HOST:PORT --cluster NAME``).

Everything a cluster keeps on the bus is named after it, so two clusters can share one NATS
server: the stream ``SG_<cluster>`` holds the subjects ``sg.<cluster>.batch`` and
``sg.<cluster>.meta``. A message's id (``Nats-Msg-Id``) is its kind and first cursor, so a
republish of the same run inside the duplicate window is dropped by JetStream itself. The stream
keeps messages for ``retention_seconds`` only: it is a fan-out channel, not the record (that is
the store; a node further behind than that reads the store).

Each node reads with an ordered push consumer starting at new messages: JetStream delivers in
stream order, and the client recreates the consumer after a gap. After a reconnect the node
sets the stream up again (the server may have lost it) and subscribes anew from new messages
on (``NatsBus._rejoin``). Delivery may still skip (a reconnect, a node killed before its
publish): the receiver completes what it hears from the store (``core.sequencer``), and
``on_reconnect`` tells it to look once the new subscription is in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api as js_api

from streamgauge.bus.api import BusMessage, BusUnavailable, Handler, Kind

log = logging.getLogger("streamgauge.bus")

CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
H_FIRST, H_LAST, H_ORIGIN = "Sg-First", "Sg-Last", "Sg-Origin"


def default_node_id() -> str:
    """A node's id on the bus (its messages' origin, the holder named in a lease): the host and
    process, so an operator reading the lease bucket knows which node does the work, and a
    random part, unique across restarts."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def check_cluster_name(name: str) -> str:
    if not CLUSTER_NAME.match(name):
        raise ValueError(
            f"cluster name {name!r}: use 1 to 64 letters, digits, '_' or '-' "
            "(it names the NATS stream and subjects)"
        )
    return name


class NatsBus:
    def __init__(
        self,
        url: str,
        cluster: str,
        *,
        node_id: str | None = None,
        retention_seconds: float = 600.0,
        connect_timeout: float = 5.0,
        publish_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.cluster = check_cluster_name(cluster)
        self.node_id = node_id or default_node_id()
        self.stream = f"SG_{cluster}"
        self.prefix = f"sg.{cluster}"
        self.retention_seconds = retention_seconds
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._nc: NatsClient | None = None
        self._js: Any = None
        self._sub: Any = None
        self._handler: Handler | None = None
        self._on_reconnect: Callable[[], None] = lambda: None
        self._rejoin_lock = asyncio.Lock()
        self._rejoining: asyncio.Task[None] | None = None
        self.published = 0
        self.publish_failures = 0
        self.received = 0
        self.rejoins = 0  # times the stream and subscription were set up again

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        self._handler = handler
        self._on_reconnect = on_reconnect

        async def reconnected() -> None:
            log.warning("bus: reconnected to %s", self.url)
            self._rejoin_soon()

        async def disconnected() -> None:
            log.warning("bus: disconnected from %s", self.url)

        async def error(e: Exception) -> None:
            log.debug("bus: %s", e)

        try:
            self._nc = await asyncio.wait_for(
                self._connect(reconnected, disconnected, error), 2 * self.connect_timeout + 1
            )
            self._js = self._nc.jetstream(timeout=self.publish_timeout)
            await self._ensure_stream()
            self._sub = await self._subscribe()
        except (TimeoutError, OSError, nats.errors.Error) as e:
            await self._close_quietly()
            raise BusUnavailable(f"NATS at {self.url}: {e or type(e).__name__}") from None

    async def _subscribe(self) -> Any:
        return await self._js.subscribe(
            f"{self.prefix}.*",
            stream=self.stream,
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.NEW,
            idle_heartbeat=2.0,
        )

    def _rejoin_soon(self) -> None:
        """Set the stream and the subscription up again (once at a time), then tell the
        receiver to look at the store."""
        if self._rejoining is None or self._rejoining.done():
            self._rejoining = asyncio.get_running_loop().create_task(self._rejoin())

    async def _rejoin(self) -> None:
        """After a reconnect (or a publish nobody stored): the server may have restarted
        without its store, so the stream is created again if it is gone, and the ordered
        consumer is replaced by a new one from new messages on (the old one lived on the old
        server, and its stream position means nothing in a new stream). Then the receiver
        looks at the store's head (``on_reconnect``): whatever was committed while the bus was
        away, or before the new subscription, is read from the store."""
        async with self._rejoin_lock:
            delay = 0.25
            while self.connected and self._js is not None:
                try:
                    await self._ensure_stream()
                    old, self._sub = self._sub, None
                    if old is not None:
                        with contextlib.suppress(Exception):
                            await old.unsubscribe()
                    self._sub = await self._subscribe()
                    self.rejoins += 1
                    break
                except (TimeoutError, OSError, nats.errors.Error) as e:
                    # JetStream may need a moment after the server came back.
                    log.warning("bus: setting the stream up again failed (%s); retrying", e)
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
            self._on_reconnect()

    async def _connect(self, reconnected: Any, disconnected: Any, error: Any) -> NatsClient:
        return await nats.connect(
            servers=[self.url],
            name=f"streamgauge-{self.cluster}-{self.node_id}",
            connect_timeout=self.connect_timeout,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            reconnected_cb=reconnected,
            disconnected_cb=disconnected,
            error_cb=error,
        )

    async def _ensure_stream(self) -> None:
        config = js_api.StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.batch", f"{self.prefix}.meta"],
            storage=js_api.StorageType.FILE,
            max_age=self.retention_seconds,
            duplicate_window=min(120.0, self.retention_seconds),
            discard=js_api.DiscardPolicy.OLD,
        )
        try:
            await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self._js.update_stream(config)  # made by another node with other limits

    async def _on_msg(self, msg: Msg) -> None:
        hdr = msg.headers or {}
        try:
            kind_s = msg.subject.rsplit(".", 1)[1]
            first, last = int(hdr[H_FIRST]), int(hdr[H_LAST])
        except (KeyError, ValueError, IndexError):
            log.warning("bus: a message without its cursors on %s, ignored", msg.subject)
            return
        if kind_s not in ("batch", "meta"):
            return
        kind: Kind = "batch" if kind_s == "batch" else "meta"
        self.received += 1
        if self._handler is not None:
            try:
                await self._handler(BusMessage(kind, first, last, msg.data, hdr.get(H_ORIGIN, "")))
            except Exception:
                log.exception("bus: handling %s %d..%d failed", kind, first, last)

    async def publish(self, kind: Kind, first: int, last: int, payload: bytes) -> bool:
        if self._js is None or not self.connected:
            self.publish_failures += 1
            return False
        headers = {
            "Nats-Msg-Id": f"{kind}:{first}",
            H_FIRST: str(first),
            H_LAST: str(last),
            H_ORIGIN: self.node_id,
        }
        try:
            await self._js.publish(f"{self.prefix}.{kind}", payload, headers=headers)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            self.publish_failures += 1
            if isinstance(e, nats.errors.NoRespondersError):
                self._rejoin_soon()  # connected, but no stream took it: it is gone
            log.warning(
                "bus: publishing %s %d..%d failed (%s); others read it from the store",
                kind,
                first,
                last,
                e or type(e).__name__,
            )
            return False
        self.published += 1
        return True

    async def close(self) -> None:
        await self._close_quietly()

    async def _close_quietly(self) -> None:
        if self._rejoining is not None:
            self._rejoining.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rejoining
            self._rejoining = None
        nc, self._nc = self._nc, None
        self._js = None
        if nc is None:
            return
        try:
            if self._sub is not None:
                await self._sub.unsubscribe()
        except Exception:  # closing a broken connection
            pass
        self._sub = None
        try:
            await nc.drain()
        except Exception:
            try:
                await nc.close()
            except Exception:
                pass


async def delete_cluster_stream(url: str, cluster: str) -> None:
    """Remove everything a cluster keeps on the bus (tests, and decommissioning a cluster)."""

    async def quiet(e: Exception) -> None:
        log.debug("bus: %s", e)

    nc = await asyncio.wait_for(
        nats.connect(
            servers=[url],
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=quiet,
        ),
        10,
    )
    try:
        js = nc.jetstream()
        name = check_cluster_name(cluster)
        for stream in (f"SG_{name}", f"KV_SG_{name}_leases"):
            try:
                await js.delete_stream(stream)
            except nats.js.errors.NotFoundError:
                pass
    finally:
        await nc.close()


class NatsLeases:
    """Leases in a JetStream key-value bucket (``SG_<cluster>_leases``; core/leases.Leases): a
    key per lease holding its holder's id. The bucket's TTL is the lease period: a holder
    renews by writing its key again (compare-and-set on the revision it read), a key not
    renewed expires, and ``create`` (which fails if the key exists) takes it over."""

    def __init__(self, bus: NatsBus, ttl: float) -> None:
        self._bus = bus
        self.ttl = ttl
        self.bucket = f"SG_{bus.cluster}_leases"
        self._kv: Any = None

    async def _store(self) -> Any:
        if self._kv is None:
            js = self._bus._js
            if js is None:
                raise BusUnavailable("the bus is not connected")
            try:
                self._kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=self.bucket, ttl=self.ttl, history=1)
        return self._kv

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        try:
            return await self._acquire(name, holder)
        except (TimeoutError, OSError, nats.errors.Error):
            # The bucket may be gone (a server restarted without its store): look it up, or
            # create it, again next time.
            self._kv = None
            raise

    async def _acquire(self, name: str, holder: str) -> bool:
        kv = await self._store()
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:  # free, lapsed or released
            try:
                await kv.create(name, holder.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # another node took it this instant
            return True
        if entry.value is None or entry.value.decode() != holder:
            return False
        try:
            await kv.update(name, holder.encode(), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def release(self, name: str, holder: str) -> None:
        kv = await self._store()
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return
        if entry.value is not None and entry.value.decode() == holder:
            await kv.delete(name, last=entry.revision)
