"""Alert channels as documents: what a face builds, the core validates and compiles
(``core.channels``), and the store keeps as it is.

A channel belongs to one project and has any number of triggers; each trigger watches one
instrument (device) and has its own actions. Checking a document against the registry, message
templates and action payloads are the core's (``core.channels``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["URL", "ActionDoc", "ChannelDoc", "Method", "Status", "Text", "TriggerDoc"]

Status = Literal["ACTIVE", "INACTIVE"]
Method = Literal["WEBHOOK", "HTTP", "SLACK", "DISCORD", "ACTOR"]
Text = Annotated[str, StringConstraints(max_length=4096)]
URL = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionDoc(_Doc):
    method: Method
    webhook_url: URL | None = None  # WEBHOOK, SLACK, DISCORD
    data_field: Text | None = None  # WEBHOOK: the field that carries the message
    http_url: URL | None = None  # HTTP
    actor_id: Text | None = None  # ACTOR: a registered local actor
    message: Text | None = None  # template; default core.channels.DEFAULT_MESSAGE
    extra: dict[str, Any] = Field(default_factory=dict)  # stored, not used (abaco_base_url, ...)

    def target(self) -> str:
        if self.method == "HTTP":
            return self.http_url or ""
        if self.method == "ACTOR":
            return self.actor_id or ""
        return self.webhook_url or ""


class TriggerDoc(_Doc):
    type: Literal["threshold", "expression", "deadman"] = "threshold"
    device: Text
    variable: Text | None = None  # threshold: required; deadman: optional (any variable)
    operator: Text | None = None  # threshold
    value: float | None = None  # threshold
    expression: Text | None = None  # expression: filter_on text over the device's variables
    seconds: float | None = Field(default=None, gt=0)  # deadman
    hysteresis: float = Field(default=0.0, ge=0)
    for_seconds: float = Field(default=0.0, ge=0)
    cooldown_seconds: float = Field(default=0.0, ge=0)
    actions: list[ActionDoc] = Field(default_factory=list)


class ChannelDoc(_Doc):
    id: Text
    project: Text
    name: Text
    status: Status = "ACTIVE"
    triggers: list[TriggerDoc]
    template_id: Text | None = None
    type: Text | None = None
    owner: Text | None = None
    created_at: str
    last_updated: str
