"""The MQTT bridge: observations from a broker, acknowledged only once committed.

    broker --PUBLISH (QoS 1)--> paho thread --inbox--> batch task: decode (mqtt_codec),
                                                       ingest per project (one commit),
    broker <--PUBACK------------------------------------ then ack every message of the batch

* **Nothing acknowledged is lost.** The session is persistent (clean session off, a stable
  client id) and acknowledgement is manual (paho-mqtt's ``manual_ack``): a message's PUBACK is
  sent after the batch holding it is committed, in the order the messages came. A process
  killed before that gets the message again from the broker at its next connect, and ingest's
  idempotency (same device, variable, set, time and value: a duplicate) makes that harmless.
* **Timed on arrival, idempotently.** A message without a time gets its arrival time; the
  arrival is written to a small journal (``ArrivalJournal``, in the data folder) before the
  batch is committed, so a redelivered copy (the broker's DUP flag, same packet id, topic and
  payload) gets the same time and is recognised as a duplicate.
* **Batches.** Messages that arrived while the previous batch was being committed go in the
  next one (up to ``mqtt_batch_messages``): one ingest call per project per batch.
* **Bad messages** (not JSON, unknown project, device or variable, a wrong value or time, a
  conflict with a stored value) are acknowledged too, so they never block the session; each is
  counted (``streamgauge_mqtt_messages_total{outcome="rejected",reason=...}``), logged once per
  reason per ``mqtt_error_log_seconds``, and published with its reason to
  ``PREFIX/{project}/errors``.
* **Cluster mode**: with a shared group (``mqtt_shared_group``, or a cluster name) the
  subscriptions are ``$share/GROUP/...``: the broker gives each message to one node.

Authorization is the broker's: whoever may publish under the prefix writes to every project
(the bridge ingests as the deployment does; restrict publishers with the broker's ACLs).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import secrets
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from streamgauge.config import Settings
from streamgauge.core.engine import Engine
from streamgauge.core.ingest import Row
from streamgauge.domain.errors import Conflict, Invalid, StreamgaugeError, Unavailable
from streamgauge.ports import mqtt_codec as codec

log = logging.getLogger("streamgauge.mqtt")
JOURNAL_KEEP = 4096  # arrival entries kept when the journal is compacted
JOURNAL_MAX = 4 * JOURNAL_KEEP  # entries written before it is compacted
SUBSCRIBE_WAIT_SECONDS = 10.0  # start() waits this long for the first subscription


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_url(url: str) -> BrokerURL:
    """``mqtt://[user:password@]host[:port]`` or ``mqtts://...``; ValueError naming the fault."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r}: the scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} names no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"MQTT URL {url!r}: {exc}") from None
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerURL(parts.hostname, port, tls, user, password)


def client_id(settings: Settings) -> str:
    """The session's client id: the setting, or one generated once and kept in the data folder."""
    if settings.mqtt_client_id:
        return settings.mqtt_client_id
    path = settings.data / "mqtt-client-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    new = "streamgauge-" + secrets.token_hex(6)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


def shared_group(settings: Settings) -> str | None:
    if settings.mqtt_shared_group:
        return settings.mqtt_shared_group
    cluster = getattr(settings, "cluster", None) or os.environ.get("STREAMGAUGE_CLUSTER")
    return "streamgauge" if cluster else None


class ArrivalJournal:
    """Arrival times of messages timed on arrival, by (packet id, digest of topic and payload),
    written before their batch is committed: a redelivered copy gets the same time. An
    append-only file of JSON lines, compacted to the newest ``JOURNAL_KEEP`` entries (the
    broker redelivers only unacknowledged messages, a few batches at most)."""

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.times: dict[tuple[int, str], int] = {}
        self._written = 0
        try:
            with path.open("rb") as f:
                for line in f:
                    try:
                        mid, digest, ms = orjson.loads(line)
                    except (orjson.JSONDecodeError, ValueError, TypeError):
                        continue  # a line cut by a crash
                    self.times[(int(mid), str(digest))] = int(ms)
        except FileNotFoundError:
            pass
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    @staticmethod
    def digest(topic: str, payload: bytes) -> str:
        return hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=12).hexdigest()

    def get(self, mid: int, digest: str) -> int | None:
        return self.times.get((mid, digest))

    def record(self, entries: Iterable[tuple[int, str, int]]) -> None:
        lines = []
        for mid, digest, ms in entries:
            self.times.pop((mid, digest), None)  # re-inserted last: the dict stays in age order
            self.times[(mid, digest)] = ms
            lines.append(orjson.dumps([mid, digest, ms]) + b"\n")
        if not lines:
            return
        os.write(self._fd, b"".join(lines))
        if self.sync:
            os.fsync(self._fd)
        self._written += len(lines)
        if self._written >= JOURNAL_MAX:
            self._compact()

    def _compact(self) -> None:
        keep = list(self.times.items())[-JOURNAL_KEEP:]
        self.times = dict(keep)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(orjson.dumps([m, d, ms]) + b"\n" for (m, d), ms in keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._written = 0

    def close(self) -> None:
        os.close(self._fd)


class RejectLog:
    """Logs a rejection once per reason per ``interval`` seconds, with how many were not
    logged since (``clock`` is injectable for tests)."""

    def __init__(self, interval: float, clock: Any = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: collections.Counter[str] = collections.Counter()

    def __call__(self, reason: str, topic: str, message: str) -> bool:
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._quiet[reason] += 1
            return False
        self._last[reason] = now
        more = self._quiet.pop(reason, 0)
        also = f" ({more} more since the last report)" if more else ""
        log.warning("MQTT message on %s rejected (%s): %s%s", topic, reason, message, also)
        return True


@dataclass(slots=True)
class _Msg:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    arrival_ms: int


class MqttBridge:
    """Subscribes to the broker and ingests what arrives (see the module docstring). Owns its
    paho client (network I/O in paho's thread) and one batch task on the engine's loop. The
    app's lifespan starts it after the engine and stops it before."""

    def __init__(self, engine: Engine, url: str) -> None:
        s = engine.settings
        self.engine = engine
        self.broker = parse_url(url)
        self.prefix = s.mqtt_topic_prefix
        self.group = shared_group(s)
        self.client_id = client_id(s)
        self.rejects = RejectLog(s.mqtt_error_log_seconds)
        self.journal = ArrivalJournal(s.data / "mqtt-arrivals", sync=s.durability == "full")
        self._inbox: collections.deque[_Msg] = collections.deque()
        self._last_arrival: dict[str, int] = {}  # topic -> the last arrival time given
        self._signalled = False
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        b = self.broker
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if b.tls:
            ca = self.engine.settings.mqtt_ca_file
            client.tls_set(ca_certs=str(ca) if ca else None, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, wait: float = SUBSCRIBE_WAIT_SECONDS) -> None:
        """Connect (in paho's thread, reconnecting for ever) and wait up to ``wait`` seconds for
        the subscriptions, so a server that answers /healthz is subscribed when the broker is
        up; a broker that is down is logged and connected to when it comes up."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mqtt-bridge")
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self.client.loop_start()
        try:
            await asyncio.wait_for(self._subscribed.wait(), wait)
        except TimeoutError:
            log.warning(
                "MQTT broker %s:%d: not subscribed after %.0f s; retrying in the background",
                self.broker.host,
                self.broker.port,
                wait,
            )

    async def stop(self) -> None:
        """Finish the batch in progress (committed and acknowledged), then disconnect: what was
        received but not yet in a batch is not acknowledged, so the broker sends it again."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await asyncio.to_thread(self._disconnect)
        self.journal.close()
        self.engine.metrics.mqtt_connected.set(0)

    def _disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (paho's thread) ---------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        if rc.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.broker.host, rc)
            return
        self.engine.metrics.mqtt_connected.set(1)
        topics = [(t, 1) for t in codec.subscriptions(self.prefix, self.group)]
        client.subscribe(topics)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        self.engine.metrics.mqtt_connected.set(0)
        if not self._stopping:
            log.warning("MQTT broker %s disconnected (%s); reconnecting", self.broker.host, rc)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        failed = [c for c in codes if c.is_failure]
        if failed:
            log.error("MQTT broker %s refused a subscription: %s", self.broker.host, failed)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        arrival = time.time_ns() // 1_000_000
        item = _Msg(msg.topic, payload, msg.mid, msg.qos, bool(msg.dup), arrival)
        self._inbox.append(item)
        with self._lock:
            if self._signalled or self._loop is None:
                return
            self._signalled = True
        self._loop.call_soon_threadsafe(self._wake.set)

    # -- the batch task (the event loop) --------------------------------------------------------

    async def _run(self) -> None:
        limit = self.engine.settings.mqtt_batch_messages
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                self._signalled = False
            while self._inbox and not self._stopping:
                batch = [self._inbox.popleft() for _ in range(min(limit, len(self._inbox)))]
                try:
                    await self.ingest(batch)
                except Unavailable:
                    return  # the engine is stopping: nothing more is acknowledged
                except Exception:  # never a crash: the batch stays unacknowledged
                    log.exception("MQTT batch of %d messages failed; not acknowledged", len(batch))

    async def ingest(self, batch: list[_Msg]) -> None:
        """Decode, ingest per project, then acknowledge every message of ``batch`` in order."""
        started = time.perf_counter()
        metrics = self.engine.metrics
        s = self.engine.settings
        rejected: dict[int, codec.Rejected] = {}
        groups: dict[str, list[tuple[int, list[Row]]]] = {}
        arrivals: list[tuple[int, str, int]] = []
        for i, m in enumerate(batch):
            if len(m.payload) > s.max_body_bytes:
                project = (codec.split(m.topic, self.prefix) or (None,))[0]
                rejected[i] = codec.Rejected(
                    project, codec.TOO_LARGE, f"{len(m.payload)} bytes; at most {s.max_body_bytes}"
                )
                continue
            # Arrival times of one topic (one series) strictly increase: a backlog the broker
            # delivers in one burst must not put two values at one time.
            arrival = max(m.arrival_ms, self._last_arrival.get(m.topic, m.arrival_ms - 1) + 1)
            digest = ""
            known = None
            if m.qos > 0:
                digest = self.journal.digest(m.topic, m.payload)
                known = self.journal.get(m.mid, digest) if m.dup else None
            got = codec.decode(
                m.topic,
                m.payload,
                prefix=self.prefix,
                arrival_ms=arrival if known is None else known,
                max_errors=5,
            )
            if isinstance(got, codec.Rejected):
                rejected[i] = got
                continue
            if got.arrival and known is None:
                self._last_arrival[m.topic] = arrival
                if m.qos > 0:
                    arrivals.append((m.mid, digest, arrival))
            groups.setdefault(got.project, []).append((i, got.rows))
        self.journal.record(arrivals)  # before the commit: a redelivery gets the same time
        for project_id, items in groups.items():
            await self._ingest_project(project_id, items, rejected)
        for m in batch:  # in the order they came, as MQTT wants
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)
        ok = len(batch) - len(rejected)
        if ok:
            metrics.mqtt_messages.labels("ingested", "ok").inc(ok)
        metrics.mqtt_batches.inc()
        for i in sorted(rejected):
            self._report(batch[i], rejected[i])
        log.debug("MQTT batch of %d in %.1f ms", len(batch), (time.perf_counter() - started) * 1e3)

    async def _ingest_project(
        self,
        project_id: str,
        items: list[tuple[int, list[Row]]],
        rejected: dict[int, codec.Rejected],
    ) -> None:
        project = self.engine.registry.projects.get(project_id)
        if project is None:
            for i, _ in items:
                rejected[i] = codec.Rejected(
                    project_id, codec.UNKNOWN_PROJECT, f"no project {project_id!r}"
                )
            return
        while items:
            rows: list[Row] = []
            origin: list[int] = []  # the position in ``items`` of each row
            for k, (_, message_rows) in enumerate(items):
                rows.extend(message_rows)
                origin.extend([k] * len(message_rows))
            try:
                await self.engine.ingest_rows(project, rows)
                return
            except Unavailable:
                raise
            except (Invalid, Conflict) as exc:
                bad: dict[int, codec.Rejected] = {}
                for d in exc.details:
                    index = d.get("index")
                    if not isinstance(index, int) or not 0 <= index < len(origin):
                        continue
                    k = origin[index]
                    if k in bad:
                        continue
                    reason = (
                        codec.CONFLICT
                        if isinstance(exc, Conflict)
                        else codec.FIELD_REASONS.get(str(d.get("field")), codec.BAD_ROWS)
                    )
                    row = rows[index]
                    what = f"{row.device}/{row.variable}: {d.get('reason', exc.message)}"
                    bad[k] = codec.Rejected(project_id, reason, what)
                if not bad:  # no row named: every message of the group is refused
                    bad = {
                        k: codec.Rejected(project_id, codec.BAD_ROWS, codec.describe(exc))
                        for k in range(len(items))
                    }
            except StreamgaugeError as exc:
                bad = {
                    k: codec.Rejected(project_id, codec.BAD_ROWS, codec.describe(exc))
                    for k in range(len(items))
                }
            for k, r in bad.items():
                rejected[items[k][0]] = r
            items = [item for k, item in enumerate(items) if k not in bad]

    def _report(self, m: _Msg, r: codec.Rejected) -> None:
        self.engine.metrics.mqtt_messages.labels("rejected", r.reason).inc()
        self.rejects(r.reason, m.topic, r.message)
        if r.project is None:
            return
        report = {
            "topic": m.topic,
            "reason": r.reason,
            "message": r.message,
            "payload": m.payload[:512].decode("utf-8", "replace"),
            "received": datetime.fromtimestamp(m.arrival_ms / 1000, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        self.client.publish(codec.errors_topic(self.prefix, r.project), orjson.dumps(report), qos=1)
