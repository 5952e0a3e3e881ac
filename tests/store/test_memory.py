"""store/memory.py: the allocator's thresholds fixed at a serving process's start (unless the
user set them), and free pages given back."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from streamgauge.store import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad, 0))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: fake)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    return fake


def test_the_thresholds_are_fixed_at_a_serving_processs_start(libc: FakeLibc) -> None:
    assert memory.tune_allocator()
    assert libc.calls == [
        ("mallopt", memory.M_MMAP_THRESHOLD, 32 << 20),
        ("mallopt", memory.M_TRIM_THRESHOLD, 4 << 20),
    ]


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_the_users_own_allocator_settings_are_left_alone(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "1048576")
    assert not memory.tune_allocator()
    assert libc.calls == []


def test_without_glibc_nothing_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert not memory.tune_allocator()
    memory.release_free_memory()  # a no-op


def test_the_real_allocator_takes_them_and_gives_free_pages_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """glibc (CI's, on Linux) accepts both thresholds; elsewhere nothing is tuned."""
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    real: Any = memory._libc.__wrapped__()  # noqa: SLF001 - the uncached lookup
    if sys.platform.startswith("linux") and os.environ.get("CI"):
        assert real is not None  # Debian's glibc
    assert memory.tune_allocator() is (real is not None)
    memory.release_free_memory()
