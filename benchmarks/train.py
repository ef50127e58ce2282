"""Training benchmark: per-dim quality of MRL, MRL-E and fixed-feature (FF) models, and the
cost of a training step of MRL / MRL-E relative to FF.

* digits: MLP backbone + classification heads, linear top-1 per dim (FF = a model trained at
  full dim only, head truncated to the first m columns).
* docstrings: adapter over frozen MiniLM features, recall@10 per dim (FF = adapter trained with
  the loss at full dim only, truncated).
* step time: MLP 512 -> 2048 with a 1000-class head over dims 8..2048, batch 256, synthetic.

    python benchmarks/train.py --out benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exporters import (  # noqa: E402
    MatryoshkaLoss,
    PairData,
    Trainer,
    build_model,
    docstring_pairs,
    evaluate,
    fit_adapter,
    load_digits_data,
    minilm_path,
)
from _common import write_report  # noqa: E402

KINDS = {"MRL": False, "MRL-E": True, "FF": False}


def digits(results: dict, seeds: int = 3) -> None:
    """Mean over ``seeds`` runs (split and initialisation): one digits test split has only 360
    rows, so a single run moves by about a point."""
    dims = (2, 4, 8, 16, 32, 64)
    table = {}
    for kind, efficient in KINDS.items():
        train_dims = (64,) if kind == "FF" else dims
        scores = []
        for seed in range(seeds):
            data = load_digits_data(seed=seed)
            torch.manual_seed(seed)
            model = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 64,
                                 "hidden": [256], "dims": list(train_dims), "num_classes": 10,
                                 "efficient": efficient})
            Trainer(model, MatryoshkaLoss("cross_entropy", train_dims), lr=3e-3, epochs=20,
                    batch_size=64, seed=seed, progress=False).fit(data)
            per_dim = evaluate(model, data, dims=dims)["per_dim"]
            scores.append([per_dim[m]["linear_top1"] for m in dims])
        table[kind] = {str(m): float(v) for m, v in zip(dims, np.mean(scores, axis=0))}
        print(f"  digits {kind:6s} linear top-1: "
              + ", ".join(f"{m}:{v:.3f}" for m, v in table[kind].items()), flush=True)
    results["digits_linear_top1"] = table
    results["digits_seeds"] = seeds


DOC_DIMS = (8, 16, 32, 64, 128, 256, 384)
FIELDS = ("train_queries", "train_positives", "val_queries", "val_positives", "test_queries",
          "test_positives")


def minilm_features(pairs: PairData, cache_dir: Path, max_length: int = 128) -> PairData:
    """all-MiniLM-L6-v2 embeddings (sentence-transformers, ``max_length`` tokens) of every
    text, cached under ``cache_dir`` by a hash of the texts."""
    from sentence_transformers import SentenceTransformer

    texts = [t for f in FIELDS for t in getattr(pairs, f)]
    key = hashlib.sha256(("\x00".join(texts) + f"|{max_length}").encode()).hexdigest()[:16]
    path = cache_dir / f"minilm-features-{key}.npy"
    if path.is_file():
        flat = np.load(path, allow_pickle=False)
    else:
        model = SentenceTransformer(str(minilm_path()), device="cpu")
        model.max_seq_length = max_length
        started = time.perf_counter()
        flat = model.encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float32)
        print(f"  embedded {len(texts)} texts with MiniLM in {time.perf_counter() - started:.0f}s",
              flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(path, flat)
    parts, offset = [], 0
    for f in FIELDS:
        n = len(getattr(pairs, f))
        parts.append(flat[offset:offset + n])
        offset += n
    return PairData(*parts)


def recall_table(queries: np.ndarray, positives: np.ndarray, dims=DOC_DIMS) -> dict:
    from exporters.evaluate import _retrieval_metrics

    return {str(m): _retrieval_metrics(queries, positives, m, 10)["recall@10"] for m in dims}


def apply(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def plain_linear_baseline(features: PairData, dims=DOC_DIMS, *, epochs=4, batch_size=512,
                          lr=2e-3, seed=0):
    """The issue's baseline: Linear(384, 384, bias=False), orthogonal init, symmetric InfoNCE
    summed over the MRL dims, Adam, batch 512, lr 2e-3, 4 epochs; the last epoch is kept."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(384, 384, bias=False)
    torch.nn.init.orthogonal_(linear.weight)
    loss_fn = MatryoshkaLoss("infonce", dims, symmetric=True)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    q = torch.as_tensor(features.train_queries)
    p = torch.as_tensor(features.train_positives)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(q)))
        for step in range(len(q) // batch_size):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss = loss_fn((linear(q[index]), linear(p[index])))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return linear.eval()


def docstrings(results: dict, *, max_pairs: int, max_eval: int, cache_dir: Path,
               max_length: int = 128) -> None:
    """Adapters over frozen MiniLM features of docstrings (stdlib + installed packages)."""
    started = time.perf_counter()
    pairs = docstring_pairs(source="all", max_pairs=max_pairs, max_eval=max_eval, seed=0)
    print(f"  docstring pairs: {len(pairs.train_queries)} train, {len(pairs.val_queries)} val, "
          f"{len(pairs.test_queries)} test ({time.perf_counter() - started:.0f}s)", flush=True)
    features = minilm_features(pairs, cache_dir, max_length)
    tq, tp = features.test_queries, features.test_positives
    table = {"raw MiniLM, truncated": recall_table(tq, tp)}
    # PCA-ordered truncation: rotate onto the principal axes of the training texts (centred
    # for the axes, applied uncentred: a rotation, so full-dim cosines are unchanged)
    train = np.concatenate([features.train_queries, features.train_positives])
    _, _, vh = np.linalg.svd(train - train.mean(axis=0), full_matrices=False)
    table["PCA-ordered truncation"] = recall_table(tq @ vh.T, tp @ vh.T)
    seconds = {}
    t0 = time.perf_counter()
    linear = plain_linear_baseline(features)
    seconds["plain linear (orthogonal init)"] = time.perf_counter() - t0
    table["plain linear (orthogonal init)"] = recall_table(apply(linear, tq), apply(linear, tp))
    variants = {"FrozenAdapter identity init": {"init": "identity"},
                "FrozenAdapter PCA init": {"init": "pca"},
                "FrozenAdapter identity + residual 512": {"init": "identity", "hidden": 512}}
    histories = {}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        model, history = fit_adapter(features, DOC_DIMS, seed=0, **kwargs)
        seconds[name] = time.perf_counter() - t0
        table[name] = recall_table(apply(model, tq), apply(model, tp))
        histories[name] = [{"epoch": h["epoch"], "kept": h["kept"],
                            "val": {str(m): v for m, v in h["val"].items()}} for h in history]
    for name, row in table.items():
        print(f"  docstrings {name:38s} recall@10: "
              + ", ".join(f"{m}:{v:.3f}" for m, v in row.items()), flush=True)
    raw, base = table["raw MiniLM, truncated"], table["plain linear (orthogonal init)"]
    targets = {}
    for name in variants:
        row = table[name]
        targets[name] = {
            "full_dim_vs_raw": row["384"] - raw["384"],
            "worst_dim_vs_plain_linear": min(row[m] - base[m] for m in row),
            "at_16_vs_raw": row["16"] - raw["16"],
        }
        print(f"  {name}: full dim {targets[name]['full_dim_vs_raw'] * 100:+.1f} pt vs raw "
              f"(target >= -0.5), worst dim vs plain linear "
              f"{targets[name]['worst_dim_vs_plain_linear'] * 100:+.1f} pt (target >= -0.5), "
              f"16 dims {targets[name]['at_16_vs_raw'] * 100:+.1f} pt vs raw (target >= +15)",
              flush=True)
    results["docstrings_recall@10"] = table
    results["docstrings_targets"] = targets
    results["docstrings_fit_seconds"] = seconds
    results["docstrings_adapter_history"] = histories
    results["docstrings_pairs"] = {"source": "stdlib + installed packages (ast)",
                                   "train": len(pairs.train_queries),
                                   "val": len(pairs.val_queries),
                                   "test": len(pairs.test_queries),
                                   "features": f"all-MiniLM-L6-v2 (sentence-transformers), "
                                               f"{max_length} tokens, normalised"}


def step_time(results: dict, steps: int = 30) -> None:
    dims = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((256, 512)).astype(np.float32))
    y = torch.as_tensor(rng.integers(0, 1000, 256))
    timings = {}
    for kind, efficient in KINDS.items():
        train_dims = (2048,) if kind == "FF" else dims
        torch.manual_seed(0)
        model = build_model({"backbone": "mlp", "in_features": 512, "embed_dim": 2048,
                             "hidden": [1024], "dims": list(train_dims), "num_classes": 1000,
                             "efficient": efficient})
        loss_fn = MatryoshkaLoss("cross_entropy", train_dims)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        best = float("inf")
        for step in range(steps + 3):
            started = time.perf_counter()
            loss = loss_fn(model.classify(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 3:
                best = min(best, time.perf_counter() - started)
        timings[kind] = best
    results["step_seconds"] = timings
    results["step_ratio_vs_ff"] = {k: v / timings["FF"] for k, v in timings.items()}
    print("  step time (best of %d, batch 256, 512->2048, 1000 classes): " % steps
          + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / timings['FF']:.2f}x FF)"
                      for k, v in timings.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train.json")
    parser.add_argument("--parts", default="digits,docstrings,steps",
                        help="comma-separated subset of digits, docstrings, steps")
    parser.add_argument("--max-pairs", type=int, default=20_000, help="training pairs")
    parser.add_argument("--max-eval", type=int, default=2_000, help="val / test pairs each")
    parser.add_argument("--cache", default="bench_out", help="feature cache folder")
    parser.add_argument("--max-length", type=int, default=128, help="MiniLM tokens per text")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict = {}
    if "digits" in parts:
        digits(results)
    if "docstrings" in parts:
        docstrings(results, max_pairs=args.max_pairs, max_eval=args.max_eval,
                   cache_dir=Path(args.cache), max_length=args.max_length)
    if "steps" in parts:
        step_time(results)
    write_report(args.out, "train", {"torch": torch.__version__}, results=results)


if __name__ == "__main__":
    main()
