"""Where a sharded build reads its vectors (an array, a .npy file or parquet), and the Ray
task that builds one shard from its rows."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from .._errors import DimensionError, FormatError
from ..searcher import Searcher
from ._actor import with_defaults

__all__: list[str] = []


@dataclass
class Source:
    kind: str  # 'array', 'npy' or 'parquet'
    n: int
    dim: int
    data: Any = None  # the array (kind 'array')
    path: str | None = None  # kind 'npy'
    files: list[str] = field(default_factory=list)  # kind 'parquet'
    column: str = "vector"
    # parquet: (file, row group, first global row, rows) for every row group
    groups: list[tuple[str, int, int, int]] = field(default_factory=list)


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow comes with the extra
        raise ImportError("reading parquet needs pyarrow: pip install 'mrlsearch[distributed]'"
                          ) from exc
    return pyarrow, pyarrow.parquet


def parquet_files(source: Any) -> list[str] | None:
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


def vectors_from_arrow(column: Any, dim: int | None, where: str) -> np.ndarray:
    """(n, dim) float32 from a list / large_list / fixed_size_list column."""
    pa, _ = import_pyarrow()
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


def _check_numeric_matrix(array: np.ndarray, what: str) -> None:
    """Refuse, naming ``what``, an array that is not (n, dim) of floats or ints."""
    if array.ndim != 2:
        raise DimensionError(f"{what} must have shape (n, dim) (got shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{what} must be an array of numbers (got dtype {array.dtype})")


def describe_source(source: Any, vector_column: str, id_column: str | None
                     ) -> tuple[Source, np.ndarray | None]:
    """Look at ``source`` without reading its vectors; return it and the ids of its column."""
    if isinstance(source, np.ndarray):
        _check_numeric_matrix(source, "'source'")
        return Source("array", source.shape[0], source.shape[1], data=source), None
    files = parquet_files(source)
    if files is not None:
        _, pq = import_pyarrow()
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
                    dim = vectors_from_arrow(first.column(vector_column), None, path).shape[1]
                groups.append((path, group, total, rows))
                total += rows
        if total == 0 or dim is None:
            raise ValueError(f"'source' must hold at least one vector (got {len(files)} "
                             "empty parquet file(s))")
        described = Source("parquet", total, dim, files=files, column=vector_column,
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
        _check_numeric_matrix(array, path)
        return Source("npy", array.shape[0], array.shape[1], path=path), None
    if isinstance(source, (list, tuple)):
        return describe_source(np.asarray(source), vector_column, id_column)
    raise TypeError("'source' must be an array, a .npy path or parquet file(s) (got "
                    f"{type(source).__name__})")


def read_rows(source: Source, data: Any, rows: np.ndarray) -> np.ndarray:
    """The vectors at global positions ``rows`` (ascending), as an (len(rows), dim) array."""
    if source.kind == "array":
        return np.asarray(data[rows])
    if source.kind == "npy":
        return np.asarray(np.load(source.path, mmap_mode="r", allow_pickle=False)[rows])
    _, pq = import_pyarrow()
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
        block = vectors_from_arrow(table.column(source.column), source.dim, path)
        out[done:done + hi - lo] = block[rows[lo:hi] - first]
        done += hi - lo
    return out


def build_shard(source: Source, data: Any, rows: np.ndarray, ids: np.ndarray, options: dict,
                 path: str, threads: int) -> tuple[int, float]:
    """Ray task: build one shard from its rows of ``source`` and save it at ``path``."""
    started = time.perf_counter()
    vectors = read_rows(source, data, rows)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(rows[np.flatnonzero(~finite)[0]])
        raise ValueError(f"'source' must be finite (got NaN or inf in row {bad})")
    searcher = Searcher(source.dim, **options)
    searcher.add(vectors, ids, **with_defaults(searcher.add, {}, num_threads=threads,
                                                progress=False))
    del vectors
    searcher.save(path)
    return len(searcher), time.perf_counter() - started


build_task = ray.remote(build_shard)


