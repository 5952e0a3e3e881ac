"""The ASGI app: mounts the faces; its lifespan starts and stops the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from streamgauge import __version__
from streamgauge.config import Settings
from streamgauge.core.engine import Engine, load_admin_token
from streamgauge.domain.errors import StreamgaugeError
from streamgauge.faces import docs, dt, http, influx, limits, ui
from streamgauge.faces.dt import http as dt_http
from streamgauge.faces.native import router as native_router
from streamgauge.faces.openapi import declare_errors
from streamgauge.faces.synoptic import router as feed_router
from streamgauge.faces.tapis import router as tapis_router
from streamgauge.faces.tapis import wire as tapis_wire
from streamgauge.faces.websocket import DirectWebSocketProtocol


def create_app(
    settings: Settings | None = None,
    *,
    admin_token: str | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """The app over a new engine, or over ``engine`` (a worker process's read-only one,
    ``workers/``)."""
    settings = settings or Settings()
    if engine is None:
        engine = Engine(settings, admin_token or load_admin_token(settings)[0])
    dt_face = dt.DTFace(engine)
    bridge = None
    if settings.mqtt:  # MQTT ingest (ports/mqtt.py)
        from streamgauge.ports.mqtt import MqttBridge

        bridge = MqttBridge(engine, settings.mqtt)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await dt_face.start()
        if bridge is not None:
            await bridge.start()
        try:
            yield
        finally:
            if bridge is not None:
                await bridge.stop()
            await dt_face.stop()
            await engine.stop()

    app = FastAPI(
        title="streamgauge",
        version=__version__,
        summary="A self-hosted real-time hub for sensor observations.",
        lifespan=lifespan,
        strict_content_type=False,
        docs_url=None,  # /docs and /redoc: faces/docs.py, with assets served offline
        redoc_url=None,
    )
    docs.add_docs(app)
    ui.add_ui(app)  # the dashboard at /ui/, and / leads there
    app.state.engine = engine
    app.state.dt = dt_face
    app.state.mqtt = bridge
    app.add_middleware(
        limits.BodyLimit,
        ingest_bytes=settings.max_body_bytes,
        other_bytes=settings.max_metadata_body_bytes,
        header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(
        http.QueryStringGuard,
        responders=(
            ("/v2", dt_http.bad_request_response),
            ("/v3", tapis_wire.bad_request_response),
            ("/write", influx.bad_request_response),
            ("/api/v2/", influx.bad_request_response),
        ),
    )
    app.add_exception_handler(StreamgaugeError, http.on_streamgauge_error)
    app.add_exception_handler(RequestValidationError, http.on_validation_error)
    app.add_exception_handler(HTTPException, http.on_http_error)
    app.add_exception_handler(Exception, http.on_unexpected)

    # Declared before the faces' routers: FastAPI builds an included router's routes on the
    # first request that reaches it (a tenth of a second for these), so a health check after a
    # start does not wait for every face's.
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, object]:
        """200 when the engine is up; the log head cursor; with fan-out workers (``serve
        --workers N``) each worker's state."""
        found: dict[str, object] = {"status": "ok", "head": engine.store.head}
        found["version"] = __version__
        if engine.process_health is not None:
            found.update(engine.process_health())
        return found

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition: ingest counts, batch latency, subscribers, queues; with
        fan-out workers every process's (docs/workers.md)."""
        body = await engine.metrics.render_all()
        return Response(body, media_type="text/plain; version=0.0.4")

    app.include_router(native_router)
    app.include_router(feed_router)
    app.include_router(tapis_router)
    app.include_router(influx.router)  # InfluxDB line protocol: /write, /api/v2/write
    app.include_router(dt.router)  # last: its catch-all answers every other /v2 path

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document (cached by FastAPI) with every operation's error responses."""
        return declare_errors(generate())

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options the app relies on (the CLI and the tests use the same)."""
    return {
        "ws": DirectWebSocketProtocol,  # websockets-sansio, with a message writer for the feed
        "ws_ping_interval": settings.ws_ping_seconds,
        "ws_ping_timeout": settings.ws_ping_seconds,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "ws_max_size": 1 << 20,
        "lifespan": "on",
        # Limits (faces/limits.py): request heads (431) and clients that stop reading.
        "http": limits.http_protocol(settings.max_header_bytes, settings.write_timeout_seconds),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
