"""The GIL handoff flags of query threads (mrlsearch._handoff): set only while a thread is in
a search's Python, never left set, bounded when another thread's flag is stuck."""

import threading

import numba
import numpy as np
import pytest

from mrlsearch import Searcher, _handoff
from mrlsearch.datasets import synthetic_mrl


@pytest.fixture(scope="module")
def searcher():
    vectors, queries = synthetic_mrl(2000, 32, n_queries=20, seed=0)
    s = Searcher(32, (8, 16, 32), index_dims=(16,))
    s.add(vectors, num_threads=1)
    return s, queries


def test_no_flag_is_left_set_after_searches_errors_and_scans(searcher):
    s, queries = searcher
    s.funnel(queries[0], k=5)
    s.funnel(queries, k=5)  # a parallel batch
    s.funnel(queries[0], k=5, stages=[(16, 5000), (32, 5)])  # a scan of every row
    s.funnel(queries[0], k=5, filter=[1, 2, 3])
    bad = queries[0].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        s.funnel(bad, k=5)
    assert not _handoff.SLOTS.any()


def test_a_stuck_flag_delays_but_never_blocks_or_changes_a_query(searcher):
    # another "thread" that never leaves its Python part: each query spins at most the
    # bounded budget, then goes on with the same results
    s, queries = searcher
    want = s.funnel(queries, k=5, num_threads=1).ids
    lease = _handoff.SlotLease()
    try:
        _handoff.SLOTS[lease.slot] = 1
        got = np.concatenate([s.funnel(q, k=5).ids for q in queries])
    finally:
        _handoff.SLOTS[lease.slot] = 0
        del lease
    np.testing.assert_array_equal(got, want)


def test_a_thread_that_ends_gives_its_slot_back(searcher):
    s, queries = searcher
    taken = []

    def query() -> None:
        s.funnel(queries[0], k=5)
        taken.append(_handoff.current_slot())

    for _ in range(3 * _handoff.MAX_SLOTS):  # more threads than slots, one after another
        thread = threading.Thread(target=query)
        thread.start()
        thread.join()
    assert all(0 <= slot < _handoff.MAX_SLOTS for slot in taken)
    assert not _handoff.SLOTS.any()


def test_threads_querying_together_get_the_results_of_one(searcher):
    s, queries = searcher
    want = s.funnel(queries, k=5, num_threads=1).ids
    results: dict[int, np.ndarray] = {}

    def worker(offset: int) -> None:
        for repeat in range(30):
            i = (offset + repeat) % len(queries)
            results[(offset, repeat)] = (i, s.funnel(queries[i], k=5).ids[0])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, ids in results.values():
        np.testing.assert_array_equal(ids, want[i])
    assert not _handoff.SLOTS.any()


def test_a_thread_waiting_for_a_writer_does_not_hold_its_flag_up(searcher):
    # a search that waits on the lock of an index being written runs no Python: its flag
    # must be down, or every other thread's query would spin its full budget meanwhile
    s, queries = searcher
    other = Searcher(32, (8, 16, 32), index_dims=(16,))
    other.add(synthetic_mrl(200, 32, seed=1)[0], num_threads=1)
    writing, release = threading.Event(), threading.Event()

    def writer() -> None:
        with other._lock.write():
            writing.set()
            release.wait(10)

    threads = [threading.Thread(target=writer),
               threading.Thread(target=lambda: other.search(queries[0], k=5))]
    threads[0].start()
    writing.wait(10)
    threads[1].start()
    try:
        for _ in range(200):  # the reader reaches the lock and waits
            if other._lock._readers or not threads[1].is_alive():
                break
            threading.Event().wait(0.005)
        threading.Event().wait(0.05)
        assert threads[1].is_alive() and not _handoff.SLOTS.any()
        s.funnel(queries[0], k=5)  # another index answers meanwhile
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert not _handoff.SLOTS.any()


def test_drop_graphs_during_a_search_never_leaves_a_stale_plan(monkeypatch):
    # the schedule of the default plan is remembered per index dims: a drop_graphs that
    # lands while a search computes it must not leave a schedule over a dropped graph
    vectors = synthetic_mrl(1500, 64, seed=2)[0]
    s = Searcher(64, dims=(16, 32, 64), index_dims=(16, 32))
    s.add(vectors, num_threads=1)
    check = Searcher._check_stages
    checking, dropped = threading.Event(), threading.Event()

    def slow_check(self, *args, **kwargs):
        out = check(self, *args, **kwargs)
        if threading.current_thread().name == "reader":
            checking.set()
            dropped.wait(10)
        return out

    monkeypatch.setattr(Searcher, "_check_stages", slow_check)
    reader = threading.Thread(target=lambda: s.search(vectors[0], k=10), name="reader")
    reader.start()
    checking.wait(10)
    s.drop_graphs([32])
    dropped.set()
    reader.join()
    monkeypatch.setattr(Searcher, "_check_stages", check)
    for _ in range(2):
        assert s.search(vectors[0], k=10).ids[0, 0] == 0



@numba.njit
def _cycles_spent_leaving(slots, slot, other, returned_cycles_ago):
    """kernel_leaving's spin in cycles; ``other`` marked as returning from a kernel that many
    cycles ago first, when ``returned_cycles_ago`` >= 0."""
    started = _handoff._cycles()
    if returned_cycles_ago >= 0:
        slots[other] = started - returned_cycles_ago
    _handoff.kernel_leaving(slots, slot)
    return _handoff._cycles() - started


@pytest.mark.skipif(not _handoff.ENABLED, reason="the spin runs on x86 only")
def test_a_kernel_waits_for_a_thread_in_python_or_just_returning_but_not_for_a_sleeper():
    slots = np.zeros(4, dtype=np.int64)
    slots[1] = _handoff.IN_PYTHON  # holds the GIL: wait the whole budget for it to let go
    assert _cycles_spent_leaving(slots, 0, 1, -1) >= _handoff.SPIN_CYCLES
    assert slots[0] > _handoff.IN_PYTHON  # now marked as returning

    slots[0] = 0  # the other just left its kernel: about to take the GIL, wait for that
    spent = _cycles_spent_leaving(slots, 0, 1, 0)
    assert _handoff.RETURN_CYCLES <= spent < _handoff.SPIN_CYCLES

    slots[0] = 0  # returning for long: asleep on the GIL, do not wait
    assert _cycles_spent_leaving(slots, 0, 1, 10 * _handoff.RETURN_CYCLES) < _handoff.RETURN_CYCLES

    slots[0] = 0  # two other query threads: the one in Python may be off the CPU, never spin
    slots[1], slots[2] = _handoff.IN_PYTHON, _handoff.IN_KERNEL
    assert _cycles_spent_leaving(slots, 0, 1, -1) < _handoff.RETURN_CYCLES


def test_a_thread_in_a_kernel_shows_in_its_slot():
    seen = []

    @numba.njit
    def probe(slots, slot):
        _handoff.kernel_entered(slots, slot)
        return slots[slot]

    lease = _handoff.SlotLease()
    try:
        seen.append(probe(_handoff.SLOTS, lease.slot))
    finally:
        _handoff.SLOTS[lease.slot] = 0
        del lease
    assert seen == [_handoff.IN_KERNEL]
