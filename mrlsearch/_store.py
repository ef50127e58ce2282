"""The vector store of an index: vectors, prefix norms, codes, ids and tombstones by row.

Rows are mrlsearch's internal positions (the labels the HNSW graphs hold); ids are the user's.
Removing a row only tombstones it. Nothing here locks: :class:`~mrlsearch.Searcher` calls the
writers under its write lock and the readers under its read lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from . import _codes, _kernels
from ._payloads import EncodedPayloads, PayloadColumn

__all__: list[str] = []

#: Values re-encoded at a time when the int8 scales widen (4 MiB of float32 temporaries: blocks
#: of 64k rows, 64 MiB at 256 dims, took 8x as long inside a build, in fresh pages each time).
_REENCODE_VALUES = 1 << 20
#: Ids are int64 and non-negative: the largest is 2**63 - 1.
ID_LIMIT = 1 << 63


def consecutive_ids(next_id: int, count: int) -> np.ndarray:
    """``count`` ids from ``next_id`` on, or ``ValueError`` if they would pass 2**63 - 1.

    Examples
    --------
    >>> consecutive_ids(5, 3).tolist()
    [5, 6, 7]
    """
    if next_id + count > ID_LIMIT:
        raise ValueError(f"no {count} consecutive ids are left after {next_id - 1} (ids stop at "
                         f"2**63 - 1): pass 'ids'")
    return np.arange(next_id, next_id + count, dtype=np.int64)


class VectorStore:
    """Rows of vectors with everything the search kernels read about them.

    Parameters
    ----------
    dim : int
        Full dim.
    dims : tuple of int
        Nesting dims; ``norms[:, j]`` is the norm of the prefix at ``dims[j]``.
    dtype : {'float32', 'float16'}
    code_dims : tuple of int
        Prefix dims that keep codes (the graph dims).
    precisions : tuple of str
        Code kinds kept at each of ``code_dims`` (``'int8'``, ``'binary'``).
    normalise_codes : bool
        Codes of the normalised prefix (cosine).
    """

    def __init__(self, dim: int, dims: tuple[int, ...], *, dtype: str,
                 code_dims: Sequence[int] = (), precisions: Sequence[str] = (),
                 normalise_codes: bool = False) -> None:
        self.dim = dim
        self.dims = dims
        self.dims_array = np.asarray(dims, dtype=np.int64)
        self.dtype = dtype
        self.code_dims = tuple(code_dims)
        self.precisions = tuple(precisions)
        self.normalise_codes = normalise_codes
        self.rows = 0
        self.vectors = np.empty((0, dim), dtype=dtype)
        self.norms = np.empty((0, len(dims)), dtype=np.float32)
        self.ids = np.empty(0, dtype=np.int64)
        self.deleted = np.empty(0, dtype=bool)
        self.row_of: dict[int, int] = {}
        self.next_id = 0
        self.version = 0  # bumped by every write
        self._sorted_ids: tuple[int, np.ndarray, np.ndarray] | None = None
        self.int8: dict[int, np.ndarray] = {}
        self.scales: dict[int, np.ndarray] = {}
        self.binary: dict[int, np.ndarray] = {}
        #: the optional payload column, created by the first add that brings payloads
        self.payloads: PayloadColumn | None = None
        #: inside :meth:`one_reencode`: per code dim, the rows encoded with outgrown scales
        self._stale_int8: dict[int, int] | None = None
        self.allocate_codes(0)

    # ---------------------------------------------------------------- sizes
    @property
    def capacity(self) -> int:
        return self.vectors.shape[0]

    @property
    def live(self) -> int:
        return len(self.row_of)

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.deleted[: self.rows])

    def nbytes(self) -> dict[str, int]:
        """Bytes held per part (the arrays' sizes; for a memory map, see ``resident``)."""
        codes = sum(a.nbytes for a in self.int8.values()) + sum(
            a.nbytes for a in self.binary.values()) + sum(a.nbytes for a in self.scales.values())
        sizes = {"vectors": self.vectors.nbytes, "norms": self.norms.nbytes, "codes": codes,
                 "ids": self.ids.nbytes + self.deleted.nbytes}
        if self.payloads is not None:
            sizes["payloads"] = self.payloads.nbytes()
        return sizes

    # ---------------------------------------------------------------- writing
    def reserve(self, rows_needed: int) -> bool:
        """Grow the arrays to hold ``rows_needed`` rows; returns whether they grew."""
        capacity = self.capacity
        if rows_needed <= capacity:
            return False
        new_capacity = max(rows_needed, 2 * capacity, 1024)
        used = self.rows

        def grown(array: np.ndarray, fill=None) -> np.ndarray:
            shape = (new_capacity,) + array.shape[1:]
            out = np.empty(shape, dtype=array.dtype) if fill is None else np.full(shape, fill,
                                                                                 array.dtype)
            out[:used] = array[:used]
            return out

        self.vectors = grown(self.vectors)
        self.norms = grown(self.norms)
        self.ids = grown(self.ids)
        self.deleted = grown(self.deleted, True)
        for store in (self.int8, self.binary):
            for prefix_dim in store:
                store[prefix_dim] = grown(store[prefix_dim], 0)
        if self.payloads is not None:
            self.payloads.reserve(new_capacity, used)
        return True

    def allocate_codes(self, capacity: int) -> None:
        """Empty (zero) codes for ``capacity`` rows at every code dim."""
        for prefix_dim in self.code_dims:
            if "int8" in self.precisions:
                self.int8[prefix_dim] = np.zeros((capacity, prefix_dim), dtype=np.int8)
            if "binary" in self.precisions:
                self.binary[prefix_dim] = np.zeros((capacity, (prefix_dim + 63) // 64),
                                                   dtype=np.uint64)

    def prefix_norms(self, batch: np.ndarray) -> np.ndarray:
        """(n, len(dims)) float32 norms of each row's prefix at every nesting dim."""
        return _kernels.prefix_norms(np.ascontiguousarray(batch, dtype=np.float32),
                                     self.dims_array)

    def append(self, stored: np.ndarray, ids: np.ndarray,
               payloads: EncodedPayloads | None = None) -> np.ndarray:
        """Write rows after the last one (capacity reserved by the caller); returns them.

        ``payloads`` (encoded, one per row) creates the payload column on first use; rows
        added without them have no payload.
        """
        start, stop = self.rows, self.rows + stored.shape[0]
        if payloads is not None and self.payloads is None:
            self.payloads = PayloadColumn(self.capacity)
        if self.payloads is not None:
            self.payloads.append(start, payloads, stop - start)
        as_float = stored.astype(np.float32, copy=False)
        norms = self.prefix_norms(as_float)
        self.vectors[start:stop] = stored
        self.norms[start:stop] = norms
        self.ids[start:stop] = ids
        self.deleted[start:stop] = False
        self.encode(as_float, norms, start)
        self.rows = stop
        self.version += 1
        rows = np.arange(start, stop, dtype=np.int64)
        self.row_of.update(zip(ids.tolist(), rows.tolist()))
        if ids.size:
            self.next_id = max(self.next_id, int(ids.max()) + 1)
        return rows

    def encode(self, as_float: np.ndarray, norms: np.ndarray, start: int) -> None:
        """Codes of rows ``start..``. The int8 scales come from the first rows ever encoded;
        rows that outgrow them widen them, and the rows before ``start`` are re-encoded (one
        row first, as in a stream of single adds, would otherwise clip every later one)."""
        stop = start + as_float.shape[0]
        for prefix_dim in self.code_dims:
            column = self.dims.index(prefix_dim)
            prefix = _codes.normalised_prefix(
                as_float, prefix_dim, norms[:, column] if self.normalise_codes else None)
            if prefix_dim in self.int8:
                scales = self.scales.get(prefix_dim)
                if scales is None:
                    scales = self.scales[prefix_dim] = _codes.int8_scales(prefix)
                else:
                    widened = _codes.widened_scales(prefix, scales)
                    if widened is not None:
                        scales = self.scales[prefix_dim] = widened
                        if self._stale_int8 is None:
                            self._reencode_int8(prefix_dim, column, start)
                        else:  # rows before ``start``: once, when the bulk write ends
                            self._stale_int8[prefix_dim] = start
                self.int8[prefix_dim][start:stop] = _codes.encode_int8(prefix, scales)
            if prefix_dim in self.binary:
                self.binary[prefix_dim][start:stop] = _codes.encode_binary(prefix)

    @contextlib.contextmanager
    def one_reencode(self) -> Iterator[None]:
        """Within, rows that widen the int8 scales re-encode the earlier rows once, at the end.

        A bulk write comes in chunks; each chunk with a new largest value used to re-encode
        every row before it (on 120k real embeddings in chunks of 10k: 11 passes, 2.2 s of a
        build). The codes are consistent again when the block exits, by error too.
        """
        if self._stale_int8 is not None:  # nested: the outer block re-encodes
            yield
            return
        self._stale_int8 = {}
        try:
            yield
        finally:
            stale, self._stale_int8 = self._stale_int8, None
            for prefix_dim, stop in stale.items():
                if prefix_dim in self.int8:
                    self._reencode_int8(prefix_dim, self.dims.index(prefix_dim), stop)

    def _reencode_int8(self, prefix_dim: int, column: int, stop: int) -> None:
        """Encode rows ``0..stop`` again with the current scales, a block at a time."""
        scales, codes = self.scales[prefix_dim], self.int8[prefix_dim]
        block = max(1, _REENCODE_VALUES // prefix_dim)
        for lo in range(0, stop, block):
            hi = min(stop, lo + block)
            prefix = _codes.normalised_prefix(
                self.vectors[lo:hi], prefix_dim,
                self.norms[lo:hi, column] if self.normalise_codes else None)
            codes[lo:hi] = _codes.encode_int8(prefix, scales)

    def tombstone(self, rows: np.ndarray) -> None:
        self.version += 1
        for row in rows.tolist():
            self.deleted[row] = True
            del self.row_of[int(self.ids[row])]

    def drop_codes(self, keep_dims: Sequence[int]) -> None:
        """Forget the codes of dims not in ``keep_dims``."""
        self.code_dims = tuple(d for d in self.code_dims if d in keep_dims)
        for store in (self.int8, self.scales, self.binary):
            for prefix_dim in [d for d in store if d not in keep_dims]:
                del store[prefix_dim]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ids (-1 for ids not in the store).

        A few ids are looked up in :attr:`row_of`; a long list (a search filter of many ids)
        is matched against the live ids sorted once per version of the store, since a Python
        lookup per id cost ~0.3 s per million ids."""
        if len(ids) <= _DICT_LOOKUPS:
            get = self.row_of.get
            return np.fromiter((get(int(i), -1) for i in ids), dtype=np.int64, count=len(ids))
        sorted_ids, sorted_rows = self._sorted_live_ids()
        if not sorted_ids.size:
            return np.full(len(ids), -1, dtype=np.int64)
        wanted = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, wanted), sorted_ids.size - 1)
        return np.where(sorted_ids[at] == wanted, sorted_rows[at], -1)

    def _sorted_live_ids(self) -> tuple[np.ndarray, np.ndarray]:
        cached = self._sorted_ids
        if cached is None or cached[0] != self.version:
            rows = self.live_rows()
            live_ids = self.ids[rows]
            order = np.argsort(live_ids, kind="stable")
            cached = (self.version, live_ids[order], rows[order])
            self._sorted_ids = cached  # one assignment: concurrent readers see old or new
        return cached[1], cached[2]

    # ---------------------------------------------------------------- kernels' view
    def kernel_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The vectors as the kernels take them, with the float16 lookup table."""
        if self.dtype == "float16":
            return np.asarray(self.vectors.view(np.uint16)), _kernels.HALF_TABLE
        return np.asarray(self.vectors), _kernels.NO_TABLE

    def kernel_codes(self, prefix_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(int8 codes, scales, binary codes) at ``prefix_dim``, empty where not kept."""
        return (self.int8.get(prefix_dim, _EMPTY_INT8), self.scales.get(prefix_dim, _EMPTY_F4),
                self.binary.get(prefix_dim, _EMPTY_BITS))


#: Id lists up to this long are looked up one by one (no sort of the live ids).
_DICT_LOOKUPS = 256
_EMPTY_INT8 = np.zeros((0, 0), dtype=np.int8)
_EMPTY_F4 = np.zeros(0, dtype=np.float32)
_EMPTY_BITS = np.zeros((0, 0), dtype=np.uint64)
