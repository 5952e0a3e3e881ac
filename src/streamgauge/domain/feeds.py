"""Push-feed tokens and durable sessions as every layer sees them (the store keeps them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamgauge.domain.errors import Conflict

__all__ = ["FeedSession", "FeedToken", "SessionLimit"]


class SessionLimit(Conflict):
    """A new session of a token whose sessions are all attached and at the cap."""


@dataclass(slots=True)
class FeedToken:
    pk: int
    id: str
    project_pk: int
    name: str
    created_at: str


@dataclass(slots=True)
class FeedSession:
    id: str
    token_pk: int
    args: str  # the query string the session was opened with
    position: int  # log cursor: everything up to it has been considered
    after_time: int | None = None  # period sessions: (time, cursor) of the last row pushed
    dirty: bool = field(default=False, repr=False)
