"""Selective reads of the log: what a durable reader wants, page by page, in cursor order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamgauge.core.filters import CompiledSelection
from streamgauge.domain.batch import Batch, empty_batch

# Which rows of a batch a reader wants: a mask over the batch (a ``CompiledSelection`` is one).
Select = Callable[[Batch], npt.NDArray[np.bool_]] | CompiledSelection


class LogReader(Protocol):
    """The part of the engine a reader of the log needs (``Engine`` is one)."""

    @property
    def log_head(self) -> int:
        """The last committed and published cursor (0 when the log is empty)."""
        ...

    async def read_log(self, after: int, upto: int, limit: int) -> Batch:
        """Committed rows with ``after < cursor <= upto`` in cursor order."""
        ...


def _all_rows(batch: Batch) -> npt.NDArray[np.bool_]:
    return np.ones(len(batch), np.bool_)


class LogScanner:
    """The rows a selection wants after a position, up to the log's head, read ``page_rows`` at
    a time. A read that found nothing remembers how far it looked, so the next read from the
    same position goes on from there instead of scanning the same stretch again."""

    def __init__(self, log: LogReader | None, select: Select | None = None, page_rows: int = 5000):
        if page_rows < 1:
            raise ValueError("page_rows must be positive")
        self._log = log
        if select is None:
            self.mask: Callable[[Batch], npt.NDArray[np.bool_]] = _all_rows
        elif isinstance(select, CompiledSelection):
            self.mask = select.mask
        else:
            self.mask = select
        self.page_rows = page_rows
        self._scanned: tuple[int, int] = (-1, -1)  # (after, up to): nothing matches in between

    async def read(self, after: int, limit: int) -> tuple[Batch, int]:
        """Up to ``limit`` wanted rows with ``cursor > after`` in cursor order, and the position
        they cover: every row up to it was either returned or not wanted. When nothing is
        wanted up to the head, the batch is empty and the position is the head read up to."""
        if limit < 1:
            raise ValueError("limit must be positive")
        start = self._scanned[1] if self._scanned[0] == after else after
        log = self._log
        assert log is not None, "a scanner without a log reads nothing"
        while True:
            head = log.log_head
            if start >= head:
                break
            batch = await log.read_log(start, head, self.page_rows)
            if not len(batch):
                break
            picked = batch.take(self.mask(batch))
            if len(picked) > limit:
                picked = picked.head(limit)
                return picked, picked.last
            start = batch.last
            if len(picked):
                return picked, start
        self._scanned = (after, start)
        return empty_batch(), start
