"""Result helpers against plain references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mrlsearch._results import recall_per_query


def _reference(ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    out = []
    for got, want in zip(ids, truth[:, : ids.shape[1]]):
        want = want[want >= 0]
        out.append(1.0 if want.size == 0 else
                   np.intersect1d(got[got >= 0], want).size / want.size)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), k=st.integers(1, 12),
       extra=st.integers(0, 5), universe=st.integers(12, 60))
def test_recall_per_query_matches_a_set_intersection(seed, n, k, extra, universe):
    rng = np.random.default_rng(seed)
    # distinct ids per row (as a search returns them), padded with -1 at random places
    ids = np.stack([rng.permutation(universe)[:k] for _ in range(n)])
    truth = np.stack([rng.permutation(universe)[: k + extra] for _ in range(n)])
    ids[rng.random(ids.shape) < 0.2] = -1
    truth[rng.random(truth.shape) < 0.3] = -1
    np.testing.assert_allclose(recall_per_query(ids, truth), _reference(ids, truth))


def test_recall_per_query_compares_in_blocks_of_rows_and_sorts_long_rows():
    rng = np.random.default_rng(0)
    for n, k in ((100, 256), (6, 1000)):  # 2 blocks of 61 rows pair by pair; rows by sorting
        ids = np.stack([rng.permutation(5 * k)[:k] for _ in range(n)])
        truth = np.stack([rng.permutation(5 * k)[:k] for _ in range(n)])
        truth[:, -3:] = -1
        np.testing.assert_allclose(recall_per_query(ids, truth), _reference(ids, truth))
