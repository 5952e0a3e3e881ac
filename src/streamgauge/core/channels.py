"""Alert channels: the face-neutral document, its validation against the registry, message
templates and action payloads. Pure; the runtime is ``core.alerting``.

A channel belongs to one project and has any number of triggers, every one evaluated. A trigger
watches one instrument (device): a threshold on one of its variables, an expression in the filter
language over its variables (judged per report: one time), or a deadman (no data from the
instrument, or one variable of it, for ``seconds``). Each trigger has its own actions.
"""

from __future__ import annotations

import re
from string import Template
from typing import Any

import orjson

from streamgauge.core.alerts import (
    ORDERING,
    Deadman,
    Expression,
    Rule,
    Threshold,
)
from streamgauge.core.filterlang import FilterError, parse_filter_on, parse_tapis_condition, sensors
from streamgauge.core.registry import DeviceRec, ProjectRec, Registry
from streamgauge.domain.channels import ActionDoc as ActionDoc  # re-exported: the documents
from streamgauge.domain.channels import ChannelDoc as ChannelDoc
from streamgauge.domain.channels import TriggerDoc as TriggerDoc
from streamgauge.domain.errors import Invalid

DEFAULT_MESSAGE = (
    "For Channel- ${r._check_name} the threshold alert triggered at ${r._time} value=${r.value}"
)


# -- validation ---------------------------------------------------------------------------------


def _bad(message: str, index: int, field: str, reason: str) -> Invalid:
    return Invalid(message, [{"index": index, "field": f"triggers.{field}", "reason": reason}])


def check_action(a: ActionDoc, i: int, j: int, actors: set[str]) -> None:
    where = f"actions.{j}"
    if a.method in ("WEBHOOK", "SLACK", "DISCORD") and not a.webhook_url:
        raise _bad(f"{a.method} needs webhook_url", i, where + ".webhook_url", "required")
    if a.method == "HTTP" and not a.http_url:
        raise _bad("HTTP needs http_url", i, where + ".http_url", "required")
    url = a.http_url if a.method == "HTTP" else a.webhook_url
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        raise _bad(f"bad target URL {url!r}", i, where, "an http(s) URL")
    if a.method == "ACTOR" and a.actor_id not in actors:
        raise _bad(
            f"no actor {a.actor_id!r}",
            i,
            where + ".actor_id",
            f"registered actors: {', '.join(sorted(actors))}",
        )


def compile_trigger(
    reg: Registry, project: ProjectRec, t: TriggerDoc, i: int, actors: set[str]
) -> tuple[Rule, DeviceRec, frozenset[int]]:
    """The rule of a trigger, its device, and the variable pks it reads; 422 naming the trigger
    and field when it does not fit the project's instruments."""
    dev = reg.devices.get((project.pk, t.device))
    if dev is None:
        raise _bad(f"no instrument {t.device!r} in project {project.doc.id!r}", i, "device", "?")
    by_id = {reg.variables_by_pk[pk].id: pk for pk in reg.device_variables.get(dev.pk, set())}

    def var_pk(name: str, field: str) -> int:
        pk = by_id.get(name)
        if pk is None:
            raise _bad(f"instrument {t.device!r} has no variable {name!r}", i, field, "unknown")
        return pk

    for j, a in enumerate(t.actions):
        check_action(a, i, j, actors)
    timing = {"for_ms": int(t.for_seconds * 1000), "cooldown_ms": int(t.cooldown_seconds * 1000)}
    if t.type == "threshold":
        if t.variable is None or t.operator is None or t.value is None:
            raise _bad("a threshold needs variable, operator and value", i, "type", "incomplete")
        _, _, cond = parse_tapis_condition(
            {"key": f"{t.device}.{t.variable}", "operator": t.operator, "val": t.value},
            field=f"triggers.{i}",
        )
        if t.hysteresis and cond.op not in ORDERING:
            raise _bad("hysteresis needs >, >=, < or <=", i, "hysteresis", "not with = or !=")
        rule = Rule(Threshold(cond.op, cond.value, t.hysteresis), **timing)
        return rule, dev, frozenset({var_pk(t.variable, "variable")})
    if t.type == "expression":
        if not t.expression:
            raise _bad("an expression trigger needs expression", i, "expression", "required")
        if t.hysteresis:
            raise _bad("hysteresis applies to thresholds", i, "hysteresis", "not here")
        try:
            expr = parse_filter_on(t.expression, field=f"triggers.{i}.expression")
        except FilterError as exc:
            raise Invalid(exc.message, [{**d, "index": i} for d in exc.details]) from exc
        pks = frozenset(var_pk(s, "expression") for s in sorted(sensors(expr)))
        return Rule(Expression(expr), **timing), dev, pks
    if t.seconds is None:
        raise _bad("a deadman needs seconds", i, "seconds", "required")
    pks = frozenset({var_pk(t.variable, "variable")} if t.variable else by_id.values())
    return Rule(Deadman(t.seconds), **timing), dev, pks


# -- templates and payloads ---------------------------------------------------------------------


class _Template(Template):
    # Spaces inside the braces are allowed, as Tapis' own code writes ``${ r.value }`` and the
    # workshop notebook ``${ r.value}``; the name is looked up without them (``_Names``).
    braceidpattern = r"[ \t]*[_A-Za-z][_A-Za-z0-9.]*[ \t]*"


class _Names(dict[str, str]):
    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.strip(" \t"))


def fill(template: str, record: dict[str, Any]) -> str:
    """``${name}`` placeholders from the alert's fields; ``${r.value}``, ``${r._time}``,
    ``${r._check_name}`` (the original's forms) too, with or without spaces inside the braces
    (``${ r.value }``). Unknown placeholders stay as written."""
    names = {k: "" if v is None else str(v) for k, v in record.items() if not isinstance(v, dict)}
    names |= {f"r.{k}": v for k, v in list(names.items())}
    return _Template(template).safe_substitute(_Names(names))


def payload(action: ActionDoc, record: dict[str, Any]) -> bytes:
    """The body an action sends for an alert record."""
    message = fill(action.message or DEFAULT_MESSAGE, record)
    if action.method == "WEBHOOK":
        return orjson.dumps({action.data_field or "message": message})
    if action.method == "SLACK":
        return orjson.dumps({"text": message})
    if action.method == "DISCORD":
        return orjson.dumps({"content": message})
    if action.method == "ACTOR":  # top-level fields (the tutorial actor) and the nested form
        return orjson.dumps({**record, "message": {**record, "text": message}})
    return orjson.dumps(record)  # HTTP: the raw alert record
