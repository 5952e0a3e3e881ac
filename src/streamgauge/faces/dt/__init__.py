"""The Disruptive-compatible face, ``/v2``: the unmodified ``disruptive`` SDK works against it.

See ``docs/dt.md``. Devices, event history, ``devices:stream``, the emulator, service accounts
and keys, ``/v2/oauth2/token`` and data connectors, translated onto the engine.
"""

from fastapi import APIRouter, Request, Response

from streamgauge.faces.dt import accounts, connector_routes, devices, stream
from streamgauge.faces.dt.face import DTFace
from streamgauge.faces.dt.http import DTRoute, error_response, stream_error_line

router = APIRouter(prefix="/v2", route_class=DTRoute)
router.include_router(stream.router)
router.include_router(devices.router)
router.include_router(accounts.router)
router.include_router(connector_routes.router)


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def not_found(request: Request, path: str) -> Response:
    """Every other path under /v2: a 404 in DT's error shape (its stream shape for streams)."""
    message = f"no endpoint {request.method} /v2/{path}"
    if path.endswith(":stream"):
        return Response(stream_error_line(404, message), 404, media_type="application/json")
    return error_response(404, message)


__all__ = ["DTFace", "router"]
