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
import os
import time

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
    load_digits_data,
)
from exporters.evaluate import embed_inputs  # noqa: E402
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


def docstrings(results: dict) -> None:
    dims = (8, 16, 32, 64, 128, 384)
    pairs = docstring_pairs(seed=0)
    minilm = build_model({"backbone": "text", "embed_dim": 384, "dims": [384], "max_length": 64})
    fields = ("train_queries", "train_positives", "val_queries", "val_positives",
              "test_queries", "test_positives")
    features = PairData(*(embed_inputs(minilm, getattr(pairs, f), batch_size=64) for f in fields))
    table = {}
    identity = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 384,
                            "dims": list(dims)})
    identity.backbone = torch.nn.Identity()
    table["raw MiniLM, truncated"] = {str(m): v["recall@10"] for m, v in
                                      evaluate(identity, features)["per_dim"].items()}
    for kind in ("MRL", "FF"):
        train_dims = (384,) if kind == "FF" else dims
        model = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 384,
                             "dims": list(train_dims), "hidden": 512})
        Trainer(model, MatryoshkaLoss("infonce", train_dims), lr=1e-3, epochs=20, batch_size=64,
                seed=0, progress=False).fit(features)
        table[f"adapter {kind}"] = {str(m): v["recall@10"] for m, v in
                                    evaluate(model, features, dims=dims)["per_dim"].items()}
    for name, row in table.items():
        print(f"  docstrings {name:22s} recall@10: "
              + ", ".join(f"{m}:{v:.3f}" for m, v in row.items()), flush=True)
    results["docstrings_recall@10"] = table
    results["docstrings_pairs"] = {"train": len(pairs.train_queries),
                                   "test": len(pairs.test_queries)}


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
    args = parser.parse_args()
    results: dict = {}
    digits(results)
    docstrings(results)
    step_time(results)
    write_report(args.out, "train", {"torch": torch.__version__}, results=results)


if __name__ == "__main__":
    main()
