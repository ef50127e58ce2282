"""Auto-configuration behind :meth:`Searcher.build`: which graph dims, from a sample."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ._payloads import encode as encode_payloads
from ._validation import check_fraction, check_matrix, check_positive_int

__all__: list[str] = []

#: A prefix graph walk computes about this many distances per unit of ``ef`` (M=16).
_DISTANCES_PER_EF = 12.0
_SAMPLE_QUERIES = 300
#: A prefix graph estimated at most this share of the full-dim walk's cost is built alone: it
#: wins by more than any error of the estimate (measured: 0.19 -> 2.8x hnswlib at 2048 dims).
PREFIX_ONLY_BELOW = 0.25
#: A best prefix estimated at this share or more is not built: on real MRL embeddings (0.83 and
#: 1.0 measured) an int8 walk of the full-dim graph beat every prefix graph.
FULL_ONLY_ABOVE = 0.7


def shortlist_needed(sample: np.ndarray, queries: np.ndarray, dims: Sequence[int], k: int,
                     target_recall: float, metric: str) -> dict[int, int]:
    """For each dim, the shortlist at that prefix (within ``sample``) that holds a
    ``target_recall`` share of each query's full-dim top ``k``, at the 90th percentile of
    queries."""
    def scores(prefix_dim: int) -> np.ndarray:
        x = sample[:, :prefix_dim].astype(np.float32)
        q = queries[:, :prefix_dim].astype(np.float32)
        if metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        s = q @ x.T
        if metric == "l2":
            s = 2 * s - np.square(x).sum(axis=1)[None, :]
        return s

    full = scores(sample.shape[1])
    truth = np.argpartition(-full, k - 1, axis=1)[:, :k]
    need = int(math.ceil(target_recall * k))
    out = {}
    for prefix_dim in dims:
        s = scores(prefix_dim)
        truth_scores = np.take_along_axis(s, truth, axis=1)
        # rank of each true neighbour in the prefix ordering (1 = best)
        ranks = (s[:, None, :] > truth_scores[:, :, None]).sum(axis=2) + 1 \
            if s.shape[1] * k * s.shape[0] < 5e8 else _ranks_blocked(s, truth_scores)
        ranks.sort(axis=1)
        per_query = ranks[:, need - 1]
        out[int(prefix_dim)] = int(np.percentile(per_query, 90))
    return out


def _ranks_blocked(s: np.ndarray, truth_scores: np.ndarray) -> np.ndarray:
    ranks = np.empty(truth_scores.shape, dtype=np.int64)
    for i in range(s.shape[0]):
        ranks[i] = (s[i][None, :] > truth_scores[i][:, None]).sum(axis=1) + 1
    return ranks


def estimate_costs(needed: dict[int, int], *, n_rows: int, sample_rows: int, dim: int,
                   k: int) -> dict[int, float]:
    """Multiply-adds per query of a walk at each dim plus the float reranking after it."""
    costs = {}
    for prefix_dim, shortlist in needed.items():
        scaled = max(k, int(math.ceil(shortlist * n_rows / max(sample_rows, 1))))
        ef = max(scaled, 2 * k)
        costs[prefix_dim] = _DISTANCES_PER_EF * ef * prefix_dim + scaled * (dim - prefix_dim)
    return costs


def graphs_to_build(costs: dict[int, float], dim: int) -> list[int]:
    """Which graphs to build from the estimated costs: the best prefix alone, the full dim
    alone, or both (then :meth:`Searcher.tune` measures which one wins)."""
    best_prefix = min((d for d in costs if d != dim), key=costs.get, default=dim)
    if best_prefix == dim:
        return [dim]
    share = costs[best_prefix] / costs[dim]
    if share <= PREFIX_ONLY_BELOW:
        return [best_prefix]
    if share >= FULL_ONLY_ABOVE:
        return [dim]
    return [best_prefix, dim]


def build_searcher(cls, vectors, *, queries, k, target_recall, ids, payloads, metric, dims,
                   dtype, M, ef_construction, sample_size, progress):
    """See :meth:`Searcher.build`."""
    source = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if source.ndim != 2 or source.shape[0] == 0:
        check_matrix(source, "vectors", dim=source.shape[-1] if source.ndim else 1,
                     allow_1d=False)
    n_rows, dim = source.shape
    if payloads is not None:  # refused before the sample work, not after it; encoded once
        payloads = encode_payloads(payloads, n_rows, "payloads")
    k = check_positive_int(k, "k")
    target_recall = check_fraction(target_recall, "target_recall")
    sample_size = check_positive_int(sample_size, "sample_size")
    rng = np.random.default_rng(0)
    if queries is None:
        picked = np.sort(rng.choice(n_rows, size=min(_SAMPLE_QUERIES, n_rows), replace=False))
        query_batch = np.asarray(source[picked], dtype=np.float32)
    else:
        query_batch, _ = check_matrix(queries, "queries", dim=dim, allow_1d=False)
    probe = cls(dim, dims, metric=metric, dtype=dtype, M=M, ef_construction=ef_construction)
    candidate_dims = [d for d in probe.dims if d >= 16 or d == dim]
    sample_rows = min(sample_size, n_rows)
    sample_at = np.sort(rng.choice(n_rows, size=sample_rows, replace=False))
    sample = np.asarray(source[sample_at], dtype=np.float32)
    effective_k = min(k, sample_rows)
    needed = shortlist_needed(sample, query_batch[:_SAMPLE_QUERIES], candidate_dims,
                              effective_k, target_recall, metric)
    costs = estimate_costs(needed, n_rows=n_rows, sample_rows=sample_rows, dim=dim, k=k)
    # where the estimate is close, both graphs are built and a measurement decides; where it
    # is clear, only the winner is built (a second graph would double the build time)
    index_dims = graphs_to_build(costs, dim)
    searcher = cls(dim, probe.dims, metric=metric, index_dims=index_dims, M=M,
                   ef_construction=ef_construction, dtype=dtype)
    searcher.add(source, ids, payloads=payloads, progress=progress)
    plan = searcher.tune(query_batch, k=k, target_recall=target_recall, progress=progress)
    searcher.drop_graphs([plan.stages[0][0]])
    searcher.build_report = {
        "sample_rows": sample_rows, "shortlist_needed": needed,
        "estimated_cost": {d: float(c) for d, c in costs.items()},
        "graphs_built": index_dims, "plan": plan.to_dict(),
    }
    return searcher
