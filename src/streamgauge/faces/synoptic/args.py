"""The feed's connection arguments (reference: synoptic-push.md section 4), parsed without I/O.

Every argument maps onto the core's selection (the same parsers as the native face's query
parameters), so the feed filters exactly as the native streams do. A bad argument raises
``BadRequest`` whose message and details name it (as the feed spells it: ``filter_on``, not the
native ``filter``); the feed turns that into a failed ``auth`` message. An empty list argument
(``state=``) is refused rather than read as "no filter", which would widen the feed.

``qc`` adds checks to the default removal of range-check failures (the reference: "by default,
observations that fail the range check are already removed"); ``qc=none`` keeps everything.
Old check names of the push reference are accepted. ``end`` includes its whole minute, as the
``date`` of each observation is given to the minute.

``recent`` is an alias of ``rewind`` (the reference's own example reads ``recent=5``, and
Synoptic's REST API calls the same thing ``recent``): the same meaning and the same checks, and
errors name the spelling the client used; giving both is refused. ``timeformat`` chooses how the
``date`` of each row is written: ``yyyymmddhhmm`` (the default, the reference's integer) or
``iso`` (an ISO 8601 UTC string).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from streamgauge.domain.errors import BadRequest
from streamgauge.faces.native.observations import SelectionParams

ARGUMENTS = (
    "state",
    "network",
    "radius",
    "nwszone",
    "nwsfirezone",
    "bbox",
    "stid",
    "vars",
    "qc",
    "filter_on",
    "start",
    "end",
    "rewind",
    "recent",
    "units",
    "metadata",
    "timeformat",
)
SINGLE = frozenset(
    {
        "start",
        "end",
        "rewind",
        "recent",
        "units",
        "metadata",
        "timeformat",
        "radius",
        "bbox",
        "filter_on",
    }
)
# QC names of the old push reference, accepted so that old clients keep working (section 6/8).
QC_ALIASES = {"sl_rate_change": "sl_rate_check", "sl_persistence": "sl_pers_check"}
MINUTE_MS = 60_000
# How a row's ``date`` is written: the reference's ``yyyymmddhhmm`` integer, or an ISO 8601 string.
TIME_FORMATS = ("yyyymmddhhmm", "iso")


@dataclass(frozen=True, slots=True)
class FeedArgs:
    select: SelectionParams
    metadata: bool
    start_ms: int | None  # a past period [start, end] (both set), replayed and then closed
    end_ms: int | None
    rewind_minutes: float | None  # live, starting this many minutes back
    timeformat: str = "yyyymmddhhmm"  # one of TIME_FORMATS


def _bad(name: str, reason: str, value: str | None = None) -> BadRequest:
    shown = f" {value!r}" if value is not None else ""
    return BadRequest(f"bad argument {name}{shown}: {reason}", [{"field": name, "reason": reason}])


def parse_minute(text: str, name: str) -> int:
    """``YYYYMMDDHHmm`` (UTC) as epoch milliseconds."""
    if len(text) != 12 or not (text.isascii() and text.isdigit()):
        raise _bad(name, "expected YYYYMMDDHHmm (UTC)", text)
    try:
        when = datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError as exc:
        raise _bad(name, "not a real date and time (YYYYMMDDHHmm, UTC)", text) from exc
    return int(when.timestamp() * 1000)


def _timeformat(text: str) -> str:
    low = text.strip().lower()
    low = "iso" if low == "iso8601" else low
    if low in TIME_FORMATS:
        return low
    raise _bad(
        "timeformat",
        "expected yyyymmddhhmm (the default: an integer such as 202401132215) or iso"
        ' (a string such as "2024-01-13T22:15:00Z")',
        text,
    )


def _rewind(args: dict[str, str], name: str, max_period_hours: float) -> float:
    """``rewind`` (or its alias ``recent``, named as given): minutes back from now."""
    text = args[name]
    try:
        rewind = float(text)
    except ValueError as exc:
        raise _bad(name, "expected a number of minutes", text) from exc
    if not 0 < rewind <= max_period_hours * 60:
        raise _bad(name, f"expected minutes in (0, {max_period_hours * 60:g}]", text)
    return rewind


def _metadata(text: str) -> bool:
    low = text.strip().lower()
    if low in ("0", "off", "false", "no"):
        return False
    if low in ("", "1", "on", "true", "yes"):
        return True
    raise _bad("metadata", "expected 1/on or 0/off", text)


LISTS = frozenset({"state", "network", "nwszone", "nwsfirezone", "stid", "vars", "qc"})
RENAMED = {"filter": "filter_on"}  # native parameter names the core's errors use


def _qc(text: str) -> str:
    names = [QC_ALIASES.get(p.strip(), p.strip()) for p in text.split(",")]
    if any(n.lower() in ("none", "off", "0") for n in names):
        return ",".join(names)
    return ",".join(dict.fromkeys(["sl_range_check", *names]))


def _renamed(exc: BadRequest) -> BadRequest:
    """The core's error with the feed's argument names."""
    message = exc.message
    details = []
    for d in exc.details:
        field = d.get("field")
        if isinstance(field, str) and field in RENAMED:
            d = {**d, "field": RENAMED[field]}
            message = message.replace(field, RENAMED[field], 1)
        details.append(d)
    if not any(isinstance(d.get("field"), str) for d in details):
        return exc
    out = BadRequest(message, details)
    out.__cause__ = exc
    return out


def parse_feed_args(
    query: str, *, now_ms: int, max_period_hours: float, check_age: bool = True
) -> FeedArgs:
    """The arguments of a feed URL's query string. Repeated arguments are joined as one comma
    list; unknown names are refused (a misspelt filter would silently widen the feed).
    ``check_age`` is off when a stored session's arguments are parsed again on resume."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("the query string is not valid UTF-8 URL encoding") from exc
    args: dict[str, str] = {}
    for key, value in pairs:
        if key not in ARGUMENTS:
            raise _bad(key, f"unknown argument; expected any of {', '.join(ARGUMENTS)}")
        if key in args and key in SINGLE:
            raise _bad(key, "given more than once")
        if key in LISTS and not value.strip():
            raise _bad(key, "expected a comma-separated list, found nothing", value)
        args[key] = f"{args[key]},{value}" if key in args else value
    try:
        select = SelectionParams(
            vars=args.get("vars"),
            stid=args.get("stid"),
            state=args.get("state"),
            network=args.get("network"),
            nwszone=args.get("nwszone"),
            nwsfirezone=args.get("nwsfirezone"),
            radius=args.get("radius"),
            bbox=args.get("bbox"),
            qc=_qc(args["qc"]) if "qc" in args else None,
            units=args.get("units"),
            filter=args.get("filter_on"),
        )
    except BadRequest as exc:
        raise _renamed(exc) from exc
    start = parse_minute(args["start"], "start") if "start" in args else None
    end = parse_minute(args["end"], "end") if "end" in args else None
    rewind: float | None = None
    if "rewind" in args and "recent" in args:
        raise _bad("recent", "recent is another name of rewind: give one of them, not both")
    name = "recent" if "recent" in args else "rewind"
    if name in args:
        if start is not None or end is not None:
            raise _bad(name, f"give either {name} or a start/end period, not both")
        rewind = _rewind(args, name, max_period_hours)
    if end is not None and start is None:
        raise _bad("end", "an end needs a start")
    if start is not None:
        oldest = now_ms - int(max_period_hours * 3_600_000)
        if check_age and start > now_ms:
            raise _bad("start", "the period starts in the future")
        if check_age and start < oldest - MINUTE_MS:
            raise _bad("start", f"the period may reach back at most {max_period_hours:g} hours")
        # the end minute is included whole; the period never reaches past now
        end = min(end + MINUTE_MS - 1 if end is not None else now_ms, now_ms)
        if end < start:
            raise _bad("end", "the period ends before it starts")
    return FeedArgs(
        select,
        _metadata(args["metadata"]) if "metadata" in args else True,
        start,
        end,
        rewind,
        _timeformat(args["timeformat"]) if "timeformat" in args else "yyyymmddhhmm",
    )
