"""Storage: the protocols of the seam (``store.api``), the factory that builds a backend's
store (``store.factory``), and the embedded SQLite implementation."""

from streamgauge.domain.log import HistoryQuery
from streamgauge.domain.readmodel import ReadModel
from streamgauge.store.api import Store

__all__ = ["HistoryQuery", "ReadModel", "Store"]
