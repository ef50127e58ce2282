"""Graphs linked by a shorter prefix than their dim (``link_dim``): the walk still scores at
the indexed dim; build, search, persistence and compaction keep the link dim."""

import json

import numpy as np
import pytest

from mrlsearch import DimensionError, FormatError, Searcher
from mrlsearch._build import LINK_SHORTLIST_RATIO, MIN_LINK_DIM, link_dim_for
from mrlsearch._results import recall_per_query
from mrlsearch.datasets import synthetic_mrl

DIMS = (16, 32, 64, 128)
STAGES = [(128, "int8", 40), (128, 10)]


@pytest.fixture(scope="module")
def data():
    return synthetic_mrl(4000, 128, n_queries=200, decay=0.8, seed=3)


def _linked(vectors, link_dim=32, **options):
    searcher = Searcher(128, DIMS, metric="l2", index_dims=(128,), link_dim=link_dim, **options)
    searcher.add(vectors)
    return searcher


def test_a_linked_graph_holds_only_the_link_prefix(data):
    vectors, _ = data
    linked, plain = _linked(vectors), _linked(vectors, link_dim=None)
    assert linked.link_dim == 32 and plain.link_dim is None
    assert "link_dim=32" in repr(linked) and "link_dim" not in repr(plain)
    # hnswlib's copy of the vectors is 32 dims wide instead of 128: 96 floats less a row
    saved = plain.memory_usage()["graphs"] - linked.memory_usage()["graphs"]
    assert saved == len(vectors) * 96 * 4


def test_the_walk_over_a_linked_graph_finds_the_true_neighbours(data):
    vectors, queries = data
    searcher = _linked(vectors)
    truth = searcher.exact(queries, 10)
    result = searcher.funnel(queries, 10, STAGES, ef=60)
    assert recall_per_query(result.ids, truth.ids).mean() >= 0.97
    # every returned score is the exact full-dim score of that id
    full = -np.square(vectors[result.ids] - queries[:, None, :]).sum(axis=2)
    np.testing.assert_allclose(result.scores, full, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_add_compact_keep_the_link_dim(data, tmp_path, mmap):
    vectors, queries = data
    searcher = _linked(vectors[:3000])
    before = searcher.funnel(queries, 10, STAGES, ef=60)
    searcher.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["version"] == 4 and manifest["link_dim"] == 32
    loaded = Searcher.load(tmp_path / "index", mmap=mmap)
    assert loaded.link_dim == 32
    np.testing.assert_array_equal(loaded.funnel(queries, 10, STAGES, ef=60).ids, before.ids)
    loaded.add(vectors[3000:])  # a parked (mmap) graph is read back at 32 dims, then grown
    loaded.remove(list(range(0, 4000, 3)))
    loaded.compact()
    assert loaded.link_dim == 32
    kept = np.setdiff1d(np.arange(4000), np.arange(0, 4000, 3))
    distances = np.square(vectors[kept][None] - queries[:, None]).sum(axis=2)
    truth = kept[np.argsort(distances, axis=1)[:, :10]]
    result = loaded.funnel(queries, 10, STAGES, ef=60)
    assert recall_per_query(result.ids, truth).mean() >= 0.97
    loaded.save(tmp_path / "again")
    assert Searcher.load(tmp_path / "again").link_dim == 32


def test_an_index_without_a_shorter_link_is_still_written_as_version_2(data, tmp_path):
    vectors, _ = data
    # a link dim at least every index dim changes no graph: still format 2
    searcher = Searcher(128, DIMS, metric="l2", index_dims=(32,), link_dim=64)
    searcher.add(vectors[:500])
    searcher.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert Searcher.load(tmp_path / "index").link_dim == 64


@pytest.mark.parametrize("bad, error, match", [
    (0, ValueError, "positive int"), (20, DimensionError, "one of dims"),
    (256, DimensionError, "one of dims"), ("32", TypeError, "positive int"),
    (32.0, TypeError, "positive int"), (True, TypeError, "positive int"),
])
def test_bad_link_dims_are_refused(bad, error, match):
    with pytest.raises(error, match=match):
        Searcher(128, DIMS, link_dim=bad)


@pytest.mark.parametrize("value", [64, 16, "x", -1])
def test_a_manifest_whose_link_dim_does_not_fit_its_graph_is_refused(data, tmp_path, value):
    vectors, _ = data
    _linked(vectors[:300]).save(tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["link_dim"] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError):
        Searcher.load(tmp_path / "index")


@pytest.mark.parametrize("linked, version, link_dim", [
    (True, 2, 32), (True, 3, 32), (True, 4, None), (False, 4, None), (False, 4, 128)])
def test_a_manifest_whose_version_does_not_say_whether_it_is_linked_is_refused(
        data, tmp_path, linked, version, link_dim):
    vectors, _ = data
    (_linked(vectors[:300]) if linked else _linked(vectors[:300], link_dim=None)).save(
        tmp_path / "index")
    path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["version"], manifest["link_dim"] = version, link_dim
    path.write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="version"):
        Searcher.load(tmp_path / "index")


def test_link_dim_for_takes_the_shortest_prefix_that_ranks_well_enough():
    assert link_dim_for({32: 400, 64: 30, 128: 10, 256: 5}, 128, 256) == 64
    limit = int(LINK_SHORTLIST_RATIO * 10)
    assert link_dim_for({32: limit, 64: 12, 128: 10, 256: 5}, 128, 256) == 32
    assert link_dim_for({32: limit + 1, 64: limit + 1, 128: 10, 256: 5}, 128, 256) is None
    # never below MIN_LINK_DIM, never the walk dim itself or beyond it
    assert link_dim_for({MIN_LINK_DIM // 2: 10, 64: 10, 128: 5}, 64, 128) is None
    assert link_dim_for({32: 10, 64: 10, 128: 10}, 32, 128) is None
    # a full-dim graph is never linked shorter, however well a prefix ranks
    assert link_dim_for({32: 10, 64: 10, 128: 10}, 128, 128) is None


def test_build_links_the_graph_by_a_shorter_prefix_where_it_ranks_well():
    vectors, queries = synthetic_mrl(6000, 512, n_queries=300, decay=0.8, seed=0)
    searcher = Searcher.build(vectors, queries=queries[:150], metric="l2")
    report = searcher.build_report
    walk_dim = searcher.plan.stages[0][0]
    assert report["link_dim"] == searcher.link_dim == link_dim_for(
        report["shortlist_needed"], walk_dim, 512)
    assert searcher.link_dim is not None and searcher.link_dim < walk_dim
    truth = searcher.exact(queries[150:], 10)
    result = searcher.search(queries[150:], 10)
    assert recall_per_query(result.ids, truth.ids).mean() >= 0.93
