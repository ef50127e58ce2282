"""load(mmap=True) lets go of hnswlib's graphs once their links are copied, and reads them back
from the directory when a write or a save needs them."""

import numpy as np
import pytest

from mrlsearch import FormatError, Searcher


def _index(tmp_path, n=1500, seed=0):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 32)).astype(np.float32)
    searcher = Searcher(32, dims=(8, 16, 32), index_dims=(16,))
    searcher.add(vectors)
    searcher.save(tmp_path / "index")
    return searcher, vectors


def test_mmap_load_holds_no_hnswlib_graph_and_answers_the_same(tmp_path):
    searcher, vectors = _index(tmp_path)
    queries = vectors[:50] + 0.01
    stages = [(16, "int8", 40), (32, "float32", 10)]
    expected = searcher.funnel(queries, 10, stages)
    loaded = Searcher.load(tmp_path / "index", mmap=True)
    assert loaded.memory_usage()["graphs"] == 0  # parked: only the link copy is resident
    assert Searcher.load(tmp_path / "index").memory_usage()["graphs"] > 0
    result = loaded.funnel(queries, 10, stages)
    np.testing.assert_array_equal(result.ids, expected.ids)


def test_writes_and_saves_read_the_graph_back(tmp_path):
    searcher, vectors = _index(tmp_path)
    loaded = Searcher.load(tmp_path / "index", mmap=True)
    extra = np.random.default_rng(1).standard_normal((200, 32)).astype(np.float32)
    new_ids = loaded.add(extra)
    searcher.add(extra)
    assert loaded.memory_usage()["graphs"] > 0  # read back for the add
    loaded.remove(new_ids[:5])
    searcher.remove(new_ids[:5])
    queries = extra[:20]
    stages = [(16, "float32", 60), (32, "float32", 10)]
    np.testing.assert_array_equal(loaded.funnel(queries, 10, stages).ids,
                                  searcher.funnel(queries, 10, stages).ids)
    loaded.save(tmp_path / "index")  # over the directory it was loaded from
    again = Searcher.load(tmp_path / "index", mmap=True)
    assert len(again) == len(searcher)
    np.testing.assert_array_equal(again.funnel(queries, 10, stages).ids,
                                  searcher.funnel(queries, 10, stages).ids)
    fresh = Searcher.load(tmp_path / "index", mmap=True)
    fresh.save(tmp_path / "copy")  # a save alone reads the graph back too
    assert len(Searcher.load(tmp_path / "copy")) == len(searcher)


def test_a_replaced_directory_is_a_clear_error_not_a_wrong_graph(tmp_path):
    _index(tmp_path)
    loaded = Searcher.load(tmp_path / "index", mmap=True)
    _index(tmp_path, n=900, seed=5)  # another index saved over the same path
    stages = [(16, "float32", 60), (32, "float32", 10)]
    before = loaded.funnel(np.ones((2, 32), dtype=np.float32), 10, stages).ids
    with pytest.raises(FormatError, match="load the index again"):
        loaded.add(np.ones((1, 32), dtype=np.float32))
    with pytest.raises(FormatError, match="load the index again"):
        loaded.remove([3])
    assert len(loaded) == 1500 and 3 in loaded  # nothing was applied
    np.testing.assert_array_equal(
        loaded.funnel(np.ones((2, 32), dtype=np.float32), 10, stages).ids, before)
