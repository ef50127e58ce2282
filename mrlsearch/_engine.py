"""Runs a funnel schedule through the compiled kernels: the one search path of an index.

A schedule is a tuple of stages ``(dim, precision, shortlist)``. Stage 0 walks the HNSW graph
at its dim (or scans, see below); later stages rescore the survivors. Everything after the
argument preparation happens inside one ``nogil`` numba call per batch, parallel over queries
for batches of :data:`SERIAL_BELOW` queries or more.

Stage 0 scans instead of walking when its shortlist covers the live rows, or when a filter
allows so few rows that scoring them all is cheaper than a walk that skips most of what it
visits (:data:`FILTER_SCAN_ROWS`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import numba
import numpy as np

from . import _engine_kernels as kernels
from . import _handoff
from ._graphs import GraphSet
from ._kernels import METRIC_CODES
from ._results import PendingStats, SearchResult
from ._store import VectorStore

__all__: list[str] = []

#: Batches smaller than this run on the calling thread (starting numba's threads costs more).
SERIAL_BELOW = 8
#: A filter that allows at most this many rows, or at most ``16 * ef``, is scanned.
FILTER_SCAN_ROWS = 2048
_TAG_LIMIT = (1 << 32) - 2


class _Pool:
    """Whether numba's parallel kernels may run in this process. Not in a child made by
    ``fork``: numba's OpenMP thread pool (started when mrlsearch's kernels load) does not
    survive a fork, and GNU OpenMP kills the child on its first parallel loop. A forked
    child runs every batch on its calling thread instead."""

    usable = True


def _forked_child() -> None:
    _Pool.usable = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child)


class QueryOutOfRange(Exception):
    """A query left unchecked (``check_range``) has a norm that is not finite or is outside
    [MIN_ABS_VALUE, MAX_ABS_VALUE]: the caller checks it in full."""


class _Scratch(threading.local):
    """Per-thread buffers of the graph walk: visited tags and the candidate heap."""

    buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    fits: tuple[int, int] = (0, 0)  # (chunks, capacity) the buffers hold
    tag = 0

    def take(self, n_chunks: int, capacity: int, n_queries: int):
        """(visited, heap keys, heap rows) for ``n_chunks`` walks over ``capacity`` rows, and
        the last tag used: the batch's queries tag visited rows with the next ``n_queries``."""
        chunks, rows = self.fits
        if n_chunks > chunks or capacity > rows:
            chunks, rows = max(n_chunks, chunks), max(capacity, rows)
            self.buffers = (np.zeros((chunks, rows), dtype=np.uint32),
                            np.empty((chunks, rows + 1), dtype=np.float32),
                            np.empty((chunks, rows + 1), dtype=np.int32))
            self.fits = (chunks, rows)
            self.tag = 0
        base = self.tag
        if base + n_queries >= _TAG_LIMIT:
            self.buffers[0].fill(0)
            base = 0
        self.tag = base + n_queries
        return self.buffers, base


class Engine:
    """Runs schedules over one store and its graphs (stateless but for per-thread scratch)."""

    def __init__(self, store: VectorStore, graphs: GraphSet, metric: str) -> None:
        self._store = store
        self._graphs = graphs
        self._metric = METRIC_CODES[metric]
        self._metric_name = metric
        self._scratch = _Scratch()
        self._cache: dict = {}
        self._state: tuple = ()

    def rebind(self, store: VectorStore, graphs: GraphSet) -> None:
        """Point at a new store and graphs (after ``compact`` swapped them in)."""
        self._store, self._graphs = store, graphs
        self._cache, self._state = {}, ()

    def _stage_arrays(self, schedule: tuple[tuple[int, str, int], ...]):
        dims = self._store.dims
        return (np.array([d for d, _, _ in schedule], dtype=np.int64),
                np.array([dims.index(d) for d, _, _ in schedule], dtype=np.int64),
                np.array([s for _, _, s in schedule], dtype=np.int64),
                np.array([kernels.PRECISION_CODES[p] for _, p, _ in schedule], dtype=np.int64))

    def _prepared(self, schedule: tuple[tuple[int, str, int], ...]) -> _Prepared:
        """What a call with ``schedule`` passes the kernels besides the queries, made once per
        schedule and index state: a single query then costs one dict lookup here instead of
        rebuilding two dozen arguments (the Python around the kernel was 2-3x its run time)."""
        store = self._store
        state = (store.version, store.capacity, self._graphs.dims)
        if state != self._state:
            self._cache = {}
            self._state = state
        prepared = self._cache.get(schedule)
        if prepared is None:
            vectors, table = store.kernel_vectors()
            codes, scales, bits = store.kernel_codes(schedule[0][0])
            stats = tuple((dim, keep, None if i == 0 else "rerank",
                           _report_precision(precision, store))
                          for i, (dim, precision, keep) in enumerate(schedule))
            links = self._graphs.links(schedule[0][0], store.capacity)
            store_args = (vectors, table, store.norms, store.dims_array)
            link_args = (links.level0, links.upper, links.upper_start, links.entry,
                         links.max_level)
            code_args = (codes, scales, bits, self._metric)
            live = store.live
            prepared = _Prepared(
                store_args=store_args, link_args=link_args, code_args=code_args,
                stage_args=self._stage_arrays(schedule), stats=stats,
                walk_args=(*store_args, _walk_mask(store), _NO_FILTER, *link_args,
                           *code_args),
                live=live, scan=schedule[0][2] >= live)
            if len(self._cache) < 512:
                self._cache[schedule] = prepared
        return prepared

    def run(self, batch: np.ndarray,
            schedule: tuple[tuple[int, str, int], ...], k: int, ef: int, *,
            allow: np.ndarray | None, num_threads: int,
            check_range: bool = False, slot: int | None = None) -> SearchResult:
        """Run ``schedule`` for every query of ``batch``; ``allow`` is a row mask or None.

        With ``check_range`` the kernels test each query's norm first and skip a query
        outside the accepted range; :class:`QueryOutOfRange` is raised then. The caller
        raises the thread's GIL handoff flag around the call (:mod:`mrlsearch._handoff`;
        ``Searcher.funnel`` does, and passes its ``slot``): the kernels mark it while they
        run and as they return, and it is raised again here once they have returned."""
        started = time.perf_counter()
        if slot is None:
            slot = _handoff.current_slot()
        prepared = self._prepared(schedule)
        n_queries = batch.shape[0]
        out_ids = np.empty((n_queries, k), dtype=np.int64)
        out_scores = np.empty((n_queries, k), dtype=np.float32)
        out_counts = np.empty(n_queries, dtype=np.int64)
        out_scored = np.empty((n_queries, len(schedule)), dtype=np.int64)  # kernels fill it
        if allow is None:
            n_allowed = prepared.live
            scan = prepared.scan
        else:
            n_allowed = int(np.count_nonzero(allow))
            scan = prepared.scan or n_allowed <= max(FILTER_SCAN_ROWS, 16 * ef)
        parallel = n_queries >= SERIAL_BELOW and num_threads != 1 and _Pool.usable
        if scan:
            self._scan(batch, prepared, allow, out_ids, out_scores, out_counts, out_scored,
                       check_range, slot, parallel)
            method = "exhaustive"
        else:
            n_chunks = 1
            if parallel:
                n_chunks = numba.get_num_threads() if num_threads < 1 else min(
                    num_threads, numba.get_num_threads())
                n_chunks = max(1, min(n_chunks, n_queries))
            (visited, heap_keys, heap_rows), tag = self._scratch.take(
                n_chunks, self._store.capacity, n_queries)
            if n_chunks > 1:
                kernel = kernels.graph_funnel_parallel
                visited, heap_keys, heap_rows = (visited[:n_chunks], heap_keys[:n_chunks],
                                                 heap_rows[:n_chunks])
            else:
                kernel = kernels.graph_funnel_serial
            if allow is None:  # the usual call: its arguments were put together once
                lowest = kernel(batch, *prepared.walk_args, ef, *prepared.stage_args, visited,
                                heap_keys, heap_rows, tag, self._store.ids, out_ids,
                                out_scores, out_counts, out_scored, check_range,
                                _handoff.SLOTS, slot)
            else:  # a filtered walk keeps the two heaps: it reads the deleted mask
                lowest = kernel(batch, *prepared.store_args, self._store.deleted, allow,
                                *prepared.link_args, *prepared.code_args, ef,
                                *prepared.stage_args, visited, heap_keys, heap_rows, tag,
                                self._store.ids, out_ids, out_scores, out_counts, out_scored,
                                check_range, _handoff.SLOTS, slot)
            if slot >= 0:
                _handoff.SLOTS[slot] = _handoff.IN_PYTHON  # the kernel has returned
            if lowest < 0:  # only a query out of range (``check_range``) has a count of -1
                raise QueryOutOfRange
            method = "hnsw"
            if lowest < k and lowest < n_allowed:
                # the walk could not reach enough returnable rows (heavy deletion or a filter
                # cut the graph): scan for those queries instead
                self._rescue(batch, schedule, k, ef, allow, num_threads, n_allowed,
                             out_ids, out_scores, out_counts)
        seconds = time.perf_counter() - started
        return SearchResult.from_kernels(
            out_ids, out_scores, out_counts, self._metric_name,
            stage_stats=PendingStats(prepared.stats, out_scored, seconds, method))

    def _scan(self, batch: np.ndarray, prepared: _Prepared, allow: np.ndarray | None,
              out_ids: np.ndarray, out_scores: np.ndarray, out_counts: np.ndarray,
              out_scored: np.ndarray, check_range: bool, slot: int, parallel: bool) -> None:
        """Stage 0 scores every live (and allowed) row instead of walking the graph (over
        numba's threads with ``parallel``)."""
        store = self._store
        if allow is None:
            rows = store.live_rows()
        else:
            rows = np.flatnonzero(allow[: store.rows] & ~store.deleted[: store.rows])
        kernel = kernels.rows_funnel if parallel else kernels.rows_funnel_serial
        lowest = kernel(batch, *prepared.store_args, np.ascontiguousarray(rows, dtype=np.int64),
                        *prepared.code_args, *prepared.stage_args, store.ids, out_ids,
                        out_scores, out_counts, out_scored, check_range, _handoff.SLOTS, slot)
        if slot >= 0:
            _handoff.SLOTS[slot] = _handoff.IN_PYTHON  # the kernel has returned
        if lowest < 0:
            raise QueryOutOfRange

    def _rescue(self, batch: np.ndarray, schedule: tuple[tuple[int, str, int], ...], k: int,
                ef: int, allow: np.ndarray | None, num_threads: int, n_allowed: int,
                out_ids: np.ndarray, out_scores: np.ndarray, out_counts: np.ndarray) -> None:
        """Scan again, into the outputs, for the queries whose walk returned fewer than
        ``min(k, n_allowed)`` rows."""
        short = np.flatnonzero(out_counts < min(k, n_allowed))
        if not len(short):
            return
        live = self._store.live
        scan_all = ((schedule[0][0], schedule[0][1], live),) + schedule[1:]
        rescue = self.run(np.ascontiguousarray(batch[short]), scan_all, k, max(ef, live),
                          allow=allow, num_threads=num_threads)
        out_ids[short], out_scores[short] = rescue.ids, rescue.scores
        out_counts[short] = rescue.counts


class _Prepared(NamedTuple):
    """The kernel arguments of one schedule over one state of the index, in call order."""

    store_args: tuple  # vectors, float16 table, prefix norms, nesting dims
    link_args: tuple  # level-0 links, upper links, their starts, entry row, top level
    code_args: tuple  # int8 codes, their scales, binary codes, metric code
    stage_args: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    stats: tuple[tuple[int, int, str | None, str], ...]  # per stage; None: the walk's method
    walk_args: tuple  # an unfiltered walk's arguments from the vectors to the metric code
    live: int  # live rows
    scan: bool  # whether stage 0 scans the live rows rather than walk (unfiltered)


_NO_FILTER = np.zeros(0, dtype=bool)


def _walk_mask(store: VectorStore) -> np.ndarray:
    """The deleted-row mask the walk gets: empty while nothing is deleted, which lets it keep
    its beam in one sorted array (:func:`~mrlsearch._engine_kernels._beam_pool`)."""
    return store.deleted if store.live < store.rows else _NO_FILTER


def _report_precision(precision: str, store: VectorStore) -> str:
    return store.dtype if precision in ("float32", "float16") else precision
