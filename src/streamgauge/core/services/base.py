"""What the services need of the store: its metadata transactions (the registry they change
through metadata events is the engine's, given to the services beside the store).

Typed as a protocol generic in the backend's transaction (``TxT``) and read handle (``ConnT``),
not as a backend's store, so that whichever store the engine holds serves, as long as it runs a
function in one write transaction (``write``) or on a reader (``read``); the services run the
backend's ``MetadataTables`` (``store.api``) of the same types in them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")
TxT = TypeVar("TxT")
ConnT = TypeVar("ConnT")
TxT_co = TypeVar("TxT_co", covariant=True)
ConnT_co = TypeVar("ConnT_co", covariant=True)


class MetadataStore(Protocol[TxT_co, ConnT_co]):
    async def write(self, fn: Callable[[TxT_co], T]) -> T: ...

    async def read(self, fn: Callable[[ConnT_co], T]) -> T: ...
