"""Durable consumers (``core/consumers``): the log scanner and the consumer runner over an
in-memory log, then the SQLite positions and ``Engine.consumer`` on a real engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streamgauge.auth import Action, Principal
from streamgauge.config import Settings
from streamgauge.core.consumers import Consumer, LogScanner
from streamgauge.core.engine import Engine
from streamgauge.domain.batch import Batch, concat
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn
from streamgauge.store.api import ConsumerPositions
from streamgauge.store.sqlite.consumers import SqliteConsumerPositions


class MemoryLog:
    """A log in memory: rows (cursor, series), committed in batches; listeners are called
    with every committed batch, as the engine calls its own."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int]] = []
        self.reads = 0
        self.listeners: list[Callable[[Batch], None]] = []

    @property
    def log_head(self) -> int:
        return len(self.rows)

    def commit(self, series: list[int]) -> Batch:
        first = len(self.rows) + 1
        self.rows += [(first + i, s) for i, s in enumerate(series)]
        batch = make_batch(self.rows[first - 1 :])
        for listener in self.listeners:
            listener(batch)
        return batch

    async def read_log(self, after: int, upto: int, limit: int) -> Batch:
        self.reads += 1
        await asyncio.sleep(0)  # a read yields, as the store's does
        return make_batch(self.rows[after:upto][:limit])


def make_batch(rows: list[tuple[int, int]]) -> Batch:
    cursors = np.array([c for c, _ in rows], np.int64)
    series = np.array([s for _, s in rows], np.int64)
    return Batch(1, cursors, series, cursors * 1000, [float(c) for c in cursors], series * 0)


class MemoryPositions:
    def __init__(self) -> None:
        self.stored: dict[str, int] = {}
        self.saves = 0

    async def load(self, name: str) -> int | None:
        return self.stored.get(name)

    async def save(self, name: str, position: int) -> None:
        self.saves += 1
        self.stored[name] = position

    async def forget(self, name: str) -> None:
        self.stored.pop(name, None)


def series_is(n: int) -> Callable[[Batch], npt.NDArray[np.bool_]]:
    return lambda batch: batch.series == n


class Recorder:
    """A handler that records the cursors it was given; ``fail`` makes its next calls raise."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = 0
        self.reached = asyncio.Event()
        self.until = 1 << 62  # set ``reached`` once a batch reaches this cursor

    async def __call__(self, batch: Batch) -> None:
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("handler down")
        self.batches.append(batch.cursors.tolist())
        if batch.last >= self.until:
            self.reached.set()

    @property
    def cursors(self) -> list[int]:
        return [c for b in self.batches for c in b]


# -- the scanner --------------------------------------------------------------------------------


async def test_scanner_returns_wanted_rows_in_cursor_order_and_the_position_covered() -> None:
    log = MemoryLog()
    log.commit([1, 2, 2, 1, 2, 1])
    scanner = LogScanner(log, series_is(1), page_rows=2)
    picked, covered = await scanner.read(0, 10)
    assert picked.cursors.tolist() == [1] and covered == 2  # the first page held one
    picked, covered = await scanner.read(covered, 10)
    assert picked.cursors.tolist() == [4] and covered == 4  # page 3..4
    picked, covered = await scanner.read(covered, 1)
    assert picked.cursors.tolist() == [6] and covered == 6
    picked, covered = await scanner.read(covered, 1)
    assert len(picked) == 0 and covered == 6


async def test_scanner_stops_at_the_limit_and_covers_only_what_it_returns() -> None:
    log = MemoryLog()
    log.commit([1, 1, 1, 2, 1])
    picked, covered = await LogScanner(log, series_is(1), page_rows=5).read(0, 2)
    assert picked.cursors.tolist() == [1, 2] and covered == 2


async def test_scanner_remembers_a_stretch_without_match() -> None:
    log = MemoryLog()
    log.commit([2] * 10)
    scanner = LogScanner(log, series_is(1), page_rows=3)
    picked, covered = await scanner.read(0, 5)
    assert len(picked) == 0 and covered == 10
    reads = log.reads
    assert reads == 4
    picked, covered = await scanner.read(0, 5)  # the same question: not scanned again
    assert len(picked) == 0 and covered == 10 and log.reads == reads
    log.commit([2, 1])
    picked, covered = await scanner.read(0, 5)  # goes on from where it stopped
    assert picked.cursors.tolist() == [12] and log.reads == reads + 1


async def test_scanner_without_selection_takes_every_row() -> None:
    log = MemoryLog()
    log.commit([3, 4, 5])
    picked, covered = await LogScanner(log).read(1, 10)
    assert picked.cursors.tolist() == [2, 3] and covered == 3
    with pytest.raises(ValueError):
        LogScanner(log, page_rows=0)
    with pytest.raises(ValueError):
        await LogScanner(log).read(0, 0)


# -- the consumer -------------------------------------------------------------------------------


async def test_consumer_hands_wanted_rows_in_order_in_bounded_batches() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    log.commit([1, 2] * 12)
    c = Consumer("c", log, positions, handler, select=series_is(1), page_rows=4, start=0)
    assert await c.drain() == 24
    assert handler.cursors == list(range(1, 25, 2))
    assert all(1 <= len(b) <= 4 for b in handler.batches)
    assert positions.stored["c"] == 24
    assert await c.drain() == 24 and len(handler.batches) == 6  # nothing new: nothing handled


async def test_new_consumer_starts_at_the_head_or_at_its_start() -> None:
    log, positions = MemoryLog(), MemoryPositions()
    log.commit([1, 1, 1])
    late, early = Recorder(), Recorder()
    assert await Consumer("late", log, positions, late).load() == 3
    assert positions.stored["late"] == 3  # stored at once: a restart does not move it
    log.commit([1])
    await Consumer("late", log, positions, late).drain()
    await Consumer("early", log, positions, early, start=1).drain()
    assert late.cursors == [4] and early.cursors == [2, 3, 4]


async def test_at_least_once_across_a_restart() -> None:
    log, positions = MemoryLog(), MemoryPositions()
    log.commit(list(range(10)))
    first = Recorder()
    c = Consumer("c", log, positions, first, page_rows=3, start=0)
    assert await c.step()
    first.fail = 1
    with pytest.raises(RuntimeError):
        await c.step()
    assert positions.stored["c"] == 3 and c.position == 3  # the failed batch is not covered
    # The process ends here; a new consumer of the same name resumes from the stored position.
    second = Recorder()
    assert await Consumer("c", log, positions, second, page_rows=3).drain() == 10
    assert first.cursors == [1, 2, 3]
    assert second.cursors == list(range(4, 11))  # nothing lost, the failed rows again


async def test_running_consumer_retries_a_failed_handler() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    log.commit([1, 1])
    handler.fail, handler.until = 2, 2
    c = Consumer("c", log, positions, handler, start=0, retry_seconds=0)
    await c.start()
    await handler.reached.wait()
    await c.stop()
    assert handler.cursors == [1, 2] and positions.stored["c"] == 2
    assert not c.running


async def test_catch_up_then_live_without_gap_or_duplicate() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    for _ in range(5):
        log.commit([1, 2, 1])  # history before the consumer starts
    c = Consumer("c", log, positions, handler, select=series_is(1), page_rows=4, start=0)
    log.listeners.append(c.notify)
    await c.start()
    for i in range(40):  # live commits while it catches up, then while it follows
        log.commit([1, 2, 1])
        if i % 3 == 0:
            await asyncio.sleep(0)
    handler.until = log.log_head
    if handler.cursors and handler.cursors[-1] >= handler.until:
        handler.reached.set()
    await handler.reached.wait()
    await c.stop()
    want = [cursor for cursor, s in log.rows if s == 1]
    assert handler.cursors == want  # in order, every row once
    assert positions.stored["c"] == log.log_head


async def test_stop_and_restart_resumes_live() -> None:
    log, positions = MemoryLog(), MemoryPositions()
    first = Recorder()
    c = Consumer("c", log, positions, first, start=0)
    log.listeners.append(c.notify)
    await c.start()
    log.commit([1])
    first.until = 1
    await first.reached.wait()
    await c.stop()
    log.listeners.remove(c.notify)
    log.commit([1, 1])  # committed while nobody reads
    second = Recorder()
    second.until = 4
    c2 = Consumer("c", log, positions, second)
    log.listeners.append(c2.notify)
    await c2.start()
    log.commit([1])
    await second.reached.wait()
    await c2.stop()
    assert first.cursors == [1] and second.cursors == [2, 3, 4]


async def test_a_stretch_without_match_is_stored_only_at_checkpoints() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    c = Consumer("c", log, positions, handler, select=series_is(1), start=0, checkpoint_rows=5)
    for _ in range(4):
        log.commit([2])
        assert await c.step()
    assert positions.stored["c"] == 0 and positions.saves == 1  # the start only
    log.commit([2])
    assert await c.step()
    assert positions.stored["c"] == 5  # five rows past the last save
    log.commit([2, 1])
    assert await c.step()
    assert positions.stored["c"] == 7 and handler.cursors == [7]  # handled: stored at once
    log.commit([2])
    assert await c.step()
    assert positions.stored["c"] == 7
    await c.stop()  # stopping stores what was covered
    assert positions.stored["c"] == 8 and handler.cursors == [7]


async def test_a_crash_between_checkpoints_reads_again_but_handles_nothing_twice() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    log.commit([1, 2, 2, 2])
    c = Consumer("c", log, positions, handler, select=series_is(1), start=0, page_rows=1)
    while await c.step():
        pass
    assert c.position == 4 and positions.stored["c"] == 1  # no stop: a crash
    again = Recorder()
    assert await Consumer("c", log, positions, again, select=series_is(1)).drain() == 4
    assert handler.cursors == [1] and again.cursors == []
    assert positions.stored["c"] == 4  # drain stores the position reached


# -- SQLite positions and the engine -------------------------------------------------------------


async def open_engine(data: Path) -> Engine:
    e = Engine(Settings(data=data, delivery_poll_seconds=3600), "token")
    await e.start()
    return e


async def test_sqlite_positions_load_save_forget_and_survive_a_restart(tmp_path: Path) -> None:
    engine = await open_engine(tmp_path / "data")
    try:
        positions: ConsumerPositions = engine.consumer_positions
        assert isinstance(positions, SqliteConsumerPositions)
        assert await positions.load("a") is None
        await positions.save("a", 7)
        await positions.save("b", 1)
        await positions.save("a", 9)
        assert await positions.load("a") == 9 and await positions.load("b") == 1
        await positions.forget("b")
        assert await positions.load("b") is None
    finally:
        await engine.stop()
    engine = await open_engine(tmp_path / "data")
    try:
        assert await engine.consumer_positions.load("a") == 9
    finally:
        await engine.stop()


async def test_engine_consumer_follows_ingest_and_resumes_after_a_restart(tmp_path: Path) -> None:
    admin = Principal(None)
    engine = await open_engine(tmp_path / "data")
    try:
        await engine.metadata.create_projects(admin, [ProjectIn(id="p")])
        project = engine.metadata.project(admin, "p", Action.READ)
        await engine.metadata.create_devices(
            project, [DeviceIn(id="d", variables=[VariableIn(id="t", name="air_temp")])]
        )
        handler = Recorder()
        consumer = engine.consumer("test", handler)  # new: from the head on
        await consumer.start()
        handler.until = 2
        await engine.ingest(
            project, b'{"device":"d","variable":"t","time":1000,"value":1}\n', ndjson=True
        )
        await engine.ingest(
            project, b'{"device":"d","variable":"t","time":2000,"value":2}\n', ndjson=True
        )
        await handler.reached.wait()
        assert handler.cursors == [1, 2]
        engine.remove_consumer(consumer)
        assert "test" not in engine.consumers and consumer.notify not in engine.listeners
        await engine.ingest(
            project, b'{"device":"d","variable":"t","time":3000,"value":3}\n', ndjson=True
        )
    finally:
        await engine.stop()
    engine = await open_engine(tmp_path / "data")
    try:
        again = Recorder()
        consumer = engine.consumer("test", again)
        assert await consumer.drain() == 3
        assert again.cursors == [3]
        rows = concat([await engine.read_log(0, 3, 10)])
        assert rows.cursors.tolist() == [1, 2, 3]
    finally:
        await engine.stop()
