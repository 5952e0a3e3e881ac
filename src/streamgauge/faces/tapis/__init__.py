"""The Tapis-compatible face, ``/v3/streams`` (and ``/v3/oauth2/tokens``): the unmodified
``tapipy`` client works against it. It only translates: Tapis documents in, core calls, the Tapis
envelope out (see ``docs/tapis.md``)."""

from fastapi import APIRouter, Response

from streamgauge import __version__
from streamgauge.errors import NotFound
from streamgauge.faces.tapis import channels, measurements, resources, roles
from streamgauge.faces.tapis.wire import TapisRoute, envelope

router = APIRouter(prefix="/v3", route_class=TapisRoute)
router.include_router(resources.router)
router.include_router(measurements.router)
router.include_router(channels.router)
router.include_router(roles.router)
router.include_router(roles.tokens_router)


@router.get("/streams/hello", tags=["tapis"])
async def hello() -> Response:
    return envelope(f"streamgauge {__version__}", "ok")


@router.get("/streams/ready", tags=["tapis"])
async def ready() -> Response:
    return envelope("ready", "ok")


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
async def unknown(path: str) -> Response:
    """Any other path under /v3 is a 404 in the Tapis envelope."""
    raise NotFound(f"no such Tapis route: /v3/{path}")


__all__ = ["router"]
