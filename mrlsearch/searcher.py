"""Searcher: funnel retrieval over Matryoshka embeddings (the façade).

The parts, one job each: :mod:`~mrlsearch._store` (vectors, norms, codes, ids, tombstones),
:mod:`~mrlsearch._graphs` (hnswlib builds the HNSW graphs), :mod:`~mrlsearch._engine` (the
compiled search over both), :mod:`~mrlsearch._tune` (plan search through a measure callback),
:mod:`~mrlsearch._build` (auto-configuration), :mod:`~mrlsearch._persist` (index directories).
``Searcher`` validates, locks and orchestrates.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Union

import numpy as np
from tqdm.auto import tqdm

from . import _persist
from ._codes import CODE_PRECISIONS
from ._engine import Engine, QueryOutOfRange
from ._engine_kernels import query_row
from ._errors import DimensionError, FormatError
from ._exact import exact_rows
from ._graphs import EF_CONSTRUCTION_RANGE, M_RANGE, GraphSet
from ._handoff import IN_PYTHON, SLOTS, current_slot, flag_lowered
from ._memory import resident_bytes
from ._payloads import EncodedPayloads, PayloadColumn
from ._payloads import encode as encode_payloads
from ._results import (
    FunnelPlan,
    SearchResult,
    StageStats,
    recall_per_query,
    tied_recall_per_query,
)
from ._rwlock import RWLock
from ._stages import validate_stages
from ._store import VectorStore, consecutive_ids
from ._validation import (
    MAX_ABS_VALUE,
    MIN_ABS_VALUE,
    check_choice,
    check_dims,
    check_fraction,
    check_ids,
    check_int_range,
    check_matrix,
    check_peaks,
    check_positive_int,
)

__all__ = ["Searcher"]

_NO_PLAN = object()  # matches no plan, not even None
_FLOAT32 = np.dtype(np.float32)  # the dtype of most float32 arrays: 'is' is its fast test

METRICS = ("cosine", "ip", "l2")
DTYPES = ("float32", "float16")
_PROGRESS_MIN_ROWS = 20_000
_ADD_CHUNK = 10_000
#: z of a one-sided 95 % bound, used to keep a margin over the target recall.
_Z_95 = 1.645
#: ``tune`` first runs a schedule on this many of its queries, drawn at random (when it has at
#: least three times as many), and skips the full run when the upper bound below is under the
#: target
_SCREEN_QUERIES = 100
#: a one-sided 99.9 % bound: a schedule whose full run would qualify is screened out only
#: with a > 3-sigma shortfall on a subset of the same queries
_Z_SCREEN = 3.0
#: the screen's margin when its queries' recalls barely vary (no spread is no proof)
_SCREEN_MIN_MARGIN = 0.02
#: Largest k (results are padded to k columns, so k bounds the memory of a result).
MAX_K = 1 << 20

Stages = Union[Sequence[Sequence], FunnelPlan]


def _check_num_threads(value: object) -> int:
    """``value`` as an int (any integer but a bool), else ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"'num_threads' must be an int (got {value!r})")
    return int(value)


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
        Scores are higher-is-better: for ``'l2'`` they are the negative squared distance
        (``SearchResult.distances`` gives the positive one).
    index_dims : sequence of int, optional
        Dims (a subset of ``dims``) that get an HNSW graph; a funnel's first stage must use one
        of them. Default: the smallest dim >= 16 (or the full dim). Include ``dim`` itself to
        let ``tune`` fall back to a full-dim graph where short prefixes rank badly.
    M : int, default=16
        HNSW graph degree (hnswlib's ``M``, 2 to 2048).
    ef_construction : int, default=200
        HNSW build breadth (hnswlib's ``ef_construction``).
    dtype : {'float32', 'float16'}, default='float32'
        Storage type of the vectors; float16 halves memory, scores are accumulated in float32.
    codes : sequence of {'int8', 'binary'}, default=('int8', 'binary')
        Compact codes kept at every indexed dim, for the graph walk and early stages to score
        (int8: one byte per coordinate; binary: one bit). ``()`` keeps none.
    seed : int, default=100
        Random seed of the HNSW level generator.
    link_dim : int, optional
        Link each graph by the first ``link_dim`` dims (one of ``dims``) instead of by its
        own dim: hnswlib builds a graph over a shorter prefix faster, while the walk still
        scores at the indexed dim, with its codes. Where the shorter prefix ranks nearly as
        well as the indexed dim, the walk needs the same beam; where it ranks worse, a longer
        beam (measured, see docs/benchmarks.md). Default: each graph is linked by its own dim.
        :meth:`build` chooses it from the data.

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
        codes: Sequence[str] = CODE_PRECISIONS,
        seed: int = 100,
        link_dim: int | None = None,
    ) -> None:
        self._dim = check_positive_int(dim, "dim")
        if dims is None:
            dims = _default_dims(self._dim)
        dims = check_dims(dims, "dims", max_dim=self._dim)
        if dims[-1] != self._dim:
            dims = dims + (self._dim,)
        self._dims = dims
        self._metric = check_choice(metric, "metric", METRICS)
        if index_dims is None:
            index_dims = (next((d for d in dims if d >= 16), dims[-1]),)
        index_dims = check_dims(index_dims, "index_dims", max_dim=self._dim)
        unknown = [d for d in index_dims if d not in dims]
        if unknown:
            raise DimensionError(f"'index_dims' must be among dims {dims} (got {unknown[0]})")
        self._index_dims = index_dims
        self._M = check_int_range(M, "M", *M_RANGE)
        self._ef_construction = check_int_range(ef_construction, "ef_construction",
                                                 *EF_CONSTRUCTION_RANGE)
        self._dtype = check_choice(dtype, "dtype", DTYPES)
        if isinstance(codes, str) or not all(isinstance(c, str) for c in codes):
            raise TypeError(f"'codes' must be a sequence of {CODE_PRECISIONS} (got {codes!r})")
        chosen = {check_choice(c, "codes", CODE_PRECISIONS) for c in codes}
        # one order whatever order they came in: a saved index loads with the same tuple
        self._codes = tuple(c for c in CODE_PRECISIONS if c in chosen)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"'seed' must be an int in [0, 2**64) (got {seed!r})")
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"'seed' must be an int in [0, 2**64) (got {seed!r})")
        self._seed = int(seed)
        self._link_dim = None if link_dim is None else self._check_dim(link_dim, "link_dim")
        self._store, self._graphs = self._new_parts()
        self._engine = Engine(self._store, self._graphs, self._metric)
        self._plan: FunnelPlan | None = None
        #: (plan, k, index dims, (schedule, k, ef)) of the last call that used the index's plan
        self._planned_call: tuple = (_NO_PLAN, 0, None, None)
        #: the same for the last call given a FunnelPlan as ``stages`` (frozen: kept by identity)
        self._given_plan_call: tuple = (_NO_PLAN, 0, None, None)
        self._checked_stages: dict = {}
        self._lock = RWLock(around_wait=flag_lowered)
        self._compact_lock = threading.Lock()
        #: sha256 checks ``load(verify="lazy"|"none")`` deferred, and what they found
        self._deferred_checks: tuple = ()
        self._failure: FormatError | None = None

    def _new_parts(self) -> tuple[VectorStore, GraphSet]:
        store = VectorStore(self._dim, self._dims, dtype=self._dtype,
                            code_dims=self._index_dims, precisions=self._codes,
                            normalise_codes=self._metric == "cosine")
        graphs = GraphSet(self._metric, self._index_dims, M=self._M,
                          ef_construction=self._ef_construction, seed=self._seed,
                          link_dim=self._link_dim)
        return store, graphs

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
        """Dims that carry an HNSW graph (and compact codes)."""
        return self._index_dims

    @property
    def link_dim(self) -> int | None:
        """The prefix hnswlib links the graphs by (None: each graph by its own dim)."""
        return self._link_dim

    @property
    def codes(self) -> tuple[str, ...]:
        """Code kinds kept at every indexed dim."""
        return self._codes

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
        """The schedule ``search`` and ``funnel`` use without ``stages`` (set by ``tune``)."""
        return self._plan

    @plan.setter
    def plan(self, value: FunnelPlan | None) -> None:
        if value is not None:
            if not isinstance(value, FunnelPlan):
                raise TypeError(f"'plan' must be a FunnelPlan or None (got {type(value).__name__})")
            self._check_stages(value.stages, value.k, value.ef)
        self._plan = value

    def __len__(self) -> int:
        return self._store.live

    @property
    def tombstones(self) -> int:
        """Removed or replaced rows still held in memory and graphs (``compact`` frees them)."""
        return self._store.rows - self._store.live

    def __contains__(self, item: object) -> bool:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            return False
        return int(item) in self._store.row_of

    def __repr__(self) -> str:
        return (
            f"<mrlsearch.Searcher dim={self._dim} dims={self._dims} metric={self._metric!r} "
            f"index_dims={self._index_dims} "
            + ("" if self._link_dim is None else f"link_dim={self._link_dim} ")
            + f"dtype={self._dtype!r} codes={self._codes} count={len(self)}>"
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors: np.ndarray, *, queries: np.ndarray | None = None, k: int = 10,
              target_recall: float = 0.95, ids: Sequence[int] | np.ndarray | None = None,
              payloads: Sequence[str | bytes | None] | None = None,
              metric: str = "cosine", dims: Sequence[int] | None = None,
              dtype: str = "float32", M: int = 16, ef_construction: int = 200,
              sample_size: int = 20_000, progress: bool | None = None) -> Searcher:
        """Pick graph dims and code types from the data, build, tune; return a ready Searcher.

        A sample of the vectors (``sample_size`` rows) is searched exactly at every nesting
        dim to see how long a shortlist each prefix needs before the true full-dim neighbours
        of the sample queries are in it, and what a walk plus reranking would cost. The
        prefix with the lowest estimate gets the graph when it is estimated below 0.7 of the
        full-dim walk; else the full dim does (data whose short prefixes rank badly, where the
        result is what plain HNSW at full dim does, with an int8 walk where that measures
        faster). Then :meth:`tune` chooses precisions and shortlists by measured latency.
        Where the prefix was estimated above 0.4 and its tuned walk needs over 3x the
        estimated beam (the estimate was far off), the full-dim graph is built and tuned too,
        and the faster of the two plans is kept.

        A prefix graph is linked (``link_dim``) by the shortest prefix of at least 32 dims
        whose sample shortlist is at most 4x the graph dim's: hnswlib builds it over fewer
        dims, faster, and the walk still scores at the graph's dim with the same beam
        (measured, docs/benchmarks.md). A full-dim graph, or one where no prefix ranks that
        well, is linked by its own dim.

        Parameters
        ----------
        vectors : array-like of shape (n, dim)
        queries : array-like of shape (n_queries, dim), optional
            Representative queries (a few hundred). Default: 300 rows of ``vectors``.
        k, target_recall
            What the plan must reach: recall@k against exact full-dim search, as a one-sided
            95 % lower bound over the queries.
        ids, payloads, metric, dims, dtype, M, ef_construction
            As for :class:`Searcher` and :meth:`add`.
        sample_size : int, default=20000
            Rows used to estimate each prefix's shortlist.
        progress : bool, optional
            Progress bars (default: on a terminal, for large inputs).

        Returns
        -------
        Searcher
            With :attr:`plan` set; ``build_report`` holds what was estimated and chosen,
            and under ``'seconds'`` the wall time of each step: ``'estimate'`` (the
            input checks and the sample), ``'add'`` (graphs and codes), ``'tune'``.

        Examples
        --------
        >>> from mrlsearch import Searcher
        >>> from mrlsearch.datasets import synthetic_mrl
        >>> vectors, queries = synthetic_mrl(4000, 128, n_queries=100, seed=0)
        >>> s = Searcher.build(vectors, queries=queries, k=10, target_recall=0.9)
        >>> s.plan.recall_lower >= 0.9
        True
        >>> sorted(s.build_report["seconds"])
        ['add', 'estimate', 'tune']
        """
        from ._build import build_searcher

        return build_searcher(cls, vectors, queries=queries, k=k, target_recall=target_recall,
                              ids=ids, payloads=payloads, metric=metric, dims=dims,
                              dtype=dtype, M=M, ef_construction=ef_construction,
                              sample_size=sample_size, progress=progress)

    # ------------------------------------------------------------------ writing
    def add(
        self,
        vectors: np.ndarray,
        ids: Sequence[int] | np.ndarray | None = None,
        *,
        payloads: Sequence[str | bytes | None] | None = None,
        num_threads: int = -1,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Add vectors; an id that is already present is updated (replaced).

        Input is read in chunks of 10 000 rows, so a memory-mapped array is never copied
        whole.

        Parameters
        ----------
        vectors : array-like of shape (n, dim) or (dim,)
            Finite vectors, every value within +-1e15, and a row that is not all zero must
            reach 1e-15 somewhere (float32 products of smaller values underflow). Stored as
            ``dtype``.
        ids : array-like of int of shape (n,), optional
            Distinct ids in [0, 2**63). Default: consecutive ids after the largest one so far
            (allocated under the write lock: concurrent adds never share ids).
        payloads : sequence of str, bytes or None, optional
            One payload per vector (e.g. the text it embeds), stored with the index and
            returned by ``get(ids, payload=True)``. ``str`` is stored as UTF-8 and comes back
            as ``str``, ``bytes`` as ``bytes``, ``None`` as no payload. Re-adding an id
            replaces its payload too (with ``None`` when no payloads are given).
        num_threads : int, default=-1
            Threads for the HNSW insertion (-1: all cores).
        progress : bool, optional
            Show a progress bar (True forces one even off a terminal). Default: for 20 000
            rows or more, on a terminal.

        Returns
        -------
        ndarray of shape (n,), int64
            The ids of the added vectors.

        Raises
        ------
        TypeError
            If ``payloads`` is not a sequence of str, bytes or None.
        ValueError
            If ``payloads`` does not hold one payload per vector.

        Examples
        --------
        >>> import numpy as np
        >>> from mrlsearch import Searcher
        >>> s = Searcher(16, dims=(8, 16), index_dims=(8,))
        >>> s.add(np.eye(16, dtype=np.float32)[:3], payloads=["a", b"b", None]).tolist()
        [0, 1, 2]
        >>> s.get([2, 0], payload=True)
        [None, 'a']
        """
        self._ensure_intact()
        try:
            source = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        except (TypeError, ValueError):  # ragged lists: check_matrix names the problem
            source = check_matrix(vectors, "vectors", dim=self._dim)[0]
        if source.ndim == 1:
            source = source[None, :]
        if source.ndim != 2 or source.shape[0] == 0 or source.shape[1] != self._dim:
            check_matrix(source, "vectors", dim=self._dim)  # raises the right error
        n_rows = source.shape[0]
        given_ids = None if ids is None else check_ids(ids, "ids", count=n_rows)
        num_threads = _check_num_threads(num_threads)
        encoded = None
        if isinstance(payloads, EncodedPayloads):  # already encoded (by compact or build)
            encoded = payloads
        elif payloads is not None:
            encoded = encode_payloads(payloads, n_rows, "payloads")
        for lo in range(0, n_rows, _ADD_CHUNK):  # validate everything before writing anything
            self._check_values(source[lo:lo + _ADD_CHUNK], "vectors", offset=lo)
        # None lets tqdm decide (a bar on a terminal only); True forces one anywhere
        disable = (None if n_rows >= _PROGRESS_MIN_ROWS else True) if progress is None \
            else not progress
        with self._lock.write():
            self._graphs.unpark()
            store = self._store
            if given_ids is None:
                new_ids = consecutive_ids(store.next_id, n_rows)
            else:
                new_ids = given_ids
            replaced = [store.row_of[i] for i in new_ids.tolist() if i in store.row_of]
            if replaced:
                self._tombstone(np.asarray(replaced, dtype=np.int64))
            if store.reserve(store.rows + n_rows):
                if self._graphs:
                    self._graphs.resize(store.capacity)
            if not self._graphs:
                self._graphs.create(store.capacity)
            with tqdm(total=n_rows * len(self._index_dims), desc="mrlsearch: indexing",
                      unit="vec", disable=disable, leave=False) as bar, store.one_reencode():
                for lo in range(0, n_rows, _ADD_CHUNK):
                    hi = min(n_rows, lo + _ADD_CHUNK)
                    # at most one float32 copy of the chunk (none for writable contiguous
                    # float32 input: the compiled kernels take writable arrays only); a
                    # memory-mapped input is read chunk by chunk
                    chunk = np.ascontiguousarray(source[lo:hi], dtype=np.float32)
                    if not chunk.flags.writeable:
                        chunk = chunk.copy()
                    stored = chunk.astype(self._dtype, copy=False)
                    rows = store.append(stored, new_ids[lo:hi],
                                        None if encoded is None else encoded.slice(lo, hi))
                    for prefix_dim in self._index_dims:
                        self._graphs.add(prefix_dim, stored, rows, num_threads=num_threads)
                        bar.update(hi - lo)
                    del chunk, stored
        return new_ids

    def _check_values(self, chunk: np.ndarray, name: str, *, offset: int = 0) -> None:
        batch, _ = check_matrix(chunk, name, dim=self._dim, row_offset=offset)
        peak = check_peaks(batch, name, row_offset=offset)
        tiny = (peak > 0) & (peak < MIN_ABS_VALUE)
        if np.any(tiny):
            row = int(np.flatnonzero(tiny)[0]) + offset
            raise ValueError(f"'{name}' values are too small to score in float32 (row {row} "
                             f"peaks at {float(peak[tiny][0]):g}; the supported range is "
                             f"{MIN_ABS_VALUE:g} to {MAX_ABS_VALUE:g}, or exactly 0): "
                             "scale the vectors up")
        if self._dtype == "float16" and np.any(peak > np.finfo(np.float16).max):
            raise ValueError(f"'{name}' must fit float16 (got values beyond +-65504)")

    def remove(self, ids: Sequence[int] | np.ndarray | int) -> None:
        """Remove ids; they never come back from any search.

        Raises
        ------
        ValueError
            If an id is not in the index (nothing is removed then).
        """
        self._ensure_intact()
        targets = check_ids(ids, "ids")
        with self._lock.write():
            row_of = self._store.row_of
            missing = [i for i in targets.tolist() if i not in row_of]
            if missing:
                raise ValueError(f"'ids' must all be in the index (got {len(missing)} unknown, "
                                 f"e.g. {missing[0]})")
            self._graphs.unpark()
            self._tombstone(np.asarray([row_of[i] for i in targets.tolist()], dtype=np.int64))

    def _tombstone(self, rows: np.ndarray) -> None:
        self._store.tombstone(rows)
        self._graphs.mark_deleted(rows)

    def compact(self, *, num_threads: int = -1, progress: bool | None = None) -> None:
        """Rebuild the arrays and graphs without removed or replaced rows.

        Removal only tombstones rows: they keep their memory and their place in the graphs.
        Compacting frees that memory and gives graphs as good as a fresh build. The new index
        is built aside while queries go on against the old one, then swapped in at once under
        the write lock: no query ever sees a half-built index. Writes made during the rebuild
        are replayed onto the new index before the swap. Ids, payloads and the plan are kept
        (the payloads of removed rows are freed).
        """
        self._ensure_intact()
        num_threads = _check_num_threads(num_threads)
        with self._compact_lock:
            with self._lock.read():
                old = self._store
                rows = old.live_rows()
                live_ids = old.ids[rows].copy()
                vectors = np.asarray(old.vectors[rows], dtype=np.float32)
                payloads = None if old.payloads is None else old.payloads.take(rows)
                seen_rows, seen_version = old.rows, old.version
            fresh = Searcher(self._dim, self._dims, metric=self._metric,
                             index_dims=self._index_dims, M=self._M,
                             ef_construction=self._ef_construction, dtype=self._dtype,
                             codes=self._codes, seed=self._seed, link_dim=self._link_dim)
            if rows.size:
                fresh.add(vectors, live_ids, payloads=payloads, num_threads=num_threads,
                          progress=progress)
            del vectors, payloads
            with self._lock.write():
                if old.version != seen_version:
                    # writes landed during the rebuild: replay them onto the new index
                    gone = [i for i in live_ids.tolist() if i not in old.row_of]
                    if gone:
                        fresh.remove(gone)
                    added = np.arange(seen_rows, old.rows)
                    added = added[~old.deleted[seen_rows:old.rows]]
                    if added.size:
                        fresh.add(np.asarray(old.vectors[added], dtype=np.float32),
                                  old.ids[added], num_threads=num_threads,
                                  payloads=None if old.payloads is None
                                  else old.payloads.take(added))
                if old.payloads is not None and fresh._store.payloads is None:
                    fresh._store.payloads = PayloadColumn(fresh._store.capacity)
                fresh._store.next_id = max(fresh._store.next_id, old.next_id)
                if fresh._index_dims != self._index_dims:  # drop_graphs ran meanwhile
                    fresh._store.drop_codes(self._index_dims)
                    fresh._graphs.drop(self._index_dims)
                self._store, self._graphs = fresh._store, fresh._graphs
                self._engine.rebind(self._store, self._graphs)

    # ------------------------------------------------------------------ reading
    def get(self, ids: Sequence[int] | np.ndarray | int, *,
            payload: bool = False) -> np.ndarray | list[str | bytes | None]:
        """Stored vectors of ``ids`` (float32, shape (n, dim)), or with ``payload=True`` their
        payloads.

        Parameters
        ----------
        ids : int or array-like of int
            An id may repeat (e.g. the hits of a batch of queries).
        payload : bool, default=False
            Return a list of the payloads given to :meth:`add` (``str``, ``bytes`` or
            ``None``), in the order of ``ids``, instead of the vectors.

        Raises
        ------
        KeyError
            If an id is not in the index (removed ids included).

        Examples
        --------
        >>> import numpy as np
        >>> from mrlsearch import Searcher
        >>> s = Searcher(8, dims=(4, 8), index_dims=(4,))
        >>> _ = s.add(np.eye(8, dtype=np.float32)[:2], ids=[7, 9], payloads=["seven", "nine"])
        >>> s.get([9, 7], payload=True), s.get(7).shape
        (['nine', 'seven'], (1, 8))
        """
        self._ensure_intact()
        if not isinstance(payload, (bool, np.bool_)):
            raise TypeError(f"'payload' must be a bool (got {payload!r})")
        targets = check_ids(ids, "ids", unique=False)
        with self._lock.read():
            store = self._store
            rows = store.rows_of(targets)
            if np.any(rows < 0):
                raise KeyError(f"id {int(targets[rows < 0][0])} is not in the index")
            if payload:
                if store.payloads is None:
                    return [None] * rows.size
                return store.payloads.get(rows)
            return np.asarray(store.vectors[rows], dtype=np.float32)

    @property
    def has_payloads(self) -> bool:
        """Whether a payload column exists (some :meth:`add` was given ``payloads``)."""
        return self._store.payloads is not None

    def ids(self) -> np.ndarray:
        """The live ids, in storage order (int64)."""
        self._ensure_intact()
        with self._lock.read():
            store = self._store
            return store.ids[store.live_rows()].copy()

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes per part, measured: ``vectors``, ``norms``, ``codes``, ``ids``,
        ``graphs`` (hnswlib's own copy) and ``graph_links`` (the copy the search reads).

        Arrays in memory count whole; a memory-mapped vector file counts the pages the
        kernel holds resident for this process (from ``/proc/self/smaps`` where available).
        """
        self._ensure_intact()
        with self._lock.read():
            store = self._store
            usage = store.nbytes()
            usage["vectors"] = resident_bytes(store.vectors[: store.rows])
            if store.payloads is not None:
                column = store.payloads
                usage["payloads"] = (column.kinds.nbytes + column.offsets.nbytes
                                     + resident_bytes(column.data[: column.size]))
            usage["graphs"] = self._graphs.index_bytes()
            usage["graph_links"] = self._graphs.links_bytes()
        usage["total"] = sum(usage.values())
        return usage

    # ------------------------------------------------------------------ checks
    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        batch, _ = self._check_queries_deferred(queries, defer=False)
        return batch

    def _check_queries_deferred(self, queries: np.ndarray, *, defer: bool
                                ) -> tuple[np.ndarray, bool]:
        """The queries as a float32 batch, and whether their values are left unchecked.

        With ``defer``, a single float32 query of the right shape is returned unchecked: the
        kernel that searches it tests its norm (finite and within range) and flags it, and
        :meth:`funnel` then runs the full check. Checking it here took a numpy dot product,
        and numpy lets go of the GIL for BLAS calls: with two query threads, every such
        handoff is a chance to sleep on the GIL (two-thread throughput halved, measured).
        """
        single = type(queries) is np.ndarray and queries.shape == (self._dim,)
        if single:
            dtype = queries.dtype
            is_float32 = dtype is _FLOAT32 or dtype == _FLOAT32  # 'is' first: 30 ns cheaper
            single = is_float32 or dtype == np.float64
        if single and defer:
            flags = queries.flags
            if is_float32 and flags.c_contiguous and flags.writeable:
                return queries[None], True
            return query_row(queries), True  # read-only, strided or float64: a copy
        batch = None
        if single:  # one reduction tests finiteness and range
            row = np.ascontiguousarray(queries, dtype=np.float32)
            square = float(row.dot(row))
            if math.isfinite(square) and MIN_ABS_VALUE ** 2 <= square <= MAX_ABS_VALUE ** 2:
                batch = row.reshape(1, self._dim)
        if batch is None:
            batch, _ = check_matrix(queries, "queries", dim=self._dim)
            self._check_values(batch, "queries")
        if not batch.flags.writeable:  # the compiled kernels take writable arrays only
            batch = batch.copy()
        return batch, False

    def _check_dim(self, value: object, name: str) -> int:
        if value is None:
            return self._dim
        prefix_dim = check_positive_int(value, name)
        if prefix_dim not in self._dims:
            raise DimensionError(f"'{name}' must be one of dims {self._dims} (got {prefix_dim})")
        return prefix_dim

    @staticmethod
    def _check_k(k: object) -> int:
        k = check_positive_int(k, "k")
        if k > MAX_K:
            raise ValueError(f"'k' must be at most {MAX_K} (got {k})")
        return k

    def _check_stages(self, stages: object, k: int, ef: object
                      ) -> tuple[tuple[tuple[int, str, int], ...], int]:
        try:  # schedules repeat from call to call: validate each one once
            flat = stages if type(stages) is tuple else tuple(tuple(s) for s in stages)
            # with the types: 60.0 == 60 and True == 1, but only ints are valid
            key = (flat, tuple(type(v) for stage in flat for v in stage), k, ef, type(ef),
                   self._index_dims)  # drop_graphs may clear the cache while one is checked
            hash(key)
        except TypeError:
            key = None
        if key is not None:
            checked = self._checked_stages.get(key)
            if checked is not None:
                return checked
        checked = validate_stages(stages, k, ef, dims=self._dims, index_dims=self._index_dims,
                                  dtype=self._dtype, codes=self._codes)
        if key is not None and len(self._checked_stages) < 256:
            self._checked_stages[key] = checked
        return checked

    def _check_filter(self, filter: object) -> np.ndarray | None:  # noqa: A002
        """A row mask from an allow-list of ids or a boolean mask over ids."""
        if filter is None:
            return None
        store = self._store
        array = np.asarray(filter)
        allow = np.zeros(store.capacity, dtype=bool)
        if array.dtype == np.bool_:
            if array.ndim != 1:
                raise DimensionError(f"'filter' as a mask must be 1-D over ids "
                                     f"(got shape {array.shape})")
            rows = np.arange(store.rows)
            ids = store.ids[: store.rows]
            inside = ids < array.shape[0]
            allow[rows[inside]] = array[ids[inside]]
            return allow
        allowed_ids = np.unique(check_ids(array, "filter", unique=False))
        rows = store.rows_of(allowed_ids)
        allow[rows[rows >= 0]] = True
        return allow

    # ------------------------------------------------------------------ searching
    def default_stages(self, k: int = 10) -> tuple[tuple[int, str, int], ...]:
        """The MRL paper's funnel: a shortlist of max(200, 2k) at the first indexed dim,
        halved at each doubling dim, down to ``k`` at full dim (all float)."""
        k = check_positive_int(k, "k")
        first = self._index_dims[0]
        stage_dims = [d for d in self._dims if d >= first]
        shortlist = max(200, 2 * k)
        stages = [(d, self._dtype, max(k, shortlist >> i)) for i, d in enumerate(stage_dims)]
        stages[-1] = (stage_dims[-1], self._dtype, k)
        return tuple(stages)

    def search(self, queries: np.ndarray, k: int = 10, *, ef: int | None = None,
               filter: Sequence[int] | np.ndarray | None = None,  # noqa: A002
               num_threads: int = -1) -> SearchResult:
        """The main entry: the tuned funnel (:attr:`plan`), or the default one before ``tune``.

        Same as ``funnel(queries, k)``; see :meth:`funnel` for the arguments.

        Examples
        --------
        >>> import numpy as np
        >>> from mrlsearch import Searcher
        >>> vectors = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
        >>> s = Searcher(32, dims=(8, 16, 32), index_dims=(8,))
        >>> _ = s.add(vectors)
        >>> s.search(vectors[:2], k=3).ids[:, 0].tolist()
        [0, 1]
        """
        return self.funnel(queries, k, ef=ef, filter=filter, num_threads=num_threads)

    def funnel(
        self,
        queries: np.ndarray,
        k: int = 10,
        stages: Stages | None = None,
        *,
        ef: int | None = None,
        filter: Sequence[int] | np.ndarray | None = None,  # noqa: A002 - the usual name
        num_threads: int = -1,
    ) -> SearchResult:
        """Multi-stage funnel search, in one compiled call per batch.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim) or (dim,)
            Full-dim queries (a 1-D query is a batch of one).
        k : int, default=10
            Results per query (at most the index size is returned; the rest is padding).
        stages : list of (dim, shortlist) or (dim, precision, shortlist), or FunnelPlan
            ``precision`` is ``'float32'`` / ``'float16'`` (the stored vectors; the default),
            ``'int8'`` or ``'binary'`` (codes of the first stage's prefix). The first stage
            walks the HNSW graph at its dim, which must be indexed, scoring with its
            precision, and keeps ``shortlist``; each later stage rescores the survivors and
            keeps its shortlist. Dims grow (a dim may repeat with a finer precision), and
            shortlists do not. A FunnelPlan serves any ``k``: one tuned for a smaller ``k``
            scales its shortlists and beam (:meth:`FunnelPlan.for_k`). Default: :attr:`plan`,
            else :meth:`default_stages`.
        ef : int, optional
            Beam width of the graph walk (>= the first shortlist), for this call only.
            Default: the plan's, else the first shortlist.
        filter : array-like of int ids, or boolean array over ids, optional
            Only these ids can be returned (a mask ``m`` allows id ``i`` where ``m[i]``).
            Rows outside the filter are walked through but never returned; a filter that
            allows few rows is scanned instead.
        num_threads : int, default=-1
            Threads for a batch (-1: numba's thread count). Batches under 8 queries run on
            the calling thread.

        Returns
        -------
        SearchResult
            ``ids`` and ``scores`` of shape (n_queries, k), best first, padded with -1/-inf;
            ``counts``; ``stats`` per stage.
        """
        slot = current_slot()
        if slot < 0:
            return self._funnel(queries, k, stages, ef, filter, num_threads, slot)
        SLOTS[slot] = IN_PYTHON  # this thread is in a search's Python (see mrlsearch._handoff)
        try:
            return self._funnel(queries, k, stages, ef, filter, num_threads, slot)
        finally:
            SLOTS[slot] = 0

    def _funnel(self, queries: np.ndarray, k: int, stages: Stages | None, ef: int | None,
                filter: Sequence[int] | np.ndarray | None,  # noqa: A002
                num_threads: int, slot: int) -> SearchResult:
        index_dims = self._index_dims  # read first: drop_graphs may replace it meanwhile
        schedule, k, ef_walk = self._schedule(stages, k, ef, index_dims)
        batch, unchecked = self._check_queries_deferred(queries, defer=True)
        if type(num_threads) is not int:  # the usual call skips the check
            num_threads = _check_num_threads(num_threads)
        with self._lock.read():
            if self._index_dims is not index_dims:  # drop_graphs ran since: check again
                schedule, k, ef_walk = self._schedule(stages, k, ef, self._index_dims)
            if not self._store.live:
                raise ValueError("the index is empty: add vectors before searching")
            allow = self._check_filter(filter)
            try:
                return self._engine.run(batch, schedule, k, ef_walk, allow=allow,
                                        num_threads=num_threads, check_range=unchecked,
                                        slot=slot)
            except QueryOutOfRange:
                pass
            # the kernel's norm test failed: the full check names the problem, or (a zero
            # query, tiny but allowed values) passes and the query is searched as it is
            self._check_values(batch, "queries")
            return self._engine.run(batch, schedule, k, ef_walk, allow=allow,
                                    num_threads=num_threads, slot=slot)

    def _schedule(self, stages: Stages | None, k: object, ef: object,
                  index_dims: tuple[int, ...]) -> tuple[tuple, int, int]:
        """(checked schedule, k, ef) of a funnel call. The index's plan at ``k``, and the last
        FunnelPlan passed as ``stages`` at ``k``, are remembered with the ``index_dims`` they were
        checked against: a call with either skips the checks (3 us of a 20 us query, measured)."""
        if ef is None and type(k) is int:
            planned = self._planned_call if stages is None else self._given_plan_call
            if (planned[0] is (self._plan if stages is None else stages) and planned[1] == k
                    and planned[2] is index_dims):
                return planned[3]
        plan = self._plan
        uses_plan = stages is None and ef is None
        given_plan = stages if ef is None and isinstance(stages, FunnelPlan) else None
        k = self._check_k(k)
        if stages is None:
            stages = self.default_stages(k) if plan is None else (
                plan if k <= plan.k else plan.for_k(k))
        if isinstance(stages, FunnelPlan):
            if k > stages.k:  # as for the index's plan: its shortlists and beam scale with k
                stages = stages.for_k(k)
            ef = stages.ef if ef is None else ef
            stages = stages.stages
        schedule, ef = self._check_stages(stages, k, ef)
        if uses_plan:
            self._planned_call = (plan, k, index_dims, (schedule, k, ef))
        elif given_plan is not None:
            self._given_plan_call = (given_plan, k, index_dims, (schedule, k, ef))
        return schedule, k, ef

    def search_graph(self, queries: np.ndarray, k: int = 10, dim: int | None = None, *,
                     ef: int | None = None, num_threads: int = -1) -> SearchResult:
        """Plain single-stage HNSW search at one indexed dim (default: the first one).

        Scores are exact at that dim. Equivalent to ``funnel(queries, k, [(dim, k)], ef=ef)``;
        :meth:`search` is the tuned funnel.
        """
        prefix_dim = self._index_dims[0] if dim is None else self._check_dim(dim, "dim")
        if prefix_dim not in self._index_dims:
            raise DimensionError(f"'dim' must be an indexed dim {self._index_dims} "
                                 f"(got {prefix_dim})")
        k = self._check_k(k)
        return self.funnel(queries, k, [(prefix_dim, k)], ef=ef, num_threads=num_threads)

    def exact(self, queries: np.ndarray, k: int = 10, dim: int | None = None) -> SearchResult:
        """Brute-force search at a prefix dim (None: full dim): the ground truth.

        Scores every live vector with numpy (BLAS) in blocks of bounded memory; of equal
        scores, the vector added first ranks first. Squared L2 is computed in float32 as
        ``2 q.x - |q|^2 - |x|^2`` about a centre of the rows (their mean, where it lies
        farther from the origin than their spread): rows far from that centre relative to
        the distances between neighbours (clusters thousands of units apart, each of unit
        spread) lose precision to it, as any float32 BLAS search does; scale such data down
        or centre each cluster.
        """
        self._ensure_intact()
        k = self._check_k(k)
        prefix_dim = self._check_dim(dim, "dim")
        batch = self._check_queries(queries)
        started = time.perf_counter()
        with self._lock.read():
            store = self._store
            if not store.live:
                raise ValueError("the index is empty: add vectors before searching")
            rows, scores = exact_rows(store, self._metric, batch, prefix_dim,
                                      min(k, store.live))
            ids = np.where(rows >= 0, store.ids[np.maximum(rows, 0)], -1)
            live = store.live
        if k > live:
            ids = np.pad(ids, ((0, 0), (0, k - live)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - live)), constant_values=-np.inf)
        stats = (StageStats(prefix_dim, k, batch.shape[0] * live,
                            time.perf_counter() - started, "exhaustive", self._dtype),)
        return SearchResult(ids, scores, (ids >= 0).sum(axis=1), stats, self._metric)

    # ------------------------------------------------------------------ tuning
    def measure(self, queries: np.ndarray, truth: SearchResult | np.ndarray, stages: Stages,
                *, ef: int | None = None, k: int | None = None,
                repeats: int = 1) -> tuple[SearchResult, float, float, float]:
        """Run a schedule on ``queries``; return (result, mean recall@k against ``truth``,
        its one-sided 95 % lower bound, best seconds per query over ``repeats`` runs)."""
        truth_ids = truth.ids if isinstance(truth, SearchResult) else np.asarray(truth)
        if truth_ids.ndim != 2:
            raise DimensionError(f"'truth' must be ids of shape (n_queries, k) "
                                 f"(got shape {truth_ids.shape})")
        k = truth_ids.shape[1] if k is None else self._check_k(k)
        repeats = check_positive_int(repeats, "repeats")
        best = math.inf
        result = None
        for _ in range(repeats):
            started = time.perf_counter()
            result = self.funnel(queries, k, stages, ef=ef)
            best = min(best, time.perf_counter() - started)
        last = result.stats[-1]
        if isinstance(truth, SearchResult) and last.dim == self._dim and \
                last.precision in DTYPES and truth.metric == self._metric and \
                truth.stats and truth.stats[-1].dim == self._dim:
            # full-dim float scores on both sides, of one metric: ties count as found
            recalls = tied_recall_per_query(result, truth)
        else:
            recalls = recall_per_query(result.ids, truth_ids)
        mean = float(recalls.mean())
        spread = float(recalls.std(ddof=1)) if recalls.size > 1 else 0.0
        lower = mean - _Z_95 * spread / math.sqrt(recalls.size)
        return result, mean, lower, best / max(1, len(result))

    def tune(
        self,
        queries: np.ndarray,
        k: int = 10,
        target_recall: float = 0.95,
        *,
        max_shortlist: int = 4096,
        precisions: Sequence[str] | None = None,
        set_default: bool = True,
        progress: bool | None = None,
    ) -> FunnelPlan:
        """Find the fastest funnel schedule that meets a recall target.

        Ground truth is :meth:`exact` at full dim on ``queries``. Candidate schedules vary the
        graph dim (every indexed dim), what the walk scores (``precisions``: the stored
        floats, int8 or binary codes), its shortlist (``2k, 2.8k, 4k, ...`` up to
        ``max_shortlist``), ``ef`` (1x or 2x the shortlist) and how fast the later stages
        shrink. A schedule qualifies when the one-sided 95 % lower bound of its mean recall@k
        reaches ``target_recall``; the six fastest are timed again (best of three, in rounds) and
        the fastest wins. Its beam is then tried 0.75x and 0.875x as wide, and a narrower one
        that still qualifies and runs faster takes its place.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
            Representative queries; a few hundred give a tight bound.
        k : int, default=10
        target_recall : float, default=0.95
        max_shortlist : int, default=4096
            Largest first-stage shortlist tried.
        precisions : sequence of str, optional
            Graph-walk precisions to try. Default: the stored floats and every kept code.
        set_default : bool, default=True
            Store the plan as :attr:`plan` (used by ``search``, and saved).
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

        k = self._check_k(k)
        target_recall = check_fraction(target_recall, "target_recall")
        max_shortlist = check_positive_int(max_shortlist, "max_shortlist")
        if precisions is None:
            precisions = (self._dtype,) + self._codes
        else:
            if isinstance(precisions, str) or not all(isinstance(p, str) for p in precisions):
                raise TypeError(f"'precisions' must be a sequence of str (got {precisions!r})")
            precisions = tuple(dict.fromkeys(
                self._dtype if p in ("float", "float16", "float32") else
                check_choice(p, "precisions", self._codes) for p in precisions))
            if not precisions:
                raise ValueError("'precisions' must name at least one precision (got none)")
        batch = self._check_queries(queries)
        if batch.shape[0] < 2:
            raise ValueError(f"'queries' must hold at least 2 rows to tune (got {batch.shape[0]})")
        truth = self.exact(batch, k)
        screen = None
        if batch.shape[0] >= 3 * _SCREEN_QUERIES:
            # a random subset (fixed seed): the bound holds for a sample of the queries, not for
            # the first ones of a batch that may be ordered (by source, by difficulty)
            picked = np.sort(np.random.default_rng(0).choice(
                batch.shape[0], size=_SCREEN_QUERIES, replace=False))
            few = np.ascontiguousarray(batch[picked])
            few_truth = dataclasses.replace(truth, ids=truth.ids[picked],
                                            scores=truth.scores[picked],
                                            counts=truth.counts[picked])

            def screen(stages, ef):
                _, recall, lower, seconds = self.measure(few, few_truth, stages, ef=ef, k=k)
                margin = max((recall - lower) * _Z_SCREEN / _Z_95, _SCREEN_MIN_MARGIN)
                return recall, lower, recall + margin, seconds

        plan = search_plans(
            lambda stages, ef: self.measure(batch, truth, stages, ef=ef, k=k)[1:],
            dims=self._dims, index_dims=self._index_dims, precisions=precisions,
            float_name=self._dtype, refine_binary="int8" in self._codes,
            live=len(self), k=k, target_recall=target_recall, max_shortlist=max_shortlist,
            progress=progress, screen=screen)
        if set_default:
            self._plan = plan
        return plan

    def drop_graphs(self, keep: Sequence[int]) -> None:
        """Free the graphs (and codes) of indexed dims not in ``keep``, e.g. those a tuned plan
        does not use. The current plan must not need a dropped graph."""
        self._ensure_intact()
        keep_dims = check_dims(sorted(set(keep)), "keep", max_dim=self._dim)
        if any(d not in self._index_dims for d in keep_dims):
            raise DimensionError(f"'keep' must be among index_dims {self._index_dims} "
                                 f"(got {keep_dims})")
        if self._plan is not None and self._plan.stages[0][0] not in keep_dims:
            raise ValueError(f"the plan walks the graph at dim {self._plan.stages[0][0]}; keep it")
        with self._lock.write():
            self._index_dims = keep_dims
            self._store.drop_codes(keep_dims)
            self._graphs.drop(keep_dims)
            self._checked_stages.clear()
            self._planned_call = (_NO_PLAN, 0, None, None)
            self._given_plan_call = (_NO_PLAN, 0, None, None)

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict:
        return {"dim": self._dim, "dims": list(self._dims), "metric": self._metric,
                "dtype": self._dtype, "index_dims": list(self._index_dims), "M": self._M,
                "ef_construction": self._ef_construction, "seed": self._seed,
                "link_dim": self._link_dim}

    def save(self, path: str | os.PathLike) -> None:
        """Save to an index directory (see docs/format.md), atomically.

        The directory is written beside ``path`` and renamed into place once complete, so a
        crash never leaves a half-written index at ``path``. An index loaded with
        ``verify="lazy"`` or ``"none"`` is verified first (:meth:`verify`): a corrupt file is
        never saved again under fresh checksums.

        ``path`` must be new, an empty directory, or a saved index (which is replaced); a
        symbolic link is followed. An empty index saves and loads.

        Raises
        ------
        FileExistsError
            If ``path`` is a file, or a directory that holds other files than a saved index
            (nothing there is touched).
        FormatError
            If the deferred check of the loaded files finds a mismatch.
        """
        self.verify()
        with self._lock.read():
            _persist.save_index(path, config=self._config(), store=self._store,
                                graphs=self._graphs, plan=self._plan)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = False,
             verify: str = "full") -> Searcher:
        """Load an index directory written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
        mmap : bool, default=False
            Map ``vectors.npy`` (and the payload bytes) copy-on-write instead of reading
            them: the graphs' links, codes and norms are in memory, full vectors stay on disk
            and pages load as the reranking reads them. hnswlib's own graphs (which hold a
            copy of the prefix vectors) are let go of once their links are copied and read
            back from the directory when ``add``, ``remove`` or ``save`` needs them (a
            ``FormatError`` if it was saved over meanwhile). Adding to a mapped index copies
            it into memory.
        verify : {'full', 'lazy', 'none'}, default='full'
            How the files' sha256 checksums are checked. The manifest, every file's header,
            dtype, shape and size, every graph (completely) and the sha256 of every small
            file (graphs, ids, norms, codes, payload kinds and offsets) are checked in every
            mode; the modes differ on the big files, ``vectors.npy`` and
            ``payload_data.npy``:

            * ``'full'``: hashed before ``load`` returns (reads every byte once; with
              ``mmap=True`` that also fills the page cache with the whole vector file), and
              the vectors checked finite (a file with NaN or inf and a checksum to match is
              a FormatError; ``'lazy'`` and ``'none'`` skip this pass).
            * ``'lazy'``: hashed on a background thread while the index already answers
              queries. A mismatch makes every later call (search, get, add, save, ...) raise
              :class:`FormatError` naming the file; :meth:`verify` waits for the check. Until
              it ends, queries may return results computed from corrupt vectors.
            * ``'none'``: not hashed until :meth:`verify` is called (:meth:`save` calls it).
              Corruption of those files goes unnoticed; structure is still checked.

            The background check reads with ``O_DIRECT`` where the file system allows, so it
            leaves the page cache as it found it: with ``mmap=True`` the process's RSS then
            grows only with the pages queries touch.

        Raises
        ------
        FileNotFoundError
            If there is no directory at ``path``.
        FormatError
            If the manifest, a checksum, a shape or a graph does not match, naming the file.
        ValueError
            If ``verify`` is not one of the modes.

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> from mrlsearch import Searcher
        >>> s = Searcher(16, dims=(8, 16), index_dims=(8,))
        >>> _ = s.add(np.random.default_rng(0).standard_normal((100, 16)))
        >>> path = tempfile.mkdtemp() + "/index"
        >>> s.save(path)
        >>> loaded = Searcher.load(path, mmap=True, verify="lazy")
        >>> loaded.verify()  # waits for the background check; raises FormatError on a mismatch
        >>> len(loaded)
        100
        """
        verify = check_choice(verify, "verify", _persist.VERIFY_MODES)

        def make_parts(config: dict):
            searcher = cls(config["dim"], config["dims"], metric=config["metric"],
                           index_dims=config["index_dims"], M=config["M"],
                           ef_construction=config["ef_construction"], dtype=config["dtype"],
                           codes=config["codes"], seed=config["seed"],
                           link_dim=config["link_dim"])
            return searcher, searcher._store, searcher._graphs

        searcher, store, graphs, plan, deferred = _persist.read_index(
            path, mmap=mmap, make_parts=make_parts, verify=verify)
        searcher._engine.rebind(store, graphs)
        if plan is not None:
            try:
                searcher.plan = plan
            except (TypeError, ValueError) as exc:
                for check in deferred:
                    check.close()
                raise FormatError(f"{path}: the saved plan does not fit the index ({exc})") \
                    from exc
        if deferred:
            searcher._deferred_checks = tuple(deferred)
            if verify == "lazy":
                searcher._start_background_check()
        return searcher

    # ------------------------------------------------------------------ deferred checks
    def verify(self) -> None:
        """Finish the checksum checks that ``load(verify="lazy"|"none")`` deferred.

        With ``"lazy"`` this waits for the background check (or runs the rest of it); with
        ``"none"`` it hashes the big files now. Once passed, later calls return at once. An
        index that was built in memory or loaded with ``verify="full"`` has nothing left to
        check.

        Raises
        ------
        FormatError
            Naming the file whose sha256 does not match the manifest; every later call on
            this Searcher raises it too.

        Examples
        --------
        >>> import numpy as np
        >>> from mrlsearch import Searcher
        >>> s = Searcher(16, dims=(8, 16), index_dims=(8,))
        >>> s.verify()  # nothing deferred
        """
        self._ensure_intact()
        checks = self._deferred_checks
        for check in checks:
            error = check.run()
            if error is not None:
                self._fail(error)
                self._ensure_intact()
        if checks and self._deferred_checks is checks:
            self._deferred_checks = ()

    def _start_background_check(self) -> None:
        """Run the deferred checks on a daemon thread (it holds no reference to the Searcher:
        a Searcher dropped meanwhile stops it)."""
        ref = weakref.ref(self)
        checks = self._deferred_checks

        def cancelled() -> bool:
            return ref() is None

        def work() -> None:
            for check in checks:
                error = check.run(cancelled)
                if error is not None:
                    searcher = ref()
                    if searcher is not None:
                        searcher._fail(error)
                    return
                if not check.done:  # cancelled
                    return

        threading.Thread(target=work, name="mrlsearch-verify", daemon=True).start()

    def _fail(self, error: FormatError) -> None:
        """Mark the index corrupt: every later call raises ``error``'s message."""
        if self._failure is None:
            self._failure = error
            self._engine = _FailedEngine(error)

    def _ensure_intact(self) -> None:
        failure = self._failure
        if failure is not None:
            raise FormatError(f"{failure} (found by the deferred check of Searcher.load("
                              f"verify=...); this Searcher cannot be used: load a good copy)")


class _FailedEngine:
    """Stands in for the engine of a Searcher whose deferred check failed: every search
    raises (so the query path itself pays nothing for the check)."""

    def __init__(self, error: FormatError) -> None:
        self._error = error

    def run(self, *args, **kwargs):
        raise FormatError(f"{self._error} (found by the deferred check of Searcher.load("
                          f"verify=...); this Searcher cannot be used: load a good copy)")

    def rebind(self, *args) -> None:
        pass
