"""Compact codes of a prefix: int8 (per-dimension scaled) and binary (sign bits).

An index keeps codes at each of its graph dims. The graph walk and the early funnel stages can
score them instead of the float vectors: int8 reads a quarter of the bytes of float32, binary a
thirty-second, so more candidates fit in the same time and cache; later float stages fix the
order. For cosine the codes are of the *normalised* prefix, so an int8 dot product estimates
the cosine directly.
"""

from __future__ import annotations

import numpy as np

__all__: list[str] = []

CODE_PRECISIONS = ("int8", "binary")
_INT8_MAX = 127.0
#: Later rows may exceed the int8 scales by this share before every row is re-encoded.
SCALE_SLACK = 0.05


def normalised_prefix(vectors: np.ndarray, dim: int, norms: np.ndarray | None) -> np.ndarray:
    """``vectors[:, :dim]`` as float32, divided by ``norms`` (per row) when given."""
    prefix = np.asarray(vectors[:, :dim], dtype=np.float32)
    if norms is None:
        return prefix
    safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
    return prefix / safe[:, None]


def int8_scales(prefix: np.ndarray) -> np.ndarray:
    """Per-dimension scale so that the largest magnitude of the sample maps to 127.

    Later rows that exceed it by more than :data:`SCALE_SLACK` widen it
    (:func:`widened_scales`); values within the slack are clipped, and the float stages that
    follow a code stage score those rows exactly.
    """
    peak = np.abs(prefix).max(axis=0) if prefix.shape[0] else np.zeros(prefix.shape[1])
    peak = np.where(peak > 0, peak, 1.0)
    return (peak / _INT8_MAX).astype(np.float32)


def widened_scales(prefix: np.ndarray, scales: np.ndarray) -> np.ndarray | None:
    """Scales that also cover ``prefix``, or None while ``scales`` clip it by at most
    :data:`SCALE_SLACK` in every dimension.

    Each widening re-encodes every row, so a scale grows only past the slack: a stream of
    slowly growing values re-encodes O(log(growth)) times, not once per add.

    Examples
    --------
    >>> import numpy as np
    >>> scales = int8_scales(np.array([[1.0, -2.0]], dtype=np.float32))
    >>> widened_scales(np.array([[1.01, 0.0]], dtype=np.float32), scales) is None
    True
    >>> (widened_scales(np.array([[4.0, 0.0]], dtype=np.float32), scales) * 127).tolist()
    [4.0, 2.0]
    """
    if not prefix.shape[0]:
        return None
    needed = (np.abs(prefix).max(axis=0) / _INT8_MAX).astype(np.float32)
    if not np.any(needed > scales * (1.0 + SCALE_SLACK)):
        return None
    return np.maximum(scales, needed)


def encode_int8(prefix: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``round(prefix / scales)`` clipped to [-127, 127], as int8."""
    codes = prefix / scales[None, :]
    np.rint(codes, out=codes)
    np.clip(codes, -_INT8_MAX, _INT8_MAX, out=codes)
    return codes.astype(np.int8)


def encode_binary(prefix: np.ndarray) -> np.ndarray:
    """Sign bits (1 where > 0), bit ``c`` of a row in word ``c // 64`` at position ``c % 64``."""
    n_rows, dim = prefix.shape
    n_words = (dim + 63) // 64
    bits = np.zeros((n_rows, n_words * 64), dtype=bool)
    bits[:, :dim] = prefix > 0
    packed = np.packbits(bits.reshape(n_rows, n_words, 8, 8)[:, :, :, ::-1], axis=3)
    return np.ascontiguousarray(packed.reshape(n_rows, n_words * 8)).view(np.uint64).copy() \
        if n_rows else np.zeros((0, n_words), dtype=np.uint64)


def hamming_reference(query_bits: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Hamming distances of one query's bits to every row (numpy; for tests)."""
    xor = np.bitwise_xor(bits, query_bits[None, :])
    return np.unpackbits(xor.view(np.uint8), axis=1).sum(axis=1, dtype=np.int64)
