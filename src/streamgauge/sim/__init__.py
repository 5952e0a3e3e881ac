"""Built-in simulator: the Tapis tutorial station and a mesonet, fed over HTTP.

Used by ``streamgauge simulate``; see :func:`run_simulation`.
"""

from .network import Network, Station, ValueGenerator, build_network
from .runner import (
    SimStats,
    SimulationError,
    run_simulation,
    run_until_signalled,
    setup_network,
)

__all__ = [
    "Network",
    "SimStats",
    "SimulationError",
    "Station",
    "ValueGenerator",
    "build_network",
    "run_simulation",
    "run_until_signalled",
    "setup_network",
]
