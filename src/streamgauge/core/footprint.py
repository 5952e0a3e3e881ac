"""How big the registry is: counts and an estimate of its bytes, for ``/metrics``.

The estimate walks the registry's attributes: numpy arrays count their buffers exactly; a
container counts its own size plus, for its entries, the average size of up to ``SAMPLE``
of them (followed a few references deep, objects shared with an earlier entry counted once)
times its length. Interned strings and the catalog entries that records share are counted
with the first entry that reaches them, so the figure leans high for small registries and is
within a few tens of percent for large ones (compare ``process_resident_memory_bytes``). It
reads the registry without locks: a size that changes while it is walked only shifts the
estimate. Nothing here changes the registry.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE = 32  # entries of a container measured to estimate the rest
DEPTH = 4  # references followed from an attribute of the registry


@dataclass(frozen=True, slots=True)
class RegistrySize:
    series: int
    devices: int
    variables: int
    bytes: int


def _size(obj: Any, seen: set[int], depth: int) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes) + sys.getsizeof(obj) - (obj.nbytes if obj.base is None else 0)
    size = sys.getsizeof(obj)
    if depth <= 0 or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return size
    if isinstance(obj, dict):
        items = list(obj.items())
        if not items:
            return size
        sample = items[:: max(1, len(items) // SAMPLE)][:SAMPLE]
        part = sum(_size(k, seen, depth - 1) + _size(v, seen, depth - 1) for k, v in sample)
        return size + part * len(items) // len(sample)
    if isinstance(obj, list | tuple | set | frozenset):
        seq = list(obj)
        if not seq:
            return size
        sample = seq[:: max(1, len(seq) // SAMPLE)][:SAMPLE]
        return size + sum(_size(v, seen, depth - 1) for v in sample) * len(seq) // len(sample)
    fields: list[Any] = []
    if hasattr(obj, "__dict__"):
        fields += list(vars(obj).values())
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            fields.append(getattr(obj, slot))
    return size + sum(_size(v, seen, depth - 1) for v in fields)


def counts(registry: Any) -> tuple[int, int, int]:
    """Series, devices and variables of ``registry``."""
    return (
        len(getattr(registry, "series_by_pk", ())),
        len(getattr(registry, "devices_by_pk", ())),
        len(getattr(registry, "variables_by_pk", ())),
    )


def estimate(registry: Any) -> RegistrySize:
    """Counts and estimated bytes of ``registry`` (the engine's ``Registry``)."""
    seen: set[int] = set()
    total = sum(_size(v, seen, DEPTH) for v in vars(registry).values())
    return RegistrySize(*counts(registry), bytes=total)


class Cached:
    """The counts at every call, the bytes walked at most every ``seconds``: a scrape of
    ``/metrics`` reads four gauges, and a large registry takes milliseconds to walk."""

    def __init__(self, registry: Any, seconds: float = 10.0) -> None:
        self.registry = registry
        self.seconds = seconds
        self._at = -float("inf")
        self._bytes = 0

    def get(self) -> RegistrySize:
        now = time.monotonic()
        if now - self._at >= self.seconds:
            self._bytes = estimate(self.registry).bytes
            self._at = now
        return RegistrySize(*counts(self.registry), bytes=self._bytes)
