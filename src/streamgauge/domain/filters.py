"""The filter expression AST, shared by every layer: the core parses text into it and judges
batches with it (``core.filterlang``); a storage backend compiles it to its own query language
(the SQLite one: ``store/sqlite/filtersql.py``).

``Cond(s, op, v)`` holds for a station report (the rows of one site at one time) when any row of
the report with sensor ``s`` has a numeric value satisfying ``value op v``; NaN, NULL and text
never satisfy, and a report without the sensor fails the condition. ``And`` / ``Or`` combine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["And", "Cond", "Expr", "Op", "Or"]

Op: TypeAlias = Literal[">", ">=", "<", "<=", "=", "!="]


@dataclass(frozen=True, slots=True)
class Cond:
    sensor: str
    op: Op
    value: float


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr


Expr: TypeAlias = Cond | And | Or
