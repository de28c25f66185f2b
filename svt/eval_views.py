"""Deterministic test-time views and frozen-backbone feature extraction, shared by
``svt.features``, the online probe and the pretraining kNN monitor.

Test-time views (``clips`` x ``crops``): the video is cut into ``clips`` equal temporal
windows and each clip takes ``frames`` frames spread uniformly over its window; frames are
resized (antialiased) so the short side is ``size`` and ``crops`` square crops of side
``size`` are taken along the long side (3: left/centre/right, or top/centre/bottom for
portrait video), then normalised with the backbone's own mean/std. The feature of a video
is the CLS feature averaged over all its views.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from svt.loader import VideoDataset, cpu_backend, uniform_indices


class EvalClipSampler:
    """Deterministic ``clip_sampler``: ``clips`` equal windows, ``frames`` uniform indices in
    each (clips = 1: the whole video)."""

    def __init__(self, frames: int, clips: int):
        if frames < 1 or clips < 1:
            raise ValueError("frames and clips must be >= 1")
        self.frames, self.clips = int(frames), int(clips)

    def __call__(self, num_frames: int, fps: float, generator=None) -> list[np.ndarray]:
        window = num_frames / self.clips
        return [uniform_indices(c * window, window, self.frames, num_frames)
                for c in range(self.clips)]


def crop_offsets(length: int, side: int, crops: int) -> list[int]:
    """Start offsets of ``crops`` crops of ``side`` evenly spread along ``length`` (1: centre)."""
    if crops == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (crops - 1)) for i in range(crops)]


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (T, 3, H, W) -> short side ``size`` (antialiased bilinear)."""
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, max(size, round(w * size / h))
    else:
        nh, nw = max(size, round(h * size / w)), size
    if (nh, nw) == (h, w):
        return x
    return F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)


def eval_views(clips: Sequence[torch.Tensor], size: int, crops: int, mean: Sequence[float],
               std: Sequence[float]) -> torch.Tensor:
    """uint8 clips (T, H, W, 3) -> views (len(clips) * crops, 3, T, size, size) normalised with
    the backbone's ``mean``/``std``, clip-major. Crops run along the long side:
    left/centre/right, or top/centre/bottom."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    for clip in clips:
        x = clip.permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W)
        x = resize_short_side(x, size)
        x = (x - m) / s
        h, w = x.shape[-2:]
        for off in crop_offsets(max(h, w), size, crops):
            v = x[..., :, off:off + size] if w >= h else x[..., off:off + size, :]
            out.append(v.permute(1, 0, 2, 3))  # (3, T, S, S)
    return torch.stack(out)


class _ViewsCollate:
    def __init__(self, size: int, crops: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.crops, self.mean, self.std = size, crops, mean, std

    def __call__(self, batch: list[dict]) -> dict:
        return {"views": torch.stack([eval_views(b["clips"], self.size, self.crops, self.mean,
                                                 self.std) for b in batch]),
                "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
                "index": torch.tensor([b["index"] for b in batch], dtype=torch.long)}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_for(device: torch.device):
    """bf16 autocast on GPU, plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def progress_bar(total: int, desc: str):
    """A live bar on the terminal (svt.progress); without one, a line every 30 s in the log."""
    from tqdm import tqdm

    from svt import progress

    live = progress.bar(total, desc, "video")
    return live if live is not None else tqdm(total=total, desc=desc, unit="video", file=sys.stderr,
                                             mininterval=30.0)


@torch.no_grad()
def extract_features(model: nn.Module, manifest, videos_root, size: int, frames: int,
                     norm: Mapping[str, Sequence[float]], clips: int = 1, crops: int = 3, batch_size: int = 8, num_workers: int = 0,
                     decoder: str = "pyav", device: str | torch.device = "cpu",
                     progress: bool = True) -> dict:
    """CLS features of every video of ``manifest``: ``features`` (N, D) float32 averaged over
    clips x crops, ``view_features`` (N, clips * crops, D) float16, ``labels``, ``paths``.
    ``norm``: the backbone's ``mean`` and ``std`` (its ``pretrained_cfg``). One decode per
    video (all clips' frames at once)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    model = model.to(device).eval()
    ds = VideoDataset(manifest, videos_root, EvalClipSampler(frames, clips),
                      backend=cpu_backend(decoder))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_ViewsCollate(size, crops, norm["mean"], norm["std"]), pin_memory=device.type == "cuda")
    n, v = len(ds), clips * crops
    feats = per_view = None
    labels = torch.empty(n, dtype=torch.long)
    bar = progress_bar(n, f"features {frames}x{size}") if progress else None
    for batch in loader:
        x = batch["views"]  # (B, V, 3, T, S, S)
        b = x.shape[0]
        with autocast_for(device):
            out = model.forward_features(x.flatten(0, 1).to(device, non_blocking=True))
        out = out.float().cpu().view(b, v, -1)
        if feats is None:
            feats = torch.empty(n, out.shape[-1])
            per_view = torch.empty(n, v, out.shape[-1], dtype=torch.float16)
        idx = batch["index"]
        feats[idx] = out.mean(1)
        per_view[idx] = out.half()
        labels[idx] = batch["label"]
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    if feats is None:
        raise ValueError(f"{manifest}: no videos")
    return {"features": feats, "view_features": per_view, "labels": labels,
            "paths": [r.path for r in ds.rows]}
