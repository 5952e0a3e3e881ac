"""Records of the state a face keeps beside the core (stored through ``store.face_state``).

Plain data, shared by the faces that use them and the storage backends that keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class DTAccountSettings:
    """The DT settings of a service account (``enableBasicAuth`` and its DT timestamps)."""

    basic_auth: bool
    create_time: str
    update_time: str


@dataclass(frozen=True, slots=True)
class StoredConnector:
    """A DT data connector as stored: its DT document (without ``name``) and the log position
    its pushes begin after."""

    pk: int
    project_pk: int
    id: str
    doc: dict[str, Any]
    start: int
