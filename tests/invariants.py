"""Reference computations and invariants shared by the tests (plain numpy, float64)."""

from __future__ import annotations

import numpy as np


def reference_scores(queries, vectors, metric, prefix_dim):
    """Scores of every (query, vector) pair at a prefix, higher is better, in float64."""
    q = np.asarray(queries, dtype=np.float64)[:, :prefix_dim]
    x = np.asarray(vectors, dtype=np.float64)[:, :prefix_dim]
    if metric == "ip":
        return q @ x.T
    if metric == "cosine":
        qn = np.linalg.norm(q, axis=1)[:, None]
        xn = np.linalg.norm(x, axis=1)[None, :]
        denom = qn * xn
        return np.divide(q @ x.T, denom, out=np.zeros((q.shape[0], x.shape[0])), where=denom > 0)
    if metric == "l2":
        return -(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    raise ValueError(metric)


def reference_topk(queries, vectors, ids, metric, prefix_dim, k):
    scores = reference_scores(queries, vectors, metric, prefix_dim)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order], np.take_along_axis(scores, order, axis=1)


def assert_same_neighbours(got_ids, got_scores, want_ids, want_scores, *, rtol=1e-4, atol=1e-4):
    """Same neighbours up to ties (faiss' check_ref_knn_with_draws rule).

    Scores must match position by position; every id whose reference score is strictly above
    the k-th one must be present. Ids at the k-th score may be any of the tied ones.
    """
    got_ids, want_ids = np.asarray(got_ids), np.asarray(want_ids)
    want_scores = np.asarray(want_scores, dtype=np.float64)
    np.testing.assert_allclose(got_scores, want_scores, rtol=rtol, atol=atol)
    for row in range(want_ids.shape[0]):
        valid = want_ids[row] >= 0
        if not valid.any():
            assert (got_ids[row] < 0).all()
            continue
        kth = want_scores[row][valid][-1]
        sure = want_ids[row][valid & (want_scores[row] > kth + atol + rtol * abs(kth))]
        missing = set(sure.tolist()) - set(got_ids[row].tolist())
        assert not missing, f"row {row}: ids {sorted(missing)} missing from {got_ids[row]}"


def assert_rows_sorted(scores):
    scores = np.asarray(scores)
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    assert np.all(np.diff(finite, axis=1) <= 1e-6), "rows must be sorted best first"
