"""mrlsearch demo: funnel retrieval on synthetic Matryoshka-like vectors, side by side with
exact search and plain hnswlib at full dim. Runs in about a minute on 2 CPU cores.

    python examples/demo.py --out demo_out
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import hnswlib
import numpy as np

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for the summary JSON")
    parser.add_argument("--n", type=int, default=20_000, help="database size")
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"1. data: {args.n} x {args.dim} synthetic MRL-like vectors (decaying spectrum)")
    vectors, queries = synthetic_mrl(args.n, args.dim, n_queries=1000, seed=0)
    fit, test = queries[:500], queries[500:]

    print("2. build: mrlsearch Searcher (HNSW over 16/32/64-dim prefixes)")
    searcher = Searcher(args.dim, metric="cosine", index_dims=(16, 32, 64))
    started = time.perf_counter()
    searcher.add(vectors, progress=True)
    build_funnel = time.perf_counter() - started

    print("3. tune: fastest stages with recall@10 >= 0.95 on 500 fitting queries")
    plan = searcher.tune(fit, k=10, target_recall=0.95)
    print(f"   plan: {plan}")

    print("4. compare on 500 unseen queries")
    truth = searcher.exact(test, k=10)
    rows = []

    def timed(name, build_seconds, run):
        run()  # warm-up
        started = time.perf_counter()
        ids = run()
        seconds = time.perf_counter() - started
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth.ids)]))
        rows.append({"method": name, "recall@10": recall, "qps": len(test) / seconds,
                     "build_s": build_seconds})

    timed("exact (numpy)", 0.0, lambda: searcher.exact(test, k=10).ids)
    timed("funnel, paper stages", build_funnel,
          lambda: searcher.funnel(test, k=10, stages=searcher.default_stages(10)).ids)
    timed("funnel, tuned", build_funnel, lambda: searcher.funnel(test, k=10).ids)
    graph = hnswlib.Index(space="cosine", dim=args.dim)
    graph.init_index(max_elements=args.n, M=16, ef_construction=200)
    started = time.perf_counter()
    graph.add_items(vectors)
    build_full = time.perf_counter() - started
    for ef in (20, 40, 80):
        graph.set_ef(ef)
        timed(f"hnswlib full-dim ef={ef}", build_full, lambda: graph.knn_query(test, k=10)[0])

    print(f"\n   {'method':<28}{'recall@10':>10}{'QPS':>10}{'build s':>9}")
    for row in rows:
        print(f"   {row['method']:<28}{row['recall@10']:>10.3f}{row['qps']:>10.0f}"
              f"{row['build_s']:>9.1f}")
    (out / "demo.json").write_text(json.dumps({"plan": plan.to_dict(), "rows": rows}, indent=2))
    print(f"\nwrote {out / 'demo.json'}")


if __name__ == "__main__":
    main()
