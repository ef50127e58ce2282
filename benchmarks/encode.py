"""Inference benchmark: torch eager vs onnxruntime fp32 / fp16 / int8.

* mlp-digits: the digits MLP (trained for a few epochs here), batch 1 and 256.
* minilm (sentence-transformers): all-MiniLM-L6-v2 exported with
  ``export_sentence_transformer`` (fp32, fp16, int8 = dynamic per-channel quantisation of the
  MatMuls), ``Encoder.encode`` at batch 1 and 32 on docstring summaries and bodies (typical
  sentence lengths, 128 tokens at most, length-bucketed), next to
  ``SentenceTransformer.encode`` on the same texts. Retrieval quality: success@10 of each
  summary finding its body among all test bodies, per precision.

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


def bench_sentence_transformer(scratch: Path, results: list, n_texts: int = 512) -> None:
    from sentence_transformers import SentenceTransformer

    from exporters import export_sentence_transformer, minilm_path

    print("\n=== minilm (sentence-transformers) ===", flush=True)
    pairs = docstring_pairs(max_pairs=1500, seed=0)
    queries, bodies = list(pairs.test_queries), list(pairs.test_positives)
    texts = (list(pairs.train_queries) + list(pairs.train_positives))
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:n_texts]]
    st = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    st.max_seq_length = 128
    lengths = [len(e) for e in st.tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    print(f"  {len(texts)} texts, {np.mean(lengths):.0f} tokens on average "
          f"(median {np.median(lengths):.0f}, max {max(lengths)})", flush=True)

    def st_quality():
        return success_at_10(st.encode(queries, batch_size=32, normalize_embeddings=True),
                             st.encode(bodies, batch_size=32, normalize_embeddings=True))

    r1 = rate(lambda: st.encode(texts[:1], batch_size=1), 1)
    r32 = rate(lambda: st.encode(texts, batch_size=32), len(texts), min_seconds=2.0)
    row = {"backbone": "minilm-st", "runtime": "SentenceTransformer.encode (torch fp32)",
           "rows_per_s_batch1": r1, "rows_per_s_batch32": r32, "success@10": st_quality(),
           "mean_tokens": float(np.mean(lengths))}
    results.append(row)
    print(f"  {row['runtime']:<40} batch 1 {r1:7.1f} rows/s   batch 32 {r32:7.1f} rows/s   "
          f"success@10 {row['success@10']:.3f}", flush=True)
    fp32 = None
    for precision, kwargs in PRECISIONS.items():
        out = scratch / f"minilm-st-{precision}"
        manifest = export_sentence_transformer(st, out, max_length=128, **kwargs)
        encoder = Encoder(out, providers="cpu")
        r1 = rate(lambda: encoder.encode(texts[:1], batch_size=1), 1)
        r32 = rate(lambda: encoder.encode(texts, batch_size=32), len(texts), min_seconds=2.0)
        quality = success_at_10(encoder.encode(queries, batch_size=32),
                                encoder.encode(bodies, batch_size=32))
        fp32 = r32 if precision == "fp32" else fp32
        row = {"backbone": "minilm-st", "runtime": f"Encoder onnxruntime {precision}",
               "rows_per_s_batch1": r1, "rows_per_s_batch32": r32, "success@10": quality,
               "speedup_vs_fp32_batch32": r32 / fp32, "provider": encoder.provider,
               "model_mb": (out / "model.onnx").stat().st_size / 1e6,
               "mean_cosine_vs_torch": {d: round(p["mean_cosine"], 5)
                                        for d, p in manifest["parity"].items()}}
        results.append(row)
        print(f"  {row['runtime']:<40} batch 1 {r1:7.1f} rows/s   batch 32 {r32:7.1f} rows/s "
              f"({r32 / fp32:.2f}x fp32)   success@10 {quality:.3f}", flush=True)


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
        bench_sentence_transformer(scratch, results)
    write_report(args.out, "encode", {"torch": torch.__version__,
                                      "onnxruntime": __import__("onnxruntime").__version__},
                 results=results)


if __name__ == "__main__":
    main()
