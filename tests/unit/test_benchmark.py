"""mrlsearch.benchmark.compare and ``mrlsearch bench``: every row is measured against exact."""

import json

import numpy as np
import pytest

from mrlsearch import DimensionError, FunnelPlan, Searcher
from mrlsearch.benchmark import compare, hnswlib_build, qualifies, recalls_at_k
from mrlsearch.cli import main
from mrlsearch.datasets import synthetic_mrl


@pytest.fixture(scope="module")
def data():
    return synthetic_mrl(3000, 64, n_queries=120, n_clusters=40, decay=1.0, seed=5)


def brute_force(vectors, queries, k):
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = queries.astype(np.float64) @ normed.T.astype(np.float64)
    return np.argsort(-scores, axis=1)[:, :k]


def test_recall_helpers():
    truth = np.array([[1, 2], [3, 4]])
    np.testing.assert_allclose(recalls_at_k(np.array([[2, 1], [3, 9]]), truth), [1.0, 0.5])
    assert qualifies(np.array([[1, 2], [3, 4]]), truth, 0.99)
    assert not qualifies(np.array([[1, 2], [3, 9]]), truth, 0.9)


def test_compare_rows_are_measured_against_brute_force(data):
    vectors, queries = data
    searcher = Searcher(64, metric="cosine", index_dims=(16,))
    searcher.add(vectors)
    report = compare(searcher, queries, k=10, target_recall=0.9,
                     methods=("funnel", "exact", "hnswlib"), progress=False)
    rows = {row.method: row for row in report.rows}
    assert set(rows) == {"mrlsearch funnel (tuned)", "exact numpy (BLAS matmul)",
                         "hnswlib full-dim"}
    truth = brute_force(vectors, queries[60:], 10)
    # exact numpy is exact
    assert rows["exact numpy (BLAS matmul)"].recall == pytest.approx(1.0, abs=1e-3)
    # the funnel row is the recall of the plan it reports, against an independent brute force
    plan = FunnelPlan.from_dict(report.funnel_plan)
    independent = recalls_at_k(searcher.funnel(queries[60:], 10, plan).ids, truth).mean()
    assert rows["mrlsearch funnel (tuned)"].recall == pytest.approx(independent, abs=0.005)
    for row in report.rows:
        assert row.recall >= 0.85 and row.qps_batch > 0 and row.qps_single > 0
    assert "recall@10" in report.table()
    assert json.loads(json.dumps(report.to_dict()))["n"] == 3000


def test_compare_on_a_loaded_index_keeps_its_ids_and_plan(tmp_path, data):
    vectors, queries = data
    searcher = Searcher(64, metric="cosine", index_dims=(16,))
    searcher.add(vectors, ids=np.arange(3000) * 7 + 3)  # ids are not row positions
    searcher.remove([3, 10])
    report = compare(searcher, queries, k=5, target_recall=0.9,
                     methods=("exact", "hnswlib"), progress=False)
    assert report.n == 2998
    for row in report.rows:
        assert row.recall >= 0.9
    assert searcher.plan is None


def test_compare_rejects_bad_input(data):
    vectors, queries = data
    with pytest.raises(ValueError, match="'queries'"):
        compare(vectors, queries[:3], progress=False)
    with pytest.raises(ValueError, match="'methods'"):
        compare(vectors, queries, methods=("annoy",), progress=False)
    with pytest.raises(TypeError, match=r"'methods' must be a sequence of method names, e.g. "
                                        r"\('exact',\)"):  # was "(got 'e')"
        compare(vectors, queries, methods="exact", progress=False)
    with pytest.raises(ValueError, match="'source'"):
        compare(Searcher(64), queries, progress=False)


def test_compare_queries_of_the_wrong_width_are_a_dimension_error_before_building(
        data, monkeypatch):
    vectors, queries = data
    searcher = Searcher(64, index_dims=(16,))
    searcher.add(vectors[:200])

    def no_build(*args, **kwargs):
        raise AssertionError("an index was built before the queries were checked")

    monkeypatch.setattr(Searcher, "build", no_build)
    monkeypatch.setattr(Searcher, "add", no_build)
    for source in (vectors, searcher):
        with pytest.raises(DimensionError, match=r"'queries' must have 64 columns .*\(got 32\)"):
            compare(source, queries[:, :32], progress=False)
        with pytest.raises(DimensionError, match=r"'queries' must have 64 columns"):
            compare(source, queries[:, :32], index_dims=(16,), progress=False)


def test_bench_command_writes_table_json_and_plot(tmp_path, data, capsys):
    vectors, _ = data
    np.save(tmp_path / "vectors.npy", vectors)
    assert main(["bench", str(tmp_path / "vectors.npy"), "--n-queries", "100", "--index-dims",
                 "16", "--target-recall", "0.9", "--methods", "funnel,exact",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "mrlsearch funnel (tuned)" in out
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["n"] == 2900 and len(report["rows"]) == 2
    assert (tmp_path / "out" / "bench.png").stat().st_size > 1000


def test_bench_command_on_an_index_and_usage_errors(tmp_path, data, capsys):
    vectors, queries = data
    searcher = Searcher(64, index_dims=(16,))
    searcher.add(vectors)
    searcher.save(tmp_path / "index")
    np.save(tmp_path / "queries.npy", queries)
    assert main(["bench", str(tmp_path / "index"), "--queries", str(tmp_path / "queries.npy"),
                 "--methods", "exact", "--target-recall", "0.9"]) == 0
    assert "exact numpy" in capsys.readouterr().out
    for bad in (["--methods", "annoy"], ["--methods", "usearch-f32"], ["--n-queries", "0"],
                ["-k", "-3"]):
        with pytest.raises(SystemExit) as stop:
            main(["bench", str(tmp_path / "index"), *bad])
        assert stop.value.code == 2
    assert "positive int" in capsys.readouterr().err


def test_timings_repeat_for_at_least_min_seconds_and_keep_the_best(monkeypatch):
    import mrlsearch.benchmark as benchmark

    class Clock:  # runs take exactly their durations: no real sleep to overshoot on a busy host
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()
    durations = iter([0.0] + [0.004, 0.001, 0.003] + [0.002] * 1000)
    calls = []

    def run():
        calls.append(1)
        clock.now += next(durations)
        return len(calls)

    monkeypatch.setattr(benchmark, "time", clock)
    monkeypatch.setattr(benchmark, "MIN_SECONDS", 0.0)
    seconds, out = benchmark.best_time(run, repeats=3)
    assert len(calls) == 4 and out == 4  # one warm-up, then exactly `repeats` runs
    assert seconds == pytest.approx(0.001)
    monkeypatch.setattr(benchmark, "MIN_SECONDS", 0.05)
    calls.clear()
    started = clock.now
    benchmark.best_time(run, repeats=1)
    assert clock.now - started >= 0.05 and len(calls) > 2
    monkeypatch.undo()
    qps = benchmark.single_query_qps(lambda q: None, np.zeros((10, 4)), limit=5)
    assert qps > 0


def test_interleaved_single_query_qps_alternates_passes_and_rates_each_method(monkeypatch):
    import mrlsearch.benchmark as benchmark

    monkeypatch.setattr(benchmark, "MIN_SECONDS", 0.02)
    order = []

    def fast(query):
        order.append("fast")

    def slow(query):
        order.append("slow")
        benchmark.time.sleep(0.0005)

    queries = np.zeros((10, 4))
    fast_qps, slow_qps = benchmark.interleaved_single_query_qps([fast, slow], queries, limit=4)
    runs = [name for i, name in enumerate(order) if i >= 2]  # after one warm-up call each
    passes = [runs[i:i + 4] for i in range(0, len(runs), 4)]  # untimed, timed, untimed, ...
    assert len(passes) >= 12 and len(passes) % 4 == 0
    assert all(p == [("fast", "slow")[i // 2 % 2]] * 4 for i, p in enumerate(passes))
    assert slow_qps < 2000 < fast_qps  # 0.5 ms per slow query: at most 2,000 per second


@pytest.mark.parametrize(("vectors", "options", "error", "message"), [
    (np.zeros((0, 4)), {}, ValueError, "'vectors' must hold at least one row"),
    (np.zeros(4), {}, DimensionError, "'vectors' must have shape"),
    ("x", {}, TypeError, "'vectors' must be an array of numbers"),
    (np.full((5, 4), np.nan), {}, ValueError, "'vectors' must be finite"),
    (np.ones((5, 4)), {"metric": "dot"}, ValueError, "'metric' must be one of"),
    (np.ones((5, 4)), {"M": 1}, ValueError, r"'M' must be an int in \[2, 2048\]"),
    (np.ones((5, 4)), {"ef_construction": 0}, ValueError, "'ef_construction' must be an int"),
    (np.ones((5, 4)), {"threads": 0}, ValueError, "'threads' must be a positive int"),
    (np.ones((5, 4)), {"threads": True}, TypeError, "'threads' must be a positive int"),
])
def test_hnswlib_build_refuses_bad_input_clearly(vectors, options, error, message):
    with pytest.raises(error, match=message):
        hnswlib_build(vectors, **options)


def test_thread_scaling_alternates_windows_and_keeps_each_sides_best(monkeypatch):
    import threading

    import mrlsearch.benchmark as benchmark

    started = []  # the slot of each worker thread started, in order

    class RecordingThread(threading.Thread):
        def start(self):
            started.append(self._args[0])
            super().start()

    monkeypatch.setattr(benchmark.threading, "Thread", RecordingThread)
    out = benchmark.thread_scaling(lambda query: None, np.zeros((7, 4)), seconds=0.06,
                                   rounds=3)
    assert started == [0, 0, 1] * 3  # one thread, then two, three times over
    windows = out["thread_windows"]
    assert len(windows) == 3 and all(len(w) == 2 and min(w) > 0 for w in windows)
    assert out["qps_1_thread"] == max(w[0] for w in windows)
    assert out["qps_2_threads"] == max(w[1] for w in windows)
    assert out["thread_scaling"] == out["qps_2_threads"] / out["qps_1_thread"]
    # a window shorter than one query still counts the query it ran
    slow = benchmark.thread_scaling(lambda query: benchmark.time.sleep(0.01),
                                    np.zeros((3, 4)), seconds=np.float32(0.001), rounds=1)
    assert slow["qps_1_thread"] > 0 and slow["qps_2_threads"] > 0
    for bad, error in ((0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                       ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="'seconds' must be a positive number"):
            benchmark.thread_scaling(print, np.zeros((7, 4)), seconds=bad)
    with pytest.raises(ValueError, match="'rounds'"):
        benchmark.thread_scaling(print, np.zeros((7, 4)), rounds=0)


def test_bench_methods_accept_every_method_of_compare():
    from mrlsearch.benchmark import METHODS
    from mrlsearch.cli import build_parser

    def methods(text):
        return build_parser().parse_args(["bench", "v.npy", "--methods", text]).methods

    assert methods(",".join(METHODS)) == METHODS
    assert methods("usearch") == ("usearch-f16", "usearch-i8")
    assert methods("exact,usearch,usearch-i8") == ("exact", "usearch-f16", "usearch-i8")
    assert methods("usearch-i8") == ("usearch-i8",)
    # the default is unchanged: usearch is an optional dependency and slow to build
    assert build_parser().parse_args(["bench", "v.npy"]).methods == (
        "funnel", "exact", "hnswlib", "faiss")


def test_bench_bad_out_fails_before_the_run(tmp_path, data, capsys, monkeypatch):
    import mrlsearch.benchmark

    def no_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr(mrlsearch.benchmark, "compare", no_run)
    np.save(tmp_path / "vectors.npy", data[0])
    (tmp_path / "file").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "vectors.npy"), "--methods", "exact",
                 "--out", str(tmp_path / "file" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mrlsearch: error: '--out' ({tmp_path / 'file' / 'out'}) cannot be "
                          "written") and err.count("\n") == 1


def test_the_l2_ground_truth_holds_where_the_rows_share_a_large_offset():
    # 2 q.x - |x|^2 in float32 cancelled at an offset of 1000: every recall was measured
    # against a wrong truth
    from mrlsearch.benchmark import _exact_numpy, _l2_terms, _rescore

    rng = np.random.default_rng(0)
    vectors = (1000 + rng.standard_normal((2000, 32))).astype(np.float32)
    queries = (1000 + rng.standard_normal((20, 32))).astype(np.float32)
    distances = ((queries[:, None, :].astype(np.float64) - vectors[None]) ** 2).sum(-1)
    truth = np.argsort(distances, axis=1)[:, :10]
    assert recalls_at_k(_exact_numpy(vectors, "l2", 10)(queries), truth).mean() == 1.0
    # the float rescoring of usearch i8's shortlists, on the same terms
    moved, centre, squared = _l2_terms(vectors, "l2")
    shortlists = np.argsort(distances, axis=1)[:, :40][:, ::-1].copy()  # worst first
    rescored = _rescore(moved, squared, queries - centre, shortlists, 10)
    np.testing.assert_array_equal(rescored, truth)
