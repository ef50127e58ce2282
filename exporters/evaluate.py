"""Per-dim evaluation of MRL models: linear top-1, 1-NN top-1, recall@k and MRR@10."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

from .data import ClassificationData, PairData
from .layers import MRLModel

__all__ = ["embed_inputs", "evaluate", "write_metrics"]


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def embed_inputs(model: MRLModel, inputs, *, batch_size: int = 256) -> np.ndarray:
    """Full embeddings of vectors or texts (a text backbone tokenises), float32 numpy: the
    same as ``model.embed(inputs, batch_size=batch_size)``."""
    return model.embed(inputs, batch_size=batch_size)


def _retrieval_metrics(queries: np.ndarray, positives: np.ndarray, m: int, k: int) -> dict:
    q, p = _normalise(queries[:, :m]), _normalise(positives[:, :m])
    scores = q @ p.T
    correct = scores[np.arange(len(q)), np.arange(len(q))]
    rank = (scores > correct[:, None]).sum(axis=1)  # 0 = the positive is first
    return {f"recall@{k}": float((rank < k).mean()),
            "mrr@10": float(np.where(rank < 10, 1.0 / (rank + 1), 0.0).mean())}


def evaluate(model: MRLModel, data: ClassificationData | PairData, *,
             dims: Sequence[int] | None = None, k: int = 10, split: str = "test") -> dict:
    """Metrics of ``model`` at every nesting dim on a split of ``data``.

    Classification: ``linear_top1`` (the MRL head at that dim; for a model trained at one dim
    only - the fixed-feature baseline - the full head truncated to its first ``m`` columns) and
    ``knn_top1`` (1-NN by prefix cosine, training split as the database). Pairs: ``recall@k``
    and ``mrr@10`` of finding each query's positive among all positives of the split.

    Returns
    -------
    dict
        ``{"dims": [...], "per_dim": {m: {metric: value}}}``.
    """
    dims = tuple(model.dims if dims is None else dims)
    per_dim: dict[int, dict] = {m: {} for m in dims}
    if isinstance(data, ClassificationData):
        x = getattr(data, f"x_{split}")
        y = getattr(data, f"y_{split}")
        z = embed_inputs(model, x)
        z_train = embed_inputs(model, data.x_train)
        if model.head is not None:
            head = model.head
            with torch.no_grad():
                zt = torch.as_tensor(z)
                if head.efficient or tuple(head.dims) != dims:
                    weight, bias = (head.shared.weight, head.shared.bias) if head.efficient else \
                        (head.heads[-1].weight, head.heads[-1].bias)
                    logits = {m: (zt[:, :m] @ weight[:, :m].T + bias).numpy() for m in dims}
                else:
                    logits = dict(zip(dims, (t.numpy() for t in head(zt))))
            for m in dims:
                per_dim[m]["linear_top1"] = float((logits[m].argmax(axis=1) == y).mean())
        for m in dims:
            sims = _normalise(z[:, :m]) @ _normalise(z_train[:, :m]).T
            per_dim[m]["knn_top1"] = float((data.y_train[sims.argmax(axis=1)] == y).mean())
    else:
        queries = embed_inputs(model, getattr(data, f"{split}_queries"))
        positives = embed_inputs(model, getattr(data, f"{split}_positives"))
        for m in dims:
            per_dim[m].update(_retrieval_metrics(queries, positives, m, k))
    return {"dims": list(dims), "per_dim": per_dim}


def write_metrics(metrics: dict, path: str | os.PathLike) -> None:
    """Write metrics as JSON (dims as string keys)."""
    serialisable = {**metrics, "per_dim": {str(m): v for m, v in metrics["per_dim"].items()}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(serialisable, handle, indent=2)
        handle.write("\n")
