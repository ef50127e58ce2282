"""Synthetic Matryoshka-like vectors for tests, demos and benchmarks (nothing is downloaded)."""

from __future__ import annotations

import numpy as np

from ._validation import check_positive_int

__all__ = ["synthetic_mrl"]


def synthetic_mrl(
    n: int,
    dim: int,
    *,
    n_queries: int = 0,
    n_clusters: int = 1000,
    decay: float = 0.6,
    cluster_scale: float = 1.0,
    seed: int = 0,
    dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered vectors whose variance decays with the coordinate index, like MRL embeddings.

    Coordinate ``i`` has standard deviation ``(1 + i) ** -decay``, so early coordinates carry
    most of the signal (as in a Matryoshka embedding) while the tail still moves the nearest
    neighbours: a short prefix finds the right region, the full vector decides the order.
    Points are cluster centres plus noise of the same spectrum; queries come from the same
    distribution but are never database points.

    Parameters
    ----------
    n, dim : int
        Database size and dim.
    n_queries : int, default=0
    n_clusters : int, default=1000
    decay : float, default=0.6
        Spectrum exponent; larger makes short prefixes more informative (an easier funnel).
    cluster_scale : float, default=1.0
        Spread of cluster centres relative to the within-cluster noise.
    seed : int, default=0
    dtype : str, default='float32'

    Returns
    -------
    database : ndarray of shape (n, dim)
    queries : ndarray of shape (n_queries, dim)

    Examples
    --------
    >>> X, Q = synthetic_mrl(1000, 64, n_queries=10, seed=1)
    >>> X.shape, Q.shape
    ((1000, 64), (10, 64))
    """
    n = check_positive_int(n, "n")
    dim = check_positive_int(dim, "dim")
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim, dtype=np.float64)) ** -float(decay)
    centres = rng.standard_normal((n_clusters, dim)) * spectrum * cluster_scale
    total = n + int(n_queries)
    out = np.empty((total, dim), dtype=dtype)
    block = 65_536
    for lo in range(0, total, block):
        hi = min(lo + block, total)
        assignment = rng.integers(0, n_clusters, hi - lo)
        noise = rng.standard_normal((hi - lo, dim)) * spectrum
        out[lo:hi] = centres[assignment] + noise
    return out[:n], out[n:]
