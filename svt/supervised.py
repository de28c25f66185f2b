"""The supervised upper bound: ``python -m svt.supervised`` (rule supervised).

    python -m svt.supervised --manifest train.csv --videos-root V --classes classes.txt \
        --config-json '{...}' --out-dir OUT

The pretraining backbone (same architecture, same initialisation, same optimiser and
schedules, ``optim.epochs`` epochs) trained *with labels*: cross-entropy of a linear head on
the CLS token of the first global SVT view, with its crops and jitter, on the evaluation
dataset's training split. Evaluated like the other backbones (frozen features, linear probe,
kNN), it is what any pretraining of this size and length could give at most: when it is not
far above random init, the data or the budget cannot show pretraining helping.

One process on one device (the bound is for data sets and budgets where that is enough). Safe
to kill: checkpoints are atomic and a rerun resumes from the last one; SIGTERM/SIGUSR1 save
and exit with EXIT_PREEMPTED, as svt.pretrain does. Writes ``backbone.pth`` (the layout of
svt.pretrain's ``teacher_backbone.pth``, which svt.adapt reads), ``metrics.csv``,
``curves.png`` and ``config.yaml`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from svt import checkpoint as ckpt
from svt import progress, tracking
from svt.loader import BACKENDS, VideoDataset, cpu_backend, loader_workers
from svt.loss import apply_schedules, clip_gradients, optim_schedules
from svt.model import build_model, file_sha256, load_pretrained, pretrained_cfg
from svt.pretrain import (EXIT_PREEMPTED, EpochSampler, StopFlag, inputs_fingerprint,
                          make_optimizer, precision_context, trim_metrics_csv, write_curves)
from svt.views import AugmentCollate, SVTAugment, SVTClipSampler, ViewConfig

METRIC_FIELDS = ["step", "epoch", "loss", "train_accuracy", "lr", "wd", "grad_norm", "step_time",
                 "samples_per_s", "data_wait"]


class Classifier(nn.Module):
    """The backbone and a linear head on its CLS feature."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embed_dim, num_classes)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(view))


def first_global_view(cfg: dict) -> ViewConfig:
    """The views the bound trains on: the first global view alone (its crops and jitter)."""
    views = ViewConfig.from_config(cfg["views"], cfg["augment"])
    return dataclasses.replace(views, global_views=views.global_views[:1], local_views=())


def read_classes(path: Path) -> list[str]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise SystemExit(f"svt.supervised: {path}: no class names")
    return names


CURVE_PANELS = ((("loss",), "cross-entropy (ln classes at chance)"),
                (("train_accuracy",), "training accuracy, %"), (("lr",), "learning rate"))


# runtime settings (svt.pretrain's keys): the --options, else the JSON's pretrain section
RUNTIME = {"num_workers": 2, "decoder": "pyav", "precision": "auto", "checkpoint_every": 100,
           "log_every": 10}


def train(a: argparse.Namespace) -> int:
    cfg = json.loads(a.config_json)
    cfg["pretrain"] = {**RUNTIME, **cfg.get("pretrain", {}),
                       **{k: getattr(a, k) for k in RUNTIME if getattr(a, k) is not None}}
    oc, pc = cfg["optim"], cfg["pretrain"]
    out_dir, ckpt_dir = Path(a.out_dir), Path(a.out_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    classes = read_classes(a.classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    views = first_global_view(cfg)
    # the views are built in CPU workers: a GPU reader is replaced by its CPU counterpart, as
    # in the evaluation stages
    dataset = VideoDataset(a.manifest, a.videos_root, SVTClipSampler(views),
                           backend=cpu_backend(pc["decoder"]), split="train", seed=oc["seed"])
    bs = oc["batch_size_per_gpu"]
    sampler = EpochSampler(len(dataset), bs, 0, 1, oc["seed"])
    if sampler.batches == 0:
        raise SystemExit(f"{a.manifest}: {len(dataset)} training videos cannot fill one batch of "
                         f"{bs}; lower optim.batch_size_per_gpu")
    collate = AugmentCollate(SVTAugment(views), oc["seed"])
    workers = loader_workers(dataset.backend, pc["num_workers"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=True,
        collate_fn=collate, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(oc["seed"]))

    torch.manual_seed(oc["seed"])  # the same initial backbone as pretraining's student
    backbone = build_model(**{k: v for k, v in cfg["model"].items() if k != "init"})
    if cfg["model"].get("init") not in (None, "none"):
        load_pretrained(backbone, cfg["model"]["init"])
    model = Classifier(backbone, len(classes)).to(device)
    model.train()
    ckpt.seed_all(oc["seed"] + 1)
    optimizer = make_optimizer(model, oc["decay_embeddings"])
    _, autocast = precision_context(pc["precision"], device)
    iters = sampler.batches
    total = oc["epochs"] * iters
    limit = min(total, a.max_steps) if a.max_steps else total
    lr_s, wd_s, _ = optim_schedules(oc, oc["epochs"], iters)
    inputs = inputs_fingerprint(a.manifest, a.videos_root, cfg)

    step, run_id = 0, None
    last = ckpt.latest(ckpt_dir)
    if last is not None:
        state, tag, error = ckpt.load_resumable(last, inputs, device)
        if tag is None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, run_id = state["step"], state["mlflow_run_id"]
            ckpt.set_rng_state(state["rng"])
            print(f"supervised: resumed from {last} at step {step}", file=sys.stderr)
        else:  # set aside, never deleted, and train from the start
            aside = ckpt.set_aside(last, tag)
            why = f"cannot be read ({error})" if tag == "corrupt" else "was trained on other inputs"
            print(f"supervised: {last} {why}; moved to {aside.name}, starting over", file=sys.stderr)

    tracker = tracking.stage_run(a, "supervised", run_id=run_id, restore_status=False,
                                 tags={"svt.out_dir": str(out_dir.resolve())})
    if run_id is None:
        tracker.log_params(tracking.flatten({k: cfg[k] for k in ("model", "views", "augment", "optim")}))
    run_id = tracker.run_id

    def save() -> None:
        ckpt.save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "step": step, "rng": ckpt.rng_state(), "inputs": inputs,
                          "mlflow_run_id": run_id}, ckpt_dir / ckpt.LAST)

    metrics_csv = out_dir / "metrics.csv"
    trim_metrics_csv(metrics_csv, METRIC_FIELDS, step)  # rows past the checkpoint: logged again

    stop = StopFlag()
    bar = progress.bar(limit, "supervised", "step", initial=step)
    losses, hits, data_time, t_log = [], [], 0.0, time.perf_counter()
    print(f"supervised: {len(dataset)} videos, {len(classes)} classes, {iters} steps per epoch, "
          f"{limit} steps on {device}; view {views.views[0]}", file=sys.stderr, flush=True)
    while step < limit:
        epoch, start_batch = divmod(step, iters)
        sampler.set_epoch(epoch, start_batch)
        dataset.set_epoch(epoch)
        collate.epoch = epoch
        t_end = time.perf_counter()
        for batch in loader:
            data_time += time.perf_counter() - t_end
            view = batch["views"][0].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            apply_schedules(optimizer, float(lr_s[step]), float(wd_s[step]))
            with autocast():
                logits = model(view)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = clip_gradients(model, oc["clip_grad"], oc["clip_mode"])
            optimizer.step()
            losses.append(loss.detach())
            hits.append((logits.argmax(1) == y).float().mean().detach())
            step += 1
            if bar is not None:
                bar.update()
            if step % pc["log_every"] == 0 or step == limit:
                mean_loss = torch.stack(losses).mean().item()
                if not math.isfinite(mean_loss):
                    raise SystemExit(f"svt.supervised: the loss is not finite ({mean_loss}) "
                                     f"in steps {step - len(losses) + 1}-{step}; lower optim.lr")
                now, n = time.perf_counter(), len(losses)
                row = {"step": step, "epoch": step / iters, "loss": mean_loss,
                       "train_accuracy": 100 * torch.stack(hits).mean().item(), "lr": lr_s[step - 1],
                       "wd": wd_s[step - 1], "grad_norm": float(grad_norm),
                       "step_time": (now - t_log) / n, "samples_per_s": bs * n / max(now - t_log, 1e-9),
                       "data_wait": data_time / max(now - t_log, 1e-9)}
                with open(metrics_csv, "a", newline="") as f:
                    csv.writer(f).writerow([row[k] for k in METRIC_FIELDS])
                tracker.log_metrics({(f"train/{k}" if k in ("loss", "train_accuracy", "lr") else k): v
                                     for k, v in row.items() if k != "step"}, step)
                if not progress.on_stderr(bar):
                    print(f"step {step}/{limit} loss {mean_loss:.4f} train accuracy "
                          f"{row['train_accuracy']:.1f}% lr {row['lr']:.2e} "
                          f"{row['samples_per_s']:.1f} samples/s", file=sys.stderr, flush=True)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{row['train_accuracy']:.0f}%",
                                    refresh=False)
                losses, hits, data_time, t_log = [], [], 0.0, now
            if stop.signal is not None:
                save()
                print(f"supervised: stop requested; saved step {step}, exiting with "
                      f"{EXIT_PREEMPTED} to be resumed", file=sys.stderr, flush=True)
                tracker.finish("KILLED")
                return EXIT_PREEMPTED
            if step % iters == 0 or step % pc["checkpoint_every"] == 0 or step == limit:
                save()
            if step >= limit or step % iters == 0:
                break
            t_end = time.perf_counter()
    if bar is not None:
        bar.close()

    out = out_dir / "backbone.pth"
    ckpt.save_atomic({"state_dict": model.backbone.state_dict(), "model": cfg["model"],
                      "pretrained_cfg": pretrained_cfg(model.backbone, cfg["augment"]["mean"],
                                                       cfg["augment"]["std"]),
                      "step": step, "mlflow_run_id": run_id}, out)
    write_curves(metrics_csv, out_dir / "curves.png", CURVE_PANELS)
    for name in ("config.yaml", "curves.png", "metrics.csv"):
        tracker.log_artifact(out_dir / name)
    tracker.set_tags({"svt.backbone": str(out.resolve()), "svt.backbone_sha256": file_sha256(out)})
    tracker.finish()
    (out_dir / "run.json").write_text(json.dumps({"mlflow_run_id": run_id, "steps": step}) + "\n")
    print(f"supervised: wrote {out} after {step} steps", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.supervised", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True, help="the evaluation dataset's train manifest")
    ap.add_argument("--videos-root", type=Path, required=True, help="folder of the manifest's videos")
    ap.add_argument("--classes", type=Path, required=True, help="classes.txt of the dataset")
    ap.add_argument("--config-json", required=True,
                    help="model, views, augment and optim sections as JSON (a pretrain section may "
                         "give the runtime settings below)")
    ap.add_argument("--num-workers", type=int, help="DataLoader workers")
    ap.add_argument("--decoder", choices=BACKENDS,
                    help="frame reader (a GPU reader is replaced by its CPU counterpart)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    ap.add_argument("--log-every", type=int, help="steps between metric logs")
    ap.add_argument("--out-dir", type=Path, required=True, help="backbone.pth, curves, checkpoints/")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: all)")
    tracking.add_arguments(ap, experiment="svt", run_name="supervised")
    return train(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
