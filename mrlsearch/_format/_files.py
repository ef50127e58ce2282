"""Opening, reading and hashing files without following links or blocking."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._errors import FormatError

__all__: list[str] = []

READ_BLOCK = 1 << 20
O_READ = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
           | getattr(os, "O_CLOEXEC", 0))
O_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


def kind_of(mode: int) -> str:
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
        raise FormatError(f"{label} must be a regular file (it is {kind_of(info.st_mode)})")
    flags = O_READ if not follow else O_READ & ~getattr(os, "O_NOFOLLOW", 0)
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
        raise FormatError(f"{label} must be a regular file (it is {kind_of(info.st_mode)})")
    return fd


def read_fd(fd: int, label: object, *, limit: int | None = None) -> np.ndarray:
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


def read_blocks(fd: int, size: int, label: object) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``fd`` in blocks, read with pread (no file offset used);
    each block is only valid until the next one is read."""
    block = bytearray(min(READ_BLOCK, max(size, 1)))
    view = memoryview(block)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(block), size - offset)]], offset)
        if n == 0:
            raise FormatError(f"{label} changed while it was read ({offset} of {size} bytes)")
        yield view[:n]
        offset += n


def hash_fd(fd: int, size: int, label: object = "the file") -> str:
    """sha256 of the first ``size`` bytes of ``fd``, read with pread (no file offset used)."""
    digest = hashlib.sha256()
    for chunk in read_blocks(fd, size, label):
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
        return hash_fd(fd, os.fstat(fd).st_size, path)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
