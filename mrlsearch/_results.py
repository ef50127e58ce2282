"""Result objects: small frozen dataclasses with named fields, never bare tuples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["FunnelPlan", "Hits", "SearchResult", "StageStats"]


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
        Wall time of the stage for the whole batch. Fused stages share one timing: it is
        reported on the last stage and the earlier fused stages show 0.0.
    method : {'hnsw', 'exhaustive', 'rerank', 'fused'}
        ``'hnsw'`` for a graph search, ``'exhaustive'`` when the first stage scanned every live
        vector (its shortlist covered the index, or the graph returned too few), ``'rerank'``
        for the incremental stages, ``'fused'`` for incremental stages of a small batch
        (under 8 queries), which run together in one kernel call because the cost of a call
        exceeds the arithmetic of one query's stage.
    """

    dim: int
    shortlist: int
    candidates: int
    seconds: float
    method: str


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
    """

    ids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    stats: tuple[StageStats, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: int) -> Hits:
        if not isinstance(index, (int, np.integer)) or not -len(self) <= index < len(self):
            raise IndexError(f"'index' must be an int in [-{len(self)}, {len(self)}) (got {index!r})")
        count = int(self.counts[index])
        return Hits(self.ids[index, :count], self.scores[index, :count])

    @property
    def seconds(self) -> float:
        """Total wall time over all stages."""
        return float(sum(stage.seconds for stage in self.stats))

    def recall(self, truth: SearchResult | np.ndarray) -> float:
        """Mean recall@k of these results against ground-truth ids (e.g. from ``exact``).

        Rows of ``truth`` with fewer than ``k`` valid ids count only those.
        """
        return float(np.mean(recall_per_query(self.ids, truth)))


def recall_per_query(ids: np.ndarray, truth: SearchResult | np.ndarray) -> np.ndarray:
    """Recall of each row of ``ids`` against the valid (>= 0) ids in the same row of ``truth``."""
    truth_ids = truth.ids if isinstance(truth, SearchResult) else np.asarray(truth)
    if truth_ids.shape[0] != ids.shape[0]:
        raise ValueError(
            f"'truth' must have one row per query ({ids.shape[0]}) (got {truth_ids.shape[0]})"
        )
    k = ids.shape[1]
    recalls = np.empty(ids.shape[0], dtype=np.float64)
    for row, (got, want) in enumerate(zip(ids, truth_ids[:, :k])):
        want = want[want >= 0]
        if want.size == 0:
            recalls[row] = 1.0
            continue
        recalls[row] = np.intersect1d(got[got >= 0], want).size / want.size
    return recalls


@dataclass(frozen=True)
class FunnelPlan:
    """A funnel schedule, as chosen by :meth:`Searcher.tune`.

    Pass it to :meth:`Searcher.funnel` as ``stages=plan``.

    Attributes
    ----------
    stages : tuple of (dim, shortlist)
        The stages, first one over the HNSW graph at ``stages[0][0]``.
    ef : int
        HNSW search breadth of the first stage (>= its shortlist).
    k : int
        The ``k`` the plan was tuned for.
    recall : float
        Mean recall@k against exact full-dim search on the tuning queries.
    recall_lower : float
        One-sided 95 % lower confidence bound of that recall (mean - 1.645 standard errors).
    seconds_per_query : float
        Measured wall time per query on the tuning batch.
    """

    stages: tuple[tuple[int, int], ...]
    ef: int
    k: int
    recall: float = float("nan")
    recall_lower: float = float("nan")
    seconds_per_query: float = float("nan")

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
        """Inverse of :meth:`to_dict`."""
        return cls(
            stages=tuple((int(d), int(s)) for d, s in data["stages"]),
            ef=int(data["ef"]),
            k=int(data["k"]),
            recall=float(data.get("recall", float("nan"))),
            recall_lower=float(data.get("recall_lower", float("nan"))),
            seconds_per_query=float(data.get("seconds_per_query", float("nan"))),
        )

    def __str__(self) -> str:
        schedule = " -> ".join(f"{d}:{s}" for d, s in self.stages)
        return (
            f"{schedule} (ef={self.ef}, recall@{self.k}={self.recall:.3f}, "
            f"{self.seconds_per_query * 1e6:.0f} us/query)"
        )
