"""Numba kernels that validate an hnswlib graph file before hnswlib reads it.

hnswlib trusts its files: an out-of-range neighbour id, an entry point without the levels
its header claims or a link to an element that lacks that level makes it read or write out of
bounds. These kernels walk the raw bytes of a file (little-endian, read byte by byte so any
buffer works, aligned or not, writable or read-only) and return an error code and the
internal id of the first element that is wrong; :func:`mrlsearch._format.check_hnsw_file`
turns the code into a :class:`~mrlsearch.FormatError`.

Layout of an hnswlib 0.8 file after its 96-byte header: ``count`` level-0 records of
``per_element`` bytes (a uint32 whose low 16 bits are the neighbour count and whose bit 16
is the delete mark, ``maxM0`` uint32 neighbour ids, the vector as float32, a uint64 label),
then per element a uint32 byte size and that many bytes of upper-level blocks, one per level
above 0, each a uint32 count and ``maxM`` uint32 neighbour ids.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types

__all__: list[str] = []

#: error codes returned by the kernels (0: no error)
LEVEL0_COUNT = 1
LEVEL0_FLAGS = 2
LEVEL0_TARGET = 3
DATA_NOT_FINITE = 4
LABEL_RANGE = 5
LABEL_REPEATED = 6
DELETE_MARK = 7
LINKS_TRUNCATED = 8
LINKS_SIZE = 9
LEVEL_ABOVE_MAX = 10
UPPER_COUNT = 11
UPPER_FLAGS = 12
UPPER_TARGET = 13
UPPER_TARGET_LEVEL = 14

_BUFFERS = (types.Array(types.uint8, 1, "C"), types.Array(types.uint8, 1, "C", readonly=True))
_MASKS = (types.Array(types.boolean, 1, "C"), types.Array(types.boolean, 1, "C", readonly=True))
_I8_ARRAY = types.Array(types.int64, 1, "C")
_I8 = types.int64


@numba.njit([types.int64(buffer, _I8) for buffer in _BUFFERS], cache=True, nogil=True,
            inline="always")
def _u32(buffer, offset):
    """The little-endian uint32 at ``offset``."""
    return (np.int64(buffer[offset]) | (np.int64(buffer[offset + 1]) << 8)
            | (np.int64(buffer[offset + 2]) << 16) | (np.int64(buffer[offset + 3]) << 24))


@numba.njit(
    [types.int64(buffer, _I8, _I8, _I8, _I8, _I8, _I8, _I8, _I8, mask, types.boolean,
                 _I8_ARRAY, _I8_ARRAY)
     for buffer in _BUFFERS for mask in _MASKS],
    cache=True, nogil=True,
)
def hnsw_level0(buffer, start, count, per_element, max_m0, offset_data, dim, label_offset,
                n_labels, deleted, check_deleted, labels, where):
    """Check the level-0 records; fill ``labels``; return an error code (0: valid).

    Per element: neighbour count <= ``max_m0``; the flag bytes hold nothing but the delete
    mark; every neighbour id < ``count``; the vector is finite; the label is < ``n_labels``
    and unique; with ``check_deleted`` the delete mark equals ``deleted[label]``.
    ``where[0]`` receives the internal id of the first bad element.
    """
    seen = np.zeros(n_labels, dtype=np.bool_)
    for i in range(count):
        base = start + i * per_element
        links = np.int64(buffer[base]) | (np.int64(buffer[base + 1]) << 8)
        where[0] = i
        if links > max_m0:
            return LEVEL0_COUNT
        if (buffer[base + 2] & 0xFE) != 0 or buffer[base + 3] != 0:
            return LEVEL0_FLAGS
        for j in range(links):
            if _u32(buffer, base + 4 + 4 * j) >= count:
                return LEVEL0_TARGET
        data = base + offset_data
        for j in range(dim):
            # float32 is inf or NaN when its 8 exponent bits are all ones
            high = buffer[data + 4 * j + 3]
            second = buffer[data + 4 * j + 2]
            if (high & 0x7F) == 0x7F and (second & 0x80) != 0:
                return DATA_NOT_FINITE
        p = base + label_offset
        if buffer[p + 7] != 0 or buffer[p + 6] != 0 or buffer[p + 5] != 0 or buffer[p + 4] >= 128:
            return LABEL_RANGE
        label = _u32(buffer, p) | (np.int64(buffer[p + 4]) << 32)
        if label >= n_labels:
            return LABEL_RANGE
        if seen[label]:
            return LABEL_REPEATED
        seen[label] = True
        labels[i] = label
        if check_deleted and ((buffer[base + 2] & 1) != 0) != deleted[label]:
            return DELETE_MARK
    return 0


@numba.njit(
    [types.int64(buffer, _I8, _I8, _I8, _I8, _I8_ARRAY, _I8_ARRAY, _I8_ARRAY)
     for buffer in _BUFFERS],
    cache=True, nogil=True,
)
def hnsw_levels(buffer, start, count, size_links, max_level, levels, offsets, where):
    """Walk the per-element link-list sizes; fill ``levels`` and ``offsets`` (of each
    element's first upper block); return the end offset, or minus an error code."""
    offset = start
    size = buffer.shape[0]
    for i in range(count):
        where[0] = i
        if offset + 4 > size:
            return -LINKS_TRUNCATED
        nbytes = _u32(buffer, offset)
        offset += 4
        if nbytes % size_links != 0:
            return -LINKS_SIZE
        level = nbytes // size_links
        if level > max_level:
            return -LEVEL_ABOVE_MAX
        if offset + nbytes > size:
            return -LINKS_TRUNCATED
        levels[i] = level
        offsets[i] = offset
        offset += nbytes
    return offset


@numba.njit(
    [types.int64(buffer, _I8, _I8, _I8, _I8_ARRAY, _I8_ARRAY, _I8_ARRAY) for buffer in _BUFFERS],
    cache=True, nogil=True,
)
def hnsw_upper_links(buffer, count, size_links, max_m, levels, offsets, where):
    """Check every upper-level block: count <= ``max_m``, no flag bits, each neighbour id <
    ``count`` and holding at least the block's level. Return an error code (0: valid)."""
    for i in range(count):
        where[0] = i
        for level in range(1, levels[i] + 1):
            base = offsets[i] + (level - 1) * size_links
            links = np.int64(buffer[base]) | (np.int64(buffer[base + 1]) << 8)
            if links > max_m:
                return UPPER_COUNT
            if buffer[base + 2] != 0 or buffer[base + 3] != 0:
                return UPPER_FLAGS
            for j in range(links):
                neighbour = _u32(buffer, base + 4 + 4 * j)
                if neighbour >= count:
                    return UPPER_TARGET
                if levels[neighbour] < level:
                    return UPPER_TARGET_LEVEL
    return 0
