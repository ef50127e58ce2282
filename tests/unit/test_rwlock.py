"""The readers-writer lock: readers together, a writer alone, writers not starved."""

import threading
import time

import pytest

from mrlsearch._rwlock import RWLock


def test_readers_share_and_a_writer_waits_for_them():
    lock = RWLock()
    inside = threading.Event()
    release = threading.Event()
    log = []

    def reader():
        with lock.read():
            inside.set()
            release.wait(5)
            log.append("reader out")

    def writer():
        with lock.write():
            log.append("writer in")

    first = threading.Thread(target=reader)
    first.start()
    inside.wait(5)
    with lock.read():  # a second reader gets in while the first holds the lock
        log.append("second reader")
    writing = threading.Thread(target=writer)
    writing.start()
    time.sleep(0.05)
    assert log == ["second reader"]  # the writer waits for the first reader
    release.set()
    first.join(5)
    writing.join(5)
    assert log == ["second reader", "reader out", "writer in"]


def test_a_waiting_writer_blocks_new_readers_but_not_nested_reads():
    lock = RWLock()
    holding = threading.Event()
    release = threading.Event()
    log = []

    def long_reader():
        with lock.read():
            holding.set()
            release.wait(5)
            with lock.read():  # nested read while the writer waits: must not deadlock
                log.append("nested")

    def writer():
        with lock.write():
            log.append("writer")

    def late_reader():
        with lock.read():
            log.append("late reader")

    threads = [threading.Thread(target=long_reader)]
    threads[0].start()
    holding.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    time.sleep(0.05)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    time.sleep(0.05)
    assert log == []  # the late reader queues behind the writer
    release.set()
    for thread in threads:
        thread.join(5)
    assert log == ["nested", "writer", "late reader"]


def test_taking_the_write_side_inside_a_read_raises_instead_of_deadlocking():
    lock = RWLock()
    with lock.read(), pytest.raises(RuntimeError, match="read lock"):
        with lock.write():
            pass
    with lock.write():  # and the lock is still usable
        pass


def test_many_threads_never_see_a_half_done_write():
    lock = RWLock()
    pair = [0, 0]
    errors = []

    def write():
        for i in range(300):
            with lock.write():
                pair[0] = i
                time.sleep(0)
                pair[1] = i

    def read():
        for _ in range(3000):
            with lock.read():
                if pair[0] != pair[1]:
                    errors.append(tuple(pair))

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read)
                                                  for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
