"""Sharded indexes on a Ray cluster: one ordinary :class:`~mrlsearch.Searcher` per shard.

:class:`ShardedSearcher` splits a corpus into ``n_shards`` ordinary index directories (each one
opens with ``Searcher.load``), serves each shard from one Ray actor, fans every query out to all
shards and merges their top-k into the global top-k. Writes are routed by id.

* **Assignment.** Vector ``id`` lives on shard ``shard_of(id, n_shards)``: the splitmix64
  finaliser of the id as an unsigned 64-bit integer, modulo ``n_shards``. It depends on nothing
  but the id and the shard count, so every process computes the same answer; an update (``add``
  of an id that exists) lands on the shard that holds the old vector.
* **Merge.** Each shard answers with its own top-k and the scores of the last stage; the merge
  keeps the k best of the ``n_shards * k`` candidates, ties broken by the smaller id. For
  ``exact`` this equals an exact search over the union; for the funnel every shard runs the same
  plan over a smaller index, so recall is at least the single-node recall at that plan.
* **Faults.** The driver supervises the actors. A call that finds its actor dead starts a new
  one from the shard's directory, replays the writes made since the last ``save`` (the driver
  keeps them), and retries; it waits at most ``restart_timeout`` seconds for the shard to come
  back and otherwise raises :class:`ShardUnavailableError` naming the shard. With
  ``allow_partial=True`` a query does not wait: shards that are down are left out and the
  result lists them in ``shards_missing``.

Ray is an optional dependency (``pip install 'mrlsearch[distributed]'``); ``import mrlsearch``
never imports it, this module does.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

try:
    import ray
    from ray import exceptions as ray_errors
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "mrlsearch.distributed needs Ray, which is not installed: "
        "pip install 'mrlsearch[distributed]'"
    ) from exc

from tqdm.auto import tqdm

from ._errors import DimensionError, FormatError, MRLError
from ._payloads import encode as encode_payloads
from ._results import FunnelPlan, SearchResult
from ._store import consecutive_ids
from ._validation import (check_fraction, check_ids, check_matrix, check_positive_int,
                          check_positive_number)
from .searcher import Searcher

__all__ = ["ShardUnavailableError", "ShardedSearchResult", "ShardedSearcher", "shard_of"]

SHARDING_FILE = "sharding.json"
SHARDING_FORMAT = "mrlsearch.sharded"
SHARDING_VERSION = 1
ASSIGNMENT = "splitmix64(uint64(id)) mod n_shards"
_SHARD_NAME = "shard-{index:05d}-of-{count:05d}"
_SHARD_PATTERN = re.compile(r"^shard-(\d+)-of-(\d+)$")
_QUERY_METHODS = ("search", "funnel", "exact")
# queries bigger than this go to the object store once instead of once per shard
_PUT_ABOVE_BYTES = 1 << 16
# a call retries after this many actor deaths at most, then gives up on the shard
_MAX_ATTEMPTS = 3
# one-sided 95 % bound, the rule Searcher.tune uses
_Z_95 = 1.645

PathsOrGlob = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


# ---------------------------------------------------------------------------- public helpers
def shard_of(ids: Sequence[int] | np.ndarray | int, n_shards: int) -> np.ndarray:
    """The shard that holds each id: ``splitmix64(uint64(id)) mod n_shards``.

    splitmix64's finaliser (Steele, Lea and Flood, 2014) mixes every bit of the id, so
    consecutive ids spread evenly over the shards. The function is pure: the same id and shard
    count give the same shard in every process and on every machine.

    Parameters
    ----------
    ids : int or array-like of int
        Non-negative ids.
    n_shards : int
        Number of shards (>= 1).

    Returns
    -------
    ndarray of int64, shape (n,)
        Shard index in ``[0, n_shards)`` per id.

    Examples
    --------
    >>> from mrlsearch.distributed import shard_of
    >>> shard_of([0, 1, 2, 3], 4).tolist() == shard_of([0, 1, 2, 3], 4).tolist()
    True
    >>> int(shard_of(7, 1)[0])
    0
    """
    n_shards = check_positive_int(n_shards, "n_shards")
    values = np.asarray(ids)
    if values.ndim == 0:
        values = values[None]
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"'ids' must be integer ids (got dtype {values.dtype})")
    if values.size and np.issubdtype(values.dtype, np.signedinteger) and values.min() < 0:
        raise ValueError(f"'ids' must be non-negative (got {int(values.min())})")
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _C0
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int64)


class ShardUnavailableError(MRLError, RuntimeError):
    """A shard did not answer: its actor died and did not come back in time, or it cannot be
    reloaded from its directory.

    Attributes
    ----------
    shard : int
        Index of the shard.
    path : str or None
        Its index directory.
    """

    def __init__(self, message: str, *, shard: int = -1, path: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.path = path


@dataclass(frozen=True)
class ShardedSearchResult(SearchResult):
    """A :class:`~mrlsearch.SearchResult` merged from shards, with what each shard did.

    ``ids``, ``scores`` and ``counts`` are the global top-k as for a single Searcher (ties
    broken by the smaller id); ``stats`` is empty, the stats of each shard are in
    ``shard_stats``.

    Attributes
    ----------
    shards_answered : tuple of int
        Shards whose answer is merged in.
    shards_missing : tuple of int
        Shards left out (only with ``allow_partial=True``); empty for a complete answer.
    shard_stats : tuple of tuple of StageStats
        Each answering shard's own ``stats``, in the order of ``shards_answered``.
    shard_seconds : tuple of float
        Time each answering shard spent in its Searcher call.
    wall_seconds : float
        Wall time of the whole call: fan-out, shards, transfers and merge.
    merge_seconds : float
        Time of the merge alone.
    """

    shards_answered: tuple[int, ...] = ()
    shards_missing: tuple[int, ...] = ()
    shard_stats: tuple = ()
    shard_seconds: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    merge_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every shard answered."""
        return not self.shards_missing

    @property
    def seconds(self) -> float:
        """Wall time of the whole call (fan-out, shards, merge)."""
        return self.wall_seconds


# ---------------------------------------------------------------------------- shard actor
class _ShardNotLoaded(MRLError, RuntimeError):
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


def _with_defaults(function: Any, kwargs: dict, **defaults: Any) -> dict:
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
            raise _ShardNotLoaded(f"the shard could not be loaded: {self._error}")
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
        if method in _QUERY_METHODS:
            if count == 0:
                queries = np.asarray(args[0])
                out = _empty_result(queries.shape[0] if queries.ndim == 2 else 1, kwargs["k"])
            else:
                function = getattr(searcher, method)
                out = function(*args, **_with_defaults(function, kwargs,
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
            searcher.add(vectors, ids, **_with_defaults(searcher.add, options, progress=False,
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
            kwargs = _with_defaults(searcher.tune, options, set_default=False, progress=False)
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


_RemoteShard = ray.remote(max_restarts=0, max_task_retries=0)(_ShardActor)


# ---------------------------------------------------------------------------- sources and build
@dataclass
class _Source:
    kind: str  # 'array', 'npy' or 'parquet'
    n: int
    dim: int
    data: Any = None  # the array (kind 'array')
    path: str | None = None  # kind 'npy'
    files: list[str] = field(default_factory=list)  # kind 'parquet'
    column: str = "vector"
    # parquet: (file, row group, first global row, rows) for every row group
    groups: list[tuple[str, int, int, int]] = field(default_factory=list)


def _import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow comes with the extra
        raise ImportError("reading parquet needs pyarrow: pip install 'mrlsearch[distributed]'"
                          ) from exc
    return pyarrow, pyarrow.parquet


def _parquet_files(source: Any) -> list[str] | None:
    """The parquet files ``source`` names, or None when it names none."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.isdir(text):
            found = sorted(glob.glob(os.path.join(text, "*.parquet")))
            return found or None
        if text.endswith(".parquet"):
            return [text] if os.path.isfile(text) else sorted(glob.glob(text)) or None
        if any(c in text for c in "*?["):
            found = sorted(p for p in glob.glob(text) if p.endswith(".parquet"))
            return found or None
        return None
    if isinstance(source, Sequence) and source and all(
            isinstance(s, (str, os.PathLike)) for s in source):
        return [os.fspath(s) for s in source]
    return None


def _vectors_from_arrow(column: Any, dim: int | None, where: str) -> np.ndarray:
    """(n, dim) float32 from a list / large_list / fixed_size_list column."""
    pa, _ = _import_pyarrow()
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)):
        raise FormatError(f"{where}: the vector column must hold lists of numbers "
                          f"(got type {kind})")
    if column.null_count:
        raise ValueError(f"{where}: the vector column holds {column.null_count} null rows")
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = np.diff(np.asarray(column.offsets))
        width = int(lengths[0]) if lengths.size else (dim or 0)
        if lengths.size and np.any(lengths != width):
            bad = int(np.flatnonzero(lengths != width)[0])
            raise DimensionError(f"{where}: every vector must have {width} values "
                                 f"(row {bad} has {int(lengths[bad])})")
    if dim is not None and width != dim:
        raise DimensionError(f"{where}: vectors must have {dim} values (got {width})")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if not np.issubdtype(values.dtype, np.number):
        raise FormatError(f"{where}: the vector column must hold numbers (got {values.dtype})")
    return values.reshape(-1, width)


def _describe_source(source: Any, vector_column: str, id_column: str | None
                     ) -> tuple[_Source, np.ndarray | None]:
    """Look at ``source`` without reading its vectors; return it and the ids of its column."""
    if isinstance(source, np.ndarray):
        if source.ndim != 2:
            raise DimensionError(f"'source' must have shape (n, dim) (got shape {source.shape})")
        if not (np.issubdtype(source.dtype, np.floating) or np.issubdtype(source.dtype,
                                                                            np.integer)):
            raise TypeError(f"'source' must be an array of numbers (got dtype {source.dtype})")
        return _Source("array", source.shape[0], source.shape[1], data=source), None
    files = _parquet_files(source)
    if files is not None:
        _, pq = _import_pyarrow()
        groups, ids, total, dim = [], [], 0, None
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no parquet file at {path}")
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            if vector_column not in names:
                raise FormatError(f"{path} has no column {vector_column!r} (columns: {names}); "
                                  "pass vector_column=")
            if id_column is not None:
                if id_column not in names:
                    raise FormatError(f"{path} has no id column {id_column!r} (columns: "
                                      f"{names})")
                column = parquet.read(columns=[id_column]).column(id_column)
                values = column.to_numpy()
                if column.null_count or not np.issubdtype(values.dtype, np.integer):
                    raise TypeError(f"{path}: column {id_column!r} must hold integer ids "
                                    f"without nulls (got {column.type})")
                ids.append(values)
            for group in range(parquet.metadata.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if rows == 0:
                    continue
                if dim is None:
                    first = parquet.read_row_group(group, columns=[vector_column])
                    dim = _vectors_from_arrow(first.column(vector_column), None, path).shape[1]
                groups.append((path, group, total, rows))
                total += rows
        if total == 0 or dim is None:
            raise ValueError(f"'source' must hold at least one vector (got {len(files)} "
                             "empty parquet file(s))")
        described = _Source("parquet", total, dim, files=files, column=vector_column,
                            groups=groups)
        return described, (np.concatenate(ids) if id_column is not None else None)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'source' names no file or parquet set: {path}")
        if not path.endswith(".npy"):
            raise FormatError(f"'source' must be an array, a .npy file or parquet file(s) "
                              f"(got {path})")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FormatError(f"{path} is not a readable .npy array ({exc})") from exc
        if array.ndim != 2:
            raise DimensionError(f"{path} must hold an (n, dim) array (got shape {array.shape})")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype,
                                                                           np.integer)):
            raise TypeError(f"{path} must hold numbers (got dtype {array.dtype})")
        return _Source("npy", array.shape[0], array.shape[1], path=path), None
    if isinstance(source, (list, tuple)):
        return _describe_source(np.asarray(source), vector_column, id_column)
    raise TypeError("'source' must be an array, a .npy path or parquet file(s) (got "
                    f"{type(source).__name__})")


def _read_rows(source: _Source, data: Any, rows: np.ndarray) -> np.ndarray:
    """The vectors at global positions ``rows`` (ascending), as an (len(rows), dim) array."""
    if source.kind == "array":
        return np.asarray(data[rows])
    if source.kind == "npy":
        return np.asarray(np.load(source.path, mmap_mode="r", allow_pickle=False)[rows])
    _, pq = _import_pyarrow()
    out = np.empty((rows.size, source.dim), dtype=np.float32)
    done = 0
    files: dict[str, Any] = {}
    for path, group, first, count in source.groups:
        lo, hi = np.searchsorted(rows, [first, first + count])
        if lo == hi:
            continue
        parquet = files.get(path)
        if parquet is None:
            parquet = files[path] = pq.ParquetFile(path)
        table = parquet.read_row_group(group, columns=[source.column])
        block = _vectors_from_arrow(table.column(source.column), source.dim, path)
        out[done:done + hi - lo] = block[rows[lo:hi] - first]
        done += hi - lo
    return out


def _build_shard(source: _Source, data: Any, rows: np.ndarray, ids: np.ndarray, options: dict,
                 path: str, threads: int) -> tuple[int, float]:
    """Ray task: build one shard from its rows of ``source`` and save it at ``path``."""
    started = time.perf_counter()
    vectors = _read_rows(source, data, rows)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(rows[np.flatnonzero(~finite)[0]])
        raise ValueError(f"'source' must be finite (got NaN or inf in row {bad})")
    searcher = Searcher(source.dim, **options)
    searcher.add(vectors, ids, **_with_defaults(searcher.add, {}, num_threads=threads,
                                                progress=False))
    del vectors
    searcher.save(path)
    return len(searcher), time.perf_counter() - started


_build_task = ray.remote(_build_shard)


# ---------------------------------------------------------------------------- driver side
@dataclass
class _Shard:
    index: int
    path: Path
    base: int = 0  # the actor version the directory holds
    journal: list = field(default_factory=list)  # writes since the directory was written
    actor: Any = None
    ready: Any = None
    restarts: int = 0
    up: bool = False  # ready() was seen to finish
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def version(self) -> int:
        return self.base + len(self.journal)


@dataclass
class _Sent:
    shard: _Shard
    kind: str  # 'call' or 'apply'
    name: str
    args: tuple
    kwargs: dict
    actor: Any
    ref: Any


def _remaining(deadline: float) -> float | None:
    if math.isinf(deadline):
        return None
    return max(0.0, deadline - time.monotonic())


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None else time.monotonic() + seconds


def _check_timeout(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"'{name}' must be a number of seconds >= 0 or None (got {value!r})")
    return float(value)


def _merge(parts: list[SearchResult], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global top-k of per-shard top-k lists: by score, then by the smaller id."""
    ids = np.concatenate([np.asarray(p.ids, dtype=np.int64) for p in parts], axis=1)
    scores = np.concatenate([np.asarray(p.scores, dtype=np.float32) for p in parts], axis=1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    key = np.where(ids >= 0, -scores.astype(np.float64), np.inf)
    order = np.lexsort((ids, key), axis=-1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    valid = ids >= 0
    scores[~valid] = -np.inf
    return ids, scores, valid.sum(axis=1).astype(np.int64)


def _recalls(ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    out = np.empty(ids.shape[0])
    for row, (got, want) in enumerate(zip(ids, truth)):
        want = want[want >= 0]
        out[row] = 1.0 if want.size == 0 else np.intersect1d(got[got >= 0], want).size / want.size
    return out


def _plan_key(plan: Any) -> str:
    """A plan's identity without its measured figures."""
    if hasattr(plan, "to_dict"):
        data = {k: v for k, v in plan.to_dict().items()
                if k not in ("recall", "recall_lower", "seconds_per_query")}
        return json.dumps(data, sort_keys=True, default=str)
    return repr(plan)


def _write_json(path: Path, data: dict) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _read_sharding(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SHARDING_FORMAT:
        raise FormatError(f"{path} is not a {SHARDING_FORMAT!r} file")
    if data.get("version") != SHARDING_VERSION:
        raise FormatError(f"{path} has version {data.get('version')!r}; this mrlsearch reads "
                          f"version {SHARDING_VERSION}")
    n_shards, shards = data.get("n_shards"), data.get("shards")
    if (isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1
            or not isinstance(shards, list) or len(shards) != n_shards
            or not all(isinstance(s, str) for s in shards)):
        raise FormatError(f"{path} must list 'n_shards' shard directory names (got "
                          f"n_shards={n_shards!r}, shards={shards!r})")
    next_id = data.get("next_id")
    if next_id is not None and (isinstance(next_id, bool) or not isinstance(next_id, int)
                                or next_id < 0):
        raise FormatError(f"{path} field 'next_id' must be an int >= 0 (got {next_id!r})")
    return data


def _resolve_shards(paths_or_glob: PathsOrGlob) -> tuple[list[Path], dict | None, Path | None]:
    """Shard directories in shard order, the sharding file's content and where it lives."""
    sharding, root = None, None
    if isinstance(paths_or_glob, (str, os.PathLike)):
        text = os.fspath(paths_or_glob)
        path = Path(text)
        if path.is_dir() and (path / SHARDING_FILE).is_file():
            root = path
            sharding = _read_sharding(path / SHARDING_FILE)
            directories = [path / name for name in sharding["shards"]]
            missing = [str(d) for d in directories if not d.is_dir()]
            if missing:
                raise FileNotFoundError(f"{path / SHARDING_FILE} lists shard directories that "
                                        f"do not exist: {missing}")
        elif path.is_dir() and (path / "manifest.json").is_file():
            directories = [path]
        elif path.is_dir():
            directories = sorted(p for p in path.iterdir()
                                 if p.is_dir() and _SHARD_PATTERN.match(p.name))
            if not directories:
                raise FileNotFoundError(f"{path} holds no shard directories "
                                        "(shard-<i>-of-<n>)")
        else:
            directories = sorted(Path(p) for p in glob.glob(text) if Path(p).is_dir())
            if not directories:
                raise FileNotFoundError(f"no shard directories match {text!r}")
    elif isinstance(paths_or_glob, Sequence) and not isinstance(paths_or_glob, (bytes, str)):
        if not paths_or_glob:
            raise ValueError("'paths_or_glob' must name at least one shard (got an empty list)")
        directories = []
        for item in paths_or_glob:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"'paths_or_glob' must hold paths (got {item!r})")
            if not Path(item).is_dir():
                raise FileNotFoundError(f"no shard directory at {os.fspath(item)}")
            directories.append(Path(item))
    else:
        raise TypeError("'paths_or_glob' must be a path, a glob or a list of paths (got "
                        f"{type(paths_or_glob).__name__})")

    if len(directories) == 1 and not _SHARD_PATTERN.match(directories[0].name):
        return directories, sharding, root  # an ordinary index: one shard
    positions: dict[int, Path] = {}
    counts = set()
    for directory in directories:
        match = _SHARD_PATTERN.match(directory.name)
        if match is None:
            raise FormatError(f"{directory} is not named shard-<i>-of-<n>; the name tells "
                              "which ids the shard holds, keep the names build() wrote")
        index, count = int(match.group(1)), int(match.group(2))
        counts.add(count)
        if index in positions:
            raise FormatError(f"shard {index} is given twice: {positions[index]} and "
                              f"{directory}")
        positions[index] = directory
    if len(counts) != 1:
        raise FormatError(f"the shards come from different shardings (of {sorted(counts)})")
    n_shards = counts.pop()
    missing = sorted(set(range(n_shards)) - set(positions))
    if missing or max(positions) >= n_shards:
        raise FormatError(f"the shards must be all {n_shards} of one sharding; missing "
                          f"{missing} (given {sorted(positions)})")
    directories = [positions[i] for i in range(n_shards)]
    if sharding is None:
        parents = {d.parent for d in directories}
        if len(parents) == 1 and (directories[0].parent / SHARDING_FILE).is_file():
            root = directories[0].parent
            sharding = _read_sharding(root / SHARDING_FILE)
            if sharding["n_shards"] != n_shards:
                raise FormatError(f"{root / SHARDING_FILE} is for {sharding['n_shards']} "
                                  f"shards, the directories for {n_shards}")
    return directories, sharding, root


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

    def __init__(self, shards: list[_Shard], *, root: Path | None, next_id: int | None,
                 mmap: bool, num_cpus: float, memory: int | None, threads: int | None,
                 restart_timeout: float | None) -> None:
        self._shards = shards
        self._root = root
        self._next_id = next_id
        self._mmap = mmap
        self._num_cpus = num_cpus
        self._memory = memory
        self._threads = threads
        self._restart_timeout = restart_timeout
        self._write_lock = threading.RLock()
        self._closed = False
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
        described, column_ids = _describe_source(source, vector_column, id_column)
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
                if entry.is_dir() and _SHARD_PATTERN.match(entry.name):
                    shutil.rmtree(entry)
                elif entry.name == SHARDING_FILE:
                    entry.unlink()
        if not ray.is_initialized():
            ray.init()
        data = ray.put(described.data) if described.kind == "array" else None
        described.data = None
        names = [_SHARD_NAME.format(index=i, count=n_shards) for i in range(n_shards)]
        threads = max(1, int(build_cpus))
        order = np.argsort(assignment, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        refs = {}
        for index in range(n_shards):
            rows = order[bounds[index]:bounds[index + 1]]
            refs[_build_task.options(num_cpus=build_cpus).remote(
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
                        raise _cause(exc) from None
                    bar.update(1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        _write_json(out / SHARDING_FILE, {
            "format": SHARDING_FORMAT, "version": SHARDING_VERSION, "n_shards": n_shards,
            "assignment": ASSIGNMENT, "shards": names, "next_id": int(global_ids.max()) + 1,
        })
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
        restart_timeout = _check_timeout(restart_timeout, "restart_timeout")
        if not isinstance(mmap, bool):
            raise TypeError(f"'mmap' must be a bool (got {mmap!r})")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int)
                                   or memory < 1):
            raise ValueError(f"'memory' must be a positive number of bytes or None "
                             f"(got {memory!r})")
        if threads is not None:
            threads = check_positive_int(threads, "threads")
        directories, sharding, root = _resolve_shards(paths_or_glob)
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
        shards = [_Shard(index, directory.resolve()) for index, directory in
                  enumerate(directories)]
        searcher = cls(shards, root=root, next_id=None if sharding is None
                       else sharding.get("next_id"), mmap=mmap, num_cpus=float(num_cpus),
                       memory=memory, threads=threads, restart_timeout=restart_timeout)
        for shard in shards:
            searcher._spawn(shard)
        deadline = _deadline(restart_timeout)
        infos = []
        try:
            for shard in shards:
                try:
                    infos.append(ray.get(shard.ready, timeout=_remaining(deadline)))
                except ray_errors.GetTimeoutError:
                    raise ShardUnavailableError(
                        f"shard {shard.index} ({shard.path}) did not start within "
                        f"{restart_timeout:g} s; each shard asks Ray for num_cpus={num_cpus:g}"
                        f"{'' if memory is None else f', memory={memory}'} and the cluster "
                        f"has {ray.available_resources()} free", shard=shard.index,
                        path=str(shard.path)) from None
                except ray_errors.RayTaskError as exc:
                    raise _cause(exc) from None
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
        return len(self._shards)

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
        return tuple(str(shard.path) for shard in self._shards)

    @property
    def actors(self) -> tuple:
        """The Ray actor handle of each shard now (a restart replaces it)."""
        return tuple(shard.actor for shard in self._shards)

    @property
    def restarts(self) -> tuple[int, ...]:
        """How many times each shard's actor was restarted."""
        return tuple(shard.restarts for shard in self._shards)

    @property
    def plan(self) -> FunnelPlan | None:
        """The plan every shard's ``funnel`` uses without ``stages`` (set by :meth:`tune`);
        None when none is set or the shards were saved with different plans."""
        return self._plan

    @plan.setter
    def plan(self, value: FunnelPlan | None) -> None:
        if value is not None and not isinstance(value, FunnelPlan):
            raise TypeError(f"'plan' must be a FunnelPlan or None (got {type(value).__name__})")
        self._write({shard.index: ("plan", (value,)) for shard in self._shards})
        self._plan = value

    def __len__(self) -> int:
        return int(sum(out for out, _, _ in self._query("__len__", (), {}).values()))

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"dim={self._dim} metric={self._metric!r}"
        return f"<mrlsearch.distributed.ShardedSearcher n_shards={self.n_shards} {state}>"

    def __enter__(self) -> ShardedSearcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the shard actors (their directories stay). Idempotent."""
        self._closed = True
        for shard in self._shards:
            if shard.actor is not None:
                try:
                    ray.kill(shard.actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                shard.actor = shard.ready = None

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
        if method not in _QUERY_METHODS:
            raise ValueError(f"'method' must be one of {_QUERY_METHODS} (got {method!r})")
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
        timeout = _check_timeout(timeout, "timeout")
        restart_timeout = (self._restart_timeout if restart_timeout is None
                           else _check_timeout(restart_timeout, "restart_timeout"))
        batch, _ = check_matrix(queries, "queries", dim=self._dim)
        payload = ray.put(batch) if batch.nbytes > _PUT_ABOVE_BYTES else batch
        sent, missing = self._send("call", method, (payload,), {"k": k, **options},
                                   allow_partial)
        return (sent, missing, batch.shape[0], k, started, _deadline(timeout), restart_timeout,
                allow_partial)

    def _finish_query(self, sent: dict, missing: list, n_queries: int, k: int, started: float,
                      deadline: float, restart_timeout: float | None,
                      allow_partial: bool) -> ShardedSearchResult:
        answers = self._collect(sent, missing, deadline, restart_timeout, allow_partial)
        if not answers:
            raise ShardUnavailableError(f"no shard answered (missing {sorted(missing)})")
        if all(count == 0 for _, _, count in answers.values()) and not missing:
            raise ValueError("the index is empty: add vectors before searching")
        merge_started = time.perf_counter()
        order = sorted(answers)
        ids, scores, counts = _merge([answers[i][0] for i in order], k)
        now = time.perf_counter()
        return ShardedSearchResult(
            ids=ids, scores=scores, counts=counts, stats=(), shards_answered=tuple(order),
            shards_missing=tuple(sorted(missing)),
            shard_stats=tuple(tuple(answers[i][0].stats) for i in order),
            shard_seconds=tuple(answers[i][1] for i in order), wall_seconds=now - started,
            merge_seconds=now - merge_started)

    def _query(self, method: str, args: tuple, kwargs: dict) -> dict:
        sent, missing = self._send("call", method, args, kwargs, False)
        return self._collect(sent, missing, math.inf, self._restart_timeout, False)

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
        proposals = self._query("tune_candidates", (ray.put(batch), k, targets, tune_options),
                                {})
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
            recalls = _recalls(result.ids, truth)
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
        with self._write_lock:
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
            self._write(writes)
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
        answers = self._collect(*self._send_each(
            {i: ("call", "get", (targets[at],), {"payload": payload})
             for i, at in parts.items()}, False), math.inf, self._restart_timeout, False)
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
        with self._write_lock:
            assignment = shard_of(targets, self.n_shards)
            parts = {index: targets[assignment == index]
                     for index in np.unique(assignment).tolist()}
            checks = self._collect(*self._send_each(
                {i: ("call", "missing_ids", (part,), {}) for i, part in parts.items()}, False),
                math.inf, self._restart_timeout, False)
            unknown = [i for out, _, _ in checks.values() if out for i in out]
            if unknown:
                raise ValueError(f"'ids' must all be in the index (got {len(unknown)} unknown, "
                                 f"e.g. {unknown[0]})")
            failures = self._write({i: ("remove", (part,)) for i, part in parts.items()},
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
        with self._write_lock:
            if out_dir is None:
                targets = {shard.index: shard.path for shard in self._shards}
                parents = {shard.path.parent for shard in self._shards}
                root = self._root or (parents.pop() if len(parents) == 1 and all(
                    _SHARD_PATTERN.match(s.path.name) for s in self._shards) else None)
            else:
                root = Path(out_dir).resolve()
                root.mkdir(parents=True, exist_ok=True)
                targets = {shard.index: root / _SHARD_NAME.format(index=shard.index,
                                                                  count=self.n_shards)
                           for shard in self._shards}
            self._write({i: ("save", (str(path),)) for i, path in targets.items()})
            if root is not None:
                names = [targets[i].name if targets[i].parent == root else str(targets[i])
                         for i in range(self.n_shards)]
                _write_json(root / SHARDING_FILE, {
                    "format": SHARDING_FORMAT, "version": SHARDING_VERSION,
                    "n_shards": self.n_shards, "assignment": ASSIGNMENT, "shards": names,
                    "next_id": self._next_id})
                self._root = root

    # ------------------------------------------------------------------ supervision
    def _spawn(self, shard: _Shard) -> None:
        options: dict[str, Any] = {"num_cpus": self._num_cpus}
        if self._memory is not None:
            options["memory"] = self._memory
        shard.actor = _RemoteShard.options(**options).remote(str(shard.path), self._mmap,
                                                              self._threads, shard.base)
        shard.ready = shard.actor.ready.remote()
        shard.up = False

    def _restart(self, shard: _Shard, dead: Any) -> None:
        with shard.lock:
            if shard.actor is not dead and shard.actor is not None:
                return  # another thread restarted it already
            if dead is not None:
                try:
                    ray.kill(dead)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            self._spawn(shard)
            shard.restarts += 1

    def _is_up(self, shard: _Shard) -> bool:
        if shard.up:
            return True
        if shard.actor is None:
            return False
        done, _ = ray.wait([shard.ready], timeout=0)
        shard.up = bool(done)
        return shard.up

    def _send(self, kind: str, name: str, args: tuple, kwargs: dict, allow_partial: bool
              ) -> tuple[dict, list]:
        return self._send_each({shard.index: (kind, name, args, kwargs)
                                for shard in self._shards}, allow_partial)

    def _send_each(self, calls: dict, allow_partial: bool) -> tuple[dict, list]:
        if self._closed:
            raise RuntimeError("this ShardedSearcher is closed")
        sent, missing = {}, []
        for index, (kind, name, args, kwargs) in calls.items():
            shard = self._shards[index]
            if allow_partial and not self._is_up(shard):
                if shard.actor is None:
                    self._restart(shard, None)
                missing.append(index)
                continue
            sent[index] = self._submit(shard, kind, name, args, kwargs)
        return sent, missing

    def _submit(self, shard: _Shard, kind: str, name: str, args: tuple, kwargs: dict) -> _Sent:
        if shard.actor is None:
            self._restart(shard, None)
        actor = shard.actor
        if kind == "call":
            ref = actor.call.remote(shard.version, name, args, kwargs)
        else:
            ref = actor.apply.remote(shard.version, name, args)
        return _Sent(shard, kind, name, args, kwargs, actor, ref)

    def _unavailable(self, shard: _Shard, why: str) -> ShardUnavailableError:
        return ShardUnavailableError(f"shard {shard.index} ({shard.path}) {why}",
                                     shard=shard.index, path=str(shard.path))

    def _collect(self, sent: dict, missing: list, deadline: float,
                 restart_timeout: float | None, allow_partial: bool) -> dict:
        """Wait for every sent call, restarting and replaying where an actor died."""
        answers = {}
        for index, item in sent.items():
            answer = self._resolve(item, deadline, restart_timeout, allow_partial)
            if answer is None:
                missing.append(index)
            else:
                answers[index] = answer
        return answers

    def _resolve(self, item: _Sent, deadline: float, restart_timeout: float | None,
                 allow_partial: bool) -> tuple | None:
        shard = item.shard
        deaths = 0
        restart_deadline = math.inf
        while True:
            try:
                if not self._is_up(shard):
                    restart_deadline = min(deadline, _deadline(restart_timeout))
                    try:
                        ray.get(shard.ready, timeout=_remaining(restart_deadline))
                    except ray_errors.GetTimeoutError:
                        bound = "the call's timeout" if restart_timeout is None \
                            else f"{restart_timeout:g} s"
                        raise self._unavailable(
                            shard, f"is restarting and was not back within {bound}") from None
                    except ray_errors.RayTaskError as exc:
                        shard.actor = None  # the next call tries again from the directory
                        raise self._unavailable(
                            shard, f"could not be reloaded: {_cause(exc)}") from None
                status, version, out, seconds, count = ray.get(
                    item.ref, timeout=_remaining(min(deadline, restart_deadline)))
                if status == "stale":
                    if item.kind == "apply" and version > shard.version:
                        if version == shard.version + 1 and item.name != "save":
                            return None, seconds, count  # applied; only the answer was lost
                        raise MRLError(f"shard {shard.index} ({shard.path}) is at version "
                                       f"{version}, ahead of the driver ({shard.version})")
                    self._replay(shard, item.actor, version, deadline)
                    item = self._submit(shard, item.kind, item.name, item.args, item.kwargs)
                    continue
                return out, seconds, count
            except ray_errors.GetTimeoutError:
                if allow_partial:
                    return None
                raise self._unavailable(shard, "did not answer in time") from None
            except ray_errors.ActorUnavailableError:
                # a transient network problem, not a death: try the same actor again
                if time.monotonic() > min(deadline, _deadline(restart_timeout)):
                    raise self._unavailable(shard, "stayed unreachable") from None
                time.sleep(0.05)
                item = self._submit(shard, item.kind, item.name, item.args, item.kwargs)
            except ray_errors.RayActorError:
                deaths += 1
                self._restart(shard, item.actor)
                if allow_partial:
                    return None
                if deaths >= _MAX_ATTEMPTS:
                    raise self._unavailable(shard, f"died {deaths} times during one call"
                                            ) from None
                item = self._submit(shard, item.kind, item.name, item.args, item.kwargs)
            except ray_errors.RayTaskError as exc:
                cause = _cause(exc)
                if isinstance(cause, _ShardNotLoaded):
                    with shard.lock:
                        if shard.actor is item.actor:
                            shard.actor = None
                    if allow_partial:
                        return None
                    raise self._unavailable(shard, f"could not be reloaded: {cause}") from None
                raise cause from None

    def _replay(self, shard: _Shard, actor: Any, version: int, deadline: float) -> None:
        """Apply the writes a fresh actor missed (those after the last save)."""
        with shard.lock:
            while version < shard.version:
                position = version - shard.base
                if position < 0:
                    raise MRLError(f"shard {shard.index} ({shard.path}) is at version "
                                   f"{version}, older than its directory ({shard.base})")
                op, args = shard.journal[position]
                status, version, *_ = ray.get(actor.apply.remote(version, op, args),
                                              timeout=_remaining(deadline))

    def _write(self, writes: dict, *, keep_going: bool = False) -> dict:
        """Apply one write per shard (in parallel); journal it; handle ``'save'``.

        Returns the errors per shard when ``keep_going``; raises the first one otherwise.
        """
        with self._write_lock:
            calls = {i: ("apply", op, args, {}) for i, (op, args) in writes.items()}
            sent, _ = self._send_each(calls, False)
            failures: dict[int, BaseException] = {}
            for index, item in sent.items():
                try:
                    self._resolve(item, math.inf, self._restart_timeout, False)
                except (ValueError, TypeError, MRLError) as exc:
                    if not keep_going:
                        for other in list(sent)[list(sent).index(index) + 1:]:
                            self._settle(sent[other])
                        raise
                    failures[index] = exc
                    continue
                self._settle(item, resolved=True)
            return failures

    def _settle(self, item: _Sent, resolved: bool = False) -> None:
        """Record a write that succeeded on its shard (resolving it first if needed)."""
        if not resolved:
            try:
                self._resolve(item, math.inf, self._restart_timeout, False)
            except (ValueError, TypeError, MRLError):
                return
        shard = item.shard
        if item.name == "save":
            with shard.lock:  # a restart from now on loads the new directory
                shard.path = Path(item.args[0])
                shard.base = shard.version
                shard.journal.clear()
        else:
            shard.journal.append((item.name, item.args))


def _cause(exc: BaseException) -> BaseException:
    """The exception a remote call raised, without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc
