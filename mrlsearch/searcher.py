"""Searcher: funnel retrieval over Matryoshka embeddings.

Stage 1 asks an hnswlib graph built over a low-dim prefix for a shortlist; each later stage
rescores the survivors at a longer prefix, adding only the new slice of coordinates to the
running dot products (numba, :mod:`mrlsearch._kernels`), and keeps a shorter list.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Union

import hnswlib
import numpy as np
from tqdm.auto import tqdm

from . import _format, _kernels
from ._errors import DimensionError, FormatError
from ._results import FunnelPlan, SearchResult, StageStats, recall_per_query
from ._rwlock import EfGate, RWLock
from ._validation import (
    check_choice,
    check_dims,
    check_fraction,
    check_ids,
    check_matrix,
    check_positive_int,
)

__all__ = ["Searcher"]

FORMAT_NAME = "mrlsearch.index"
FORMAT_VERSION = 1
METRICS = ("cosine", "ip", "l2")
DTYPES = ("float32", "float16")
_HNSW_SPACE = {"cosine": "cosine", "ip": "ip", "l2": "l2"}
_PROGRESS_MIN_ROWS = 20_000
_ADD_CHUNK = 10_000
# exact(): scores are computed for this many (query, row) pairs at a time (64 MiB of float32).
_EXACT_BLOCK = 1 << 24
# Batches smaller than this run hnswlib and the rerank kernel on one thread: starting threads
# costs more than it saves for a handful of queries.
_SERIAL_BELOW = 8
# z of a one-sided 95 % bound, used by tune() to keep a margin over the target recall.
_Z_95 = 1.645

Stages = Union[Sequence[Sequence[int]], FunnelPlan]


def _default_dims(dim: int) -> tuple[int, ...]:
    dims = [d for d in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if d < dim]
    return tuple(dims) + (dim,)


class Searcher:
    """Funnel nearest-neighbour search over Matryoshka (MRL) embeddings.

    Parameters
    ----------
    dim : int
        Full embedding dim.
    dims : sequence of int, optional
        Nesting dims (strictly increasing, each <= ``dim``) at which stages may score. ``dim``
        is appended when missing. Default: 8, 16, 32, ... below ``dim``, then ``dim``.
    metric : {'cosine', 'ip', 'l2'}, default='cosine'
        Similarity. For cosine every prefix is normalised on its own (prefix norms are stored
        at ``add`` time), so the score at dim ``m`` is the cosine of the ``m``-dim prefixes.
        Scores are higher-is-better: for ``'l2'`` they are the negative squared distance.
    index_dims : sequence of int, optional
        Dims (a subset of ``dims``) that get an HNSW graph; a funnel's first stage must use one
        of them. Default: the smallest dim >= 16 (or the full dim).
    M : int, default=16
        HNSW graph degree (hnswlib's ``M``); memory is about ``M * 8-10`` bytes per vector and
        graph.
    ef_construction : int, default=200
        HNSW build breadth (hnswlib's ``ef_construction``).
    dtype : {'float32', 'float16'}, default='float32'
        Storage type of the vectors; float16 halves memory, scores are accumulated in float32.
    seed : int, default=100
        Random seed of the HNSW level generator.

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch import Searcher
    >>> rng = np.random.default_rng(0)
    >>> vectors = rng.standard_normal((1000, 64)).astype(np.float32)
    >>> s = Searcher(64, dims=(16, 32, 64), metric="cosine", index_dims=(16,))
    >>> ids = s.add(vectors)
    >>> result = s.funnel(vectors[:3], k=5, stages=[(16, 100), (32, 20), (64, 5)])
    >>> result.ids[:, 0].tolist()
    [0, 1, 2]
    """

    def __init__(
        self,
        dim: int,
        dims: Sequence[int] | None = None,
        *,
        metric: str = "cosine",
        index_dims: Sequence[int] | None = None,
        M: int = 16,
        ef_construction: int = 200,
        dtype: str = "float32",
        seed: int = 100,
    ) -> None:
        self._dim = check_positive_int(dim, "dim")
        if dims is None:
            dims = _default_dims(self._dim)
        dims = check_dims(dims, "dims", max_dim=self._dim)
        if dims[-1] != self._dim:
            dims = dims + (self._dim,)
        self._dims = dims
        self._dims_array = np.asarray(dims, dtype=np.int64)
        self._metric = check_choice(metric, "metric", METRICS)
        if index_dims is None:
            index_dims = (next((d for d in dims if d >= 16), dims[-1]),)
        index_dims = check_dims(index_dims, "index_dims", max_dim=self._dim)
        unknown = [d for d in index_dims if d not in dims]
        if unknown:
            raise DimensionError(
                f"'index_dims' must be among dims {dims} (got {unknown[0]})"
            )
        self._index_dims = index_dims
        self._M = check_positive_int(M, "M")
        self._ef_construction = check_positive_int(ef_construction, "ef_construction")
        self._dtype = check_choice(dtype, "dtype", DTYPES)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError(f"'seed' must be a non-negative int (got {seed!r})")
        self._seed = int(seed)

        self._rows = 0  # rows used in the arrays below, deleted ones included
        self._vectors = np.empty((0, self._dim), dtype=self._dtype)
        self._norms = np.empty((0, len(self._dims)), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._deleted = np.empty(0, dtype=bool)
        self._row_of: dict[int, int] = {}
        self._next_id = 0
        self._graphs: dict[int, hnswlib.Index] = {}
        self._plan: FunnelPlan | None = None
        self._checked_stages: dict = {}
        self._fused_arrays: dict = {}
        self._ef_gates: dict[int, EfGate] = {}
        self._lock = RWLock()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Full embedding dim."""
        return self._dim

    @property
    def dims(self) -> tuple[int, ...]:
        """Nesting dims at which stages may score (the last one is ``dim``)."""
        return self._dims

    @property
    def metric(self) -> str:
        """``'cosine'``, ``'ip'`` or ``'l2'``."""
        return self._metric

    @property
    def index_dims(self) -> tuple[int, ...]:
        """Dims that carry an HNSW graph."""
        return self._index_dims

    @property
    def M(self) -> int:  # noqa: N802 - hnswlib's knob name
        """HNSW graph degree."""
        return self._M

    @property
    def ef_construction(self) -> int:
        """HNSW build breadth."""
        return self._ef_construction

    @property
    def dtype(self) -> str:
        """Storage dtype of the vectors."""
        return self._dtype

    @property
    def plan(self) -> FunnelPlan | None:
        """The schedule ``funnel`` uses when called without ``stages`` (set by ``tune``)."""
        return self._plan

    @plan.setter
    def plan(self, value: FunnelPlan | None) -> None:
        if value is not None:
            if not isinstance(value, FunnelPlan):
                raise TypeError(f"'plan' must be a FunnelPlan or None (got {type(value).__name__})")
            self._check_stages(value.stages, value.k, value.ef)
        self._plan = value

    def __len__(self) -> int:
        return len(self._row_of)

    def __repr__(self) -> str:
        return (
            f"<mrlsearch.Searcher dim={self._dim} dims={self._dims} metric={self._metric!r} "
            f"index_dims={self._index_dims} dtype={self._dtype!r} count={len(self)}>"
        )

    # ------------------------------------------------------------------ writing
    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[int] | np.ndarray | None = None,
        *,
        num_threads: int = -1,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Add vectors; an id that is already present is updated (replaced).

        Parameters
        ----------
        vectors : array-like of shape (n, dim) or (dim,)
            Finite vectors. They are stored as ``dtype``.
        ids : array-like of int of shape (n,), optional
            Non-negative, distinct ids. Default: consecutive ids after the largest one so far.
        num_threads : int, default=-1
            Threads for the HNSW insertion (-1: all cores).
        progress : bool, optional
            Show a progress bar. Default: only for 20 000 rows or more on a terminal.

        Returns
        -------
        ndarray of shape (n,), int64
            The ids of the added vectors.
        """
        batch, _ = check_matrix(vectors, "vectors", dim=self._dim)
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + batch.shape[0], dtype=np.int64)
        else:
            new_ids = check_ids(ids, "ids", count=batch.shape[0])
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
            raise TypeError(f"'num_threads' must be an int (got {num_threads!r})")
        if self._dtype == "float16" and np.abs(batch).max() > np.finfo(np.float16).max:
            raise ValueError("'vectors' must fit float16 (got values beyond +-65504)")
        stored = batch.astype(self._dtype)
        with self._lock.write():
            replaced = [self._row_of[int(i)] for i in new_ids if int(i) in self._row_of]
            if replaced:
                self._tombstone(np.asarray(replaced, dtype=np.int64))
            start = self._rows
            stop = start + batch.shape[0]
            self._reserve(stop)
            self._vectors[start:stop] = stored
            self._norms[start:stop] = self._prefix_norms(stored.astype(np.float32))
            self._ids[start:stop] = new_ids
            self._deleted[start:stop] = False
            rows = np.arange(start, stop, dtype=np.int64)
            show = progress if progress is not None else batch.shape[0] >= _PROGRESS_MIN_ROWS
            total = batch.shape[0] * len(self._index_dims)
            with tqdm(total=total, desc="mrlsearch: indexing", unit="vec",
                      disable=None if show else True, leave=False) as bar:
                for prefix_dim in self._index_dims:
                    graph = self._graphs[prefix_dim]
                    for lo in range(0, batch.shape[0], _ADD_CHUNK):
                        hi = min(lo + _ADD_CHUNK, batch.shape[0])
                        chunk = np.ascontiguousarray(stored[lo:hi, :prefix_dim], dtype=np.float32)
                        graph.add_items(chunk, rows[lo:hi], num_threads=num_threads)
                        bar.update(hi - lo)
            self._rows = stop
            self._row_of.update(zip(new_ids.tolist(), rows.tolist()))
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Sequence[int] | np.ndarray | int) -> None:
        """Remove ids; they never come back from any search.

        Raises
        ------
        ValueError
            If an id is not in the index (nothing is removed then).
        """
        targets = check_ids(ids, "ids")
        with self._lock.write():
            missing = [int(i) for i in targets if int(i) not in self._row_of]
            if missing:
                raise ValueError(
                    f"'ids' must all be in the index (got {len(missing)} unknown, "
                    f"e.g. {missing[0]})"
                )
            self._tombstone(np.asarray([self._row_of[int(i)] for i in targets], dtype=np.int64))

    def compact(self, *, num_threads: int = -1, progress: bool | None = None) -> None:
        """Rebuild the arrays and graphs without removed or replaced rows.

        Removal only tombstones rows: they keep their memory and their place in the graphs
        (hnswlib routes through them but never returns them). After many removals, compacting
        frees that memory and gives graphs as good as a fresh build. Ids are kept.
        """
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
            raise TypeError(f"'num_threads' must be an int (got {num_threads!r})")
        with self._lock.write():
            live = np.flatnonzero(~self._deleted[: self._rows])
            vectors = np.ascontiguousarray(self._vectors[live])
            ids = self._ids[live].copy()
            next_id, plan = self._next_id, self._plan
            self._rows = 0
            self._vectors = np.empty((0, self._dim), dtype=self._dtype)
            self._norms = np.empty((0, len(self._dims)), dtype=np.float32)
            self._ids = np.empty(0, dtype=np.int64)
            self._deleted = np.empty(0, dtype=bool)
            self._row_of = {}
            self._graphs = {}
        if live.size:
            self.add(vectors, ids, num_threads=num_threads, progress=progress)
        with self._lock.write():
            self._next_id, self._plan = next_id, plan

    def _tombstone(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            self._deleted[row] = True
            del self._row_of[int(self._ids[row])]
            for graph in self._graphs.values():
                graph.mark_deleted(row)

    def _reserve(self, rows_needed: int) -> None:
        capacity = self._vectors.shape[0]
        if rows_needed <= capacity:
            if not self._graphs:
                self._make_graphs(capacity)
            return
        new_capacity = max(rows_needed, 2 * capacity, 1024)
        vectors = np.empty((new_capacity, self._dim), dtype=self._dtype)
        vectors[: self._rows] = self._vectors[: self._rows]
        norms = np.empty((new_capacity, len(self._dims)), dtype=np.float32)
        norms[: self._rows] = self._norms[: self._rows]
        ids = np.empty(new_capacity, dtype=np.int64)
        ids[: self._rows] = self._ids[: self._rows]
        deleted = np.ones(new_capacity, dtype=bool)
        deleted[: self._rows] = self._deleted[: self._rows]
        self._vectors, self._norms, self._ids, self._deleted = vectors, norms, ids, deleted
        if not self._graphs:
            self._make_graphs(new_capacity)
        else:
            for graph in self._graphs.values():
                graph.resize_index(new_capacity)

    def _make_graphs(self, capacity: int) -> None:
        for prefix_dim in self._index_dims:
            graph = hnswlib.Index(space=_HNSW_SPACE[self._metric], dim=prefix_dim)
            graph.init_index(
                max_elements=max(capacity, 1),
                M=self._M,
                ef_construction=self._ef_construction,
                random_seed=self._seed,
            )
            self._graphs[prefix_dim] = graph

    def _prefix_norms(self, batch: np.ndarray) -> np.ndarray:
        """(n, len(dims)) float32 norms of each row's prefix at every nesting dim."""
        return _kernels.prefix_norms(np.ascontiguousarray(batch, dtype=np.float32),
                                     self._dims_array)

    # ------------------------------------------------------------------ checks
    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        batch = None
        if (type(queries) is np.ndarray and queries.shape == (self._dim,)
                and (queries.dtype == np.float32 or queries.dtype == np.float64)):
            # the common single-query call: skip the general conversion (the checks it
            # would make hold) and test finiteness with one reduction
            row = np.ascontiguousarray(queries, dtype=np.float32)
            if np.isfinite(row.dot(row)):
                batch = row.reshape(1, self._dim)
        if batch is None:
            batch, _ = check_matrix(queries, "queries", dim=self._dim)
        if not self._row_of:
            raise ValueError("the index is empty: add vectors before searching")
        return batch

    def _check_dim(self, value: object, name: str) -> int:
        if value is None:
            return self._dim
        prefix_dim = check_positive_int(value, name)
        if prefix_dim not in self._dims:
            raise DimensionError(f"'{name}' must be one of dims {self._dims} (got {prefix_dim})")
        return prefix_dim

    def _check_stages(
        self, stages: object, k: int, ef: int | None
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        try:  # schedules repeat from call to call: validate each one once
            if type(stages) is not tuple:
                stages_key = tuple(tuple(stage) for stage in stages)
            else:
                stages_key = stages
            key = (stages_key, k, ef)
            hash(key)
        except TypeError:
            key = None
        if key in self._checked_stages:
            return self._checked_stages[key]
        checked = self._validate_stages(stages, k, ef)
        if key is not None and len(self._checked_stages) < 256:
            self._checked_stages[key] = checked
        return checked

    def _validate_stages(
        self, stages: object, k: int, ef: int | None
    ) -> tuple[tuple[tuple[int, int], ...], int]:
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise TypeError(
                f"'stages' must be a non-empty list of (dim, shortlist) pairs (got {stages!r})"
            )
        parsed = []
        for stage in stages:
            if isinstance(stage, (str, bytes)) or not isinstance(stage, Sequence) or len(stage) != 2:
                raise TypeError(f"'stages' must hold (dim, shortlist) pairs (got {stage!r})")
            prefix_dim = check_positive_int(stage[0], "stages dim")
            shortlist = check_positive_int(stage[1], "stages shortlist")
            if prefix_dim not in self._dims:
                raise DimensionError(
                    f"'stages' dims must be among dims {self._dims} (got {prefix_dim})"
                )
            if shortlist < k:
                raise ValueError(
                    f"'stages' shortlist at dim {prefix_dim} must be >= k={k} (got {shortlist})"
                )
            parsed.append((prefix_dim, shortlist))
        stage_dims = [d for d, _ in parsed]
        if any(b <= a for a, b in zip(stage_dims, stage_dims[1:])):
            raise DimensionError(f"'stages' dims must be strictly increasing (got {stage_dims})")
        shortlists = [s for _, s in parsed]
        if any(b > a for a, b in zip(shortlists, shortlists[1:])):
            raise ValueError(
                f"'stages' shortlists must not grow from one stage to the next (got {shortlists})"
            )
        if parsed[0][0] not in self._index_dims:
            raise DimensionError(
                f"'stages' first dim must be an indexed dim {self._index_dims} "
                f"(got {parsed[0][0]}); add it to index_dims"
            )
        if ef is None:
            ef = parsed[0][1]
        else:
            ef = check_positive_int(ef, "ef")
            if ef < parsed[0][1]:
                raise ValueError(
                    f"'ef' must be >= the first stage's shortlist {parsed[0][1]} (got {ef})"
                )
        return tuple(parsed), ef

    # ------------------------------------------------------------------ searching
    def default_stages(self, k: int = 10) -> tuple[tuple[int, int], ...]:
        """The MRL paper's funnel: a shortlist of max(200, 2k) at the first indexed dim,
        halved at each doubling dim, down to ``k`` at full dim."""
        k = check_positive_int(k, "k")
        first = self._index_dims[0]
        stage_dims = [d for d in self._dims if d >= first]
        shortlist = max(200, 2 * k)
        stages = [(d, max(k, shortlist >> i)) for i, d in enumerate(stage_dims)]
        stages[-1] = (stage_dims[-1], k)
        return tuple(stages)

    def funnel(
        self,
        queries: np.ndarray,
        k: int = 10,
        stages: Stages | None = None,
        *,
        ef: int | None = None,
        num_threads: int = -1,
    ) -> SearchResult:
        """Multi-stage funnel search.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim) or (dim,)
            Full-dim queries (a 1-D query is a batch of one).
        k : int, default=10
            Results per query.
        stages : list of (dim, shortlist) or FunnelPlan, optional
            Stage dims strictly increasing and among ``dims``; the first one indexed; shortlists
            >= ``k`` and non-increasing. The first stage takes ``shortlist`` candidates from the
            HNSW graph, each later stage rescores the survivors at its dim and keeps its
            shortlist; the top ``k`` of the last stage are returned. Default: :attr:`plan` if
            ``tune`` set one, else :meth:`default_stages`.
        ef : int, optional
            HNSW search breadth for the first stage (>= its shortlist). Default: the plan's
            ``ef``, else the first shortlist.
        num_threads : int, default=-1
            Threads for the HNSW stage (-1: all cores).

        Returns
        -------
        SearchResult
            ``ids`` and ``scores`` of shape (n_queries, k), best first, padded with -1/-inf;
            ``counts``; ``stats`` per stage.
        """
        k = check_positive_int(k, "k")
        if stages is None:
            stages = self._plan if self._plan is not None else self.default_stages(k)
        if isinstance(stages, FunnelPlan):
            ef = stages.ef if ef is None else ef
            stages = stages.stages
        batch = self._check_queries(queries)
        schedule, ef = self._check_stages(stages, k, ef)
        with self._lock.read():
            query_norms = self._prefix_norms(batch)
            if batch.shape[0] < _SERIAL_BELOW:
                result = self._fused_funnel(batch, schedule, k, ef, query_norms)
                if result is not None:
                    return result
            first = self._first_stage(batch, schedule[0][0], schedule[0][1], ef, num_threads,
                                      query_norms)
            return self._rerank(batch, first, schedule, k, query_norms)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        dim: int | None = None,
        *,
        ef: int | None = None,
        num_threads: int = -1,
    ) -> SearchResult:
        """Plain single-stage HNSW search at one indexed dim (default: the first one).

        Scores are exact at that dim. Equivalent to ``funnel(queries, k, [(dim, k)], ef=ef)``.
        """
        prefix_dim = self._index_dims[0] if dim is None else self._check_dim(dim, "dim")
        if prefix_dim not in self._index_dims:
            raise DimensionError(f"'dim' must be an indexed dim {self._index_dims} (got {prefix_dim})")
        k = check_positive_int(k, "k")
        return self.funnel(queries, k, [(prefix_dim, k)], ef=ef, num_threads=num_threads)

    def exact(self, queries: np.ndarray, k: int = 10, dim: int | None = None) -> SearchResult:
        """Brute-force search at a prefix dim (None: full dim): the ground truth.

        Scores every live vector with numpy (BLAS) in blocks of bounded memory.
        """
        k = check_positive_int(k, "k")
        prefix_dim = self._check_dim(dim, "dim")
        batch = self._check_queries(queries)
        started = time.perf_counter()
        with self._lock.read():
            rows, scores = self._exact_rows(batch, prefix_dim, k)
            ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        stats = (StageStats(prefix_dim, k, batch.shape[0] * len(self), time.perf_counter() - started,
                            "exhaustive"),)
        return SearchResult(ids, scores, (rows >= 0).sum(axis=1), stats)

    def _exact_rows(self, batch: np.ndarray, prefix_dim: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
        n_queries = batch.shape[0]
        col = self._dims.index(prefix_dim)
        query_part = np.ascontiguousarray(batch[:, :prefix_dim])
        query_norms = np.linalg.norm(query_part, axis=1).astype(np.float32)
        best_rows = np.full((n_queries, keep), -1, dtype=np.int64)
        best_scores = np.full((n_queries, keep), -np.inf, dtype=np.float32)
        block = max(1024, _EXACT_BLOCK // max(n_queries, 1))
        for lo in range(0, self._rows, block):
            hi = min(lo + block, self._rows)
            part = self._vectors[lo:hi, :prefix_dim].astype(np.float32, copy=False)
            scores = query_part @ part.T
            if self._metric == "cosine":
                denom = np.outer(query_norms, self._norms[lo:hi, col])
                np.divide(scores, denom, out=scores, where=denom > 0)
                scores[denom <= 0] = 0.0
            elif self._metric == "l2":
                row_sq = np.square(self._norms[lo:hi, col])
                scores = -(np.square(query_norms)[:, None] - 2.0 * scores + row_sq[None, :])
                np.minimum(scores, 0.0, out=scores)
            scores[:, self._deleted[lo:hi]] = -np.inf
            merged_scores = np.concatenate([best_scores, scores.astype(np.float32)], axis=1)
            merged_rows = np.concatenate(
                [best_rows, np.broadcast_to(np.arange(lo, hi, dtype=np.int64), scores.shape)], axis=1
            )
            if merged_scores.shape[1] > keep:
                top = np.argpartition(-merged_scores, keep - 1, axis=1)[:, :keep]
                merged_scores = np.take_along_axis(merged_scores, top, axis=1)
                merged_rows = np.take_along_axis(merged_rows, top, axis=1)
            best_scores, best_rows = merged_scores, merged_rows
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_rows = np.take_along_axis(best_rows, order, axis=1)
        best_rows[~np.isfinite(best_scores)] = -1
        return best_rows, best_scores

    def _first_stage(
        self, batch: np.ndarray, prefix_dim: int, shortlist: int, ef: int, num_threads: int,
        query_norms: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None, float, str]:
        """Stage-1 candidates: rows (n_queries, shortlist), -1 padded, and their running sums.

        From the graph, the running sums at ``prefix_dim`` are derived from hnswlib's distances
        (``1 - cos``, ``1 - ip`` or squared l2), so the rerank never reads those coordinates
        again. From a scan they are ``None`` and the first rerank call computes them.
        """
        started = time.perf_counter()
        live = len(self._row_of)
        n_queries = batch.shape[0]
        if shortlist >= live:
            rows = np.full((n_queries, shortlist), -1, dtype=np.int64)
            rows[:, :live] = np.flatnonzero(~self._deleted[: self._rows])
            return rows, None, time.perf_counter() - started, "exhaustive"
        query_part = np.ascontiguousarray(batch[:, :prefix_dim])
        if n_queries < _SERIAL_BELOW:
            num_threads = 1
        search_ef = ef
        for _ in range(3):
            try:
                labels, distances = self._knn(prefix_dim, query_part, shortlist, search_ef,
                                              num_threads)
            except RuntimeError:
                # hnswlib found fewer than `shortlist` live neighbours (many deletions cut the
                # graph): widen the search, then fall back to a scan rather than fail.
                search_ef *= 4
                continue
            col = self._dims.index(prefix_dim)
            rows = np.empty(labels.shape, dtype=np.int64)
            partial = np.empty(labels.shape, dtype=np.float32)
            _kernels.partial_from_graph(labels, distances, _kernels.METRIC_CODES[self._metric],
                                        query_norms[:, col], self._norms[:, col], rows, partial)
            return rows, partial, time.perf_counter() - started, "hnsw"
        rows, _ = self._exact_rows(batch, prefix_dim, shortlist)
        return rows, None, time.perf_counter() - started, "exhaustive"

    def _knn(self, prefix_dim: int, query_part: np.ndarray, shortlist: int, ef: int,
             num_threads: int) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib search of the graph at ``prefix_dim`` with ``ef``, safe against threads
        that search the same graph with another ``ef`` (see :class:`EfGate`)."""
        graph = self._graphs[prefix_dim]
        gate = self._ef_gates.get(prefix_dim)
        if gate is None:
            gate = self._ef_gates.setdefault(prefix_dim, EfGate())
        gate.acquire(graph, ef)
        try:
            return graph.knn_query(query_part, k=shortlist, num_threads=num_threads)
        finally:
            gate.release()

    def _fused_funnel(
        self, batch: np.ndarray, schedule: tuple[tuple[int, int], ...], k: int, ef: int,
        query_norms: np.ndarray,
    ) -> SearchResult | None:
        """Small batches: the graph search, then every rerank stage in one kernel call.

        Returns None when the general path must run instead (the first shortlist covers the
        index, or hnswlib cannot fill it after heavy deletion).
        """
        prefix_dim, shortlist = schedule[0]
        if shortlist >= len(self._row_of):
            return None
        started = time.perf_counter()
        try:
            labels, distances = self._knn(prefix_dim, np.ascontiguousarray(batch[:, :prefix_dim]),
                                          shortlist, ef, 1)
        except RuntimeError:
            return None
        graph_seconds = time.perf_counter() - started
        arrays = self._fused_arrays.get(schedule)
        if arrays is None:
            arrays = (np.array([d for d, _ in schedule], dtype=np.int64),
                      np.array([self._dims.index(d) for d, _ in schedule], dtype=np.int64),
                      np.array([keep for _, keep in schedule], dtype=np.int64))
            if len(self._fused_arrays) < 256:
                self._fused_arrays[schedule] = arrays
        store, table = self._store()
        n_queries = batch.shape[0]
        ids = np.empty((n_queries, k), dtype=np.int64)
        scores = np.empty((n_queries, k), dtype=np.float32)
        counts = np.empty(n_queries, dtype=np.int64)
        scored = np.empty(len(schedule), dtype=np.int64)
        skip_first = len(schedule) > 1
        _kernels.funnel_stages_serial(batch, store, table, labels, distances, *arrays,
                                      skip_first, query_norms, np.asarray(self._norms),
                                      _kernels.METRIC_CODES[self._metric], self._ids, ids,
                                      scores, counts, scored)
        rerank_seconds = time.perf_counter() - started - graph_seconds
        if not skip_first:
            stats = (StageStats(prefix_dim, shortlist, int(scored[0]),
                                graph_seconds + rerank_seconds, "hnsw"),)
        else:
            last = len(schedule) - 1
            stats = (StageStats(prefix_dim, shortlist, int(scored[0]), graph_seconds, "hnsw"),) \
                + tuple(StageStats(dim, keep, int(scored[i]),
                                   rerank_seconds if i == last else 0.0, "fused")
                        for i, (dim, keep) in enumerate(schedule) if i > 0)
        return SearchResult(ids, scores, counts, stats)

    def _store(self) -> tuple[np.ndarray, np.ndarray]:
        """The vector store as the kernels take it, with its float16 lookup table."""
        if self._dtype == "float16":
            return np.asarray(self._vectors.view(np.uint16)), _kernels.HALF_TABLE
        return np.asarray(self._vectors), _kernels.NO_TABLE

    def _rerank(
        self,
        batch: np.ndarray,
        first: tuple[np.ndarray, np.ndarray | None, float, str],
        schedule: tuple[tuple[int, int], ...],
        k: int,
        query_norms: np.ndarray,
    ) -> SearchResult:
        """Run the stages over the stage-1 candidates; keep the top ``k`` of the last one."""
        rows, partial, first_seconds, first_method = first
        n_queries = batch.shape[0]
        metric = _kernels.METRIC_CODES[self._metric]
        store, table = self._store()
        # running sums from the graph already cover the first stage's prefix
        if partial is None:
            partial, previous_dim = np.zeros(rows.shape, dtype=np.float32), 0
        else:
            previous_dim = schedule[0][0]
        stats = []
        kernel = (_kernels.rerank_stage if n_queries >= _SERIAL_BELOW
                  else _kernels.rerank_stage_serial)
        for index, (prefix_dim, shortlist) in enumerate(schedule):
            started = time.perf_counter()
            if index == 0 and previous_dim == prefix_dim and len(schedule) > 1:
                # the graph returned exactly this shortlist with its running sums; the next
                # stage scores and sorts them, so there is nothing to do here
                stats.append(StageStats(prefix_dim, shortlist, int(np.count_nonzero(rows >= 0)),
                                        first_seconds, first_method))
                continue
            col = self._dims.index(prefix_dim)
            out_rows = np.empty((n_queries, shortlist), dtype=np.int64)
            out_partial = np.empty((n_queries, shortlist), dtype=np.float32)
            scores = np.empty((n_queries, shortlist), dtype=np.float32)
            scored = kernel(batch, store, table, rows, partial, previous_dim, prefix_dim,
                            query_norms[:, col], self._norms[:, col], metric, out_rows,
                            out_partial, scores)
            seconds = time.perf_counter() - started
            if index == 0:
                stats.append(StageStats(prefix_dim, shortlist, scored, seconds + first_seconds,
                                        first_method))
            else:
                stats.append(StageStats(prefix_dim, shortlist, scored, seconds, "rerank"))
            rows, partial, previous_dim = out_rows, out_partial, prefix_dim
        ids = np.empty((n_queries, k), dtype=np.int64)
        counts = np.empty(n_queries, dtype=np.int64)
        _kernels.rows_to_ids(rows, self._ids, ids, counts)
        return SearchResult(ids, np.ascontiguousarray(scores[:, :k]), counts, tuple(stats))

    # ------------------------------------------------------------------ tuning
    def tune(
        self,
        queries: np.ndarray,
        k: int = 10,
        target_recall: float = 0.95,
        *,
        max_shortlist: int = 4096,
        set_default: bool = True,
        progress: bool | None = None,
    ) -> FunnelPlan:
        """Find the fastest funnel schedule that meets a recall target.

        Ground truth is :meth:`exact` at full dim on ``queries``. Candidate schedules vary the
        first-stage dim (every indexed dim), its shortlist (``2k, 2.8k, 4k, ...`` up to
        ``max_shortlist``), the HNSW ``ef`` (1x or 2x the shortlist) and how fast the later
        stages shrink: halving at each nesting dim (the paper's shape), shrinking by 3/4, or
        going straight to full dim. A schedule qualifies when the one-sided 95 % lower bound of
        its mean recall@k (mean - 1.645 standard errors over the queries) reaches
        ``target_recall``, which keeps a margin for queries not seen here. Of those, the six
        fastest are timed again end to end (graph search included, best of three runs) and
        the fastest wins, so that plans a few microseconds apart do not swap with the
        machine's noise from one call to the next.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
            Representative queries; a few hundred give a tight bound.
        k : int, default=10
        target_recall : float, default=0.95
        max_shortlist : int, default=4096
            Largest first-stage shortlist tried.
        set_default : bool, default=True
            Store the plan as :attr:`plan` (used by ``funnel`` without ``stages``, and saved).
        progress : bool, optional
            Progress bar over the candidate schedules (default: on a terminal).

        Returns
        -------
        FunnelPlan
            With the measured ``recall``, ``recall_lower`` and ``seconds_per_query``.

        Raises
        ------
        ValueError
            If no schedule reaches the target; the message gives the best recall found.
        """
        from ._tune import search_plans

        k = check_positive_int(k, "k")
        target_recall = check_fraction(target_recall, "target_recall")
        max_shortlist = check_positive_int(max_shortlist, "max_shortlist")
        batch = self._check_queries(queries)
        if batch.shape[0] < 2:
            raise ValueError(f"'queries' must hold at least 2 rows to tune (got {batch.shape[0]})")
        truth = self.exact(batch, k)
        plan = search_plans(self, batch, truth, k=k, target_recall=target_recall,
                            max_shortlist=max_shortlist, progress=progress)
        if set_default:
            self._plan = plan
        return plan

    def _measure(self, batch: np.ndarray, truth: SearchResult, stages, ef: int, k: int,
                 first: tuple | None = None, query_norms: np.ndarray | None = None):
        """Run one schedule; return (result, mean recall, lower bound, seconds/query)."""
        with self._lock.read():
            if query_norms is None:
                query_norms = self._prefix_norms(batch)
            if first is None:
                first = self._first_stage(batch, stages[0][0], stages[0][1], ef, -1, query_norms)
            result = self._rerank(batch, first, stages, k, query_norms)
        recalls = recall_per_query(result.ids, truth)
        mean = float(recalls.mean())
        lower = mean - _Z_95 * float(recalls.std(ddof=1)) / math.sqrt(recalls.size)
        return result, mean, lower, result.seconds / batch.shape[0]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Save to an index directory (see docs/format.md), atomically.

        The directory is written beside ``path`` and renamed into place once complete, so a
        crash never leaves a half-written index at ``path``.
        """
        with self._lock.read(), _format.atomic_directory(path) as staging:
            rows = self._rows
            arrays = {
                "vectors.npy": np.asarray(self._vectors[:rows]),
                "norms.npy": np.asarray(self._norms[:rows]),
                "ids.npy": np.asarray(self._ids[:rows]),
                "deleted.npy": np.asarray(self._deleted[:rows]),
            }
            for name, array in arrays.items():
                np.save(staging / name, array, allow_pickle=False)
            graph_files = {}
            for prefix_dim, graph in self._graphs.items():
                name = f"hnsw_{prefix_dim}.bin"
                graph.save_index(str(staging / name))
                graph_files[str(prefix_dim)] = name
            files = sorted(list(arrays) + list(graph_files.values()))
            manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "dim": self._dim,
                "dims": list(self._dims),
                "metric": self._metric,
                "dtype": self._dtype,
                "index_dims": list(self._index_dims),
                "M": self._M,
                "ef_construction": self._ef_construction,
                "seed": self._seed,
                "rows": rows,
                "count": len(self),
                "next_id": self._next_id,
                "graphs": graph_files,
                "plan": None if self._plan is None else self._plan.to_dict(),
                "files": {name: _format.sha256_file(staging / name) for name in files},
            }
            _format.write_json(staging / _format.MANIFEST, manifest)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = False) -> Searcher:
        """Load an index directory written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        mmap : bool, default=False
            Map ``vectors.npy`` copy-on-write instead of reading it: pages load lazily and the
            index can be larger than memory. Adding to a mapped index copies it into memory.

        Raises
        ------
        FileNotFoundError
            If there is no directory at ``path``.
        FormatError
            If the manifest, a checksum, a shape or a graph does not match, naming the file.
        """
        directory = _format.resolve_directory(path)
        manifest = _format.read_manifest(directory, format_name=FORMAT_NAME,
                                         versions=(FORMAT_VERSION,))
        where = directory / _format.MANIFEST

        def field_int(key: str, minimum: int = 0) -> int:
            value = manifest.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise FormatError(f"{where} field {key!r} must be an int >= {minimum} "
                                  f"(got {value!r})")
            return value

        rows, count, next_id = field_int("rows"), field_int("count"), field_int("next_id")
        graphs = manifest.get("graphs")
        if not isinstance(graphs, dict) or not all(
                isinstance(d, str) and d.isdigit() and isinstance(n, str) for d, n in graphs.items()):
            raise FormatError(f"{where} field 'graphs' must map dims to file names (got {graphs!r})")
        try:
            searcher = cls(
                field_int("dim", 1), manifest["dims"], metric=manifest["metric"],
                index_dims=manifest["index_dims"], M=field_int("M", 1),
                ef_construction=field_int("ef_construction", 1), dtype=manifest["dtype"],
                seed=field_int("seed") if "seed" in manifest else 100,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{where} has a bad field ({exc})") from exc
        graph_files = {int(d): name for d, name in graphs.items()}
        plan = manifest.get("plan")
        if set(graph_files) != set(searcher.index_dims):
            raise FormatError(
                f"{directory / _format.MANIFEST} lists graphs {sorted(graph_files)} but "
                f"index_dims {searcher.index_dims}"
            )
        n_dims = len(searcher.dims)
        searcher._vectors = _format.load_array(directory, "vectors.npy", dtype=searcher.dtype,
                                               shape=(rows, searcher.dim), mmap=mmap)
        searcher._norms = _format.load_array(directory, "norms.npy", dtype=np.float32,
                                             shape=(rows, n_dims))
        searcher._ids = _format.load_array(directory, "ids.npy", dtype=np.int64, shape=(rows,))
        searcher._deleted = _format.load_array(directory, "deleted.npy", dtype=np.bool_,
                                               shape=(rows,))
        if mmap:
            searcher._vectors = np.asarray(searcher._vectors)
        searcher._rows = rows
        live = np.flatnonzero(~searcher._deleted)
        searcher._row_of = dict(zip(searcher._ids[live].tolist(), live.tolist()))
        if len(searcher._row_of) != live.size or count != live.size:
            raise FormatError(f"{directory / 'ids.npy'} does not match the manifest's count")
        searcher._next_id = next_id
        for prefix_dim, name in graph_files.items():
            graph_path = directory / name
            _format.check_hnsw_file(graph_path, rows=rows, dim=prefix_dim, M=searcher.M)
            graph = hnswlib.Index(space=_HNSW_SPACE[searcher.metric], dim=prefix_dim)
            try:
                graph.load_index(str(graph_path), max_elements=max(rows, 1))
            except RuntimeError as exc:
                raise FormatError(f"{graph_path} is not a readable hnswlib graph ({exc})") from exc
            if graph.element_count != rows:
                raise FormatError(
                    f"{graph_path} holds {graph.element_count} vectors, the index has {rows}"
                )
            searcher._graphs[prefix_dim] = graph
        if plan is not None:
            try:
                searcher.plan = FunnelPlan.from_dict(plan)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise FormatError(f"{directory / _format.MANIFEST} has a bad plan ({exc})") from exc
        return searcher

