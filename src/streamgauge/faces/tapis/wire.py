"""Tapis wire conventions: the response envelope, the error translation, the caller, paging.

Every JSON reply is the Tapis envelope ``{"result", "status", "message", "version",
"metadata"}`` with ``Content-Type: application/json`` exactly (``tapipy`` parses a body only with
that exact type). Errors keep the envelope with ``"status": "error"``, ``"result": null`` and the
engine's details (what and where) in ``metadata.details``; 422 becomes 400, as Tapis reports
validation errors.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from streamgauge import __version__
from streamgauge.auth import Principal
from streamgauge.core.engine import Engine
from streamgauge.core.services import page
from streamgauge.domain.errors import BadRequest, StreamgaugeError, Unauthorized
from streamgauge.faces.http import dumps, http_error_parts, query_names, validation_details
from streamgauge.faces.native.deps import engine_dep, get_engine

JSON = "application/json"


def envelope(result: Any, message: str = "Success", status: int = 200) -> Response:
    body = {
        "result": result,
        "status": "success",
        "message": message,
        "version": __version__,
        "metadata": {},
    }
    return Response(dumps(body), status, media_type=JSON)


def error_envelope(
    status: int, message: str, details: list[Any], headers: dict[str, str] | None = None
) -> Response:
    body = {
        "result": None,
        "status": "error",
        "message": message,
        "version": __version__,
        "metadata": {"details": details},
    }
    return Response(
        orjson.dumps(body), 400 if status == 422 else status, headers=headers, media_type=JSON
    )


def bad_request_response(exc: BadRequest, path: str = "") -> Response:
    """A refused request before routing (the shared query-string check), in the envelope."""
    return error_envelope(exc.status, exc.message, exc.details)


class TapisRoute(APIRoute):
    """Errors leave in the Tapis envelope; query parameters a route does not declare are a 400
    naming them (a typo fails loudly)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = query_names(self.dependant)

        async def run(request: Request) -> Response:
            try:
                unknown = sorted(set(request.query_params.keys()) - allowed)
                if unknown:
                    raise BadRequest(
                        f"unknown query parameter(s): {', '.join(unknown)}",
                        [
                            {"in": "query", "field": u, "reason": "not a parameter here"}
                            for u in unknown
                        ],
                    )
                return await handler(request)
            except StreamgaugeError as exc:
                return error_envelope(exc.status, exc.message, exc.details, exc.headers)
            except RequestValidationError as exc:
                details = validation_details(exc)
                where = "; ".join(
                    f"{d.get('field', d.get('in', 'body'))}: {d['reason']}" for d in details[:5]
                )
                return error_envelope(400, f"the request does not validate ({where})", details)
            except HTTPException as exc:  # e.g. a body FastAPI cannot parse: still the envelope
                message, details = http_error_parts(exc)
                return error_envelope(exc.status_code, message, details)

        return run


async def tapis_caller(
    request: Request,
    x_tapis_token: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller: a Tapis JWT in ``X-Tapis-Token`` (its ``tapis/username`` is a service account
    id), or the native credentials in ``Authorization`` (admin bearer token, HTTP Basic key)."""
    engine = get_engine(request)
    if x_tapis_token:
        token = x_tapis_token.strip()
        claims = engine.tokens.verify(token)
        if claims.get("tapis/tenant_id") != engine.settings.tapis_tenant_id:
            raise Unauthorized(f"the token is not for tenant {engine.settings.tapis_tenant_id!r}")
        return engine.auth.access_token(token)
    if authorization:  # argon2 (HTTP Basic) runs on the authenticator's pool, not the loop
        client = request.client.host if request.client else None
        return await engine.auth.authenticate_async(authorization, client)
    raise Unauthorized("missing credentials: send X-Tapis-Token")


EngineDep = Annotated[Engine, Depends(engine_dep)]
CallerDep = Annotated[Principal, Depends(tapis_caller)]

T = TypeVar("T")


class Listing:
    """``skip`` and ``limit`` (default 100, at most 1000) of Tapis lists; ``query`` is refused
    rather than silently ignored."""

    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        skip: Annotated[int, Query(ge=0)] = 0,
        query: Annotated[str | None, Query(description="Not supported (400).")] = None,
    ) -> None:
        if query:
            raise BadRequest(
                "the query parameter is not supported",
                [{"in": "query", "field": "query", "reason": "filter the list on the client"}],
            )
        self.limit = limit
        self.skip = skip

    def page(self, items: Iterable[tuple[str, T]]) -> list[T]:
        return page(items, self.limit, skip=self.skip).items


ListingDep = Annotated[Listing, Depends()]
