"""The global top-k from the shards' answers, and the result that carries it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._results import SearchResult

__all__: list[str] = []


@dataclass(frozen=True)
class ShardedSearchResult(SearchResult):
    """A :class:`~mrlsearch.SearchResult` merged from shards, with what each shard did.

    ``ids``, ``scores`` and ``counts`` are the global top-k as for a single Searcher (ties
    broken by the smaller id); ``stats`` is empty, the stats of each shard are in
    ``shard_stats``.

    Attributes
    ----------
    shards_answered : tuple of int
        Shards whose answer is merged in.
    shards_missing : tuple of int
        Shards left out (only with ``allow_partial=True``); empty for a complete answer.
    shard_stats : tuple of tuple of StageStats
        Each answering shard's own ``stats``, in the order of ``shards_answered``.
    shard_seconds : tuple of float
        Time each answering shard spent in its Searcher call.
    wall_seconds : float
        Wall time of the whole call: fan-out, shards, transfers and merge.
    merge_seconds : float
        Time of the merge alone.
    """

    shards_answered: tuple[int, ...] = ()
    shards_missing: tuple[int, ...] = ()
    shard_stats: tuple = ()
    shard_seconds: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    merge_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every shard answered."""
        return not self.shards_missing

    @property
    def seconds(self) -> float:
        """Wall time of the whole call (fan-out, shards, merge)."""
        return self.wall_seconds


def merge_top_k(parts: list[SearchResult], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global top-k of per-shard top-k lists: by score, then by the smaller id."""
    ids = np.concatenate([np.asarray(p.ids, dtype=np.int64) for p in parts], axis=1)
    scores = np.concatenate([np.asarray(p.scores, dtype=np.float32) for p in parts], axis=1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    key = np.where(ids >= 0, -scores.astype(np.float64), np.inf)
    order = np.lexsort((ids, key), axis=-1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    valid = ids >= 0
    scores[~valid] = -np.inf
    return ids, scores, valid.sum(axis=1).astype(np.int64)


