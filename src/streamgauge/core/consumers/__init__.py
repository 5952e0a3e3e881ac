"""Durable readers of the observation log (issue 12 item 5).

* ``scan.LogScanner``: the rows of the log a selection wants, after a position, in cursor order,
  read in bounded pages (a stretch with no match is remembered, so a rare selection does not
  rescan the log on every commit);
* ``consumer.Consumer``: a named reader with a stored position (``store.api.ConsumerPositions``,
  pluggable per consumer), a selection and a handler, at-least-once: the position advances only
  after the handler returned, and a restart resumes from the stored position. It is fed live
  batches by the commit listener (``offer``: no store read at the head) and catches up from the
  store through the scanner when behind.

Every durable reader is one: the alert rules (``core/alerting.RulesConsumer``), deliveries
(``core/deliveries.Delivery``), the DT connectors (a delivery whose source scans the log), DT
reported state (``faces/dt/state.Reported``) and feed sessions (``faces/synoptic/feed``).
"""

from streamgauge.core.consumers.consumer import Consumer, Handler, MemoryPositions
from streamgauge.core.consumers.scan import LogReader, LogScanner, Select

__all__ = ["Consumer", "Handler", "LogReader", "LogScanner", "MemoryPositions", "Select"]
