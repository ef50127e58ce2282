"""Cascade classification benchmark: accuracy vs expected dim and rows/s, and whether the
accuracy promise of ``calibrate`` holds on new rows.

For each task: the cascade with thresholds calibrated on a validation split (max_drop 0.005)
three ways side by side -- no margin (``drop_sigmas=0, cv=None``), the McNemar margin on the
calibration rows (``cv=None``), and the default (margin on 5-fold cross-validated answers) --
plus ``objective='compute'`` with the defaults, against always-full-dim and
always-smallest-dim, measured on a held-out split in one process.

Then the promise over random splits: for each split, calibrate with each of the three
settings at several ``max_drop`` and measure the drop against full dim on the held-out rows:
mean and worst drop, the share of splits whose drop exceeds ``max_drop``, expected dim.

Tasks
-----
* ``digits``: sklearn digits; PCA orders the 64 pixel features by variance and one logistic
  regression per prefix is an MRL head (fitted here, a few seconds).
* ``synthetic-1000x2048``: 1000 classes, 2048 dims, MRL-E head. Class means and noise share a
  spectrum decaying as (1+i)^-0.5; the head is the linear discriminant ``W = mu / s^2`` whose
  prefixes ``W[:, :m]`` are the discriminants of the prefixes.
* ``docstring-modules``: which standard-library module a docstring paragraph comes from
  (``exporters.docstring_modules``, ~6100 texts, 65 classes). Frozen all-MiniLM-L6-v2
  features (384) -> MRL adapter + MRL-E head over dims 8..384, trained here with
  ``exporters`` (about two minutes on 2 cores, most of it encoding the texts).

    python benchmarks/cascade.py --out benchmarks/results/cascade.json [--no-text]
        [--digits-splits 30] [--synthetic-splits 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import best_time, write_report

from mrlsearch import Classifier

MAX_DROP = 0.005
# the three ways to hold the promise, side by side (objective='expected_dim')
PROMISES = {
    "no margin (drop_sigmas=0, cv=None)": {"drop_sigmas": 0.0, "cv": None},
    "margin (drop_sigmas=1.645, cv=None)": {"cv": None},
    "margin + cv=5 (default)": {},
}
CALIBRATIONS = {**PROMISES, "objective=compute (default margin + cv=5)": {"objective": "compute"}}


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


def docstring_modules_task(seed: int):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from exporters import (ClassificationData, MatryoshkaLoss, Trainer, build_model,
                           docstring_modules)
    from exporters.evaluate import embed_inputs

    dims = (8, 16, 32, 64, 128, 256, 384)
    data = docstring_modules(seed=seed)
    started = time.perf_counter()
    minilm = build_model({"backbone": "text", "embed_dim": 384, "dims": [384],
                          "max_length": 128})

    def encode(texts):  # by length, so that a batch pads to similar lengths; order restored
        order = np.argsort([len(text) for text in texts], kind="stable")
        embedded = embed_inputs(minilm, [texts[i] for i in order], batch_size=64)
        out = np.empty_like(embedded)
        out[order] = embedded
        return out

    features = [encode(texts) for texts in (data.x_train, data.x_val, data.x_test)]
    print(f"  encoded {sum(map(len, features))} texts with MiniLM in "
          f"{time.perf_counter() - started:.0f}s", flush=True)
    torch.manual_seed(seed)
    model = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 384,
                         "dims": list(dims), "num_classes": data.num_classes, "efficient": True,
                         "hidden": 512})
    Trainer(model, MatryoshkaLoss("cross_entropy", dims), lr=1e-3, epochs=40, batch_size=64,
            seed=seed, progress=False, patience=8).fit(
        ClassificationData(features[0], data.y_train, features[1], data.y_val, features[2],
                           data.y_test))
    embedded = [embed_inputs(model, f) for f in features]
    name = (f"docstring paragraph -> stdlib module ({data.num_classes} classes, frozen MiniLM "
            f"+ MRL-E adapter head)")
    return name, model.head.to_classifier(), embedded[1], data.y_val, embedded[2], data.y_test


def run_task(name, clf, x_val, y_val, x_test, y_test) -> dict:
    print(f"\n=== {name}: {len(x_val)} calibration rows, {len(x_test)} test rows ===", flush=True)
    full_dim, small_dim = clf.dims[-1], clf.dims[0]
    rows = []

    def add(method, seconds, labels, expected_dim):
        accuracy = float((labels == y_test).mean())
        rows.append({"method": method, "accuracy": accuracy, "expected_dim": expected_dim,
                     "rows_per_s": len(x_test) / seconds})
        print(f"  {method:<28} accuracy {accuracy:.4f}  expected dim {expected_dim:8.1f}  "
              f"rows/s {len(x_test) / seconds:12.0f}", flush=True)

    seconds, full_labels = best_time(lambda: clf.predict(x_test))
    add(f"always full dim ({full_dim})", seconds, full_labels, float(full_dim))
    seconds, labels = best_time(lambda: clf.predict(x_test, dim=small_dim))
    add(f"always smallest dim ({small_dim})", seconds, labels, float(small_dim))
    full = rows[0]
    objectives = {}
    for label, options in CALIBRATIONS.items():
        started = time.perf_counter()
        calibration = clf.calibrate(x_val, y_val, max_drop=MAX_DROP, **options)
        calibrate_s = time.perf_counter() - started
        seconds, result = best_time(lambda: clf.cascade(x_test))
        add(f"cascade ({label})", seconds, result.labels, result.expected_dim)
        cascade = rows[-1]
        # paired per-row difference: its standard error says how much of the drop is noise
        paired = (full_labels == y_test).astype(float) - (result.labels == y_test)
        summary = {
            "options": options,
            "accuracy_drop_points": 100 * (full["accuracy"] - cascade["accuracy"]),
            "accuracy_drop_se_points": 100 * paired.std(ddof=1) / np.sqrt(len(paired)),
            "dim_reduction": full_dim / cascade["expected_dim"],
            "speedup_vs_full": cascade["rows_per_s"] / full["rows_per_s"],
            "calibrate_s": calibrate_s,
            "calibration_accuracy": calibration.accuracy,
            "calibration_expected_dim": calibration.expected_dim,
            "drop_bound": calibration.drop_bound,
            "cv_drop": None if calibration.cv is None else calibration.cv_drop,
            "full_dim": calibration.full_dim,
            "note": calibration.note,
            "thresholds": [float(t) for t in calibration.thresholds],
            "tested_dims": [s.dim for s in result.stats if s.rows_in],
            # the calibration path on the validation rows (at most ~200 points), for the plot
            "curve": [[p.expected_dim, p.accuracy] for p in
                      calibration.curve[::max(1, len(calibration.curve) // 200)]],
            "share_per_dim": {str(s.dim): s.share for s in result.stats},
        }
        print(f"  {label}: drop {summary['accuracy_drop_points']:.2f} "
              f"(+-{summary['accuracy_drop_se_points']:.2f}) points, "
              f"{summary['dim_reduction']:.1f}x fewer dims, {summary['speedup_vs_full']:.2f}x "
              f"rows/s vs full; tested dims {summary['tested_dims']}; calibration "
              f"{calibrate_s:.1f}s", flush=True)
        objectives[label] = summary
    return {"task": name, "dims": list(clf.dims), "rows": rows, "objectives": objectives}


def split_study(make, seeds, max_drops) -> dict:
    """The held-out drop of each promise setting over random splits.

    ``make(seed)`` returns a task (name, clf, x_val, y_val, x_test, y_test) drawn with that
    seed. Per split, max_drop and setting: calibrate on the validation rows, then the drop of
    the cascade against full dim on the test rows.
    """
    runs = {str(md): {label: [] for label in PROMISES} for md in max_drops}
    name = None
    for seed in seeds:
        name, clf, x_val, y_val, x_test, y_test = make(seed)
        full_accuracy = float((clf.predict(x_test) == y_test).mean())
        for md in max_drops:
            for label, options in PROMISES.items():
                started = time.perf_counter()
                calibration = clf.calibrate(x_val, y_val, max_drop=md, **options)
                seconds = time.perf_counter() - started
                result = clf.cascade(x_test)
                runs[str(md)][label].append({
                    "seed": seed, "drop": full_accuracy - float((result.labels == y_test).mean()),
                    "expected_dim": result.expected_dim, "drop_bound": calibration.drop_bound,
                    "full_dim": calibration.full_dim, "calibrate_s": seconds})
        print(f"  split {seed}: " + "; ".join(
            f"max_drop {md}: " + ", ".join(f"{runs[str(md)][label][-1]['drop']:+.4f}"
                                           for label in PROMISES) for md in max_drops),
              flush=True)
    summary = {}
    for md, by_label in runs.items():
        summary[md] = {}
        for label, rows in by_label.items():
            drops = np.array([r["drop"] for r in rows])
            summary[md][label] = {
                "mean_drop": float(drops.mean()), "worst_drop": float(drops.max()),
                "share_over_max_drop": float((drops > float(md) + 1e-12).mean()),
                "mean_expected_dim": float(np.mean([r["expected_dim"] for r in rows])),
                "mean_drop_bound": float(np.mean([r["drop_bound"] for r in rows])),
                "share_full_dim": float(np.mean([r["full_dim"] for r in rows])),
                "max_calibrate_s": float(max(r["calibrate_s"] for r in rows)),
                "splits": rows,
            }
            s = summary[md][label]
            print(f"  max_drop {md} {label:<38} mean drop {s['mean_drop']:+.4f} worst "
                  f"{s['worst_drop']:+.4f} over max_drop {s['share_over_max_drop']:.0%} expected "
                  f"dim {s['mean_expected_dim']:.1f} calibrate <= {s['max_calibrate_s']:.2f}s",
                  flush=True)
    return {"task": name, "splits": len(seeds), "max_drops": [float(m) for m in max_drops],
            "dims": list(clf.dims), "n_val": int(len(y_val)), "n_test": int(len(y_test)),
            "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/cascade.json")
    parser.add_argument("--no-text", action="store_true",
                        help="skip the docstring task (it trains a model, ~2 minutes)")
    parser.add_argument("--digits-splits", type=int, default=30)
    parser.add_argument("--synthetic-splits", type=int, default=10)
    args = parser.parse_args()
    import sklearn

    started = time.perf_counter()
    tasks = [run_task(*digits_task(args.seed))]
    if not args.no_text:
        tasks.append(run_task(*docstring_modules_task(args.seed)))
    tasks.append(run_task(*synthetic_task(args.seed)))
    studies = []
    print(f"\n=== promise over {args.digits_splits} random digits splits ===", flush=True)
    studies.append(split_study(digits_task, range(100, 100 + args.digits_splits),
                               (0.005, 0.01, 0.02)))
    if args.synthetic_splits:
        print(f"\n=== promise over {args.synthetic_splits} synthetic 1000 x 2048 draws ===",
              flush=True)
        studies.append(split_study(synthetic_task, range(100, 100 + args.synthetic_splits),
                                   (0.005, 0.01)))
    print(f"\ntotal {time.perf_counter() - started:.0f}s", flush=True)
    write_report(args.out, "cascade", {"numpy": np.__version__, "scikit-learn": sklearn.__version__},
                 max_drop=MAX_DROP, tasks=tasks, splits=studies)


if __name__ == "__main__":
    main()
