"""Settings, read once from the environment (prefix ``STREAMGAUGE_``) at the edge.

Every setting has a description; ``docs/configuration.md`` lists them all and a test keeps the two
in step. Limits are bounded by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DB_NAME = "streamgauge.db"  # the embedded database, in the data directory
INDEX_NAME = "streamgauge-index.db"  # its (series, time) index (store.files.index_path)


class Settings(BaseSettings):
    """streamgauge settings. Environment variables: ``STREAMGAUGE_<NAME>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="STREAMGAUGE_", extra="ignore")

    # Storage
    data: Path = Field(
        default=Path("streamgauge-data"),
        description="Data folder (SQLite database, generated admin token); created if missing.",
    )
    durability: Literal["normal", "full"] = Field(
        default="normal",
        description=(
            "SQLite synchronous mode. 'normal' (WAL): an acknowledged batch survives a killed "
            "process; 'full': it also survives power loss (fsync on every commit)."
        ),
    )
    index_chunk_rows: int = Field(
        default=65536,
        ge=1024,
        le=10_000_000,
        description=(
            "Observations per sealed chunk: the indexer thread adds the log's unindexed tail to "
            "the (series, time) index (streamgauge-index.db) once it holds 4,096 rows (or this "
            "many, if fewer) while live writes come, two chunks (131,072 rows at most) in a bulk "
            "load, so inserts never pay for it one row at a time."
        ),
    )

    # Processes (docs/workers.md)
    workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Processes serving the port in the embedded mode: the writer and WORKERS - 1 "
            "fan-out workers that serve the live streams, native and DT, and the push feed "
            "(a read-only engine each, following the writer's log); everything else is the "
            "writer's; /metrics, /healthz, the list of feed sessions and the auth-failure "
            "limit cover every process (docs/workers.md). Unset: the number of "
            "cores; 1: one process. The cluster mode (--store/--bus) runs one process per node "
            "(unset: 1; above 1 is refused)."
        ),
    )
    workers_feed: bool = Field(
        default=True,
        description=(
            "With --workers above 1: the push feed (/feed) is served by every process, each "
            "feed token's connections by one of them (a hash of the token). false: by the "
            "writer alone, its fan-out on one core (docs/workers.md)."
        ),
    )
    writer_subscribers: bool = Field(
        default=True,
        description=(
            "With --workers above 1: the writer process serves live subscribers too (the "
            "native and DT streams the kernel gives it, and with WORKERS_FEED its share of the "
            "feed tokens). false: the writer passes every live stream (and every feed token) "
            "to the fan-out workers and keeps its event loop for ingest and requests: "
            "acknowledgements do not wait for fan-out rounds (docs/workers.md)."
        ),
    )

    # Cluster mode (docs/cluster.md)
    bus: str | None = Field(
        default=None,
        description=(
            "The cluster's bus, NATS with JetStream (nats://HOST:PORT). With --store "
            "postgresql://..., several nodes serve one log; unset: one process."
        ),
    )
    cluster: str = Field(
        default="streamgauge",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description=(
            "The cluster's name: it names everything the cluster keeps on the bus (the NATS "
            "stream SG_<name> and subjects sg.<name>.*), so clusters can share one NATS server."
        ),
    )
    cluster_bus_retention_seconds: float = Field(
        default=600.0,
        gt=0,
        description=(
            "How long the bus keeps committed batches (a node further behind reads the store)."
        ),
    )
    cluster_head_check_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "How often a node compares what it handed on with the store's head (finds commits "
            "no message brought: a node killed between commit and publish, a bus outage)."
        ),
    )
    cluster_fill_grace_seconds: float = Field(
        default=0.05,
        ge=0,
        description=(
            "How long a node waits for the bus to bring missing cursors before reading them "
            "from the store."
        ),
    )
    cluster_fill_rows: int = Field(
        default=50_000, gt=0, description="Rows per store read when a node fills a gap."
    )
    cluster_lease_seconds: float = Field(
        default=6.0,
        ge=1.5,
        description=(
            "The work lease's period: alert rules, deadman clocks, deliveries and retention run "
            "on the node holding it; it is renewed every third of this, and another node takes "
            "it over once it lapses (a killed node's work moves within this plus a third)."
        ),
    )
    cluster_resume_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "How long a stream resuming from a cursor another node gave out waits for this node "
            "to hand that cursor on."
        ),
    )
    store: str | None = Field(
        default=None,
        pattern=r"^postgres(ql)?://",
        description=(
            "Where the log, metadata and every other table live: unset for the embedded SQLite "
            "database in the data folder, or a PostgreSQL URL "
            "(postgresql://USER@HOST:PORT/DB) shared by the nodes of a cluster; the nodes create "
            "and migrate its schema themselves."
        ),
    )
    store_connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "PostgreSQL store: how long a (re)connection may take before the store counts as "
            "unreachable (ingest then answers 503 with Retry-After)."
        ),
    )
    store_statement_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "PostgreSQL store: the longest a statement may run (also the longest an ingest waits "
            "for the cluster-wide commit lock) before it is cancelled and answered with 503."
        ),
    )

    token_key: str | None = Field(
        default=None,
        pattern=r"^([0-9A-Fa-f]{2}){32,}$",
        description=(
            "The key that signs access tokens and derives key secrets, as hex (at least 32 "
            "bytes: `openssl rand -hex 32`). Unset: a random key kept in the data folder "
            "(token-key); in the cluster mode (STREAMGAUGE_STORE set), one derived from the "
            "admin token, which every node shares. Set it to rotate keys without changing the "
            "admin token."
        ),
    )

    qc: bool = Field(
        default=True,
        description=(
            "Run quality control at ingest (flags stored with each observation). Off: every "
            "observation is stored with no flags (for comparison; not recommended)."
        ),
    )

    # Auth
    admin_token: str | None = Field(
        default=None,
        description=(
            "Bearer token of the deployment admin. If unset, one is generated, stored in the data "
            "folder (admin-token) and printed once."
        ),
    )
    admin_only_project_create: bool = Field(
        default=False,
        description="If true, only the deployment admin may create projects.",
    )
    auth_failure_limit: int = Field(
        default=10,
        ge=0,
        le=1_000_000,
        description=(
            "Failed key logins (HTTP Basic, the Tapis token endpoint: a wrong secret or an unknown "
            "key id) allowed per auth_failure_window_seconds for each key id and for each client "
            "address; past it key logins get 429 with Retry-After, without running argon2. "
            "0 turns the limit off."
        ),
    )
    auth_failure_window_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description=(
            "Window of auth_failure_limit: a blocked key id or address may try once more every "
            "window/limit seconds."
        ),
    )

    # Ingest limits
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest accepted request body of the ingest routes (native observations, Tapis "
            "measurements, DT publish) in bytes; larger bodies get 413."
        ),
    )
    max_metadata_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest accepted request body of every other route (projects, sites, devices, "
            "variables, channels, accounts, ...) in bytes; larger bodies get 413."
        ),
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description=(
            "Largest request line plus headers in bytes; a bigger request head gets 431 as "
            "soon as it passes the limit (before it is buffered whole)."
        ),
    )
    write_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description=(
            "A client that reads nothing of a response (a live stream, a download) for this "
            "many seconds while the server has data waiting for it is disconnected; other "
            "connections are not affected. 0 disables the timeout."
        ),
    )
    max_future_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "Observations timed more than this many seconds ahead of the server clock are rejected."
        ),
    )
    max_batch_errors: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="At most this many row errors are listed in a rejected batch's reply.",
    )

    # Streams
    keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Interval of keepalive lines/comments on idle live streams.",
    )
    subscriber_queue_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description=(
            "Bound of each subscriber's send queue. A subscriber that falls this far behind is "
            "closed with its resume cursor."
        ),
    )
    catchup_page_rows: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Rows read from the store per step when a stream catches up from a cursor.",
    )

    gc_thresholds: tuple[int, int, int] = Field(
        default=(5000, 20, 50),
        description=(
            "Python's garbage-collector thresholds while the server runs (gc.set_threshold; "
            "Python's own are 700,10,10). Full collections pause every stream for as long as "
            "they walk the heap; these make them about twenty times rarer (measured: 1,000 "
            "filtered streams at 10,000 obs/s, p99 from 174 ms to 56 ms). As a JSON list."
        ),
    )

    switch_interval_ms: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description=(
            "Python's thread switch interval while the server runs (sys.setswitchinterval, in "
            "milliseconds; Python's own is 5). The storage writer thread gives up the GIL "
            "around every SQLite call and fsync; while the event loop is busy, each time it "
            "waits up to this long to get it back, so this bounds how much a busy loop slows "
            "ingest commits (measured: 1,000 feed sessions at 10,000 obs/s, ingest "
            "acknowledgement p50 from 334 ms at 5 ms to 136 ms at 0.5 ms)."
        ),
    )

    # The push feed (Synoptic-compatible WebSocket)
    feed_session_retention_hours: float = Field(
        default=72.0,
        gt=0,
        description=(
            "Time to live of a detached feed session: it can be resumed this long after it "
            "was last connected, and is deleted within a minute after that."
        ),
    )
    feed_sessions_per_token: int = Field(
        default=2000,
        ge=1,
        le=1_000_000,
        description=(
            "Most feed sessions one feed token keeps, connected or resumable. A new session "
            "beyond it evicts the token's least recently used detached sessions; when all "
            "are connected, the new connection gets a failed auth and close code 1008."
        ),
    )
    feed_period_max_hours: float = Field(
        default=48.0,
        gt=0,
        description="How far back a feed's start/end period and rewind may reach.",
    )
    feed_message_rows: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most observations in one feed data message.",
    )
    ws_per_message_deflate: bool = Field(
        default=False,
        description=(
            "Offer WebSocket per-message compression (permessage-deflate) to clients that ask. "
            "Off by default: the feed sends each message to each session separately, so "
            "compression would cost a zlib pass per message per session."
        ),
    )
    ws_ping_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Interval of WebSocket protocol pings on feed connections (a peer that "
        "does not answer within the same interval is dropped; its session stays resumable).",
    )

    # Time series (retention)
    retention_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        le=60,
        description=(
            "How often the retention pass removes observations older than their project's or "
            "variable's retention_days (so they are gone within this interval plus one pass)."
        ),
    )
    retention_step_rows: int = Field(
        default=20_000,
        ge=100,
        le=10_000_000,
        description=(
            "Most rows one retention step removes in one write transaction; ingest batches "
            "queued meanwhile commit between steps, so a large removal never holds the writer "
            "for long."
        ),
    )

    # Reads
    page_limit_default: int = Field(
        default=1000, ge=1, description="Default page size of history and list reads."
    )
    page_limit_max: int = Field(
        default=100_000, ge=1, description="Largest page size a client may ask for."
    )
    history_scan_rows: int = Field(
        default=50_000,
        ge=100,
        le=100_000_000,
        description=(
            "A history read with a filter expression scans at most this many stored rows per "
            "request; a page that found fewer matches by then ends early with a next token "
            "that resumes after the last row scanned (bounded work per request)."
        ),
    )
    readers: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "SQLite reader threads. Waiting reads take turns by project, so one tenant's "
            "many scans cannot starve another's small read."
        ),
    )

    # Outbound deliveries (data connectors, alert actions)
    allow_private_targets: bool = Field(
        default=False,
        description=(
            "Allow outbound targets (webhooks, HTTP/Slack/Discord actions, data connectors) on "
            "loopback, private and link-local addresses. Off by default: such URLs are refused "
            "at creation (4xx naming the field) and before each send (the host is resolved "
            "once, every address checked, and the checked address is the one connected to). "
            "The demo and the test suite turn it on."
        ),
    )
    delivery_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "Idle delivery workers look for new items at least this often (they are also woken "
            "at once by every committed batch and logged alert)."
        ),
    )
    delivery_retry_first_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="First retry delay of a failed delivery; doubles per attempt (with jitter).",
    )
    delivery_retry_max_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description=(
            "Longest retry delay of a failed delivery (an integer Retry-After from the receiver "
            "is honoured, up to one hour)."
        ),
    )

    # DT face (/v2)
    dt_connector_disable_hours: float = Field(
        default=120.0,
        gt=0,
        description=(
            "A DT data connector whose every push has failed for this long becomes "
            "SYSTEM_DISABLED and stops (DT's five days)."
        ),
    )
    dt_token_url: str | None = Field(
        default=None,
        description=(
            "Public URL of the DT face's token endpoint (ending in /v2/oauth2/token) as clients "
            "know it, when a proxy makes it differ from the URL the server sees. A token grant's "
            "aud may name it or the URL the request arrived at."
        ),
    )
    # Tapis face and alerts
    tapis_tenant_id: str = Field(
        default="streamgauge",
        min_length=1,
        max_length=128,
        description=(
            "Tenant id the Tapis face puts in its tokens (tapis/tenant_id) and requires of "
            "every X-Tapis-Token."
        ),
    )
    tapis_token_ttl_seconds: int = Field(
        default=4 * 3600,
        ge=60,
        le=30 * 86400,
        description="Lifetime of access tokens from POST /v3/oauth2/tokens.",
    )
    alert_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often deadman triggers are judged against the clock.",
    )
    alert_flush_seconds: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description=(
            "Alerts are logged (with the rules' state and position in the log) at most this "
            "long after they fire; 0 logs at once, more groups an alert storm into fewer "
            "transactions. Nothing is lost either way: a restart judges the log again from "
            "the last logged position."
        ),
    )
    plot_retention_days: float = Field(
        default=30.0,
        ge=0,
        le=36500,
        description=(
            "The plot actor's images (DATA/plots) are deleted this many days after they were "
            "drawn (looked for at start and hourly); 0 keeps them for ever."
        ),
    )
    actors: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Local actors for ACTOR actions, a JSON object of actor id -> 'command:<argv>' (run "
            "with the alert JSON on stdin) or 'python:<module>:<function>' (called with the "
            "alert). The actor 'plot' is built in."
        ),
    )
    actor_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Longest run of one actor."
    )

    # MQTT ingest (docs/ports.md)
    mqtt: str | None = Field(
        default=None,
        description=(
            "Broker to take observations from: mqtt://[user:password@]host[:port] or "
            "mqtts://... (TLS). Subscribes with QoS 1 and a persistent session; a message "
            "is acknowledged only after its observations are committed. Unset: no MQTT."
        ),
    )
    mqtt_topic_prefix: str = Field(
        default="streamgauge",
        min_length=1,
        max_length=256,
        pattern=r"^[^+#\x00]+$",
        description=(
            "First topic levels of the MQTT topics: PREFIX/{project}/{device}/{variable} "
            "(one observation) and PREFIX/{project}/observations (native rows); rejected "
            "messages are published to PREFIX/{project}/errors."
        ),
    )
    mqtt_client_id: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "MQTT client id of the persistent session. Unset: one is generated and kept in "
            "the data folder (mqtt-client-id), so a restart resumes the same session."
        ),
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[^/+#\x00]+$",
        description=(
            "Subscribe through the shared subscription $share/GROUP/...: with several nodes "
            "on one broker, each message goes to one of them (cluster mode). Unset: a plain "
            "subscription, unless STREAMGAUGE_CLUSTER names a cluster (then the group is "
            "'streamgauge')."
        ),
    )
    mqtt_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) to verify an mqtts:// broker; unset: the system's.",
    )
    mqtt_batch_messages: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description=(
            "Most MQTT messages ingested in one batch (one commit, then their acknowledgements)."
        ),
    )
    mqtt_error_log_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Rejected MQTT messages are logged once per reason per this many seconds.",
    )

    def serving_processes(self) -> int:
        """How many processes serve the port (``serve``): ``workers`` if set; unset, the
        number of cores in the embedded mode and 1 in the cluster mode (docs/workers.md)."""
        if self.workers is not None:
            return self.workers
        if self.store is not None or self.bus:
            return 1
        return default_processes()


def default_processes() -> int:
    """The embedded mode's processes when ``workers`` is unset: the number of cores, at most
    64."""
    return max(1, min(64, os.cpu_count() or 1))
