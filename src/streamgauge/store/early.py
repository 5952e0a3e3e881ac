"""Metadata applied to the registry before its transaction commits (``Store.append_with``: the
rows resolve against the devices and variables the same transaction creates), and how to take
it back if the transaction fails. Backend-neutral: both backends use it."""

from __future__ import annotations

from streamgauge.domain.events import (
    DeviceDropped,
    DevicePut,
    MetaEvent,
    VariableDropped,
    VariablePut,
)
from streamgauge.domain.readmodel import ReadModel


def inverse(reg: ReadModel, event: MetaEvent) -> MetaEvent:
    """The event that restores what ``event`` changes in ``reg`` (read before it is applied):
    a new device or variable is dropped again (with what it brought), a changed one gets its
    old document back."""
    if isinstance(event, DevicePut):
        dev = reg.devices_by_pk.get(event.pk)
        if dev is None:
            return DeviceDropped(event.pk)
        return DevicePut(dev.pk, dev.project_pk, dev.doc)
    if isinstance(event, VariablePut):
        var = reg.variables_by_pk.get(event.pk)
        if var is None:
            return VariableDropped(event.pk)
        return VariablePut(var.pk, var.device_pk, var.doc)
    raise TypeError(f"a {type(event).__name__} event cannot be applied before its commit")


def undo(reg: ReadModel, undo: list[MetaEvent]) -> None:
    for event in reversed(undo):
        reg.apply(event)
