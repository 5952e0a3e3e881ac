"""The DT face's state attached to the app, and who is calling.

Credentials: ``Authorization: Bearer`` (the admin token or an access token from
``/v2/oauth2/token``) or ``Authorization: Basic`` with a key id and secret (only for service
accounts that allow it; the engine's authenticator checks that, for every face). A token in the
query string (``?token=``) is refused: DT does not document one, and URLs end up in access logs.
Key logins verify argon2 off the event loop and are rate limited (``auth/principals.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from fastapi import Request

from streamgauge.auth import Action, Principal
from streamgauge.core.engine import Engine
from streamgauge.core.registry import ProjectRec
from streamgauge.domain import events as ev
from streamgauge.domain.errors import Unauthorized
from streamgauge.domain.face_state import DTAccountSettings
from streamgauge.faces.dt.connectors import Connectors
from streamgauge.faces.dt.http import Query
from streamgauge.faces.dt.state import Reported


class DTFace:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reported = Reported(engine)
        self.accounts = engine.dt_accounts  # enableBasicAuth and the DT times of accounts
        self.connectors = Connectors(engine)
        self._background: set[asyncio.Task[None]] = set()
        engine.listeners.append(self.reported.offer)
        # enableBasicAuth holds on every face: the authenticator asks it of each key login.
        engine.auth.basic_auth_allowed = lambda account: self.basic_allowed(account.pk)
        # ... and on every node and worker process: a change made elsewhere comes as an event
        # (``DTAccountSettingsPut``) and applies at once; a node that missed events reloads.
        engine.followers.append(self._follow)
        engine.resyncs.append(self.accounts.load)

    async def start(self) -> None:
        """After the engine started (its deliveries run): load settings, start connectors."""
        await self.reported.start()
        await self.accounts.load()
        await self.connectors.start()

    def _follow(self, event: ev.MetaEvent) -> None:
        if isinstance(event, ev.DTAccountSettingsPut):
            self.accounts.follow(
                event.account_pk,
                DTAccountSettings(event.basic_auth, event.create_time, event.update_time),
            )

    def basic_allowed(self, account_pk: int) -> bool:
        """Accounts made on the native face have no DT settings: Basic auth is how the native
        face authenticates them, so it stays allowed for them."""
        s = self.accounts.by_pk.get(account_pk)
        return s is None or s.basic_auth

    async def stop(self) -> None:
        await self.reported.stop()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            if "token" in request.query_params:
                raise Unauthorized(
                    "credentials in the query string (?token=) are not accepted (URLs end up in "
                    "access logs): send Authorization: Bearer <token> or Basic <key id:secret>"
                )
            raise Unauthorized(
                "missing credentials: send Authorization: Bearer <token> or Basic <key id:secret>"
            )
        client = request.client.host if request.client else None
        return await self.engine.auth.authenticate_async(header, client)

    def project(self, who: Principal, project_id: str, action: Action) -> ProjectRec:
        return self.engine.metadata.project(who, project_id, action)


def get_face(request: Request) -> DTFace:
    face: DTFace = request.app.state.dt
    return face


async def project_call(
    request: Request, project_id: str, action: Action
) -> tuple[DTFace, Principal, ProjectRec]:
    """The preamble of a project route taking no query parameter: the face, the authenticated
    caller, and the project if the caller may do ``action`` on it."""
    face = get_face(request)
    who = await face.authenticate(request)
    Query(request, ())
    return face, who, face.project(who, project_id, action)
