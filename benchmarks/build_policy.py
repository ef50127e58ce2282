"""Searcher.build's graph choice where its cost estimate is close: each candidate graph alone.

For each synthetic set, ``Searcher.build`` runs as users call it (what it estimated, which
graph it built, how long it took); then the best prefix's graph and the full-dim graph are each
built alone and tuned, and hnswlib at full dim is built and swept to the same recall, all in this
process. Single queries on one thread, best of three passes over the unseen half of the queries.
The table shows what each choice costs in build time and query time, against the estimated
share that ``Searcher.build`` decides on (``mrlsearch._build``); the graphs built alone are
linked by their own dim, ``Searcher.build``'s by the prefix it chose (``link_dim``), and its
index is timed the same way.

    python benchmarks/build_policy.py --out benchmarks/results/build_policy.json
"""

from __future__ import annotations

import argparse
import time

import hnswlib
import numpy as np
from _common import graph_versions, write_report

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl

#: (rows, dim, decay): shares from 0.5 to 0.9 on this machine's runs
SETS = ((20_000, 768, 0.6), (30_000, 256, 0.3), (30_000, 1024, 0.5), (30_000, 384, 0.5))


def single_query_us(search, queries: np.ndarray) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for query in queries:
            search(query)
        best = min(best, (time.perf_counter() - started) / len(queries))
    return best * 1e6


def measure_set(n: int, dim: int, decay: float) -> dict:
    vectors, queries = synthetic_mrl(n, dim, n_queries=1000, decay=decay, seed=0)
    fit, unseen = queries[:500], np.ascontiguousarray(queries[500:])
    started = time.perf_counter()
    built = Searcher.build(vectors, queries=fit, k=10, target_recall=0.95, progress=False)
    report = built.build_report
    point = {"n": n, "dim": dim, "decay": decay, "build_s": time.perf_counter() - started,
             "graphs_built": report["graphs_built"], "link_dim": report["link_dim"],
             "built_plan": str(built.plan)}
    costs = {int(d): c for d, c in report["estimated_cost"].items()}
    prefix = min((d for d in costs if d != dim), key=costs.get)
    point["best_prefix"], point["share"] = prefix, costs[prefix] / costs[dim]
    truth = built.exact(unseen, 10)
    point["built_recall"] = built.search(unseen, 10).recall(truth)
    point["built_single_us"] = single_query_us(built.search, unseen)
    for label, graph_dim in (("prefix", prefix), ("full", dim)):
        started = time.perf_counter()
        alone = Searcher(dim, built.dims, index_dims=(graph_dim,))
        alone.add(vectors, progress=False)
        add_s = time.perf_counter() - started
        alone.tune(fit, k=10, target_recall=0.95, progress=False)
        point[label] = {"graph_dim": graph_dim, "add_s": add_s, "plan": str(alone.plan),
                        "recall": alone.search(unseen, 10).recall(truth),
                        "single_us": single_query_us(alone.search, unseen)}
    started = time.perf_counter()
    graph = hnswlib.Index(space="cosine", dim=dim)
    graph.init_index(n, M=16, ef_construction=200)
    graph.add_items(vectors)
    hnsw_build = time.perf_counter() - started
    for ef in (20, 40, 80, 160, 320):
        graph.set_ef(ef)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                zip(graph.knn_query(unseen, k=10)[0], truth.ids)]))
        if recall >= 0.95:
            break
    point["hnswlib"] = {"build_s": hnsw_build, "ef": ef, "recall": recall,
                        "single_us": single_query_us(lambda q: graph.knn_query(q, k=10),
                                                     unseen)}
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/build_policy.json")
    args = parser.parse_args()
    points = []
    print(f"{'data':>22} {'share':>6} {'built (link)':>14} {'build s':>8} {'us':>6} | "
          f"{'prefix: add s, us':>18} "
          f"| {'full: add s, us':>16} | {'hnswlib: build s, us':>20}")
    for n, dim, decay in SETS:
        point = measure_set(n, dim, decay)
        points.append(point)
        built_text = f"{point['graphs_built']} ({point['link_dim'] or 'own'})"
        print(f"{f'{n} x {dim}, decay {decay}':>22} {point['share']:6.2f} "
              f"{built_text:>14} "
              f"{point['build_s']:8.2f} {point['built_single_us']:6.1f} | "
              f"{point['prefix']['add_s']:8.2f} {point['prefix']['single_us']:8.1f} | "
              f"{point['full']['add_s']:7.2f} {point['full']['single_us']:8.1f} | "
              f"{point['hnswlib']['build_s']:10.2f} {point['hnswlib']['single_us']:9.1f}",
              flush=True)
    write_report(args.out, "build_policy", graph_versions(), k=10, target_recall=0.95, M=16,
                 ef_construction=200, points=points)


if __name__ == "__main__":
    main()
