"""The schedule search behind :meth:`Searcher.tune`, through a measure callback.

``measure(stages, ef) -> (recall, recall_lower, seconds_per_query)`` runs one
schedule; ``screen(stages, ef) -> (recall, recall_lower, recall_upper, seconds_per_query)``
(optional) runs it on a few of the queries first, so that a schedule that cannot reach the
target is not run on all of them. This module only decides which schedules to try, so it
needs nothing of the Searcher's insides (and imports nothing of it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ._results import FunnelPlan

__all__: list[str] = []

#: Qualifying plans re-timed at the end of a search, and how many runs each.
_FINALISTS = 6
_RETIME_REPEATS = 3
#: How fast the rerank stages shrink: each later stage keeps ``decay`` times the previous
#: shortlist (0.5 is the paper's halving); ``None`` goes from the first stage to full dim.
_SHAPES = (0.5, 0.75, None)
_EF_FACTORS = (1, 2)
#: A branch whose fastest schedule already takes this many times the best qualifying one is
#: not grown further (its longer shortlists only cost more).
_PRUNE = 1.3
#: Binary walks are tried only on graphs of at least this many dims.
_BINARY_MIN_DIM = 64
#: The winner's beam is then tried this much narrower. The grid's beams are 1x or 2x a
#: shortlist and its shortlists grow by sqrt 2, so the cheapest qualifying beam can lie between
#: two grid points: on WordLlama (120k x 256) ef 56 won the grid, ef 44 qualified too and ran
#: 34 against 40.5 us a query, and ef 40 just missed (lower bound 0.947).
_NARROWER = (0.75, 0.875)

Measure = Callable[..., tuple[float, float, float]]
Screen = Callable[..., tuple[float, float, float, float]]


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


def make_stages(dims: Sequence[int], first_dim: int, precision: str, float_name: str,
                shortlist: int, k: int, decay: float | None, *, refine_binary: bool = False
                ) -> tuple[tuple[int, str, int], ...]:
    """A schedule from ``(first_dim, precision, shortlist)`` to ``(dims[-1], float, k)``.

    After a code walk the first float stage rescores at the graph dim itself (or goes on to
    a longer one with the shape's shrink), so codes only ever pick candidates. With
    ``refine_binary`` a binary walk's shortlist is first cut to a quarter by its int8 codes.
    """
    later = [d for d in dims if d > first_dim]
    first = (first_dim, precision, shortlist)
    if refine_binary and precision == "binary" and shortlist // 4 >= k:
        rest = make_stages(dims, first_dim, "int8", float_name, shortlist // 4, k, decay)
        return (first,) + rest
    if precision != float_name:  # codes only pick candidates: rescore at the graph dim too
        later = [first_dim] + later
    if not later:
        return (first,) if shortlist == k else ((first_dim, float_name, shortlist),)
    if decay is None:
        return (first, (later[-1], float_name, k))
    stages = [first]
    current = shortlist
    for prefix_dim in later[:-1]:
        current = max(k, int(round(current * decay)))
        stages.append((prefix_dim, float_name, current))
    stages.append((later[-1], float_name, k))
    return tuple(stages)


def search_plans(measure: Measure, *, dims: Sequence[int], index_dims: Sequence[int],
                 precisions: Sequence[str], float_name: str, refine_binary: bool, live: int,
                 k: int, target_recall: float, max_shortlist: int,
                 progress: bool | None, screen: Screen | None = None) -> FunnelPlan:
    """Try schedules in order of growing shortlist; keep the fastest that meets the target.

    For each (graph dim, walk precision, ef factor, shape) the shortlist grows until the
    target is met, since a longer shortlist only adds time. ``precisions`` are the walk's
    precisions to try, ``float_name`` the stored float type every later stage scores, and
    ``refine_binary`` whether int8 codes exist to refine a binary walk. With ``screen``, a
    schedule whose recall on the screening queries has an upper bound below the target keeps
    the screen's figures and is not measured on all queries (most schedules tried are too
    short to qualify: on 768 dims 57 measures took 0.66 s, 35 of them far below the target).
    The winner's beam is then narrowed where it still qualifies (:func:`_narrowed`).
    """
    grid = shortlist_grid(k, live, max_shortlist)
    qualified: dict[tuple, FunnelPlan] = {}
    # shapes differ only where there are dims between the walk's and the last one: with one
    # graph at full dim all three give the same schedule, measured once
    measured: dict[tuple, tuple[float, float, float]] = {}
    best_recall = (-1.0, None)
    measure(((index_dims[0], float_name, k),), k)  # warm up: no first-call cost in a timing
    total = len(index_dims) * len(precisions) * len(_EF_FACTORS) * len(grid)
    best_seconds = float("inf")
    with tqdm(total=total, desc="mrlsearch: tuning", unit="shortlist",
              disable=None if progress is not False else True, leave=False) as bar:
        for first_dim in index_dims:
            for precision in precisions:
                if precision == "binary" and first_dim < _BINARY_MIN_DIM:
                    bar.update(len(_EF_FACTORS) * len(grid))
                    continue  # a handful of sign bits cannot steer a walk
                for ef_factor in _EF_FACTORS:
                    open_shapes = list(_SHAPES)
                    for step, shortlist in enumerate(grid):
                        bar.update(1)
                        if not open_shapes:
                            continue
                        ef = max(shortlist * ef_factor, shortlist)
                        fastest_here = float("inf")
                        for decay in list(open_shapes):
                            stages = make_stages(dims, first_dim, precision, float_name,
                                                 shortlist, k, decay,
                                                 refine_binary=refine_binary)
                            if (stages, ef) not in measured:
                                measured[stages, ef] = _measured(measure, screen, stages, ef,
                                                                 target_recall)
                            recall, lower, seconds = measured[stages, ef]
                            fastest_here = min(fastest_here, seconds)
                            if recall > best_recall[0]:
                                best_recall = (recall, stages)
                            if lower >= target_recall:
                                open_shapes.remove(decay)
                                qualified[stages, ef] = FunnelPlan(stages, ef, k, recall, lower,
                                                                   seconds)
                                best_seconds = min(best_seconds, seconds)
                        if shortlist >= live or fastest_here > _PRUNE * best_seconds:
                            # longer shortlists only cost more: this branch cannot win
                            bar.update(len(grid) - step - 1)
                            break
        if not qualified:
            recall, stages = best_recall
            raise ValueError(
                f"no funnel schedule reached target_recall={target_recall} (with a 95 % lower "
                f"bound) up to max_shortlist={max_shortlist}; the best was {recall:.3f} with "
                f"{stages}. Raise max_shortlist, index a longer prefix (index_dims), or lower "
                "the target.")
        # the re-timing and the narrowing count in the bar too: one unit a measure
        bar.set_description("mrlsearch: re-timing")
        _grow(bar, min(len(qualified), _FINALISTS) * _RETIME_REPEATS + len(_NARROWER))
        best = fastest(measure, list(qualified.values()), tick=bar.update)
        return _narrowed(measure, screen, best, target_recall, tried=measured, bar=bar)


def _grow(bar: tqdm, units: int) -> None:
    """Add ``units`` measures to the bar's total (the re-timing and narrowing to come)."""
    bar.total += units
    bar.refresh()


def _narrowed(measure: Measure, screen: Screen | None, best: FunnelPlan, target_recall: float,
              *, tried: dict[tuple, tuple[float, float, float]], bar: tqdm) -> FunnelPlan:
    """``best``, or the same schedule with a narrower beam (:data:`_NARROWER`) where one still
    qualifies and is faster. The first shortlist shrinks with the beam where it must (it never
    exceeds ``ef``), and later ones with it (they never grow). ``bar`` counts one unit per
    narrower beam and per re-timing measure."""
    (first_dim, precision, shortlist), k = best.stages[0], best.k
    candidates = [best]
    for factor in _NARROWER:
        bar.update(1)
        ef = int(round(best.ef * factor))
        keep = min(shortlist, ef)
        if keep < k:
            continue
        stages = ((first_dim, precision, keep),) + tuple(
            (dim, later_precision, max(k, min(later, keep)))
            for dim, later_precision, later in best.stages[1:])
        if (stages, ef) in tried:  # the grid measured it already, and it did not win
            continue
        recall, lower, seconds = _measured(measure, screen, stages, ef, target_recall)
        tried[stages, ef] = (recall, lower, seconds)
        if lower >= target_recall:
            candidates.append(FunnelPlan(stages, ef, k, recall, lower, seconds))
    if len(candidates) == 1:
        return best
    _grow(bar, min(len(candidates), _FINALISTS) * _RETIME_REPEATS)
    return fastest(measure, candidates, tick=bar.update)


def _measured(measure: Measure, screen: Screen | None, stages: tuple, ef: int,
              target_recall: float) -> tuple[float, float, float]:
    """(recall, recall_lower, seconds) of a schedule: the screen's where it cannot qualify."""
    if screen is not None:
        recall, lower, upper, seconds = screen(stages, ef)
        if upper < target_recall:
            return recall, lower, seconds
    return measure(stages, ef)


def fastest(measure: Measure, qualified: list[FunnelPlan], *,
            tick: Callable[[], object] | None = None) -> FunnelPlan:
    """Re-time the fastest few qualifying plans and return the fastest: single timings let
    plans a few microseconds apart swap places with the machine's noise.

    Each finalist keeps its best of :data:`_RETIME_REPEATS` runs, taken in rounds (every
    finalist once, then again) rather than one finalist's runs after another's, so that a slow
    spell of the host falls on all of them (the rule ``mrlsearch.benchmark`` times methods by).
    ``tick`` is called after each measure (a progress bar's update).
    """
    finalists = sorted(qualified, key=lambda plan: plan.seconds_per_query)[:_FINALISTS]
    best = [float("inf")] * len(finalists)
    for _ in range(_RETIME_REPEATS):
        for slot, plan in enumerate(finalists):
            best[slot] = min(best[slot], measure(plan.stages, plan.ef)[2])
            if tick is not None:
                tick()
    timed = [FunnelPlan(plan.stages, plan.ef, plan.k, plan.recall, plan.recall_lower, seconds)
             for plan, seconds in zip(finalists, best)]
    return min(timed, key=lambda plan: plan.seconds_per_query)
