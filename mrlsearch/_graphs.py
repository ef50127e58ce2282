"""HNSW graphs: hnswlib builds them, mrlsearch searches a row-indexed copy of their links.

hnswlib keeps building (``add_items``, ``resize_index``, ``mark_deleted``): its insertion is
fast, multi-threaded and well tested. Searching goes through :mod:`mrlsearch._engine_kernels`,
which needs the links as arrays: :meth:`GraphSet.links` copies them out of
``hnswlib.Index.__getstate__()`` (level-0 block and upper-level link lists) the first time a
graph is searched after a write, relabelled from hnswlib's internal ids to mrlsearch's rows
(the labels the graph was given), so the kernels read vectors, norms and codes by row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

import hnswlib
import numpy as np

from . import _graph_kernels
from ._errors import FormatError

__all__: list[str] = []

_HNSW_SPACE = {"cosine": "cosine", "ip": "ip", "l2": "l2"}
#: hnswlib parameters outside these ranges crash it (M=1 divides by ln 1) or are silently
#: changed by it (M > 10000 is capped), so they are refused before hnswlib sees them.
M_RANGE = (2, 2048)
EF_CONSTRUCTION_RANGE = (1, 1 << 20)


class GraphLinks(NamedTuple):
    """One graph's links as the search kernels read them, all indexed by row.

    Attributes
    ----------
    level0 : ndarray of shape (capacity, maxM0 + 1), int32
        ``level0[row, 0]`` neighbours at level 0, then their rows.
    upper : ndarray of shape (blocks, maxM + 1), int32
        One block per (row, level >= 1): count, then neighbour rows.
    upper_start : ndarray of shape (capacity,), int64
        Block of ``(row, level 1)``; ``(row, level)`` is ``upper_start[row] + level - 1``.
    entry : int
        Row of the entry point (-1 for an empty graph).
    max_level : int
        Level of the entry point.
    """

    level0: np.ndarray
    upper: np.ndarray
    upper_start: np.ndarray
    entry: int
    max_level: int

    @property
    def nbytes(self) -> int:
        return self.level0.nbytes + self.upper.nbytes + self.upper_start.nbytes


def links_from_state(state: dict, capacity: int) -> GraphLinks:
    """Copy the links of an hnswlib state (``Index.__getstate__()[0]``) into row-indexed arrays.

    Raises
    ------
    FormatError
        If a label or a link points outside ``capacity`` rows or outside the graph.
    """
    count = int(state["cur_element_count"])
    max_m0 = int(state["max_M0"])
    max_m = int(state["max_M"])
    size_per = int(state["size_data_per_element"])
    label_offset = int(state["label_offset"])
    level0 = np.zeros((capacity, max_m0 + 1), dtype=np.int32)
    upper_start = np.full(capacity, -1, dtype=np.int64)
    if count == 0:
        return GraphLinks(level0, np.zeros((0, max_m + 1), dtype=np.int32), upper_start, -1, 0)
    if label_offset + 8 > size_per or 4 + 4 * max_m0 > size_per:
        raise FormatError("an hnswlib graph's record layout does not hold its links and labels")
    records = state["data_level0"].view(np.uint8)[: count * size_per].reshape(count, size_per)
    levels = np.ascontiguousarray(state["element_levels"][:count], dtype=np.int32)
    if levels.size and (levels.min() < 0 or levels.max() > int(state["max_level"])):
        raise FormatError("an hnswlib graph holds an element above its max level")
    total_blocks = int(levels.sum(dtype=np.int64))
    raw = state["link_lists"].view(np.uint8)
    if raw.size != total_blocks * 4 * (max_m + 1):
        raise FormatError("an hnswlib graph's upper-level link lists do not match its levels")
    upper_blocks = raw.view(np.uint32).reshape(total_blocks, max_m + 1)
    upper = np.zeros((total_blocks, max_m + 1), dtype=np.int32)
    row_of_internal = np.empty(count, dtype=np.int64)
    level0_words = np.ascontiguousarray(records[:, : 4 * (max_m0 + 1)]).view(np.uint32)
    labels = np.ascontiguousarray(records[:, label_offset:label_offset + 8]).view(np.uint64)
    status = _graph_kernels.relabel_links(level0_words, labels[:, 0].copy(), capacity, levels,
                                          upper_blocks, max_m, level0, upper, upper_start,
                                          row_of_internal)
    if status != _graph_kernels.OK:
        raise FormatError(_PROBLEMS[status])
    if np.unique(row_of_internal).size != count:
        raise FormatError("an hnswlib graph gives two elements the same label")
    entry_internal = int(state["enterpoint_node"])
    max_level = int(state["max_level"])
    if not 0 <= entry_internal < count or int(levels[entry_internal]) != max_level:
        raise FormatError("an hnswlib graph's entry point does not hold max_level levels")
    return GraphLinks(level0, upper, upper_start, int(row_of_internal[entry_internal]), max_level)


_PROBLEMS = {
    _graph_kernels.BAD_LABEL: "an hnswlib graph labels a row beyond the index",
    _graph_kernels.BAD_LEVEL0: "an hnswlib graph holds a bad level-0 link",
    _graph_kernels.BAD_UPPER: "an hnswlib graph holds a bad upper-level link",
    _graph_kernels.BAD_UPPER_LEVEL: "an hnswlib graph links to an element above its level",
}


class GraphSet:
    """The HNSW graphs of one index, one per indexed dim, and their searchable links.

    hnswlib links the graph of dim ``d`` by the first ``min(d, link_dim)`` dims of the vectors
    (:meth:`built_dim`): a graph linked by a shorter prefix builds faster, and the walk still
    scores its candidates at ``d``. ``link_dim=None`` links each graph by its own dim.

    Writers (add, mark_deleted, resize) run under the owner's write lock; :meth:`links` may be
    called by concurrent readers: the first one after a write copies the links, the others
    wait for that copy and share it.
    """

    def __init__(self, metric: str, dims: Iterable[int], *, M: int, ef_construction: int,
                 seed: int, link_dim: int | None = None) -> None:
        self._metric = metric
        self._dims = tuple(dims)
        self._link_dim = link_dim
        self._M = M
        self._ef_construction = ef_construction
        self._seed = seed
        self._indexes: dict[int, hnswlib.Index] = {}
        #: graphs let go of after their links were copied, with how to read them back
        self._parked: dict[int, Callable[[], hnswlib.Index]] = {}
        self._links: dict[int, GraphLinks] = {}
        self._copy_lock = threading.Lock()

    @property
    def dims(self) -> tuple[int, ...]:
        return self._dims

    def __bool__(self) -> bool:
        return bool(self._indexes) or bool(self._parked)

    def built_dim(self, dim: int) -> int:
        """The prefix hnswlib links the graph at ``dim`` by (its vectors' dim in hnswlib)."""
        return dim if self._link_dim is None else min(dim, self._link_dim)

    def index(self, dim: int) -> hnswlib.Index:
        """The hnswlib index at ``dim`` (for saving), read back first if it was parked."""
        graph = self._indexes.get(dim)
        if graph is None:
            with self._copy_lock:
                graph = self._unparked(dim)
        return graph

    def _unparked(self, dim: int) -> hnswlib.Index:
        """The index at ``dim``, read back if parked (the caller holds the copy lock)."""
        graph = self._indexes.get(dim)
        if graph is None:
            graph = self._parked[dim]()  # raises with nothing changed if it cannot be read
            self._indexes[dim] = graph
            del self._parked[dim]
        return graph

    def park(self, dim: int, reload: Callable[[], hnswlib.Index]) -> None:
        """Let go of hnswlib's index at ``dim`` once its links are copied: searches read only
        the copy, and hnswlib's index (the prefix vectors beside its links) is needed again
        only to add, remove or save, when ``reload()`` reads it back (the memory tier of
        ``Searcher.load(mmap=True)``)."""
        self.links(dim, 0)
        with self._copy_lock:
            self._parked[dim] = reload
            self._indexes.pop(dim, None)

    def unpark(self) -> None:
        """Read every parked graph back (a write calls this before it changes anything, so a
        graph that cannot be read back fails the write with nothing applied)."""
        self._all_indexes()

    def _all_indexes(self) -> list[hnswlib.Index]:
        return [self.index(prefix_dim) for prefix_dim in self._dims
                if prefix_dim in self._indexes or prefix_dim in self._parked]

    def create(self, capacity: int) -> None:
        """Make empty graphs for ``capacity`` rows."""
        for prefix_dim in self._dims:
            graph = hnswlib.Index(space=_HNSW_SPACE[self._metric],
                                  dim=self.built_dim(prefix_dim))
            graph.init_index(max_elements=max(capacity, 1), M=self._M,
                             ef_construction=self._ef_construction, random_seed=self._seed)
            self._indexes[prefix_dim] = graph
        self._parked.clear()
        self._links.clear()

    def adopt(self, dim: int, graph: hnswlib.Index) -> None:
        """Take an index loaded from disk."""
        self._indexes[dim] = graph
        self._parked.pop(dim, None)
        self._links.pop(dim, None)

    def resize(self, capacity: int) -> None:
        for graph in self._all_indexes():
            graph.resize_index(capacity)
        self._links.clear()

    def add(self, dim: int, vectors: np.ndarray, rows: np.ndarray, *, num_threads: int) -> None:
        """Insert ``rows`` into the graph at ``dim``; ``vectors`` hold at least
        :meth:`built_dim` dims (the rest is not read)."""
        built = self.built_dim(dim)
        if vectors.shape[1] != built or not vectors.flags.c_contiguous \
                or vectors.dtype != np.float32:
            vectors = np.ascontiguousarray(vectors[:, :built], dtype=np.float32)
        self.index(dim).add_items(vectors, rows, num_threads=num_threads)
        self._links.pop(dim, None)

    def mark_deleted(self, rows: Iterable[int]) -> None:
        """Tombstone rows in hnswlib (kept so a saved graph carries the marks); the search
        kernels read mrlsearch's own deleted mask, so the copied links stay valid."""
        for graph in self._all_indexes():
            for row in rows:
                graph.mark_deleted(int(row))

    def links(self, dim: int, capacity: int) -> GraphLinks:
        """The searchable links of the graph at ``dim`` (copied after each write)."""
        links = self._links.get(dim)
        if links is not None and links.level0.shape[0] >= capacity:
            return links
        with self._copy_lock:
            links = self._links.get(dim)
            if links is None or links.level0.shape[0] < capacity:
                state = self._unparked(dim).__getstate__()[0]
                links = links_from_state(state, max(capacity, int(state["max_elements"])))
                self._links[dim] = links
        return links

    def drop(self, keep_dims: Iterable[int]) -> None:
        """Free the graphs of dims not in ``keep_dims``."""
        keep = tuple(keep_dims)
        self._dims = tuple(d for d in self._dims if d in keep)
        for prefix_dim in [d for d in self._indexes if d not in keep]:
            del self._indexes[prefix_dim]
            self._links.pop(prefix_dim, None)
        for prefix_dim in [d for d in self._parked if d not in keep]:
            del self._parked[prefix_dim]
            self._links.pop(prefix_dim, None)

    def index_bytes(self) -> int:
        """Bytes hnswlib holds in memory for the graphs (vectors of the prefix + links +
        labels); a parked graph holds none."""
        return sum(graph.index_file_size() for graph in self._indexes.values())

    def links_bytes(self) -> int:
        return sum(links.nbytes for links in self._links.values())
