"""Funnel schedules: the stages a caller passes, checked against an index's layout."""

from __future__ import annotations

from collections.abc import Sequence

from ._codes import CODE_PRECISIONS
from ._errors import DimensionError
from ._results import MAX_EF, parse_stage
from ._validation import check_int_range, check_positive_int

__all__: list[str] = []


def validate_stages(stages: object, k: int, ef: object, *, dims: tuple[int, ...],
                    index_dims: tuple[int, ...], dtype: str, codes: tuple[str, ...]
                    ) -> tuple[tuple[tuple[int, str, int], ...], int]:
    """``stages`` as ``((dim, precision, shortlist), ...)`` and the walk's ``ef``, checked
    against an index with nesting ``dims``, graphs at ``index_dims``, floats stored as
    ``dtype`` and ``codes`` kept at the graph dims.

    A stage is ``(dim, shortlist)`` (float) or ``(dim, precision, shortlist)``; "float"
    names the stored floats. Dims grow from stage to stage (one may repeat with a finer
    precision), shortlists never grow and are at least ``k``, the first stage walks a graph,
    and code stages sit at its dim. ``ef`` defaults to the first shortlist.

    Examples
    --------
    >>> validate_stages([(16, "int8", 40), (64, 10)], 10, None, dims=(16, 32, 64),
    ...                 index_dims=(16,), dtype="float32", codes=("int8",))
    (((16, 'int8', 40), (64, 'float32', 10)), 40)
    """
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise TypeError("'stages' must be a non-empty list of (dim, shortlist) or "
                        f"(dim, precision, shortlist) (got {stages!r})")
    parsed = []
    for stage in stages:
        prefix_dim, precision, shortlist = parse_stage(stage)
        prefix_dim = check_positive_int(prefix_dim, "stages dim")
        shortlist = check_positive_int(shortlist, "stages shortlist")
        if prefix_dim not in dims:
            raise DimensionError(f"'stages' dims must be among dims {dims} "
                                 f"(got {prefix_dim})")
        if shortlist < k:
            raise ValueError(f"'stages' shortlist at dim {prefix_dim} must be >= k={k} "
                             f"(got {shortlist})")
        if precision.startswith("float"):
            precision = dtype
        parsed.append((prefix_dim, precision, shortlist))
    order = {"binary": 0, "int8": 1, "float16": 2, "float32": 2}
    for (d0, p0, _), (d1, p1, _) in zip(parsed, parsed[1:]):
        if d1 < d0 or (d1 == d0 and order[p1] <= order[p0]):
            raise DimensionError(
                "'stages' dims must grow from stage to stage (a dim may repeat only with a "
                f"finer precision: binary, int8, float) (got {[s[:2] for s in parsed]})")
    first_dim = parsed[0][0]
    if first_dim not in index_dims:
        raise DimensionError(f"'stages' first dim must be an indexed dim {index_dims} "
                             f"(got {first_dim}); add it to index_dims")
    for prefix_dim, precision, _ in parsed:
        if precision in CODE_PRECISIONS:
            if prefix_dim != first_dim:
                raise ValueError(f"'stages' {precision} stages must be at the first stage's "
                                 f"dim {first_dim}, where the codes are (got {prefix_dim})")
            if precision not in codes:
                raise ValueError(f"'stages' precision {precision!r} needs codes={precision!r}"
                                 f" (this index keeps {codes})")
    shortlists = [s for _, _, s in parsed]
    if any(b > a for a, b in zip(shortlists, shortlists[1:])):
        raise ValueError(f"'stages' shortlists must not grow from one stage to the next "
                         f"(got {shortlists})")
    if ef is None:
        ef = parsed[0][2]
    else:
        ef = check_int_range(ef, "ef", 1, MAX_EF)
        if ef < parsed[0][2]:
            raise ValueError(f"'ef' must be >= the first stage's shortlist {parsed[0][2]} "
                             f"(got {ef})")
    return tuple(parsed), ef
