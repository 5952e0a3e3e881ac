"""Private files: the data folder is 0700 and every file of it that holds data or secrets (the
SQLite database with its ``-wal`` and ``-shm`` files, ``admin-token``, ``token-key``) is 0600,
whatever the process umask. Existing files and folders with looser modes are tightened on start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) and make it 0700 if it is group or world
    accessible. Parents that already exist are left alone."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)


def private_file(path: Path) -> None:
    """Make ``path`` 0600, creating it empty if missing (so that a program opening it later,
    SQLite say, never creates it with the umask's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        _tighten(path, FILE_MODE)
    else:
        os.close(fd)
        _tighten(path, FILE_MODE)  # O_CREAT's mode is masked by the umask; never widened


def tighten_if_present(path: Path) -> None:
    """Make an existing file 0600; nothing if it does not exist."""
    try:
        _tighten(path, FILE_MODE)
    except FileNotFoundError:
        pass


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current != mode:
        path.chmod(mode)


def index_path(path: Path) -> Path:
    """The file of the log's (series, time) index beside the database ``path``
    (``streamgauge.db`` -> ``streamgauge-index.db``): a database of its own, so the indexer
    thread commits to it while the writer commits to the log (``SqliteStore._indexer``)."""
    return path.with_name(f"{path.stem}-index{path.suffix}")
