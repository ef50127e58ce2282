"""Helpers of benchmarks/train.py: the per-text embedding cache and the leak filter."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import train as bench  # noqa: E402

from exporters import PairData  # noqa: E402


def test_vector_store_round_trip_and_reuse(tmp_path):
    store = bench.VectorStore(tmp_path / "cache")
    texts = ["alpha", "beta", "gamma"]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert store.missing(texts + ["alpha"]) == texts  # repeats asked once
    store.add(texts, vectors, "first")
    reopened = bench.VectorStore(tmp_path / "cache")  # a new run reads the blocks back
    assert reopened.missing(["beta", "delta", "alpha"]) == ["delta"]
    np.testing.assert_array_equal(reopened.get(["gamma", "alpha"]), vectors[[2, 0]])
    reopened.add(["delta"], np.ones((1, 4), np.float32), "second")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        ["block-first.npz", "block-second.npz"]
    with np.load(tmp_path / "cache" / "block-first.npz", allow_pickle=False) as block:
        assert block["keys"].shape == (3, 16) and block["vectors"].dtype == np.float32


def test_drop_leaks_removes_eval_pairs_sharing_a_training_text():
    pairs = PairData(["q1", "q2"], ["body a", "body b"],
                     ["q3", "q4"], ["body a", "body c"],     # body a is a training text
                     ["q2", "q5", "q6"], ["body d", "body e", "body f"])
    clean, dropped = bench.drop_leaks(pairs)
    assert dropped == {"val": 1, "test": 1}
    assert clean.val_queries == ["q4"] and clean.val_positives == ["body c"]
    assert clean.test_queries == ["q5", "q6"]
    assert clean.train_queries == ["q1", "q2"]
