import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrlsearch import Classifier, DimensionError, FormatError

DIMS = (2, 4, 8, 16)


def make_heads(seed, n_classes=5, dims=DIMS, shared=False):
    rng = np.random.default_rng(seed)
    if shared:
        return Classifier.shared(rng.standard_normal((n_classes, dims[-1])),
                                 rng.standard_normal(n_classes), dims)
    return Classifier([rng.standard_normal((n_classes, m)) for m in dims],
                      [rng.standard_normal(n_classes) for _ in dims], dims)


def loop_cascade(clf, x, thresholds, confidence):
    """The cascade as a plain per-row loop over dims, in float64."""
    labels, dims = [], []
    for row in np.asarray(x, dtype=np.float64):
        for i, m in enumerate(clf.dims):
            logits = clf.logits(row[None].astype(np.float32), m)[0].astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            top = np.sort(p)[::-1]
            conf = top[0] if confidence == "max_prob" else top[0] - (top[1] if len(top) > 1 else 0)
            if i == len(clf.dims) - 1 or conf >= thresholds[i]:
                labels.append(int(np.argmax(logits)))
                dims.append(m)
                break
    return np.array(labels), np.array(dims)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shared=st.booleans(), n=st.integers(0, 30),
       confidence=st.sampled_from(["max_prob", "margin"]))
def test_cascade_equals_plain_loop(seed, shared, n, confidence):
    clf = make_heads(seed, shared=shared)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, DIMS[-1])) * 2
    thresholds = rng.uniform(0.2, 1.2, len(DIMS))  # above 1: the dim is skipped
    got = clf.cascade(x, thresholds, confidence=confidence)
    labels, dims = loop_cascade(clf, x, thresholds, confidence)
    # confidences exactly at a threshold could flip between float32 and float64; avoid them
    np.testing.assert_array_equal(got.dims, dims)
    np.testing.assert_array_equal(got.labels, labels)
    assert sum(s.rows_stopped for s in got.stats) == n
    if n:
        assert got.expected_dim == pytest.approx(dims.mean())


@pytest.mark.parametrize("shared", [False, True])
def test_threshold_extremes(shared):
    clf = make_heads(3, shared=shared)
    x = np.random.default_rng(4).standard_normal((50, 16)).astype(np.float32)
    low = clf.cascade(x, thresholds=0.0)
    assert (low.dims == DIMS[0]).all()
    np.testing.assert_array_equal(low.labels, clf.predict(x, dim=DIMS[0]))
    high = clf.cascade(x, thresholds=1.01)
    assert (high.dims == DIMS[-1]).all() and high.expected_dim == DIMS[-1]
    np.testing.assert_array_equal(high.labels, clf.predict(x))
    assert high.stats[-1].share == 1.0


def test_shared_heads_are_column_prefixes():
    clf = make_heads(5, shared=True)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 16)).astype(np.float32)
    weight, bias = clf._weights[0], clf._biases[0]
    for m in DIMS:
        np.testing.assert_allclose(clf.logits(x, m), x[:, :m] @ weight[:, :m].T + bias, rtol=1e-5)
        np.testing.assert_allclose(clf.predict_proba(x, m).sum(axis=1), 1.0, rtol=1e-5)


def test_single_row_float64_and_empty_batch():
    clf = make_heads(7)
    row = np.random.default_rng(8).standard_normal(16)
    assert clf.cascade(row, 0.5).labels.shape == (1,)
    empty = clf.cascade(np.empty((0, 16)), 0.5)
    assert empty.labels.shape == (0,) and np.isnan(empty.expected_dim)
    assert clf.predict(np.empty((0, 16))).shape == (0,)


@pytest.mark.parametrize("shared", [False, True])
def test_unreachable_thresholds_skip_the_dim(shared):
    clf = make_heads(5, shared=shared)
    x = np.random.default_rng(6).standard_normal((40, 16))
    result = clf.cascade(x, thresholds=[1.5, 0.6, np.inf])
    assert result.stats[0].rows_in == 0 and result.stats[2].rows_in == 0
    assert result.stats[1].rows_in == 40
    labels, dims = loop_cascade(clf, x, [1.5, 0.6, np.inf, -np.inf], "max_prob")
    np.testing.assert_array_equal(result.dims, dims)
    np.testing.assert_array_equal(result.labels, labels)


def test_softmax_is_stable_for_huge_logits():
    clf = Classifier.shared(np.array([[1e4, 0.0], [0.0, 1e4]]), np.zeros(2), dims=(1, 2))
    result = clf.cascade(np.array([[1.0, 0.0], [0.0, 1.0]]), thresholds=0.9)
    assert np.isfinite(result.confidence).all()
    assert result.labels.tolist() == [0, 1]


@pytest.mark.parametrize("shared", [False, True])
def test_save_load_round_trip(tmp_path, shared):
    clf = make_heads(9, shared=shared)
    clf.thresholds = [0.5, 0.6, 0.7]
    clf.save(tmp_path / "clf.npz")
    loaded = Classifier.load(tmp_path / "clf.npz")
    x = np.random.default_rng(10).standard_normal((20, 16))
    a, b = clf.cascade(x), loaded.cascade(x)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.dims, b.dims)
    assert loaded.efficient == shared and loaded.dims == DIMS


def test_load_rejects_bad_files(tmp_path):
    clf = make_heads(11)
    clf.save(tmp_path / "clf.npz")
    data = (tmp_path / "clf.npz").read_bytes()
    (tmp_path / "short.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="short.npz is not a readable .npz"):
        Classifier.load(tmp_path / "short.npz")
    np.savez(tmp_path / "other.npz", format=np.array("something"), version=np.array(1))
    with pytest.raises(FormatError, match="must hold format 'mrlsearch.classifier'"):
        Classifier.load(tmp_path / "other.npz")
    np.savez(tmp_path / "future.npz", format=np.array("mrlsearch.classifier"),
             version=np.array(99))
    with pytest.raises(FormatError, match="has version 99"):
        Classifier.load(tmp_path / "future.npz")
    np.savez(tmp_path / "nodims.npz", format=np.array("mrlsearch.classifier"),
             version=np.array(1))
    with pytest.raises(FormatError, match="not a valid mrlsearch classifier"):
        Classifier.load(tmp_path / "nodims.npz")
    with pytest.raises(FileNotFoundError):
        Classifier.load(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c: c.cascade(np.ones((2, 15)), 0.5), DimensionError, r"'x' must have 16 columns"),
        (lambda c: c.cascade(np.full((1, 16), np.nan), 0.5), ValueError, r"'x' must be finite"),
        (lambda c: c.cascade(np.ones((1, 16))), ValueError, r"not calibrated"),
        (lambda c: c.cascade(np.ones((1, 16)), [0.5, 0.5]), DimensionError,
         r"'thresholds' must be a number or hold one value per dim"),
        (lambda c: c.cascade(np.ones((1, 16)), 0.5, confidence="entropy"), ValueError,
         r"'confidence' must be one of 'max_prob', 'margin'"),
        (lambda c: c.predict(np.ones((1, 16)), dim=3), DimensionError, r"'dim' must be one of dims"),
        (lambda c: c.calibrate(np.ones((4, 16)), [0, 1, 2]), DimensionError, r"'y_val' must have shape"),
        (lambda c: c.calibrate(np.ones((4, 16)), [0, 1, 2, 9]), ValueError, r"class indices in \[0, 5\)"),
        (lambda c: c.calibrate(np.ones((4, 16)), [0, 1, 2, 3], max_drop=2), ValueError, r"'max_drop'"),
        (lambda c: c.cascade("abc", 0.5), TypeError, r"'x' must be an array of numbers"),
    ],
)
def test_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(make_heads(12))


def test_constructor_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(DimensionError, match=r"'weights\[4\]' must have 4 columns"):
        Classifier([rng.standard_normal((3, 2)), rng.standard_normal((3, 5))],
                   [np.zeros(3), np.zeros(3)], dims=(2, 4))
    with pytest.raises(DimensionError, match=r"'weights' must hold one"):
        Classifier([rng.standard_normal((3, 2))], [np.zeros(3)], dims=(2, 4))
    with pytest.raises(DimensionError, match=r"'weights\[4\]' must have 3 rows"):
        Classifier([rng.standard_normal((3, 2)), rng.standard_normal((4, 4))],
                   [np.zeros(3), np.zeros(4)], dims=(2, 4))
    with pytest.raises(DimensionError, match=r"'dims' must be strictly increasing"):
        Classifier.shared(np.ones((3, 4)), np.zeros(3), dims=(4, 2))
    with pytest.raises(DimensionError, match=r"'bias' must have 3 columns"):
        Classifier.shared(np.ones((3, 4)), np.zeros(2), dims=(2, 4))
