"""Per-sender fairness for a receiver's work queue (a device's stage requests, a holder's blob requests).

The sender is the writer's id from the topic's last level, which the broker's ACL pins to the writer's identity
(``topics.sender_of``), so one identity cannot pose as many. Two rules, both only about *queued* work:

- **service in turns**: queued items are taken one sender at a time, round robin, so a sender with a thousand
  queued requests delays another sender's request by at most one item per other sender, not a thousand;
- **shed the largest backlog**: the queue has one bound for everyone; when it is full, an item from a sender
  with a smaller backlog than the largest pushes out the *newest* item of the largest (which the caller answers
  "overloaded"), and an item from the largest sender itself is refused. A lone sender keeps the whole bound
  (a burst from one operator behaves exactly as before), and a flooder can never hold the queue against others.

This bounds work, not bandwidth: the broker still carries the flood (its per-client limits are in
``mosquitto.conf``; docs/security.md, "resource exhaustion").
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class Full(Exception):
    """The queue is full and the sender has the largest backlog: its item is refused."""


class FairQueue(Generic[T]):
    """A bounded queue served round robin over senders (see the module docstring). Thread safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._by_sender: collections.OrderedDict[str, collections.deque[T]] = collections.OrderedDict()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()
        self.shed: collections.Counter[str] = collections.Counter()      # items pushed out or refused, by sender

    def put(self, sender: str, item: T) -> tuple[str, T] | None:
        """Queue ``item`` from ``sender``. Returns (its sender, the item) pushed out to make room (the newest
        item of the sender with the largest backlog), or None. Raises :class:`Full` when ``sender`` itself has the
        largest backlog of a full queue."""
        with self._cond:
            evicted: tuple[str, T] | None = None
            if self._size >= self.capacity:
                hog, backlog = max(self._by_sender.items(), key=lambda kv: len(kv[1]))
                if len(backlog) <= len(self._by_sender.get(sender, ())) + 1:
                    self.shed[sender] += 1
                    raise Full(f"{self._size} items queued, {len(backlog)} of them from {sender!r}")
                evicted = (hog, backlog.pop())
                self.shed[hog] += 1
                self._size -= 1
            self._by_sender.setdefault(sender, collections.deque()).append(item)
            self._size += 1
            self._cond.notify()
            return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, one sender at a time; None once closed and drained, or after ``timeout`` s."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._size:
                if self._closed:
                    return None
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            sender, backlog = next(iter(self._by_sender.items()))
            item = backlog.popleft()
            self._size -= 1
            del self._by_sender[sender]
            if backlog:                       # its next item waits for every other sender's turn
                self._by_sender[sender] = backlog
            return item

    def close(self) -> None:
        """Wake the consumer: ``get`` returns None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def qsize(self) -> int:
        return self._size

    def backlog(self, sender: str) -> int:
        with self._cond:
            return len(self._by_sender.get(sender, ()))

    def senders(self) -> int:
        with self._cond:
            return len(self._by_sender)


class ShedLog:
    """Logs shed work at most once per ``every_s`` per sender, with how many were shed since (a flood must not
    turn into a flood of log lines)."""

    def __init__(self, logger, what: str, every_s: float = 5.0) -> None:   # noqa: ANN001 - a logging.Logger
        self.logger = logger
        self.what = what
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._count: collections.Counter[str] = collections.Counter()

    def note(self, sender: str, why: str) -> None:
        self._count[sender] += 1
        now = time.monotonic()
        if now - self._last.get(sender, -1e9) < self.every_s:
            return
        if len(self._last) > 1024:            # bounded: forget the quiet ones
            self._last = {s: t for s, t in self._last.items() if now - t < self.every_s}
        self._last[sender] = now
        n, self._count[sender] = self._count[sender], 0
        self.logger.warning("%s from %r shed (%d since the last report): %s", self.what, sender, n, why)
