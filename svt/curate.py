"""Curation before pretraining: static clips and near-duplicate / leaked clips, found with FFTs.

    python -m svt.curate --manifest demo/train=M1.csv --videos-root demo/train=V1 \\
        --manifest demo/test=M2.csv --videos-root demo/test=V2 --pretrain demo/train \\
        --out-dir OUT [--motion-threshold 0.002] [--duplicate-threshold 0.9] [--sample-fps 8] \\
        [--size 32] [--static on|off] [--duplicates on|off] [--decoder torchcodec] [--jobs N] \\
        [--tracking-uri URI --experiment NAME [--run-id ID]]

Per video, every k-th frame is decoded so that about ``sample_fps`` frames per second remain
(``k = round(fps / sample_fps)``, effective rate ``fps / k``), converted to greyscale and
area-pooled to a ``size`` x ``size`` grid. From those frames:

* **motion energy** - each grid cell is a patch; the FFT over time of its intensity gives a
  temporal spectrum, and the patch's ratio is the energy outside the zero-frequency (DC) bin
  over its total energy (DC included; by Parseval this is ``var / (var + mean**2)``). The
  video's score is the **mean** over patches, not the median: in a typical clip only the
  patches the subject passes through change, and a median would call every clip whose
  subject covers less than half of the frame static.
* **dominant frequency** (Hz) - the peak of the patch-summed power spectrum of the mean-removed,
  Hann-windowed, zero-padded patch signals, excluding DC, at the effective sampling rate.
* **sharpness** - on a few full-resolution greyscale frames (centre square, integer-factor
  area pooling down to about ``sharp_size``): the fraction of the mean-removed, Hann-windowed
  spatial power spectrum lying above a radial frequency cut-off (cycles per pixel; Nyquist is
  0.5), averaged over the frames. Blurring removes high frequencies, so it lowers the score.
  Scores compare videos decoded at the same resolution (the decode stage fixes it).
* **signature** - the intensity of a coarse ``grid`` x ``grid`` layout of patches over time
  (``(T, grid**2)``), each channel zero-mean, the whole scaled to unit norm.

Clips whose motion energy falls below the threshold are flagged static and left out of the
pretraining manifest (listed in the reports; no file is ever deleted).

Duplicates: :func:`candidate_pairs` proposes pairs by locality-sensitive hashing of signature
windows (see its docstring), :func:`align` confirms each with an FFT cross-correlation
(:func:`svt.fft.correlate`) normalised over the overlap, giving the offset and a score in
[-1, 1]. Pairs at or above the threshold are reported: within one manifest ("within-split"),
between two evaluation manifests ("cross-split"), or between the pretraining manifest and
another one ("leakage": evaluation clips seen during pretraining inflate reported accuracy).

Outputs in ``--out-dir``: ``videos-<name>.tsv`` per manifest, ``duplicates.tsv``,
``pretrain_manifest.csv``, ``summary.json``, ``motion_energy.png``, ``duplicates.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from svt.fft import correlate, next_fast_len
from svt.loader import BACKENDS, VideoDecodeError, read_frames
from svt.manifest import ManifestRow, read_rows, write_rows

log = logging.getLogger("svt.curate")

# Defaults, calibrated in tests/test_curate.py and on the demo data (see the CLI help).
MOTION_THRESHOLD = 0.002
DUPLICATE_THRESHOLD = 0.9
SAMPLE_FPS = 8.0
SIZE = 32
GRID = 4
SHARP_FRAMES = 4
SHARP_SIZE = 64
SHARP_CUTOFF = 0.25
WINDOW = 8
BANDS = 8
BITS = 16
MIN_VOTES = 2
MIN_OVERLAP = 4
MIN_OVERLAP_FRACTION = 0.5
READ_CHUNK = 32  # frames decoded per read_frames call (bounds memory for large videos)

KINDS = ("within-split", "cross-split", "leakage")


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------

def sample_step(fps: float, sample_fps: float = SAMPLE_FPS) -> int:
    """Decode every ``k``-th frame, ``k = max(1, round(fps / sample_fps))``."""
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
    return max(1, round(fps / sample_fps)) if fps > 0 else 1


def to_grey(frames) -> torch.Tensor:
    """RGB ``(N, H, W, 3)`` (uint8, 0..255) or greyscale ``(N, H, W)`` -> float32 ``(N, H, W)``
    greyscale in [0, 1] (BT.601 luma weights). Greyscale floats pass through unchanged."""
    x = torch.as_tensor(frames)
    if x.ndim == 4 and x.shape[-1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
        return (x.to(torch.float32) @ w) / 255.0
    if x.ndim == 3:
        return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    raise ValueError(f"expected frames shaped (N, H, W, 3) or (N, H, W), got {tuple(x.shape)}")


def pool(grey: torch.Tensor, size: int) -> torch.Tensor:
    """Area-pool greyscale frames ``(N, H, W)`` to ``(N, size, size)``."""
    if grey.shape[-2:] == (size, size):
        return grey
    return F.adaptive_avg_pool2d(grey[:, None], (size, size))[:, 0]


# --------------------------------------------------------------------------------------
# per-video statistics
# --------------------------------------------------------------------------------------

def temporal_stats(small: np.ndarray, rate: float) -> tuple[float, float]:
    """``(motion_energy, dominant_hz)`` of greyscale frames ``(T, h, w)`` sampled at ``rate`` Hz.

    motion_energy: per patch (grid cell), energy outside the DC bin of its temporal spectrum
    over its total energy, averaged (mean) over patches; 0 for a single frame or black video.
    dominant_hz: argmax over non-zero frequencies of the patch-summed power spectrum of the
    mean-removed, Hann-windowed signals, zero-padded to >= 8x their length for a fine grid.
    """
    x = np.asarray(small, dtype=np.float64).reshape(len(small), -1)
    t = x.shape[0]
    if t < 2:
        return 0.0, 0.0
    spec = np.fft.rfft(x, axis=0)  # unpadded: Parseval holds, the DC bin is exactly sum(x)
    power = np.abs(spec) ** 2
    weight = np.full(power.shape[0], 2.0)  # one-sided spectrum: bins 1.. stand for +-f
    weight[0] = 1.0
    if t % 2 == 0:
        weight[-1] = 1.0  # Nyquist bin appears once
    power *= weight[:, None]
    total = power.sum(axis=0)
    ok = total > 1e-12
    ratio = np.zeros(x.shape[1])
    ratio[ok] = 1.0 - power[0, ok] / total[ok]
    motion = float(np.clip(ratio.mean(), 0.0, 1.0))

    centred = (x - x.mean(axis=0)) * np.hanning(t + 2)[1:-1, None]  # no zero end samples
    n = next_fast_len(8 * t)
    psd = (np.abs(np.fft.rfft(centred, n=n, axis=0)) ** 2).sum(axis=1)
    psd[0] = 0.0
    if psd.max() <= 1e-20:
        return motion, 0.0
    return motion, float(np.argmax(psd) * rate / n)


def sharpness(grey, cutoff: float = SHARP_CUTOFF, max_size: int = SHARP_SIZE) -> float:
    """Fraction of spatial-spectrum energy above ``cutoff`` cycles/pixel, mean over frames.

    ``grey``: greyscale frames ``(N, H, W)`` at the video's resolution (or RGB uint8). Each
    frame's centre square is area-pooled by the integer factor ``side // max_size`` (none
    when smaller), its mean removed and a 2-D Hann window applied (so the frame border does
    not add a spurious edge); the score is the power at radial frequencies > ``cutoff`` over
    the power at all non-zero frequencies. Flat frames are skipped; all flat gives 0.
    """
    g = to_grey(grey)
    if g.shape[0] == 0:
        return 0.0
    h, w = g.shape[-2:]
    side = min(h, w)
    f = max(1, side // max_size)
    side -= side % f
    top, left = (h - side) // 2, (w - side) // 2
    g = g[:, top:top + side, left:left + side]
    if f > 1:
        g = F.avg_pool2d(g[:, None], f)[:, 0]
    x = g.numpy().astype(np.float64)
    n = x.shape[-1]
    x = x - x.mean(axis=(1, 2), keepdims=True)
    win = np.hanning(n + 2)[1:-1]
    x *= np.outer(win, win)
    p = np.abs(np.fft.rfft2(x)) ** 2
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    radius = np.hypot(fy, fx)
    weight = np.where((fx == 0) | ((n % 2 == 0) & (fx == 0.5)), 1.0, 2.0)  # one-sided along x
    p *= weight
    total = p[:, radius > 0].sum(axis=1)
    high = p[:, radius > cutoff].sum(axis=1)
    ok = total > 1e-12
    return float((high[ok] / total[ok]).mean()) if ok.any() else 0.0


def signature(frames, grid: int = GRID) -> np.ndarray:
    """Compact temporal signature ``(T, grid * grid)`` for duplicate search.

    ``frames``: RGB uint8 ``(T, H, W, 3)`` or greyscale ``(T, H, W)`` (e.g. the pooled frames),
    sampled at any rate. The mean intensity of each cell of a coarse ``grid`` x ``grid``
    layout, frame by frame, each channel made zero-mean over time and the whole array scaled
    to unit norm (all zeros when nothing changes). Coarse cell means survive re-encoding,
    rescaling and mild blur; a trimmed copy's signature is a sub-sequence of its source's.
    """
    grey = to_grey(frames)
    sig = F.adaptive_avg_pool2d(grey[:, None], (grid, grid)).reshape(len(grey), grid * grid)
    sig = sig.numpy().astype(np.float64)
    sig -= sig.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(sig)
    return sig / norm if norm > 1e-12 else sig


def video_stats(frames, fps: float, *, size: int = SIZE, sharp_frames: int = SHARP_FRAMES,
                sharp_cutoff: float = SHARP_CUTOFF, sharp_size: int = SHARP_SIZE) -> dict:
    """Statistics of frames sampled at ``fps`` Hz (RGB uint8 ``(T, H, W, 3)`` or greyscale).

    Returns ``{"motion_energy", "dominant_hz", "sharpness", "samples"}``; see the module
    docstring. Sharpness uses ``sharp_frames`` evenly spaced frames at full resolution.
    """
    grey = to_grey(frames)
    small = pool(grey, size).numpy().astype(np.float64)
    motion, hz = temporal_stats(small, fps)
    pick = _sharp_positions(len(grey), sharp_frames)
    sharp = sharpness(grey[pick], sharp_cutoff, sharp_size) if len(pick) else 0.0
    return {"motion_energy": motion, "dominant_hz": hz, "sharpness": sharp, "samples": len(grey)}


def _sharp_positions(t: int, n: int) -> np.ndarray:
    return np.unique(np.linspace(0, t - 1, n).round().astype(int)) if t and n > 0 else np.zeros(0, int)


# --------------------------------------------------------------------------------------
# one video file
# --------------------------------------------------------------------------------------

@dataclass
class VideoResult:
    motion_energy: float
    dominant_hz: float
    sharpness: float
    rate: float  # effective sampling rate of the signature (Hz)
    step: int  # source frames per signature step
    signature: np.ndarray = field(repr=False)


def analyse_video(path, num_frames: int, fps: float, *, sample_fps: float = SAMPLE_FPS,
                  size: int = SIZE, grid: int = GRID, sharp_frames: int = SHARP_FRAMES,
                  sharp_cutoff: float = SHARP_CUTOFF, sharp_size: int = SHARP_SIZE,
                  backend: str = "torchcodec") -> VideoResult:
    """Decode every k-th frame of ``path`` in chunks and compute its stats and signature.

    Full-resolution frames are kept only for the few sharpness frames, so memory stays small
    for long or large videos. Raises VideoDecodeError / IndexError naming the file.
    """
    if num_frames < 1:
        raise VideoDecodeError(f"{path}: manifest says it has {num_frames} frames")
    step = sample_step(fps, sample_fps)
    indices = np.arange(0, num_frames, step)
    keep = set(_sharp_positions(len(indices), sharp_frames).tolist())
    small, sharp = [], []
    for start in range(0, len(indices), READ_CHUNK):
        grey = to_grey(read_frames(path, indices[start:start + READ_CHUNK], backend))
        small.append(pool(grey, size))
        sharp += [grey[i - start] for i in range(start, start + len(grey)) if i in keep]
    small = torch.cat(small).numpy().astype(np.float64)
    rate = fps / step
    motion, hz = temporal_stats(small, rate)
    sharp_score = sharpness(torch.stack(sharp), sharp_cutoff, sharp_size) if sharp else 0.0
    return VideoResult(motion, hz, sharp_score, rate, step, signature(small, grid))


# --------------------------------------------------------------------------------------
# duplicate search
# --------------------------------------------------------------------------------------

def _windows(sig: np.ndarray, window: int) -> np.ndarray:
    """All windows (hop 1) of ``sig`` ``(T, C)`` as unit vectors ``(T - window + 1, window * C)``,
    each channel centred within its window; windows without any change are dropped."""
    t, c = sig.shape
    if t < window:
        return np.zeros((0, window * c))
    idx = np.arange(t - window + 1)[:, None] + np.arange(window)[None, :]
    w = sig[idx]  # (n, window, C)
    w = w - w.mean(axis=1, keepdims=True)
    w = w.reshape(len(w), -1)
    norm = np.linalg.norm(w, axis=1)
    ok = norm > 1e-9 * max(1.0, float(np.abs(sig).max()))
    return w[ok] / norm[ok, None]


def candidate_pairs(signatures: Sequence[np.ndarray], *, window: int = WINDOW, bands: int = BANDS,
                    bits: int = BITS, min_votes: int = MIN_VOTES, seed: int = 0,
                    max_bucket: int | None = None, stats: dict | None = None) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, worth aligning, found without comparing all pairs.

    Locality-sensitive hashing (random-hyperplane "SimHash") of signature windows:

    * every window of ``window`` steps (hop 1, so about one per step) becomes a unit vector,
      each channel centred within the window. A clip trimmed from another (or re-encoded,
      rescaled) contains the same windows up to a sub-step phase and coding noise, so a
      trimmed copy shares windows with its source whatever the cut point: the time offset
      is absorbed by indexing every position instead of by a shift-invariant feature;
    * each window is hashed with ``bands * bits`` random hyperplanes (fixed ``seed``) into
      ``bands`` keys of ``bits`` sign bits. Two vectors at angle ``theta`` agree on a bit with
      probability ``1 - theta / pi``: a matching window (cosine ~0.95, p ~0.9) shares a
      16-bit band key with probability ~0.19, an unrelated one (cosine ~0, p ~0.5) with
      probability 2**-16. Each video goes once into the bucket of each distinct (band, key);
    * pairs are counted over shared buckets and kept with at least ``min_votes`` votes. A
      duplicate shares many windows times several bands, so it gathers many votes; chance
      collisions of unrelated videos rarely happen twice.

    Work is one pass over the windows plus the pairs inside buckets; with distinct content
    buckets stay tiny and the number of candidates grows roughly linearly with the number
    of duplicates, not quadratically with the number of videos. ``max_bucket`` skips
    buckets holding more videos than that (degenerate content, e.g. thousands of copies of
    one intro); None keeps all. Signatures need the same channel count; those shorter than
    ``window`` steps are not indexed (so never candidates). ``stats`` (a dict), when given,
    receives counts: indexed videos, windows, buckets, skipped buckets, candidates.
    """
    sigs = [np.asarray(s, dtype=np.float64) for s in signatures]
    sigs = [s[:, None] if s.ndim == 1 else s for s in sigs]
    if not sigs:
        return set()
    channels = {s.shape[1] for s in sigs}
    if len(channels) != 1:
        raise ValueError(f"candidate_pairs: signatures have different channel counts {sorted(channels)}")
    if bits < 1 or bits > 62 or bands < 1 or window < 2:
        raise ValueError("candidate_pairs: need 1 <= bits <= 62, bands >= 1, window >= 2")
    dim = window * channels.pop()
    planes = np.random.default_rng(seed).standard_normal((dim, bands * bits))
    powers = (1 << np.arange(bits, dtype=np.int64))
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    n_windows = indexed = 0
    for i, s in enumerate(sigs):
        w = _windows(s, window)
        if not len(w):
            continue
        indexed += 1
        n_windows += len(w)
        signs = (w @ planes > 0).reshape(len(w), bands, bits)
        keys = (signs * powers).sum(axis=-1)  # (n, bands) int64
        for band, key in {(b, int(k)) for b in range(bands) for k in np.unique(keys[:, b])}:
            buckets[band, key].append(i)
    votes: Counter = Counter()
    skipped = 0
    for members in buckets.values():
        if len(members) < 2:
            continue
        if max_bucket is not None and len(members) > max_bucket:
            skipped += 1
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                votes[members[x], members[y]] += 1
    pairs = {p for p, v in votes.items() if v >= min_votes}
    if stats is not None:
        stats.update(indexed=indexed, windows=n_windows, buckets=len(buckets),
                     skipped_buckets=skipped, candidates=len(pairs))
    return pairs


def _prefix(x: np.ndarray) -> np.ndarray:
    """Prefix sums along axis 0 with a leading zero row: ``p[k] = x[:k].sum(0)``."""
    return np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])


def overlap_correlation(sig_a: np.ndarray, sig_b: np.ndarray, *, min_overlap: int = MIN_OVERLAP,
                        min_overlap_fraction: float = MIN_OVERLAP_FRACTION):
    """Pearson correlation of ``sig_b`` against ``sig_a`` at every lag, over the overlap only.

    Lag ``k`` puts ``b[j]`` against ``a[j + k]`` (``k`` from ``-(Tb - 1)`` to ``Ta - 1``).
    The cross products come from one batched FFT cross-correlation (:func:`svt.fft.correlate`,
    linear, so nothing wraps around); the overlap sums and sums of squares from prefix sums.
    Each channel is centred on the overlap, the channels pooled: score = cosine of the
    centred overlapping parts, in [-1, 1]. Lags whose overlap is shorter than
    ``max(min_overlap, min_overlap_fraction * min(Ta, Tb))`` steps, or on which either part is
    constant, get NaN. Returns ``(lags, scores)``.
    """
    a = np.asarray(sig_a, dtype=np.float64)
    b = np.asarray(sig_b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"align: channel counts differ ({a.shape[1]} vs {b.shape[1]})")
    ta, tb = len(a), len(b)
    if ta == 0 or tb == 0:
        return np.zeros(0, int), np.zeros(0)
    lags = np.arange(-(tb - 1), ta)
    sab = correlate(a.T, b.T, mode="full", axis=-1).sum(axis=0)  # (Ta + Tb - 1,)
    a_lo, a_hi = np.maximum(lags, 0), np.minimum(tb + lags, ta)  # a[a_lo:a_hi] overlaps
    b_lo, b_hi = a_lo - lags, a_hi - lags  # ... b[b_lo:b_hi]
    n = (a_hi - a_lo).astype(np.float64)
    pa, pa2 = _prefix(a), _prefix(a * a)
    pb, pb2 = _prefix(b), _prefix(b * b)
    sa, sb = pa[a_hi] - pa[a_lo], pb[b_hi] - pb[b_lo]  # (lags, C)
    sab_c = sab - (sa * sb).sum(axis=1) / n
    va = (pa2[a_hi] - pa2[a_lo]).sum(axis=1) - (sa * sa).sum(axis=1) / n
    vb = (pb2[b_hi] - pb2[b_lo]).sum(axis=1) - (sb * sb).sum(axis=1) / n
    need = max(min_overlap, math.ceil(min_overlap_fraction * min(ta, tb)))
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-300) ** 2
    ok = (n >= need) & (va > 1e-10 * scale * n) & (vb > 1e-10 * scale * n)
    score = np.full(len(lags), np.nan)
    score[ok] = np.clip(sab_c[ok] / np.sqrt(va[ok] * vb[ok]), -1.0, 1.0)
    return lags, score


def align(sig_a: np.ndarray, sig_b: np.ndarray, *, min_overlap: int = MIN_OVERLAP,
          min_overlap_fraction: float = MIN_OVERLAP_FRACTION) -> tuple[float, float]:
    """Best alignment of ``sig_b`` inside ``sig_a``: ``(offset_steps, score)``.

    ``b[0]`` matches ``a[offset_steps]`` (negative: ``a`` starts inside ``b``). The integer lag
    maximising :func:`overlap_correlation` is refined to a fraction of a step by fitting a
    parabola through the scores at the lags either side (clamped to +-0.5): clips sampled
    every k-th frame meet at any phase, so the true offset usually falls between steps.
    ``score`` is the correlation at the best integer lag, in [-1, 1]; ``(0.0, 0.0)`` when
    no lag has enough overlap.
    """
    lags, score = overlap_correlation(sig_a, sig_b, min_overlap=min_overlap,
                                      min_overlap_fraction=min_overlap_fraction)
    if not len(score) or np.all(np.isnan(score)):
        return 0.0, 0.0
    best = int(np.nanargmax(score))
    peak = float(score[best])
    frac = 0.0
    if 0 < best < len(score) - 1 and not np.isnan(score[best - 1]) and not np.isnan(score[best + 1]):
        left, right = score[best - 1], score[best + 1]
        curv = left - 2 * peak + right
        if curv < 0:
            frac = float(np.clip(0.5 * (left - right) / curv, -0.5, 0.5))
    return float(lags[best]) + frac, peak


@dataclass(frozen=True)
class Duplicate:
    i: int
    j: int  # signature j starts ``offset_steps`` into signature i (offset >= 0)
    offset_steps: float  # in steps of ``rate``
    score: float
    rate: float


def resample(sig: np.ndarray, rate: float, target: float) -> np.ndarray:
    """Linear interpolation of a signature ``(T, C)`` from ``rate`` Hz to ``target`` Hz."""
    if abs(rate - target) <= 1e-9 * target or len(sig) < 2:
        return sig
    t_old = np.arange(len(sig)) / rate
    t_new = np.arange(int(math.floor(t_old[-1] * target)) + 1) / target
    return np.stack([np.interp(t_new, t_old, sig[:, c]) for c in range(sig.shape[1])], axis=1)


def find_duplicates(signatures: Sequence[np.ndarray], rates: Sequence[float] | None = None, *,
                    threshold: float = DUPLICATE_THRESHOLD, window: int = WINDOW,
                    bands: int = BANDS, bits: int = BITS, min_votes: int = MIN_VOTES,
                    min_overlap: int = MIN_OVERLAP, min_overlap_fraction: float = MIN_OVERLAP_FRACTION,
                    seed: int = 0, max_bucket: int | None = None,
                    stats: dict | None = None) -> list[Duplicate]:
    """Near-duplicate pairs among ``signatures``, best score first.

    Candidates from :func:`candidate_pairs`, each confirmed with :func:`align`; pairs scoring
    ``>= threshold`` are returned, ordered so that the offset is >= 0 (``j`` starts inside
    ``i``). ``rates`` (Hz per signature; default all 1): signatures at a rate other than the
    most common one are resampled to it first, and ``Duplicate.rate`` is that common rate.
    ``window`` shrinks to the shortest signature (but not below 4 steps) so short clips are
    still indexed. ``stats`` (a dict) receives the counts of :func:`candidate_pairs` plus
    ``aligned`` (align() calls), ``all_pairs`` and ``window``.
    """
    n = len(signatures)
    rates = [1.0] * n if rates is None else [float(r) for r in rates]
    if len(rates) != n:
        raise ValueError(f"find_duplicates: {n} signatures but {len(rates)} rates")
    sigs = [np.asarray(s, dtype=np.float64) for s in signatures]
    sigs = [s[:, None] if s.ndim == 1 else s for s in sigs]
    common = Counter(rates).most_common(1)[0][0] if n else 1.0
    sigs = [resample(s, r, common) for s, r in zip(sigs, rates)]
    lengths = [len(s) for s in sigs if len(s)]
    win = max(4, min([window] + lengths)) if lengths else window
    local = {} if stats is None else stats
    pairs = candidate_pairs(sigs, window=win, bands=bands, bits=bits, min_votes=min_votes,
                            seed=seed, max_bucket=max_bucket, stats=local)
    found = []
    for i, j in sorted(pairs):
        offset, score = align(sigs[i], sigs[j], min_overlap=min_overlap,
                              min_overlap_fraction=min_overlap_fraction)
        if score >= threshold:
            found.append(Duplicate(i, j, offset, score, common) if offset >= 0
                         else Duplicate(j, i, -offset, score, common))
    local.update(aligned=len(pairs), all_pairs=n * (n - 1) // 2, window=win)
    return sorted(found, key=lambda d: (-d.score, d.i, d.j))


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------

def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, value


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def tsv_name(manifest: str) -> str:
    """``demo/train`` -> ``videos-demo-train.tsv``."""
    return "videos-" + manifest.replace("/", "-").replace(os.sep, "-") + ".tsv"


def duplicate_kind(split_a: str, split_b: str, pretrain: str | None) -> str:
    if split_a == split_b:
        return "within-split"
    if pretrain is not None and pretrain in (split_a, split_b):
        return "leakage"
    return "cross-split"


def _videos_root(name: str, roots: dict[str, str]) -> str:
    """The root for manifest ``name``: its own ``--videos-root``, else its dataset prefix's."""
    parts = name.split("/")
    for k in range(len(parts), 0, -1):
        key = "/".join(parts[:k])
        if key in roots:
            return roots[key]
    raise KeyError(name)


def _tsv_cell(value) -> str:
    text = str(value)
    return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_tsv_cell(v) for v in row) + "\n")
    os.replace(tmp, path)


def _plot_motion(path: Path, motion: dict[str, list[float]], threshold: float, static_on: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for vs in motion.values() for v in vs]
    floor = 1e-6
    lo = math.log10(max(min(values + [threshold]), floor)) - 0.2 if values else -4
    hi = math.log10(max(max(values + [threshold]), floor)) + 0.2 if values else 0
    bins = np.logspace(lo, hi, 30)
    for name, vs in motion.items():
        if vs:
            ax.hist(np.maximum(vs, floor), bins=bins, alpha=0.6, label=f"{name} ({len(vs)})")
    ax.axvline(threshold, color="k", linestyle="--",
               label=f"threshold {threshold:g}" + ("" if static_on else " (static check off)"))
    ax.set_xscale("log")
    ax.set_xlabel("motion energy (energy outside DC / total, mean over patches)")
    ax.set_ylabel("videos")
    ax.set_title("Motion energy per video")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_duplicates(path: Path, records: list[dict], sigs: list[np.ndarray], rates: list[float],
                     threshold: float, enabled: bool, top: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if records:
        for kind, marker in zip(KINDS, "os^"):
            pts = [(r["offset_frames"], r["score"]) for r in records if r["kind"] == kind]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=f"{kind} ({len(pts)})")
        ax.legend(fontsize=8)
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("offset (frames of a)")
    ax.set_ylabel("score")
    ax.set_title("Duplicate pairs" if enabled else "Duplicate search off")
    ax = axes[1]
    for r in records[:top]:
        a, b = sigs[r["_i"]], sigs[r["_j"]]
        ta = np.arange(len(a)) / rates[r["_i"]]
        tb = np.arange(len(b)) / rates[r["_j"]] + r["_offset_s"]
        line = ax.plot(ta, a.mean(axis=1), linewidth=1.5)[0]
        ax.plot(tb, b.mean(axis=1), linestyle="--", color=line.get_color(),
                label=f"{Path(r['a']).name[:22]} / {Path(r['b']).name[:22]} ({r['score']:.2f})")
    if records:
        ax.legend(fontsize=7)
    ax.set_xlabel("time in a (s)")
    ax.set_ylabel("signature (mean over cells)")
    ax.set_title(f"Top {min(top, len(records))} pairs aligned at their offset")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_to_mlflow(args, out_dir: Path, files: list[Path], metrics: dict[str, float]) -> None:
    if not args.tracking_uri:
        return
    from svt.tracking import Tracker

    prior = None
    if args.run_id:
        try:  # attaching sets the run RUNNING; put its status back afterwards
            from mlflow.tracking import MlflowClient

            prior = MlflowClient(tracking_uri=args.tracking_uri).get_run(args.run_id).info.status
        except Exception as err:
            log.warning("cannot read MLflow run %s: %s", args.run_id, err)
    tracker = Tracker(args.tracking_uri, args.experiment, run_id=args.run_id,
                      run_name="curate", tags={"svt.stage": "curate", "svt.out_dir": str(out_dir)})
    tracker.log_metrics(metrics, step=0)
    for f in files:
        tracker.log_artifact(f, "curation")
    if args.run_id is None:
        tracker.finish()
    elif prior and prior != "RUNNING":
        tracker.finish(prior)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.curate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=_name_value, action="append", required=True,
                    metavar="NAME=PATH", help="a manifest CSV and its name (e.g. demo/train); repeatable")
    ap.add_argument("--videos-root", type=_name_value, action="append", required=True,
                    metavar="NAME=DIR", help="folder the paths of manifest NAME are relative to; "
                    "NAME may also be a prefix (demo covers demo/train and demo/test)")
    ap.add_argument("--pretrain", help="the manifest feeding pretraining (default: the first)")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--motion-threshold", type=float, default=MOTION_THRESHOLD,
                    help=f"flag clips below this motion energy as static (default {MOTION_THRESHOLD})")
    ap.add_argument("--duplicate-threshold", type=float, default=DUPLICATE_THRESHOLD,
                    help=f"report pairs scoring at least this (default {DUPLICATE_THRESHOLD})")
    ap.add_argument("--sample-fps", type=_positive(float), default=SAMPLE_FPS)
    ap.add_argument("--size", type=_positive(int), default=SIZE, help="temporal analysis grid (pixels)")
    ap.add_argument("--grid", type=_positive(int), default=GRID, help="signature cells per side")
    ap.add_argument("--static", type=_on_off, default=True, metavar="on|off")
    ap.add_argument("--duplicates", type=_on_off, default=True, metavar="on|off")
    ap.add_argument("--decoder", choices=BACKENDS, default="torchcodec")
    ap.add_argument("--jobs", type=_positive(int), default=1, help="videos decoded in parallel (threads)")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--experiment", default="svt-curate")
    ap.add_argument("--run-id", default=None, help="log into this existing MLflow run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    names = [n for n, _ in args.manifest]
    if len(set(names)) != len(names):
        ap.error(f"manifest names must be distinct, got {names}")
    roots = dict(args.videos_root)
    try:
        root_of = {n: Path(_videos_root(n, roots)) for n in names}
    except KeyError as err:
        ap.error(f"no --videos-root for manifest {err.args[0]!r}")
    pretrain = args.pretrain or names[0]
    if pretrain not in names:
        ap.error(f"--pretrain {pretrain!r} is not one of the --manifest names {names}")
    if args.jobs > 1:
        torch.set_num_threads(1)  # parallelism comes from the thread pool
    started = time.monotonic()
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    manifests: dict[str, list[ManifestRow]] = {}
    for name, path in args.manifest:
        try:
            manifests[name] = read_rows(path, ManifestRow)
        except (OSError, ValueError) as err:
            print(f"error: cannot read manifest {name}={path}: {err}", file=sys.stderr)
            return 2

    jobs = [(name, k, row) for name in names for k, row in enumerate(manifests[name])]
    results: dict[tuple[str, int], VideoResult] = {}
    unreadable: list[dict] = []

    def work(job):
        name, _, row = job
        return analyse_video(root_of[name] / row.path, row.frames, row.fps, sample_fps=args.sample_fps,
                             size=args.size, grid=args.grid, backend=args.decoder)

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=args.jobs) as pool_:
        futures = {pool_.submit(work, job): job for job in jobs}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="curate", unit="video",
                        disable=args.no_progress):
            name, k, row = futures[fut]
            try:
                results[name, k] = fut.result()
            except (VideoDecodeError, IndexError, OSError, RuntimeError, ValueError) as err:
                msg = str(err) if str(root_of[name] / row.path) in str(err) else \
                    f"{root_of[name] / row.path}: {err}"
                log.warning("skipping unreadable video: %s", msg)
                unreadable.append({"manifest": name, "path": row.path, "error": msg})
    unreadable.sort(key=lambda u: (names.index(u["manifest"]), u["path"]))

    # --- static clips and per-manifest reports
    static: list[dict] = []
    per_manifest: dict[str, dict] = {}
    motion: dict[str, list[float]] = {}
    files: list[Path] = []
    for name in names:
        lines = []
        for k, row in enumerate(manifests[name]):
            res = results.get((name, k))
            if res is None:
                continue
            is_static = args.static and res.motion_energy < args.motion_threshold
            if is_static:
                static.append({"manifest": name, "path": row.path, "motion_energy": res.motion_energy})
            lines.append((row.path, row.label_name, row.frames, f"{res.motion_energy:.6g}",
                          f"{res.dominant_hz:.4g}", f"{res.sharpness:.4g}", int(is_static)))
        motion[name] = [results[name, k].motion_energy for k in range(len(manifests[name]))
                        if (name, k) in results]
        path = out_dir / tsv_name(name)
        write_tsv(path, ("path", "label_name", "frames", "motion_energy", "dominant_hz", "sharpness",
                         "static"), lines)
        files.append(path)
        per_manifest[name] = {
            "videos": len(manifests[name]),
            "analysed": len(lines),
            "unreadable": sum(u["manifest"] == name for u in unreadable),
            "static": sum(s["manifest"] == name for s in static),
        }

    # --- pretraining manifest: static and unreadable clips left out (files untouched)
    dropped = {(s["manifest"], s["path"]) for s in static} | {(u["manifest"], u["path"]) for u in unreadable}
    kept = [r for r in manifests[pretrain] if (pretrain, r.path) not in dropped]
    write_rows(out_dir / "pretrain_manifest.csv", kept, ManifestRow)
    files.append(out_dir / "pretrain_manifest.csv")

    # --- duplicates
    keys = [key for key in ((name, k) for name in names for k in range(len(manifests[name])))
            if key in results]
    sigs = [results[key].signature for key in keys]
    rates = [results[key].rate for key in keys]
    dup_stats: dict = {}
    records: list[dict] = []
    if args.duplicates and len(keys) > 1:
        for d in find_duplicates(sigs, rates, threshold=args.duplicate_threshold, stats=dup_stats):
            (na, ka), (nb, kb) = keys[d.i], keys[d.j]
            ra, rb = manifests[na][ka], manifests[nb][kb]
            offset_s = d.offset_steps / d.rate
            records.append({"a": ra.path, "b": rb.path, "split_a": na, "split_b": nb,
                            "kind": duplicate_kind(na, nb, pretrain),
                            "offset_frames": int(round(offset_s * ra.fps)), "score": d.score,
                            "_i": d.i, "_j": d.j, "_offset_s": offset_s})
    dup_path = out_dir / "duplicates.tsv"
    write_tsv(dup_path, ("a", "b", "split_a", "split_b", "kind", "offset_frames", "score"),
              ((r["a"], r["b"], r["split_a"], r["split_b"], r["kind"], r["offset_frames"],
                f"{r['score']:.4f}") for r in records))
    files.append(dup_path)

    # --- plots
    _plot_motion(out_dir / "motion_energy.png", motion, args.motion_threshold, args.static)
    _plot_duplicates(out_dir / "duplicates.png", records, sigs, rates, args.duplicate_threshold,
                     args.duplicates)
    files += [out_dir / "motion_energy.png", out_dir / "duplicates.png"]

    by_kind = Counter(r["kind"] for r in records)
    summary = {
        "manifests": per_manifest,
        "pretrain": {"manifest": pretrain, "rows": len(manifests[pretrain]), "kept": len(kept),
                     "removed_static": sum(s["manifest"] == pretrain for s in static),
                     "removed_unreadable": sum(u["manifest"] == pretrain for u in unreadable)},
        "static": static,
        "unreadable": unreadable,
        "duplicates": {"enabled": args.duplicates, "pairs": len(records),
                       **{kind: by_kind.get(kind, 0) for kind in KINDS},
                       "candidates": dup_stats.get("candidates", 0),
                       "aligned": dup_stats.get("aligned", 0),
                       "all_pairs": len(keys) * (len(keys) - 1) // 2},
        "config": {"motion_threshold": args.motion_threshold, "static": args.static,
                   "duplicate_threshold": args.duplicate_threshold, "duplicates": args.duplicates,
                   "sample_fps": args.sample_fps, "size": args.size, "grid": args.grid,
                   "decoder": args.decoder, "window": dup_stats.get("window", WINDOW),
                   "bands": BANDS, "bits": BITS, "min_votes": MIN_VOTES},
        "seconds": round(time.monotonic() - started, 3),
    }
    summary_path = out_dir / "summary.json"
    tmp = summary_path.with_name(f".{summary_path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)
    files.append(summary_path)

    metrics = {"curate.videos": len(jobs), "curate.analysed": len(results),
               "curate.unreadable": len(unreadable), "curate.static": len(static),
               "curate.duplicates": len(records), "curate.pretrain_kept": len(kept),
               **{f"curate.duplicates.{kind}": by_kind.get(kind, 0) for kind in KINDS}}
    _log_to_mlflow(args, out_dir, files, metrics)

    log.info("curation: %d videos, %d static, %d unreadable, %d duplicate pairs (%d leakage); "
             "pretraining keeps %d of %d -> %s", len(jobs), len(static), len(unreadable), len(records),
             by_kind.get("leakage", 0), len(kept), len(manifests[pretrain]), out_dir)
    if jobs and not results:
        print("error: no video could be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
