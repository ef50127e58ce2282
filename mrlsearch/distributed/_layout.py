"""Which shard holds an id, and the files that describe a sharding on disk.

A sharding is ``n`` ordinary index directories named ``shard-<i>-of-<n>`` (five-digit
numbers) and, beside them, ``sharding.json``: the shard count, the assignment rule, the
directory names and the next free id.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._errors import FormatError
from .._format import MANIFEST, atomic_file, read_json_file
from .._validation import check_positive_int

__all__: list[str] = []

SHARDING_FILE = "sharding.json"
SHARDING_FORMAT = "mrlsearch.sharded"
SHARDING_VERSION = 1
ASSIGNMENT = "splitmix64(uint64(id)) mod n_shards"
SHARD_NAME = "shard-{index:05d}-of-{count:05d}"
SHARD_PATTERN = re.compile(r"^shard-(\d+)-of-(\d+)$")

PathsOrGlob = str | os.PathLike | Sequence[str | os.PathLike]

_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)


def shard_of(ids: Sequence[int] | np.ndarray | int, n_shards: int) -> np.ndarray:
    """The shard that holds each id: ``splitmix64(uint64(id)) mod n_shards``.

    splitmix64's finaliser (Steele, Lea and Flood, 2014) mixes every bit of the id, so
    consecutive ids spread evenly over the shards. The function is pure: the same id and shard
    count give the same shard in every process and on every machine.

    Parameters
    ----------
    ids : int or array-like of int
        Non-negative ids.
    n_shards : int
        Number of shards (>= 1).

    Returns
    -------
    ndarray of int64, shape (n,)
        Shard index in ``[0, n_shards)`` per id.

    Examples
    --------
    >>> from mrlsearch.distributed import shard_of
    >>> shard_of([0, 1, 2, 3], 4).tolist() == shard_of([0, 1, 2, 3], 4).tolist()
    True
    >>> int(shard_of(7, 1)[0])
    0
    """
    n_shards = check_positive_int(n_shards, "n_shards")
    values = np.asarray(ids)
    if values.ndim == 0:
        values = values[None]
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"'ids' must be integer ids (got dtype {values.dtype})")
    if values.size and np.issubdtype(values.dtype, np.signedinteger) and values.min() < 0:
        raise ValueError(f"'ids' must be non-negative (got {int(values.min())})")
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _C0
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int64)


def write_sharding(root: Path, *, n_shards: int, names: list[str], next_id: int | None) -> None:
    """Write ``root/sharding.json`` atomically (fsynced, renamed into place)."""
    data = {"format": SHARDING_FORMAT, "version": SHARDING_VERSION, "n_shards": n_shards,
            "assignment": ASSIGNMENT, "shards": names, "next_id": next_id}
    with atomic_file(root / SHARDING_FILE) as handle:
        handle.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))


def read_sharding(path: Path) -> dict:
    try:
        data = read_json_file(path, kind="a sharding file")
    except FileNotFoundError as exc:  # the callers saw it a moment ago
        raise FormatError(f"{path} is not readable ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SHARDING_FORMAT:
        raise FormatError(f"{path} is not a {SHARDING_FORMAT!r} file")
    if data.get("version") != SHARDING_VERSION:
        raise FormatError(f"{path} has version {data.get('version')!r}; this mrlsearch reads "
                          f"version {SHARDING_VERSION}")
    n_shards, shards = data.get("n_shards"), data.get("shards")
    if (isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1
            or not isinstance(shards, list) or len(shards) != n_shards
            or not all(isinstance(s, str) for s in shards)):
        raise FormatError(f"{path} must list 'n_shards' shard directory names (got "
                          f"n_shards={n_shards!r}, shards={shards!r})")
    next_id = data.get("next_id")
    if next_id is not None and (isinstance(next_id, bool) or not isinstance(next_id, int)
                                or next_id < 0):
        raise FormatError(f"{path} field 'next_id' must be an int >= 0 (got {next_id!r})")
    return data


def resolve_shards(paths_or_glob: PathsOrGlob) -> tuple[list[Path], dict | None, Path | None]:
    """Shard directories in shard order, the sharding file's content and where it lives."""
    sharding, root = None, None
    if isinstance(paths_or_glob, (str, os.PathLike)):
        text = os.fspath(paths_or_glob)
        path = Path(text)
        if path.is_dir() and (path / SHARDING_FILE).is_file():
            root = path
            sharding = read_sharding(path / SHARDING_FILE)
            directories = [path / name for name in sharding["shards"]]
            missing = [str(d) for d in directories if not d.is_dir()]
            if missing:
                raise FileNotFoundError(f"{path / SHARDING_FILE} lists shard directories that "
                                        f"do not exist: {missing}")
        elif path.is_dir() and (path / MANIFEST).is_file():
            directories = [path]
        elif path.is_dir():
            directories = sorted(p for p in path.iterdir()
                                 if p.is_dir() and SHARD_PATTERN.match(p.name))
            if not directories:
                raise FileNotFoundError(f"{path} holds no shard directories "
                                        "(shard-<i>-of-<n>)")
        else:
            directories = sorted(Path(p) for p in glob.glob(text) if Path(p).is_dir())
            if not directories:
                raise FileNotFoundError(f"no shard directories match {text!r}")
    elif isinstance(paths_or_glob, Sequence) and not isinstance(paths_or_glob, (bytes, str)):
        if not paths_or_glob:
            raise ValueError("'paths_or_glob' must name at least one shard (got an empty list)")
        directories = []
        for item in paths_or_glob:
            if not isinstance(item, (str, os.PathLike)):
                raise TypeError(f"'paths_or_glob' must hold paths (got {item!r})")
            if not Path(item).is_dir():
                raise FileNotFoundError(f"no shard directory at {os.fspath(item)}")
            directories.append(Path(item))
    else:
        raise TypeError("'paths_or_glob' must be a path, a glob or a list of paths (got "
                        f"{type(paths_or_glob).__name__})")

    if len(directories) == 1 and not SHARD_PATTERN.match(directories[0].name):
        return directories, sharding, root  # an ordinary index: one shard
    positions: dict[int, Path] = {}
    counts = set()
    for directory in directories:
        match = SHARD_PATTERN.match(directory.name)
        if match is None:
            raise FormatError(f"{directory} is not named shard-<i>-of-<n>; the name tells "
                              "which ids the shard holds, keep the names build() wrote")
        index, count = int(match.group(1)), int(match.group(2))
        counts.add(count)
        if index in positions:
            raise FormatError(f"shard {index} is given twice: {positions[index]} and "
                              f"{directory}")
        positions[index] = directory
    if len(counts) != 1:
        raise FormatError(f"the shards come from different shardings (of {sorted(counts)})")
    n_shards = counts.pop()
    missing = sorted(set(range(n_shards)) - set(positions))
    if missing or max(positions) >= n_shards:
        raise FormatError(f"the shards must be all {n_shards} of one sharding; missing "
                          f"{missing} (given {sorted(positions)})")
    directories = [positions[i] for i in range(n_shards)]
    if sharding is None:
        parents = {d.parent for d in directories}
        if len(parents) == 1 and (directories[0].parent / SHARDING_FILE).is_file():
            root = directories[0].parent
            sharding = read_sharding(root / SHARDING_FILE)
            if sharding["n_shards"] != n_shards:
                raise FormatError(f"{root / SHARDING_FILE} is for {sharding['n_shards']} "
                                  f"shards, the directories for {n_shards}")
    return directories, sharding, root


