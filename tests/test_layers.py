"""The layers the import contracts cannot see: a face reaches storage only through the engine's
methods, never through the engine's ``store`` attribute (issue 12 item 1)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import streamgauge

FACES = Path(streamgauge.__file__).parent / "faces"


def test_no_face_reaches_the_store_through_the_engine() -> None:
    used = [
        f"{path.relative_to(FACES)}:{n}"
        for path in sorted(FACES.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bengine\.store\b", line)
    ]
    assert used == []


def test_no_face_holds_sql() -> None:
    sql = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")
    held = [
        f"{path.relative_to(FACES)}:{n}"
        for path in sorted(FACES.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if sql.search(line)
    ]
    assert held == []


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``), also
    under ``TYPE_CHECKING``: import-linter sees those too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_only_the_factory_names_the_sqlite_backend() -> None:
    """Outside the SQLite package itself, ``store/factory.py`` is the one module that imports
    it: the engine, its services, alerting and deliveries take the backend's table modules,
    services and operations from the ``Backend`` bundle (issue 12 item 2). Besides it, only
    the PostgreSQL backend: ``copy.py`` reads an embedded database (``streamgauge migrate``)
    and its store shares the embedded store's ``FairGate`` (``store/sqlite/fair.py``)."""
    package = Path(streamgauge.__file__).parent
    sqlite_pkg = package / "store" / "sqlite"
    naming = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if sqlite_pkg not in path.parents
        and any(m.startswith("streamgauge.store.sqlite") for m in _imports(path))
    )
    assert naming == ["store/factory.py", "store/postgres/copy.py", "store/postgres/store.py"]
