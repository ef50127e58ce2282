import hashlib
from pathlib import Path

import numpy as np
import pytest

from mrlsearch import _engine_kernels, _kernels


def test_engine_kernels_name_the_digest_of_what_they_inline():
    """numba's cache only sees _engine_kernels.py: a change to a module it inlines must change
    that file too (update INLINED_SOURCES_DIGEST to the value below), or stale kernels load."""
    package = Path(_engine_kernels.__file__).parent
    digest = hashlib.sha256()
    for name in _engine_kernels.INLINED_SOURCES:
        digest.update((package / name).read_bytes())
    assert _engine_kernels.INLINED_SOURCES_DIGEST == digest.hexdigest()[:16]


def test_half_table_is_exact():
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = np.isfinite(bits.view(np.float16))
    np.testing.assert_array_equal(_kernels.HALF_TABLE[finite],
                                  bits.view(np.float16)[finite].astype(np.float32))


def test_exp_shifted_matches_numpy():
    row = np.concatenate([-np.geomspace(1e-8, 86.9, 5000), [0.0, -87.0, -90.0, -1e30]])
    row = row.astype(np.float32)
    out = np.empty(row.size, dtype=np.float32)
    _kernels.exp_shifted(row, 0, row.size, np.float32(0.0), out)
    exact = np.exp(row.astype(np.float64))
    in_range = row >= -87.0
    np.testing.assert_allclose(out[in_range], exact[in_range], rtol=2e-7)
    assert (out[~in_range] <= np.exp(-87.0) * 1.0001).all()


@pytest.mark.parametrize("kind", [0, 1])
def test_softmax_confidence_matches_float64_softmax(kind):
    rng = np.random.default_rng(kind)
    logits = (rng.standard_normal((300, 1000)) * rng.uniform(0.1, 8.0, (300, 1))).astype(np.float32)
    labels = np.empty(300, dtype=np.int64)
    confidence = np.empty(300, dtype=np.float32)
    stop = np.empty(300, dtype=bool)
    _kernels.softmax_confidence(logits, kind, -np.inf, labels, confidence, stop)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, ::-1]
    expected = top2[:, 0] if kind == 0 else top2[:, 0] - top2[:, 1]
    np.testing.assert_array_equal(labels, logits.argmax(axis=1))
    np.testing.assert_allclose(confidence, expected, rtol=1e-6, atol=1e-9)
    assert stop.all()
    # with a threshold: stop exactly where the confidence reaches it; the rest carry an upper bound
    threshold = float(np.median(expected))
    _kernels.softmax_confidence(logits, kind, threshold, labels, confidence, stop)
    clear = np.abs(expected - threshold) > 1e-6
    np.testing.assert_array_equal(stop[clear], (expected >= threshold)[clear])
    assert (confidence[~stop] >= expected[~stop] * (1 - 1e-6)).all()


def test_kernels_widen_every_float16_exactly():
    # the kernels read float16 stores as uint16 bits: through LLVM's fpext where the CPU
    # converts halves itself (NATIVE_HALF), else through HALF_TABLE; both must give numpy's value
    import numba

    @numba.njit
    def widen(bits, table):
        out = np.empty(bits.shape[0], dtype=np.float32)
        for i in range(bits.shape[0]):
            out[i] = _kernels._to_f32(bits[i], table)
        return out

    bits = np.arange(1 << 16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    got = widen(bits, _kernels.HALF_TABLE)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
