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


# ---------------------------------------------------------------- calibrate: promises and fallback
def shared_task(seed=21, n=400, noise=0.0):
    """MRL-E heads whose full-dim label is the truth (plus ``noise`` flipped labels)."""
    rng = np.random.default_rng(seed)
    clf = make_heads(seed, shared=True)
    x = (rng.standard_normal((n, DIMS[-1])) * 2).astype(np.float32)
    y = clf.predict(x)
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, clf.n_classes, int(flip.sum()))
    return clf, x, y


def test_calibration_result_fields_are_documented():
    import dataclasses

    from mrlsearch import CalibrationResult, CurvePoint

    doc = CalibrationResult.__doc__
    for f in dataclasses.fields(CalibrationResult):
        assert f.name in doc, f.name
    assert "Examples" in doc and "drop_bound" in CurvePoint.__doc__
    assert "drop_sigmas : float, default=1.645" in Classifier.calibrate.__doc__


def test_default_calibration_reports_its_bound_and_replays():
    clf, x, y = shared_task(noise=0.05)
    result = clf.calibrate(x, y, max_drop=0.02, cv=None)  # the margin on these rows
    assert result.drop_sigmas == 1.645 and not result.full_dim and result.cv is None
    assert result.faster is None and result.cascade_rows_per_s is None  # not timed
    replay = clf.cascade(x)
    np.testing.assert_array_equal(clf.thresholds, result.thresholds)
    assert float((replay.labels == y).mean()) == pytest.approx(result.accuracy)
    assert replay.expected_dim == pytest.approx(result.expected_dim) and result.expected_dim < 16
    # the bound is McNemar's: mean drop + 1.645 * sqrt(losses + gains + 1) / n
    drop = (clf.predict(x) == y).astype(int) - (replay.labels == y)
    losses, gains = int((drop > 0).sum()), int((drop < 0).sum())
    margin = 1.645 * np.sqrt(losses + gains + 1) / len(x)
    assert result.drop_margin == pytest.approx(margin)
    assert result.drop_bound == pytest.approx(drop.mean() + margin)
    assert result.drop_bound <= 0.02 + 1e-12
    # without the margin the same search may go further (never less far)
    plain = clf.calibrate(x, y, max_drop=0.02, drop_sigmas=0.0, cv=None)
    assert plain.drop_margin == 0.0 and plain.expected_dim <= result.expected_dim


@pytest.mark.parametrize("objective", ["expected_dim", "compute"])
def test_full_dim_is_returned_when_no_cascade_keeps_the_promise(objective, monkeypatch):
    # early heads are independent random heads: they disagree with the full head on ~80 % of
    # rows, so no threshold can stop a row early within a 0.1 % drop at 40 rows
    clf = make_heads(23)
    rng = np.random.default_rng(24)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    y = clf.predict(x)
    monkeypatch.setattr(Classifier, "_rows_per_s",
                        lambda *a: pytest.fail("a full-dim choice must not be timed"))
    result = clf.calibrate(x, y, max_drop=0.001, objective=objective)
    assert result.full_dim and "full dim" in result.note
    assert (result.thresholds[:-1] > 1).all() and result.thresholds[-1] == -np.inf
    assert result.expected_dim == 16 and result.accuracy == result.full_accuracy == 1.0
    assert result.drop_bound == 0.0 and result.faster is None
    assert (clf.cascade(x).dims == 16).all()


@pytest.mark.parametrize("cascade_speed, full_speed", [(1.0e5, 2.0e5), (2.0e5, 2.0e5)])
def test_compute_falls_back_to_full_dim_when_the_cascade_measures_slower(
        cascade_speed, full_speed, monkeypatch):
    clf, x, y = shared_task(noise=0.05)
    seen = []

    def fake_speed(self, batch, thresholds, full, kind):
        seen.append((thresholds.copy(), full.copy()))
        return cascade_speed, full_speed

    monkeypatch.setattr(Classifier, "_rows_per_s", fake_speed)
    result = clf.calibrate(x, y, max_drop=0.02, objective="compute", test_cost=1.0, cv=None)
    assert len(seen) == 1
    timed, full = seen[0]
    assert (timed[:-1] <= 1).any() and (full[:-1] > 1).all()  # a real cascade vs full dim
    assert result.faster is False and result.full_dim and "not faster" in result.note
    assert result.cascade_rows_per_s == cascade_speed and result.full_rows_per_s == full_speed
    assert (result.thresholds[:-1] > 1).all() and result.expected_dim == 16
    assert result.accuracy == result.full_accuracy and result.drop_bound == 0.0
    assert (clf.cascade(x).dims == 16).all()


def test_compute_keeps_the_cascade_when_it_measures_faster(monkeypatch):
    clf, x, y = shared_task(noise=0.05)
    monkeypatch.setattr(Classifier, "_rows_per_s", lambda *a: (3.0e5, 1.0e5))
    result = clf.calibrate(x, y, max_drop=0.02, objective="compute", test_cost=1.0, cv=None)
    assert result.faster is True and not result.full_dim and "3.00x" in result.note
    assert result.expected_dim < 16 and (result.thresholds[:-1] <= 1).any()
    replay = clf.cascade(x)
    assert replay.expected_dim == pytest.approx(result.expected_dim)


def test_rows_per_s_times_both_scorings():
    clf, x, _ = shared_task(n=64)
    cascade_speed, full_speed = clf._rows_per_s(
        x, np.array([0.5, 0.5, 0.5, -np.inf]), np.array([np.inf] * 3 + [-np.inf]), "max_prob")
    assert 0 < cascade_speed < np.inf and 0 < full_speed < np.inf


def test_load_takes_a_model_directory(tmp_path):
    clf = Classifier(
        [np.eye(3, 2, dtype=np.float32), np.eye(3, 4, dtype=np.float32)],
        [np.zeros(3, dtype=np.float32)] * 2, dims=(2, 4))
    (tmp_path / "model").mkdir()
    clf.save(tmp_path / "model" / "classifier.npz")
    assert Classifier.load(tmp_path / "model").dims == (2, 4)
    with pytest.raises(FormatError):
        Classifier.load(tmp_path)  # a directory without classifier.npz is not a classifier


# ---------------------------------------------------------------------- labels and save paths
@pytest.mark.parametrize("labels, dtype", [
    (np.array([0.0, 1.0, 2.0, 3.0, 4.0, 0.0]), "float64"),  # integral floats too: no guessing
    (np.array([0.5, 1.0, 2.0, 3.0, 4.0, 0.0]), "float64"),
    (np.array(["0", "1", "2", "3", "4", "0"]), "<U1"),
    (np.array([True, False, True, False, True, False]), "bool"),
    (np.array([0, 1, 2, 3, 4, None], dtype=object), "object"),
])
def test_calibrate_refuses_labels_that_are_not_integers(labels, dtype):
    x = np.random.default_rng(3).standard_normal((6, 16))
    with pytest.raises(TypeError, match=rf"'y_val' must hold integer class indices \(got dtype "
                                        rf"{dtype}\)"):
        make_heads(12).calibrate(x, labels, cv=2)


@pytest.mark.parametrize("bad, row", [(5, 2), (-1, 4)])
def test_calibrate_out_of_range_labels_name_the_value(bad, row):
    x = np.random.default_rng(3).standard_normal((6, 16))
    labels = np.array([0, 1, 2, 3, 4, 0], dtype=np.int32)
    labels[row] = bad
    with pytest.raises(ValueError, match=rf"'y_val' must hold class indices in \[0, 5\) "
                                         rf"\(got {bad} at row {row}\)"):
        make_heads(12).calibrate(x, labels, cv=2)
    labels[row] = 1  # every integer dtype is fine
    for dtype in (np.int8, np.uint16, np.int64):
        make_heads(12).calibrate(x, labels.astype(dtype), cv=2)


def test_save_errors_name_the_path_given(tmp_path):
    clf = make_heads(12)
    tmp_path = tmp_path / "base"
    tmp_path.mkdir()
    missing = tmp_path / "no" / "such" / "clf.npz"
    with pytest.raises(FileNotFoundError) as missing_error:
        clf.save(missing)
    assert str(missing) in str(missing_error.value) and ".lock" not in str(missing_error.value)
    assert missing_error.value.filename == str(missing)
    with pytest.raises(IsADirectoryError) as directory_error:
        clf.save(tmp_path)
    assert repr(str(tmp_path)) in str(directory_error.value)
    assert ".tmp" not in str(directory_error.value)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        clf.save(tmp_path / "file" / "clf.npz")
    # nothing was written beside the targets (no lock, no temporary file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == ["base"]
    clf.save(tmp_path / "clf.npz")  # a good path still saves
    assert Classifier.load(tmp_path / "clf.npz").dims == DIMS


def test_values_that_would_overflow_the_logits_are_refused():
    # x of 1e38 is finite float32, but its logits were inf: cascade reported a confidence of
    # 2e37 and predict_proba NaN, with only numpy warnings
    weight = np.array([[1.0] * 16, [-1.0] * 16, [0.5] * 16], dtype=np.float32)
    dims = (4, 8, 16)
    heads = [Classifier.shared(weight, np.zeros(3), dims),
             Classifier([weight[:, :m] for m in dims], [np.zeros(3)] * 3, dims)]
    x = np.ones((3, 16), dtype=np.float32)
    x[2] = 1e38
    for classifier in heads:
        for call in (lambda: classifier.cascade(x, 0.5), lambda: classifier.predict_proba(x),
                     lambda: classifier.predict(x), lambda: classifier.logits(x, 4)):
            with pytest.raises(ValueError, match=r"'x' values must be within \+-1e\+15 .*row 2"):
                call()
        assert classifier.cascade(x[:2] * 1e14, 0.5).labels.tolist() == [0, 0]
    with pytest.raises(ValueError, match="'weight' values must be within"):
        Classifier.shared(weight * 1e30, np.zeros(3), dims)
    with pytest.raises(ValueError, match=r"'biases\[8\]' values must be within"):
        Classifier([weight[:, :m] for m in dims], [np.zeros(3), np.full(3, 1e20), np.zeros(3)],
                   dims)


@pytest.mark.parametrize("thresholds", ["abc", "0.5", [None, None], [0.5, [1.0]], True,
                                        np.array(["0.5", "0.6"])])
def test_thresholds_that_are_not_numbers_are_refused(thresholds):
    # before: numpy's "could not convert string to float", '0.5' taken silently, None as NaN
    classifier = Classifier.shared(np.eye(3, 16, dtype=np.float32), np.zeros(3), (4, 8, 16))
    with pytest.raises(TypeError, match="'thresholds' must be a number or a sequence of "
                                        "numbers"):
        classifier.cascade(np.ones((2, 16)), thresholds)
    with pytest.raises(TypeError, match="'thresholds' must be"):
        classifier.thresholds = thresholds
    assert classifier.cascade(np.ones((2, 16)), [0.5, 0.9]).labels.shape == (2,)


@pytest.mark.parametrize("dim, error", [(np.array([8, 16]), TypeError), (8.5, TypeError),
                                        (True, TypeError), (5, DimensionError)])
def test_predict_dim_must_be_one_of_the_dims(dim, error):
    classifier = Classifier.shared(np.eye(3, 16, dtype=np.float32), np.zeros(3), (4, 8, 16))
    with pytest.raises(error, match="'dim' must be"):
        classifier.predict(np.ones((2, 16)), dim=dim)
    assert classifier.predict(np.ones((2, 16)), dim=np.int64(8)).shape == (2,)
