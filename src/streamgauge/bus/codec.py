"""A committed ``Batch`` as bytes for the bus, and back: msgpack with the columns as raw
little-endian int64 buffers (no per-row work for the numeric columns)."""

from __future__ import annotations

import msgspec
import numpy as np

from streamgauge.domain.batch import Batch, Value


class _Wire(msgspec.Struct, array_like=True):
    project_pk: int
    cursors: bytes
    series: bytes
    times: bytes
    qc: bytes
    values: list[float | str | None]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Wire)
_I8 = np.dtype("<i8")


def encode_batch(batch: Batch) -> bytes:
    return _enc.encode(
        _Wire(
            batch.project_pk,
            batch.cursors.astype(_I8, copy=False).tobytes(),
            batch.series.astype(_I8, copy=False).tobytes(),
            batch.times.astype(_I8, copy=False).tobytes(),
            batch.qc.astype(_I8, copy=False).tobytes(),
            list(batch.values),
        )
    )


class BadMessage(ValueError):
    pass


def decode_batch(data: bytes, received_ns: int = 0) -> Batch:
    try:
        w = _dec.decode(data)
    except msgspec.DecodeError as e:
        raise BadMessage(f"not a batch: {e}") from None
    cols = [
        np.frombuffer(b, dtype=_I8).astype(np.int64) for b in (w.cursors, w.series, w.times, w.qc)
    ]
    n = len(cols[0])
    if any(len(c) != n for c in cols) or len(w.values) != n:
        raise BadMessage("columns of different lengths")
    values: list[Value] = list(w.values)
    return Batch(w.project_pk, cols[0], cols[1], cols[2], values, cols[3], received_ns=received_ns)
