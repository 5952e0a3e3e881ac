"""The ``Store`` protocol: what the engine needs from storage, whatever the backend.

The embedded implementation is ``streamgauge.store.sqlite.SqliteStore``. Metadata reads are
served from the in-memory ``Registry`` the store keeps warm; observation reads go to storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamgauge.core.batch import Batch
from streamgauge.store.registry import Registry


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    first_cursor: int | None
    last_cursor: int | None


@dataclass(frozen=True, slots=True)
class IngestColumns:
    """A validated batch, resolved to variable pks, ready for the log."""

    project_pk: int
    variable_pks: npt.NDArray[np.int64]
    sets: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    values: list[float | str | None]
    qc: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    project_pk: int
    series: tuple[int, ...] | None = None  # only these series (None: every series of the project)
    qc_remove: int = 0  # leave out rows with any of these QC flag bits
    start: int | None = None  # ms, inclusive
    end: int | None = None  # ms, exclusive
    after: tuple[int, int] | None = None  # keyset (time, cursor) of the last row already read
    times: tuple[int, ...] | None = None  # only rows at these times
    limit: int = 1000


class Store(Protocol):
    registry: Registry

    @property
    def head(self) -> int:
        """The last committed and published cursor (0 when the log is empty)."""
        ...

    async def open(self, publish: Callable[[Batch], None]) -> None: ...

    async def close(self) -> None: ...

    async def append(self, columns: IngestColumns) -> AppendResult: ...

    async def read_log(self, after: int, upto: int, limit: int) -> Batch:
        """Committed rows with ``after < cursor <= upto`` in cursor order, all projects."""
        ...

    async def history(self, query: HistoryQuery) -> Batch:
        """Rows of a project ordered by (time, cursor), up to ``limit``."""
        ...
