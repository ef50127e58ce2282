"""The shard actor: one :class:`~mrlsearch.Searcher` loaded from its directory in a Ray actor.

The actor counts the writes it applied, so the driver (:mod:`._calls`) can tell a fresh actor
that missed writes and replay them.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from .._errors import MRLError
from .._results import SearchResult
from ..searcher import Searcher

__all__: list[str] = []

QUERY_METHODS = ("search", "funnel", "exact")


class ShardNotLoaded(MRLError, RuntimeError):
    """Raised inside an actor whose Searcher could not be loaded."""


_PARAMETERS: dict[Any, frozenset] = {}


def _accepts(function: Any, name: str) -> bool:
    key = getattr(function, "__func__", function)
    names = _PARAMETERS.get(key)
    if names is None:
        try:
            names = frozenset(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            names = frozenset()
        _PARAMETERS[key] = names
    return name in names


def with_defaults(function: Any, kwargs: dict, **defaults: Any) -> dict:
    """``kwargs`` plus each default the function accepts and the caller did not set."""
    out = dict(kwargs)
    for name, value in defaults.items():
        if name not in out and value is not None and _accepts(function, name):
            out[name] = value
    return out


def _local(args: tuple) -> tuple:
    """Arguments as a Searcher takes them: Ray leaves refs nested in a tuple unresolved, and
    hands arrays over read-only (from its object store), which the compiled kernels refuse."""
    out = []
    for value in args:
        if isinstance(value, ray.ObjectRef):
            value = ray.get(value)
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()
        out.append(value)
    return tuple(out)


def _empty_result(n_queries: int, k: int) -> SearchResult:
    return SearchResult(np.full((n_queries, k), -1, dtype=np.int64),
                        np.full((n_queries, k), -np.inf, dtype=np.float32),
                        np.zeros(n_queries, dtype=np.int64), ())


class _ShardActor:
    """One shard: a Searcher loaded from its directory, plus the count of writes applied.

    ``version`` counts the writes applied since the shard's directory was written: it starts at
    the ``version`` the driver passes (the count at the last save) and grows by one per write,
    so the driver can tell an actor that missed writes (a fresh one after a crash) and replay
    them. Queries carry the version they need; an actor behind it answers ``'stale'``.
    """

    def __init__(self, path: str, mmap: bool, threads: int | None, version: int) -> None:
        self._version = version
        self._threads = threads
        self._searcher: Searcher | None = None
        self._error: BaseException | None = None
        try:
            self._searcher = Searcher.load(path, mmap=mmap)
        except Exception as exc:  # reported by ready() and every call
            self._error = exc

    def _loaded(self) -> Searcher:
        if self._searcher is None:
            raise ShardNotLoaded(f"the shard could not be loaded: {self._error}")
        if self._threads:
            try:
                import numba

                numba.set_num_threads(max(1, min(self._threads, numba.config.NUMBA_NUM_THREADS)))
            except (ImportError, ValueError):
                pass
        return self._searcher

    def ready(self) -> dict:
        if self._error is not None:
            raise self._error
        searcher = self._loaded()
        return {"dim": searcher.dim, "dims": tuple(searcher.dims), "metric": searcher.metric,
                "count": len(searcher), "plan": searcher.plan, "version": self._version,
                "pid": os.getpid()}

    def call(self, version: int, method: str, args: tuple, kwargs: dict) -> tuple:
        searcher = self._loaded()
        if self._version < version:
            return ("stale", self._version, None, 0.0, 0)
        args = _local(args)
        started = time.perf_counter()
        count = len(searcher)
        if method in QUERY_METHODS:
            if count == 0:
                queries = np.asarray(args[0])
                out = _empty_result(queries.shape[0] if queries.ndim == 2 else 1, kwargs["k"])
            else:
                function = getattr(searcher, method)
                out = function(*args, **with_defaults(function, kwargs,
                                                       num_threads=self._threads))
        elif method == "tune_candidates":
            out = self._tune_candidates(searcher, *args, **kwargs) if count else []
        elif method == "missing_ids":
            out = self._missing_ids(searcher, *args)
        elif method == "get":
            out = searcher.get(*args, **kwargs)
        elif method == "__len__":
            out = count
        else:
            raise ValueError(f"unknown shard method {method!r}")
        return ("ok", self._version, out, time.perf_counter() - started, count)

    def apply(self, version: int, op: str, args: tuple) -> tuple:
        searcher = self._loaded()
        if self._version != version:
            return ("stale", self._version, None, 0.0, 0)
        started = time.perf_counter()
        args = _local(args)
        if op == "add":
            vectors, ids, options = args
            searcher.add(vectors, ids, **with_defaults(searcher.add, options, progress=False,
                                                        num_threads=self._threads))
        elif op == "remove":
            searcher.remove(args[0])
        elif op == "plan":
            searcher.plan = args[0]
        elif op == "save":  # not a change: the version stays
            searcher.save(args[0])
            return ("ok", self._version, None, time.perf_counter() - started, len(searcher))
        else:
            raise ValueError(f"unknown shard write {op!r}")
        self._version += 1
        return ("ok", self._version, None, time.perf_counter() - started, len(searcher))

    @staticmethod
    def _tune_candidates(searcher: Searcher, queries: np.ndarray, k: int,
                         targets: Sequence[float], options: dict) -> list:
        plans = []
        for target in targets:
            kwargs = with_defaults(searcher.tune, options, set_default=False, progress=False)
            try:
                plans.append(searcher.tune(queries, k, target, **kwargs))
            except ValueError:
                break  # higher targets cannot be met either
        return plans

    @staticmethod
    def _missing_ids(searcher: Searcher, ids: np.ndarray) -> list[int] | None:
        if getattr(type(searcher), "__contains__", None) is None:
            return None  # this Searcher cannot tell; remove() reports it instead
        return [int(i) for i in ids if int(i) not in searcher]


RemoteShard = ray.remote(max_restarts=0, max_task_retries=0)(_ShardActor)

