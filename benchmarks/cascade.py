"""Cascade classification benchmark: accuracy vs expected dim and rows/s.

For each task: the cascade with thresholds calibrated on a validation split (max_drop 0.005),
against always-full-dim and always-smallest-dim, measured on a held-out split in one process.

Tasks
-----
* ``digits``: sklearn digits; PCA orders the 64 pixel features by variance and one logistic
  regression per prefix is an MRL head (fitted here, a few seconds).
* ``synthetic-1000x2048``: 1000 classes, 2048 dims, MRL-E head. Class means and noise share a
  spectrum decaying as (1+i)^-0.5; the head is the linear discriminant ``W = mu / s^2`` whose
  prefixes ``W[:, :m]`` are the discriminants of the prefixes.

    python benchmarks/cascade.py --out benchmarks/results/cascade.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import best_time, write_report

from mrlsearch import Classifier

MAX_DROP = 0.005


def digits_task(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    dims = (2, 4, 8, 16, 32, 64)
    data = load_digits()
    x_train, x_rest, y_train, y_rest = train_test_split(
        data.data, data.target, test_size=0.6, random_state=seed, stratify=data.target)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    pca = PCA(n_components=64, random_state=seed).fit(x_train)
    scale = np.sqrt(pca.explained_variance_[0])

    def embed(x):
        return (pca.transform(x) / scale).astype(np.float32)

    heads = [LogisticRegression(max_iter=3000, C=10.0).fit(embed(x_train)[:, :m], y_train)
             for m in dims]
    clf = Classifier([h.coef_ for h in heads], [h.intercept_ for h in heads], dims)
    return "digits (MRL heads, PCA + logistic regression)", clf, embed(x_val), y_val, \
        embed(x_test), y_test


def synthetic_task(seed: int, n_classes: int = 1000, dim: int = 2048, n_val: int = 10_000,
                   n_test: int = 20_000, noise: float = 2.2):
    dims = tuple(d for d in (8, 16, 32, 64, 128, 256, 512, 1024, 2048) if d <= dim)
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim)) ** -0.5
    means = (rng.standard_normal((n_classes, dim)) * spectrum).astype(np.float32)
    variance = (noise * spectrum) ** 2

    def sample(n):
        labels = rng.integers(0, n_classes, n)
        x = means[labels] + rng.standard_normal((n, dim)).astype(np.float32) * (noise * spectrum)
        return x.astype(np.float32), labels

    weight = (means / variance).astype(np.float32)
    clf = Classifier.shared(weight, np.zeros(n_classes, dtype=np.float32), dims)
    x_val, y_val = sample(n_val)
    x_test, y_test = sample(n_test)
    return f"synthetic {n_classes} classes x {dim} dims (MRL-E head)", clf, x_val, y_val, \
        x_test, y_test


def run_task(name, clf, x_val, y_val, x_test, y_test) -> dict:
    print(f"\n=== {name}: {len(x_val)} calibration rows, {len(x_test)} test rows ===", flush=True)
    started = time.perf_counter()
    calibration = clf.calibrate(x_val, y_val, max_drop=MAX_DROP)
    calibrate_s = time.perf_counter() - started
    full_dim, small_dim = clf.dims[-1], clf.dims[0]
    rows = []

    def add(method, seconds, labels, expected_dim):
        accuracy = float((labels == y_test).mean())
        rows.append({"method": method, "accuracy": accuracy, "expected_dim": expected_dim,
                     "rows_per_s": len(x_test) / seconds})
        print(f"  {method:<28} accuracy {accuracy:.4f}  expected dim {expected_dim:8.1f}  "
              f"rows/s {len(x_test) / seconds:12.0f}", flush=True)

    seconds, labels = best_time(lambda: clf.predict(x_test))
    add(f"always full dim ({full_dim})", seconds, labels, float(full_dim))
    seconds, labels = best_time(lambda: clf.predict(x_test, dim=small_dim))
    add(f"always smallest dim ({small_dim})", seconds, labels, float(small_dim))
    seconds, result = best_time(lambda: clf.cascade(x_test))
    add("cascade (calibrated)", seconds, result.labels, result.expected_dim)
    full, cascade = rows[0], rows[2]
    summary = {
        "accuracy_drop_points": 100 * (full["accuracy"] - cascade["accuracy"]),
        "dim_reduction": full_dim / cascade["expected_dim"],
        "speedup_vs_full": cascade["rows_per_s"] / full["rows_per_s"],
        "calibrate_s": calibrate_s,
        "share_per_dim": {str(s.dim): s.share for s in result.stats},
    }
    print(f"  summary: drop {summary['accuracy_drop_points']:.2f} points, "
          f"{summary['dim_reduction']:.1f}x fewer dims, {summary['speedup_vs_full']:.2f}x rows/s "
          f"vs full; calibration {calibrate_s:.1f}s", flush=True)
    return {"task": name, "dims": list(clf.dims), "calibration_accuracy": calibration.accuracy,
            "calibration_expected_dim": calibration.expected_dim,
            "thresholds": [float(t) for t in calibration.thresholds], "rows": rows,
            "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cascade.json")
    args = parser.parse_args()
    import sklearn

    tasks = [run_task(*digits_task(args.seed)), run_task(*synthetic_task(args.seed))]
    write_report(args.out, "cascade", {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
                 max_drop=MAX_DROP, tasks=tasks)


if __name__ == "__main__":
    main()
