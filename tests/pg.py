"""PostgreSQL for tests: the machine's server (``STREAMGAUGE_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), and a fresh database per use, dropped after.

A test that needs PostgreSQL calls ``require_postgres()``: without a server it is skipped on a
developer's machine and FAILS under ``CI`` (a missing service never hides behind a skip there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ADMIN_URL = os.environ.get("STREAMGAUGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_reachable: bool | None = None


def postgres_answers() -> bool:
    global _reachable
    if _reachable is None:
        try:
            with psycopg.connect(ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _reachable = True
        except psycopg.Error:
            _reachable = False
    return _reachable


def require_postgres() -> None:
    if postgres_answers():
        return
    message = f"PostgreSQL does not answer at {ADMIN_URL}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI: the tests need it)")
    pytest.skip(message)


def url_of(database: str) -> str:
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path="/" + database))


@contextmanager
def fresh_database(prefix: str = "sg_test") -> Iterator[str]:
    """A new, empty database with a unique name; its URL. Dropped afterwards (connections
    still open to it are ended)."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield url_of(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
