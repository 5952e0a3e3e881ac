"""Storage: the ``Store`` protocol and its embedded SQLite implementation."""

from streamgauge.store.base import HistoryQuery, Store
from streamgauge.store.registry import Registry

__all__ = ["HistoryQuery", "Registry", "Store"]
