"""Reading a saved directory: pinned by descriptor, every byte checked against its manifest."""

from __future__ import annotations

import hashlib
import mmap as _mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from .._errors import FormatError
from ._arrays import array_from_fd
from ._atomic import backups_of
from ._files import O_DIRECTORY, READ_BLOCK, hash_fd, open_regular, read_blocks, read_fd
from ._locks import cleanup_stale, lock_path
from ._seal import MANIFEST, MAX_MANIFEST_BYTES, parse_json

__all__: list[str] = []

#: How often resolve_directory looks again while a concurrent save swaps the directory.
_RESOLVE_TRIES = 200
#: most files a manifest may list
MAX_LISTED_FILES = 4096
#: how often a load starts again when a concurrent save removed the directory it pinned
SWAP_RETRIES = 16
_HEX = frozenset("0123456789abcdef")


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
    # the path is briefly missing, so look again before calling anything missing or foreign.
    # "No save under way" must be seen twice: a save can finish (its backup discarded, its
    # lock file deleted) between the first look at the path and the look at the lock
    quiet = 0
    for _ in range(_RESOLVE_TRIES):
        if path.is_dir():
            return path
        backups = [b for b in backups_of(parent, path.name) if (b / MANIFEST).is_file()]
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
            quiet += 1
            if quiet == 2:
                break  # no save is under way: the directory really is not there
        else:
            quiet = 0
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
        data = read_fd(self._fd(name), self.path / name, limit=limit)
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
        return array_from_fd(self._fd(name), self.path / name, dtype=dtype, shape=shape,
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
            for chunk in read_blocks(fd, size, label):
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
            block = _mmap.mmap(-1, READ_BLOCK)  # page-aligned, as O_DIRECT needs
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
        for chunk in read_blocks(fd, size, label):
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
        dir_fd = os.open(directory, O_DIRECTORY)
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
            raw = read_fd(fd, where, limit=MAX_MANIFEST_BYTES)
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
    >>> from mrlsearch._format import atomic_directory, write_array, write_json
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
                if hash_fd(fd, os.fstat(fd).st_size, saved.path / name) != digest:
                    raise saved._corrupt(name)
        return saved.manifest
