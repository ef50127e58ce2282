"""calibrate(cv=k): cross-validated thresholds, the held-out promise, argument errors."""

import math

import numpy as np
import pytest

from mrlsearch import Classifier
from mrlsearch import classifier as classifier_module
from mrlsearch._calibrate import ThresholdSearch, _route, stratified_folds

DIMS = (2, 4, 8, 16)
Z = 1.645


def gaussian_task(seed, n_classes=6, n_val=300, n_test=0, noise=1.3):
    """MRL-E linear-discriminant heads on Gaussian classes whose signal decays with the dim
    (as in benchmarks/cascade.py, small): early prefixes are weaker, so a cascade both saves
    dims and loses rows."""
    rng = np.random.default_rng(seed)
    dim = DIMS[-1]
    spectrum = (1.0 + np.arange(dim)) ** -0.5
    means = rng.standard_normal((n_classes, dim)) * spectrum

    def sample(n):
        labels = rng.integers(0, n_classes, n)
        x = means[labels] + rng.standard_normal((n, dim)) * (noise * spectrum)
        return x.astype(np.float32), labels

    clf = Classifier.shared(means / (noise * spectrum) ** 2, np.zeros(n_classes), DIMS)
    return (clf, *sample(n_val), *sample(n_test))


def plain_folds(labels, folds, seed):
    """The documented fold rule, in a loop: shuffle with ``seed``, order by label (stable),
    deal the rows round-robin."""
    order = list(np.random.default_rng(seed).permutation(len(labels)))
    order.sort(key=lambda row: labels[row])
    out = np.empty(len(labels), dtype=np.int64)
    for position, row in enumerate(order):
        out[row] = position % folds
    return out


def plain_tally(clf, x, y, thresholds):
    """Losses, gains and summed answering dim of the real cascade, counted row by row."""
    answer = clf.cascade(x, thresholds)
    full = clf.predict(x)
    losses = gains = 0
    for row in range(len(y)):
        cascade_right, full_right = answer.labels[row] == y[row], full[row] == y[row]
        losses += int(full_right and not cascade_right)
        gains += int(cascade_right and not full_right)
    return losses, gains, int(answer.dims.sum()), bool((answer.dims < DIMS[-1]).any())


def test_cv_thresholds_reproduce_a_plain_loop_reference():
    clf, x, y, *_ = gaussian_task(3, n_val=150)
    folds, seed, max_drop = 3, 7, 0.03
    result = clf.calibrate(x, y, max_drop=max_drop, cv=folds, seed=seed)
    assert result.cv == folds and not result.full_dim  # the reference below has work to do

    labels, conf = clf._all_dims(x, "max_prob")
    correct = labels == y[None, :]
    dims = np.asarray(DIMS, dtype=np.float64)
    fold_of = plain_folds(y, folds, seed)
    np.testing.assert_array_equal(fold_of, stratified_folds(y, folds, seed))
    whole = ThresholdSearch(conf, correct, dims, lambda values: dims)
    path = whole.path()
    cheapest = min(p.cost for p in path)
    steps = classifier_module._COST_LEVELS
    levels = [dims[-1] * (cheapest / dims[-1]) ** (k / steps) for k in range(1, steps + 1)]
    # per fold: thresholds walked down the cost levels on the other folds, replayed through
    # the real cascade on the fold's rows
    searches = []
    for f in range(folds):
        train = fold_of != f
        search = ThresholdSearch(conf[:, train], correct[:, train], dims, lambda v: dims)
        searches.append([search, search.path(), None])
    accepted = None
    for level in levels:
        losses = gains = dim_sum = 0
        early = False
        for f, entry in enumerate(searches):
            search, fold_path, previous = entry
            entry[2] = search.best_within(fold_path, level, previous)
            held = fold_of == f
            thresholds = np.asarray(search.settle(entry[2]).thresholds)
            fl, fg, fd, fe = plain_tally(clf, x[held], y[held], thresholds)
            losses, gains, dim_sum, early = losses + fl, gains + fg, dim_sum + fd, early or fe
        drop = (losses - gains) / len(y)
        margin = Z * math.sqrt(losses + gains + 1) / len(y) if early else 0.0
        if drop + margin > max_drop + 1e-12:
            break
        accepted = (level, drop, margin, dim_sum / len(y))
    assert accepted is not None
    level, drop, margin, expected = accepted
    chosen = None
    for step in levels[: levels.index(level) + 1]:
        chosen = whole.best_within(path, step, chosen)
    reference = np.asarray(whole.settle(chosen).thresholds)

    np.testing.assert_array_equal(result.thresholds, reference)
    assert result.cv_drop == pytest.approx(drop)
    assert result.drop_margin == pytest.approx(margin)
    assert result.drop_bound == pytest.approx(drop + margin) and result.drop_bound <= max_drop
    assert result.cv_expected_dim == pytest.approx(expected)
    # what calibrate reports on the calibration rows is what the cascade replays
    replay = clf.cascade(x)
    assert replay.expected_dim == pytest.approx(result.expected_dim)
    assert float((replay.labels == y).mean()) == pytest.approx(result.accuracy)


def test_router_equals_a_plain_loop():
    rng = np.random.default_rng(5)
    conf = rng.random((200, 4)).astype(np.float32)
    correct = rng.random((200, 4)) < 0.7
    thresholds = np.array([0.9, np.inf, 0.6, -np.inf])
    counts = np.empty(4, dtype=np.int64)
    tallies = np.empty(3, dtype=np.int64)
    _route(conf, correct, thresholds, counts, tallies)
    expect_counts, hits, losses, gains = np.zeros(4, dtype=np.int64), 0, 0, 0
    for row in range(200):
        stop = next(i for i in range(4) if i == 3 or conf[row, i] >= thresholds[i])
        expect_counts[stop] += 1
        hits += int(correct[row, stop])
        losses += int(correct[row, 3] and not correct[row, stop])
        gains += int(correct[row, stop] and not correct[row, 3])
    np.testing.assert_array_equal(counts, expect_counts)
    assert tuple(tallies) == (hits, losses, gains)


def test_the_promise_holds_on_new_rows_over_random_splits():
    # 20 independent draws (fixed seeds): calibrate on 400 rows, measure the drop against full
    # dim on 4000 new rows. With the default (margin on cross-validated answers) the promise
    # is a one-sided 95 % bound, so few draws may exceed max_drop; 3 of 20 (15 %) is the
    # stated bound. Without margin or cross-validation the same search exceeds it far more
    # often on this problem (the comparison shows the test can fail).
    max_drop, draws = 0.02, 20
    over = {"default": 0, "no margin": 0}
    saved = []
    for seed in range(draws):
        clf, x_val, y_val, x_test, y_test = gaussian_task(100 + seed, n_val=400, n_test=4000)
        full = float((clf.predict(x_test) == y_test).mean())
        for name, options in (("default", {}), ("no margin", {"drop_sigmas": 0.0, "cv": None})):
            calibration = clf.calibrate(x_val, y_val, max_drop=max_drop, **options)
            result = clf.cascade(x_test)
            drop = full - float((result.labels == y_test).mean())
            over[name] += drop > max_drop
            if name == "default":
                assert calibration.drop_bound <= max_drop + 1e-12
                saved.append(result.expected_dim)
    assert over["default"] <= 3, over
    assert over["no margin"] > over["default"], over
    assert np.mean(saved) < DIMS[-1] * 0.9  # the cascade still saves dims


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"cv": 0}, ValueError, r"'cv' must be None or an int >= 1, the number of folds \(got 0\)"),
        ({"cv": -3}, ValueError, r"'cv' must be None or an int >= 1"),
        ({"cv": 2.5}, TypeError, r"'cv' must be None or an int >= 1.*got 2.5"),
        ({"cv": True}, TypeError, r"'cv' must be None or an int >= 1.*got True"),
        ({"cv": "5"}, TypeError, r"'cv' must be None or an int >= 1"),
        ({"cv": 11}, ValueError, r"'cv' must be at most the number of rows of x_val, 10 \(got 11\)"),
        ({"seed": "a"}, TypeError, r"'seed' must be an int \(got 'a'\)"),
        ({"seed": 1.0}, TypeError, r"'seed' must be an int"),
    ],
)
def test_bad_cv_values_are_refused(options, error, match):
    clf, x, y, *_ = gaussian_task(1, n_val=10)
    with pytest.raises(error, match=match):
        clf.calibrate(x, y, **options)


def test_cv_one_and_none_are_the_old_search_and_cv_is_reported():
    clf, x, y, *_ = gaussian_task(2)
    plain = clf.calibrate(x, y, max_drop=0.03, cv=None)
    one = clf.calibrate(x, y, max_drop=0.03, cv=1)
    np.testing.assert_array_equal(plain.thresholds, one.thresholds)
    assert plain.cv is None and math.isnan(plain.cv_drop) and "calibration rows" in plain.note
    default = clf.calibrate(x, y, max_drop=0.03)
    assert default.cv == 5 and "cross-validated" in default.note
    assert default.drop_bound == pytest.approx(default.cv_drop + default.drop_margin)
    # a different seed deals other folds but keeps the promise
    other = clf.calibrate(x, y, max_drop=0.03, seed=np.int64(4))
    assert other.cv == 5 and other.drop_bound <= 0.03 + 1e-12
