"""The ``mrlsearch`` command line: build, inspect, query and tune an index from .npy files.

Exit codes: 0 ok, 1 error (one line on stderr, the traceback only with ``--debug``), 2 usage
(a bad option value, e.g. ``-k 0`` or ``--M 1``), 130 interrupted, 141 stdout closed early
(``mrlsearch query ... | head -1``: the output stops quietly, like a program killed by SIGPIPE).

A text index (``mrlsearch index --text TEXTS.txt --model MODEL_DIR --out DIR``) remembers its
model in ``DIR.mrlsearch-cli.json`` beside the index directory, so ``mrlsearch query DIR --text
...`` needs no ``--model``. Line ``i`` of the text file (0-based, blank lines included) gets id
``i`` and is stored as its payload, which ``query`` prints with each hit.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._errors import MRLError
from ._format import MANIFEST, check_replaceable, read_json_file
from ._graphs import EF_CONSTRUCTION_RANGE, M_RANGE
from ._persist import FORMAT_NAME
from .classifier import Classifier
from .searcher import Searcher

__all__ = ["build_parser", "main"]

#: exit status when stdout is closed before the output is written (128 + SIGPIPE)
EXIT_BROKEN_PIPE = 141
SIDECAR_SUFFIX = ".mrlsearch-cli.json"
SIDECAR_FORMAT = "mrlsearch-cli"
#: defaults of options that only mean something with another one (None: not given)
_INDEX_K = 10
_INDEX_RECALL = 0.95
_CASCADE_MAX_DROP = 0.005
_BENCH_QUERIES = 1000


class _UsageError(MRLError):
    """Options that do not go together: exit 2 like argparse's own usage errors."""


# ---------------------------------------------------------------------- argument types
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints (got {text!r})") from None


def _int_range(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an int in [{low}, {high}] (got {text!r})")
        return value

    parse.__name__ = f"int in [{low}, {high}]"
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int (got {text!r})")
    return value


def _recall(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] (got {text!r})")
    return value


def _drop(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (got {text!r})")
    return value


def _stages(text: str) -> list[tuple]:
    """``16:200,64:50`` or with a precision ``16:int8:400,64:50``."""
    stages = []
    for part in text.split(","):
        fields = part.split(":")
        try:
            if len(fields) == 2:
                stages.append((int(fields[0]), int(fields[1])))
            elif len(fields) == 3:
                stages.append((int(fields[0]), fields[1], int(fields[2])))
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected dim:shortlist or dim:precision:shortlist, comma-separated "
                f"(got {text!r})") from None
    return stages


#: ``--methods`` shorthand: one name for several methods of :data:`benchmark.METHODS`
_METHOD_GROUPS = {"usearch": ("usearch-f16", "usearch-i8")}


def _methods(text: str) -> tuple[str, ...]:
    from .benchmark import METHODS

    names = []
    for part in (part.strip() for part in text.split(",")):
        for name in _METHOD_GROUPS.get(part, (part,) if part else ()):
            if name not in names:
                names.append(name)
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected some of {','.join(METHODS)} ('usearch': both usearch methods) "
            f"(got {text!r})")
    return tuple(names)


# ---------------------------------------------------------------------- input and output
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _load_npy(path: str, what: str = "VECTORS") -> np.ndarray:
    with open(path, "rb") as handle:  # missing file, directory: OSError naming the path
        magic = handle.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        kind = "a .npz archive" if magic.startswith(_ZIP_MAGIC) else "not a .npy file"
        hint = (" - to index texts, pass --text TEXTS.txt with --model MODEL_DIR"
                if what == "VECTORS" and not magic.startswith(_ZIP_MAGIC) else "")
        raise MRLError(f"'{what}' ({path}) is {kind}: expected a .npy array written by "
                       f"numpy.save{hint}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays (pickles), a damaged header
        raise MRLError(f"'{what}' ({path}) cannot be read as a numeric .npy array: {exc}"
                       ) from exc
    if array.size == 0:
        raise MRLError(f"'{what}' ({path}) is empty (shape {array.shape}): nothing to use")
    return array


def _read_lines(path: str) -> list[str]:
    """Every line of a UTF-8 text file, blank ones included: id ``i`` is line ``i`` (0-based)."""
    data = Path(path).read_bytes()  # missing file, directory: OSError naming the path
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MRLError(f"{path} is not UTF-8 text (byte {exc.start}, line {line}): save the "
                       "texts as UTF-8") from None
    # universal newlines, as open() reads text: \r\n and \r end a line too
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None)]


def _check_out(path: str, option: str = "--out", *, force: bool = False) -> None:
    """Fail before any work when ``path`` cannot become a directory: ``path``, if it exists,
    must be a directory, and so must its nearest existing ancestor (missing ones are made).
    A saved index there is replaced only with ``force``."""
    target = Path(os.path.abspath(path))
    if target.exists() and not target.is_dir():
        raise MRLError(f"'{option}' ({path}) exists and is not a directory")
    for ancestor in target.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise MRLError(f"'{option}' ({path}): {ancestor} is not a directory")
            break
    try:  # a folder of other files (or another kind of directory) is refused before the work
        check_replaceable(target, kind=FORMAT_NAME)
    except OSError as exc:
        raise _write_error(path, exc, option) from exc
    if not force and (target / MANIFEST).exists():  # an index, since check_replaceable passed
        raise MRLError(f"'{option}' ({path}) already holds an index: pass --force to replace "
                       "it, or choose another directory")


def _write_error(path: str, exc: OSError, option: str = "--out") -> MRLError:
    """An OSError of writing ``path`` (or a file beside it) as a one-line error naming the
    path the user gave."""
    detail = exc.strerror or str(exc)
    if exc.filename is not None and os.path.abspath(exc.filename) != os.path.abspath(path):
        detail += f" ({exc.filename})"
    return MRLError(f"'{option}' ({path}) cannot be written: {detail}")


def _jsonable(value):
    """Plain JSON: NaN/inf become null, numpy scalars and dict keys plain Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _payload_json(payload: str | bytes | None):
    """A payload as JSON: str and None as they are, bytes as ``{"base64": ...}``."""
    if isinstance(payload, bytes):
        return {"base64": base64.b64encode(payload).decode("ascii")}
    return payload


def _payload_text(payload: str | bytes | None) -> str:
    """A payload on one output line (tabs and line breaks escaped, bytes as repr)."""
    if payload is None:
        return "-"
    if isinstance(payload, bytes):
        return repr(payload)
    return payload.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace(
        "\r", "\\r")


def _print_json(data) -> None:
    print(json.dumps(_jsonable(data), allow_nan=False))


def sidecar_path(index: str | os.PathLike) -> Path:
    """``<index>.mrlsearch-cli.json`` beside the index directory."""
    path = Path(os.path.abspath(index))
    return path.parent / f"{path.name}{SIDECAR_SUFFIX}"


def _read_sidecar(index: str | os.PathLike) -> dict:
    path = sidecar_path(index)
    try:  # a FormatError (an MRLError) when unreadable, too big, or not small plain JSON
        data = read_json_file(path, kind="a mrlsearch CLI file")
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise MRLError(f"{path} is not a mrlsearch CLI file (no format {SIDECAR_FORMAT!r})")
    return data


def _write_sidecar(index: str | os.PathLike, data: dict | None) -> None:
    """Write (atomically) or, with ``None``, remove the CLI's notes on an index."""
    from ._format import atomic_file

    path = sidecar_path(index)
    if data is None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    payload = json.dumps({"format": SIDECAR_FORMAT, "version": 1, **data}, indent=2)
    with atomic_file(path) as handle:
        handle.write((payload + "\n").encode("utf-8"))


def _plan_dict(searcher: Searcher):
    return None if searcher.plan is None else searcher.plan.to_dict()


def _describe(searcher: Searcher, index: str) -> dict:
    return {
        "index": str(index), "dim": searcher.dim, "dims": list(searcher.dims),
        "metric": searcher.metric, "dtype": searcher.dtype,
        "index_dims": list(searcher.index_dims), "link_dim": searcher.link_dim,
        "codes": list(searcher.codes), "M": searcher.M, "ef_construction": searcher.ef_construction,
        "count": len(searcher), "tombstones": searcher.tombstones, "plan": _plan_dict(searcher),
        "payloads": searcher.has_payloads,
    }


# ---------------------------------------------------------------------- commands
def _given(*options: tuple[str, object]) -> list[str]:
    """Names of the ``(name, value)`` options that were given (value not None)."""
    return [name for name, value in options if value is not None]


def _subject(names: list[str], one: str, many: str) -> str:
    """``'--a is'`` or ``'--a and --b are'``: option names as the subject of ``one``/``many``."""
    return f"{' and '.join(names)} {one if len(names) == 1 else many}"


def _check_index_options(args: argparse.Namespace) -> None:
    """Options that mean nothing without another one are usage errors (exit 2)."""
    if args.auto and args.index_dims is not None:
        raise _UsageError("--auto chooses the graph dims itself: drop --index-dims")
    if args.auto and args.link_dim is not None:
        raise _UsageError("--auto chooses the link dim itself: drop --link-dim")
    if not args.auto:
        given = _given(("--queries", args.queries), ("-k", args.k),
                       ("--target-recall", args.target_recall))
        if given:
            raise _UsageError(f"{_subject(given, 'is', 'are')} for --auto, which tunes a plan: "
                              "add --auto (or run 'mrlsearch tune' after indexing)")


def _cmd_index(args: argparse.Namespace) -> None:
    _check_index_options(args)
    _check_out(args.out, force=args.force)
    model = None
    texts_path = args.text
    if args.model and texts_path is None:
        if args.vectors is None:
            raise _UsageError("--model needs the texts: --text TEXTS.txt")
        texts_path, args.vectors = args.vectors, None  # the older form: index TEXTS --model M
    if args.vectors is None and texts_path is None:
        raise _UsageError("give VECTORS.npy, or --text TEXTS.txt with --model")
    if args.vectors is None and not args.model:
        raise _UsageError("--text alone needs --model to encode the texts (or give "
                          "VECTORS.npy: the texts are then stored as payloads only)")
    if args.vectors is not None and args.model:
        raise _UsageError("give VECTORS.npy or --model (to encode --text), not both")
    lines = None
    if texts_path is not None:
        lines = _read_lines(texts_path)
        if not lines:
            raise MRLError(f"'--text' ({texts_path}) holds no lines of text")
    if args.model:
        from .encoder import Encoder

        encoder = Encoder(args.model)
        if not encoder.is_text:
            raise MRLError(f"--model {args.model} takes vectors, not texts: pass VECTORS.npy "
                           "without --model")
        vectors = encoder.encode(lines)
        if args.dims is None:
            args.dims = encoder.dims
        if args.metric is None:
            args.metric = encoder.metric
        model = os.path.abspath(args.model)
    else:
        vectors = _load_npy(args.vectors)
    metric = args.metric or "cosine"
    if vectors.ndim != 2:
        raise MRLError(f"'VECTORS' must be a 2-D array (got shape {vectors.shape})")
    if lines is not None and len(lines) != len(vectors):
        raise MRLError(f"'--text' ({texts_path}) has {len(lines)} lines but VECTORS has "
                       f"{len(vectors)} rows: one text per vector")
    ids = np.arange(len(vectors), dtype=np.int64)
    if args.auto:
        queries = None if args.queries is None else _load_npy(args.queries, "--queries")
        searcher = Searcher.build(vectors, queries=queries,
                                  k=_INDEX_K if args.k is None else args.k,
                                  target_recall=(_INDEX_RECALL if args.target_recall is None
                                                 else args.target_recall),
                                  ids=ids, payloads=lines,
                                  metric=metric, dims=args.dims, dtype=args.dtype, M=args.M,
                                  ef_construction=args.ef_construction)
    else:
        searcher = Searcher(vectors.shape[1], args.dims, metric=metric,
                            index_dims=args.index_dims, M=args.M,
                            ef_construction=args.ef_construction, dtype=args.dtype,
                            link_dim=args.link_dim)
        searcher.add(vectors, ids, payloads=lines)
    try:
        searcher.save(args.out)
        _write_sidecar(args.out, None if model is None else {
            "model": model, "texts": os.path.abspath(texts_path)})
    except OSError as exc:
        raise _write_error(args.out, exc) from exc
    if args.json:
        info = _describe(searcher, args.out)
        info["model"] = model
        report = getattr(searcher, "build_report", None)
        if report is not None:
            info["build_report"] = report
        _print_json(info)
        return
    print(f"indexed {len(searcher)} vectors into {args.out}: {searcher!r}")
    if searcher.plan is not None:
        print(f"plan: {searcher.plan}")
    if model is not None:
        print(f"model {model} recorded in {sidecar_path(args.out)}")


def _checked(searcher: Searcher, args: argparse.Namespace) -> None:
    """Finish ``--verify lazy``'s background check before anything is printed: the process
    ends with the command, and a check that never finished would never report."""
    if args.verify == "lazy":
        searcher.verify()


def _cmd_info(args: argparse.Namespace) -> None:
    searcher = Searcher.load(args.index, mmap=args.mmap, verify=args.verify)
    info = _describe(searcher, args.index)
    info["memory_usage"] = searcher.memory_usage()
    info["model"] = _read_sidecar(args.index).get("model")
    _checked(searcher, args)
    if args.json:
        _print_json(info)
        return
    for key, value in info.items():
        if key == "plan":
            value = "none (default stages)" if searcher.plan is None else str(searcher.plan)
        elif key == "memory_usage":
            value = ", ".join(f"{part} {size / 2**20:.2f} MiB" for part, size in value.items())
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value) or "-"
        elif value is None:
            value = "-"
        print(f"{key}: {value}")


def _cmd_add(args: argparse.Namespace) -> None:
    searcher = Searcher.load(args.index)
    vectors = _load_npy(args.vectors)
    ids = None if args.ids is None else _load_npy(args.ids, "--ids")
    added = searcher.add(vectors, ids)
    searcher.save(args.index)
    if args.json:
        _print_json({"added": int(added.size), "ids": added, "count": len(searcher)})
        return
    print(f"added {added.size} vectors (ids {added.min()}..{added.max()}) to {args.index}; "
          f"it holds {len(searcher)}")


def _read_ids(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return _load_npy(path, "--ids-file")
    with open(path, encoding="utf-8") as handle:
        words = handle.read().split()
    try:
        return np.asarray([int(word) for word in words], dtype=np.int64)
    except ValueError:
        raise MRLError(f"'--ids-file' ({path}) must hold integer ids, one a line") from None


def _cmd_remove(args: argparse.Namespace) -> None:
    ids = list(args.ids)
    if args.ids_file:
        ids.extend(_read_ids(args.ids_file).tolist())
    if not ids:
        raise _UsageError("no ids to remove: give IDS or --ids-file")
    searcher = Searcher.load(args.index)
    searcher.remove(ids)
    if args.compact:
        searcher.compact()
    searcher.save(args.index)
    if args.json:
        _print_json({"removed": len(ids), "count": len(searcher),
                     "tombstones": searcher.tombstones})
        return
    print(f"removed {len(ids)} ids from {args.index}; it holds {len(searcher)} "
          f"({searcher.tombstones} tombstones{'' if args.compact else ', --compact frees them'})")


def _cmd_query(args: argparse.Namespace) -> None:
    if args.text is not None and args.queries is not None:
        raise _UsageError("give QUERIES.npy or --text, not both")
    searcher = Searcher.load(args.index, mmap=args.mmap, verify=args.verify)
    if args.text is not None:
        model = args.model or _read_sidecar(args.index).get("model")
        if not model:
            raise MRLError(f"--text needs --model MODEL_DIR: {args.index} was not built from "
                           "texts by 'mrlsearch index --model'")
        from .encoder import Encoder

        queries = Encoder(model).encode(list(args.text))
    elif args.queries is not None:
        queries = _load_npy(args.queries, "QUERIES")
    else:
        raise _UsageError("give QUERIES.npy or --text")
    if args.stages is not None:
        result = searcher.funnel(queries, k=args.k, stages=args.stages, ef=args.ef)
    else:
        result = searcher.search(queries, k=args.k, ef=args.ef)
    _checked(searcher, args)
    hits = result.hits()
    payloads = None
    if searcher.has_payloads and not args.no_payloads:
        found = [h.ids for h in hits]
        flat: list = []
        if sum(map(len, found)):  # queries may share hits: fetch each id once
            unique, inverse = np.unique(np.concatenate(found), return_inverse=True)
            fetched = searcher.get(unique, payload=True)
            flat = [fetched[i] for i in inverse.tolist()]
        payloads, at = [], 0
        for ids in found:
            payloads.append(flat[at:at + len(ids)])
            at += len(ids)
    if args.json:
        data = {"ids": [h.ids for h in hits], "scores": [h.scores for h in hits]}
        if payloads is not None:
            data["payloads"] = [[_payload_json(p) for p in row] for row in payloads]
        _print_json(data)
        return
    for row, hit in enumerate(hits):
        if payloads is None:
            print(f"{row}\t" + ", ".join(f"{i}:{s:.4f}" for i, s in hit.to_list()))
            continue
        for (i, s), payload in zip(hit.to_list(), payloads[row]):
            print(f"{row}\t{i}:{s:.4f}\t{_payload_text(payload)}")


def _cmd_tune(args: argparse.Namespace) -> None:
    searcher = Searcher.load(args.index)
    plan = searcher.tune(_load_npy(args.queries, "QUERIES"), k=args.k,
                         target_recall=args.target_recall, max_shortlist=args.max_shortlist)
    if args.save:
        # Searcher.save writes the directory aside and renames it into place: atomic, but
        # the whole index is rewritten (the format has no plan-only update).
        searcher.save(args.index)
    if args.json:
        _print_json({"plan": plan.to_dict(), "saved": bool(args.save)})
        return
    print(plan)
    if args.save:
        print(f"saved the plan: {args.index} rewritten atomically")


def _labels(y: np.ndarray, path: str) -> np.ndarray:
    """Integer class labels, refused like :meth:`Classifier.calibrate` refuses them: any
    non-integer dtype (floats included, even integral ones)."""
    if y.dtype.kind not in "iu":
        hint = (" - save them as integers, e.g. np.save(path, y.astype(np.int64))"
                if y.dtype.kind == "f" else "")
        raise MRLError(f"'Y_VAL' ({path}) must hold integer class labels (got dtype "
                       f"{y.dtype}){hint}")
    return y


def _cmd_cascade(args: argparse.Namespace) -> None:
    if not args.calibrate:
        given = _given(("--max-drop", args.max_drop), ("--objective", args.objective),
                       ("--save", args.save or None))
        if given:
            raise _UsageError(f"{_subject(given, 'is', 'are')} for --calibrate X_VAL Y_VAL, "
                              "which computes the thresholds: add --calibrate")
    classifier = Classifier.load(args.classifier)
    calibrated = None
    if args.calibrate:
        x_path, y_path = args.calibrate
        x_val = _load_npy(x_path, "X_VAL")
        y_val = _labels(_load_npy(y_path, "Y_VAL"), y_path)
        calibrated = classifier.calibrate(
            x_val, y_val, max_drop=_CASCADE_MAX_DROP if args.max_drop is None else args.max_drop,
            objective=args.objective or "expected_dim")
        if not args.json:
            print(f"calibrated: accuracy {calibrated.accuracy:.4f} (full dim "
                  f"{calibrated.full_accuracy:.4f}) at expected dim "
                  f"{calibrated.expected_dim:.1f}; thresholds "
                  + ", ".join(f"{d}:{t:.3f}" for d, t in zip(classifier.dims,
                                                            calibrated.thresholds)))
        if args.save:
            classifier.save(args.classifier)
            if not args.json:
                print(f"saved the thresholds into {args.classifier}")
    result = classifier.cascade(_load_npy(args.x, "X"), confidence=args.confidence)
    if args.json:
        data = {"labels": result.labels, "dims": result.dims, "confidence": result.confidence,
                "expected_dim": result.expected_dim}
        if calibrated is not None:
            data["calibration"] = {"thresholds": calibrated.thresholds,
                                   "accuracy": calibrated.accuracy,
                                   "full_accuracy": calibrated.full_accuracy,
                                   "expected_dim": calibrated.expected_dim}
        _print_json(data)
        return
    print(f"{len(result.labels)} rows, expected dim {result.expected_dim:.1f} of "
          f"{classifier.dims[-1]}")
    for stage in result.stats:
        print(f"  dim {stage.dim:>5}: {stage.rows_stopped:>8} rows stopped ({stage.share:.1%})")


def _check_bench_options(args: argparse.Namespace, from_index: bool) -> None:
    """Options that mean nothing for this kind of source, or beside another one, are usage
    errors (exit 2) rather than silently ignored."""
    kind = "an index directory" if from_index else "a .npy source"
    ignored = _given(("--metric", args.metric if from_index else None),
                     ("--index-dims", args.index_dims if from_index else None),
                     ("--mmap", None if from_index or not args.mmap else True))
    if ignored:
        keeps = ("its own metric and graphs" if from_index
                 else "no memory map (--mmap is for an index's vectors)")
        raise _UsageError(f"{_subject(ignored, 'does', 'do')} nothing for {kind}, which keeps "
                          f"{keeps}: drop {'it' if len(ignored) == 1 else 'them'}")
    if args.queries is not None and args.n_queries is not None:
        raise _UsageError("--n-queries is for queries sampled from SOURCE; --queries gives "
                          "them: drop one")


def _cmd_bench(args: argparse.Namespace) -> None:
    from .benchmark import compare

    from_index = Path(args.source).is_dir()
    _check_bench_options(args, from_index)
    n_queries = _BENCH_QUERIES if args.n_queries is None else args.n_queries
    if args.out:  # made before the (long) run, so a bad --out fails at once
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(args.out, exc) from exc
    rng = np.random.default_rng(args.seed)
    if from_index:
        source = Searcher.load(args.source, mmap=args.mmap)
        if args.queries is None:
            if len(source) < 8:
                raise MRLError(f"the index holds {len(source)} vectors; bench needs at least 8")
            live_ids = source.ids()
            picked = rng.choice(live_ids, size=min(n_queries, len(live_ids)), replace=False)
            queries = source.get(picked)
            print(f"queries: {len(queries)} stored vectors (each finds itself; pass --queries "
                  f"for real ones)")
    else:
        vectors = _load_npy(args.source, "SOURCE")
        if vectors.ndim != 2:
            raise MRLError(f"'SOURCE' must be a 2-D array (got shape {vectors.shape})")
        source = vectors
        if args.queries is None:
            if len(vectors) < 2 * n_queries:
                raise MRLError(f"'SOURCE' has {len(vectors)} rows: too few to hold out "
                               f"{n_queries} queries (use --n-queries or --queries)")
            held_out = rng.choice(len(vectors), size=n_queries, replace=False)
            queries = vectors[held_out]
            source = np.delete(vectors, held_out, axis=0)
            print(f"queries: {len(queries)} rows held out of {args.source} (not indexed)")
    if args.queries is not None:
        queries = _load_npy(args.queries, "--queries")
    report = compare(source, queries, k=args.k, target_recall=args.target_recall,
                     metric=args.metric or "cosine", index_dims=args.index_dims,
                     methods=args.methods)
    print()
    print(report.table())
    if args.out:
        out = Path(args.out)
        try:
            report.write_json(out / "bench.json")
            wrote = [str(out / "bench.json")]
            plotted = report.plot(out / "bench.png")
        except OSError as exc:
            raise _write_error(args.out, exc) from exc
        if plotted:
            wrote.append(str(out / "bench.png"))
        else:
            print("no plot: matplotlib is not installed")
        print("wrote " + ", ".join(wrote))


# ---------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option's help (``None`` and flags excepted: their
    help says what happens without them)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None
                or default is False or default is argparse.SUPPRESS):
            return text
        if isinstance(default, (list, tuple)):
            shown = ",".join(str(item) for item in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


_EPILOG = ("exit codes: 0 ok, 1 error (one line on stderr; --debug for the traceback), "
           "2 usage, 130 interrupted, 141 stdout closed early (e.g. piped into head)")


def build_parser() -> argparse.ArgumentParser:
    """The ``mrlsearch`` argument parser (every subcommand)."""
    from . import __version__

    description = __doc__.split("\n\n")[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="mrlsearch", description=description,
                                     epilog=_EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mrlsearch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", help_text[0].upper() + help_text[1:] + ".")
        return commands.add_parser(name, help=help_text, formatter_class=_HelpFormatter,
                                   epilog=_EPILOG, **kwargs)

    m_type = _int_range(*M_RANGE)
    efc_type = _int_range(*EF_CONSTRUCTION_RANGE)

    index = command(
        "index", "build an index from a .npy file (or texts)",
        description="Build an index from a (n, dim) .npy file, or from a text file (--text, "
                    "one text a line, blank lines included: line i gets id i and is stored as "
                    "its payload) with --model. A text index records its model in "
                    "DIR.mrlsearch-cli.json, so 'query DIR --text' finds it. --auto picks graph "
                    "dims from the data and tunes a plan (Searcher.build).")
    index.add_argument("vectors", nargs="?", default=None,
                       help="(n, dim) float .npy file (or, without --text, a text file to "
                            "encode with --model)")
    index.add_argument("--text", default=None, metavar="TEXTS.txt",
                       help="UTF-8 text file, one text a line (blank lines included): line i "
                            "is stored as the payload of id i; encoded with --model, or the "
                            "payloads of VECTORS' rows (default: none)")
    index.add_argument("--model", default=None,
                       help="model directory: encode the texts of --text (default: none, "
                            "VECTORS is a .npy)")
    index.add_argument("--out", required=True, help="index directory to write")
    index.add_argument("--force", action="store_true",
                       help="replace an index already saved in --out (it stays whole until "
                            "the new one is saved)")
    index.add_argument("--dims", type=_int_list, default=None,
                       help="nesting dims, e.g. 16,32,64 (default: the model's, else 8,16,32,.. "
                            "below dim, then dim)")
    index.add_argument("--index-dims", type=_int_list, default=None,
                       help="dims with an HNSW graph (default: the smallest dim >= 16; with "
                            "--auto chosen from the data)")
    index.add_argument("--link-dim", type=_positive_int, default=None,
                       help="link the graphs by this shorter prefix (one of --dims): a faster "
                            "build, the walk still scores at the index dims (default: each "
                            "graph by its own dim; with --auto chosen from the data)")
    index.add_argument("--metric", choices=("cosine", "ip", "l2"), default=None,
                       help="similarity (default: the model's metric, else cosine)")
    index.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                       help="storage type of the vectors")
    index.add_argument("--M", type=m_type, default=16,
                       help=f"HNSW graph degree, {M_RANGE[0]} to {M_RANGE[1]}")
    index.add_argument("--ef-construction", type=efc_type, default=200,
                       help="HNSW build breadth")
    index.add_argument("--auto", action="store_true",
                       help="choose graph dims and a tuned plan from the data (uses --queries, "
                            "-k, --target-recall)")
    index.add_argument("--queries", default=None,
                       help="with --auto (an error without it): (q, dim) .npy of "
                            "representative queries (default: 300 rows of VECTORS)")
    index.add_argument("-k", type=_positive_int, default=None,
                       help=f"with --auto (an error without it): results per query the plan "
                            f"is tuned for (default: {_INDEX_K})")
    index.add_argument("--target-recall", type=_recall, default=None,
                       help=f"with --auto (an error without it): recall@k the plan must "
                            f"reach, as a 95%% lower bound (default: {_INDEX_RECALL})")
    index.add_argument("--json", action="store_true",
                       help="print the index's settings (and --auto's report) as JSON")
    index.set_defaults(func=_cmd_index)

    info = command("info", "show an index's settings, size, plan and memory")
    info.add_argument("index", help="index directory")
    info.add_argument("--mmap", action="store_true",
                      help="memory-map the vectors (memory_usage then counts resident pages)")
    info.add_argument("--verify", choices=("full", "lazy", "none"), default="full",
                      help="checksums of the big files at load (Searcher.load's verify; "
                           "'lazy' finishes them before printing)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_cmd_info)

    add = command("add", "add vectors to an index (saved atomically)",
                  description="Load the index, add the vectors (an id already present is "
                              "replaced), and save it: the directory is rewritten aside and "
                              "renamed into place.")
    add.add_argument("index", help="index directory")
    add.add_argument("vectors", help="(n, dim) or (dim,) float .npy file")
    add.add_argument("--ids", default=None,
                     help="(n,) integer .npy of ids in [0, 2**63) (default: consecutive ids "
                          "after the largest)")
    add.add_argument("--json", action="store_true", help="print the new ids as JSON")
    add.set_defaults(func=_cmd_add)

    remove = command("remove", "remove ids from an index (saved atomically)",
                     description="Load the index, remove the ids (all or none: an unknown id "
                                 "removes nothing), and save it atomically. Removed rows stay "
                                 "as tombstones until --compact.")
    remove.add_argument("index", help="index directory")
    remove.add_argument("ids", nargs="*", type=_int_range(0, 2**63 - 1), metavar="ID",
                        help="ids to remove")
    remove.add_argument("--ids-file", default=None,
                        help="more ids: an integer .npy, or a text file with one id a line "
                             "(default: none)")
    remove.add_argument("--compact", action="store_true",
                        help="rebuild without the removed rows (frees their memory)")
    remove.add_argument("--json", action="store_true", help="print counts as JSON")
    remove.set_defaults(func=_cmd_remove)

    query = command("query", "search with a (q, dim) .npy of queries, or texts",
                    description="Search the index: its tuned plan (or the default funnel), or "
                                "the --stages given. Prints a line per query, ROW<tab>ID:SCORE, "
                                "...; when the index stores payloads (the texts of 'index "
                                "--text'), a line per hit, ROW<tab>ID:SCORE<tab>PAYLOAD.")
    query.add_argument("index", help="index directory")
    query.add_argument("queries", nargs="?", default=None, help="(q, dim) or (dim,) .npy file")
    query.add_argument("--text", action="append", default=None,
                       help="a text query (repeatable); the model is the one the index was "
                            "built from, or --model (default: none, give QUERIES)")
    query.add_argument("--model", default=None,
                       help="model directory for --text (default: the one recorded by "
                            "'index --model')")
    query.add_argument("-k", type=_positive_int, default=10, help="results per query")
    query.add_argument("--stages", type=_stages, default=None,
                       help="dim:shortlist or dim:precision:shortlist, e.g. 16:int8:400,64:50,"
                            "384:10 (default: the index's plan, else the default funnel)")
    query.add_argument("--ef", type=_positive_int, default=None,
                       help="graph walk breadth, >= the first shortlist (default: the plan's, "
                            "else the first shortlist)")
    query.add_argument("--json", action="store_true",
                       help="print {ids, scores} as JSON (one list per query, best first), "
                            "and payloads when the index has them")
    query.add_argument("--no-payloads", action="store_true",
                       help="do not print the stored payloads (texts) with the hits")
    query.add_argument("--mmap", action="store_true", help="memory-map the vectors")
    query.add_argument("--verify", choices=("full", "lazy", "none"), default="full",
                       help="checksums of the big files at load (Searcher.load's verify; "
                            "'lazy' hashes them while the query runs and fails before "
                            "printing if one does not match; 'none' skips them)")
    query.set_defaults(func=_cmd_query)

    tune = command("tune", "find the fastest stages that meet a recall target",
                   description="Measure funnel schedules on the queries and print the fastest "
                               "whose 95 % lower recall bound meets the target. --save stores "
                               "it in the index: the whole directory is rewritten aside and "
                               "renamed into place (atomic; the format has no plan-only "
                               "update).")
    tune.add_argument("index", help="index directory")
    tune.add_argument("queries", help="(q, dim) .npy of representative queries")
    tune.add_argument("-k", type=_positive_int, default=10,
                      help="results per query the plan is tuned for (serves any k)")
    tune.add_argument("--target-recall", type=_recall, default=0.95,
                      help="recall@k the plan must reach")
    tune.add_argument("--max-shortlist", type=_positive_int, default=4096,
                      help="largest first-stage shortlist tried")
    tune.add_argument("--save", action="store_true",
                      help="store the plan in the index (rewrites it atomically)")
    tune.add_argument("--json", action="store_true", help="print the plan as JSON")
    tune.set_defaults(func=_cmd_tune)

    cascade = command("cascade", "classify rows with a cascade classifier")
    cascade.add_argument("classifier", help="classifier .npz")
    cascade.add_argument("x", help="(n, dim) .npy of embeddings")
    cascade.add_argument("--calibrate", nargs=2, metavar=("X_VAL", "Y_VAL"),
                         help="calibrate thresholds first on these .npy files (Y_VAL: integer "
                              "class labels) (default: use the stored thresholds)")
    cascade.add_argument("--max-drop", type=_drop, default=None,
                         help=f"with --calibrate (an error without it): accuracy drop allowed "
                              f"(default: {_CASCADE_MAX_DROP})")
    cascade.add_argument("--objective", choices=("expected_dim", "compute"), default=None,
                         help="with --calibrate (an error without it): what calibration "
                              "minimises (default: expected_dim)")
    cascade.add_argument("--confidence", choices=("max_prob", "margin"), default="max_prob",
                         help="confidence score compared with the thresholds")
    cascade.add_argument("--save", action="store_true",
                         help="with --calibrate (an error without it): store the calibrated "
                              "thresholds in CLASSIFIER")
    cascade.add_argument("--json", action="store_true", help="print labels as JSON")
    cascade.set_defaults(func=_cmd_cascade)

    bench = command(
        "bench", "funnel vs hnswlib full-dim vs exact vs faiss (or usearch) on your data",
        description="Side-by-side recall@k and queries/s of the tuned funnel, hnswlib at full "
                    "dim, exact numpy search and (when installed) a faiss funnel; --methods "
                    "usearch adds usearch with f16 and int8 storage (when installed). Half of "
                    "the queries tune every method to the target recall, half measure.")
    bench.add_argument("source", help="index directory or (n, dim) .npy of vectors")
    bench.add_argument("--queries", default=None,
                       help="(q, dim) .npy of queries (default: --n-queries rows held out of "
                            "the vectors, or sampled from the index)")
    bench.add_argument("--n-queries", type=_positive_int, default=None,
                       help=f"queries sampled when --queries is not given (default: "
                            f"{_BENCH_QUERIES}; an error beside --queries)")
    bench.add_argument("-k", type=_positive_int, default=10, help="results per query")
    bench.add_argument("--target-recall", type=_recall, default=0.95,
                       help="recall@k every method is tuned to")
    bench.add_argument("--metric", choices=("cosine", "ip", "l2"), default=None,
                       help="for a .npy source (default: cosine; an index keeps its own, and "
                            "the option is an error there)")
    bench.add_argument("--index-dims", type=_int_list, default=None,
                       help="for a .npy source: dims with an HNSW graph (default: chosen from "
                            "the data; an error for an index)")
    bench.add_argument("--methods", type=_methods, default=("funnel", "exact", "hnswlib", "faiss"),
                       help="comma-separated subset of funnel,exact,hnswlib,faiss,"
                            "usearch-f16,usearch-i8 ('usearch' for both usearch methods); "
                            "a method whose library is missing is skipped with a note")
    bench.add_argument("--out", default=None, help="directory for bench.json and bench.png (default: print only)")
    bench.add_argument("--mmap", action="store_true",
                       help="memory-map an index's vectors (an error for a .npy source)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    bench.set_defaults(func=_cmd_bench)
    return parser


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null so the interpreter's final flush cannot fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (argparse exits with 2 on a usage error).

    Examples
    --------
    >>> main(["--version"])  # doctest: +SKIP
    mrlsearch 0.1.0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("mrlsearch: interrupted", file=sys.stderr)
        return 130
    except _UsageError as exc:
        print(f"mrlsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MRLError, ValueError, TypeError, KeyError, OSError) as exc:
        if args.debug:
            raise
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        message = str(text).strip() or type(exc).__name__
        print(f"mrlsearch: error: {message.splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
