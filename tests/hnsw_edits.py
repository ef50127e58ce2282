"""Structured edits of hnswlib graph files, for the tests of ``check_hnsw_file``.

:class:`Graph` parses an hnswlib 0.8 file into its header, level-0 words and per-element
upper-level blocks, lets a test change them, and writes the bytes back, so an edit stays
*consistent* (the layout still adds up) and reaches the structural checks rather than being
caught as truncation. :func:`random_edit` picks one of the edits the attack on the landed
code used (entry points, levels, links, labels, delete marks, header fields).
"""

from __future__ import annotations

import numpy as np

HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"),
    ("size_data_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
    ("max_level", "<i4"), ("entry_point", "<u4"), ("max_m", "<u8"), ("max_m0", "<u8"),
    ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])


class Graph:
    """An hnswlib file, editable: ``header`` (structured, one row), ``level0`` (count, words)
    uint32, ``upper`` (list of (levels, maxM + 1) uint32 arrays, one per element)."""

    def __init__(self, raw: bytes) -> None:
        self.header = np.frombuffer(raw[: HEADER.itemsize], dtype=HEADER).copy()
        count = int(self.header["count"][0])
        per = int(self.header["size_data_per_element"][0])
        self.max_m = int(self.header["max_m"][0])
        self.max_m0 = int(self.header["max_m0"][0])
        self._label_word = int(self.header["label_offset"][0]) // 4
        start = HEADER.itemsize
        self.level0 = np.frombuffer(raw, dtype="<u4", count=count * per // 4,
                                    offset=start).reshape(count, per // 4).copy()
        offset = start + count * per
        self.upper = []
        width = self.max_m + 1
        for _ in range(count):
            nbytes = int(np.frombuffer(raw, dtype="<u4", count=1, offset=offset)[0])
            offset += 4
            words = np.frombuffer(raw, dtype="<u4", count=nbytes // 4, offset=offset).copy()
            self.upper.append(words.reshape(-1, width))
            offset += nbytes
        self.trailing = raw[offset:]

    @property
    def count(self) -> int:
        return self.level0.shape[0]

    def levels(self) -> np.ndarray:
        return np.array([block.shape[0] for block in self.upper], dtype=np.int64)

    def labels_word(self) -> int:
        """Index of the low word of the label in a level-0 row (as parsed)."""
        return self._label_word

    def tobytes(self) -> bytes:
        parts = [self.header.tobytes(), self.level0.tobytes()]
        for block in self.upper:
            parts.append(np.uint32(block.size * 4).tobytes())
            parts.append(block.astype("<u4").tobytes())
        parts.append(self.trailing)
        return b"".join(parts)


def random_edit(graph: Graph, rng: np.random.Generator) -> str:
    """Apply one structured random edit in place; return its name."""
    levels = graph.levels()
    count = graph.count
    kind = int(rng.integers(0, 14))
    if kind == 0:  # entry point moved to a random element
        graph.header["entry_point"] = rng.integers(0, count + 2)
        return "entry_point"
    if kind == 1:  # max level changed
        graph.header["max_level"] = int(graph.header["max_level"][0]) + int(rng.integers(-2, 3))
        return "max_level"
    if kind == 2:  # a header size/parameter field
        field = str(rng.choice(["ef_construction", "mult", "m", "max_m", "max_m0",
                                "max_elements", "offset_data", "label_offset"]))
        if field == "mult":
            graph.header[field] = float(rng.choice([0.0, -1.0, 1e6, np.nan, 0.5, 1.4427]))
        else:
            value = int(graph.header[field][0])
            graph.header[field] = max(0, value + int(rng.choice([-value, -1, 1, value, 1 << 40])))
        return field
    with_upper = np.flatnonzero(levels > 0)
    if kind in (3, 4, 5) and with_upper.size:
        element = int(rng.choice(with_upper))
        block = graph.upper[element]
        level = int(rng.integers(0, block.shape[0]))
        if kind == 3:  # a neighbour replaced by any element (often one lacking that level)
            # an earlier edit may have set the count past the block: stay inside it
            links = min(int(block[level, 0] & 0xFFFF), block.shape[1] - 1)
            slot = 1 + int(rng.integers(0, max(1, links)))
            block[level, slot] = rng.integers(0, count + 3)
            return "upper_neighbour"
        if kind == 4:  # the link count changed
            block[level, 0] = int(rng.choice([0, graph.max_m, graph.max_m + 1, 0xFFFF,
                                              int(rng.integers(0, 1 << 32))]))
            return "upper_count"
        # a level added or removed (the layout still adds up)
        if rng.random() < 0.5 and block.shape[0] > 0:
            graph.upper[element] = block[:-1]
        else:
            extra = np.zeros((1, graph.max_m + 1), dtype=np.uint32)
            extra[0, 0] = int(rng.integers(0, graph.max_m + 1))
            extra[0, 1:] = rng.integers(0, count, graph.max_m)
            graph.upper[element] = np.vstack([block, extra])
        return "levels"
    element = int(rng.integers(0, count))
    row = graph.level0[element]
    if kind == 6:  # a level-0 neighbour
        links = min(int(row[0] & 0xFFFF), graph.max_m0)
        slot = 1 + int(rng.integers(0, max(1, links)))
        row[slot] = int(rng.choice([rng.integers(0, count), count, count + 1, 0xFFFFFFFF]))
        return "level0_neighbour"
    if kind == 7:  # the level-0 count
        row[0] = (row[0] & 0xFFFF0000) | int(rng.choice([0, graph.max_m0, graph.max_m0 + 1,
                                                         0xFFFF]))
        return "level0_count"
    if kind == 8:  # the delete mark flipped
        row[0] ^= 1 << 16
        return "delete_mark"
    if kind == 9:  # other flag bits
        row[0] |= 1 << int(rng.integers(17, 32))
        return "flags"
    if kind == 10:  # a label set to another element's or beyond the range
        word = graph.labels_word()
        row[word] = int(rng.choice([rng.integers(0, count), count, 1 << 31]))
        return "label"
    if kind == 11:  # a vector value made non-finite or huge
        first = 1 + graph.max_m0
        row[first + int(rng.integers(0, 2))] = np.float32(rng.choice([np.inf, np.nan, 1e30])
                                                          ).view(np.uint32)
        return "vector"
    if kind == 12:  # trailing or missing bytes
        graph.trailing = bytes(int(rng.integers(1, 9)))
        return "trailing"
    # a random byte anywhere in the upper-level blocks (the attack's 3-in-400 segfaults)
    if with_upper.size:
        element = int(rng.choice(with_upper))
        flat = graph.upper[element].reshape(-1).view(np.uint8)
        flat[int(rng.integers(0, flat.size))] ^= int(rng.integers(1, 256))
        return "upper_byte"
    return "none"
