"""A small sorted list for :class:`~promptstate.MemoryStore`'s indexes.

Items live in a list of sorted blocks of at most ``2 * _LOAD`` items, with each block's
largest item in ``_maxes`` (the layout of ``sortedcontainers.SortedList``, without the
dependency): adding or removing an item costs ``O(log n + _LOAD)``, and reading ``k`` items
from any position costs ``O(log n + k)``, whatever the list holds.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

__all__ = ["SortedList"]

_T = TypeVar("_T", bound=Any)

_LOAD = 256


class SortedList(Generic[_T]):
    """Distinct comparable items in ascending order."""

    __slots__ = ("_len", "_lists", "_maxes")

    def __init__(self) -> None:
        self._lists: list[list[_T]] = []
        self._maxes: list[_T] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def add(self, item: _T) -> None:
        """Insert ``item`` (which must not be in the list)."""
        lists, maxes = self._lists, self._maxes
        self._len += 1
        if not lists:
            lists.append([item])
            maxes.append(item)
            return
        i = bisect_left(maxes, item)
        if i == len(maxes):
            i -= 1
            lists[i].append(item)
            maxes[i] = item
        else:
            insort(lists[i], item)
        block = lists[i]
        if len(block) > 2 * _LOAD:
            half = block[_LOAD:]
            del block[_LOAD:]
            maxes[i] = block[-1]
            lists.insert(i + 1, half)
            maxes.insert(i + 1, half[-1])

    def discard(self, item: _T) -> None:
        """Remove ``item`` if it is in the list."""
        maxes = self._maxes
        i = bisect_left(maxes, item)
        if i == len(maxes):
            return
        block = self._lists[i]
        j = bisect_left(block, item)
        if j == len(block) or block[j] != item:
            return
        del block[j]
        self._len -= 1
        if not block:
            del self._lists[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[-1]

    def clear(self) -> None:
        """Remove every item."""
        self._lists.clear()
        self._maxes.clear()
        self._len = 0

    def _position(self, item: _T, *, after: bool) -> tuple[int, int]:
        """(block, index) of the first item ``> item`` (``after``) or ``>= item``."""
        find = bisect_right if after else bisect_left
        i = find(self._maxes, item)
        if i == len(self._maxes):
            return i, 0
        return i, find(self._lists[i], item)

    def ascending(self, start: _T | None = None, *, inclusive: bool = True) -> Iterator[_T]:
        """Items in ascending order from ``start`` (the first item when ``None``).

        Do not change the list while iterating.
        """
        lists = self._lists
        if start is None:
            i, j = 0, 0
        else:
            i, j = self._position(start, after=not inclusive)
        while i < len(lists):
            block = lists[i]
            for k in range(j, len(block)):
                yield block[k]
            i, j = i + 1, 0

    def descending(self, start: _T | None = None, *, inclusive: bool = True) -> Iterator[_T]:
        """Items in descending order from ``start`` (the last item when ``None``).

        Do not change the list while iterating.
        """
        lists = self._lists
        if start is None:
            i = len(lists) - 1
            j = len(lists[i]) - 1 if lists else -1
        else:
            # The last item <= start (inclusive) or < start: one before the first > / >=.
            i, j = self._position(start, after=inclusive)
            j -= 1
            if j < 0:
                i -= 1
                j = len(lists[i]) - 1 if i >= 0 else -1
        while i >= 0:
            block = lists[i]
            for k in range(j, -1, -1):
                yield block[k]
            i -= 1
            if i >= 0:
                j = len(lists[i]) - 1
