"""The optional payload column: one ``str``, ``bytes`` or ``None`` per row, without pickle.

Payloads live in three flat arrays, the same in memory and on disk (``.npy`` files):

* ``kinds``: uint8 per row, :data:`NONE` (0), :data:`TEXT` (1, UTF-8) or :data:`BYTES` (2);
* ``offsets``: uint64, one more than the rows: row ``r``'s bytes are
  ``data[offsets[r]:offsets[r + 1]]`` (a ``None`` row has none);
* ``data``: uint8, every payload's bytes, concatenated in row order.

No Python object is kept per row: a payload is decoded when :meth:`PayloadColumn.get` asks for
it. ``data`` may be a memory map (``Searcher.load(mmap=True)``).
"""

from __future__ import annotations

import numpy as np

from ._errors import FormatError

__all__: list[str] = []

NONE, TEXT, BYTES = 0, 1, 2
KIND_NAMES = {NONE: "none", TEXT: "str", BYTES: "bytes"}
#: rows encoded per ``b"".join`` (bounds the temporary bytes objects)
_CHUNK = 10_000


class EncodedPayloads:
    """Payloads of consecutive rows in the column's flat form: ``kinds``, ``offsets``
    (starting at 0, one more than the rows) and ``data``."""

    __slots__ = ("data", "kinds", "offsets")

    def __init__(self, kinds: np.ndarray, offsets: np.ndarray, data: np.ndarray) -> None:
        self.kinds = kinds
        self.offsets = offsets
        self.data = data

    def __len__(self) -> int:
        return self.kinds.shape[0]

    def slice(self, lo: int, hi: int) -> EncodedPayloads:
        """Rows ``lo:hi`` (offsets rebased to 0; ``data`` is a view)."""
        start, stop = int(self.offsets[lo]), int(self.offsets[hi])
        return EncodedPayloads(self.kinds[lo:hi], self.offsets[lo:hi + 1] - np.uint64(start),
                               self.data[start:stop])


def encode(payloads: object, count: int, name: str = "payloads") -> EncodedPayloads:
    """Check and encode a sequence of ``count`` payloads (``str``, ``bytes`` or ``None``).

    Raises
    ------
    TypeError
        If ``payloads`` is not a sequence (a ``str`` or ``bytes`` is not one) or an item is
        not ``str``, ``bytes`` or ``None``.
    ValueError
        If its length is not ``count``, or a ``str`` cannot be encoded as UTF-8.

    Examples
    --------
    >>> encoded = encode(["a", None, b"\\x00"], 3)
    >>> encoded.kinds.tolist(), encoded.offsets.tolist(), encoded.data.tobytes()
    ([1, 0, 2], [0, 1, 1, 2], b'a\\x00')
    """
    if isinstance(payloads, (str, bytes, bytearray, memoryview)) or not hasattr(
            payloads, "__len__") or not hasattr(payloads, "__getitem__"):
        raise TypeError(f"'{name}' must be a sequence of str, bytes or None, one per vector "
                        f"(got {type(payloads).__name__})")
    if isinstance(payloads, np.ndarray) and payloads.ndim != 1:
        raise TypeError(f"'{name}' must be a 1-D sequence (got an array of shape "
                        f"{payloads.shape})")
    if len(payloads) != count:
        raise ValueError(f"'{name}' must hold {count} payloads, one per vector "
                         f"(got {len(payloads)})")
    kinds = np.zeros(count, dtype=np.uint8)
    lengths = np.zeros(count, dtype=np.uint64)
    parts: list[bytes] = []
    for lo in range(0, count, _CHUNK):
        pieces = []
        for row in range(lo, min(count, lo + _CHUNK)):
            item = payloads[row]
            if item is None:
                continue
            if isinstance(item, str):
                try:
                    raw = item.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ValueError(f"'{name}' item {row} is a str that is not valid UTF-8 "
                                     f"({exc.reason})") from None
                kinds[row] = TEXT
            elif isinstance(item, bytes):
                raw = item
                kinds[row] = BYTES
            else:
                raise TypeError(f"'{name}' items must be str, bytes or None (got "
                                f"{type(item).__name__} at {row})")
            lengths[row] = len(raw)
            pieces.append(raw)
        parts.append(b"".join(pieces))
    offsets = np.zeros(count + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(b"".join(parts), dtype=np.uint8) if len(parts) != 1 else \
        np.frombuffer(parts[0], dtype=np.uint8)
    return EncodedPayloads(kinds, offsets, data)


def _decode(kind: int, raw: bytes, label: object) -> str | bytes | None:
    if kind == TEXT:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{label}: a str payload is not valid UTF-8 ({exc.reason})") \
                from None
    return raw if kind == BYTES else None


class PayloadColumn:
    """Payloads by row, growing with the store (see the module docstring).

    Parameters
    ----------
    capacity : int
        Rows to hold (every row starts as ``None``).
    """

    def __init__(self, capacity: int = 0) -> None:
        self.kinds = np.zeros(capacity, dtype=np.uint8)
        self.offsets = np.zeros(capacity + 1, dtype=np.uint64)
        self.data = np.zeros(0, dtype=np.uint8)
        self.size = 0  # bytes of ``data`` in use
        self.source: object = "the payload column"  # named in decoding errors

    @classmethod
    def from_arrays(cls, kinds: np.ndarray, offsets: np.ndarray, data: np.ndarray,
                    label: object = "payloads") -> PayloadColumn:
        """A column over saved arrays (``data`` may be a memory map); checks their shape and
        consistency.

        Raises
        ------
        FormatError
            Naming ``label``, if the kinds are unknown, the offsets do not grow from 0 to the
            data's length, or a ``None`` row has bytes.
        """
        rows = kinds.shape[0]
        if offsets.shape != (rows + 1,):
            raise FormatError(f"{label}: offsets must have shape ({rows + 1},) "
                              f"(got {offsets.shape})")
        if rows and int(kinds.max()) > BYTES:
            raise FormatError(f"{label}: payload kinds must be 0 (none), 1 (str) or 2 (bytes) "
                              f"(got {int(kinds.max())})")
        if int(offsets[0]) != 0 or int(offsets[-1]) != data.shape[0] or np.any(
                offsets[1:] < offsets[:-1]):
            raise FormatError(f"{label}: payload offsets must grow from 0 to the data's "
                              f"{data.shape[0]} bytes")
        if rows and np.any((kinds == NONE) & (offsets[1:] != offsets[:-1])):
            raise FormatError(f"{label}: a row without a payload has payload bytes")
        column = cls(0)
        column.kinds, column.offsets, column.data = kinds, offsets, data
        column.size = data.shape[0]
        column.source = label
        return column

    # ---------------------------------------------------------------- sizes
    @property
    def capacity(self) -> int:
        return self.kinds.shape[0]

    def nbytes(self) -> int:
        return self.kinds.nbytes + self.offsets.nbytes + self.data.nbytes

    def reserve(self, capacity: int, used: int) -> None:
        """Grow the per-row arrays to ``capacity`` rows (``used`` rows kept)."""
        if capacity <= self.capacity:
            return
        kinds = np.zeros(capacity, dtype=np.uint8)
        kinds[:used] = self.kinds[:used]
        offsets = np.zeros(capacity + 1, dtype=np.uint64)
        offsets[:used + 1] = self.offsets[:used + 1]
        self.kinds, self.offsets = kinds, offsets

    # ---------------------------------------------------------------- writing
    def append(self, start: int, encoded: EncodedPayloads | None, count: int) -> None:
        """Write rows ``start:start + count`` (all ``None`` when ``encoded`` is None)."""
        stop = start + count
        self.reserve(stop, start)
        base = self.offsets[start]
        if encoded is None:
            self.kinds[start:stop] = NONE
            self.offsets[start + 1:stop + 1] = base
            return
        extra = encoded.data.shape[0]
        if self.size + extra > self.data.shape[0] or not self.data.flags.writeable:
            grown = np.empty(max(self.size + extra, 2 * self.data.shape[0], 4096),
                             dtype=np.uint8)
            grown[:self.size] = self.data[:self.size]
            self.data = grown
        self.data[self.size:self.size + extra] = encoded.data
        self.kinds[start:stop] = encoded.kinds
        self.offsets[start + 1:stop + 1] = encoded.offsets[1:] + base
        self.size += extra

    # ---------------------------------------------------------------- reading
    def get(self, rows: np.ndarray) -> list[str | bytes | None]:
        """The payloads of ``rows``, in that order."""
        out: list[str | bytes | None] = []
        kinds, offsets, data = self.kinds, self.offsets, self.data
        for row in rows.tolist():
            kind = int(kinds[row])
            if kind == NONE:
                out.append(None)
                continue
            raw = data[int(offsets[row]):int(offsets[row + 1])].tobytes()
            out.append(_decode(kind, raw, self.source))
        return out

    def take(self, rows: np.ndarray) -> EncodedPayloads:
        """Rows ``rows`` (any order) in encoded form, e.g. to rebuild without tombstones."""
        rows = np.asarray(rows, dtype=np.int64)
        kinds = self.kinds[rows].copy()
        starts, stops = self.offsets[rows], self.offsets[rows + 1]
        offsets = np.zeros(rows.size + 1, dtype=np.uint64)
        np.cumsum(stops - starts, out=offsets[1:])
        view = memoryview(self.data)
        parts = []
        for lo in range(0, rows.size, _CHUNK):
            parts.append(b"".join(view[s:e] for s, e in zip(starts[lo:lo + _CHUNK].tolist(),
                                                            stops[lo:lo + _CHUNK].tolist())
                                  if e > s))
        data = np.frombuffer(b"".join(parts), dtype=np.uint8)
        return EncodedPayloads(kinds, offsets, data)

    def saved(self, rows: int, deleted: np.ndarray) -> EncodedPayloads:
        """The first ``rows`` rows as saved: a deleted row's payload is dropped (it becomes
        ``None``), so removed payloads never reach the disk."""
        kinds = self.kinds[:rows]
        offsets = self.offsets[:rows + 1]
        dropped = deleted[:rows] & (offsets[1:] != offsets[:-1])
        if not dropped.any():
            return EncodedPayloads(kinds, offsets, self.data[:self.size])
        keep = np.flatnonzero(~deleted[:rows])
        live = self.take(keep)
        lengths = np.zeros(rows, dtype=np.uint64)
        lengths[keep] = np.diff(live.offsets)
        out_kinds = np.zeros(rows, dtype=np.uint8)
        out_kinds[keep] = live.kinds
        out_offsets = np.zeros(rows + 1, dtype=np.uint64)
        np.cumsum(lengths, out=out_offsets[1:])
        return EncodedPayloads(out_kinds, out_offsets, live.data)

