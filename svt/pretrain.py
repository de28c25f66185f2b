"""SVT self-supervised pretraining: ``python -m svt.pretrain`` (one process per device).

    torchrun --nproc-per-node 8 -m svt.pretrain --manifest train.csv --videos-root V \
        --config-json '{...}' --out-dir OUT --ckpt-dir CKPT

The student sees all views (2 global + 8 local), the teacher (an EMA of the student) sees the
global views, and the student learns to predict the teacher's centred, sharpened output for
every other view (svt.loss). Everything the run needs comes from the arguments: ``--config-json``
holds the model/views/augment/loss/optim/pretrain sections resolved by the workflow.

Safe to kill: checkpoints are atomic and the run resumes from the latest one. SIGTERM/SIGUSR1
only set a flag; the loop saves at the next step boundary and exits with EXIT_PREEMPTED so the
scheduler's retry resumes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from svt import checkpoint as ckpt
from svt import progress
from svt.loader import (BACKENDS, CPU_BACKENDS, GPU_BACKENDS, VideoDataset, check_gpu_decoder,
                        collate_clips, loader_workers)
from svt.loss import (DINOHead, MultiViewModel, SVTLoss, apply_schedules,
                      cancel_last_layer_gradients, clip_gradients, optim_schedules, param_groups,
                      update_teacher)
from svt.model import build_model, file_sha256, load_pretrained, pretrained_cfg
from svt import tracking
from svt.tracking import Tracker, flatten
from svt.views import AugmentCollate, SVTAugment, SVTClipSampler, ViewConfig, sample_generator

RUNTIME_KEYS = ("num_workers", "precision", "decoder", "compile", "checkpoint_every", "log_every")
# runtime keys a recipe JSON may leave out (older callers, benchmarks), with their defaults
OPTIONAL_RUNTIME = {"decoder_fallback": "none", "prefetch": 2, "augment_device": "auto"}
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request after saving; rerun to resume


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled, rank-sharded indices that can start mid-epoch: resuming after step k of an
    epoch continues with exactly the batches the killed run had not seen yet. Yields
    ``(epoch, index)``: the dataset draws the item's views from both, in persistent workers too."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int):
        self.n, self.bs, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start_batch = 0, 0
        self.batches = n // (batch_size * world)  # per rank; the ragged end is dropped

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.batches * self.bs * self.world]
        mine = order[self.rank :: self.world]
        return iter([(self.epoch, i) for i in mine[self.start_batch * self.bs :].tolist()])

    def __len__(self) -> int:
        return (self.batches - self.start_batch) * self.bs


# ---- distributed ----------------------------------------------------------------------------


def init_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world size, local rank, device) from torchrun's environment; single process
    without it. NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise SystemExit(f"svt.pretrain: local rank {local} but {torch.cuda.device_count()} visible "
                             "GPU(s): start at most one process per GPU (pretrain.devices_per_node)")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, local, device


def all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# ---- the run --------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGUSR1; read at step boundaries (never save from a signal handler)."""

    def __init__(self):
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.signal = signum


class NonFiniteWatch:
    """The first step whose loss is not finite, remembered on the device: reading a loss
    every step would make the host wait for the GPU each step. Checked where it matters: at
    log steps and before every save, so no weights a bad step touched are saved. Every rank
    takes part in the check (an all-reduce), so all ranks stop together."""

    def __init__(self, device: torch.device, last_good: Path):
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)
        self.last_good = last_good
        self.checked_at = -1  # a log step that also saves checks once

    def update(self, loss: torch.Tensor, it: int) -> None:
        loss = loss.detach().float()
        new = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(new, it, self.step)
        self.value = torch.where(new, loss, self.value)

    def check(self, it: int, iters: int) -> None:
        if self.checked_at == it:
            return
        self.checked_at = it
        bad = (self.step >= 0).float().reshape(1)
        if dist.is_initialized():
            dist.all_reduce(bad)
        if bad.item() > 0:
            first = int(self.step)
            where = (f"loss is {float(self.value)} at step {first} (epoch {first // iters})"
                     if first >= 0 else f"loss is not finite on another rank by step {it}")
            raise SystemExit(f"pretrain: {where}; stopping. Lower optim.lr or check the inputs; "
                             f"the last good checkpoint is {self.last_good}")


def stop_voter(stop: "StopFlag"):
    """() -> whether any rank was asked to stop; all ranks must call it every step. The vote
    goes over gloo (CPU) even beside NCCL, so it never waits for the GPU."""
    if not dist.is_initialized():
        return lambda: stop.signal is not None
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def vote() -> bool:
        flag = torch.tensor([float(stop.signal is not None)])
        dist.all_reduce(flag, group=group)
        return flag.item() > 0
    return vote


class Tee:
    """A text stream that writes to a primary stream and a copy; everything else (isatty,
    fileno, encoding) is the primary's, so progress bars behave as before."""

    def __init__(self, primary, copy):
        self.primary, self.copy = primary, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.primary.write(text)

    def flush(self) -> None:
        self.copy.flush()
        self.primary.flush()

    def __getattr__(self, name):
        return getattr(self.primary, name)


def inputs_fingerprint(manifest: Path, videos_root: Path, cfg: dict) -> str:
    """What a checkpoint was trained on: the config, the manifest and every listed video's
    size and modification time (a re-decoded dataset keeps names but not mtimes)."""
    import hashlib

    from svt.manifest import ManifestRow, iter_rows

    # not the runtime keys; svt.supervised's recipe has no loss section (same hash otherwise)
    recipe = {k: cfg[k] for k in ("model", "views", "augment", "loss", "optim") if k in cfg}
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update(Path(manifest).read_bytes())
    for row in iter_rows(manifest, ManifestRow):
        st = (Path(videos_root) / row.path).stat()
        h.update(f"{row.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def precision_context(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return precision, nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return precision, lambda: torch.autocast(device.type, dtype=dtype)


def make_optimizer(model: nn.Module, decay_embeddings: bool = True) -> torch.optim.AdamW:
    """AdamW over param_groups; the fused kernel (one launch for all tensors) where the
    device has it. Same update as the foreach path to fp32 rounding, same state layout."""
    device = next(model.parameters()).device
    return torch.optim.AdamW(param_groups(model, decay_embeddings),
                             fused=device.type in ("cuda", "cpu"))


def build_nets(cfg: dict, device: torch.device) -> tuple[MultiViewModel, MultiViewModel]:
    m, lc = cfg["model"], cfg["loss"]

    def net():
        backbone = build_model(**{k: v for k, v in m.items() if k != "init"})
        head = DINOHead(backbone.embed_dim, lc["out_dim"], lc["hidden_dim"], lc["bottleneck_dim"],
                        norm_last_layer=lc["norm_last_layer"])
        return MultiViewModel(backbone, head)

    student, teacher = net(), net()
    if m.get("init") and m["init"] != "none":
        load_pretrained(student.backbone, m["init"])
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    # official: the teacher runs in train mode, drop-path on; "eval": without (an average of
    # the student needs no regularising)
    teacher.train(m["teacher_mode"] == "train")
    return student.to(device), teacher.to(device)


def knn_monitor(backbone: nn.Module, args: argparse.Namespace, cfg: dict,
                device: torch.device) -> dict[str, float]:
    """kNN top-1/top-5 of the teacher's CLS features on an evaluation split: a cheap signal of
    whether pretraining learns anything useful (DINO-style monitor)."""
    from svt.eval_views import extract_features
    from svt.knn import knn_accuracy
    from svt.metrics import percent

    frames, size = cfg["views"]["global_frames"][0], cfg["views"]["global_size"]
    norm = {"mean": cfg["augment"]["mean"], "std": cfg["augment"]["std"]}  # as the views
    was_training = backbone.training
    with torch.no_grad():
        train = extract_features(backbone, args.knn_train, args.knn_videos_root, size, frames,
                                 norm, crops=1, decoder=cfg["pretrain"]["decoder"], device=device,
                                 progress=False)
        test = extract_features(backbone, args.knn_test, args.knn_videos_root, size, frames,
                                norm, crops=1, decoder=cfg["pretrain"]["decoder"], device=device,
                                progress=False)
    backbone.train(was_training)
    classes = int(max(train["labels"].max(), test["labels"].max())) + 1
    acc = knn_accuracy(train["features"], train["labels"], test["features"], test["labels"], classes)
    return {"knn_top1": percent(acc["top1"]), "knn_top5": percent(acc["top5"])}  # in %


# The panels of curves.png: the metrics.csv columns drawn together, and the panel's title.
CURVE_PANELS = ((("loss",), "SVT loss"), (("lr",), "learning rate"),
                (("teacher_entropy",), "teacher entropy (collapse: -> 0 or -> ln K)"),
                (("momentum", "wd"), "teacher momentum / weight decay"))


def write_curves(metrics_csv: Path, out_png: Path, panels=CURVE_PANELS) -> None:
    """Curves against steps from metrics.csv, one panel per (columns, title) of ``panels``
    (people would rather look than read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (keys, title) in zip(axes, panels):
        for k in keys:
            ax.plot(step, [float(r[k]) for r in rows], label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


# MLflow files these under a "train" section, charts in name order, before the unprefixed
# diagnostics (its run page lists prefixed sections first): loss and lr are the first charts.
TRAIN_CURVES = ("loss", "lr", "momentum", "teacher_entropy", "teacher_temp", "wd")


def mlflow_curves(row: dict, loss_cfg: dict) -> dict[str, float]:
    """A metrics.csv row -> MLflow metric names: ``train/<curve>`` for the training curves,
    the rest (epoch, grad_norm, timings) as they are. A teacher temperature without warm-up is
    a constant (a parameter already), not a curve."""
    constant_temp = (loss_cfg["warmup_teacher_temp_epochs"] == 0
                     or loss_cfg["warmup_teacher_temp"] == loss_cfg["teacher_temp"])
    out = {}
    for k, v in row.items():
        if k == "step" or (k == "teacher_temp" and constant_temp):
            continue
        out[f"train/{k}" if k in TRAIN_CURVES else k] = v
    return out


@dataclass
class Run:
    """What one training process holds between the phases of ``train`` (DINO's main_dino
    keeps these as locals of one long function)."""

    args: argparse.Namespace
    cfg: dict
    rank: int
    world: int
    device: torch.device
    out_dir: Path
    ckpt_dir: Path
    augment: SVTAugment
    dataset: VideoDataset
    sampler: EpochSampler
    collate: object
    loader: torch.utils.data.DataLoader
    student: MultiViewModel
    teacher: MultiViewModel
    ddp_student: nn.Module
    loss_fn: SVTLoss
    optimizer: torch.optim.Optimizer
    autocast: object
    scaler: torch.amp.GradScaler
    schedules: tuple  # per-iteration lr, weight decay, teacher momentum
    iters: int  # steps per epoch
    limit: int  # the step this process stops at (max_steps or the whole schedule)
    inputs: str  # fingerprint of config and data: a checkpoint of other inputs is not resumed
    step: int = 0
    run_id: str | None = None
    tracker: Tracker | None = None

    @property
    def main_rank(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def metrics_csv(self) -> Path:
        return self.out_dir / "metrics.csv"


METRIC_FIELDS = ["step", "epoch", "loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy",
                 "grad_norm", "data_time", "step_time", "samples_per_s", "data_wait",
                 "loader_samples_per_s"]


def runtime_config(args: argparse.Namespace) -> dict:
    """The recipe JSON with the runtime keys; explicit arguments win over its pretrain section."""
    cfg = json.loads(args.config_json)
    runtime = {k: getattr(args, k) for k in (*RUNTIME_KEYS, *OPTIONAL_RUNTIME)
               if getattr(args, k) is not None}
    cfg["pretrain"] = {**OPTIONAL_RUNTIME, **cfg.get("pretrain", {}), **runtime}
    missing = [k for k in RUNTIME_KEYS if k not in cfg["pretrain"]]
    if missing:
        raise SystemExit(f"svt.pretrain: missing runtime settings {missing}: pass "
                         f"{' '.join('--' + k.replace('_', '-') for k in missing)}")
    return cfg


def gpu_decoder_or_fallback(pc: dict, dataset: VideoDataset, rank: int) -> str:
    """The training decoder: a GPU decoder is tried on the first video before training starts;
    when it cannot run, ``pretrain.decoder_fallback`` names the CPU reader to use, and without
    one the job stops with what is missing."""
    backend = pc["decoder"]
    if backend not in GPU_BACKENDS or not len(dataset):
        return backend
    try:
        check_gpu_decoder(backend, dataset.videos_root / dataset.rows[0].path)
    except RuntimeError as exc:
        fallback = pc.get("decoder_fallback", OPTIONAL_RUNTIME["decoder_fallback"])
        if fallback == "none":
            raise SystemExit(f"svt.pretrain: {exc}") from None
        if rank == 0:
            print(f"WARNING: {exc}; decoding on the CPU with {fallback!r} "
                  "(pretrain.decoder_fallback)", file=sys.stderr, flush=True)
        return fallback
    return backend


def setup(args: argparse.Namespace) -> Run:
    """Process group, output folders, data (one decode per video for all ten views), nets,
    loss, optimiser and schedules."""
    cfg = runtime_config(args)
    oc, pc = cfg["optim"], cfg["pretrain"]
    rank, world, local, device = init_distributed()
    out_dir, ckpt_dir = Path(args.out_dir), Path(args.ckpt_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # Snakemake empties a rule's log before every attempt: keep all attempts' lines (start,
        # resume, preemption, errors) beside the checkpoints as well.
        sys.stderr = Tee(sys.stderr, open(ckpt_dir / "train.log", "a", buffering=1))
        print(f"--- pretrain attempt started {time.strftime('%Y-%m-%d %H:%M:%S')}", file=sys.stderr)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    view_cfg = ViewConfig.from_config(cfg["views"], cfg["augment"])
    augment = SVTAugment(view_cfg)
    dataset = VideoDataset(args.manifest, args.videos_root, SVTClipSampler(view_cfg),
                           backend=pc["decoder"], split="train", seed=oc["seed"])
    dataset.backend = gpu_decoder_or_fallback(pc, dataset, rank)
    bs = oc["batch_size_per_gpu"]
    sampler = EpochSampler(len(dataset), bs, rank, world, oc["seed"])
    if sampler.batches == 0:
        raise SystemExit(f"{args.manifest}: {len(dataset)} training videos cannot fill one global "
                         f"batch of {bs} x {world}; lower optim.batch_size_per_gpu")
    on_gpu = device.type == "cuda"
    if pc["augment_device"] == "cpu" and dataset.backend in GPU_BACKENDS:
        raise SystemExit(f"svt.pretrain: decoder {dataset.backend!r} leaves the frames on the GPU; "
                         "pretrain.augment_device: cpu needs a CPU decoder")
    gpu_augment = on_gpu and pc["augment_device"] != "cpu"
    # GPU augmentation: workers only decode and stack uint8 frames; CPU: they build the views
    collate = collate_clips if gpu_augment else AugmentCollate(augment, oc["seed"])
    workers = loader_workers(dataset.backend, pc["num_workers"])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=True,
        collate_fn=collate, pin_memory=on_gpu and dataset.backend not in GPU_BACKENDS,
        # workers live for the whole run (the sampler names each item's epoch), instead of
        # forking them again, and refilling their queues, at every epoch start
        persistent_workers=workers > 0, prefetch_factor=pc["prefetch"] if workers else None,
        # its own generator: drawing worker seeds from the global RNG at every epoch start
        # would make a resumed run diverge from an uninterrupted one
        generator=torch.Generator().manual_seed(oc["seed"]))

    # every rank builds the same initial weights (DDP would broadcast the student, but nothing
    # broadcasts the teacher), then each rank gets its own random stream (drop-path)
    torch.manual_seed(oc["seed"])
    student, teacher = build_nets(cfg, device)
    ckpt.seed_all(oc["seed"] + 1 + rank)
    ddp_student = (nn.parallel.DistributedDataParallel(student, device_ids=[local] if on_gpu else None)
                   if world > 1 else student)
    n_global = len(cfg["views"]["global_frames"])
    loss_fn = SVTLoss.from_config(cfg["loss"], n_global, len(view_cfg.views), oc["epochs"]).to(device)
    optimizer = make_optimizer(student, oc["decay_embeddings"])
    if pc["compile"] == "blocks":
        student.backbone.compile_blocks()
        teacher.backbone.compile_blocks()
    precision, autocast = precision_context(pc["precision"], device)
    iters = sampler.batches
    total = oc["epochs"] * iters
    return Run(args=args, cfg=cfg, rank=rank, world=world, device=device, out_dir=out_dir,
               ckpt_dir=ckpt_dir, augment=augment, dataset=dataset, sampler=sampler,
               collate=collate, loader=loader, student=student, teacher=teacher,
               ddp_student=ddp_student, loss_fn=loss_fn, optimizer=optimizer, autocast=autocast,
               scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
               schedules=optim_schedules(oc, oc["epochs"], iters, world), iters=iters,
               limit=min(total, args.max_steps) if args.max_steps else total,
               inputs=inputs_fingerprint(args.manifest, args.videos_root, cfg))


def resume_or_start(run: Run) -> None:
    """Resume from the last checkpoint, but only one of this very config and data: a
    checkpoint of other inputs, or one that cannot be read, is set aside (never deleted) and
    training starts over."""
    last = ckpt.latest(run.ckpt_dir)
    if last is None:
        return
    state, tag, error = ckpt.load_resumable(last, run.inputs, run.device)
    if dist.is_initialized():
        dist.barrier()  # every rank has read the file before rank 0 may move it
    if tag is not None:  # set aside, never deleted, and train from the start
        if run.main_rank:
            aside = ckpt.set_aside(last, tag)
            why = f"cannot be read ({error})" if tag == "corrupt" else \
                "was trained on other data or another config"
            print(f"pretrain: {last} {why}; moved to {aside.name}, starting over", file=sys.stderr)
        if dist.is_initialized():
            dist.barrier()
        return
    run.student.load_state_dict(state["student"])
    run.teacher.load_state_dict(state["teacher"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.loss_fn.load_state_dict(state["loss"])
    run.step, run.run_id = state["step"], state["mlflow_run_id"]
    rngs = state["rng"]
    ckpt.set_rng_state(rngs[run.rank] if run.rank < len(rngs) else rngs[0])
    if run.main_rank:
        print(f"resumed from {last} at step {run.step} (epoch {run.step // run.iters})", file=sys.stderr)


def start_tracking(run: Run) -> None:
    """The pretraining run in MLflow: a new one with the config as params, or the resumed
    job's own run, tagged with who resumed it. Rank 0 only; the others get a no-op tracker."""
    args, cfg = run.args, run.cfg
    tracker = tracking.stage_run(args, "pretrain", run_id=run.run_id, enabled=run.main_rank,
                                 restore_status=False,  # a resumed run ends FINISHED
                                 tags={"svt.out_dir": str(run.out_dir.resolve()),
                                       "svt.checkpoint_dir": str(run.ckpt_dir.resolve())})
    if run.main_rank and run.run_id is None:
        tracker.log_params(flatten(cfg))
        if cfg["model"].get("init") not in (None, "none"):
            tracker.set_tags({"svt.init_sha256": file_sha256(cfg["model"]["init"])})
    elif run.main_rank:
        ctx = tracking.context_tags()
        tracker.set_tags({"svt.resumed_at_step": run.step,
                          **({"svt.resumed_by_parent": ctx["mlflow.parentRunId"]}
                             if "mlflow.parentRunId" in ctx else {}),
                          **({"svt.slurm_job_id": ctx["svt.slurm_job_id"]}
                             if "svt.slurm_job_id" in ctx else {})})
    tracker.start_system_metrics(args.system_metrics_s)
    run.tracker, run.run_id = tracker, tracker.run_id


def reset_metrics_csv(run: Run) -> None:
    if run.main_rank:
        trim_metrics_csv(run.metrics_csv, METRIC_FIELDS, run.step)


def trim_metrics_csv(path: Path, fields: list[str], step: int) -> None:
    """Rows past the checkpoint's ``step`` were computed by a run that died before saving
    them: drop them, the resumed run logs those steps again. Starts the file when missing."""
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows([r.get(k, "") for k in fields] for r in kept)  # older files lack columns


def save_checkpoint(run: Run) -> None:
    """Everything a resume needs, every rank's RNG states included; written by rank 0."""
    rngs = [None] * run.world
    if run.world > 1:
        dist.all_gather_object(rngs, ckpt.rng_state())
    else:
        rngs = [ckpt.rng_state()]
    if run.main_rank:
        step, seed = run.step, run.cfg["optim"]["seed"]
        ckpt.save_atomic({
            "student": run.student.state_dict(), "teacher": run.teacher.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "loss": run.loss_fn.state_dict(), "step": step, "epoch": step // run.iters,
            "sampler": {"epoch": step // run.iters, "batch": step % run.iters, "seed": seed},
            "rng": rngs, "config": run.cfg, "mlflow_run_id": run.run_id, "inputs": run.inputs,
        }, run.ckpt_dir / ckpt.LAST)


def train_step(run: Run, batch: dict, it: int, log_now: bool) -> tuple:
    """One optimisation step at global iteration ``it``: views, teacher and student forward,
    backward, clipping, optimiser, EMA. Returns (loss, stats, grad_norm), unsynchronised."""
    oc = run.cfg["optim"]
    lr_s, wd_s, mom_s = run.schedules
    # plain floats: numpy scalars in the optimiser state would not pass weights_only loading
    apply_schedules(run.optimizer, float(lr_s[it]), float(wd_s[it]))
    if isinstance(run.collate, AugmentCollate):  # views built by the loader workers
        views = [v.to(run.device, non_blocking=True) for v in batch["views"]]
    else:  # uint8 frames to the GPU once; crops and jitter run there
        clips = [c.to(run.device, non_blocking=True) for c in batch["clips"]]
        # seeded per sample as in the workers: the views do not depend on the rank count
        gens = [sample_generator(oc["seed"], it // run.iters, i) for i in batch["index"].tolist()]
        views = run.augment.batch(clips, generators=gens)
    with run.autocast():
        teacher_out = run.teacher(views[:run.loss_fn.num_global])
        student_out = run.ddp_student(views)
        loss, stats = run.loss_fn(student_out, teacher_out, it / run.iters, with_stats=log_now)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    grad_norm = clip_gradients(run.student, oc["clip_grad"], oc["clip_mode"])
    cancel_last_layer_gradients(run.student.head, it // run.iters, oc["freeze_last_layer"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    update_teacher(run.student, run.teacher, float(mom_s[it]))
    return loss, stats, grad_norm


@dataclass
class Logbook:
    """What the loop carries from step to step for its logs, progress and stop checks."""

    watch: NonFiniteWatch
    stop_vote: Callable[[], bool]
    bar: object  # a live progress bar on rank 0, else None
    compiling: bool  # the first step compiles every view shape (pretrain.compile: blocks)
    log_step: int  # the step and wall time of the last log: timings average since then
    log_wall: float = field(default_factory=time.perf_counter)
    data_time: float = 0.0  # the trainer waiting for batches, since the last log
    load_time: float = 0.0  # the loader workers' own time for those batches (decode + augment)
    started: float = field(default_factory=time.time)


def report_compile(run: Run) -> None:
    """After the first step, which compiled every view shape: what it cost."""
    secs = run.student.backbone.compile_seconds + run.teacher.backbone.compile_seconds
    eager = run.student.backbone._compiled is None or run.teacher.backbone._compiled is None
    if run.main_rank:
        print(f"pretrain: compile {'failed, running eager' if eager else 'blocks'}: "
              f"{secs:.1f} s in the first step", file=sys.stderr, flush=True)
        run.tracker.log_metrics({"compile_s": secs}, run.step)


def log_step(run: Run, book: Logbook, it: int, loss_value: float, stats: dict, grad_norm) -> None:
    """metrics.csv, MLflow and the log line (or the live bar): averages over the steps since
    the last log, since without a sync per step one step's wall time is not its own."""
    now = time.perf_counter()
    n_steps = max(run.step - book.log_step, 1)
    t_step = (now - book.log_wall) / n_steps
    lr_s, wd_s, mom_s = run.schedules
    bs = run.cfg["optim"]["batch_size_per_gpu"]
    row = {"step": run.step, "epoch": it / run.iters, "loss": loss_value, "lr": lr_s[it],
           "wd": wd_s[it], "momentum": mom_s[it], "teacher_temp": stats["teacher_temp"],
           "teacher_entropy": stats["teacher_entropy"], "grad_norm": float(grad_norm),
           "data_time": book.data_time / n_steps, "step_time": t_step,
           "samples_per_s": bs * run.world / max(t_step, 1e-9),
           # input-bound when this nears 1: the share of the step spent waiting for a batch
           "data_wait": book.data_time / max(now - book.log_wall, 1e-9),
           # what one loader worker (one core) produces: decode + views + augmentation
           "loader_samples_per_s": bs * n_steps / book.load_time if book.load_time else 0.0}
    book.log_step, book.log_wall, book.data_time, book.load_time = run.step, now, 0.0, 0.0
    if not run.main_rank:
        return
    with open(run.metrics_csv, "a", newline="") as f:
        csv.writer(f).writerow([row[k] for k in METRIC_FIELDS])
    run.tracker.log_metrics(mlflow_curves(row, run.cfg["loss"]), run.step)
    if not progress.on_stderr(book.bar):
        print(f"step {run.step}/{run.limit} epoch {row['epoch']:.2f} loss {loss_value:.4f} "
              f"lr {row['lr']:.2e} data {row['data_time']:.2f}s ({row['data_wait']:.0%} of the "
              f"step) step {t_step:.2f}s loader {row['loader_samples_per_s']:.1f} samples/s "
              f"per worker ({time.time() - book.started:.0f}s)", file=sys.stderr, flush=True)
    if book.bar is not None:
        book.bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{row['samples_per_s']:.1f}",
                             refresh=False)


def after_step(run: Run, book: Logbook, it: int) -> bool:
    """Stop requests, checkpoints and the kNN monitor at a step's end. True: stopped on
    request (saved; exit EXIT_PREEMPTED for the scheduler's retry to resume)."""
    args, step, iters = run.args, run.step, run.iters
    end_of_epoch = step % iters == 0
    if book.stop_vote():
        book.watch.check(it, iters)
        save_checkpoint(run)
        if run.main_rank:
            print(f"pretrain: stop requested; saved step {step}, exiting with "
                  f"{EXIT_PREEMPTED} to be resumed", file=sys.stderr, flush=True)
            run.tracker.finish("KILLED")
        return True
    if end_of_epoch or step % run.cfg["pretrain"]["checkpoint_every"] == 0 or step == run.limit:
        book.watch.check(it, iters)  # never save weights a non-finite loss has touched
        save_checkpoint(run)
    if args.knn_every and args.knn_train and (end_of_epoch or step == run.limit) and (
            (step // iters) % args.knn_every == 0 or step == run.limit):
        if run.main_rank:
            knn = knn_monitor(run.teacher.backbone, args, run.cfg, run.device)
            run.tracker.log_metrics(knn, step)
            print(f"step {step}: kNN top-1 {knn['knn_top1']:.1f}% "
                  f"top-5 {knn['knn_top5']:.1f}%", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.barrier()
    return False


def train_one_epoch(run: Run, book: Logbook) -> bool:
    """The rest of the current epoch (from the sampler's position on a resume), or up to the
    step limit. True: stopped on request."""
    epoch, start_batch = divmod(run.step, run.iters)
    run.sampler.set_epoch(epoch, start_batch)
    run.dataset.set_epoch(epoch)
    if isinstance(run.collate, AugmentCollate):
        run.collate.epoch = epoch
    t_end = time.perf_counter()
    for batch in run.loader:
        book.data_time += time.perf_counter() - t_end
        book.load_time += batch.get("load_s", 0.0)
        it = run.step  # global iteration index into the schedules
        log_now = (it + 1) % run.cfg["pretrain"]["log_every"] == 0 or it + 1 == run.limit
        loss, stats, grad_norm = train_step(run, batch, it, log_now)
        book.watch.update(loss, it)  # no host sync: read where it matters (logs, saves)
        run.step += 1
        if book.compiling:
            book.compiling = False
            report_compile(run)
        if log_now:
            book.watch.check(it, run.iters)
            loss_value = all_sum([loss.item()], run.device)[0] / run.world  # the one sync per log
            log_step(run, book, it, loss_value, stats, grad_norm)
        if book.bar is not None:
            book.bar.update()
        if after_step(run, book, it):
            return True
        if run.step >= run.limit or run.step % run.iters == 0:
            break
        t_end = time.perf_counter()
    return False


def export(run: Run) -> None:
    """The product of pretraining: the teacher backbone with its model config and the input
    normalisation it was trained with; curves and config to MLflow, checkpoints linked."""
    cfg, out_dir, tracker = run.cfg, run.out_dir, run.tracker
    backbone = out_dir / "teacher_backbone.pth"
    ckpt.save_atomic({"state_dict": run.teacher.backbone.state_dict(), "model": cfg["model"],
                      "pretrained_cfg": pretrained_cfg(run.teacher.backbone, cfg["augment"]["mean"],
                                                       cfg["augment"]["std"]),
                      "step": run.step, "mlflow_run_id": run.run_id}, backbone)
    write_curves(run.metrics_csv, out_dir / "curves.png")
    for name in ("config.yaml", "curves.png", "metrics.csv"):
        tracker.log_artifact(out_dir / name)
    # checkpoints are linked (path and hash); copying them into the store is opt-in
    tracker.set_tags({"svt.teacher_backbone": str(backbone.resolve()),
                      "svt.teacher_backbone_sha256": file_sha256(backbone),
                      "svt.last_checkpoint": str((run.ckpt_dir / ckpt.LAST).resolve())})
    if run.args.log_checkpoint:
        tracker.log_artifact(backbone, "checkpoints")
    tracker.finish()
    (out_dir / "run.json").write_text(json.dumps({"mlflow_run_id": run.run_id, "steps": run.step}) + "\n")


def train(args: argparse.Namespace) -> int:
    run = setup(args)
    resume_or_start(run)
    start_tracking(run)
    reset_metrics_csv(run)
    stop = StopFlag()
    # a live line on the terminal in local runs; the full lines go on to the log (and train.log)
    bar = progress.bar(run.limit, "pretrain", "step", initial=run.step) if run.main_rank else None
    book = Logbook(watch=NonFiniteWatch(run.device, run.ckpt_dir / ckpt.LAST),
                   stop_vote=stop_voter(stop), bar=bar,
                   compiling=run.cfg["pretrain"]["compile"] == "blocks", log_step=run.step)
    preempted = False
    while run.step < run.limit and not preempted:
        preempted = train_one_epoch(run, book)
    if bar is not None:
        bar.close()
    if run.main_rank and not preempted:
        export(run)
    if dist.is_initialized():
        # Drop DDP's reducer while the process group is alive: freeing it afterwards, at
        # return, deadlocks gloo's worker thread (it needs the GIL the main thread holds).
        run.ddp_student = None
        dist.barrier()
        dist.destroy_process_group()
    return EXIT_PREEMPTED if preempted else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.pretrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True, help="train manifest (svt.decode)")
    ap.add_argument("--videos-root", type=Path, required=True, help="folder of the manifest's videos")
    ap.add_argument("--config-json", required=True,
                    help="model, views, augment, loss and optim sections as JSON (a pretrain "
                         "section may give the runtime settings below)")
    ap.add_argument("--num-workers", type=int, help="DataLoader workers per process")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--decoder", choices=BACKENDS, help="frame reader")
    ap.add_argument("--decoder-fallback", choices=["none", *CPU_BACKENDS],
                    help="CPU reader used when a GPU decoder cannot run (none: stop with the reason)")
    ap.add_argument("--prefetch", type=int, help="batches each loader worker keeps ready")
    ap.add_argument("--augment-device", choices=["auto", "cpu"],
                    help="auto: views built on the GPU when training on one; cpu: in the loader workers")
    ap.add_argument("--compile", choices=["off", "blocks"],
                    help="torch.compile of each transformer block (student and teacher)")
    ap.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    ap.add_argument("--log-every", type=int, help="steps between metric logs")
    ap.add_argument("--out-dir", type=Path, required=True, help="exports: teacher backbone, curves")
    ap.add_argument("--ckpt-dir", type=Path, required=True, help="resumable checkpoints")
    tracking.add_arguments(ap, experiment="svt", run_name="pretrain")
    ap.add_argument("--system-metrics-s", type=float, default=10.0,
                    help="MLflow system metrics (CPU, memory, GPU) every N seconds (0: off)")
    ap.add_argument("--log-checkpoint", action="store_true",
                    help="copy the exported teacher backbone into the MLflow artifact store "
                         "(default: only its path and sha256 are logged)")
    ap.add_argument("--knn-train", type=Path, default=None,
                    help="kNN monitor: manifest whose videos are the neighbours (e.g. UCF101 train)")
    ap.add_argument("--knn-test", type=Path, default=None, help="kNN monitor: manifest to classify")
    ap.add_argument("--knn-videos-root", type=Path, default=None, help="folder of both manifests' videos")
    ap.add_argument("--knn-every", type=int, default=0, help="kNN monitor every N epochs (0: off)")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="stop after this many steps in all (0: the whole schedule)")
    stderr = sys.stderr
    try:
        return train(ap.parse_args(argv))
    finally:
        sys.stderr = stderr  # train() tees it into the checkpoint folder


if __name__ == "__main__":
    sys.exit(main())
