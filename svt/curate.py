"""Curation before pretraining: static clips and near-duplicate / leaked clips, found with FFTs.

    python -m svt.curate --manifest demo/train=M1.csv --manifest demo/test=M2.csv \\
        --videos-root demo=VIDEOS --pretrain demo/train --out-dir OUT \\
        [--motion-threshold 5e-4] [--duplicate-threshold 0.9] [--sample-fps 8] [--size 32] \\
        [--static on|off] [--duplicates on|off] [--decoder torchcodec] [--jobs N] \\
        [--tracking-uri URI [--experiment NAME] [--run-id ID]]

Per video, every frame is decoded, area-pooled to a ``size`` x ``size`` RGB grid, and blocks
of ``k = round(fps / sample_fps)`` consecutive frames are averaged, leaving about
``sample_fps`` samples per second (effective rate ``fps / k``; see :func:`analyse_video`
for why blocks rather than every k-th frame). From those samples:

* **motion energy** - every grid cell is a patch; the FFT over time of its colour values
  gives a temporal spectrum, and a patch's motion energy is the energy outside the
  zero-frequency (DC) bin over its total energy, DC included (by Parseval
  ``var / (var + mean**2)``). The video's score is that ratio over the 10% of patches with
  the most energy outside DC, as a ratio of sums (:func:`temporal_stats`) - neither the
  median nor the mean over all patches: the subject of a clip often covers a few percent
  of the frame, and the static rest drowns it. Measured on the 162 demo clips against
  still images with light noise: the median over patches ranks 44 moving clips at or
  below a still one, the mean separates them by only 4x (2.6e-4 vs 6e-5), the top-10%
  ratio by 22x (2.0e-3 vs 9e-5). Colour rather than greyscale: some demo objects have
  nearly the background's luma, and in greyscale a moving clip scored below a still one.
* **dominant frequency** (Hz) - the peak of the patch-summed power spectrum of the
  mean-removed, Hann-windowed, zero-padded patch signals, excluding DC.
* **sharpness** - on a few full-resolution greyscale frames: the fraction of the spatial
  power spectrum above a radial frequency cut-off (:func:`sharpness`). Blurring lowers it.
* **signatures** - colour means of a coarse ``grid`` x ``grid`` layout over time at the
  sample rate (:func:`signature`), plus a 2x2 one at the full frame rate, used only to
  refine offsets to the exact frame.

Clips whose motion energy is below ``--motion-threshold`` are flagged static and left out
of the pretraining manifest (listed in the reports; no file is ever deleted).

Duplicates: :func:`candidate_pairs` proposes pairs by locality-sensitive hashing of
signature windows, without comparing all pairs; :func:`align` confirms each with an FFT
cross-correlation (:func:`svt.fft.correlate`) normalised over the overlap, giving the
offset and a score in [-1, 1]; :func:`refine_offset` fixes the offset to the frame. Pairs at
or above ``--duplicate-threshold`` are reported: within one manifest ("within-split"),
between two evaluation manifests ("cross-split"), or between the pretraining manifest and
another ("leakage": evaluation clips seen in pretraining inflate reported accuracy).
Limitation: a duplicate is recognised by how its content changes over time, so copies of
clips whose coarse colour layout hardly changes (static clips; an object turning in place)
are not found.

Outputs in ``--out-dir``: ``videos-<name>.tsv`` per manifest (``/`` in the name becomes
``-``), ``duplicates.tsv``, ``pretrain_manifest.csv``, ``summary.json``,
``motion_energy.png`` and ``duplicates.png``; optionally logged to MLflow.
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
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from svt import tracking
from svt.atomic import atomic_write, write_text_atomic
from svt.fft import correlate, next_fast_len
from svt.loader import CPU_BACKENDS, VideoDecodeError, read_frames
from svt.manifest import ManifestRow, read_rows, write_rows

log = logging.getLogger("svt.curate")

# Static check (calibration: tests/test_curate.py and the module's report). On the demo
# data (162 decoded clips) the least-moving clip scores 2.0e-3 and real camera clips
# 0.12-0.24; still images with light noise, re-encoded, score 6e-5..9e-5.
MOTION_THRESHOLD = 5e-4
MOTION_TOP = 0.1  # fraction of patches (most energy outside DC) the motion energy uses
SAMPLE_FPS = 8.0
SIZE = 32
# Duplicates. Demo data: unrelated pairs score at most 0.82 (p99.9 0.59), trimmed and
# re-encoded copies 0.95-0.98.
DUPLICATE_THRESHOLD = 0.9
GRID = 8  # signature: 3 * 8 * 8 = 192 channels at the sample rate
FINE_GRID = 2  # offset refinement: 3 * 2 * 2 = 12 channels at the full frame rate
WINDOW = 8  # LSH window, in samples (about 1 s)
BANDS = 8
BITS = None  # LSH bits per band: auto_bits(number of windows)
MIN_VOTES = 2
MIN_OVERLAP = 4
MIN_OVERLAP_FRACTION = 0.5
# Sharpness
SHARP_FRAMES = 4
SHARP_SIZE = 64
SHARP_CUTOFF = 0.25
READ_CHUNK = 64  # consecutive frames per read_frames call (bounds memory for long videos)

KINDS = ("within-split", "cross-split", "leakage")


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------

def sample_step(fps: float, sample_fps: float = SAMPLE_FPS) -> int:
    """Frames per sample: ``k = max(1, round(fps / sample_fps))`` (1 for an unknown fps)."""
    if sample_fps <= 0:
        raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
    return max(1, round(fps / sample_fps)) if fps > 0 else 1


def to_float(frames) -> torch.Tensor:
    """RGB ``(N, H, W, 3)`` or greyscale ``(N, H, W)`` frames (uint8 0..255, or floats in
    [0, 1]) -> float32 ``(N, C, H, W)`` in [0, 1], C = 3 or 1."""
    x = torch.as_tensor(frames)
    if x.ndim == 4 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    elif x.ndim == 3:
        x = x[:, None]
    else:
        raise ValueError(f"expected frames shaped (N, H, W, 3) or (N, H, W), got {tuple(x.shape)}")
    return x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> greyscale ``(N, H, W)`` (BT.601 weights when C = 3)."""
    if x.shape[1] == 1:
        return x[:, 0]
    return torch.einsum("nchw,c->nhw", x, torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype))


def to_grey(frames) -> torch.Tensor:
    """Frames in any form :func:`to_float` accepts -> float32 greyscale ``(N, H, W)`` in [0, 1]."""
    return luma(to_float(frames))


def pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-pool ``(N, C, H, W)`` frames to ``(N, C, size, size)``."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.adaptive_avg_pool2d(x, (size, size))


# --------------------------------------------------------------------------------------
# per-video statistics
# --------------------------------------------------------------------------------------

def patch_energies(small) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: (energy outside the DC bin, total energy) of its temporal spectrum.

    ``small``: ``(T, C, h, w)`` (or ``(T, h, w)``) pooled frames; every grid cell is a patch
    and its C colour channels are summed. Computed from the unpadded real FFT over time,
    so Parseval holds and the DC bin is exactly the sum over time (total = T * sum x**2).
    """
    x = np.asarray(small, dtype=np.float64)
    x = x[:, None] if x.ndim == 3 else x
    t = x.shape[0]
    x = x.reshape(t, x.shape[1], -1)  # (T, C, P)
    power = np.abs(np.fft.rfft(x, axis=0)) ** 2
    weight = np.full(power.shape[0], 2.0)  # one-sided spectrum: bin f stands for +-f
    weight[0] = 1.0
    if t % 2 == 0:
        weight[-1] = 1.0  # the Nyquist bin appears once
    power *= weight[:, None, None]
    total = power.sum(axis=(0, 1))
    return total - power[0].sum(axis=0), total


def temporal_stats(small, rate: float, top: float = MOTION_TOP) -> tuple[float, float]:
    """``(motion_energy, dominant_hz)`` of pooled frames ``(T, C, h, w)`` sampled at ``rate`` Hz.

    motion_energy: over the ``top`` fraction of patches with the most energy outside the DC
    bin (the region that moves), that energy over their total energy (a ratio of sums, so
    dark patches, whose tiny DC makes any noise look like motion, do not dominate); ``top=1``
    gives the ratio over the whole frame. 0 for a single frame or a black video.
    dominant_hz: argmax over non-zero frequencies of the power spectrum summed over patches
    and channels, of the mean-removed, Hann-windowed signals zero-padded to >= 8x their
    length (a fine frequency grid); 0 when nothing changes.
    """
    x = np.asarray(small, dtype=np.float64)
    x = x[:, None] if x.ndim == 3 else x
    t = x.shape[0]
    if t < 2:
        return 0.0, 0.0
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    ac, total = patch_energies(x)
    k = max(1, int(round(top * len(ac))))
    sel = np.argsort(-ac, kind="stable")[:k]
    denom = total[sel].sum()
    motion = float(np.clip(ac[sel].sum() / denom, 0.0, 1.0)) if denom > 1e-12 else 0.0

    flat = x.reshape(t, -1)
    centred = (flat - flat.mean(axis=0)) * np.hanning(t + 2)[1:-1, None]  # no zero end samples
    n = next_fast_len(8 * t)
    psd = (np.abs(np.fft.rfft(centred, n=n, axis=0)) ** 2).sum(axis=1)
    psd[0] = 0.0
    if psd.max() <= 1e-20:
        return motion, 0.0
    return motion, float(np.argmax(psd) * rate / n)


def sharpness(frames, cutoff: float = SHARP_CUTOFF, max_size: int = SHARP_SIZE) -> float:
    """Fraction of spatial-spectrum energy above ``cutoff`` cycles/pixel, mean over frames.

    ``frames``: greyscale ``(N, H, W)`` or RGB at the video's resolution. Each frame's centre
    square is area-pooled by the integer factor ``side // max_size`` (none when smaller),
    its mean removed and a 2-D Hann window applied (so the frame border adds no spurious
    edge); the score is the power at radial frequencies > ``cutoff`` over the power at all
    non-zero frequencies (Nyquist is 0.5). Flat frames are skipped; all flat gives 0.
    """
    g = to_grey(frames) if not (isinstance(frames, torch.Tensor) and frames.ndim == 3
                                and frames.is_floating_point()) else frames
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


def _cells(x: torch.Tensor, grid: int) -> np.ndarray:
    """Mean of each channel over each cell of a ``grid`` x ``grid`` layout: ``(T, C * grid**2)``."""
    return F.adaptive_avg_pool2d(x.to(torch.float32), (grid, grid)).reshape(len(x), -1).numpy()


def _normalise(sig: np.ndarray) -> np.ndarray:
    """Each channel zero-mean over time, the whole array unit norm (all zeros if constant)."""
    sig = np.asarray(sig, dtype=np.float64)
    sig = sig - sig.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(sig)
    return sig / norm if norm > 1e-12 else sig


def signature(frames, grid: int = GRID) -> np.ndarray:
    """Compact temporal signature ``(T, 3 * grid * grid)``, float32, for duplicate search.

    ``frames``: RGB ``(T, H, W, 3)`` (or greyscale ``(T, H, W)``: ``grid**2`` channels)
    sampled at any rate. The mean of each colour channel over each cell of a coarse
    ``grid`` x ``grid`` layout, frame by frame; each channel made zero-mean over time and
    the whole array scaled to unit norm (all zeros when nothing changes). Coarse cell means
    survive re-encoding, rescaling and mild blur, and a trimmed copy's signature is a
    sub-sequence of its source's. Colour matters: on the demo data, luma cells let
    unrelated clips (smooth motions of large flat objects) correlate up to 0.97, colour
    cells up to 0.82 (8x8 grid, 162 clips, 13k pairs), while trimmed copies score > 0.95.
    """
    return _normalise(_cells(to_float(frames), grid)).astype(np.float32)


def video_stats(frames, fps: float, *, size: int = SIZE, top: float = MOTION_TOP,
                sharp_frames: int = SHARP_FRAMES, sharp_cutoff: float = SHARP_CUTOFF,
                sharp_size: int = SHARP_SIZE) -> dict:
    """Statistics of frames sampled at ``fps`` Hz (RGB uint8 ``(T, H, W, 3)`` or greyscale).

    Returns ``{"motion_energy", "dominant_hz", "sharpness", "samples"}``; see the module
    docstring. Sharpness uses ``sharp_frames`` evenly spaced frames at full resolution.
    """
    x = to_float(frames)
    motion, hz = temporal_stats(pool(x, size).numpy(), fps, top)
    pick = _sharp_positions(len(x), sharp_frames)
    sharp = sharpness(luma(x[pick]), sharp_cutoff, sharp_size) if len(pick) else 0.0
    return {"motion_energy": motion, "dominant_hz": hz, "sharpness": sharp, "samples": len(x)}


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
    fps: float  # the video's frame rate
    step: int  # frames per sample; the sample rate is fps / step
    signature: np.ndarray = field(repr=False)  # (T, 3 * grid**2) float32 at the sample rate
    fine: np.ndarray = field(repr=False)  # (frames, 12) float16 at the full frame rate

    @property
    def rate(self) -> float:
        return self.fps / self.step


def analyse_video(path, num_frames: int, fps: float, *, sample_fps: float = SAMPLE_FPS,
                  size: int = SIZE, top: float = MOTION_TOP, grid: int = GRID,
                  fine_grid: int = FINE_GRID, sharp_frames: int = SHARP_FRAMES,
                  sharp_cutoff: float = SHARP_CUTOFF, sharp_size: int = SHARP_SIZE,
                  backend: str = "torchcodec", chunk: int = READ_CHUNK) -> VideoResult:
    """Statistics and signatures of one video file with ``num_frames`` frames at ``fps``.

    Every frame is decoded (in runs of consecutive frames, so memory stays bounded),
    area-pooled to ``size`` x ``size`` RGB at once, and each block of
    ``k = round(fps / sample_fps)`` consecutive pooled frames is averaged into one sample
    (area pooling in time; a trailing partial block is dropped unless it is the only one).

    Why not decode only every k-th frame: the codec decodes the frames in between anyway
    (each depends on the ones before it, back to a keyframe), so skipping them saves only
    the colour conversion (torchcodec, here, read every 4th frame of a 300-frame clip 4x
    slower than all of them), while the block mean is an anti-aliasing filter: two copies
    of a clip that start at different phases of the k-frame grid give nearly the same
    samples, which keeps duplicate scores high and coarse offsets within a fraction of a
    step. The full rate also yields the small ``fine`` signature that pins offsets to the
    frame. Only the ``sharp_frames`` sharpness frames are kept at full resolution.

    Raises VideoDecodeError / IndexError naming the file.
    """
    if num_frames < 1:
        raise VideoDecodeError(f"{path}: manifest says it has {num_frames} frames")
    step = sample_step(fps, sample_fps)
    chunk = step * max(1, -(-chunk // step))  # whole blocks per read
    keep = set(np.linspace(0, num_frames - 1, sharp_frames).round().astype(int).tolist()) \
        if sharp_frames > 0 else set()
    blocks, fine, sharp = [], [], []
    for start in range(0, num_frames, chunk):
        x = to_float(read_frames(path, np.arange(start, min(start + chunk, num_frames)), backend))
        p = pool(x, size)
        fine.append(_cells(p, fine_grid))
        whole = len(p) // step * step
        if whole:
            blocks.append(p[:whole].reshape(whole // step, step, *p.shape[1:]).mean(dim=1))
        elif not blocks and start + len(p) >= num_frames:  # shorter than one block
            blocks.append(p.mean(dim=0, keepdim=True))
        sharp += [luma(x[i - start:i - start + 1])[0] for i in sorted(keep) if start <= i < start + len(x)]
    small = torch.cat(blocks)
    motion, hz = temporal_stats(small.numpy(), fps / step, top)
    sharp_score = sharpness(torch.stack(sharp), sharp_cutoff, sharp_size) if sharp else 0.0
    return VideoResult(motion, hz, sharp_score, float(fps), step,
                       _normalise(_cells(small, grid)).astype(np.float32),
                       _normalise(np.concatenate(fine)).astype(np.float16))


# --------------------------------------------------------------------------------------
# duplicate search
# --------------------------------------------------------------------------------------

def _windows(sig: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows (hop 1) of ``sig`` ``(T, C)`` as unit vectors ``(n, window * C)``, each
    channel centred within its window, and their start samples; windows in which nothing
    changes are dropped."""
    t, c = sig.shape
    if t < window:
        return np.zeros((0, window * c)), np.zeros(0, dtype=np.int64)
    idx = np.arange(t - window + 1)[:, None] + np.arange(window)[None, :]
    w = sig[idx]  # (n, window, C)
    w = (w - w.mean(axis=1, keepdims=True)).reshape(len(w), -1)
    norm = np.linalg.norm(w, axis=1)
    ok = norm > 1e-9 * max(1e-30, float(np.abs(sig).max()))
    return w[ok] / norm[ok, None], np.flatnonzero(ok)


def auto_bits(windows: int) -> int:
    """Bits per LSH band for ``windows`` indexed windows: ``log2(windows) + 4``, 16 to 62.

    Unrelated windows share a key with probability ``2**-bits``, so among ``W`` windows a
    band holds about ``W**2 / 2**(bits + 1)`` chance collisions: with ``bits = log2(W) + 4``
    that is ``W / 32``, growing linearly with the data instead of quadratically. Matching
    windows (p ~0.9 per bit) still share a 16- to 24-bit key with probability 0.19 to 0.08.
    """
    return int(min(62, max(16, math.ceil(math.log2(max(windows, 2))) + 4)))


def candidate_pairs(signatures: Sequence[np.ndarray], *, window: int = WINDOW, bands: int = BANDS,
                    bits: int | None = BITS, min_votes: int = MIN_VOTES, seed: int = 0,
                    max_bucket: int | None = None, stats: dict | None = None) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, worth aligning, found without comparing all pairs.

    Locality-sensitive hashing (random-hyperplane "SimHash") of signature windows, with
    votes that must agree on the time offset:

    * every run of ``window`` samples (hop 1) becomes a unit vector, each channel centred
      within the window. A clip trimmed from another (re-encoded, rescaled) contains the
      same windows up to a sub-sample phase and coding noise, whatever the cut point: the
      unknown offset is handled by indexing every position rather than by one
      shift-invariant feature per clip (spectrum magnitudes or sorted statistics of a
      whole clip change when part of it is cut off; a window inside the overlap does not);
    * each window is hashed with ``bands * bits`` random hyperplanes (fixed ``seed``) into
      ``bands`` keys of ``bits`` sign bits. Two vectors at angle ``theta`` agree on a bit
      with probability ``1 - theta / pi``: matching windows (cosine ~0.95: p ~0.9) share a
      16-bit key with probability ~0.19, unrelated ones (cosine ~0: p ~0.5) with
      probability 2**-16. ``bits=None`` takes :func:`auto_bits` of the number of windows,
      so chance collisions grow linearly, not quadratically, with the data;
    * a collision of window ``s`` of video ``i`` with window ``t`` of video ``j`` in a bucket
      votes for the pair at lag ``s - t``. A duplicate piles votes from many buckets on one
      lag (its offset; +-1 for the sub-sample phase), while chance collisions, whose number
      grows with the product of the two clips' lengths, land on scattered lags, and one
      chance collision of a smooth stretch fills a single bucket. A pair is a candidate
      when at least ``min_votes`` distinct buckets voted within three consecutive lags.

    Cost: one pass over the windows plus the collisions inside buckets; with distinct
    content buckets hold one video, and the candidates grow with the number of true
    duplicates rather than with the square of the number of videos (demo data plus 6
    planted copies: 6 candidates among 14,365 pairs, every findable copy among them;
    2,020 random signatures with 20 planted copies: 25 candidates among 2,039,190 pairs,
    all 20 found, 6 s). ``max_bucket``
    skips buckets holding more videos than that (degenerate content, e.g. thousands of
    copies of one intro); None keeps all. Signatures need the same channel count; those
    shorter than ``window`` samples are not indexed (never candidates). ``stats`` (a
    dict), if given, receives counts: indexed videos, windows, buckets, bits, skipped
    buckets, candidates.
    """
    sigs = [np.asarray(s, dtype=np.float64) for s in signatures]
    sigs = [s[:, None] if s.ndim == 1 else s for s in sigs]
    if stats is not None:
        stats.update(indexed=0, windows=0, buckets=0, skipped_buckets=0, candidates=0)
    if not sigs:
        return set()
    channels = {s.shape[1] for s in sigs}
    if len(channels) != 1:
        raise ValueError(f"candidate_pairs: signatures have different channel counts {sorted(channels)}")
    if bits is None:
        bits = auto_bits(sum(max(0, len(s) - window + 1) for s in sigs))
    if not (1 <= bits <= 62 and bands >= 1 and window >= 2 and min_votes >= 1):
        raise ValueError("candidate_pairs: need 1 <= bits <= 62, bands >= 1, window >= 2, min_votes >= 1")
    planes = np.random.default_rng(seed).standard_normal((window * channels.pop(), bands * bits))
    powers = 1 << np.arange(bits, dtype=np.int64)
    buckets: dict[tuple[int, int], dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    n_windows = indexed = 0
    for i, s in enumerate(sigs):
        w, starts = _windows(s, window)
        if not len(w):
            continue
        indexed += 1
        n_windows += len(w)
        keys = ((w @ planes > 0).reshape(len(w), bands, bits) * powers).sum(axis=-1)  # (n, bands)
        for band in range(bands):
            for start, key in zip(starts.tolist(), keys[:, band].tolist()):
                buckets[band, key][i].append(start)
    # (i, j) -> lag -> the buckets in which window s of i met window t of j, s - t = lag
    hits: dict[tuple[int, int], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    skipped = 0
    for bucket, members in enumerate(buckets.values()):
        if len(members) < 2:
            continue
        if max_bucket is not None and len(members) > max_bucket:
            skipped += 1
            continue
        videos = sorted(members)
        for x, i in enumerate(videos):
            for j in videos[x + 1:]:
                by_lag = hits[i, j]
                for s in members[i]:
                    for t in members[j]:
                        by_lag[s - t].add(bucket)
    empty: set[int] = set()
    pairs = {pair for pair, by_lag in hits.items()
             if any(len(b | by_lag.get(lag - 1, empty) | by_lag.get(lag + 1, empty)) >= min_votes
                    for lag, b in by_lag.items())}
    if stats is not None:
        stats.update(indexed=indexed, windows=n_windows, buckets=len(buckets), bits=bits,
                     skipped_buckets=skipped, candidates=len(pairs))
    return pairs


def _prefix(x: np.ndarray) -> np.ndarray:
    """Prefix sums along axis 0 with a leading zero row: ``p[k] = x[:k].sum(0)``."""
    return np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])


def overlap_correlation(sig_a: np.ndarray, sig_b: np.ndarray, *, min_overlap: int = MIN_OVERLAP,
                        min_overlap_fraction: float = MIN_OVERLAP_FRACTION):
    """Correlation of ``sig_b`` against ``sig_a`` at every lag, over the overlap only.

    Lag ``k`` puts ``b[j]`` against ``a[j + k]`` (``k`` from ``-(Tb - 1)`` to ``Ta - 1``).
    The cross products at all lags come from one batched linear FFT cross-correlation
    (:func:`svt.fft.correlate`, zero-padded, so nothing wraps around); the sums and sums of
    squares over each overlap from prefix sums. Each channel is centred on the overlap
    and the channels pooled: the score is the cosine of the two centred overlapping parts
    (a Pearson correlation), in [-1, 1], insensitive to brightness and contrast changes
    and to what lies outside the overlap. Lags whose overlap is shorter than
    ``max(min_overlap, min_overlap_fraction * min(Ta, Tb))`` samples, or on which either
    part is constant, get NaN. Returns ``(lags, scores)``.
    """
    a = np.asarray(sig_a, dtype=np.float64)
    b = np.asarray(sig_b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"align: channel counts differ ({a.shape[1]} vs {b.shape[1]})")
    ta, tb = len(a), len(b)
    if ta == 0 or tb == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    lags = np.arange(-(tb - 1), ta)
    sab = correlate(a.T, b.T, mode="full", axis=-1).sum(axis=0)  # (Ta + Tb - 1,)
    a_lo, a_hi = np.maximum(lags, 0), np.minimum(tb + lags, ta)  # a[a_lo:a_hi] overlaps ...
    b_lo, b_hi = a_lo - lags, a_hi - lags  # ... b[b_lo:b_hi]
    n = (a_hi - a_lo).astype(np.float64)
    pa, pb = _prefix(a), _prefix(b)
    sa, sb = pa[a_hi] - pa[a_lo], pb[b_hi] - pb[b_lo]  # (lags, C)
    pa2, pb2 = _prefix((a * a).sum(axis=1)), _prefix((b * b).sum(axis=1))
    num = sab - (sa * sb).sum(axis=1) / n
    va = pa2[a_hi] - pa2[a_lo] - (sa * sa).sum(axis=1) / n
    vb = pb2[b_hi] - pb2[b_lo] - (sb * sb).sum(axis=1) / n
    need = max(min_overlap, math.ceil(min_overlap_fraction * min(ta, tb)))
    tiny = 1e-12 * max(float((a * a).sum()), float((b * b).sum()), 1e-300)
    ok = (n >= need) & (va > tiny) & (vb > tiny)
    score = np.full(len(lags), np.nan)
    score[ok] = np.clip(num[ok] / np.sqrt(va[ok] * vb[ok]), -1.0, 1.0)
    return lags, score


def align(sig_a: np.ndarray, sig_b: np.ndarray, *, min_overlap: int = MIN_OVERLAP,
          min_overlap_fraction: float = MIN_OVERLAP_FRACTION) -> tuple[float, float]:
    """Best alignment of ``sig_b`` inside ``sig_a``: ``(offset_steps, score)``.

    ``b[0]`` matches ``a[offset_steps]`` (negative: ``a`` starts inside ``b``). The lag
    maximising :func:`overlap_correlation` is refined to a fraction of a sample by a
    parabola through the scores either side (clamped to +-0.5). ``score`` is the
    correlation at the best lag, in [-1, 1]; ``(0.0, 0.0)`` when no lag overlaps enough.
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


def refine_offset(fine_a: np.ndarray, fine_b: np.ndarray, approx: float, radius: int,
                  *, min_overlap: int = MIN_OVERLAP) -> tuple[int, float] | None:
    """The integer lag within ``approx +- radius`` maximising :func:`overlap_correlation` of
    two full-frame-rate signatures: ``(offset_frames, score)``, or None when no lag there
    overlaps enough. A coarse offset from sampled signatures is only known to a fraction
    of a sample (several frames); this pins it to the frame."""
    lags, score = overlap_correlation(fine_a, fine_b, min_overlap=min_overlap)
    near = np.abs(lags - approx) <= radius
    if not near.any() or np.all(np.isnan(score[near])):
        return None
    k = int(np.nanargmax(np.where(near, score, np.nan)))
    return int(lags[k]), float(score[k])


@dataclass(frozen=True)
class Duplicate:
    i: int
    j: int  # signature j starts ``offset_seconds`` into signature i
    offset_seconds: float
    score: float  # coarse-signature correlation, in [-1, 1]
    offset_frames: int | None = None  # refined, in frames of i (None without fine signatures)


def resample(sig: np.ndarray, rate: float, target: float) -> np.ndarray:
    """Linear interpolation of a signature ``(T, C)`` from ``rate`` Hz to ``target`` Hz."""
    sig = np.asarray(sig)
    if abs(rate - target) <= 1e-9 * target or len(sig) < 2:
        return sig
    t_old = np.arange(len(sig)) / rate
    t_new = np.arange(int(math.floor(t_old[-1] * target + 1e-9)) + 1) / target
    return np.stack([np.interp(t_new, t_old, sig[:, c]) for c in range(sig.shape[1])], axis=1)


def find_duplicates(signatures: Sequence[np.ndarray], rates: Sequence[float] | None = None, *,
                    fine: Sequence[np.ndarray] | None = None, fine_rates: Sequence[float] | None = None,
                    threshold: float = DUPLICATE_THRESHOLD, window: int = WINDOW,
                    bands: int = BANDS, bits: int | None = BITS, min_votes: int = MIN_VOTES,
                    min_overlap: int = MIN_OVERLAP, min_overlap_fraction: float = MIN_OVERLAP_FRACTION,
                    seed: int = 0, max_bucket: int | None = None,
                    stats: dict | None = None) -> list[Duplicate]:
    """Near-duplicate pairs among ``signatures`` (sampled at ``rates`` Hz; default 1), best first.

    Candidates from :func:`candidate_pairs`; each is confirmed with :func:`align` and kept
    when its score is ``>= threshold``, ordered so that ``j`` starts inside ``i`` (offset
    >= 0). Signatures at a rate other than the most common one are resampled to it first.
    ``window`` shrinks to the shortest signature (not below 4 samples) so short clips are
    still indexed. ``fine`` (full-frame-rate signatures, ``fine_rates`` their frame rates):
    when both videos of a pair have the same frame rate, the offset is refined to the
    frame with :func:`refine_offset` and given as ``offset_frames``. ``stats`` (a dict)
    receives the counts of :func:`candidate_pairs` plus ``aligned`` (align() calls),
    ``all_pairs``, ``window`` and ``rate``.
    """
    n = len(signatures)
    rates = [1.0] * n if rates is None else [float(r) for r in rates]
    if len(rates) != n:
        raise ValueError(f"find_duplicates: {n} signatures but {len(rates)} rates")
    if fine is not None and (fine_rates is None or len(fine) != n or len(fine_rates) != n):
        raise ValueError("find_duplicates: fine needs fine_rates, one of each per signature")
    common = Counter(rates).most_common(1)[0][0] if n else 1.0
    sigs = [resample(np.asarray(s), r, common) for s, r in zip(signatures, rates)]
    sigs = [s[:, None] if s.ndim == 1 else s for s in sigs]
    lengths = [len(s) for s in sigs if len(s)]
    win = max(4, min([window] + lengths)) if lengths else window
    local = {} if stats is None else stats
    pairs = candidate_pairs(sigs, window=win, bands=bands, bits=bits, min_votes=min_votes,
                            seed=seed, max_bucket=max_bucket, stats=local)
    found = []
    for i, j in sorted(pairs):
        offset, score = align(sigs[i], sigs[j], min_overlap=min_overlap,
                              min_overlap_fraction=min_overlap_fraction)
        if score < threshold:
            continue
        seconds, frames = offset / common, None
        if fine is not None and abs(fine_rates[i] - fine_rates[j]) <= 1e-6 * fine_rates[i]:
            fr = float(fine_rates[i])
            hit = refine_offset(fine[i], fine[j], seconds * fr, radius=math.ceil(fr / common) + 1,
                                min_overlap=min_overlap)
            if hit is not None:
                frames = hit[0]
                seconds = frames / fr
        if seconds < 0:
            i, j, seconds, frames = j, i, -seconds, (None if frames is None else -frames)
        found.append(Duplicate(i, j, seconds, score, frames))
    local.update(aligned=len(pairs), all_pairs=n * (n - 1) // 2, window=win, rate=common)
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
    with atomic_write(path, newline="") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(_tsv_cell(v) for v in row) + "\n")


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
    if threshold > 0:
        ax.axvline(threshold, color="k", linestyle="--",
                   label=f"threshold {threshold:g}" + ("" if static_on else " (static check off)"))
    ax.set_xscale("log")
    ax.set_xlabel("motion energy (energy outside DC / total, most-changing patches)")
    ax.set_ylabel("videos")
    ax.set_title("Motion energy per video")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_duplicates(path: Path, records: list[dict], results: list[VideoResult], threshold: float,
                     enabled: bool, top: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for kind, marker in zip(KINDS, "os^"):
        pts = [(r["offset_frames"], r["score"]) for r in records if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=f"{kind} ({len(pts)})")
    if records:
        ax.legend(fontsize=8)
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel("offset of b inside a (frames of a)")
    ax.set_ylabel("score")
    ax.set_title(f"Duplicate pairs ({len(records)})" if enabled else "Duplicate search off")

    def curve(res: VideoResult) -> np.ndarray:  # mean colour over time, standardised
        c = res.fine.astype(np.float64).mean(axis=1)
        return (c - c.mean()) / (c.std() or 1.0)

    ax = axes[1]
    for r in records[:top]:
        a, b = results[r["_i"]], results[r["_j"]]
        line = ax.plot(np.arange(len(a.fine)) / a.fps, curve(a), linewidth=1.5)[0]
        ax.plot(np.arange(len(b.fine)) / b.fps + r["_offset_s"], curve(b), linestyle="--",
                color=line.get_color(),
                label=f"{Path(r['a']).name[:20]} / {Path(r['b']).name[:20]} ({r['score']:.2f})")
    if records:
        ax.legend(fontsize=7)
    ax.set_xlabel("time in a (s)")
    ax.set_ylabel("mean colour (standardised)")
    ax.set_title(f"Top {min(top, len(records))} pairs, b (dashed) shifted by its offset")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log_to_mlflow(args, out_dir: Path, files: list[Path], metrics: dict[str, float]) -> None:
    tracker = tracking.stage_run(args, "curate", tags={"svt.out_dir": str(out_dir)})
    tracker.log_metrics(metrics, step=0)
    for f in files:
        tracker.log_artifact(f, "curation")
    tracker.finish()  # an attached run (--run-id) gets its status back


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m svt.curate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=_name_value, action="append", required=True,
                    metavar="NAME=PATH", help="a manifest CSV and its name (e.g. demo/train); repeatable")
    ap.add_argument("--videos-root", type=_name_value, action="append", required=True,
                    metavar="NAME=DIR", help="folder the paths of manifest NAME are relative to; NAME "
                    "may also be a prefix (demo covers demo/train and demo/test); repeatable")
    ap.add_argument("--pretrain", metavar="NAME",
                    help="the manifest feeding pretraining (default: the first)")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--motion-threshold", type=float, default=MOTION_THRESHOLD,
                    help=f"clips below this motion energy are static (default {MOTION_THRESHOLD:g})")
    ap.add_argument("--duplicate-threshold", type=float, default=DUPLICATE_THRESHOLD,
                    help=f"report pairs scoring at least this (default {DUPLICATE_THRESHOLD})")
    ap.add_argument("--sample-fps", type=_positive(float), default=SAMPLE_FPS,
                    help=f"samples per second after block averaging (default {SAMPLE_FPS:g})")
    ap.add_argument("--size", type=_positive(int), default=SIZE,
                    help=f"patch grid for the motion statistics, per side (default {SIZE})")
    ap.add_argument("--motion-top", type=float, default=MOTION_TOP,
                    help=f"fraction of patches the motion energy uses (default {MOTION_TOP})")
    ap.add_argument("--grid", type=_positive(int), default=GRID,
                    help=f"signature cells per side (default {GRID})")
    ap.add_argument("--window", type=_positive(int), default=WINDOW, help="LSH window, in samples")
    ap.add_argument("--bands", type=_positive(int), default=BANDS, help="LSH bands")
    ap.add_argument("--bits", type=_positive(int), default=BITS,
                    help="LSH bits per band (default: log2(windows) + 4, at least 16)")
    ap.add_argument("--min-votes", type=_positive(int), default=MIN_VOTES,
                    help="shared LSH buckets that make a pair a candidate")
    ap.add_argument("--static", type=_on_off, default=True, metavar="on|off",
                    help="flag static clips and leave them out of pretraining (default on)")
    ap.add_argument("--duplicates", type=_on_off, default=True, metavar="on|off",
                    help="search for duplicates and leakage (default on)")
    ap.add_argument("--decoder", choices=CPU_BACKENDS, default="torchcodec")  # fastest for whole videos
    ap.add_argument("--jobs", type=_positive(int), default=1,
                    help="videos decoded in parallel (worker processes; default 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    tracking.add_arguments(ap, experiment="svt-curate", run_name="curate")
    return ap


def _analyse_job(path: Path, frames: int, fps: float, options: dict) -> VideoResult:
    torch.set_num_threads(1)  # a worker process: the parallelism is across videos
    return analyse_video(path, frames, fps, **options)


def _analyse_all(jobs: list, root_of: dict, args) -> tuple[dict, list[dict]]:
    """Analyse every (manifest, row index, row) job, in ``args.jobs`` worker processes
    (threads would not help: decoding and pooling hold the GIL for most of their time).
    Returns the results by (manifest, row index) and the unreadable videos (skipped)."""
    import multiprocessing as mp
    from concurrent.futures import Future, ProcessPoolExecutor

    from tqdm import tqdm

    options = dict(sample_fps=args.sample_fps, size=args.size, top=args.motion_top, grid=args.grid,
                   backend=args.decoder)
    workers = None
    if args.jobs > 1 and len(jobs) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        if method == "fork" and args.decoder == "torchcodec":
            import torchcodec.decoders  # noqa: F401  (seconds to import: once, before forking)
        workers = ProcessPoolExecutor(max_workers=min(args.jobs, len(jobs)),
                                      mp_context=mp.get_context(method))
    futures: dict = {}
    try:
        for job in jobs:
            name, _, row = job
            call = (root_of[name] / row.path, row.frames, row.fps, options)
            if workers is not None:
                futures[workers.submit(_analyse_job, *call)] = job
            else:  # in this process, lazily, so the progress bar moves
                fut: Future = Future()
                futures[fut] = (job, call)
        results, unreadable = {}, []
        pending = as_completed(futures) if workers is not None else iter(futures)
        for fut in tqdm(pending, total=len(futures), desc="curate", unit="video", disable=args.no_progress):
            if workers is None:
                job, call = futures[fut]
                try:
                    fut.set_result(analyse_video(*call[:3], **call[3]))
                except Exception as err:  # re-raised by fut.result() below
                    fut.set_exception(err)
            else:
                job = futures[fut]
            name, k, row = job
            try:
                results[name, k] = fut.result()
            except (VideoDecodeError, IndexError, OSError, RuntimeError, ValueError) as err:
                path = str(root_of[name] / row.path)
                msg = str(err) if path in str(err) else f"{path}: {err}"
                log.warning("skipping unreadable video: %s", msg)
                unreadable.append({"manifest": name, "path": row.path, "error": msg})
    finally:
        if workers is not None:
            workers.shutdown(cancel_futures=True)
    order = {name: i for i, name in enumerate(root_of)}
    unreadable.sort(key=lambda u: (order[u["manifest"]], u["path"]))
    return results, unreadable


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
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
    if not 0 < args.motion_top <= 1:
        ap.error("--motion-top must be in (0, 1]")
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
    results, unreadable = _analyse_all(jobs, root_of, args)

    # --- per-manifest reports and static clips
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
        per_manifest[name] = {"videos": len(manifests[name]), "analysed": len(lines),
                              "unreadable": sum(u["manifest"] == name for u in unreadable),
                              "static": sum(s["manifest"] == name for s in static)}

    # --- the pretraining manifest, without static (and unreadable) clips; files untouched
    dropped = {(s["manifest"], s["path"]) for s in static} | {(u["manifest"], u["path"]) for u in unreadable}
    kept = [r for r in manifests[pretrain] if (pretrain, r.path) not in dropped]
    write_rows(out_dir / "pretrain_manifest.csv", kept, ManifestRow)
    files.append(out_dir / "pretrain_manifest.csv")

    # --- duplicates and leakage
    keys = [(name, k) for name in names for k in range(len(manifests[name])) if (name, k) in results]
    found = [results[key] for key in keys]
    dup_stats: dict = {}
    records: list[dict] = []
    if args.duplicates and len(keys) > 1:
        dups = find_duplicates([r.signature for r in found], [r.rate for r in found],
                               fine=[r.fine for r in found], fine_rates=[r.fps for r in found],
                               threshold=args.duplicate_threshold, window=args.window,
                               bands=args.bands, bits=args.bits, min_votes=args.min_votes,
                               stats=dup_stats)
        for d in dups:
            (na, ka), (nb, kb) = keys[d.i], keys[d.j]
            ra, rb = manifests[na][ka], manifests[nb][kb]
            frames = d.offset_frames if d.offset_frames is not None else round(d.offset_seconds * ra.fps)
            records.append({"a": ra.path, "b": rb.path, "split_a": na, "split_b": nb,
                            "kind": duplicate_kind(na, nb, pretrain), "offset_frames": int(frames),
                            "score": d.score, "_i": d.i, "_j": d.j, "_offset_s": d.offset_seconds})
    dup_path = out_dir / "duplicates.tsv"
    write_tsv(dup_path, ("a", "b", "split_a", "split_b", "kind", "offset_frames", "score"),
              ((r["a"], r["b"], r["split_a"], r["split_b"], r["kind"], r["offset_frames"],
                f"{r['score']:.4f}") for r in records))
    files.append(dup_path)

    # --- plots and summary
    _plot_motion(out_dir / "motion_energy.png", motion, args.motion_threshold, args.static)
    _plot_duplicates(out_dir / "duplicates.png", records, found, args.duplicate_threshold, args.duplicates)
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
                   "motion_top": args.motion_top, "duplicate_threshold": args.duplicate_threshold,
                   "duplicates": args.duplicates, "sample_fps": args.sample_fps, "size": args.size,
                   "grid": args.grid, "window": dup_stats.get("window", args.window),
                   "bands": args.bands, "bits": dup_stats.get("bits", args.bits), "min_votes": args.min_votes,
                   "decoder": args.decoder},
        "seconds": round(time.monotonic() - started, 3),
    }
    _write_json(out_dir / "summary.json", summary)
    files.append(out_dir / "summary.json")
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
