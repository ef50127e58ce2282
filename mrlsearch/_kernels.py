"""All numba kernels of mrlsearch.

Kernels are pure functions over C-contiguous arrays: they never validate (the callers in
``searcher.py`` and ``classifier.py`` do), never allocate their outputs (the callers preallocate
them, padded with ``-1`` / ``-inf``) and are compiled with explicit signatures and
``cache=True`` so that a process pays the compile cost once per machine, not once per run.
The hot kernels release the GIL (``nogil=True``): queries from several threads run in
parallel, as hnswlib's do.

numba has no float16 arithmetic on the CPU, so float16 vector stores are handed to the kernels
as their raw ``uint16`` bits together with a 65536-entry float32 lookup table
(:data:`HALF_TABLE`, 256 KiB, it stays in L2); float32 stores ignore the table.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

__all__: list[str] = []

METRIC_IP = 0
METRIC_COSINE = 1
METRIC_L2 = 2
METRIC_CODES = {"ip": METRIC_IP, "cosine": METRIC_COSINE, "l2": METRIC_L2}

#: float32 value of every float16 bit pattern, indexed by the pattern as uint16.
HALF_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
#: stand-in table for float32 stores (never read).
NO_TABLE = np.zeros(1, dtype=np.float32)


def _to_f32(value, table):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


@overload(_to_f32, inline="always")
def _to_f32_overload(value, table):
    if isinstance(value, types.Integer):
        return lambda value, table: table[value]
    return lambda value, table: np.float32(value)


_RERANK_SIGNATURES = [
    "i8(f4[:, ::1], {store}[:, ::1], f4[::1], i8[:, ::1], f4[:, ::1], i8, i8, "
    "f4[:], f4[:], i8, i8[:, ::1], f4[:, ::1], f4[:, ::1])".format(store=store)
    for store in ("f4", "u2")
]


@numba.njit(inline="always", fastmath=True)
def _rerank_query(qi, queries, vectors, table, rows, partial, start, stop, query_norms,
                  row_norms, metric, out_rows, out_partial, out_scores):
    """One query of :func:`rerank_stage`; returns the number of candidates scored."""
    n_in = rows.shape[1]
    scored = 0
    keep = out_rows.shape[1]
    scores = np.empty(n_in, dtype=np.float32)
    sums = np.empty(n_in, dtype=np.float32)  # inputs are never written
    for j in range(n_in):
        row = rows[qi, j]
        if row < 0:
            scores[j] = -np.inf
            continue
        scored += 1
        acc = partial[qi, j]
        if metric == 2:
            for c in range(start, stop):
                diff = queries[qi, c] - _to_f32(vectors[row, c], table)
                acc += diff * diff
            sums[j] = acc
            scores[j] = -acc
        else:
            for c in range(start, stop):
                acc += queries[qi, c] * _to_f32(vectors[row, c], table)
            sums[j] = acc
            if metric == 1:
                denom = query_norms[qi] * row_norms[row]
                scores[j] = acc / denom if denom > 0.0 else 0.0
            else:
                scores[j] = acc
    order = np.argsort(-scores, kind="mergesort")
    for t in range(keep):
        if t < n_in and rows[qi, order[t]] >= 0:
            j = order[t]
            out_rows[qi, t] = rows[qi, j]
            out_partial[qi, t] = sums[j]
            out_scores[qi, t] = scores[j]
        else:
            out_rows[qi, t] = -1
            out_partial[qi, t] = 0.0
            out_scores[qi, t] = -np.inf
    return scored


@numba.njit(_RERANK_SIGNATURES, parallel=True, fastmath=True, cache=True, nogil=True)
def rerank_stage(queries, vectors, table, rows, partial, start, stop, query_norms, row_norms,
                 metric, out_rows, out_partial, out_scores):
    r"""Score candidates on the coordinates ``[start, stop)`` and keep the best of them.

    ``partial[q, j]`` holds, for candidate ``rows[q, j]``, the running sum over the
    coordinates ``[0, start)``: the dot product :math:`\sum_{i<start} q_i x_i` (ip, cosine) or
    the squared distance :math:`\sum_{i<start} (q_i - x_i)^2` (l2). The kernel adds the slice
    ``[start, stop)`` (so no coordinate is read twice across stages), turns the sum into the
    score at prefix ``m = stop`` (higher is better)

    .. math::

        s_{ip} = q_{:m} \cdot x_{:m}, \quad
        s_{cos} = \frac{q_{:m} \cdot x_{:m}}{\lVert q_{:m} \rVert \lVert x_{:m} \rVert}, \quad
        s_{l2} = -\lVert q_{:m} - x_{:m} \rVert^2

    and writes the best ``out_rows.shape[1]`` candidates, best first, with their running sums
    and scores. Rows equal to ``-1`` are padding; they score ``-inf`` and come out as ``-1``.
    ``query_norms`` (per query) and ``row_norms`` (per stored row) are the prefix norms at
    ``stop``; only cosine reads them. Parallel over queries. Returns the number of
    candidates scored (rows that are not padding).
    """
    scored = 0
    for qi in prange(rows.shape[0]):
        scored += _rerank_query(qi, queries, vectors, table, rows, partial, start, stop,
                                query_norms, row_norms, metric, out_rows, out_partial, out_scores)
    return scored


@numba.njit(_RERANK_SIGNATURES, fastmath=True, cache=True, nogil=True)
def rerank_stage_serial(queries, vectors, table, rows, partial, start, stop, query_norms,
                        row_norms, metric, out_rows, out_partial, out_scores):
    """:func:`rerank_stage` on one thread: no parallel start-up cost for small batches."""
    scored = 0
    for qi in range(rows.shape[0]):
        scored += _rerank_query(qi, queries, vectors, table, rows, partial, start, stop,
                                query_norms, row_norms, metric, out_rows, out_partial, out_scores)
    return scored


@numba.njit(["f4[:, ::1](f4[:, ::1], i8[::1])"], cache=True, nogil=True)
def prefix_norms(batch, dims):
    r"""Norms of every row's prefixes: ``out[i, j]`` = :math:`\lVert x_{i, :dims_j} \rVert`."""
    out = np.empty((batch.shape[0], dims.shape[0]), dtype=np.float32)
    for i in range(batch.shape[0]):
        acc = 0.0  # float64 accumulator
        c = 0
        for j in range(dims.shape[0]):
            while c < dims[j]:
                acc += np.float64(batch[i, c]) * np.float64(batch[i, c])
                c += 1
            out[i, j] = np.sqrt(acc)
    return out


@numba.njit(inline="always")
def _rows_to_ids(rows, id_of_row, out_ids, out_counts):
    """Body of :func:`rows_to_ids` (``rows`` may be wider than ``out_ids``)."""
    for qi in range(rows.shape[0]):
        count = 0
        for t in range(out_ids.shape[1]):
            row = rows[qi, t]
            if row >= 0:
                out_ids[qi, t] = id_of_row[row]
                count += 1
            else:
                out_ids[qi, t] = -1
        out_counts[qi] = count


@numba.njit(["void(i8[:, ::1], i8[::1], i8[:, ::1], i8[::1])"], cache=True)
def rows_to_ids(rows, id_of_row, out_ids, out_counts):
    """Map stored rows to user ids (-1 stays -1) and count the valid results per query."""
    _rows_to_ids(rows, id_of_row, out_ids, out_counts)


@numba.njit(["void(u8[:, ::1], f4[:, ::1], i8, f4[:], f4[:], i8[:, ::1], f4[:, ::1])"],
            cache=True)
def partial_from_graph(labels, distances, metric, query_norms, row_norms, out_rows,
                       out_partial):
    r"""Turn hnswlib's (labels, distances) into rows and running sums at the graph's prefix.

    hnswlib returns :math:`1 - \cos` (cosine space, on normalised copies), :math:`1 - q \cdot x`
    (ip space) or :math:`\lVert q - x \rVert^2` (l2 space). The running sum is the squared
    distance for l2 and the dot product otherwise, :math:`\cos \lVert q \rVert \lVert x \rVert`
    for cosine.
    """
    for qi in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            row = np.int64(labels[qi, j])
            out_rows[qi, j] = row
            distance = distances[qi, j]
            if metric == 2:
                out_partial[qi, j] = distance
            elif metric == 0:
                out_partial[qi, j] = 1.0 - distance
            else:
                out_partial[qi, j] = (1.0 - distance) * query_norms[qi] * row_norms[row]


_FUSED_SIGNATURES = [
    "void(f4[:, ::1], {store}[:, ::1], f4[::1], u8[:, ::1], f4[:, ::1], i8[::1], i8[::1], "
    "i8[::1], b1, f4[:, ::1], f4[:, ::1], i8, i8[::1], i8[:, ::1], f4[:, ::1], i8[::1], "
    "i8[::1])".format(store=store)
    for store in ("f4", "u2")
]


@numba.njit(_FUSED_SIGNATURES, fastmath=True, cache=True, nogil=True)
def funnel_stages_serial(queries, vectors, table, labels, distances, stage_dims, stage_cols,
                         stage_keeps, skip_first, query_norms, row_norms, metric, id_of_row,
                         out_ids, out_scores, out_counts, out_scored):
    """Every rerank stage of a funnel in one call, for small batches (one thread).

    Starts from hnswlib's ``labels``/``distances`` at ``stage_dims[0]`` (see
    :func:`partial_from_graph`), runs :func:`rerank_stage_serial`'s work for each stage ``s``
    over the coordinates ``[stage_dims[s - 1], stage_dims[s])`` keeping ``stage_keeps[s]``,
    and writes the top ``out_ids.shape[1]`` as user ids (``id_of_row``) with their scores.
    ``skip_first``: the graph returned exactly the first shortlist, so stage 0 has nothing to
    do. ``query_norms`` / ``row_norms`` hold the prefix norms at every nesting dim; column
    ``stage_cols[s]`` is stage ``s``'s. ``out_scored[s]`` receives the candidates stage ``s``
    scored. One call instead of one per stage: for a single query the dispatch of each call
    costs more than its arithmetic.
    """
    n_queries = labels.shape[0]
    rows = np.empty(labels.shape, dtype=np.int64)
    partial = np.empty(labels.shape, dtype=np.float32)
    partial_from_graph(labels, distances, metric, query_norms[:, stage_cols[0]],
                       row_norms[:, stage_cols[0]], rows, partial)
    scores = np.empty((n_queries, 0), dtype=np.float32)
    previous = stage_dims[0]
    for stage in range(stage_dims.shape[0]):
        if stage == 0 and skip_first:
            scored = 0
            for qi in range(n_queries):
                for j in range(rows.shape[1]):
                    if rows[qi, j] >= 0:
                        scored += 1
            out_scored[0] = scored
            continue
        keep = stage_keeps[stage]
        stop = stage_dims[stage]
        col = stage_cols[stage]
        out_rows = np.empty((n_queries, keep), dtype=np.int64)
        out_partial = np.empty((n_queries, keep), dtype=np.float32)
        scores = np.empty((n_queries, keep), dtype=np.float32)
        scored = 0
        for qi in range(n_queries):
            scored += _rerank_query(qi, queries, vectors, table, rows, partial, previous, stop,
                                    query_norms[:, col], row_norms[:, col], metric, out_rows,
                                    out_partial, scores)
        out_scored[stage] = scored
        rows, partial, previous = out_rows, out_partial, stop
    out_scores[:, :] = scores[:, : out_scores.shape[1]]
    _rows_to_ids(rows, id_of_row, out_ids, out_counts)


# exp(x) for x <= 0 in float32 (used by softmax_confidence): x = n ln2 + r with |r| <= ln2 / 2
# (ln2 split in two for an exact n ln2), e^r by its degree-7 Taylor polynomial (truncation
# < 1e-8), 2^n written straight into the exponent bits. Adding 1.5 * 2^23 rounds x / ln2 to the
# integer n and leaves n in the low mantissa bits. Relative error < 2e-7 (tested against
# np.exp); x below -87 is clamped there (e^-87 ~ 1.6e-38 still counts as nothing).
_F32 = np.float32
_EXP_LOWEST = _F32(-87.0)
_LOG2E = _F32(1.4426950408889634)
_ROUND_MAGIC = _F32(12582912.0)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_EXP_CHUNK = 128  # classes per chunk of the softmax sum: the early exit is tested per chunk


@numba.njit(["void(f4[::1], i8, i8, f4, f4[::1])"], cache=True, nogil=True)
def exp_shifted(row, start, stop, top, out):
    """``out[j - start] = exp(row[j] - top)`` for ``start <= j < stop``, all ``row[j] <= top``.

    A branch-free polynomial the compiler vectorises (numba's ``np.exp`` is a scalar libm
    call without SVML). Not ``fastmath``: reassociation would undo the rounding trick.
    """
    for j in range(start, stop):
        x = row[j] - top
        x = x if x > _EXP_LOWEST else _EXP_LOWEST
        shifted = x * _LOG2E + _ROUND_MAGIC
        n = shifted - _ROUND_MAGIC
        r = (x - n * _LN2_HI) - n * _LN2_LO
        poly = _F32(1.0) + r * (_F32(1.0) + r * (_F32(0.5) + r * (_F32(1.0 / 6.0) + r * (
            _F32(1.0 / 24.0) + r * (_F32(1.0 / 120.0) + r * (_F32(1.0 / 720.0)
                                                          + r * _F32(1.0 / 5040.0)))))))
        bits = (np.float32(shifted).view(np.int32) + np.int32(127)) << np.int32(23)
        out[j - start] = poly * np.int32(bits).view(np.float32)


@numba.njit(["f8(f4[::1], i8)"], fastmath={"reassoc"}, cache=True, nogil=True)
def _sum_prefix(values, count):
    """Sum of ``values[:count]`` (reassociated, so it vectorises)."""
    total = _F32(0.0)
    for j in range(count):
        total += values[j]
    return np.float64(total)


@numba.njit(["void(f4[:, ::1], i8, f8, i8[::1], f4[::1], b1[::1])"], parallel=False,
            cache=True, nogil=True)
def softmax_confidence(logits, kind, threshold, out_labels, out_confidence, out_stop):
    r"""Arg-max label, softmax confidence and the stop decision ``confidence >= threshold``.

    With :math:`l^* = \max_j l_j` and :math:`Z = \sum_j e^{l_j - l^*}`: ``kind`` 0 gives the
    top probability :math:`1 / Z`; ``kind`` 1 the margin :math:`(1 - e^{l_2 - l^*}) / Z`
    between the top two probabilities (:math:`l_2` the second largest logit). Max-subtracted,
    so huge logits do not overflow. Rows run in parallel; the exponentials are
    :func:`exp_shifted`'s (relative error < 2e-7), summed in chunks of 128 classes.

    A row that cannot reach ``threshold`` is known as soon as the partial sum of :math:`Z`
    passes the bound the threshold sets; the sum stops at the end of that chunk,
    ``out_stop`` is False and ``out_confidence`` is only an upper bound (the cascade never
    reports it). Pass ``threshold=-inf`` for exact confidences everywhere.
    """
    n_classes = logits.shape[1]
    for i in prange(logits.shape[0]):
        row = logits[i]
        best = 0
        top = row[0]
        second = -np.inf
        for j in range(1, n_classes):
            value = row[j]
            if value > top:
                second = top
                top = value
                best = j
            elif value > second:
                second = value
        out_labels[i] = best
        if kind == 0 or n_classes == 1:
            numerator = 1.0
        else:
            numerator = 1.0 - np.exp(np.float64(second) - np.float64(top))
        # confidence = numerator / total >= threshold  <=>  total <= numerator / threshold
        bound = numerator / threshold if threshold > 0.0 else np.inf
        buffer = np.empty(_EXP_CHUNK, dtype=np.float32)
        total = 0.0
        stopped_early = False
        for start in range(0, n_classes, _EXP_CHUNK):
            stop = min(start + _EXP_CHUNK, n_classes)
            exp_shifted(row, start, stop, top, buffer)
            total += _sum_prefix(buffer, stop - start)
            if total > bound:
                stopped_early = True
                break
        out_confidence[i] = numerator / total
        out_stop[i] = not stopped_early and out_confidence[i] >= threshold


@numba.njit(["i8(u1[::1], i8, i8, i8, i8, i8, i8)"], cache=True, nogil=True)
def check_hnsw_upper_links(buffer, start, count, size_links_per_element, max_m, max_level,
                           n_rows):
    """Walk the upper-level link lists of an hnswlib file; return the end offset or -1.

    Layout per element: a uint32 byte size (a multiple of ``size_links_per_element``, one
    block per level above 0), then per level a uint16 neighbour count (<= ``max_m``) padded to
    4 bytes and ``max_m`` uint32 neighbour ids (each < ``n_rows``).
    """
    offset = start
    size = buffer.shape[0]
    for _ in range(count):
        if offset + 4 > size:
            return -1
        nbytes = (np.int64(buffer[offset]) | (np.int64(buffer[offset + 1]) << 8)
                  | (np.int64(buffer[offset + 2]) << 16) | (np.int64(buffer[offset + 3]) << 24))
        offset += 4
        if nbytes % size_links_per_element != 0 or nbytes // size_links_per_element > max_level:
            return -1
        if offset + nbytes > size:
            return -1
        for block in range(nbytes // size_links_per_element):
            base = offset + block * size_links_per_element
            links = np.int64(buffer[base]) | (np.int64(buffer[base + 1]) << 8)
            if links > max_m:
                return -1
            for j in range(links):
                p = base + 4 + 4 * j
                neighbour = (np.int64(buffer[p]) | (np.int64(buffer[p + 1]) << 8)
                             | (np.int64(buffer[p + 2]) << 16) | (np.int64(buffer[p + 3]) << 24))
                if neighbour >= n_rows:
                    return -1
        offset += nbytes
    return offset
