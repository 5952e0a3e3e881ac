"""Durable readers of the observation log (issue 12 item 5).

* ``scan.LogScanner``: the rows of the log a selection wants, after a position, in cursor order,
  read in bounded pages (a stretch with no match is remembered, so a rare selection does not
  rescan the log on every commit);
* ``consumer.Consumer``: a named reader with a stored position (``store.api.ConsumerPositions``),
  a selection and an async handler, at-least-once: the position advances only after the handler
  returned, and a restart resumes from the stored position. It catches up from the store, then
  follows live commits (woken by ``Engine.listeners``).
"""

from streamgauge.core.consumers.consumer import Consumer, Handler
from streamgauge.core.consumers.scan import LogReader, LogScanner, Select

__all__ = ["Consumer", "Handler", "LogReader", "LogScanner", "Select"]
