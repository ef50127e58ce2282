"""The threshold search behind :meth:`Classifier.calibrate <mrlsearch.Classifier.calibrate>`.

Every row's confidence and correctness at each dim are computed once; a cascade is then
replayed on them (:func:`tally`, compiled) for each candidate threshold vector, so the search
never recomputes a logit. :class:`ThresholdSearch` walks the greedy path and refines a choice;
:func:`cross_validate` checks a cost level on folds the thresholds were not chosen on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from ._errors import DimensionError

__all__: list[str] = []

# Candidate thresholds per dim: quantiles of that dim's confidences on the search's rows.
_GRID_SIZE = 64
# Any threshold above this stops no row (confidences are at most 1): the dim is not tested.
_UNTESTED = np.inf


@numba.njit(["void(f4[:, ::1], b1[:, ::1], f8[::1], i8[::1], i8[::1])"], cache=True,
            nogil=True)
def _route(confidence, correct, thresholds, counts, tallies):
    """Replay a cascade on precomputed per-dim confidences: where each row stops, and tallies.

    ``confidence`` and ``correct`` are (rows, dims): a row's confidence and whether its label
    is right at each dim. A row stops at the first dim ``i`` with ``confidence >=
    thresholds[i]`` (the last dim always answers). Writes ``counts[i]``, the rows that stop at
    dim ``i``, and ``tallies`` = (right answers, losses: full dim right and the cascade wrong,
    gains: the reverse).
    """
    last = confidence.shape[1] - 1
    counts[:] = 0
    hits = 0
    losses = 0
    gains = 0
    for row in range(confidence.shape[0]):
        stop = last
        for i in range(last):
            if confidence[row, i] >= thresholds[i]:
                stop = i
                break
        counts[stop] += 1
        hit = correct[row, stop]
        full = correct[row, last]
        if hit:
            hits += 1
            if not full:
                gains += 1
        elif full:
            losses += 1
    tallies[0] = hits
    tallies[1] = losses
    tallies[2] = gains


class Point(NamedTuple):
    """A threshold vector and what it does on the rows of one :class:`ThresholdSearch`."""

    thresholds: tuple[float, ...]
    accuracy: float
    expected_dim: float
    cost: float
    drop: float  # mean accuracy drop against full dim (losses - gains) / n
    unit: float  # McNemar standard error sqrt(losses + gains + 1) / n; 0 if no row stops early
    losses: int = 0  # rows full dim gets right and the cascade wrong

    def bound(self, sigmas: float) -> float:
        return self.drop + sigmas * self.unit


def tally(confidence: np.ndarray, correct: np.ndarray, thresholds: np.ndarray
           ) -> tuple[np.ndarray, int, int, int]:
    """Rows stopping at each dim, right answers, losses and gains (see :func:`_route`)."""
    counts = np.empty(confidence.shape[1], dtype=np.int64)
    tallies = np.empty(3, dtype=np.int64)
    _route(confidence, correct, np.ascontiguousarray(thresholds, dtype=np.float64), counts,
           tallies)
    return counts, int(tallies[0]), int(tallies[1]), int(tallies[2])


class ThresholdSearch:
    """calibrate's search over one set of rows (all of them, or the training folds).

    Holds each row's confidence and correctness at every dim (computed once by the caller:
    a fold is a column subset, no logits are recomputed), a grid of candidate thresholds per
    dim (``_GRID_SIZE`` quantiles of these rows' confidences), and the cost model.
    """

    def __init__(self, confidence: np.ndarray, correct: np.ndarray, dims: np.ndarray,
                 stop_costs) -> None:
        self.confidence = confidence  # (n_dims, n) float32
        self.rows = np.ascontiguousarray(confidence.T)  # (n, n_dims) for the router
        self.correct = np.ascontiguousarray(correct.T)
        self.n = confidence.shape[1]
        self.dims = dims
        self.stop_costs = stop_costs
        self.grids = [np.unique(np.quantile(confidence[i], np.linspace(0.0, 1.0, _GRID_SIZE)))
                      [::-1] for i in range(len(dims) - 1)]

    def thresholds_at(self, position) -> np.ndarray:
        values = np.full(len(self.dims), -np.inf)
        for i, p in enumerate(position):
            values[i] = _UNTESTED if p < 0 else self.grids[i][p]
        return values

    def evaluate(self, values: np.ndarray) -> Point:
        counts, hits, losses, gains = tally(self.rows, self.correct, values)
        n = self.n
        early = counts[:-1].sum() > 0
        return Point(tuple(float(v) for v in values), hits / n, float(counts @ self.dims) / n,
                      float(counts @ self.stop_costs(values)) / n, (losses - gains) / n,
                      math.sqrt(losses + gains + 1) / n if early else 0.0, losses)

    def path(self) -> list[Point]:
        """The greedy path from "every row at full dim" to "every row at the first dim": each
        step lowers by one grid notch the threshold whose move saves the most cost per unit of
        accuracy lost (moves that lose nothing first)."""
        position = [-1] * (len(self.dims) - 1)  # -1: threshold +inf (nobody stops, no test)
        points = [self.evaluate(self.thresholds_at(position))]
        while True:
            best = None
            here = points[-1]
            for i, grid in enumerate(self.grids):
                if position[i] + 1 >= len(grid):
                    continue
                trial = list(position)
                trial[i] += 1
                point = self.evaluate(self.thresholds_at(trial))
                saved = here.cost - point.cost
                lost = here.accuracy - point.accuracy
                key = (lost <= 0, saved / lost if lost > 0 else saved)
                if best is None or key > best[0]:
                    best = (key, trial, point)
            if best is None:
                return points
            position = best[1]
            points.append(best[2])

    def choose(self, path: list[Point], budget: float, sigmas: float) -> Point:
        """The cheapest point of ``path`` whose drop bound (``sigmas`` standard errors) is
        within ``budget``, refined by coordinate descent; "every row at full dim" (the path's
        first point) when nothing costs less. Thresholds sit in the middle of the gap below
        the grid value they came from."""
        full = path[0]

        def on_target(point: Point) -> bool:
            return point.bound(sigmas) <= budget + 1e-12

        def rank(point: Point) -> tuple[float, float]:
            return point.cost, -point.accuracy

        chosen = min((p for p in path if on_target(p)), key=rank)
        # the cheapest that stays on target
        chosen = self.descend(chosen, on_target, lambda point, best: rank(point) < rank(best))
        if not chosen.cost < full.cost:
            return full
        return self.settle(chosen)

    def best_within(self, path: list[Point], level: float,
                    start: Point | None = None) -> Point:
        """The thresholds found that lose the fewest rows against full dim while costing at
        most ``level`` on these rows; among those the costliest (the one that uses the
        allowance: fewer rows stopped early on the strength of these rows alone). Gains (rows
        only the cascade gets right) do not count: chasing them fits noise. Starts from the
        best point of ``path`` within ``level`` or of the one-dim changes of ``start`` (the
        choice at the previous, higher level: the cheaper points of a greedy path can lie
        far along it), then :meth:`descend`."""
        limit = level * (1 + 1e-12)

        def key(point: Point) -> tuple[float, float]:
            return -point.losses, point.cost

        candidates = [p for p in path if p.cost <= limit]
        if start is not None:
            values = np.asarray(start.thresholds, dtype=np.float64)
            for i, grid in enumerate(self.grids):
                for candidate in (_UNTESTED, *grid):
                    trial = values.copy()
                    trial[i] = candidate
                    point = self.evaluate(trial)
                    if point.cost <= limit:
                        candidates.append(point)
        chosen = max(candidates, key=key, default=path[-1])
        return self.descend(chosen, lambda point: point.cost <= limit,
                            lambda point, best: key(point) > key(best))

    def descend(self, chosen: Point, allowed: Callable[[Point], bool],
                better: Callable[[Point, Point], bool]) -> Point:
        """Coordinate descent from ``chosen``: per dim, every grid threshold and "no test"
        (+inf) with the others fixed; a trial that is ``allowed`` and ``better`` than the
        current choice replaces it; until a sweep changes nothing (at most 16 sweeps)."""
        values = np.asarray(chosen.thresholds, dtype=np.float64)
        for _ in range(16):
            improved = False
            for i, grid in enumerate(self.grids):
                for candidate in (_UNTESTED, *grid):
                    if candidate == values[i]:
                        continue
                    trial = values.copy()
                    trial[i] = candidate
                    point = self.evaluate(trial)
                    if allowed(point) and better(point, chosen):
                        chosen, values, improved = point, trial, True
            if not improved:
                break
        return chosen

    def settle(self, point: Point) -> Point:
        """``point`` with each threshold moved from the grid value (a confidence of these
        rows: a row exactly at it could flip when the cascade's float32 arithmetic differs by
        an ulp) to the middle of the gap below it: the same routing of these rows."""
        values = np.asarray(point.thresholds, dtype=np.float64).copy()
        for i in range(len(self.dims) - 1):
            if values[i] <= 1.0:
                below = self.confidence[i][self.confidence[i] < values[i]]
                lower = float(below.max()) if below.size else max(values[i] - 1e-6, 0.0)
                values[i] = (values[i] + lower) / 2
        return point._replace(thresholds=tuple(float(v) for v in values))


def check_labels(labels: object, name: str, n_classes: int, rows: int) -> np.ndarray:
    """``labels`` as an int64 array of shape ``(rows,)`` holding class indices in
    ``[0, n_classes)``.

    Raises
    ------
    DimensionError
        If the shape is not ``(rows,)``.
    TypeError
        If the dtype is not an integer dtype (floats, bools, strings and objects are refused,
        even when every float is integral: convert with ``.astype(int)`` yourself).
    ValueError
        If a label is outside ``[0, n_classes)``.
    """
    truth = np.asarray(labels)
    if truth.ndim != 1 or truth.shape[0] != rows:
        raise DimensionError(f"{name!r} must have shape ({rows},), one label per row of x_val "
                             f"(got {truth.shape})")
    if truth.dtype.kind not in "iu":
        hint = (" - convert integral floats with .astype(int)" if truth.dtype.kind == "f"
                else "")
        raise TypeError(f"{name!r} must hold integer class indices (got dtype "
                        f"{truth.dtype}){hint}")
    if truth.size:
        low, high = truth.min(), truth.max()
        if low < 0 or high >= n_classes:
            bad = int(low) if low < 0 else int(high)
            raise ValueError(f"{name!r} must hold class indices in [0, {n_classes}) (got "
                             f"{bad} at row {int(np.flatnonzero(truth == bad)[0])})")
    return truth.astype(np.int64, copy=False)


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each row: rows shuffled with ``seed``, then dealt round-robin class by
    class, so that folds differ in size by at most one row and in each class's count by at
    most one."""
    order = np.random.default_rng(seed).permutation(labels.shape[0])
    order = order[np.argsort(labels[order], kind="stable")]
    out = np.empty(labels.shape[0], dtype=np.int64)
    out[order] = np.arange(labels.shape[0]) % folds
    return out


def cross_validate(conf, correct, truth, dims, stop_costs, folds, seed, max_drop, sigmas,
                   levels) -> tuple[float, float, float, float] | None:
    """The lowest cost level of the greedy path whose points keep the promise on held-out
    folds.

    Rows are split into ``folds`` stratified folds; each fold gets the greedy path of the
    other folds. For each cost level ``c`` of ``levels`` (decreasing), each fold answers
    with the first point of its path that costs at most ``c`` (thresholds chosen without
    seeing the fold); the drop of all the held-out answers plus ``sigmas`` McNemar
    standard errors must stay within ``max_drop``. The scan stops at the first level that
    fails. Returns (level, held-out mean drop, its standard error, held-out expected dim)
    of the last level that passed, or None when none did.
    """
    fold_of = stratified_folds(truth, folds, seed)
    n = truth.shape[0]
    splits = []
    for f in range(folds):
        train = fold_of != f
        search = ThresholdSearch(conf[:, train], correct[:, train], dims, stop_costs)
        splits.append((search, search.path(), np.ascontiguousarray(conf[:, ~train].T),
                       np.ascontiguousarray(correct[:, ~train].T)))
    accepted = None
    previous: list[Point | None] = [None] * folds
    for level in levels:
        losses = gains = 0
        counts = np.zeros(len(dims), dtype=np.int64)
        for f, (search, path, rows, right) in enumerate(splits):
            point = previous[f] = search.best_within(path, level, previous[f])
            fold_counts, _, fold_losses, fold_gains = tally(
                rows, right, np.asarray(search.settle(point).thresholds))
            counts += fold_counts
            losses += fold_losses
            gains += fold_gains
        drop = (losses - gains) / n
        unit = math.sqrt(losses + gains + 1) / n if counts[:-1].sum() else 0.0
        if drop + sigmas * unit > max_drop + 1e-12:
            break
        accepted = (level, drop, unit, float(counts @ dims) / n)
    return accepted
