"""The ``backend`` fixture: every conformance test runs once per storage backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.store.conformance.harness import NAMES, Harness, harness


@pytest.fixture(params=NAMES)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h = harness(request.param, tmp_path)
    await h.open()
    try:
        yield h
    finally:
        await h.close()
