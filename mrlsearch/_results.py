"""Result objects: small frozen dataclasses with named fields, never bare tuples."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from ._validation import check_positive_int

__all__ = ["FunnelPlan", "Hits", "PendingStats", "SearchResult", "StageStats"]


class StageStats(NamedTuple):
    """What one funnel stage did, summed over the batch of queries.

    Attributes
    ----------
    dim : int
        Prefix dim the stage scored at.
    shortlist : int
        Candidates the stage kept per query.
    candidates : int
        Candidates scored in the stage, over all queries.
    seconds : float
        Wall time of the stage for the whole batch (see ``method``).
    method : {'hnsw', 'exhaustive', 'rerank'}
        ``'hnsw'`` for the graph walk, ``'exhaustive'`` when the first stage scanned every
        live (or every allowed) vector instead, ``'rerank'`` for the later stages. All stages
        of a call run in one compiled call: ``seconds`` is reported on the last stage and the
        others show 0.0.
    precision : {'float32', 'float16', 'int8', 'binary'}
        What the stage scored: the stored vectors, or the int8 / binary codes of the prefix.

    For the graph stage ``candidates`` counts the distances the walk computed (every node it
    visited); for later stages, the candidates rescored. Both are totals over the queries of
    the call, not per query.
    """

    dim: int
    shortlist: int
    candidates: int
    seconds: float
    method: str
    precision: str = "float32"


@dataclass(frozen=True)
class Hits:
    """The results of one query, trimmed to its valid length."""

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to_list(self) -> list[tuple[int, float]]:
        """Return ``[(id, score), ...]`` as plain Python numbers, best first."""
        return [(int(i), float(s)) for i, s in zip(self.ids, self.scores)]


@dataclass(frozen=True)
class SearchResult:
    """Results of a batch of queries.

    Attributes
    ----------
    ids : ndarray of shape (n_queries, k), int64
        Ids, best first; ``-1`` pads rows with fewer than ``k`` results.
    scores : ndarray of shape (n_queries, k), float32
        Scores, higher is better (cosine similarity, inner product, or the *negative* squared
        L2 distance); ``-inf`` pads.
    counts : ndarray of shape (n_queries,), int64
        Number of valid results per query.
    stats : tuple of StageStats
        One entry per stage, in order.
    metric : str
        The index's metric (``'cosine'``, ``'ip'``, ``'l2'``), for :attr:`distances`.

    A result is not a ``(distances, ids)`` pair: ``D, I = result`` (the faiss habit) raises a
    TypeError instead of silently unpacking queries. Use ``result.ids`` / ``result.scores`` /
    ``result.distances``, ``result[i]`` for query ``i``, or ``result.hits()`` to iterate.

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch import Searcher
    >>> s = Searcher(4, dims=(2, 4), metric="l2", index_dims=(2,))
    >>> _ = s.add(np.eye(4, dtype=np.float32))
    >>> r = s.search(np.eye(4, dtype=np.float32)[:1], k=2)
    >>> int(r.ids[0, 0]), float(r.distances[0, 0])
    (0, 0.0)
    """

    ids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    stats: tuple[StageStats, ...] = field(default_factory=tuple)
    metric: str = ""

    @classmethod
    def from_kernels(cls, ids: np.ndarray, scores: np.ndarray, counts: np.ndarray,
                     metric: str, *, stage_stats: PendingStats) -> SearchResult:
        """A result as the search kernels left it, its :attr:`stats` built when first read.

        Building the :class:`StageStats` and running the dataclass's checked ``__init__`` took
        ~1.4 us per call (0.9 of it the stats), 5 % of a single query, which most callers
        spend without reading the stats.

        Parameters
        ----------
        ids, scores, counts, metric
            As for :class:`SearchResult`.
        stage_stats : PendingStats
            What :attr:`stats` is built from.

        Returns
        -------
        SearchResult
        """
        result = object.__new__(cls)
        result.__dict__.update(ids=ids, scores=scores, counts=counts, metric=metric,
                               _stage_stats=stage_stats)
        return result

    def __getattr__(self, name: str) -> tuple[StageStats, ...]:
        # called only for attributes not found the usual way: ``stats`` of a result made by
        # from_kernels before it is first read
        source = self.__dict__.get("_stage_stats") if name == "stats" else None
        if source is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        stats = source.build()
        self.__dict__["stats"] = stats  # the same value whichever thread writes it
        return stats

    def __getstate__(self) -> dict:
        # a pickled result carries its stats, not what they are built from (smaller, and the
        # same whichever way the result was made)
        state = dict(self.__dict__)
        if state.pop("_stage_stats", None) is not None:
            state["stats"] = self.stats
        return state

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __iter__(self):
        raise TypeError(
            "a SearchResult does not unpack or iterate: use result.ids, result.scores, "
            "result.distances, result[i] for query i, or result.hits() for every query")

    def hits(self) -> list[Hits]:
        """Every query's :class:`Hits`, trimmed to its valid results."""
        return [self[i] for i in range(len(self))]

    @property
    def distances(self) -> np.ndarray:
        """Smaller-is-better distances: the squared L2 distance for ``'l2'``, ``1 - cosine``
        for ``'cosine'``, ``-score`` for ``'ip'``; ``inf`` pads."""
        if self.metric == "cosine":
            return (1.0 - self.scores).astype(np.float32)
        return (-self.scores).astype(np.float32)

    def __getitem__(self, index: int) -> Hits:
        if not isinstance(index, (int, np.integer)) or not -len(self) <= index < len(self):
            raise IndexError(f"'index' must be an int in [-{len(self)}, {len(self)}) "
                             f"(got {index!r})")
        count = int(self.counts[index])
        return Hits(self.ids[index, :count], self.scores[index, :count])

    @property
    def seconds(self) -> float:
        """Total wall time over all stages."""
        return float(sum(stage.seconds for stage in self.stats))

    def recall(self, truth: SearchResult | np.ndarray) -> float:
        """Mean recall@k of these results against ground-truth ids (e.g. from ``exact``).

        Rows of ``truth`` with fewer than ``k`` valid ids count only those; each row's ids are
        taken to be distinct, as a search returns them.
        """
        return float(np.mean(recall_per_query(self.ids, truth)))


class PendingStats(NamedTuple):
    """What a search call's :class:`StageStats` are built from, when first read."""

    stages: tuple[tuple[int, int, str | None, str], ...]  # (dim, shortlist, method, precision)
    scored: np.ndarray  # (n_queries, n_stages): candidates each query scored per stage
    seconds: float  # the call's wall time, reported on the last stage
    method: str  # the first stage's method, where ``stages[0]`` has None

    def build(self) -> tuple[StageStats, ...]:
        """The :class:`StageStats`, totals over the queries of the call."""
        scored = self.scored
        totals = (scored[0] if scored.shape[0] == 1 else scored.sum(axis=0)).tolist()
        last = len(self.stages) - 1
        return tuple(
            StageStats(dim, keep, totals[i], self.seconds if i == last else 0.0,
                       stage_method or self.method, precision)
            for i, (dim, keep, stage_method, precision) in enumerate(self.stages))


def recall_per_query(ids: np.ndarray, truth: SearchResult | np.ndarray) -> np.ndarray:
    """Recall of each row of ``ids`` against the valid (>= 0) ids in the same row of ``truth``.

    Rows of ``truth`` are taken to hold distinct ids (as exact search returns them); a row
    with no valid id has recall 1. Rows up to 256 x 256 ids are compared pair by pair, in
    blocks of rows; longer rows are matched by sorting.

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch._results import recall_per_query
    >>> recall_per_query(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 9, -1], [-1, -1, -1]]))
    array([0.5, 1. ])
    """
    truth_ids = truth.ids if isinstance(truth, SearchResult) else np.asarray(truth)
    ids = np.asarray(ids)
    if truth_ids.shape[0] != ids.shape[0]:
        raise ValueError(
            f"'truth' must have one row per query ({ids.shape[0]}) (got {truth_ids.shape[0]})"
        )
    want = truth_ids[:, : ids.shape[1]]
    valid = want >= 0
    found = np.zeros(want.shape, dtype=bool)
    width = ids.shape[1] * want.shape[1]
    if width <= _BROADCAST_PAIRS:
        # each truth id against its whole row of ids, in blocks of rows of a few MB (an
        # intersect1d per row had been a fifth of Searcher.build's tuning time at k=10)
        block = max(1, _BLOCK_PAIRS // max(1, width))
        for start in range(0, ids.shape[0], block):
            rows = slice(start, start + block)
            found[rows] = (ids[rows, :, None] == want[rows, None, :]).any(axis=1)
    else:  # a long row: sorting beats k x k comparisons
        for row in range(ids.shape[0]):
            found[row] = np.isin(want[row], ids[row])
    n_valid = valid.sum(axis=1)
    hits = (found & valid).sum(axis=1)
    return np.where(n_valid > 0, hits / np.maximum(n_valid, 1), 1.0)


def tied_recall_per_query(result: SearchResult, truth: SearchResult, *,
                          rtol: float = 1e-5) -> np.ndarray:
    """:func:`recall_per_query`, where a returned id missing from ``truth`` also counts when
    its score ties the last valid score of ``truth`` (within ``rtol`` of the row's largest
    score magnitude).

    Exact search breaks ties between equal scores arbitrarily, so on data with duplicate
    vectors a search that returns the other copies would score recall 0 by ids alone. Only
    meaningful when ``result``'s scores are full-dim float scores, like ``truth``'s.

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch import SearchResult
    >>> truth = SearchResult(np.array([[4, 7]]), np.array([[0.9, 0.5]], dtype=np.float32),
    ...                      np.array([2]), (), "ip")
    >>> found = SearchResult(np.array([[4, 8]]), np.array([[0.9, 0.5]], dtype=np.float32),
    ...                      np.array([2]), (), "ip")
    >>> tied_recall_per_query(found, truth)
    array([1.])
    """
    recalls = recall_per_query(result.ids, truth)
    short = np.flatnonzero(recalls < 1.0)  # tuning measures hundreds of schedules: vectorised
    if not short.size:
        return recalls
    ids = np.asarray(result.ids)[short]
    scores = np.asarray(result.scores, dtype=np.float64)[short]
    want_ids = np.asarray(truth.ids)[short, : ids.shape[1]]
    want_scores = np.asarray(truth.scores, dtype=np.float64)[short, : ids.shape[1]]
    n_valid = (want_ids >= 0).sum(axis=1)
    last = np.take_along_axis(want_scores, np.maximum(n_valid - 1, 0)[:, None], axis=1)[:, 0]
    magnitude = np.where(want_ids >= 0, np.abs(want_scores), 0.0).max(axis=1, initial=0.0)
    first = np.where(np.isfinite(scores[:, 0]), np.abs(scores[:, 0]), 0.0)
    tolerance = rtol * np.maximum(np.maximum(magnitude, first), 1e-30)
    if ids.shape[1] * want_ids.shape[1] <= _BROADCAST_PAIRS:
        in_truth = (ids[:, :, None] == want_ids[:, None, :]).any(axis=2)
    else:  # long rows: sorting beats k x k comparisons
        in_truth = np.stack([np.isin(row, want) for row, want in zip(ids, want_ids)])
    extra = ((ids >= 0) & ~in_truth & (scores >= (last - tolerance)[:, None])).sum(axis=1)
    hits = np.rint(recalls[short] * n_valid) + extra
    recalls[short] = np.where(n_valid > 0, np.minimum(hits, n_valid) / np.maximum(n_valid, 1),
                              recalls[short])
    return recalls


#: Rows of ids x truth at most this wide are compared pair by pair; wider ones by sorting.
_BROADCAST_PAIRS = 256 * 256
_BLOCK_PAIRS = 4_000_000


PRECISIONS = ("float32", "float16", "int8", "binary")
#: Largest beam width (``ef``) a funnel call takes.
MAX_EF = 1 << 20


def parse_stage(stage: object) -> tuple[int, str, int]:
    """``(dim, shortlist)`` or ``(dim, precision, shortlist)`` as a triple (float by default).

    Only the shape is checked here; the searcher checks the values against its dims.
    """
    if isinstance(stage, (str, bytes)) or not hasattr(stage, "__len__") or len(stage) not in (2, 3):
        raise TypeError(
            f"'stages' must hold (dim, shortlist) or (dim, precision, shortlist) (got {stage!r})")
    if len(stage) == 2:
        return stage[0], "float32", stage[1]
    precision = stage[1]
    if precision == "float":
        precision = "float32"
    if precision not in PRECISIONS:
        raise ValueError(f"'stages' precision must be one of {PRECISIONS} (got {precision!r})")
    return stage[0], precision, stage[2]


def _whole(value: object) -> object:
    """A JSON number as an int where it is whole (``16.0`` from another writer); anything
    else as it is, for :class:`FunnelPlan` to refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _stage_int(value: object, what: str, stage: object) -> int:
    """``value`` (a dim or a shortlist of ``stage``) as a positive int, or an error naming
    the stage."""
    try:
        return check_positive_int(value, "stages")
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"'stages' {what} must be positive ints (got {value!r} in "
                        f"{stage!r})") from None


@dataclass(frozen=True)
class FunnelPlan:
    """A funnel schedule, as chosen by :meth:`Searcher.tune`.

    Pass it to :meth:`Searcher.funnel` as ``stages=plan``; ``search`` uses the index's plan.
    A plan is frozen: a Searcher checks the last one it was given once and then knows it by
    identity, so make a new plan (``dataclasses.replace``) rather than altering one.

    Attributes
    ----------
    stages : tuple of (dim, precision, shortlist)
        The stages, the first one over the HNSW graph at ``stages[0][0]``. ``precision`` is
        ``'float32'`` / ``'float16'`` (the stored vectors), ``'int8'`` or ``'binary'`` (codes
        of the graph's prefix).
    ef : int
        HNSW search breadth of the first stage (>= its shortlist).
    k : int
        The ``k`` the plan was tuned for. A larger ``k`` scales every shortlist and ``ef`` by
        ``k / self.k`` (see :meth:`for_k`).
    recall : float
        Mean recall@k against exact full-dim search on the tuning queries.
    recall_lower : float
        One-sided 95 % lower confidence bound of that recall (mean - 1.645 standard errors).
    seconds_per_query : float
        Measured wall time per query on the tuning batch.
    """

    stages: tuple[tuple[int, str, int], ...]
    ef: int
    k: int
    recall: float = float("nan")
    recall_lower: float = float("nan")
    seconds_per_query: float = float("nan")

    def __post_init__(self) -> None:
        # the values a plan cannot hold are refused here; those that depend on an index (its
        # dims, precisions and codes) are checked where the plan is used
        if isinstance(self.stages, (str, bytes)) or not hasattr(self.stages, "__iter__"):
            raise TypeError(f"'stages' must be a sequence of stages (got {self.stages!r})")
        stages = tuple((_stage_int(d, "dims", stage), p, _stage_int(s, "shortlists", stage))
                       for stage, (d, p, s) in ((stage, parse_stage(stage))
                                                for stage in self.stages))
        if not stages:
            raise ValueError("'stages' must hold at least one stage (got none)")
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "ef", check_positive_int(self.ef, "ef"))
        object.__setattr__(self, "k", check_positive_int(self.k, "k"))

    def for_k(self, k: int) -> FunnelPlan:
        """This plan for another ``k``: shortlists and ``ef`` grow by ``k / self.k`` (never
        shrink below the tuned ones, nor past :data:`MAX_EF` unless ``k`` does), the last stage
        keeps ``k``."""
        if k <= self.k:
            return replace(self, k=k)
        factor = k / self.k
        stages = tuple((d, p, max(k, min(int(math.ceil(s * factor)), MAX_EF)))
                       for d, p, s in self.stages)
        ef = max(min(int(math.ceil(self.ef * factor)), MAX_EF), stages[0][2])
        return FunnelPlan(stages, ef, k)

    def to_dict(self) -> dict:
        """Plain-JSON form, as stored in an index manifest."""
        return {
            "stages": [list(stage) for stage in self.stages],
            "ef": self.ef,
            "k": self.k,
            "recall": self.recall,
            "recall_lower": self.recall_lower,
            "seconds_per_query": self.seconds_per_query,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FunnelPlan:
        """Inverse of :meth:`to_dict` (also reads the (dim, shortlist) pairs of format 1)."""
        stages = tuple((_whole(d), p, _whole(s))
                       for d, p, s in (parse_stage(stage) for stage in data["stages"]))
        return cls(
            stages=stages,
            ef=int(data["ef"]),
            k=int(data["k"]),
            recall=float(data.get("recall", float("nan"))),
            recall_lower=float(data.get("recall_lower", float("nan"))),
            seconds_per_query=float(data.get("seconds_per_query", float("nan"))),
        )

    def __str__(self) -> str:
        schedule = " -> ".join(
            f"{d}:{s}" if p.startswith("float") else f"{d}{_SHORT[p]}:{s}"
            for d, p, s in self.stages)
        return (
            f"{schedule} (ef={self.ef}, recall@{self.k}={self.recall:.3f}, "
            f"{self.seconds_per_query * 1e6:.0f} us/query)"
        )


_SHORT = {"int8": "i8", "binary": "b"}
