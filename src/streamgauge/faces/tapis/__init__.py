"""The Tapis-compatible face, ``/v3/streams`` (and ``/v3/oauth2/tokens``): the unmodified
``tapipy`` client works against it. It only translates: Tapis documents in, core calls, the Tapis
envelope out (see ``docs/tapis.md``)."""

from fastapi import APIRouter, Request, Response

from streamgauge import __version__
from streamgauge.domain.errors import BadRequest, NotFound, Unavailable
from streamgauge.faces.tapis import channels, measurements, resources, roles, tenants
from streamgauge.faces.tapis.wire import TapisRoute, envelope

router = APIRouter(prefix="/v3", route_class=TapisRoute)
router.include_router(resources.router)
router.include_router(measurements.router)
router.include_router(channels.router)
router.include_router(roles.router)
router.include_router(roles.tokens_router)
router.include_router(tenants.router)


@router.get("/streams/hello", tags=["tapis"])
async def hello() -> Response:
    return envelope(f"streamgauge {__version__}", "ok")


@router.get("/streams/ready", tags=["tapis"])
async def ready() -> Response:
    return envelope("ready", "ok")


@router.get("/streams/healthcheck", tags=["tapis"])
async def healthcheck(request: Request, tenant: str | None = None) -> Response:
    """Tapis' healthcheck (no token needed): the original checks its metadata store, InfluxDB,
    Kapacitor and CHORDS; ours checks what stands in for them: the store answers a read, the
    alert rules run and are caught up with the log. 200 with
    ``result: "healthy"``, or 503 naming what is not."""
    engine = request.app.state.engine
    expected = engine.settings.tapis_tenant_id
    if tenant is None:
        raise BadRequest("tenant is required", [{"in": "query", "field": "tenant"}])
    if tenant != expected:
        raise BadRequest(
            f"unknown tenant {tenant!r}",
            [{"in": "query", "field": "tenant", "reason": f"this server is {expected!r}"}],
        )
    checks: list[str] = []
    problems: list[str] = []
    try:
        await engine.check_store()
        checks.append(f"store ok (log head {engine.log_head})")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        problems.append(f"store: {exc}")
    problem = engine.alerting.problem()
    if problem is None:
        checks.append("alert rules ok")
    else:
        problems.append(f"alert rules: {problem}")
    if problems:
        raise Unavailable("unhealthy: " + "; ".join(problems))
    return envelope("healthy", "; ".join(checks))


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def unknown(path: str) -> Response:
    """Any other path under /v3 is a 404 in the Tapis envelope."""
    raise NotFound(f"no such Tapis route: /v3/{path}")


__all__ = ["router"]
