"""The ``postgresql`` backend: the log, metadata and every other table in one PostgreSQL
database that the nodes of a cluster share, behind the protocols of ``store.api``.

``store`` holds ``PgStore`` (the log, its writer thread taking the cluster-wide commit lock,
its readers), the table modules (``metadata``, ``alerts``, ``deliveries``), the feed sessions
(``feeds``), consumer positions (``consumers``), face state (``face_state``), core operations'
storage parts (``ops``), the schema and its locked migrations (``schema``), the filter
expression compiler (``filtersql``) and the copy of an embedded deployment (``copy``). See
``docs/cluster.md``.
"""
