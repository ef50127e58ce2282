"""Funnel retrieval: mrlsearch vs hnswlib at full dim, exact numpy, faiss's funnel, usearch.

Real MRL embeddings first (docstrings of the installed packages embedded by WordLlama, 256
dims, and by MiniLM + an MRL adapter, 384 dims; see ``realdata.py``), then synthetic vectors
with a decaying spectrum at 768 and 2048 dims. Every method runs in this one process on the
same vectors; each is tuned on the first half of the queries by one rule (the one-sided 95 %
lower bound of recall@10 reaches the target) and measured on the other, unseen half, with
:func:`mrlsearch.benchmark.compare` (the one copy of the baseline runners). mrlsearch is
``Searcher.build(vectors, queries=tuning half)``: it picks the graph dim and code type itself.

Measured per data set: recall@10, single-query latency on one thread, batch QPS on two
threads, build time, memory, and the funnel's single-query throughput from two Python threads
against one. Prints tables and writes JSON.

    python benchmarks/funnel.py --out benchmarks/results/funnel.json
    python benchmarks/funnel.py --datasets synthetic-768 --n 20000     # a quick look
"""

from __future__ import annotations

import numpy as np
from _common import dataset_parser, graph_versions, write_report

from mrlsearch.benchmark import METHODS, compare
from mrlsearch.datasets import synthetic_mrl

TARGET = 0.95
DATASETS = ("wordllama-docstrings", "minilm-mrl-docstrings", "synthetic-768", "synthetic-2048")
_SYNTHETIC = {"synthetic-768": (50_000, 768), "synthetic-2048": (30_000, 2048)}


def load(name: str, n: int | None, n_queries: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Vectors and 2 * n_queries queries (tuning half first) of a data set, and its label."""
    if name in _SYNTHETIC:
        rows, dim = _SYNTHETIC[name]
        rows = n or rows
        vectors, queries = synthetic_mrl(rows, dim, n_queries=2 * n_queries, decay=0.8, seed=0)
        return vectors, queries, f"synthetic {rows:,} x {dim}, spectrum (1+i)^-0.8"
    from realdata import load_dataset

    vectors, queries = load_dataset(name)
    if n:
        vectors = vectors[:n]
    return vectors, queries[: 2 * n_queries], f"real: {name}, {len(vectors):,} x {vectors.shape[1]}"


def bench(name: str, args) -> dict:
    vectors, queries, label = load(name, args.n, args.queries)
    print(f"\n=== {label}; {args.queries} tuning + {args.queries} unseen queries ===", flush=True)
    report = compare(vectors, queries, k=args.k, target_recall=TARGET, methods=args.methods,
                     M=args.M, ef_construction=args.ef_construction, progress=True)
    print(report.table(), flush=True)
    rows = {row.method: row for row in report.rows}
    funnel = rows.get("mrlsearch (Searcher.build)")
    summary: dict = {}
    if funnel is not None:
        for other, key in (("hnswlib full-dim", "hnswlib"),
                           ("faiss funnel (HNSW prefix + refine)", "faiss"),
                           ("usearch i8 + float rescoring", "usearch_i8"),
                           ("usearch f16", "usearch_f16")):
            if other in rows:
                summary[f"vs_{key}_batch"] = funnel.qps_batch / rows[other].qps_batch
                summary[f"vs_{key}_single"] = funnel.qps_single / rows[other].qps_single
        if "hnswlib full-dim" in rows and rows["hnswlib full-dim"].build_s:
            summary["build_vs_hnswlib"] = rows["hnswlib full-dim"].build_s / funnel.build_s
        summary.update(report.extras)
    print("  summary: " + ", ".join(f"{key} {value:.2f}" if isinstance(value, float)
                                    else f"{key} {value}" for key, value in summary.items()),
          flush=True)
    return {"name": name, "label": label, **report.to_dict(), "summary": summary}


def main() -> None:
    parser = dataset_parser(__doc__.splitlines()[0], DATASETS,
                            out="benchmarks/results/funnel.json",
                            queries_help="tuning (= unseen) queries")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    import faiss
    import usearch

    datasets = [bench(name, args) for name in args.datasets]
    write_report(args.out, "funnel",
                 {**graph_versions(), "faiss": faiss.__version__, "usearch": usearch.__version__},
                 target_recall=TARGET, datasets=datasets)

if __name__ == "__main__":
    main()
