"""Inference benchmark: torch eager vs onnxruntime fp32 / fp16 / int8, batch 1 and 256.

Backbones: the digits MLP (trained for a few epochs here) and the MiniLM text encoder (with an
identity projection). Parity per prefix comes from the export's validation; retrieval quality
of the reduced precisions is measured as success@10 on stdlib docstring pairs (query summary
-> its body) against the fp32 model. Prints a table and writes JSON.

    python benchmarks/encode.py --out benchmarks/results/encode.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exporters import (  # noqa: E402
    MatryoshkaLoss,
    Trainer,
    build_model,
    docstring_pairs,
    export_onnx,
    load_digits_data,
)
from mrlsearch import Encoder  # noqa: E402
from _common import write_report  # noqa: E402

PRECISIONS = {"fp32": {}, "fp16": {"fp16": True}, "int8": {"quantize": "int8"}}


def rate(run, rows: int, min_seconds: float = 1.0) -> float:
    """Rows per second: warm up once, then repeat until ``min_seconds`` have passed."""
    run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        run()
        count += 1
    return rows * count / (time.perf_counter() - started)


def success_at_10(queries: np.ndarray, corpus: np.ndarray) -> float:
    scores = queries @ corpus.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def bench_backbone(name, model, inputs_1, inputs_256, torch_inputs, example, out_dir, results,
                   quality=None):
    print(f"\n=== {name} ===", flush=True)
    model.eval()
    with torch.no_grad():
        t1 = rate(lambda: model(*torch_inputs(inputs_1)), 1)
        t256 = rate(lambda: model(*torch_inputs(inputs_256)), len(inputs_256))
    row = {"backbone": name, "runtime": "torch eager fp32", "rows_per_s_batch1": t1,
           "rows_per_s_batch256": t256}
    results.append(row)
    print(f"  {row['runtime']:<24} batch 1 {t1:9.1f} rows/s   batch 256 {t256:9.1f} rows/s")
    baseline = None
    for precision, kwargs in PRECISIONS.items():
        manifest = export_onnx(model, out_dir / f"{name}-{precision}", example, **kwargs)
        encoder = Encoder(out_dir / f"{name}-{precision}")
        r1 = rate(lambda: encoder.encode(inputs_1, batch_size=1), 1)
        r256 = rate(lambda: encoder.encode(inputs_256, batch_size=256), len(inputs_256))
        worst = {d: round(p["mean_cosine"], 5) for d, p in manifest["parity"].items()}
        row = {"backbone": name, "runtime": f"onnxruntime {precision}", "rows_per_s_batch1": r1,
               "rows_per_s_batch256": r256, "mean_cosine_vs_torch": worst,
               "provider": encoder.provider}
        if quality is not None:
            row["success@10"] = quality(encoder)
            baseline = row["success@10"] if precision == "fp32" else baseline
        results.append(row)
        extra = f"   success@10 {row['success@10']:.3f}" if quality is not None else ""
        print(f"  {row['runtime']:<24} batch 1 {r1:9.1f} rows/s   batch 256 {r256:9.1f} rows/s"
              f"   mean cosine per dim {worst}{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/encode.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = load_digits_data(seed=0)
        dims = (8, 16, 32, 64)
        mlp = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 64,
                           "hidden": [256], "dims": list(dims), "num_classes": 10})
        Trainer(mlp, MatryoshkaLoss("cross_entropy", dims), lr=3e-3, epochs=5, seed=0,
                progress=False).fit(data)
        x = data.x_test[:256]
        bench_backbone("mlp-digits", mlp, x[:1], x, lambda a: (torch.as_tensor(a),), x[:64],
                       scratch, results)

        pairs = docstring_pairs(max_pairs=400, seed=0)
        text = build_model({"backbone": "text", "embed_dim": 384,
                            "dims": [16, 32, 64, 128, 384], "max_length": 128})
        bodies = list(pairs.test_positives)
        batch = (bodies * 4)[:256]

        def quality(encoder):
            return success_at_10(encoder.encode(list(pairs.test_queries)),
                                 encoder.encode(bodies))

        bench_backbone("minilm-text", text, batch[:1], batch,
                       lambda texts: text.backbone.tokenize(texts), batch[:8], scratch, results,
                       quality)
    write_report(args.out, "encode", {"torch": torch.__version__,
                                      "onnxruntime": __import__("onnxruntime").__version__},
                 results=results)


if __name__ == "__main__":
    main()
