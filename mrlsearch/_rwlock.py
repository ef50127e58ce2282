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


class EfGate:
    """Lets searches of one hnswlib graph run together only while they use the same ``ef``.

    hnswlib keeps the search breadth per index (``set_ef``), not per query, so two threads
    searching one graph with different ``ef`` would each search with whichever value was set
    last. Searches with the current ``ef`` join freely; one with another ``ef`` waits until the
    graph's searches in flight finish, then sets its own. While such a search waits, new
    searches queue behind it, so a stream of same-``ef`` queries cannot starve it.
    """

    __slots__ = ("_active", "_cond", "_ef", "_graph", "_waiting")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._graph: object = None
        self._ef: int | None = None
        self._active = 0
        self._waiting = 0

    def acquire(self, graph, ef: int) -> None:
        """Wait until ``graph`` can be searched with ``ef``, and set it."""
        with self._cond:
            same = self._graph is graph and self._ef == ef
            if self._active and not (same and not self._waiting):
                self._waiting += 1
                while self._active:
                    self._cond.wait()
                self._waiting -= 1
            if self._graph is not graph or self._ef != ef:
                graph.set_ef(ef)
                self._graph, self._ef = graph, ef
            self._active += 1

    def release(self) -> None:
        """End a search started with :meth:`acquire`."""
        with self._cond:
            self._active -= 1
            if self._active == 0 and self._waiting:
                self._cond.notify_all()
