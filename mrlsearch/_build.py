"""Auto-configuration behind :meth:`Searcher.build`: which graph dims, from a sample."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from ._payloads import encode as encode_payloads
from ._validation import check_fraction, check_matrix, check_positive_int

__all__: list[str] = []

#: A prefix graph walk computes about this many distances per unit of ``ef`` (M=16).
_DISTANCES_PER_EF = 12.0
_SAMPLE_QUERIES = 300
#: A prefix graph estimated at most this share of the full-dim walk's cost is built alone: it
#: wins by more than any error of the estimate. Measured: 0.19 (2048 dims) and 0.36 (768 dims)
#: gave prefix plans 5.8x and 3.1x faster than hnswlib at full dim; at 0.36 the full-dim graph
#: that was also built (then dropped) had been ~60 % of the build time. Even a plan twice as
#: slow as estimated stays ahead of plain hnswlib: the full-dim int8 walk it is estimated
#: against is itself ~1.5-2x hnswlib.
PREFIX_ONLY_BELOW = 0.4
#: A best prefix estimated at this share or more is not built: on real MRL embeddings (0.83 and
#: 1.0 measured) an int8 walk of the full-dim graph beat every prefix graph.
FULL_ONLY_ABOVE = 0.7
#: Between the two shares the prefix graph is built and tuned first; the full-dim graph is built
#: too only when the tuned walk needed this many times the estimated beam (the estimate was
#: far off). Measured at a share of 0.51 (synthetic 20k x 768): the prefix plan took 29 us a
#: query against 38 us for the full-dim one, with a beam 1.5x the estimate; building both (as
#: before) had doubled the build time to win nothing.
MISESTIMATE = 3.0
#: The graph is linked by the shortest prefix (of at least :data:`MIN_LINK_DIM` dims) whose
#: sample shortlist is at most this many times the walk dim's: its neighbourhoods then guide a
#: walk that scores at the longer dim as well as the walk dim's own graph, which hnswlib builds
#: slower. Measured (int8 walks at the graph dim, recall@10 against the beam, and the tuned
#: plans of benchmarks/funnel.py): synthetic 768 walked at 128 dims over a graph linked by 32
#: (shortlist ratio 3.4) needed the same beam, and the tuned plan was the same; MiniLM (384)
#: over 256 (2.4) the same beam. Above the ratio it costs queries more than it saves in build:
#: WordLlama (256) over 128 (ratio 9) needed beam 80 instead of 56 once tuned (single queries
#: 1.2x hnswlib instead of 2.3x, for a build 1.25x faster), MiniLM over 128 (8.7) 1.49x
#: instead of 1.64-1.84x, synthetic 768 over 16 (8.8) 1.4x the time at equal recall.
LINK_SHORTLIST_RATIO = 4.0
#: hnswlib graphs over fewer dims guided walks badly even where the ratio allowed them.
MIN_LINK_DIM = 32


def shortlist_needed(sample: np.ndarray, queries: np.ndarray, dims: Sequence[int], k: int,
                     target_recall: float, metric: str) -> dict[int, int]:
    """For each dim, the shortlist at that prefix (within ``sample``) that holds a
    ``target_recall`` share of each query's full-dim top ``k``, at the 90th percentile of
    queries.

    The prefix inner products are summed up dim block by dim block (one pass over the sample
    for all prefixes, instead of one product per prefix), and a query's shortlist is the rank
    of its true neighbour with the ``ceil(target_recall * k)``-th best prefix score.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    >>> shortlist_needed(x, x[:20], [8], k=5, target_recall=1.0, metric="ip")
    {8: 5}
    """
    x = np.asarray(sample, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32)
    if metric == "l2":  # distances about the sample's mean: no float32 cancellation of offsets
        centre = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        x, q = x - centre, q - centre
    full_dim = x.shape[1]
    wanted = sorted({int(d) for d in dims})

    def scores(dots: np.ndarray, x_squares: np.ndarray) -> np.ndarray:
        # only each query's order of the rows matters: a factor per query (its norm) is left out
        if metric == "cosine":
            return dots * (1.0 / np.sqrt(np.maximum(x_squares, 1e-30)))[None, :]
        if metric == "l2":
            return 2 * dots - x_squares[None, :]
        return dots

    full = scores(q @ x.T, np.einsum("ij,ij->i", x, x))
    truth = np.argpartition(-full, k - 1, axis=1)[:, :k]
    need = int(math.ceil(target_recall * k))
    dots = np.zeros((q.shape[0], x.shape[0]), dtype=np.float32)
    x_squares = np.zeros(x.shape[0], dtype=np.float32)
    done = 0
    out = {}
    for prefix_dim in wanted:
        if prefix_dim == full_dim:
            prefix = full
        else:
            block_x, block_q = x[:, done:prefix_dim], q[:, done:prefix_dim]
            dots += block_q @ block_x.T
            x_squares += np.einsum("ij,ij->i", block_x, block_x)
            done = prefix_dim
            prefix = scores(dots, x_squares)
        truth_scores = np.take_along_axis(prefix, truth, axis=1)
        # the true neighbour with the need-th best prefix score has the need-th best rank
        threshold = -np.partition(-truth_scores, need - 1, axis=1)[:, need - 1]
        per_query = (prefix > threshold[:, None]).sum(axis=1) + 1
        out[prefix_dim] = int(np.percentile(per_query, 90))
    return out


def _scaled_shortlist(shortlist: int, *, n_rows: int, sample_rows: int, k: int) -> int:
    return max(k, int(math.ceil(shortlist * n_rows / max(sample_rows, 1))))


def estimated_ef(shortlist: int, *, n_rows: int, sample_rows: int, k: int) -> int:
    """The beam a walk is estimated to need for a sample ``shortlist`` over ``n_rows``."""
    return max(_scaled_shortlist(shortlist, n_rows=n_rows, sample_rows=sample_rows, k=k), 2 * k)


def estimate_costs(needed: dict[int, int], *, n_rows: int, sample_rows: int, dim: int,
                   k: int) -> dict[int, float]:
    """Multiply-adds per query of a walk at each dim plus the float reranking after it."""
    costs = {}
    for prefix_dim, shortlist in needed.items():
        scaled = _scaled_shortlist(shortlist, n_rows=n_rows, sample_rows=sample_rows, k=k)
        ef = estimated_ef(shortlist, n_rows=n_rows, sample_rows=sample_rows, k=k)
        costs[prefix_dim] = _DISTANCES_PER_EF * ef * prefix_dim + scaled * (dim - prefix_dim)
    return costs


def graphs_to_build(costs: dict[int, float], dim: int) -> tuple[list[int], bool]:
    """Which graph to build from the estimated costs, and whether the choice is unsure.

    The best prefix when it is estimated below :data:`FULL_ONLY_ABOVE` of the full-dim walk,
    else the full dim. Unsure above :data:`PREFIX_ONLY_BELOW`: the full-dim graph is then
    built too if the tuned prefix walk shows the estimate far off (:data:`MISESTIMATE`).

    Examples
    --------
    >>> graphs_to_build({128: 19.0, 2048: 100.0}, 2048)
    ([128], False)
    >>> graphs_to_build({64: 55.0, 256: 100.0}, 256)
    ([64], True)
    """
    best_prefix = min((d for d in costs if d != dim), key=costs.get, default=dim)
    if best_prefix == dim:
        return [dim], False
    share = costs[best_prefix] / costs[dim]
    if share >= FULL_ONLY_ABOVE:
        return [dim], False
    return [best_prefix], share > PREFIX_ONLY_BELOW


def link_dim_for(needed: dict[int, int], walk_dim: int, full_dim: int) -> int | None:
    """The prefix to link the graph at ``walk_dim`` by, from each dim's sample shortlist
    (``needed``); None for a full-dim graph (only prefix graphs are linked shorter), or where no
    shorter prefix ranks well enough (see :data:`LINK_SHORTLIST_RATIO`).

    Examples
    --------
    >>> link_dim_for({16: 140, 32: 54, 64: 28, 128: 16, 768: 10}, 128, 768)
    32
    >>> link_dim_for({16: 1496, 32: 536, 64: 170, 128: 63, 256: 26, 768: 10}, 256, 768)
    128
    >>> link_dim_for({16: 4806, 32: 1935, 64: 452, 128: 87, 256: 24, 384: 10}, 384, 384) is None
    True
    >>> link_dim_for({16: 20, 32: 12, 64: 10}, 32, 64) is None
    True
    """
    if walk_dim >= full_dim:
        # a full-dim graph is chosen where the prefixes rank badly, and linking it by one cost
        # queries even within the ratio: synthetic 30k x 1024 (decay 0.5) walked at 1024 over a
        # graph linked by 512 (ratio 1.7) tuned to beam 56 instead of 40, 126 us a query
        # against 86 us unlinked (benchmarks/build_policy.py); MiniLM (384 linked by 256)
        # built no faster than unlinked in the funnel benchmark
        return None
    limit = LINK_SHORTLIST_RATIO * needed[walk_dim]
    return next((d for d in sorted(needed) if MIN_LINK_DIM <= d < walk_dim
                 and needed[d] <= limit), None)


def build_searcher(cls, vectors, *, queries, k, target_recall, ids, payloads, metric, dims,
                   dtype, M, ef_construction, sample_size, progress):
    """See :meth:`Searcher.build`."""
    started = time.perf_counter()
    source = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
    if source.ndim != 2 or source.shape[0] == 0:
        check_matrix(source, "vectors", dim=source.shape[-1] if source.ndim else 1,
                     allow_1d=False)
    n_rows, dim = source.shape
    if payloads is not None:  # refused before the sample work, not after it; encoded once
        payloads = encode_payloads(payloads, n_rows, "payloads")
    k = check_positive_int(k, "k")
    target_recall = check_fraction(target_recall, "target_recall")
    sample_size = check_positive_int(sample_size, "sample_size")
    rng = np.random.default_rng(0)
    if queries is None:
        if n_rows < 2:
            raise ValueError(f"'vectors' must hold at least 2 rows to build and tune an index "
                             f"(got {n_rows}); for fewer, use Searcher(...).add")
        picked = np.sort(rng.choice(n_rows, size=min(_SAMPLE_QUERIES, n_rows), replace=False))
        query_batch = np.asarray(source[picked], dtype=np.float32)
    else:
        query_batch, _ = check_matrix(queries, "queries", dim=dim, allow_1d=False)
    probe = cls(dim, dims, metric=metric, dtype=dtype, M=M, ef_construction=ef_construction)
    candidate_dims = [d for d in probe.dims if d >= 16 or d == dim]
    sample_rows = min(sample_size, n_rows)
    sample_at = np.sort(rng.choice(n_rows, size=sample_rows, replace=False))
    sample = np.asarray(source[sample_at], dtype=np.float32)
    effective_k = min(k, sample_rows)
    needed = shortlist_needed(sample, query_batch[:_SAMPLE_QUERIES], candidate_dims,
                              effective_k, target_recall, metric)
    costs = estimate_costs(needed, n_rows=n_rows, sample_rows=sample_rows, dim=dim, k=k)
    # one graph is built; where the estimate is unsure and the tuned walk shows it far off,
    # the full-dim graph is built too and the faster plan kept (both would double the time)
    index_dims, unsure = graphs_to_build(costs, dim)
    estimated = time.perf_counter()

    def build_and_tune(graph_dims: list[int]):
        built = cls(dim, probe.dims, metric=metric, index_dims=graph_dims, M=M,
                    ef_construction=ef_construction, dtype=dtype,
                    link_dim=link_dim_for(needed, graph_dims[0], dim))
        built.add(source, ids, payloads=payloads, progress=progress)
        added_at = time.perf_counter()
        return built, added_at, built.tune(query_batch, k=k, target_recall=target_recall,
                                           progress=progress)

    graphs_built = list(index_dims)
    try:
        searcher, added, plan = build_and_tune(index_dims)
    except ValueError:  # no schedule over the prefix graph reached the target
        if index_dims == [dim]:
            raise
        searcher, added, plan = build_and_tune([dim])  # never linked: plain HNSW's graph
        graphs_built.append(dim)
    else:
        if unsure and plan.ef > MISESTIMATE * estimated_ef(
                needed[index_dims[0]], n_rows=n_rows, sample_rows=sample_rows, k=k):
            full, _, full_plan = build_and_tune([dim])
            graphs_built.append(dim)
            if full_plan.seconds_per_query < plan.seconds_per_query:
                searcher, plan = full, full_plan
    searcher.drop_graphs([plan.stages[0][0]])
    searcher.build_report = {
        "sample_rows": sample_rows, "shortlist_needed": needed,
        "estimated_cost": {d: float(c) for d, c in costs.items()},
        "graphs_built": graphs_built, "link_dim": searcher.link_dim, "plan": plan.to_dict(),
        # where the build's time went: checks and the sample estimate, add (the graph and
        # codes), tune (with a second graph's add and tune where one was built)
        "seconds": {"estimate": estimated - started, "add": added - estimated,
                    "tune": time.perf_counter() - added},
    }
    return searcher
