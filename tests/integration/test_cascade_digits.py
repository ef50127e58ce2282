"""Calibrate a cascade on sklearn digits and check the promise on held-out rows.

MRL heads here come from a small sklearn routine: PCA orders the 64 pixel features by variance
(a natural nested representation), and one logistic regression per prefix is an MRL head.
"""

import numpy as np
import pytest

from mrlsearch import Classifier

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

DIMS = (2, 4, 8, 16, 32, 64)
MAX_DROP = 0.005
# Calibration and test rows are different samples: the test accuracy of a fixed threshold set
# fluctuates around the calibration accuracy. With ~600 test rows the standard error of a
# difference of two accuracies near 0.97 on the same rows is about
# sqrt(2 * 0.03 / 600) ~ 0.01 in the worst case (disagreements only), so 2 points of slack.
SAMPLING_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def digits_heads():
    data = load_digits()
    x_train, x_rest, y_train, y_rest = train_test_split(
        data.data, data.target, test_size=0.6, random_state=0, stratify=data.target)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.55, random_state=0, stratify=y_rest)
    pca = PCA(n_components=64, random_state=0).fit(x_train)
    scale = np.sqrt(pca.explained_variance_[0])
    z = lambda x: (pca.transform(x) / scale).astype(np.float32)  # noqa: E731
    weights, biases = [], []
    for m in DIMS:
        head = LogisticRegression(max_iter=2000, C=10.0).fit(z(x_train)[:, :m], y_train)
        weights.append(head.coef_)
        biases.append(head.intercept_)
    return Classifier(weights, biases, DIMS), z(x_val), y_val, z(x_test), y_test


def test_calibrated_cascade_keeps_accuracy_on_held_out_rows(digits_heads, capsys):
    clf, x_val, y_val, x_test, y_test = digits_heads
    calibration = clf.calibrate(x_val, y_val, max_drop=MAX_DROP)
    assert calibration.accuracy >= calibration.full_accuracy - MAX_DROP
    result = clf.cascade(x_test)
    accuracy = float((result.labels == y_test).mean())
    full = float((clf.predict(x_test) == y_test).mean())
    with capsys.disabled():
        print(f"\n  digits: full-dim accuracy {full:.3f}, cascade {accuracy:.3f} at expected dim "
              f"{result.expected_dim:.1f} of {DIMS[-1]} (calibration: {calibration.accuracy:.3f} "
              f"at {calibration.expected_dim:.1f})")
    assert accuracy >= full - MAX_DROP - SAMPLING_TOLERANCE
    assert result.expected_dim < DIMS[-1] / 2
    # the curve runs from full dim to the first dim; refinement only improves on its best point
    assert calibration.curve[0].expected_dim == DIMS[-1]
    assert calibration.curve[-1].expected_dim == DIMS[0]
    on_target = [p for p in calibration.curve if p.accuracy >= calibration.target_accuracy]
    assert calibration.expected_dim <= min(p.expected_dim for p in on_target)
    # what calibrate reports is what the cascade does on the same rows
    replay = clf.cascade(x_val)
    assert float((replay.labels == y_val).mean()) == pytest.approx(calibration.accuracy)
    assert replay.expected_dim == pytest.approx(calibration.expected_dim)


def test_compute_objective_counts_recomputation(digits_heads):
    clf, x_val, y_val, *_ = digits_heads
    by_dim = clf.calibrate(x_val, y_val, objective="expected_dim")
    by_cost = clf.calibrate(x_val, y_val, objective="compute", test_cost=20.0)
    assert by_cost.accuracy >= by_cost.full_accuracy - MAX_DROP
    assert by_dim.expected_dim <= by_cost.expected_dim + 1e-9
    # the reported cost is what the cascade spends: MRL heads recompute at every tested dim
    replay = clf.cascade(x_val)
    spent = sum(stage.rows_in * (stage.dim + 20.0) for stage in replay.stats) / len(x_val)
    assert spent == pytest.approx(by_cost.cost)
    assert float((replay.labels == y_val).mean()) == pytest.approx(by_cost.accuracy)


def test_drop_sigmas_keeps_a_statistical_margin(digits_heads):
    clf, x_val, y_val, *_ = digits_heads
    plain = clf.calibrate(x_val, y_val, max_drop=MAX_DROP)
    guarded = clf.calibrate(x_val, y_val, max_drop=MAX_DROP, drop_sigmas=1.645)
    replay = clf.cascade(x_val)
    drop = (clf.predict(x_val) == y_val).astype(float) - (replay.labels == y_val)
    bound = drop.mean() + 1.645 * drop.std(ddof=1) / np.sqrt(len(drop))
    assert bound <= MAX_DROP + 1e-12
    assert guarded.expected_dim >= plain.expected_dim
