"""Every durable reader of the log is a ``core/consumers.Consumer`` (by type): the alert rules,
deliveries, the DT connectors (deliveries over a log source), DT reported state and feed
sessions; each resumes after a restart from its stored position without losing or repeating
an effect. Then the consumer's live path (``offer``) over an in-memory log: at the head no
store read, behind it reads the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from streamgauge.auth import Action, Principal
from streamgauge.core.alerting import RulesConsumer
from streamgauge.core.channels import ChannelDoc, TriggerDoc
from streamgauge.core.consumers import Consumer
from streamgauge.core.deliveries import Delivery
from streamgauge.core.engine import Engine
from streamgauge.core.registry import ProjectRec
from streamgauge.domain.batch import Batch
from streamgauge.domain.model import DeviceIn, ProjectIn, VariableIn, now_iso
from streamgauge.faces.dt.connectors import Connector
from streamgauge.faces.dt.face import DTFace
from streamgauge.faces.dt.state import Reported
from streamgauge.faces.synoptic.feed import SessionConsumer
from streamgauge.store.feedsessions import SessionPositions
from tests.core.test_consumers import MemoryLog, MemoryPositions, Recorder
from tests.test_deliveries import ListSource, Receiver, settings, until

ADMIN = Principal(None)


async def open_engine(data: Path, **kw: Any) -> Engine:
    e = Engine(settings(data, **kw), "token")
    await e.start()
    return e


async def project_with(engine: Engine, *variables: tuple[str, str]) -> ProjectRec:
    if "p" not in engine.registry.projects:
        await engine.metadata.create_projects(ADMIN, [ProjectIn(id="p")])
        project = engine.metadata.project(ADMIN, "p", Action.READ)
        devices = [DeviceIn(id="d", variables=[VariableIn(id=v, name=n) for v, n in variables])]
        await engine.metadata.create_devices(project, devices)
    return engine.metadata.project(ADMIN, "p", Action.READ)


async def put(engine: Engine, project: ProjectRec, variable: str, t: int, value: Any) -> None:
    row = {"device": "d", "variable": variable, "time": t, "value": value}
    await engine.ingest(project, orjson.dumps(row), ndjson=True)


# -- alert rules ---------------------------------------------------------------------------------


async def alert_values(engine: Engine) -> list[float]:
    ch = engine.channels.get("hot")
    assert ch is not None
    _, alerts = await engine.channels.alerts(ch, 0, 100)
    return sorted(a["value"] for a in alerts)


async def test_alert_rules_are_a_consumer_that_resumes_without_loss_or_repeat(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    engine = await open_engine(data, alert_flush_seconds=3600)  # alerts wait for a write
    try:
        rules = engine.alerting.consumer
        assert isinstance(rules, Consumer) and isinstance(rules, RulesConsumer)
        project = await project_with(engine, ("t", "air_temp"))
        stamp = now_iso()
        trigger = TriggerDoc(device="d", variable="t", operator=">", value=30)
        doc = ChannelDoc(
            id="hot", project="p", name="hot", triggers=[trigger], created_at=stamp,
            last_updated=stamp,
        )  # fmt: skip
        await engine.channels.create(project, doc)
        await put(engine, project, "t", 1000, 35.0)  # fires
        await put(engine, project, "t", 2000, 10.0)  # resolves
        await engine.alerting.commit()  # written: the alert and the position, one transaction
        assert await alert_values(engine) == [35.0]
        assert rules.saved == rules.position == engine.log_head
        await put(engine, project, "t", 3000, 36.0)  # fires: judged live, not yet written
        assert rules.position == engine.log_head and rules.saved < rules.position

        async def crash() -> None:  # as if killed: no last write of the progress
            for task in engine.alerting._tasks:
                task.cancel()

        engine.alerting.stop = crash  # type: ignore[method-assign]
    finally:
        await engine.stop()
    engine = await open_engine(data, alert_flush_seconds=3600)
    try:
        assert engine.alerting.replayed == 1  # only the row after the stored position
        await engine.alerting.commit()
        assert await alert_values(engine) == [35.0, 36.0]  # the lost one raised, none twice
    finally:
        await engine.stop()
    engine = await open_engine(data)
    try:
        assert engine.alerting.replayed == 0  # the clean stop left nothing to judge
        assert await alert_values(engine) == [35.0, 36.0]
    finally:
        await engine.stop()


# -- deliveries and DT connectors ----------------------------------------------------------------


async def test_a_delivery_is_a_consumer_that_resumes_without_repeating(tmp_path: Path) -> None:
    receiver = Receiver().start()
    data = tmp_path / "data"
    source = ListSource(receiver.url)
    source.append(10)
    try:
        engine = await open_engine(data)
        try:
            engine.deliveries.add("k", source, start_after=0)
            assert isinstance(engine.deliveries.delivery("k"), Consumer)
            await until(lambda: receiver.ns() == list(range(1, 11)), "the first ten")
        finally:
            await engine.stop()  # saves the cursor (the position)
        source.append(5)
        engine = await open_engine(data)
        try:
            engine.deliveries.add("k", source)  # a stored key resumes from its cursor
            await until(lambda: receiver.ns()[-1:] == [15], "the rest")
        finally:
            await engine.stop()
        assert receiver.ns() == list(range(1, 16))  # nothing lost, nothing twice
    finally:
        receiver.stop()


async def test_a_dt_connector_is_a_delivery_consumer_that_resumes(tmp_path: Path) -> None:
    receiver = Receiver().start()
    data = tmp_path / "data"
    doc = {
        "displayName": "push",
        "type": "HTTP_PUSH",
        "status": "ACTIVE",
        "events": ["touch"],
        "labels": [],
        "httpConfig": {"url": receiver.url, "signatureSecret": "", "headers": {}},
    }
    try:
        engine = await open_engine(data)
        face = DTFace(engine)
        await face.start()
        try:
            project = await project_with(engine, ("touch", "touch"), ("t", "air_temp"))
            await put(engine, project, "touch", 1000, None)  # before the connector: not pushed
            await face.connectors.create(Connector(0, project.pk, "c1", doc))
            await put(engine, project, "touch", 2000, None)
            await put(engine, project, "t", 2500, 1.0)  # no event of its types
            await until(lambda: len(receiver.got) == 1, "the first push")
            delivery = engine.deliveries.delivery("dt-connector:c1")
            assert isinstance(delivery, Consumer) and isinstance(delivery, Delivery)
        finally:
            await face.stop()
            await engine.stop()
        engine = await open_engine(data)
        face = DTFace(engine)
        await face.start()
        try:
            project = await project_with(engine)
            await put(engine, project, "touch", 3000, None)
            await until(lambda: len(receiver.got) == 2, "the push after the restart")
        finally:
            await face.stop()
            await engine.stop()
        times = [orjson.loads(r.body)["event"]["timestamp"] for r in receiver.got]
        assert len(times) == 2 and times[0] < times[1]  # 2000 then 3000: none lost, none twice
    finally:
        receiver.stop()


# -- DT reported state ---------------------------------------------------------------------------


async def test_dt_reported_state_is_a_consumer_from_the_head_rebuilt_after_a_restart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    engine = await open_engine(data)
    face = DTFace(engine)
    await face.start()
    try:
        reported = face.reported
        assert isinstance(reported, Consumer) and isinstance(reported, Reported)
        assert reported.position == engine.log_head  # starts at the head
        project = await project_with(engine, ("co2", "co2"))
        dev = engine.registry.devices[(project.pk, "d")]
        await reported.load_devices([dev])  # a DT read asked: its rows are kept from now on
        reads = engine.store.read_log
        calls: list[int] = []

        async def counting(after: int, upto: int, limit: int) -> Batch:
            calls.append(after)
            return await reads(after, upto, limit)

        engine.store.read_log = counting  # type: ignore[method-assign]
        await put(engine, project, "co2", 1000, 500.0)
        await put(engine, project, "co2", 2000, 612.0)
        assert reported.latest(dev.pk)["co2"][2] == 612.0  # current when ingest returned
        assert reported.position == engine.log_head and not reported._queue
        assert calls == []  # live: no log read
        engine.store.read_log = reads  # type: ignore[method-assign]
    finally:
        await face.stop()
        await engine.stop()
    engine = await open_engine(data)
    face = DTFace(engine)
    await face.start()
    try:
        assert face.reported.position == engine.log_head
        dev = engine.registry.devices[(engine.registry.projects["p"].pk, "d")]
        await face.reported.load_devices([dev])  # rebuilt from a history read
        assert face.reported.latest(dev.pk)["co2"][2] == 612.0
    finally:
        await face.stop()
        await engine.stop()


# -- feed sessions -------------------------------------------------------------------------------


async def test_a_feed_session_is_a_consumer_whose_position_is_its_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = await open_engine(data)
    try:
        project = await project_with(engine, ("t", "air_temp"))
        token, secret = await engine.feeds.create_token(project.pk, "feed")
        session = await engine.feeds.create_session(token, "vars=air_temp", engine.log_head)
        consumer = SessionConsumer(engine, session)
        assert isinstance(consumer, Consumer)
        assert isinstance(engine.feeds.positions(session), SessionPositions)
        assert await consumer.load() == 0
        await put(engine, project, "t", 1000, 1.0)
        await put(engine, project, "t", 2000, 2.0)
        consumer.position = 1  # pushed up to cursor 1
        await consumer.save()
        assert session.position == 1
        await engine.feeds.closed(session)  # the connection ended: the row is written
    finally:
        await engine.stop()
    engine = await open_engine(data)
    try:
        tok = engine.feeds.token_for(secret)
        assert tok is not None
        found = await engine.feeds.session(tok, session.id)
        assert found is not None
        again = SessionConsumer(engine, found)
        assert await again.load() == 1  # resumes after what was pushed: cursor 2 comes next
    finally:
        await engine.stop()


# -- the live path -------------------------------------------------------------------------------


async def test_at_the_head_live_batches_are_handled_without_a_store_read() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    log.commit([1, 2])
    c = Consumer("c", log, positions, handler, select=lambda b: b.series == 1)
    log.listeners.append(c.offer)
    await c.start()  # new: starts at the head
    handler.until = 7
    for _ in range(3):
        log.commit([1, 2])
    await handler.reached.wait()
    await c.stop()
    assert handler.cursors == [3, 5, 7] and log.reads == 0
    assert positions.stored["c"] == 8


class Judge(Consumer):
    """A synchronous consumer: judges live batches in the listener, reads the log when behind."""

    synchronous = True

    def __init__(self, log: MemoryLog, positions: MemoryPositions) -> None:
        super().__init__("judge", log, positions, start=0)
        self.seen: list[int] = []
        self.fail = False

    def live(self, batch: Batch) -> bool:
        if self.fail:
            raise RuntimeError("judge down")
        self.seen += batch.cursors.tolist()
        return True

    async def handle(self, batch: Batch) -> None:
        self.seen += batch.cursors.tolist()


async def test_a_synchronous_consumer_judges_in_the_listener_and_reads_when_behind() -> None:
    log, positions = MemoryLog(), MemoryPositions()
    log.commit([1, 1])  # before it starts: read from the log
    judge = Judge(log, positions)
    log.listeners.append(judge.offer)
    await judge.drain()
    reads = log.reads
    log.commit([1])
    assert judge.seen == [1, 2, 3] and judge.position == 3 and log.reads == reads
    judge.fail = True
    log.commit([1])  # the live handler fails: the row is left to the log
    judge.fail = False
    log.commit([1])  # a gap after the failure: not judged live either
    assert judge.seen == [1, 2, 3] and judge.position == 3
    await judge.drain()
    assert judge.seen == [1, 2, 3, 4, 5] and log.reads > reads
    log.commit([1])  # at the head again: live
    assert judge.seen == [1, 2, 3, 4, 5, 6]


async def test_an_overflowing_live_queue_falls_back_to_the_log_without_gap_or_repeat() -> None:
    log, positions, handler = MemoryLog(), MemoryPositions(), Recorder()
    c = Consumer("c", log, positions, handler, start=0, page_rows=2, live_rows=3)
    log.listeners.append(c.offer)
    await c.load()
    for _ in range(4):
        log.commit([1, 1])  # 8 rows queued at most 3: the queue is dropped
    await c.drain()
    assert handler.cursors == list(range(1, 9)) and log.reads > 0
    await asyncio.sleep(0)
