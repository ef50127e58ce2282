"""Atomic writes: a directory or a file written beside its target and renamed into place."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ._files import fsync_path, kind_of, open_regular, read_fd
from ._locks import TOKEN, abandoned, remove_path, writer_lock
from ._seal import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    SEALS,
    SEALS_LOCK,
    Sealed,
    parse_json,
    seal_file,
)

__all__: list[str] = []

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


def backups_of(parent: Path, name: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{name}.old-") + TOKEN)
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
            raise OSError(errno.EINVAL, f"{path} is {kind_of(info.st_mode)}; a saved directory "
                                        f"holds regular files only")
        sealed = seals.get(entry)
        if sealed is None:
            seal_file(path)
            sealed = seals[entry]
        elif info.st_size != sealed.size:
            raise OSError(errno.EIO, f"{path} changed after it was written and checked "
                                     f"({info.st_size} bytes, {sealed.size} expected)")
        fsync_path(path)
    if MANIFEST in seals:
        fd = open_regular(staging / MANIFEST)
        try:
            manifest = parse_json(read_fd(fd, staging / MANIFEST).tobytes(), staging / MANIFEST)
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
    >>> from mrlsearch._format import write_array
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
            for stale in abandoned(parent, target.name):
                remove_path(stale)
        token = uuid.uuid4().hex[:8]
        staging = parent / f".{target.name}.tmp-{token}"
        staging.mkdir()
        key = os.path.abspath(staging)
        with SEALS_LOCK:
            SEALS[key] = seals = {}
        try:
            yield staging
            _verify_staging(staging, seals)
            fsync_path(staging)
            if target.is_dir():
                # again: a file may have been put there while this save wrote
                check_replaceable(target, replaces=replaces, kind=kind)
                # backups left by an earlier crash are stale while the target itself is complete
                for stale in backups_of(parent, target.name):
                    _discard_directory(stale, uuid.uuid4().hex[:8])
                os.rename(target, parent / f".{target.name}.old-{token}")
            os.rename(staging, target)
            fsync_path(parent)
            for backup in backups_of(parent, target.name):
                _discard_directory(backup, uuid.uuid4().hex[:8])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            with SEALS_LOCK:
                SEALS.pop(key, None)


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
            for stale in abandoned(parent, target.name):
                remove_path(stale)
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
            fsync_path(parent)
        except BaseException:
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
            raise
