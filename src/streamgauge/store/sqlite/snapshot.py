"""The registry kept in a file beside the database, for a faster start.

On open the store builds the registry (``ReadModel``) from the metadata tables: for 30,000
stations and 180,000 series, about a second of Python (a document parsed per site and device,
the variable and series columns). A clean stop writes what the registry then holds
(``ReadModel.snapshot``, pickled) to ``registry.snapshot``; the next open takes it instead
(``restore_snapshot``, about a tenth of that) when it was taken of the same tables by the same
code, and else reads the tables as before.

"The same tables" is a fingerprint read from the database on both sides: the log's id, the
schema version, the last metadata event's number (every change of metadata stores its events
in its own transaction, ``metadata.write_events``), the count of changes to the metadata
tables' rows that their triggers keep (``meta_edits``, schema 13: a hand edit with the sqlite3
shell moves it too; series' inserts excepted, ingest adds hundreds a batch) and the row count
and highest pk of each metadata table. "The same code": a digest of the sources that build
the registry (the ``core`` and ``domain`` packages) and the versions of Python, numpy and
pydantic (the pickled objects are theirs). Anything else (a file that does not match, is
torn or unreadable) is ignored: the tables are read. So a snapshot never makes a registry that
differs from the tables: after a kill -9 it is either still exact (no metadata changed since
it was written) or not used.

The file is the server's own, as private as the database (0600, in the 0700 data folder), and
is read only by this server: it is trusted as the database is (``pickle``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

import streamgauge
from streamgauge.domain.readmodel import ReadModel
from streamgauge.store import files
from streamgauge.store.sqlite import metadata

log = logging.getLogger("streamgauge.store")

SNAPSHOT_NAME = "registry.snapshot"
FORMAT = 1  # the layout of the file: a header pickle, then the state pickle

# The metadata tables whose row count and highest pk the fingerprint holds.
_PK_TABLES = ("projects", "sites", "devices", "variables", "series", "accounts")
_COUNTED = ("roles", "account_keys")


def snapshot_path(db: Path) -> Path:
    return db.with_name(SNAPSHOT_NAME)


def fingerprint(conn: sqlite3.Connection) -> tuple[Any, ...]:
    """What the registry is built from, in ``conn``'s current snapshot of the database (read
    it in the transaction the tables are read in, or with no writer running)."""
    one = conn.execute
    parts: list[Any] = [
        str(one("SELECT value FROM state WHERE key = 'log'").fetchone()[0]),
        int(one("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]),
        metadata.events_head(conn),
        int(one("SELECT value FROM state WHERE key = 'meta_edits'").fetchone()[0]),
    ]
    for table in _PK_TABLES:
        count, top = one(f"SELECT count(*), coalesce(max(pk), 0) FROM {table}").fetchone()
        parts.append((table, int(count), int(top)))
    for table in _COUNTED:
        parts.append((table, int(one(f"SELECT count(*) FROM {table}").fetchone()[0])))
    return tuple(parts)


@functools.cache
def code_digest() -> str:
    """The sources that build the registry and the versions its pickled objects depend on."""
    h = hashlib.blake2b(digest_size=16)
    for part in (FORMAT, sys.version, np.__version__, pydantic.VERSION, streamgauge.__version__):
        h.update(f"{part}\0".encode())
    root = Path(streamgauge.__file__).parent
    for package in ("core", "domain"):
        for source in sorted((root / package).rglob("*.py")):
            h.update(source.relative_to(root).as_posix().encode() + b"\0")
            h.update(source.read_bytes())
    return h.hexdigest()


def save(path: Path, registry: ReadModel, fp: tuple[Any, ...]) -> None:
    """Write ``registry``'s snapshot, taken of the tables ``fp`` describes, to ``path``
    (a new file renamed over the old one: a reader sees the old file or the new one)."""
    header = {"format": FORMAT, "code": code_digest(), "fingerprint": fp}
    state = registry.snapshot()
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    files.private_file(tmp)
    with open(tmp, "wb") as f:
        pickle.dump(header, f, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def restore(path: Path, registry: ReadModel, fp: tuple[Any, ...]) -> bool:
    """Load ``registry`` (empty) from the snapshot at ``path`` if it was taken of the tables
    ``fp`` describes by this code; False (the registry untouched) if not, or if there is none."""
    try:
        with open(path, "rb") as f:
            header = pickle.load(f)
            if not (
                isinstance(header, dict)
                and header.get("format") == FORMAT
                and header.get("code") == code_digest()
                and header.get("fingerprint") == fp
            ):
                log.info("the registry snapshot %s is of other tables or code: not used", path)
                return False
            state = pickle.load(f)
    except FileNotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: the tables are read
        log.warning("the registry snapshot %s cannot be read (%s): not used", path, exc)
        return False
    if not isinstance(state, dict) or not registry.restore_snapshot(state):
        log.warning("the registry snapshot %s does not fit this registry: not used", path)
        return False
    return True
