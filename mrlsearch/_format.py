"""On-disk helpers: manifests, checksums and atomic directory writes. No pickle anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._errors import FormatError

__all__: list[str] = []

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh sibling directory; on success it replaces ``target`` as a whole.

    Files are fsynced, then the directory, then it is renamed into place. An existing
    ``target`` is moved aside first and removed only after the new one is in place, so a crash
    leaves the old directory (or, between the two renames, its ``.old`` sibling, which
    :func:`resolve_directory` finds). On an exception the temporary directory is removed and
    ``target`` is untouched.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"'path' must be a directory or not exist (got the file {target})")
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = parent / f".{target.name}.tmp-{token}"
    staging.mkdir()
    try:
        yield staging
        for child in staging.iterdir():
            _fsync_path(child)
        _fsync_path(staging)
        backup = parent / f".{target.name}.old-{token}"
        if target.exists():
            os.rename(target, backup)
        os.rename(staging, target)
        _fsync_path(parent)
        if backup.exists():
            shutil.rmtree(backup)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_directory(path: str | os.PathLike) -> Path:
    """Return ``path``, or the backup a crash between the two renames of a save left behind."""
    path = Path(path)
    if path.is_dir():
        return path
    parent = path.parent if str(path.parent) else Path(".")
    backups = sorted(parent.glob(f".{path.name}.old-*")) if parent.is_dir() else []
    if backups:
        return backups[-1]
    if path.exists():
        raise FormatError(f"'path' must be an index directory (got the file {path})")
    raise FileNotFoundError(f"No index directory at {path}")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_manifest(directory: Path, *, format_name: str, versions: tuple[int, ...]) -> dict:
    """Read and check ``manifest.json``: its format name, version and checksums."""
    path = directory / MANIFEST
    if not path.is_file():
        raise FormatError(f"{path} is missing: {directory} is not a saved {format_name}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise FormatError(f"{path} must describe format {format_name!r} (got {got!r})")
    if manifest.get("version") not in versions:
        raise FormatError(
            f"{path} has format version {manifest.get('version')!r}; this mrlsearch reads "
            f"version(s) {', '.join(map(str, versions))}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise FormatError(f"{path} must list its files with their sha256 (got {files!r})")
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise FormatError(f"{path} lists a bad file name {name!r}")
        file_path = directory / name
        if not file_path.is_file():
            raise FormatError(f"{file_path} is missing (listed in {path})")
        if sha256_file(file_path) != digest:
            raise FormatError(f"{file_path} is corrupt: its sha256 does not match {path}")
    return manifest


def load_array(
    directory: Path,
    name: str,
    *,
    dtype: np.dtype | tuple[np.dtype, ...],
    shape: tuple[int | None, ...],
    mmap: bool = False,
) -> np.ndarray:
    """Load ``directory/name`` without pickle and check its dtype and shape.

    ``None`` in ``shape`` accepts any length on that axis. ``mmap`` maps the file copy-on-write:
    pages are read lazily and writes stay private to the process.
    """
    path = directory / name
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="c" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path} is not a readable .npy file ({exc})") from exc
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if array.dtype not in [np.dtype(d) for d in dtypes]:
        raise FormatError(f"{path} must hold {' or '.join(map(str, dtypes))} (got {array.dtype})")
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape)
    ):
        raise FormatError(f"{path} must have shape {shape} (got {array.shape})")
    return array
