""".npy arrays read from an open file: header checked, bytes hashed as they are read."""

from __future__ import annotations

import hashlib
import io
import math
import mmap as _mmap
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .._errors import FormatError
from ._files import hash_fd, open_regular, read_fd

__all__: list[str] = []

#: longest .npy header read
MAX_NPY_HEADER = 10_000


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


def array_from_fd(fd: int, label: object, *, dtype, shape: tuple[int | None, ...],
                   mmap: bool, sha256: str | None) -> np.ndarray:
    """Read (or map) one ``.npy`` file through ``fd``, its sha256 checked on those bytes."""
    size = os.fstat(fd).st_size
    # the checksum first: a damaged file is reported as corrupt, whatever its header says
    data = None
    if mmap:
        # hash through the handle, then map that same file: committed files are never
        # rewritten in place (saves write new files), so the mapping holds the hashed bytes
        if sha256 is not None and hash_fd(fd, size, label) != sha256:
            raise FormatError(f"{label} is corrupt: its sha256 does not match the manifest")
        head = os.pread(fd, min(size, MAX_NPY_HEADER + 16), 0)
    else:
        data = read_fd(fd, label)
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
        return array_from_fd(fd, path, dtype=dtype, shape=shape, mmap=mmap, sha256=sha256)
    finally:
        os.close(fd)
