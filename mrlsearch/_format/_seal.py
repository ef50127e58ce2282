"""Manifests (JSON with caps) and files written, read back and checked (sealed) before a commit."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from .._errors import FormatError
from ._files import hash_fd, open_regular, read_fd

__all__: list[str] = []

MANIFEST = "manifest.json"
#: a manifest larger than this is refused before it is parsed
MAX_MANIFEST_BYTES = 4 << 20
#: deepest nesting of lists/objects a manifest may have
MAX_JSON_DEPTH = 32


class Sealed(NamedTuple):
    """A file of a staging directory whose on-disk bytes were read back and checked."""

    size: int
    sha256: str


# staging directory (absolute path) -> {file name: Sealed}; one entry per atomic_directory
SEALS: dict[str, dict[str, Sealed]] = {}
SEALS_LOCK = threading.Lock()


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


def read_json_file(path: str | os.PathLike, *, kind: str) -> object:
    """A small JSON file kept outside a saved directory (``sharding.json``, the CLI's sidecar),
    read with a manifest's caps: at most :data:`MAX_MANIFEST_BYTES`, parsed by
    :func:`parse_json`.

    Raises
    ------
    FileNotFoundError
        If nothing is at ``path``.
    FormatError
        If it cannot be read, is larger than the cap (named as not ``kind``, e.g.
        ``"a sharding file"``), or is not small, plain JSON.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
    ...     _ = handle.write('{"a": 1}')
    >>> read_json_file(handle.name, kind="a demo file")
    {'a': 1}
    >>> os.remove(handle.name)
    """
    try:
        with open(path, "rb") as handle:  # one byte past the cap tells a file too big
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FormatError(f"{path} is not readable ({exc})") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError(f"{path} is more than {MAX_MANIFEST_BYTES} bytes: not {kind}")
    return parse_json(raw, path)  # capped nesting: a FormatError, never a crash


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
                digest = hash_fd(fd, on_disk, path)
            else:
                data = read_fd(fd, path)
                digest = hashlib.sha256(data).hexdigest()
                data.flags.writeable = False
                check(data)
        except FormatError as exc:
            raise OSError(errno.EIO, f"{path} on disk is not what was written ({exc})") from exc
    finally:
        os.close(fd)
    if sha256 is not None and digest != sha256:
        raise OSError(errno.EIO, f"{path} on disk differs from what was written (sha256)")
    with SEALS_LOCK:
        seals = SEALS.get(os.path.abspath(path.parent))
        if seals is not None:
            seals[path.name] = Sealed(on_disk, digest)
    return digest


def sealed_checksums(staging: str | os.PathLike) -> dict[str, str]:
    """The sha256 of every file of an active :func:`atomic_directory` checked so far.

    These are checksums of what is on disk (see :func:`seal_file`); a manifest built from
    them is checked against the files once more at the commit.
    """
    with SEALS_LOCK:
        seals = SEALS.get(os.path.abspath(staging), {})
        return {name: sealed.sha256 for name, sealed in seals.items()}
