"""Bounded per-connection state shared by the request/response parsers.

Every container here has a hard size limit and counts what it had to drop, so a
parser's memory never grows with a connection's lifetime (design.md: drops are
counted, never silent).
"""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class BoundedDict(Generic[K, V]):
    """An insertion-ordered map that evicts its oldest entry when full."""

    __slots__ = ("_items", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self._items: dict[K, V] = {}
        self.limit = limit
        self.dropped = 0

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        if len(self._items) >= self.limit:
            # dicts keep insertion order, so the first key is the oldest one.
            del self._items[next(iter(self._items))]
            self.dropped += 1
        self._items[key] = value

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def oldest(self) -> K | None:
        """The key inserted first among those still present."""
        return next(iter(self._items), None)

    def __len__(self) -> int:
        return len(self._items)


class PendingQueue(Generic[T]):
    """FIFO of requests waiting for their response; drops the oldest when full."""

    __slots__ = ("_items", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[T] = collections.deque()
        self.limit = limit
        self.dropped = 0

    def push(self, item: T) -> None:
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)

    def peek(self) -> T | None:
        return self._items[0] if self._items else None

    def pop(self) -> T | None:
        return self._items.popleft() if self._items else None

    def drop_all(self) -> None:
        """Forget every waiting request (the responses can no longer be matched)."""
        self.dropped += len(self._items)
        self._items.clear()

    def take_all(self) -> list[T]:
        items = list(self._items)
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)


def db_span_name(system: str, operation: str | None, target: str | None) -> str:
    """Span name per the stable DB convention: `{operation} {target}`, `{target}`, else the system."""
    if operation and target:
        return f"{operation} {target}"
    return operation or target or system


def printable(raw: bytes, limit: int) -> str:
    """Decode protocol text for an attribute: bounded, never raises, no control characters."""
    text = raw[:limit].decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else " " for ch in text)
