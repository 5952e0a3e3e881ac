"""How a stream frames its rows: the frames themselves (bytes, no I/O) are ``wire.framing``'s;
a ``Framing`` adds how a face encodes a batch's rows, cached per batch and unit system.

Each frame is bytes ready for the socket. An observation frame carries its cursor (SSE ``id:``, so
``Last-Event-ID`` resumes); keepalives carry none; the closing frame says why and where to resume;
the opening ``units`` frame (no cursor) says which unit each quantity kind is given in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamgauge.wire import framing as frames

if TYPE_CHECKING:
    from streamgauge.core.hub import Cells
    from streamgauge.core.registry import Registry
    from streamgauge.core.units import UnitSystem
    from streamgauge.domain.batch import Batch


# ``Framing.deliver``: (the round's batch, its cells, lo, hi, done) -> None
Deliver = Callable[["Batch", "Cells", int, int, bytearray], None]


@dataclass(frozen=True, slots=True)
class Framing:
    """How a stream writes rows. ``row`` wraps each row's native JSON object; a face with its own
    row shape gives ``encode`` instead (all rows of a batch at once, cached per batch and units).
    ``max_rows`` bounds the rows of one queued item (a face's message size); ``wrap`` turns an
    item's joined rows into its message (given the first and last cursor), once per item, shared
    by the subscribers whose masks agree; ``with_series`` keeps the picked rows' series pks on each
    item (for per-connection metadata). ``prepare``, if given, is called once per fan-out round
    that computed every subscriber's rows at once (``hub.Cells``), before any of them is offered
    the round: a face's per-connection work for all its subscribers of the round at once.
    ``deliver``, if given, is then called for each slice ``[lo, hi)`` of the round's
    subscribers before they are offered their rows: it may write a subscriber's share of the
    round itself, as its sink would have taken it (moving its stream past the round), and
    must then set ``done[i]``; the hub offers the round to the others as usual. It lets a
    face write a thousand connections' shares in a few calls instead of a few thousand."""

    name: str
    media_type: str
    row: Callable[[int, bytes], bytes]
    keepalive: Callable[[str], bytes]
    closed: Callable[[str, int], bytes]
    opened: Callable[[int], bytes]
    units: Callable[[dict[str, str]], bytes]
    encode: Callable[[Batch, Registry, UnitSystem], list[bytes]] | None = None
    max_rows: int = 0  # 0: unbounded
    wrap: Callable[[bytes, int, int], bytes] | None = None
    with_series: bool = False
    prepare: Callable[[Batch, Cells], None] | None = None
    deliver: Deliver | None = None

    def rows(self, batch: Batch, registry: Registry, units: UnitSystem) -> list[bytes]:
        """The framed rows of ``batch`` (cached on the batch per form and units)."""
        if self.encode is None:
            return batch.framed(self.name, registry, self.row, units)
        return batch.encoded(self.name, registry, self.encode, units)


NDJSON = Framing(
    "ndjson",
    "application/x-ndjson",
    frames.ndjson_row,
    frames.ndjson_keepalive,
    frames.ndjson_closed,
    frames.ndjson_opened,
    frames.ndjson_units,
)
SSE = Framing(
    "sse",
    "text/event-stream",
    frames.sse_row,
    frames.sse_keepalive,
    frames.sse_closed,
    frames.sse_opened,
    frames.sse_units,
)
