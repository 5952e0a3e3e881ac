"""How many processes ``streamgauge serve`` runs (``Settings.serving_processes``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamgauge.config import Settings


def test_unset_it_is_the_number_of_cores_and_one_in_the_cluster_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMGAUGE_WORKERS", raising=False)  # tests/conftest.py sets 1
    for name in ("STREAMGAUGE_BUS", "STREAMGAUGE_STORE"):
        monkeypatch.delenv(name, raising=False)
    assert Settings(data=tmp_path).serving_processes() == min(64, os.cpu_count() or 1)
    assert Settings(data=tmp_path, bus="nats://127.0.0.1:4222").serving_processes() == 1
    store = "postgresql://127.0.0.1/x"
    assert Settings(data=tmp_path, store=store).serving_processes() == 1
    assert Settings(data=tmp_path, workers=1).serving_processes() == 1
    monkeypatch.setenv("STREAMGAUGE_WORKERS", "3")
    assert Settings(data=tmp_path).serving_processes() == 3
