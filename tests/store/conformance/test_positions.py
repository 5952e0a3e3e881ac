"""Consumer positions and what is stored with them: delivery positions and dead letters, alert
channels, the alert log and its actions, the alert rules' progress; a transaction that fails
moves no position."""

from __future__ import annotations

from typing import Any

import pytest

from streamgauge.core.alerts import State, TriggerState
from streamgauge.core.channels import ActionDoc, ChannelDoc, TriggerDoc
from tests.store.conformance.harness import Harness, cols, seed


async def test_delivery_positions(backend: Harness) -> None:
    dl = backend.deliveries
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) is None
    await backend.write(lambda tx: dl.set_cursor(tx, "hook:1", 5, 1000))
    await backend.write(lambda tx: dl.set_cursor(tx, "hook:2", 7, 1000))
    await backend.write(lambda tx: dl.set_cursor(tx, "hook:1", 9, 2000))  # moves, not a second
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) == 9

    def half(tx: Any) -> None:
        dl.set_cursor(tx, "hook:1", 20, 3000)
        raise RuntimeError("the effect failed")

    with pytest.raises(RuntimeError):
        await backend.write(half)
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) == 9
    await backend.reopen()
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) == 9
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:2")) == 7
    await backend.write(lambda tx: dl.forget(tx, "hook:1"))
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) is None
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:2")) == 7


async def test_a_dead_letter_moves_the_position_past_it(backend: Harness) -> None:
    dl = backend.deliveries

    def give_up(cursor: int, status: int | None) -> Any:
        return lambda tx: dl.dead_letter(
            tx,
            "hook:1",
            cursor=cursor,
            method="POST",
            url="http://127.0.0.1:9/x",
            headers={"content-type": "application/json"},
            body=b'{"n": %d}' % cursor,
            born_ms=100,
            now_ms=200 + cursor,
            attempts=3,
            last_status=status,
            last_error=None if status else "refused",
        )

    await backend.write(give_up(4, 500))
    await backend.write(give_up(6, None))
    assert await backend.read(lambda c: dl.get_cursor(c, "hook:1")) == 6
    await backend.reopen()
    letters = await backend.read(lambda c: dl.dead_letters(c, "hook:1", 10))
    assert [(d["cursor"], d["last_status"], d["last_error"]) for d in letters] == [
        (6, None, "refused"),
        (4, 500, None),
    ]
    assert letters[1]["body"] == b'{"n": 4}' and letters[1]["headers"] == {
        "content-type": "application/json"
    }
    assert [d["cursor"] for d in await backend.read(lambda c: dl.dead_letters(c, "hook:1", 1))] == [
        6
    ]
    assert await backend.read(lambda c: dl.dead_letters(c, "hook:2", 10)) == []
    await backend.write(lambda tx: dl.forget(tx, "hook:1"))
    assert await backend.read(lambda c: dl.dead_letters(c, "hook:1", 10)) == []


def channel(id_: str, value: float = 1.0) -> ChannelDoc:
    return ChannelDoc(
        id=id_,
        project="p",
        name=id_,
        triggers=[
            TriggerDoc(
                device="d0",
                variable="t",
                operator=">",
                value=value,
                actions=[ActionDoc(method="HTTP", http_url="http://127.0.0.1:9/a")],
            )
        ],
        created_at="2026-01-01T00:00:00Z",
        last_updated="2026-01-01T00:00:00Z",
    )


async def test_channels_are_stored_and_a_pk_is_never_reused(backend: Harness) -> None:
    s = await seed(backend)
    al = backend.alerts
    a = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("a")))
    b = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("b")))
    await backend.write(lambda tx: al.update_channel(tx, a, channel("a", 5.0)))
    assert await backend.write(lambda tx: al.channel_exists(tx, b))
    await backend.write(lambda tx: al.delete_channel(tx, b))
    assert not await backend.write(lambda tx: al.channel_exists(tx, b))
    await backend.reopen()
    loaded = await backend.read(al.load_channels)
    assert [(pk, p, doc.id, doc.triggers[0].value) for pk, p, doc in loaded] == [
        (a, s.project_pk, "a", 5.0)
    ]
    c = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("c")))
    assert c not in (a, b)


async def test_the_alert_log_and_its_actions(backend: Harness) -> None:
    s = await seed(backend)
    al = backend.alerts
    ch = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("a")))
    assert await backend.read(al.last_alert) == 0

    def fire(n: int, method: str = "HTTP") -> Any:
        def run(tx: Any) -> int:
            alert_id = al.insert_alert(tx, ch, 1000 + n, {"n": n})
            al.insert_action(tx, alert_id, 0, ch, method, f"target-{n}", b"body-%d" % n)
            return alert_id

        return run

    ids = [await backend.write(fire(n)) for n in range(3)]
    actor = await backend.write(fire(3, "ACTOR"))
    assert ids == sorted(ids) and actor > ids[-1]
    assert await backend.read(al.last_alert) == actor
    await backend.reopen()
    assert await backend.read(lambda c: al.slots(c, ch)) == [0]
    items = await backend.read(lambda c: al.slot_items(c, ch, 0, ids[0], 10))
    assert items == [(ids[1], "target-1", b"body-1", 1001), (ids[2], "target-2", b"body-2", 1002)]
    total, page = await backend.read(lambda c: al.list_alerts(c, ch, 0, 2))
    assert total == 4 and [a["n"] for a in page] == [3, 2]  # newest first
    assert await backend.read(lambda c: al.alert_project(c, ids[0])) == "p"
    assert await backend.read(lambda c: al.alert_project(c, 10**9)) is None
    # the actor's work: not done until its outcome says so
    assert await backend.read(al.actor_projects) == [s.project_pk]
    todo = await backend.read(lambda c: al.actor_todo(c, s.project_pk, 10))
    assert [(t[0], t[1], t[2], t[3]) for t in todo] == [(actor, 0, ch, "target-3")]
    await backend.write(lambda tx: al.record_outcome(tx, actor, 0, {"status": "ok"}, True))
    await backend.write(lambda tx: al.record_outcome(tx, actor, 0, {"status": "late"}, False))
    assert await backend.read(lambda c: al.actor_todo(c, s.project_pk, 10)) == []
    total, page = await backend.read(lambda c: al.list_alerts(c, ch, 0, 1))
    assert page[0]["actions"][0]["done"] is True
    assert page[0]["actions"][0]["outcome"] == {"status": "late"}


async def test_the_rules_progress_is_their_position(backend: Harness) -> None:
    s = await seed(backend)
    al = backend.alerts
    ch = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("a")))
    gone = await backend.write(lambda tx: al.insert_channel(tx, s.project_pk, channel("b")))
    assert await backend.read(al.load_progress) == (0, 0, {})
    firing = TriggerState(State.FIRING, 10, 20, None)
    await backend.write(
        lambda tx: al.save_progress(tx, 7, 1234, {(ch, 0): firing, (gone, 0): TriggerState()})
    )
    await backend.write(lambda tx: al.delete_channel(tx, gone))
    await backend.write(lambda tx: al.forget_states(tx, gone))
    await backend.write(lambda tx: al.save_progress(tx, 9, 2345, {(gone, 1): TriggerState()}))
    await backend.reopen()
    assert await backend.read(al.load_progress) == (9, 2345, {(ch, 0): firing})
    await backend.write(lambda tx: al.save_progress(tx, 12, 3456, {(ch, 0): None}))
    assert await backend.read(al.load_progress) == (12, 3456, {})


async def test_the_rules_replay_the_log_after_their_position(backend: Harness) -> None:
    s = await seed(backend)
    store = backend.store
    await store.append(cols(s.project_pk, [s.var["d0.w"]] * 4, [1, 2, 3, 4], [1.0, 2.0, 3.0, "x"]))
    got = await backend.read(lambda c: backend.alerts.log_after(c, 1, 3, 10))
    assert [tuple(r[:5]) for r in got] == [
        (2, store.registry.series[(s.var["d0.w"], 1)], 2, 2.0, 0),
        (3, store.registry.series[(s.var["d0.w"], 1)], 3, 3.0, 0),
    ]
    assert [r[0] for r in await backend.read(lambda c: backend.alerts.log_after(c, 0, 4, 2))] == [
        1,
        2,
    ]
