"""The schedule search behind :meth:`Searcher.tune`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ._results import FunnelPlan, SearchResult

if TYPE_CHECKING:
    from .searcher import Searcher

__all__: list[str] = []

#: Qualifying plans re-timed at the end of a search, and how many runs each.
_FINALISTS = 6
_RETIME_REPEATS = 3
#: How fast the rerank stages shrink: each later stage keeps ``decay`` times the previous
#: shortlist (0.5 is the paper's halving); ``None`` goes from the first stage to full dim.
_SHAPES = (0.5, 0.75, None)
_EF_FACTORS = (1, 2)


def shortlist_grid(k: int, live: int, max_shortlist: int) -> list[int]:
    """First-stage shortlists to try: 2k, 2.8k, 4k, 5.7k, ... (steps of sqrt 2), capped by the
    index size."""
    grid = []
    step = 0
    while (shortlist := int(round(2 * k * 2 ** (step / 2)))) < min(live, max_shortlist):
        grid.append(shortlist)
        step += 1
    grid.append(min(live, max_shortlist) if live > k else k)
    return sorted(set(max(s, k) for s in grid))


def make_stages(dims: tuple[int, ...], first_dim: int, shortlist: int, k: int,
                decay: float | None) -> tuple[tuple[int, int], ...]:
    """A schedule starting at ``(first_dim, shortlist)`` and ending at ``(dims[-1], k)``."""
    later = [d for d in dims if d > first_dim]
    if not later:
        return ((first_dim, k),) if shortlist == k else ((first_dim, shortlist),)
    if decay is None:
        return ((first_dim, shortlist), (later[-1], k))
    stages = [(first_dim, shortlist)]
    current = shortlist
    for prefix_dim in later[:-1]:
        current = max(k, int(round(current * decay)))
        stages.append((prefix_dim, current))
    stages.append((later[-1], k))
    return tuple(stages)


def _fastest(searcher: Searcher, batch: np.ndarray, truth: SearchResult,
             qualified: list[FunnelPlan], k: int) -> FunnelPlan:
    """Re-time the fastest few qualifying plans end to end (graph search included), best of
    :data:`_RETIME_REPEATS` runs each, and return the fastest.

    During the search each schedule is timed once; plans a few microseconds apart would
    otherwise swap places with the machine's noise from one ``tune`` to the next.
    """
    finalists = sorted(qualified, key=lambda plan: plan.seconds_per_query)[:_FINALISTS]
    timed = []
    for plan in finalists:
        seconds = min(searcher._measure(batch, truth, plan.stages, plan.ef, k)[3]
                      for _ in range(_RETIME_REPEATS))
        timed.append(FunnelPlan(plan.stages, plan.ef, k, plan.recall, plan.recall_lower,
                                seconds))
    return min(timed, key=lambda plan: plan.seconds_per_query)


def search_plans(searcher: Searcher, batch: np.ndarray, truth: SearchResult, *, k: int,
                 target_recall: float, max_shortlist: int, progress: bool | None) -> FunnelPlan:
    """Try schedules in order of growing shortlist; keep the fastest that meets the target.

    For each (first dim, ef factor, shape) the shortlist grows until the target is met, since a
    longer shortlist only adds time. The first-stage graph results are shared by the shapes.
    """
    live = len(searcher)
    grid = shortlist_grid(k, live, max_shortlist)
    best: FunnelPlan | None = None
    qualified: list[FunnelPlan] = []
    best_recall = (-1.0, None)
    # warm the kernels so the first measured schedule pays no compile or cache cost
    searcher._measure(batch[:2], SearchResult(truth.ids[:2], truth.scores[:2], truth.counts[:2]),
                      ((searcher.index_dims[0], k),), k, k)
    query_norms = searcher._prefix_norms(batch)
    total = len(searcher.index_dims) * len(_EF_FACTORS) * len(grid)
    with tqdm(total=total, desc="mrlsearch: tuning", unit="shortlist",
              disable=None if progress is not False else True, leave=False) as bar:
        for first_dim in searcher.index_dims:
            for ef_factor in _EF_FACTORS:
                open_shapes = list(_SHAPES)
                for shortlist in grid:
                    bar.update(1)
                    if not open_shapes:
                        continue
                    ef = max(shortlist * ef_factor, shortlist)
                    with searcher._lock.read():
                        first = searcher._first_stage(batch, first_dim, shortlist, ef, -1,
                                                      query_norms)
                    for decay in list(open_shapes):
                        stages = make_stages(searcher.dims, first_dim, shortlist, k, decay)
                        _, recall, lower, seconds = searcher._measure(
                            batch, truth, stages, ef, k, first, query_norms)
                        if recall > best_recall[0]:
                            best_recall = (recall, stages)
                        if lower >= target_recall:
                            open_shapes.remove(decay)
                            qualified.append(FunnelPlan(stages, ef, k, recall, lower, seconds))
                    if shortlist >= live:
                        break
    if qualified:
        best = _fastest(searcher, batch, truth, qualified, k)
    if best is None:
        recall, stages = best_recall
        raise ValueError(
            f"no funnel schedule reached target_recall={target_recall} (with a 95 % lower bound) "
            f"up to max_shortlist={max_shortlist}; the best was {recall:.3f} with {stages}. "
            "Raise max_shortlist, index a longer prefix (index_dims), or lower the target."
        )
    return best
