"""Writer locks (``.NAME.lock``) and the leftovers of killed writers."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:  # POSIX; elsewhere writers are not locked against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__: list[str] = []

TOKEN = r"(?:[0-9a-f]{8}|[0-9a-f]{32})"


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


def abandoned(parent: Path, name: str) -> list[Path]:
    """Staging and trash siblings of ``name`` (only meaningful while its lock is held)."""
    pattern = re.compile(re.escape(f".{name}.") + r"(?:tmp|trash)-" + TOKEN)
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    return [parent / entry for entry in entries if pattern.fullmatch(entry)]


def remove_path(path: Path) -> bool:
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
    if not abandoned(parent, target.name):
        return 0
    try:
        with writer_lock(target, blocking=False) as held:
            if not held:
                return 0
            return sum(remove_path(path) for path in abandoned(parent, target.name))
    except OSError:  # read-only directory, no permission: leave them
        return 0
