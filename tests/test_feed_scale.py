"""A thousand concurrent feed sessions with different arguments on one server, each receiving
exactly the observations its arguments select (compared with expectations computed here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import start_server
from tests.test_feed import (
    BY_STID,
    MAXGUST,
    RANGE,
    SENSORS,
    STATIONS,
    Case,
    Feed,
    Obs,
    Report,
    assert_rows,
    feed_token,
    has,
    make_network,
    minute_batch,
    minute_ms,
    near,
    post,
    where,
)

SESSIONS = 1000


def case_of(n: int) -> Case:
    """The n-th session's arguments: a domain, sensors, QC, units and sometimes a filter,
    combined so that no two sessions ask for the same thing."""
    stids = sorted(BY_STID)
    states = ["UT", "CO", "CA", "NV"]
    domain_kind = n % 5
    args: dict[str, str] = {}
    stations = set(BY_STID)
    if domain_kind == 0:
        picked = {states[n % 4], states[(n // 4) % 4]}
        args["state"] = ",".join(sorted(s.lower() for s in picked))
        stations = where(state=picked)
    elif domain_kind == 1:
        nets = [["1"], ["2"], ["153"], ["1", "153"], ["2", "153"]][(n // 5) % 5]
        args["network"] = ",".join(nets)
        stations = where(network=set(nets))
    elif domain_kind == 2:
        picked = {stids[n % len(stids)], stids[(n // 7) % len(stids)]}
        args["stid"] = ",".join(sorted(picked))
        stations = picked
    elif domain_kind == 3:
        centre = stids[(n // 5) % len(stids)]
        args["radius"] = f"{centre},{[50, 400, 800][n % 3]}"
        st = BY_STID[centre]
        stations = near(st.lat, st.lon, [50, 400, 800][n % 3])
    sensors = set(SENSORS)
    if n % 3 == 1:
        sensors = {SENSORS[n % 4], SENSORS[(n // 3) % 4]}
        args["vars"] = ",".join(sorted(sensors))
    remove = frozenset({RANGE})
    if n % 4 == 1:
        args["qc"] = "none"
        remove = frozenset()
    elif n % 4 == 2:
        args["qc"] = MAXGUST
        remove = frozenset({RANGE, MAXGUST})
    english = n % 2 == 1
    if english:
        args["units"] = "english"
    # a threshold per session makes every session's arguments its own
    if n % 2 == 0:
        threshold = 20 + n / SESSIONS * 50
        args["filter_on"] = f"(relative_humidity < {threshold:g})"
        where_ = has("relative_humidity", lambda v: v < threshold)
    else:  # nearly always true, in the session's units
        threshold = n / SESSIONS * 0.2
        args["filter_on"] = f"(wind_gust > {threshold:g}) or (air_temp < -80)"
        gusty = has("wind_gust", lambda v: v > threshold)
        frozen = has("air_temp", lambda v: v < -80)

        def where_(r: Report) -> bool:
            return gusty(r) or frozen(r)

    return Case(args, stations, sensors, remove, where_, english, english)


async def test_a_thousand_concurrent_sessions_each_get_exactly_theirs(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    feeds: list[Feed] = []
    try:
        with srv.client() as c:
            make_network(c)
            token = feed_token(c)
            all_cases = [case_of(n) for n in range(SESSIONS)]
            assert len({c.query for c in all_cases}) == SESSIONS
            for lo in range(0, SESSIONS, 100):
                feeds += await asyncio.gather(
                    *(Feed.open(srv, token, c.query) for c in all_cases[lo : lo + 100])
                )
            assert all(f.auth["code"] == "success" for f in feeds)
            async with asyncio.timeout(60):  # every session subscribed to the live hub
                while srv.engine.hub.subscribers < SESSIONS:
                    await asyncio.sleep(0.01)
            now = minute_ms(int(time.time() * 1000))
            posted: list[Obs] = []
            for m in range(8):
                batch = minute_batch(m, now - (10 - m) * 60_000, m)
                post(c, batch)
                posted += batch
        expected = [case.expect(posted) for case in all_cases]
        assert sum(map(bool, expected)) > SESSIONS * 0.9  # nearly every session gets something
        await asyncio.gather(
            *(f.until({o.key for o in e}) for f, e in zip(feeds, expected, strict=True))
        )
        for case, feed, exp in zip(all_cases, feeds, expected, strict=True):
            assert_rows(case, feed, exp)
        assert {len(STATIONS)} == {len({o.stid for o in posted})}
    finally:
        await asyncio.gather(*(f.close() for f in feeds))
        srv.stop()
