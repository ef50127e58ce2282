"""A readers-writer lock: many concurrent readers, or one writer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__: list[str] = []


class RWLock:
    """Writer-preferring readers-writer lock.

    Queries take the read side and run together; ``add``/``remove`` take the write side and run
    alone, so hnswlib never sees an insertion during a query. Waiting writers block new readers,
    so a stream of queries cannot starve an update.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read_side = _ReadSide(self)

    def read(self) -> _ReadSide:
        """Context manager holding the read side (a plain object, not a generator: queries
        take it once per call, so its cost is part of every query's latency)."""
        return self._read_side

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _ReadSide:
    """``with lock.read():`` -- one object shared by every thread; it keeps no per-use state."""

    __slots__ = ("_lock",)

    def __init__(self, lock: RWLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._cond:
            while lock._writer or lock._writers_waiting:
                lock._cond.wait()
            lock._readers += 1

    def __exit__(self, *exc_info: object) -> None:
        lock = self._lock
        with lock._cond:
            lock._readers -= 1
            if lock._readers == 0 and lock._writers_waiting:
                lock._cond.notify_all()

