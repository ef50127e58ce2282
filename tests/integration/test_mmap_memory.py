"""A memory-mapped index answers funnel queries without copying its vectors into memory.

What is bounded is the process's *anonymous* (private) memory: file-backed pages of the
mapping may become resident (the kernel maps whole neighbourhoods of a faulted page and reads
ahead), but they are clean page cache that the kernel reclaims under pressure.
"""

import pytest

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl

pytestmark = pytest.mark.slow


def anonymous_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon in /proc/self/status on this platform")


def test_mmap_queries_touch_only_candidate_rows(tmp_path):
    n, dim = 200_000, 256
    vectors, queries = synthetic_mrl(n, dim, n_queries=200, decay=1.0, seed=0)
    searcher = Searcher(dim, (16, 32, 64, 128, 256), index_dims=(16,), M=8, ef_construction=40)
    searcher.add(vectors)
    searcher.save(tmp_path / "big")
    del searcher, vectors
    file_bytes = (tmp_path / "big" / "vectors.npy").stat().st_size
    loaded = Searcher.load(tmp_path / "big", mmap=True)
    before = anonymous_bytes()
    stages = [(16, 100), (64, 30), (256, 10)]
    result = loaded.funnel(queries, 10, stages)
    grown = anonymous_bytes() - before
    assert (result.counts == 10).all()
    # 200 queries x ~100 candidates touch at most ~20k of 200k rows
    assert grown < 0.1 * file_bytes, f"private memory grew {grown >> 20} MiB for a " \
                                     f"{file_bytes >> 20} MiB vector file"
    # the control: an in-memory load holds a private copy of the whole file
    before = anonymous_bytes()
    in_memory = Searcher.load(tmp_path / "big", mmap=False)
    assert anonymous_bytes() - before > 0.9 * file_bytes
    del in_memory
