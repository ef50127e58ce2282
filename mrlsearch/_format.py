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


def _discard_directory(directory: Path, token: str) -> None:
    """Remove ``directory`` so that no crash can leave it half-deleted under its own name.

    It is first renamed to a ``.trash-`` sibling (atomic), then deleted: a kill during the
    deletion leaves only a trash directory, which nothing ever loads.
    """
    trash = directory.parent / f"{directory.name.split('.old-')[0]}.trash-{token}"
    try:
        os.rename(directory, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _backups(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.old-*")) if parent.is_dir() else []


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh sibling directory; on success it replaces ``target`` as a whole.

    Files are fsynced, then the directory, then it is renamed into place. An existing
    ``target`` is moved aside first (to a ``.old-`` sibling) and discarded only after the new
    one is in place, so a crash leaves the old directory, the new one, or -- between the two
    renames -- exactly one complete ``.old-`` sibling, which :func:`resolve_directory` finds.
    Directories are discarded by renaming them to ``.trash-`` first, so a half-deleted
    directory is never found under a name that loads. On an exception the temporary
    directory is removed and ``target`` is untouched.
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
        if target.is_dir():
            # backups left by an earlier crash are stale while the target itself is complete
            for stale in _backups(parent, target.name):
                _discard_directory(stale, uuid.uuid4().hex[:8])
            os.rename(target, parent / f".{target.name}.old-{token}")
        os.rename(staging, target)
        _fsync_path(parent)
        for backup in _backups(parent, target.name):
            _discard_directory(backup, uuid.uuid4().hex[:8])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_directory(path: str | os.PathLike, *, what: str = "index",
                      argument: str = "path") -> Path:
    """Return ``path``, or the backup a crash between the two renames of a save left behind.

    Should several backups exist (saves from several processes racing), the one whose
    manifest was written last wins.
    """
    path = Path(path)
    if path.is_dir():
        return path
    parent = path.parent if str(path.parent) else Path(".")
    backups = [b for b in _backups(parent, path.name) if (b / MANIFEST).is_file()]
    if backups:
        return max(backups, key=lambda backup: (backup / MANIFEST).stat().st_mtime_ns)
    if path.exists():
        raise FormatError(f"{argument!r} must be a saved {what} directory (got the file {path})")
    raise FileNotFoundError(f"No {what} directory at {path}")


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
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    wanted = " or ".join(str(np.dtype(d)) for d in dtypes)
    # read the header first: a damaged header must not make numpy allocate what it claims
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            readers = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            header_shape, fortran, header_dtype = readers[version](handle,
                                                                   max_header_size=10_000)
    except Exception as exc:  # numpy's header parser raises many types on damaged bytes
        raise FormatError(f"{path} is not a readable .npy file ({exc!r})") from exc
    if header_dtype not in [np.dtype(d) for d in dtypes] or fortran:
        raise FormatError(f"{path} must hold {wanted} in C order (got {header_dtype})")
    if len(header_shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(header_shape, shape)
    ):
        raise FormatError(f"{path} must have shape {shape} (got {header_shape})")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="c" if mmap else None)
    except Exception as exc:  # truncated data: ValueError, OSError, EOFError, ...
        raise FormatError(f"{path} is not a readable .npy file ({exc!r})") from exc
    if array.dtype != header_dtype or array.shape != tuple(header_shape):
        raise FormatError(f"{path} changed while it was read")
    return array


_HNSW_HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"),
    ("size_data_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
    ("max_level", "<i4"), ("entry_point", "<u4"), ("max_m", "<u8"), ("max_m0", "<u8"),
    ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])


def check_hnsw_file(path: Path, *, rows: int, dim: int, M: int) -> None:
    """Check an hnswlib graph file completely before hnswlib reads it.

    hnswlib trusts its files: a foreign, truncated or edited graph can crash the process. This
    checks the header against the index (element count, dim, M), every level-0 link count and
    neighbour id and label, and walks the upper-level link lists to the exact end of the file.
    Raises :class:`FormatError` naming the file and what is wrong.
    """
    from . import _kernels

    buffer = np.fromfile(path, dtype=np.uint8)

    def bad(what: str) -> FormatError:
        return FormatError(f"{path} is not a valid hnswlib graph for this index ({what})")

    if buffer.size < _HNSW_HEADER.itemsize:
        raise bad(f"{buffer.size} bytes, shorter than the header")
    header = buffer[: _HNSW_HEADER.itemsize].view(_HNSW_HEADER)[0]
    max_m0, max_m = 2 * M, M
    links0 = max_m0 * 4 + 4
    per_element = links0 + dim * 4 + 8
    expected = {"offset_level0": 0, "count": rows, "m": M, "max_m": max_m, "max_m0": max_m0,
                "offset_data": links0, "label_offset": links0 + dim * 4,
                "size_data_per_element": per_element}
    for field, value in expected.items():
        if int(header[field]) != value:
            raise bad(f"header field {field} is {int(header[field])}, expected {value}")
    max_level = int(header["max_level"])
    if not 0 <= max_level < 64 or (rows and int(header["entry_point"]) >= rows):
        raise bad(f"max level {max_level} / entry point {int(header['entry_point'])}")
    if int(header["max_elements"]) < rows:
        raise bad(f"capacity {int(header['max_elements'])} below {rows} elements")
    start = _HNSW_HEADER.itemsize
    level0_end = start + rows * per_element
    if buffer.size < level0_end:
        raise bad("truncated in the level-0 records")
    records = buffer[start:level0_end].reshape(rows, per_element)
    counts = records[:, :2].copy().view("<u2")[:, 0]
    if counts.size and counts.max() > max_m0:
        raise bad(f"a level-0 neighbour count of {int(counts.max())} exceeds {max_m0}")
    neighbours = records[:, 4:links0].copy().view("<u4")
    used = np.arange(max_m0)[None, :] < counts[:, None]
    if neighbours.size and (neighbours[used] >= rows).any():
        raise bad("a level-0 neighbour id beyond the element count")
    labels = records[:, links0 + dim * 4:].copy().view("<u8")[:, 0]
    if labels.size and (labels >= rows).any():
        raise bad("a label beyond the element count")
    end = _kernels.check_hnsw_upper_links(buffer, level0_end, rows, max_m * 4 + 4, max_m,
                                          max_level, rows)
    if end != buffer.size:
        raise bad("upper-level link lists are inconsistent or the file has trailing bytes")
