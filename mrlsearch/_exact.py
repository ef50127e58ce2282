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
#: ... and over at most this many bytes where each block is a float32 copy (of float16 storage,
#: or of rows moved for L2): for a few queries a block was up to a million rows.
_EXACT_BLOCK_BYTES = 16 << 20


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
    centre = _l2_centre(store, prefix_dim) if metric == "l2" else None
    if centre is not None:
        query_part = query_part - centre
        query_norms = np.sqrt(_squares(query_part))
    else:
        query_norms = np.linalg.norm(query_part.astype(np.float64), axis=1).astype(np.float32)
    query_scale, query_shift = _score_terms(metric, query_norms, query_side=True)
    heap_rows = np.full((n_queries, keep), -1, dtype=np.int64)
    heap_scores = np.full((n_queries, keep), -np.inf, dtype=np.float32)
    block = max(1024, _EXACT_BLOCK // max(n_queries, 1))
    if centre is not None or store.vectors.dtype != np.float32:  # each block is a copy
        block = max(1024, min(block, _EXACT_BLOCK_BYTES // (4 * prefix_dim)))
    moved = None if centre is None else np.empty((min(block, store.rows), prefix_dim),
                                                 dtype=np.float32)
    for lo in range(0, store.rows, block):
        hi = min(lo + block, store.rows)
        part = store.vectors[lo:hi, :prefix_dim].astype(np.float32, copy=False)
        if centre is None:
            row_norms = store.norms[lo:hi, col]
        else:  # the rows about the centre, and their norms there
            part = np.subtract(part, centre, out=moved[: hi - lo])
            row_norms = np.sqrt(_squares(part))
        row_scale, row_shift = _score_terms(metric, row_norms, query_side=False)
        deleted = store.deleted[lo:hi]
        kernels.merge_block(query_part @ part.T, lo, query_scale, query_shift, row_scale,
                            row_shift, metric == "l2",
                            np.ascontiguousarray(deleted) if deleted.any() else _NONE_DELETED,
                            heap_scores, heap_rows)
    kernels.sort_heaps(heap_scores, heap_rows)
    return heap_rows, heap_scores


def _l2_centre(store: VectorStore, prefix_dim: int) -> np.ndarray | None:
    """Where squared L2 at ``prefix_dim`` should be computed about, or None (the origin).

    ``2 q.x - |q|^2 - |x|^2`` in float32 cancels where the vectors share an offset larger
    than their spread (rows of ``1000 + N(0, 1)``: distance errors near the distances
    themselves, recall@10 0.43). Distances do not change with the origin, so there queries
    and rows are moved by the mean of a few hundred rows spread over the store; one centre
    serves every block, so equal rows keep equal scores. Rows whose mean lies within their
    spread of the origin (embeddings, as a rule) keep the stored norms, and the faster path.
    """
    step = max(1, store.rows // 256)
    sample = store.vectors[: store.rows : step, :prefix_dim].astype(np.float64)
    centre = sample.mean(axis=0)
    spread = np.square(sample - centre).sum(axis=1).mean()
    return centre.astype(np.float32) if centre @ centre > spread else None


def _squares(rows: np.ndarray) -> np.ndarray:
    """Each row's squared norm."""
    return np.einsum("ij,ij->i", rows, rows)


def _score_terms(metric: str, norms: np.ndarray, *, query_side: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of one side of :func:`~mrlsearch._exact_kernels.merge_block`'s score:
    cosine divides by both norms (a zero norm scores 0), squared L2 is ``2 dot - |q|^2 - |x|^2``
    (about :func:`_l2_centre`) and the inner product is the dot product."""
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
