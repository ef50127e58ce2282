"""Brute-force search at a prefix: the ground truth every funnel is measured against."""

from __future__ import annotations

import numpy as np

from ._store import VectorStore

__all__: list[str] = []

#: Scores are computed for this many (query, row) pairs at a time (4 MiB of float32). Blocks of
#: 64 MiB took 2.5x as long on a first call (500 queries x 120k rows: 0.77 s against 0.28 s):
#: each block's scores landed in freshly mapped pages.
_EXACT_BLOCK = 1 << 20


def exact_rows(store: VectorStore, metric: str, batch: np.ndarray, prefix_dim: int,
               keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``keep`` live rows of every query at ``prefix_dim`` (numpy BLAS, bounded memory).

    Returns ``(rows, scores)``, best first, ``-1`` / ``-inf`` padded. Scores are higher-is-better:
    cosine of the prefixes, inner product, or the negative squared distance.
    """
    n_queries = batch.shape[0]
    col = store.dims.index(prefix_dim)
    query_part = np.ascontiguousarray(batch[:, :prefix_dim])
    query_norms = np.linalg.norm(query_part.astype(np.float64), axis=1).astype(np.float32)
    best_rows = np.full((n_queries, keep), -1, dtype=np.int64)
    best_scores = np.full((n_queries, keep), -np.inf, dtype=np.float32)
    # a block holds 16x ``keep`` rows at least: each block's top ``keep`` is merged into the
    # running best (1000 queries x 50k rows at k=1000, warm: 0.33 s; with 4x, 0.55 s; with
    # blocks of 1024 rows, 1.29 s)
    block = max(1024, 16 * keep, _EXACT_BLOCK // max(n_queries, 1))
    if metric == "cosine":
        inverse_query_norms = _inverse(query_norms)[:, None]
    for lo in range(0, store.rows, block):
        hi = min(lo + block, store.rows)
        part = store.vectors[lo:hi, :prefix_dim].astype(np.float32, copy=False)
        scores = query_part @ part.T
        if metric == "cosine":  # a zero norm on either side scores 0
            scores *= inverse_query_norms
            scores *= _inverse(store.norms[lo:hi, col])[None, :]
        elif metric == "l2":
            scores *= 2.0
            scores -= np.square(query_norms)[:, None]
            scores -= np.square(store.norms[lo:hi, col])[None, :]
            np.minimum(scores, 0.0, out=scores)
        deleted = store.deleted[lo:hi]
        if deleted.any():
            scores[:, deleted] = -np.inf
        # the block's own top ``keep`` first, then a merge of two small arrays (merging the
        # whole block into the running best copied it twice and partitioned it all)
        rows = np.arange(lo, hi, dtype=np.int64)
        if scores.shape[1] > keep:
            top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            scores, rows = np.take_along_axis(scores, top, axis=1), rows[top]
        else:
            rows = np.broadcast_to(rows, scores.shape)
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, rows], axis=1)
        top = np.argpartition(-merged_scores, keep - 1, axis=1)[:, :keep]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best_scores = np.take_along_axis(best_scores, order, axis=1)
    best_rows = np.take_along_axis(best_rows, order, axis=1)
    best_rows[~np.isfinite(best_scores)] = -1
    return best_rows, best_scores


def _inverse(norms: np.ndarray) -> np.ndarray:
    """``1 / norms`` as float32, with 0 where a norm is 0."""
    out = np.zeros(norms.shape, dtype=np.float32)
    np.divide(1.0, norms, out=out, where=norms > 0)
    return out
