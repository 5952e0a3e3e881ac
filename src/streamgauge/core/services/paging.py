"""List-and-page, the one way every face pages a listing of keyed items.

A listing is pairs ``(key, item)``; a page is the items in key order after ``after`` (a keyset
page: the key of the last item of the previous page) and past ``skip`` of them (an offset page,
as Tapis lists do), at most ``limit`` of them. ``next_key`` is the last item's key when more
follow, for the face to wrap in its own page token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_key: str | None  # the key of the last item, if more items follow

    @property
    def more(self) -> bool:
        return self.next_key is not None


def page(
    items: Iterable[tuple[str, T]], limit: int, *, after: str | None = None, skip: int = 0
) -> Page[T]:
    """Items in key order with a key greater than ``after``, without the first ``skip``, at most
    ``limit`` of them."""
    ordered = sorted(
        ((k, v) for k, v in items if after is None or k > after), key=lambda kv: kv[0]
    )[skip:]
    chunk = ordered[:limit]
    more = len(ordered) > limit and bool(chunk)
    return Page([v for _, v in chunk], chunk[-1][0] if more else None)
