"""Can the demo model learn a demo data design at all? Check it before running the workflow.

    python bench/demo_learnability.py [--preset config/demo.yaml ...] [--classes all|N|A,B,...]
        [--groups 8] [--clips 2] [--mode random,supervised,ssl] [--steps 300]  # --classes shapes
        [--background textured|flat|by-class] [--set NAME=VALUE ...] [--cfg KEY=VALUE ...]
        [--seeds 0,1,2] [--curve-every 250] [--colour-probe] [--device cpu|cuda|auto] [--workers N]

Renders demo videos in memory (``svt.demo_data.render_clip``, resized to the demo decode's
short side, no encoding), splits them into train/test groups as the dataset's fold 1 does, and
prints test accuracy (linear probe / kNN, as ``svt.probe`` computes them on the slow, fast and
slow-fast views) for up to three models of the preset's architecture:

* ``random``: the frozen random-init backbone, the demo's baseline. At random init the
  temporal branch adds nothing (``temporal_fc`` and ``time_embed`` start at zero), so it is a
  bag of frames, blind to frame order.
* ``supervised``: the same backbone trained *with labels* (cross-entropy on the first global
  view, the SVT crops and jitter, AdamW, the preset's schedule) for ``--steps`` steps: the
  upper bound of what any pretraining of this size can give the probe. If this stays at
  chance, no self-supervised recipe will beat random either: change the data or the model.
* ``ssl``: SVT pretraining exactly as ``svt.pretrain`` does it (all views, SVTLoss, EMA
  teacher, schedules) for ``--steps`` steps, then the frozen teacher is probed.

``--seeds`` repeats every mode per pretraining seed (model init, views, data order; the
rendered videos stay the same) and prints the mean and standard deviation over the seeds.
``--curve-every N`` prints the slow view's linear/kNN test accuracy every N training steps,
so a budget can be read off the curve. ``--device cuda`` trains and extracts on a GPU (the
views are still made on the CPU: ``--workers N`` makes them in N processes meanwhile).

``--colour-probe`` also probes each model's slow-view features for the video's object hue
(6 bins, from the pixels): the check for the colour shortcut, where pretraining matches its
views on a colour that one video keeps throughout and learns no shape (README "The demo
result"). ``--set SHAPE_COLOUR_TURNS=0,0`` renders the shapes with such constant colours.

``--background flat`` draws one flat colour per video; ``by-class`` colours the background by
class (a sanity check: every mode should then reach 100%). ``--set`` overrides a constant of
``svt.demo_data`` (``--set SLOW_SPEED=0.012,0.016``), ``--cfg`` a config key
(``--cfg model.patch_size=8``). Runs on one core; several designs can run side by side.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from svt import demo_data as dd  # noqa: E402
from svt.config import load_config  # noqa: E402
from svt import eval_views as evv, probe as probe_mod  # noqa: E402
from svt.loss import (SVTLoss, apply_schedules, cancel_last_layer_gradients,  # noqa: E402
                      clip_gradients, optim_schedules, param_groups, update_teacher)
from svt.pretrain import build_nets  # noqa: E402
from svt.supervised import Classifier, first_global_view  # noqa: E402
from svt.views import SVTAugment, SVTClipSampler, ViewConfig, sample_generator  # noqa: E402

FPS = 25.0


def set_key(cfg: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    for p in path:
        cfg = cfg[p]
    if last not in cfg:
        raise SystemExit(f"--cfg {dotted}: no such config key")
    cfg[last] = yaml.safe_load(value)


def set_constant(text: str) -> None:
    name, _, value = text.partition("=")
    if not hasattr(dd, name):
        raise SystemExit(f"--set {name}: svt.demo_data has no such constant")
    values = tuple(float(v) for v in value.split(","))
    setattr(dd, name, values if len(values) > 1 else values[0])


def backgrounds(kind: str, classes: list[str]):
    """A replacement for svt.demo_data._background (or None to keep the textured one)."""
    if kind == "textured":
        return None
    if kind == "flat":
        return lambda rng, w, h, cls: np.broadcast_to(rng.random(3, dtype=np.float32), (h, w, 3)).copy()
    colours = {c: np.random.default_rng(i).random(3).astype(np.float32) for i, c in enumerate(classes)}
    return lambda rng, w, h, cls: np.broadcast_to(colours[cls], (h, w, 3)).copy()


def resize_short_side(video: np.ndarray, short: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, h, w, 3) with short side ``short``, as the decode stage."""
    x = evv.resize_short_side(torch.from_numpy(video).permute(0, 3, 1, 2).float(), short)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def render(classes, groups, clips, frames, size, short, seed, background, jobs):
    held_out = dd.held_out_groups(groups, 1)
    todo = [(c, g, k) for c in classes for g in range(1, groups + 1) for k in range(1, clips + 1)]
    original = dd._background

    def one(job):
        c, g, k = job
        rng = np.random.default_rng([seed, dd.ALL_CLASSES.index(c), g, k])
        return resize_short_side(dd.render_clip(c, rng, frames, size), short)

    if background is None:
        with ThreadPoolExecutor(jobs) as pool:
            videos = list(pool.map(one, todo))
    else:  # the replacement needs the class: render one by one with the module hook swapped
        videos = []
        try:
            for job in todo:
                dd._background = lambda rng, w, h, c=job[0]: background(rng, w, h, c)
                videos.append(one(job))
        finally:
            dd._background = original
    labels = torch.tensor([classes.index(c) for c, _, _ in todo])
    test = torch.tensor([g in held_out for _, g, _ in todo])
    return videos, labels, test


@torch.no_grad()
def features(model, videos, frames: int, size: int, norm: dict) -> torch.Tensor:
    """Frozen CLS features of one whole-video centre view, as the features stage computes them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for v in videos:
        idx = torch.from_numpy(evv.EvalClipSampler(frames, 1)(len(v), FPS)[0])
        out.append(model(evv.eval_views([v[idx]], size, 1, **norm).to(device)).mean(0).cpu())
    model.train(was_training)
    return torch.stack(out)


def probe(model, videos, labels, test, geometries, classes, cfg) -> dict[str, tuple]:
    """Linear probe and kNN top-1 (%) per setting, exactly as svt.probe computes them."""
    ec = cfg["evaluate"]
    probe_cfg = probe_mod.ProbeConfig(epochs=ec["probe_epochs"], lr=ec["probe_lr"], batch_size=ec["probe_batch_size"],
                               momentum=ec["probe_momentum"], seed=cfg["optim"]["seed"])
    norm = {"mean": cfg["augment"]["mean"], "std": cfg["augment"]["std"]}  # as pretraining's views
    feats = {name: features(model, videos, f, s, norm) for name, (f, s) in geometries.items()}
    results = probe_mod.evaluate_settings({k: f[~test] for k, f in feats.items()}, labels[~test],
                                   {k: f[test] for k, f in feats.items()}, labels[test], classes,
                                   probe_cfg, ec["combine"], ec["knn_k"], ec["knn_temperature"])
    return {s: (100 * r["linear"]["top1"], 100 * r["knn"]["top1"]) for s, r in results.items()}


def colour_bins(videos, bins: int = 6) -> torch.Tensor:
    """Each video's object hue in ``bins`` equal bins: the hue of the mean colour of its light
    pixels (the shape family draws a light object on a dark background) over the whole clip.
    With a colour constant within the clip this is the video's colour; the shortcut probe asks
    whether a backbone's features tell it."""
    out = []
    for v in videos:
        x = v.float().reshape(-1, 3) / 255
        obj = x[x.mean(1) > 0.5]
        r, g, b = (obj if len(obj) else x).mean(0).tolist()
        out.append(min(int(colorsys.rgb_to_hsv(r, g, b)[0] * bins), bins - 1))
    return torch.tensor(out)


def view_batch(videos, batch, sampler, augment, rng, generator):
    per_sample = []
    for j in batch:
        v = videos[j]
        per_sample.append(augment([v[torch.from_numpy(i)] for i in sampler(len(v), FPS, rng)],
                                  generator=generator))
    return [torch.stack(views) for views in zip(*per_sample)]


class SampleViews(torch.utils.data.Dataset):
    """One training video's views from its ``(epoch, index)`` alone (seeded as svt's loader
    workers seed them), so that worker processes can build them in any order."""

    def __init__(self, videos, sampler, augment, seed: int):
        self.videos, self.sampler, self.augment, self.seed = videos, sampler, augment, seed

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, key):
        epoch, j = key
        v = self.videos[j]
        rng = np.random.default_rng([self.seed, epoch, j])
        clips = [v[torch.from_numpy(i)] for i in self.sampler(len(v), FPS, rng)]
        return self.augment(clips, generator=sample_generator(self.seed, epoch, j))


def stack_views(items):
    return [torch.stack(views) for views in zip(*items)]


def batches(videos, train_idx, bs, steps, sampler, augment, seed, workers):
    """(indices, views) per step. Without workers the views are made here, drawing from one
    generator in order (the figures of the README were measured so); with workers they are
    made by ``workers`` processes, seeded per sample, while the GPU trains."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    iters = len(train_idx) // bs
    if not workers:
        while True:
            order = rng.permutation(train_idx)
            for i in range(iters):
                batch = order[i * bs:(i + 1) * bs]
                yield batch, view_batch(videos, batch, sampler, augment, rng, gen)
    plan = []
    for epoch in range(math.ceil(steps / iters)):
        order = rng.permutation(train_idx)
        plan += [[(epoch, int(j)) for j in order[i * bs:(i + 1) * bs]] for i in range(iters)]
    loader = torch.utils.data.DataLoader(SampleViews(videos, sampler, augment, seed),
                                         batch_sampler=plan[:steps], num_workers=workers,
                                         collate_fn=stack_views, prefetch_factor=4)
    for keys, views in zip(plan, loader):
        yield np.array([j for _, j in keys]), views


def train(mode, cfg, videos, labels, test, n_classes, steps, log_every=50, device="cpu",
          curve=None, curve_every=0, workers=0):
    """Train a fresh student for ``steps`` steps; return the backbone to probe. ``curve``
    (backbone -> text) is printed every ``curve_every`` steps: accuracy against steps."""
    oc = cfg["optim"]
    device = torch.device(device)
    torch.manual_seed(oc["seed"])
    student, teacher = build_nets(cfg, device)
    # the supervised bound trains on the first global view only, as svt.supervised does
    view_cfg = first_global_view(cfg) if mode == "supervised" else \
        ViewConfig.from_config(cfg["views"], cfg["augment"])
    sampler, augment = SVTClipSampler(view_cfg), SVTAugment(view_cfg)
    n_global = len(cfg["views"]["global_frames"])
    bs = oc["batch_size_per_gpu"]
    train_idx = torch.nonzero(~test).flatten().numpy()
    iters = len(train_idx) // bs
    epochs = max(1, math.ceil(steps / iters))
    lr_s, wd_s, mom_s = optim_schedules(oc, epochs, iters)
    loss_fn = SVTLoss.from_config(cfg["loss"], n_global, len(view_cfg.views), oc["epochs"]) \
        if mode == "ssl" else None
    classifier = Classifier(student.backbone, n_classes).to(device)  # supervised only
    params = student if mode == "ssl" else classifier
    optimizer = torch.optim.AdamW(param_groups(params, oc["decay_embeddings"]))
    t0, step, losses, hits = time.time(), 0, [], []
    for batch, views in batches(videos, train_idx, bs, steps, sampler, augment, oc["seed"], workers):
        views = [v.to(device, non_blocking=True) for v in views]
        apply_schedules(optimizer, float(lr_s[step]), float(wd_s[step]))
        if mode == "ssl":
            with torch.no_grad():
                t_out = teacher(views[:n_global])
            loss, stats = loss_fn(student(views), t_out, step / iters)
            extra = f"teacher entropy {stats['teacher_entropy']:.2f}"
        else:
            student.train()
            logits = classifier(views[0])
            y = labels[batch].to(device)
            loss = F.cross_entropy(logits, y)
            hits.append((logits.argmax(1) == y).float().mean().item())
            extra = f"train acc {100 * np.mean(hits[-log_every:]):.0f}%"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(params, oc["clip_grad"], oc["clip_mode"])
        if mode == "ssl":
            cancel_last_layer_gradients(student.head, step / iters, oc["freeze_last_layer"])
        optimizer.step()
        if mode == "ssl":
            update_teacher(student, teacher, float(mom_s[step]))
        step += 1
        losses.append(loss.item())
        if step % log_every == 0:  # means over the interval: one batch of 8 says little
            print(f"  {mode} step {step}/{steps} loss {np.mean(losses[-log_every:]):.3f} {extra} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        if curve is not None and curve_every and step % curve_every == 0:
            net = teacher.backbone if mode == "ssl" else student.backbone
            print(f"  {mode} step {step}: {curve(net)} (loss {np.mean(losses[-curve_every:]):.3f},"
                  f" {time.time() - t0:.0f} s)", flush=True)
        if step == steps:
            break
    return teacher.backbone if mode == "ssl" else student.backbone


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "config.yaml"))
    p.add_argument("--preset", action="append", default=None,
                   help="config presets over config.yaml, in order (default config/demo.yaml); e.g. "
                        "--preset config/demo.yaml --preset config/demo-gpu.yaml")
    p.add_argument("--classes", default="all",
                   help="all (the motion classes), shapes (the shape family), the first N, or names A,B,...")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--clips", type=int, default=2, help="clips per group and class (default 2, as make demo-data)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="160x120")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="random,supervised,ssl")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300, as the demo)")
    p.add_argument("--background", choices=["textured", "flat", "by-class"], default="textured")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--cfg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--jobs", type=int, default=2, help="render threads")
    p.add_argument("--seeds", default=None, help="pretraining seeds, e.g. 0,1,2: each mode runs "
                   "once per seed (model init, views, order) and the mean and spread are printed")
    p.add_argument("--curve-every", type=int, default=0, help="print the slow view's linear/kNN "
                   "test accuracy every N training steps (accuracy against steps)")
    p.add_argument("--colour-probe", action="store_true",
                   help="also probe each model's slow-view features for the video's object hue "
                        "(6 bins): the colour shortcut shows as a high hue accuracy")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that build the training views while the model trains (0: in "
                        "the training process, the README's figures; use most cores on a GPU host)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)

    cfg = load_config(a.config, a.preset or [str(ROOT / "config/demo.yaml")])
    for item in a.cfg:
        set_key(cfg, *item.split("=", 1))
    for item in a.set:
        set_constant(item)
    if a.classes == "all":
        classes = list(dd.CLASSES)
    elif a.classes == "shapes":
        classes = list(dd.SHAPE_CLASSES)
    elif a.classes.isdigit():
        classes = dd.CLASSES[:int(a.classes)]
    else:
        classes = a.classes.split(",")
    w, h = (int(x) for x in a.size.split("x"))
    ec = cfg["evaluate"]
    geometries = {"slow": (ec["slow_frames"], ec["slow_size"]), "fast": (ec["fast_frames"], ec["fast_size"])}

    t0 = time.time()
    videos, labels, test = render(classes, a.groups, a.clips, a.frames, (w, h), cfg["decode"]["short_side"],
                                  a.seed, backgrounds(a.background, classes), a.jobs)
    print(f"{len(classes)} classes, {int((~test).sum())} train / {int(test.sum())} test videos "
          f"(rendered in {time.time() - t0:.0f} s); chance {100 / len(classes):.1f}%", flush=True)
    if a.colour_probe:
        hues = colour_bins(videos)
        hue_names = [f"hue{i}" for i in range(6)]  # colour_bins' default
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if a.device == "auto" else a.device)
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [cfg["optim"]["seed"]]

    def slow_only(backbone) -> str:
        r = probe(backbone, videos, labels, test, {"slow": geometries["slow"]}, classes, cfg)
        return f"slow lin/kNN {r['slow'][0]:.1f} / {r['slow'][1]:.1f}"

    print(f"{'model':<24} {'slow lin/kNN':>14} {'fast lin/kNN':>14} {'slow-fast lin/kNN':>18}", flush=True)
    table: dict[str, list] = {}
    for seed in seeds:
        cfg["optim"]["seed"] = seed
        for mode in a.mode.split(","):
            t0 = time.time()
            if mode == "random":
                torch.manual_seed(seed)
                backbone = build_nets(cfg, torch.device(device))[1].backbone
                name = "random init"
            elif mode in ("supervised", "ssl"):
                backbone = train(mode, cfg, videos, labels, test, len(classes), a.steps, device=device,
                                 curve=slow_only, curve_every=a.curve_every, workers=a.workers)
                name = f"{mode} {a.steps} steps"
            else:
                raise SystemExit(f"--mode {mode}: expected random, supervised or ssl")
            r = probe(backbone, videos, labels, test, geometries, classes, cfg)
            table.setdefault(name, []).append([x for k in ("slow", "fast", "slow_fast") for x in r[k]])
            if len(seeds) > 1:
                name = f"{name} (seed {seed})"
            cells = [f"{r[k][0]:5.1f} / {r[k][1]:5.1f}" for k in ("slow", "fast", "slow_fast")]
            print(f"{name:<24} {cells[0]:>14} {cells[1]:>14} {cells[2]:>18}   "
                  f"({time.time() - t0:.0f} s)", flush=True)
            if a.colour_probe:
                h = probe(backbone, videos, hues, test, {"slow": geometries["slow"]}, hue_names, cfg)["slow"]
                print(f"{'  object hue (' + str(len(hue_names)) + ' bins)':<24} {h[0]:5.1f} / {h[1]:5.1f}"
                      f"   (chance {100 / len(hue_names):.1f}; test bins {np.bincount(hues[test], minlength=len(hue_names)).tolist()})",
                      flush=True)
    if len(seeds) > 1:
        print(f"\nmean +- standard deviation over seeds {','.join(map(str, seeds))}:")
        for name, rows in table.items():
            m, sd = np.mean(rows, 0), np.std(rows, 0)
            cells = [f"{m[i]:.1f}+-{sd[i]:.1f} / {m[i + 1]:.1f}+-{sd[i + 1]:.1f}" for i in (0, 2, 4)]
            print(f"{name:<24} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
