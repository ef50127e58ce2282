"""Baselines on real MRL embeddings: exact numpy, hnswlib full dim (ef swept), faiss's prefix
funnel, usearch f16 and i8 (rescored at float32), and the current mrlsearch funnel.

For each data set of :mod:`realdata` (docstring paragraphs embedded by WordLlama, 256 dims, and
by MiniLM + a Matryoshka adapter, 384 dims) the 2,000 held-out queries split into 1,000 that
tune every method (the one-sided 95 % lower bound of recall@10 against exact full-dim cosine
search must reach the target) and 1,000 unseen ones that measure it. Batch QPS runs on 2
threads, single-query QPS on 1 thread, all in one process. The CPU is shared with other work,
so timings are indicative.

    python benchmarks/realdata.py --prepare          # once: embed and cache the data sets
    python benchmarks/realdata_baselines.py --out benchmarks/results/realdata_baselines.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import hnswlib
import numpy as np
from threadpoolctl import threadpool_limits

from _common import best_time, write_report
from realdata import DATASETS, load_dataset

import mrlsearch
from mrlsearch import Searcher
from mrlsearch.benchmark import (_EF_GRID, _exact_numpy, _faiss_funnel, _usearch, qualifies,
                                 recalls_at_k, searcher_memory_mb, single_query_qps)

TARGET = 0.95
K = 10
BATCH_THREADS = 2


@contextlib.contextmanager
def threads(n: int):
    """BLAS/OpenMP (numpy, faiss) and numba pools limited to ``n`` threads."""
    import faiss
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        numba.set_num_threads(before)
        faiss.omp_set_num_threads(BATCH_THREADS)


def measure(run_batch, run_one, test, truth, single_limit=200):
    """recall@K on ``test``, batch QPS on 2 threads (best of 3), single-query QPS on 1 thread
    (best of 3 passes over ``single_limit`` queries: the CPU is shared, so the best is the
    least disturbed)."""
    with threads(BATCH_THREADS):
        seconds, ids = best_time(lambda: run_batch(test))
    with threads(1):
        qps_single = max(single_query_qps(run_one, test, limit=single_limit) for _ in range(3))
    return float(recalls_at_k(np.asarray(ids), truth).mean()), len(test) / seconds, qps_single


def bench_dataset(name: str, args) -> dict:
    vectors, queries = load_dataset(name)
    if args.limit:
        vectors = vectors[: args.limit]
    fit, test = queries[:1000], queries[1000:2000]
    n, dim = vectors.shape
    print(f"\n=== {name}: {n:,} x {dim}, {len(fit)} tuning + {len(test)} unseen queries, "
          f"recall@{K} >= {TARGET}, M={args.M}, ef_construction={args.ef_construction} ===",
          flush=True)
    rows = []

    def add_row(method, recall, qps_batch, qps_single, build_s, memory_mb, detail="",
                qualifies_on_tuning=None):
        rows.append({"method": method, "recall": recall, "qps_batch": qps_batch,
                     "qps_single": qps_single, "build_s": build_s, "memory_mb": memory_mb,
                     "detail": detail, "qualifies_on_tuning": qualifies_on_tuning})
        build = "-" if build_s is None else f"{build_s:6.1f}s"
        print(f"  {method:<34} recall@{K} {recall:.3f}  QPS batch {qps_batch:8.0f}  single "
              f"{qps_single:7.0f}  build {build:>7}  mem {memory_mb:7.1f} MB  {detail}",
              flush=True)
        return rows[-1]

    # --- the current mrlsearch funnel (also the exact truth: Searcher.exact at full dim) ----
    searcher = Searcher(dim, metric="cosine", index_dims=tuple(args.index_dims), M=args.M,
                        ef_construction=args.ef_construction)
    started = time.perf_counter()
    with threads(BATCH_THREADS):
        searcher.add(vectors, num_threads=BATCH_THREADS)
    build_funnel = time.perf_counter() - started
    truth = searcher.exact(test, K).ids
    truth_fit = searcher.exact(fit, K).ids
    started = time.perf_counter()
    with threads(BATCH_THREADS):
        plan = searcher.tune(fit, k=K, target_recall=TARGET, progress=False)
    tune_s = time.perf_counter() - started
    recall, qps_batch, qps_single = measure(
        lambda q: searcher.funnel(q, K, plan, num_threads=BATCH_THREADS).ids,
        lambda q: searcher.funnel(q, K, plan, num_threads=1).ids, test, truth)
    add_row("mrlsearch funnel (tuned)", recall, qps_batch, qps_single, build_funnel,
            searcher_memory_mb(searcher),
            f"{plan}, graphs {tuple(args.index_dims)}, tune {tune_s:.0f}s")
    funnel_plan = plan.to_dict()
    first_dim = plan.stages[0][0]
    del searcher

    # --- exact numpy --------------------------------------------------------------------------
    exact = _exact_numpy(vectors, "cosine", K)
    recall, qps_batch, qps_single = measure(exact, exact, test, truth, single_limit=50)
    add_row("exact numpy (BLAS matmul)", recall, qps_batch, qps_single, 0.0,
            vectors.nbytes / 2**20)

    # --- hnswlib full dim, ef swept -----------------------------------------------------------
    graph = hnswlib.Index(space="cosine", dim=dim)
    graph.init_index(max_elements=n, M=args.M, ef_construction=args.ef_construction)
    started = time.perf_counter()
    graph.add_items(vectors, num_threads=BATCH_THREADS)
    build_hnsw = time.perf_counter() - started
    hnsw_matched = None
    for ef in sorted({max(ef, K) for ef in _EF_GRID}):
        graph.set_ef(ef)
        on_target = bool(qualifies(graph.knn_query(fit, k=K, num_threads=BATCH_THREADS)[0],
                                   truth_fit, TARGET))
        chosen = on_target and hnsw_matched is None  # the smallest qualifying ef: marked *
        recall, qps_batch, qps_single = measure(
            lambda q: graph.knn_query(q, k=K, num_threads=BATCH_THREADS)[0],
            lambda q: graph.knn_query(q, k=K, num_threads=1)[0], test, truth)
        row = add_row(f"hnswlib full-dim ef={ef}" + (" *" if chosen else ""), recall,
                      qps_batch, qps_single, build_hnsw, graph.index_file_size() / 2**20,
                      qualifies_on_tuning=on_target)
        if chosen:
            hnsw_matched = row
    del graph

    # --- faiss prefix funnel ------------------------------------------------------------------
    faiss_rows = []
    for prefix in sorted({first_dim, *args.index_dims}):
        with threads(BATCH_THREADS):
            found = _faiss_funnel(vectors, "cosine", K, fit, truth_fit, TARGET, prefix, args.M,
                                  args.ef_construction)
        if found is None:
            print(f"  faiss funnel at {prefix} dims: no shortlist qualified", flush=True)
            continue
        run, build_s, memory_mb, detail = found
        recall, qps_batch, qps_single = measure(run, run, test, truth)
        faiss_rows.append(add_row(f"faiss funnel {prefix}d + refine", recall, qps_batch,
                                  qps_single, build_s, memory_mb, detail))

    # --- usearch f16 and i8 -------------------------------------------------------------------
    usearch_rows = {}
    for dtype in ("f16", "i8"):
        with threads(BATCH_THREADS):
            found = _usearch(vectors, "cosine", K, fit, truth_fit, TARGET, dtype, args.M,
                             args.ef_construction, BATCH_THREADS)
        if found is None:
            print(f"  usearch {dtype}: no setting qualified", flush=True)
            continue
        run, build_s, memory_mb, detail = found
        # usearch answers one query on one thread; its batches use `threads=BATCH_THREADS`
        recall, qps_batch, qps_single = measure(run, run, test, truth)
        usearch_rows[dtype] = add_row(
            f"usearch {dtype}" + (" + float rescoring" if dtype == "i8" else ""), recall,
            qps_batch, qps_single, build_s, memory_mb, detail)

    funnel = rows[0]

    def ratio(row, key):
        return None if row is None else funnel[key] / row[key]

    best_faiss = max(faiss_rows, key=lambda row: row["qps_batch"]) if faiss_rows else None
    summary = {
        "hnswlib_matched": hnsw_matched["method"] if hnsw_matched else None,
        "funnel_vs_hnswlib_single": ratio(hnsw_matched, "qps_single"),
        "funnel_vs_hnswlib_batch": ratio(hnsw_matched, "qps_batch"),
        "funnel_vs_faiss_batch": ratio(best_faiss, "qps_batch"),
        "funnel_vs_usearch_i8_batch": ratio(usearch_rows.get("i8"), "qps_batch"),
        "funnel_vs_usearch_f16_batch": ratio(usearch_rows.get("f16"), "qps_batch"),
        "hnswlib_vs_funnel_build": (None if hnsw_matched is None
                                    else build_hnsw / funnel["build_s"]),
    }
    print("  summary (funnel / baseline): " + ", ".join(
        f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in summary.items()), flush=True)
    return {"name": name, "n": n, "dim": dim, "k": K, "target_recall": TARGET,
            "n_tune_queries": len(fit), "n_test_queries": len(test), "M": args.M,
            "ef_construction": args.ef_construction, "index_dims": list(args.index_dims),
            "funnel_plan": funnel_plan, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--index-dims", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--limit", type=int, default=0, help="first LIMIT corpus rows (smoke)")
    parser.add_argument("--out", default="benchmarks/results/realdata_baselines.json",
                        help="JSON report; data sets not run now keep their entries")
    args = parser.parse_args()
    import faiss
    import numba
    import usearch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    datasets = [bench_dataset(name, args) for name in args.datasets]
    if Path(args.out).exists() and not args.limit:  # keep the other data sets' last results
        kept = [entry for entry in json.loads(Path(args.out).read_text())["datasets"]
                if entry["name"] not in args.datasets]
        datasets = sorted(kept + datasets, key=lambda entry: DATASETS.index(entry["name"]))
    write_report(args.out, "realdata_baselines",
                 {"numpy": np.__version__, "numba": numba.__version__,
                  "hnswlib": getattr(hnswlib, "__version__", "0.8.0"),
                  "faiss": faiss.__version__, "usearch": usearch.__version__},
                 mrlsearch_source=str(Path(mrlsearch.__file__).parent), git_head=commit,
                 batch_threads=BATCH_THREADS, single_threads=1,
                 note=("The 2 CPU cores were shared with other work while this ran: timings "
                       "are indicative (recall figures are not affected)."),
                 datasets=datasets)


if __name__ == "__main__":
    main()
