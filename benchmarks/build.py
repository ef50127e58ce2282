"""Build time: where ``Searcher.build`` spends it, against hnswlib at full dim and at prefixes.

The build target (>= 3x faster than hnswlib at full dim) asks what a prefix graph can save.
For each data set this measures, in one process: hnswlib's build (``add_items``, M=16,
ef_construction=200, every core) over every candidate prefix of the vectors and over the full
dim, and ``Searcher.build`` with the seconds of each of its steps (the sample estimate, ``add``
of the chosen graphs and codes, ``tune``) and the graph dim it chose. The fastest prefix
graph bounds what any plan over hnswlib graphs could gain in build time.

    python benchmarks/build.py --out benchmarks/results/build.json
    python benchmarks/build.py --datasets minilm-mrl-docstrings     # a quick look
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import dataset_parser, graph_versions, write_report
from funnel import load

from mrlsearch import Searcher
from mrlsearch.benchmark import hnswlib_build

DATASETS = ("wordllama-docstrings", "minilm-mrl-docstrings", "synthetic-768", "synthetic-2048")
PREFIXES = (32, 64, 128, 256)


def bench(name: str, args) -> dict:
    vectors, queries, label = load(name, args.n, args.queries)
    dim = vectors.shape[1]
    print(f"\n=== {label} ===", flush=True)
    hnswlib_s = {}
    for graph_dim in [d for d in PREFIXES if d < dim] + [dim]:
        prefix = np.ascontiguousarray(vectors[:, :graph_dim])
        # every core, as Searcher.build's add uses
        _, hnswlib_s[graph_dim] = hnswlib_build(prefix, "cosine", M=args.M,
                                                ef_construction=args.ef_construction,
                                                threads=-1)
        print(f"  hnswlib over {graph_dim:4d} dims: {hnswlib_s[graph_dim]:6.2f} s", flush=True)
    started = time.perf_counter()
    searcher = Searcher.build(vectors, queries=queries[: args.queries], k=10, target_recall=0.95,
                              M=args.M, ef_construction=args.ef_construction, progress=False)
    total = time.perf_counter() - started
    steps = searcher.build_report["seconds"]
    step_text = ", ".join(f"{step} {seconds:.2f}" for step, seconds in steps.items())
    print(f"  Searcher.build: {total:.2f} s ({step_text}); graphs "
          f"{searcher.build_report['graphs_built']} linked by "
          f"{searcher.link_dim or 'their own dim'}, plan {searcher.plan}", flush=True)
    fastest = min(hnswlib_s, key=hnswlib_s.get)
    return {"name": name, "label": label, "dim": dim, "hnswlib_s": hnswlib_s,
            "searcher_build_s": total, "steps_s": steps,
            "graphs_built": searcher.build_report["graphs_built"],
            "link_dim": searcher.link_dim,
            "plan": searcher.plan.to_dict(),
            "vs_hnswlib": hnswlib_s[dim] / total, "fastest_prefix": fastest,
            "fastest_prefix_vs_full": hnswlib_s[dim] / hnswlib_s[fastest]}


def main() -> None:
    args = dataset_parser(__doc__.splitlines()[0], DATASETS, out="benchmarks/results/build.json",
                          queries_help="tuning queries").parse_args()
    datasets = [bench(name, args) for name in args.datasets]
    write_report(args.out, "build", graph_versions(), M=args.M,
                 ef_construction=args.ef_construction, queries=args.queries,
                 threads=os.cpu_count(), datasets=datasets)


if __name__ == "__main__":
    main()
