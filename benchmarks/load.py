"""Service-style load: single queries from 1, 2 and 4 threads, and while a writer adds 10 %.

Queries go one per call (as a web service sends them) through a tuned funnel; each thread runs
for a fixed time. Reports queries/s and p50/p99 latency. Prints a table and writes JSON.

    python benchmarks/load.py --out benchmarks/results/load.json
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from _common import write_report

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl


def run_readers(searcher, queries, n_threads, seconds, writer=None):
    latencies: list[list[float]] = [[] for _ in range(n_threads)]
    stop_at = time.perf_counter() + seconds

    def reader(slot):
        rng = np.random.default_rng(slot)
        while time.perf_counter() < stop_at:
            query = queries[int(rng.integers(0, len(queries)))]
            started = time.perf_counter()
            searcher.funnel(query, 10)
            latencies[slot].append(time.perf_counter() - started)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(n_threads)]
    if writer is not None:
        threads.append(threading.Thread(target=writer, args=(stop_at,)))
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = np.concatenate([np.asarray(x) for x in latencies]) * 1e6
    return {"threads": n_threads, "queries": int(flat.size), "qps": flat.size / elapsed,
            "p50_us": float(np.percentile(flat, 50)), "p99_us": float(np.percentile(flat, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default="benchmarks/results/load.json")
    args = parser.parse_args()
    extra = args.n // 10
    vectors, queries = synthetic_mrl(args.n + extra, args.dim, n_queries=600, decay=1.0, seed=0)
    base, additions = vectors[: args.n], vectors[args.n:]
    searcher = Searcher(args.dim, metric="cosine", index_dims=(32,))
    searcher.add(base)
    plan = searcher.tune(queries[:300], k=10, target_recall=0.95, progress=False)
    print(f"{args.n} x {args.dim}, plan {plan}")
    rows = []
    for n_threads in (1, 2, 4):
        row = run_readers(searcher, queries[300:], n_threads, args.seconds)
        row["writer"] = False
        rows.append(row)
        print(f"  {n_threads} reader thread(s):            {row['qps']:8.0f} q/s  "
              f"p50 {row['p50_us']:7.0f} us  p99 {row['p99_us']:7.0f} us", flush=True)
    added = {"count": 0}

    def writer(stop_at):
        for lo in range(0, extra, 100):
            if time.perf_counter() >= stop_at:
                break
            searcher.add(additions[lo:lo + 100])
            added["count"] += len(additions[lo:lo + 100])

    row = run_readers(searcher, queries[300:], 2, args.seconds, writer=writer)
    row.update(writer=True, vectors_added=added["count"])
    rows.append(row)
    print(f"  2 readers + 1 writer (+{added['count']} vectors): {row['qps']:8.0f} q/s  "
          f"p50 {row['p50_us']:7.0f} us  p99 {row['p99_us']:7.0f} us", flush=True)
    truth = searcher.exact(queries[300:], 10)
    recall_after = searcher.funnel(queries[300:], 10).recall(truth)
    print(f"  recall@10 after the writes, same plan: {recall_after:.3f}")
    write_report(args.out, "load", {"numpy": np.__version__}, n=args.n, dim=args.dim,
                 plan=plan.to_dict(), rows=rows, recall_after_writes=recall_after)


if __name__ == "__main__":
    main()
