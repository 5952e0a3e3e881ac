"""Give the memory a store's open freed back to the system, and keep it given back.

Loading the registry and the log state reads every metadata row and many index pages: the
rows' objects and SQLite's page caches are freed once loaded, but glibc's allocator keeps most
freed pages (they sit below memory still in use), so the process would go on holding them
as resident memory. ``malloc_trim`` returns the free pages to the system. A no-op where the C
library is not glibc. ``tune_allocator`` fixes the thresholds a serving process frees by.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("streamgauge.store")


# glibc's ``mallopt`` parameters (malloc.h) and the values ``tune_allocator`` sets.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 4 << 20
# Set by the user: their choice is left as it is.
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_allocator() -> bool:
    """Fix glibc's thresholds for a serving process, at its start; False where they are the
    user's (``MALLOC_*_`` or ``GLIBC_TUNABLES`` in the environment) or not glibc's.

    By default they move: freeing a big block that was mapped on its own (a numpy column, the
    JSON text of a read) raises the size from which blocks are mapped on their own to that
    block's, and the free space a heap keeps at its top to twice that. So big blocks come from
    the heaps from then on, and each reader thread's heap kept up to tens of megabytes it had
    freed: ``malloc_trim`` gives back free pages inside a heap, never a thread's heap's top.
    Fixed, blocks up to ``MMAP_THRESHOLD`` come from the heaps (reused without page faults:
    ingest measured the same) and a heap's top above ``TRIM_THRESHOLD`` goes back when freed.
    With 30,000 stations, a writer settled at 464 bytes a series above an empty one instead of
    558 (``python -m bench restart``)."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    libc = _libc()
    if libc is None:
        return False
    mmap: int = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim: int = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return mmap == 1 and trim == 1
