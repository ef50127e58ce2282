"""The driver's view of a sharded index: :class:`ShardedSearcher`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import exceptions as ray_errors
from tqdm.auto import tqdm

from .._errors import DimensionError, FormatError
from .._payloads import encode as encode_payloads
from .._results import FunnelPlan, recall_per_query
from .._store import consecutive_ids
from .._validation import (
    check_fraction,
    check_ids,
    check_matrix,
    check_positive_int,
    check_positive_number,
)
from ..searcher import Searcher
from ._actor import QUERY_METHODS
from ._calls import (
    Shard,
    ShardCalls,
    ShardUnavailableError,
    check_timeout,
    deadline_in,
    remaining,
    remote_cause,
)
from ._layout import (
    SHARD_NAME,
    SHARD_PATTERN,
    SHARDING_FILE,
    PathsOrGlob,
    resolve_shards,
    shard_of,
    write_sharding,
)
from ._merge import ShardedSearchResult, merge_top_k
from ._sources import build_task, describe_source

__all__: list[str] = []

#: queries bigger than this go to the object store once instead of once per shard
_PUT_ABOVE_BYTES = 1 << 16
#: one-sided 95 % bound, the rule Searcher.tune uses
_Z_95 = 1.645


def _plan_key(plan: Any) -> str:
    """A plan's identity without its measured figures."""
    if hasattr(plan, "to_dict"):
        data = {k: v for k, v in plan.to_dict().items()
                if k not in ("recall", "recall_lower", "seconds_per_query")}
        return json.dumps(data, sort_keys=True, default=str)
    return repr(plan)


class ShardedSearcher:
    """A Searcher split into shards, one Ray actor per shard; queries fan out and merge.

    Make one with :meth:`build` (from vectors) or :meth:`load` (from shard directories); the
    constructor is internal. The query methods mirror :class:`~mrlsearch.Searcher` and pass
    their options (``stages``, ``ef``, ``dim``, ...) to every shard untouched.

    Examples
    --------
    >>> import ray
    >>> from mrlsearch.datasets import synthetic_mrl
    >>> from mrlsearch.distributed import ShardedSearcher
    >>> ray.init(num_cpus=2, include_dashboard=False)  # doctest: +SKIP
    >>> X, Q = synthetic_mrl(20_000, 64, n_queries=100)
    >>> sh = ShardedSearcher.build(X, "shards/", n_shards=4, dims=(16, 32, 64),
    ...                            index_dims=(16,))  # doctest: +SKIP
    >>> plan = sh.tune(Q, k=10, target_recall=0.95)  # doctest: +SKIP
    >>> sh.search(Q[:3], k=10).ids.shape  # doctest: +SKIP
    (3, 10)
    >>> sh.close()  # doctest: +SKIP
    """

    def __init__(self, calls: ShardCalls, *, root: Path | None, next_id: int | None) -> None:
        self._calls = calls
        self._root = root
        self._next_id = next_id
        self._dim = 0
        self._dims: tuple[int, ...] = ()
        self._metric = ""
        self._plan: FunnelPlan | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        source: np.ndarray | str | os.PathLike | Sequence[str | os.PathLike],
        out_dir: str | os.PathLike,
        *,
        n_shards: int,
        ids: Sequence[int] | np.ndarray | None = None,
        vector_column: str = "vector",
        id_column: str | None = None,
        overwrite: bool = False,
        build_cpus: float = 1,
        progress: bool | None = None,
        num_cpus: float | None = None,
        memory: int | None = None,
        mmap: bool = False,
        restart_timeout: float | None = 60.0,
        **searcher_options: Any,
    ) -> ShardedSearcher:
        """Build ``n_shards`` shards in parallel Ray tasks, save them, and load them.

        Each task reads its own rows (``shard_of(id, n_shards)``), builds an ordinary
        :class:`~mrlsearch.Searcher` with ``searcher_options`` and saves it as
        ``out_dir/shard-<i>-of-<n>`` (five-digit numbers); ``out_dir/sharding.json`` records
        the shard count, the assignment rule and the next free id.

        Parameters
        ----------
        source : ndarray, str, path-like or list of paths
            Vectors of shape (n, dim): an array (put once in Ray's object store, which every
            task reads), a ``.npy`` file (each task memory-maps it and reads only its rows), or
            parquet: a file, a directory of ``*.parquet``, a glob or a list of files, with a
            list-of-numbers column ``vector_column`` (each task scans the row groups and keeps
            its rows).
        out_dir : str or path-like
            Directory for the shards; it must not hold anything unless ``overwrite``.
        n_shards : int
            Number of shards; every shard must receive at least one vector.
        ids : array-like of int, optional
            Global ids, non-negative and distinct, one per vector. Default: the parquet
            ``id_column`` if given, else ``0 .. n-1`` in source order.
        vector_column, id_column : str
            Parquet column names (``id_column=None``: no id column).
        overwrite : bool, default=False
            Replace shard directories and ``sharding.json`` already in ``out_dir``.
        build_cpus : float, default=1
            CPUs each build task reserves; its HNSW insertion uses that many threads.
        progress : bool, optional
            Progress bar over the shards (default: on a terminal).
        num_cpus, memory, mmap, restart_timeout
            Passed to :meth:`load`.
        **searcher_options
            ``Searcher`` constructor options (``dims``, ``metric``, ``index_dims``, ``M``,
            ``ef_construction``, ``dtype``, ...); checked before any task starts.

        Returns
        -------
        ShardedSearcher
            Loaded, one actor per shard.

        Raises
        ------
        FileExistsError
            If ``out_dir`` holds files and ``overwrite`` is False.
        ValueError
            If a shard would be empty, or ids repeat.

        Examples
        --------
        >>> sh = ShardedSearcher.build("vectors.npy", "shards/", n_shards=8,
        ...                            dims=(32, 64, 128, 256), index_dims=(32,),
        ...                            dtype="float16")  # doctest: +SKIP
        >>> len(sh)  # doctest: +SKIP
        1000000
        """
        n_shards = check_positive_int(n_shards, "n_shards")
        build_cpus = check_positive_number(build_cpus, "build_cpus")
        described, column_ids = describe_source(source, vector_column, id_column)
        if described.n == 0:
            raise ValueError("'source' must hold at least one vector (got 0 rows)")
        if ids is not None and column_ids is not None:
            raise ValueError("pass either 'ids' or 'id_column', not both")
        if ids is None:
            ids = column_ids
        if ids is None:
            global_ids = np.arange(described.n, dtype=np.int64)
        else:
            global_ids = check_ids(ids, "ids", count=described.n)
        try:  # the options are checked here, not in n tasks
            Searcher(described.dim, **searcher_options)
        except TypeError as exc:
            raise TypeError(f"bad Searcher option: {exc}") from exc
        assignment = shard_of(global_ids, n_shards)
        sizes = np.bincount(assignment, minlength=n_shards)
        if np.any(sizes == 0):
            empty = int(np.flatnonzero(sizes == 0)[0])
            raise ValueError(f"'n_shards' leaves shard {empty} empty ({described.n} vectors "
                             f"over {n_shards} shards); use fewer shards")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"'out_dir' is a file: {out}")
        out.mkdir(parents=True, exist_ok=True)
        existing = [p for p in out.iterdir() if not p.name.startswith(".")]
        if existing:
            if not overwrite:
                raise FileExistsError(f"'out_dir' {out} is not empty ({len(existing)} entries); "
                                      "pass overwrite=True to replace its shards")
            for entry in existing:
                if entry.is_dir() and SHARD_PATTERN.match(entry.name):
                    shutil.rmtree(entry)
                elif entry.name == SHARDING_FILE:
                    entry.unlink()
        if not ray.is_initialized():
            ray.init()
        data = ray.put(described.data) if described.kind == "array" else None
        described.data = None
        names = [SHARD_NAME.format(index=i, count=n_shards) for i in range(n_shards)]
        threads = max(1, int(build_cpus))
        order = np.argsort(assignment, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        refs = {}
        for index in range(n_shards):
            rows = order[bounds[index]:bounds[index + 1]]
            refs[build_task.options(num_cpus=build_cpus).remote(
                described, data, rows, global_ids[rows], searcher_options,
                str(out / names[index]), threads)] = index
        pending = list(refs)
        try:
            with tqdm(total=n_shards, desc="mrlsearch: building shards", unit="shard",
                      disable=None if progress is None else not progress,
                      leave=False) as bar:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    try:
                        ray.get(done[0])
                    except ray_errors.RayTaskError as exc:
                        raise remote_cause(exc) from None
                    bar.update(1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        write_sharding(out, n_shards=n_shards, names=names, next_id=int(global_ids.max()) + 1)
        return cls.load(out, num_cpus=num_cpus, memory=memory, mmap=mmap,
                        restart_timeout=restart_timeout)

    @classmethod
    def load(
        cls,
        paths_or_glob: PathsOrGlob,
        *,
        num_cpus: float | None = None,
        memory: int | None = None,
        mmap: bool = False,
        threads: int | None = None,
        restart_timeout: float | None = 60.0,
    ) -> ShardedSearcher:
        """Place one Ray actor per shard and load each shard's directory in it.

        Parameters
        ----------
        paths_or_glob : str, path-like or list of paths
            The ``out_dir`` of :meth:`build` / :meth:`save` (read through its
            ``sharding.json``), a glob such as ``"shards/shard-*"``, or a list of shard
            directories. Directory names ``shard-<i>-of-<n>`` say which shard is which; all
            ``n`` must be present. A single ordinary index directory loads as one shard.
        num_cpus : float, optional
            CPUs each actor reserves in Ray. Default: ``min(1, cluster CPUs / n_shards)``, so
            that every shard fits on the cluster.
        memory : int, optional
            Bytes of memory each actor reserves in Ray (a scheduling hint, as in Ray).
        mmap : bool, default=False
            Load the vectors memory-mapped (``Searcher.load(mmap=True)``): graphs, norms and
            ids in RAM, vectors paged in from disk.
        threads : int, optional
            Threads each shard uses for a batch (hnswlib and numba). Default:
            ``max(1, int(num_cpus))``.
        restart_timeout : float or None, default=60
            Longest a query waits for a restarting shard before it raises
            :class:`ShardUnavailableError` (None: no bound). Also the bound on placing and
            loading the actors here.

        Raises
        ------
        FileNotFoundError
            If nothing matches.
        FormatError
            If a shard is missing or named twice, its directory is corrupt, or the shards
            disagree on dim, dims or metric.
        ShardUnavailableError
            If an actor could not be placed (not enough resources) within ``restart_timeout``.

        Examples
        --------
        >>> sh = ShardedSearcher.load("shards/", mmap=True, num_cpus=4)  # doctest: +SKIP
        >>> sh.n_shards  # doctest: +SKIP
        8
        """
        restart_timeout = check_timeout(restart_timeout, "restart_timeout")
        if not isinstance(mmap, bool):
            raise TypeError(f"'mmap' must be a bool (got {mmap!r})")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int)
                                   or memory < 1):
            raise ValueError(f"'memory' must be a positive number of bytes or None "
                             f"(got {memory!r})")
        if threads is not None:
            threads = check_positive_int(threads, "threads")
        directories, sharding, root = resolve_shards(paths_or_glob)
        if not ray.is_initialized():
            ray.init()
        n_shards = len(directories)
        if num_cpus is None:
            num_cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1.0)) / n_shards)
        elif isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) \
                or num_cpus < 0:
            raise ValueError(f"'num_cpus' must be a number >= 0 or None (got {num_cpus!r})")
        if threads is None:
            threads = max(1, int(num_cpus))
        shards = [Shard(index, directory.resolve()) for index, directory in
                  enumerate(directories)]
        calls = ShardCalls(shards, mmap=mmap, num_cpus=float(num_cpus), memory=memory,
                           threads=threads, restart_timeout=restart_timeout)
        searcher = cls(calls, root=root,
                       next_id=None if sharding is None else sharding.get("next_id"))
        for shard in shards:
            calls.spawn(shard)
        deadline = deadline_in(restart_timeout)
        infos = []
        try:
            for shard in shards:
                try:
                    infos.append(ray.get(shard.ready, timeout=remaining(deadline)))
                except ray_errors.GetTimeoutError:
                    raise ShardUnavailableError(
                        f"shard {shard.index} ({shard.path}) did not start within "
                        f"{restart_timeout:g} s; each shard asks Ray for num_cpus={num_cpus:g}"
                        f"{'' if memory is None else f', memory={memory}'} and the cluster "
                        f"has {ray.available_resources()} free", shard=shard.index,
                        path=str(shard.path)) from None
                except ray_errors.RayTaskError as exc:
                    raise remote_cause(exc) from None
                except ray_errors.RayActorError as exc:
                    raise ShardUnavailableError(
                        f"shard {shard.index} ({shard.path}) died while loading: {exc}",
                        shard=shard.index, path=str(shard.path)) from exc
        except BaseException:
            searcher.close()
            raise
        first = infos[0]
        for shard, info in zip(shards, infos):
            for key in ("dim", "dims", "metric"):
                if info[key] != first[key]:
                    searcher.close()
                    raise FormatError(f"shard {shard.index} ({shard.path}) has {key} "
                                      f"{info[key]!r}, shard 0 has {first[key]!r}")
        searcher._dim, searcher._dims, searcher._metric = first["dim"], first["dims"], \
            first["metric"]
        plans = {_plan_key(info["plan"]) for info in infos}
        searcher._plan = first["plan"] if len(plans) == 1 else None
        return searcher

    # ------------------------------------------------------------------ properties
    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self._calls.shards)

    @property
    def dim(self) -> int:
        """Full embedding dim (the same on every shard)."""
        return self._dim

    @property
    def dims(self) -> tuple[int, ...]:
        """Nesting dims (the same on every shard)."""
        return self._dims

    @property
    def metric(self) -> str:
        """Similarity of every shard."""
        return self._metric

    @property
    def paths(self) -> tuple[str, ...]:
        """Each shard's index directory (where a restarted actor loads from)."""
        return tuple(str(shard.path) for shard in self._calls.shards)

    @property
    def actors(self) -> tuple:
        """The Ray actor handle of each shard now (a restart replaces it)."""
        return tuple(shard.actor for shard in self._calls.shards)

    @property
    def restarts(self) -> tuple[int, ...]:
        """How many times each shard's actor was restarted."""
        return tuple(shard.restarts for shard in self._calls.shards)

    @property
    def plan(self) -> FunnelPlan | None:
        """The plan every shard's ``funnel`` uses without ``stages`` (set by :meth:`tune`);
        None when none is set or the shards were saved with different plans."""
        return self._plan

    @plan.setter
    def plan(self, value: FunnelPlan | None) -> None:
        if value is not None and not isinstance(value, FunnelPlan):
            raise TypeError(f"'plan' must be a FunnelPlan or None (got {type(value).__name__})")
        self._calls.write({shard.index: ("plan", (value,)) for shard in self._calls.shards})
        self._plan = value

    def __len__(self) -> int:
        return int(sum(out for out, _, _ in self._calls.query("__len__", (), {}).values()))

    def __repr__(self) -> str:
        state = "closed" if self._calls.closed else f"dim={self._dim} metric={self._metric!r}"
        return f"<mrlsearch.distributed.ShardedSearcher n_shards={self.n_shards} {state}>"

    def __enter__(self) -> ShardedSearcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the shard actors (their directories stay). Idempotent."""
        self._calls.close()

    # ------------------------------------------------------------------ queries
    def search(self, queries: np.ndarray, k: int = 10, *, allow_partial: bool = False,
               timeout: float | None = None, restart_timeout: float | None = None,
               **options: Any) -> ShardedSearchResult:
        """``Searcher.search`` on every shard, merged into the global top-k.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim) or (dim,)
        k : int, default=10
        allow_partial : bool, default=False
            Leave out shards that are down instead of waiting for them; the result's
            ``shards_missing`` lists them.
        timeout : float, optional
            Bound on the whole call, in seconds (default: none).
        restart_timeout : float, optional
            Bound on waiting for a restarting shard (default: the one given to :meth:`load`).
        **options
            Passed to every shard's ``Searcher.search`` untouched (``dim``, ``ef``, ...).

        Returns
        -------
        ShardedSearchResult

        Raises
        ------
        ShardUnavailableError
            If a shard did not answer in time and ``allow_partial`` is False.

        Examples
        --------
        >>> r = sh.search(Q, k=10)  # doctest: +SKIP
        >>> r.ids.shape, r.complete  # doctest: +SKIP
        ((100, 10), True)
        """
        return self._search_call("search", queries, k, options, allow_partial, timeout,
                                 restart_timeout)

    def funnel(self, queries: np.ndarray, k: int = 10, stages: Any = None, *,
               allow_partial: bool = False, timeout: float | None = None,
               restart_timeout: float | None = None, **options: Any) -> ShardedSearchResult:
        """``Searcher.funnel`` on every shard with the same ``stages``, merged.

        ``stages`` (a list of stages or a :class:`~mrlsearch.FunnelPlan`) goes to every shard
        untouched; None runs each shard's :attr:`plan` (the same on all after :meth:`tune`)
        or its default schedule. Other arguments as in :meth:`search`.

        Examples
        --------
        >>> r = sh.funnel(Q, k=10, stages=[(16, 100), (32, 30), (64, 10)])  # doctest: +SKIP
        >>> r.shards_answered  # doctest: +SKIP
        (0, 1, 2, 3)
        """
        options = {"stages": stages, **options}
        return self._search_call("funnel", queries, k, options, allow_partial, timeout,
                                 restart_timeout)

    def exact(self, queries: np.ndarray, k: int = 10, dim: int | None = None, *,
              allow_partial: bool = False, timeout: float | None = None,
              restart_timeout: float | None = None, **options: Any) -> ShardedSearchResult:
        """Brute force on every shard at a prefix dim (None: full), merged: the same top-k as
        ``Searcher.exact`` over the union of the shards.

        Examples
        --------
        >>> truth = sh.exact(Q, k=10)  # doctest: +SKIP
        >>> sh.search(Q, k=10).recall(truth)  # doctest: +SKIP
        0.97
        """
        options = {"dim": dim, **options}
        return self._search_call("exact", queries, k, options, allow_partial, timeout,
                                 restart_timeout)

    def search_batches(
        self,
        queries_source: np.ndarray | str | os.PathLike | Iterable[np.ndarray],
        *,
        k: int = 10,
        batch_size: int = 1024,
        method: str = "search",
        progress: bool | None = None,
        allow_partial: bool = False,
        timeout: float | None = None,
        restart_timeout: float | None = None,
        **options: Any,
    ) -> Iterator[ShardedSearchResult]:
        """Stream a large query set through the cluster, one merged result per batch.

        The next batch is sent to the shards while the current one is merged, so the shards
        stay busy. Results come in query order.

        Parameters
        ----------
        queries_source : ndarray, str, path-like or iterable of arrays
            Queries of shape (n, dim): an array, a ``.npy`` file (memory-mapped) or an
            iterable of (m, dim) arrays (each re-cut into batches).
        k : int, default=10
        batch_size : int, default=1024
            Queries per batch.
        method : {'search', 'funnel', 'exact'}, default='search'
        progress : bool, optional
            tqdm progress bar over the queries (default: on a terminal).
        allow_partial, timeout, restart_timeout, **options
            As in :meth:`search`, per batch.

        Yields
        ------
        ShardedSearchResult
            One per batch, at most ``batch_size`` rows.

        Examples
        --------
        >>> ids = np.concatenate([r.ids for r in sh.search_batches("queries.npy", k=10,
        ...                       batch_size=4096, method="funnel")])  # doctest: +SKIP
        """
        if method not in QUERY_METHODS:
            raise ValueError(f"'method' must be one of {QUERY_METHODS} (got {method!r})")
        k = check_positive_int(k, "k")
        batch_size = check_positive_int(batch_size, "batch_size")
        total = None
        if isinstance(queries_source, (str, os.PathLike)):
            path = os.fspath(queries_source)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no query file at {path}")
            try:
                queries_source = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise FormatError(f"{path} is not a readable .npy array ({exc})") from exc
        if isinstance(queries_source, np.ndarray):
            if queries_source.ndim != 2:
                raise DimensionError(f"'queries_source' must have shape (n, dim) (got shape "
                                     f"{queries_source.shape})")
            total = queries_source.shape[0]
            source = queries_source

            def batches() -> Iterator[np.ndarray]:
                for lo in range(0, total, batch_size):
                    yield np.asarray(source[lo:lo + batch_size])
        elif isinstance(queries_source, Iterable):
            chunks = queries_source

            def batches() -> Iterator[np.ndarray]:
                for chunk in chunks:
                    chunk = np.asarray(chunk)
                    if chunk.ndim == 1:
                        chunk = chunk[None, :]
                    for lo in range(0, chunk.shape[0], batch_size):
                        yield chunk[lo:lo + batch_size]
        else:
            raise TypeError("'queries_source' must be an array, a .npy path or an iterable of "
                            f"arrays (got {type(queries_source).__name__})")
        options = dict(options)
        if method == "funnel":
            options.setdefault("stages", None)
        elif method == "exact":
            options.setdefault("dim", None)
        disable = None if progress is None else not progress
        return self._stream(batches(), method, k, options, total, disable, allow_partial,
                            timeout, restart_timeout)

    def _stream(self, batches: Iterator[np.ndarray], method: str, k: int, options: dict,
                total: int | None, disable: bool | None, allow_partial: bool,
                timeout: float | None, restart_timeout: float | None
                ) -> Iterator[ShardedSearchResult]:
        with tqdm(total=total, desc=f"mrlsearch: {method}", unit="query", disable=disable,
                  leave=False) as bar:
            in_flight = None
            for batch in batches:
                sent = self._send_query(method, batch, k, options, allow_partial, timeout,
                                        restart_timeout)
                if in_flight is not None:
                    result = self._finish_query(*in_flight)
                    bar.update(len(result))
                    yield result
                in_flight = sent
            if in_flight is not None:
                result = self._finish_query(*in_flight)
                bar.update(len(result))
                yield result

    def _search_call(self, method: str, queries: Any, k: int, options: dict,
                     allow_partial: bool, timeout: float | None,
                     restart_timeout: float | None) -> ShardedSearchResult:
        return self._finish_query(*self._send_query(method, queries, k, options, allow_partial,
                                                    timeout, restart_timeout))

    def _send_query(self, method: str, queries: Any, k: int, options: dict,
                    allow_partial: bool, timeout: float | None,
                    restart_timeout: float | None) -> tuple:
        started = time.perf_counter()
        k = check_positive_int(k, "k")
        if not isinstance(allow_partial, bool):
            raise TypeError(f"'allow_partial' must be a bool (got {allow_partial!r})")
        timeout = check_timeout(timeout, "timeout")
        restart_timeout = (self._calls.restart_timeout if restart_timeout is None
                           else check_timeout(restart_timeout, "restart_timeout"))
        batch, _ = check_matrix(queries, "queries", dim=self._dim)
        payload = ray.put(batch) if batch.nbytes > _PUT_ABOVE_BYTES else batch
        sent, missing = self._calls.send("call", method, (payload,), {"k": k, **options},
                                         allow_partial)
        return (sent, missing, batch.shape[0], k, started, deadline_in(timeout), restart_timeout,
                allow_partial)

    def _finish_query(self, sent: dict, missing: list, n_queries: int, k: int, started: float,
                      deadline: float, restart_timeout: float | None,
                      allow_partial: bool) -> ShardedSearchResult:
        answers = self._calls.collect(sent, missing, deadline, restart_timeout, allow_partial)
        if not answers:
            raise ShardUnavailableError(f"no shard answered (missing {sorted(missing)})")
        if all(count == 0 for _, _, count in answers.values()) and not missing:
            raise ValueError("the index is empty: add vectors before searching")
        merge_started = time.perf_counter()
        order = sorted(answers)
        ids, scores, counts = merge_top_k([answers[i][0] for i in order], k)
        now = time.perf_counter()
        return ShardedSearchResult(
            ids=ids, scores=scores, counts=counts, stats=(), shards_answered=tuple(order),
            shards_missing=tuple(sorted(missing)),
            shard_stats=tuple(tuple(answers[i][0].stats) for i in order),
            shard_seconds=tuple(answers[i][1] for i in order), wall_seconds=now - started,
            merge_seconds=now - merge_started)

    # ------------------------------------------------------------------ tuning
    def tune(
        self,
        queries: np.ndarray,
        k: int = 10,
        target_recall: float = 0.95,
        *,
        set_default: bool = True,
        local_targets: Sequence[float] | None = None,
        repeats: int = 3,
        progress: bool | None = None,
        **tune_options: Any,
    ) -> FunnelPlan:
        """Fastest plan whose *merged* recall meets the target, timed end to end on the
        cluster; the same plan on every shard.

        Candidates come from the shards: each one runs ``Searcher.tune`` on its own data at
        several local targets (``local_targets``, default ``target - 0.03 ... target + 0.03``),
        so the candidates span cheaper and dearer plans than one local tune would give. Each
        distinct candidate then runs through :meth:`funnel` (fan-out, shards, merge) on
        ``queries``; its recall@k is measured against :meth:`exact` over all shards and its
        time is the best of ``repeats`` wall times of the whole call. A candidate qualifies
        when the one-sided 95 % lower bound of its mean recall (mean - 1.645 standard errors,
        the rule of ``Searcher.tune``) reaches ``target_recall``; the fastest one wins.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
            At least 2 representative queries.
        k : int, default=10
        target_recall : float, default=0.95
        set_default : bool, default=True
            Make the plan every shard's :attr:`plan` (kept by :meth:`save`).
        local_targets : sequence of float, optional
            Targets of the per-shard tunes that propose candidates.
        repeats : int, default=3
            Timed runs per candidate.
        progress : bool, optional
            Progress bar over the candidates.
        **tune_options
            Passed to every shard's ``Searcher.tune`` (e.g. ``max_shortlist``).

        Returns
        -------
        FunnelPlan
            With ``recall``, ``recall_lower`` and ``seconds_per_query`` as measured here.

        Raises
        ------
        ValueError
            If no candidate reaches the target; the message gives the best one.

        Examples
        --------
        >>> plan = sh.tune(Q, k=10, target_recall=0.95)  # doctest: +SKIP
        >>> plan.recall_lower >= 0.95  # doctest: +SKIP
        True
        """
        k = check_positive_int(k, "k")
        target_recall = check_fraction(target_recall, "target_recall")
        repeats = check_positive_int(repeats, "repeats")
        batch, _ = check_matrix(queries, "queries", dim=self._dim)
        if batch.shape[0] < 2:
            raise ValueError(f"'queries' must hold at least 2 rows to tune (got "
                             f"{batch.shape[0]})")
        if local_targets is None:
            local_targets = [target_recall + step for step in
                             (-0.03, -0.015, 0.0, 0.01, 0.02, 0.03)]
        targets = sorted({min(0.999, max(0.0, float(check_fraction(t, "local_targets"))))
                          for t in local_targets})
        truth = self.exact(batch, k).ids
        proposals = self._calls.query("tune_candidates",
                                      (ray.put(batch), k, targets, tune_options), {})
        candidates: dict[str, Any] = {}
        for index in sorted(proposals):
            for plan in proposals[index][0]:
                candidates.setdefault(_plan_key(plan), plan)
        if not candidates:
            raise ValueError(f"no shard found a plan for target_recall={target_recall} "
                             f"(local targets {targets})")
        measured = []
        disable = None if progress is None else not progress
        for plan in tqdm(list(candidates.values()), desc="mrlsearch: timing plans",
                         disable=disable, leave=False):
            result = self.funnel(batch, k, stages=plan)  # warm-up, and the recall
            seconds = min(self.funnel(batch, k, stages=plan).wall_seconds
                          for _ in range(repeats))
            recalls = recall_per_query(result.ids, truth)
            mean = float(recalls.mean())
            lower = mean - _Z_95 * float(recalls.std(ddof=1)) / math.sqrt(recalls.size)
            measured.append((seconds / batch.shape[0], mean, lower, plan))
        qualified = [m for m in measured if m[2] >= target_recall]
        if not qualified:
            best = max(measured, key=lambda m: m[2])
            raise ValueError(f"no candidate plan reached target_recall={target_recall}: the "
                             f"best lower bound was {best[2]:.4f} (mean {best[1]:.4f}) with "
                             f"{best[3]}; lower the target or raise max_shortlist")
        seconds, mean, lower, plan = min(qualified, key=lambda m: m[0])
        if dataclasses.is_dataclass(plan):
            names = {f.name for f in dataclasses.fields(plan)}
            updates = {"recall": mean, "recall_lower": lower, "seconds_per_query": seconds}
            plan = dataclasses.replace(plan, **{n: v for n, v in updates.items() if n in names})
        if set_default:
            self.plan = plan
        return plan

    # ------------------------------------------------------------------ writes
    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None, *,
            payloads: Sequence[str | bytes | None] | None = None,
            **options: Any) -> np.ndarray:
        """Add (or replace) vectors, each on the shard of its id.

        Parameters
        ----------
        vectors : array-like of shape (n, dim) or (dim,)
        ids : array-like of int, optional
            Non-negative distinct ids. Default: consecutive ids from the next free one
            (known when the shards were built or saved by this class).
        payloads : sequence of str, bytes or None, optional
            One per vector, stored on the vector's shard (``Searcher.add``'s ``payloads``);
            read back with :meth:`get`.
        **options
            Passed to every shard's ``Searcher.add``.

        Returns
        -------
        ndarray of int64
            The ids.

        Notes
        -----
        Each shard applies its part atomically; across shards the call is not atomic (an
        error on one shard, e.g. a value beyond float16, leaves the others' part applied).
        Writes live in the actors' memory until :meth:`save`; the driver keeps them too and
        replays them on a shard whose actor restarts.

        Examples
        --------
        >>> new_ids = sh.add(more_vectors)  # doctest: +SKIP
        """
        batch, _ = check_matrix(vectors, "vectors", dim=self._dim)
        with self._calls.write_lock:
            if ids is None:
                if self._next_id is None:
                    raise ValueError("'ids' must be given: these shards were loaded without a "
                                     f"{SHARDING_FILE}, so the next free id is unknown")
                new_ids = consecutive_ids(self._next_id, batch.shape[0])
            else:
                new_ids = check_ids(ids, "ids", count=batch.shape[0])
            if payloads is not None:
                encode_payloads(payloads, batch.shape[0], "payloads")  # checked on the driver
                payloads = list(payloads)
            assignment = shard_of(new_ids, self.n_shards)
            writes = {}
            for index in np.unique(assignment).tolist():
                rows = np.flatnonzero(assignment == index)
                shard_options = options if payloads is None else {
                    **options, "payloads": [payloads[row] for row in rows.tolist()]}
                writes[index] = ("add", (batch[rows], new_ids[rows], shard_options))
            self._calls.write(writes)
            top = int(new_ids.max()) + 1
            self._next_id = top if self._next_id is None else max(self._next_id, top)
        return new_ids

    def get(self, ids: Sequence[int] | np.ndarray | int, *,
            payload: bool = False) -> np.ndarray | list:
        """Stored vectors (or, with ``payload=True``, payloads) of ids, from their shards.

        Same as ``Searcher.get``: a ``(len(ids), dim)`` float32 array in the order of ``ids``,
        or a list of ``str`` / ``bytes`` / ``None``; an id in no shard raises ``KeyError``.

        Examples
        --------
        >>> texts = sh.get(sh.search(query, k=5).ids[0], payload=True)  # doctest: +SKIP
        """
        if not isinstance(payload, (bool, np.bool_)):
            raise TypeError(f"'payload' must be a bool (got {payload!r})")
        targets = check_ids(ids, "ids")
        assignment = shard_of(targets, self.n_shards)
        parts = {index: np.flatnonzero(assignment == index)
                 for index in np.unique(assignment).tolist()}
        answers = self._calls.query_each({i: ("get", (targets[at],), {"payload": payload})
                                          for i, at in parts.items()})
        if payload:
            out: list = [None] * targets.size
            for index, at in parts.items():
                for position, value in zip(at.tolist(), answers[index][0]):
                    out[position] = value
            return out
        vectors = np.empty((targets.size, self._dim), dtype=np.float32)
        for index, at in parts.items():
            vectors[at] = answers[index][0]
        return vectors

    def remove(self, ids: Sequence[int] | np.ndarray | int) -> None:
        """Remove ids from their shards; they never come back from any query.

        Raises
        ------
        ValueError
            If an id is in no shard. When the shards' Searcher can test membership
            (``id in searcher``) nothing is removed then; otherwise the shards holding only
            known ids have removed theirs, and the message says which shards refused.

        Examples
        --------
        >>> sh.remove([3, 17, 42])  # doctest: +SKIP
        """
        targets = check_ids(ids, "ids")
        with self._calls.write_lock:
            assignment = shard_of(targets, self.n_shards)
            parts = {index: targets[assignment == index]
                     for index in np.unique(assignment).tolist()}
            checks = self._calls.query_each({i: ("missing_ids", (part,), {})
                                             for i, part in parts.items()})
            unknown = [i for out, _, _ in checks.values() if out for i in out]
            if unknown:
                raise ValueError(f"'ids' must all be in the index (got {len(unknown)} unknown, "
                                 f"e.g. {unknown[0]})")
            failures = self._calls.write({i: ("remove", (part,)) for i, part in parts.items()},
                                         keep_going=True)
            if failures:
                done = sorted(set(parts) - set(failures))
                first = failures[min(failures)]
                raise ValueError(f"remove failed on shards {sorted(failures)} ({first}); "
                                 f"shards {done} removed their ids") from first

    def save(self, out_dir: str | os.PathLike | None = None) -> None:
        """Save every shard (atomically, as ``Searcher.save``) and ``sharding.json``.

        Parameters
        ----------
        out_dir : str or path-like, optional
            Where to write ``shard-<i>-of-<n>`` and ``sharding.json``. Default: each shard's
            current directory. A restarted actor loads from the latest save.

        Examples
        --------
        >>> sh.save()  # doctest: +SKIP
        >>> sh.save("backup/shards")  # doctest: +SKIP
        """
        with self._calls.write_lock:
            if out_dir is None:
                targets = {shard.index: shard.path for shard in self._calls.shards}
                parents = {shard.path.parent for shard in self._calls.shards}
                root = self._root or (parents.pop() if len(parents) == 1 and all(
                    SHARD_PATTERN.match(s.path.name) for s in self._calls.shards) else None)
            else:
                root = Path(out_dir).resolve()
                root.mkdir(parents=True, exist_ok=True)
                targets = {shard.index: root / SHARD_NAME.format(index=shard.index,
                                                                  count=self.n_shards)
                           for shard in self._calls.shards}
            self._calls.write({i: ("save", (str(path),)) for i, path in targets.items()})
            if root is not None:
                names = [targets[i].name if targets[i].parent == root else str(targets[i])
                         for i in range(self.n_shards)]
                write_sharding(root, n_shards=self.n_shards, names=names,
                               next_id=self._next_id)
                self._root = root
