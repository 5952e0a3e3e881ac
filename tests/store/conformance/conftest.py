"""The ``backend`` fixture: every conformance test runs once per storage backend (PostgreSQL on a
fresh database of its own, dropped after; under ``CI`` a missing server fails the test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.pg import fresh_database
from tests.store.conformance.harness import NAMES, Harness, harness


@pytest.fixture(params=NAMES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_database()) if request.param == "postgresql" else None
        h = harness(request.param, tmp_path, url)
        await h.open()
        try:
            yield h
        finally:
            await h.close()
