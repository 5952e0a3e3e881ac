"""The ASGI app: mounts the faces; its lifespan starts and stops the engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from streamgauge import __version__
from streamgauge.config import Settings
from streamgauge.core.engine import Engine, load_admin_token
from streamgauge.errors import StreamgaugeError
from streamgauge.faces import http
from streamgauge.faces.native import router as native_router
from streamgauge.faces.tapis import router as tapis_router


def create_app(settings: Settings | None = None, *, admin_token: str | None = None) -> FastAPI:
    settings = settings or Settings()
    token = admin_token or load_admin_token(settings)[0]
    engine = Engine(settings, token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="streamgauge",
        version=__version__,
        summary="A self-hosted real-time hub for sensor observations.",
        lifespan=lifespan,
        strict_content_type=False,
    )
    app.state.engine = engine
    app.add_exception_handler(StreamgaugeError, http.on_streamgauge_error)
    app.add_exception_handler(RequestValidationError, http.on_validation_error)
    app.add_exception_handler(HTTPException, http.on_http_error)
    app.add_exception_handler(Exception, http.on_unexpected)
    app.include_router(native_router)
    app.include_router(tapis_router)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, object]:
        """200 when the engine is up; the log head cursor."""
        return {"status": "ok", "head": engine.store.head, "version": __version__}

    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition: ingest counts, batch latency, subscribers, queues."""
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
