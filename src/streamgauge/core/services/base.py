"""What the services need of the store: its metadata transactions and the registry they keep.

Typed as a protocol generic in the backend's transaction (``TxT``) and read handle (``ConnT``),
not as a backend's store, so that whichever store the engine holds serves, as long as it runs a
function in one write transaction (``write``) or on a reader (``read``); the services run the
backend's ``MetadataTables`` (``store.api``) of the same types in them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from streamgauge.core.registry import Registry

T = TypeVar("T")
TxT = TypeVar("TxT")
ConnT = TypeVar("ConnT")
TxT_co = TypeVar("TxT_co", covariant=True)
ConnT_co = TypeVar("ConnT_co", covariant=True)


class MetadataStore(Protocol[TxT_co, ConnT_co]):
    @property
    def registry(self) -> Registry: ...

    async def write(self, fn: Callable[[TxT_co], T]) -> T: ...

    async def read(self, fn: Callable[[ConnT_co], T]) -> T: ...
