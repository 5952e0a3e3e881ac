"""The typed values the client hands out: observations, ingest results, feed messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

Value = float | str | None


class Observation(NamedTuple):
    """One stored observation, as history reads and live streams give it.

    ``time`` is an aware UTC ``datetime``; ``value`` a float, a string or None; ``qc`` the
    names of the QC checks it failed; ``cursor`` its position in the log (resume after it)."""

    cursor: int
    device: str
    variable: str
    set: int
    time: datetime
    value: Value
    qc: tuple[str, ...]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Observation:
        """An observation from a decoded native row (``wire.rows`` shape)."""
        qc = row.get("qc")
        return cls(
            row["cursor"],
            row["device"],
            row["variable"],
            row["set"],
            datetime.fromisoformat(row["time"]),
            row["value"],
            tuple(qc) if qc else (),
        )

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(slots=True)
class IngestResult:
    """Totals over every batch of one ``ingest`` call."""

    accepted: int = 0
    duplicates: int = 0
    first_cursor: int | None = None
    last_cursor: int | None = None
    batches: int = 0
    rows: int = 0

    def add(self, reply: dict[str, Any], rows: int) -> None:
        self.accepted += int(reply.get("accepted", 0))
        self.duplicates += int(reply.get("duplicates", 0))
        # the lowest and highest over every batch: with two requests in flight the server
        # may commit a batch before the one sent ahead of it
        first, last = reply.get("first_cursor"), reply.get("last_cursor")
        if first is not None:
            first = int(first)
            self.first_cursor = (
                first if self.first_cursor is None else min(self.first_cursor, first)
            )
        if last is not None:
            last = int(last)
            self.last_cursor = last if self.last_cursor is None else max(self.last_cursor, last)
        self.batches += 1
        self.rows += rows


@dataclass(frozen=True, slots=True)
class FeedMessage:
    """One ``data`` message of the push feed: its rows (``stid``, ``sensor``, ``set``,
    ``date``, ``value``, ``qc``), the log ``cursor`` of its last row (resume after it) and the
    ``session`` it came on. ``stations`` and ``units`` hold every station and sensor unit the
    feed has described so far (metadata messages), by station id and sensor."""

    cursor: int
    rows: list[dict[str, Any]]
    session: str
    stations: dict[str, dict[str, Any]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
