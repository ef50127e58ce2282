"""hnswlib's saved graph files, checked structurally (hnswlib's own save ignores write errors)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .._errors import FormatError
from ._files import open_regular, read_fd

__all__: list[str] = []

_HNSW_HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"),
    ("size_data_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
    ("max_level", "<i4"), ("entry_point", "<u4"), ("max_m", "<u8"), ("max_m0", "<u8"),
    ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])
#: hnswlib refuses (M = 1 divides by ln 1) or silently changes (M > 10000) other values
HNSW_M_RANGE = (2, 10_000)
HNSW_EF_CONSTRUCTION_RANGE = (1, 1 << 20)
#: a graph level above this is refused (hnswlib draws levels of about ln(n) / ln(M))
HNSW_MAX_LEVEL = 63
#: default cap of the capacity a graph file may declare, relative to its element count
HNSW_CAPACITY_FACTOR = 16
HNSW_CAPACITY_FLOOR = 1 << 20

_HNSW_ERRORS = {
    1: "a level-0 neighbour count above maxM0",
    2: "level-0 flag bits other than the delete mark",
    3: "a level-0 neighbour id beyond the element count",
    4: "a stored vector that is not finite",
    5: "a label beyond the element count",
    6: "a label that appears twice",
    7: "a delete mark that disagrees with the index's deleted rows",
    8: "truncated in the upper-level link lists",
    9: "an upper-level link list size that is not a whole number of levels",
    10: "an element level above the graph's max level",
    11: "an upper-level neighbour count above maxM",
    12: "upper-level count flag bits set",
    13: "an upper-level neighbour id beyond the element count",
    14: "an upper-level neighbour that does not exist at that level",
}


def check_hnsw_file(path: str | os.PathLike, *, rows: int, dim: int, M: int,
                    data: bytes | bytearray | memoryview | np.ndarray | None = None,
                    deleted: np.ndarray | None = None, ef_construction: int | None = None,
                    max_elements: int | None = None) -> None:
    """Check an hnswlib graph file completely before hnswlib reads it.

    hnswlib trusts its files: a foreign, truncated or edited graph can crash the process,
    even with valid checksums. Checked: every header field (layout sizes for ``dim`` and
    ``M``; ``M`` in :data:`HNSW_M_RANGE`, ``maxM = M``, ``maxM0 = 2 M``, ``mult = 1 / ln M``,
    ``ef_construction`` in range and equal to the given one, element count ``rows``, a
    capacity between ``rows`` and ``max_elements`` -- default ``max(16 rows, 2**20)``), every
    level-0 record (link count, flag bits, neighbour ids, finite vector, label < ``rows`` and
    unique, delete mark equal to ``deleted[label]`` when ``deleted`` is given), the level of
    every element (at most the max level, which the entry point must have and no element may
    exceed), and every upper-level link (count, and a neighbour that exists at that level),
    to the exact end of the file. An empty graph must have hnswlib's empty header
    (max level -1, no entry point).

    Parameters
    ----------
    path : path-like
        Named in errors; read (regular file, no symlink) unless ``data`` is given.
    rows, dim, M : int
        What the graph must hold: ``rows`` elements of ``dim`` floats, built with ``M``.
    data : bytes-like or uint8 array, optional
        The file's bytes, already read and verified (:meth:`SavedDirectory.read_buffer`, or
        the ``check`` of :meth:`SavedDirectory.private_copy` / :func:`seal_file`).
    deleted : bool array of shape (rows,), optional
        The index's deleted rows: the graph's delete marks must equal it.
    ef_construction : int, optional
        The value the header must hold.
    max_elements : int, optional
        Largest capacity the header may declare.

    Raises
    ------
    FormatError
        Naming the file and what is wrong.

    Examples
    --------
    >>> import hnswlib, numpy as np, tempfile, pathlib              # doctest: +SKIP
    >>> g = hnswlib.Index(space="ip", dim=4); g.init_index(10, M=8)  # doctest: +SKIP
    >>> g.add_items(np.eye(4, dtype=np.float32), np.arange(4))       # doctest: +SKIP
    >>> g.save_index("/tmp/g.bin")                                   # doctest: +SKIP
    >>> check_hnsw_file("/tmp/g.bin", rows=4, dim=4, M=8)            # doctest: +SKIP
    """
    from .. import _kernels_checks

    path = Path(path)

    def bad(what: str) -> FormatError:
        return FormatError(f"{path} is not a valid hnswlib graph for this index ({what})")

    if not HNSW_M_RANGE[0] <= M <= HNSW_M_RANGE[1]:
        raise bad(f"M={M} is outside {HNSW_M_RANGE[0]}..{HNSW_M_RANGE[1]}")
    if data is None:
        try:
            fd = open_regular(path)
        except FileNotFoundError as exc:
            raise bad("the file is missing") from exc
        try:
            buffer = read_fd(fd, path)
        finally:
            os.close(fd)
    elif isinstance(data, np.ndarray):
        buffer = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
    if deleted is not None:
        deleted = np.ascontiguousarray(deleted, dtype=np.bool_)
        if deleted.shape != (rows,):
            raise ValueError(f"'deleted' must have shape ({rows},) (got {deleted.shape})")
    if buffer.size < _HNSW_HEADER.itemsize:
        raise bad(f"{buffer.size} bytes, shorter than the header")
    header = np.frombuffer(buffer[: _HNSW_HEADER.itemsize].tobytes(), dtype=_HNSW_HEADER)[0]
    max_m0, max_m = 2 * M, M
    links0 = max_m0 * 4 + 4
    per_element = links0 + dim * 4 + 8
    expected = {"offset_level0": 0, "count": rows, "m": M, "max_m": max_m, "max_m0": max_m0,
                "offset_data": links0, "label_offset": links0 + dim * 4,
                "size_data_per_element": per_element}
    for field, value in expected.items():
        if int(header[field]) != value:
            raise bad(f"header field {field} is {int(header[field])}, expected {value}")
    mult = float(header["mult"])
    if not math.isfinite(mult) or abs(mult - 1.0 / math.log(M)) > 1e-9 / math.log(M):
        raise bad(f"mult is {mult!r}, expected 1/ln(M) = {1.0 / math.log(M)!r}")
    ef = int(header["ef_construction"])
    if not HNSW_EF_CONSTRUCTION_RANGE[0] <= ef <= HNSW_EF_CONSTRUCTION_RANGE[1] or (
            ef_construction is not None and ef != ef_construction):
        raise bad(f"ef_construction is {ef}"
                  + (f", expected {ef_construction}" if ef_construction is not None else ""))
    capacity = int(header["max_elements"])
    limit = (max(HNSW_CAPACITY_FACTOR * rows, HNSW_CAPACITY_FLOOR) if max_elements is None
             else max_elements)
    if not rows <= capacity <= max(limit, rows):
        raise bad(f"capacity {capacity} outside {rows}..{max(limit, rows)}")
    max_level = int(header["max_level"])
    entry = int(header["entry_point"])
    if rows == 0:
        if max_level != -1 or entry != 0xFFFFFFFF or buffer.size != _HNSW_HEADER.itemsize:
            raise bad(f"an empty graph with max level {max_level}, entry point {entry} and "
                      f"{buffer.size - _HNSW_HEADER.itemsize} bytes after the header")
        return
    if not 0 <= max_level <= HNSW_MAX_LEVEL or entry >= rows:
        raise bad(f"max level {max_level} / entry point {entry}")
    start = _HNSW_HEADER.itemsize
    level0_end = start + rows * per_element
    if buffer.size < level0_end:
        raise bad("truncated in the level-0 records")
    where = np.zeros(1, dtype=np.int64)
    labels = np.empty(rows, dtype=np.int64)
    mask = deleted if deleted is not None else np.zeros(1, dtype=np.bool_)
    code = _kernels_checks.hnsw_level0(buffer, start, rows, per_element, max_m0, links0, dim,
                                       links0 + dim * 4, rows, mask, deleted is not None,
                                       labels, where)
    if code:
        raise bad(f"{_HNSW_ERRORS[code]}, at element {int(where[0])}")
    levels = np.zeros(rows, dtype=np.int64)
    offsets = np.zeros(rows, dtype=np.int64)
    size_links = max_m * 4 + 4
    end = _kernels_checks.hnsw_levels(buffer, level0_end, rows, size_links, max_level, levels,
                                      offsets, where)
    if end < 0:
        raise bad(f"{_HNSW_ERRORS[int(-end)]}, at element {int(where[0])}")
    if end != buffer.size:
        raise bad(f"{buffer.size - end} trailing bytes")
    if int(levels[entry]) != max_level:
        raise bad(f"the entry point {entry} has {int(levels[entry])} levels, the header "
                  f"claims {max_level}")
    code = _kernels_checks.hnsw_upper_links(buffer, rows, size_links, max_m, levels, offsets,
                                            where)
    if code:
        raise bad(f"{_HNSW_ERRORS[code]}, at element {int(where[0])}")
