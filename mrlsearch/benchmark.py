"""Side-by-side comparison on your own data: the funnel vs hnswlib, exact, faiss and usearch.

Every method runs in this process on the same vectors and the same queries. Half of the
queries tune each method (the funnel's stage schedule, hnswlib's and usearch's ``ef``, the
faiss funnel's and usearch int8's shortlist) by one rule -- the one-sided 95 % lower bound of
recall@k must reach the target -- and the other half measure recall@k against exact search at
full dim, batch and single-query throughput (the funnel's and hnswlib's single-query rates in
alternating passes, see :func:`interleaved_single_query_qps`). ``mrlsearch bench`` prints the
table and writes JSON and a plot; ``benchmarks/funnel.py`` and ``benchmarks/scale.py`` are
built on the same functions.

Examples
--------
>>> import numpy as np
>>> from mrlsearch.benchmark import compare
>>> from mrlsearch.datasets import synthetic_mrl
>>> vectors, queries = synthetic_mrl(3000, 64, n_queries=100, n_clusters=30, seed=0)
>>> report = compare(vectors, queries, k=10, methods=("funnel", "exact"), progress=False)
>>> [row.method for row in report.rows]
['mrlsearch (Searcher.build)', 'exact numpy (BLAS matmul)']
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from ._errors import DimensionError
from ._results import SearchResult, recall_per_query
from ._graphs import EF_CONSTRUCTION_RANGE, M_RANGE
from ._validation import (
    check_choice,
    check_fraction,
    check_int_range,
    check_matrix,
    check_positive_int,
    check_positive_number,
)
from .searcher import Searcher

__all__ = ["BenchReport", "BenchRow", "METHODS", "best_time", "compare", "hnswlib_build",
           "interleaved_single_query_qps", "qualifies", "recalls_at_k", "searcher_memory_mb",
           "single_query_qps", "thread_scaling"]

#: methods :func:`compare` knows, in the order they run.
METHODS = ("funnel", "exact", "hnswlib", "faiss", "usearch-f16", "usearch-i8")
_DEFAULT_METHODS = METHODS  # a method whose library is missing is skipped with a note
_EF_GRID = (10, 20, 30, 40, 60, 80, 120, 160, 320, 640)
_SHORTLIST_GRID = (20, 40, 80, 160, 320, 640, 1280)
_USEARCH_METRICS = {"cosine": "cos", "ip": "ip", "l2": "l2sq"}


#: Timed runs go on for at least this long: threads that the previous measurement's library
#: left spinning (OpenBLAS after the ground-truth matmul, an OpenMP pool) use a core for up to
#: ~0.1 s, and a measurement that fits in that window was measured against them (the funnel's
#: batch QPS on MiniLM moved by 1.7x with the order of the measurements).
MIN_SECONDS = 0.5


def best_time(run: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Warm up once, then the best wall time of at least ``repeats`` runs, repeated until
    :data:`MIN_SECONDS` have passed; returns it with the last output."""
    out = run()
    best = float("inf")
    runs = 0
    stop_at = time.perf_counter() + MIN_SECONDS
    while runs < repeats or time.perf_counter() < stop_at:
        started = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - started)
        runs += 1
    return best, out


def recalls_at_k(ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-query recall@k of ``ids`` (n, >= k) against ``truth`` (n, k): the first ``k``
    columns of ``ids`` against the valid ids of ``truth`` (:func:`recall_per_query`)."""
    truth = np.asarray(truth)
    return recall_per_query(np.asarray(ids)[:, : truth.shape[1]], truth)


def qualifies(ids: np.ndarray, truth: np.ndarray, target: float) -> bool:
    """The rule :meth:`Searcher.tune` applies, used for every method's setting: the one-sided
    95 % lower bound of mean recall on the *tuning* queries reaches ``target``."""
    recalls = recalls_at_k(ids, truth)
    spread = recalls.std(ddof=1) if len(recalls) > 1 else 0.0
    return recalls.mean() - 1.645 * spread / np.sqrt(len(recalls)) >= target


def single_query_qps(run_one: Callable[[np.ndarray], Any], queries: np.ndarray,
                     limit: int = 200, repeats: int = 3) -> float:
    """Queries per second when ``run_one`` is called with one query at a time: the best of
    ``repeats`` passes over the first ``limit`` queries (as :func:`best_time` for batches, so
    a pass that the machine's other work slowed down does not count), repeated until
    :data:`MIN_SECONDS` have passed."""
    return interleaved_single_query_qps([run_one], queries, limit=limit, repeats=repeats)[0]


def interleaved_single_query_qps(runners: Sequence[Callable[[np.ndarray], Any]],
                                 queries: np.ndarray, *, limit: int = 200,
                                 repeats: int = 3) -> list[float]:
    """:func:`single_query_qps` of several methods, measured in alternating passes.

    Measured one after the other, two methods meet different states of the machine: on this
    2-core VM hnswlib's single-query rate on one index ranged 24.3k-33.4k q/s over five
    runs of ``benchmarks/funnel.py``. Alternating passes for :data:`MIN_SECONDS` per method
    expose them to the same drift, so their ratio is steadier than either figure. With more
    than one method, each timed pass follows an untimed one over the same queries: otherwise
    every pass starts in caches the other method's index has just filled, which costs the
    method with the smaller working set most (without it, the funnel's single-query rate on
    50k x 768 fell from 35.6k to 26.4-27.3k q/s in the two runs that alternated).

    Examples
    --------
    >>> import numpy as np
    >>> rates = interleaved_single_query_qps([np.sum, np.max], np.ones((50, 8)), limit=20)
    >>> len(rates), all(rate > 0 for rate in rates)
    (2, True)
    """
    count = min(limit, len(queries))
    for run_one in runners:
        run_one(queries[0])
    best = [float("inf")] * len(runners)
    passes = 0
    stop_at = time.perf_counter() + MIN_SECONDS * len(runners)
    while passes < repeats or time.perf_counter() < stop_at:
        for slot, run_one in enumerate(runners):
            if len(runners) > 1:
                for query in queries[:limit]:  # warm the caches again, untimed
                    run_one(query)
            started = time.perf_counter()
            for query in queries[:limit]:
                run_one(query)
            best[slot] = min(best[slot], time.perf_counter() - started)
        passes += 1
    return [count / seconds for seconds in best]


def searcher_memory_mb(searcher: Searcher) -> float:
    """Resident memory of a Searcher (:meth:`Searcher.memory_usage`), in MiB."""
    return searcher.memory_usage()["total"] / 2**20


def thread_scaling(run_one: Callable[[np.ndarray], Any], queries: np.ndarray, *,
                   seconds: float = 3.0, rounds: int = 3) -> dict[str, Any]:
    """Single queries per second from one and from two Python threads, and their ratio.

    The ``seconds`` of each side are split into ``rounds`` windows that alternate (one
    thread, two threads, one, ...), and each side keeps its best window, as the other
    timings here keep their best run: a hiccup of the host in one long window would
    otherwise decide the ratio either way (a single 3 s window each gave 2.38x on two cores,
    its one-thread window slowed). Every window's rates are reported too.

    Returns
    -------
    dict
        ``qps_1_thread``, ``qps_2_threads`` (best windows), ``thread_scaling`` (their ratio)
        and ``thread_windows``: each round's ``[one-thread, two-thread]`` rates.

    Examples
    --------
    >>> import numpy as np
    >>> out = thread_scaling(np.sum, np.ones((50, 8)), seconds=0.02, rounds=2)
    >>> len(out["thread_windows"]), out["qps_1_thread"] > 0
    (2, True)
    """
    seconds = check_positive_number(seconds, "seconds")
    rounds = check_positive_int(rounds, "rounds")
    window = seconds / rounds
    windows: list[list[float]] = []
    for _ in range(rounds):
        rates = []
        for n_threads in (1, 2):
            counts = [0] * n_threads
            stop_at = time.perf_counter() + window

            def worker(slot: int, n_threads: int = n_threads, stop_at: float = stop_at,
                       counts: list[int] = counts) -> None:
                i = slot
                while True:  # at least one query each, however short the window
                    run_one(queries[i % len(queries)])
                    counts[slot] += 1
                    i += n_threads
                    if time.perf_counter() >= stop_at:
                        break

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates.append(sum(counts) / (time.perf_counter() - started))
        windows.append(rates)
    one, two = max(w[0] for w in windows), max(w[1] for w in windows)
    return {"qps_1_thread": one, "qps_2_threads": two, "thread_scaling": two / one,
            "thread_windows": windows}


@dataclass
class BenchRow:
    """One method's measurements. ``build_s`` is None for an index that was loaded."""

    method: str
    recall: float
    qps_batch: float
    qps_single: float
    build_s: float | None
    memory_mb: float
    detail: str = ""


@dataclass
class BenchReport:
    """What :func:`compare` measured: rows per method plus the setting of the comparison.

    ``funnel_plan`` is the plan the funnel row ran (``FunnelPlan.to_dict()``), if it ran.
    """

    n: int
    dim: int
    k: int
    metric: str
    target_recall: float
    n_tune_queries: int
    n_test_queries: int
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    funnel_plan: dict | None = None
    extras: dict = field(default_factory=dict)

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        header = (f"{'method':<36} {'recall@' + str(self.k):>9} {'QPS batch':>10} "
                  f"{'QPS single':>10} {'build s':>8} {'MiB':>8}  detail")
        lines = [header, "-" * len(header)]
        for row in self.rows:
            build = "loaded" if row.build_s is None else f"{row.build_s:.1f}"
            lines.append(f"{row.method:<36} {row.recall:>9.3f} {row.qps_batch:>10.0f} "
                         f"{row.qps_single:>10.0f} {build:>8} {row.memory_mb:>8.1f}  {row.detail}")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def plot(self, path: str | os.PathLike) -> bool:
        """Recall@k against batch QPS, one point per row, as a PNG. Returns False (and writes
        nothing) when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for row in self.rows:
            axis.scatter(row.qps_batch, row.recall, s=30)
            axis.annotate(row.method, (row.qps_batch, row.recall), fontsize=7,
                          xytext=(4, 2), textcoords="offset points")
        axis.axhline(self.target_recall, color="grey", lw=0.8, ls="--")
        axis.set_xscale("log")
        axis.set_xlabel("queries/s (batch)")
        axis.set_ylabel(f"recall@{self.k} vs exact")
        axis.set_title(f"{self.n:,} x {self.dim}, {self.metric}")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return True


def _l2_terms(base: np.ndarray, metric: str
              ) -> tuple[np.ndarray, np.ndarray | float, np.ndarray | None]:
    """``(rows, centre, squared norms)`` for scoring by ``2 q.x - |x|^2``: for l2 the rows
    moved to their mean (queries are moved by ``centre`` too), since in float32 that form
    cancels where the rows share an offset larger than their spread; other metrics keep the
    rows, a centre of 0 and no norms."""
    if metric != "l2":
        return base, 0.0, None
    centre = base.mean(axis=0, dtype=np.float64).astype(np.float32)
    moved = base - centre
    return moved, centre, np.einsum("ij,ij->i", moved, moved)


def _exact_numpy(vectors: np.ndarray, metric: str, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """Brute force with one BLAS matmul per batch: the baseline every library is held to."""
    base = vectors.astype(np.float32)
    if metric == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
    base, centre, squared = _l2_terms(base, metric)

    def search(queries: np.ndarray) -> np.ndarray:
        queries = np.atleast_2d(queries).astype(np.float32) - centre
        scores = queries @ base.T
        if squared is not None:
            scores = 2 * scores - squared  # -||q - x||^2 up to a per-query constant
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        return np.take_along_axis(top, order, axis=1)

    return search


def hnswlib_build(vectors: np.ndarray, metric: str = "cosine", *, M: int = 16,
                  ef_construction: int = 200, threads: int = -1
                  ) -> tuple[hnswlib.Index, float]:
    """Plain hnswlib's index over ``vectors`` and the seconds its ``add_items`` took.

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch.benchmark import hnswlib_build
    >>> vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    >>> graph, seconds = hnswlib_build(vectors, "l2")
    >>> graph.get_current_count(), seconds > 0
    (500, True)
    """
    metric = check_choice(metric, "metric", ("cosine", "ip", "l2"))
    M = check_int_range(M, "M", *M_RANGE)
    ef_construction = check_int_range(ef_construction, "ef_construction",
                                      *EF_CONSTRUCTION_RANGE)
    if threads != -1:  # -1: every core
        threads = check_positive_int(threads, "threads")
    shape = np.shape(vectors)
    vectors, _ = check_matrix(vectors, "vectors", dim=shape[-1] if len(shape) else 0,
                              allow_1d=False)
    graph = hnswlib.Index(space=metric, dim=vectors.shape[1])
    graph.init_index(max_elements=len(vectors), M=M, ef_construction=ef_construction)
    started = time.perf_counter()
    graph.add_items(vectors, num_threads=threads)
    return graph, time.perf_counter() - started


def _tuned_hnswlib(vectors, metric, k, fit, truth_fit, target, M, ef_construction, threads):
    graph, build_s = hnswlib_build(vectors, metric, M=M, ef_construction=ef_construction,
                                   threads=threads)
    for ef in _EF_GRID:
        graph.set_ef(max(ef, k))
        if qualifies(graph.knn_query(fit, k=k)[0], truth_fit, target):
            return graph, max(ef, k), build_s
    return graph, None, build_s


def _faiss_funnel(vectors, metric, k, fit, truth_fit, target, first_dim, M, ef_construction):
    """faiss's own funnel: HNSW over the first ``first_dim`` coordinates, exact refine."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    base = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        base = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-30)
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    remap = faiss.RemapDimensionsTransform(base.shape[1], first_dim, False)
    hnsw = faiss.IndexHNSWFlat(first_dim, M, faiss_metric)
    hnsw.hnsw.efConstruction = ef_construction
    index = faiss.IndexRefineFlat(faiss.IndexPreTransform(remap, hnsw))
    started = time.perf_counter()
    index.train(base)
    index.add(base)
    build_s = time.perf_counter() - started

    def prepare(queries):
        queries = np.atleast_2d(queries).astype(np.float32)
        if metric == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
        return queries

    best = None
    for shortlist in _SHORTLIST_GRID:
        for ef_factor in (1, 2):
            hnsw.hnsw.efSearch = shortlist * ef_factor
            index.k_factor = shortlist / k
            seconds, (_, ids) = best_time(lambda: index.search(prepare(fit), k), repeats=2)
            if qualifies(ids, truth_fit, target) and (best is None or seconds < best[0]):
                best = (seconds, shortlist, ef_factor)
                break  # a longer shortlist at this ef only costs more
    if best is None:
        return None
    _, shortlist, ef_factor = best
    hnsw.hnsw.efSearch = shortlist * ef_factor
    index.k_factor = shortlist / k
    memory_mb = faiss.serialize_index(index).nbytes / 2**20
    detail = f"{first_dim}d HNSW, shortlist {shortlist}, efSearch {shortlist * ef_factor}"
    return (lambda queries: index.search(prepare(queries), k)[1]), build_s, memory_mb, detail


def _normalized(rows: np.ndarray, metric: str) -> np.ndarray:
    rows = np.ascontiguousarray(np.atleast_2d(rows), dtype=np.float32)
    if metric == "cosine":
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    return rows


def _usearch_keys(matches: Any, count: int) -> np.ndarray:
    """(n, count) int64 keys of usearch ``Matches``/``BatchMatches``; -1 where it found fewer."""
    keys = np.atleast_2d(np.asarray(matches.keys)).astype(np.int64)
    # one query answers Matches, trimmed to what it found; a batch answers padded BatchMatches
    found = np.atleast_1d(np.asarray(getattr(matches, "counts", keys.shape[1])))
    keys[np.arange(keys.shape[1])[None, :] >= found[:, None]] = -1
    return keys[:, :count] if keys.shape[1] >= count else np.pad(
        keys, ((0, 0), (0, count - keys.shape[1])), constant_values=-1)


def _rescore(base: np.ndarray, squared: np.ndarray | None, queries: np.ndarray,
             candidates: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """The best ``k`` of each query's ``candidates`` (-1 = none) by exact float32 score."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), block):
        ids = candidates[start: start + block]
        valid = ids >= 0
        rows = base[np.where(valid, ids, 0)]  # (b, s, dim)
        scores = np.einsum("bsd,bd->bs", rows, queries[start: start + block])
        if squared is not None:
            scores = 2 * scores - squared[np.where(valid, ids, 0)]
        scores[~valid] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start: start + block] = np.take_along_axis(ids, np.take_along_axis(top, order, 1), 1)
    return out


def _usearch(vectors, metric, k, fit, truth_fit, target, dtype, M, ef_construction, threads):
    """usearch HNSW with ``dtype`` storage ('f16' or 'i8'), ``ef`` (``expansion_search``)
    tuned by :func:`qualifies`. For 'i8' each query fetches a shortlist of ``s >= k`` from the
    int8 graph and rescores it exactly at float32; (shortlist, ef) is the fastest setting on
    the tuning queries among the smallest qualifying ``ef`` per shortlist.

    Returns ``(run, build_s, memory_mb, detail)`` with ``run(queries) -> ids (n, k)``, or None
    when no setting on the grids qualifies (then ``build_s`` is lost with it).
    """
    from usearch.index import Index

    base = _normalized(vectors, metric)
    index = Index(ndim=base.shape[1], metric=_USEARCH_METRICS[metric], dtype=dtype,
                  connectivity=M, expansion_add=ef_construction, expansion_search=_EF_GRID[0])
    started = time.perf_counter()
    index.add(np.arange(len(base), dtype=np.uint64), base, threads=threads)
    build_s = time.perf_counter() - started
    memory_mb = index.memory_usage / 2**20
    # only i8 rescores: f16 keeps no centred copy
    rescore_base, centre, squared = _l2_terms(base, metric if dtype == "i8" else "ip")

    def make_run(shortlist: int, ef: int) -> Callable[[np.ndarray], np.ndarray]:
        def run(queries: np.ndarray) -> np.ndarray:
            queries = _normalized(queries, metric)
            index.expansion_search = ef  # one index per runner: no other caller shares it
            found = _usearch_keys(index.search(queries, shortlist, threads=threads), shortlist)
            if dtype != "i8":
                return found[:, :k]
            return _rescore(rescore_base, squared, queries - centre, found, k)
        return run

    if dtype != "i8":
        best = next(((0.0, k, ef) for ef in sorted({max(ef, k) for ef in _EF_GRID})
                     if qualifies(make_run(k, ef)(fit), truth_fit, target)), None)
    else:
        best = None
        for shortlist in sorted({k, *(s for s in _SHORTLIST_GRID if s > k)}):
            for ef in sorted({max(ef, shortlist) for ef in _EF_GRID}):
                seconds, ids = best_time(lambda: make_run(shortlist, ef)(fit), repeats=2)
                if qualifies(ids, truth_fit, target):
                    break  # a larger ef at this shortlist only costs more
            else:
                continue
            if best is not None and seconds > 2 * best[0]:
                break  # longer shortlists only get slower from here
            if best is None or seconds < best[0]:
                best = (seconds, shortlist, ef)
    if best is None:
        return None
    _, shortlist, ef = best
    detail = f"{dtype}, ef={ef}" + (f", shortlist {shortlist} rescored at float32"
                                     if dtype == "i8" else "")
    return make_run(shortlist, ef), build_s, memory_mb, detail


def _check_query_width(queries: np.ndarray, dim: int) -> None:
    if queries.shape[1] != dim:
        raise DimensionError(f"'queries' must have {dim} columns like the vectors "
                             f"(got {queries.shape[1]})")


def compare(
    source: Searcher | np.ndarray,
    queries: np.ndarray,
    *,
    k: int = 10,
    target_recall: float = 0.95,
    metric: str = "cosine",
    index_dims: Sequence[int] | None = None,
    M: int = 16,
    ef_construction: int = 200,
    methods: Sequence[str] = _DEFAULT_METHODS,
    progress: bool = True,
) -> BenchReport:
    """Measure the funnel against hnswlib full-dim, exact search, faiss and usearch on one
    dataset.

    Parameters
    ----------
    source : Searcher or array-like of shape (n, dim)
        A built (or loaded) index -- its vectors feed the other methods -- or the vectors to
        index (a Searcher is then built with ``metric``, ``index_dims``, ``M``,
        ``ef_construction``).
    queries : array-like of shape (n_queries, dim)
        At least 4 queries: the first half tunes every method, the second half measures.
    k : int, default=10
    target_recall : float, default=0.95
        Each method runs at its cheapest setting whose lower 95 % bound of recall@k on the
        tuning half reaches this.
    metric : {'cosine', 'ip', 'l2'}, default='cosine'
        Ignored for a Searcher source (its own metric is used).
    index_dims, M, ef_construction
        Index parameters when ``source`` is an array; hnswlib, faiss and usearch use ``M``
        (usearch's ``connectivity``) and ``ef_construction`` (``expansion_add``); for a
        Searcher source, its own.
    methods : sequence of {'funnel', 'exact', 'hnswlib', 'faiss', 'usearch-f16', 'usearch-i8'}
        Default: all of them. For an array source ``'funnel'`` is ``Searcher.build`` on the
        tuning half (graph dim and codes chosen from the data) unless ``index_dims`` is given.
        ``'faiss'`` and the usearch methods are skipped with a note when faiss or usearch is not
        installed. ``'usearch-i8'`` rescores its int8 shortlist at float32.
    progress : bool, default=True
        Print what is being measured, and each row's recall and QPS when done.

    Returns
    -------
    BenchReport

    Raises
    ------
    DimensionError
        If ``queries`` (or ``source``) is not 2-D, or the queries' width differs from the
        vectors' (checked before any index is built).
    ValueError
        If an option is out of range, the vectors or queries are not finite, fewer than 4
        queries are given or ``k`` exceeds the number of vectors.
    """
    k = check_positive_int(k, "k")
    target_recall = check_fraction(target_recall, "target_recall")
    if isinstance(methods, (str, bytes)):  # a string iterates by character: 'e', 'x', ...
        raise TypeError(f"'methods' must be a sequence of method names, e.g. ({methods!r},) "
                        f"(got the string {methods!r})")
    methods = [check_choice(method, "methods", METHODS) for method in methods]

    def start(what: str) -> None:
        if progress:
            print(f"{what} ...", flush=True)
    queries, _ = check_matrix(queries, "queries", dim=np.shape(queries)[-1], allow_1d=False,
                              dtype=np.float32)
    if len(queries) < 4:
        raise ValueError(f"'queries' must hold at least 4 rows (got {len(queries)})")
    half = len(queries) // 2
    fit, test = queries[:half], queries[half:]
    build_s: float | None = None
    if isinstance(source, Searcher):
        searcher = source
        if len(searcher) == 0:
            raise ValueError("'source' must hold vectors (got an empty Searcher)")
        metric, M, ef_construction = searcher.metric, searcher.M, searcher.ef_construction
        _check_query_width(queries, searcher.dim)
        row_ids = searcher.ids()
        vectors = searcher.get(row_ids)
    else:
        metric = check_choice(metric, "metric", ("cosine", "ip", "l2"))
        shape = np.shape(source)
        vectors, _ = check_matrix(source, "source", dim=shape[-1] if len(shape) else 0,
                                  allow_1d=False, dtype=np.float32)
        _check_query_width(queries, vectors.shape[1])  # before minutes of index building
        if "funnel" in methods:
            start(f"building the mrlsearch index with Searcher.build ({len(vectors):,} x "
                  f"{vectors.shape[1]}: graph dim and codes chosen from the tuning queries)")
            started = time.perf_counter()
            if index_dims is None:
                searcher = Searcher.build(vectors, queries=fit, k=k, target_recall=target_recall,
                                          metric=metric, M=M, ef_construction=ef_construction)
            else:
                searcher = Searcher(vectors.shape[1], metric=metric, index_dims=index_dims, M=M,
                                    ef_construction=ef_construction)
                searcher.add(vectors)
            build_s = time.perf_counter() - started
        else:
            searcher = None
        row_ids = np.arange(len(vectors), dtype=np.int64) if searcher is None else searcher.ids()
    if k > len(vectors):
        raise ValueError(f"'k' must be at most the number of vectors {len(vectors)} (got {k})")
    report = BenchReport(len(vectors), vectors.shape[1], k, metric, target_recall, len(fit),
                         len(test))
    # the ground truth by brute force in numpy, as row positions (what hnswlib, faiss and
    # usearch answer); the funnel answers ids: row_ids maps one to the other
    exact_numpy = _exact_numpy(vectors, metric, k)
    truth_rows, truth_fit_rows = exact_numpy(test), exact_numpy(fit)
    truth = row_ids[truth_rows]
    threads = os.cpu_count() or 1

    def add(row: BenchRow) -> None:
        report.rows.append(row)
        if progress:
            print(f"  {row.method}: recall@{k} {row.recall:.3f}, {row.qps_batch:,.0f} QPS batch",
                  flush=True)

    def recall(ids: np.ndarray, reference: np.ndarray) -> float:
        return float(recalls_at_k(ids, reference).mean())

    plan = None
    funnel_row: BenchRow | None = None
    funnel_one: Callable[[np.ndarray], Any] | None = None
    if "funnel" in methods:
        start(f"measuring the funnel (tune on {len(fit)} queries, measure on {len(test)})")
        started = time.perf_counter()
        if searcher.plan is not None and build_s is not None and index_dims is None:
            plan = searcher.plan  # Searcher.build tuned it on the same half
        else:
            plan = searcher.tune(fit, k=k, target_recall=target_recall, set_default=False,
                                 progress=False)
        tune_s = time.perf_counter() - started
        report.funnel_plan = plan.to_dict()
        seconds, result = best_time(lambda: searcher.funnel(test, k, plan))
        name = ("mrlsearch (Searcher.build)" if build_s is not None and index_dims is None
                else "mrlsearch funnel (tuned)")
        def funnel_one(query: np.ndarray) -> SearchResult:
            return searcher.funnel(query, k, plan)

        funnel_row = BenchRow(name, recall(result.ids, truth), len(test) / seconds,
                              single_query_qps(funnel_one, test),
                              build_s, searcher_memory_mb(searcher), f"{plan}" + (
                                  "" if searcher.link_dim is None
                                  else f", graph linked by {searcher.link_dim} dims") + (
                                  f" (tune {tune_s:.0f}s)" if build_s is None or index_dims
                                  else ""))
        add(funnel_row)
        report.extras.update(thread_scaling(funnel_one, test))
    if "exact" in methods:
        start("measuring exact numpy search")
        seconds, ids = best_time(lambda: exact_numpy(test), repeats=1)
        add(BenchRow("exact numpy (BLAS matmul)", recall(ids, truth_rows), len(test) / seconds,
                     single_query_qps(exact_numpy, test, limit=50), 0.0,
                     vectors.nbytes / 2**20))
    if "hnswlib" in methods:
        start(f"measuring hnswlib at full dim (build {len(vectors):,} x {vectors.shape[1]}, "
              "then the smallest ef on target)")
        graph, ef, hnsw_build_s = _tuned_hnswlib(vectors, metric, k, fit, truth_fit_rows,
                                                 target_recall, M, ef_construction, threads)
        if ef is None:
            report.notes.append(f"hnswlib full-dim: no ef up to {_EF_GRID[-1]} reached "
                                f"{target_recall} on the tuning queries")
        else:
            seconds, (ids, _) = best_time(lambda: graph.knn_query(test, k=k))
            runners = [lambda q: graph.knn_query(q, k=k)]
            if funnel_one is not None:  # the headline ratio: measured side by side
                runners.append(funnel_one)
            singles = interleaved_single_query_qps(runners, test)
            if funnel_row is not None:
                funnel_row.qps_single = singles[1]
                report.notes.append("single-query rates of the funnel and hnswlib full-dim: "
                                    "measured in alternating passes")
            add(BenchRow("hnswlib full-dim", recall(ids, truth_rows), len(test) / seconds,
                         singles[0], hnsw_build_s, graph.index_file_size() / 2**20,
                         f"ef={ef}"))
        del graph
    if "faiss" in methods:
        if importlib.util.find_spec("faiss") is None:
            report.notes.append("faiss is not installed: no faiss funnel row "
                                "(pip install faiss-cpu)")
        else:
            first_dim = plan.stages[0][0] if plan is not None else vectors.shape[1]
            if first_dim >= vectors.shape[1]:  # a prefix funnel needs a prefix: 64 dims or 1/4
                first_dim = min(64, max(1, vectors.shape[1] // 4))
            start(f"measuring the faiss funnel (HNSW over {first_dim} dims + exact refine)")
            found = _faiss_funnel(vectors, metric, k, fit, truth_fit_rows, target_recall,
                                  first_dim, M, ef_construction)
            if found is None:
                report.notes.append(f"faiss funnel at {first_dim} dims: no shortlist up to "
                                    f"{_SHORTLIST_GRID[-1]} reached {target_recall}")
            else:
                run, faiss_build_s, memory_mb, detail = found
                seconds, ids = best_time(lambda: run(test))
                add(BenchRow("faiss funnel (HNSW prefix + refine)", recall(ids, truth_rows),
                             len(test) / seconds, single_query_qps(run, test), faiss_build_s,
                             memory_mb, detail))
    for method in ("usearch-f16", "usearch-i8"):
        if method not in methods:
            continue
        if importlib.util.find_spec("usearch") is None:
            report.notes.append(f"usearch is not installed: no {method} row (pip install usearch)")
            continue
        dtype = method.split("-")[1]
        start(f"measuring usearch with {dtype} storage (build {len(vectors):,} x "
              f"{vectors.shape[1]}, then the cheapest setting on target)")
        found = _usearch(vectors, metric, k, fit, truth_fit_rows, target_recall, dtype, M,
                         ef_construction, threads)
        if found is None:
            report.notes.append(f"{method}: no setting on the grids reached {target_recall} on "
                                "the tuning queries")
            continue
        run, usearch_build_s, memory_mb, detail = found
        seconds, ids = best_time(lambda: run(test))
        add(BenchRow(f"usearch {dtype}" + (" + float rescoring" if dtype == "i8" else ""),
                     recall(ids, truth_rows), len(test) / seconds, single_query_qps(run, test),
                     usearch_build_s, memory_mb, detail))
    return report
