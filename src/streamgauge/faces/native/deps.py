"""Dependencies shared by the native routes: the engine, the caller, paging."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Query, Request

from streamgauge.auth import Action, Principal
from streamgauge.core.engine import Engine
from streamgauge.core.registry import ProjectRec
from streamgauge.core.services import page
from streamgauge.faces.http import decode_page
from streamgauge.wire.pages import encode_page


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def engine_dep(request: Request) -> Engine:
    """``get_engine`` as a dependency. A coroutine on purpose: FastAPI runs a plain function
    dependency on its thread pool, and every request then waited for a thread and then for
    its turn back on the event loop (behind a whole fan-out round when the loop is busy)
    before its endpoint ran."""
    return get_engine(request)


async def get_principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    # argon2 (HTTP Basic) runs on the authenticator's pool, never on the event loop.
    client = request.client.host if request.client else None
    return await get_engine(request).auth.authenticate_async(authorization, client)


EngineDep = Annotated[Engine, Depends(engine_dep)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def project_for(engine: Engine, who: Principal, project_id: str, action: Action) -> ProjectRec:
    return engine.metadata.project(who, project_id, action)


T = TypeVar("T")


class Paging:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=10_000, description="Items per page.")] = 100,
        page: Annotated[
            str | None, Query(description="The `next` token of the previous page.")
        ] = None,
    ) -> None:
        self.limit = limit
        self.after = decode_page(page)

    def page(self, items: Iterable[tuple[str, T]], name: str) -> dict[str, Any]:
        got = page(items, self.limit, after=self.after)
        return {
            name: got.items,
            "next": encode_page(got.next_key) if got.next_key is not None else None,
        }


PagingDep = Annotated[Paging, Depends()]
