import numpy as np
import pytest

from mrlsearch import _kernels


def run_stage(queries, vectors, rows, partial, start, stop, metric, keep, *, half=False):
    n_queries = rows.shape[0]
    out_rows = np.empty((n_queries, keep), dtype=np.int64)
    out_partial = np.empty((n_queries, keep), dtype=np.float32)
    out_scores = np.empty((n_queries, keep), dtype=np.float32)
    query_norms = np.linalg.norm(queries[:, :stop], axis=1).astype(np.float32)
    stored = vectors.astype(np.float16) if half else vectors
    row_norms = np.linalg.norm(stored[:, :stop].astype(np.float64), axis=1).astype(np.float32)
    store, table = ((stored.view(np.uint16), _kernels.HALF_TABLE) if half
                    else (vectors, _kernels.NO_TABLE))
    _kernels.rerank_stage(queries, store, table, rows, partial, start, stop, query_norms,
                          row_norms, _kernels.METRIC_CODES[metric], out_rows, out_partial,
                          out_scores)
    return out_rows, out_partial, out_scores


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
@pytest.mark.parametrize("half", [False, True])
def test_incremental_scores_equal_scores_from_scratch(metric, half):
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 97)).astype(np.float32)
    queries = rng.standard_normal((6, 97)).astype(np.float32)
    schedule = [(5, 300), (17, 120), (40, 60), (97, 9)]
    rows = np.tile(np.arange(300, dtype=np.int64), (6, 1))
    partial = np.zeros(rows.shape, dtype=np.float32)
    previous = 0
    for stop, keep in schedule:
        scratch = run_stage(queries, vectors, rows.copy(), np.zeros(rows.shape, np.float32), 0,
                            stop, metric, keep, half=half)
        rows, partial, scores = run_stage(queries, vectors, rows, partial, previous, stop,
                                          metric, keep, half=half)
        np.testing.assert_allclose(scores, scratch[2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(partial, scratch[1], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(rows, scratch[0])
        previous = stop


def test_padding_rows_score_minus_inf_and_come_out_last():
    vectors = np.eye(4, dtype=np.float32)
    queries = np.ones((1, 4), dtype=np.float32)
    rows = np.array([[-1, 2, -1, 0]], dtype=np.int64)
    out_rows, _, out_scores = run_stage(queries, vectors, rows, np.zeros((1, 4), np.float32), 0,
                                        4, "ip", 3)
    assert sorted(out_rows[0, :2].tolist()) == [0, 2] and out_rows[0, 2] == -1
    assert np.isneginf(out_scores[0, 2])


def test_half_table_is_exact():
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = np.isfinite(bits.view(np.float16))
    np.testing.assert_array_equal(_kernels.HALF_TABLE[finite],
                                  bits.view(np.float16)[finite].astype(np.float32))


def test_exp_shifted_matches_numpy():
    row = np.concatenate([-np.geomspace(1e-8, 86.9, 5000), [0.0, -87.0, -90.0, -1e30]])
    row = row.astype(np.float32)
    out = np.empty(row.size, dtype=np.float32)
    _kernels.exp_shifted(row, 0, row.size, np.float32(0.0), out)
    exact = np.exp(row.astype(np.float64))
    in_range = row >= -87.0
    np.testing.assert_allclose(out[in_range], exact[in_range], rtol=2e-7)
    assert (out[~in_range] <= np.exp(-87.0) * 1.0001).all()


@pytest.mark.parametrize("kind", [0, 1])
def test_softmax_confidence_matches_float64_softmax(kind):
    rng = np.random.default_rng(kind)
    logits = (rng.standard_normal((300, 1000)) * rng.uniform(0.1, 8.0, (300, 1))).astype(np.float32)
    labels = np.empty(300, dtype=np.int64)
    confidence = np.empty(300, dtype=np.float32)
    stop = np.empty(300, dtype=bool)
    _kernels.softmax_confidence(logits, kind, -np.inf, labels, confidence, stop)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, ::-1]
    expected = top2[:, 0] if kind == 0 else top2[:, 0] - top2[:, 1]
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    np.testing.assert_allclose(confidence, expected, rtol=1e-6, atol=1e-9)
    assert stop.all()
    # with a threshold: stop exactly where the confidence reaches it; the rest carry an upper bound
    threshold = float(np.median(expected))
    _kernels.softmax_confidence(logits, kind, threshold, labels, confidence, stop)
    clear = np.abs(expected - threshold) > 1e-6
    np.testing.assert_array_equal(stop[clear], (expected >= threshold)[clear])
    assert (confidence[~stop] >= expected[~stop] * (1 - 1e-6)).all()
