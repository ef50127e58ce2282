"""Memory tiers: a funnel index loaded with ``mmap=True`` against plain hnswlib at full dim.

Builds a synthetic MRL-like set (default 1,000,000 x 768, decay 0.8) into a Searcher whose
graph and codes are over a short prefix, tunes it, saves it, then in a fresh process loads it
with ``mmap=True``, runs the unseen queries, and reports what is resident: the process's RSS
growth and ``Searcher.memory_usage()`` per part. hnswlib at full dim keeps every vector in its
graph in RAM; its resident size is its index size, ``index_file_size()``, measured on a full
build when ``--hnswlib-rows`` covers the set, or from hnswlib's fixed per-element layout
(links + float32 vector + label, plus the upper levels measured on a smaller build) scaled to
the set's size -- the script says which. Recall@10 of both on the same unseen queries.

``--verify`` picks ``Searcher.load``'s checksum mode (``full``, ``lazy``, ``none``; a
comma-separated list loads the same saved index once per mode, each in a fresh process; the
first mode's figures are the headline ones). With ``lazy`` the child waits for the background
check (``Searcher.verify()``) before it measures, so the figures include its effect.
``--cold`` drops the index files from the page cache before each load
(``posix_fadvise(DONTNEED)``), as after a reboot; without it the files are still cached from
the save.

    python benchmarks/memory.py --n 1000000 --out benchmarks/results/memory.json
    python benchmarks/memory.py --n 200000 --verify full,lazy,none --cold --out /tmp/memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_report

from mrlsearch import Searcher
from mrlsearch.benchmark import hnswlib_build, recalls_at_k
from mrlsearch.datasets import synthetic_mrl

_CHILD = """
import json, os, sys, time, numpy as np
def rollup():
    out = {}
    for line in open('/proc/self/smaps_rollup'):
        parts = line.split()
        if parts[0] in ('Rss:', 'Anonymous:'):
            out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out
def rss():
    return rollup()['rss']
from mrlsearch import Searcher
queries = np.load(sys.argv[2])
verify = sys.argv[4]
if sys.argv[5] == "cold":
    for name in os.listdir(sys.argv[1]):
        fd = os.open(os.path.join(sys.argv[1], name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
before = rss()
anonymous_before = rollup()['anonymous']
started = time.perf_counter()
s = Searcher.load(sys.argv[1], mmap=True, verify=verify)
load_s = time.perf_counter() - started
after_load = rss()
started = time.perf_counter()
verify_s = None
if verify == "lazy":  # wait for the background check (with "none", verify() would hash now)
    s.verify()
    verify_s = time.perf_counter() - started
after_verify = rss()
started = time.perf_counter()
result = s.search(queries, k=10)
for q in queries[:200]:
    s.search(q, k=10)
query_s = time.perf_counter() - started
np.save(sys.argv[3], result.ids)
print(json.dumps({"verify": verify, "cold": sys.argv[5] == "cold", "verify_wait_s": verify_s,
                  "rss_after_verify": after_verify,
                  "rss_before": before, "rss_after_load": after_load, "rss_after_queries": rss(),
                  "anonymous_after_queries": rollup()["anonymous"],
                  "load_s": load_s, "query_s": query_s, "usage": s.memory_usage(),
                  "anonymous_before": anonymous_before, "plan": str(s.plan)}))
"""


def hnswlib_bytes(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, rows: int,
                  M: int, ef_construction: int) -> dict:
    """hnswlib at full dim on ``rows`` vectors: its index size and recall at the smallest
    qualifying ef (of a grid)."""
    graph, build_s = hnswlib_build(vectors[:rows], "cosine", M=M,
                                   ef_construction=ef_construction)
    out = {"rows": rows, "index_bytes": graph.index_file_size(), "build_s": build_s}
    if rows == len(vectors):
        for ef in (10, 20, 40, 60, 80, 120, 160, 320):
            graph.set_ef(ef)
            ids, _ = graph.knn_query(queries, k=10)
            recall = float(recalls_at_k(ids, truth).mean())
            if recall >= 0.95:
                out.update(ef=ef, recall=recall)
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--index-dim", type=int, default=64)
    parser.add_argument("--hnswlib-rows", type=int, default=100_000,
                        help="rows of the hnswlib build (its size is scaled to --n if smaller)")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--verify", default="full",
                        help="Searcher.load verify mode(s): full, lazy, none, comma-separated "
                             "(each loads in a fresh process; the first is the headline)")
    parser.add_argument("--cold", action="store_true",
                        help="drop the index files from the page cache before each load")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    args = parser.parse_args()
    modes = [mode for mode in args.verify.split(",") if mode]
    if not modes or any(mode not in ("full", "lazy", "none") for mode in modes):
        parser.error(f"--verify must list full, lazy or none (got {args.verify!r})")
    started = time.perf_counter()
    vectors, queries = synthetic_mrl(args.n, args.dim, n_queries=2 * args.queries, decay=0.8,
                                     seed=0)
    fit, test = queries[: args.queries], queries[args.queries:]
    print(f"{args.n:,} x {args.dim} generated in {time.perf_counter() - started:.0f}s",
          flush=True)
    searcher = Searcher(args.dim, metric="cosine", index_dims=(args.index_dim,))
    started = time.perf_counter()
    searcher.add(vectors, progress=False)
    build_s = time.perf_counter() - started
    truth = searcher.exact(test, 10).ids
    # served with the vectors on disk: the walk scores codes held in RAM (a float walk reads
    # the mapped vectors at every node it visits, and they become resident)
    plan = searcher.tune(fit, k=10, target_recall=0.95, precisions=("int8", "binary"),
                         progress=False)
    print(f"mrlsearch: built in {build_s:.0f}s, plan {plan}", flush=True)
    with tempfile.TemporaryDirectory(dir=".") as scratch:
        index_dir = Path(scratch) / "index"
        searcher.save(index_dir)
        del searcher
        np.save(Path(scratch) / "queries.npy", test)
        by_mode = {}
        for mode in modes:
            child = subprocess.run([sys.executable, "-c", _CHILD, str(index_dir),
                                    str(Path(scratch) / "queries.npy"),
                                    str(Path(scratch) / "ids.npy"), mode,
                                    "cold" if args.cold else "warm"],
                                   check=True, capture_output=True, text=True)
            run = json.loads(child.stdout.strip().splitlines()[-1])
            run["funnel_recall"] = float(recalls_at_k(np.load(Path(scratch) / "ids.npy"),
                                                      truth).mean())
            run["resident"] = run["rss_after_queries"] - run["rss_before"]
            run["private"] = run["anonymous_after_queries"] - run["anonymous_before"]
            by_mode[mode] = run
            print(f"mrlsearch mmap, verify={mode}{' (cold cache)' if args.cold else ''}: "
                  f"load {run['load_s']:.2f}s, recall@10 {run['funnel_recall']:.3f}, RSS growth "
                  f"after load {(run['rss_after_load'] - run['rss_before']) / 2**20:.0f} MiB, "
                  f"after queries {run['resident'] / 2**20:.0f} MiB, memory_usage "
                  f"{json.dumps({k: round(v / 2**20, 1) for k, v in run['usage'].items()})}"
                  f" MiB; private (anonymous) growth {run['private'] / 2**20:.0f} MiB",
                  flush=True)
    loaded = by_mode[modes[0]]
    funnel_recall = loaded["funnel_recall"]
    resident = loaded["resident"]
    private = loaded["private"]
    hnsw = hnswlib_bytes(vectors, test, truth, min(args.hnswlib_rows, args.n), args.M,
                         args.ef_construction)
    if hnsw["rows"] < args.n:
        per_row = hnsw["index_bytes"] / hnsw["rows"]
        hnsw["scaled_index_bytes"] = int(per_row * args.n)
        hnsw["how"] = (f"measured on {hnsw['rows']:,} rows ({per_row:.0f} B/row: links, "
                       f"float32 vector, label, upper levels), scaled to {args.n:,}")
        full_bytes = hnsw["scaled_index_bytes"]
    else:
        hnsw["how"] = "measured on the full set"
        full_bytes = hnsw["index_bytes"]
    ratio = resident / full_bytes
    print(f"hnswlib full dim: {full_bytes / 2**20:.0f} MiB ({hnsw['how']})", flush=True)
    for mode, run in by_mode.items():
        run["resident_ratio"] = run["resident"] / full_bytes
        run["private_ratio"] = run["private"] / full_bytes
        print(f"  verify={mode}: mrlsearch mmap / hnswlib = {run['resident_ratio']:.2f} "
              f"(private {run['private_ratio']:.2f})", flush=True)
    write_report(args.out, "memory", {"numpy": np.__version__}, n=args.n, dim=args.dim,
                 index_dim=args.index_dim, plan=plan.to_dict(), build_s=build_s,
                 verify=modes[0], cold=args.cold, funnel_recall=funnel_recall, loaded=loaded,
                 by_verify=by_mode, hnswlib=hnsw, resident_ratio=ratio,
                 private_ratio=private / full_bytes)


if __name__ == "__main__":
    main()
