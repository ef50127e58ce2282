"""Input checks at the API edge.

Everything user-supplied passes through these helpers once, before numba or hnswlib sees it.
Messages follow one style: ``'<name>' must be <what> (got <what arrived>)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from ._errors import DimensionError

#: Largest |value| accepted: beyond it float32 dot products of long prefixes can overflow.
MAX_ABS_VALUE = 1e15
#: Smallest nonzero peak |value| of a row: below it float32 products underflow to zero.
MIN_ABS_VALUE = 1e-15

__all__: list[str] = []


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_peaks(batch: np.ndarray, name: str, *, row_offset: int = 0) -> np.ndarray:
    """Each row's largest |value|, after checking that none exceeds :data:`MAX_ABS_VALUE`
    (beyond it float32 products of long rows overflow to inf, and scores become NaN)."""
    peak = np.abs(batch).max(axis=1) if batch.size else np.zeros(batch.shape[0], batch.dtype)
    if np.any(peak > MAX_ABS_VALUE):
        row = int(np.flatnonzero(peak > MAX_ABS_VALUE)[0]) + row_offset
        raise ValueError(f"'{name}' values must be within +-{MAX_ABS_VALUE:g} "
                         f"(got {float(peak.max()):g} in row {row})")
    return peak


def check_numbers(value: object, name: str) -> np.ndarray:
    """``value``, a number or a (nested) sequence of numbers, as a float64 array; strings,
    None, booleans and ragged sequences are refused."""
    message = f"'{name}' must be a number or a sequence of numbers (got {_describe(value)})"
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged sequences
        raise TypeError(message) from exc
    if array.dtype.kind not in "iuf":  # str, None, bool, object: not numbers
        raise TypeError(message)
    return array.astype(np.float64)


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"'{name}' must be a positive int (got {_describe(value)})")
    if value < 1:
        raise ValueError(f"'{name}' must be a positive int (got {value})")
    return int(value)


def check_int_range(value: object, name: str, low: int, high: int) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= value <= high):
        raise ValueError(f"'{name}' must be an int in [{low}, {high}] (got {value!r})")
    return int(value)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"'{name}' must be one of {options} (got {_describe(value)})")
    return value


def check_fraction(value: object, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as a float in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"'{name}' must be a number in [{low}, {high}] (got {_describe(value)})")
    if not low <= float(value) <= high:
        raise ValueError(f"'{name}' must be a number in [{low}, {high}] (got {value})")
    return float(value)


def check_positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"'{name}' must be a positive number (got {_describe(value)})")
    if not 0 < value < float("inf"):
        raise ValueError(f"'{name}' must be a positive number (got {value!r})")
    return float(value)


def check_dims(dims: Iterable[object], name: str, *, max_dim: int | None = None) -> tuple[int, ...]:
    """Return nesting dims as a tuple of strictly increasing positive ints."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
        raise TypeError(f"'{name}' must be a sequence of ints (got {_describe(dims)})")
    values = list(dims)
    if not values:
        raise DimensionError(f"'{name}' must name at least one dim (got an empty sequence)")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise DimensionError(f"'{name}' must hold positive ints (got {_describe(values)})")
        out.append(int(value))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise DimensionError(f"'{name}' must be strictly increasing (got {tuple(out)})")
    if max_dim is not None and out[-1] > max_dim:
        raise DimensionError(f"'{name}' must not exceed {max_dim} (got {tuple(out)})")
    return tuple(out)


def check_matrix(
    x: object,
    name: str,
    *,
    dim: int,
    allow_1d: bool = True,
    allow_empty: bool = False,
    dtype: type = np.float32,
    row_offset: int = 0,
) -> tuple[np.ndarray, bool]:
    """Convert ``x`` to a C-contiguous 2-D array of ``dtype`` with ``dim`` columns.

    Returns the array and whether the input was a single 1-D row. Rows named in errors are
    counted from ``row_offset`` (``x`` is a chunk of a larger input there).
    """
    if isinstance(x, (str, bytes)):
        raise TypeError(f"'{name}' must be an array of numbers (got {_describe(x)})")
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"'{name}' must be an array of numbers (got {_describe(x)})") from exc
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise TypeError(f"'{name}' must be an array of numbers (got dtype {array.dtype})")
    single = array.ndim == 1
    if single and allow_1d:
        array = array[None, :]
    if array.ndim != 2:
        hint = "(n, dim) or (dim,)" if allow_1d else "(n, dim)"
        raise DimensionError(f"'{name}' must have shape {hint} (got shape {array.shape})")
    if array.shape[1] != dim:
        raise DimensionError(
            f"'{name}' must have {dim} columns (got shape {array.shape})"
        )
    if array.shape[0] == 0 and not allow_empty:
        raise ValueError(f"'{name}' must hold at least one row (got shape {array.shape})")
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(array, dtype=dtype)
    if not np.isfinite(converted).all():  # one pass over the usual, finite input
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0]) + row_offset
            raise ValueError(f"'{name}' must be finite (got NaN or inf in row {bad})")
        bad = int(np.flatnonzero(~np.isfinite(converted).all(axis=1))[0]) + row_offset
        raise ValueError(f"'{name}' values must fit {np.dtype(dtype).name} "
                         f"(got a value beyond +-{np.finfo(dtype).max:g} in row {bad})")
    return converted, single


def check_ids(ids: object, name: str, *, count: int | None = None,
              unique: bool = True) -> np.ndarray:
    """Return ``ids`` as a 1-D int64 array (without duplicates, with ``unique``)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"'{name}' must be integer ids (got {_describe(ids)})")
    try:
        array = np.asarray(ids)
    except OverflowError as exc:
        raise ValueError(f"'{name}' must be ids in [0, 2**63) (got a larger int)") from exc
    if array.dtype == object and array.size and all(
            isinstance(i, int) and not isinstance(i, bool) for i in array.ravel()):
        big = max(array.ravel())
        raise ValueError(f"'{name}' must be ids in [0, 2**63) (got {big})")
    if array.dtype.kind == "u" and array.size and int(array.max()) >= 1 << 63:
        raise ValueError(f"'{name}' must be ids in [0, 2**63) (got {int(array.max())}); "
                         "uint64 keys above 2**63 - 1 do not fit: map them to smaller ids")
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1:
        raise DimensionError(f"'{name}' must be 1-D (got shape {array.shape})")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if array.dtype == object or not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"'{name}' must be integer ids (got dtype {array.dtype})")
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise TypeError(f"'{name}' must be integer ids (got non-integral values)")
        fits = (array > -2.0**63) & (array < 2.0**63)
        if not np.all(fits):
            raise ValueError(f"'{name}' must be ids in [0, 2**63) (got {array[~fits][0]:g})")
    array = array.astype(np.int64)
    if count is not None and array.shape[0] != count:
        raise DimensionError(f"'{name}' must hold {count} ids, one per vector "
                             f"(got {array.shape[0]})")
    if np.any(array < 0):
        bad = int(array[array < 0][0])
        hint = (" (-1 pads search results with fewer than k hits: keep ids[ids >= 0])"
                if bad == -1 else "")
        raise ValueError(f"'{name}' must be non-negative (got {bad}){hint}")
    if unique:
        distinct, counts = np.unique(array, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"'{name}' must not repeat an id "
                             f"(got {int(distinct[counts > 1][0])} twice)")
    return array
