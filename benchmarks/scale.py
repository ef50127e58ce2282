"""Scale run: funnel vs hnswlib full-dim from 10k to 1M vectors (build time, QPS, recall).

Synthetic MRL-like vectors (spectrum (1+i)^-decay, 1000 clusters) at dim 256. At each size
mrlsearch is ``Searcher.build`` with float16 storage (half the memory; the kernels widen it to
float32 as they read it): it picks the graph dim and the walk's codes from the data and tunes
on the tuning half of the queries. hnswlib indexes the full 256 float32 dims. Both are tuned to
recall@10 >= 0.95 on half the queries and measured on the other half
(``mrlsearch.benchmark.compare``). hnswlib full-dim stops at the first size whose build would
take longer than ``--hnswlib-budget`` seconds (extrapolated linearly from the previous size);
the JSON and the report say where.

    python benchmarks/scale.py --out benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import gc
import resource
import time


from _common import graph_versions, write_report

from mrlsearch import Searcher
from mrlsearch.benchmark import compare, searcher_memory_mb
from mrlsearch.datasets import synthetic_mrl


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[10_000, 30_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--hnswlib-budget", type=float, default=600.0,
                        help="largest extrapolated hnswlib full-dim build, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    args = parser.parse_args()

    points = []
    hnswlib_build_per_vector = None
    hnswlib_stopped_at = None
    for n in args.sizes:
        print(f"\n=== {n:,} x {args.dim}, float16 store, Searcher.build ===", flush=True)
        started = time.perf_counter()
        vectors, queries = synthetic_mrl(n, args.dim, n_queries=args.queries, decay=args.decay,
                                         seed=args.seed)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        searcher = Searcher.build(vectors, queries=queries[: len(queries) // 2], k=10,
                                  target_recall=0.95, metric="cosine", dtype="float16",
                                  M=args.M, ef_construction=args.ef_construction,
                                  progress=False)
        build_s = time.perf_counter() - started
        del vectors  # the Searcher's float16 copy is all that stays
        gc.collect()
        methods = ["funnel"]
        if hnswlib_stopped_at is None:
            estimate = (hnswlib_build_per_vector or 0.0) * n
            if estimate <= args.hnswlib_budget:
                methods.append("hnswlib")
            else:
                hnswlib_stopped_at = n
                print(f"  hnswlib full-dim skipped from here: build extrapolated to "
                      f"{estimate:.0f}s > {args.hnswlib_budget:.0f}s", flush=True)
        # compare tunes the funnel again on the same tuning half (the built plan is not
        # reused for a Searcher source); both plans are recorded
        report = compare(searcher, queries, k=10, target_recall=0.95, methods=methods)
        rows = {row.method: row for row in report.rows}
        funnel = rows["mrlsearch funnel (tuned)"]
        point = {"n": n, "generate_s": generate_s, "funnel_build_s": build_s,
                 "funnel_build_seconds": searcher.build_report["seconds"],
                 "funnel_graph_dims": list(searcher.index_dims),
                 "funnel_built_plan": str(searcher.plan),
                 "funnel_recall": funnel.recall, "funnel_qps_batch": funnel.qps_batch,
                 "funnel_qps_single": funnel.qps_single, "funnel_plan": funnel.detail,
                 "funnel_memory_mb": searcher_memory_mb(searcher), "notes": report.notes}
        hnsw = rows.get("hnswlib full-dim")
        if hnsw is not None:
            hnswlib_build_per_vector = hnsw.build_s / n
            point.update({"hnswlib_build_s": hnsw.build_s, "hnswlib_recall": hnsw.recall,
                          "hnswlib_qps_batch": hnsw.qps_batch,
                          "hnswlib_qps_single": hnsw.qps_single, "hnswlib_ef": hnsw.detail,
                          "hnswlib_memory_mb": hnsw.memory_mb})
        point["peak_rss_mb"] = peak_rss_mb()
        print(f"  funnel build {build_s:.1f}s; peak RSS so far {point['peak_rss_mb']:.0f} MiB",
              flush=True)
        points.append(point)
        del searcher, report
        gc.collect()
    write_report(args.out, "scale", graph_versions(),
                 dim=args.dim, decay=args.decay, M=args.M,
                 ef_construction=args.ef_construction, queries=args.queries,
                 hnswlib_budget_s=args.hnswlib_budget, hnswlib_stopped_at=hnswlib_stopped_at,
                 points=points)


if __name__ == "__main__":
    main()
