"""Measured resident memory of arrays, memory-mapped ones included."""

from __future__ import annotations

import mmap
import os

import numpy as np

__all__: list[str] = []

_PAGE = mmap.PAGESIZE


def _mapping_base(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, mmap.mmap) else None


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of ``array`` resident in this process's memory.

    An ordinary array counts whole (``nbytes``). For an array backed by a file mapping, the
    pages of its address range that ``/proc/self/smaps`` reports resident (``Rss``) are
    counted, so a memory-mapped vector file counts only what queries have paged in. Where
    smaps cannot be read, the whole size is returned (an upper bound).
    """
    if _mapping_base(array) is None or array.size == 0:
        return int(array.nbytes)
    start = array.__array_interface__["data"][0]
    stop = start + array.nbytes
    try:
        with open(f"/proc/{os.getpid()}/smaps", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return int(array.nbytes)
    total = 0
    current = None
    for line in lines:
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(part, 16) for part in head.split("-"))
            current = (lo, hi) if lo < stop and hi > start else None
        elif current is not None and line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
            lo, hi = current
            overlap = min(hi, stop) - max(lo, start)
            total += int(rss * overlap / (hi - lo))
    return min(total, int(array.nbytes))
