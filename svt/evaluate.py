"""Slow-fast evaluation of a frozen backbone: adaptation, feature extraction, probes, kNN.

Three small command-line steps share this module::

    python -m svt.adapt     backbone (ours, official SVT, timm/DINO image ViT) or random init
                            -> one file with the weights, the model config and, per evaluation
                               geometry, the resampled positional tables and the geometry itself
    python -m svt.features  adapted backbone x geometry x manifest -> cached CLS features
    python -m svt.probe     cached features -> linear probe + kNN for slow, fast and slow-fast;
                            metrics.json, confusion plots, MLflow; ``--table`` compares runs

A *geometry* is a view shape: ``frames`` frames of ``size`` x ``size`` pixels (paper: slow
8 x 224, fast 64 x 96). The backbone runs at each geometry with its positional tables
resampled by :mod:`svt.posembed`; ``adapt`` stores those tables, and ``features`` builds the
model natively at the geometry from them, so what was recorded is exactly what runs.

Test-time views (``clips`` x ``crops``): the video is cut into ``clips`` equal temporal
windows and each clip takes ``frames`` frames spread uniformly over its window; frames are
resized (antialiased) so the short side is ``size`` and ``crops`` square crops of side
``size`` are taken along the long side (3: left/centre/right, or top/centre/bottom for
portrait video). The feature of a video is the CLS feature averaged over all its views.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from svt.loader import VideoDataset, uniform_indices
from svt.model import (VisionTransformerSVT, build_model, file_sha256, load_checkpoint_file,
                       load_pretrained)
from svt.posembed import resample_spatial, resample_temporal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ADAPTED_FORMAT = "svt-adapted/1"
FEATURES_FORMAT = "svt-features/1"
SETTING_ORDER = ("slow", "fast", "slow_fast")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """One evaluation view shape: ``frames`` frames of ``size`` x ``size`` pixels."""

    name: str
    frames: int
    size: int

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ValueError(f"geometry name {self.name!r}: use letters, digits, '_' or '-'")
        if self.frames < 1 or self.size < 1:
            raise ValueError(f"geometry {self.name}: frames and size must be >= 1")


def parse_geometry(text: str) -> Geometry:
    """``"slow=8x224"`` -> Geometry("slow", 8, 224)."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"geometry {text!r}: expected NAME=FRAMESxSIZE, e.g. slow=8x224")
    return Geometry(m.group(1), int(m.group(2)), int(m.group(3)))


def parse_named(items: Sequence[str], what: str) -> dict[str, str]:
    """``["slow=a.pt", "fast=b.pt"]`` -> {"slow": "a.pt", "fast": "b.pt"} (order kept)."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{what} {item!r}: expected NAME=VALUE")
        if name in out:
            raise ValueError(f"{what} {name!r} given twice")
        out[name] = value
    return out


# --------------------------------------------------------------------------- adaptation


def model_config_of(path_or_obj) -> dict | None:
    """The ``model`` config stored in one of our checkpoints (teacher_backbone.pth, adapted)."""
    obj = path_or_obj if isinstance(path_or_obj, dict) else load_checkpoint_file(path_or_obj)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and \
            not any(torch.is_tensor(v) for v in obj["model"].values()):
        return dict(obj["model"])
    return None


def clean_model_config(cfg: Mapping) -> dict:
    """The keys build_model needs; ``init`` (where pretraining started) does not describe the
    architecture, and evaluation runs without activation checkpointing."""
    cfg = {k: v for k, v in cfg.items() if k != "init"}
    cfg.pop("grad_checkpointing", None)
    return cfg


def adapt_backbone(geometries: Sequence[Geometry], backbone: str | os.PathLike | None = None,
                   model_cfg: Mapping | None = None, random_init: bool = False,
                   seed: int = 0) -> dict:
    """Build the payload ``svt.adapt`` writes (see ``load_adapted``).

    The model config is the file's ``model`` entry updated by ``model_cfg``; a foreign
    checkpoint (official SVT, timm/DINO image ViT) has none, so ``model_cfg`` must describe
    it. ``random_init`` skips the weights (the baseline) but still takes the config from
    ``backbone`` when given, so the baseline has the pretrained model's architecture.
    """
    if not geometries:
        raise ValueError("give at least one geometry")
    names = [g.name for g in geometries]
    if len(set(names)) != len(names):
        raise ValueError(f"geometry names repeat: {names}")
    if backbone is None and not random_init:
        raise ValueError("give a backbone checkpoint, or random_init with a model config")
    ckpt = load_checkpoint_file(backbone) if backbone is not None else None
    cfg = dict(model_config_of(ckpt) or {}) if isinstance(ckpt, dict) else {}
    cfg.update(model_cfg or {})
    if not cfg:
        raise ValueError(
            f"{backbone}: no model config stored in the file (a foreign checkpoint?); describe "
            'the architecture with --model-json, e.g. \'{"arch": "vit_base", "num_frames": 8}\'')
    cfg = clean_model_config(cfg)

    torch.manual_seed(seed)
    model = build_model(**cfg)
    source: dict = {"random_init": bool(random_init), "seed": int(seed)}
    run_id = None
    if not random_init:
        missing, unexpected = load_pretrained(model, backbone)
        if missing:
            raise ValueError(f"{backbone}: the checkpoint lacks {len(missing)} backbone tensors "
                             f"({missing[:6]}...); wrong --model-json?")
        if isinstance(ckpt, dict) and isinstance(ckpt.get("mlflow_run_id"), str):
            run_id = ckpt["mlflow_run_id"]
        del ckpt
        source.update(path=str(backbone), sha256=file_sha256(backbone),
                      unexpected_keys=list(unexpected))
    model.eval()

    p = model.patch_size
    geo: dict = {}
    with torch.no_grad():
        for g in geometries:
            if g.size % p:
                raise ValueError(f"geometry {g.name}: size {g.size} is not a multiple of the "
                                 f"patch size {p}")
            grid = (g.size // p, g.size // p)
            geo[g.name] = {
                "frames": g.frames, "size": g.size, "grid": list(grid), "patch_size": p,
                "spatial_mode": model.pos_interp_spatial,
                "temporal_mode": model.pos_interp_temporal,
                "spatial_table": resample_spatial(model.pos_embed, grid,
                                                  model.pos_interp_spatial).detach().clone(),
                "temporal_table": resample_temporal(model.time_embed, g.frames,
                                                    model.pos_interp_temporal).detach().clone(),
            }
    return {"format": ADAPTED_FORMAT, "state_dict": model.state_dict(), "model": cfg,
            "geometries": geo, "source": source, "mlflow_run_id": run_id}


def load_adapted(path) -> dict:
    obj = load_checkpoint_file(path)
    if not isinstance(obj, dict) or obj.get("format") != ADAPTED_FORMAT:
        raise ValueError(f"{path}: not a file written by `python -m svt.adapt`")
    return obj


def model_for_geometry(adapted: Mapping, name: str) -> VisionTransformerSVT:
    """The backbone built natively at geometry ``name``: its positional tables are the ones
    ``adapt`` recorded, so no resampling happens at run time. Eval mode, frozen."""
    try:
        g = adapted["geometries"][name]
    except KeyError:
        raise KeyError(f"geometry {name!r} not in the adapted backbone; it has "
                       f"{sorted(adapted['geometries'])}") from None
    cfg = dict(adapted["model"], img_size=g["size"], num_frames=g["frames"])
    model = build_model(**cfg)
    state = dict(adapted["state_dict"])
    state["pos_embed"] = g["spatial_table"]
    state["time_embed"] = g["temporal_table"]
    model.load_state_dict(state, strict=True)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- test views


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


def eval_views(clips: Sequence[torch.Tensor], size: int, crops: int,
               mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 clips (T, H, W, 3) -> normalised views (len(clips) * crops, 3, T, size, size),
    clip-major. Crops run along the long side: left/centre/right, or top/centre/bottom."""
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
    def __init__(self, size: int, crops: int):
        self.size, self.crops = size, crops

    def __call__(self, batch: list[dict]) -> dict:
        return {"views": torch.stack([eval_views(b["clips"], self.size, self.crops) for b in batch]),
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


def _progress(total: int, desc: str):
    """A live bar on the terminal (svt.progress); without one, a line every 30 s in the log."""
    from tqdm import tqdm

    from svt import progress

    live = progress.bar(total, desc, "video")
    return live if live is not None else tqdm(total=total, desc=desc, unit="video", file=sys.stderr,
                                             mininterval=30.0)


@torch.no_grad()
def extract_features(model: nn.Module, manifest, videos_root, size: int, frames: int,
                     clips: int = 1, crops: int = 3, batch_size: int = 8, num_workers: int = 0,
                     decoder: str = "torchcodec", device: str | torch.device = "cpu",
                     progress: bool = True) -> dict:
    """CLS features of every video of ``manifest``: ``features`` (N, D) float32 averaged over
    clips x crops, ``view_features`` (N, clips * crops, D) float16, ``labels``, ``paths``.
    One decode per video (all clips' frames at once)."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    model = model.to(device).eval()
    ds = VideoDataset(manifest, videos_root, EvalClipSampler(frames, clips), backend=decoder)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_ViewsCollate(size, crops), pin_memory=device.type == "cuda")
    n, v = len(ds), clips * crops
    feats = per_view = None
    labels = torch.empty(n, dtype=torch.long)
    bar = _progress(n, f"features {frames}x{size}") if progress else None
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


def save_features(path, result: Mapping, meta: Mapping) -> Path:
    from svt.checkpoint import save_atomic

    return save_atomic({"format": FEATURES_FORMAT, **result, **meta}, path)


def load_features(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FEATURES_FORMAT:
        raise ValueError(f"{path}: not a file written by `python -m svt.features`")
    return obj


# --------------------------------------------------------------------------- probes


def combine(features: Sequence[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """Slow-fast feature from per-geometry features: their mean (default) or concatenation."""
    if how == "mean":
        shapes = {tuple(f.shape) for f in features}
        if len(shapes) != 1:
            raise ValueError(f"mean needs features of one shape, got {sorted(shapes)}; use concat")
        return torch.stack(list(features)).mean(0)
    if how == "concat":
        return torch.cat(list(features), dim=1)
    raise ValueError(f"combine must be 'mean' or 'concat', got {how!r}")


def settings_from(features: Mapping[str, torch.Tensor], how: str = "mean") -> dict[str, torch.Tensor]:
    """Each geometry alone, plus all of them combined ("slow_fast" for slow + fast)."""
    out = dict(features)
    if len(features) > 1:
        out["_".join(features)] = combine(list(features.values()), how)
    return out


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / max(total, 1)))


def new_linear(dim: int, num_classes: int) -> nn.Linear:
    """Linear(dim, classes), weight N(0, 0.01), bias 0 (the recipe / DINO)."""
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return head


@dataclass
class ProbeConfig:
    epochs: int = 20
    lr: float = 0.001  # for a batch of 256; scaled by batch / 256
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0

    def make_optimizer(self, params, batch: int) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr * batch / 256, momentum=self.momentum,
                               weight_decay=self.weight_decay)


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 cfg: ProbeConfig = ProbeConfig(), device: str | torch.device = "cpu") -> nn.Linear:
    """Linear probe on fixed features: SGD with momentum, per-step cosine schedule,
    cross-entropy. Deterministic for a given ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = new_linear(x.shape[1], num_classes).to(device)
    x, y = x.float().to(device), y.long().to(device)
    n = len(x)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged end: every step sees a full batch
    total = cfg.epochs * steps_per_epoch
    opt = cfg.make_optimizer(head.parameters(), bs)
    base = opt.param_groups[0]["lr"]
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            sel = order[i * bs:(i + 1) * bs]
            for g in opt.param_groups:
                g["lr"] = cosine_lr(base, step, total)
            loss = F.cross_entropy(head(x[sel]), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.cpu()


def topk_correct(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == y[:, None]).any(1)


def classification_metrics(scores: torch.Tensor, y: torch.Tensor,
                           class_names: Sequence[str]) -> dict:
    """top1, top5, per-class accuracy (None for classes absent from the test set), confusion."""
    c = len(class_names)
    pred = scores.argmax(1)
    conf = torch.zeros(c, c, dtype=torch.long)
    conf.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    support = conf.sum(1)
    per_class = {name: (conf[i, i].item() / support[i].item() if support[i] else None)
                 for i, name in enumerate(class_names)}
    return {"top1": topk_correct(scores, y, 1).float().mean().item(),
            "top5": topk_correct(scores, y, 5).float().mean().item(),
            "per_class": per_class, "confusion": conf.tolist()}


@torch.no_grad()
def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               num_classes: int, k: int = 20, temperature: float = 0.07,
               chunk: int = 1024) -> torch.Tensor:
    """DINO-style weighted kNN: cosine similarity of L2-normalised features, the ``k`` nearest
    training samples vote for their class with weight exp(sim / T). Returns (N_test, C)."""
    tr = F.normalize(train_x.float(), dim=1)
    te = F.normalize(test_x.float(), dim=1)
    k = min(k, len(tr))
    out = torch.zeros(len(te), num_classes)
    for i in range(0, len(te), chunk):
        sim = te[i:i + chunk] @ tr.T
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        out[i:i + chunk].scatter_add_(1, train_y[idx].long(), w)
    return out


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> dict:
    """{"top1", "top5"} of the weighted kNN; cheap enough to monitor pretraining."""
    s = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    return {"top1": topk_correct(s, test_y, 1).float().mean().item(),
            "top5": topk_correct(s, test_y, 5).float().mean().item()}


def evaluate_settings(train: Mapping[str, torch.Tensor], train_y: torch.Tensor,
                      test: Mapping[str, torch.Tensor], test_y: torch.Tensor,
                      class_names: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                      combine_how: str = "mean", knn_k: int = 20, knn_temperature: float = 0.07,
                      device: str | torch.device = "cpu") -> dict:
    """Linear probe and kNN for every setting (each geometry alone, and combined).
    Returns {setting: {"linear": {...}, "knn": {...}}}; the linear entry keeps its
    confusion matrix (dropped from metrics.json, drawn as a plot)."""
    if list(train) != list(test):
        raise ValueError(f"train and test have different geometries: {list(train)} vs {list(test)}")
    tr, te = settings_from(train, combine_how), settings_from(test, combine_how)
    c = len(class_names)
    for name, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= c):
            raise ValueError(f"{name} labels outside 0..{c - 1}: unlabelled rows or wrong classes file")
    results = {}
    for s in tr:
        head = train_linear(tr[s], train_y, c, cfg, device)
        with torch.no_grad():
            scores = head(te[s].float())
        results[s] = {"linear": classification_metrics(scores, test_y, class_names),
                      "knn": knn_accuracy(tr[s], train_y, te[s], test_y, c, knn_k, knn_temperature)}
    return results


# --------------------------------------------------------------------------- outputs


def read_classes(path) -> list[str]:
    names = [ln.rstrip("\n") for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n.strip()]
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def metrics_json(results: Mapping) -> dict:
    """results without the confusion matrices: {setting: {linear: {top1, top5, per_class},
    knn: {top1, top5}}}."""
    out = {}
    for s, r in results.items():
        out[s] = {kind: {k: v for k, v in m.items() if k != "confusion"} for kind, m in r.items()}
    return out


def plot_confusion(conf, class_names: Sequence[str], path, title: str = "") -> Path:
    """Row-normalised confusion matrix with class names on both axes (counts written in)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = np.asarray(conf, dtype=np.float64)
    c = len(class_names)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    side = max(4.0, 0.35 * c + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(c)
    ax.set_xticks(ticks, labels=class_names, rotation=90, fontsize=max(4, min(9, 300 / c)))
    ax.set_yticks(ticks, labels=class_names, fontsize=max(4, min(9, 300 / c)))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if conf[i, j]:
                    ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ordered(settings) -> list[str]:
    known = [s for s in SETTING_ORDER if s in settings]
    return known + [s for s in settings if s not in known]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_results(metrics: Mapping) -> str:
    """One run's metrics as a markdown table (setting x linear/kNN top-1/top-5)."""
    lines = ["| setting | linear top-1 | linear top-5 | kNN top-1 | kNN top-5 |",
             "|---|---:|---:|---:|---:|"]
    for s in _ordered(metrics):
        lin, knn = metrics[s].get("linear", {}), metrics[s].get("knn", {})
        lines.append(f"| {s.replace('_', '-')} | {_pct(lin.get('top1'))} | {_pct(lin.get('top5'))}"
                     f" | {_pct(knn.get('top1'))} | {_pct(knn.get('top5'))} |")
    return "\n".join(lines)


ROW_LABELS = {"random": "random init", "pretrained": "pretrained"}


def format_table(results: Mapping[str, Mapping]) -> str:
    """Compare runs: rows (e.g. random, pretrained) x columns (slow, fast, slow-fast; linear
    and kNN top-1, in %). ``results`` maps a row name to that run's metrics.json dict."""
    settings: list[str] = []
    for m in results.values():
        settings += [s for s in m if s not in settings]
    settings = _ordered(settings)
    head = ["backbone"] + [f"{s.replace('_', '-')} {kind}" for s in settings
                           for kind in ("linear", "kNN")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for row, m in results.items():
        cells = [ROW_LABELS.get(row, row)]
        for s in settings:
            r = m.get(s, {})
            cells += [_pct(r.get("linear", {}).get("top1")), _pct(r.get("knn", {}).get("top1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(top-1 accuracy, %)"


def write_outputs(results: Mapping, class_names: Sequence[str], out_dir) -> dict:
    """metrics.json and confusion_<setting>.png into ``out_dir``; returns the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_json(results)
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out_dir / "metrics.json")
    for s, r in results.items():
        if "confusion" in r.get("linear", {}):
            plot_confusion(r["linear"]["confusion"], class_names, out_dir / f"confusion_{s}.png",
                           f"{s.replace('_', '-')}: linear probe")
    return metrics


def eval_metrics(metrics: Mapping, prefix: str) -> dict[str, float]:
    """metrics.json -> {"eval/<prefix>/<setting>/<probe>_<top1|top5>": value}: the same keys in
    the probe's own run and the workflow's parent run, so runs compare.
    Values in percent with two decimals, as the table shows them (metrics.json keeps the
    fractions)."""
    flat = {}
    for s, r in metrics.items():
        for kind, m in r.items():
            for k in ("top1", "top5"):
                if m.get(k) is not None:
                    flat[f"eval/{prefix}/{s}/{kind}_{k}"] = percent(m[k])
    return flat


def percent(fraction: float) -> float:
    """0.05000000074505806 -> 5.0: accuracies in MLflow as in the table."""
    return round(100.0 * float(fraction), 2)


def log_to_mlflow(metrics: Mapping, out_dir, tracking_uri: str | None, experiment: str = "svt",
                  prefix: str = "pretrained", tags: Mapping[str, str] | None = None) -> bool:
    """Metrics as ``eval/<prefix>/<setting>/<probe>_<top1|top5>`` plus metrics.json and the
    plots (artifacts under ``eval/<prefix>/``) into a run of the evaluation's own
    (``probe/<prefix>``, a child of the workflow's run when there is one, tagged with ``tags``).
    Never raises for tracking trouble (svt.tracking.Tracker). Returns whether anything was
    attempted."""
    if not tracking_uri:
        return False
    from svt.tracking import Tracker

    try:
        tracker = Tracker(tracking_uri, experiment, run_name=f"probe/{prefix}",
                          tags={"svt.stage": "evaluate", **(tags or {})})
    except Exception as err:  # a broken store must not fail the evaluation
        print(f"[probe] MLflow unavailable ({err}); not logged", file=sys.stderr)
        return False
    tracker.log_metrics(eval_metrics(metrics, prefix), step=0)
    out_dir = Path(out_dir)
    for f in sorted(out_dir.glob("metrics.json")) + sorted(out_dir.glob("confusion_*.png")):
        tracker.log_artifact(f, f"eval/{prefix}")
    tracker.finish()
    return True


# --------------------------------------------------------------------------- online probe


def train_online(adapted: Mapping, geometries: Sequence[str], train_manifest, test_manifest,
                 videos_root, class_names: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                 combine_how: str = "mean", clips: int = 1, crops: int = 3,
                 hflip: float = 0.5, crop_scale: tuple = (0.4, 1.0), num_workers: int = 0,
                 decoder: str = "torchcodec", device: str | torch.device = "cpu",
                 test_videos_root=None, progress: bool = True) -> dict:
    """The paper protocol: linear heads trained on the frozen backbone's CLS features of
    freshly augmented views every epoch (random temporal position, random resized crop,
    optional flip; one decode per video for all geometries), one head per setting (each
    geometry, and the combination). Tested on the deterministic clips x crops views.
    Returns {setting: {"linear": metrics}} (no kNN: that needs fixed training features)."""
    from svt.views import AugmentCollate, SVTAugment, SVTClipSampler, ViewConfig, ViewSpec

    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    models = {g: model_for_geometry(adapted, g).to(device) for g in geometries}
    specs = tuple(ViewSpec(frames=adapted["geometries"][g]["frames"],
                           size=adapted["geometries"][g]["size"], span=1.0,
                           scale=tuple(crop_scale), blur=0.0, solarize=0.0) for g in geometries)
    view_cfg = ViewConfig(global_views=specs, local_views=(), hflip=hflip, color_jitter=0.0,
                          grayscale=0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    ds = VideoDataset(train_manifest, videos_root, SVTClipSampler(view_cfg), backend=decoder,
                      seed=cfg.seed)
    n, c = len(ds), len(class_names)
    bs = min(cfg.batch_size, n)
    collate = AugmentCollate(SVTAugment(view_cfg), cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    dims = {g: models[g].embed_dim for g in geometries}
    if len(geometries) > 1:
        dims["_".join(geometries)] = (sum(dims.values()) if combine_how == "concat"
                                      else dims[geometries[0]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        heads = {s: new_linear(d, c).to(device) for s, d in dims.items()}
    opts = {s: cfg.make_optimizer(h.parameters(), bs) for s, h in heads.items()}
    base = cfg.lr * bs / 256
    total = cfg.epochs * (n // bs)
    step = 0
    bar = _progress(cfg.epochs * (n // bs) * bs, "online probe") if progress else None
    for epoch in range(cfg.epochs):
        ds.set_epoch(epoch)
        collate.epoch = epoch
        sampler = torch.utils.data.RandomSampler(
            ds, generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen))))
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, sampler=sampler, drop_last=True,
                                             num_workers=num_workers, collate_fn=collate)
        for batch in loader:
            y = batch["label"].to(device)
            feats = {}
            with torch.no_grad(), autocast_for(device):
                for g, v in zip(geometries, batch["views"]):
                    feats[g] = models[g].forward_features(v.to(device)).float()
            for s, f in settings_from(feats, combine_how).items():
                for grp in opts[s].param_groups:
                    grp["lr"] = cosine_lr(base, step, total)
                loss = F.cross_entropy(heads[s](f), y)
                opts[s].zero_grad(set_to_none=True)
                loss.backward()
                opts[s].step()
            step += 1
            if bar is not None:
                bar.update(len(y))
    if bar is not None:
        bar.close()

    test = {}
    for g in geometries:
        geo = adapted["geometries"][g]
        r = extract_features(models[g], test_manifest, test_videos_root or videos_root,
                             geo["size"], geo["frames"], clips, crops, batch_size=max(1, bs // 4),
                             num_workers=num_workers, decoder=decoder, device=device,
                             progress=progress)
        test[g], test_y = r["features"], r["labels"]
    results = {}
    with torch.no_grad():
        for s, f in settings_from(test, combine_how).items():
            scores = heads[s].cpu()(f.float())
            results[s] = {"linear": classification_metrics(scores, test_y, class_names)}
    return results
