"""A resume position kept in a file: written atomically, at most once per interval, and on exit.

The file holds JSON: ``{"cursor": N}`` (a native stream) or ``{"cursor": N, "session": S}``
(a push-feed session). It is replaced atomically (a temporary file in the same folder, flushed
to disk, then renamed over it), so a crash leaves the old position or the new one, never a torn
file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

SAVE_INTERVAL_S = 1.0


class Checkpoint:
    """The position at ``path``; ``update`` remembers one, ``save`` writes the latest."""

    def __init__(self, path: str | os.PathLike[str], interval: float = SAVE_INTERVAL_S) -> None:
        self.path = Path(path)
        self.interval = interval
        self.state: dict[str, Any] = {}
        self._saved: dict[str, Any] = {}
        self._last_save = time.monotonic()

    def load(self) -> dict[str, Any]:
        """The stored state (empty if there is no file yet)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            state = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"checkpoint {self.path} is not a checkpoint file") from exc
        if not isinstance(state, dict) or not isinstance(state.get("cursor"), int):
            raise ValueError(f"checkpoint {self.path} holds no cursor")
        self.state = dict(state)
        self._saved = dict(state)
        return dict(state)

    @property
    def cursor(self) -> int | None:
        c = self.state.get("cursor")
        return c if isinstance(c, int) else None

    def update(self, **state: Any) -> None:
        """Remember a new position; written if the last write is ``interval`` old."""
        self.state.update(state)
        now = time.monotonic()
        if now - self._last_save >= self.interval:
            self.save(now)

    def save(self, now: float | None = None) -> None:
        """Write the latest position now (nothing if it is already on disk)."""
        self._last_save = time.monotonic() if now is None else now
        if not self.state or self.state == self._saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(self.state) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._saved = dict(self.state)
