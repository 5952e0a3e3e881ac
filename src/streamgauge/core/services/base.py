"""What the services need of the store: its metadata transactions (the registry they change
through metadata events is the engine's, given to the services beside the store).

Typed as a protocol (not ``SqliteStore``) so that whichever store the engine holds serves, as
long as it runs a function in one write transaction (``write``) or on a reader (``read``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import sqlite3

    from streamgauge.store.sqlite.store import Tx

T = TypeVar("T")


class MetadataStore(Protocol):
    async def write(self, fn: Callable[[Tx], T]) -> T: ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
