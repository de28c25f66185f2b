"""svt.posembed against independent references (numpy index arithmetic, timm, numpy lerp)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svt._compat import import_timm
from svt.posembed import PosEmbedCache, resample_spatial, resample_temporal

import_timm()
from timm.layers import resample_abs_pos_embed  # noqa: E402

PATCH = 16
T0, S0 = 16, 14  # tables: 16 frames x 14x14 (224 px)
# (frames, pixels) of every view geometry we train and infer with
TRAIN_GEOMS = [(8, 224), (16, 224)] + [(t, 96) for t in range(2, 17)]
SLOWFAST_GEOMS = [(8, 224), (64, 96)]
D = 8


def table(n_grid: int = S0, d: int = D, prefix: int = 1, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, prefix + n_grid * n_grid, d, generator=g, dtype=dtype)


def nearest_index_f32(n_in: int, n_out: int) -> np.ndarray:
    """torch's nearest rule, floor(dst * in/out), with its float32 scale and product."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def nearest_index_exact(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(np.arange(n_out) * n_in // n_out, n_in - 1)


def ref_nearest_spatial(pos: np.ndarray, h: int, w: int, prefix: int = 1) -> np.ndarray:
    s0 = int(round((pos.shape[1] - prefix) ** 0.5))
    grid = pos[0, prefix:].reshape(s0, s0, -1)
    iy, ix = nearest_index_f32(s0, h), nearest_index_f32(s0, w)
    out = grid[iy][:, ix].reshape(h * w, -1)
    return np.concatenate([pos[0, :prefix], out])[None]


def ref_area_spatial(pos: np.ndarray, h: int, w: int) -> np.ndarray:
    """Adaptive average pooling: output cell i covers [floor(i*in/out), ceil((i+1)*in/out))."""
    s0 = int(round((pos.shape[1] - 1) ** 0.5))
    grid = pos[0, 1:].reshape(s0, s0, -1).astype(np.float64)
    out = np.zeros((h, w, grid.shape[-1]))
    for i in range(h):
        y0, y1 = (i * s0) // h, -((-(i + 1) * s0) // h)
        for j in range(w):
            x0, x1 = (j * s0) // w, -((-(j + 1) * s0) // w)
            out[i, j] = grid[y0:y1, x0:x1].mean(axis=(0, 1))
    return np.concatenate([pos[0, :1], out.reshape(h * w, -1)])[None]


def ref_linear_temporal(te: np.ndarray, t: int) -> np.ndarray:
    """Linear interpolation with half-pixel centres (align_corners=False), clamped at edges."""
    t0 = te.shape[1]
    src = np.maximum((np.arange(t) + 0.5) * t0 / t - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), t0 - 1)
    i1 = np.minimum(i0 + 1, t0 - 1)
    lam = (src - i0)[:, None]
    return ((1 - lam) * te[0, i0] + lam * te[0, i1])[None]


# ---------------------------------------------------------------- nearest (the default)

@pytest.mark.parametrize("frames,px", TRAIN_GEOMS + SLOWFAST_GEOMS)
def test_nearest_matches_index_arithmetic_on_training_and_inference_geometries(frames, px):
    pos = table()
    te = torch.randn(1, T0, D)
    g = px // PATCH
    out = resample_spatial(pos, (g, g))
    assert out.shape == (1, 1 + g * g, D)
    np.testing.assert_array_equal(out.numpy(), ref_nearest_spatial(pos.numpy(), g, g))
    # For these geometries torch's float rule equals exact integer arithmetic.
    np.testing.assert_array_equal(nearest_index_f32(S0, g), nearest_index_exact(S0, g))
    np.testing.assert_array_equal(nearest_index_f32(T0, frames), nearest_index_exact(T0, frames))

    tout = resample_temporal(te, frames)
    assert tout.shape == (1, frames, D)
    np.testing.assert_array_equal(tout[0].numpy(), te[0].numpy()[nearest_index_exact(T0, frames)])


def test_nearest_known_values():
    # 16 -> 8 frames keeps the even rows; 8 -> 16 repeats every row twice (official SVT release).
    te = torch.arange(16.0).view(1, 16, 1)
    assert resample_temporal(te, 8).flatten().tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    te8 = torch.arange(8.0).view(1, 8, 1)
    assert resample_temporal(te8, 16).flatten().tolist() == [i // 2 for i in range(16)]
    # 14x14 -> 6x6 picks rows/cols 0, 2, 4, 7, 9, 11
    np.testing.assert_array_equal(nearest_index_exact(14, 6), [0, 2, 4, 7, 9, 11])


@settings(max_examples=40, deadline=None)
@given(s0=st.integers(1, 16), h=st.integers(1, 24), w=st.integers(1, 24), prefix=st.integers(0, 2))
def test_nearest_property_any_grid(s0, h, w, prefix):
    pos = table(s0, d=3, prefix=prefix)
    out = resample_spatial(pos, (h, w), num_prefix_tokens=prefix)
    np.testing.assert_array_equal(out.numpy(), ref_nearest_spatial(pos.numpy(), h, w, prefix))


# ---------------------------------------------------------------- other modes

@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("hw", [(6, 6), (14, 14), (7, 10), (20, 16), (4, 4)])
def test_smooth_modes_match_timm(mode, hw):
    pos = table()
    out = resample_spatial(pos, hw, mode=mode)
    ref = resample_abs_pos_embed(pos, new_size=list(hw), num_prefix_tokens=1,
                                 interpolation=mode, antialias=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(6, 6), (7, 7), (5, 9), (20, 28)])
def test_area_matches_adaptive_average(hw):
    pos = table()
    out = resample_spatial(pos, hw, mode="area")
    np.testing.assert_allclose(out.numpy(), ref_area_spatial(pos.numpy(), *hw), atol=1e-6)


@pytest.mark.parametrize("t", [1, 2, 3, 4, 8, 15, 17, 32, 64])
def test_linear_temporal_matches_numpy(t):
    te = torch.randn(1, T0, D, dtype=torch.float64)
    out = resample_temporal(te, t, mode="linear")
    np.testing.assert_allclose(out.numpy(), ref_linear_temporal(te.numpy(), t), atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_cls_slot_untouched_and_non_square_target(mode):
    pos = table(prefix=2)
    out = resample_spatial(pos, (4, 9), mode=mode, num_prefix_tokens=2)
    assert out.shape == (1, 2 + 36, D)
    assert torch.equal(out[:, :2], pos[:, :2])


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_identity_at_native_grid(mode, monkeypatch):
    pos, te = table(), torch.randn(1, T0, D)
    import svt.posembed as pe

    def no_interp(*a, **k):
        raise AssertionError("interpolation called at the native size")
    monkeypatch.setattr(pe.F, "interpolate", no_interp)
    assert resample_spatial(pos, (S0, S0), mode=mode) is pos
    assert resample_temporal(te, T0, mode="linear") is te
    assert resample_temporal(te, T0) is te


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        resample_spatial(table(), (4, 4), mode="cubic")
    with pytest.raises(ValueError, match="mode"):
        resample_temporal(torch.zeros(1, 4, 2), 2, mode="bilinear")
    with pytest.raises(ValueError, match="square"):
        resample_spatial(torch.zeros(1, 1 + 12, 2), (4, 4))


def test_half_precision_keeps_dtype():
    pos = table(dtype=torch.bfloat16)
    out = resample_spatial(pos, (6, 6), mode="bicubic")
    assert out.dtype == torch.bfloat16
    ref = resample_spatial(pos.float(), (6, 6), mode="bicubic").bfloat16()
    assert torch.equal(out, ref)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic", "area"])
def test_spatial_gradcheck(mode):
    pos = table(4, d=2, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: resample_spatial(p, (3, 5), mode=mode), (pos,))
    resample_spatial(pos, (3, 5), mode=mode).sum().backward()
    assert pos.grad[:, 0].abs().sum() > 0 and pos.grad[:, 1:].abs().sum() > 0


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_temporal_gradcheck(mode):
    te = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: resample_temporal(x, 4, mode=mode), (te,))
    assert torch.autograd.gradcheck(lambda x: resample_temporal(x, 9, mode=mode), (te,))


# ---------------------------------------------------------------- cache

def test_cache_hits_without_autograd_and_misses_after_in_place_update():
    param = torch.nn.Parameter(table())
    cache = PosEmbedCache()
    calls = []

    def compute():
        calls.append(1)
        return resample_spatial(param, (6, 6))

    with torch.no_grad():
        a = cache.get(param, ("s", 6), compute)
        b = cache.get(param, ("s", 6), compute)
        assert a is b and len(calls) == 1 and cache.hits == 1
        cache.get(param, ("s", 7), lambda: resample_spatial(param, (7, 7)))  # other key: miss
        assert cache.misses == 2
        param.add_(1.0)  # e.g. an EMA update: bumps _version
        c = cache.get(param, ("s", 6), compute)
    assert len(calls) == 2
    torch.testing.assert_close(c, a + 1.0)

    # inference mode is cached too, separately from no_grad results
    with torch.inference_mode():
        cache.get(param, ("s", 6), compute)
        cache.get(param, ("s", 6), compute)
    assert len(calls) == 3

    # a frozen table (requires_grad False) is cached even with grad mode on
    frozen = table().requires_grad_(False)
    x = cache.get(frozen, "f", lambda: resample_spatial(frozen, (6, 6)))
    assert cache.get(frozen, "f", lambda: resample_spatial(frozen, (6, 6))) is x


def test_cache_never_used_while_training():
    param = torch.nn.Parameter(table())
    cache = PosEmbedCache()
    outs = [cache.get(param, "s", lambda: resample_spatial(param, (6, 6))) for _ in range(2)]
    assert outs[0] is not outs[1] and cache.hits == 0 and len(cache) == 0
    (outs[0].sum() + outs[1].sum()).backward()
    assert param.grad is not None and param.grad.abs().sum() > 0


def test_cache_is_not_fooled_by_a_replaced_table():
    cache = PosEmbedCache()
    p1 = torch.nn.Parameter(table(seed=1))
    p2 = torch.nn.Parameter(table(seed=2))
    with torch.no_grad():
        a = cache.get(p1, "s", lambda: resample_spatial(p1, (6, 6)))
        b = cache.get(p2, "s", lambda: resample_spatial(p2, (6, 6)))
    assert not torch.equal(a, b)
