"""The embedded backend: SQLite in WAL mode behind the protocols of ``store.api``.

``store`` holds ``SqliteStore`` (the log, its writer thread and readers), the table modules
(``metadata``, ``alerts``, ``deliveries``), the feed sessions (``feeds``), consumer positions
(``consumers``), face state (``face_state``), core operations' storage parts (``ops``), filter
expressions as SQL (``filtersql``), the schema and its migrations (``schema``) and the fair
reader gate (``fair``). Outside this package only ``store.factory`` imports it (``SQLITE``).
"""
