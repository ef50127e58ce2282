"""VectorStore id lookups: the sorted path for long id lists agrees with the per-id one."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mrlsearch import Searcher


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_remove=st.integers(0, 300), n_lookup=st.integers(257, 900))
def test_long_id_lists_map_to_the_same_rows_as_single_lookups(seed, n_remove, n_lookup):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**12, size=400, replace=False)
    searcher = Searcher(8, dims=(4, 8), index_dims=(4,))
    searcher.add(rng.standard_normal((400, 8)).astype(np.float32), ids)
    searcher.remove(rng.choice(ids, size=n_remove, replace=False))
    # re-adding some ids moves them to new rows: the sorted copy must follow the version
    searcher.add(rng.standard_normal((20, 8)).astype(np.float32), ids[:20])
    wanted = np.concatenate([rng.choice(ids, size=n_lookup - 50),
                             rng.integers(0, 10**12, size=50)])
    store = searcher._store  # noqa: SLF001 - the store's own lookup is under test
    expected = np.array([store.row_of.get(int(i), -1) for i in wanted])
    np.testing.assert_array_equal(store.rows_of(wanted), expected)
    np.testing.assert_array_equal(store.rows_of(wanted[:10]), expected[:10])


def test_a_long_filter_list_returns_only_its_ids():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    searcher = Searcher(16, dims=(8, 16), index_dims=(8,))
    searcher.add(vectors)
    allowed = rng.choice(3000, size=2500, replace=False)
    result = searcher.search(vectors[:20], k=10, filter=allowed)
    assert np.isin(result.ids, allowed).all()
    exact = vectors[allowed] @ vectors[:20].T
    assert (result.ids[:, 0] == allowed[np.argmax(exact / np.linalg.norm(
        vectors[allowed], axis=1)[:, None], axis=0)]).mean() >= 0.95
