"""Numba kernels that copy hnswlib's link lists into the row-indexed arrays the search reads.

hnswlib numbers elements in insertion order (internal ids) and stores each element's level-0
links inside its level-0 record, its upper-level links in one block per level. The search
kernels index everything by row (the label mrlsearch gave the element), so the copy relabels
every link from internal id to row, and checks each one on the way: a link to an element that
does not exist, or that does not reach the link's level, is refused (returns an error code)
rather than followed later.
"""

from __future__ import annotations

import numba
import numpy as np

__all__: list[str] = []

OK = 0
BAD_LABEL = 1
BAD_LEVEL0 = 2
BAD_UPPER = 3
BAD_UPPER_LEVEL = 4


@numba.njit(["i8(u1[:, ::1], i8, i8, i8, i4[::1], u4[:, ::1], i8, i4[:, ::1], i4[:, ::1], "
             "i8[::1], i8[::1])"], cache=True, nogil=True)
def relabel_links(records, label_offset, max_m0, capacity, levels, upper_blocks, max_m,
                  out_level0, out_upper, out_upper_start, out_row_of_internal):
    """Fill ``out_level0`` / ``out_upper`` / ``out_upper_start`` from hnswlib's records.

    ``records``: (count, size_data_per_element) level-0 records (uint32 link header with the
    count in its low 16 bits, ``max_m0`` uint32 internal ids, ..., uint64 label at
    ``label_offset``); ``levels``: level of each element; ``upper_blocks``: (sum of levels,
    max_m + 1) uint32 blocks, element by element, level 1 first. Returns :data:`OK` or an
    error code.
    """
    count = records.shape[0]
    for internal in range(count):
        label = np.int64(0)
        for byte in range(8):
            label |= np.int64(records[internal, label_offset + byte]) << (8 * byte)
        if label < 0 or label >= capacity:
            return BAD_LABEL
        out_row_of_internal[internal] = label
    start = 0
    for internal in range(count):
        row = out_row_of_internal[internal]
        n_links = np.int64(records[internal, 0]) | (np.int64(records[internal, 1]) << 8)
        if n_links > max_m0:
            return BAD_LEVEL0
        out_level0[row, 0] = n_links
        for j in range(n_links):
            base = 4 + 4 * j
            target = (np.int64(records[internal, base])
                      | (np.int64(records[internal, base + 1]) << 8)
                      | (np.int64(records[internal, base + 2]) << 16)
                      | (np.int64(records[internal, base + 3]) << 24))
            if target >= count:
                return BAD_LEVEL0
            out_level0[row, 1 + j] = out_row_of_internal[target]
        level = levels[internal]
        if level > 0:
            out_upper_start[row] = start
            for lv in range(1, level + 1):
                block = start + lv - 1
                n_up = np.int64(upper_blocks[block, 0] & 0xFFFF)
                if n_up > max_m:
                    return BAD_UPPER
                out_upper[block, 0] = n_up
                for j in range(n_up):
                    target = np.int64(upper_blocks[block, 1 + j])
                    if target >= count:
                        return BAD_UPPER
                    if levels[target] < lv:
                        return BAD_UPPER_LEVEL
                    out_upper[block, 1 + j] = out_row_of_internal[target]
            start += level
    return OK
