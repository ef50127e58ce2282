"""The compiled search path against brute force, hnswlib and numpy references."""

import pickle
import time

import hnswlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invariants import assert_same_neighbours, reference_scores

from mrlsearch import DimensionError, FunnelPlan, Searcher, _engine
from mrlsearch._codes import encode_binary, encode_int8, hamming_reference, int8_scales
from mrlsearch._graphs import links_from_state
from mrlsearch._store import VectorStore
from mrlsearch.datasets import synthetic_mrl

METRICS = ("cosine", "ip", "l2")


def build(metric="cosine", n=1500, dim=64, dims=(16, 32, 64), index_dims=(16,), seed=0,
          dtype="float32", codes=("int8", "binary")):
    vectors, queries = synthetic_mrl(n, dim, n_queries=40, n_clusters=30, seed=seed)
    searcher = Searcher(dim, dims, metric=metric, index_dims=index_dims, dtype=dtype,
                        codes=codes)
    ids = searcher.add(vectors, num_threads=1)
    return searcher, vectors, queries, ids


@pytest.mark.parametrize("metric", METRICS)
def test_graph_walk_recall_at_least_hnswlibs_on_the_same_graph(metric):
    vectors, queries = synthetic_mrl(3000, 32, n_queries=60, n_clusters=40, seed=3)
    searcher = Searcher(32, (8, 16, 32), metric=metric, index_dims=(16,), codes=())
    searcher.add(vectors, num_threads=1)
    exact = searcher.exact(queries, k=10, dim=16)
    # hnswlib's own search over a graph built the same way (one thread: the same graph)
    graph = hnswlib.Index(space=metric, dim=16)
    graph.init_index(max_elements=3000, M=16, ef_construction=200, random_seed=100)
    graph.add_items(np.ascontiguousarray(vectors[:, :16]), np.arange(3000), num_threads=1)
    for ef in (10, 20, 40):
        ours = searcher.funnel(queries, k=10, stages=[(16, 10)], ef=ef)
        graph.set_ef(ef)
        labels, _ = graph.knn_query(np.ascontiguousarray(queries[:, :16]), k=10)
        theirs = float(np.mean([np.intersect1d(a, b).size / 10
                                for a, b in zip(labels, exact.ids)]))
        assert ours.recall(exact) >= theirs - 1e-9, (ef, ours.recall(exact), theirs)


def test_walk_visits_what_hnswlib_visits():
    # hnswlib and the compiled walk on one graph return the same candidates at every ef
    vectors, queries = synthetic_mrl(2000, 16, n_queries=30, n_clusters=20, seed=5)
    graph = hnswlib.Index(space="l2", dim=16)
    graph.init_index(max_elements=2000, M=8, ef_construction=100, random_seed=1)
    graph.add_items(vectors, np.arange(2000), num_threads=1)
    links = links_from_state(graph.__getstate__()[0], 2000)
    assert links.level0.shape == (2000, 17) and links.entry >= 0
    searcher = Searcher(16, (16,), metric="l2", index_dims=(16,), M=8, ef_construction=100,
                        seed=1, codes=())
    searcher.add(vectors, num_threads=1)
    for ef in (5, 30):
        graph.set_ef(ef)
        labels, _ = graph.knn_query(queries, k=ef)
        ours = searcher.funnel(queries, k=ef, stages=[(16, ef)], ef=ef)
        for got, want in zip(ours.ids, labels):
            assert set(got.tolist()) == set(want.tolist())


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_sorted_beam_walks_as_the_two_heap_walk(metric, precision, monkeypatch):
    # with nothing deleted the walk keeps its beam in one sorted array; handed an all-False
    # deleted mask it runs the two-heap walk of hnswlib: both must find the same rows
    searcher, vectors, queries, ids = build(metric, n=2000, index_dims=(32,))
    stages = [(32, precision, 40), (64, "float32", 10)]
    for ef in (40, 90):
        pooled = searcher.funnel(queries, k=10, stages=stages, ef=ef)
        with monkeypatch.context() as patch:
            patch.setattr(_engine, "_walk_mask", lambda store: np.zeros(store.capacity, bool))
            heaped = searcher.funnel(queries, k=10, stages=stages, ef=ef)
        if precision == "binary":  # Hamming distances tie often: ties may break either way
            exact = searcher.exact(queries, k=10)
            assert abs(pooled.recall(exact) - heaped.recall(exact)) <= 0.05
            continue
        np.testing.assert_array_equal(pooled.ids, heaped.ids)
        np.testing.assert_array_equal(pooled.scores, heaped.scores)
        assert pooled.stats[0].candidates == heaped.stats[0].candidates


@pytest.mark.parametrize("metric", METRICS)
def test_single_exact_stage_equals_exact(metric):
    searcher, vectors, queries, ids = build(metric, index_dims=(16, 64))
    full = searcher.funnel(queries, k=10, stages=[(64, len(searcher))])
    truth = searcher.exact(queries, k=10)
    assert_same_neighbours(full.ids, full.scores, truth.ids, truth.scores)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_int8_and_binary_scores_match_numpy(metric):
    searcher, vectors, queries, ids = build(metric, n=400)
    prefix = vectors[:, :16].astype(np.float64)
    q = queries[:, :16].astype(np.float64)
    if metric == "cosine":
        prefix = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scales = int8_scales(prefix.astype(np.float32))
    codes = encode_int8(prefix.astype(np.float32), scales)
    want_int8 = (q * scales) @ codes.T.astype(np.float64)
    got = searcher.funnel(queries, k=400, stages=[(16, "int8", 400)])
    for row in range(len(queries)):
        lookup = dict(zip(got.ids[row].tolist(), got.scores[row].tolist()))
        np.testing.assert_allclose([lookup[i] for i in ids], want_int8[row], rtol=1e-4,
                                   atol=1e-4)
    bits = encode_binary(vectors[:, :16])
    got = searcher.funnel(queries, k=400, stages=[(16, "binary", 400)])
    for row in range(len(queries)):
        want = -hamming_reference(encode_binary(queries[row:row + 1, :16])[0], bits)
        lookup = dict(zip(got.ids[row].tolist(), got.scores[row].tolist()))
        np.testing.assert_array_equal([lookup[i] for i in ids], want)


def test_binary_codes_pack_each_sign_in_its_bit():
    x = np.random.default_rng(0).standard_normal((7, 130)).astype(np.float32)
    bits = encode_binary(x)
    assert bits.shape == (7, 3) and bits.dtype == np.uint64
    for r in range(7):
        for c in range(130):
            assert ((int(bits[r, c // 64]) >> (c % 64)) & 1) == (x[r, c] > 0)


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_code_stages_give_the_ids_of_the_same_plan_in_numpy(precision):
    searcher, vectors, queries, ids = build("cosine", n=600)
    stages = [(16, precision, 600), (16, "float32", 60), (32, 20), (64, 5)]
    got = searcher.funnel(queries, k=5, stages=stages)
    prefix = vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True)
    scales = int8_scales(prefix)
    for row, query in enumerate(queries):
        rows = np.arange(600)
        if precision == "int8":
            qn = query[:16] / np.linalg.norm(query[:16])
            first = (qn * scales).astype(np.float64) @ encode_int8(prefix, scales).T
        else:
            first = -hamming_reference(encode_binary(query[None, :16])[0],
                                       encode_binary(vectors[:, :16])).astype(np.float64)
        rows = rows[np.argsort(-first, kind="stable")]  # keeps all 600: order only
        for prefix_dim, keep in ((16, 60), (32, 20), (64, 5)):
            scores = reference_scores(query[None], vectors[rows], "cosine", prefix_dim)[0]
            order = np.argsort(-scores, kind="stable")[:keep]
            rows, best = rows[order], scores[order]
        assert_same_neighbours(got.ids[row:row + 1], got.scores[row:row + 1], ids[rows][None],
                               best[None])


def test_code_walk_with_float_rerank_reaches_the_float_recall():
    searcher, vectors, queries, ids = build("cosine", n=3000, index_dims=(64,))
    truth = searcher.exact(queries, k=10)
    float_walk = searcher.funnel(queries, k=10, stages=[(64, 40)], ef=80)
    int8_walk = searcher.funnel(queries, k=10, stages=[(64, "int8", 40), (64, 10)], ef=80)
    assert int8_walk.recall(truth) >= float_walk.recall(truth) - 0.02
    assert int8_walk.stats[0].precision == "int8"
    assert int8_walk.stats[1].precision == "float32"


@pytest.fixture(scope="module")
def filter_index(tmp_path_factory):
    searcher, vectors, queries, ids = build("cosine", n=2000)
    directory = tmp_path_factory.mktemp("filter") / "index"
    searcher.save(directory)
    return searcher, vectors, queries, ids, directory


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.0, 1.0), as_mask=st.booleans(),
       removed=st.integers(0, 300))
def test_filters_and_deletions_are_never_escaped(filter_index, seed, share, as_mask, removed):
    searcher, vectors, queries, ids, directory = filter_index
    rng = np.random.default_rng(seed)
    allowed = ids[rng.random(len(ids)) < share]
    gone = rng.choice(ids, size=removed, replace=False) if removed else np.zeros(0, int)
    if removed:
        searcher = Searcher.load(directory)
        searcher.remove(gone)
    live_allowed = np.setdiff1d(allowed, gone)
    mask = np.zeros(ids.max() + 1, dtype=bool)
    mask[allowed] = True
    result = searcher.funnel(queries, k=10, stages=[(16, 60), (32, 30), (64, 10)], ef=120,
                             filter=mask if as_mask else allowed)
    got = result.ids[result.ids >= 0]
    assert np.isin(got, live_allowed).all()
    assert not np.isin(got, gone).any()
    assert (result.counts == min(10, live_allowed.size)).all()
    if live_allowed.size >= 10:
        # against the filtered brute force at full dim
        scores = reference_scores(queries, vectors, "cosine", 64)
        scores[:, ~np.isin(ids, live_allowed)] = -np.inf
        truth = ids[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
        assert result.recall(truth) >= 0.85


def test_a_tuned_plan_serves_any_k():
    searcher, vectors, queries, ids = build(n=1500)
    plan = searcher.tune(queries[:20], k=5, target_recall=0.9, progress=False)
    wide = searcher.search(queries[20:], k=40)
    assert wide.ids.shape == (20, 40)
    assert wide.recall(searcher.exact(queries[20:], k=40)) >= 0.8
    assert plan.for_k(40).stages[-1][2] == 40
    assert searcher.search(queries[20:], k=3).ids.shape == (20, 3)
    # the same plan passed as stages serves any k as search does (it raised: last shortlist < k)
    for k in (40, 5, 40):
        given = searcher.funnel(queries[20:], k, plan)
        np.testing.assert_array_equal(given.ids, searcher.search(queries[20:], k=k).ids)
        assert [stage.shortlist for stage in given.stats] == [
            shortlist for _, _, shortlist in plan.for_k(k).stages]


def test_tune_over_code_walks_only_still_ends_in_float():
    searcher, vectors, queries, ids = build(n=1500, index_dims=(64,))
    plan = searcher.tune(queries[:20], k=5, target_recall=0.9, precisions=["int8"],
                         progress=False)
    assert plan.stages[0][1] == "int8" and plan.stages[-1][1] == "float32"
    assert searcher.search(queries[20:], k=5).recall(searcher.exact(queries[20:], k=5)) >= 0.8


def test_build_falls_back_to_a_full_dim_graph_where_prefixes_are_useless():
    # a random rotation spreads every direction over all coordinates: no prefix ranks well
    vectors, queries = synthetic_mrl(3000, 64, n_queries=120, n_clusters=60, decay=1.0, seed=1)
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 64)))
    rotated = (vectors @ rotation).astype(np.float32)
    rotated_queries = (queries @ rotation).astype(np.float32)
    searcher = Searcher.build(rotated, queries=rotated_queries, k=10, target_recall=0.9,
                              dims=(16, 32, 64))
    # the full-dim graph is always built and measured; with the reranks this cheap a 32-dim
    # walk with a long shortlist can tie with it, so which one wins is the machine's call
    assert 64 in searcher.build_report["graphs_built"]
    assert searcher.index_dims == (searcher.plan.stages[0][0],)
    assert searcher.plan.recall_lower >= 0.9
    truth = searcher.exact(rotated_queries, 10)
    assert searcher.search(rotated_queries, 10).recall(truth) >= 0.9
    # the original (MRL-like) data keeps a short prefix graph
    started = time.perf_counter()
    mrl = Searcher.build(vectors, queries=queries, k=10, target_recall=0.9, dims=(16, 32, 64))
    wall = time.perf_counter() - started
    assert mrl.build_report["graphs_built"][0] < 64
    seconds = mrl.build_report["seconds"]
    assert min(seconds.values()) > 0 and sum(seconds.values()) <= wall


def test_stats_are_built_on_first_read_with_the_calls_figures():
    searcher, _, queries, _ = build(n=1500, index_dims=(16,))
    stages = [(16, "int8", 40), (64, 5)]
    batch = searcher.funnel(queries[:10], k=5, stages=stages, ef=40, num_threads=1)
    singles = [searcher.funnel(query, k=5, stages=stages, ef=40) for query in queries[:10]]
    assert "stats" not in vars(batch)  # nothing built until read
    stats = batch.stats
    assert batch.stats is stats
    assert [(s.dim, s.shortlist, s.method, s.precision) for s in stats] == [
        (16, 40, "hnsw", "int8"), (64, 5, "rerank", "float32")]
    assert stats[0].candidates == sum(r.stats[0].candidates for r in singles) > 10 * 40
    assert stats[1].candidates == 10 * 40
    assert stats[0].seconds == 0.0 < stats[1].seconds == batch.seconds
    restored = pickle.loads(pickle.dumps(searcher.funnel(queries[:2], k=5, stages=stages)))
    assert "_stage_stats" not in vars(restored)  # pickled with its stats built
    assert restored.stats[1].candidates == 2 * 40
    assert np.array_equal(restored.ids, batch.ids[:2])
    with pytest.raises(AttributeError, match="no_such"):
        batch.no_such  # noqa: B018
    scanned = searcher.funnel(queries[:3], k=5, stages=[(16, 1500), (64, 5)])
    assert scanned.stats[0].method == "exhaustive"
    assert scanned.stats[0].candidates == 3 * 1500


def test_arguments_put_together_once_follow_every_write():
    # the engine keeps an unfiltered walk's arguments (deleted mask, live count, whether
    # stage 0 scans) from one call to the next: each write must be seen by the next query
    searcher, vectors, queries, ids = build(n=1500, index_dims=(16,))
    stages = [(16, "int8", 30), (64, 10)]
    query = queries[0]
    first = searcher.funnel(query, k=10, stages=stages)
    assert first.stats[0].method == "hnsw"
    searcher.remove(first.ids[0, :5].tolist())
    after_remove = searcher.funnel(query, k=10, stages=stages)
    assert not set(after_remove.ids[0].tolist()) & set(first.ids[0, :5].tolist())
    assert (after_remove.counts == 10).all()
    (new_id,) = searcher.add(query[None] * 3.0)  # the query itself, closest under cosine
    after_add = searcher.funnel(query, k=10, stages=stages)
    assert after_add.ids[0, 0] == new_id
    removed = first.ids[0, :5]
    live = ids[~np.isin(ids, removed)][:25]
    searcher.remove(np.setdiff1d(ids, np.concatenate([live, removed])).tolist())
    # 26 rows left: stage 0 (shortlist 30) now scans
    scanned = searcher.funnel(query, k=10, stages=stages)
    assert scanned.stats[0].method == "exhaustive"
    assert set(scanned.ids[0].tolist()) <= set(live.tolist()) | {int(new_id)}
    truth = searcher.exact(query, k=10)
    assert np.array_equal(np.sort(scanned.ids[0]), np.sort(truth.ids[0]))


def test_num_threads_takes_any_integer_and_rejects_the_rest():
    import enum

    class Threads(enum.IntEnum):
        ONE = 1

    searcher, _, queries, _ = build(n=1500, index_dims=(16,))
    stages = [(16, "int8", 30), (64, 10)]
    expected = searcher.funnel(queries, k=10, stages=stages, num_threads=1).ids
    for value in (1, np.int32(1), np.int64(2), Threads.ONE, -1):
        got = searcher.funnel(queries, k=10, stages=stages, num_threads=value)
        assert np.array_equal(got.ids, expected), value
    for bad in (True, "2", 1.5, None):
        with pytest.raises(TypeError, match="'num_threads'"):
            searcher.funnel(queries[0], k=10, stages=stages, num_threads=bad)


def test_int8_codes_follow_rows_that_outgrow_the_first_scales():
    vectors, queries = synthetic_mrl(3000, 64, n_queries=100, seed=0)
    stages = [(16, "int8", 100), (32, 40), (64, 10)]
    whole = Searcher(64, (16, 32, 64), index_dims=(16,))
    whole.add(vectors)
    streamed = Searcher(64, (16, 32, 64), index_dims=(16,))
    streamed.add(vectors[:1])  # the first scales come from one row
    for lo in range(1, 3000, 700):
        streamed.add(vectors[lo:lo + 700])
    truth = whole.exact(queries, 10)
    assert streamed.funnel(queries, 10, stages).recall(truth) >= \
        whole.funnel(queries, 10, stages).recall(truth) - 0.01  # was 0.65 against 0.97
    # every row's codes are what encoding it with the final scales gives
    codes, scales, _ = streamed._store.kernel_codes(16)
    prefix = vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True)
    assert np.abs(codes[:3000].astype(int) - encode_int8(prefix, scales).astype(int)).max() <= 1
    assert np.all(scales * 127 >= np.abs(prefix).max(axis=0) / 1.05 - 1e-6)


def test_a_bulk_add_re_encodes_the_int8_codes_at_most_once(monkeypatch):
    # each chunk holds larger values than the one before, so each widens the scales; a bulk
    # add re-encodes the earlier rows once at its end instead of once per chunk
    vectors, _ = synthetic_mrl(3000, 64, n_queries=1, seed=1)
    prefix_norms = np.linalg.norm(vectors[:, :16], axis=1)
    peaks = np.abs(vectors[:, :16] / prefix_norms[:, None]).max(axis=1)
    vectors = vectors[np.argsort(peaks)]
    monkeypatch.setattr("mrlsearch.searcher._ADD_CHUNK", 300)
    passes = []
    original = VectorStore._reencode_int8

    def counted(self, prefix_dim, column, stop):
        passes.append(stop)
        return original(self, prefix_dim, column, stop)

    monkeypatch.setattr(VectorStore, "_reencode_int8", counted)
    searcher = Searcher(64, (16, 32, 64), index_dims=(16,))
    searcher.add(vectors)
    assert len(passes) == 1 and passes[0] > 300
    codes, scales, _ = searcher._store.kernel_codes(16)
    prefix = vectors[:, :16] / np.linalg.norm(vectors[:, :16], axis=1, keepdims=True)
    assert np.abs(codes[:3000].astype(int) - encode_int8(prefix, scales).astype(int)).max() <= 1
    assert np.all(scales * 127 >= np.abs(prefix).max(axis=0) / 1.05 - 1e-6)


def test_codes_are_re_encoded_when_a_bulk_write_fails_half_way():
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((200, 8)).astype(np.float32)
    rows[100:] *= 10  # the second half widens every scale
    store = VectorStore(8, (8,), dtype="float32", code_dims=(8,), precisions=("int8",))
    store.reserve(200)
    store.allocate_codes(200)
    with pytest.raises(RuntimeError), store.one_reencode():
        store.append(rows[:100], np.arange(100))
        store.append(rows[100:], np.arange(100, 200))
        raise RuntimeError("the graph insert failed")
    codes, scales, _ = store.kernel_codes(8)
    assert np.array_equal(codes[:200], encode_int8(rows, scales))


def test_a_funnel_plan_passed_as_stages_is_remembered_per_plan_k_and_graphs():
    searcher, vectors, queries, ids = build(n=1500, index_dims=(16, 32))
    float_walk = FunnelPlan(((16, "float32", 40), (64, "float32", 5)), ef=40, k=5)
    code_walk = FunnelPlan(((32, "int8", 30), (32, "float32", 20), (64, "float32", 5)),
                           ef=30, k=5)

    def schedule(result):
        return [(stage.dim, stage.precision, stage.shortlist) for stage in result.stats]

    calls = [(float_walk, 5), (float_walk, 5), (code_walk, 5), (float_walk, 3),
             (float_walk, 5), (code_walk, 5)]
    for plan, k in calls:  # repeats take the remembered schedule: each must be its own
        for query in queries[:3]:
            given = searcher.funnel(query, k, plan)
            spelled_out = searcher.funnel(query, k, plan.stages, ef=plan.ef)
            np.testing.assert_array_equal(given.ids, spelled_out.ids)
            assert schedule(given) == schedule(spelled_out)
            assert given.ids.shape == (1, k) and schedule(given)[0][:2] == plan.stages[0][:2]
    searcher.drop_graphs([32])  # the float walk's graph is gone: its remembered call too
    with pytest.raises(DimensionError):
        searcher.funnel(queries[0], 5, float_walk)
    assert schedule(searcher.funnel(queries[0], 5, code_walk))[0][:2] == (32, "int8")
