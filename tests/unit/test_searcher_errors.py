import numpy as np
import pytest

from mrlsearch import DimensionError, FormatError, FunnelPlan, Searcher
from mrlsearch.searcher import MAX_K


@pytest.fixture
def searcher():
    s = Searcher(32, (8, 16, 32), index_dims=(8,))
    s.add(np.random.default_rng(0).standard_normal((50, 32)))
    return s


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dim": 0}, ValueError, r"'dim' must be a positive int \(got 0\)"),
        ({"dim": 32, "dims": (16, 8)}, DimensionError, r"'dims' must be strictly increasing"),
        ({"dim": 32, "dims": (8, 64)}, DimensionError, r"'dims' must not exceed 32"),
        ({"dim": 32, "dims": ()}, DimensionError, r"'dims' must name at least one dim"),
        ({"dim": 32, "metric": "dot"}, ValueError, r"'metric' must be one of 'cosine', 'ip', 'l2'"),
        ({"dim": 32, "dims": (8, 32), "index_dims": (16,)}, DimensionError,
         r"'index_dims' must be among dims"),
        ({"dim": 32, "dtype": "int8"}, ValueError, r"'dtype' must be one of"),
        ({"dim": 32, "M": -1}, ValueError, r"'M' must be an int in \[2, 2048\]"),
        ({"dim": 32, "M": 1}, ValueError, r"'M' must be an int in \[2, 2048\]"),
        ({"dim": 32, "M": 20000}, ValueError, r"'M' must be an int in \[2, 2048\]"),
        ({"dim": 32, "ef_construction": 0}, ValueError, r"'ef_construction' must be an int in"),
        ({"dim": 32, "codes": ("int4",)}, ValueError, r"'codes' must be one of"),
        ({"dim": "32"}, TypeError, r"'dim' must be a positive int \(got '32'\)"),
        ({"dim": 32, "seed": -1}, ValueError, r"'seed' must be an int in \[0, 2\*\*64\)"),
        ({"dim": 32, "seed": 2**64}, ValueError, r"'seed' must be an int in \[0, 2\*\*64\)"),
        ({"dim": 32, "seed": 1.0}, TypeError, r"'seed' must be an int"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Searcher(**kwargs)


@pytest.mark.parametrize(
    "vectors, error, match",
    [
        (np.ones((3, 31)), DimensionError, r"'vectors' must have 32 columns \(got shape \(3, 31\)\)"),
        (np.ones((2, 3, 32)), DimensionError, r"'vectors' must have shape"),
        (np.full((2, 32), np.nan), ValueError, r"'vectors' must be finite \(got NaN or inf in row 0\)"),
        (np.full((2, 32), np.inf), ValueError, r"must be finite"),
        (np.ones((0, 32)), ValueError, r"'vectors' must hold at least one row"),
        ("abc", TypeError, r"'vectors' must be an array of numbers"),
        (np.array([["a"] * 32]), TypeError, r"'vectors' must be an array of numbers"),
        (np.full((2, 32), 1e300), ValueError,
         r"'vectors' values must fit float32 \(got a value beyond .* in row 0\)"),
        ([[1.0] * 32, [1.0] * 3], TypeError, r"'vectors' must be an array of numbers"),
    ],
)
def test_add_rejects_bad_vectors(searcher, vectors, error, match):
    with pytest.raises(error, match=match):
        searcher.add(vectors)
    assert len(searcher) == 50


def test_a_bad_row_is_named_by_its_place_in_the_whole_input(searcher):
    vectors = np.ones((25_000, 32), dtype=np.float32)  # read in chunks of 10 000 rows
    vectors[15_000, 3] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in row 15000\)"):
        searcher.add(vectors, progress=False)
    assert len(searcher) == 50


def test_get_takes_the_ids_of_a_batch_of_hits(searcher):
    hits = searcher.search(np.ones((3, 32)), k=5).ids  # the same ids come back for each
    assert searcher.get(hits.ravel()).shape == (15, 32)
    np.testing.assert_array_equal(searcher.get([3, 3, 4])[:2], searcher.get([3, 3]))
    with pytest.raises(ValueError, match=r"got -1\) \(-1 pads search results"):
        searcher.get([2, -1])
    with pytest.raises(ValueError, match=r"'ids' must be ids in \[0, 2\*\*63\) \(got 1e\+19\)"):
        searcher.get([1e19])
    with pytest.raises(ValueError, match=r"\(got -1e\+30\)"):  # the value out of range
        searcher.get([5.0, -1e30])


def test_add_rejects_bad_ids(searcher):
    with pytest.raises(ValueError, match=r"'ids' must not repeat an id \(got 7 twice\)"):
        searcher.add(np.ones((2, 32)), ids=[7, 7])
    with pytest.raises(DimensionError, match=r"'ids' must hold 2 ids, one per vector \(got 3\)"):
        searcher.add(np.ones((2, 32)), ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"'ids' must be non-negative \(got -1\)"):
        searcher.add(np.ones((1, 32)), ids=[-1])
    with pytest.raises(TypeError, match=r"'ids' must be integer ids"):
        searcher.add(np.ones((1, 32)), ids=[1.5])
    with pytest.raises(ValueError, match=r"'vectors' must fit float16"):
        Searcher(32, dtype="float16").add(np.full((1, 32), 1e6))
    assert len(searcher) == 50


def test_the_largest_id_and_seed_save_and_load(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    searcher = Searcher(32, (8, 32), index_dims=(8,), seed=2**64 - 1)
    searcher.add(vectors[:1], ids=[2**63 - 1])  # next_id is now 2**63: beyond int64
    with pytest.raises(ValueError, match=r"no 2 consecutive ids are left .* pass 'ids'"):
        searcher.add(vectors[1:3])
    searcher.add(vectors[1:3], ids=[0, 1])
    searcher.save(tmp_path / "index")
    loaded = Searcher.load(tmp_path / "index")
    assert loaded.search(vectors[0], 1).ids.tolist() == [[2**63 - 1]]
    with pytest.raises(ValueError, match="consecutive ids"):
        loaded.add(vectors[3])


def test_remove_rejects_unknown_ids_and_removes_nothing(searcher):
    with pytest.raises(ValueError, match=r"'ids' must all be in the index \(got 1 unknown, e.g. 999\)"):
        searcher.remove([1, 999])
    assert len(searcher) == 50
    searcher.remove([1])
    with pytest.raises(ValueError, match=r"e.g. 1\)"):
        searcher.remove(1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda s, q: s.funnel(q, k=0), ValueError, r"'k' must be a positive int \(got 0\)"),
        (lambda s, q: s.funnel(q, k=-3), ValueError, r"'k' must be a positive int \(got -3\)"),
        (lambda s, q: s.funnel(q, k=2.5), TypeError, r"'k' must be a positive int \(got 2.5\)"),
        (lambda s, q: s.funnel(q[:, :16]), DimensionError, r"'queries' must have 32 columns"),
        (lambda s, q: s.funnel(q, stages=[(16, 20), (8, 10)]), DimensionError,
         r"'stages' dims must grow from stage to stage"),
        (lambda s, q: s.funnel(q, stages=[(8, 20), (12, 10)]), DimensionError,
         r"'stages' dims must be among dims \(8, 16, 32\) \(got 12\)"),
        (lambda s, q: s.funnel(q, stages=[(16, 20), (32, 10)]), DimensionError,
         r"'stages' first dim must be an indexed dim \(8,\) \(got 16\)"),
        (lambda s, q: s.funnel(q, k=10, stages=[(8, 20), (32, 5)]), ValueError,
         r"'stages' shortlist at dim 32 must be >= k=10 \(got 5\)"),
        (lambda s, q: s.funnel(q, k=5, stages=[(8, 10), (32, 20)]), ValueError,
         r"'stages' shortlists must not grow"),
        (lambda s, q: s.funnel(q, stages=[]), TypeError, r"'stages' must be a non-empty list"),
        (lambda s, q: s.funnel(q, stages=[(8,)]), TypeError, r"'stages' must hold \(dim, shortlist\)"),
        (lambda s, q: s.funnel(q, stages=[(8, 20)], ef=10), ValueError,
         r"'ef' must be >= the first stage's shortlist 20 \(got 10\)"),
        (lambda s, q: s.exact(q, dim=12), DimensionError, r"'dim' must be one of dims"),
        (lambda s, q: s.search_graph(q, dim=32), DimensionError, r"'dim' must be an indexed dim"),
        (lambda s, q: s.funnel(q, stages=[(8, "int4", 20), (32, 10)]), ValueError,
         r"'stages' precision must be one of"),
        (lambda s, q: s.funnel(q, stages=[(8, 20), (8, "int8", 10)]), DimensionError,
         r"'stages' dims must grow"),
        (lambda s, q: s.funnel(q, stages=[(8, "int8", 20), (16, "int8", 20), (32, 10)]),
         ValueError, r"'stages' int8 stages must be at the first stage's dim 8"),
        (lambda s, q: s.funnel(q, stages=[(8, 20)], ef=2**64), ValueError,
         r"'ef' must be an int in \[1, "),
        (lambda s, q: s.funnel(q, k=2**40), ValueError, r"'k' must be at most"),
        (lambda s, q: s.funnel(q * 1e20), ValueError, r"'queries' values must be within"),
        (lambda s, q: s.funnel(q, filter=np.zeros((2, 2), dtype=bool)), DimensionError,
         r"'filter' as a mask must be 1-D"),
        # np.unique ran first: "'<' not supported between 'NoneType' and 'int'"
        (lambda s, q: s.funnel(q, filter=np.array([1, None], dtype=object)), TypeError,
         r"'filter' must be integer ids \(got dtype object\)"),
        (lambda s, q: Searcher.build(q[:1]), ValueError,
         r"'vectors' must hold at least 2 rows to build and tune"),
        (lambda s, q: s.tune(q, target_recall=1.5), ValueError, r"'target_recall' must be a number in"),
        (lambda s, q: s.tune(q, precisions=[1]), TypeError,
         r"'precisions' must be a sequence of str"),
        (lambda s, q: s.tune(q, precisions="int8"), TypeError, r"'precisions' must be a sequence"),
        (lambda s, q: s.tune(q, precisions=["int4"]), ValueError, r"'precisions' must be one of"),
        (lambda s, q: s.tune(q, precisions=[]), ValueError, r"'precisions' must name at least"),
        (lambda s, q: s.measure(q, s.exact(q, 5), [(8, 20), (32, 5)], repeats=0), ValueError,
         r"'repeats' must be a positive int"),
        (lambda s, q: s.measure(q, np.zeros(3), [(8, 20), (32, 5)]), DimensionError,
         r"'truth' must be ids of shape"),
        (lambda s, q: s.drop_graphs([16]), DimensionError, r"'keep' must be among index_dims"),
        (lambda s, q: s.get([10**6]), KeyError, r"not in the index"),
        (lambda s, q: s.funnel(np.full((1, 32), np.nan)), ValueError, r"'queries' must be finite"),
    ],
)
def test_query_errors(searcher, call, error, match):
    with pytest.raises(error, match=match):
        call(searcher, np.ones((2, 32)))


def test_empty_index_is_a_clear_error():
    empty = Searcher(32)
    for call in (empty.funnel, empty.exact, empty.search):
        with pytest.raises(ValueError, match="the index is empty"):
            call(np.ones(32))
    s = Searcher(8, (4, 8), index_dims=(4,))
    s.add(np.ones((2, 8)))
    s.remove([0, 1])
    with pytest.raises(ValueError, match="the index is empty"):
        s.funnel(np.ones(8))


def test_load_errors(tmp_path, searcher):
    with pytest.raises(FileNotFoundError, match="No index directory"):
        Searcher.load(tmp_path / "missing")
    searcher.save(tmp_path / "idx")
    (tmp_path / "idx" / "ids.npy").write_bytes(b"garbage")
    with pytest.raises(FormatError, match=r"ids.npy is corrupt"):
        Searcher.load(tmp_path / "idx")
    searcher.save(tmp_path / "idx2")
    (tmp_path / "idx2" / "hnsw_8.bin").unlink()
    with pytest.raises(FormatError, match=r"hnsw_8.bin is missing"):
        Searcher.load(tmp_path / "idx2")
    searcher.save(tmp_path / "idx3")
    (tmp_path / "idx3" / "manifest.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"manifest.json is not valid JSON"):
        Searcher.load(tmp_path / "idx3")


@pytest.mark.parametrize("shortlist", [20, 100])  # a graph walk, and a scan of all 50 rows
@pytest.mark.parametrize("value, match", [
    (np.nan, r"'queries' must be finite"),
    (np.inf, r"'queries' must be finite"),
    (1e16, r"'queries' values must be within"),
    (1e-20, r"'queries' values are too small"),
])
def test_a_single_query_out_of_range_is_refused_by_the_kernels_check(searcher, shortlist,
                                                                     value, match):
    # a 1-D float32 query is range-checked inside the compiled call; the error must be the
    # same as the one the full check gives a batch
    query = np.ones(32, dtype=np.float32)
    query[5] = value
    if value < 1:
        query[:] = value
    for one in (query, query[None]):
        with pytest.raises(ValueError, match=match):
            searcher.funnel(one, k=5, stages=[(8, shortlist), (32, 5)])


def test_a_zero_single_query_is_searched_not_refused(searcher):
    query = np.zeros(32, dtype=np.float32)
    one = searcher.funnel(query, k=5)
    batch = searcher.funnel(query[None].copy(), k=5)
    np.testing.assert_array_equal(one.ids, batch.ids)
    assert one.counts[0] == 5


def test_read_only_strided_and_float64_single_queries_search_as_float32(searcher):
    base = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    want = searcher.funnel(base[0].copy(), k=5).ids
    read_only = base[0].copy()
    read_only.flags.writeable = False
    strided = np.ascontiguousarray(base.T)[:, 0]  # a column: stride of two floats
    for query in (read_only, strided, base[0].astype(np.float64)):
        np.testing.assert_array_equal(searcher.funnel(query, k=5).ids, want)
    bad = base[0].astype(np.float64)
    bad[2] = np.nan
    bad.flags.writeable = False
    with pytest.raises(ValueError, match="'queries' must be finite"):
        searcher.funnel(bad, k=5)


def test_a_checked_schedule_does_not_let_equal_values_of_other_types_through(searcher):
    stages = [(8, 20), (32, 10)]
    searcher.funnel(np.ones(32), 10, stages, ef=20)  # checked and remembered
    with pytest.raises(ValueError, match=r"'ef' must be an int .*got 20.0"):
        searcher.funnel(np.ones(32), 10, stages, ef=20.0)
    with pytest.raises(ValueError, match=r"'ef' must be an int .*got True"):
        searcher.funnel(np.ones(32), 1, [(8, 1), (32, 1)], ef=True)
    searcher.funnel(np.ones(32), 10, stages)
    with pytest.raises(TypeError, match="'stages shortlist' must be a positive int"):
        searcher.funnel(np.ones(32), 10, [(8, 20.0), (32, 10)])


def test_a_tuned_plan_serves_any_k_an_untuned_index_serves(searcher):
    searcher.plan = FunnelPlan(((8, "float32", 40), (32, "float32", 10)), ef=80, k=10)
    big = MAX_K // 2
    result = searcher.search(np.ones(32), k=big)  # the plan's ef scaled to 4e6 before
    assert result.ids.shape == (1, big) and result.counts.tolist() == [50]
    scaled = searcher.plan.for_k(big)
    assert scaled.ef == scaled.stages[0][2] == MAX_K  # capped where ef is (2**20)


def test_an_index_is_never_saved_over_a_model_directory(tmp_path, searcher):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx")
    digest = __import__("hashlib").sha256(b"onnx").hexdigest()
    (model / "manifest.json").write_text(
        '{"format": "mrlsearch.model", "version": 1, "files": {"model.onnx": "%s"}}' % digest)
    with pytest.raises(FileExistsError, match="'mrlsearch.model' directory"):
        searcher.save(model)
    assert (model / "model.onnx").read_bytes() == b"onnx"


def test_a_manifest_int_beyond_int64_is_a_format_error(tmp_path, searcher):
    searcher.save(tmp_path / "index")
    manifest = tmp_path / "index" / "manifest.json"
    text = manifest.read_text()
    import json
    data = json.loads(text)
    data["dim"] = 2**64 - 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="'dim' must be an int in"):
        Searcher.load(tmp_path / "index", verify="none")


def test_measure_counts_ties_only_against_full_dim_truth_of_its_metric(searcher):
    queries = np.random.default_rng(3).standard_normal((20, 32)).astype(np.float32)
    stages = [(8, 50), (32, 10)]
    other = Searcher(32, (8, 16, 32), metric="l2", index_dims=(8,))
    other.add(searcher.get(searcher.ids()), searcher.ids())
    for truth in (other.exact(queries, 10), searcher.exact(queries, 10, dim=16)):
        _, recall, _, _ = searcher.measure(queries, truth, stages)
        assert recall == pytest.approx(searcher.funnel(queries, 10, stages).recall(truth))


@pytest.mark.parametrize("stages, ef, k, error, match", [
    (((16, "float32", -5),), 10, 5, ValueError, r"'stages' shortlists must be positive ints"),
    (((16.5, 5),), 10, 5, TypeError, r"'stages' dims must be positive ints \(got 16.5"),
    ((), 10, 5, ValueError, r"'stages' must hold at least one stage"),
    ("16:5", 10, 5, TypeError, r"'stages' must be a sequence of stages"),
    (((16, 5),), -1, 5, ValueError, r"'ef' must be a positive int"),
    (((16, 5),), 10, 0, ValueError, r"'k' must be a positive int"),
])
def test_a_funnel_plan_refuses_values_no_plan_can_hold(stages, ef, k, error, match):
    # before, such a plan was made and failed only where it was used
    with pytest.raises(error, match=match):
        FunnelPlan(stages, ef=ef, k=k)


def test_a_saved_plan_with_whole_floats_still_loads():
    # another JSON writer may store 16 as 16.0; from_dict took it before plans were checked
    plan = FunnelPlan.from_dict({"stages": [[16.0, 40], [32, "float32", 10.0]], "ef": 40.0,
                                 "k": 10})
    assert plan.stages == ((16, "float32", 40), (32, "float32", 10)) and plan.ef == 40
    with pytest.raises(TypeError, match=r"'stages' dims must be positive ints \(got 16.5"):
        FunnelPlan.from_dict({"stages": [[16.5, 40]], "ef": 40, "k": 10})


def test_a_funnel_plan_for_k_zero_is_refused():
    with pytest.raises(ValueError, match=r"'k' must be a positive int \(got 0\)"):
        FunnelPlan(((16, 5),), ef=10, k=5).for_k(0)


def test_codes_keep_one_order_through_save_and_load(tmp_path):
    # given as ('binary', 'int8'), they were ('int8', 'binary') once loaded: the loader sorted
    searcher = Searcher(16, (8, 16), index_dims=(8,), codes=("binary", "int8", "binary"))
    searcher.add(np.random.default_rng(0).standard_normal((100, 16)))
    searcher.save(tmp_path / "index")
    assert searcher.codes == Searcher.load(tmp_path / "index").codes == ("int8", "binary")
