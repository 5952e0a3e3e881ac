"""The ``streamgauge`` command: serve, simulate, demo, migrate; tail, import, export
(``cli_client.py``)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import typer
import uvicorn
from rich.console import Console

from streamgauge import __version__
from streamgauge.config import DB_NAME, INDEX_NAME, Settings
from streamgauge.workers.server import GracefulServer

if TYPE_CHECKING:
    from streamgauge.workers.spawn import Launched

app = typer.Typer(
    help="streamgauge: a self-hosted real-time hub for sensor observations.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="TCP port to listen on.")]
DataOpt = Annotated[
    Path, typer.Option(help="Data folder (SQLite database, admin token); created if missing.")
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        help="A PostgreSQL URL (postgresql://USER@HOST:PORT/DB) to store everything in, shared by "
        "the nodes of a cluster; default: the embedded SQLite database in DATA.",
    ),
]


def _redacted(url: str) -> str:
    """``url`` without its password, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_store(url: str) -> None:
    """Exit non-zero, saying which store, if PostgreSQL cannot be reached now."""
    from streamgauge.domain.errors import Unavailable
    from streamgauge.store.postgres.conn import connect

    try:
        connect(url, connect_timeout=5, statement_timeout=10).close()
    except Unavailable as exc:
        console.print(f"[red]serve: cannot reach the store {_redacted(url)}: {exc.message}[/red]")
        raise typer.Exit(1) from exc


def _listen(host: str, port: int, *, shared: bool = False) -> socket.socket:
    """The listening socket, bound before the app is imported: a client that reconnects while
    this process starts (a stream client during a restart, say) waits in the backlog instead
    of being refused, and is served as soon as the app is up.

    ``shared``: the fan-out workers bind the same port (``SO_REUSEPORT``). A port some other
    server holds is refused all the same: a socket without the option is bound first, which
    fails if anything listens there, even another streamgauge with workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn would bind it
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        if shared:
            probe = socket.socket(family, socket.SOCK_STREAM)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            finally:
                probe.close()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        console.print(f"[red]serve: cannot listen on {host}:{port}: {exc.strerror or exc}[/red]")
        raise typer.Exit(1) from exc
    sock.listen(2048)
    return sock


def _probe_bus(url: str) -> None:
    """Exit non-zero, saying so, when the cluster's bus does not answer at start."""
    import nats

    async def probe() -> None:
        nc = await nats.connect(servers=[url], connect_timeout=3, allow_reconnect=False)
        await nc.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 10))
    except Exception as exc:
        console.print(
            f"[red]serve: cannot reach the bus (NATS) at {url}: {exc or type(exc).__name__}[/red]"
        )
        raise typer.Exit(1) from None


def _serve(
    host: str,
    port: int,
    data: Path,
    bus: str | None = None,
    cluster: str | None = None,
    mqtt: str | None = None,
    store: str | None = None,
    workers: int | None = None,
) -> None:
    from streamgauge.store.memory import tune_allocator

    tune_allocator()  # before any thread: what a serving process frees goes back
    overrides: dict[str, object] = {"data": data}
    if workers is not None:
        overrides["workers"] = workers
    if store is not None:
        overrides["store"] = store
    if mqtt:
        overrides["mqtt"] = mqtt
    if bus is not None:
        overrides["bus"] = bus
    if cluster is not None:
        overrides["cluster"] = cluster
    settings = Settings(**overrides)  # type: ignore[arg-type]
    clustered = settings.store is not None or bool(settings.bus)
    count = settings.serving_processes()  # unset: the number of cores (embedded mode)
    if count > 1 and clustered:
        console.print(
            "[red]serve: --workers above 1 is for the embedded mode only; the cluster mode "
            "(--store/--bus) runs one process per node (start more nodes instead)[/red]"
        )
        raise typer.Exit(2)
    if settings.store is not None:
        _check_store(settings.store)
    if settings.bus:
        _probe_bus(settings.bus)
    if settings.mqtt:
        from streamgauge.ports.mqtt import parse_url

        try:
            parse_url(settings.mqtt)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--mqtt") from exc
    sock = _listen(host, port, shared=count > 1)
    launched: dict[int, Launched] = {}
    if (
        count > 1
        and settings.store is None
        and (settings.data / DB_NAME).exists()
        and (settings.data / INDEX_NAME).exists()
    ):
        # A restart: the workers import the app and load their registries from the database
        # on the other cores while this process imports and loads its own, not after it. (Not
        # the first start of a folder of an older version: the workers' reads need the index
        # file the writer makes as it opens.)
        from streamgauge.workers import spawn

        launched = {
            n: spawn.launch(
                n, count=count, host=host, port=port, data=data, feed=settings.workers_feed
            )
            for n in range(1, count)
        }
    # The log's state (each series' latest time, the QC checkpoint: SQLite's work, with the
    # GIL released) is read while the app is imported, not after.
    from streamgauge.store.factory import prefetch_embedded

    prefetch_embedded(settings)
    gc.disable()  # the app's imports: many objects, no garbage (a tenth of their time)
    try:
        from streamgauge.app import create_app, server_options
        from streamgauge.core.engine import load_admin_token
    finally:
        gc.enable()

    token, generated = load_admin_token(settings)
    if generated:
        console.print(
            f"[bold]Generated the admin token[/bold] (stored in {data / 'admin-token'}):\n  {token}"
        )
    application: Any = create_app(settings, admin_token=token)
    if count > 1:
        from streamgauge.workers.asgi import Tagged

        application = Tagged(application, 0, close=False)
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        **server_options(settings),
    )
    where = f"data: {data}" + (f", store: {_redacted(settings.store)}" if settings.store else "")
    if settings.bus:
        where += f", bus: {settings.bus}, cluster: {settings.cluster}"
    if count > 1:
        where += f", {count} processes"
    console.print(f"streamgauge {__version__} serving on http://{host}:{port} ({where})")
    server: GracefulServer
    if count > 1:
        from streamgauge.workers.supervisor import WriterServer

        server = WriterServer(
            config,
            count=count,
            host=host,
            port=port,
            data=data,
            feed=settings.workers_feed,
            launched=launched,
            writer=settings.writer_subscribers,
        )
    else:
        server = GracefulServer(config)
    server.run(sockets=[sock])
    if not server.started:  # the engine did not start (its store, say): its error is logged
        console.print("[red]serve: the server did not start[/red]")
        raise typer.Exit(1)


@app.command()
def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    data: DataOpt = Path("streamgauge-data"),
    store: StoreOpt = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="Cluster mode: the NATS JetStream bus, nats://HOST:PORT.", envvar="STREAMGAUGE_BUS"
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Cluster mode: the cluster's name (names its NATS stream and subjects).",
            envvar="STREAMGAUGE_CLUSTER",
        ),
    ] = None,
    mqtt: Annotated[
        str | None,
        typer.Option(
            help="Ingest from this MQTT broker: mqtt://[user:password@]host[:port] or mqtts://"
            " (STREAMGAUGE_MQTT; see docs/ports.md).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Processes serving the port (embedded mode): this one, which writes, and "
            "WORKERS - 1 that serve live streams (STREAMGAUGE_WORKERS; default: the number "
            "of cores, 1 in the cluster mode; 1: one process; see docs/workers.md).",
        ),
    ] = None,
) -> None:
    """Serve every API on one port, with embedded storage in DATA (or in PostgreSQL: --store).

    STREAMGAUGE_ADMIN_TOKEN sets the admin's bearer token; if unset, one is generated, stored in
    DATA/admin-token and printed once. Other settings: STREAMGAUGE_* (see docs/configuration.md).
    A store that cannot be reached at start is named and the command exits non-zero.
    """
    _serve(host, port, data, bus, cluster, mqtt, store, workers)


@app.command()
def migrate(
    from_: Annotated[
        Path,
        typer.Option("--from", help="Data folder of the embedded deployment to copy."),
    ],
    store: Annotated[
        str,
        typer.Option(help="The PostgreSQL URL to copy into (an empty database)."),
    ],
) -> None:
    """Copy an embedded deployment (FROM/streamgauge.db) into an empty PostgreSQL database:
    metadata, accounts, keys and roles, the log with its cursors, channels and the alert log,
    delivery positions, feed tokens and sessions, face state. One transaction: all or nothing.
    Stop the embedded server first. Then serve with --store and --data FROM (the data folder
    keeps the admin token and the token signing key)."""
    from streamgauge.domain.errors import Unavailable
    from streamgauge.store.postgres.copy import NotEmpty, copy_embedded

    source = from_ / DB_NAME
    try:
        counts = copy_embedded(
            source, store, progress=lambda table, n: console.print(f"  {table}: {n} rows")
        )
    except (FileNotFoundError, NotEmpty, Unavailable) as exc:
        console.print(f"[red]migrate: {getattr(exc, 'message', None) or exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"copied {sum(counts.values())} rows from {source} into {_redacted(store)}"
        f" ({counts['obs']} observations)"
    )


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Base URL of a streamgauge server.")] = (
        "http://127.0.0.1:8080"
    ),
    token: Annotated[
        str,
        typer.Option(help="Bearer token (the admin token or another).", envvar="STREAMGAUGE_TOKEN"),
    ] = "",
    stations: Annotated[int, typer.Option(min=0, help="Mesonet stations to simulate.")] = 10,
    rate: Annotated[float, typer.Option(min=0.1, help="Observations per second, in all.")] = 100.0,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run; forever if omitted.")
    ] = None,
    project: Annotated[str, typer.Option(help="Project id to create and feed.")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same network).")] = 1,
) -> None:
    """Create (idempotently) a demo project -- the Tapis tutorial station and a mesonet of
    STATIONS weather stations -- and feed it observations at RATE per second. Ctrl-C (or
    SIGTERM) stops it after the batch in flight; a second Ctrl-C stops it at once."""
    from streamgauge.sim import SimulationError, run_until_signalled

    if not token:
        raise typer.BadParameter("give --token (or STREAMGAUGE_TOKEN)", param_hint="--token")
    try:
        stats, signum = asyncio.run(
            run_until_signalled(
                url,
                token,
                project=project,
                stations=stations,
                rate=rate,
                duration=duration,
                seed=seed,
            )
        )
    except (KeyboardInterrupt, asyncio.CancelledError):  # a second signal
        raise typer.Exit(128 + signal.SIGINT) from None
    except (httpx.HTTPError, SimulationError) as exc:
        console.print(f"[red]simulate: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"simulate: {stats.accepted} accepted, {stats.duplicates} duplicates, "
        f"{stats.rejected_batches} rejected batches in {stats.elapsed:.1f} s"
    )
    if signum is not None:
        raise typer.Exit(128 + signum)


FEED_TOKEN_WAIT_S = 60.0  # for the simulator to make the demo project (slow on a busy machine)


def _demo_feed_url(base: str, token: str, sim: subprocess.Popen[bytes]) -> str:
    """A push-feed URL for the demo project (its feed token is created once the simulator has
    made the project), or why there is none."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + FEED_TOKEN_WAIT_S
    while time.monotonic() < deadline:
        if sim.poll() is not None:
            return "(no feed token: the simulator stopped before it made the demo project)"
        try:
            r = httpx.post(
                f"{base}/api/v1/projects/demo/feedtokens",
                json={"name": "demo"},
                headers=headers,
                timeout=5,
            )
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 201:
            ws = base.replace("http://", "ws://", 1)
            return f"{ws}/feed/{r.json()['token']}/?vars=air_temp&units=english"
        time.sleep(0.3)
    return f"(no feed token: the demo project did not appear in {FEED_TOKEN_WAIT_S:.0f} s)"


DEMO_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SIM_STOP_S = 10.0  # grace for the simulator to finish its batch in flight, then SIGKILL
SERVER_STOP_S = 20.0  # grace for the server's graceful shutdown, then SIGKILL


class _Stop(Exception):
    """A signal asked the demo to stop."""


class _Signals:
    """The demo's handler of DEMO_SIGNALS: the first one raises ``_Stop`` (unless the demo is
    stopping already); later ones only ask to hurry."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.stopping = False
        self.hurry = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            self.hurry = True
            return
        self.stopping = True
        self.first = signum
        raise _Stop


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the child get SIGTERM when the demo dies, even by
    SIGKILL (a child in its own process group is out of reach of the terminal's signals)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: only a call after it
    except OSError:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A child of the demo in a process group of its own: a terminal's Ctrl-C (SIGINT to the
    whole foreground process group) reaches only the demo, which then stops its children one
    at a time, in order."""
    return subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=_die_with_parent(),
    )


def _stop_child(
    proc: subprocess.Popen[bytes] | None, grace: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM ``proc`` and wait for it to exit; SIGKILL it after ``grace`` seconds or once
    ``hurry()`` (a second Ctrl-C). SIGTERM, not SIGINT: a child still importing has no handler
    yet, and the default action of SIGTERM ends it without a ``KeyboardInterrupt`` traceback."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while proc.poll() is None:
        if hurry() or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass


@app.command()
def demo(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    data: DataOpt = Path("streamgauge-data"),
    stations: Annotated[int, typer.Option(min=1, help="Mesonet stations to simulate.")] = 20,
    rate: Annotated[float, typer.Option(min=0.1, help="Observations per second.")] = 50.0,
) -> None:
    """Serve and simulate together; prints what to open and run. Ctrl-C stops both: the
    simulator first, then the server (a second Ctrl-C kills them)."""
    from streamgauge.core.engine import load_admin_token

    settings = Settings(data=data)
    token, _ = load_admin_token(settings)
    env = {**os.environ, "STREAMGAUGE_ADMIN_TOKEN": token}
    # The demo runs on one machine with its receivers on loopback: allow private targets
    # (refused by default), unless the environment says otherwise.
    env.setdefault("STREAMGAUGE_ALLOW_PRIVATE_TARGETS", "true")
    exe = [sys.executable, "-m", "streamgauge"]
    base = f"http://{host}:{port}"
    server: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[bytes] | None = None
    signals = _Signals()
    handlers = {signum: signal.signal(signum, signals) for signum in DEMO_SIGNALS}
    try:
        server = _spawn(
            [*exe, "serve", "--host", host, "--port", str(port), "--data", str(data)], env
        )
        deadline = time.monotonic() + 30
        while True:
            if server.poll() is not None:
                raise typer.Exit(server.returncode or 1)
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                console.print("[red]the server did not come up in 30 s[/red]")
                raise typer.Exit(1)
            time.sleep(0.2)
        sim = _spawn(
            [
                *exe,
                "simulate",
                "--url",
                base,
                "--token",
                token,
                "--stations",
                str(stations),
                "--rate",
                str(rate),
            ],
            env,
        )
        auth = f"-H 'Authorization: Bearer {token}'"
        feed = _demo_feed_url(base, token, sim)
        console.print(
            f"\n[bold green]streamgauge demo is running[/bold green] at {base}\n"
            f"  API docs:      {base}/docs\n"
            f"  admin token:   {token}\n"
            f"  live stream:   curl -N {auth} '{base}/api/v1/projects/demo/stream'\n"
            f"  one variable:  curl -N {auth} '{base}/api/v1/projects/demo/stream"
            f"?variable=air_temp'\n"
            f"  SSE:           curl -N {auth} -H 'Accept: text/event-stream' "
            f"'{base}/api/v1/projects/demo/stream'\n"
            f"  history:       curl {auth} '{base}/api/v1/projects/demo/observations?limit=20'\n"
            f"  push feed:     {feed}\n"
            f"  DT devices:    curl {auth} '{base}/v2/projects/demo/devices'\n"
            f"  metrics:       curl {base}/metrics\n"
            "  webhooks:      STREAMGAUGE_ALLOW_PRIVATE_TARGETS="
            f"{env['STREAMGAUGE_ALLOW_PRIVATE_TARGETS']} (the demo allows loopback and "
            "private targets; a real deployment refuses them by default)\n"
            "Press Ctrl-C to stop.\n",
            soft_wrap=True,
        )
        while server.poll() is None:
            time.sleep(0.5)
    except _Stop:
        pass
    finally:
        signals.stopping = True  # from now on a signal only hurries the stop along
        if signals.first is not None:
            console.print("stopping the simulator, then the server ...")
        _stop_child(sim, SIM_STOP_S, lambda: signals.hurry)  # first: it posts to the server
        _stop_child(server, SERVER_STOP_S, lambda: signals.hurry)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if signals.first is not None:
        raise typer.Exit(128 + signals.first)  # 130 after Ctrl-C, as is conventional
    raise typer.Exit(1)  # the server stopped by itself


from streamgauge import cli_client  # noqa: E402  (registers tail, import, export on ``app``)

cli_client.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
