"""usearch rows of mrlsearch.benchmark.compare: tuned by the same rule, measured against exact."""

import numpy as np
import pytest

from mrlsearch.benchmark import METHODS, _rescore, _usearch, _usearch_keys, compare, recalls_at_k
from mrlsearch.datasets import synthetic_mrl

pytest.importorskip("usearch")


@pytest.fixture(scope="module")
def data():
    return synthetic_mrl(2000, 48, n_queries=80, n_clusters=30, decay=1.0, seed=11)


def brute_force(vectors, queries, k, metric):
    base, q = vectors.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        scores = q @ base.T
    elif metric == "ip":
        scores = q @ base.T
    else:
        scores = -((q[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
    return np.argsort(-scores, axis=1)[:, :k]


def test_usearch_methods_are_known_but_not_run_by_default(data):
    vectors, queries = data
    assert {"usearch-f16", "usearch-i8"} <= set(METHODS)
    report = compare(vectors, queries, k=5, target_recall=0.9, methods=("exact",),
                     progress=False)
    assert [row.method for row in report.rows] == ["exact numpy (BLAS matmul)"]


def test_compare_usearch_rows_against_brute_force(data):
    vectors, queries = data
    report = compare(vectors, queries, k=10, target_recall=0.9, index_dims=(16,),
                     methods=("usearch-f16", "usearch-i8"), progress=False)
    rows = {row.method: row for row in report.rows}
    assert set(rows) == {"usearch f16", "usearch i8 + float rescoring"}, report.notes
    assert "ef=" in rows["usearch f16"].detail
    assert "rescored at float32" in rows["usearch i8 + float rescoring"].detail
    for row in report.rows:
        assert row.recall >= 0.85 and row.qps_batch > 0 and row.qps_single > 0
        assert row.build_s > 0 and row.memory_mb > 0


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_usearch_runner_recall_and_order(data, metric, dtype):
    vectors, queries = data
    k = 10
    fit, test = queries[:40], queries[40:]
    truth_fit = brute_force(vectors, fit, k, metric)
    found = _usearch(vectors, metric, k, fit, truth_fit, 0.9, dtype, 16, 100, 2)
    assert found is not None
    run, _, _, detail = found
    ids = run(test)
    assert ids.shape == (len(test), k) and ids.dtype == np.int64
    truth = brute_force(vectors, test, k, metric)
    assert recalls_at_k(ids, truth).mean() >= 0.85
    assert run(test[0]).shape == (1, k)  # one query as a 1-d array
    if dtype == "i8":
        # rescored at float32: every returned list is in exact score order
        base = vectors.astype(np.float64)
        if metric == "cosine":
            base = base / np.linalg.norm(base, axis=1, keepdims=True)
        for query, row in zip(test.astype(np.float64), ids):
            scores = (base[row] @ query if metric != "l2"
                      else -((base[row] - query) ** 2).sum(axis=1))
            assert np.all(np.diff(scores) <= 1e-5), detail


def test_rescore_keeps_the_best_of_the_shortlist_and_skips_missing():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    candidates = np.array([[4, 9, 1, -1, -1], [0, 1, 2, 3, 4], [7, -1, 8, 6, 5]])
    got = _rescore(base, None, queries, candidates, 2)
    for query, shortlist, row in zip(queries, candidates, got):
        shortlist = shortlist[shortlist >= 0]
        expected = shortlist[np.argsort(-(base[shortlist] @ query))][:2]
        np.testing.assert_array_equal(row, expected)
    squared = (base * base).sum(axis=1)
    got = _rescore(base, squared, queries, candidates, 3)
    for query, shortlist, row in zip(queries, candidates, got):
        shortlist = shortlist[shortlist >= 0]
        distance = ((base[shortlist] - query) ** 2).sum(axis=1)
        np.testing.assert_array_equal(row, shortlist[np.argsort(distance)][:3])


def test_usearch_keys_marks_missing_results():
    class Matches:
        keys = np.array([[3, 5, 0], [1, 0, 0]], dtype=np.uint64)
        counts = np.array([2, 1])

    np.testing.assert_array_equal(_usearch_keys(Matches, 3), [[3, 5, -1], [1, -1, -1]])
    np.testing.assert_array_equal(_usearch_keys(Matches, 4), [[3, 5, -1, -1], [1, -1, -1, -1]])
