"""On-disk helpers: manifests, checksums, atomic writes, writer locks and file checks.

No pickle anywhere. What these helpers guarantee (docs/troubleshooting.md states it for users):

* **Reading.** :func:`open_directory` pins a saved directory by file descriptor, reads its
  manifest once (size, nesting and integers capped) and opens every file the manifest lists
  once, each without following symlinks and without blocking (a FIFO, a device, a directory
  or a symlink in place of a file is a :class:`FormatError`). Every later read goes through
  those handles and checks the file's sha256 on the very bytes it returns, so a concurrent
  save that swaps the directory can never mix two versions: a load sees the old index or the
  new one. A save that removes the directory between the manifest and the files makes the
  load start again (a few times) on the new one.
* **Writing.** :func:`atomic_directory` and :func:`atomic_file` write beside the target and
  rename into place; :func:`write_array`, :func:`write_json` and :func:`seal_file` read every
  file back from disk and compare its size and sha256 (and, for files written by code that
  ignores write errors such as hnswlib's ``save_index``, a structural check) before the
  commit, so a truncated write fails the save and leaves the old version in place.
* **Locking.** Writers of one path serialise on an advisory ``fcntl.flock`` of
  ``.NAME.lock`` beside it (:func:`writer_lock`), across threads and processes. While the
  lock is free no save is running, so the ``.NAME.tmp-*`` / ``.NAME.trash-*`` siblings that
  killed saves left behind are provably abandoned: the next save or load removes them
  (:func:`cleanup_stale`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import mmap as _mmap
import os
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from ._errors import FormatError

try:  # POSIX; elsewhere writers are not locked against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__: list[str] = []

MANIFEST = "manifest.json"
#: How often resolve_directory looks again while a concurrent save swaps the directory.
_RESOLVE_TRIES = 200
#: a manifest larger than this is refused before it is parsed
MAX_MANIFEST_BYTES = 4 << 20
#: deepest nesting of lists/objects a manifest may have
MAX_JSON_DEPTH = 32
#: most files a manifest may list
MAX_LISTED_FILES = 4096
#: longest .npy header read
MAX_NPY_HEADER = 10_000
#: how often a load starts again when a concurrent save removed the directory it pinned
SWAP_RETRIES = 16
_BLOCK = 1 << 20
_O_READ = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
           | getattr(os, "O_CLOEXEC", 0))
_O_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
_HEX = frozenset("0123456789abcdef")
_TOKEN = r"(?:[0-9a-f]{8}|[0-9a-f]{32})"


class Sealed(NamedTuple):
    """A file of a staging directory whose on-disk bytes were read back and checked."""

    size: int
    sha256: str


# staging directory (absolute path) -> {file name: Sealed}; one entry per atomic_directory
_SEALS: dict[str, dict[str, Sealed]] = {}
_SEALS_LOCK = threading.Lock()


# ---------------------------------------------------------------------- opening files safely
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, *, dir_fd: int | None = None,
                 label: str | os.PathLike | None = None, follow: bool = False) -> int:
    """Open a regular file for reading; return its descriptor.

    Symlinks are refused unless ``follow`` (``O_NOFOLLOW``), and the open never blocks
    (``O_NONBLOCK``): a FIFO, socket, device or directory is a :class:`FormatError` naming
    ``label`` (default ``path``), checked with ``lstat`` before and ``fstat`` after opening.

    Raises
    ------
    FileNotFoundError
        If nothing is there.
    PermissionError
        If the file cannot be read.
    FormatError
        If it is not a regular file.

    Examples
    --------
    >>> import os, tempfile
    >>> fd = open_regular(tempfile.NamedTemporaryFile(delete=False).name)
    >>> os.close(fd)
    """
    label = path if label is None else label
    if dir_fd is not None and not _DIR_FD:  # pragma: no cover - platforms without openat
        raise OSError(errno.ENOSYS, "dir_fd is not supported on this platform")
    try:
        info = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        raise FormatError(f"{label} cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"{label} must be a regular file (it is {_kind(info.st_mode)})")
    flags = _O_READ if not follow else _O_READ & ~getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FormatError(f"{label} must be a regular file (it is a symbolic link)") from exc
        raise FormatError(f"{label} cannot be read ({exc.strerror or exc})") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise FormatError(f"{label} must be a regular file (it is {_kind(info.st_mode)})")
    return fd


def _read_fd(fd: int, label: object, *, limit: int | None = None) -> np.ndarray:
    """All bytes of ``fd`` (from offset 0) in one aligned uint8 array."""
    size = os.fstat(fd).st_size
    if limit is not None and size > limit:
        raise FormatError(f"{label} is {size} bytes, more than the {limit} allowed")
    buffer = np.empty(size, dtype=np.uint8)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = os.preadv(fd, [view[got:]], got)
        if n == 0:
            raise FormatError(f"{label} changed while it was read (shorter than {size} bytes)")
        got += n
    if os.pread(fd, 1, size):
        raise FormatError(f"{label} changed while it was read (longer than {size} bytes)")
    return buffer


def _blocks(fd: int, size: int, label: object) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``fd`` in blocks, read with pread (no file offset used);
    each block is only valid until the next one is read."""
    block = bytearray(min(_BLOCK, max(size, 1)))
    view = memoryview(block)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(block), size - offset)]], offset)
        if n == 0:
            raise FormatError(f"{label} changed while it was read ({offset} of {size} bytes)")
        yield view[:n]
        offset += n


def _hash_fd(fd: int, size: int, label: object = "the file") -> str:
    """sha256 of the first ``size`` bytes of ``fd``, read with pread (no file offset used)."""
    digest = hashlib.sha256()
    for chunk in _blocks(fd, size, label):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file, read in 1 MiB blocks (symlinks and FIFOs refused).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> sha256_file(f.name)[:8]
    'ba7816bf'
    """
    fd = open_regular(path)
    try:
        return _hash_fd(fd, os.fstat(fd).st_size, path)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- JSON
def _object_pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _parse_int(text: str) -> int:
    # int64 or uint64: an index holding id 2**63 - 1 records next_id 2**63, and hnswlib's
    # seed is unsigned
    digits, most = len(text.lstrip("-")), 19 if text.startswith("-") else 20
    if digits > most:
        raise ValueError(f"an integer of {digits} digits (at most {most} allowed)")
    value = int(text)
    if not -(1 << 63) <= value < (1 << 64):
        raise ValueError(f"the integer {text} is beyond 64 bits")
    return value


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(data: bytes | bytearray | memoryview, label: object) -> object:
    """Parse JSON bytes defensively: size, nesting, integer length and duplicate keys capped.

    Raises
    ------
    FormatError
        Naming ``label``, for anything that is not small, plain JSON.

    Examples
    --------
    >>> parse_json(b'{"a": [1, 2]}', "x.json")
    {'a': [1, 2]}
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{label} is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} "
                          f"a manifest may have")
    try:
        text = bytes(data).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_object_pairs, parse_int=_parse_int)
    except RecursionError as exc:
        raise FormatError(f"{label} is not valid JSON (nested too deeply)") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(f"{label} is not valid JSON ({exc})") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise FormatError(f"{label} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def write_json(path: str | os.PathLike, data: dict) -> str:
    """Write ``data`` as indented JSON, fsync it, check it on disk; return its sha256.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.json"
    >>> len(write_json(path, {"a": 1}))
    64
    """
    payload = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return _write_bytes(Path(path), [payload])


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self.digest.update(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._handle.flush()


def _write_bytes(path: Path, chunks) -> str:
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        for chunk in chunks:
            writer.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return seal_file(path, size=writer.size, sha256=writer.digest.hexdigest())


def write_array(path: str | os.PathLike, array: np.ndarray) -> str:
    """``np.save`` without pickle, then read the file back and check it; return its sha256.

    The bytes are hashed as they are written; after an fsync the file is read back from
    disk and its size and sha256 must match, so a short write (a size limit, a full disk, a
    quota) fails here instead of after the commit.

    Raises
    ------
    OSError
        If the file on disk is not what was written.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npy"
    >>> len(write_array(path, np.arange(3)))
    64
    """
    path = Path(path)
    array = np.asanyarray(array)
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        np.lib.format.write_array(writer, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return seal_file(path, size=writer.size, sha256=writer.digest.hexdigest())


def seal_file(path: str | os.PathLike, *, size: int | None = None, sha256: str | None = None,
              check: Callable[[np.ndarray], None] | None = None) -> str:
    """Read a just-written file back from disk, check it, and return its sha256.

    Use it for files written by code that does not report write errors (hnswlib's
    ``save_index``): pass the size the writer meant to write (``Index.index_file_size()``)
    and/or a ``check`` that validates the bytes (:func:`check_hnsw_file` with ``data=``).
    Inside :func:`atomic_directory` the result is recorded; the commit re-checks the size and
    the manifest's checksums against it.

    Parameters
    ----------
    path : path-like
    size : int, optional
        Bytes the file must have.
    sha256 : str, optional
        Checksum the file must have.
    check : callable, optional
        Called with the file's bytes (read-only uint8 array); a :class:`FormatError` it
        raises becomes the ``OSError`` below.

    Raises
    ------
    OSError
        ``errno.EIO`` when the file on disk is not what was meant to be written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "f.bin"
    >>> _ = path.write_bytes(b"abc")
    >>> seal_file(path, size=3)[:8]
    'ba7816bf'
    """
    path = Path(path)
    fd = open_regular(path)
    try:
        on_disk = os.fstat(fd).st_size
        if size is not None and on_disk != size:
            raise OSError(errno.EIO, f"{path} was not written completely: {on_disk} of {size} "
                                     f"bytes are on disk")
        try:
            if check is None:
                digest = _hash_fd(fd, on_disk, path)
            else:
                data = _read_fd(fd, path)
                digest = hashlib.sha256(data).hexdigest()
                data.flags.writeable = False
                check(data)
        except FormatError as exc:
            raise OSError(errno.EIO, f"{path} on disk is not what was written ({exc})") from exc
    finally:
        os.close(fd)
    if sha256 is not None and digest != sha256:
        raise OSError(errno.EIO, f"{path} on disk differs from what was written (sha256)")
    with _SEALS_LOCK:
        seals = _SEALS.get(os.path.abspath(path.parent))
        if seals is not None:
            seals[path.name] = Sealed(on_disk, digest)
    return digest


def sealed_checksums(staging: str | os.PathLike) -> dict[str, str]:
    """The sha256 of every file of an active :func:`atomic_directory` checked so far.

    These are checksums of what is on disk (see :func:`seal_file`); a manifest built from
    them is checked against the files once more at the commit.
    """
    with _SEALS_LOCK:
        seals = _SEALS.get(os.path.abspath(staging), {})
        return {name: sealed.sha256 for name, sealed in seals.items()}


# ---------------------------------------------------------------------- locks and leftovers
def lock_path(target: str | os.PathLike) -> Path:
    """The advisory lock file of the writers of ``target``: ``.NAME.lock`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextmanager
def writer_lock(target: str | os.PathLike, *, blocking: bool = True) -> Iterator[bool]:
    """Hold the inter-process writer lock of ``target``; yield whether it is held.

    An exclusive ``fcntl.flock`` of ``.NAME.lock`` beside ``target``. flock locks belong to
    an open file, so two threads of one process exclude each other as two processes do; the
    kernel drops the lock when its holder dies. The holder deletes the lock file before
    releasing it; a waiter that then wins the lock on a deleted file notices (the path no
    longer names its file) and starts again, so the directory keeps no lock files. It is
    advisory: only writers that take it (every mrlsearch save) are excluded. With
    ``blocking=False`` it yields False at once when another writer holds it. Where there is
    no ``fcntl`` (Windows) it yields True without locking.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> with writer_lock(target) as held:
    ...     held
    True
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    path = lock_path(target)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:  # name what the caller writes, not the lock file beside it
            raise type(exc)(exc.errno, f"cannot write {target} ({exc.strerror} for its lock "
                                       f"file {path.name})", str(target)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            fd = -1
            break
        except BaseException:
            os.close(fd)
            raise
        try:
            named = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        held = os.fstat(fd)
        if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the previous holder deleted this lock file: lock the new one
    if fd < 0:
        yield False
        return
    try:
        yield True
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


def _abandoned(parent: Path, name: str) -> list[Path]:
    """Staging and trash siblings of ``name`` (only meaningful while its lock is held)."""
    pattern = re.compile(re.escape(f".{name}.") + r"(?:tmp|trash)-" + _TOKEN)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return [parent / entry for entry in entries if pattern.fullmatch(entry)]


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def cleanup_stale(target: str | os.PathLike) -> int:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.trash-*`` siblings killed saves left behind.

    They are provably abandoned when :func:`writer_lock` can be taken without waiting: every
    writer holds it from before it creates its staging directory until after it removed it.
    When a save is running, or the directory is read-only, nothing is removed. Returns the
    number of entries removed. Backups (``.NAME.old-*``) are left to the next save: a crash
    between the two renames of a save can leave the only complete copy there.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> parent = pathlib.Path(tempfile.mkdtemp())
    >>> (parent / ".index.tmp-0123abcd").mkdir()
    >>> cleanup_stale(parent / "index")
    1
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not _abandoned(parent, target.name):
        return 0
    try:
        with writer_lock(target, blocking=False) as held:
            if not held:
                return 0
            return sum(_remove(path) for path in _abandoned(parent, target.name))
    except OSError:  # read-only directory, no permission: leave them
        return 0


# ---------------------------------------------------------------------- atomic writes
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
    pattern = re.compile(re.escape(f".{name}.old-") + _TOKEN)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return sorted(parent / entry for entry in entries if pattern.fullmatch(entry))


def _verify_staging(staging: Path, seals: dict[str, Sealed]) -> None:
    """Before the commit: every file sealed (read back) and unchanged since, the manifest's
    checksums equal to what is on disk."""
    for entry in sorted(os.listdir(staging)):
        path = staging / entry
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, f"{path} is {_kind(info.st_mode)}; a saved directory "
                                        f"holds regular files only")
        sealed = seals.get(entry)
        if sealed is None:
            seal_file(path)
            sealed = seals[entry]
        elif info.st_size != sealed.size:
            raise OSError(errno.EIO, f"{path} changed after it was written and checked "
                                     f"({info.st_size} bytes, {sealed.size} expected)")
        _fsync_path(path)
    if MANIFEST in seals:
        fd = open_regular(staging / MANIFEST)
        try:
            manifest = parse_json(_read_fd(fd, staging / MANIFEST).tobytes(), staging / MANIFEST)
        finally:
            os.close(fd)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        for name, digest in (files.items() if isinstance(files, dict) else ()):
            sealed = seals.get(name) if isinstance(name, str) else None
            if sealed is None:
                raise OSError(errno.ENOENT, f"{staging / MANIFEST} lists {name!r}, which was "
                                            f"not written")
            if sealed.sha256 != digest:
                raise OSError(errno.EIO, f"{staging / name} on disk does not match the sha256 "
                                         f"its manifest records")


@contextmanager
def atomic_directory(target: str | os.PathLike, *, lock: bool = True,
                     replaces: str | None = MANIFEST,
                     kind: str | None = None) -> Iterator[Path]:
    """Yield a fresh sibling directory; on success it replaces ``target`` as a whole.

    An existing ``target`` is replaced only if it is empty or holds nothing but a file named
    ``replaces`` (``manifest.json``) and the files that file lists, and, with ``kind``, that
    manifest's ``format`` is ``kind`` (a model directory is never replaced by an index). Any
    other directory raises ``FileExistsError`` before anything is written, and again just
    before the old directory is moved aside, so a save never deletes a user's files
    (:func:`check_replaceable`). A symbolic link is followed: the directory it points to is
    replaced, the link stays.

    Before the commit every file of the directory is read back from disk: files written with
    :func:`write_array` / :func:`write_json` / :func:`seal_file` must still have the size
    and checksum they were checked with, other files are hashed as they are, and the
    checksums a ``manifest.json`` in it records must equal what is on disk; any mismatch
    raises ``OSError`` and ``target`` is untouched. Files are fsynced, then the directory,
    then it is renamed into place. An existing ``target`` is moved aside first (to a
    ``.old-`` sibling) and discarded only after the new one is in place, so a crash leaves
    the old directory, the new one, or -- between the two renames -- exactly one complete
    ``.old-`` sibling, which :func:`resolve_directory` finds. Directories are discarded by
    renaming them to ``.trash-`` first, so a half-deleted directory is never found under a
    name that loads. On an exception the temporary directory is removed and ``target`` is
    untouched.

    With ``lock`` (the default) the whole save holds :func:`writer_lock`, so saves of one
    path from several threads or processes run one after the other, and the leftovers of
    killed saves are removed first.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> with atomic_directory(target) as staging:
    ...     digest = write_array(staging / "a.npy", np.arange(3))
    >>> sorted(p.name for p in target.iterdir())
    ['a.npy']
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    check_replaceable(target, replaces=replaces, kind=kind)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(target) if lock else _no_lock() as _:
        check_replaceable(target, replaces=replaces, kind=kind)  # now no other save runs
        if lock:  # nobody else is writing: every staging/trash sibling is abandoned
            for stale in _abandoned(parent, target.name):
                _remove(stale)
        token = uuid.uuid4().hex[:8]
        staging = parent / f".{target.name}.tmp-{token}"
        staging.mkdir()
        key = os.path.abspath(staging)
        with _SEALS_LOCK:
            _SEALS[key] = seals = {}
        try:
            yield staging
            _verify_staging(staging, seals)
            _fsync_path(staging)
            if target.is_dir():
                # again: a file may have been put there while this save wrote
                check_replaceable(target, replaces=replaces, kind=kind)
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
        finally:
            with _SEALS_LOCK:
                _SEALS.pop(key, None)


def check_replaceable(target: str | os.PathLike, *, replaces: str | None = MANIFEST,
                      kind: str | None = None) -> None:
    """Raise ``FileExistsError`` unless :func:`atomic_directory` may replace ``target``: it
    is absent, an empty directory, or holds nothing but ``replaces`` and the files it lists
    (with ``kind``: a manifest whose ``format`` is ``kind``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> check_replaceable(pathlib.Path(tempfile.mkdtemp()) / "new")  # absent: fine
    """
    target = Path(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"'path' must be a directory or not exist (got the file {target})")
    entries = sorted(p.name for p in target.iterdir())
    if replaces is None or not entries:
        return
    if replaces not in entries:
        raise FileExistsError(
            f"'path' {target} is a directory that does not hold a saved index (no {replaces}); "
            f"saving there would delete its files: choose a new or empty directory")
    try:
        with open(target / replaces, "rb") as handle:
            manifest = json.loads(handle.read(MAX_MANIFEST_BYTES + 1))
        listed, found_kind = manifest.get("files"), manifest.get("format")
    except (OSError, ValueError, AttributeError):
        listed = found_kind = None
    if not isinstance(listed, dict):
        raise FileExistsError(f"'path' {target} holds a {replaces} that does not list its "
                              f"files: remove the directory yourself to save there")
    if kind is not None and found_kind != kind:
        raise FileExistsError(
            f"'path' {target} holds a {found_kind!r} directory, not a {kind!r} one; saving "
            f"there would delete it: choose another directory")
    others = [name for name in entries if name != replaces and name not in listed]
    if others:
        raise FileExistsError(
            f"'path' {target} holds files that are not part of its saved index "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); saving there "
            f"would delete them: move them, or choose another directory")


@contextmanager
def _no_lock() -> Iterator[bool]:
    yield True


@contextmanager
def atomic_file(target: str | os.PathLike, *, lock: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary handle; on success its file replaces ``target`` atomically.

    The file is written under a unique name beside ``target`` (``.NAME.tmp-<uuid>``), so
    concurrent writers never share one; it is flushed, fsynced and its size on disk checked
    against what was written, then renamed over ``target`` and the directory fsynced. A
    reader opening ``target`` gets the old file or the new one, never a torn one. With
    ``lock`` writers of one path take turns (:func:`writer_lock`) and the leftovers of
    killed writers are removed first. On an exception nothing changes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "f.bin"
    >>> with atomic_file(target) as handle:
    ...     _ = handle.write(b"abc")
    >>> target.read_bytes()
    b'abc'
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    with writer_lock(target) if lock else _no_lock() as _:
        if lock:
            for stale in _abandoned(parent, target.name):
                _remove(stale)
        staging = parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        fd = os.open(staging, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                written = handle.tell()
                os.fsync(handle.fileno())
                on_disk = os.fstat(handle.fileno()).st_size
            if on_disk != written:
                raise OSError(errno.EIO, f"{target} was not written completely: {on_disk} of "
                                         f"{written} bytes are on disk")
            os.replace(staging, target)
            _fsync_path(parent)
        except BaseException:
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
            raise


# ---------------------------------------------------------------------- reading directories
def resolve_directory(path: str | os.PathLike, *, what: str = "index",
                      argument: str = "path") -> Path:
    """Return ``path``, or the backup a crash between the two renames of a save left behind.

    Should several backups exist (saves from several processes racing), the one whose
    manifest was written last wins.

    Raises
    ------
    FileNotFoundError
        If there is neither a directory nor a backup.
    FormatError
        If ``path`` is something other than a directory.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    # a save in another thread or process swaps the directory with two renames: between them
    # the path is briefly missing, so look again before calling anything missing or foreign
    for _ in range(_RESOLVE_TRIES):
        if path.is_dir():
            return path
        backups = [b for b in _backups(parent, path.name) if (b / MANIFEST).is_file()]
        if backups:
            def written(backup: Path) -> int:
                try:
                    return (backup / MANIFEST).stat().st_mtime_ns
                except OSError:
                    return -1
            return max(backups, key=written)
        if path.exists() and not path.is_dir():
            raise FormatError(f"{argument!r} must be a saved {what} directory (got the file "
                              f"{path})")
        if not lock_path(path).exists() and not any(parent.glob(f".{path.name}.tmp-*")):
            break  # no save is under way: the directory really is not there
        time.sleep(0.001)
    raise FileNotFoundError(f"No {what} directory at {path}")


def _check_name(name: object, where: object) -> str:
    if (not isinstance(name, str) or not name or len(name) > 255 or name in (".", "..")
            or name.startswith(".") or name == MANIFEST
            or any(c in name for c in ("/", "\\", "\x00"))
            or (os.altsep is not None and os.altsep in name)):
        raise FormatError(f"{where} lists a bad file name {name!r}: a saved directory holds "
                          f"plain file names, no paths")
    return name


def _check_manifest(manifest: object, where: object, format_name: str,
                    versions: tuple[int, ...]) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise FormatError(f"{where} must describe format {format_name!r} (got {got!r})")
    version = manifest.get("version")
    if isinstance(version, bool) or version not in versions:
        raise FormatError(
            f"{where} has format version {version!r}; this mrlsearch reads "
            f"version(s) {', '.join(map(str, versions))}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or len(files) > MAX_LISTED_FILES:
        shown = files if not isinstance(files, dict) else f"{len(files)} entries"
        raise FormatError(f"{where} must list its files with their sha256 (got {shown!r})")
    for name, digest in files.items():
        _check_name(name, where)
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise FormatError(f"{where} lists {name!r} without a sha256 (got {digest!r})")
    return manifest


class _Vanished(Exception):
    """The pinned directory was replaced or removed by a concurrent save."""


def _same_directory(path: Path, dir_fd: int) -> bool:
    try:
        named = os.stat(path)
    except OSError:
        return False
    held = os.fstat(dir_fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0


class SavedDirectory:
    """A saved directory pinned by file descriptor, with its manifest and listed files open.

    Made by :func:`open_directory`. Every file the manifest lists is already open (no
    symlinks, no special files); the readers below read a file once, through that handle,
    and check its sha256 on the bytes they return. Close it (or use it as a context manager)
    when done; arrays it returned stay valid.

    Attributes
    ----------
    path : Path
        The directory that was opened (``path`` itself or a ``.old-`` backup).
    manifest : dict
        The parsed, checked manifest.
    files : dict of str to str
        File name -> sha256, as listed.
    """

    def __init__(self, path: Path, dir_fd: int, manifest: dict, fds: dict[str, int]) -> None:
        self.path = path
        self.manifest = manifest
        self.files: dict[str, str] = dict(manifest["files"])
        self._dir_fd = dir_fd
        self._fds = fds

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the directory and file handles (idempotent)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def __enter__(self) -> SavedDirectory:  # noqa: PYI034 - final class
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        with suppress(Exception):  # interpreter shutdown
            self.close()

    def __repr__(self) -> str:
        return f"<mrlsearch SavedDirectory {str(self.path)!r} files={sorted(self.files)}>"

    # -------------------------------------------------------------- readers
    def _fd(self, name: str) -> int:
        if name not in self.files:
            raise FormatError(f"{self.path / MANIFEST} does not list {name!r} with its sha256")
        if name not in self._fds:
            raise ValueError(f"{self.path} is closed")
        return self._fds[name]

    def _corrupt(self, name: str) -> FormatError:
        return FormatError(f"{self.path / name} is corrupt: its sha256 does not match "
                           f"{self.path / MANIFEST}")

    def read_buffer(self, name: str, *, limit: int | None = None) -> np.ndarray:
        """The verified bytes of ``name`` as a read-only uint8 array (read once).

        Raises
        ------
        FormatError
            If ``name`` is not listed, is larger than ``limit`` or its sha256 differs.
        """
        data = _read_fd(self._fd(name), self.path / name, limit=limit)
        if hashlib.sha256(data).hexdigest() != self.files[name]:
            raise self._corrupt(name)
        data.flags.writeable = False
        return data

    def read_bytes(self, name: str, *, limit: int | None = None) -> bytes:
        """The verified bytes of ``name`` (read once), e.g. to hand an ONNX model to
        onnxruntime as bytes."""
        return self.read_buffer(name, limit=limit).tobytes()

    def read_json(self, name: str) -> object:
        """A listed JSON file, verified and parsed with :func:`parse_json`'s caps."""
        return parse_json(self.read_buffer(name, limit=MAX_MANIFEST_BYTES), self.path / name)

    def load_array(self, name: str, *, dtype: np.dtype | tuple[np.dtype, ...],
                   shape: tuple[int | None, ...], mmap: bool = False,
                   verify: bool = True) -> np.ndarray:
        """A listed ``.npy`` file, verified and checked like :func:`load_array`.

        With ``verify=False`` its header, dtype, shape and size are checked but not its
        sha256: pair it with :meth:`deferred_check` to check that later.
        """
        return _array_from_fd(self._fd(name), self.path / name, dtype=dtype, shape=shape,
                              mmap=mmap, sha256=self.files[name] if verify else None)

    def deferred_check(self, name: str) -> DeferredCheck:
        """The sha256 check of ``name``, to run later (it keeps its own handle on the file,
        valid after this directory is closed)."""
        return DeferredCheck(os.dup(self._fd(name)), self.path / name, self.files[name],
                             self.path / MANIFEST)

    @contextmanager
    def private_copy(self, name: str, *,
                     check: Callable[[np.ndarray], None] | None = None) -> Iterator[Path]:
        """Yield the path of a private copy of ``name`` holding exactly its verified bytes.

        For readers that take only a path (hnswlib's ``load_index``): the bytes are copied
        from the pinned handle into an anonymous memory file (``memfd``, named through
        ``/proc/self/fd``; a private temporary file where that does not exist) while being
        hashed, the sha256 is checked, then ``check`` runs on the copy's bytes, so what the
        reader then reads is what was checked. The copy is gone when the block ends.
        """
        fd = self._fd(name)
        size = os.fstat(fd).st_size
        label = self.path / name
        with _private_file(name) as (copy_fd, copy_path):
            digest = hashlib.sha256()
            for chunk in _blocks(fd, size, label):
                digest.update(chunk)
                written = 0
                while written < len(chunk):
                    written += os.write(copy_fd, chunk[written:])
            if digest.hexdigest() != self.files[name]:
                raise self._corrupt(name)
            if check is not None:
                if size:
                    mapping = _mmap.mmap(copy_fd, size, access=_mmap.ACCESS_READ)
                    data = np.frombuffer(mapping, dtype=np.uint8)
                    try:
                        check(data)
                    finally:
                        del data
                        try:
                            mapping.close()
                        except BufferError:  # check kept a view: the GC unmaps it
                            pass
                else:
                    check(np.zeros(0, dtype=np.uint8))
            yield copy_path


class DeferredCheck:
    """The sha256 check of one file, deferred: for ``Searcher.load(verify="lazy"|"none")``.

    It holds its own descriptor of the file (the one the load read or mapped), so the check
    reads the very file the index uses even if the directory was replaced since. :meth:`run`
    is thread-safe and runs the check once: later calls (from any thread) wait for it and
    get the same outcome. Where the platform allows, the file is read with ``O_DIRECT``, so
    the check neither fills the page cache nor evicts what is in it: a memory-mapped index
    stays as small in RAM as its queries make it (pages in the cache would be mapped
    around every faulted page, "fault-around", and count in the process's RSS).

    Examples
    --------
    >>> import tempfile, hashlib, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> check = DeferredCheck(os.open(f.name, os.O_RDONLY), f.name,
    ...                       hashlib.sha256(b"abc").hexdigest(), "manifest.json")
    >>> check.run() is None
    True
    """

    def __init__(self, fd: int, label: object, sha256: str, manifest: object) -> None:
        self._fd = fd
        self.label = label
        self._sha256 = sha256
        self._manifest = manifest
        self._lock = threading.Lock()
        self._done = False
        self._error: FormatError | None = None

    @property
    def done(self) -> bool:
        """Whether the check has run (to the end)."""
        return self._done

    def run(self, cancelled: Callable[[], bool] | None = None) -> FormatError | None:
        """Run the check (once); return the :class:`FormatError` it found, or None.

        ``cancelled`` is polled between blocks; when it returns True the check stops without
        an outcome (a later call starts again).
        """
        with self._lock:
            if self._done:
                return self._error
            try:
                digest = _hash_uncached(self._fd, self.label, cancelled)
            except FormatError as exc:
                digest, self._error = None, exc
            except OSError as exc:
                digest, self._error = None, FormatError(
                    f"{self.label} cannot be read to check its sha256 ({exc})")
            if digest is None and self._error is None:
                return None  # cancelled
            if digest is not None and digest != self._sha256:
                self._error = FormatError(f"{self.label} is corrupt: its sha256 does not "
                                          f"match {self._manifest}")
            self._done = True
            self.close()
            return self._error

    def close(self) -> None:
        """Release the descriptor (idempotent); a check not yet run cannot run after."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()


def _hash_uncached(fd: int, label: object,
                   cancelled: Callable[[], bool] | None = None) -> str | None:
    """sha256 of the file open at ``fd``, read with ``O_DIRECT`` where that works (through
    a second open of the same file), else through ``fd``; None when ``cancelled``."""
    if fd < 0:
        raise FormatError(f"{label} was released before its sha256 was checked")
    size = os.fstat(fd).st_size
    direct = -1
    if hasattr(os, "O_DIRECT") and os.path.exists(f"/proc/self/fd/{fd}"):
        try:
            direct = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            if not os.path.samestat(os.fstat(direct), os.fstat(fd)):
                os.close(direct)
                direct = -1
        except OSError:
            direct = -1
    digest = hashlib.sha256()
    try:
        if direct >= 0:
            block = _mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT needs
            view = memoryview(block)
            offset = 0
            try:
                while offset < size:
                    if cancelled is not None and cancelled():
                        return None
                    try:
                        n = os.preadv(direct, [view], offset)
                    except OSError:
                        if offset:
                            raise
                        direct_failed = True  # e.g. tmpfs refuses O_DIRECT reads
                        break
                    if n == 0:
                        raise FormatError(f"{label} changed while it was read ({offset} of "
                                          f"{size} bytes)")
                    n = min(n, size - offset)
                    digest.update(view[:n])
                    offset += n
                else:
                    direct_failed = False
            finally:
                view.release()
                block.close()
            if not direct_failed:
                return digest.hexdigest()
        for chunk in _blocks(fd, size, label):
            if cancelled is not None and cancelled():
                return None
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        if direct >= 0:
            os.close(direct)


@contextmanager
def _private_file(name: str) -> Iterator[tuple[int, Path]]:
    """An empty file only this process can reach: (descriptor, path that opens it)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(f"mrlsearch-{name}", getattr(os, "MFD_CLOEXEC", 0))
        path = Path(f"/proc/self/fd/{fd}")
        if path.exists():
            try:
                yield fd, path
            finally:
                os.close(fd)
            return
        os.close(fd)
    directory = tempfile.mkdtemp(prefix="mrlsearch-")  # mode 0700
    path = Path(directory) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        yield fd, path
    finally:
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


def _open_pinned(directory: Path, format_name: str, versions: tuple[int, ...]
                 ) -> SavedDirectory:
    try:
        dir_fd = os.open(directory, _O_DIRECTORY)
    except FileNotFoundError as exc:
        raise _Vanished from exc
    except NotADirectoryError as exc:
        raise FormatError(f"{directory} is not a saved directory") from exc
    fds: dict[str, int] = {}
    try:
        where = directory / MANIFEST
        try:
            fd = open_regular(MANIFEST, dir_fd=dir_fd, label=where)
        except FileNotFoundError as exc:
            if not _same_directory(directory, dir_fd):
                raise _Vanished from exc
            raise FormatError(f"{where} is missing: {directory} is not a saved "
                              f"{format_name}") from exc
        try:
            raw = _read_fd(fd, where, limit=MAX_MANIFEST_BYTES)
        finally:
            os.close(fd)
        manifest = _check_manifest(parse_json(raw.tobytes(), where), where, format_name,
                                   versions)
        for name in manifest["files"]:
            try:
                fds[name] = open_regular(name, dir_fd=dir_fd, label=directory / name)
            except FileNotFoundError as exc:
                if not _same_directory(directory, dir_fd):
                    raise _Vanished from exc
                raise FormatError(f"{directory / name} is missing (listed in {where})") from exc
        return SavedDirectory(directory, dir_fd, manifest, fds)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        os.close(dir_fd)
        raise


def open_directory(path: str | os.PathLike, *, format_name: str, versions: tuple[int, ...],
                   what: str = "index", argument: str = "path",
                   cleanup: bool = True) -> SavedDirectory:
    """Open a saved directory for reading: pinned, manifest checked, listed files open.

    Resolves ``path`` like :func:`resolve_directory`, opens it, reads ``manifest.json``
    through the directory handle (at most :data:`MAX_MANIFEST_BYTES`, nesting and integers
    capped, duplicate keys refused), checks its format name, version and file list (plain
    names, each with a sha256), and opens every listed file (regular files only; symlinks,
    FIFOs, devices and directories are refused without blocking). Checksums are verified by
    the readers of the returned :class:`SavedDirectory`, on the bytes they return. Should a
    concurrent save remove the directory before every file is open, it starts again on the
    new one (up to :data:`SWAP_RETRIES` times). With ``cleanup`` the leftovers of killed
    saves beside ``path`` are removed when no save is running (:func:`cleanup_stale`).

    Raises
    ------
    FileNotFoundError
        If there is no directory at ``path``.
    FormatError
        Naming the file, for a missing, foreign, corrupt or special file.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "index"
    >>> with atomic_directory(target) as staging:
    ...     files = {"a.npy": write_array(staging / "a.npy", np.arange(3))}
    ...     _ = write_json(staging / MANIFEST, {"format": "demo", "version": 1, "files": files})
    >>> with open_directory(target, format_name="demo", versions=(1,)) as saved:
    ...     saved.load_array("a.npy", dtype=np.int64, shape=(None,)).tolist()
    [0, 1, 2]
    """
    for _ in range(SWAP_RETRIES):
        directory = resolve_directory(path, what=what, argument=argument)
        try:
            saved = _open_pinned(directory, format_name, versions)
        except _Vanished:
            continue
        if cleanup:
            cleanup_stale(path)
        return saved
    raise FormatError(f"{path} was replaced {SWAP_RETRIES} times while it was opened; "
                      f"is something saving it in a loop?")


def read_manifest(directory: Path, *, format_name: str, versions: tuple[int, ...],
                  verify: bool = True) -> dict:
    """Read and check ``manifest.json``: its format name, version, file list and checksums.

    Every listed file must be a regular file in ``directory`` (no symlinks, FIFOs, devices
    or directories); with ``verify`` its sha256 is checked. Prefer :func:`open_directory`,
    which also reads the files through the handles it checked.

    Raises
    ------
    FormatError
        Naming the file that is missing, special, corrupt or foreign.
    """
    directory = Path(directory)
    try:
        saved = _open_pinned(directory, format_name, versions)
    except _Vanished as exc:
        raise FormatError(f"{directory} was removed while it was read") from exc
    with saved:
        if verify:
            for name, digest in saved.files.items():
                fd = saved._fd(name)
                if _hash_fd(fd, os.fstat(fd).st_size, saved.path / name) != digest:
                    raise saved._corrupt(name)
        return saved.manifest


# ---------------------------------------------------------------------- arrays
_NPY_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(stream: BinaryIO, label: object) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse an ``.npy`` header from ``stream``: (shape, dtype, header length in bytes).

    Versions 1.0 and 2.0, headers up to :data:`MAX_NPY_HEADER` bytes, C order only.

    Raises
    ------
    FormatError
        Naming ``label``, for anything numpy's parser refuses.
    """
    try:
        start = stream.tell()
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_READERS:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = _NPY_READERS[version](stream, max_header_size=MAX_NPY_HEADER)
        length = stream.tell() - start
    except Exception as exc:  # numpy's header parser raises many types on damaged bytes
        raise FormatError(f"{label} is not a readable .npy file ({exc!r})") from exc
    if fortran and len(shape) > 1:
        raise FormatError(f"{label} must be in C order")
    return tuple(int(s) for s in shape), dtype, length


def _check_header(label: object, header_shape: tuple[int, ...], header_dtype: np.dtype,
                  dtype, shape: tuple[int | None, ...]) -> None:
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    wanted = " or ".join(str(np.dtype(d)) for d in dtypes)
    if header_dtype not in [np.dtype(d) for d in dtypes]:
        raise FormatError(f"{label} must hold {wanted} in C order (got {header_dtype})")
    if len(header_shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(header_shape, shape)
    ):
        raise FormatError(f"{label} must have shape {shape} (got {header_shape})")


def _array_from_fd(fd: int, label: object, *, dtype, shape: tuple[int | None, ...],
                   mmap: bool, sha256: str | None) -> np.ndarray:
    """Read (or map) one ``.npy`` file through ``fd``, its sha256 checked on those bytes."""
    size = os.fstat(fd).st_size
    # the checksum first: a damaged file is reported as corrupt, whatever its header says
    data = None
    if mmap:
        # hash through the handle, then map that same file: committed files are never
        # rewritten in place (saves write new files), so the mapping holds the hashed bytes
        if sha256 is not None and _hash_fd(fd, size, label) != sha256:
            raise FormatError(f"{label} is corrupt: its sha256 does not match the manifest")
        head = os.pread(fd, min(size, MAX_NPY_HEADER + 16), 0)
    else:
        data = _read_fd(fd, label)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise FormatError(f"{label} is corrupt: its sha256 does not match the manifest")
        head = bytes(data[: MAX_NPY_HEADER + 16])
    header_shape, header_dtype, offset = read_npy_header(io.BytesIO(head), label)
    _check_header(label, header_shape, header_dtype, dtype, shape)
    nbytes = math.prod(header_shape) * header_dtype.itemsize
    if offset + nbytes != size:
        raise FormatError(f"{label} is {size} bytes; its header declares {offset + nbytes} "
                          f"(truncated or padded)")
    if mmap:
        mapping = _mmap.mmap(fd, size, access=_mmap.ACCESS_COPY)
        if hasattr(mapping, "madvise") and hasattr(_mmap, "MADV_RANDOM"):
            # reranking reads scattered rows: no readahead around each one
            mapping.madvise(_mmap.MADV_RANDOM)
        array = np.ndarray(header_shape, dtype=header_dtype, buffer=mapping, offset=offset)
    else:
        array = data[offset:].view(header_dtype).reshape(header_shape)
        if not array.flags.aligned:
            array = array.copy()
    return array


def load_array(
    directory: Path,
    name: str,
    *,
    dtype: np.dtype | tuple[np.dtype, ...],
    shape: tuple[int | None, ...],
    mmap: bool = False,
    sha256: str | None = None,
) -> np.ndarray:
    """Load ``directory/name`` without pickle and check its dtype and shape.

    ``None`` in ``shape`` accepts any length on that axis. The file is opened once (no
    symlink, no special file), its header checked before anything is allocated, and its
    bytes read once; with ``sha256`` they are checked against it. ``mmap`` maps the file
    copy-on-write through the same handle: pages are read lazily, writes stay private.

    Raises
    ------
    FormatError
        Naming the file, for a wrong dtype, shape, size or checksum, or a special file.
    """
    path = Path(directory) / name
    fd = open_regular(path)
    try:
        return _array_from_fd(fd, path, dtype=dtype, shape=shape, mmap=mmap, sha256=sha256)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- hnswlib graphs
_HNSW_HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"),
    ("size_data_per_element", "<u8"), ("label_offset", "<u8"), ("offset_data", "<u8"),
    ("max_level", "<i4"), ("entry_point", "<u4"), ("max_m", "<u8"), ("max_m0", "<u8"),
    ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])
#: hnswlib refuses (M = 1 divides by ln 1) or silently changes (M > 10000) other values
HNSW_M_RANGE = (2, 10_000)
HNSW_EF_CONSTRUCTION_RANGE = (1, 1 << 20)
#: a graph level above this is refused (hnswlib draws levels of about ln(n) / ln(M))
HNSW_MAX_LEVEL = 63
#: default cap of the capacity a graph file may declare, relative to its element count
HNSW_CAPACITY_FACTOR = 16
HNSW_CAPACITY_FLOOR = 1 << 20

_HNSW_ERRORS = {
    1: "a level-0 neighbour count above maxM0",
    2: "level-0 flag bits other than the delete mark",
    3: "a level-0 neighbour id beyond the element count",
    4: "a stored vector that is not finite",
    5: "a label beyond the element count",
    6: "a label that appears twice",
    7: "a delete mark that disagrees with the index's deleted rows",
    8: "truncated in the upper-level link lists",
    9: "an upper-level link list size that is not a whole number of levels",
    10: "an element level above the graph's max level",
    11: "an upper-level neighbour count above maxM",
    12: "upper-level count flag bits set",
    13: "an upper-level neighbour id beyond the element count",
    14: "an upper-level neighbour that does not exist at that level",
}


def check_hnsw_file(path: str | os.PathLike, *, rows: int, dim: int, M: int,
                    data: bytes | bytearray | memoryview | np.ndarray | None = None,
                    deleted: np.ndarray | None = None, ef_construction: int | None = None,
                    max_elements: int | None = None) -> None:
    """Check an hnswlib graph file completely before hnswlib reads it.

    hnswlib trusts its files: a foreign, truncated or edited graph can crash the process,
    even with valid checksums. Checked: every header field (layout sizes for ``dim`` and
    ``M``; ``M`` in :data:`HNSW_M_RANGE`, ``maxM = M``, ``maxM0 = 2 M``, ``mult = 1 / ln M``,
    ``ef_construction`` in range and equal to the given one, element count ``rows``, a
    capacity between ``rows`` and ``max_elements`` -- default ``max(16 rows, 2**20)``), every
    level-0 record (link count, flag bits, neighbour ids, finite vector, label < ``rows`` and
    unique, delete mark equal to ``deleted[label]`` when ``deleted`` is given), the level of
    every element (at most the max level, which the entry point must have and no element may
    exceed), and every upper-level link (count, and a neighbour that exists at that level),
    to the exact end of the file. An empty graph must have hnswlib's empty header
    (max level -1, no entry point).

    Parameters
    ----------
    path : path-like
        Named in errors; read (regular file, no symlink) unless ``data`` is given.
    rows, dim, M : int
        What the graph must hold: ``rows`` elements of ``dim`` floats, built with ``M``.
    data : bytes-like or uint8 array, optional
        The file's bytes, already read and verified (:meth:`SavedDirectory.read_buffer`, or
        the ``check`` of :meth:`SavedDirectory.private_copy` / :func:`seal_file`).
    deleted : bool array of shape (rows,), optional
        The index's deleted rows: the graph's delete marks must equal it.
    ef_construction : int, optional
        The value the header must hold.
    max_elements : int, optional
        Largest capacity the header may declare.

    Raises
    ------
    FormatError
        Naming the file and what is wrong.

    Examples
    --------
    >>> import hnswlib, numpy as np, tempfile, pathlib              # doctest: +SKIP
    >>> g = hnswlib.Index(space="ip", dim=4); g.init_index(10, M=8)  # doctest: +SKIP
    >>> g.add_items(np.eye(4, dtype=np.float32), np.arange(4))       # doctest: +SKIP
    >>> g.save_index("/tmp/g.bin")                                   # doctest: +SKIP
    >>> check_hnsw_file("/tmp/g.bin", rows=4, dim=4, M=8)            # doctest: +SKIP
    """
    from . import _kernels_checks

    path = Path(path)

    def bad(what: str) -> FormatError:
        return FormatError(f"{path} is not a valid hnswlib graph for this index ({what})")

    if not HNSW_M_RANGE[0] <= M <= HNSW_M_RANGE[1]:
        raise bad(f"M={M} is outside {HNSW_M_RANGE[0]}..{HNSW_M_RANGE[1]}")
    if data is None:
        try:
            fd = open_regular(path)
        except FileNotFoundError as exc:
            raise bad("the file is missing") from exc
        try:
            buffer = _read_fd(fd, path)
        finally:
            os.close(fd)
    elif isinstance(data, np.ndarray):
        buffer = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
    if deleted is not None:
        deleted = np.ascontiguousarray(deleted, dtype=np.bool_)
        if deleted.shape != (rows,):
            raise ValueError(f"'deleted' must have shape ({rows},) (got {deleted.shape})")
    if buffer.size < _HNSW_HEADER.itemsize:
        raise bad(f"{buffer.size} bytes, shorter than the header")
    header = np.frombuffer(buffer[: _HNSW_HEADER.itemsize].tobytes(), dtype=_HNSW_HEADER)[0]
    max_m0, max_m = 2 * M, M
    links0 = max_m0 * 4 + 4
    per_element = links0 + dim * 4 + 8
    expected = {"offset_level0": 0, "count": rows, "m": M, "max_m": max_m, "max_m0": max_m0,
                "offset_data": links0, "label_offset": links0 + dim * 4,
                "size_data_per_element": per_element}
    for field, value in expected.items():
        if int(header[field]) != value:
            raise bad(f"header field {field} is {int(header[field])}, expected {value}")
    mult = float(header["mult"])
    if not math.isfinite(mult) or abs(mult - 1.0 / math.log(M)) > 1e-9 / math.log(M):
        raise bad(f"mult is {mult!r}, expected 1/ln(M) = {1.0 / math.log(M)!r}")
    ef = int(header["ef_construction"])
    if not HNSW_EF_CONSTRUCTION_RANGE[0] <= ef <= HNSW_EF_CONSTRUCTION_RANGE[1] or (
            ef_construction is not None and ef != ef_construction):
        raise bad(f"ef_construction is {ef}"
                  + (f", expected {ef_construction}" if ef_construction is not None else ""))
    capacity = int(header["max_elements"])
    limit = (max(HNSW_CAPACITY_FACTOR * rows, HNSW_CAPACITY_FLOOR) if max_elements is None
             else max_elements)
    if not rows <= capacity <= max(limit, rows):
        raise bad(f"capacity {capacity} outside {rows}..{max(limit, rows)}")
    max_level = int(header["max_level"])
    entry = int(header["entry_point"])
    if rows == 0:
        if max_level != -1 or entry != 0xFFFFFFFF or buffer.size != _HNSW_HEADER.itemsize:
            raise bad(f"an empty graph with max level {max_level}, entry point {entry} and "
                      f"{buffer.size - _HNSW_HEADER.itemsize} bytes after the header")
        return
    if not 0 <= max_level <= HNSW_MAX_LEVEL or entry >= rows:
        raise bad(f"max level {max_level} / entry point {entry}")
    start = _HNSW_HEADER.itemsize
    level0_end = start + rows * per_element
    if buffer.size < level0_end:
        raise bad("truncated in the level-0 records")
    where = np.zeros(1, dtype=np.int64)
    labels = np.empty(rows, dtype=np.int64)
    mask = deleted if deleted is not None else np.zeros(1, dtype=np.bool_)
    code = _kernels_checks.hnsw_level0(buffer, start, rows, per_element, max_m0, links0, dim,
                                       links0 + dim * 4, rows, mask, deleted is not None,
                                       labels, where)
    if code:
        raise bad(f"{_HNSW_ERRORS[code]}, at element {int(where[0])}")
    levels = np.zeros(rows, dtype=np.int64)
    offsets = np.zeros(rows, dtype=np.int64)
    size_links = max_m * 4 + 4
    end = _kernels_checks.hnsw_levels(buffer, level0_end, rows, size_links, max_level, levels,
                                      offsets, where)
    if end < 0:
        raise bad(f"{_HNSW_ERRORS[int(-end)]}, at element {int(where[0])}")
    if end != buffer.size:
        raise bad(f"{buffer.size - end} trailing bytes")
    if int(levels[entry]) != max_level:
        raise bad(f"the entry point {entry} has {int(levels[entry])} levels, the header "
                  f"claims {max_level}")
    code = _kernels_checks.hnsw_upper_links(buffer, rows, size_links, max_m, levels, offsets,
                                            where)
    if code:
        raise bad(f"{_HNSW_ERRORS[code]}, at element {int(where[0])}")
