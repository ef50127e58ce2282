"""Training benchmark: per-dim quality of MRL, MRL-E and fixed-feature (FF) models, and the
cost of a training step of MRL / MRL-E relative to FF.

* digits: MLP backbone + classification heads, linear top-1 per dim (FF = a model trained at
  full dim only, head truncated to the first m columns).
* docstrings: adapter over frozen MiniLM features, recall@10 per dim (FF = adapter trained with
  the loss at full dim only, truncated).
* step time: MLP 512 -> 2048 with a 1000-class head over dims 8..2048, batch 256, synthetic.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train.py --parts docstrings --key docstrings_all
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train.py --parts steps
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from exporters import (  # noqa: E402
    MatryoshkaLoss,
    PairData,
    Trainer,
    build_model,
    docstring_pairs,
    evaluate,
    fit_adapter,
    load_digits_data,
    minilm_path,
)
from _common import write_report  # noqa: E402

KINDS = {"MRL": False, "MRL-E": True, "FF": False}


def digits(results: dict, seeds: int = 3) -> None:
    """Mean over ``seeds`` runs (split and initialisation): one digits test split has only 360
    rows, so a single run moves by about a point."""
    dims = (2, 4, 8, 16, 32, 64)
    table = {}
    for kind, efficient in KINDS.items():
        train_dims = (64,) if kind == "FF" else dims
        scores = []
        for seed in range(seeds):
            data = load_digits_data(seed=seed)
            torch.manual_seed(seed)
            model = build_model({"backbone": "mlp", "in_features": 64, "embed_dim": 64,
                                 "hidden": [256], "dims": list(train_dims), "num_classes": 10,
                                 "efficient": efficient})
            Trainer(model, MatryoshkaLoss("cross_entropy", train_dims), lr=3e-3, epochs=20,
                    batch_size=64, seed=seed, progress=False).fit(data)
            per_dim = evaluate(model, data, dims=dims)["per_dim"]
            scores.append([per_dim[m]["linear_top1"] for m in dims])
        table[kind] = {str(m): float(v) for m, v in zip(dims, np.mean(scores, axis=0))}
        print(f"  digits {kind:6s} linear top-1: "
              + ", ".join(f"{m}:{v:.3f}" for m, v in table[kind].items()), flush=True)
    results["digits_linear_top1"] = table
    results["digits_seeds"] = seeds


DOC_DIMS = (8, 16, 32, 64, 128, 256, 384)
FIELDS = ("train_queries", "train_positives", "val_queries", "val_positives", "test_queries",
          "test_positives")


class VectorStore:
    """Embeddings of texts cached on disk, keyed by a hash of each text (no pickle).

    Blocks ``<folder>/block-*.npz`` hold ``keys`` (uint8, (n, 16): the first 16 bytes of the
    sha256 of each text) and ``vectors`` (float32, (n, dim)). New texts are appended as new
    blocks, so an interrupted run resumes and another pair set reuses every text already
    embedded.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.rows: dict[bytes, np.ndarray] = {}
        for path in sorted(self.folder.glob("block-*.npz")):
            with np.load(path, allow_pickle=False) as block:
                for key, vector in zip(block["keys"], block["vectors"]):
                    self.rows[key.tobytes()] = vector

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.sha256(text.encode()).digest()[:16]

    def missing(self, texts: list[str]) -> list[str]:
        seen, out = set(), []
        for text in texts:
            k = self.key(text)
            if k not in self.rows and k not in seen:
                seen.add(k)
                out.append(text)
        return out

    def add(self, texts: list[str], vectors: np.ndarray, name: str) -> None:
        keys = np.frombuffer(b"".join(self.key(t) for t in texts), dtype=np.uint8)
        keys = keys.reshape(len(texts), 16)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{name}.tmp.npz"
        np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp, self.folder / f"block-{name}.npz")
        for key, vector in zip(keys, vectors):
            self.rows[key.tobytes()] = vector

    def get(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.rows[self.key(t)] for t in texts])


def seed_from_realdata(store: VectorStore, max_length: int) -> int:
    """Copy benchmarks/realdata.py's cached MiniLM paragraph embeddings (128 tokens, the same
    model and normalisation) into ``store``; a docstring summary is often such a paragraph.
    Returns how many texts were added (0 when the caches are absent or do not match)."""
    if max_length != 128 or (store.folder / "block-realdata.npz").exists():
        return 0
    try:
        import realdata
    except ImportError:
        return 0
    chunk_dir = realdata.DATA_DIR / "minilm_chunks"
    if not (realdata.DATA_DIR / "docstring_paragraphs.json").exists() or not chunk_dir.is_dir():
        return 0
    groups = realdata._shuffled_groups(seed=0)
    flat = [text for group in groups for text in group]
    texts, vectors = [], []
    for j, start in enumerate(range(0, len(flat), 4096)):
        block = flat[start:start + 4096]
        key = hashlib.sha256("\n".join(block).encode()).hexdigest()[:12]
        path = chunk_dir / f"chunk{j:03d}_{len(block)}_{key}.npy"
        if not path.exists():
            break
        texts += block
        vectors.append(np.load(path, allow_pickle=False))
    if not texts:
        return 0
    store.add(texts, np.concatenate(vectors), "realdata")
    return len(texts)


def minilm_features(pairs: PairData, cache_dir: Path, max_length: int = 128, *,
                    block: int = 2048, threads: int = 1) -> PairData:
    """all-MiniLM-L6-v2 embeddings (sentence-transformers, at most ``max_length`` tokens per
    text, normalised) of every text, cached per text in a :class:`VectorStore` under
    ``cache_dir / minilm-<max_length>``. Embeds on ``threads`` torch threads."""
    store = VectorStore(cache_dir / f"minilm-{max_length}")
    seeded = seed_from_realdata(store, max_length)
    if seeded:
        print(f"  reused {seeded} MiniLM paragraph embeddings of benchmarks/realdata.py",
              flush=True)
    texts = [t for f in FIELDS for t in getattr(pairs, f)]
    todo = store.missing(texts)
    if todo:
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(str(minilm_path()), device="cpu")
        model.max_seq_length = max_length
        print(f"  embedding {len(todo)} of {len(texts)} texts with MiniLM "
              f"({max_length} tokens, {threads} thread(s))", flush=True)
        started, done = time.perf_counter(), 0
        for start in range(0, len(todo), block):
            part = todo[start:start + block]
            vectors = model.encode(part, batch_size=64, convert_to_numpy=True,
                                   normalize_embeddings=True)
            name = hashlib.sha256("\n".join(part).encode()).hexdigest()[:16]
            store.add(part, vectors, name)
            done += len(part)
            elapsed = time.perf_counter() - started
            print(f"    {done}/{len(todo)} texts, {done / elapsed:.1f} texts/s", flush=True)
    flat = store.get(texts)
    parts, offset = [], 0
    for f in FIELDS:
        n = len(getattr(pairs, f))
        parts.append(flat[offset:offset + n])
        offset += n
    return PairData(*parts)


def drop_leaks(pairs: PairData) -> tuple[PairData, dict]:
    """Remove validation / test pairs whose query or positive text also occurs in training
    (docstring_pairs splits by module and drops repeated summaries, but one body can follow
    two summaries in two modules, e.g. a vendored copy)."""
    seen = set(pairs.train_queries) | set(pairs.train_positives)
    out, dropped = {}, {}
    for split in ("val", "test"):
        q, p = getattr(pairs, f"{split}_queries"), getattr(pairs, f"{split}_positives")
        keep = [i for i in range(len(q)) if q[i] not in seen and p[i] not in seen]
        dropped[split] = len(q) - len(keep)
        out[split] = ([q[i] for i in keep], [p[i] for i in keep])
    return PairData(pairs.train_queries, pairs.train_positives, *out["val"], *out["test"]), \
        dropped


def recall_table(queries: np.ndarray, positives: np.ndarray, dims=DOC_DIMS) -> dict:
    from exporters.evaluate import _retrieval_metrics

    return {str(m): _retrieval_metrics(queries, positives, m, 10)["recall@10"] for m in dims}


def apply(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def plain_linear_baseline(features: PairData, dims=DOC_DIMS, *, epochs=4, batch_size=512,
                          lr=2e-3, seed=0):
    """The issue's baseline: Linear(384, 384, bias=False), orthogonal init, symmetric InfoNCE
    summed over the MRL dims, Adam, batch 512, lr 2e-3, 4 epochs; the last epoch is kept."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(384, 384, bias=False)
    torch.nn.init.orthogonal_(linear.weight)
    loss_fn = MatryoshkaLoss("infonce", dims, symmetric=True)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    q = torch.as_tensor(features.train_queries)
    p = torch.as_tensor(features.train_positives)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(q)))
        for step in range(len(q) // batch_size):
            index = order[step * batch_size:(step + 1) * batch_size]
            loss = loss_fn((linear(q[index]), linear(p[index])))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return linear.eval()


def docstrings(results: dict, *, max_pairs: int | None, max_eval: int, cache_dir: Path,
               max_length: int = 128, key: str = "docstrings") -> None:
    """Adapters over frozen MiniLM features of docstrings (stdlib + installed packages).

    Results go under ``<key>_recall@10``, ``<key>_targets``, ... (``key`` names the pair set).
    """
    started = time.perf_counter()
    pairs = docstring_pairs(source="all", max_pairs=max_pairs, seed=0)
    pairs, leaks = drop_leaks(pairs)
    rng = np.random.default_rng(0)
    capped = {}
    for split in ("val", "test"):
        q, p = getattr(pairs, f"{split}_queries"), getattr(pairs, f"{split}_positives")
        if len(q) > max_eval:
            picked = sorted(rng.choice(len(q), size=max_eval, replace=False))
            q, p = [q[i] for i in picked], [p[i] for i in picked]
        capped[split] = (q, p)
    pairs = PairData(pairs.train_queries, pairs.train_positives, *capped["val"],
                     *capped["test"])
    print(f"  docstring pairs: {len(pairs.train_queries)} train, {len(pairs.val_queries)} val, "
          f"{len(pairs.test_queries)} test; dropped as leaks {leaks} "
          f"({time.perf_counter() - started:.0f}s)", flush=True)
    features = minilm_features(pairs, cache_dir, max_length)
    tq, tp = features.test_queries, features.test_positives
    table = {"raw MiniLM, truncated": recall_table(tq, tp)}
    # PCA-ordered truncation: rotate onto the principal axes of the training texts (centred
    # for the axes, applied uncentred: a rotation, so full-dim cosines are unchanged)
    train = np.concatenate([features.train_queries, features.train_positives])
    _, _, vh = np.linalg.svd(train - train.mean(axis=0), full_matrices=False)
    table["PCA-ordered truncation"] = recall_table(tq @ vh.T, tp @ vh.T)
    seconds = {}
    t0 = time.perf_counter()
    linear = plain_linear_baseline(features)
    seconds["plain linear (orthogonal init)"] = time.perf_counter() - t0
    table["plain linear (orthogonal init)"] = recall_table(apply(linear, tq), apply(linear, tp))
    variants = {"FrozenAdapter identity init": {"init": "identity"},
                "FrozenAdapter PCA init": {"init": "pca"},
                "FrozenAdapter identity + residual 512": {"init": "identity", "hidden": 512}}
    histories = {}
    for name, kwargs in variants.items():
        t0 = time.perf_counter()
        model, history = fit_adapter(features, DOC_DIMS, seed=0, **kwargs)
        seconds[name] = time.perf_counter() - t0
        table[name] = recall_table(apply(model, tq), apply(model, tp))
        histories[name] = [{"epoch": h["epoch"], "kept": h["kept"],
                            "val": {str(m): v for m, v in h["val"].items()}} for h in history]
    for name, row in table.items():
        print(f"  docstrings {name:38s} recall@10: "
              + ", ".join(f"{m}:{v:.3f}" for m, v in row.items()), flush=True)
    raw, base = table["raw MiniLM, truncated"], table["plain linear (orthogonal init)"]
    targets = {}
    for name in variants:
        row = table[name]
        targets[name] = {
            "full_dim_vs_raw": row["384"] - raw["384"],
            "worst_dim_vs_plain_linear": min(row[m] - base[m] for m in row),
            "at_16_vs_raw": row["16"] - raw["16"],
        }
        print(f"  {name}: full dim {targets[name]['full_dim_vs_raw'] * 100:+.1f} pt vs raw "
              f"(target >= -0.5), worst dim vs plain linear "
              f"{targets[name]['worst_dim_vs_plain_linear'] * 100:+.1f} pt (target >= -0.5), "
              f"16 dims {targets[name]['at_16_vs_raw'] * 100:+.1f} pt vs raw (target >= +15)",
              flush=True)
    results[f"{key}_recall@10"] = table
    results[f"{key}_targets"] = targets
    results[f"{key}_fit_seconds"] = seconds
    results[f"{key}_adapter_history"] = histories
    n = {split: len(getattr(pairs, f"{split}_queries")) for split in ("train", "val", "test")}
    results[f"{key}_pairs"] = {
        "source": "stdlib + installed packages (ast); query = first paragraph of a docstring, "
                  "positive = the rest (<= 1000 chars); split by module (1 in 5 test, 1 in 10 "
                  "val), repeated summaries dropped, val/test pairs sharing a text with "
                  "training dropped",
        **n, "n_pairs": sum(n.values()), "dropped_as_leaks": leaks,
        "features": f"all-MiniLM-L6-v2 (sentence-transformers), max_seq_length {max_length} "
                    f"tokens, normalised"}


def split_cumsum_logits(head, z: torch.Tensor) -> tuple:
    """The MRL-E head as it was before the fused prefix-logits function: split pieces, one
    matmul per piece, a cumulative sum, a plain tuple (the loss then stacks it again)."""
    weight, bias = head.shared.weight, head.shared.bias
    widths = [b - a for a, b in zip((0,) + head.dims[:-1], head.dims)]
    z_parts = torch.split(z, widths, dim=1)
    w_parts = torch.split(weight, widths, dim=1)
    parts = torch.stack([zp @ wp.T for zp, wp in zip(z_parts, w_parts)])
    return tuple(torch.cumsum(parts, dim=0) + bias)


def step_time(results: dict, steps: int = 50) -> None:
    """Best-of-``steps`` training step (forward, loss, backward, AdamW) per kind; the kinds
    take turns step by step, so a change of machine load hits all of them alike."""
    import types

    dims = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((256, 512)).astype(np.float32))
    y = torch.as_tensor(rng.integers(0, 1000, 256))
    kinds = {**KINDS, "MRL-E (split + cumsum, before)": True}
    runs = {}
    for kind, efficient in kinds.items():
        train_dims = (2048,) if kind == "FF" else dims
        torch.manual_seed(0)
        model = build_model({"backbone": "mlp", "in_features": 512, "embed_dim": 2048,
                             "hidden": [1024], "dims": list(train_dims), "num_classes": 1000,
                             "efficient": efficient})
        if "before" in kind:
            model.head.forward = types.MethodType(split_cumsum_logits, model.head)
        runs[kind] = (model, MatryoshkaLoss("cross_entropy", train_dims),
                      torch.optim.AdamW(model.parameters(), lr=1e-3))
    timings = {kind: float("inf") for kind in runs}
    for step in range(steps + 3):
        for kind, (model, loss_fn, optimizer) in runs.items():
            started = time.perf_counter()
            loss = loss_fn(model.classify(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 3:
                timings[kind] = min(timings[kind], time.perf_counter() - started)
    results["step_seconds"] = timings
    results["step_ratio_vs_ff"] = {k: v / timings["FF"] for k, v in timings.items()}
    print(f"  step time (best of {steps}, batch 256, 512->2048, 1000 classes, "
          f"{torch.get_num_threads()} thread(s)): "
          + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / timings['FF']:.2f}x FF)"
                      for k, v in timings.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/train.json")
    parser.add_argument("--parts", default="digits,docstrings,steps",
                        help="comma-separated subset of digits, docstrings, steps")
    parser.add_argument("--max-pairs", type=int, default=0,
                        help="training pairs (0: every pair the installation yields)")
    parser.add_argument("--max-eval", type=int, default=2_000, help="val / test pairs each")
    parser.add_argument("--key", default="docstrings_all",
                        help="result key prefix naming the docstring pair set")
    parser.add_argument("--cache", default="bench_out", help="feature cache folder")
    parser.add_argument("--max-length", type=int, default=128, help="MiniLM tokens per text")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the machine is shared)")
    parser.add_argument("--replace", action="store_true",
                        help="write only this run's results (default: update the keys this "
                             "run measured in an existing --out and keep the others)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    results: dict = {}
    if "digits" in parts:
        digits(results)
    if "docstrings" in parts:
        docstrings(results, max_pairs=args.max_pairs or None, max_eval=args.max_eval,
                   cache_dir=Path(args.cache), max_length=args.max_length, key=args.key)
    if "steps" in parts:
        step_time(results)
        results["step_threads"] = args.threads
    out = Path(args.out)
    if not args.replace and out.is_file():  # read now: a concurrent run may have written it
        import json

        results = {**json.loads(out.read_text()).get("results", {}), **results}
    write_report(args.out, "train", {"torch": torch.__version__}, results=results)


if __name__ == "__main__":
    main()
