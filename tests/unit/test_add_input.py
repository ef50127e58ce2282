"""add() reads its input in chunks: read-only memory maps and writable arrays alike, without
modifying the caller's array."""

import numpy as np

from mrlsearch import Searcher


def test_add_reads_a_read_only_memory_map(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((25_000, 16)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(mapped, progress=False)  # more than one 10 000-row chunk
    np.testing.assert_array_equal(s.get([0, 12_345, 24_999]), vectors[[0, 12_345, 24_999]])
    assert s.search(vectors[:3], k=1).ids[:, 0].tolist() == [0, 1, 2]


def test_add_leaves_a_writable_float32_input_unchanged():
    vectors = np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)
    before = vectors.copy()
    s = Searcher(16, dims=(8, 16), index_dims=(8,), metric="cosine")
    s.add(vectors)
    np.testing.assert_array_equal(vectors, before)
    vectors[:] = 0  # the index holds its own copy
    np.testing.assert_array_equal(s.get([0]), before[:1])
