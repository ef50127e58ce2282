"""Shared numba pieces (float16 lookup, prefix norms) and the cascade's softmax.

The funnel's search kernels are in :mod:`mrlsearch._engine_kernels`. Kernels are pure
functions over C-contiguous arrays: they never validate (the callers in ``searcher.py`` and
``classifier.py`` do), never allocate their outputs (the callers preallocate
them, padded with ``-1`` / ``-inf``) and are compiled with explicit signatures and
``cache=True`` so that a process pays the compile cost once per machine, not once per run.
The hot kernels release the GIL (``nogil=True``): queries from several threads run in
parallel, as hnswlib's do.

numba has no float16 arithmetic on the CPU, so float16 vector stores are handed to the kernels
as their raw ``uint16`` bits. Where the CPU converts half floats itself (x86 with F16C, ARM64:
:data:`NATIVE_HALF`) the kernels widen the bits with LLVM's ``fpext`` (``vcvtph2ps`` on x86,
eight values per instruction, so the loops stay vectorised: 28 rows of 256 dims scored in
0.88 us against 2.57 us through the table, measured); elsewhere they look each value up in a
65536-entry float32 table (:data:`HALF_TABLE`, 256 KiB, it stays in L2). Both give the exact
float32 value of the half. float32 stores ignore the table.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

__all__: list[str] = []

METRIC_IP = 0
METRIC_COSINE = 1
METRIC_L2 = 2
METRIC_CODES = {"ip": METRIC_IP, "cosine": METRIC_COSINE, "l2": METRIC_L2}

#: float32 value of every float16 bit pattern, indexed by the pattern as uint16.
HALF_TABLE = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
#: stand-in table for float32 stores (never read).
NO_TABLE = np.zeros(1, dtype=np.float32)


def _compiles_native_half() -> bool:
    """Whether the CPU numba compiles for widens half floats itself (x86 F16C, or ARM64), so
    that LLVM's ``fpext`` from half becomes a conversion instruction. Without it LLVM emits a
    call to ``__extendhfsf2``, which numba's JIT cannot resolve (the process aborts): so the
    features are numba's target features (``NUMBA_CPU_FEATURES`` when set, as for portable
    caches), not the host's."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        from numba.core import config
        from numba.core.codegen import get_host_cpu_features

        features = (config.CPU_FEATURES if config.CPU_FEATURES is not None
                    else get_host_cpu_features())
    except Exception:  # noqa: BLE001 - numba internals moved: fall back to the table
        return False
    return "+f16c" in str(features).split(",")


#: Whether the kernels widen float16 bits with ``fpext`` (else through :data:`HALF_TABLE`).
NATIVE_HALF = _compiles_native_half()


@intrinsic
def _half_bits_to_f32(typingctx, bits):
    """The float32 value of a float16 given as its uint16 bits (LLVM ``fpext`` from half)."""
    signature = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return signature, codegen


def _to_f32(value, table):  # pragma: no cover - replaced by the overload inside numba
    raise NotImplementedError


@overload(_to_f32, inline="always")
def _to_f32_overload(value, table):
    if isinstance(value, types.Integer):  # float16 bits (a uint16 view of the store)
        if NATIVE_HALF:
            return lambda value, table: _half_bits_to_f32(value)
        return lambda value, table: table[value]
    return lambda value, table: np.float32(value)


_LANES = 8


@numba.njit(inline="always")
def _square_into(lanes, value, lane):
    as_double = np.float64(value)
    lanes[lane] += as_double * as_double


@numba.njit(inline="always")
def prefix_norms_into(row, dims, lanes, out):
    r"""``out[j]`` = :math:`\lVert row_{:dims_j} \rVert`, summed in float64 in eight lanes.

    Coordinate ``c`` always adds into lane ``c % 8`` and the lanes are combined in one fixed
    order, so a query's norms round exactly as a stored row's (both come through here), while
    the eight independent sums vectorise: one chain of float64 additions in order was
    latency-bound at about 0.6 us for 384 dims and 3 us for 2048, per query.
    ``lanes`` is scratch of :data:`_LANES` float64 values.
    """
    lanes[:] = 0.0
    c = 0
    for j in range(dims.shape[0]):
        stop = dims[j]
        while c < stop and c % _LANES != 0:
            _square_into(lanes, row[c], c % _LANES)
            c += 1
        while c + _LANES <= stop:
            for lane in range(_LANES):
                _square_into(lanes, row[c + lane], lane)
            c += _LANES
        while c < stop:
            _square_into(lanes, row[c], c % _LANES)
            c += 1
        out[j] = np.sqrt(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
                         + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])))


@numba.njit(["f4[:, ::1](f4[:, ::1], i8[::1])"], cache=True, nogil=True)
def prefix_norms(batch, dims):
    r"""Norms of every row's prefixes: ``out[i, j]`` = :math:`\lVert x_{i, :dims_j} \rVert`
    (see :func:`prefix_norms_into`)."""
    out = np.empty((batch.shape[0], dims.shape[0]), dtype=np.float32)
    lanes = np.empty(_LANES, dtype=np.float64)
    for i in range(batch.shape[0]):
        prefix_norms_into(batch[i], dims, lanes, out[i])
    return out


# exp(x) for x <= 0 in float32 (used by softmax_confidence): x = n ln2 + r with |r| <= ln2 / 2
# (ln2 split in two for an exact n ln2), e^r by its degree-7 Taylor polynomial (truncation
# < 1e-8), 2^n written straight into the exponent bits. Adding 1.5 * 2^23 rounds x / ln2 to the
# integer n and leaves n in the low mantissa bits. Relative error < 2e-7 (tested against
# np.exp); x below -87 is clamped there (e^-87 ~ 1.6e-38 still counts as nothing).
_F32 = np.float32
_EXP_LOWEST = _F32(-87.0)
_LOG2E = _F32(1.4426950408889634)
_ROUND_MAGIC = _F32(12582912.0)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_EXP_CHUNK = 128  # classes per chunk of the softmax sum: the early exit is tested per chunk


@numba.njit(["void(f4[::1], i8, i8, f4, f4[::1])"], cache=True, nogil=True)
def exp_shifted(row, start, stop, top, out):
    """``out[j - start] = exp(row[j] - top)`` for ``start <= j < stop``, all ``row[j] <= top``.

    A branch-free polynomial the compiler vectorises (numba's ``np.exp`` is a scalar libm
    call without SVML). Not ``fastmath``: reassociation would undo the rounding trick. The loop
    runs over the slice ``row[start:stop]`` from 0: indexed by ``range(start, stop)`` numba
    checks every index for negative wraparound, which keeps LLVM from vectorising the loop
    (0.63-0.79 -> 0.19 ns per element at 128-1000 classes on the benchmark machine).
    """
    part = row[start:stop]
    for j in range(part.shape[0]):
        x = part[j] - top
        x = x if x > _EXP_LOWEST else _EXP_LOWEST
        shifted = x * _LOG2E + _ROUND_MAGIC
        n = shifted - _ROUND_MAGIC
        r = (x - n * _LN2_HI) - n * _LN2_LO
        poly = _F32(1.0) + r * (_F32(1.0) + r * (_F32(0.5) + r * (_F32(1.0 / 6.0) + r * (
            _F32(1.0 / 24.0) + r * (_F32(1.0 / 120.0) + r * (_F32(1.0 / 720.0)
                                                          + r * _F32(1.0 / 5040.0)))))))
        bits = (np.float32(shifted).view(np.int32) + np.int32(127)) << np.int32(23)
        out[j] = poly * np.int32(bits).view(np.float32)


@numba.njit(["f8(f4[::1], i8)"], fastmath={"reassoc"}, cache=True, nogil=True)
def _sum_prefix(values, count):
    """Sum of ``values[:count]`` (reassociated, so it vectorises)."""
    total = _F32(0.0)
    for j in range(count):
        total += values[j]
    return np.float64(total)


@numba.njit(["void(f4[:, ::1], i8, f8, i8[::1], f4[::1], b1[::1])"], parallel=False,
            cache=True, nogil=True)
def softmax_confidence(logits, kind, threshold, out_labels, out_confidence, out_stop):
    r"""Arg-max label, softmax confidence and the stop decision ``confidence >= threshold``.

    With :math:`l^* = \max_j l_j` and :math:`Z = \sum_j e^{l_j - l^*}`: ``kind`` 0 gives the
    top probability :math:`1 / Z`; ``kind`` 1 the margin :math:`(1 - e^{l_2 - l^*}) / Z`
    between the top two probabilities (:math:`l_2` the second largest logit). Max-subtracted,
    so huge logits do not overflow. Rows run in parallel; the exponentials are
    :func:`exp_shifted`'s (relative error < 2e-7), summed in chunks of 128 classes.

    A row that cannot reach ``threshold`` is known as soon as the partial sum of :math:`Z`
    passes the bound the threshold sets; the sum stops at the end of that chunk,
    ``out_stop`` is False and ``out_confidence`` is only an upper bound (the cascade never
    reports it). Pass ``threshold=-inf`` for exact confidences everywhere.
    """
    n_classes = logits.shape[1]
    for i in prange(logits.shape[0]):
        row = logits[i]
        best = 0
        top = row[0]
        second = -np.inf
        for j in range(1, n_classes):
            value = row[j]
            if value > top:
                second = top
                top = value
                best = j
            elif value > second:
                second = value
        out_labels[i] = best
        if kind == 0 or n_classes == 1:
            numerator = 1.0
        else:
            numerator = 1.0 - np.exp(np.float64(second) - np.float64(top))
        # confidence = numerator / total >= threshold  <=>  total <= numerator / threshold
        bound = numerator / threshold if threshold > 0.0 else np.inf
        buffer = np.empty(_EXP_CHUNK, dtype=np.float32)
        total = 0.0
        stopped_early = False
        for start in range(0, n_classes, _EXP_CHUNK):
            stop = min(start + _EXP_CHUNK, n_classes)
            exp_shifted(row, start, stop, top, buffer)
            total += _sum_prefix(buffer, stop - start)
            if total > bound:
                stopped_early = True
                break
        out_confidence[i] = numerator / total
        out_stop[i] = not stopped_early and out_confidence[i] >= threshold
