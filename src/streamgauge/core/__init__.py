"""The engine's core: batches, the live hub, cursor handoff, filters and ingest validation."""
