"""mrlsearch end to end, on built-in data, in a few minutes on 2 CPU cores.

A. digits: train an MRL encoder + heads (torch) -> export to ONNX (parity checked per prefix)
   -> Encoder (onnxruntime) -> Classifier.cascade with calibrated thresholds.
B. text: MRL adapter trained on frozen MiniLM features of Python stdlib docstrings -> one ONNX
   text model (MiniLM + adapter) -> Encoder.encode(texts) -> Searcher -> funnel vs exact.
C. scale: 20 000 x 768 synthetic MRL-like vectors -> tuned funnel vs exact numpy vs hnswlib.

Writes demo_out/summary.json and demo_out/demo.png. Nothing is downloaded.

    python examples/demo.py --out demo_out
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mrlsearch.benchmark import best_time as timed  # noqa: E402
from mrlsearch.benchmark import recalls_at_k  # noqa: E402


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(recalls_at_k(ids, truth).mean())


def part_a(out: Path, rows: list) -> dict:
    import torch

    from exporters import MatryoshkaLoss, Trainer, build_model, export_onnx, load_digits_data
    from mrlsearch import Classifier, Encoder

    print("\nA. digits: train an MRL encoder with heads, export, cascade", flush=True)
    torch.manual_seed(0)
    dims = (4, 8, 16, 32, 64)
    data = load_digits_data(seed=0)
    model = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 64, "hidden": [256],
                         "dims": list(dims), "num_classes": 10})
    history = Trainer(model, MatryoshkaLoss("cross_entropy", dims), lr=3e-3, epochs=15,
                      batch_size=64, seed=0, progress=False).fit(data)
    print("   trained 15 epochs: validation top-1 per dim "
          + ", ".join(f"{m}: {v['linear_top1']:.3f}" for m, v in history[-1]["val"].items()))
    manifest = export_onnx(model, out / "digits_model", data.x_val[:64])
    worst = max(r["max_abs_diff"] for r in manifest["parity"].values())
    print(f"   exported: opset {manifest['opset']}, IR {manifest['ir_version']}, max |onnx - torch| "
          f"over every prefix {worst:.1e}")
    # the heads were trained on the raw embedding: the manifest says so ("normalize": false)
    # and Encoder follows it, so its default output is what the heads expect
    encoder = Encoder(out / "digits_model")
    print(f"   Encoder runs on {encoder.provider}; normalize={encoder.normalize} "
          f"(from the manifest: the heads take the raw embedding)")
    clf = Classifier.load(out / "digits_model" / "classifier.npz")
    z_val, z_test = encoder.encode(data.x_val), encoder.encode(data.x_test)
    calibration = clf.calibrate(z_val, data.y_val, max_drop=0.005)
    result = clf.cascade(z_test)
    full = float((clf.predict(z_test) == data.y_test).mean())
    small = float((clf.predict(z_test, dim=dims[0]) == data.y_test).mean())
    cascade = float((result.labels == data.y_test).mean())
    rows += [("digits: classify at full dim (64)", f"top-1 {full:.3f}", "dim 64"),
             (f"digits: classify at {dims[0]} dims", f"top-1 {small:.3f}", f"dim {dims[0]}"),
             ("digits: cascade (calibrated)", f"top-1 {cascade:.3f}",
              f"expected dim {result.expected_dim:.1f}")]
    return {"curve": [(p.expected_dim, p.accuracy) for p in calibration.curve],
            "full": full, "cascade": (result.expected_dim, cascade)}


def part_b(out: Path, rows: list) -> None:
    from sentence_transformers import SentenceTransformer

    from exporters import (
        PairData,
        docstring_pairs,
        export_sentence_transformer,
        fit_adapter,
        minilm_path,
    )
    from mrlsearch import Encoder, Searcher

    print("\nB. text: MRL adapter over frozen MiniLM, exported as one ONNX text model", flush=True)
    dims = (16, 32, 64, 128, 384)
    pairs = docstring_pairs(max_pairs=700, seed=0)
    minilm = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    minilm.max_seq_length = 128
    fields = ("train_queries", "train_positives", "val_queries", "val_positives",
              "test_queries", "test_positives")
    print(f"   MiniLM features of {sum(len(getattr(pairs, f)) for f in fields)} texts (torch)...",
          flush=True)
    features = PairData(*(minilm.encode(list(getattr(pairs, f)), batch_size=64)
                          for f in fields))
    # starts as a rotation of the raw model (PCA), symmetric InfoNCE over the dims; keeps
    # the best validation epoch, the raw model included
    adapter, history = fit_adapter(features, dims, batch_size=128, epochs=10, seed=0)
    kept = next(h for h in history if h["kept"])
    print(f"   trained the adapter (kept epoch {kept['epoch']}): validation recall@10 per dim "
          + ", ".join(f"{m}: {v:.3f}" for m, v in kept["val"].items()))
    # one text model: MiniLM (its whole sentence-transformers pipeline) + the MRL adapter
    export_sentence_transformer(minilm, out / "text_model", adapter=adapter, max_length=128)
    encoder = Encoder(out / "text_model")
    corpus = list(pairs.test_positives) + list(pairs.train_positives)
    started = time.perf_counter()
    vectors = encoder.encode(corpus, batch_size=64)
    queries = encoder.encode(list(pairs.test_queries), batch_size=64)
    print(f"   Encoder ({encoder.provider}): {len(corpus) + len(queries)} texts in "
          f"{time.perf_counter() - started:.1f}s")
    searcher = Searcher(384, dims, metric="cosine", index_dims=(16,))
    searcher.add(vectors)
    answer = np.arange(len(queries))[:, None]  # query i's positive is corpus row i
    for name, run in (
        ("text: exact at full dim (384)", lambda: searcher.exact(queries, 10).ids),
        ("text: exact at 32 dims", lambda: searcher.exact(queries, 10, dim=32).ids),
        ("text: funnel 16:100 -> 64:30 -> 384:10",
         lambda: searcher.funnel(queries, 10, [(16, 100), (64, 30), (384, 10)]).ids),
    ):
        seconds, ids = timed(run)
        hit = float(np.mean((ids == answer).any(axis=1)))
        rows.append((name, f"success@10 {hit:.3f}", f"{len(queries) / seconds:,.0f} q/s"))


def part_c(out: Path, rows: list, n: int) -> list:
    import hnswlib

    from mrlsearch import Searcher
    from mrlsearch.datasets import synthetic_mrl

    print(f"\nC. scale: {n} x 768 synthetic MRL-like vectors, funnel vs exact vs hnswlib",
          flush=True)
    vectors, queries = synthetic_mrl(n, 768, n_queries=1000, seed=0)
    fit, test = queries[:500], queries[500:]
    # Searcher.build picks the graph dim and code type from a sample, builds and tunes
    started = time.perf_counter()
    searcher = Searcher.build(vectors, queries=fit, k=10, target_recall=0.95, progress=True)
    build = time.perf_counter() - started
    plan = searcher.plan
    linked = "" if searcher.link_dim is None else f" linked by {searcher.link_dim} dims"
    print(f"   graphs built: {searcher.build_report['graphs_built']}{linked}, tuned plan: {plan}")
    truth = searcher.exact(test, 10).ids
    points = []
    for name, run in (("exact (numpy BLAS)", lambda: searcher.exact(test, 10).ids),
                      ("funnel, paper stages",
                       lambda: searcher.funnel(test, 10, searcher.default_stages(10)).ids),
                      ("funnel, Searcher.build's plan", lambda: searcher.search(test, 10).ids)):
        seconds, ids = timed(run)
        points.append((name, recall(ids, truth), len(test) / seconds))
    graph = hnswlib.Index(space="cosine", dim=768)
    graph.init_index(max_elements=n, M=16, ef_construction=200)
    started = time.perf_counter()
    graph.add_items(vectors)
    build_full = time.perf_counter() - started
    for ef in (20, 40, 80):
        graph.set_ef(ef)
        seconds, (ids, _) = timed(lambda: graph.knn_query(test, k=10))
        points.append((f"hnswlib full dim, ef={ef}", recall(ids, truth), len(test) / seconds))
    for name, value, qps in points:
        rows.append((f"synthetic: {name}", f"recall@10 {value:.3f}", f"{qps:,.0f} q/s"))
    rows.append(("synthetic: Searcher.build (sample, graph, tune)", "", f"{build:.1f} s"))
    rows.append(("synthetic: build, hnswlib full dim", "", f"{build_full:.1f} s"))
    return points


def plot(out: Path, cascade: dict, points: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, value, qps in points:
        left.scatter(qps, value, s=40)
        left.annotate(name, (qps, value), fontsize=7, xytext=(4, 3), textcoords="offset points")
    left.set_xscale("log")
    left.set_xlabel("queries / s (batch, 2 cores)")
    left.set_ylabel("recall@10 vs exact")
    left.set_title("C. retrieval, 20k x 768 synthetic")
    left.grid(alpha=0.3)
    curve = np.array(cascade["curve"])
    right.plot(curve[:, 0], curve[:, 1], ".-", label="calibration path (validation rows)")
    right.scatter(*cascade["cascade"], color="red", zorder=3, label="chosen, on test rows")
    right.axhline(cascade["full"], color="gray", ls="--", label="full dim, test rows")
    right.set_xlabel("expected dim")
    right.set_ylabel("top-1 accuracy")
    right.set_title("A. cascade on digits")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--n", type=int, default=20_000, help="synthetic database size (part C)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    cascade = part_a(out, rows)
    part_b(out, rows)
    points = part_c(out, rows, args.n)
    plot(out, cascade, points)
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'what':<{width}}{'quality':<24}cost")
    print("-" * (width + 40))
    for name, quality, cost in rows:
        print(f"{name:<{width}}{quality:<24}{cost}")
    (out / "summary.json").write_text(json.dumps({"rows": rows}, indent=2))
    print(f"\nwrote {out / 'summary.json'} and {out / 'demo.png'} "
          f"({time.perf_counter() - started:.0f}s in all)")


if __name__ == "__main__":
    main()
