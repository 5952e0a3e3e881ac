"""``/metrics`` reports memory: the process's resident memory (prometheus_client's process
collector) and the registry's size (series, devices, variables, estimated bytes)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from streamgauge.core import footprint
from streamgauge.core.registry import Registry
from tests.conftest import make_station, rows

OBS = "/api/v1/projects/p1/observations"


def samples(client: httpx.Client) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    return {
        s.name: s.value for family in text_string_to_metric_families(r.text) for s in family.samples
    }


def test_metrics_report_resident_memory_and_the_registry(client: httpx.Client) -> None:
    before = samples(client)
    assert before["process_resident_memory_bytes"] > 10 * 2**20  # a Python server: tens of MB
    assert before["streamgauge_registry_series"] == 0
    make_station(client, devices=3)
    assert client.post(OBS, json=rows(12, devices=3)).status_code == 200
    after = samples(client)
    assert after["streamgauge_registry_devices"] == 3
    assert after["streamgauge_registry_variables"] == 6
    assert after["streamgauge_registry_series"] == 6
    assert after["streamgauge_registry_bytes"] > 0  # walked at the first scrape, then every 10 s
    # 12 rows, fewer than an index step: in the unindexed tail (reads scan it) until idle
    assert 0 <= after["streamgauge_index_lag_rows"] <= 12


def test_the_estimate_grows_with_the_registry() -> None:
    """The estimate follows the registry's content: ten times the records, about ten times the
    bytes beyond the empty registry (sampling keeps each walk bounded)."""
    empty = footprint.estimate(Registry()).bytes

    def filled(n: int) -> int:
        reg = Registry()
        reg.derived = {("k", i): [float(i)] * 8 for i in range(n)}
        return footprint.estimate(reg).bytes - empty

    small, large = filled(1_000), filled(10_000)
    assert 7 * small < large < 13 * small
    reg = Registry()
    cached = footprint.Cached(reg, seconds=3600)
    first = cached.get().bytes
    reg.derived = {i: [0.0] * 100 for i in range(1000)}
    assert cached.get().bytes == first  # walked again only after ``seconds``
