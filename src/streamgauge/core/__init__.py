"""The engine's core: batches, the live hub, cursor handoff, filters and ingest validation."""

# Rows of a ``domain.batch.Batch`` are encoded by the core's ``encode_rows`` (it needs the
# registry's names and the unit systems): installed as soon as any part of the core is imported.
from streamgauge.core import batch as _batch  # noqa: E402, F401
