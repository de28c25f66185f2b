"""SVT training views: where each view lies in time, and how it is augmented.

One training video yields several views from a single decode (``svt.loader.VideoDataset``):
the global views first, then the local ones (paper: 2 global views of 8 and 16 frames at
224 px over a random 90% of the video, 8 local views of 2-16 frames at 96 px over a random
1/8). The teacher sees the globals only, so that order is part of the contract.

* :class:`SVTClipSampler` picks the frame indices of every view (on the CPU, inside the
  DataLoader workers, before decoding).
* :class:`SVTAugment` crops, flips, colour-jitters, greys, blurs, solarizes and normalises
  the decoded ``uint8`` frames. Every frame of a view gets the same random parameters
  (otherwise the augmentation itself would create "motion"); views and samples get
  independent ones. It runs on whatever device the frames are on: the training loop can
  move ``uint8`` frames to the GPU once and augment there, while the random parameters are
  always drawn on the CPU from a ``torch.Generator`` so runs are reproducible.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from svt._compat import import_torchvision
from svt.loader import uniform_indices

import_torchvision()  # must precede the torchvision import below (CPU torch, see _compat)
from torchvision.transforms.v2 import functional as TF  # noqa: E402

# Tries at a random crop before falling back to a centre crop (as torchvision's
# RandomResizedCrop): with small images and large scales a crop may never fit.
CROP_TRIES = 10
# Uniform numbers drawn per view: 4 per crop try, then flip gate, jitter gate, 4 jitter
# factors, 4 keys for the jitter order, grayscale gate, blur gate, blur sigma, solarize
# gate. Always drawing all of them keeps the random stream independent of the
# probabilities, so switching one augmentation off leaves the others unchanged.
_DRAWS_PER_VIEW = 4 * CROP_TRIES + 14
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128 / 255  # PIL's threshold 128 on the uint8 scale, on [0, 1] floats


@dataclass(frozen=True)
class ViewSpec:
    """One view: ``frames`` frames of ``size`` x ``size`` pixels from a random ``span``
    fraction of the video, cropped with area ``scale``; ``blur``/``solarize`` are the
    probabilities of those augmentations for this view."""

    frames: int
    size: int
    span: float
    scale: tuple
    blur: float
    solarize: float

    def __post_init__(self):
        if int(self.frames) < 1 or int(self.size) < 1:
            raise ValueError(f"view needs frames >= 1 and size >= 1, got {self}")
        if not 0 < self.span <= 1:
            raise ValueError(f"view span must lie in (0, 1], got {self.span}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"view crop scale must satisfy 0 < min <= max, got {self.scale}")
        for name in ("blur", "solarize"):
            _check_probability(name, getattr(self, name))


@dataclass(frozen=True)
class ViewConfig:
    """All views (globals then locals) and the augmentation settings shared by them."""

    global_views: tuple  # tuple[ViewSpec, ...]
    local_views: tuple  # tuple[ViewSpec, ...]
    aspect_ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale: float = 0.2
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if not self.global_views:
            raise ValueError("need at least one global view")
        lo, hi = self.aspect_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"aspect_ratio must satisfy 0 < min <= max, got {self.aspect_ratio}")
        for name in ("hflip", "color_jitter", "grayscale"):
            _check_probability(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {self.hue}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std need 3 values each, std > 0; got {self.mean}, {self.std}")

    @classmethod
    def from_config(cls, views: dict, augment: dict) -> "ViewConfig":
        """Build from config.yaml's ``views`` and ``augment`` sections.

        Global view ``i`` gets blur probability ``blur[0]`` for ``i == 0`` and ``blur[1]``
        otherwise; only global view 1 (the second) may be solarized; locals get ``blur[2]``.
        """
        blur = [float(p) for p in augment["blur"]]
        if len(blur) != 3:
            raise ValueError(f"augment.blur needs 3 probabilities (global 1, global 2, locals), got {blur}")
        g_scale = _pair("views.global_scale", views["global_scale"])
        l_scale = _pair("views.local_scale", views["local_scale"])
        globals_ = tuple(
            ViewSpec(frames=int(t), size=int(views["global_size"]), span=float(views["global_span"]),
                     scale=g_scale, blur=blur[0] if i == 0 else blur[1],
                     solarize=float(augment["solarize"]) if i == 1 else 0.0)
            for i, t in enumerate(views["global_frames"])
        )
        locals_ = tuple(
            ViewSpec(frames=int(t), size=int(views["local_size"]), span=float(views["local_span"]),
                     scale=l_scale, blur=blur[2], solarize=0.0)
            for t in views["local_frames"]
        )
        return cls(
            global_views=globals_, local_views=locals_,
            aspect_ratio=_pair("views.aspect_ratio", views["aspect_ratio"]),
            hflip=float(augment["hflip"]), color_jitter=float(augment["color_jitter"]),
            brightness=float(augment["brightness"]), contrast=float(augment["contrast"]),
            saturation=float(augment["saturation"]), hue=float(augment["hue"]),
            grayscale=float(augment["grayscale"]),
            mean=tuple(float(m) for m in augment["mean"]), std=tuple(float(s) for s in augment["std"]),
        )

    @property
    def views(self) -> tuple:
        """Every view in output order: globals, then locals."""
        return tuple(self.global_views) + tuple(self.local_views)

    @property
    def num_global(self) -> int:
        return len(self.global_views)

    def describe(self) -> str:
        """A few lines for the logs."""

        def group(name, specs):
            if not specs:
                return f"{name}: none"
            s = specs[0]
            frames = ",".join(str(v.frames) for v in specs)
            return (f"{len(specs)} {name} [{frames}] frames @ {s.size}px, span {s.span:g}, "
                    f"scale {s.scale[0]:g}-{s.scale[1]:g}, blur p {_values(v.blur for v in specs)}, "
                    f"solarize p {_values(v.solarize for v in specs)}")

        lines = [
            group("global", self.global_views),
            group("local", self.local_views),
            (f"aspect {self.aspect_ratio[0]:.3g}-{self.aspect_ratio[1]:.3g}, hflip p {self.hflip:g}, "
             f"jitter p {self.color_jitter:g} (b {self.brightness:g}, c {self.contrast:g}, "
             f"s {self.saturation:g}, h {self.hue:g}), grayscale p {self.grayscale:g}"),
            f"normalise mean {list(self.mean)} std {list(self.std)}",
        ]
        return "\n".join(lines)


def _values(values) -> str:
    """One number when all views agree, else the list (for describe())."""
    values = [f"{v:g}" for v in values]
    return values[0] if len(set(values)) == 1 else "[" + ",".join(values) + "]"


def _check_probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} probability must lie in [0, 1], got {p}")


def _pair(name: str, value) -> tuple:
    values = tuple(float(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} needs [min, max], got {value}")
    return values


def _specs(views) -> tuple:
    return views.views if isinstance(views, ViewConfig) else tuple(views)


# --------------------------------------------------------------------------- time


class SVTClipSampler:
    """Frame indices of every view: ``clip_sampler`` for ``svt.loader.VideoDataset``.

    Each view covers a contiguous stretch of ``round(span * num_frames)`` frames (at least
    one) placed uniformly at random in the video, and takes its ``frames`` indices evenly
    spread over that stretch. A stretch shorter than the view repeats frames, so short
    videos still give every view its full length. ``fps`` is unused: spans are fractions of
    the video, as in the paper.
    """

    def __init__(self, views: ViewConfig | Sequence[ViewSpec]):
        # Keep only plain numbers: the sampler is pickled into every DataLoader worker.
        self.views = tuple((int(v.frames), float(v.span)) for v in _specs(views))

    def __call__(self, num_frames: int, fps: float, generator: np.random.Generator) -> list[np.ndarray]:
        num_frames = int(num_frames)
        if num_frames < 1:
            raise ValueError(f"video has no frames (num_frames={num_frames})")
        out = []
        for frames, span in self.views:
            length = min(num_frames, max(1, math.floor(span * num_frames + 0.5)))
            start = int(generator.integers(0, num_frames - length + 1))
            out.append(uniform_indices(start, length, frames, num_frames))
        return out

    def __repr__(self) -> str:
        views = ", ".join(f"{t}f/{s:g}" for t, s in self.views)
        return f"SVTClipSampler([{views}])"


# --------------------------------------------------------------------------- space


@dataclass(frozen=True)
class ViewParams:
    """The random choices for one view; applied identically to all its frames."""

    crop: tuple  # (top, left, height, width) in source pixels
    flip: bool
    jitter: tuple  # ((op, factor), ...) in the order applied; empty when not jittered
    gray: bool
    sigma: float | None  # Gaussian blur sigma, None when not blurred
    solarize: bool


class SVTAugment:
    """Augment decoded clips into SVT views.

    ``__call__(clips)`` takes one sample's clips, ``uint8`` ``(T, H, W, 3)`` in the order of
    :attr:`ViewConfig.views`, and returns one float ``(3, T, S, S)`` tensor per view (the
    model's per-sample ``(C, T, H, W)`` layout). ``batch`` does the same for batched clips
    ``(B, T, H, W, 3)`` with independent parameters per sample.

    Order per view (as DINO's): random resized crop -> horizontal flip -> colour jitter ->
    grayscale -> Gaussian blur -> solarize -> normalise. Crop and resize run on ``uint8``
    (fewer bytes, and torch's fast native path on CPU); the rest on floats in [0, 1].
    """

    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg

    # ---- parameters (CPU)

    def sample_params(self, spec: ViewSpec, height: int, width: int,
                      generator: torch.Generator | None = None) -> ViewParams:
        """Draw one view's parameters for a ``height`` x ``width`` source.

        ``generator`` must be a CPU generator (``None``: torch's global one).
        """
        cfg = self.cfg
        u = torch.rand(_DRAWS_PER_VIEW, generator=generator, dtype=torch.float64).tolist()
        crop = _crop_params(u[:4 * CROP_TRIES], height, width, spec.scale, cfg.aspect_ratio)
        (flip_u, jit_u, fb, fc, fs, fh, *rest) = u[4 * CROP_TRIES:]
        order_keys, (gray_u, blur_u, sigma_u, sol_u) = rest[:4], rest[4:]

        jitter = ()
        if jit_u < cfg.color_jitter:
            # Factors as torchvision's ColorJitter: uniform in [max(0, 1 - s), 1 + s], hue
            # shift in [-h, h]; the four ops in a random order. Identity ops are dropped.
            factors = {
                "brightness": _between(fb, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
                "contrast": _between(fc, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
                "saturation": _between(fs, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
                "hue": _between(fh, -cfg.hue, cfg.hue),
            }
            names = list(factors)
            order = sorted(range(4), key=lambda k: order_keys[k])
            neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
            jitter = tuple((names[k], factors[names[k]]) for k in order
                           if factors[names[k]] != neutral[names[k]])
        return ViewParams(
            crop=crop,
            flip=flip_u < cfg.hflip,
            jitter=jitter,
            gray=gray_u < cfg.grayscale,
            sigma=_between(sigma_u, *BLUR_SIGMA) if blur_u < spec.blur else None,
            solarize=sol_u < spec.solarize,
        )

    # ---- applying them (any device)

    def apply(self, frames: torch.Tensor, spec: ViewSpec, params: ViewParams,
              stage_times: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Augment one view: ``uint8`` ``(T, H, W, 3)`` -> float ``(3, T, S, S)``, written into
        ``out`` when given (e.g. the sample's slot of a batch in shared memory).

        ``stage_times``: seconds added under "crop_resize" (crop, resize, flip, on ``uint8``)
        and "augment" (the rest, from the conversion to float on; bench/pretrain_e2e.py).

        After the crop every step works on each frame alone (the contrast mean is per frame,
        as torchvision's), so on the CPU the float part runs on chunks of a few frames, in
        place, in buffers reused across views and samples, and writes straight into the
        output: fresh view-sized temporaries cost more in page faults than the arithmetic
        itself, and smaller working sets stay in the caches. On a GPU the whole view is one
        chunk.
        """
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        t0 = time.perf_counter() if stage_times is not None else 0.0
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) view; TF ops treat T as a batch
        top, left, h, w = params.crop
        x = TF.resized_crop(x, top, left, h, w, [spec.size, spec.size], antialias=True)
        if params.flip:
            x = TF.horizontal_flip(x)
        if stage_times is not None:
            t1 = time.perf_counter()
            stage_times["crop_resize"] = stage_times.get("crop_resize", 0.0) + t1 - t0
            t0 = t1
        frames_, size = x.shape[0], spec.size
        if out is None:
            out = torch.empty((3, frames_, size, size), dtype=torch.float32, device=x.device)
        elif out.shape != (3, frames_, size, size) or out.dtype != torch.float32:
            raise ValueError(f"out must be float32 {(3, frames_, size, size)}, got "
                             f"{out.dtype} {tuple(out.shape)}")
        chunk = frames_ if x.device.type != "cpu" else max(1, _CHUNK_PIXELS // (size * size))
        ws = _cpu_scratch() if x.device.type == "cpu" else _Scratch(x.device)
        blur = None
        if params.sigma is not None:
            blur = _Blur(size, size, blur_kernel_size(size), params.sigma, torch.float32, x.device)
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        for start in range(0, frames_, chunk):
            stop = min(frames_, start + chunk)
            y = ws.get("y", (stop - start, 3, size, size))
            # as TF.to_dtype(scale=True): convert, then scale by 1/255
            y.copy_(x[start:stop]).mul_(1.0 / 255)
            for op, factor in params.jitter:
                _JITTER[op](y, factor, ws)
            if params.gray:
                _grayscale_(y, ws)
            if blur is not None:
                blur(y, ws)
            if params.solarize:
                _solarize_(y, SOLARIZE_THRESHOLD, ws)
            # normalised straight into the (3, T, S, S) output: no separate permute copy
            _normalize_into(y, mean, std, out[:, start:stop].permute(1, 0, 2, 3))
        if stage_times is not None:
            stage_times["augment"] = stage_times.get("augment", 0.0) + time.perf_counter() - t0
        return out

    def __call__(self, clips: Sequence[torch.Tensor], generator: torch.Generator | None = None,
                 stage_times: dict | None = None,
                 out: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """One sample's views; ``out``: one ``(3, T, S, S)`` tensor per view to write into."""
        specs = self.cfg.views
        if len(clips) != len(specs):
            raise ValueError(f"got {len(clips)} clips for {len(specs)} views")
        views = []
        for k, (clip, spec) in enumerate(zip(clips, specs)):
            if clip.ndim != 4:
                raise ValueError(f"expected one clip (T, H, W, 3) per view, got shape {tuple(clip.shape)}")
            params = self.sample_params(spec, clip.shape[1], clip.shape[2], generator)
            views.append(self.apply(clip, spec, params, stage_times,
                                    out=None if out is None else out[k]))
        return views

    def batch(self, clips: Sequence[torch.Tensor], generator: torch.Generator | None = None,
              generators: Sequence[torch.Generator] | None = None) -> list[torch.Tensor]:
        """Batched clips ``(B, T, H, W, 3)`` per view -> float ``(B, 3, T, S, S)`` per view.

        Samples are processed in order, each with its own generator from ``generators``
        (as AugmentCollate does: see sample_generator) or all with ``generator``, so the
        result equals calling the augment on each sample in turn.
        """
        if len(clips) != len(self.cfg.views):
            raise ValueError(f"got {len(clips)} clips for {len(self.cfg.views)} views")
        sizes = {c.shape[0] for c in clips}
        if len(sizes) != 1 or any(c.ndim != 5 for c in clips):
            raise ValueError(f"expected (B, T, H, W, 3) clips with one B, got {[tuple(c.shape) for c in clips]}")
        n = sizes.pop()
        if generators is not None and len(generators) != n:
            raise ValueError(f"got {len(generators)} generators for a batch of {n}")
        per_sample = [self([c[b] for c in clips], generators[b] if generators is not None else generator)
                      for b in range(n)]
        return [torch.stack(views) for views in zip(*per_sample)]

    def describe(self) -> str:
        return self.cfg.describe()

    def __repr__(self) -> str:
        v = self.cfg.views
        return (f"SVTAugment({self.cfg.num_global} global + {len(v) - self.cfg.num_global} local views: "
                + ", ".join(f"{s.frames}x{s.size}" for s in v) + ")")


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel of about a tenth of the view side (SimCLR's rule), at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


# --------------------------------------------------------------------------- the float ops
#
# All of them work in place on float RGB images (..., 3, H, W) in [0, 1], on any device,
# with temporaries taken from a _Scratch (reused across the chunks of a view). Two CPU
# facts shaped them: a fresh large tensor costs more in page faults than the arithmetic
# that fills it, and comparisons into bool tensors, torch.where and torch.remainder run
# ~5-10x slower than plain arithmetic; comparisons written into float tensors (1.0 / 0.0)
# are as fast as arithmetic.

# Pixels per chunk of frames in SVTAugment.apply on the CPU (five 224 px frames, 28 of
# 96 px): measured best between 32K and whole views. Smaller chunks pay the ~2-3 us
# per-op dispatch more often (hue is ~35 ops), larger ones leave the caches. The scratch
# buffers then hold ~17 MB per thread.
_CHUNK_PIXELS = 256 * 1024
# torchvision's grayscale weights (ITU-R 601-2 luma)
_GRAY = (0.2989, 0.587, 0.114)


class _Scratch:
    """Named temporaries, allocated once and reused (a smaller request gets a prefix)."""

    def __init__(self, device, dtype=torch.float32):
        self.device, self.dtype, self._flat = device, dtype, {}

    def get(self, name: str, shape) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.numel() < n:
            buf = self._flat[name] = torch.empty(n, dtype=self.dtype, device=self.device)
        return buf[:n].view(shape)


_LOCAL = threading.local()


def _cpu_scratch() -> _Scratch:
    """This thread's CPU scratch, kept between views and samples: a buffer that was touched
    once costs no page faults when reused. (Other devices' allocators cache memory anyway.)"""
    ws = getattr(_LOCAL, "scratch", None)
    if ws is None:
        ws = _LOCAL.scratch = _Scratch(torch.device("cpu"))
    return ws


def _gray(x: torch.Tensor, ws: _Scratch) -> torch.Tensor:
    """Grey level (..., H, W) of RGB ``x``: torchvision's formula and order of operations."""
    r, g, b = x.unbind(-3)
    return torch.mul(r, _GRAY[0], out=ws.get("gray", r.shape)).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])


def _brightness_(x: torch.Tensor, factor: float, ws: _Scratch) -> torch.Tensor:
    """TF.adjust_brightness in place (the same ops: the same result)."""
    return x.mul_(factor).clamp_(0, 1)


def _contrast_(x: torch.Tensor, factor: float, ws: _Scratch) -> torch.Tensor:
    """TF.adjust_contrast in place: blend each image with its mean grey level, taken here as
    the weighted mean of its channel means (equal to float rounding, no grey image)."""
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
    mean = x.mean(dim=(-2, -1)) @ weights
    return x.mul_(factor).add_(mean[..., None, None, None], alpha=1.0 - factor).clamp_(0, 1)


def _saturation_(x: torch.Tensor, factor: float, ws: _Scratch) -> torch.Tensor:
    """TF.adjust_saturation in place (the same ops: the same result)."""
    gray = _gray(x, ws).unsqueeze(-3)  # before x changes
    return x.mul_(factor).add_(gray, alpha=1.0 - factor).clamp_(0, 1)


def _grayscale_(x: torch.Tensor, ws: _Scratch) -> torch.Tensor:
    """TF.rgb_to_grayscale(num_output_channels=3) in place."""
    return x.copy_(_gray(x, ws).unsqueeze(-3).expand_as(x))


def _solarize_(x: torch.Tensor, threshold: float, ws: _Scratch) -> torch.Tensor:
    """TF.solarize in place, exactly: ``|x - [x >= threshold]|`` is ``1 - x`` at and above
    the threshold and ``x`` below it (x >= 0); torch.where costs ~10x more on the CPU."""
    step = torch.ge(x, threshold, out=ws.get("step", x.shape))
    return x.sub_(step).abs_()


def _normalize_into(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """TF.normalize's ops, written into ``out`` (any strides, e.g. a permuted view)."""
    return torch.sub(x, mean, out=out).div_(std)


def _hue_(x: torch.Tensor, shift: float, ws: _Scratch) -> torch.Tensor:
    """:func:`adjust_hue` in place, in ~35 passes over one image plane and no branches.

    A hue rotation keeps each pixel's max V and chroma C = max - min. The hue H in sextants,
    [0, 6], comes from Hocevar's branchless RGB -> HSV, with torchvision's choice where
    channels tie (red wins, then green): with s1 = [g < b], s2 = [r < max(g, b)],
    H = |q + u / C|, q = -6 s1 + s2 (12 s1 - 2), u = max(g, b) - min(g, b) + s2 (r - max(g, b)).
    HSV -> RGB is channel = V - C clamp(min(k, 4 - k), 0, 1), k = (H' + n) mod 6 for
    n = 5, 3, 1 and H' = H + 6 shift. With p = H' + 3 wrapped into [-3, 3] that is
    R = V - 2C + C clamp(|p|, 1, 2), G = V + C - C clamp(|p + 1|, 1, 2),
    B = V + C - C clamp(|p - 1|, 1, 2). Selections are products with 1.0/0.0 masks and the
    wrap one conditional subtraction: no where or remainder kernels (slow on the CPU).
    """
    r, g, b = x.unbind(-3)
    plane, get = r.shape, ws.get
    gb_max = torch.maximum(g, b, out=get("h0", plane))
    gb_min = torch.minimum(g, b, out=get("h1", plane))
    s1 = torch.lt(g, b, out=get("h2", plane))
    s2 = torch.lt(r, gb_max, out=get("h3", plane))
    v = torch.maximum(r, gb_max, out=get("h4", plane))
    c = torch.minimum(r, gb_min, out=get("h5", plane))
    torch.sub(v, c, out=c)  # chroma
    u = torch.sub(r, gb_max, out=get("h6", plane))
    u.mul_(s2).add_(torch.sub(gb_max, gb_min, out=gb_max))
    q = torch.mul(s1, 12, out=gb_min).sub_(2).mul_(s2).sub_(s1, alpha=6)
    # grey pixels (C = 0) get u = 0, any hue: their result is V whatever the hue
    hue = u.div_(torch.clamp(c, min=torch.finfo(x.dtype).tiny, out=gb_max)).add_(q).abs_()
    # p = H + 6 shift + 3 in [-3, 9), then wrapped into [-3, 3)
    p = hue.add_((6 * shift) % 6 - 3)
    p.sub_(torch.ge(p, 3, out=s1), alpha=6)
    a = gb_min
    base = torch.sub(v, c, alpha=2, out=s2)
    torch.addcmul(base, c, torch.abs(p, out=a).clamp_(1, 2), out=r)
    base = torch.add(v, c, out=s2)
    torch.addcmul(base, c, torch.add(p, 1, out=a).abs_().clamp_(1, 2), value=-1, out=g)
    torch.addcmul(base, c, torch.sub(p, 1, out=a).abs_().clamp_(1, 2), value=-1, out=b)
    return x


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the HSV hue of float RGB images ``(..., 3, H, W)`` in [0, 1] by ``shift`` turns.

    Equals torchvision's ``adjust_hue`` to float rounding at a fraction of its cost (see
    :func:`_hue_`, which SVTAugment calls in place).
    """
    return _hue_(x.clone(), shift, _Scratch(x.device, x.dtype))


# Gaussian blur on the CPU as block-banded products from this side on (smaller: dense),
# in row blocks of _BLUR_BLOCK.
_BANDED_MIN_SIZE = 64
_BLUR_BLOCK = 32


class _Blur:
    """Gaussian blur of (..., H, W) float images in place: ``B_h @ x @ B_w^T`` with the 1-D
    blur matrices (:func:`_blur_matrix`).

    Each matrix is banded (output i reads inputs i - k//2 .. i + k//2, reflections
    included), so on the CPU each row block of 32 outputs is multiplied only by the ~32 + k
    inputs it reads: ~2x faster than the dense products at 224 px (k = 23) and ~1.3x at
    96 px, with the same sums of the same products. On a GPU (two large kernels instead of
    dozens of small ones) and for small images the dense products are used.
    """

    def __init__(self, height: int, width: int, kernel_size: int, sigma: float,
                 dtype=torch.float32, device="cpu"):
        device = torch.device(device)
        self.bh = _blur_matrix(height, kernel_size, sigma).to(device=device, dtype=dtype)
        self.bw = self.bh if width == height else _blur_matrix(width, kernel_size, sigma).to(device=device, dtype=dtype)
        self.half = (kernel_size - 1) // 2
        self.banded = device.type == "cpu" and min(height, width) >= _BANDED_MIN_SIZE

    def __call__(self, x: torch.Tensor, ws: _Scratch) -> torch.Tensor:
        tmp = ws.get("blur", x.shape)
        if not self.banded:
            torch.matmul(self.bh, x, out=tmp)
            return torch.matmul(tmp, self.bw.T, out=x)
        # tmp = x @ B_w^T: output columns j0:j1 read input columns c0:c1
        bwt = self.bw.T
        for (j0, j1), (c0, c1) in _bands(x.shape[-1], self.half):
            torch.matmul(x[..., c0:c1], bwt[c0:c1, j0:j1], out=tmp[..., j0:j1])
        # x = B_h @ tmp: output rows i0:i1 read rows c0:c1
        for (i0, i1), (c0, c1) in _bands(x.shape[-2], self.half):
            torch.matmul(self.bh[i0:i1, c0:c1], tmp[..., c0:c1, :], out=x[..., i0:i1, :])
        return x


def _bands(n: int, half: int):
    """(output block, input range) pairs covering n outputs of a band of half-width ``half``."""
    for i0 in range(0, n, _BLUR_BLOCK):
        i1 = min(n, i0 + _BLUR_BLOCK)
        yield (i0, i1), (max(0, i0 - half), min(n, i1 + half))


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of float images ``(..., H, W)``, equal to torchvision's ``gaussian_blur``
    (same kernel, reflect padding) to float rounding.

    torchvision convolves with the full k x k kernel: about 0.25 s for 16 frames at 224 px
    on one CPU core. The blur is separable and, with reflect padding, linear along each
    axis, so here it is two products with banded matrices ``B_h @ x @ B_w^T`` (see
    :class:`_Blur`): two kernels on a GPU, where TF32 matmuls, if enabled, still leave
    errors far below a grey level.
    """
    h, w = x.shape[-2:]
    y = x.clone(memory_format=torch.contiguous_format)
    return _Blur(h, w, kernel_size, sigma, x.dtype, x.device)(y, _Scratch(x.device, x.dtype))


def _blur_matrix(n: int, kernel_size: int, sigma: float) -> torch.Tensor:
    """``(n, n)`` matrix applying a 1-D Gaussian with reflect padding (torchvision's kernel)."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    weights = (weights / weights.sum()).expand(n, kernel_size).contiguous()
    # Output i reads inputs i - half .. i + half, mirrored at both edges without repeating
    # the edge pixel (numpy/torch "reflect"); needs half < n, as torch's padding does.
    if half >= n:
        raise ValueError(f"blur kernel {kernel_size} too large for a {n}-pixel image")
    src = (torch.arange(n)[:, None] + torch.arange(kernel_size)[None, :] - int(half)).abs()
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    return torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, src, weights)


def _between(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


def _crop_params(u: list[float], height: int, width: int, scale, ratio) -> tuple:
    """torchvision RandomResizedCrop's choice, driven by the uniforms ``u`` (4 per try)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        us, ur, ui, uj = u[4 * t: 4 * t + 4]
        target = area * _between(us, scale[0], scale[1])
        aspect = math.exp(_between(ur, log_lo, log_hi))  # log-uniform: w/h and h/w alike
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(ui * (height - h + 1)), height - h)
            left = min(int(uj * (width - w + 1)), width - w)
            return top, left, h, w
    # No fit: the largest centre crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# Colour jitter ops, in place: op(x, factor, scratch)
_JITTER = {
    "brightness": _brightness_,
    "contrast": _contrast_,
    "saturation": _saturation_,
    "hue": _hue_,
}


class AugmentCollate:
    """DataLoader collate function that augments in the workers (the CPU path).

    Each sample's views come from a generator seeded by (seed, epoch, dataset index), so the
    result does not depend on which worker handled the sample; set ``epoch`` before each
    epoch's iterator is created (workers copy this object then). Returns
    ``{"views": [(B, 3, T, S, S) per view], "label": (B,)}``.
    """

    def __init__(self, augment: "SVTAugment", seed: int):
        self.augment, self.seed, self.epoch = augment, int(seed), 0

    def __call__(self, batch: list[dict]) -> dict:
        t0 = time.perf_counter()
        # Each sample writes its views straight into the batch tensors, which a worker
        # allocates in shared memory (as torch's default_collate does): no stacking copy, and
        # no second copy into shared memory when the batch is sent to the training process.
        shared = torch.utils.data.get_worker_info() is not None
        views = [batch_tensor((len(batch), 3, spec.frames, spec.size, spec.size), shared)
                 for spec in self.augment.cfg.views]
        for b, item in enumerate(batch):
            epoch = item.get("epoch", self.epoch)  # set by the dataset: persistent workers
            g = sample_generator(self.seed, epoch, item["index"])
            self.augment(item["clips"], generator=g, out=[v[b] for v in views])
        # the worker's time for this batch: decoding (per item) plus augmenting and stacking
        load_s = sum(b.get("load_s", 0.0) for b in batch) + time.perf_counter() - t0
        return {"views": views, "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
                "load_s": load_s}


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's view parameters, from (seed, epoch, dataset index) only:
    the same views whichever worker, rank or device builds them."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def batch_tensor(shape: tuple, shared: bool) -> torch.Tensor:
    """An uninitialised float32 tensor, in shared memory when ``shared``."""
    if not shared:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)
