"""MRL classification heads and the MRL model wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mrlsearch._validation import check_dims, check_positive_int

__all__ = ["MRLLinear", "MRLModel", "PrefixLogits"]


class PrefixLogits(tuple):
    """The per-dim logits of an MRL-E head: a tuple of ``(batch, num_classes)`` tensors that
    are views of one ``(len(dims), batch, num_classes)`` tensor, kept as ``.stacked`` so that
    :class:`~exporters.MatryoshkaLoss` takes every dim's cross-entropy without a copy."""

    stacked: torch.Tensor

    def __new__(cls, stacked: torch.Tensor) -> PrefixLogits:
        self = super().__new__(cls, stacked.unbind(0))
        self.stacked = stacked
        return self


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no argument (and reports CUDA only)
        return torch.is_autocast_enabled() or (
            device_type == "cpu" and torch.is_autocast_cpu_enabled())


class _PrefixLogitsFunction(torch.autograd.Function):
    """``out[k] = z[:, :dims[k]] @ weight[:, :dims[k]].T + bias`` for every k, computed as a
    chain ``out[k] = out[k - 1] + z[:, dims[k-1]:dims[k]] @ weight[:, dims[k-1]:dims[k]].T``
    of ``addmm`` calls writing straight into one output (no cumsum, no stack), with a
    backward that runs the reverse cumulative sum of the incoming gradients in one buffer and
    multiplies each column block once (autograd through split + cumsum copied, flipped and
    concatenated the (dims, batch, classes) gradients several times)."""

    @staticmethod
    def forward(ctx, z, weight, bias, dims):
        batch, classes = z.shape[0], weight.shape[0]
        out = z.new_empty(len(dims), batch, classes)
        previous, start = bias.expand(batch, classes), 0
        for k, stop in enumerate(dims):
            torch.addmm(previous, z[:, start:stop], weight[:, start:stop].T, out=out[k])
            previous, start = out[k], stop
        ctx.save_for_backward(z, weight)
        ctx.dims = dims
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, weight = ctx.saved_tensors
        dims = ctx.dims
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        # acc = sum of grad[m] over every dim m >= k: the gradient of column block k; each
        # block's gradients are written straight into their columns of the full gradients
        acc = grad[-1].clone()
        grad_z = z.new_empty(z.shape) if need_z else None
        grad_w = weight.new_empty(weight.shape) if need_w else None
        for k in range(len(dims) - 1, -1, -1):
            if k < len(dims) - 1:
                acc += grad[k]
            start, stop = (dims[k - 1] if k else 0), dims[k]
            if need_z:
                torch.mm(acc, weight[:, start:stop], out=grad_z[:, start:stop])
            if need_w:
                torch.mm(acc.T, z[:, start:stop], out=grad_w[:, start:stop])
        if dims[-1] < z.shape[1]:  # columns past the last dim take no part
            if need_z:
                grad_z[:, dims[-1]:] = 0
            if need_w:
                grad_w[:, dims[-1]:] = 0
        return grad_z, grad_w, (acc.sum(0) if need_b else None), None


class MRLLinear(nn.Module):
    """One linear classification head per nesting dim over the prefix ``z[:, :m]``.

    Parameters
    ----------
    in_features : int
        Embedding dim (the last nesting dim must not exceed it).
    num_classes : int
    dims : sequence of int
        Nesting dims, strictly increasing.
    efficient : bool, default=False
        MRL-E: a single ``(num_classes, in_features)`` weight and bias shared by all dims;
        head ``m`` is ``weight[:, :m]`` (as in the MRL reference code). Otherwise (MRL) every
        dim has its own ``nn.Linear(m, num_classes)``.

    Examples
    --------
    >>> head = MRLLinear(64, 10, dims=(8, 16, 64))
    >>> [tuple(t.shape) for t in head(torch.zeros(2, 64))]
    [(2, 10), (2, 10), (2, 10)]
    """

    def __init__(self, in_features: int, num_classes: int, dims: Sequence[int], *,
                 efficient: bool = False) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.dims = check_dims(dims, "dims", max_dim=self.in_features)
        self.efficient = bool(efficient)
        if self.efficient:
            self.shared = nn.Linear(self.in_features, self.num_classes)
            self.heads = nn.ModuleList()
        else:
            self.shared = None
            self.heads = nn.ModuleList(nn.Linear(m, self.num_classes) for m in self.dims)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of every nesting dim, a tuple of ``(batch, num_classes)`` tensors (for
        MRL-E a :class:`PrefixLogits`, whose ``.stacked`` holds them all in one tensor)."""
        if z.shape[-1] != self.in_features:
            raise ValueError(f"'z' must have {self.in_features} features (got {z.shape[-1]})")
        if self.efficient:
            weight, bias = self.shared.weight, self.shared.bias
            if (z.dtype == weight.dtype == bias.dtype and z.device == weight.device
                    and not _autocast_on(z.device.type)):
                return PrefixLogits(_PrefixLogitsFunction.apply(z, weight, bias, self.dims))
            # under autocast (mixed dtypes): logits at m = logits at the previous dim + the
            # slice [previous:m], from split pieces and a cumulative sum
            widths = [b - a for a, b in zip((0,) + self.dims[:-1], self.dims)]
            used = self.dims[-1]
            z_parts = torch.split(z[:, :used] if used < z.shape[1] else z, widths, dim=1)
            w_parts = torch.split(weight[:, :used] if used < weight.shape[1] else weight, widths,
                                  dim=1)
            parts = torch.stack([zp @ wp.T for zp, wp in zip(z_parts, w_parts)])
            return PrefixLogits(torch.cumsum(parts, dim=0) + bias)
        return tuple(head(z[:, :m]) for m, head in zip(self.dims, self.heads))

    def to_numpy(self) -> dict:
        """Weights as float32 arrays, in the layout ``mrlsearch.Classifier`` takes."""
        with torch.no_grad():
            if self.efficient:  # columns past the last dim are never read: left out
                return {"efficient": True, "dims": self.dims,
                        "weight": self.shared.weight[:, : self.dims[-1]].detach().cpu()
                        .float().numpy(),
                        "bias": self.shared.bias.detach().cpu().float().numpy()}
            return {"efficient": False, "dims": self.dims,
                    "weights": [h.weight.detach().cpu().float().numpy() for h in self.heads],
                    "biases": [h.bias.detach().cpu().float().numpy() for h in self.heads]}

    def to_classifier(self):
        """The same heads as a torch-free :class:`mrlsearch.Classifier`."""
        from mrlsearch import Classifier

        arrays = self.to_numpy()
        if arrays["efficient"]:
            return Classifier.shared(arrays["weight"], arrays["bias"], self.dims)
        return Classifier(arrays["weights"], arrays["biases"], self.dims)


class MRLModel(nn.Module):
    """A backbone producing a ``(batch, embed_dim)`` Matryoshka embedding, plus optional heads.

    Parameters
    ----------
    backbone : nn.Module
        Maps the model input to ``(batch, embed_dim)``.
    embed_dim : int
    dims : sequence of int
        Nesting dims (the last one is usually ``embed_dim``).
    num_classes : int, optional
        Adds an :class:`MRLLinear` head (``self.head``) for classification training.
    efficient : bool, default=False
        MRL-E head.
    metric : {'cosine', 'ip', 'l2'}, default='cosine'
        How the embedding is meant to be compared; written into the exported model.
    """

    def __init__(self, backbone: nn.Module, embed_dim: int, dims: Sequence[int], *,
                 num_classes: int | None = None, efficient: bool = False,
                 metric: str = "cosine") -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.dims = check_dims(dims, "dims", max_dim=self.embed_dim)
        if metric not in ("cosine", "ip", "l2"):
            raise ValueError(f"'metric' must be one of 'cosine', 'ip', 'l2' (got {metric!r})")
        self.metric = metric
        self.head = (MRLLinear(self.embed_dim, num_classes, self.dims, efficient=efficient)
                     if num_classes else None)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The full embedding ``(batch, embed_dim)``; prefixes are its first columns."""
        return self.backbone(*inputs)

    def classify(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-dim logits of the classification head."""
        if self.head is None:
            raise RuntimeError("this MRLModel has no classification head (num_classes=None)")
        return self.head(self.forward(*inputs))

    @torch.no_grad()
    def embed(self, x, *, batch_size: int = 1024) -> np.ndarray:
        """Embeddings of vectors (or texts, for a text backbone) as a float32 numpy array.

        Runs in eval mode without gradients, ``batch_size`` rows at a time, and puts the
        model's training mode back afterwards.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters(), torch.zeros(0)).device
        chunks = []
        for start in range(0, len(x), batch_size):
            part = x[start:start + batch_size]
            if isinstance(part, (list, tuple)) and part and isinstance(part[0], str):
                tensors = [t.to(device) for t in self.backbone.tokenize(part)]
            else:
                tensors = [torch.as_tensor(np.asarray(part, dtype=np.float32), device=device)]
            chunks.append(self(*tensors).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(chunks) if chunks else np.empty((0, self.embed_dim), np.float32)
