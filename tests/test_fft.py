"""Tests for svt.fft: linear/cyclic convolution and correlation, the exact integer path,
and the seed's uses (polynomial product, all pairwise sums, best circular shift).

References are direct O(n m) sums written here with Python loops (Python ints for
integers, so they are exact), independent of any FFT.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import INSTALL_PYTHON_DEPS, missing
from svt import fft as F

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOAT_DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
ALL_DTYPES = INT_DTYPES + FLOAT_DTYPES


# --------------------------------------------------------------------------------------
# direct references
# --------------------------------------------------------------------------------------

def _py(x):
    """1-D numpy array -> list of Python numbers (ints stay exact)."""
    return [v if isinstance(v, (int, float, complex)) else v.item() for v in np.asarray(x).tolist()]


def direct_full(a, b):
    a, b = _py(a), _py(b)
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def direct_corr_full(a, b):
    """c[k] = sum_j a[j + k] conj(b[j]) for k = -(m-1) .. n-1, straight from the definition."""
    a, b = _py(a), _py(b)
    n, m = len(a), len(b)
    if not n or not m:
        return []
    out = []
    for k in range(-(m - 1), n):
        acc = 0
        for j in range(m):
            if 0 <= j + k < n:
                y = b[j]
                acc += a[j + k] * (y.conjugate() if isinstance(y, complex) else y)
        out.append(acc)
    return out


def direct_cyclic(a, b, corr=False):
    a, b = _py(a), _py(b)
    N = len(a)
    out = []
    for k in range(N):
        acc = 0
        for j in range(N):
            if corr:
                y = b[j]
                acc += a[(j + k) % N] * (y.conjugate() if isinstance(y, complex) else y)
            else:
                acc += a[j] * b[(k - j) % N]
        out.append(acc)
    return out


def window(full, n, m, mode):
    """'same': n samples centred like scipy; 'valid': where the inputs overlap fully."""
    if mode == "full":
        return full
    if mode == "same":
        if m == 0:
            return [0] * n
        s = (m - 1) // 2
        return full[s:s + n]
    s = min(n, m) - 1
    return full[s:max(n, m)]


def direct_nd(a, b, axis, fn):
    """Apply a 1-D reference over the broadcast batch; returns an object array."""
    nd = max(a.ndim, b.ndim)
    a = a.reshape((1,) * (nd - a.ndim) + a.shape)
    b = b.reshape((1,) * (nd - b.ndim) + b.shape)
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    batch = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    a = np.broadcast_to(a, batch + a.shape[-1:])
    b = np.broadcast_to(b, batch + b.shape[-1:])
    rows = {idx: fn(a[idx], b[idx]) for idx in np.ndindex(batch)}
    length = len(next(iter(rows.values()))) if rows else 0
    out = np.empty(batch + (length,), dtype=object)
    for idx, r in rows.items():
        out[idx] = r if length else []
    return np.moveaxis(out, -1, axis)


def axis_len(x, axis, nd):
    """Length of x along axis counted in the common rank nd (leading dims padded)."""
    return x.shape[axis % nd - (nd - x.ndim)]


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == bool:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        scale = rng.choice([4, 1 << 10, None])  # small, medium, or the full dtype range
        lo = info.min if scale is None else max(info.min, -scale)
        hi = info.max if scale is None else min(info.max, scale)
        return rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)
    x = rng.standard_normal(shape) * rng.choice([1.0, 1e3])
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def assert_matches(res, ref_obj, a, b, n, m):
    """res (numpy) against an exact/float64 object-array reference."""
    integer = a.dtype.kind in "biu" and b.dtype.kind in "biu"
    assert res.shape == ref_obj.shape
    if integer:
        fits = all(F._INT64_MIN <= int(v) <= F._INT64_MAX for v in ref_obj.flat)
        assert res.dtype == (np.int64 if fits else object)
        assert all(int(x) == int(y) for x, y in zip(res.flat, ref_obj.flat))
        return
    out_dtype = np.result_type(a.dtype, b.dtype)
    if out_dtype.kind not in "fc":
        out_dtype = np.dtype(np.float64)
    assert res.dtype == out_dtype
    ref = ref_obj.astype(np.complex128 if out_dtype.kind == "c" else np.float64)
    amax = float(np.max(np.abs(a.astype(np.complex128)))) if a.size else 0.0
    bmax = float(np.max(np.abs(b.astype(np.complex128)))) if b.size else 0.0
    scale = amax * bmax * max(1, min(n, m))
    eps = np.finfo(out_dtype).eps
    np.testing.assert_allclose(res, ref, rtol=0, atol=64 * eps * scale * math.log2(n + m + 2) + 1e-300)


# --------------------------------------------------------------------------------------
# the seed's worked examples
# --------------------------------------------------------------------------------------

def test_seed_polynomial_product():
    out = F.poly_multiply([3, 4, 5], [4, 5, 6])
    assert out.dtype == np.int64
    assert out.tolist() == [12, 31, 58, 49, 30]
    # the same through big-number multiplication, as in the seed: 300040005 * 400050006
    assert 300040005 * 400050006 == 120031005800490030


def test_seed_all_pairwise_sums():
    sums, counts = F.sum_counts([1, 2, 3], [2, 4])
    assert sums.tolist() == [3, 4, 5, 6, 7]
    assert counts.tolist() == [1, 1, 2, 1, 1]


def test_seed_cyclic_versus_linear():
    """An FFT product of length-3 spectra is the cyclic convolution; zero-padding to
    n + m - 1 = 5 gives the linear one (the polynomial product)."""
    a, b = np.array([1, 2, 3]), np.array([4, 5, 6])
    cyc = np.fft.irfft(np.fft.rfft(a) * np.fft.rfft(b), 3)
    a1, a2, a3 = a
    b1, b2, b3 = b
    seed_cyclic = [a1 * b1 + a2 * b3 + a3 * b2, a1 * b2 + a2 * b1 + a3 * b3, a1 * b3 + a2 * b2 + a3 * b1]
    assert np.allclose(cyc, seed_cyclic)
    assert F.cyclic_convolve(a, b).tolist() == seed_cyclic
    linear = F.convolve(a, b).tolist()
    assert linear == [a1 * b1, a1 * b2 + a2 * b1, a1 * b3 + a2 * b2 + a3 * b1, a2 * b3 + a3 * b2, a3 * b3]
    assert linear != seed_cyclic + [0, 0]
    padded = F.cyclic_convolve(np.r_[a, 0, 0], np.r_[b, 0, 0]).tolist()
    assert padded == linear
    # the cyclic result is the linear one with its tail wrapped onto its head
    assert [linear[0] + linear[3], linear[1] + linear[4], linear[2]] == seed_cyclic


def test_big_number_multiplication_via_polynomials():
    """The seed's big-integer trick: digits as coefficients, evaluate the product at 10."""
    x, y = 4321, 98765
    dx = [int(c) for c in str(x)[::-1]]
    dy = [int(c) for c in str(y)[::-1]]
    coeffs = F.poly_multiply(dx, dy)
    assert sum(int(c) * 10 ** i for i, c in enumerate(coeffs)) == x * y


# --------------------------------------------------------------------------------------
# fast lengths
# --------------------------------------------------------------------------------------

def _smooth(x, primes):
    for p in primes:
        while x % p == 0:
            x //= p
    return x == 1


def test_next_fast_len_brute_force():
    for n in range(1, 3000):
        r = F.next_fast_len(n)
        assert r >= n and _smooth(r, (2, 3, 5))
        assert not any(_smooth(v, (2, 3, 5)) for v in range(n, r))
        c = F.next_fast_len(n, real=False)
        assert c >= n and _smooth(c, (2, 3, 5, 7, 11))
        assert not any(_smooth(v, (2, 3, 5, 7, 11)) for v in range(n, c))
    assert F.next_fast_len(0) == 1 and F.next_fast_len(1) == 1
    assert F.next_fast_len(2_000_000 - 1) == 2_000_000
    assert F.next_fast_len(4159) == 4320


def test_next_fast_len_matches_scipy():
    sfft = pytest.importorskip("scipy.fft", reason=missing("scipy", INSTALL_PYTHON_DEPS))
    rng = np.random.default_rng(0)
    for n in list(rng.integers(2, 10 ** 9, 300)) + [2 ** 40 + 1, 10 ** 12 + 7]:
        assert F.next_fast_len(int(n)) == sfft.next_fast_len(int(n), real=True)
        assert F.next_fast_len(int(n), real=False) == sfft.next_fast_len(int(n), real=False)


def test_next_fast_len_errors():
    with pytest.raises(ValueError, match="n must be >= 0"):
        F.next_fast_len(-1)
    with pytest.raises(TypeError, match="n must be an int"):
        F.next_fast_len(2.5)


# --------------------------------------------------------------------------------------
# property tests against the direct sums
# --------------------------------------------------------------------------------------

@st.composite
def conv_case(draw):
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 12))
    m = draw(st.integers(0, 12))
    nbatch = draw(st.integers(0, 2))
    batch = draw(st.lists(st.integers(1, 3), min_size=nbatch, max_size=nbatch))
    # broadcasting: each input may have 1 in some batch dims, or fewer leading dims
    ba = [d if draw(st.booleans()) else 1 for d in batch]
    bb = [d if draw(st.booleans()) else 1 for d in batch]
    pos = draw(st.integers(0, nbatch))  # where the convolution axis sits
    lead = 1 if (pos >= 1 and draw(st.booleans())) else 0  # b may lack leading dims
    sa = ba[:pos] + [n] + ba[pos:]
    sb = bb[lead:pos] + [m] + bb[pos:]
    da = draw(st.sampled_from(ALL_DTYPES))
    db = da if draw(st.booleans()) else draw(st.sampled_from(ALL_DTYPES))
    a = random_array(rng, tuple(sa), da)
    b = random_array(rng, tuple(sb), db)
    axis = pos if draw(st.booleans()) else pos - (nbatch + 1)
    mode = draw(st.sampled_from(["full", "same", "valid"]))
    return a, b, axis, mode


@SETTINGS
@given(conv_case())
def test_convolve_matches_direct(case):
    a, b, axis, mode = case
    nd = max(a.ndim, b.ndim)
    n, m = axis_len(a, axis, nd), axis_len(b, axis, nd)
    if mode == "valid" and (n == 0 or m == 0):
        with pytest.raises(ValueError, match="valid"):
            F.convolve(a, b, mode, axis=axis)
        return
    a0, b0 = a.copy(), b.copy()
    res = F.convolve(a, b, mode, axis=axis)
    ref = direct_nd(a, b, axis, lambda x, y: window(direct_full(x, y), n, m, mode))
    assert_matches(res, ref, a, b, n, m)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


@SETTINGS
@given(conv_case())
def test_correlate_matches_direct(case):
    a, b, axis, mode = case
    nd = max(a.ndim, b.ndim)
    n, m = axis_len(a, axis, nd), axis_len(b, axis, nd)
    if mode == "valid" and (n == 0 or m == 0):
        with pytest.raises(ValueError, match="valid"):
            F.correlate(a, b, mode, axis=axis)
        return
    res = F.correlate(a, b, mode, axis=axis)
    ref = direct_nd(a, b, axis, lambda x, y: window(direct_corr_full(x, y), n, m, mode))
    assert_matches(res, ref, a, b, n, m)


@SETTINGS
@given(conv_case())
def test_cyclic_matches_direct(case):
    a, b, axis, _ = case
    # equal lengths along the axis: trim the longer one
    nd = max(a.ndim, b.ndim)
    n = min(axis_len(a, axis, nd), axis_len(b, axis, nd))
    a = np.take(a, range(n), axis=axis % nd - (nd - a.ndim))
    b = np.take(b, range(n), axis=axis % nd - (nd - b.ndim))
    for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
        res = fn(a, b, axis=axis)
        ref = direct_nd(a, b, axis, lambda x, y: direct_cyclic(x, y, corr))
        assert_matches(res, ref, a, b, n, n)


@SETTINGS
@given(conv_case())
def test_exact_false_uses_float64(case):
    a, b, axis, mode = case
    if a.dtype.kind not in "biu" or b.dtype.kind not in "biu" or mode == "valid":
        return
    a, b = a.astype(np.int16), b.astype(np.int16)  # small enough for float64 to be near-exact
    res = F.convolve(a, b, mode, axis=axis, exact=False)
    assert res.dtype == np.float64
    np.testing.assert_allclose(res, F.convolve(a, b, mode, axis=axis).astype(np.float64), atol=1e-3)


def test_matches_scipy_including_n_less_than_m():
    ss = pytest.importorskip("scipy.signal", reason=missing("scipy", INSTALL_PYTHON_DEPS))
    rng = np.random.default_rng(3)
    for n, m in [(3, 7), (7, 3), (4, 4), (1, 6), (6, 1), (2, 5), (200, 31)]:
        a = rng.standard_normal(n) + 1j * rng.standard_normal(n)
        b = rng.standard_normal(m) + 1j * rng.standard_normal(m)
        for mode in ("full", "same", "valid"):
            np.testing.assert_allclose(F.convolve(a, b, mode),
                                       ss.convolve(a, b, mode, method="direct"), atol=1e-9)
            np.testing.assert_allclose(F.correlate(a, b, mode),
                                       ss.correlate(a, b, mode, method="direct"), atol=1e-9)
            np.testing.assert_allclose(F.convolve(a.real, b.real, mode),
                                       ss.fftconvolve(a.real, b.real, mode), atol=1e-9)


def test_float32_stays_float32_and_float64_is_accurate():
    rng = np.random.default_rng(1)
    a32, b32 = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    assert F.convolve(a32, b32).dtype == np.float32
    assert F.correlate(a32, b32, "same").dtype == np.float32
    assert F.cyclic_convolve(a32, a32).dtype == np.float32
    assert F.convolve(a32.astype(np.complex64), b32).dtype == np.complex64
    assert F.convolve(a32, b32.astype(np.float64)).dtype == np.float64
    assert F.convolve(a32.astype(np.float16), b32.astype(np.float16)).dtype == np.float16
    a, b = a32.astype(np.float64), b32.astype(np.float64)
    np.testing.assert_allclose(F.convolve(a, b), np.convolve(a, b), atol=1e-11)
    np.testing.assert_allclose(F.convolve(a32, b32), np.convolve(a, b), atol=2e-4)


def test_shared_input_reuses_transform_and_stays_right():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 50))
    np.testing.assert_allclose(F.convolve(x, x), F.convolve(x, x.copy()), atol=1e-10)
    for mode in ("full", "same", "valid"):
        np.testing.assert_allclose(F.correlate(x, x, mode), F.correlate(x, x.copy(), mode), atol=1e-10)
    z = x + 1j * x[::-1]
    np.testing.assert_allclose(F.correlate(z, z), F.correlate(z, z.copy()), atol=1e-10)
    i = rng.integers(-2 ** 40, 2 ** 40, 64)
    assert F.convolve(i, i).tolist() == direct_full(i, i)


def test_valid_and_same_use_short_transforms_but_stay_linear():
    """'valid' may use a cyclic length of only max(n, m) (overlap-save): the wrapped
    outputs are exactly the discarded ones."""
    rng = np.random.default_rng(4)
    a, b = rng.integers(-9, 9, 100), rng.integers(-9, 9, 37)
    full = direct_full(a, b)
    assert F.convolve(a, b, "valid").tolist() == window(full, 100, 37, "valid")
    assert F.convolve(a, b, "same").tolist() == window(full, 100, 37, "same")
    assert F.convolve(b, a, "same").tolist() == window(full, 37, 100, "same")
    assert F._transform_len(100, 37, 36, 100) == 100


def test_empty_inputs():
    e, x = np.zeros(0), np.arange(4.0)
    assert F.convolve(e, x).shape == (0,)
    assert F.convolve(x, e).shape == (0,)
    assert F.convolve(x, e, "same").tolist() == [0.0] * 4
    assert F.convolve(e, x, "same").shape == (0,)
    assert F.correlate(np.zeros((2, 0), int), np.ones((2, 3), int)).shape == (2, 0)
    assert F.cyclic_convolve(e, e).shape == (0,)
    assert F.int_convolve(np.zeros(0, int), [1, 2]).dtype == np.int64
    assert F.poly_multiply([], [1, 2]).shape == (0,)
    with pytest.raises(ValueError, match="valid"):
        F.convolve(x, e, "valid")
    assert F.convolve(np.ones((0, 3)), np.ones(2)).shape == (0, 4)


def test_length_one_and_axis_batching():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 7, 3))
    b = rng.standard_normal((1, 5, 3))
    out = F.convolve(a, b, axis=1)
    assert out.shape == (4, 11, 3)
    for i in range(4):
        for j in range(3):
            np.testing.assert_allclose(out[i, :, j], np.convolve(a[i, :, j], b[0, :, j]), atol=1e-12)
    one = F.convolve([5], [2, 3, 4])
    assert one.tolist() == [10, 15, 20]
    k1 = b[:, :1, :]  # length-1 kernels: a scaled copy
    np.testing.assert_allclose(F.convolve(a, k1, axis=1), a * k1, atol=1e-12)


# --------------------------------------------------------------------------------------
# cyclic at lengths that are not fast: linear at a fast length, folded
# --------------------------------------------------------------------------------------

def np_cyclic_direct(a, b, corr, axis=-1):
    """O(n^2) numpy reference straight from the definitions, one output index at a time:
    convolution c[k] = sum_j a[j] b[(k - j) mod n], correlation c[k] = sum_j a[(j + k) mod n]
    conj(b[j]). Integer inputs stay int64 (exact while every |output| < 2^63)."""
    a, b = np.moveaxis(np.asarray(a), axis, -1), np.moveaxis(np.asarray(b), axis, -1)
    n = a.shape[-1]
    j = np.arange(n)
    cols = [np.sum(a[..., (j + k) % n] * np.conj(b), axis=-1) if corr else
            np.sum(a * b[..., (k - j) % n], axis=-1) for k in range(n)]
    return np.moveaxis(np.stack(cols, axis=-1), -1, axis)


def _direct_transform_only(monkeypatch):
    """Make cyclic_* transform at n itself, as before folding existed."""
    monkeypatch.setattr(F, "_cyclic_len", lambda n, real: n)


def _fold_always(monkeypatch):
    """Make cyclic_* fold at every length (the smallest fast length >= 2n - 1)."""
    monkeypatch.setattr(F, "_cyclic_len", lambda n, real: F.next_fast_len(2 * n - 1, real))


def _cyclic_inputs(rng, kind, shape_a, shape_b):
    if kind == "int":  # |x| < 2^26: sums of n products below 2^52 reach past float64's 2^53
        return (rng.integers(-(2 ** 26), 2 ** 26, shape_a), rng.integers(-(2 ** 26), 2 ** 26, shape_b))
    dtype = {"real": np.float64, "complex": np.complex128, "float32": np.float32}[kind]
    return random_array(rng, shape_a, dtype), random_array(rng, shape_b, dtype)


def test_cyclic_length_choice():
    for n in (97, 1009, 100_003, 389 * 32):  # a large prime factor: fold
        assert F._cyclic_len(n, True) == F.next_fast_len(2 * n - 1)
        assert F._cyclic_len(n, False) == F.next_fast_len(2 * n - 1, real=False)
    for n in (1, 2, 360, 1000, 1024, 2 ** 17, 3 ** 5 * 5 ** 3):  # already fast: stay at n
        assert F._cyclic_len(n, True) == n and F._cyclic_len(n, False) == n
    assert F._cyclic_len(7 * 11, False) == 7 * 11  # 11-smooth is fast for complex transforms
    # small prime factors cost a cheap generic pass: 2-3x faster than folding, stay at n
    for n in (7, 13, 7 * 2 ** 14, 11 * 3 * 2 ** 10, 61 * 2 ** 11, 2 * 3 * 5 * 7 * 11 * 13):
        assert F._cyclic_len(n, True) == n


@pytest.mark.parametrize("n", [97, 1009, 360, 1024])
@pytest.mark.parametrize("kind", ["real", "complex", "int", "float32"])
def test_cyclic_prime_and_smooth_lengths_match_direct(n, kind, monkeypatch):
    """Batched along axis 1 with a broadcast second input; against the O(n^2) sums and
    against the transform at n itself (the way before folding: the same result, and
    identical integers)."""
    rng = np.random.default_rng(n)
    a, b = _cyclic_inputs(rng, kind, (2, n, 3), (n, 3))
    assert (F._cyclic_len(n, kind != "complex") == n) == (n in (360, 1024))
    got = {}
    for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
        res = fn(a, b, axis=1)
        ref = np_cyclic_direct(a, b[None], corr, axis=1)
        assert res.shape == (2, n, 3)
        assert_matches(res, ref, a, b, n, n)
        if kind == "int":
            assert np.abs(ref).max() > 2 ** 53  # beyond what a float64 FFT can round exactly
        got[corr] = res
    with monkeypatch.context() as mp:
        _direct_transform_only(mp)
        for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
            old = fn(a, b, axis=1)
            assert old.dtype == got[corr].dtype
            if kind == "int":
                assert np.array_equal(old, got[corr])
            else:
                tol = 1e-4 if kind == "float32" else 1e-11
                scale = n * np.abs(a).max() * np.abs(b).max()
                np.testing.assert_allclose(got[corr], old, rtol=0, atol=tol * scale)
    if kind == "real":  # numpy's own length-n transform
        old = np.fft.irfft(np.fft.rfft(a, axis=1) * np.fft.rfft(b[None], axis=1), n, axis=1)
        scale = n * np.abs(a).max() * np.abs(b).max()
        np.testing.assert_allclose(got[False], old, rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32, np.int64, np.uint8, bool])
def test_cyclic_fold_at_every_small_length(dtype, monkeypatch):
    """Folding forced at n = 1..40 (both folds, the transform length 2n - 1 itself
    included), shared inputs too, against the Python-int / float direct sums."""
    _fold_always(monkeypatch)
    rng = np.random.default_rng(21)
    for n in range(1, 41):
        a, b = random_array(rng, (2, n), dtype), random_array(rng, (2, n), dtype)
        for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
            ref = direct_nd(a, b, -1, lambda x, y: direct_cyclic(x, y, corr))
            assert_matches(fn(a, b), ref, a, b, n, n)
            ref = direct_nd(a, a, -1, lambda x, y: direct_cyclic(x, y, corr))
            assert_matches(fn(a, a), ref, a, a, n, n)


def test_cyclic_prime_exact_beyond_int64(monkeypatch):
    n = 97
    rng = np.random.default_rng(22)
    a = (2 ** 62 - rng.integers(0, 1000, n)) * rng.choice([-1, 1], n)
    b = (2 ** 61 - rng.integers(0, 1000, n)) * rng.choice([-1, 1], n)
    big = np.array([2 ** 70, -(3 ** 40), 5] + [0] * (n - 3), dtype=object)  # Python ints
    pairs = [(a, b), (big, a), (a, a)]  # (a, a): one shared transform
    res = {}
    for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
        for i, (x, y) in enumerate(pairs):
            out = fn(x, y)
            assert out.dtype == object and out.shape == (n,)
            assert [int(v) for v in out] == direct_cyclic(x, y, corr)
            res[corr, i] = out.tolist()
        with pytest.raises(OverflowError, match="allow_object"):
            fn(a, b, allow_object=False)
        small = a >> 40  # results fit int64 after all: int64, also with allow_object=False
        out = fn(small, small, allow_object=False)
        assert out.dtype == np.int64 and out.tolist() == direct_cyclic(small, small, corr)
    _direct_transform_only(monkeypatch)
    for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
        for i, (x, y) in enumerate(pairs):
            assert fn(x, y).tolist() == res[corr, i]


def test_cyclic_prime_length_in_chunks(monkeypatch):
    """Row chunks at the folded transform length; one row needs Python ints."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((6, 97))
    i = rng.integers(-(2 ** 20), 2 ** 20, (6, 97))
    i[4] = 2 ** 62
    expected = [F.cyclic_convolve(x, x[::-1]), F.cyclic_correlate(x, x), F.cyclic_correlate(i, i[::-1])]
    monkeypatch.setattr(F, "_CHUNK", 300)  # one row per chunk
    got = [F.cyclic_convolve(x, x[::-1]), F.cyclic_correlate(x, x), F.cyclic_correlate(i, i[::-1])]
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=1e-12)
    assert got[2].dtype == object and got[2].tolist() == expected[2].tolist()
    assert got[2].tolist() == direct_nd(i, i[::-1], -1, lambda u, v: direct_cyclic(u, v, True)).tolist()


def test_cyclic_prime_length_torch():
    n = 101
    assert F._cyclic_len(n, True) != n and F._cyclic_len(n, False) != n  # folds
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, n, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, n, dtype=torch.complex128, generator=g)
    out = F.cyclic_convolve(a, a.detach().flip(-1))
    np.testing.assert_allclose(out.detach().numpy(), np_cyclic_direct(a.detach().numpy(),
                               a.detach().flip(-1).numpy(), False), rtol=0, atol=1e-10)
    out.sum().backward()  # d/da_j sum_k c_k = sum of the second input: autograd through the fold
    grad = a.detach().sum(-1, keepdim=True).expand(2, n)
    np.testing.assert_allclose(a.grad.numpy(), grad.numpy(), rtol=0, atol=1e-10)
    out = F.cyclic_correlate(b, b.roll(5, -1))
    assert out.dtype == torch.complex128
    np.testing.assert_allclose(out.numpy(), np_cyclic_direct(b.numpy(), b.roll(5, -1).numpy(), True),
                               rtol=0, atol=1e-10)
    ai = torch.randint(-(2 ** 26), 2 ** 26, (2, n), generator=g)
    bi = torch.randint(-(2 ** 26), 2 ** 26, (2, n), generator=g)
    for corr, fn in ((False, F.cyclic_convolve), (True, F.cyclic_correlate)):
        out = fn(ai, bi)
        assert out.dtype == torch.int64
        assert np.array_equal(out.numpy(), np_cyclic_direct(ai.numpy(), bi.numpy(), corr))


# --------------------------------------------------------------------------------------
# exact integers
# --------------------------------------------------------------------------------------

def _exact_check(a, b, mode="full"):
    res = F.int_convolve(a, b, mode=mode)
    ref = window(direct_full(a, b), len(a), len(b), mode)
    assert [int(v) for v in res] == ref
    fits = all(F._INT64_MIN <= v <= F._INT64_MAX for v in ref)
    assert res.dtype == (np.int64 if fits else object)
    return res


@pytest.mark.parametrize("bits", [31, 40, 53, 62])
def test_int_adversarial_magnitudes(bits):
    rng = np.random.default_rng(bits)
    n = 300 if bits < 50 else 80
    top = 1 << bits
    # near the top of the range, mixed signs, and aligned worst cases
    a = (top - rng.integers(0, 1000, n)) * rng.choice([-1, 1], n)
    b = (top - rng.integers(0, 1000, n - 7)) * rng.choice([-1, 1], n - 7)
    _exact_check(a, b)
    _exact_check(np.abs(a), np.abs(b))  # all positive: every sum adds up, largest outputs
    _exact_check(a, b, "same")
    _exact_check(a, b[:5], "valid")


def test_int64_and_uint64_extremes():
    i64 = np.array([F._INT64_MIN, F._INT64_MAX, -1, 0, 1, F._INT64_MIN], dtype=np.int64)
    _exact_check(i64, i64[::-1].copy())
    u64 = np.array([2 ** 64 - 1, 2 ** 63, 1, 0, 2 ** 64 - 2], dtype=np.uint64)
    _exact_check(u64, u64)
    _exact_check(u64, i64[:3])
    _exact_check(np.array([True, False, True]), np.array([3, 4], np.int8))


def test_results_that_just_fit_int64_stay_int64():
    a = np.full(8, 2 ** 30, np.int64)
    b = np.full(8, 2 ** 29, np.int64)
    res = _exact_check(a, b)  # largest output 8 * 2^59 = 2^62
    assert res.dtype == np.int64
    res = _exact_check(a * 2, b * 2)  # 2^64: beyond int64
    assert res.dtype == object


def test_plain_float64_fft_is_wrong_where_ours_is_exact():
    rng = np.random.default_rng(7)
    n = 2000
    a = rng.integers(-(2 ** 26), 2 ** 26, n)
    b = rng.integers(-(2 ** 26), 2 ** 26, n)
    N = F.next_fast_len(2 * n - 1)
    plain = np.rint(np.fft.irfft(np.fft.rfft(a, N) * np.fft.rfft(b, N), N)[:2 * n - 1]).astype(np.int64)
    exact = direct_full(a, b)
    assert max(abs(v) for v in exact) < 2 ** 63  # the exact answer fits int64 ...
    wrong = sum(int(p) != e for p, e in zip(plain, exact))
    assert wrong > 0  # ... but the plain FFT rounds it wrong
    ours = F.int_convolve(a, b)
    assert ours.dtype == np.int64 and ours.tolist() == exact


def test_object_results_and_allow_object():
    a = np.array([2 ** 62, -(2 ** 62), 2 ** 62 - 1], dtype=np.int64)
    res = _exact_check(a, a)
    assert res.dtype == object
    assert all(type(v) is int for v in res)
    with pytest.raises(OverflowError, match="int64"):
        F.int_convolve(a, a, allow_object=False)
    # allow_object=False is fine when the values fit
    assert F.int_convolve(a // 2 ** 40, a // 2 ** 40, allow_object=False).dtype == np.int64


def test_python_big_int_inputs():
    p = [2 ** 100 + 1, -(3 ** 70), 7]
    q = [5, 2 ** 90, -(2 ** 80) + 3, 1]
    out = F.poly_multiply(p, q)
    assert out.dtype == object
    assert [int(v) for v in out] == direct_full(np.array(p, dtype=object), np.array(q, dtype=object))
    small = np.array([1, 2, 3], dtype=object)  # object arrays of small ints work too
    assert F.int_convolve(small, small).tolist() == [1, 4, 10, 12, 9]


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 40), st.integers(1, 40), st.integers(1, 64),
       st.integers(1, 64))
def test_int_convolve_random_bit_widths(seed, n, m, bits_a, bits_b):
    rng = np.random.default_rng(seed)
    a = np.array([(int(rng.integers(0, 2 ** 32)) << 32 | int(rng.integers(0, 2 ** 32))) % (1 << bits_a)
                  * (1 if rng.random() < 0.5 else -1) for _ in range(n)], dtype=object)
    b = np.array([(int(rng.integers(0, 2 ** 32)) << 32 | int(rng.integers(0, 2 ** 32))) % (1 << bits_b)
                  * (1 if rng.random() < 0.5 else -1) for _ in range(m)], dtype=object)
    a = a.astype(np.int64) if bits_a < 64 else a
    b = b.astype(np.int64) if bits_b < 64 else b
    res = F.int_convolve(a, b)
    assert [int(v) for v in res] == direct_full(a, b)


def test_error_bound_holds_and_is_conservative():
    """|float FFT convolution - exact| <= delta(N) ||a|| ||b||, on random and on aligned
    (all-maximal) inputs, at several transform lengths; the bound is loose by >= 4x."""
    rng = np.random.default_rng(11)
    for n in (7, 100, 1000, 5000):
        N = F.next_fast_len(2 * n - 1)
        for a, b in [(rng.integers(-(2 ** 20), 2 ** 20, n), rng.integers(-(2 ** 20), 2 ** 20, n)),
                     (np.full(n, 2 ** 20 - 1), np.full(n, 2 ** 20 - 1)),
                     (rng.integers(0, 2 ** 20, n), rng.integers(0, 2 ** 20, n))]:
            approx = np.fft.irfft(np.fft.rfft(a, N) * np.fft.rfft(b, N), N)[:2 * n - 1]
            exact = np.array(F.int_convolve(a.astype(object), b.astype(object)), dtype=object)
            err = max(abs(float(x) - int(y)) for x, y in zip(approx, exact))
            bound = F._fft_error_factor(N) * np.linalg.norm(a) * np.linalg.norm(b)
            assert err <= bound / 4, (n, err, bound)


def test_int_inputs_never_modified():
    rng = np.random.default_rng(12)
    cases = [rng.integers(-(2 ** 62), 2 ** 62, 50), rng.integers(0, 2 ** 64 - 1, 50, dtype=np.uint64),
             rng.integers(-100, 100, 50).astype(np.int8),
             np.array([2 ** 70, -5, 3], dtype=object)]
    for x in cases:
        before = x.copy()
        F.int_convolve(x, x)
        F.int_convolve(x, x[::-1])
        F.correlate(x, x, "same")
        F.cyclic_correlate(x, x)
        np.testing.assert_array_equal(x, before)
    f = rng.standard_normal(20)
    f0 = f.copy()
    F.convolve(f, f)
    F.correlate(f, f)
    np.testing.assert_array_equal(f, f0)


def test_int_batched_along_axis():
    rng = np.random.default_rng(13)
    a = rng.integers(-(2 ** 40), 2 ** 40, (9, 3, 2))
    b = rng.integers(-(2 ** 40), 2 ** 40, (5, 1, 2))
    out = F.int_convolve(a, b, axis=0)
    ref = direct_nd(a, b, 0, direct_full)
    assert out.shape == ref.shape == (13, 3, 2)
    assert all(int(x) == int(y) for x, y in zip(out.flat, ref.flat))


def test_row_chunking_gives_the_same_results(monkeypatch):
    """Large batches run in chunks of rows; force tiny chunks and compare."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((7, 3, 20))
    h = rng.standard_normal((1, 3, 5))
    i = rng.integers(-(2 ** 20), 2 ** 20, (7, 20))
    big = i.copy()
    big[5] = 2 ** 62  # one row whose results need Python ints
    expected = {
        "float": F.convolve(x, h), "auto": F.correlate(x, x, "same"), "int": F.int_convolve(i, i[:, :6]),
        "cyc": F.cyclic_correlate(i, i[::-1]), "big": F.int_convolve(big, i[:, :4]),
    }
    monkeypatch.setattr(F, "_CHUNK", 40)
    got = {
        "float": F.convolve(x, h), "auto": F.correlate(x, x, "same"), "int": F.int_convolve(i, i[:, :6]),
        "cyc": F.cyclic_correlate(i, i[::-1]), "big": F.int_convolve(big, i[:, :4]),
    }
    np.testing.assert_allclose(got["float"], expected["float"], atol=1e-12)
    np.testing.assert_allclose(got["auto"], expected["auto"], atol=1e-12)
    assert got["int"].dtype == np.int64 and np.array_equal(got["int"], expected["int"])
    assert np.array_equal(got["cyc"], expected["cyc"])
    assert got["big"].dtype == object and expected["big"].dtype == object
    assert got["big"].tolist() == expected["big"].tolist()
    ref = direct_nd(big, i[:, :4], -1, direct_full)
    assert got["big"].tolist() == ref.tolist()


# --------------------------------------------------------------------------------------
# seed uses
# --------------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(st.integers(-50, 50), max_size=30), st.lists(st.integers(-50, 50), max_size=30),
       st.booleans())
def test_sum_counts_matches_brute_force(a, b, dense):
    sums, counts = F.sum_counts(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), dense=dense)
    tally = {}
    for x in a:
        for y in b:
            tally[x + y] = tally.get(x + y, 0) + 1
    if dense and tally:
        lo, hi = min(tally), max(tally)
        expect = [(s, tally.get(s, 0)) for s in range(lo, hi + 1)]
    else:
        expect = sorted(tally.items())
    assert list(zip(sums.tolist(), counts.tolist())) == expect


def test_sum_counts_wide_values():
    # negative offsets, a span too large for histograms (falls back to enumeration)
    a = np.array([-(2 ** 63), 0, 2 ** 62], dtype=np.int64)
    b = np.array([-(2 ** 62), 5], dtype=np.int64)
    sums, counts = F.sum_counts(a, b)
    assert sums.dtype == object  # -2^63 - 2^62 is below int64
    assert [int(s) for s in sums] == sorted({x + y for x in a.tolist() for y in b.tolist()})
    assert counts.tolist() == [1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="max_span"):
        F.sum_counts(np.r_[0, 10 ** 9, np.arange(5000)], np.arange(5000), max_span=1000)
    with pytest.raises(TypeError, match="integers"):
        F.sum_counts([1.5], [2])


def test_best_circular_shift_with_np_roll():
    rng = np.random.default_rng(14)
    b = rng.standard_normal(64)
    for s in (0, 1, 17, 63):
        a = np.roll(b, s) + 0.01 * rng.standard_normal(64)
        shift, score = F.best_circular_shift(a, b)
        assert shift == s
        assert score == pytest.approx(float(np.dot(a, np.roll(b, s))))
        assert np.allclose(np.roll(b, shift), a, atol=0.1)
    # integers: exact scores, ties go to the smallest shift
    shift, score = F.best_circular_shift([0, 0, 5, 0], [1, 0, 0, 0])
    assert (shift, score) == (2, 5) and isinstance(score, int)
    assert F.best_circular_shift([1, 1], [1, 1]) == (0, 2)
    # normalised score: 1 for an exact rotated copy
    shift, score = F.best_circular_shift(np.roll(b, 5) * 3, b, normalize=True)
    assert shift == 5 and score == pytest.approx(1.0)
    # complex: maximise the real part of <a, roll(b, s)>
    z = rng.standard_normal(16) + 1j * rng.standard_normal(16)
    assert F.best_circular_shift(np.roll(z, 3), z)[0] == 3
    # batched along an axis
    B = rng.standard_normal((5, 32))
    shifts = np.array([0, 3, 9, 31, 16])
    A = np.stack([np.roll(B[i], shifts[i]) for i in range(5)])
    got, scores = F.best_circular_shift(A.T, B.T, axis=0)
    assert got.tolist() == shifts.tolist() and scores.shape == (5,)
    with pytest.raises(ValueError, match="same length"):
        F.best_circular_shift(np.ones(3), np.ones(4))


# --------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------

def fft_atol(a: torch.Tensor, b: torch.Tensor) -> float:
    """What an FFT convolution of rows of a and b in their precision may be off by:
    eps * log2(transform length) * |a|_2 * |b|_2, the norm-wise error bound of a product
    through FFTs (constant 1). Measured against the numpy path: 0.09 (float32), 0.09
    (complex64) and 0.16 (float64) of it in test_torch_cpu_every_function, 0.04 for the
    CUDA test's shapes computed on the CPU."""
    eps = torch.finfo(a.dtype).eps
    norms = torch.linalg.vector_norm(a, dim=-1).max() * torch.linalg.vector_norm(b, dim=-1).max()
    return eps * math.log2(a.shape[-1] + b.shape[-1]) * norms.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.int64, torch.int16])
def test_torch_cpu_every_function(dtype):
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point or dtype.is_complex:
        a = torch.randn(3, 40, generator=g, dtype=dtype)
        b = torch.randn(3, 9, generator=g, dtype=dtype)
    else:
        a = torch.randint(-1000, 1000, (3, 40), generator=g, dtype=dtype)
        b = torch.randint(-1000, 1000, (3, 9), generator=g, dtype=dtype)
    a0, b0 = a.clone(), b.clone()
    exp_dtype = dtype if (dtype.is_floating_point or dtype.is_complex) else torch.int64
    # floats: the FFT error bound (about 2e-5 here in float32); integers: the exact path
    tol = dict(rtol=0, atol=fft_atol(a, b) if (dtype.is_floating_point or dtype.is_complex) else 0)
    for mode in ("full", "same", "valid"):
        for fn in (F.convolve, F.correlate):
            out = fn(a, b, mode)
            assert isinstance(out, torch.Tensor) and out.dtype == exp_dtype and out.device == a.device
            ref = fn(a.numpy(), b.numpy(), mode)
            np.testing.assert_allclose(out.numpy(), ref, **tol)
    sq = b[:, :9], a[:, :9]
    for fn in (F.cyclic_convolve, F.cyclic_correlate):
        out = fn(*sq)
        assert isinstance(out, torch.Tensor) and out.dtype == exp_dtype
        np.testing.assert_allclose(out.numpy(), fn(sq[0].numpy(), sq[1].numpy()), **tol)
    out = F.poly_multiply(a[0], b[0])
    assert isinstance(out, torch.Tensor) and out.dtype == exp_dtype
    if not (dtype.is_floating_point or dtype.is_complex):
        out = F.int_convolve(a, b, axis=1)
        assert out.dtype == torch.int64
        assert out.tolist() == F.int_convolve(a.numpy(), b.numpy()).tolist()
        sums, counts = F.sum_counts(a[0], b[0])
        assert isinstance(sums, torch.Tensor)
        ref_s, ref_c = F.sum_counts(a[0].numpy(), b[0].numpy())
        assert sums.tolist() == ref_s.tolist() and counts.tolist() == ref_c.tolist()
    if not dtype.is_complex:
        shift, score = F.best_circular_shift(torch.roll(b[0], 4), b[0])
        assert shift == 4
        shifts, scores = F.best_circular_shift(torch.roll(b, 2, dims=1), b)
        assert isinstance(shifts, torch.Tensor) and shifts.tolist() == [2, 2, 2]
    assert torch.equal(a, a0) and torch.equal(b, b0)


def test_torch_exact_big_values_and_overflow():
    a = torch.tensor([2 ** 40 + 3, -(2 ** 41), 7], dtype=torch.int64)
    b = torch.tensor([2 ** 21 - 1, 5], dtype=torch.int64)
    out = F.convolve(a, b)
    assert out.dtype == torch.int64
    assert out.tolist() == direct_full(a.numpy(), b.numpy())
    big = torch.tensor([2 ** 62, 2 ** 62], dtype=torch.int64)
    with pytest.raises(OverflowError, match="torch"):
        F.convolve(big, big)
    before = big.clone()
    F.convolve(big[:1] // 2 ** 40, big // 2 ** 40)
    assert torch.equal(big, before)
    u = torch.tensor([2 ** 63 + 5, 3], dtype=torch.uint64)
    small = torch.tensor([5, 3], dtype=torch.uint64)
    assert F.convolve(small, small).tolist() == [25, 30, 9]
    with pytest.raises(OverflowError, match="torch cannot hold"):
        F.convolve(u, u)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_stays_on_device():
    a = torch.randn(4, 300, device="cuda")
    b = torch.randn(4, 17, device="cuda")
    out = F.convolve(a, b, "same")
    assert out.is_cuda and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), F.convolve(a.cpu().numpy(), b.cpu().numpy(), "same"),
                               rtol=0, atol=fft_atol(a, b))  # float32: a bound of ~1e-4 here
    ai = torch.randint(-(2 ** 30), 2 ** 30, (4, 300), device="cuda")
    bi = torch.randint(-(2 ** 30), 2 ** 30, (4, 17), device="cuda")
    out = F.correlate(ai, bi)
    assert out.is_cuda and out.dtype == torch.int64
    assert out.cpu().tolist() == F.correlate(ai.cpu().numpy(), bi.cpu().numpy()).tolist()


def test_torch_half_and_autograd():
    x = torch.randn(32, dtype=torch.float16)
    assert F.convolve(x, x).dtype == torch.float16
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(50, dtype=torch.float64)
    F.convolve(s, w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), np.full(5, s.sum().item()), atol=1e-9)


def test_torch_accepts_lists_but_not_numpy():
    t = torch.tensor([1.0, 2.0, 3.0])
    assert F.convolve(t, [1.0, 1.0]).tolist() == [1.0, 3.0, 5.0, 3.0]
    with pytest.raises(TypeError, match="cannot mix a torch tensor and a numpy array"):
        F.convolve(t, np.ones(2))
    with pytest.raises(TypeError, match="cannot mix"):
        F.correlate(np.ones(2), t)


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

def test_errors_name_the_argument():
    x = np.ones((3, 5))
    with pytest.raises(ValueError, match="mode must be one of"):
        F.convolve(x, x, mode="circular")
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        F.convolve(x, x, axis=2)
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        F.correlate(x, x, axis=-3)
    with pytest.raises(TypeError, match="axis must be an int"):
        F.convolve(x, x, axis=1.0)
    with pytest.raises(ValueError, match="broadcastable shapes apart from axis"):
        F.convolve(np.ones((3, 5)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="at least one dimension"):
        F.convolve(np.float64(3.0), x)
    with pytest.raises(TypeError, match="a must be an integer array"):
        F.int_convolve(np.ones(3), np.ones(3, int))
    with pytest.raises(TypeError, match="b must be an integer array"):
        F.int_convolve(np.ones(3, int), np.ones(3))
    with pytest.raises(TypeError, match="exact=True needs integer"):
        F.cyclic_convolve(np.ones(3), np.ones(3), exact=True)
    with pytest.raises(TypeError, match="a must be an integer array"):
        F.convolve(np.ones(3), np.ones(3), exact=True)
    with pytest.raises(ValueError, match="same length along axis"):
        F.cyclic_convolve(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="same length along axis"):
        F.cyclic_correlate(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(TypeError, match="unsupported dtype"):
        F.convolve(np.array(["a", "b"]), x[0])
    with pytest.raises(TypeError, match="unsupported dtype"):
        F.int_convolve(np.array([1.5, 2], dtype=object), [1])
    with pytest.raises(ValueError, match="must be 1-D"):
        F.poly_multiply(x, [1])
    with pytest.raises(TypeError, match="exact must be"):
        F.convolve(x, x, exact="yes")
