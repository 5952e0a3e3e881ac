"""Storage: the protocols of the seam (``store.api``), the factory that builds a backend's
store (``store.factory``), and the embedded SQLite implementation."""

from streamgauge.core.registry import Registry
from streamgauge.domain.log import HistoryQuery
from streamgauge.store.api import Store

__all__ = ["HistoryQuery", "Registry", "Store"]
