"""The DT face's state attached to the app, and who is calling.

Credentials, in the order tried: ``Authorization: Bearer`` (the admin token or an access token
from ``/v2/oauth2/token``), ``Authorization: Basic`` with a key id and secret (only for service
accounts that allow it), and the ``token`` query parameter (a bearer token, for browsers'
EventSource, which cannot set headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fastapi import Request

from streamgauge.auth import Action, Principal, authorize
from streamgauge.core.engine import Engine
from streamgauge.errors import Unauthorized
from streamgauge.faces.dt.connectors import Connectors
from streamgauge.faces.dt.http import Query
from streamgauge.faces.dt.state import Accounts, Reported
from streamgauge.store.registry import ProjectRec


class DTFace:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reported = Reported(engine)
        self.accounts = Accounts()
        self.connectors = Connectors(engine)
        self._background: set[asyncio.Task[None]] = set()
        engine.listeners.append(self.reported.on_batch)

    async def start(self) -> None:
        """After the engine started (its deliveries run): load settings, start connectors."""
        self.accounts.by_pk = await self.engine.store.read(self.accounts.load)
        await self.connectors.start()

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            token = request.query_params.get("token")
            if not token:
                raise Unauthorized(
                    "missing credentials: send Authorization: Bearer <token> or Basic "
                    "<key id:secret>, or ?token= on an EventSource stream"
                )
            header = "Bearer " + token
        who = self.engine.auth.authenticate(header)
        if (
            header[:6].lower() == "basic "
            and who.account is not None
            and not self.accounts.basic_allowed(who.account.pk)
        ):
            raise Unauthorized(
                f"service account {who.account.id!r} does not allow Basic auth "
                "(enableBasicAuth is false): exchange a key for a token at /v2/oauth2/token"
            )
        return who

    def project(self, who: Principal, project_id: str, action: Action) -> ProjectRec:
        return authorize(who, self.engine.registry.projects.get(project_id), action, project_id)


def get_face(request: Request) -> DTFace:
    face: DTFace = request.app.state.dt
    return face


def project_call(
    request: Request, project_id: str, action: Action
) -> tuple[DTFace, Principal, ProjectRec]:
    """The preamble of a project route taking no query parameter but ``token``: the face, the
    authenticated caller, and the project if the caller may do ``action`` on it."""
    face = get_face(request)
    who = face.authenticate(request)
    Query(request, ("token",))
    return face, who, face.project(who, project_id, action)
