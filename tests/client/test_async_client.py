"""``AsyncClient`` mirrors ``Client``: ``async for`` over history and the resumable stream."""

from __future__ import annotations

import contextlib
from pathlib import Path

from streamgauge.client import AsyncClient, NotFound
from tests.conftest import Server, make_station, rows


async def test_async_client_ingest_history_stream(server: Server, tmp_path: Path) -> None:
    with server.client() as http:
        make_station(http)
    async with AsyncClient(server.url, token=server.token) as c:
        r = await c.ingest("p1", rows(1200), batch_size=500)
        assert (r.accepted, r.batches) == (1200, 3)
        got = [o.cursor async for o in c.history("p1", page_size=500)]
        assert got == list(range(1, 1201))
        assert [p["id"] async for p in c.projects()] == ["p1"]
        try:
            await c.get_device("p1", "nope")
        except NotFound as exc:
            assert "nope" in exc.message
        else:
            raise AssertionError("no NotFound")

        cp = tmp_path / "cursor"
        seen: list[int] = []
        stream = c.stream("p1", since=0, checkpoint=cp, device="d0")
        async with contextlib.aclosing(stream):
            async for o in stream:
                seen.append(o.cursor)
                if len(seen) == 400:
                    break
        await c.ingest("p1", rows(10, start_ms=1_750_000_000_000))
        stream = c.stream("p1", checkpoint=cp, device="d0")
        async with contextlib.aclosing(stream):
            async for o in stream:
                seen.append(o.cursor)
                if len(seen) == 605:
                    break
        assert seen == [x for x in range(1, 1211) if (x - 1) % 2 == 0]
        frame = await c.history_frame("p1", variable="air_temp")
        assert len(frame) == 606
