"""A model's waiting room: FIFO within an API key, round-robin across keys.

Fairness rule: the next request admitted comes from the key with waiters that was served
least recently (a key never served comes first). So once key B has a request waiting, B is
admitted before any further request from a key A that has been flooding.

Room is shared too: a full queue (`queue.max_waiting`) still takes a request from a key that
holds less than its share (max_waiting / keys waiting); the newest waiter of the key holding
the most makes room (it gets 429 queue_full). So one key can't lock the others out.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

_seq = itertools.count()


@dataclass(eq=False)
class Waiter:
    key: str
    slots: int
    enqueued: float
    deadline: float
    future: asyncio.Future[Any]
    seq: int = field(default_factory=lambda: next(_seq))


class FairQueue:
    def __init__(self) -> None:
        self._by_key: dict[str, deque[Waiter]] = {}
        self._last_served: dict[str, int] = {}
        self._served = itertools.count()

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_key.values())

    def __iter__(self) -> Iterator[Waiter]:
        for q in self._by_key.values():
            yield from q

    def push(self, w: Waiter) -> None:
        self._by_key.setdefault(w.key, deque()).append(w)

    def remove(self, w: Waiter) -> bool:
        q = self._by_key.get(w.key)
        if q is None or w not in q:
            return False
        q.remove(w)
        if not q:
            del self._by_key[w.key]
        return True

    def peek(self) -> Waiter | None:
        """The next waiter by the fairness rule, without taking it."""
        best: Waiter | None = None
        best_rank: tuple[int, int] | None = None
        for key, q in self._by_key.items():
            rank = (self._last_served.get(key, -1), q[0].seq)
            if best_rank is None or rank < best_rank:
                best, best_rank = q[0], rank
        return best

    def pop(self) -> Waiter:
        w = self.peek()
        if w is None:
            raise IndexError("pop from an empty FairQueue")
        self.remove(w)
        self._last_served[w.key] = next(self._served)
        return w

    def oldest(self) -> float | None:
        return min((q[0].enqueued for q in self._by_key.values()), default=None)

    def take_expired(self, now: float) -> list[Waiter]:
        gone = [w for w in self if w.deadline <= now]
        for w in gone:
            self.remove(w)
        return gone

    def make_room(self, key: str, limit: int) -> Waiter | None:
        """The queue holds `limit`: the waiter to turn away so `key` gets its share, or None
        when `key` already holds its share (then the newcomer is the one refused)."""
        keys = len(self._by_key) + (key not in self._by_key)
        share = limit // keys
        if len(self._by_key.get(key, ())) >= share:
            return None
        biggest = max(self._by_key.values(), key=len, default=None)
        if biggest is None or len(biggest) <= share:
            return None
        victim = biggest[-1]
        self.remove(victim)
        return victim

    def take_all(self) -> list[Waiter]:
        everyone = list(self)
        self._by_key.clear()
        return everyone
