"""FFT convolution and correlation: linear, cyclic, and exact for integers.

Why a module of its own: an FFT multiplies spectra, and a product of spectra is the
spectrum of the *cyclic* convolution of the two inputs. Linear convolution (polynomial
multiplication, filtering, matching at an offset) only comes out when both inputs are
zero-padded to at least ``n + m - 1`` samples, so that the wrap-around lands on zeros.
Everything here pads for you and never returns a cyclic result when a linear one was
asked for; :func:`cyclic_convolve` and :func:`cyclic_correlate` exist for when the
wrap-around is the point (circular shifts, periodic signals).

Second trap: a float64 FFT carries about 53 bits, so integer convolutions whose exact
results (or whose rounding errors) outgrow that come back silently wrong. Integer inputs
therefore take an exact path: the float64 result is used only when an error bound,
computed from the inputs' norms, proves that rounding to the nearest integer recovers the
exact value; otherwise the values are split into limbs (base ``2**k`` digits) small enough
to certify, the limb products are convolved in one batched transform and recombined in
integer arithmetic. Results that do not fit int64 come back as exact Python ints in a
numpy object array (or an OverflowError when ``allow_object=False``).

Arrays: numpy arrays (and lists) in, numpy out; torch tensors (CPU or CUDA) in, torch out
on the same device, computed with ``torch.fft``. Operations run along ``axis`` and batch
over the other dimensions, which broadcast like numpy's.

Seed uses (polynomial multiplication, counting all pairwise sums, best circular shift)
are :func:`poly_multiply`, :func:`sum_counts` and :func:`best_circular_shift`.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache

import numpy as np

__all__ = [
    "next_fast_len",
    "convolve",
    "correlate",
    "cyclic_convolve",
    "cyclic_correlate",
    "int_convolve",
    "poly_multiply",
    "sum_counts",
    "best_circular_shift",
]

_MODES = ("full", "same", "valid")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


# --------------------------------------------------------------------------------------
# transform lengths
# --------------------------------------------------------------------------------------

def next_fast_len(n: int, real: bool = True) -> int:
    """Smallest length ``>= n`` whose FFT is fast: 5-smooth (2^a 3^b 5^c) for real
    transforms, 11-smooth (2, 3, 5, 7, 11) for complex ones.

    These are the radices for which pocketfft, the FFT inside numpy (and scipy), has
    dedicated passes: its real transforms have radix 2, 3, 4 and 5 passes, its complex
    transforms also radix 7 and 11; any other prime factor falls back to a slow generic
    pass or Bluestein's algorithm. cuFFT is also fastest on small-prime lengths. Powers
    of two alone waste up to 2x in length (and time); 5-smooth numbers are dense enough
    that the padding is a few percent. ``n <= 1`` gives 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"next_fast_len: n must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"next_fast_len: n must be >= 0, got {n}")
    return _next_fast_len(int(n), bool(real))


@lru_cache(maxsize=4096)
def _next_fast_len(n: int, real: bool) -> int:
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()  # the next power of two always qualifies
    odd_parts = [1]
    for p in ((3, 5) if real else (3, 5, 7, 11)):
        grown = []
        for q in odd_parts:
            while q <= best:
                grown.append(q)
                q *= p
        odd_parts = grown
    for q in odd_parts:
        if q >= n:
            best = min(best, q)
        else:  # times the smallest power of two that reaches n
            best = min(best, q << (-(-n // q) - 1).bit_length())
    return best


# --------------------------------------------------------------------------------------
# numpy / torch dispatch
# --------------------------------------------------------------------------------------

def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


class _NumpyOps:
    torch = False

    @staticmethod
    def rfft(x, n):
        return np.fft.rfft(x, n=n, axis=-1)

    @staticmethod
    def irfft(x, n):
        return np.fft.irfft(x, n=n, axis=-1)

    @staticmethod
    def fft(x, n):
        return np.fft.fft(x, n=n, axis=-1)

    @staticmethod
    def ifft(x, n):
        return np.fft.ifft(x, n=n, axis=-1)

    @staticmethod
    def mul(x, y):
        """x * y, reusing x's memory when x is a fresh spectrum of the result's shape."""
        if x.shape == np.broadcast_shapes(x.shape, y.shape) and x.dtype == np.result_type(x, y):
            return np.multiply(x, y, out=x)
        return x * y

    @staticmethod
    def conj(x):
        return np.conj(x) if np.iscomplexobj(x) else x

    @staticmethod
    def flip(x):
        return x[..., ::-1]

    @staticmethod
    def cyclic_reverse(x):  # y[j] = x[-j mod N]
        return np.roll(x[..., ::-1], 1, axis=-1)

    @staticmethod
    def movelast(x, ax):  # np.moveaxis costs microseconds even when there is nothing to move
        return x if ax == x.ndim - 1 else np.moveaxis(x, ax, -1)

    @staticmethod
    def moveback(x, ax):
        return x if ax == x.ndim - 1 else np.moveaxis(x, -1, ax)

    @staticmethod
    def concat(xs):
        return np.concatenate(xs, axis=-1)

    @staticmethod
    def astype(x, dtype):
        return x.astype(dtype, copy=False)

    @staticmethod
    def zeros(shape, dtype, like):
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def f64_stack(count, shape, like):
        return np.empty((count,) + tuple(shape), dtype=np.float64)

    @staticmethod
    def rownorms(x):
        """Largest Euclidean norm over the rows of each leading slice: x (L, ..., n) -> L floats."""
        sq = np.einsum("...i,...i->...", x, x).reshape(x.shape[0], -1)
        return [math.sqrt(float(v)) for v in sq.max(axis=1)]

    @staticmethod
    def round_to_int64(x):
        return np.rint(x, out=x if x.flags.writeable else None).astype(np.int64)

    @staticmethod
    def minmax(x):
        return int(x.min()), int(x.max())


class _TorchOps:
    torch = True

    @staticmethod
    def _t():
        import torch
        return torch

    @staticmethod
    def rfft(x, n):
        return _TorchOps._t().fft.rfft(x, n=n, dim=-1)

    @staticmethod
    def irfft(x, n):
        return _TorchOps._t().fft.irfft(x, n=n, dim=-1)

    @staticmethod
    def fft(x, n):
        return _TorchOps._t().fft.fft(x, n=n, dim=-1)

    @staticmethod
    def ifft(x, n):
        return _TorchOps._t().fft.ifft(x, n=n, dim=-1)

    @staticmethod
    def mul(x, y):  # out of place: keeps autograd working
        return x * y

    @staticmethod
    def conj(x):
        return x.conj() if x.is_complex() else x

    @staticmethod
    def flip(x):
        return x.flip(-1)

    @staticmethod
    def cyclic_reverse(x):
        return x.flip(-1).roll(1, -1)

    @staticmethod
    def movelast(x, ax):
        return x.movedim(ax, -1)

    @staticmethod
    def moveback(x, ax):
        return x.movedim(-1, ax)

    @staticmethod
    def concat(xs):
        return _TorchOps._t().cat(xs, dim=-1)

    @staticmethod
    def astype(x, dtype):
        return x.to(dtype)

    @staticmethod
    def zeros(shape, dtype, like):
        return _TorchOps._t().zeros(tuple(shape), dtype=dtype, device=like.device)

    @staticmethod
    def f64_stack(count, shape, like):
        torch = _TorchOps._t()
        return torch.empty((count,) + tuple(shape), dtype=torch.float64, device=like.device)

    @staticmethod
    def rownorms(x):
        sq = (x * x).sum(-1).reshape(x.shape[0], -1).amax(1)
        return [math.sqrt(float(v)) for v in sq.tolist()]

    @staticmethod
    def round_to_int64(x):
        return _TorchOps._t().round(x).to(_TorchOps._t().int64)

    @staticmethod
    def minmax(x):
        return int(x.min()), int(x.max())


def _coerce(func, a, b):
    """Return (ops, a, b) with both inputs numpy arrays or both torch tensors."""
    ta, tb = _is_tensor(a), _is_tensor(b)
    if ta or tb:
        if ta and tb:
            if a.device != b.device:
                raise ValueError(f"{func}: a and b are on different devices ({a.device} and {b.device})")
        else:
            tensor, other, oname = (a, b, "b") if ta else (b, a, "a")
            if isinstance(other, (np.ndarray, np.generic)):
                raise TypeError(
                    f"{func}: cannot mix a torch tensor and a numpy array "
                    f"({oname} is numpy.{type(other).__name__}); convert one of them")
            import torch
            try:
                other = torch.as_tensor(other, device=tensor.device)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"{func}: cannot convert {oname} to a tensor: {err}") from None
            a, b = (tensor, other) if ta else (other, tensor)
        return _TorchOps, a, b
    out = []
    for name, x in (("a", a), ("b", b)):
        try:
            out.append(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{func}: {name} is not array-like: {err}") from None
    return _NumpyOps, out[0], out[1]


def _kind(func, name, x) -> str:
    """'int', 'real' or 'complex'; TypeError for anything else."""
    if _is_tensor(x):
        return "complex" if x.is_complex() else "real" if x.is_floating_point() else "int"
    k = x.dtype.kind
    if k in "biu":
        return "int"
    if k == "f":
        return "real"
    if k == "c":
        return "complex"
    if k == "O" and all(isinstance(v, (int, np.integer)) for v in x.flat):
        return "int"  # Python ints, possibly beyond int64
    raise TypeError(f"{func}: {name} has unsupported dtype {x.dtype} "
                    "(need integer, float or complex numbers)")


def _check_axis(func, axis, nd) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{func}: axis must be an int, got {type(axis).__name__}")
    if not -nd <= axis < nd:
        raise ValueError(f"{func}: axis {axis} is out of range for {nd}-dimensional inputs")
    return int(axis) % nd


def _align(func, ops, a, b, axis):
    """Move ``axis`` last in both inputs; check that the other dimensions broadcast.

    Inputs of different ranks get leading length-1 dimensions first (numpy broadcasting),
    and ``axis`` counts in that common rank. Returns (a, b, axis, batch_shape).
    """
    for name, x in (("a", a), ("b", b)):
        if x.ndim == 0:
            raise ValueError(f"{func}: {name} must have at least one dimension, got a scalar")
    nd = max(a.ndim, b.ndim)
    ax = _check_axis(func, axis, nd)
    a = a.reshape((1,) * (nd - a.ndim) + tuple(a.shape))
    b = b.reshape((1,) * (nd - b.ndim) + tuple(b.shape))
    a, b = ops.movelast(a, ax), ops.movelast(b, ax)
    try:
        batch = np.broadcast_shapes(tuple(a.shape[:-1]), tuple(b.shape[:-1]))
    except ValueError:
        sa, sb = list(a.shape), list(b.shape)
        sa.insert(ax, sa.pop()), sb.insert(ax, sb.pop())
        raise ValueError(
            f"{func}: a and b must have broadcastable shapes apart from axis {axis}; "
            f"got {tuple(sa)} and {tuple(sb)}") from None
    return a, b, ax, batch


def _check_mode(func, mode) -> str:
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"{func}: mode must be one of 'full', 'same', 'valid'; got {mode!r}")
    return mode


def _mode_range(func, mode, n, m):
    """Output window [s, e) of the full linear result (length n + m - 1).

    'same' is centred like scipy.signal.convolve (length n, the first input's);
    'valid' keeps the outputs where the shorter input overlaps the longer completely.
    """
    if n == 0 or m == 0:
        if mode == "valid":
            raise ValueError(f"{func}: mode='valid' is undefined for an empty input (lengths {n} and {m})")
        return 0, (n if mode == "same" else 0)  # full: empty; same: n zeros
    if mode == "full":
        return 0, n + m - 1
    if mode == "same":
        s = (m - 1) // 2
        return s, s + n
    s = min(n, m) - 1
    return s, max(n, m)


def _transform_len(n, m, s, e) -> int:
    """Smallest cyclic length N whose result agrees with the linear one on [s, e).

    The cyclic convolution of the zero-padded inputs is r[k] = sum_j full[k + j N], full
    being supported on [0, n + m - 1). For s <= k < e <= N only full[k + N] can alias into
    r[k], and it vanishes for all those k exactly when s + N >= n + m - 1. So 'full'
    needs N >= n + m - 1, while 'valid' only needs N >= max(n, m) (overlap-save).
    N >= max(n, m) also keeps the transforms from truncating an input.
    """
    return max(n, m, e, n + m - 1 - s)


@lru_cache(maxsize=4096)
def _cyclic_len(n: int, real: bool) -> int:
    """Transform length for a cyclic operation of length n: n itself, or a fast length
    L >= 2n - 1 at which the linear result comes out whole and is folded back onto n
    (:func:`_fold`), whichever costs less.

    Both ways take three transforms. One of fast length N costs ~N log2 N; at n, each
    radix 2..5 level costs about as much per sample, but any other prime factor p runs a
    generic O(p)-per-sample pass (or pocketfft's Bluestein, two transforms of >= 2n).
    Measured with numpy 2.x (real and complex alike), such a pass costs about p / c
    levels with c ~ 4 at n ~ 300 growing to ~12 at n ~ 10^6 (the radix passes get memory
    bound, the generic one stays compute bound): 7 * 2^k or 61 * 2^k stay direct (2-3x
    faster than folding at n ~ 10^5), a large prime n folds (5-8x faster than direct,
    bench/fft.py [3]). Near the crossover (p of ~60 at n ~ 300, ~400 at n ~ 10^6) both
    cost about the same. torch tensors get the same choice (not calibrated for cuFFT).
    """
    if next_fast_len(n, real) == n:
        return n
    L = next_fast_len(2 * n - 1, real)
    c = max(3.5, 0.75 * math.log2(n) - 2.5)
    budget = L * math.log2(L) / n  # levels per sample at n that cost as much as folding

    def levels_of(p):  # a radix pass (log2 p levels) or a generic one (p / c), the dearer
        return max(math.log2(p), p / c)

    levels, rest, p = 0.0, n, 2
    while rest > 1:
        if p * p > rest:
            p = rest  # what is left is prime
        elif levels + levels_of(p) > budget:
            return L  # every factor left is >= p: direct already dearer
        while rest % p == 0:
            rest //= p
            levels += levels_of(p)
        p += 1 if p == 2 else 2
    return n if levels <= budget else L


def _fold(ops, r, n, corr):
    """Wrap a linear result r (..., N), N >= 2n - 1, onto the cyclic one of length n.

    Convolution: r holds the linear outputs 0 .. 2n - 2 from index 0, and
    c[k] = r[k] + r[k + n]. Correlation (X conj(Y)): lags 0 .. n - 1 sit at the start of
    r, lags -(n - 1) .. -1 at its end (index N - d for lag -d), and c[k] = lag k + lag
    k - n = r[k] + r[N - n + k] for k >= 1 (c[0] has no lag -n).
    """
    N = r.shape[-1]
    head = r[..., :n]
    tail, lo = (r[..., N - n + 1:], 1) if corr else (r[..., n:2 * n - 1], 0)
    if ops.torch:  # out of place: keeps autograd working
        return ops.concat([head[..., :lo], head[..., lo:lo + n - 1] + tail, head[..., lo + n - 1:]])
    c = head.copy()  # contiguous, and does not keep the length-N buffer alive
    c[..., lo:lo + n - 1] += tail
    return c


# --------------------------------------------------------------------------------------
# floating-point path
# --------------------------------------------------------------------------------------

def _float_dtypes(ops, a, b):
    """(compute dtype, output dtype, complex?) for the float path."""
    if ops.torch:
        import torch
        rt = torch.promote_types(a.dtype, b.dtype)
        if not (rt.is_floating_point or rt.is_complex):
            rt = torch.float64  # integers with exact=False
        compute = {torch.float16: torch.float32, torch.bfloat16: torch.float32,
                   torch.complex32: torch.complex64}.get(rt, rt)
        return compute, rt, rt.is_complex
    rt = np.result_type(a.dtype, b.dtype)
    if rt.kind not in "fc":
        rt = np.dtype(np.float64)
    compute = np.dtype(np.float32) if rt == np.float16 else rt
    return compute, rt, rt.kind == "c"


def _float_linear(ops, a, b, s, e, corr, shared):
    """Linear convolution (or correlation when ``corr``) on [s, e) of the full output."""
    compute, out_dtype, cplx = _float_dtypes(ops, a, b)
    a = ops.astype(a, compute)
    n, m = a.shape[-1], b.shape[-1]
    fwd, inv = (ops.fft, ops.ifft) if cplx else (ops.rfft, ops.irfft)
    if corr and shared:
        # autocorrelation: one forward transform, spectrum X conj(X); negative lags wrap
        # to the end of the cyclic result, which is long enough not to overlap them
        N = next_fast_len(n + m - 1, real=not cplx)
        X = fwd(a, N)
        r = inv(ops.mul(X, ops.conj(X)), N)
        lo, hi = s - (m - 1), e - (m - 1)  # lags wanted
        if lo >= 0:
            r = r[..., lo:hi]
        elif hi <= 0:
            r = r[..., N + lo:N + hi]
        else:
            r = ops.concat([r[..., N + lo:], r[..., :hi]])
        return ops.astype(r, out_dtype)
    if corr:
        b = ops.flip(ops.conj(b))
    b = ops.astype(b, compute)
    N = next_fast_len(_transform_len(n, m, s, e), real=not cplx)
    X = fwd(a, N)
    Y = X if shared else fwd(b, N)
    r = inv(ops.mul(X, Y), N)[..., s:e]
    return ops.astype(r, out_dtype)


def _float_cyclic(ops, a, b, N, corr, shared):
    """Cyclic convolution (correlation when ``corr``) at length n = a.shape[-1], with
    transforms of length N: n itself, or N >= 2n - 1 and the linear result folded."""
    compute, out_dtype, cplx = _float_dtypes(ops, a, b)
    a, b = ops.astype(a, compute), ops.astype(b, compute)
    n = a.shape[-1]
    fwd, inv = (ops.fft, ops.ifft) if cplx else (ops.rfft, ops.irfft)
    X = fwd(a, N)
    Y = X if shared else fwd(b, N)
    X = ops.mul(X, ops.conj(Y) if corr else Y)
    del Y  # b's spectrum freed before the inverse allocates: its memory gets reused
    r = inv(X, N)
    if N != n:
        r = _fold(ops, r, n, corr)
    return ops.astype(r, out_dtype)


# --------------------------------------------------------------------------------------
# exact integer path
# --------------------------------------------------------------------------------------

_U = 2.0 ** -53  # unit roundoff of binary64


def _fft_error_factor(N: int) -> float:
    """delta(N): each output of an FFT convolution of length N computed in binary64 is
    within delta(N) * ||x||_2 * ||y||_2 of the exact value.

    Derivation. Brent, Percival and Zimmermann ("Error bounds on complex floating-point
    multiplication", Math. Comp. 2007, correcting Percival 2003) bound the cyclic
    convolution z = N^-1 F*(Fx . Fy) computed with radix-2 FFTs of L = log2 N stages and
    twiddle factors accurate to beta by
        ||z_computed - z||_inf <= ||x||_2 ||y||_2 [(1+u)^(3L) (1+u sqrt5)^(3L+1) (1+beta)^(3L) - 1]
    (three transforms of L butterfly stages: one rounding per addition, a complex
    multiplication with error <= sqrt5 u per twiddle, plus the pointwise product). With
    beta <= u and L u << 1 the bracket is u (3L + sqrt5 (3L+1) + 3L) + O(u^2)
    ~= u (12.71 L + 2.24). We use L' = ceil(log2 N) + 1 (one more pass for the
    real-to-complex split of rfft/irfft and for the 1/N scaling when N is not a power of
    two; pocketfft's radix-3/4/5 passes have no more depth than the radix-2 stages they
    replace), and round the constants up: delta(N) = u (13 L' + 4). Observed errors are
    far smaller (they grow like sqrt(log N) in the mean); tests/test_fft.py checks the
    bound against adversarial inputs. Certification asks delta * bound <= 1/2 so that
    rounding to the nearest integer gives the exact value.
    """
    L = max(1, (N - 1).bit_length()) + 1
    return _U * (13.0 * L + 4.0)


def _int_working(ops, x):
    """A working copy of integer input x that the splitting can read: int64 where the
    values fit, uint64 (numpy) or object arrays of Python ints otherwise. Never x itself
    when later steps could write to it (they don't write in place anyway)."""
    if ops.torch:
        import torch
        if x.dtype == torch.int64:
            return x
        return x.to(torch.int64)
    if x.dtype == object:
        lo, hi = ops.minmax(x)
        return x.astype(np.int64) if _INT64_MIN <= lo and hi <= _INT64_MAX else x
    if x.dtype == np.uint64:
        return x.astype(np.int64) if x.size == 0 or int(x.max()) <= _INT64_MAX else x
    return x.astype(np.int64, copy=False)


def _split_limbs(ops, x, k, L, xmax, like):
    """Balanced base-2^k digits of integer array x as a float64 stack (L, *x.shape) with
    sum_i d_i 2^(k i) = x exactly; |d_i| <= 2^(k-1) for i < L-1, the top digit holds the
    rest (|d| <= xmax / 2^(k (L-1)) + 1). Balanced digits have 4x smaller squares than
    0..2^k-1 ones: two more bits of certified headroom per limb product.

    Values that float64 holds exactly (< 2^53) are split in float arithmetic, top digit
    first: d_j = rint(r / 2^(k j)), r -= d_j 2^(k j); every step is exact (power-of-two
    scalings, integer results below 2^53). Larger values (int64, uint64, Python ints)
    first lose low digits in integer arithmetic until the rest is below 2^52.
    """
    out = ops.f64_stack(L, x.shape, like)
    if L == 1:
        out[0] = x
        return out
    i, rem = 0, xmax
    half, base, mask = 1 << (k - 1), 1 << k, (1 << k) - 1
    while i < L - 1 and rem >= 1 << 52:
        if ops.torch:
            import torch
            low = x & mask
            x = x >> k
            hi = low >= half
            low = torch.where(hi, low - base, low)
            x = x + hi.to(torch.int64)
        else:
            if x.dtype == object:
                low = (x & mask).astype(np.int64)
                x = x >> k
            elif x.dtype == np.uint64:
                low = (x & np.uint64(mask)).astype(np.int64)
                x = (x >> np.uint64(k)).astype(np.int64)
            else:
                low = x & mask
                x = x >> k
            hi = low >= half
            np.subtract(low, base, out=low, where=hi)
            x = np.where(hi, x + 1, x) if x.dtype == object else x + hi
        out[i] = low
        rem = (rem >> k) + 1
        i += 1
    out[i] = x.astype(np.int64) if (not ops.torch and x.dtype == object) else x
    for j in range(L - 1 - i, 0, -1):
        up, down = float(1 << (k * j)), 1.0 / (1 << (k * j))
        r, d = out[i], out[i + j]
        if ops.torch:
            d.copy_(r).mul_(down).round_()
            d.mul_(up)
            r.sub_(d)
            d.mul_(down)
        else:
            np.multiply(r, down, out=d)
            np.rint(d, out=d)
            d *= up
            r -= d
            d *= down
    return out


def _limb_plans(bits_a, bits_b, rows_a, rows_b, rows, shared):
    """Candidate (k, La, Lb) in order of estimated cost (number of row transforms)."""
    levels = {}
    for k in range(1, 53):  # limbs stay below 2^53 so float64 holds them exactly
        La = 1 if bits_a <= k else -(-bits_a // k)
        Lb = 1 if bits_b <= k else -(-bits_b // k)
        cost = La * rows_a + (0 if shared else Lb * rows_b) + (La + Lb - 1) * rows
        levels.setdefault(cost, {}).setdefault((La, Lb), []).append(k)
    for cost in sorted(levels):
        for (La, Lb), ks in levels[cost].items():
            if La == Lb == 1:
                yield ks[0], 1, 1
                continue
            # smallest k keeps the lower digits small, largest keeps the top digits small
            for k in dict.fromkeys((ks[0], ks[-1], ks[len(ks) // 2])):
                yield k, La, Lb


def _group_bounds(na, nb):
    """For each output group g: sum_{i+j=g} ||a_i|| ||b_j||, which bounds both |C_g| and
    (times delta) its rounding error."""
    G = len(na) + len(nb) - 1
    return [sum(na[i] * nb[g - i] for i in range(len(na)) if 0 <= g - i < len(nb))
            for g in range(G)]


def _prior_norms(amax, k, L, n):
    """Upper bounds of the limb norms from the digit ranges alone (Cauchy-Schwarz)."""
    r = math.sqrt(n)
    if L == 1:
        return [amax * r]
    return [(1 << (k - 1)) * r] * (L - 1) + [((amax >> (k * (L - 1))) + 2) * r]


def _exact_conv(func, ops, a, b, N, s, e, batch, allow_object, shared, fold=None):
    """Exact integer cyclic convolution of zero-padded a, b at length N, outputs [s, e).

    a (*ba, n) and b (*bb, m), integer typed, axis last, batch dims broadcastable.
    ``fold``: the cyclic length n = m onto which the linear outputs [0, 2n - 1) (s = 0,
    e = 2n - 1) are folded, output length n; each limb product is rounded (certified per
    linear output) and folded in int64 before recombining. The group bounds still hold:
    a cyclic output is an inner product of a limb with a permuted limb (Cauchy-Schwarz).
    Returns int64 (numpy or torch) or, for results beyond int64, a numpy object array.
    """
    if ops.torch and "torch.uint64" in (str(a.dtype), str(b.dtype)):
        # torch has few kernels for uint64: compute on the host with numpy
        dev = a.device
        res = _exact_conv(func, _NumpyOps, a.cpu().numpy(), b.cpu().numpy(), N, s, e, batch, True, shared,
                          fold)
        if res.dtype == object:
            raise OverflowError(f"{func}: the exact result exceeds int64, which torch cannot hold; "
                                "use numpy arrays to get Python ints")
        import torch
        return torch.from_numpy(res).to(dev)
    out_shape = tuple(batch) + (e - s if fold is None else fold,)
    wa = _int_working(ops, a)
    wb = wa if shared else _int_working(ops, b)
    alo, ahi = ops.minmax(wa)
    blo, bhi = (alo, ahi) if shared else ops.minmax(wb)
    amax, bmax = max(-alo, ahi), max(-blo, bhi)
    if amax == 0 or bmax == 0:
        return ops.zeros(out_shape, np.int64 if not ops.torch else _TorchOps._t().int64, a)
    n, m = a.shape[-1], b.shape[-1]
    delta = _fft_error_factor(N)
    limit = 0.5 / (1.0 + 1e-9)  # slack for rounding in the norms themselves
    rows_a, rows_b, rows = math.prod(a.shape[:-1]), math.prod(b.shape[:-1]), math.prod(batch)
    plan = None
    for k, La, Lb in _limb_plans(amax.bit_length(), bmax.bit_length(), rows_a, rows_b, rows, shared):
        if La == Lb == 1 and delta * amax * bmax > limit:
            continue  # ||a|| >= max|a|: cannot certify unsplit
        bounds = _group_bounds(_prior_norms(amax, k, La, n), _prior_norms(bmax, k, Lb, m))
        fa = _split_limbs(ops, wa, k, La, amax, a)
        fb = fa if shared else _split_limbs(ops, wb, k, Lb, bmax, b)
        if delta * max(bounds) > limit:
            na = ops.rownorms(fa)
            bounds = _group_bounds(na, na if shared else ops.rownorms(fb))
        if delta * max(bounds) <= limit:
            plan = k, fa, fb
            break
    if plan is None:  # needs N beyond ~2^40; not reachable in memory anyway
        raise ValueError(f"{func}: cannot certify an exact FFT convolution of length {N}")
    k, fa, fb = plan
    La, Lb = fa.shape[0], fb.shape[0]
    del wa, wb
    Af = ops.rfft(fa, N)
    Bf = Af if shared else ops.rfft(fb, N)
    del fa, fb
    G = La + Lb - 1
    if G == 1:
        P = ops.mul(Af, Bf)
    elif ops.torch:
        P = _TorchOps._t().stack([
            sum(Af[i] * Bf[g - i] for i in range(max(0, g - Lb + 1), min(La, g + 1)))
            for g in range(G)])
    else:  # spectra of equal weight 2^(k g) summed in place: one inverse row per group
        P = np.empty((G,) + tuple(batch) + (Af.shape[-1],), dtype=np.result_type(Af, Bf))
        tmp = None
        for g in range(G):
            for i in range(max(0, g - Lb + 1), min(La, g + 1)):
                if i == max(0, g - Lb + 1):
                    np.multiply(Af[i], Bf[g - i], out=P[g])
                else:
                    tmp = np.multiply(Af[i], Bf[g - i], out=tmp)
                    P[g] += tmp
        del tmp
    del Af, Bf
    C = ops.round_to_int64(ops.irfft(P, N)[..., s:e])
    if fold is not None:  # |C_g| < 2^53 here: the int64 sums cannot overflow
        C = _fold(ops, C, fold, False)
    if G == 1:
        return C[0]
    # recombine sum_g C_g 2^(k g); int64 arithmetic when a bound proves it cannot overflow
    bound = sum((int(math.ceil(bg * (1 + 1e-9))) + 1) << (k * g) for g, bg in enumerate(bounds))
    if bound > _INT64_MAX:  # the norm bound is loose; the actual magnitudes may still fit
        mags = [max(-lo, hi) for lo, hi in (ops.minmax(C[g]) for g in range(G))]
        bound = sum(mg << (k * g) for g, mg in enumerate(mags))
    scale = 1 << k
    if bound <= _INT64_MAX:
        out = C[G - 1]
        for g in range(G - 2, -1, -1):
            out = out * scale + C[g]  # |partial sums| <= bound >> (k g): no overflow
        return out
    # beyond what int64 arithmetic can prove safe: recombine in Python ints, then check
    dev = None
    if ops.torch:
        dev, C = C.device, C.cpu().numpy()
    out = C[G - 1].astype(object)
    for g in range(G - 2, -1, -1):
        out = out * scale + C[g].astype(object)
    lo, hi = (min(out.flat), max(out.flat)) if out.size else (0, 0)
    if _INT64_MIN <= lo and hi <= _INT64_MAX:
        out = out.astype(np.int64)
        return out if dev is None else _TorchOps._t().from_numpy(out).to(dev)
    if dev is not None:
        raise OverflowError(f"{func}: the exact result exceeds int64 (values up to "
                            f"{max(-lo, hi).bit_length()} bits), which torch cannot hold; "
                            "use numpy arrays to get Python ints")
    if not allow_object:
        raise OverflowError(
            f"{func}: exact result exceeds int64 (values up to {max(-lo, hi).bit_length()} bits); "
            "pass allow_object=True to get an object array of Python ints")
    return out


def _int_dtype(ops):
    return _TorchOps._t().int64 if ops.torch else np.int64


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

def _linear(func, a, b, mode, axis, exact, allow_object, corr, require_int=False):
    mode = _check_mode(func, mode)
    if exact not in (None, True, False):
        raise TypeError(f"{func}: exact must be None, True or False, got {exact!r}")
    same_input = a is b
    ops, a, b = _coerce(func, a, b)
    ka, kb = _kind(func, "a", a), _kind(func, "b", b)
    integer = ka == "int" and kb == "int"
    if (require_int or exact is True) and not integer:
        name, kind = ("a", ka) if ka != "int" else ("b", kb)
        raise TypeError(f"{func}: {name} must be an integer array for the exact path, got {kind} "
                        f"dtype {a.dtype if name == 'a' else b.dtype}; use convolve() for floats")
    a, b, ax, batch = _align(func, ops, a, b, axis)
    n, m = a.shape[-1], b.shape[-1]
    s, e = _mode_range(func, mode, n, m)
    use_exact = integer and exact is not False
    if n == 0 or m == 0 or e == s or math.prod(batch) == 0:
        dtype = _int_dtype(ops) if use_exact else _float_dtypes(ops, a, b)[1]
        return ops.moveback(ops.zeros(tuple(batch) + (e - s,), dtype, a), ax)
    N = next_fast_len(_transform_len(n, m, s, e), real=True)
    if use_exact:
        if corr:  # integers are real: correlation is convolution with b reversed
            b, same_input = ops.flip(b), False
        res = _in_chunks(ops, a, b, batch, N, e - s, same_input, lambda x, y, bt, sh: _exact_conv(
            func, ops, x, y, N, s, e, bt, allow_object, sh))
    else:
        res = _in_chunks(ops, a, b, batch, N, e - s, same_input,
                         lambda x, y, bt, sh: _float_linear(ops, x, y, s, e, corr, sh))
    return ops.moveback(res, ax)


_CHUNK = 1 << 18  # transform samples per chunk of rows: keeps the working set in cache


def _rows(x, batch, R):
    """x (*xb, n) as (1, n) when it has no batch extent, else (R, n) (copying only when
    a partial broadcast forces it)."""
    n = x.shape[-1]
    if all(d == 1 for d in x.shape[:-1]):
        return x.reshape(1, n)
    if tuple(x.shape[:-1]) == tuple(batch):
        return x.reshape(R, n)
    return np.broadcast_to(x, tuple(batch) + (n,)).reshape(R, n)


def _in_chunks(ops, a, b, batch, N, out_len, shared, compute):
    """compute(a, b, batch, shared) -> (*batch, out_len), run over chunks of batch rows.

    Many rows at once make every intermediate (limb stacks, spectra, products) hundreds
    of MB, and the run becomes bound by memory traffic and page faults; chunks of about
    _CHUNK transform samples stay in cache and are ~2x faster (numpy only: GPUs prefer
    big batches). Exact chunks are certified separately; the output is int64 unless some
    chunk needs Python ints, then all of it is an object array.
    """
    R = math.prod(batch)
    step = max(1, _CHUNK // N)
    if ops.torch or R <= step:
        return compute(a, b, batch, shared)
    a2 = _rows(a, batch, R)
    b2 = a2 if shared else _rows(b, batch, R)
    out = None
    for i in range(0, R, step):
        j = min(R, i + step)
        x = a2[i:j] if a2.shape[0] > 1 else a2
        y = x if shared else (b2[i:j] if b2.shape[0] > 1 else b2)
        r = compute(x, y, (j - i,), shared)
        if out is None:
            out = np.empty((R, out_len), dtype=r.dtype)
        elif r.dtype == object and out.dtype != object:
            out = out.astype(object)
        out[i:j] = r
    return out.reshape(tuple(batch) + (out_len,))


def convolve(a, b, mode: str = "full", axis: int = -1, *, exact: bool | None = None,
             allow_object: bool = True):
    """Linear convolution of ``a`` and ``b`` along ``axis``, batched over the other axes.

    ``c[k] = sum_i a[i] b[k - i]``; ``mode``: 'full' (length n + m - 1), 'same' (length n,
    centred like ``scipy.signal.convolve``), 'valid' (length max(n, m) - min(n, m) + 1,
    where one input covers the other completely). Computed with zero-padded real (rfft)
    or complex FFTs of a fast length (:func:`next_fast_len`), never cyclically.

    Integer inputs (both) give exact integer results (see :func:`int_convolve`) unless
    ``exact=False``, which computes in float64. Floats keep their precision (float32 stays
    float32). numpy in, numpy out; torch tensors in, torch tensors out on their device.
    An empty input gives an empty 'full' result, n zeros for 'same', and an error for
    'valid'. Passing the same object twice reuses its transform.
    """
    return _linear("convolve", a, b, mode, axis, exact, allow_object, corr=False)


def correlate(a, b, mode: str = "full", axis: int = -1, *, exact: bool | None = None,
              allow_object: bool = True):
    """Linear cross-correlation, ``scipy.signal.correlate`` semantics.

    ``c[k] = sum_j a[j + k] conj(b[j])``; the 'full' output holds lags
    ``-(m - 1) .. n - 1`` in that order (lag 0 at index m - 1). 'same' and 'valid' are the
    same windows as :func:`convolve` of ``a`` with ``conj(b)`` reversed. Same dtype, exact
    integer, batching and array-kind rules as :func:`convolve`.
    """
    return _linear("correlate", a, b, mode, axis, exact, allow_object, corr=True)


def int_convolve(a, b, axis: int = -1, *, mode: str = "full", allow_object: bool = True):
    """Exact linear convolution of integer arrays (any int/uint dtype, bool, or object
    arrays of Python ints), along ``axis`` with batching and ``mode`` like :func:`convolve`
    (``convolve``/``correlate`` route integer inputs here too). Non-integer arrays:
    TypeError.

    The float64 FFT result is used only when the bound of :func:`_fft_error_factor`
    times the limb norms proves rounding recovers the exact integers; otherwise inputs
    are split into balanced base-2^k limbs (k chosen for the fewest transforms that
    certify), all limbs of an input are transformed in one batched call, limb products
    of equal weight are summed in the spectrum, and the results recombine in int64
    (overflow excluded by a bound) or in Python ints. Output: int64 when every value
    fits, else a numpy object array of Python ints (``allow_object=False``: OverflowError;
    torch inputs: OverflowError). Inputs are never modified.
    """
    return _linear("int_convolve", a, b, mode, axis, True, allow_object, corr=False, require_int=True)


def _cyclic(func, a, b, axis, exact, allow_object, corr):
    if exact not in (None, True, False):
        raise TypeError(f"{func}: exact must be None, True or False, got {exact!r}")
    same_input = a is b
    ops, a, b = _coerce(func, a, b)
    ka, kb = _kind(func, "a", a), _kind(func, "b", b)
    integer = ka == "int" and kb == "int"
    if exact is True and not integer:
        raise TypeError(f"{func}: exact=True needs integer arrays, got {ka} and {kb}")
    a, b, ax, batch = _align(func, ops, a, b, axis)
    n, m = a.shape[-1], b.shape[-1]
    if n != m:
        raise ValueError(
            f"{func}: a and b must have the same length along axis {axis} for a cyclic "
            f"operation, got {n} and {m} (use convolve/correlate for a linear result)")
    use_exact = integer and exact is not False
    if n == 0 or math.prod(batch) == 0:
        dtype = _int_dtype(ops) if use_exact else _float_dtypes(ops, a, b)[1]
        return ops.moveback(ops.zeros(tuple(batch) + (n,), dtype, a), ax)
    # at a length n with a large prime factor the transform at n is slow (generic passes,
    # Bluestein): the linear result at a fast length, folded, is then cheaper
    if use_exact:
        if corr:
            b, same_input = ops.cyclic_reverse(b), False
        N = _cyclic_len(n, True)
        fold, e = (None, n) if N == n else (n, 2 * n - 1)
        res = _in_chunks(ops, a, b, batch, N, n, same_input, lambda x, y, bt, sh: _exact_conv(
            func, ops, x, y, N, 0, e, bt, allow_object, sh, fold))
    else:
        N = _cyclic_len(n, not _float_dtypes(ops, a, b)[2])
        res = _in_chunks(ops, a, b, batch, N, n, same_input,
                         lambda x, y, bt, sh: _float_cyclic(ops, x, y, N, corr, sh))
    return ops.moveback(res, ax)


def cyclic_convolve(a, b, axis: int = -1, *, exact: bool | None = None, allow_object: bool = True):
    """Cyclic (circular) convolution ``c[k] = sum_j a[j] b[(k - j) mod N]`` of two inputs
    of equal length N along ``axis``: the product of their length-N DFTs.

    Differs from the linear convolution whenever n + m - 1 > N: the tail wraps onto the
    head. Integer inputs are exact unless ``exact=False``. When N has a large prime factor
    (a prime N, say), a transform at N is several times slower than one at a fast length;
    the linear convolution is then computed at a fast length >= 2N - 1 and folded,
    ``c[k] = lin[k] + lin[k + N]`` (same result, same dtypes and exactness).
    """
    return _cyclic("cyclic_convolve", a, b, axis, exact, allow_object, corr=False)


def cyclic_correlate(a, b, axis: int = -1, *, exact: bool | None = None, allow_object: bool = True):
    """Cyclic cross-correlation ``c[k] = sum_j a[(j + k) mod N] conj(b[j])``, k = 0..N-1,
    of two inputs of equal length N: ``c[s]`` is the inner product of ``a`` with
    ``np.roll(b, s)`` (conjugated). Computed like :func:`cyclic_convolve` (folded from the
    linear correlation when N has a large prime factor)."""
    return _cyclic("cyclic_correlate", a, b, axis, exact, allow_object, corr=True)


def poly_multiply(p, q):
    """Coefficients of the product of two polynomials, lowest degree first.

    ``poly_multiply([3, 4, 5], [4, 5, 6]) -> [12, 31, 58, 49, 30]``. Integer coefficients
    (also Python ints beyond int64) give the exact product; floats and complex numbers
    go through the float path. An empty coefficient list gives an empty result.
    """
    ops, p, q = _coerce("poly_multiply", p, q)
    for name, x in (("p", p), ("q", q)):
        if x.ndim != 1:
            raise ValueError(f"poly_multiply: {name} must be 1-D (coefficients), got shape {tuple(x.shape)}")
    return convolve(p, q, mode="full")


def sum_counts(a, b, *, dense: bool = False, max_span: int = 1 << 22):
    """Every value of ``a[i] + b[j]`` and how many pairs (i, j) give it.

    Builds the histograms ``ha[v - min(a)]`` and ``hb[v - min(b)]`` (offsetting makes
    negative values fine) and convolves them exactly: the coefficient of
    ``x^(s - min a - min b)`` in the product of the generating polynomials counts the
    pairs summing to s. Cost is O(span log span) in the value span, not in len(a) len(b).
    Returns ``(sums, counts)`` (int64, or object for sums beyond int64), ascending;
    only sums that occur, unless ``dense=True`` (every value from the smallest to the
    largest sum, zeros included). ``a = [1, 2, 3], b = [2, 4]`` gives sums 3..7 with
    counts [1, 1, 2, 1, 1]. When a value span exceeds ``max_span`` the pairs are
    enumerated directly if there are at most 10^7, otherwise ValueError.
    """
    func = "sum_counts"
    torch_dev = None
    if _is_tensor(a) or _is_tensor(b):
        ops, a, b = _coerce(func, a, b)
        torch_dev = a.device
        a, b = a.cpu().numpy(), b.cpu().numpy()
    else:
        ops, a, b = _coerce(func, a, b)
    for name, x in (("a", a), ("b", b)):
        if _kind(func, name, x) != "int":
            raise TypeError(f"{func}: {name} must hold integers, got dtype {x.dtype}")
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == bool:
        a = a.astype(np.int64)
    if b.dtype == bool:
        b = b.astype(np.int64)
    if a.size == 0 or b.size == 0:
        sums, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        amin, amax = (int(v) for v in (a.min(), a.max()))
        bmin, bmax = (int(v) for v in (b.min(), b.max()))
        if max(amax - amin, bmax - bmin) < max_span:
            ha = np.bincount(_offset(a, amin), minlength=amax - amin + 1)
            hb = np.bincount(_offset(b, bmin), minlength=bmax - bmin + 1)
            counts = int_convolve(ha, hb)
            sums = _arange_from(amin + bmin, counts.size)
        elif a.size * b.size <= 10 ** 7:
            big = any(not (_INT64_MIN // 2 <= v <= _INT64_MAX // 2) for v in (amin, amax, bmin, bmax))
            aa, bb = (a.astype(object), b.astype(object)) if big else (a.astype(np.int64), b.astype(np.int64))
            sums, counts = np.unique(np.add.outer(aa, bb).reshape(-1), return_counts=True)
            counts = counts.astype(np.int64)
            if big and all(_INT64_MIN <= int(v) <= _INT64_MAX for v in (sums[0], sums[-1])):
                sums = sums.astype(np.int64)
            if dense:
                full = np.zeros(int(sums[-1]) - int(sums[0]) + 1, np.int64)
                full[np.asarray([int(v) - int(sums[0]) for v in sums])] = counts
                sums, counts = _arange_from(int(sums[0]), full.size), full
            dense = True  # already in final form
        else:
            raise ValueError(
                f"{func}: value span {max(amax - amin, bmax - bmin)} exceeds max_span={max_span} "
                f"and {a.size} x {b.size} pairs are too many to enumerate")
        if not dense:
            keep = counts > 0
            sums, counts = sums[keep], counts[keep]
    if torch_dev is not None:
        import torch
        if sums.dtype == object:
            raise OverflowError(f"{func}: sums exceed int64, which torch cannot hold")
        return torch.from_numpy(sums).to(torch_dev), torch.from_numpy(counts).to(torch_dev)
    return sums, counts


def _offset(x, lo):
    """x - lo as int64, for a span known to fit (int64 wrap-around cancels out)."""
    if x.dtype == object:
        return (x - lo).astype(np.int64)
    if x.dtype == np.uint64:
        return (x - np.uint64(lo)).astype(np.int64)
    return x.astype(np.int64) - np.int64(lo)


def _arange_from(start, length):
    if _INT64_MIN <= start and start + length <= _INT64_MAX:
        return np.arange(length, dtype=np.int64) + start
    return np.array([start + i for i in range(length)], dtype=object)


def best_circular_shift(a, b, axis: int = -1, *, normalize: bool = False):
    """The circular shift of ``b`` that best matches ``a``: ``(shift, score)``.

    ``score(s) = Re sum_j a[j] conj(np.roll(b, s)[j]) = Re cyclic_correlate(a, b)[s]`` and
    ``shift`` is the s in ``[0, N)`` maximising it (the smallest on ties), so
    ``np.roll(b, shift)`` is the best-aligned copy of b. ``normalize=True`` divides the
    score by ``||a|| ||b||`` (a cosine similarity in [-1, 1]; 0 for a zero input). Inputs
    of equal length along ``axis``; other axes are a batch. 1-D inputs give a Python int
    and a Python number (exact int for integer inputs); batched inputs give arrays
    (tensors for torch) of the batch shape.
    """
    func = "best_circular_shift"
    ops, a, b = _coerce(func, a, b)
    c = cyclic_correlate(a, b, axis=axis)
    if c.shape[axis] == 0:
        raise ValueError(f"{func}: inputs are empty along axis {axis}")
    c = ops.movelast(c, _check_axis(func, axis, c.ndim))
    if ops.torch:
        score_all = c.real if c.is_complex() else c
        shift = score_all.argmax(-1)
        score = score_all.gather(-1, shift.unsqueeze(-1)).squeeze(-1)
    else:
        score_all = c.real if np.iscomplexobj(c) else c
        shift = score_all.argmax(-1)
        score = np.take_along_axis(score_all, shift[..., None], -1)[..., 0]
    if normalize:
        a2, b2, _, _ = _align(func, ops, a, b, axis)
        if ops.torch:
            import torch
            na = torch.linalg.vector_norm(a2.to(torch.float64) if not a2.is_complex() else a2, dim=-1)
            nb = torch.linalg.vector_norm(b2.to(torch.float64) if not b2.is_complex() else b2, dim=-1)
            den = na * nb
            score = torch.where(den > 0, score.to(torch.float64) / torch.where(den > 0, den, 1), 0.0)
        else:
            den = (np.linalg.norm(a2.astype(complex if np.iscomplexobj(a2) else float), axis=-1)
                   * np.linalg.norm(b2.astype(complex if np.iscomplexobj(b2) else float), axis=-1))
            score = np.divide(score.astype(float), den, out=np.zeros(np.broadcast_shapes(
                np.shape(score), np.shape(den))), where=den > 0)
    if c.ndim == 1:
        return int(shift), score.item() if hasattr(score, "item") else score
    return shift, score

