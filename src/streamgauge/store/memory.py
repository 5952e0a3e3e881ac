"""Give the memory a store's open freed back to the system.

Loading the registry and the log state reads every metadata row and many index pages: the
rows' objects and SQLite's page caches are freed once loaded, but glibc's allocator keeps most
freed pages (they sit below memory still in use), so the process would go on holding them
as resident memory. ``malloc_trim`` returns the free pages to the system. A no-op where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger("streamgauge.store")


@functools.cache
def _trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc ``malloc_trim(0)``)."""
    fn = _trim()
    if fn is not None:
        fn(0)
