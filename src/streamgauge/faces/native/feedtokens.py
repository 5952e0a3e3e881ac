"""Feed tokens: read-only credentials of a project's push feed (``/feed/{token}/``), and the
feed sessions connected now."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from streamgauge.auth import Action
from streamgauge.domain.feeds import FeedSession, FeedToken
from streamgauge.domain.model import Name
from streamgauge.faces.http import StrictRoute, json_response
from streamgauge.faces.native.deps import EngineDep, PagingDep, PrincipalDep, project_for

router = APIRouter(tags=["push feed"], route_class=StrictRoute)


class FeedTokenIn(BaseModel):
    model_config = {"extra": "forbid"}
    name: Name = Field(min_length=1, description="What the token is for (shown in lists).")


def _doc(project: str, t: FeedToken) -> dict[str, object]:
    return {"id": t.id, "name": t.name, "project": project, "created_at": t.created_at}


@router.post("/projects/{project}/feedtokens", status_code=201)
async def create_feed_token(
    engine: EngineDep, who: PrincipalDep, project: str, body: FeedTokenIn
) -> Response:
    """Create a feed token; the reply holds the token itself, once (only a digest is kept).
    Connect with `ws://HOST/feed/{token}/?{arguments}`."""
    rec = project_for(engine, who, project, Action.MANAGE)
    tok, secret = await engine.feeds.create_token(rec.pk, body.name)
    return json_response({**_doc(project, tok), "token": secret}, 201)


@router.get("/projects/{project}/feedtokens")
async def list_feed_tokens(
    engine: EngineDep, who: PrincipalDep, project: str, paging: PagingDep
) -> Response:
    """The project's feed tokens (without the tokens themselves)."""
    rec = project_for(engine, who, project, Action.MANAGE)
    items = ((t.id, _doc(project, t)) for t in engine.feeds.tokens_of(rec.pk))
    return json_response(paging.page(items, "feedtokens"))


@router.delete("/projects/{project}/feedtokens/{token_id}", status_code=204)
async def revoke_feed_token(
    engine: EngineDep, who: PrincipalDep, project: str, token_id: str
) -> Response:
    """Revoke a feed token: its sessions are deleted and its open connections closed."""
    rec = project_for(engine, who, project, Action.MANAGE)
    await engine.feeds.revoke(rec.pk, token_id)
    return Response(status_code=204)


def _session_doc(project: str, t: FeedToken, s: FeedSession) -> dict[str, object]:
    return {
        "id": s.id,
        "project": project,
        "token": t.id,
        "token_name": t.name,
        "args": s.args,
        "position": s.position,
    }


@router.get("/projects/{project}/feedsessions")
async def list_feed_sessions(
    engine: EngineDep, who: PrincipalDep, project: str, paging: PagingDep
) -> Response:
    """The push-feed sessions a connection serves now, in every process of the server: each
    with its feed token (id and name), the arguments it was opened with and its position in
    the log (the cursor up to which every observation has been considered). Detached sessions
    that could still be resumed are not listed."""
    rec = project_for(engine, who, project, Action.MANAGE)
    served = await engine.connected_feeds(rec.pk)
    items = ((s.id, _session_doc(project, t, s)) for t, s in served)
    return json_response(paging.page(items, "sessions"))
