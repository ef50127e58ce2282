"""Sharded search on a local Ray cluster: 1 vs 2 vs 4 shards, plus a sizing table for 100M / 1B.

Synthetic MRL-like vectors (``synthetic_mrl``, decay 1.0) stored as float16, one HNSW graph
over the first ``--index-dim`` coordinates. A single in-process ``Searcher`` over all vectors is
built and tuned first (recall@10 >= 0.95 on the tuning queries); its plan is then set on every
sharded searcher, so all configurations run the same plan. For each shard count the script
measures:

* build: ``ShardedSearcher.build`` from a ``.npy`` file (parallel Ray tasks, each reserving
  ``cpus / n_shards`` CPUs) and a separate ``load`` (one actor per shard);
* single queries: wall time of ``funnel`` per query end to end, the time the slowest shard spent
  in its Searcher call, and the rest (fan-out, Ray transfers, merge) as the overhead;
* batches: queries/s of ``search_batches`` (pipelined batches of ``--batch-size``);
* recall@10 of the merged results against exact search over all vectors;
* per-shard cost: each shard's directory loaded in this process and timed single-threaded on
  the test batch (the figure the sizing table grows).

A small 768-dim index (``--probe-n`` vectors, same graph dim, tuned to the same target) gives the
measured per-vector memory and per-query cost at 768 dims that the sizing table scales.

    python benchmarks/distributed.py --n 200000 --out benchmarks/results/distributed.json
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import best_time, graph_versions, write_report

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl

RAM_PARTS = ("hnsw_", "norms.npy", "ids.npy", "deleted.npy")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def directory_bytes(path: Path) -> dict:
    """Bytes of one index directory: what load keeps in RAM, and the (mmap-able) vectors."""
    ram = sum(p.stat().st_size for p in path.iterdir() if p.name.startswith(RAM_PARTS))
    graphs = sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("hnsw_"))
    vectors = (path / "vectors.npy").stat().st_size
    return {"ram_bytes": ram, "graph_bytes": graphs, "vector_bytes": vectors}


def single_thread_seconds(path: str, queries: np.ndarray, plan, k: int) -> float:
    """Seconds per query of one shard, loaded here (mmap) and run on one thread, batch of all
    test queries, best of 3."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        shard = Searcher.load(path, mmap=True)
        seconds, _ = best_time(lambda: shard.funnel(queries, k, stages=plan, num_threads=1),
                               repeats=5)
    finally:
        numba.set_num_threads(previous)
    return seconds / queries.shape[0]


def measure_single(searcher, queries: np.ndarray, plan, k: int) -> dict:
    """Per-query wall time, the slowest shard's time and the overhead, one query per call."""
    wall, shard, merge = [], [], []
    for query in queries:
        result = searcher.funnel(query, k, stages=plan)
        wall.append(result.wall_seconds)
        shard.append(max(result.shard_seconds))
        merge.append(result.merge_seconds)
    wall, shard, merge = map(np.asarray, (wall, shard, merge))
    return {"p50_ms": float(np.median(wall) * 1e3), "p99_ms": float(np.percentile(wall, 99) * 1e3),
            "shard_p50_ms": float(np.median(shard) * 1e3),
            "overhead_p50_ms": float(np.median(wall - shard) * 1e3),
            "merge_p50_us": float(np.median(merge) * 1e6),
            "qps_single": float(len(wall) / wall.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--index-dim", type=int, default=32)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--tune-queries", type=int, default=300)
    parser.add_argument("--test-queries", type=int, default=1000)
    parser.add_argument("--single-queries", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--stream-queries", type=int, default=10_000)
    parser.add_argument("--probe-n", type=int, default=100_000)
    parser.add_argument("--probe-dim", type=int, default=768)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--sharded-tune", action=argparse.BooleanOptionalAction, default=True,
                        help="also run ShardedSearcher.tune on the largest shard count")
    # sizing assumptions (stated in the output)
    parser.add_argument("--node-ram-gb", type=float, default=64.0)
    parser.add_argument("--node-cores", type=int, default=16)
    parser.add_argument("--ram-fraction", type=float, default=0.75)
    parser.add_argument("--shard-vectors", type=int, default=25_000_000)
    parser.add_argument("--node-iops", type=float, default=500_000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where shards go (default: a temp dir)")
    parser.add_argument("--commit", default=None, help="code version to record")
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()

    import ray

    from mrlsearch.distributed import ShardedSearcher

    k = 10
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mrl-distributed-"))
    work.mkdir(parents=True, exist_ok=True)
    started_all = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    options = {"metric": "cosine", "index_dims": (args.index_dim,), "M": args.M,
               "ef_construction": args.ef_construction, "dtype": "float16"}

    # ---------------------------------------------------------------- data and single node
    print(f"=== {args.n:,} x {args.dim}, float16, graph over {args.index_dim} dims; "
          f"{args.cpus} CPUs ===", flush=True)
    n_queries = args.tune_queries + args.test_queries
    vectors, queries = synthetic_mrl(args.n, args.dim, n_queries=n_queries, decay=args.decay,
                                     seed=args.seed)
    vectors = vectors.astype(np.float16)
    source = work / "vectors.npy"
    np.save(source, vectors)
    tuning, test = queries[:args.tune_queries], queries[args.tune_queries:]
    single = Searcher(args.dim, **options)
    started = time.perf_counter()
    single.add(vectors, progress=False)
    single_build_s = time.perf_counter() - started
    del vectors
    gc.collect()
    started = time.perf_counter()
    plan = single.tune(tuning, k, 0.95, progress=False)
    single_tune_s = time.perf_counter() - started
    truth = single.exact(test, k)
    batch_s, result = best_time(lambda: single.funnel(test, k, stages=plan))
    one = test[: args.single_queries]
    times = []
    for query in one:
        t0 = time.perf_counter()
        single.funnel(query, k, stages=plan)
        times.append(time.perf_counter() - t0)
    times = np.asarray(times)
    reference = {"build_s": single_build_s, "tune_s": single_tune_s, "plan": str(plan),
                 "plan_dict": plan.to_dict(), "recall": result.recall(truth),
                 "qps_batch": test.shape[0] / batch_s,
                 "p50_ms": float(np.median(times) * 1e3),
                 "p99_ms": float(np.percentile(times, 99) * 1e3),
                 "qps_single": float(len(times) / times.sum())}
    print(f"  single node: build {single_build_s:.1f}s, plan {plan}, recall "
          f"{reference['recall']:.3f}, batch {reference['qps_batch']:,.0f} q/s, single p50 "
          f"{reference['p50_ms']:.2f} ms", flush=True)
    del single, result
    gc.collect()

    # ---------------------------------------------------------------- shard counts
    stream = np.concatenate([test] * math.ceil(args.stream_queries / test.shape[0]))
    stream = stream[: args.stream_queries]
    rows = []
    sharded_tune = None
    for n_shards in args.shards:
        print(f"\n--- {n_shards} shard(s) ---", flush=True)
        out = work / f"shards-{n_shards}"
        if out.exists():
            shutil.rmtree(out)
        cpus_each = args.cpus / n_shards
        started = time.perf_counter()
        sharded = ShardedSearcher.build(source, out, n_shards=n_shards, build_cpus=cpus_each,
                                        num_cpus=cpus_each, progress=False, **options)
        build_total_s = time.perf_counter() - started
        sharded.close()
        started = time.perf_counter()
        sharded = ShardedSearcher.load(out, num_cpus=cpus_each)
        load_s = time.perf_counter() - started
        sharded.plan = plan  # the single node's plan, on every shard
        merged = sharded.funnel(test, k)
        recall = merged.recall(truth)
        sharded.funnel(one[:20], k)  # warm-up
        single_stats = measure_single(sharded, one, None, k)
        batch_s, _ = best_time(lambda: sharded.funnel(test, k), repeats=3)
        started = time.perf_counter()
        for _ in sharded.search_batches(stream, k=k, batch_size=args.batch_size,
                                        method="funnel", progress=False):
            pass
        stream_s = time.perf_counter() - started
        sizes = [directory_bytes(Path(p)) for p in sharded.paths]
        shard_cost = single_thread_seconds(sharded.paths[0], test, plan, k)
        row = {"n_shards": n_shards, "vectors_per_shard": args.n / n_shards,
               "build_total_s": build_total_s, "load_s": load_s,
               "build_s": build_total_s - load_s, "recall": recall,
               "qps_batch": test.shape[0] / batch_s, "qps_stream": len(stream) / stream_s,
               "shard_single_thread_us": shard_cost * 1e6,
               "shard_ram_mb": float(np.mean([s["ram_bytes"] for s in sizes]) / 2**20),
               "shard_vectors_mb": float(np.mean([s["vector_bytes"] for s in sizes]) / 2**20),
               **single_stats}
        print(f"  build {row['build_s']:.1f}s + load {load_s:.1f}s; recall {recall:.3f}; "
              f"single p50 {row['p50_ms']:.2f} ms (slowest shard {row['shard_p50_ms']:.2f} ms, "
              f"overhead {row['overhead_p50_ms']:.2f} ms, merge {row['merge_p50_us']:.0f} us); "
              f"batch {row['qps_batch']:,.0f} q/s, stream {row['qps_stream']:,.0f} q/s; "
              f"one shard single-thread {row['shard_single_thread_us']:.0f} us/query",
              flush=True)
        if args.sharded_tune and n_shards == max(args.shards):
            started = time.perf_counter()
            tuned = sharded.tune(tuning, k, 0.95, progress=False)
            tune_s = time.perf_counter() - started
            tuned_result = sharded.funnel(test, k)
            tuned_batch_s, _ = best_time(lambda: sharded.funnel(test, k), repeats=3)
            sharded_tune = {"n_shards": n_shards, "tune_s": tune_s, "plan": str(tuned),
                            "recall": tuned_result.recall(truth),
                            "qps_batch": test.shape[0] / tuned_batch_s}
            print(f"  sharded tune ({tune_s:.0f}s): {tuned}; recall on test "
                  f"{sharded_tune['recall']:.3f}, batch {sharded_tune['qps_batch']:,.0f} q/s",
                  flush=True)
        sharded.close()
        rows.append(row)
        shutil.rmtree(out)
    source.unlink()
    total_s = time.perf_counter() - started_all

    # ---------------------------------------------------------------- 768-dim probe
    print(f"\n--- {args.probe_dim}-dim probe: {args.probe_n:,} vectors ---", flush=True)
    probe_vectors, probe_queries = synthetic_mrl(args.probe_n, args.probe_dim, n_queries=600,
                                                 decay=args.decay, seed=args.seed + 1)
    probe = Searcher(args.probe_dim, **options)
    started = time.perf_counter()
    probe.add(probe_vectors.astype(np.float16), progress=False)
    probe_build_s = time.perf_counter() - started
    del probe_vectors
    probe_plan = probe.tune(probe_queries[:300], k, 0.95, progress=False)
    probe_truth = probe.exact(probe_queries[300:], k)
    probe_recall = probe.funnel(probe_queries[300:], k, stages=probe_plan).recall(probe_truth)
    probe_dir = work / "probe"
    probe.save(probe_dir)
    del probe
    gc.collect()
    probe_cost = single_thread_seconds(str(probe_dir), probe_queries[300:], probe_plan, k)
    probe_sizes = directory_bytes(probe_dir)
    shutil.rmtree(probe_dir)
    probe_row = {"n": args.probe_n, "dim": args.probe_dim, "build_s": probe_build_s,
                 "plan": str(probe_plan), "plan_dict": probe_plan.to_dict(),
                 "recall": probe_recall, "single_thread_us": probe_cost * 1e6,
                 "ram_bytes_per_vector": probe_sizes["ram_bytes"] / args.probe_n,
                 "graph_bytes_per_vector": probe_sizes["graph_bytes"] / args.probe_n,
                 "vector_bytes_per_vector": probe_sizes["vector_bytes"] / args.probe_n}
    print(f"  plan {probe_plan}, recall {probe_recall:.3f}, single-thread "
          f"{probe_cost * 1e6:.0f} us/query; RAM {probe_row['ram_bytes_per_vector']:.0f} B/vector "
          f"(graph {probe_row['graph_bytes_per_vector']:.0f}), vectors "
          f"{probe_row['vector_bytes_per_vector']:.0f} B/vector", flush=True)

    # ---------------------------------------------------------------- sizing
    # per-shard single-thread cost against shard size at the base dim, same plan: a power law
    # cost ~ n^alpha fitted on the shard counts measured here
    sizes = np.array([r["vectors_per_shard"] for r in rows])
    costs = np.array([r["shard_single_thread_us"] for r in rows])
    if len(rows) >= 2:
        alpha = float(np.polyfit(np.log(sizes), np.log(costs), 1)[0])
        alpha_source = "fitted"
    else:
        alpha, alpha_source = 0.5, "assumed (one shard count only)"
    alpha = min(max(alpha, 0.0), 1.0)
    growth = (args.shard_vectors / args.probe_n) ** alpha
    shard_cost_us = probe_row["single_thread_us"] * growth
    ram_per_shard = probe_row["ram_bytes_per_vector"] * args.shard_vectors
    usable = args.node_ram_gb * 2**30 * args.ram_fraction
    shards_per_node = max(1, int(usable // ram_per_shard))
    shortlist = int(probe_plan.to_dict()["stages"][0][-1])
    overhead_ms = rows[-1]["overhead_p50_ms"]
    sizing = []
    for total in (100_000_000, 1_000_000_000):
        n_shards = math.ceil(total / args.shard_vectors)
        per_node = min(shards_per_node, n_shards)
        nodes = math.ceil(n_shards / per_node)
        cpu_qps = args.node_cores / (per_node * shard_cost_us * 1e-6)
        page_cache = max(0.0, args.node_ram_gb * 2**30 - per_node * ram_per_shard)
        cached = min(1.0, page_cache / (per_node * args.shard_vectors
                                        * probe_row["vector_bytes_per_vector"]))
        misses = per_node * shortlist * (1.0 - cached)
        io_qps = args.node_iops / misses if misses > 0 else math.inf
        sizing.append({
            "vectors": total, "dim": args.probe_dim, "n_shards": n_shards,
            "vectors_per_shard": args.shard_vectors,
            "ram_gb_per_shard": ram_per_shard / 2**30,
            "vectors_gb_per_shard": args.shard_vectors
            * probe_row["vector_bytes_per_vector"] / 2**30,
            "shards_per_node": per_node, "nodes": nodes,
            "shard_cost_us": shard_cost_us, "qps_per_node_cpu": cpu_qps,
            "page_cache_hit": cached, "qps_per_node_io": io_qps,
            "qps_per_node": min(cpu_qps, io_qps)})
    assumptions = [
        f"node: {args.node_ram_gb:.0f} GB RAM, {args.node_cores} cores, local NVMe with "
        f"{args.node_iops:,.0f} random 4 KiB reads/s",
        f"{args.ram_fraction:.0%} of a node's RAM for what a shard keeps in RAM (graph, prefix "
        "norms, ids, tombstones, as measured on the probe's files); vectors float16 "
        "memory-mapped, the rest of RAM is page cache for them",
        f"{args.shard_vectors:,} vectors per shard, one {args.index_dim}-dim HNSW graph "
        f"(M={args.M}), plan shape as tuned on the {args.probe_dim}-dim probe "
        f"({probe_plan}), same recall target 0.95",
        f"single-thread cost per query and shard: measured on the {args.probe_n:,}-vector "
        f"{args.probe_dim}-dim probe ({probe_row['single_thread_us']:.0f} us), grown to "
        f"{args.shard_vectors:,} vectors as n^alpha, alpha={alpha:.2f} {alpha_source} on the "
        f"{args.dim}-dim shard costs measured here at the same plan (x{growth:.2f}); the plan "
        "is assumed to keep its recall at that size (optimistic: in benchmarks/scale.py the "
        "tuned ef doubled from 100k to 1M vectors)",
        "every query visits every shard; a node's cores are shared by its shards, so CPU QPS "
        "per node = cores / (shards per node x cost per shard); more QPS needs replicas",
        f"I/O bound: a query reads about one page per first-stage candidate ({shortlist}) per "
        "shard that misses the page cache; cache hit rate = page cache / vector bytes on the "
        "node (uniform access)",
        f"the driver adds the fan-out + merge overhead measured here ({overhead_ms:.2f} ms per "
        "single query at the largest shard count) to latency; batches amortise it",
    ]
    print("\n" + "\n".join(f"assumption: {a}" for a in assumptions))
    for s in sizing:
        print(f"  {s['vectors']:>13,} x {s['dim']}: {s['n_shards']} shards of "
              f"{s['ram_gb_per_shard']:.1f} GB RAM + {s['vectors_gb_per_shard']:.0f} GB mmap, "
              f"{s['shards_per_node']} per node, {s['nodes']} node(s); QPS/node CPU "
              f"{s['qps_per_node_cpu']:,.0f}, I/O {s['qps_per_node_io']:,.0f} (cache hit "
              f"{s['page_cache_hit']:.0%})")
    write_report(args.out, "distributed", {**graph_versions(), "ray": ray.__version__},
                 n=args.n, dim=args.dim, decay=args.decay, index_dim=args.index_dim, M=args.M,
                 ef_construction=args.ef_construction, cpus=args.cpus,
                 tune_queries=args.tune_queries, test_queries=args.test_queries,
                 single_queries=args.single_queries, batch_size=args.batch_size,
                 stream_queries=len(stream), single_node=reference, rows=rows,
                 sharded_tune=sharded_tune, probe=probe_row, sizing=sizing,
                 sizing_fit={"alpha": alpha, "alpha_source": alpha_source, "growth": growth},
                 assumptions=assumptions, seconds_main_part=total_s, commit=args.commit,
                 peak_rss_mb_driver=peak_rss_mb())
    ray.shutdown()


if __name__ == "__main__":
    main()
