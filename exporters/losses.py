"""MatryoshkaLoss: a base loss summed over every nesting prefix."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrlsearch._validation import check_dims

__all__ = ["MatryoshkaLoss", "info_nce"]


def info_nce(queries: torch.Tensor, positives: torch.Tensor, *,
             temperature: float = 0.05, symmetric: bool = False) -> torch.Tensor:
    """In-batch InfoNCE (multiple-negatives ranking) over cosine similarities.

    Row ``i`` of ``queries`` should match row ``i`` of ``positives``; every other row of the
    batch is a negative. Both sides are L2-normalised.

    Parameters
    ----------
    queries, positives : tensor of shape (batch, dim)
    temperature : float, default=0.05
    symmetric : bool, default=False
        Average the query -> positive and the positive -> query losses (each positive must
        also find its query among all queries of the batch), as CLIP does.

    Examples
    --------
    >>> q = torch.eye(4)
    >>> round(float(info_nce(q, q, symmetric=True)), 4)  # every row finds itself
    0.0
    """
    q = F.normalize(queries, dim=-1)
    p = F.normalize(positives, dim=-1)
    logits = q @ p.T / temperature
    targets = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, targets))
    return loss


class MatryoshkaLoss(nn.Module):
    """Weighted sum of a base loss over nesting prefixes: ``sum_m c_m * base(prefix_m)``.

    Parameters
    ----------
    base : {'cross_entropy', 'infonce'} or callable
        ``'cross_entropy'``: called with the tuple of per-dim logits of :class:`MRLLinear` and
        integer targets. ``'infonce'``: called with ``(queries, positives)`` full embeddings; each
        prefix is normalised on its own. A callable ``base(outputs_at_m, target)`` wraps any
        loss: it receives every tensor of ``outputs`` truncated to ``[..., :m]``.
    dims : sequence of int
        Nesting dims, strictly increasing.
    weights : sequence of float, optional
        ``c_m`` per dim; default 1 for every dim, as in the paper.
    temperature : float, default=0.05
        For ``'infonce'``.
    symmetric : bool, default=False
        For ``'infonce'``: query -> positive and positive -> query (see :func:`info_nce`).

    Examples
    --------
    >>> loss = MatryoshkaLoss("cross_entropy", dims=(8, 16))
    >>> logits = (torch.zeros(4, 3), torch.zeros(4, 3))
    >>> round(float(loss(logits, torch.tensor([0, 1, 2, 0]))), 4)  # 2 * log(3)
    2.1972
    """

    def __init__(self, base: str | Callable, dims: Sequence[int], *,
                 weights: Sequence[float] | None = None, temperature: float = 0.05,
                 symmetric: bool = False) -> None:
        super().__init__()
        self.dims = check_dims(dims, "dims")
        if weights is None:
            weights = [1.0] * len(self.dims)
        try:
            if isinstance(weights, (str, bytes)):
                raise TypeError
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise TypeError(f"'weights' must be a sequence of numbers (got {weights!r:.60})"
                            ) from None
        if len(weights) != len(self.dims):
            raise ValueError(f"'weights' must hold one weight per dim ({len(self.dims)}) "
                             f"(got {len(weights)})")
        if not all(math.isfinite(w) and w >= 0 for w in weights):  # NaN made the loss NaN
            raise ValueError(f"'weights' must be finite and non-negative (got {weights})")
        self.weights = tuple(weights)
        if isinstance(base, str) and base not in ("cross_entropy", "infonce"):
            raise ValueError(f"'base' must be 'cross_entropy', 'infonce' or a callable "
                             f"(got {base!r})")
        if not isinstance(base, str) and not callable(base):
            raise TypeError(f"'base' must be a string or a callable (got {type(base).__name__})")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise TypeError(f"'temperature' must be a number (got {temperature!r})")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"'temperature' must be a finite number > 0 (got {temperature!r})")
        self.base = base
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)

    def per_dim(self, outputs, target=None) -> torch.Tensor:
        """The base loss at every dim, a ``(len(dims),)`` tensor (unweighted)."""
        if self.base == "cross_entropy":
            if target is None:
                raise ValueError("'target' must be given: the cross-entropy needs the labels")
            if len(outputs) != len(self.dims):
                raise ValueError(f"'outputs' must hold logits for each of the {len(self.dims)} "
                                 f"dims (got {len(outputs)})")
            # one cross-entropy over all dims at once: (n_dims * batch, classes); an MRL-E
            # head's PrefixLogits already hold them in one tensor
            stacked = getattr(outputs, "stacked", None)
            if stacked is None:
                stacked = torch.stack(tuple(outputs))
            n_dims, batch = stacked.shape[0], stacked.shape[1]
            losses = F.cross_entropy(stacked.reshape(n_dims * batch, -1), target.repeat(n_dims),
                                     reduction="none")
            return losses.view(n_dims, batch).mean(dim=1)
        if self.base == "infonce":
            queries, positives = outputs
            return torch.stack([info_nce(queries[:, :m], positives[:, :m],
                                         temperature=self.temperature,
                                         symmetric=self.symmetric) for m in self.dims])
        tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return torch.stack([self.base(*(t[..., :m] for t in tensors), target)
                            if target is not None else self.base(*(t[..., :m] for t in tensors))
                            for m in self.dims])

    def forward(self, outputs, target=None) -> torch.Tensor:
        losses = self.per_dim(outputs, target)
        weights = torch.as_tensor(self.weights, dtype=losses.dtype, device=losses.device)
        return (losses * weights).sum()

    def get_config_dict(self) -> dict:
        """JSON-able configuration (saved with checkpoints)."""
        return {"base": self.base if isinstance(self.base, str) else repr(self.base),
                "dims": list(self.dims), "weights": list(self.weights),
                "temperature": self.temperature, "symmetric": self.symmetric}
