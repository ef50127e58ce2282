"""Durability, concurrency and deletion behaviour of Searcher."""

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mrlsearch import FunnelPlan, Searcher
from mrlsearch.datasets import synthetic_mrl

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_index_v1"


def test_compact_keeps_answers_and_frees_tombstones():
    vectors, queries = synthetic_mrl(3000, 64, n_queries=50, n_clusters=50, seed=3)
    searcher = Searcher(64, (16, 32, 64), index_dims=(16,))
    ids = searcher.add(vectors)
    fresh_recall = searcher.funnel(queries, 10, [(16, 200), (64, 10)]).recall(searcher.exact(queries, 10))
    rng = np.random.default_rng(0)
    removed = rng.choice(ids, size=900, replace=False)
    searcher.remove(removed)
    searcher.add(vectors[removed] + 0.01, ids=removed)  # add back, slightly moved
    searcher.remove(ids[:10])
    before = searcher.exact(queries, 10)
    searcher.compact()
    assert searcher.tombstones == 0 and len(searcher) == 2990
    after = searcher.exact(queries, 10)
    np.testing.assert_array_equal(before.ids, after.ids)
    recall = searcher.funnel(queries, 10, [(16, 200), (64, 10)]).recall(after)
    assert recall >= fresh_recall - 0.02
    assert searcher.add(np.ones((1, 64))).tolist() == [3000]


def test_queries_during_adds_and_removes_see_consistent_state():
    vectors, queries = synthetic_mrl(4000, 32, n_queries=40, n_clusters=40, seed=4)
    searcher = Searcher(32, (8, 16, 32), index_dims=(8,))
    searcher.add(vectors[:2000])
    removed: set[int] = set()
    removed_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0

    def reader():
        try:
            while time.monotonic() < stop:
                with removed_lock:
                    gone_before = set(removed)
                result = searcher.funnel(queries, 10, [(8, 60), (32, 10)])
                returned = set(result.ids[result.ids >= 0].tolist())
                assert not returned & gone_before, "a removed id came back"
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    def writer():
        try:
            start = 2000
            while time.monotonic() < stop and start < 4000:
                searcher.add(vectors[start:start + 100], ids=np.arange(start, start + 100))
                victims = np.arange(start - 2000, start - 1950)
                with removed_lock:
                    searcher.remove(victims)
                    removed.update(victims.tolist())
                start += 100
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    truth = searcher.exact(queries, 10)
    assert not set(truth.ids.ravel().tolist()) & removed
    assert searcher.funnel(queries, 10, [(8, 200), (32, 10)]).recall(truth) >= 0.9


@pytest.mark.parametrize("as_plans", [False, True])
def test_threads_with_different_ef_each_search_with_their_own(as_plans):
    # hnswlib keeps ef per index: without the gate, a thread searching at ef=10 and one at
    # ef=300 would each get whichever value the other set last. As FunnelPlans, the two also
    # take turns in the Searcher's memo of the last plan given (kept by identity)
    vectors, queries = synthetic_mrl(4000, 32, n_queries=40, n_clusters=40, decay=0.3, seed=2)
    searcher = Searcher(32, (8, 32), index_dims=(8,))
    searcher.add(vectors)
    stages = [(8, 10), (32, 10)]
    expected = {ef: searcher.funnel(queries, 10, stages, ef=ef).ids for ef in (10, 300)}
    assert (expected[10] != expected[300]).any()  # the two settings do answer differently
    calls = {ef: (FunnelPlan(stages, ef, 10), None) if as_plans else (stages, ef)
             for ef in (10, 300)}
    errors = []

    def worker(ef):
        given, given_ef = calls[ef]
        try:
            for _ in range(15):
                for i, query in enumerate(queries):
                    got = searcher.funnel(query, 10, given, ef=given_ef).ids[0]
                    if not np.array_equal(got, expected[ef][i]):
                        errors.append((ef, i))
                        return
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(ef,)) for ef in (10, 300, 10, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]


SAVER = textwrap.dedent("""
    import sys, numpy as np
    from mrlsearch import Searcher
    path, n = sys.argv[1], int(sys.argv[2])
    s = Searcher(32, (8, 32), index_dims=(8,))
    s.add(np.random.default_rng(n).standard_normal((n, 32)))
    print("ready", flush=True)
    while True:
        s.save(path)
""")


def _kill_saves(tmp_path, attempts: int, seed: int) -> None:
    """Kill a process that saves over an index again and again, ``attempts`` times at random
    moments; after every kill the index loads, whole, as the old or the new version."""
    path = tmp_path / "index"
    first = Searcher(32, (8, 32), index_dims=(8,))
    first.add(np.random.default_rng(0).standard_normal((500, 32)))
    first.save(path)
    rng = np.random.default_rng(seed)
    for attempt in range(attempts):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), "3000"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = Searcher.load(path)
        assert len(loaded) in (500, 3000), f"attempt {attempt}: {len(loaded)} vectors"
        loaded.exact(np.ones(32), k=3)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "index"]
    # siblings of killed saves are never loaded, and the next load or save clears them
    assert all(name.startswith(".index.") for name in leftovers)
    Searcher.load(path).save(path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".index.tmp-")]) == 0


def test_killed_save_leaves_a_loadable_index(tmp_path):
    _kill_saves(tmp_path, attempts=12, seed=1)


@pytest.mark.slow
def test_two_hundred_killed_saves_never_lose_the_index(tmp_path):
    _kill_saves(tmp_path, attempts=200, seed=2)


def test_load_skips_a_half_deleted_backup_and_takes_the_newest(tmp_path):
    # the state a kill can leave between the two renames of a save, after an earlier kill
    # during a deletion: the index is gone, one backup is complete, another is not
    searcher = Searcher(16, (4, 16), index_dims=(4,))
    searcher.add(np.random.default_rng(0).standard_normal((50, 16)))
    searcher.save(tmp_path / "older")
    searcher.add(np.random.default_rng(1).standard_normal((20, 16)))
    searcher.save(tmp_path / "newer")
    time.sleep(0.01)
    (tmp_path / "newer").rename(tmp_path / ".index.old-00000000")
    (tmp_path / "older").rename(tmp_path / ".index.old-ffffffff")
    (tmp_path / ".index.old-ffffffff" / "manifest.json").touch()  # newest manifest ...
    (tmp_path / ".index.old-ffffffff" / "manifest.json").unlink()  # ... then half deleted
    assert len(Searcher.load(tmp_path / "index")) == 70


def test_save_discards_stale_backups(tmp_path):
    searcher = Searcher(16, (4, 16), index_dims=(4,))
    searcher.add(np.random.default_rng(0).standard_normal((50, 16)))
    searcher.save(tmp_path / "index")
    searcher.save(tmp_path / ".index.old-12345678")  # a backup an earlier crash left behind
    searcher.save(tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_golden_index_v1_still_loads_and_answers_the_same():
    if not GOLDEN.is_dir():
        pytest.skip("golden index missing")
    searcher = Searcher.load(GOLDEN)
    expected = np.load(GOLDEN.parent / "golden_index_v1_expected.npz")
    result = searcher.funnel(expected["queries"], 5, [(8, 50), (16, 20), (32, 5)])
    np.testing.assert_array_equal(result.ids, expected["ids"])
    np.testing.assert_allclose(result.scores, expected["scores"], rtol=1e-6)
    assert searcher.metric == "cosine" and len(searcher) == 295


def test_concurrent_adds_without_ids_never_share_an_id():
    searcher = Searcher(16, (8, 16), index_dims=(8,))
    searcher.add(np.ones((1, 16), dtype=np.float32))
    batches = [np.random.default_rng(i).standard_normal((200, 16)).astype(np.float32)
               for i in range(6)]
    got: list = [None] * len(batches)

    def worker(slot):
        got[slot] = searcher.add(batches[slot], num_threads=1)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    all_ids = np.concatenate(got)
    assert np.unique(all_ids).size == all_ids.size == 1200
    assert len(searcher) == 1201
    for batch, ids in zip(batches, got):  # each batch is stored under its own ids
        np.testing.assert_allclose(searcher.get(ids), batch)


def test_compact_under_load_never_shows_a_half_built_index(tmp_path):
    vectors, queries = synthetic_mrl(3000, 32, n_queries=20, n_clusters=30, seed=4)
    searcher = Searcher(32, (8, 16, 32), index_dims=(16,))
    ids = searcher.add(vectors)
    searcher.remove(ids[:1500])
    stages = [(16, 60), (32, 10)]
    expected = searcher.funnel(queries, 10, stages, ef=200)
    errors: list = []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                result = searcher.funnel(queries, 10, stages, ef=200)
                assert (result.counts == 10).all()
                assert not np.isin(result.ids, ids[:1500]).any()
                searcher.exact(queries[:2], 5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def saver():
        try:
            while not done.is_set():
                searcher.save(tmp_path / "index")
                assert len(Searcher.load(tmp_path / "index")) >= 1500
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=saver)]
    for thread in threads:
        thread.start()
    searcher.compact()
    searcher.compact()
    done.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:2]
    assert searcher.tombstones == 0 and len(searcher) == 1500
    after = searcher.funnel(queries, 10, stages, ef=200)
    assert after.recall(expected) >= 0.95


def _compact_while(searcher, write):
    """Compact ``searcher`` and run ``write`` on another thread while the rebuild adds (its
    add is slowed so that the write lands before the swap)."""
    started = threading.Event()
    original_add = Searcher.add

    def slow_add(self, *args, **kwargs):  # the rebuild's add: let the write in meanwhile
        started.set()
        time.sleep(0.2)
        return original_add(self, *args, **kwargs)

    thread = threading.Thread(target=lambda: (started.wait(), write()))
    thread.start()
    try:
        Searcher.add = slow_add
        searcher.compact()
    finally:
        Searcher.add = original_add
    thread.join()


def test_writes_during_compact_are_kept():
    vectors, _ = synthetic_mrl(2000, 16, n_queries=0, n_clusters=20, seed=5)
    searcher = Searcher(16, (8, 16), index_dims=(8,))
    ids = searcher.add(vectors[:1000])
    searcher.remove(ids[:500])
    def writer():
        searcher.add(vectors[1000:1010], ids=np.arange(5000, 5010))
        searcher.remove(ids[500:510])

    _compact_while(searcher, writer)
    assert 5003 in searcher and int(ids[505]) not in searcher
    assert len(searcher) == 500 - 10 + 10


def test_graphs_dropped_during_compact_stay_dropped(tmp_path):
    vectors, _ = synthetic_mrl(1200, 16, n_queries=0, n_clusters=20, seed=6)
    searcher = Searcher(16, (8, 16), index_dims=(8, 16))
    ids = searcher.add(vectors)
    searcher.remove(ids[:100])
    _compact_while(searcher, lambda: searcher.drop_graphs([16]))
    assert searcher.index_dims == (16,) and searcher.memory_usage()["graphs"] > 0
    searcher.save(tmp_path / "index")  # the manifest and the files agree again
    loaded = Searcher.load(tmp_path / "index")
    assert loaded.index_dims == (16,) and len(loaded) == 1100
    assert np.array_equal(loaded.search(vectors[200:210], 5).ids,
                          searcher.search(vectors[200:210], 5).ids)


def test_extreme_values_are_refused_and_exact_stays_the_truth():
    searcher = Searcher(8, (4, 8), index_dims=(4,))
    with pytest.raises(ValueError, match="within"):
        searcher.add(np.full((1, 8), 1e20, dtype=np.float32))
    with pytest.raises(ValueError, match="too small"):
        searcher.add(np.full((2, 8), 1e-30, dtype=np.float32))
    searcher.add(np.ones((1, 8)), num_threads=1)
    with pytest.raises(ValueError, match="too small"):
        searcher.exact(np.full(8, 1e-30), k=1)
    assert len(searcher) == 1
    searcher.add(np.zeros((1, 8)))  # an all-zero vector is fine: it scores 0 everywhere
    # dim=1 cosine: the funnel and exact agree on the sign
    one = Searcher(1, (1,), index_dims=(1,))
    one.add(np.array([[1.0], [-1.0], [2.0], [-3.0]], dtype=np.float32))
    query = np.array([1.0], dtype=np.float32)
    assert set(one.search(query, k=2).ids[0].tolist()) == set(one.exact(query, k=2).ids[0].tolist())
    assert set(one.exact(query, k=2).ids[0].tolist()) == {0, 2}


FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing, sys
    import numpy as np
    from mrlsearch import Searcher
    from mrlsearch.datasets import synthetic_mrl
    vectors, queries = synthetic_mrl(3000, 32, n_queries=40, n_clusters=20, seed=3)
    searcher = Searcher(32, (8, 16, 32), index_dims=(8,))
    searcher.add(vectors)
    walk, scan = [(8, 30), (32, 10)], [(8, 3000), (32, 10)]  # a graph walk and a full scan
    expected = [searcher.funnel(queries, 10, s).ids for s in (walk, scan)]  # numba's threads

    def child(pipe):
        pipe.send([searcher.funnel(queries, 10, s).ids for s in (walk, scan)])

    parent_end, child_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(target=child, args=(child_end,))
    process.start()
    got = parent_end.recv() if parent_end.poll(120) else None
    process.join(120)
    assert process.exitcode == 0, f"the child ended with {process.exitcode}"
    assert got is not None and all(np.array_equal(a, b) for a, b in zip(got, expected))
    print("ok")
""")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_searches_batches_on_its_own_thread():
    # numba's OpenMP pool does not survive fork: GNU OpenMP killed the child on its first
    # batch of 8 or more queries ("fork() called from a process already using GNU OpenMP")
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
