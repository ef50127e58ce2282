"""Built-in offline datasets: nothing is downloaded at run time.

* :func:`load_digits_data` - sklearn's 8x8 digits (1797 images, 10 classes), a fixed split.
* :func:`docstring_pairs` - (summary line, body) pairs from the docstrings of the Python
  standard library and/or of the installed packages (parsed, not imported), split by module
  so that test modules are never seen in training.
* :func:`docstring_modules` - standard-library docstring paragraphs labelled with their
  top-level module (text classification, ~6000 texts, ~65 classes).
* :func:`load_array_data` - any ``.npz`` with ``x``/``y`` (classification) or
  ``queries``/``positives`` (pairs), optionally with ``*_test`` arrays.
"""

from __future__ import annotations

import importlib
import inspect
import os
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassificationData", "PairData", "docstring_modules", "docstring_pairs",
           "load_array_data", "load_digits_data"]


@dataclass
class ClassificationData:
    """Vectors (or texts) with integer labels, split into train / validation / test."""

    x_train: np.ndarray | list
    y_train: np.ndarray
    x_val: np.ndarray | list
    y_val: np.ndarray
    x_test: np.ndarray | list
    y_test: np.ndarray
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max()) + 1)

    @property
    def in_features(self) -> int:
        if not isinstance(self.x_train, np.ndarray):
            raise TypeError("text data has no in_features: embed the texts first")
        return int(self.x_train.shape[1])


@dataclass
class PairData:
    """(query, positive) pairs - vectors or texts - split into train / validation / test."""

    train_queries: list | np.ndarray
    train_positives: list | np.ndarray
    val_queries: list | np.ndarray
    val_positives: list | np.ndarray
    test_queries: list | np.ndarray
    test_positives: list | np.ndarray


def _split_indices(n: int, fractions: tuple[float, float], seed: int):
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(n * fractions[0]), int(n * fractions[1])
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def load_digits_data(*, seed: int = 0) -> ClassificationData:
    """sklearn digits scaled to [0, 1]; 60 % train, 20 % validation, 20 % test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    train, val, test = _split_indices(len(x), (0.2, 0.2), seed)
    return ClassificationData(x[train], y[train], x[val], y[val], x[test], y[test])


# Standard-library modules whose import has no side effects and whose docstrings are rich.
STDLIB_MODULES = (
    "abc argparse array ast asyncio base64 bdb binascii bisect bz2 calendar cmd code codecs "
    "collections concurrent.futures configparser contextlib contextvars copy csv ctypes "
    "dataclasses datetime decimal difflib dis doctest email email.message enum filecmp "
    "fnmatch fractions ftplib functools gettext glob graphlib gzip hashlib heapq hmac html "
    "html.parser http.client http.cookies http.server imaplib importlib inspect io ipaddress "
    "itertools json linecache locale logging logging.handlers lzma mailbox mimetypes "
    "modulefinder multiprocessing numbers operator optparse os pathlib pdb pickle pickletools "
    "pkgutil platform plistlib poplib pprint queue quopri random re reprlib runpy sched "
    "secrets selectors shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl "
    "stat statistics string struct subprocess symtable sysconfig tabnanny tarfile tempfile "
    "textwrap threading timeit tokenize tomllib trace traceback types typing unittest "
    "unittest.mock urllib.parse urllib.request uuid warnings wave weakref wsgiref.simple_server "
    "xml.dom.minidom xml.etree.ElementTree xml.sax xmlrpc.client zipfile zipimport"
).split()


def _split_docstring(doc: str) -> tuple[str, str] | None:
    """(first paragraph, rest) of a docstring, or None when either part is too thin."""
    paragraphs = [" ".join(line.strip() for line in block.splitlines())
                  for block in inspect.cleandoc(doc).split("\n\n")]
    paragraphs = [p.strip() for p in paragraphs if p.strip()]
    if len(paragraphs) < 2:
        return None
    summary, body = paragraphs[0], " ".join(paragraphs[1:])
    if not 12 <= len(summary) <= 300 or len(body) < 40 or summary.startswith((">>>", "..")):
        return None
    return summary, body[:1000]


def _defined_in(obj: object, module: object) -> bool:
    """Whether ``module`` itself defines ``obj``. Packages imported earlier in the process
    patch stdlib modules (transformers adds methods to logging's classes, ray wraps an
    inspect function, keeping its ``__module__``), which made the pairs depend on what else
    had been imported; a function's code must also come from the module's file."""
    if getattr(obj, "__module__", module.__name__) != module.__name__:
        return False
    if not inspect.isfunction(obj):
        return True
    return obj.__code__.co_filename == getattr(module, "__file__", obj.__code__.co_filename)


def _module_raw_docstrings(name: str) -> list[str]:
    """Docstrings of a module, its classes and their members, and its functions."""
    try:
        module = importlib.import_module(name)
    except Exception:  # a module missing from this Python build is skipped
        return []
    objects = [module]
    for _, member in inspect.getmembers(module):
        if not _defined_in(member, module):
            continue
        if inspect.isclass(member):
            objects.append(member)
            objects.extend(v for k, v in vars(member).items()
                           if (callable(v) or isinstance(v, property))
                           and _defined_in(v.fget if isinstance(v, property) else v, module))
        elif inspect.isfunction(member):
            objects.append(member)
    found, seen = [], set()
    for obj in objects:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(doc)
    return found


def _module_docstrings(name: str) -> list[tuple[str, str]]:
    pairs = (_split_docstring(doc) for doc in _module_raw_docstrings(name))
    return [pair for pair in pairs if pair]


def _stdlib_module_names() -> list[str]:
    """STDLIB_MODULES plus the submodules of the packages among them, sorted."""
    import pkgutil
    import warnings

    names = set(STDLIB_MODULES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            if hasattr(module, "__path__"):
                for info in pkgutil.walk_packages(module.__path__, prefix=name + "."):
                    if not any(part.startswith("_") or part in ("test", "tests", "__main__")
                               for part in info.name.split(".")):
                        names.add(info.name)
    return sorted(names)


def _installed_docstrings(exclude: set[str]) -> dict[str, list[tuple[str, str]]]:
    """(summary, body) pairs per module of every installed (site-packages) Python file.

    Files are parsed with :mod:`ast`, never imported: no import side effects, and packages
    that fail to import still count. Test folders are skipped.
    """
    import ast
    import sysconfig
    from pathlib import Path

    roots = {Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    found: dict[str, list[tuple[str, str]]] = {}
    for root in sorted(roots):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if parts[0] in exclude or parts[0].endswith((".dist-info", ".egg-info")) or any(
                    part in ("test", "tests", "testing") for part in parts[:-1]):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
                continue
            module = ".".join(parts[:-1] + ((path.stem,) if path.stem != "__init__" else ()))
            pairs = found.setdefault(module, [])
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    pair = _split_docstring(doc) if doc else None
                    if pair:
                        pairs.append(pair)
    return found


#: where docstring_pairs reads; "installed" parses site-packages (no import)
DOCSTRING_SOURCES = ("stdlib", "installed", "all")


def docstring_pairs(*, max_pairs: int | None = None, seed: int = 0,
                    source: str = "stdlib", max_eval: int | None = None) -> PairData:
    """(summary line, body) pairs from docstrings, split by module.

    Roughly 1 module in 5 (by a stable hash of its name) is held out for test, 1 in 10 for
    validation; duplicate summaries are dropped. Deterministic for a given Python version and
    set of installed packages.

    Parameters
    ----------
    max_pairs : int, optional
        Keep at most this many training pairs (a random subset); validation and test are cut
        in the same proportion.
    seed : int, default=0
    source : {'stdlib', 'installed', 'all'}, default='stdlib'
        ``'stdlib'``: the standard library (~1 800 pairs on Python 3.11, imported).
        ``'installed'``: every ``.py`` file in site-packages, parsed with :mod:`ast` (never
        imported; tens of thousands of pairs in a data-science environment).
        ``'all'``: both.
    max_eval : int, optional
        Cap the validation and test splits at this many pairs each (a random subset), after
        ``max_pairs``: recall@k over a pool of fixed size stays comparable across sources.

    Examples
    --------
    >>> pairs = docstring_pairs(max_pairs=200)                     # doctest: +SKIP
    >>> pairs.train_queries[0][:40], len(pairs.train_positives)    # doctest: +SKIP
    """
    import warnings

    if source not in DOCSTRING_SOURCES:
        raise ValueError(f"'source' must be one of {', '.join(DOCSTRING_SOURCES)} "
                         f"(got {source!r})")
    by_module: dict[str, list[tuple[str, str]]] = {}
    if source in ("stdlib", "all"):
        for name in _stdlib_module_names():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                by_module[name] = _module_docstrings(name)
    if source in ("installed", "all"):
        for name, pairs in _installed_docstrings(exclude={"_distutils_hack"}).items():
            by_module.setdefault(name, []).extend(pairs)
    buckets: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    seen_summaries = set()
    for name in sorted(by_module):
        bucket = zlib.crc32(name.encode()) % 10
        split = "test" if bucket < 2 else "val" if bucket == 2 else "train"
        for summary, body in by_module[name]:
            if summary in seen_summaries:
                continue
            seen_summaries.add(summary)
            buckets[split].append((summary, body))
    rng = np.random.default_rng(seed)
    if max_pairs is not None:
        share = min(1.0, max_pairs / max(len(buckets["train"]), 1))
        for split, pairs in buckets.items():
            keep = max(1, int(round(len(pairs) * share)))
            picked = rng.choice(len(pairs), size=min(keep, len(pairs)), replace=False)
            buckets[split] = [pairs[i] for i in sorted(picked)]
    if max_eval is not None:
        for split in ("val", "test"):
            pairs = buckets[split]
            if len(pairs) > max_eval:
                picked = rng.choice(len(pairs), size=max_eval, replace=False)
                buckets[split] = [pairs[i] for i in sorted(picked)]
    columns = {split: ([q for q, _ in pairs], [p for _, p in pairs])
               for split, pairs in buckets.items()}
    return PairData(*columns["train"], *columns["val"], *columns["test"])


def docstring_modules(*, min_per_class: int = 30, seed: int = 0) -> ClassificationData:
    """Text classification: which standard-library module a docstring paragraph comes from.

    Every paragraph of at least 40 characters (doctest lines dropped, duplicates dropped) of
    the docstrings :func:`docstring_pairs` reads is a text; its label is the top-level module
    (``email.message`` -> ``email``). Modules with fewer than ``min_per_class`` paragraphs are
    left out. A random 60 / 20 / 20 split per class. Class names are in
    ``data.class_names``; the size depends on the Python version (3.11: ~6100 texts, 65
    classes).

    Parameters
    ----------
    min_per_class : int, default=30
    seed : int, default=0
    """
    import warnings

    if isinstance(min_per_class, bool) or not isinstance(min_per_class, int) or min_per_class < 5:
        raise ValueError(f"'min_per_class' must be an int >= 5, enough for a 60/20/20 split "
                         f"(got {min_per_class!r})")
    by_module: dict[str, list[str]] = {}
    seen = set()
    for name in _stdlib_module_names():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            docs = _module_raw_docstrings(name)
        for doc in docs:
            for block in inspect.cleandoc(doc).split("\n\n"):
                text = " ".join(line.strip() for line in block.splitlines()).strip()
                if len(text) < 40 or text.startswith((">>>", "..")) or text in seen:
                    continue
                seen.add(text)
                by_module.setdefault(name.split(".")[0], []).append(text)
    class_names = sorted(m for m, texts in by_module.items() if len(texts) >= min_per_class)
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in ("train", "val", "test")}
    for label, module in enumerate(class_names):
        texts = by_module[module]
        order = rng.permutation(len(texts))
        n_val = n_test = len(texts) // 5
        for split, idx in (("val", order[:n_val]), ("test", order[n_val:n_val + n_test]),
                           ("train", order[n_val + n_test:])):
            parts[split][0].extend(texts[i] for i in idx)
            parts[split][1].extend([label] * len(idx))
    return ClassificationData(*(value for split in ("train", "val", "test")
                                for value in (parts[split][0],
                                              np.asarray(parts[split][1], dtype=np.int64))),
                              class_names=class_names)


def load_array_data(path: str | os.PathLike, *, seed: int = 0) -> ClassificationData | PairData:
    """Vectors from an ``.npz``: ``x``+``y`` or ``queries``+``positives`` (no pickle).

    Missing ``*_val`` / ``*_test`` arrays are split off the training arrays (15 % each).
    """
    with open(path, "rb") as handle:
        if handle.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip (empty or not)
            raise ValueError(f"{path} is not an .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:  # not an archive, object arrays, a damaged member
        raise ValueError(f"{path} cannot be read as an .npz of numeric arrays ({exc})") from None
    if "x" in arrays and "y" in arrays:
        x = _vectors(arrays["x"], "x", path)
        y = _labels(arrays["y"], "y", path, rows=len(x))
        if "x_test" in arrays:
            x_test = _vectors(arrays["x_test"], "x_test", path, width=x.shape[1], like="x")
            y_test = _labels(arrays.get("y_test"), "y_test", path, rows=len(x_test))
            train, val, _ = _split_indices(len(x), (0.15, 0.0), seed)
            return ClassificationData(x[train], y[train], x[val], y[val], x_test, y_test)
        train, val, test = _split_indices(len(x), (0.15, 0.15), seed)
        return ClassificationData(x[train], y[train], x[val], y[val], x[test], y[test])
    if "queries" in arrays and "positives" in arrays:
        q = _vectors(arrays["queries"], "queries", path)
        p = _vectors(arrays["positives"], "positives", path, rows=len(q), width=q.shape[1],
                     like="queries")
        train, val, test = _split_indices(len(q), (0.15, 0.15), seed)
        return PairData(q[train], p[train], q[val], p[val], q[test], p[test])
    raise ValueError(f"{path} must hold arrays 'x' and 'y', or 'queries' and 'positives' "
                     f"(got {sorted(arrays)})")


#: Fewer rows leave a split empty (15 % each for validation and test).
_MIN_ROWS = 10


def _vectors(array: np.ndarray, name: str, path, *, rows: int | None = None,
             width: int | None = None, like: str = "") -> np.ndarray:
    """``array`` as finite float32 rows (of ``rows`` rows and ``width`` columns, those of the
    array named ``like``, when given)."""
    if array.dtype.kind not in "biuf" or array.ndim != 2:  # bool features are numbers too
        raise ValueError(f"'{name}' in {path} must be a 2-D numeric array (got shape "
                         f"{array.shape}, dtype {array.dtype})")
    if rows is not None and len(array) != rows:
        raise ValueError(f"'{name}' in {path} must have one row per query ({rows} rows; "
                         f"got {len(array)})")
    if rows is None and width is None and len(array) < _MIN_ROWS:
        raise ValueError(f"'{name}' in {path} must have at least {_MIN_ROWS} rows to split "
                         f"into train, validation and test (got {len(array)})")
    if width is not None and array.shape[1] != width:
        raise ValueError(f"'{name}' in {path} must have {width} columns like '{like}' (got "
                         f"{array.shape[1]})")
    vectors = array.astype(np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ValueError(f"'{name}' in {path} must be finite (row {np.flatnonzero(~finite)[0]} "
                         "holds NaN or inf)")
    return vectors


def _labels(array: np.ndarray | None, name: str, path, *, rows: int) -> np.ndarray:
    """``array`` as non-negative int64 class labels, one per row."""
    if array is None:
        raise ValueError(f"{path} holds 'x_test' but no '{name}'")
    if array.ndim != 1 or len(array) != rows:
        raise ValueError(f"'{name}' in {path} must hold one label per row ({rows}; got shape "
                         f"{array.shape})")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise ValueError(f"'{name}' in {path} must hold integer class labels (got "
                         f"non-integral values)")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"'{name}' in {path} must hold integer class labels (got dtype "
                         f"{array.dtype})")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"'{name}' in {path} must hold labels >= 0 (got {labels.min()})")
    return labels
