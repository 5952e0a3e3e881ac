"""What the core needs from the bus between nodes, as a protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["batch", "meta"]


@dataclass(frozen=True, slots=True)
class BusMessage:
    """A run of the log (``kind="batch"``: cursors ``first..last``) or of the metadata events
    (``kind="meta"``: event sequence numbers ``first..last``), committed by some node."""

    kind: Kind
    first: int
    last: int
    payload: bytes
    origin: str  # the publishing node's id


Handler = Callable[[BusMessage], Awaitable[None]]


class BusUnavailable(Exception):
    """The bus cannot be reached (at start: the node says so and exits)."""


class Bus(Protocol):
    """Every node publishes what it committed and hears everything every node committed.

    Delivery is at most once per subscription and may skip messages (a reconnect, a node that
    died before publishing): receivers order and complete what they hear from the store
    (``core.sequencer``). ``publish`` never raises for a bus that is down: it reports ``False``
    and the others find the gap from the store's head.
    """

    node_id: str

    async def start(self, handler: Handler, on_reconnect: Callable[[], None]) -> None:
        """Connect and subscribe to new messages (raises ``BusUnavailable``)."""
        ...

    async def publish(self, kind: Kind, first: int, last: int, payload: bytes) -> bool:
        """Publish one committed run; ``True`` once the bus stored it."""
        ...

    @property
    def connected(self) -> bool: ...

    async def close(self) -> None: ...
