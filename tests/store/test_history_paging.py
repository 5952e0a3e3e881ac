"""History paging with a filter (issue 11 item 19): linear, bounded per request, exact."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, make_station, rows, start_server

SCAN = 100  # history_scan_rows of these servers (the smallest allowed)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("paging") / "data", history_scan_rows=SCAN)
    try:
        yield server
    finally:
        server.stop()


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000 + 0.5)


def _pages(c: httpx.Client, project: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    page = None
    while True:
        q = dict(params)
        if page is not None:
            q["page"] = page
        r = c.get(f"/api/v1/projects/{project}/observations", params=q)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        yield body
        page = body["next"]
        if page is None:
            return


def test_a_filter_that_matches_nothing_ends_in_bounded_pages(srv: Server) -> None:
    """issue 11 item 19: a filtered read over many rows that match nothing is served in pages
    that each scan at most history_scan_rows rows (so each returns at once, empty, with a next
    token), and the paging ends: about rows / scan pages, not one endless request."""
    n = 3000
    with srv.client() as c:
        make_station(c, project="nothing", devices=4)
        r = c.post("/api/v1/projects/nothing/observations", json=rows(n, devices=4))
        assert r.status_code == 200, r.text
        pages = list(_pages(c, "nothing", {"filter": "(air_temp > 1000)", "limit": 10}))
    assert all(p["observations"] == [] for p in pages)
    assert n // SCAN <= len(pages) <= n // SCAN + 2


_sensor = st.sampled_from(["air_temp", "wind_speed"])
_op = st.sampled_from([">", ">=", "<", "<=", "=", "!="])
_cond = st.builds(lambda s, o, v: f"({s} {o} {v})", _sensor, _op, st.integers(0, 9))


def _expr(depth: int = 2) -> st.SearchStrategy[str]:
    if depth == 0:
        return _cond
    sub = _expr(depth - 1)
    return st.one_of(
        _cond,
        st.builds(lambda a, b: f"{a} and {b}", sub, sub),
        st.builds(lambda a, b: f"({a} or {b})", sub, sub),
    )


def _holds(expr: str, report: list[tuple[str, float]]) -> bool:
    """The filter judged by brute force: each condition holds when some row of the report with
    that sensor satisfies it (Python evaluates the same and/or/parentheses)."""
    ops = {
        ">": float.__gt__,
        ">=": float.__ge__,
        "<": float.__lt__,
        "<=": float.__le__,
        "=": float.__eq__,
        "!=": float.__ne__,
    }

    def cond(text: str) -> str:
        sensor, op, value = text.strip("()").split()
        hit = any(s == sensor and ops[op](v, float(value)) for s, v in report)
        return str(hit)

    python = re.sub(r"\((\w+ [<>=!]+ \d+)\)", lambda m: cond(m.group(0)), expr)
    return bool(eval(python))  # noqa: S307 - only True/False/and/or/parentheses remain


_row = st.tuples(
    st.integers(0, 2),  # device: d0, d1 at site s1 (one station), d2 without a site
    st.sampled_from(["air_temp", "wind_speed"]),
    st.integers(0, 40),  # time slot
    st.integers(0, 9),  # value
)
_gaps = st.lists(st.sampled_from([1, 1000, 60_000, 3_600_000, 86_400_000 * 30]), min_size=41)

_projects = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.lists(_row, min_size=1, max_size=250),
    gaps=_gaps,
    expr=st.one_of(st.none(), _expr()),
    limit=st.integers(1, 40),
)
def test_filtered_paging_returns_each_matching_row_once(
    srv: Server,
    data: list[tuple[int, str, int, int]],
    gaps: list[int],
    expr: str | None,
    limit: int,
) -> None:
    """issue 11 item 19: following `next` through a filtered read (pages bounded by the scan
    limit, windows over irregular gaps in time) returns exactly the rows of the reports that
    satisfy the filter by brute force, each once, in (time, cursor) order; without a filter,
    every row once (pages of exactly `limit` rows but the last)."""
    project = f"prop{next(_projects)}"
    times = list(itertools.accumulate(gaps[:41], initial=1_700_000_000_000))
    latest: dict[tuple[int, str, int], int] = {}
    for device, var, slot, value in data:
        latest[(device, var, slot)] = value  # one value per series and time
    with srv.client() as c:
        assert c.post("/api/v1/projects", json={"id": project}).status_code == 201
        r = c.post(f"/api/v1/projects/{project}/sites", json={"id": "s1", "lat": 1, "lon": 1})
        assert r.status_code == 201, r.text
        devices = [
            {
                "id": f"d{i}",
                **({"site": "s1"} if i < 2 else {}),
                "variables": [
                    {"name": "air_temp", "unit": "degC"},
                    {"name": "wind_speed", "unit": "m/s"},
                ],
            }
            for i in range(3)
        ]
        r = c.post(f"/api/v1/projects/{project}/devices", json=devices)
        assert r.status_code == 201, r.text
        body = [
            {"device": f"d{d}", "variable": v, "time": times[t], "value": float(x)}
            for (d, v, t), x in latest.items()
        ]
        r = c.post(f"/api/v1/projects/{project}/observations", json=body)
        assert r.status_code == 200, r.text
        params: dict[str, Any] = {"limit": limit}
        if expr is not None:
            params["filter"] = expr
        pages = list(_pages(c, project, params))
        got = [
            (o["device"], o["variable"], _ms(o["time"]), o["cursor"])
            for p in pages
            for o in p["observations"]
        ]
    if expr is None:
        assert all(len(p["observations"]) == limit for p in pages[:-1])
    reports: dict[tuple[str, int], list[tuple[str, float]]] = {}
    for (d, v, t), x in latest.items():
        station = "s1" if d < 2 else f"d{d}"
        reports.setdefault((station, times[t]), []).append((v, float(x)))
    want = sorted(
        (f"d{d}", v, times[t])
        for (d, v, t) in latest
        if expr is None or _holds(expr, reports[("s1" if d < 2 else f"d{d}", times[t])])
    )
    assert sorted((d, v, t) for d, v, t, _ in got) == want
    keys = [(t, cur) for _, _, t, cur in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
