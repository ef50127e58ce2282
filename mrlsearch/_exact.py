"""Brute-force search at a prefix: the ground truth every funnel is measured against."""

from __future__ import annotations

import numpy as np

from . import _exact_kernels as kernels
from ._store import VectorStore

__all__: list[str] = []

#: Scores are computed for this many (query, row) pairs at a time (4 MiB of float32). Blocks of
#: 64 MiB took 2.5x as long on a first call (500 queries x 120k rows: 0.77 s against 0.28 s):
#: each block's scores landed in freshly mapped pages.
_EXACT_BLOCK = 1 << 20


def exact_rows(store: VectorStore, metric: str, batch: np.ndarray, prefix_dim: int,
               keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``keep`` live rows of every query at ``prefix_dim`` (numpy BLAS, bounded memory).

    Returns ``(rows, scores)``, best first (equal scores: the earlier row first), ``-1`` /
    ``-inf`` padded. Scores are higher-is-better: cosine of the prefixes, inner product, or the
    negative squared distance.
    """
    n_queries = batch.shape[0]
    col = store.dims.index(prefix_dim)
    query_part = np.ascontiguousarray(batch[:, :prefix_dim])
    query_norms = np.linalg.norm(query_part.astype(np.float64), axis=1).astype(np.float32)
    query_scale, query_shift = _score_terms(metric, query_norms, query_side=True)
    heap_rows = np.full((n_queries, keep), -1, dtype=np.int64)
    heap_scores = np.full((n_queries, keep), -np.inf, dtype=np.float32)
    block = max(1024, _EXACT_BLOCK // max(n_queries, 1))
    for lo in range(0, store.rows, block):
        hi = min(lo + block, store.rows)
        part = store.vectors[lo:hi, :prefix_dim].astype(np.float32, copy=False)
        row_scale, row_shift = _score_terms(metric, store.norms[lo:hi, col], query_side=False)
        deleted = store.deleted[lo:hi]
        kernels.merge_block(query_part @ part.T, lo, query_scale, query_shift, row_scale,
                            row_shift, metric == "l2",
                            np.ascontiguousarray(deleted) if deleted.any() else _NONE_DELETED,
                            heap_scores, heap_rows)
    kernels.sort_heaps(heap_scores, heap_rows)
    return heap_rows, heap_scores


def _score_terms(metric: str, norms: np.ndarray, *, query_side: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of one side of :func:`~mrlsearch._exact_kernels.merge_block`'s score:
    cosine divides by both norms (a zero norm scores 0), squared L2 is ``2 dot - |q|^2 - |x|^2``
    and the inner product is the dot product."""
    zeros = np.zeros(norms.shape, dtype=np.float32)
    if metric == "cosine":
        return _inverse(norms), zeros
    if metric == "l2":
        scale = np.full(norms.shape, 2.0 if query_side else 1.0, dtype=np.float32)
        return scale, -np.square(norms, dtype=np.float32)
    return np.ones(norms.shape, dtype=np.float32), zeros


_NONE_DELETED = np.zeros(0, dtype=bool)


def _inverse(norms: np.ndarray) -> np.ndarray:
    """``1 / norms`` as float32, with 0 where a norm is 0."""
    out = np.zeros(norms.shape, dtype=np.float32)
    np.divide(1.0, norms, out=out, where=norms > 0)
    return out
