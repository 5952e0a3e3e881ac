"""The server runs with its own garbage-collector thresholds and gives Python's back at stop."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from streamgauge.config import Settings
from tests.conftest import start_server


def test_the_server_sets_gc_thresholds_and_restores_them(tmp_path: Path) -> None:
    before = gc.get_threshold()
    server = start_server(tmp_path / "data", gc_thresholds=(4000, 15, 30))
    try:
        assert gc.get_threshold() == (4000, 15, 30)
    finally:
        server.stop()
    assert gc.get_threshold() == before


def test_gc_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMGAUGE_GC_THRESHOLDS", "[1000, 10, 10]")
    assert Settings().gc_thresholds == (1000, 10, 10)
