"""Linear probe and kNN on a frozen backbone: ``python -m svt.probe``.

Cached features (fast; the default)::

    python -m svt.probe --train slow=train_slow.pt --train fast=train_fast.pt \
        --test slow=test_slow.pt --test fast=test_fast.pt --classes classes.txt --out-dir DIR

evaluates every geometry alone and all of them combined (``slow_fast``: the mean of the CLS
features, ``--combine concat`` to concatenate): a linear probe (Linear(dim, classes), N(0, 0.01)
init, SGD momentum, lr x batch/256, cosine, cross-entropy) and a weighted kNN
(L2-normalised, exp(sim / T) votes of the k nearest). Writes ``metrics.json``,
``confusion_<setting>.png`` and ``results.md``, prints the table and, with ``--tracking-uri``,
logs all of it under ``eval/<prefix>/`` to a run of its own (``probe/<prefix>``, a child of the
workflow's parent run when there is one). That run is tagged ``svt.backbone_run_id`` with the
backbone's pretraining run (``--backbone-run-id``, else the one recorded with the backbone), which itself
gets no evaluation metrics: its charts stay its training curves.

Online (the paper protocol: heads trained on freshly augmented views through the frozen
backbone; slow, so not the default)::

    python -m svt.probe --online --backbone adapted.pth --geometry slow --geometry fast \
        --train-manifest train.csv --test-manifest test.csv --videos-root V --classes ... --out-dir DIR

The comparison of several backbones' metrics.json files is ``python -m svt.table``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from svt import tracking
from svt.atomic import write_text_atomic
from svt.adapt import load_adapted, model_for_geometry
from svt.config import parse_named
from svt.eval_views import progress_bar, autocast_for, extract_features, resolve_device
from svt.features import load_features
from svt.knn import knn_accuracy
from svt.loader import BACKENDS, VideoDataset, cpu_backend
from svt.metrics import classification_metrics, eval_metrics, ordered, pct


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


def format_results(metrics: Mapping) -> str:
    """One run's metrics as a markdown table (setting x linear/kNN top-1/top-5)."""
    lines = ["| setting | linear top-1 | linear top-5 | kNN top-1 | kNN top-5 |",
             "|---|---:|---:|---:|---:|"]
    for s in ordered(metrics):
        lin, knn = metrics[s].get("linear", {}), metrics[s].get("knn", {})
        lines.append(f"| {s.replace('_', '-')} | {pct(lin.get('top1'))} | {pct(lin.get('top5'))}"
                     f" | {pct(knn.get('top1'))} | {pct(knn.get('top5'))} |")
    return "\n".join(lines)


def write_outputs(results: Mapping, class_names: Sequence[str], out_dir) -> dict:
    """metrics.json and confusion_<setting>.png into ``out_dir``; returns the metrics dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_json(results)
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    for s, r in results.items():
        if "confusion" in r.get("linear", {}):
            plot_confusion(r["linear"]["confusion"], class_names, out_dir / f"confusion_{s}.png",
                           f"{s.replace('_', '-')}: linear probe")
    return metrics


def log_to_mlflow(metrics: Mapping, out_dir, args: argparse.Namespace, prefix: str = "pretrained",
                  tags: Mapping[str, str] | None = None) -> None:
    """Metrics as ``eval/<prefix>/<setting>/<probe>_<top1|top5>`` plus metrics.json and the
    plots (artifacts under ``eval/<prefix>/``) into the evaluation's own run
    (``probe/<prefix>``, svt.tracking.stage_run). Tracking trouble never fails the probe."""
    tracker = tracking.stage_run(args, "evaluate", tags=tags, run_name=f"probe/{prefix}")
    tracker.log_metrics(eval_metrics(metrics, prefix), step=0)
    out_dir = Path(out_dir)
    for f in sorted(out_dir.glob("metrics.json")) + sorted(out_dir.glob("confusion_*.png")):
        tracker.log_artifact(f, f"eval/{prefix}")
    tracker.finish()


def train_online(adapted: Mapping, geometries: Sequence[str], train_manifest, test_manifest,
                 videos_root, class_names: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                 combine_how: str = "mean", clips: int = 1, crops: int = 3,
                 hflip: float = 0.5, crop_scale: tuple = (0.4, 1.0), num_workers: int = 0,
                 decoder: str = "pyav", device: str | torch.device = "cpu",
                 test_videos_root=None, progress: bool = True) -> dict:
    """The paper protocol: linear heads trained on the frozen backbone's CLS features of
    freshly augmented views every epoch (random temporal position, random resized crop,
    optional flip; one decode per video for all geometries), one head per setting (each
    geometry, and the combination). Tested on the deterministic clips x crops views.
    Returns {setting: {"linear": metrics}} (no kNN: that needs fixed training features)."""
    from svt.views import AugmentCollate, SVTAugment, SVTClipSampler, ViewConfig, ViewSpec

    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    models = {g: model_for_geometry(adapted, g).to(device) for g in geometries}
    norm = adapted["pretrained_cfg"]  # the mean/std the backbone was trained with
    specs = tuple(ViewSpec(frames=adapted["geometries"][g]["frames"],
                           size=adapted["geometries"][g]["size"], span=1.0,
                           scale=tuple(crop_scale), blur=0.0, solarize=0.0) for g in geometries)
    view_cfg = ViewConfig(global_views=specs, local_views=(), hflip=hflip, color_jitter=0.0,
                          grayscale=0.0, mean=norm["mean"], std=norm["std"])
    ds = VideoDataset(train_manifest, videos_root, SVTClipSampler(view_cfg), backend=cpu_backend(decoder),
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
    bar = progress_bar(cfg.epochs * (n // bs) * bs, "online probe") if progress else None
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
                             geo["size"], geo["frames"], norm, clips, crops,
                             batch_size=max(1, bs // 4),
                             num_workers=num_workers, decoder=decoder, device=device,
                             progress=progress)
        test[g], test_y = r["features"], r["labels"]
    results = {}
    with torch.no_grad():
        for s, f in settings_from(test, combine_how).items():
            scores = heads[s].cpu()(f.float())
            results[s] = {"linear": classification_metrics(scores, test_y, class_names)}
    return results


def _load_split(named: dict[str, str], split: str) -> tuple[dict, object, str | None]:
    """Features per geometry, their labels, and the backbone's recorded MLflow run id."""
    feats, first = {}, None
    for name, path in named.items():
        d = load_features(path)
        if first is None:
            first = d
        elif d["paths"] != first["paths"] or not (d["labels"] == first["labels"]).all():
            raise ValueError(f"{split} features {name!r} ({path}) cover other videos than "
                             f"{next(iter(named))!r}: extract them from the same manifest")
        elif d["backbone"]["sha256"] != first["backbone"]["sha256"]:
            raise ValueError(f"{split} features {name!r} ({path}) come from another backbone")
        feats[name] = d["features"]
    return feats, first["labels"], first.get("mlflow_run_id")


def run_cached(a, cfg: ProbeConfig, classes: list[str]) -> tuple[dict, str | None]:
    train, test = parse_named(a.train, "--train"), parse_named(a.test, "--test")
    if not train or list(train) != list(test):
        raise ValueError(f"--train and --test must name the same geometries in the same order, "
                         f"got {list(train)} and {list(test)}")
    tr, tr_y, run_id = _load_split(train, "train")
    te, te_y, _ = _load_split(test, "test")
    results = evaluate_settings(tr, tr_y, te, te_y, classes, cfg, a.combine, a.knn_k,
                                a.knn_temperature, resolve_device(a.device))
    return results, run_id


def run_online(a, cfg: ProbeConfig, classes: list[str]) -> tuple[dict, str | None]:
    if not (a.backbone and a.geometry and a.train_manifest and a.test_manifest and a.videos_root):
        raise ValueError("--online needs --backbone, --geometry, --train-manifest, "
                         "--test-manifest and --videos-root")
    adapted = load_adapted(a.backbone)
    results = train_online(adapted, a.geometry, a.train_manifest, a.test_manifest,
                           a.videos_root, classes, cfg, a.combine, a.clips, a.crops, a.hflip,
                           (a.crop_scale, 1.0), a.num_workers, a.decoder, a.device,
                           a.test_videos_root)
    return results, adapted.get("mlflow_run_id")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    io = ap.add_argument_group("cached features")
    io.add_argument("--train", action="append", metavar="NAME=FEATURES.pt", help="repeat per geometry")
    io.add_argument("--test", action="append", metavar="NAME=FEATURES.pt", help="repeat per geometry")
    ap.add_argument("--classes", type=Path, help="class names, one a line, in label order")
    ap.add_argument("--out-dir", type=Path, help="metrics.json, confusion_*.png, results.md")
    p = ap.add_argument_group("probe")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.001, help="for batch 256; scaled by batch/256")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--combine", choices=("mean", "concat"), default="mean",
                   help="slow-fast feature: mean of the CLS features or their concatenation")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-temperature", type=float, default=0.07)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default; the probe is small) | auto | cuda")
    on = ap.add_argument_group("online probe (--online)")
    on.add_argument("--online", action="store_true", help="train on augmented views, not cached features")
    on.add_argument("--backbone", type=Path, help="adapted backbone (svt.adapt)")
    on.add_argument("--geometry", action="append", help="recorded geometry name; repeat")
    on.add_argument("--train-manifest", type=Path)
    on.add_argument("--test-manifest", type=Path)
    on.add_argument("--videos-root", type=Path)
    on.add_argument("--test-videos-root", type=Path, help="default: --videos-root")
    on.add_argument("--clips", type=int, default=1, help="test clips")
    on.add_argument("--crops", type=int, default=3, help="test crops")
    on.add_argument("--hflip", type=float, default=0.5, help="flip probability (0: direction matters)")
    on.add_argument("--crop-scale", type=float, default=0.4, help="smallest random-crop area")
    on.add_argument("--num-workers", type=int, default=0)
    on.add_argument("--decoder", default="pyav", choices=BACKENDS)
    tracking.add_arguments(ap)
    ap.add_argument("--backbone-run-id", default=None, help="the backbone's pretraining run, tagged "
                    "on the probe's run (default: the one recorded with the backbone)")
    ap.add_argument("--run-json", type=Path, default=None,
                    help="run.json written by svt.pretrain: the pretraining run it names")
    ap.add_argument("--prefix", default="pretrained", help="metric prefix, e.g. random | pretrained")
    a = ap.parse_args(argv)

    if not a.classes or not a.out_dir:
        ap.error("--classes and --out-dir are required")
    classes = read_classes(a.classes)
    cfg = ProbeConfig(a.epochs, a.lr, a.batch_size, a.momentum, a.weight_decay, a.seed)
    try:
        results, recorded_run = (run_online if a.online else run_cached)(a, cfg, classes)
    except ValueError as err:
        print(f"svt.probe: {err}", file=sys.stderr)
        return 2
    metrics = write_outputs(results, classes, a.out_dir)
    table = format_results(metrics)
    (a.out_dir / "results.md").write_text(table + "\n")
    print(table)
    if a.run_json and not a.backbone_run_id:
        a.backbone_run_id = json.loads(a.run_json.read_text()).get("mlflow_run_id")
    run_id = a.backbone_run_id or recorded_run
    tags = tracking.parse_tags(a.tag)
    if run_id:
        tags["svt.backbone_run_id"] = run_id
    log_to_mlflow(metrics, a.out_dir, a, a.prefix, tags)
    return 0


if __name__ == "__main__":
    sys.exit(main())
