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
