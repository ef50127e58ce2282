"""Nesting-dim validation shared by the torch side (mirrors mrlsearch's messages)."""

from __future__ import annotations

from collections.abc import Sequence

from mrlsearch._validation import check_dims

__all__ = ["check_nesting_dims"]


def check_nesting_dims(dims: Sequence[int], *, max_dim: int | None = None,
                       name: str = "dims") -> tuple[int, ...]:
    """Strictly increasing positive ints, each <= ``max_dim``."""
    return check_dims(dims, name, max_dim=max_dim)
