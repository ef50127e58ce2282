"""The ``mrlsearch`` command line: build, query and tune an index from .npy files.

Exit codes: 0 ok, 1 error (one line on stderr, the traceback only with ``--debug``), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from ._errors import MRLError
from .classifier import Classifier
from .searcher import Searcher

__all__ = ["main"]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints (got {text!r})") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int (got {text!r})")
    return value


def _stages(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in part.split(":")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dim:shortlist,... (got {text!r})") from None


def _load_npy(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\n") for line in handle]
    return [line for line in lines if line.strip()]


def _cmd_index(args: argparse.Namespace) -> None:
    if args.model:
        from .encoder import Encoder

        encoder = Encoder(args.model)
        vectors = encoder.encode(_read_lines(args.vectors), progress=True)
        if args.dims is None:
            args.dims = encoder.dims
        if args.metric is None:
            args.metric = encoder.metric
    else:
        vectors = _load_npy(args.vectors)
    args.metric = args.metric or "cosine"
    if vectors.ndim != 2:
        raise MRLError(f"'VECTORS' must be a 2-D array (got shape {vectors.shape})")
    searcher = Searcher(vectors.shape[1], args.dims, metric=args.metric,
                        index_dims=args.index_dims, M=args.M,
                        ef_construction=args.ef_construction, dtype=args.dtype)
    searcher.add(vectors, progress=True)
    searcher.save(args.out)
    print(f"indexed {len(searcher)} vectors into {args.out}: {searcher!r}")


def _cmd_query(args: argparse.Namespace) -> None:
    searcher = Searcher.load(args.index, mmap=args.mmap)
    if args.text is not None:
        if not args.model:
            raise MRLError("--text needs --model MODEL_DIR to encode the query")
        from .encoder import Encoder

        queries = Encoder(args.model).encode(list(args.text))
    elif args.queries is not None:
        queries = _load_npy(args.queries)
    else:
        raise MRLError("give QUERIES.npy or --text")
    result = searcher.funnel(queries, k=args.k, stages=args.stages)
    if args.json:
        json.dump({"ids": result.ids.tolist(), "scores": result.scores.tolist()}, sys.stdout)
        print()
        return
    for row in range(len(result)):
        hits = ", ".join(f"{i}:{s:.4f}" for i, s in result[row].to_list())
        print(f"{row}\t{hits}")


def _cmd_tune(args: argparse.Namespace) -> None:
    searcher = Searcher.load(args.index)
    plan = searcher.tune(_load_npy(args.queries), k=args.k, target_recall=args.target_recall,
                         progress=True)
    print(plan)
    if args.save:
        searcher.save(args.index)
        print(f"saved the plan into {args.index}/manifest.json")


def _cmd_cascade(args: argparse.Namespace) -> None:
    classifier = Classifier.load(args.classifier)
    if args.calibrate:
        x_val, y_val = (_load_npy(p) for p in args.calibrate)
        result = classifier.calibrate(x_val, y_val, max_drop=args.max_drop,
                                      objective=args.objective)
        print(f"calibrated: accuracy {result.accuracy:.4f} (full dim {result.full_accuracy:.4f}) "
              f"at expected dim {result.expected_dim:.1f}; thresholds "
              + ", ".join(f"{d}:{t:.3f}" for d, t in zip(classifier.dims, result.thresholds)))
        if args.save:
            classifier.save(args.classifier)
            print(f"saved the thresholds into {args.classifier}")
    result = classifier.cascade(_load_npy(args.x), confidence=args.confidence)
    if args.json:
        json.dump({"labels": result.labels.tolist(), "dims": result.dims.tolist(),
                   "confidence": result.confidence.tolist()}, sys.stdout)
        print()
        return
    print(f"{len(result.labels)} rows, expected dim {result.expected_dim:.1f} of "
          f"{classifier.dims[-1]}")
    for stage in result.stats:
        print(f"  dim {stage.dim:>5}: {stage.rows_stopped:>8} rows stopped ({stage.share:.1%})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .benchmark import compare

    rng = np.random.default_rng(args.seed)
    if Path(args.source).is_dir():
        source = Searcher.load(args.source, mmap=args.mmap)
        if args.queries is None:
            if len(source) < 8:
                raise MRLError(f"the index holds {len(source)} vectors; bench needs at least 8")
            live_ids = source.ids()
            picked = rng.choice(live_ids, size=min(args.n_queries, len(live_ids)), replace=False)
            queries = source.get(picked)
            print(f"queries: {len(queries)} stored vectors (each finds itself; pass --queries "
                  f"for real ones)")
    else:
        vectors = _load_npy(args.source)
        if vectors.ndim != 2:
            raise MRLError(f"'SOURCE' must be a 2-D array (got shape {vectors.shape})")
        source = vectors
        if args.queries is None:
            if len(vectors) < 2 * args.n_queries:
                raise MRLError(f"'SOURCE' has {len(vectors)} rows: too few to hold out "
                               f"{args.n_queries} queries (use --n-queries or --queries)")
            held_out = rng.choice(len(vectors), size=args.n_queries, replace=False)
            queries = vectors[held_out]
            source = np.delete(vectors, held_out, axis=0)
            print(f"queries: {len(queries)} rows held out of {args.source} (not indexed)")
    if args.queries is not None:
        queries = _load_npy(args.queries)
    report = compare(source, queries, k=args.k, target_recall=args.target_recall,
                     metric=args.metric, index_dims=args.index_dims, methods=args.methods)
    print()
    print(report.table())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "bench.json")
        wrote = [str(out / "bench.json")]
        if report.plot(out / "bench.png"):
            wrote.append(str(out / "bench.png"))
        else:
            print("no plot: matplotlib is not installed")
        print("wrote " + ", ".join(wrote))


def _methods(text: str) -> tuple[str, ...]:
    from .benchmark import METHODS

    names = tuple(part for part in text.split(",") if part)
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected some of {','.join(METHODS)} (got {text!r})")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrlsearch", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="build an index from a .npy file (or texts)")
    index.add_argument("vectors", help="(n, dim) float .npy file, or a text file with --model")
    index.add_argument("--model", default=None,
                       help="model directory: encode VECTORS as a text file, one text a line")
    index.add_argument("--out", required=True, help="index directory to write")
    index.add_argument("--dims", type=_int_list, default=None, help="nesting dims, e.g. 16,32,64")
    index.add_argument("--index-dims", type=_int_list, default=None, help="dims with an HNSW graph")
    index.add_argument("--metric", choices=("cosine", "ip", "l2"), default=None,
                       help="default: the model's metric, else cosine")
    index.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    index.add_argument("--M", type=int, default=16)
    index.add_argument("--ef-construction", type=int, default=200)
    index.set_defaults(func=_cmd_index)

    query = commands.add_parser("query", help="funnel search with a (q, dim) .npy of queries")
    query.add_argument("index", help="index directory")
    query.add_argument("queries", nargs="?", default=None, help="(q, dim) or (dim,) .npy file")
    query.add_argument("--text", action="append", default=None,
                       help="a text query (repeatable); needs --model")
    query.add_argument("--model", default=None, help="model directory for --text")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--stages", type=_stages, default=None, help="e.g. 16:200,64:50,384:10")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    query.add_argument("--mmap", action="store_true", help="memory-map the vectors")
    query.set_defaults(func=_cmd_query)

    tune = commands.add_parser("tune", help="find the fastest stages that meet a recall target")
    tune.add_argument("index", help="index directory")
    tune.add_argument("queries", help="(q, dim) .npy of representative queries")
    tune.add_argument("-k", type=int, default=10)
    tune.add_argument("--target-recall", type=float, default=0.95)
    tune.add_argument("--save", action="store_true", help="store the plan in the index")
    tune.set_defaults(func=_cmd_tune)

    cascade = commands.add_parser("cascade", help="classify rows with a cascade classifier")
    cascade.add_argument("classifier", help="classifier .npz")
    cascade.add_argument("x", help="(n, dim) .npy of embeddings")
    cascade.add_argument("--calibrate", nargs=2, metavar=("X_VAL", "Y_VAL"),
                         help="calibrate thresholds first on these .npy files")
    cascade.add_argument("--max-drop", type=float, default=0.005)
    cascade.add_argument("--objective", choices=("expected_dim", "compute"),
                         default="expected_dim", help="what --calibrate minimises")
    cascade.add_argument("--confidence", choices=("max_prob", "margin"), default="max_prob")
    cascade.add_argument("--save", action="store_true", help="store calibrated thresholds")
    cascade.add_argument("--json", action="store_true", help="print labels as JSON")
    cascade.set_defaults(func=_cmd_cascade)

    bench = commands.add_parser(
        "bench", help="funnel vs hnswlib full-dim vs exact vs faiss on your data",
        description="Side-by-side recall@k and queries/s of the tuned funnel, hnswlib at full "
                    "dim, exact numpy search and (when installed) a faiss funnel. Half of the "
                    "queries tune every method to the target recall, half measure.")
    bench.add_argument("source", help="index directory or (n, dim) .npy of vectors")
    bench.add_argument("--queries", default=None,
                       help="(q, dim) .npy of queries (default: --n-queries rows held out of "
                            "the vectors, or sampled from the index)")
    bench.add_argument("--n-queries", type=_positive_int, default=1000)
    bench.add_argument("-k", type=_positive_int, default=10)
    bench.add_argument("--target-recall", type=float, default=0.95)
    bench.add_argument("--metric", choices=("cosine", "ip", "l2"), default="cosine",
                       help="for a .npy source (an index keeps its own)")
    bench.add_argument("--index-dims", type=_int_list, default=None,
                       help="for a .npy source: dims with an HNSW graph")
    bench.add_argument("--methods", type=_methods, default=("funnel", "exact", "hnswlib", "faiss"),
                       help="comma-separated subset of funnel,exact,hnswlib,faiss")
    bench.add_argument("--out", default=None, help="directory for bench.json and bench.png")
    bench.add_argument("--mmap", action="store_true", help="memory-map an index's vectors")
    bench.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (MRLError, ValueError, TypeError, OSError) as exc:
        if args.debug:
            raise
        print(f"mrlsearch: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
