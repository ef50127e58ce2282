"""Render docs/benchmarks.md from the JSON files the benchmarks wrote (never by hand).

    python benchmarks/report.py [--results benchmarks/results] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TARGETS = {
    "funnel": "at recall@10 >= 0.95 on unseen queries: single-query latency (1 thread) and "
              "batch QPS (2 threads) >= 1.5x hnswlib full dim on real MRL embeddings (256 and "
              "384 dims), >= 3x on synthetic 768-dim, >= 5x on synthetic 2048-dim; batch >= 1.5x "
              "faiss's prefix funnel and usearch i8; two threads >= 1.7x one; build >= 3x faster "
              "than hnswlib full dim",
    "build": ">= 3x faster than hnswlib full dim (from the funnel issue; the funnel section "
             "measures it on all four data sets)",
    "memory": "1M x 768 loaded with mmap=True: resident memory <= 0.3x plain hnswlib's index "
              "at full dim, at the same recall",
    "cascade": "expected dim <= 1/8 of full dim at <= 0.5 point accuracy drop; cascade rows/s "
               ">= 3x full-dim scoring for MRL-E heads at 1000 classes x 2048 dims",
    "encode": "onnxruntime CPU fp32 >= torch eager; int8 >= 1.5x fp32 with success@10 within "
              "1 point",
    "scale": "1M MRL-like vectors at dim >= 256 built and queried within 23 GiB; funnel QPS and "
             "build time from 10k to 1M against hnswlib full-dim",
    "load": "queries/s with 1, 2, 4 threads and while a writer adds 10 % more vectors; "
            "p50/p99 latency (a measurement, no target)",
    "train": "MRL per-dim accuracy >= FF - 1 point at every dim and >= FF + 5 points at the "
             "smallest dims; MRL-E step time <= 1.15x FF; docstring adapters: full dim >= raw "
             "- 0.5 point, every dim >= plain linear - 0.5 point, 16 dims >= raw + 15 points",
    "distributed": "1M vectors, 1 vs 2 vs 4 shards on this machine: fan-out + merge overhead "
                   "per query, batch throughput, build time; merged recall >= single-node "
                   "recall - 0.005 at the same plan; sizing for 100M and 1B vectors at 768 "
                   "dims from the measured per-shard figures",
}


def _fmt(value, digits=3):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]
    return lines


def _plan_text(stages) -> str:
    return " -> ".join(":".join(str(part) for part in stage) for stage in stages)


def funnel_section(report: dict) -> list[str]:
    out = ["## Funnel retrieval (`benchmarks/funnel.py`)", ""]
    out.append("Real MRL embeddings first: docstring paragraphs of the installed packages "
               "(`benchmarks/realdata.py`) embedded by WordLlama (MRL-trained, 256 dims) and by "
               "MiniLM followed by a linear Matryoshka adapter (384 dims); then synthetic "
               "MRL-like vectors (`synthetic_mrl`, spectrum `(1+i)^-0.8`). Half of the queries "
               "tune every method by one rule (one-sided 95 % lower bound of recall@10 >= "
               f"{report.get('target_recall', 0.95)} against exact full-dim search), the other, "
               "unseen half measures it, all in one process through "
               "`mrlsearch.benchmark.compare`. mrlsearch is `Searcher.build(vectors, "
               "queries=tuning half)`: it chooses the graph dim and the walk's precision itself. "
               "QPS batch: all unseen queries in one call on 2 threads (best of 3); QPS single: "
               "one query per call on 1 thread (mrlsearch and hnswlib full dim in alternating "
               "passes, each after an untimed one). `M=16, ef_construction=200` everywhere. Build "
               "s for mrlsearch includes its sampling, every graph it built and the tuning.")
    for data in report["datasets"]:
        out += ["", f"### {data['label']}", ""]
        rows = [[r["method"], r["recall"], f"{r['qps_batch']:,.0f}", f"{r['qps_single']:,.0f}",
                 "-" if r["build_s"] is None else f"{r['build_s']:.1f}",
                 f"{r['memory_mb']:.0f}", r["detail"]] for r in data["rows"]]
        out += _table(["method", "recall@10", "QPS batch", "QPS single", "build s", "MiB",
                       "setting"], rows)
        s = data["summary"]
        parts = []
        for key, name in (("hnswlib", "hnswlib full dim"), ("faiss", "faiss funnel"),
                          ("usearch_i8", "usearch i8"), ("usearch_f16", "usearch f16")):
            if f"vs_{key}_batch" in s:
                parts.append(f"{name} **{_fmt(s[f'vs_{key}_single'], 2)}x** single / "
                             f"**{_fmt(s[f'vs_{key}_batch'], 2)}x** batch")
        line = "mrlsearch against " + ", ".join(parts) + "."
        if "build_vs_hnswlib" in s:
            line += f" Build: hnswlib / mrlsearch = {_fmt(s['build_vs_hnswlib'], 2)}."
        if "thread_scaling" in s:
            line += (f" Single queries from two threads: {s['qps_2_threads']:,.0f} q/s against "
                     f"{s['qps_1_thread']:,.0f} from one (**{_fmt(s['thread_scaling'], 2)}x**")
            windows = s.get("thread_windows")
            if windows:  # alternating windows, best of each side; every window's ratio too
                line += (f", best of {len(windows)} alternating windows each; per window "
                         + ", ".join(f"{two / one:.2f}x" for one, two in windows))
            line += ")."
        out += ["", line]
        for note in data.get("notes", []):
            out += [f"* {note}"]
    out += ["", "![funnel](img/funnel.png)"]
    return out


def cascade_section(report: dict) -> list[str]:
    out = ["## Cascade classification (`benchmarks/cascade.py`)", "",
           f"Thresholds calibrated on a validation split with max_drop {report['max_drop']}, "
           "measured on a held-out split; rows/s of the whole batch (best of 3)."]
    for task in report["tasks"]:
        out += ["", f"### {task['task']}", ""]
        rows = [[r["method"], r["accuracy"], f"{r['expected_dim']:.1f}",
                 f"{r['rows_per_s']:,.0f}"] for r in task["rows"]]
        out += _table(["method", "accuracy", "expected dim", "rows/s"], rows)
        for label, s in task["objectives"].items():
            shares = ", ".join(f"{d}: {v:.3f}" for d, v in s["share_per_dim"].items() if v)
            out += ["", f"`{label}`: accuracy drop {s['accuracy_drop_points']:.2f} points "
                    f"(paired standard error {s['accuracy_drop_se_points']:.2f}), "
                    f"**{s['dim_reduction']:.1f}x** fewer "
                    f"dims on average, **{s['speedup_vs_full']:.2f}x** rows/s vs full dim; dims "
                    f"tested: {s['tested_dims']}; share of rows ending at each dim: {shares}."]
    if any("curve" in o for t in report["tasks"] for o in t["objectives"].values()):
        out += ["", "![cascade](img/cascade.png)"]
    for study in report.get("splits", []):
        out += ["", f"### Does the promise hold on new rows? {study['task']}, {study['splits']} "
                f"random splits", "",
                f"Per split: calibrate on {study['n_val']} validation rows, measure the accuracy "
                f"drop against full dim on {study['n_test']} held-out rows. \"over max_drop\": "
                "share of splits whose held-out drop exceeds max_drop (the margin aims at "
                "about 5 %).", ""]
        rows = []
        for max_drop, by_setting in study["summary"].items():
            for label, s in by_setting.items():
                rows.append([max_drop, label, f"{s['mean_drop'] * 100:+.2f}",
                             f"{s['worst_drop'] * 100:+.2f}",
                             f"{s['share_over_max_drop']:.0%}", f"{s['mean_expected_dim']:.1f}",
                             f"{s['share_full_dim']:.0%}", f"{s['max_calibrate_s']:.2f}"])
        out += _table(["max_drop", "calibration", "mean drop (points)", "worst drop (points)",
                       "over max_drop", "expected dim", "full dim chosen", "calibrate s (max)"],
                      rows)
    return out


def encode_section(report: dict) -> list[str]:
    out = ["## Inference (`benchmarks/encode.py`)", "",
           "Rows/s on the CPU (onnxruntime's CPUExecutionProvider; no GPU in this run). "
           "Mean cosine to torch per prefix dim from the export's validation; success@10: "
           "stdlib docstring summaries retrieving their own body among the test bodies. "
           "minilm-st: all-MiniLM-L6-v2 exported with `export_sentence_transformer` (int8: "
           "dynamic per-channel quantisation of the MatMuls), `Encoder.encode` with "
           "length-bucketed batches, next to `SentenceTransformer.encode` on the same texts "
           "(docstring summaries and bodies, at most 128 tokens)."]
    results = report["results"]
    mlp = [r for r in results if "rows_per_s_batch256" in r]
    if mlp:
        rows = [[r["backbone"], r["runtime"], f"{r['rows_per_s_batch1']:,.1f}",
                 f"{r['rows_per_s_batch256']:,.1f}",
                 ", ".join(f"{d}: {v}" for d, v in r.get("mean_cosine_vs_torch", {}).items())
                 or "-", _fmt(r.get("success@10"))] for r in mlp]
        out += [""] + _table(["backbone", "runtime", "rows/s batch 1", "rows/s batch 256",
                              "mean cosine vs torch per dim", "success@10"], rows)
    text = [r for r in results if "rows_per_s_batch32" in r]
    if text:
        tokens = next((r["mean_tokens"] for r in text if "mean_tokens" in r), None)
        out += ["", f"### MiniLM text model, batch 32 ({_fmt(tokens, 0)} tokens per text on "
                "average)", ""]
        rows = [[r["runtime"], f"{r['rows_per_s_batch1']:,.1f}",
                 f"{r['rows_per_s_batch32']:,.1f}",
                 f"{r['speedup_vs_fp32_batch32']:.2f}x" if "speedup_vs_fp32_batch32" in r
                 else "-", _fmt(r.get("model_mb"), 1), _fmt(r.get("success@10"))]
                for r in text]
        out += _table(["runtime", "rows/s batch 1", "rows/s batch 32", "vs fp32 (batch 32)",
                       "model MB", "success@10"], rows)
    return out


def train_section(report: dict) -> list[str]:
    results = report["results"]
    out = ["## Training (`benchmarks/train.py`)", ""]
    if "digits_linear_top1" in results:
        out += [f"### digits: linear top-1 per dim (mean of {results.get('digits_seeds', 1)} "
                "seeds)", ""]
        digits = results["digits_linear_top1"]
        dims = list(next(iter(digits.values())))
        out += _table(["model"] + dims, [[k] + [v[d] for d in dims] for k, v in digits.items()])
    # one table per docstring pair set: keys '<set>_recall@10', '<set>_pairs', '<set>_targets'
    pair_sets = sorted((k[: -len("_recall@10")] for k in results
                        if k.startswith("docstrings") and k.endswith("_recall@10")),
                       key=lambda name: results.get(f"{name}_pairs", {}).get("train", 0),
                       reverse=True)
    for name in pair_sets:
        doc = results[f"{name}_recall@10"]
        dims = list(next(iter(doc.values())))
        pairs = results.get(f"{name}_pairs", {})
        n_pairs = pairs.get("n_pairs") or sum(pairs.get(s, 0) for s in ("train", "val", "test"))
        out += ["", f"### docstrings (`{name}`): recall@10 per dim, {n_pairs:,} pairs "
                f"({pairs.get('train', '?'):,} training, {pairs.get('val', '?'):,} validation, "
                f"{pairs.get('test', '?'):,} test from held-out modules)", "",
                f"Pairs: {pairs.get('source', 'stdlib')}. Features: "
                f"{pairs.get('features', 'MiniLM')}. Adapters: the plain linear "
                "baseline (384x384, orthogonal init, symmetric InfoNCE over the dims, batch "
                "512, lr 2e-3, 4 epochs, last epoch) and `fit_adapter` (same loss and schedule, "
                "starts as the raw model, keeps the best validation epoch whose full-dim "
                "recall is within 0.5 point of the raw model's).", ""]
        out += _table(["model"] + dims, [[k] + [v[d] for d in dims] for k, v in doc.items()])
        targets = results.get(f"{name}_targets")
        if targets:
            def verdict(value: float, target: float) -> str:
                if value >= target - 1e-9:
                    return f"{value * 100:+.1f} pt (met)"
                return f"{value * 100:+.1f} pt (missed by {(target - value) * 100:.1f})"

            out += ["", "Targets (issue 15): full dim >= raw - 0.5 point, every dim >= plain "
                    "linear - 0.5 point, 16 dims >= raw + 15 points.", ""]
            out += _table(["adapter", "full dim vs raw", "worst dim vs plain linear",
                           "16 dims vs raw"],
                          [[k, verdict(v["full_dim_vs_raw"], -0.005),
                            verdict(v["worst_dim_vs_plain_linear"], -0.005),
                            verdict(v["at_16_vs_raw"], 0.15)] for k, v in targets.items()])
    if "step_seconds" in results:
        ratios = results["step_ratio_vs_ff"]
        seconds = results["step_seconds"]
        threads = results.get("step_threads")
        out += ["", "### training step time (batch 256, MLP 512 -> 2048, 1000 classes, dims "
                "8..2048" + (f", {threads} thread(s)" if threads else "") + ", best step; the "
                "models take turns step by step)", ""]
        out += _table(["model", "ms / step", "vs FF"],
                      [[k, f"{seconds[k] * 1e3:.1f}", f"{ratios[k]:.2f}x"] for k in seconds])
    return out


def load_section(report: dict) -> list[str]:
    out = ["## Concurrent load (`benchmarks/load.py`)", "",
           f"{report['n']:,} x {report['dim']} synthetic vectors (decay 1.0), tuned funnel "
           f"({_plan_text(report['plan']['stages'])}), one query per "
           "call from each thread, latency measured per call.", ""]
    rows = [[f"{r['threads']} readers" + (f" + writer (+{r['vectors_added']:,} vectors)"
                                         if r["writer"] else ""),
             f"{r['qps']:,.0f}", f"{r['p50_us']:,.0f}", f"{r['p99_us']:,.0f}"]
            for r in report["rows"]]
    out += _table(["load", "queries/s", "p50 us", "p99 us"], rows)
    out += ["", f"Recall@10 after the writes, same plan: {report['recall_after_writes']:.3f}."]
    return out


def _graph_dims(point: dict) -> str:
    """The graph dims a scale point's Searcher.build chose (older reports: one fixed dim)."""
    return "+".join(f"{d}d" for d in point.get("funnel_graph_dims", [])) or "-"


def _ratio(point: dict, key: str) -> str:
    """funnel / hnswlib of one scale point's figure, bold where the funnel is faster."""
    hnsw = point.get(f"hnswlib_{key}")
    if not hnsw:
        return "-"
    ratio = point[f"funnel_{key}"] / hnsw
    return f"**{ratio:.2f}x**" if ratio >= 1 else f"{ratio:.2f}x"


def scale_section(report: dict) -> list[str]:
    out = ["## Scale: 10k to 1M vectors (`benchmarks/scale.py`)", "",
           f"Synthetic MRL-like vectors at dim {report['dim']} (decay {report['decay']}). "
           f"At each size mrlsearch is `Searcher.build(vectors, dtype='float16')`, which picks "
           f"its graph dim and walk codes from the data (the *graph* column); hnswlib indexes "
           f"all {report['dim']} float32 dims. `M={report['M']}, "
           f"ef_construction={report['ef_construction']}` for both. At each size both are "
           f"tuned to recall@10 >= 0.95 (lower 95 % bound) on {report['queries'] // 2} queries "
           f"and measured on {report['queries'] // 2} others; single queries of the two in "
           f"alternating passes. Build s for mrlsearch is all of `Searcher.build` (sample, "
           f"graph, codes, tuning).",
           ""]
    rows = []
    for p in report["points"]:
        rows.append([f"{p['n']:,}", _graph_dims(p), f"{p['funnel_build_s']:.1f}",
                     _fmt(p.get("hnswlib_build_s"), 1), f"{p['funnel_recall']:.3f}",
                     _fmt(p.get("hnswlib_recall")), f"{p['funnel_qps_batch']:,.0f}",
                     _fmt(p.get("hnswlib_qps_batch"), 0), f"{p['funnel_qps_single']:,.0f}",
                     _fmt(p.get("hnswlib_qps_single"), 0), f"{p['funnel_memory_mb']:,.0f}",
                     _fmt(p.get("hnswlib_memory_mb"), 0), f"{p['peak_rss_mb']:,.0f}",
                     _ratio(p, "qps_single"), _ratio(p, "qps_batch")])
    out += _table(["n", "graph", "build s funnel", "build s hnswlib", "recall funnel",
                   "recall hnswlib", "QPS batch funnel", "QPS batch hnswlib",
                   "QPS single funnel", "QPS single hnswlib", "MiB funnel", "MiB hnswlib",
                   "peak RSS MiB", "single funnel / hnswlib", "batch funnel / hnswlib"], rows)
    stopped = report.get("hnswlib_stopped_at")
    out += ["", "Plans: " + "; ".join(f"{p['n']:,}: {p['funnel_plan']}"
                                      for p in report["points"]) + "."]
    if stopped:
        out += ["", f"hnswlib full-dim was not built from {stopped:,} vectors on: its build "
                f"time extrapolated from the previous size exceeded "
                f"{report['hnswlib_budget_s']:.0f} s."]
    out += ["", "![scale](img/scale.png)"]
    return out


def distributed_section(report: dict) -> list[str]:
    ref = report["single_node"]
    out = ["## Sharded search on Ray (`benchmarks/distributed.py`)", "",
           f"{report['n']:,} x {report['dim']} synthetic vectors (decay {report['decay']}), "
           f"float16, one HNSW graph over {report['index_dim']} dims (`M={report['M']}, "
           f"ef_construction={report['ef_construction']}`), local Ray cluster with "
           f"{report['cpus']} CPUs on this machine. A single in-process Searcher is tuned "
           f"(recall@10 >= 0.95, lower bound) and its plan ({ref['plan']}) is set on every "
           "sharded searcher. Single queries: one `funnel` call per query; *slowest shard* is "
           "the time spent inside the slowest shard's Searcher call, *overhead* the rest "
           "(fan-out, Ray transfers, merge). Batch: the "
           f"{report['test_queries']} test queries in one call (best of 3); stream: "
           f"`search_batches` over {report['stream_queries']:,} queries in batches of "
           f"{report['batch_size']}. *1 shard-thread us/query*: one shard's directory timed on "
           "one thread in the driver (the per-shard cost the sizing grows).", ""]
    rows = [["single node (in process)", f"{ref['build_s']:.1f}", "-", f"{ref['recall']:.3f}",
             f"{ref['p50_ms']:.2f}", "-", "-", f"{ref['qps_batch']:,.0f}", "-", "-"]]
    for r in report["rows"]:
        rows.append([f"{r['n_shards']} shard(s)", f"{r['build_s']:.1f}", f"{r['load_s']:.1f}",
                     f"{r['recall']:.3f}", f"{r['p50_ms']:.2f}", f"{r['shard_p50_ms']:.2f}",
                     f"{r['overhead_p50_ms']:.2f}", f"{r['qps_batch']:,.0f}",
                     f"{r['qps_stream']:,.0f}", f"{r['shard_single_thread_us']:.0f}"])
    out += _table(["setup", "build s", "load s", "recall@10", "single p50 ms",
                   "slowest shard ms", "overhead ms", "QPS batch", "QPS stream",
                   "1 shard-thread us/query"], rows)
    tuned = report.get("sharded_tune")
    if tuned:
        out += ["", f"`ShardedSearcher.tune` on {tuned['n_shards']} shards ({tuned['tune_s']:.0f} "
                f"s): {tuned['plan']}; recall@10 {tuned['recall']:.3f} on the test queries, "
                f"{tuned['qps_batch']:,.0f} QPS in batch."]
    probe = report["probe"]
    out += ["", f"### Sizing: 100M and 1B vectors at {probe['dim']} dims", "",
            f"Measured on a {probe['n']:,} x {probe['dim']} probe index (plan {probe['plan']}, "
            f"recall@10 {probe['recall']:.3f}): {probe['ram_bytes_per_vector']:.0f} B per "
            f"vector in RAM (graph {probe['graph_bytes_per_vector']:.0f} B), "
            f"{probe['vector_bytes_per_vector']:.0f} B per vector memory-mapped, "
            f"{probe['single_thread_us']:.0f} us per query on one thread.", ""]
    rows = [[f"{s['vectors']:,}", str(s["n_shards"]), f"{s['ram_gb_per_shard']:.1f}",
             f"{s['vectors_gb_per_shard']:.0f}", str(s["shards_per_node"]), str(s["nodes"]),
             f"{s['shard_cost_us']:.0f}", f"{s['qps_per_node_cpu']:,.0f}",
             f"{s['page_cache_hit']:.0%}", f"{s['qps_per_node_io']:,.0f}",
             f"{s['qps_per_node']:,.0f}"] for s in report["sizing"]]
    out += _table(["vectors", "shards", "RAM GB/shard", "mmap GB/shard", "shards/node",
                   "nodes", "us/query/shard", "QPS/node (CPU)", "page-cache hit",
                   "QPS/node (I/O)", "QPS/node"], rows)
    out += ["", "Assumptions:", ""] + [f"* {a}" for a in report["assumptions"]]
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the dev extra installs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)


def scale_plot(report: dict, path: Path) -> None:
    """Build time and QPS against n, funnel vs hnswlib full-dim (log-log)."""
    plt = _pyplot()

    points = report["points"]
    n = [p["n"] for p in points]
    figure, (build, qps) = plt.subplots(1, 2, figsize=(10, 4))
    build.plot(n, [p["funnel_build_s"] for p in points], "o-", color="C0",
               label="mrlsearch (Searcher.build, float16)")
    hn = [p for p in points if "hnswlib_build_s" in p]
    build.plot([p["n"] for p in hn], [p["hnswlib_build_s"] for p in hn], "s-", color="C1",
               label="hnswlib full dim")
    build.set(xscale="log", yscale="log", xlabel="vectors", ylabel="build seconds")
    build.legend(fontsize=8)
    for key, style, label in (("funnel_qps_batch", "o-", "funnel, batch"),
                              ("funnel_qps_single", "o--", "funnel, single query")):
        qps.plot(n, [p[key] for p in points], style, color="C0", label=label)
    for key, style, label in (("hnswlib_qps_batch", "s-", "hnswlib, batch"),
                              ("hnswlib_qps_single", "s--", "hnswlib, single query")):
        qps.plot([p["n"] for p in hn], [p[key] for p in hn], style, color="C1", label=label)
    qps.set(xscale="log", yscale="log", xlabel="vectors", ylabel="queries/s at recall@10 >= 0.95")
    qps.legend(fontsize=8)
    figure.suptitle(f"dim {report['dim']}, 2 CPU cores")
    _save(figure, path)


def funnel_plot(report: dict, path: Path) -> None:
    """Recall@10 against single-query QPS per dataset, one point per method."""
    plt = _pyplot()

    datasets = report["datasets"]
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.5),
                                squeeze=False)
    for axis, data in zip(axes[0], datasets):
        for row, marker in zip(data["rows"], "o^vDPX*hps"):
            color = "C0" if row["method"].startswith("mrlsearch") else None
            axis.scatter(row["qps_single"], row["recall"], marker=marker, s=45, zorder=3,
                         color=color, label=row["method"])
        axis.axhline(0.95, color="grey", lw=0.8, ls="--")
        axis.set(xscale="log", xlabel="queries/s (one query per call, 1 thread)",
                 ylabel="recall@10", title=data["label"].split(";")[0][:60])
        axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.legend(fontsize=7, loc="lower left")
    _save(figure, path)


#: What a memory report's load time holds, by ``Searcher.load``'s verify mode.
_VERIFY_NOTE = {"full": ", checksums included",
                "lazy": "; the vectors' checksum then ran on a background thread",
                "none": ", the vectors' checksum skipped"}


def memory_section(report: dict) -> list[str]:
    loaded, hnsw = report["loaded"], report["hnswlib"]
    usage = ", ".join(f"{part} {value / 2**20:,.1f}" for part, value in loaded["usage"].items())
    resident = (loaded["rss_after_queries"] - loaded["rss_before"]) / 2**20
    full = hnsw.get("scaled_index_bytes", hnsw["index_bytes"]) / 2**20
    return ["## Memory tiers (`benchmarks/memory.py`)", "",
            f"{report['n']:,} x {report['dim']} synthetic vectors (decay 0.8), graph and codes "
            f"over the {report['index_dim']}-dim prefix, plan "
            f"{_plan_text(report['plan']['stages'])}"
            f" (built in {report['build_s']:.0f} s). Saved, then loaded in a fresh process with "
            f"`mmap=True`, `verify={report.get('verify', 'full')!r}` ({loaded['load_s']:.1f} s"
            f"{_VERIFY_NOTE.get(report.get('verify', 'full'), '')}) and queried: recall@10 "
            f"{report['funnel_recall']:.3f} on the unseen queries. Resident growth of that "
            f"process: **{resident:,.0f} MiB**; `memory_usage()` in MiB: {usage}.", "",
            f"hnswlib at full dim keeps every float32 vector in its graph: {full:,.0f} MiB "
            f"({hnsw['how']}). Ratio mrlsearch mmap / hnswlib: "
            f"**{report['resident_ratio']:.2f}** counting every resident page of the process "
            f"(mapped file pages included), **{report.get('private_ratio', float('nan')):.2f}** "
            "counting its private (anonymous) memory, which is what it cannot give back: clean "
            "pages of the mapped vector file are shared page cache the kernel reclaims under "
            "pressure."]


def build_section(report: dict) -> list[str]:
    out = ["## Build time (`benchmarks/build.py`)", "",
           f"hnswlib's `add_items` (M={report['M']}, "
           f"ef_construction={report['ef_construction']}, {report.get('threads', 2)} threads) "
           "over prefixes of the same vectors and over the full dim, and `Searcher.build` "
           f"({report.get('queries', 500)} tuning queries) with the seconds of its steps, in one "
           "process. The fastest prefix graph bounds what any plan over an hnswlib graph could "
           "save.", ""]
    dims = sorted({int(d) for data in report["datasets"] for d in data["hnswlib_s"]})
    rows = []
    for data in report["datasets"]:
        by_dim = {int(d): v for d, v in data["hnswlib_s"].items()}
        steps = data["steps_s"]
        rows.append([data["label"]] + [f"{by_dim[d]:.2f}" if d in by_dim else "-" for d in dims]
                    + [f"{data['searcher_build_s']:.2f}",
                       f"{steps['estimate']:.2f} / {steps['add']:.2f} / {steps['tune']:.2f}",
                       str(data["graphs_built"]) + (f" linked by {data['link_dim']}"
                                                    if data.get("link_dim") else ""),
                       f"**{data['vs_hnswlib']:.2f}x**",
                       f"{data['fastest_prefix_vs_full']:.2f}x ({data['fastest_prefix']} dims)"])
    out += _table(["data"] + [f"hnswlib {d}d s" for d in dims]
                  + ["Searcher.build s", "estimate / add / tune s", "graphs built",
                     "hnswlib full / Searcher.build", "hnswlib full / fastest prefix"], rows)
    return out


SECTIONS = {"funnel": funnel_section, "build": build_section, "scale": scale_section,
            "cascade": cascade_section, "encode": encode_section, "train": train_section,
            "load": load_section, "distributed": distributed_section,
            "memory": memory_section}


def cascade_plot(report: dict, path: Path) -> None:
    """Accuracy against expected dim per task: calibration paths (validation rows) and the
    chosen points measured on the test rows."""
    plt = _pyplot()

    tasks = [t for t in report["tasks"] if any("curve" in o for o in t["objectives"].values())]
    if not tasks:
        return
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for axis, task in zip(axes[0], tasks):
        full = task["rows"][0]
        axis.axhline(full["accuracy"], color="grey", ls="--", lw=0.8,
                     label=f"full dim ({task['dims'][-1]}), test rows")
        rows = {r["method"]: r for r in task["rows"]}
        for color, (label, summary) in zip(("C0", "C1", "C2", "C3"),
                                           task["objectives"].items()):
            if "curve" not in summary:
                continue
            curve = np.array(summary["curve"])
            axis.plot(curve[:, 0], curve[:, 1], "-", color=color, lw=1, alpha=0.7,
                      label=f"{label}: path (validation)")
            chosen = rows[f"cascade ({label})"]
            axis.scatter(chosen["expected_dim"], chosen["accuracy"], color=color, zorder=3,
                         edgecolor="black", label=f"{label}: chosen (test)")
        axis.set(xscale="log", xlabel="expected dim", ylabel="accuracy",
                 title=task["task"].split(" (")[0])
        axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.legend(fontsize=6, loc="lower right")
    _save(figure, path)


PLOTS = {"funnel": funnel_plot, "scale": scale_plot, "cascade": cascade_plot}


def render(results_dir: Path) -> str:
    reports = {name: json.loads((results_dir / f"{name}.json").read_text())
               for name in SECTIONS if (results_dir / f"{name}.json").is_file()}
    first = next(iter(reports.values()))
    versions: dict = {}
    for report in reports.values():
        versions.update(report.get("versions", {}))
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/report.py` from the JSON in `benchmarks/results/`; "
             "rerun with `python benchmarks/run_all.py`. Every figure below was measured by "
             "those scripts, all methods of a table in one process on the same data.", "",
             f"* machine: {first['machine'].get('cpu_count')} CPU cores, "
             f"{first['machine'].get('platform')}, no GPU",
             "* dates: " + ", ".join(f"{n} {r.get('date')}" for n, r in reports.items()),
             "* versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), "",
             "Targets (from the issues) and whether they were met are discussed in "
             "[Reading the numbers](#reading-the-numbers).", ""]
    for name, report in reports.items():
        lines += SECTIONS[name](report) + ["", f"Target: {TARGETS[name]}.", ""]
    notes = results_dir / "NOTES.md"
    if notes.is_file():
        lines += ["## Reading the numbers", "", notes.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args()
    results = Path(args.results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(results))
    print(f"wrote {args.out}")
    for name, plot in PLOTS.items():
        source = results / f"{name}.json"
        if source.is_file():
            target = Path(args.out).parent / "img" / f"{name}.png"
            plot(json.loads(source.read_text()), target)
            print(f"wrote {target}")


if __name__ == "__main__":
    main()
