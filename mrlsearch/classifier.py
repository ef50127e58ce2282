"""Classifier: confidence-threshold cascade over Matryoshka classification heads.

A row is classified with the smallest prefix first; only rows whose confidence stays below that
dim's threshold go on to the next dim. With MRL-E heads (one shared weight, heads ``W[:, :m]``)
logits grow incrementally, so a row's cost is proportional to the dim at which it stopped.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import _format, _kernels
from ._calibrate import ThresholdSearch, check_labels, cross_validate
from ._errors import DimensionError, FormatError
from ._validation import (
    check_choice,
    check_dims,
    check_fraction,
    check_matrix,
    check_numbers,
    check_peaks,
    check_positive_int,
)

__all__ = ["CalibrationResult", "CascadeResult", "CascadeStage", "Classifier", "CurvePoint"]

FORMAT_NAME = "mrlsearch.classifier"
FORMAT_VERSION = 1
CONFIDENCES = ("max_prob", "margin")
OBJECTIVES = ("expected_dim", "compute")
# cascade(): rows per block = this many logits (4 MiB of float32) / n_classes
_BLOCK_FLOATS = 1 << 20
# calibrate(cv=k): cost levels tried, geometric from full dim's cost to the path's cheapest.
_COST_LEVELS = 48


class CascadeStage(NamedTuple):
    """One dim of a cascade run: rows tested there, rows that stopped there, wall time.

    A dim whose threshold is above 1 can stop no row and is skipped: ``rows_in`` is 0.
    """

    dim: int
    rows_in: int
    rows_stopped: int
    share: float
    seconds: float


@dataclass(frozen=True)
class CascadeResult:
    """Result of :meth:`Classifier.cascade`.

    Attributes
    ----------
    labels : ndarray of shape (n,), int64
    confidence : ndarray of shape (n,), float32
        Confidence at the dim that answered.
    dims : ndarray of shape (n,), int64
        Dim that answered each row.
    expected_dim : float
        Mean of ``dims`` (nan for an empty batch).
    stats : tuple of CascadeStage
        Per nesting dim: rows tested (0 where the threshold is above 1 and the dim is
        skipped), rows stopped, share of all rows stopped there, seconds.
    """

    labels: np.ndarray
    confidence: np.ndarray
    dims: np.ndarray
    expected_dim: float
    stats: tuple[CascadeStage, ...] = field(default=())


class CurvePoint(NamedTuple):
    """A point of the accuracy - expected-dim trade-off found by :meth:`Classifier.calibrate`.

    ``drop_bound`` is the upper bound on the accuracy drop at this point: the mean drop on the
    calibration rows plus ``drop_sigmas`` standard errors (the point is on target when it is
    at most ``max_drop``).
    """

    expected_dim: float
    accuracy: float
    cost: float
    thresholds: tuple[float, ...]
    drop_bound: float = float("nan")


@dataclass(frozen=True)
class CalibrationResult:
    """What :meth:`Classifier.calibrate` chose, what it promises, and the curve it chose from.

    Attributes
    ----------
    thresholds : ndarray of shape (len(dims),)
        Per-dim thresholds (the last one is ``-inf``: the last dim always answers). When
        ``full_dim`` is True every other threshold is ``+inf``: every row goes to full dim.
    accuracy, expected_dim : float
        On the calibration rows, with those thresholds (what ``cascade(x_val)`` replays).
    full_accuracy : float
        Accuracy of the full-dim head on the calibration rows.
    target_accuracy : float
        ``full_accuracy - max_drop``.
    curve : list of CurvePoint
        The greedy path from "every row at full dim" to "every row at the first dim".
    cost : float
        The objective at the chosen thresholds: the expected dim, or the mean work per row and
        class for ``objective='compute'``.
    drop_sigmas : float
        Standard errors of margin the promise was made with (1.645: one-sided 95 %).
    drop_bound : float
        The promise, at most ``max_drop``: the mean accuracy drop against full dim plus
        ``drop_margin``. With ``cv`` folds (the default) the drop is the cross-validated one,
        ``cv_drop``: measured on rows the thresholds were not chosen on. With ``cv=None`` it
        is the drop on the calibration rows at the chosen thresholds. 0 when ``full_dim``.
    drop_margin : float
        ``drop_sigmas`` standard errors of that mean drop: ``drop_sigmas * sqrt(losses +
        gains + 1) / n`` (McNemar's, over rows where the cascade is wrong and full dim right
        or the reverse, plus one; the one keeps a cascade that loses no row from claiming an
        exact promise). On new rows from the same distribution, expect drops up to about
        ``max_drop``. With ``cv=None`` the thresholds were chosen on the rows the bound is
        measured on, so new rows exceed ``max_drop`` more often than the nominal 5 % (on
        digits at ``max_drop=0.005``, about a third of random splits; docs/concepts.md).
    cv : int or None
        Number of cross-validation folds used, or None.
    cv_drop, cv_expected_dim : float
        Cross-validated mean accuracy drop against full dim and mean answering dim at the
        chosen cost level: each row answered by thresholds chosen on the other folds. nan
        with ``cv=None`` or when no cascade kept the bound.
    full_dim : bool
        True when no cascade beat answering every row at full dim (under the objective and
        the bound, or in the timing check): the thresholds send every row to full dim.
    cascade_rows_per_s, full_rows_per_s : float or None
        ``objective='compute'`` only: rows per second of the calibrated cascade and of the
        always-full-dim cascade on the calibration rows (best of 3 runs, wall clock of this
        machine at calibration time). None when no timing was done.
    faster : bool or None
        Whether the calibrated cascade measured faster than full dim; when False the
        thresholds were replaced by full dim. None when no timing was done.
    note : str
        One sentence on what was chosen and why (e.g. why it fell back to full dim).

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch import Classifier
    >>> rng = np.random.default_rng(0)
    >>> clf = Classifier.shared(rng.standard_normal((3, 8)), np.zeros(3), dims=(2, 4, 8))
    >>> x = rng.standard_normal((200, 8))
    >>> result = clf.calibrate(x, clf.predict(x), max_drop=0.05)
    >>> result.drop_bound <= 0.05, result.drop_sigmas
    (True, 1.645)
    """

    thresholds: np.ndarray
    accuracy: float
    expected_dim: float
    full_accuracy: float
    target_accuracy: float
    curve: list[CurvePoint]
    cost: float
    drop_sigmas: float = 0.0
    drop_bound: float = 0.0
    drop_margin: float = 0.0
    full_dim: bool = False
    cascade_rows_per_s: float | None = None
    full_rows_per_s: float | None = None
    faster: bool | None = None
    note: str = ""
    cv: int | None = None
    cv_drop: float = float("nan")
    cv_expected_dim: float = float("nan")


def _softmax_confidence(logits: np.ndarray, kind: str, threshold: float = -np.inf
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, confidence (top probability, or top-1 minus top-2) and ``confidence >=
    threshold`` of each row. Rows that do not reach the threshold may carry an upper bound of
    their confidence instead of its value (see :func:`_kernels.softmax_confidence`)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    labels = np.empty(logits.shape[0], dtype=np.int64)
    confidence = np.empty(logits.shape[0], dtype=np.float32)
    stop = np.empty(logits.shape[0], dtype=bool)
    if logits.shape[0]:
        _kernels.softmax_confidence(logits, CONFIDENCES.index(kind), float(threshold), labels,
                                    confidence, stop)
    return labels, confidence, stop


def _check_save_target(path: Path) -> None:
    """Refuse, naming ``path``, a target that is a directory or whose directory is missing.

    Checked before anything is written (the lock and temporary files of
    :func:`~mrlsearch._format.atomic_file` live beside ``path``, and their names would
    otherwise be the ones in the error).
    """
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise IsADirectoryError(
                errno.EISDIR, f"Cannot save the classifier over a directory (give a file path "
                              f"such as {path / 'classifier.npz'})", str(path))
    except FileNotFoundError:
        pass
    except NotADirectoryError:  # a component of the parent is a file: reported below
        pass
    if not parent.exists():
        raise FileNotFoundError(errno.ENOENT, f"Cannot save the classifier: its directory "
                                              f"{parent} does not exist", str(path))
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"Cannot save the classifier: {parent} is "
                                                f"not a directory", str(path))


class Classifier:
    """Cascade classifier over MRL heads.

    Parameters
    ----------
    weights : sequence of array-like, one of shape (n_classes, m) per nesting dim ``m``
        MRL heads: head ``i`` classifies the prefix ``x[:, :dims[i]]``.
    biases : sequence of array-like of shape (n_classes,), one per nesting dim
    dims : sequence of int
        Nesting dims, strictly increasing.
    thresholds : array-like of shape (len(dims),), optional
        Default thresholds for :meth:`cascade` (as set by :meth:`calibrate`).

    See Also
    --------
    Classifier.shared : MRL-E heads (one shared weight matrix).

    Examples
    --------
    >>> import numpy as np
    >>> from mrlsearch import Classifier
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((3, 8)).astype(np.float32)
    >>> clf = Classifier.shared(W, np.zeros(3), dims=(2, 4, 8))
    >>> r = clf.cascade(rng.standard_normal((5, 8)), thresholds=0.9)
    >>> r.labels.shape, bool(r.dims.max() <= 8)
    ((5,), True)
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        dims: Sequence[int],
        *,
        thresholds: np.ndarray | Sequence[float] | None = None,
    ) -> None:
        self._dims = check_dims(dims, "dims")
        if isinstance(weights, np.ndarray) or len(weights) != len(self._dims):
            raise DimensionError(
                f"'weights' must hold one (n_classes, m) matrix per dim in {self._dims} "
                f"(got {len(weights) if not isinstance(weights, np.ndarray) else 'one array'})"
            )
        if isinstance(biases, np.ndarray) and biases.ndim == 1 or len(biases) != len(self._dims):
            raise DimensionError(f"'biases' must hold one (n_classes,) vector per dim in {self._dims}")
        heads, offsets = [], []
        n_classes = None
        for m, weight, bias in zip(self._dims, weights, biases):
            weight, _ = check_matrix(weight, f"weights[{m}]", dim=m, allow_1d=False)
            n_classes = weight.shape[0] if n_classes is None else n_classes
            if weight.shape[0] != n_classes:
                raise DimensionError(
                    f"'weights[{m}]' must have {n_classes} rows like the first head "
                    f"(got {weight.shape[0]})"
                )
            bias, _ = check_matrix(np.reshape(bias, (1, -1)) if np.ndim(bias) == 1 else bias,
                                   f"biases[{m}]", dim=n_classes, allow_1d=False)
            check_peaks(weight, f"weights[{m}]")
            check_peaks(bias, f"biases[{m}]")
            heads.append(weight)
            offsets.append(bias[0])
        self._weights = heads
        self._biases = offsets
        self._shared = False
        self._n_classes = int(n_classes)
        self._thresholds = None if thresholds is None else self._check_thresholds(thresholds)

    @classmethod
    def shared(
        cls,
        weight: np.ndarray,
        bias: np.ndarray,
        dims: Sequence[int],
        *,
        thresholds: np.ndarray | Sequence[float] | None = None,
    ) -> Classifier:
        """MRL-E heads: head ``m`` is ``weight[:, :m]`` with the shared ``bias``.

        Parameters
        ----------
        weight : array-like of shape (n_classes, dims[-1])
        bias : array-like of shape (n_classes,)
        dims : sequence of int
        thresholds : array-like of shape (len(dims),), optional
        """
        dims = check_dims(dims, "dims")
        weight, _ = check_matrix(weight, "weight", dim=dims[-1], allow_1d=False)
        bias_row, _ = check_matrix(np.reshape(bias, (1, -1)) if np.ndim(bias) == 1 else bias,
                                   "bias", dim=weight.shape[0], allow_1d=False)
        check_peaks(weight, "weight")
        check_peaks(bias_row, "bias")
        self = cls.__new__(cls)
        self._dims = dims
        # W.T, C-contiguous: the rows a:b are the (b - a, C) piece a cascade step multiplies by
        self._weight_t = np.ascontiguousarray(weight.T)
        self._weights = [weight]
        self._biases = [bias_row[0]]
        self._shared = True
        self._n_classes = int(weight.shape[0])
        self._thresholds = None if thresholds is None else self._check_thresholds(thresholds)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def dims(self) -> tuple[int, ...]:
        """Nesting dims, increasing."""
        return self._dims

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return self._n_classes

    @property
    def efficient(self) -> bool:
        """True for MRL-E (shared weight) heads."""
        return self._shared

    @property
    def thresholds(self) -> np.ndarray | None:
        """Default cascade thresholds (set by :meth:`calibrate`), or None."""
        return None if self._thresholds is None else self._thresholds.copy()

    @thresholds.setter
    def thresholds(self, value) -> None:
        self._thresholds = None if value is None else self._check_thresholds(value)

    def __repr__(self) -> str:
        kind = "MRL-E" if self._shared else "MRL"
        return (f"<mrlsearch.Classifier {kind} n_classes={self._n_classes} dims={self._dims} "
                f"calibrated={self._thresholds is not None}>")

    # ------------------------------------------------------------------ checks
    def _check_thresholds(self, thresholds) -> np.ndarray:
        values = check_numbers(thresholds, "thresholds")
        if values.ndim == 0:
            values = np.full(len(self._dims), float(values))
        if values.ndim != 1 or values.shape[0] not in (len(self._dims) - 1, len(self._dims)):
            raise DimensionError(
                f"'thresholds' must be a number or hold one value per dim {self._dims} "
                f"(got shape {values.shape})"
            )
        if np.isnan(values).any():
            raise ValueError("'thresholds' must not contain NaN")
        out = np.full(len(self._dims), -np.inf)
        out[: len(self._dims) - 1] = values[: len(self._dims) - 1]
        return out

    def _check_x(self, x) -> np.ndarray:
        batch, _ = check_matrix(x, "x", dim=self._dims[-1], allow_empty=True, dtype=np.float32)
        check_peaks(batch, "x")  # larger values overflow the float32 logits (NaN probabilities)
        return batch

    def _check_dim(self, dim) -> int:
        if dim is None:
            return self._dims[-1]
        dim = check_positive_int(dim, "dim")
        if dim not in self._dims:
            raise DimensionError(f"'dim' must be one of dims {self._dims} (got {dim!r})")
        return int(dim)

    # ------------------------------------------------------------------ scoring
    def _head(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        if self._shared:
            return self._weights[0][:, :m], self._biases[0]
        index = self._dims.index(m)
        return self._weights[index], self._biases[index]

    def logits(self, x: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Logits of the head at ``dim`` (default: full), shape (n, n_classes), float32."""
        m = self._check_dim(dim)
        batch = self._check_x(x)
        weight, bias = self._head(m)
        return batch[:, :m] @ weight.T + bias

    def predict_proba(self, x: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Softmax probabilities at one prefix dim, shape (n, n_classes)."""
        logits = self.logits(x, dim)
        logits -= logits.max(axis=1, keepdims=True) if logits.size else 0.0
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def predict(self, x: np.ndarray, dim: int | None = None) -> np.ndarray:
        """Labels at one prefix dim, shape (n,), int64."""
        return np.argmax(self.logits(x, dim), axis=1).astype(np.int64)

    def _all_dims(self, batch: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidences of every row at every dim, each (len(dims), n)."""
        labels = np.empty((len(self._dims), batch.shape[0]), dtype=np.int64)
        confidence = np.empty((len(self._dims), batch.shape[0]), dtype=np.float32)
        logits = None
        previous = 0
        for i, m in enumerate(self._dims):
            if self._shared:
                part = batch[:, previous:m] @ self._weight_t[previous:m]
                logits = part + self._biases[0] if logits is None else logits + part
            else:
                weight, bias = self._head(m)
                logits = batch[:, :m] @ weight.T + bias
            labels[i], confidence[i], _ = _softmax_confidence(logits, kind)
            previous = m
        return labels, confidence

    # ------------------------------------------------------------------ cascade
    def cascade(
        self,
        x: np.ndarray,
        thresholds: np.ndarray | Sequence[float] | float | None = None,
        *,
        confidence: str = "max_prob",
    ) -> CascadeResult:
        """Classify each row with the smallest prefix whose confidence reaches its threshold.

        Parameters
        ----------
        x : array-like of shape (n, dims[-1]) or (dims[-1],)
        thresholds : float or array-like of shape (len(dims),) or (len(dims) - 1,), optional
            A row stops at the first dim ``i`` where confidence >= ``thresholds[i]``; the last
            dim always answers. Default: the calibrated :attr:`thresholds`.
        confidence : {'max_prob', 'margin'}, default='max_prob'
            Top softmax probability, or top-1 minus top-2 probability.

        Returns
        -------
        CascadeResult
        """
        kind = check_choice(confidence, "confidence", CONFIDENCES)
        if thresholds is None:
            if self._thresholds is None:
                raise ValueError(
                    "'thresholds' must be given: this classifier is not calibrated "
                    "(call calibrate(x_val, y_val) or pass thresholds=)"
                )
            limits = self._thresholds
        else:
            limits = self._check_thresholds(thresholds)
        batch = self._check_x(x)
        n = batch.shape[0]
        labels = np.zeros(n, dtype=np.int64)
        scores = np.zeros(n, dtype=np.float32)
        used = np.zeros(n, dtype=np.int64)
        rows_in = np.zeros(len(self._dims), dtype=np.int64)
        rows_stopped = np.zeros(len(self._dims), dtype=np.int64)
        seconds = np.zeros(len(self._dims))
        # Rows go through in blocks whose logits (block x n_classes) stay in cache: with many
        # classes the logits, not the slices of x, are the bulk of the memory traffic.
        block = max(64, _BLOCK_FLOATS // max(self._n_classes, 1))
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            self._cascade_block(batch[lo:hi], limits, kind, labels[lo:hi], scores[lo:hi],
                                used[lo:hi], rows_in, rows_stopped, seconds)
        stats = tuple(CascadeStage(m, int(rows_in[i]), int(rows_stopped[i]),
                                   float(rows_stopped[i]) / n if n else 0.0, float(seconds[i]))
                      for i, m in enumerate(self._dims))
        expected = float(used.mean()) if n else float("nan")
        return CascadeResult(labels, scores, used, expected, stats)

    def _cascade_block(self, batch, limits, kind, labels, scores, used, rows_in, rows_stopped,
                       seconds) -> None:
        """Run the cascade over one block of rows, writing into the output views.

        A dim whose threshold is above 1 cannot stop any row (confidences are at most 1): it is
        not tested, and with MRL-E heads its slice of the logits is folded into the next
        tested dim's product.
        """
        active = np.arange(batch.shape[0])
        logits = None  # MRL-E running logits of the active rows
        previous = 0
        last = len(self._dims) - 1
        for i, m in enumerate(self._dims):
            if active.size == 0:
                break
            if i < last and not limits[i] <= 1.0:
                continue
            started = time.perf_counter()
            rows_in[i] += active.size
            if self._shared:
                part = batch[active, previous:m] @ self._weight_t[previous:m]
                part += self._biases[0] if logits is None else logits
                logits = part
            else:
                weight, bias = self._head(m)
                logits = batch[active, :m] @ weight.T + bias
            threshold = limits[i] if i < last else -np.inf  # the last dim always answers
            predicted, conf, stop = _softmax_confidence(logits, kind, threshold)
            done = active[stop]
            labels[done], scores[done], used[done] = predicted[stop], conf[stop], m
            rows_stopped[i] += done.size
            if done.size:
                active = active[~stop]
                if self._shared:
                    logits = logits[~stop]
            previous = m
            seconds[i] += time.perf_counter() - started

    # ------------------------------------------------------------------ calibration
    def calibrate(
        self,
        x_val: np.ndarray,
        y_val: np.ndarray,
        max_drop: float = 0.005,
        *,
        objective: str = "expected_dim",
        confidence: str = "max_prob",
        test_cost: float = 100.0,
        drop_sigmas: float = 1.645,
        cv: int | None = 5,
        seed: int = 0,
    ) -> CalibrationResult:
        """Choose per-dim thresholds that minimise cost while the accuracy drop stays bounded.

        The search walks a greedy path from "every row at full dim" (thresholds at +inf) to
        "every row at the first dim": at each step it lowers, by one notch of a grid of that
        dim's confidence quantiles, the threshold whose move saves the most cost per unit of
        accuracy lost on the validation rows (moves that lose nothing first). Every step is a
        point of :attr:`CalibrationResult.curve`; the cheapest point whose drop bound (mean
        accuracy drop against full dim plus ``drop_sigmas`` standard errors) is at most
        ``max_drop`` is chosen. "Every row at full dim" is the first candidate: when nothing
        beats it, it is returned (``full_dim=True``). Coordinate descent then refines the
        choice: one dim at a time, every grid threshold and "no test" (``+inf``, the dim is
        skipped) is tried with the others fixed, and the cheapest choice that stays on target
        is kept, until a sweep changes nothing. With ``objective='compute'`` the chosen
        cascade and always-full-dim are then timed on ``x_val`` (best of 3); if the cascade
        is not faster, full dim is returned instead. The result is stored as
        :attr:`thresholds`.

        With ``cv`` folds (the default, 5) the promise is checked on rows the thresholds were
        not chosen on. The rows are split into ``cv`` folds stratified by label (shuffled
        with ``seed``); each fold gets the greedy path of the other folds. Cost levels fall
        geometrically (48 steps) from full dim's cost to the path's cheapest point; at each
        level each fold takes the thresholds that lose the fewest of its training rows while
        costing at most that level (the costliest among equals; found from the path and from
        one-dim changes of the previous level's choice, then coordinate descent) and answers
        its held-out rows with them. The drop of all the held-out answers plus
        ``drop_sigmas`` McNemar standard errors must stay within ``max_drop``; the scan stops
        at the first level that fails, and the last level that passed is walked down on all
        rows for the final thresholds. Levels, not in-sample drop budgets, index the
        choices: the cheapest thresholds that lose no training row sit right at the edge of
        the errors and lose rows on new data, which a budget of 0 cannot avoid.
        ``cv=None`` (or 1) puts the margin on the calibration rows instead (the old search;
        faster, but the held-out drop then overshoots ``max_drop`` more often).

        Parameters
        ----------
        x_val : array-like of shape (n, dims[-1])
        y_val : array-like of shape (n,), int
            Class indices in ``[0, n_classes)``, of an integer dtype (float labels are
            refused, even integral ones: pass ``y_val.astype(int)``).
        max_drop : float, default=0.005
            Accuracy (a fraction, 0.005 = half a point) the cascade may lose against the
            full-dim head on these rows.
        objective : {'expected_dim', 'compute'}, default='expected_dim'
            Minimise the mean dim that answers, or the mean work per row and class: the
            multiply-adds of the logits (MRL heads recompute at every tested dim, MRL-E grows
            incrementally) plus ``test_cost`` for each dim whose confidence is tested.
        confidence : {'max_prob', 'margin'}, default='max_prob'
        test_cost : float, default=100.0
            Cost of one stop test (softmax and arg-max over the classes) in multiply-adds per
            class, used by ``objective='compute'``. On the benchmark machine (2-core x86,
            OpenBLAS) a test costs about as much as 100 dims of MRL-E logits
            (docs/benchmarks.md); GPUs and CPUs with vector ``exp`` have a smaller ratio.
        drop_sigmas : float, default=1.645
            Statistical margin: require ``drop + drop_sigmas * standard error <= max_drop``,
            where drop is the mean over the rows of (full-dim correct - cascade correct) and
            the standard error is McNemar's with one pseudo disagreement, ``sqrt(losses +
            gains + 1) / n``. The
            default makes the promise a one-sided 95 % bound, so it carries over to new rows
            from the same distribution; 0 holds it on the calibration rows only (the chosen
            point then sits on the boundary and new rows often land beyond it). The bound
            used is reported as :attr:`CalibrationResult.drop_bound`. With ``cv`` folds the
            drop and the standard error are those of the held-out answers.
        cv : int or None, default=5
            Number of cross-validation folds (at most the number of rows); None or 1: no
            cross-validation, the bound is measured on the rows the thresholds were chosen
            on.
        seed : int, default=0
            Seed of the shuffle that assigns rows to folds.

        Returns
        -------
        CalibrationResult

        Raises
        ------
        DimensionError
            If ``x_val`` does not have ``dims[-1]`` columns, or ``y_val`` is not one label per
            row.
        TypeError
            If ``y_val`` is not of an integer dtype (floats, bools, strings).
        ValueError
            If a label is outside ``[0, n_classes)``, or an option is out of range.

        Examples
        --------
        >>> import numpy as np
        >>> from mrlsearch import Classifier
        >>> rng = np.random.default_rng(0)
        >>> clf = Classifier.shared(rng.standard_normal((3, 8)), np.zeros(3), dims=(2, 4, 8))
        >>> x = rng.standard_normal((200, 8))
        >>> result = clf.calibrate(x, clf.predict(x), max_drop=0.05)
        >>> bool(result.drop_bound <= 0.05), result.expected_dim < 8
        (True, True)
        """
        max_drop = check_fraction(max_drop, "max_drop")
        objective = check_choice(objective, "objective", OBJECTIVES)
        if not (isinstance(test_cost, (int, float, np.integer, np.floating))
                and np.isfinite(test_cost) and test_cost >= 0):
            raise ValueError(f"'test_cost' must be a finite number >= 0 (got {test_cost!r})")
        test_cost = float(test_cost) if objective == "compute" else 0.0
        if not (isinstance(drop_sigmas, (int, float, np.integer, np.floating))
                and np.isfinite(drop_sigmas) and drop_sigmas >= 0):
            raise ValueError(f"'drop_sigmas' must be a finite number >= 0 (got {drop_sigmas!r})")
        if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer))):
            raise TypeError(f"'cv' must be None or an int >= 1, the number of folds (got "
                            f"{cv!r})")
        if cv is not None and cv < 1:
            raise ValueError(f"'cv' must be None or an int >= 1, the number of folds (got {cv})")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"'seed' must be an int (got {seed!r})")
        folds = None if cv is None or cv == 1 else int(cv)
        kind = check_choice(confidence, "confidence", CONFIDENCES)
        batch = self._check_x(x_val)
        truth = check_labels(y_val, "y_val", self._n_classes, batch.shape[0])
        if batch.shape[0] < 2:
            raise ValueError(f"'x_val' must hold at least 2 rows (got {batch.shape[0]})")
        if folds is not None and folds > batch.shape[0]:
            raise ValueError(f"'cv' must be at most the number of rows of x_val, "
                             f"{batch.shape[0]} (got {folds})")
        labels, conf = self._all_dims(batch, kind)
        correct = labels == truth[None, :]
        dims = np.asarray(self._dims, dtype=np.float64)
        full_accuracy = float(correct[-1].mean())
        target = full_accuracy - max_drop

        def stop_costs(values: np.ndarray) -> np.ndarray:
            """Cost of a row that stops at each dim, given which dims are tested."""
            if objective == "expected_dim":
                return dims
            tested = (np.asarray(values) <= 1.0).astype(np.float64)
            tested[-1] = 1.0
            logits_cost = dims if self._shared else np.cumsum(dims * tested)
            return logits_cost + test_cost * np.cumsum(tested)

        search = ThresholdSearch(conf, correct, dims, stop_costs)
        path = search.path()
        full = path[0]  # every row at full dim: no drop, so always on target
        cv_drop = cv_expected = float("nan")
        cv_unit = 0.0
        if folds is None:
            chosen = search.choose(path, max_drop, drop_sigmas)
            bound, margin = chosen.bound(drop_sigmas), drop_sigmas * chosen.unit
        else:
            cheapest = min(p.cost for p in path)
            levels = [full.cost * (cheapest / full.cost) ** (k / _COST_LEVELS)
                      for k in range(1, _COST_LEVELS + 1)] if cheapest > 0 else []
            held_out = cross_validate(conf, correct, truth, dims, stop_costs, folds, seed,
                                      max_drop, drop_sigmas, levels)
            if held_out is None:
                chosen = full
            else:
                level, cv_drop, cv_unit, cv_expected = held_out
                chosen = None
                for step in levels[:levels.index(level) + 1]:
                    chosen = search.best_within(path, step, chosen)
                chosen = full if not chosen.cost < full.cost else search.settle(chosen)
            bound, margin = cv_drop + drop_sigmas * cv_unit, drop_sigmas * cv_unit
        full_dim = chosen is full
        if full_dim:
            bound = margin = 0.0
        cascade_speed = full_speed = faster = None
        if full_dim and folds is None:
            note = (f"every row at full dim: no cascade costs less with a drop bound within "
                    f"max_drop={max_drop:g} ({drop_sigmas:g} standard errors on the "
                    f"calibration rows)")
        elif full_dim and held_out is None:
            note = (f"every row at full dim: no point of the path keeps the {folds}-fold "
                    f"cross-validated drop plus {drop_sigmas:g} standard errors within "
                    f"max_drop={max_drop:g}")
        elif full_dim:
            note = (f"every row at full dim: at the cost level {level:.4g} that {folds}-fold "
                    f"cross-validation accepts, the path on all rows still answers at full dim")
        else:
            if folds is None:
                note = (f"cascade at expected dim {chosen.expected_dim:.3g} of "
                        f"{self._dims[-1]}, accuracy drop at most {bound:.4f} on the "
                        f"calibration rows (mean + {drop_sigmas:g} standard errors)")
            else:
                note = (f"cascade at expected dim {chosen.expected_dim:.3g} of "
                        f"{self._dims[-1]}, accuracy drop at most {bound:.4f} on new rows "
                        f"({folds}-fold cross-validated drop {cv_drop:.4f} + {drop_sigmas:g} "
                        f"standard errors)")
            if objective == "compute":
                cascade_speed, full_speed = self._rows_per_s(
                    batch, np.asarray(chosen.thresholds), np.asarray(full.thresholds), kind)
                faster = bool(cascade_speed > full_speed)
                if not faster:
                    note = (f"every row at full dim: the calibrated cascade (expected dim "
                            f"{chosen.expected_dim:.3g}) measured {cascade_speed:.4g} rows/s, "
                            f"not faster than full dim at {full_speed:.4g} rows/s")
                    chosen, full_dim, bound, margin = full, True, 0.0, 0.0
                else:
                    note += (f"; {cascade_speed / full_speed:.2f}x the rows/s of full dim "
                             f"on the calibration rows")
        self._thresholds = self._check_thresholds(chosen.thresholds)
        curve = [CurvePoint(p.expected_dim, p.accuracy, p.cost, p.thresholds,
                            p.bound(drop_sigmas)) for p in path]
        return CalibrationResult(
            self._thresholds.copy(), chosen.accuracy, chosen.expected_dim, full_accuracy,
            target, curve, chosen.cost, drop_sigmas=float(drop_sigmas),
            drop_bound=float(bound), drop_margin=float(margin), full_dim=full_dim,
            cascade_rows_per_s=cascade_speed, full_rows_per_s=full_speed, faster=faster,
            note=note, cv=folds, cv_drop=float(cv_drop), cv_expected_dim=float(cv_expected),
            )

    def _rows_per_s(self, batch: np.ndarray, thresholds: np.ndarray, full: np.ndarray,
                    kind: str) -> tuple[float, float]:
        """Rows per second of :meth:`cascade` with ``thresholds`` and with ``full`` (every row
        at full dim) on ``batch``: best of 3 runs each, interleaved, ``time.perf_counter``."""
        best = [np.inf, np.inf]
        for _ in range(3):
            for j, values in enumerate((thresholds, full)):
                started = time.perf_counter()
                self.cascade(batch, values, confidence=kind)
                best[j] = min(best[j], time.perf_counter() - started)
        n = batch.shape[0]
        return tuple(n / t if t > 0 else np.inf for t in best)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` (no pickle): format, version, dims, heads, thresholds.

        Written under a unique temporary name beside ``path`` (two threads or processes
        saving one path never share it, and take turns on the writer lock
        ``.NAME.lock``), fsynced, its size on disk checked, renamed over ``path`` and the
        directory fsynced: a concurrent :meth:`load` reads the old file or the new one,
        never a torn one, and a crash leaves the old file.

        Raises
        ------
        FileNotFoundError
            If the directory ``path`` would be written into does not exist (it is not
            created).
        NotADirectoryError
            If that directory is a file.
        IsADirectoryError
            If ``path`` is a directory (give a file path such as ``dir/classifier.npz``).

        Examples
        --------
        >>> import numpy as np, tempfile, pathlib
        >>> clf = Classifier.shared(np.eye(3, 4), np.zeros(3), dims=(2, 4))
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "clf.npz"
        >>> clf.save(path)
        >>> Classifier.load(path).dims
        (2, 4)
        """
        path = Path(path)
        _check_save_target(path)
        arrays = {
            "format": np.array(FORMAT_NAME),
            "version": np.array(FORMAT_VERSION, dtype=np.int64),
            "dims": np.asarray(self._dims, dtype=np.int64),
            "efficient": np.array(self._shared),
            "thresholds": (np.empty(0) if self._thresholds is None else self._thresholds),
        }
        if self._shared:
            arrays["weight"], arrays["bias"] = self._weights[0], self._biases[0]
        else:
            for m, weight, bias in zip(self._dims, self._weights, self._biases):
                arrays[f"weight_{m}"], arrays[f"bias_{m}"] = weight, bias
        with _format.atomic_file(path) as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classifier:
        """Read a classifier written by :meth:`save` (or by ``exporters``).

        ``path`` is the ``.npz`` file, or a model directory written by ``exporters``, whose
        ``classifier.npz`` is read (so ``Classifier.load(d)`` pairs with ``Encoder(d)``).

        The file is opened once (a FIFO or directory in its place is refused without
        blocking) and read through that handle. Only the members the format names are
        read, each after its declared uncompressed size was checked against its ``.npy``
        header and the shapes the other members allow, so a small file can never make the
        loader allocate much more than it holds; an unknown member is refused unread.

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        FormatError
            If the file is not a classifier of a known version, is truncated or corrupt,
            or is not a regular file.

        Examples
        --------
        >>> Classifier.load("model_dir/classifier.npz")      # doctest: +SKIP
        <mrlsearch.Classifier MRL-E n_classes=10 dims=(8, 16, 32, 64) calibrated=True>
        """
        path = Path(path)
        if path.is_dir() and not path.is_symlink() and (path / "classifier.npz").exists():
            path = path / "classifier.npz"  # a model directory written by exporters
        try:
            fd = _format.open_regular(path, follow=True)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"No classifier file at {path}") from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                size = os.fstat(handle.fileno()).st_size
                with zipfile.ZipFile(handle) as archive:
                    return cls._from_archive(_NpzReader(archive, path, size), path)
        except FormatError:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                RuntimeError) as exc:  # damaged archive
            raise FormatError(f"{path} is not a readable .npz file ({exc})") from exc
        finally:
            if fd >= 0:
                os.close(fd)

    @classmethod
    def _from_archive(cls, reader: _NpzReader, path: Path) -> Classifier:
        fmt = reader.read("format", kind="U", shape=())
        if str(fmt) != FORMAT_NAME:
            raise FormatError(f"{path} must hold format {FORMAT_NAME!r} (got {str(fmt)!r})")
        version = reader.read("version", kind="i", shape=())
        if int(version) != FORMAT_VERSION:
            raise FormatError(f"{path} has version {int(version)}; this mrlsearch reads "
                              f"version {FORMAT_VERSION}")
        try:
            dims = tuple(int(d) for d in reader.read("dims", kind="i", shape=(None,),
                                                     max_length=_MAX_DIMS))
            if not dims:
                raise ValueError("'dims' is empty")
            efficient = bool(reader.read("efficient", kind="b", shape=()))
            heads = ["weight", "bias"] if efficient else [
                f"{kind}_{m}" for m in dims for kind in ("weight", "bias")]
            reader.expect(["format", "version", "dims", "efficient", "thresholds", *heads])
            thresholds = reader.read("thresholds", kind="f", shape=(None,),
                                     max_length=len(dims))
            thresholds = None if thresholds.size == 0 else thresholds
            if efficient:
                bias = reader.read("bias", kind="f", shape=(None,))
                weight = reader.read("weight", kind="f", shape=(bias.shape[0], dims[-1]))
                return cls.shared(weight, bias, dims, thresholds=thresholds)
            biases = [reader.read(f"bias_{dims[0]}", kind="f", shape=(None,))]
            n_classes = biases[0].shape[0]
            biases += [reader.read(f"bias_{m}", kind="f", shape=(n_classes,)) for m in dims[1:]]
            weights = [reader.read(f"weight_{m}", kind="f", shape=(n_classes, m)) for m in dims]
            return cls(weights, biases, dims, thresholds=thresholds)
        except FormatError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise FormatError(f"{path} is not a valid mrlsearch classifier ({exc})") from exc


# A classifier file may declare at most this many uncompressed bytes: the floor, plus this
# many times its own size (float weights do not compress; a larger claim is a zip bomb).
_DECLARED_FLOOR = 64 << 20
_DECLARED_RATIO = 16
_MAX_DIMS = 4096
_DTYPES = {
    "U": tuple(np.dtype(f"<U{n}") for n in range(1, 65)),
    "i": (np.dtype("<i8"), np.dtype("<i4")),
    "b": (np.dtype("bool"),),
    "f": (np.dtype("<f4"), np.dtype("<f8")),
}


class _NpzReader:
    """Reads the members of a classifier ``.npz``, checking each one's declared size first."""

    def __init__(self, archive: zipfile.ZipFile, path: Path, size: int) -> None:
        self._archive = archive
        self._path = path
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise FormatError(f"{path} is not a valid mrlsearch classifier (a member name "
                              f"appears twice)")
        self._infos = dict(zip(names, infos))
        declared = sum(info.file_size for info in infos)
        budget = _DECLARED_FLOOR + _DECLARED_RATIO * size
        if declared > budget:
            raise FormatError(f"{path} declares {declared} uncompressed bytes for a {size}-byte "
                              f"file (at most {budget} are read)")

    def expect(self, members: list[str]) -> None:
        """Refuse (unread) any member the format does not name."""
        unknown = sorted(set(self._infos) - {f"{m}.npy" for m in members})
        if unknown:
            raise FormatError(f"{self._path} is not a valid mrlsearch classifier (unknown "
                              f"member {unknown[0]!r})")

    def read(self, name: str, *, kind: str, shape: tuple[int | None, ...],
             max_length: int | None = None) -> np.ndarray:
        """One member, after its header and declared size were checked."""
        label = f"{self._path} member {name!r}"
        info = self._infos.get(f"{name}.npy")
        if info is None:
            raise FormatError(f"{self._path} is not a valid mrlsearch classifier (missing "
                              f"member {name!r})")
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED,
                                                              zipfile.ZIP_DEFLATED):
            raise FormatError(f"{label} is encrypted or compressed with an unsupported method")
        with self._archive.open(info) as stream:
            header_shape, dtype, length = _format.read_npy_header(stream, label)
            if dtype not in _DTYPES[kind] or len(header_shape) != len(shape) or any(
                    want is not None and got != want for got, want in zip(header_shape, shape)):
                raise FormatError(f"{self._path} is not a valid mrlsearch classifier ({name!r} "
                                  f"is {dtype} of shape {header_shape})")
            if max_length is not None and header_shape[0] > max_length:
                raise FormatError(f"{self._path} is not a valid mrlsearch classifier ({name!r} "
                                  f"has {header_shape[0]} entries, at most {max_length})")
            nbytes = math.prod(header_shape) * dtype.itemsize
            if length + nbytes != info.file_size:
                raise FormatError(f"{label} declares {info.file_size} bytes but its header "
                                  f"{length + nbytes}")
            buffer = np.empty(nbytes, dtype=np.uint8)
            view = memoryview(buffer)
            got = 0
            while got < nbytes:
                n = stream.readinto(view[got:])
                if not n:
                    raise FormatError(f"{label} is truncated")
                got += n
            if stream.read(1):  # also makes zipfile check the CRC
                raise FormatError(f"{label} is longer than its header says")
        return buffer.view(dtype).reshape(header_shape)
