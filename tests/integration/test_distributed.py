"""ShardedSearcher on a local Ray cluster: merge exactness, recall, faults, writes, formats.

Starting actors costs about a second each on this machine, so the tests share one 4-shard
searcher (module fixture ``built``) and run in file order: reads against the data as built
first, then faults, then writes, persistence, and last a shard whose directory is corrupted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from mrlsearch import DimensionError, FormatError, MRLError, Searcher  # noqa: E402
from mrlsearch.datasets import synthetic_mrl  # noqa: E402
from mrlsearch.distributed import (  # noqa: E402
    ShardedSearcher,
    ShardedSearchResult,
    ShardUnavailableError,
    shard_of,
)

N, DIM, K = 4000, 64, 10
OPTIONS = {"dims": (16, 32, 64), "index_dims": (16,), "M": 16, "ef_construction": 100}
STAGES = [(16, 40), (32, 20), (64, 10)]
# small reservations, so that a second searcher and the build tasks fit on 2 CPUs
CPUS = {"num_cpus": 0.1}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    vectors, queries = synthetic_mrl(N, DIM, n_queries=200, seed=7)
    return vectors, queries[:100], queries[100:]


@pytest.fixture(scope="module")
def built(cluster, data, tmp_path_factory):
    vectors, _, _ = data
    out = tmp_path_factory.mktemp("shards") / "index"
    sharded = ShardedSearcher.build(vectors, out, n_shards=4, build_cpus=0.5, progress=False,
                                    **CPUS, **OPTIONS)
    yield sharded, out
    sharded.close()


@pytest.fixture(scope="module")
def single(data):
    searcher = Searcher(DIM, **OPTIONS)
    searcher.add(data[0])
    return searcher


def kill(sharded: ShardedSearcher, index: int) -> None:
    """Kill a shard's actor and wait until Ray reports it dead."""
    actor = sharded.actors[index]
    ray.kill(actor)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the actor did not die")


def numpy_merge(results, k):
    """Global top-k of per-shard results, written independently of the library's merge."""
    ids = np.concatenate([r.ids for r in results], axis=1)
    scores = np.concatenate([r.scores for r in results], axis=1)
    out_ids = np.full((ids.shape[0], k), -1)
    out_scores = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    for row in range(ids.shape[0]):
        pairs = sorted((-float(s), int(i)) for i, s in zip(ids[row], scores[row]) if i >= 0)[:k]
        out_ids[row, :len(pairs)] = [i for _, i in pairs]
        out_scores[row, :len(pairs)] = [-s for s, _ in pairs]
    return out_ids, out_scores


# ---------------------------------------------------------------------------- no cluster needed
def test_import_mrlsearch_does_not_import_ray():
    code = "import sys, mrlsearch; assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_names_the_extra():
    code = ("import sys; sys.modules['ray'] = None\n"
            "try:\n    import mrlsearch.distributed\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert "mrlsearch[distributed]" in out


def _splitmix64(value: int) -> int:
    mask = (1 << 64) - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_shard_of_is_the_documented_hash_and_spreads_ids():
    ids = np.arange(20_000, dtype=np.int64)
    shards = shard_of(ids, 4)
    some = [0, 1, 2, 12345, 2**40 + 3]
    assert shard_of(some, 7).tolist() == [_splitmix64(i) % 7 for i in some]
    assert np.array_equal(shards, shard_of(ids, 4))
    counts = np.bincount(shards, minlength=4)
    assert counts.min() > 0.9 * len(ids) / 4
    with pytest.raises(ValueError, match="non-negative"):
        shard_of([-1], 4)
    with pytest.raises(ValueError, match="n_shards"):
        shard_of([1], 0)


# ---------------------------------------------------------------------------- build and merge
def test_build_writes_ordinary_shards_with_unique_ids(built, data):
    sharded, out = built
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"shard-0000{i}-of-00004" for i in range(4)] + ["sharding.json"]
    meta = json.loads((out / "sharding.json").read_text())
    assert meta["n_shards"] == 4 and meta["next_id"] == N
    seen = []
    for index, path in enumerate(sharded.paths):
        shard = Searcher.load(path)  # an ordinary index directory
        ids = shard.exact(data[1][:1], k=len(shard)).ids[0]  # every live id of the shard
        assert np.all(shard_of(ids, 4) == index)
        seen.append(ids)
    every = np.concatenate(seen)
    assert len(every) == len(np.unique(every)) == N == len(sharded)
    assert set(every.tolist()) == set(range(N))


def test_exact_equals_numpy_merge_and_single_searcher(built, single, data):
    sharded, _ = built
    queries = data[1]
    result = sharded.exact(queries, K)
    assert isinstance(result, ShardedSearchResult) and result.complete
    assert result.shards_answered == (0, 1, 2, 3)
    per_shard = [Searcher.load(path).exact(queries, K) for path in sharded.paths]
    ids, scores = numpy_merge(per_shard, K)
    assert np.array_equal(result.ids, ids)
    # the same sums, but BLAS may block them differently with another thread count
    np.testing.assert_allclose(result.scores, scores, rtol=1e-6, atol=1e-6)
    union = single.exact(queries, K)
    assert np.array_equal(result.ids, union.ids)
    np.testing.assert_allclose(result.scores, union.scores, rtol=1e-5, atol=1e-6)
    assert np.array_equal(result.counts, np.full(len(queries), K))


def test_a_call_failing_on_every_shard_still_fetches_every_answer(built, data, monkeypatch):
    # a bad argument fails on every shard; only the first error was fetched, and Ray printed
    # the others' tracebacks ("Unhandled error") when their references were freed
    sharded, _ = built
    fetched = set()
    real_get = ray.get

    def get(refs, *args, **kwargs):
        fetched.update(refs if isinstance(refs, list) else [refs])
        return real_get(refs, *args, **kwargs)

    monkeypatch.setattr(ray, "get", get)
    with pytest.raises(DimensionError, match=r"'stages' dims must be among"):
        sharded.funnel(data[1], K, [(12, 100)])
    assert len(fetched) >= sharded.n_shards


def test_merge_breaks_ties_by_smaller_id():
    from mrlsearch import SearchResult
    from mrlsearch.distributed._merge import merge_top_k

    a = SearchResult(np.array([[9, 4, -1]]), np.array([[1.0, 0.5, -np.inf]], np.float32),
                     np.array([2]))
    b = SearchResult(np.array([[3, 7, 1]]), np.array([[1.0, 0.5, 0.5]], np.float32),
                     np.array([3]))
    ids, scores, counts = merge_top_k([a, b], 4)
    assert ids.tolist() == [[3, 9, 1, 4]] and counts.tolist() == [4]
    assert scores.tolist() == [[1.0, 1.0, 0.5, 0.5]]


def test_funnel_recall_at_least_single_node_at_same_plan(built, single, data):
    sharded, _ = built
    queries = data[1]
    truth = single.exact(queries, K)
    for stages in (STAGES, [(16, 20), (64, 10)], None):
        merged = sharded.funnel(queries, K, stages=stages).recall(truth)
        alone = single.funnel(queries, K, stages=stages).recall(truth)
        assert merged >= alone - 0.005, (stages, merged, alone)
    merged = sharded.search(queries, K).recall(truth)
    assert merged >= single.search(queries, K).recall(truth) - 0.005


def test_search_batches_streams_in_order(built, data, tmp_path, capsys):
    sharded, _ = built
    queries = np.concatenate([data[1], data[2]])
    whole = sharded.funnel(queries, K, stages=STAGES)
    parts = list(sharded.search_batches(queries, k=K, batch_size=64, method="funnel",
                                        stages=STAGES, progress=True))
    assert [len(p) for p in parts] == [64, 64, 64, 8]
    assert np.array_equal(np.concatenate([p.ids for p in parts]), whole.ids)
    assert "mrlsearch: funnel" in capsys.readouterr().err
    np.save(tmp_path / "q.npy", queries)
    from_file = sharded.search_batches(tmp_path / "q.npy", k=K, batch_size=100,
                                       method="exact", progress=False)
    chunks = sharded.search_batches(iter([queries[:50], queries[50:]]), k=K, batch_size=30,
                                    method="exact", progress=False)
    truth = sharded.exact(queries, K).ids
    assert np.array_equal(np.concatenate([p.ids for p in from_file]), truth)
    assert np.array_equal(np.concatenate([p.ids for p in chunks]), truth)


def test_tune_runs_on_the_cluster_and_sets_one_plan(built, data):
    sharded, _ = built
    tuning, test = data[1], data[2]
    # one local target and a short grid keep this fast; the default explores more
    plan = sharded.tune(tuning[:60], k=K, target_recall=0.9, local_targets=[0.9, 0.93],
                        max_shortlist=256, progress=False)
    assert plan.recall_lower >= 0.9 and plan.seconds_per_query > 0
    assert sharded.plan == plan
    default = sharded.funnel(test, K)
    explicit = sharded.funnel(test, K, stages=plan)
    assert np.array_equal(default.ids, explicit.ids)
    assert default.recall(sharded.exact(test, K)) >= 0.85


# ---------------------------------------------------------------------------- faults
def test_kill_during_a_stream_gives_the_same_results(built, data):
    sharded, _ = built
    queries = np.concatenate([data[1], data[2]])
    reference = sharded.exact(queries, K).ids
    got = []
    for number, part in enumerate(sharded.search_batches(queries, k=K, batch_size=25,
                                                         method="exact", progress=False)):
        got.append(part.ids)
        if number == 1:  # the next batch is already in flight
            kill(sharded, 3)
    assert np.array_equal(np.concatenate(got), reference)
    assert sharded.restarts[3] >= 1


def test_restart_timeout_raises_a_typed_error_naming_the_shard(built, data):
    sharded, _ = built
    kill(sharded, 1)
    with pytest.raises(ShardUnavailableError, match="shard 1 ") as caught:
        sharded.exact(data[1], K, restart_timeout=0)
    assert isinstance(caught.value, MRLError) and caught.value.shard == 1
    assert caught.value.path == sharded.paths[1]
    assert np.array_equal(sharded.exact(data[1], K).ids, sharded.exact(data[1], K).ids)


def test_allow_partial_says_which_shards_answered(built, data):
    sharded, _ = built
    queries = data[1]
    full = sharded.exact(queries, K)
    kill(sharded, 2)
    partial = sharded.exact(queries, K, allow_partial=True)
    assert partial.shards_missing == (2,) and partial.shards_answered == (0, 1, 3)
    assert not partial.complete
    others = [Searcher.load(sharded.paths[i]).exact(queries, K) for i in (0, 1, 3)]
    assert np.array_equal(partial.ids, numpy_merge(others, K)[0])
    again = sharded.exact(queries, K)  # waits for the restarted shard
    assert again.complete and np.array_equal(again.ids, full.ids)


# ---------------------------------------------------------------------------- writes, persistence
def test_killed_shard_restarts_and_replays_unsaved_writes(built, data):
    sharded, _ = built
    queries = data[2][:20]
    new_ids = np.arange(10**6, 10**6 + 20)
    sharded.add(queries, ids=new_ids)  # not saved: only the driver's journal has them
    victim = int(shard_of(new_ids[:1], 4)[0])
    before = sharded.restarts[victim]
    kill(sharded, victim)
    result = sharded.exact(queries, 1)  # waits for the restart, replays, answers
    assert result.ids[:, 0].tolist() == new_ids.tolist()
    assert sharded.restarts[victim] == before + 1


def test_remove_is_honoured_on_every_shard(built, data):
    sharded, _ = built
    queries = data[1]
    top = sharded.exact(queries, K).ids
    gone = np.unique(top[:, :3])
    assert len(set(shard_of(gone, 4).tolist())) == 4  # the removed ids span every shard
    count = len(sharded)
    sharded.remove(gone)
    assert len(sharded) == count - len(gone)
    for result in (sharded.exact(queries, K), sharded.funnel(queries, K, stages=STAGES),
                   sharded.search(queries, K)):
        assert not np.isin(result.ids, gone).any()
    with pytest.raises(ValueError, match="unknown"):
        sharded.remove(gone[:1])


def test_save_load_round_trip(built, data, tmp_path):
    sharded, _ = built
    queries = data[2]
    added = sharded.add(queries[:5])  # ids from the next free one
    assert added.min() >= N
    before = sharded.funnel(queries, K)
    count = len(sharded)
    sharded.save(tmp_path / "saved")
    assert sharded.paths[0].startswith(str(tmp_path / "saved"))
    with ShardedSearcher.load(str(tmp_path / "saved" / "shard-*"), **CPUS) as again:
        assert repr(again) == (f"<mrlsearch.distributed.ShardedSearcher n_shards=4 "
                               f"dim={DIM} metric={again.metric!r}>")
        assert len(again) == count and again.plan == sharded.plan
        assert np.array_equal(again.funnel(queries, K).ids, before.ids)
        assert again.add(queries[5:6])[0] == added.max() + 1  # next_id from sharding.json
    assert repr(again) == "<mrlsearch.distributed.ShardedSearcher n_shards=4 closed>"
    sharded.save()  # in place, atomically per shard
    assert np.array_equal(sharded.funnel(queries, K).ids, before.ids)


def test_payloads_go_to_the_shard_of_their_id_and_come_back_with_get(built, data):
    sharded, _ = built
    # fresh vectors: earlier tests added the query rows under other ids (ties at top-1)
    vectors = np.random.default_rng(7).standard_normal((12, data[2].shape[1])).astype(np.float32)
    new_ids = np.arange(2 * 10**6, 2 * 10**6 + 12)
    texts = [f"doc {i}" for i in new_ids.tolist()]
    texts[3] = b"raw bytes"
    texts[5] = None
    assert len(set(shard_of(new_ids, 4).tolist())) > 1
    sharded.add(vectors, ids=new_ids, payloads=texts)
    order = new_ids[::-1]
    assert sharded.get(order, payload=True) == texts[::-1]
    np.testing.assert_allclose(sharded.get(order), vectors[::-1], rtol=1e-3, atol=1e-3)
    hits = sharded.exact(vectors, 1).ids[:, 0]
    assert sharded.get(hits, payload=True) == texts
    with pytest.raises(ValueError, match="payloads"):
        sharded.add(vectors, ids=new_ids + 100, payloads=texts[:3])
    with pytest.raises(KeyError):
        sharded.get([3 * 10**6])
    with pytest.raises(TypeError, match="'payload' must be a bool"):
        sharded.get(new_ids[:1], payload="yes")
    sharded.remove(new_ids)


# ---------------------------------------------------------------------------- sources and input
def test_build_from_npy_and_parquet(cluster, data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    vectors = data[0][:600]
    ids = np.arange(600) * 3 + 5
    np.save(tmp_path / "x.npy", vectors)
    for part, rows in enumerate((slice(0, 250), slice(250, 600))):
        table = pa.table({"id": ids[rows], "embedding": pa.array(list(vectors[rows]),
                                                                 pa.list_(pa.float32()))})
        pq.write_table(table, tmp_path / f"part{part}.parquet", row_group_size=100)
    reference = Searcher(DIM, **OPTIONS)
    reference.add(vectors, ids)
    truth = reference.exact(data[1], K)
    with ShardedSearcher.build(tmp_path / "x.npy", tmp_path / "a", n_shards=1, ids=ids,
                               build_cpus=0.5, progress=False, **CPUS, **OPTIONS) as from_npy:
        assert np.array_equal(from_npy.exact(data[1], K).ids, truth.ids)
    with ShardedSearcher.build(tmp_path, tmp_path / "b", n_shards=2, vector_column="embedding",
                               id_column="id", build_cpus=0.5, progress=False, **CPUS, **OPTIONS) as from_pq:
        assert np.array_equal(from_pq.exact(data[1], K).ids, truth.ids)


def test_graphs_linked_by_a_shorter_prefix_shard_and_load(cluster, data, tmp_path):
    vectors = data[0][:1000]
    options = {**OPTIONS, "index_dims": (32,), "link_dim": 16}
    stages = [(32, 40), (64, 10)]
    reference = Searcher(DIM, **options)
    reference.add(vectors)
    truth = reference.exact(data[1], K)
    with ShardedSearcher.build(vectors, tmp_path / "linked", n_shards=2, build_cpus=0.5,
                               progress=False, **CPUS, **options) as sharded:
        for path in sharded.paths:
            assert Searcher.load(path).link_dim == 16
            assert json.loads((Path(path) / "manifest.json").read_text())["version"] == 4
        found = sharded.funnel(data[1], K, stages).ids
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth.ids)])
    assert recall >= 0.95


def test_bad_input_gives_clear_errors(built, data, tmp_path):
    sharded, out = built
    vectors, queries = data[0][:100], data[1]
    with pytest.raises(ValueError, match="'n_shards' must be a positive int"):
        ShardedSearcher.build(vectors, tmp_path / "a", n_shards=0)
    for bad, error in ((0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                       ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="'build_cpus' must be a positive number"):
            ShardedSearcher.build(vectors, tmp_path / "a", n_shards=1, build_cpus=bad)
    with pytest.raises(FileExistsError, match="not empty"):
        ShardedSearcher.build(vectors, out, n_shards=2)
    with pytest.raises(TypeError, match="bad Searcher option"):
        ShardedSearcher.build(vectors, tmp_path / "b", n_shards=2, bogus=1)
    with pytest.raises(DimensionError, match="shape"):
        ShardedSearcher.build(vectors[None], tmp_path / "c", n_shards=2)
    with pytest.raises(DimensionError, match="100 ids"):
        ShardedSearcher.build(vectors, tmp_path / "d", n_shards=2, ids=[1, 2])
    with pytest.raises(ValueError, match="repeat"):
        ShardedSearcher.build(vectors[:2], tmp_path / "e", n_shards=1, ids=[4, 4])
    with pytest.raises(ValueError, match="empty"):
        ShardedSearcher.build(vectors[:3], tmp_path / "f", n_shards=16)
    with pytest.raises(FileNotFoundError):
        ShardedSearcher.load(tmp_path / "nothing-*")
    with pytest.raises(FormatError, match=r"missing \[3\]"):
        ShardedSearcher.load([out / f"shard-0000{i}-of-00004" for i in range(3)])
    with pytest.raises(DimensionError, match="64 columns"):
        sharded.search(queries[:, :32], K)
    with pytest.raises(ValueError, match="'k' must be a positive int"):
        sharded.funnel(queries, 0)
    with pytest.raises(DimensionError):  # raised by the shards, unwrapped
        sharded.funnel(queries, K, stages=[(48, 20), (64, 10)])
    with pytest.raises(ValueError, match="'method'"):
        sharded.search_batches(queries, method="nearest")
    with pytest.raises(ValueError, match="restart_timeout"):
        sharded.search(queries, K, restart_timeout=-1)


def test_unloadable_shard_raises_a_typed_error(built, data):
    sharded, _ = built  # the last test to use it: its shard 0 stays broken
    Path(sharded.paths[0], "manifest.json").write_text("{}")
    kill(sharded, 0)
    with pytest.raises(ShardUnavailableError, match="shard 0 .*could not be reloaded"):
        sharded.exact(data[1], K)
