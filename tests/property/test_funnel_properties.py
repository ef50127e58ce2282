"""Hypothesis property tests of the funnel's invariants."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from invariants import assert_same_neighbours

from mrlsearch import Searcher


@st.composite
def index_and_queries(draw):
    n = draw(st.integers(1, 120))
    dim = draw(st.sampled_from([3, 8, 17, 32]))
    metric = draw(st.sampled_from(["cosine", "ip", "l2"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    if draw(st.booleans()):  # duplicates and zero rows are legal input
        vectors[: n // 3] = vectors[0]
        vectors[-1] = 0.0
    queries = rng.standard_normal((draw(st.integers(1, 5)), dim)).astype(np.float32)
    k = draw(st.integers(1, n + 3))
    return vectors, queries, metric, k


@settings(max_examples=60, deadline=None)
@given(index_and_queries())
def test_one_exact_full_dim_stage_equals_exact(case):
    vectors, queries, metric, k = case
    dim = vectors.shape[1]
    searcher = Searcher(dim, (dim,), metric=metric, index_dims=(dim,))
    searcher.add(vectors)
    shortlist = max(k, len(vectors))
    got = searcher.funnel(queries, k=k, stages=[(dim, shortlist)])
    want = searcher.exact(queries, k=k)
    assert_same_neighbours(got.ids, got.scores, want.ids, want.scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.counts, want.counts)
    assert (got.counts == min(k, len(vectors))).all()
