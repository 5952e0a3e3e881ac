"""The commit rules of a store a test builds without an engine.

A store has no rules of its own: whoever builds it hands it the core's duplicate/conflict rule
and QC (``domain.commit.CommitRules``). The engine gives ``core.dedupe.LogRules`` over the
store's registry; so do these tests, through ``log_rules``.
"""

from __future__ import annotations

from collections.abc import Callable

from streamgauge.core.dedupe import LogRules
from streamgauge.core.registry import Registry
from streamgauge.domain.commit import CommitRules


def log_rules(*, quality_control: bool = True) -> Callable[[Registry], CommitRules]:
    """The engine's rules (``LogRules``), QC on or off, for a store to build over its registry."""
    return lambda registry: LogRules(registry, quality_control=quality_control)
