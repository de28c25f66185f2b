"""Dynamic positional embedding: resample the learned tables to each view's geometry.

SVT feeds one model views of different sizes (global 224 px, local 96 px) and lengths
(2 to 16 frames), so the spatial table (1, 1 + H0*W0, D) and the temporal table (1, T0, D)
are resampled on the fly to the view's (H/p, W/p) grid and T frames. The CLS slot of the
spatial table is never resampled.

The official SVT code resamples with ``F.interpolate(mode="nearest")``; that is our default
so the released checkpoint behaves as it was trained. Smoother modes are selectable.

Resampling is differentiable, so in training it is recomputed every step. In evaluation
(autograd off) the same few geometries come back again and again; ``PosEmbedCache`` keeps
those results until the table changes.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

import torch
import torch.nn.functional as F

SPATIAL_MODES = ("nearest", "bilinear", "bicubic", "area")
TEMPORAL_MODES = ("nearest", "linear")


def _interpolate(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    """F.interpolate, in float32 for half types (some half kernels are missing or coarse)."""
    kw = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic") else {}
    if mode in ("bilinear", "bicubic"):
        kw["antialias"] = False
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return F.interpolate(work, size=size, mode=mode, **kw).to(x.dtype)


def resample_spatial(pos: torch.Tensor, grid_hw: tuple[int, int], mode: str = "nearest",
                     num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resample a spatial table (1, P + H0*W0, D) to (1, P + h*w, D).

    The native grid is square (H0 = W0); the target ``grid_hw = (h, w)`` need not be.
    The first ``num_prefix_tokens`` rows (the CLS slot) are passed through untouched.
    At the native grid the input tensor itself is returned (no interpolation at all).
    """
    if mode not in SPATIAL_MODES:
        raise ValueError(f"spatial resampling mode {mode!r} is not one of {SPATIAL_MODES}")
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"expected a table of shape (1, L, D), got {tuple(pos.shape)}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"target grid must be positive, got {grid_hw}")
    n0 = pos.shape[1] - num_prefix_tokens
    s0 = math.isqrt(n0)
    if n0 < 1 or s0 * s0 != n0:
        raise ValueError(f"table has {n0} grid rows after {num_prefix_tokens} prefix rows: "
                         "not a square grid")
    if (h, w) == (s0, s0):
        return pos
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    d = pos.shape[-1]
    grid = grid.reshape(1, s0, s0, d).permute(0, 3, 1, 2)  # (1, D, H0, W0)
    grid = _interpolate(grid, (h, w), mode)
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, d)
    return torch.cat([prefix, grid], dim=1)


def resample_temporal(time_embed: torch.Tensor, t: int, mode: str = "nearest") -> torch.Tensor:
    """Resample a temporal table (1, T0, D) to (1, t, D); the input itself when t == T0."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal resampling mode {mode!r} is not one of {TEMPORAL_MODES}")
    if time_embed.dim() != 3 or time_embed.shape[0] != 1:
        raise ValueError(f"expected a table of shape (1, T, D), got {tuple(time_embed.shape)}")
    t = int(t)
    if t < 1:
        raise ValueError(f"number of frames must be positive, got {t}")
    if t == time_embed.shape[1]:
        return time_embed
    x = _interpolate(time_embed.transpose(1, 2), t, mode)  # (1, D, T0) -> (1, D, t)
    return x.transpose(1, 2)


class PosEmbedCache:
    """Keep resampled tables while autograd is off; recompute whenever it is on.

    A result is reused only if the table is the same Parameter object, at the same storage
    (``data_ptr``) and unchanged since (``_version``; every in-place op on the tensor, such
    as ``load_state_dict``, ``p.mul_()`` under no_grad or an optimizer step, bumps it).
    Writes through ``p.data`` do NOT bump the version: update tables in place on the
    tensor itself, or call ``clear()``.
    """

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict = OrderedDict()

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, table: torch.Tensor, key: Hashable,
            compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, or a stored result for (table, key) while the table is unchanged."""
        if torch.is_grad_enabled() and table.requires_grad:
            return compute()  # training: the result must stay in the autograd graph
        full_key = (key, table.dtype, table.device, torch.is_inference_mode_enabled())
        stamp = (table.data_ptr(), table._version)
        entry = self._store.get(full_key)
        if entry is not None and entry[0] == stamp and entry[1]() is table:
            self._store.move_to_end(full_key)
            self.hits += 1
            return entry[2]
        self.misses += 1
        out = compute()
        self._store[full_key] = (stamp, weakref.ref(table), out)
        self._store.move_to_end(full_key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return out

    # A copied model (e.g. the EMA teacher made with deepcopy) starts with an empty cache.
    def __deepcopy__(self, memo):
        return PosEmbedCache(self.max_entries)

    def __getstate__(self):
        return {"max_entries": self.max_entries}

    def __setstate__(self, state):
        self.__init__(state["max_entries"])
