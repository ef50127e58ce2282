"""The compiled funnel: graph descent, level-0 beam search and every rerank stage in one call.

One ``nogil`` numba call runs a whole batch of queries: the greedy descent through the upper
levels of an HNSW graph, the level-0 beam search with a per-call ``ef`` (deleted rows and rows
outside a filter are walked through but never returned), then each later stage of the funnel
over the survivors -- with no Python between stages. The graph is hnswlib's, copied into
row-indexed arrays by :mod:`mrlsearch._graphs`; the vectors are mrlsearch's own store.

Scoring precisions (``PRECISION_*``):

* float: the stored vectors (float32, or float16 as raw ``uint16`` bits with a lookup table, see
  :mod:`mrlsearch._kernels`); float stages are incremental, the running sum at one dim is reused
  by the next float stage, so no coordinate is read twice.
* int8: per-dimension scaled codes of a prefix, scored asymmetrically (float query times
  ``scale * code``). For cosine the codes are of the normalised prefix.
* binary: sign bits of a prefix, 64 per word, scored by Hamming distance (popcount) against the
  query's sign bits.

Code scores only rank: a plan whose last stage is float returns exact scores at its dim.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._handoff import kernel_entered, kernel_leaving
from ._kernels import _LANES, _to_f32, prefix_norms_into
from ._validation import MAX_ABS_VALUE, MIN_ABS_VALUE

__all__: list[str] = []

#: The first 16 hex digits of the SHA-256 of the modules whose njit functions and constants
#: are compiled into these kernels (:data:`INLINED_SOURCES`, in that order). Numba's on-disk
#: cache is keyed on this file's contents alone: after a change to one of those modules, the
#: kernels cached from the old code would still load. Keeping their digest here makes any
#: such change a change of this file too; ``tests/unit/test_kernels.py`` checks that it is
#: current.
INLINED_SOURCES = ("_handoff.py", "_kernels.py", "_validation.py")
INLINED_SOURCES_DIGEST = "b6c27ef4f0d1b130"

PRECISION_FLOAT = 0
PRECISION_INT8 = 1
PRECISION_BINARY = 2
#: precision names as users write them; float16 and float32 both read the store as it is.
PRECISION_CODES = {"float32": PRECISION_FLOAT, "float16": PRECISION_FLOAT,
                   "int8": PRECISION_INT8, "binary": PRECISION_BINARY}


@intrinsic
def _popcount(typingctx, value):
    """Number of set bits of a uint64 (LLVM's ctpop: one instruction on x86-64)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        function = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(function, args)

    return signature, codegen


@intrinsic
def _prefetch_at(typingctx, array, index, offset):
    """Ask the CPU to start loading the cache line at byte ``offset`` of row ``index`` of a
    C-contiguous array (``llvm.prefetch``, read, high locality). The walk issues these for
    every line of every unvisited neighbour before scoring any, so the memory latency of the
    random rows overlaps instead of adding up (7-20 % per query against the first line
    only, measured)."""
    signature = types.void(array, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, args[0])
        data = builder.bitcast(view.data, ir.IntType(8).as_pointer())
        stride = builder.extract_value(view.strides, 0)
        pointer = builder.gep(data, [builder.add(builder.mul(args[1], stride), args[2])])
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32,
                                                             i32, i32]), "llvm.prefetch.p0")
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3),
                                ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return signature, codegen


_CACHE_LINE = 64


@numba.njit(inline="always")
def _prefetch_rows(array, rows, n_rows, start, stop):
    """Prefetch columns ``[start, stop)`` of ``n_rows`` rows, every cache line of them.

    A rerank stage reads a few dozen rows that the walk did not touch (it walked codes or a
    shorter prefix): fetched one after another they cost a memory latency per row, requested
    together the fetches overlap."""
    itemsize = array.itemsize
    first = start * itemsize
    last = stop * itemsize
    for j in range(n_rows):
        row = rows[j]
        for offset in range(first, last, _CACHE_LINE):
            _prefetch_at(array, row, offset)


@numba.njit(inline="always")
def _prefetch(precision, vectors, row_norms, codes, bits, metric, row, gdim):
    """Prefetch what :func:`_distance` will read of ``row``: every cache line of it."""
    if precision == 0:
        for offset in range(0, gdim * vectors.itemsize, _CACHE_LINE):
            _prefetch_at(vectors, row, offset)
        if metric != 0:
            _prefetch_at(row_norms, row, 0)
    elif precision == 1:
        for offset in range(0, codes.shape[1], _CACHE_LINE):
            _prefetch_at(codes, row, offset)
        if metric == 2:
            _prefetch_at(row_norms, row, 0)
    else:
        for offset in range(0, bits.shape[1] * 8, _CACHE_LINE):
            _prefetch_at(bits, row, offset)


# ---------------------------------------------------------------------------- distances
@numba.njit(inline="always", fastmath=True)
def _float_sum(query, vectors, table, row, start, stop, metric):
    """Running sum over coordinates [start, stop): dot product, or squared distance for l2.

    Indices are unsigned: with a signed index numba wraps possible negatives per element,
    which stops LLVM from vectorising the loop (8x slower at 384 dims, measured). Slicing
    instead (``query[start:stop]``) vectorises too, but every slice takes and drops a
    reference on the array with two atomic instructions, twice per row scored (6 % of a
    query's time in the walks and reranks, measured with perf)."""
    acc = np.float32(0.0)
    first = np.uint64(start)
    if metric == 2:
        for c in range(np.uint64(stop - start)):
            diff = query[first + c] - _to_f32(vectors[row, first + c], table)
            acc += diff * diff
    else:
        for c in range(np.uint64(stop - start)):
            acc += query[first + c] * _to_f32(vectors[row, first + c], table)
    return acc


@numba.njit(inline="always", fastmath=True)
def _int8_dot(scaled_query, codes, row):
    acc = np.float32(0.0)
    for c in range(scaled_query.shape[0]):
        acc += scaled_query[c] * np.float32(codes[row, c])
    return acc


@numba.njit(inline="always")
def _hamming(query_bits, bits, row):
    total = np.uint64(0)
    for w in range(query_bits.shape[0]):
        total += _popcount(query_bits[w] ^ bits[row, w])
    return np.float32(total)


@numba.njit(inline="always", fastmath=True)
def _distance(precision, query, vectors, table, row_norms, gdim, gcol, scaled_query, codes,
              query_bits, bits, metric, row):
    """Graph-walk distance of ``row`` at the graph dim (lower is closer)."""
    if precision == 0:
        acc = _float_sum(query, vectors, table, row, 0, gdim, metric)
        if metric == 2:
            return acc
        if metric == 1:
            norm = row_norms[row, gcol]
            return -acc / norm if norm > 0.0 else np.float32(0.0)
        return -acc
    if precision == 1:
        acc = _int8_dot(scaled_query, codes, row)
        if metric == 2:
            norm = row_norms[row, gcol]
            return norm * norm - 2.0 * acc
        return -acc
    return _hamming(query_bits, bits, row)


@numba.njit(inline="always")
def _partial_from_distance(precision, distance, metric, row_norms, gcol, row):
    """The float running sum at the graph dim, recovered from a float walk's distance."""
    if precision != 0:
        return np.float32(0.0)
    if metric == 2:
        return distance
    if metric == 1:
        return -distance * row_norms[row, gcol]
    return -distance


_QUERY_ROW_SIGNATURES = [
    types.float32[:, ::1](types.Array(dtype, 1, "A", readonly=True))  # takes writable too
    for dtype in (types.float32, types.float64)]


@numba.njit(_QUERY_ROW_SIGNATURES, cache=True)
def query_row(query):
    """A one-row float32 batch copied from any 1-D float32/float64 query (strided, read-only).

    Compiled *without* ``nogil``: numpy's copy or cast of more than 500 elements lets go of
    the GIL, which another query thread may then take while this one is in the middle of a
    call (see :mod:`mrlsearch._handoff`); this copy keeps it."""
    row = np.empty((1, query.shape[0]), dtype=np.float32)
    for c in range(query.shape[0]):
        row[0, c] = np.float32(query[c])
    return row


@numba.njit(["b1(f4)"], cache=True, nogil=True)
def _in_range(norm):
    """Whether a query of this norm is searchable: finite and within the range that
    :meth:`Searcher.add` accepts. Compiled without fastmath, which may assume no NaN, and
    kept out of line so that the callers' fastmath flags do not reach it."""
    return norm >= MIN_ABS_VALUE and norm <= MAX_ABS_VALUE


@numba.njit(["f4[::1](f4[::1], i8[::1])"], cache=True, nogil=True)
def query_prefix_norms(query, dims):
    """Norms of the query's prefixes at every nesting dim, summed exactly as the stored rows'
    norms are (:func:`~mrlsearch._kernels.prefix_norms_into`: the same rounding on both
    sides)."""
    out = np.empty(dims.shape[0], dtype=np.float32)
    prefix_norms_into(query, dims, np.empty(_LANES, dtype=np.float64), out)
    return out


# ---------------------------------------------------------------------------- heaps
@numba.njit(inline="always")
def _min_push(keys, rows, size, key, row):
    """Push onto a binary min-heap held in ``keys``/``rows`` (the caller keeps room)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= key:
            break
        keys[i] = keys[parent]
        rows[i] = rows[parent]
        i = parent
    keys[i] = key
    rows[i] = row
    return size + 1


@numba.njit(inline="always")
def _min_pop(keys, rows, size):
    """Remove the smallest entry of a min-heap; returns the new size."""
    size -= 1
    key = keys[size]
    row = rows[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] < keys[child]:
            child += 1
        if keys[child] >= key:
            break
        keys[i] = keys[child]
        rows[i] = rows[child]
        i = child
    keys[i] = key
    rows[i] = row
    return size


# ---------------------------------------------------------------------------- one query
@numba.njit(inline="always")
def _beam_pool(precision, query, vectors, table, row_norms, links0, gdim, gcol, scaled_query,
               codes, query_bits, bits, metric, ef, visited, tag, start, start_distance,
               out_rows, out_keys):
    """Level-0 beam search from ``start`` where every row is returnable (no deletions, no
    filter), with the beam kept as one sorted array of ``ef`` entries instead of two heaps.

    The beam holds the ``ef`` closest rows seen, closest first, each flagged once expanded;
    the walk expands the closest unexpanded entry until none is left. Without ties this
    visits the rows of hnswlib's two-heap search (a candidate farther than the ``ef``-th
    closest is never expanded by either; tested equal for float and int8 walks), with one
    comparison to reject a far row and a short shift to insert a near one instead of two heap
    updates per row. Binary (Hamming) distances tie often, and the two walks break ties
    differently: the heap walk may still expand a tied row the beam dropped. The neighbours
    of an expanded row are marked visited and prefetched in one pass, then scored in a second;
    a row that enters the beam has its link list prefetched too (hnswlib keeps a row's links
    next to its vector, so scoring a row fetches them; here they are a separate array, and
    expanding a row waited on that miss: 2-4 % of a MiniLM query, measured).

    Writes the beam (closest first) into ``out_rows``/``out_keys``; returns (its size,
    distances computed).
    """
    keys = out_keys
    rows = out_rows
    expanded = np.zeros(ef, dtype=np.bool_)
    fresh = np.empty(links0.shape[1], dtype=np.int64)
    keys[0] = start_distance
    rows[0] = start
    visited[start] = tag
    size = 1
    cursor = 0
    computed = 0
    while cursor < size:
        expanded[cursor] = True
        node = rows[cursor]
        n_fresh = 0
        for j in range(links0[node, 0]):
            neighbour = links0[node, 1 + j]
            if visited[neighbour] != tag:
                visited[neighbour] = tag
                fresh[n_fresh] = neighbour
                n_fresh += 1
                _prefetch(precision, vectors, row_norms, codes, bits, metric, neighbour, gdim)
        lowest = cursor + 1
        for j in range(n_fresh):
            neighbour = fresh[j]
            d = _distance(precision, query, vectors, table, row_norms, gdim, gcol,
                          scaled_query, codes, query_bits, bits, metric, neighbour)
            if size == ef:
                if d >= keys[ef - 1]:
                    continue
                slot = ef - 1
            else:
                slot = size
                size += 1
            while slot > 0 and keys[slot - 1] > d:
                keys[slot] = keys[slot - 1]
                rows[slot] = rows[slot - 1]
                expanded[slot] = expanded[slot - 1]
                slot -= 1
            keys[slot] = d
            rows[slot] = neighbour
            expanded[slot] = False
            _prefetch_at(links0, neighbour, 0)  # its links, read if it is expanded
            lowest = min(lowest, slot)
        computed += n_fresh
        cursor = lowest
        while cursor < size and expanded[cursor]:
            cursor += 1
    return size, computed


@numba.njit(inline="always")
def _walk(precision, query, vectors, table, row_norms, deleted, allow, links0, upper,
          upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits, bits,
          metric, ef, visited, tag, cand_keys, cand_rows, out_rows, out_keys):
    """HNSW search of one query: greedy descent, then the level-0 beam of width ``ef``.

    Writes the ``ef`` (or fewer) closest rows that are live and allowed, closest first, into
    ``out_rows``/``out_keys``; returns (how many, distances computed).
    """
    filtered = allow.shape[0] > 0
    current = entry
    best = _distance(precision, query, vectors, table, row_norms, gdim, gcol, scaled_query,
                     codes, query_bits, bits, metric, current)
    computed = 1
    for level in range(max_level, 0, -1):
        changed = True
        while changed:
            changed = False
            block = upper_start[current] + level - 1
            for j in range(upper[block, 0]):
                neighbour = upper[block, 1 + j]
                d = _distance(precision, query, vectors, table, row_norms, gdim, gcol,
                              scaled_query, codes, query_bits, bits, metric, neighbour)
                computed += 1
                if d < best:
                    best = d
                    current = neighbour
                    changed = True

    any_deleted = deleted.shape[0] > 0  # an empty mask: nothing is deleted
    if not filtered and not any_deleted:
        found, walked = _beam_pool(precision, query, vectors, table, row_norms, links0, gdim,
                                   gcol, scaled_query, codes, query_bits, bits, metric, ef,
                                   visited, tag, current, best, out_rows, out_keys)
        return found, computed + walked
    top_keys = np.empty(ef + 1, dtype=np.float32)
    top_rows = np.empty(ef + 1, dtype=np.int64)
    top_size = 0
    cand_size = 0
    visited[current] = tag
    bound = np.float32(np.inf)
    # the beam is a max-heap on distance: a min-heap of negated distances
    if not (any_deleted and deleted[current]) and (not filtered or allow[current]):
        top_size = _min_push(top_keys, top_rows, top_size, -best, current)
        bound = best
    cand_size = _min_push(cand_keys, cand_rows, cand_size, best, current)
    while cand_size > 0:
        d_current = cand_keys[0]
        node = cand_rows[0]
        # as hnswlib's walk with deletions: stop only once the beam holds ef returnable rows
        if d_current > bound and top_size == ef:
            break
        cand_size = _min_pop(cand_keys, cand_rows, cand_size)
        for j in range(links0[node, 0]):
            neighbour = links0[node, 1 + j]
            if visited[neighbour] != tag:
                _prefetch(precision, vectors, row_norms, codes, bits, metric, neighbour, gdim)
        for j in range(links0[node, 0]):
            neighbour = links0[node, 1 + j]
            if visited[neighbour] == tag:
                continue
            visited[neighbour] = tag
            d = _distance(precision, query, vectors, table, row_norms, gdim, gcol,
                          scaled_query, codes, query_bits, bits, metric, neighbour)
            computed += 1
            if top_size < ef or d < bound:
                cand_size = _min_push(cand_keys, cand_rows, cand_size, d, neighbour)
                _prefetch_at(links0, neighbour, 0)
                if (not (any_deleted and deleted[neighbour])
                        and (not filtered or allow[neighbour])):
                    top_size = _min_push(top_keys, top_rows, top_size, -d, neighbour)
                    if top_size > ef:
                        top_size = _min_pop(top_keys, top_rows, top_size)
                    bound = -top_keys[0]
    found = top_size
    while top_size > 0:  # the beam pops the farthest first: fill from the back
        out_keys[top_size - 1] = -top_keys[0]
        out_rows[top_size - 1] = top_rows[0]
        top_size = _min_pop(top_keys, top_rows, top_size)
    return found, computed


@numba.njit(inline="always", fastmath=True)
def _stages(qi, query, vectors, table, row_norms, query_norms, metric, gdim, scaled_query,
            codes, query_bits, bits, rows, partial, scores, n_in, float_done, stage_dims,
            stage_cols, stage_keeps, stage_precs, first_stage, id_of_row, out_ids, out_scores,
            out_counts, out_scored):
    """Stages ``first_stage..`` over one query's candidates; writes the top k as ids."""
    n_stages = stage_dims.shape[0]
    for stage in range(first_stage, n_stages):
        stop = stage_dims[stage]
        col = stage_cols[stage]
        precision = stage_precs[stage]
        new_scores = np.empty(n_in, dtype=np.float32)
        if precision == 0:
            _prefetch_rows(vectors, rows, n_in, float_done, stop)
        elif precision == 1:
            _prefetch_rows(codes, rows, n_in, 0, codes.shape[1])
        else:
            _prefetch_rows(bits, rows, n_in, 0, bits.shape[1])
        for j in range(n_in):
            row = rows[j]
            if precision == 0:
                acc = partial[j] + _float_sum(query, vectors, table, row, float_done, stop,
                                              metric)
                partial[j] = acc
                if metric == 2:
                    new_scores[j] = -acc
                elif metric == 1:
                    denom = query_norms[col] * row_norms[row, col]
                    new_scores[j] = acc / denom if denom > 0.0 else np.float32(0.0)
                else:
                    new_scores[j] = acc
            elif precision == 1:
                acc = _int8_dot(scaled_query, codes, row)
                if metric == 2:
                    norm = row_norms[row, col]
                    new_scores[j] = 2.0 * acc - norm * norm
                else:
                    new_scores[j] = acc
            else:
                new_scores[j] = -_hamming(query_bits, bits, row)
        out_scored[qi, stage] = n_in
        if precision == 0:
            float_done = stop
        keep = min(stage_keeps[stage], n_in)
        order = np.argsort(-new_scores, kind="mergesort")
        kept_rows = np.empty(keep, dtype=np.int64)
        kept_partial = np.empty(keep, dtype=np.float32)
        kept_scores = np.empty(keep, dtype=np.float32)
        for t in range(keep):
            kept_rows[t] = rows[order[t]]
            kept_partial[t] = partial[order[t]]
            kept_scores[t] = new_scores[order[t]]
        rows, partial, scores, n_in = kept_rows, kept_partial, kept_scores, keep
    k = out_ids.shape[1]
    count = min(k, n_in)
    for t in range(k):
        if t < count:
            out_ids[qi, t] = id_of_row[rows[t]]
            out_scores[qi, t] = scores[t]
        else:
            out_ids[qi, t] = -1
            out_scores[qi, t] = -np.inf
    out_counts[qi] = count


@numba.njit(inline="always", fastmath=True)
def _prepare_query(query, gdim, metric, query_norms, gcol, scales, n_words, stage_precs):
    """The query as the code stages of ``stage_precs`` read it: scaled for int8, sign bits for
    binary (left empty where no stage reads them: the codes an index keeps are not always
    the ones a plan uses, and the sign loop alone cost about 1 us at 384 dims)."""
    uses_int8 = False
    uses_binary = False
    for stage in range(stage_precs.shape[0]):
        uses_int8 |= stage_precs[stage] == 1
        uses_binary |= stage_precs[stage] == 2
    scaled = np.empty(scales.shape[0] if uses_int8 else 0, dtype=np.float32)
    if scaled.shape[0] > 0:
        factor = np.float32(1.0)
        if metric == 1 and query_norms[gcol] > 0.0:
            factor = np.float32(1.0) / query_norms[gcol]
        for c in range(scaled.shape[0]):
            scaled[c] = query[c] * scales[c] * factor
    query_bits = np.zeros(n_words if uses_binary else 0, dtype=np.uint64)
    for c in range(min(gdim, 64 * query_bits.shape[0])):
        sign = np.uint64(1) if query[c] > 0.0 else np.uint64(0)
        query_bits[c >> 6] |= sign << np.uint64(c & 63)
    return scaled, query_bits


@numba.njit(fastmath=True, nogil=True, cache=True)
def _graph_query(qi, queries, vectors, table, row_norms, dims, deleted, allow, links0,
                 upper, upper_start, entry, max_level, codes, scales, bits, metric, ef,
                 stage_dims, stage_cols, stage_keeps, stage_precs, visited, tag, cand_keys,
                 cand_rows, id_of_row, out_ids, out_scores, out_counts, out_scored, check_range):
    query = queries[qi]
    query_norms = query_prefix_norms(query, dims)
    if check_range and not _in_range(query_norms[-1]):
        out_counts[qi] = -1
        return
    gdim = stage_dims[0]
    gcol = stage_cols[0]
    precision = stage_precs[0]
    scaled_query, query_bits = _prepare_query(query, gdim, metric, query_norms, gcol,
                                              scales, bits.shape[1], stage_precs)
    walked_rows = np.empty(ef, dtype=np.int64)
    walked_keys = np.empty(ef, dtype=np.float32)
    # precision and metric are passed as constants so that each copy of the walk is compiled
    # without their branches in its inner loop (1.6-2x faster than testing them per distance)
    if precision == 0:
        if metric == 0:
            found, computed = _walk(0, query, vectors, table, row_norms, deleted, allow, links0,
                upper, upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits,
                bits, 0, ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
        elif metric == 1:
            found, computed = _walk(0, query, vectors, table, row_norms, deleted, allow, links0,
                upper, upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits,
                bits, 1, ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
        else:
            found, computed = _walk(0, query, vectors, table, row_norms, deleted, allow, links0,
                upper, upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits,
                bits, 2, ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
    elif precision == 1:
        if metric == 2:
            found, computed = _walk(1, query, vectors, table, row_norms, deleted, allow, links0,
                upper, upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits,
                bits, 2, ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
        else:
            found, computed = _walk(1, query, vectors, table, row_norms, deleted, allow, links0,
                upper, upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits,
                bits, 0, ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
    else:
        found, computed = _walk(2, query, vectors, table, row_norms, deleted, allow, links0, upper,
            upper_start, entry, max_level, gdim, gcol, scaled_query, codes, query_bits, bits, 0,
            ef, visited, tag, cand_keys, cand_rows, walked_rows, walked_keys)
    out_scored[qi, 0] = computed
    n_in = min(found, stage_keeps[0])
    rows = walked_rows[:n_in].copy()
    partial = np.empty(n_in, dtype=np.float32)
    scores = np.empty(n_in, dtype=np.float32)
    for j in range(n_in):
        row = rows[j]
        partial[j] = _partial_from_distance(precision, walked_keys[j], metric, row_norms, gcol,
                                            row)
        # the graph stage's own score, reported when it is the only stage
        if precision == 0:
            if metric == 2:
                scores[j] = -partial[j]
            elif metric == 1:
                denom = query_norms[gcol] * row_norms[row, gcol]
                scores[j] = partial[j] / denom if denom > 0.0 else np.float32(0.0)
            else:
                scores[j] = partial[j]
        else:
            scores[j] = -walked_keys[j]
    float_done = gdim if precision == 0 else 0
    _stages(qi, query, vectors, table, row_norms, query_norms, metric, gdim, scaled_query,
            codes, query_bits, bits, rows, partial, scores, n_in, float_done, stage_dims,
            stage_cols, stage_keeps, stage_precs, 1, id_of_row, out_ids, out_scores, out_counts,
            out_scored)


@numba.njit(inline="always")
def _lowest(counts):
    """The smallest entry of ``counts`` (0 for an empty batch)."""
    lowest = counts[0] if counts.shape[0] else 0
    for qi in range(1, counts.shape[0]):
        lowest = min(lowest, counts[qi])
    return lowest


_GRAPH_SIGNATURE = (
    "i8(f4[:, ::1], {store}[:, ::1], f4[::1], f4[:, ::1], i8[::1], b1[::1], b1[::1], "
    "i4[:, ::1], i4[:, ::1], i8[::1], i8, i8, i1[:, ::1], f4[::1], u8[:, ::1], i8, i8, "
    "i8[::1], i8[::1], i8[::1], i8[::1], u4[:, ::1], f4[:, ::1], i4[:, ::1], i8, i8[::1], "
    "i8[:, ::1], f4[:, ::1], i8[::1], i8[:, ::1], b1, i8[::1], i8)"
)
_GRAPH_SIGNATURES = [_GRAPH_SIGNATURE.format(store=store) for store in ("f4", "u2")]


@numba.njit(_GRAPH_SIGNATURES, fastmath=True, cache=True, nogil=True)
def graph_funnel_serial(queries, vectors, table, row_norms, dims, deleted, allow,
                        links0, upper, upper_start, entry, max_level, codes, scales, bits,
                        metric, ef, stage_dims, stage_cols, stage_keeps, stage_precs, visited,
                        heap_keys, heap_rows, tag_base, id_of_row, out_ids, out_scores,
                        out_counts, out_scored, check_range, handoff_slots, handoff_slot):
    """The whole funnel for a batch, one query after another on the calling thread.

    Stage 0 walks the graph (``links0``: per row ``[count, neighbours...]`` at level 0;
    ``upper[upper_start[row] + level - 1]`` the same at ``level >= 1``) from ``entry`` at
    precision ``stage_precs[0]`` and dim ``stage_dims[0]`` with beam width ``ef``, and keeps
    ``stage_keeps[0]`` rows that are neither ``deleted`` nor outside ``allow`` (an empty
    ``allow`` allows every row, an empty ``deleted`` says none is deleted). Each later stage
    scores the survivors at its dim and precision and keeps ``stage_keeps[stage]``. The best
    ``out_ids.shape[1]`` are written as ids (``id_of_row``), best first, padded with -1 /
    -inf. ``dims`` are the index's nesting dims: each query's prefix norms (cosine) are
    computed here, as the rows' were at add.
    ``visited[0]`` is a tag array over rows; query ``qi`` marks with ``tag_base + qi + 1``,
    so the caller never clears it between calls. ``heap_keys`` / ``heap_rows`` (same shape
    as ``visited``, one more column) hold the walk's candidate heap. ``out_scored[qi, s]``:
    distances computed in the walk (stage 0) or candidates scored (later stages). With
    ``check_range``, a query whose norm is not finite or out of range is not searched and
    gets ``out_counts[qi] = -1``. ``handoff_slots[handoff_slot]`` is this thread's flag of
    :mod:`mrlsearch._handoff` (-1: none). Returns the smallest of ``out_counts`` (-1 when a
    query was out of range), so the caller tests one number instead of reducing the array.
    """
    kernel_entered(handoff_slots, handoff_slot)
    visited_row = visited[0]
    for qi in range(queries.shape[0]):
        _graph_query(qi, queries, vectors, table, row_norms, dims, deleted, allow,
                     links0, upper, upper_start, entry, max_level, codes, scales, bits, metric,
                     ef, stage_dims, stage_cols, stage_keeps, stage_precs, visited_row,
                     np.uint32(tag_base + qi + 1), heap_keys[0], heap_rows[0], id_of_row,
                     out_ids, out_scores, out_counts, out_scored, check_range)
    lowest = _lowest(out_counts)
    kernel_leaving(handoff_slots, handoff_slot)
    return lowest


@numba.njit(_GRAPH_SIGNATURES, fastmath=True, cache=True, nogil=True, parallel=True)
def graph_funnel_parallel(queries, vectors, table, row_norms, dims, deleted, allow,
                          links0, upper, upper_start, entry, max_level, codes, scales, bits,
                          metric, ef, stage_dims, stage_cols, stage_keeps, stage_precs, visited,
                          heap_keys, heap_rows, tag_base, id_of_row, out_ids, out_scores,
                          out_counts, out_scored, check_range, handoff_slots, handoff_slot):
    """:func:`graph_funnel_serial` parallel over queries: ``visited.shape[0]`` interleaved
    chunks of the batch, each with its own row of ``visited``."""
    kernel_entered(handoff_slots, handoff_slot)
    n_chunks = visited.shape[0]
    n_queries = queries.shape[0]
    for chunk in prange(n_chunks):
        visited_row = visited[chunk]
        for qi in range(chunk, n_queries, n_chunks):
            _graph_query(qi, queries, vectors, table, row_norms, dims, deleted, allow,
                         links0, upper, upper_start, entry, max_level, codes, scales, bits,
                         metric, ef, stage_dims, stage_cols, stage_keeps, stage_precs,
                         visited_row, np.uint32(tag_base + qi + 1), heap_keys[chunk],
                         heap_rows[chunk], id_of_row, out_ids,
                         out_scores, out_counts, out_scored, check_range)
    lowest = _lowest(out_counts)
    kernel_leaving(handoff_slots, handoff_slot)
    return lowest


@numba.njit(fastmath=True, nogil=True, cache=True)
def _rows_query(qi, queries, vectors, table, row_norms, dims, candidates, codes, scales,
                bits, metric, stage_dims, stage_cols, stage_keeps, stage_precs, id_of_row,
                out_ids, out_scores, out_counts, out_scored, check_range):
    """One query of :func:`rows_funnel` (a function of its own: numba's parallel loops must
    not see the allocations of the stages, or they may hoist them out of the loop)."""
    query = queries[qi]
    query_norms = query_prefix_norms(query, dims)
    if check_range and not _in_range(query_norms[-1]):
        out_counts[qi] = -1
        return
    scaled_query, query_bits = _prepare_query(query, stage_dims[0], metric, query_norms,
                                              stage_cols[0], scales, bits.shape[1],
                                              stage_precs)
    n_in = candidates.shape[0]
    partial = np.zeros(n_in, dtype=np.float32)
    scores = np.empty(n_in, dtype=np.float32)
    _stages(qi, query, vectors, table, row_norms, query_norms, metric, stage_dims[0],
            scaled_query, codes, query_bits, bits, candidates, partial, scores, n_in, 0,
            stage_dims, stage_cols, stage_keeps, stage_precs, 0, id_of_row, out_ids,
            out_scores, out_counts, out_scored)


_ROWS_SIGNATURE = (
    "i8(f4[:, ::1], {store}[:, ::1], f4[::1], f4[:, ::1], i8[::1], i8[::1], "
    "i1[:, ::1], f4[::1], u8[:, ::1], i8, i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], "
    "i8[:, ::1], f4[:, ::1], i8[::1], i8[:, ::1], b1, i8[::1], i8)"
)
_ROWS_SIGNATURES = [_ROWS_SIGNATURE.format(store=store) for store in ("f4", "u2")]


@numba.njit(_ROWS_SIGNATURES, fastmath=True, cache=True, nogil=True)
def rows_funnel_serial(queries, vectors, table, row_norms, dims, candidates, codes, scales,
                       bits, metric, stage_dims, stage_cols, stage_keeps, stage_precs,
                       id_of_row, out_ids, out_scores, out_counts, out_scored, check_range,
                       handoff_slots, handoff_slot):
    """:func:`rows_funnel` one query after another on the calling thread (small batches, one
    thread asked for, or a forked child, where numba's thread pool cannot run)."""
    kernel_entered(handoff_slots, handoff_slot)
    for qi in range(queries.shape[0]):
        _rows_query(qi, queries, vectors, table, row_norms, dims, candidates, codes,
                    scales, bits, metric, stage_dims, stage_cols, stage_keeps, stage_precs,
                    id_of_row, out_ids, out_scores, out_counts, out_scored, check_range)
    lowest = _lowest(out_counts)
    kernel_leaving(handoff_slots, handoff_slot)
    return lowest


@numba.njit(_ROWS_SIGNATURES, fastmath=True, cache=True, nogil=True, parallel=True)
def rows_funnel(queries, vectors, table, row_norms, dims, candidates, codes, scales,
                bits, metric, stage_dims, stage_cols, stage_keeps, stage_precs, id_of_row,
                out_ids, out_scores, out_counts, out_scored, check_range, handoff_slots,
                handoff_slot):
    """Every stage of a funnel over given first-stage candidate rows, the same for every query.

    Used where the first stage is a scan instead of a graph walk (its shortlist covers the
    index, or a filter allows so few rows that walking the graph would cost more): stage 0
    scores ``candidates`` at its dim and precision, later stages as in
    :func:`graph_funnel_serial` (``check_range`` and the return value too). Parallel over
    queries.
    """
    kernel_entered(handoff_slots, handoff_slot)
    for qi in prange(queries.shape[0]):
        _rows_query(qi, queries, vectors, table, row_norms, dims, candidates, codes,
                    scales, bits, metric, stage_dims, stage_cols, stage_keeps, stage_precs,
                    id_of_row, out_ids, out_scores, out_counts, out_scored, check_range)
    lowest = _lowest(out_counts)
    kernel_leaving(handoff_slots, handoff_slot)
    return lowest
