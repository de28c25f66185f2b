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
              stage_times: dict | None = None) -> torch.Tensor:
        """Augment one view: ``uint8`` ``(T, H, W, 3)`` -> float ``(3, T, S, S)``.
        ``stage_times``: seconds added under "crop_resize" and "augment" (bench/pretrain_e2e.py)."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        t0 = time.perf_counter() if stage_times is not None else 0.0
        x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W) view; TF ops treat T as a batch
        top, left, h, w = params.crop
        x = TF.resized_crop(x, top, left, h, w, [spec.size, spec.size], antialias=True)
        if params.flip:
            x = TF.horizontal_flip(x)
        x = TF.to_dtype(x, torch.float32, scale=True)
        if stage_times is not None:
            t1 = time.perf_counter()
            stage_times["crop_resize"] = stage_times.get("crop_resize", 0.0) + t1 - t0
            t0 = t1
        for op, factor in params.jitter:
            x = _JITTER[op](x, factor)
        if params.gray:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if params.sigma is not None:
            x = gaussian_blur(x, blur_kernel_size(spec.size), params.sigma)
        if params.solarize:
            x = TF.solarize(x, SOLARIZE_THRESHOLD)
        x = TF.normalize(x, list(self.cfg.mean), list(self.cfg.std))
        x = x.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)
        if stage_times is not None:
            stage_times["augment"] = stage_times.get("augment", 0.0) + time.perf_counter() - t0
        return x

    def __call__(self, clips: Sequence[torch.Tensor], generator: torch.Generator | None = None,
                 stage_times: dict | None = None) -> list[torch.Tensor]:
        specs = self.cfg.views
        if len(clips) != len(specs):
            raise ValueError(f"got {len(clips)} clips for {len(specs)} views")
        out = []
        for clip, spec in zip(clips, specs):
            if clip.ndim != 4:
                raise ValueError(f"expected one clip (T, H, W, 3) per view, got shape {tuple(clip.shape)}")
            params = self.sample_params(spec, clip.shape[1], clip.shape[2], generator)
            out.append(self.apply(clip, spec, params, stage_times))
        return out

    def batch(self, clips: Sequence[torch.Tensor],
              generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Batched clips ``(B, T, H, W, 3)`` per view -> float ``(B, 3, T, S, S)`` per view.

        Samples are processed in order with the same generator, so the result equals
        calling the augment on each sample in turn.
        """
        if len(clips) != len(self.cfg.views):
            raise ValueError(f"got {len(clips)} clips for {len(self.cfg.views)} views")
        sizes = {c.shape[0] for c in clips}
        if len(sizes) != 1 or any(c.ndim != 5 for c in clips):
            raise ValueError(f"expected (B, T, H, W, 3) clips with one B, got {[tuple(c.shape) for c in clips]}")
        per_sample = [self([c[b] for c in clips], generator) for b in range(sizes.pop())]
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


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of float images ``(..., H, W)``, equal to torchvision's ``gaussian_blur``
    (same kernel, reflect padding) to float rounding.

    torchvision convolves with the full k x k kernel: about 0.25 s for 16 frames at 224 px
    on one CPU core. The blur is separable and, with reflect padding, linear along each
    axis, so here it is two matrix products ``B_h @ x @ B_w^T``: ~8x faster on a CPU and two
    kernels on a GPU (where TF32 matmuls, if enabled, still leave errors far below a grey level).
    """
    h, w = x.shape[-2:]
    bh = _blur_matrix(h, kernel_size, sigma).to(device=x.device, dtype=x.dtype)
    bw = bh if w == h else _blur_matrix(w, kernel_size, sigma).to(device=x.device, dtype=x.dtype)
    return bh @ x @ bw.T


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the HSV hue of float RGB images ``(..., 3, H, W)`` in [0, 1] by ``shift`` turns.

    Equals torchvision's ``adjust_hue`` to float rounding at about half its cost (hue was
    the most expensive augmentation): a hue rotation keeps each pixel's max (V) and chroma
    (max - min), so only the hue is computed and put back with the closed-form HSV -> RGB.
    """
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    chroma = maxc - minc
    # Hue in sextants (0..6); red wins ties, then green, as in torchvision. Grey pixels
    # (chroma 0) get any hue: the result below is their value whatever the hue.
    num = torch.where(maxc == r, g - b, torch.where(maxc == g, (b - r).add_(chroma, alpha=2),
                                                    (r - g).add_(chroma, alpha=4)))
    hue = num.div_(torch.where(chroma > 0, chroma, 1)).add_(6 * shift).unsqueeze(-3)
    # HSV -> RGB: channel = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + hue) mod 6 with
    # n = 5, 3, 1 for R, G, B.
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = torch.remainder(hue + n, 6)
    k = torch.minimum(k, 4 - k).clamp_(0, 1)
    return maxc.unsqueeze(-3) - chroma.unsqueeze(-3) * k


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


_JITTER = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": adjust_hue,  # torchvision's, faster (see adjust_hue)
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
        per_sample = []
        for item in batch:
            state = np.random.SeedSequence([self.seed, self.epoch, item["index"]]).generate_state(1)
            g = torch.Generator().manual_seed(int(state[0]))
            per_sample.append(self.augment(item["clips"], generator=g))
        views = [torch.stack(v) for v in zip(*per_sample)]
        # the worker's time for this batch: decoding (per item) plus augmenting and stacking
        load_s = sum(b.get("load_s", 0.0) for b in batch) + time.perf_counter() - t0
        return {"views": views, "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
                "load_s": load_s}
