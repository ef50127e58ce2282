"""Searcher.build's sample estimate against a plain per-prefix reference."""

import math

import numpy as np
import pytest

from mrlsearch import SearchResult, Searcher
from mrlsearch._build import graphs_to_build, shortlist_needed
from mrlsearch._results import recall_per_query, tied_recall_per_query
from mrlsearch.datasets import synthetic_mrl


def _reference(sample, queries, dims, k, target_recall, metric):
    """Each prefix scored on its own; every true neighbour's rank counted, then sorted."""
    def scores(prefix_dim):
        x, q = sample[:, :prefix_dim].astype(np.float64), queries[:, :prefix_dim].astype(np.float64)
        if metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        s = q @ x.T
        return 2 * s - np.square(x).sum(axis=1)[None, :] if metric == "l2" else s

    truth = np.argsort(-scores(sample.shape[1]), axis=1)[:, :k]
    need = math.ceil(target_recall * k)
    out = {}
    for prefix_dim in dims:
        s = scores(prefix_dim)
        truth_scores = np.take_along_axis(s, truth, axis=1)
        ranks = np.sort((s[:, None, :] > truth_scores[:, :, None]).sum(axis=2) + 1, axis=1)
        out[prefix_dim] = int(np.percentile(ranks[:, need - 1], 90))
    return out


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("target_recall", [0.9, 1.0])
def test_shortlist_needed_matches_scoring_each_prefix_alone(metric, target_recall):
    vectors, queries = synthetic_mrl(3000, 64, n_queries=60, n_clusters=30, seed=2)
    dims = [8, 16, 32, 64]
    got = shortlist_needed(vectors, queries, dims, 10, target_recall, metric)
    want = _reference(vectors, queries, dims, 10, target_recall, metric)
    assert got.keys() == want.keys()
    for prefix_dim in dims:  # float32 sums in blocks against float64 ones: ranks may differ
        assert abs(got[prefix_dim] - want[prefix_dim]) <= max(1, 0.02 * want[prefix_dim])
    assert got[64] <= got[8]


def test_graphs_to_build_builds_one_graph_and_flags_an_unsure_choice():
    # shares of the full-dim walk's estimated cost as measured on the benchmark data sets
    assert graphs_to_build({16: 112.0, 128: 35.9, 768: 100.0}, 768) == ([128], False)
    assert graphs_to_build({128: 19.0, 2048: 100.0}, 2048) == ([128], False)  # synthetic 2048
    assert graphs_to_build({256: 83.3, 384: 100.0}, 384) == ([384], False)  # MiniLM
    assert graphs_to_build({256: 50.6, 768: 100.0}, 768) == ([256], True)  # the demo's data
    assert graphs_to_build({256: 100.0}, 256) == ([256], False)


def test_an_estimate_found_far_off_builds_the_full_dim_graph_too(monkeypatch):
    import mrlsearch._build as build

    vectors, queries = synthetic_mrl(3000, 64, n_queries=120, seed=4)
    monkeypatch.setattr(build, "graphs_to_build", lambda costs, dim: ([16], True))
    monkeypatch.setattr(build, "MISESTIMATE", 0.0)  # any tuned beam counts as far off
    searcher = Searcher.build(vectors, queries=queries, progress=False)
    report = searcher.build_report
    assert report["graphs_built"] == [16, 64]
    assert searcher.index_dims == (searcher.plan.stages[0][0],)
    monkeypatch.setattr(build, "MISESTIMATE", 1e9)  # never far off: one graph
    assert Searcher.build(vectors, queries=queries, progress=False
                          ).build_report["graphs_built"] == [16]


def test_build_tunes_on_data_with_many_copies_of_one_vector():
    # blank lines of a text corpus embed to one vector: exact search keeps the first copies, a
    # graph walk finds others, and recall by ids alone fell to 0 for queries among them
    vectors, _ = synthetic_mrl(3000, 64, n_queries=0, seed=2)
    copies = np.concatenate([vectors, np.repeat(vectors[7:8], 300, axis=0)])
    searcher = Searcher.build(copies, progress=False)  # raised: "best was 0.000"
    queries = copies[np.r_[3000:3050, 0:50]]
    truth = searcher.exact(queries, 10)
    found = searcher.search(queries, 10)
    recall = tied_recall_per_query(found, truth)
    assert recall.mean() >= 0.95 and recall[:50].min() == 1.0
    if found.stats[0].method == "hnsw":  # a scan breaks ties by row as exact does
        assert recall_per_query(found.ids, truth)[:50].max() < 1.0  # by ids: ties missed


def test_tied_recall_counts_only_ties_of_the_last_true_score():
    truth = SearchResult(np.array([[1, 2, -1], [5, 6, 7]]),
                         np.array([[-0.0, -0.0, -np.inf], [3.0, 2.0, 1.0]], dtype=np.float32),
                         np.array([2, 3]), (), "l2")
    found = SearchResult(np.array([[9, 1, 8], [5, 6, 8]]),
                         np.array([[0.0, 0.0, -0.5], [3.0, 2.0, 0.999]], dtype=np.float32),
                         np.array([3, 3]), (), "l2")
    np.testing.assert_allclose(tied_recall_per_query(found, truth), [1.0, 2 / 3])
    np.testing.assert_allclose(recall_per_query(found.ids, truth), [0.5, 2 / 3])


def _tied_recall_reference(found, truth, rtol=1e-5):
    """tied_recall_per_query one row at a time, as its docstring states the rule."""
    out = []
    for ids, scores, want, want_scores in zip(found.ids, found.scores, truth.ids, truth.scores):
        want, want_scores = want[: len(ids)], want_scores[: len(ids)]
        valid = want >= 0
        if not valid.any():
            out.append(1.0)
            continue
        last = float(want_scores[valid][-1])
        scale = max([abs(float(s)) for s in want_scores[valid]]
                    + [abs(float(scores[0])) if np.isfinite(scores[0]) else 0.0, 1e-30])
        hits = sum(1 for i in ids if i >= 0 and i in set(want[valid].tolist()))
        hits += sum(1 for i, s in zip(ids, scores)
                    if i >= 0 and i not in set(want.tolist()) and s >= last - rtol * scale)
        out.append(min(hits, int(valid.sum())) / int(valid.sum()))
    return np.array(out)


def test_tied_recall_matches_a_row_by_row_loop():
    rng = np.random.default_rng(5)

    def draw(n, k, pool):  # few distinct scores: many ties; some padding at the end
        ids = np.stack([rng.permutation(pool + k)[:k] for _ in range(n)]).astype(np.int64)
        scores = np.sort(rng.integers(0, 4, (n, k)) / 2, axis=1)[:, ::-1].astype(np.float32)
        pad = np.sort(rng.random((n, k)) < 0.15, axis=1)
        ids[pad], scores[pad] = -1, -np.inf
        return SearchResult(ids, scores, (ids >= 0).sum(axis=1), (), "ip")

    for _ in range(200):
        n, k = int(rng.integers(1, 20)), int(rng.integers(1, 12))
        pool = int(rng.integers(0, 3 * k + 2))
        found, truth = draw(n, k, pool), draw(n, k, pool)
        np.testing.assert_allclose(tied_recall_per_query(found, truth),
                                   _tied_recall_reference(found, truth))


def test_a_prefix_graph_that_reaches_no_plan_falls_back_to_the_full_dim(monkeypatch):
    import mrlsearch._build as build

    vectors, queries = synthetic_mrl(2000, 64, n_queries=80, seed=6)
    monkeypatch.setattr(build, "graphs_to_build", lambda costs, dim: ([16], False))
    real_tune = Searcher.tune

    def tune(self, *args, **kwargs):
        if self.index_dims == (16,):
            raise ValueError("no funnel schedule reached target_recall (forced)")
        return real_tune(self, *args, **kwargs)

    monkeypatch.setattr(Searcher, "tune", tune)
    searcher = Searcher.build(vectors, queries=queries, progress=False)
    assert searcher.build_report["graphs_built"] == [16, 64]
    assert searcher.index_dims == (64,) and searcher.plan.stages[0][0] == 64


def test_the_l2_estimate_does_not_move_with_a_shared_offset():
    # float32 2 q.x - |x|^2 cancelled once every row shared an offset of 1000
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    centred = shortlist_needed(sample, queries, [8, 16, 32], 10, 0.95, "l2")
    moved = shortlist_needed(sample + 1000, queries + 1000, [8, 16, 32], 10, 0.95, "l2")
    assert centred[32] == 10
    for dim in (8, 16, 32):
        assert abs(moved[dim] - centred[dim]) <= 0.01 * centred[dim] + 1
