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


@numba.njit(["i8(u4[:, ::1], u8[::1], i8, i4[::1], u4[:, ::1], i8, i4[:, ::1], i4[:, ::1], "
             "i8[::1], i8[::1])"], cache=True, nogil=True)
def relabel_links(level0_words, labels, capacity, levels, upper_blocks, max_m, out_level0,
                  out_upper, out_upper_start, out_row_of_internal):
    """Fill ``out_level0`` / ``out_upper`` / ``out_upper_start`` from hnswlib's link lists.

    ``level0_words``: (count, maxM0 + 1) uint32 per element, the link header (count in its low
    16 bits) then internal ids; ``labels``: each element's label (its row); ``levels``: level
    of each element; ``upper_blocks``: (sum of levels, max_m + 1) uint32 blocks, element by
    element, level 1 first. Returns :data:`OK` or an error code.
    """
    count = level0_words.shape[0]
    max_m0 = level0_words.shape[1] - 1
    for internal in range(count):
        label = labels[internal]
        if label >= np.uint64(capacity):
            return BAD_LABEL
        out_row_of_internal[internal] = np.int64(label)
    start = 0
    for internal in range(count):
        row = out_row_of_internal[internal]
        n_links = np.int64(level0_words[internal, 0] & 0xFFFF)
        if n_links > max_m0:
            return BAD_LEVEL0
        out_level0[row, 0] = n_links
        for j in range(n_links):
            target = np.int64(level0_words[internal, 1 + j])
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
