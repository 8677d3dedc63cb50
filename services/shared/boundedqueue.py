"""The one bounded queue: full, it drops its oldest item (or makes the caller wait, for files).

A live camera must never wait for whoever is behind it (the stream's own buffers would overflow, or
the camera would hang up), so the newest frame always goes in and the oldest makes room. A file has
no live moment to keep up with: its reader waits for room instead, so it is slowed, never thinned.
Several queues may share one condition, so that one consumer can wait on all of them at once.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    def __init__(self, size: int, condition: threading.Condition | None = None) -> None:
        if size < 1:
            raise ValueError(f"a queue holds at least one item, not {size}")
        self.size = size
        self.condition = condition or threading.Condition()
        self._items: deque[T] = deque()
        self._closed = False

    def put(self, item: T, wait_unless: threading.Event | None = None) -> T | None:
        """Add an item; full, drop and return the oldest. With `wait_unless`, wait for room instead
        (until that event is set, then drop as usual)."""
        with self.condition:
            while wait_unless is not None and len(self._items) >= self.size and not wait_unless.is_set():
                self.condition.wait(0.1)
            dropped = self._items.popleft() if len(self._items) >= self.size else None
            self._items.append(item)
            self.condition.notify_all()
            return dropped

    def get(self) -> T | None:
        """The oldest item, waiting for one; None once closed and empty."""
        with self.condition:
            while not self._items and not self._closed:
                self.condition.wait()
            return self.take()

    def take(self) -> T | None:
        """The oldest item if there is one, without waiting."""
        with self.condition:
            item = self._items.popleft() if self._items else None
            if item is not None:
                self.condition.notify_all()  # room for a caller waiting in put()
            return item

    def take_all(self) -> list[T]:
        """Everything queued, oldest first, leaving the queue empty."""
        with self.condition:
            items = list(self._items)
            self._items.clear()
            self.condition.notify_all()
            return items

    def close(self) -> None:
        """Wake whoever waits in get(); what is queued can still be taken."""
        with self.condition:
            self._closed = True
            self.condition.notify_all()

    def __len__(self) -> int:
        with self.condition:
            return len(self._items)
