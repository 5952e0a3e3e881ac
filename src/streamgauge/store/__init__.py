"""Storage: the protocols of the seam (``store.api``), the factory that builds a backend's
store (``store.factory``), and the embedded SQLite implementation."""

from streamgauge.store.api import Store
from streamgauge.store.base import HistoryQuery
from streamgauge.store.registry import Registry

__all__ = ["HistoryQuery", "Registry", "Store"]
