"""Query parameters and the client's settings read from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from streamgauge.wire.rows import format_time, to_ms

DEFAULT_URL = "http://127.0.0.1:8080"
ENV_URL = "STREAMGAUGE_URL"
ENV_TOKEN = "STREAMGAUGE_TOKEN"


def base_url(url: str | None) -> str:
    """``url``, else ``STREAMGAUGE_URL``, else the local default; without a trailing slash."""
    chosen = url or os.environ.get(ENV_URL) or DEFAULT_URL
    return chosen.rstrip("/")


def env_token(token: str | None) -> str | None:
    return token if token is not None else os.environ.get(ENV_TOKEN) or None


def time_param(value: datetime | str | int) -> str:
    """A time as the server reads it: RFC 3339 (aware datetimes), or epoch ms, or text as is."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"time {value.isoformat()} has no timezone (give an aware datetime)")
        return format_time(to_ms(value))
    if isinstance(value, bool):
        raise TypeError("a time must be a datetime, an RFC 3339 string or epoch milliseconds")
    return str(value)


def _one(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return time_param(value)
    return str(value)


QueryValue = str | int | float | bool | None


def query(params: Mapping[str, Any]) -> list[tuple[str, QueryValue]]:
    """Query pairs: None is left out, a list or tuple repeats its key, booleans are
    ``true``/``false``, datetimes RFC 3339."""
    out: list[tuple[str, QueryValue]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            out.extend((key, _one(v)) for v in value)
        else:
            out.append((key, _one(value)))
    return out


def history_params(
    *,
    device: str | Iterable[str] | None,
    variable: str | Iterable[str] | None,
    start: datetime | str | int | None,
    end: datetime | str | int | None,
    qc: str | Iterable[str] | None,
    filters: Mapping[str, Any],
) -> dict[str, Any]:
    """The selection of a history read, export or stream as query parameters."""
    params: dict[str, Any] = dict(filters)
    if device is not None:
        params["device"] = [device] if isinstance(device, str) else list(device)
    if variable is not None:
        params["variable"] = [variable] if isinstance(variable, str) else list(variable)
    if start is not None:
        params["start"] = time_param(start)
    if end is not None:
        params["end"] = time_param(end)
    if qc is not None:
        params["qc"] = qc if isinstance(qc, str) else ",".join(qc) or "none"
    return params
