"""The alert rules' state as every layer sees it: the core's rule engine (``core.alerts``) moves
it, the store keeps it (the rules' progress is saved with the alerts it produced)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["State", "StateKey", "TriggerState"]


class State(StrEnum):
    """Where a trigger is in its lifecycle (the transition table is ``core.alerts``)."""

    OK = "OK"
    PENDING = "PENDING"
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True, slots=True)
class TriggerState:
    state: State = State.OK
    since_ms: int | None = None  # when the condition began to hold (PENDING)
    last_alert_ms: int | None = None
    last_seen_ms: int | None = None  # deadman: when data last arrived


StateKey = tuple[int, int]  # (channel pk, trigger index) of an alert rule's state
