"""End-to-end input pipeline benchmark: real encoded videos through the real pretraining loop.

    python bench/pretrain_e2e.py [--videos DIR] [--count 12] [--seconds 10] [--samples 24]
        [--workers 0,1,2] [--steps 15] [--batch 4] [--device auto|cpu|cuda] [--decoder pyav]
        [--gpu-decoder] [--augment auto,cpu] [--no-baseline]

Videos: ``--videos DIR`` (any folder of videos), or ``--count`` videos generated with ffmpeg
as the decode stage writes them at the paper geometry: 256p short side (456 x 256), 30 fps, a
keyframe every 16 frames, libx264 veryfast with decode.fast_decode's options, yuv420p, no
audio; a moving test pattern with temporal noise, so P- and B-frames carry real data.

[0] **Decode only**, seconds per SVT sample for PyAV and torchcodec, on those videos and on
    the same videos encoded with x264's defaults (``--no-baseline`` skips it).
[1] **Stages**, on one core, for ``--samples`` SVT samples of config.yaml's ten views (2 global
    at 224 px of 8 and 16 frames, 8 local at 96 px): decode (``read_frames`` of the union of
    the views' frames, one call per video, as VideoDataset does; the YUV-to-RGB conversion
    happens inside the decoder and is part of this figure), crop/resize, augmentation (jitter,
    grey, blur, solarize, normalise, written into the batch), collate (allocating the batch's
    view tensors in shared memory) and, with a GPU, the host-to-device copy of a pinned batch. Prints seconds per sample for each stage,
    the raw-decode rate and the whole loader's rate in samples/s per core.
[2] **The real loop**: ``python -m svt.pretrain`` as the workflow runs it, at the paper views,
    for ``--steps`` steps with each worker count of ``--workers``, for each
    ``pretrain.augment_device`` of ``--augment`` and, with ``--gpu-decoder``, also with
    torchcodec-cuda (no workers). On a CPU the model is tiny (embed 32, depth 1), so that the
    input pipeline is what gets measured; on a GPU it is config.yaml's model. Prints samples/s,
    the data-wait fraction (the share of the step spent waiting for a batch), loader samples/s
    per worker (from the run's metrics.csv, the intervals after the first, which includes
    starting the workers) and, on a GPU, the CPU cores per GPU for at most 10% data wait.

Single-threaded torch in every process (OMP_NUM_THREADS=1): parallelism comes from loader
workers, one core each. The GPU command: ``python bench/pretrain_e2e.py --device cuda
--workers 2,4,8 --steps 30 --batch 16 --augment auto,cpu --gpu-decoder``.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

import torch  # noqa: E402

from svt.config import load_config  # noqa: E402
from svt.datasets import VIDEO_EXTENSIONS  # noqa: E402
from svt.loader import read_frames  # noqa: E402
from svt.manifest import ManifestRow, write_rows  # noqa: E402
from svt.video import EncodeSettings, probe  # noqa: E402
from svt.views import SVTAugment, SVTClipSampler, ViewConfig, batch_tensor  # noqa: E402

from paper_videos import make_video  # noqa: E402  (bench/, on sys.path as the script's folder)

def manifest_of(videos: list[Path], root: Path, out: Path) -> list[ManifestRow]:
    rows = []
    for v in videos:
        info = probe(v)
        rel = v.relative_to(root).as_posix()
        rows.append(ManifestRow(rel, 0, "x", "train", info.frames, round(info.fps, 6),
                                round(info.duration, 6), info.width, info.height, rel))
    write_rows(out, rows, ManifestRow)
    return rows


def decode_time(rows, root: Path, cfg: dict, samples: int, decoder: str) -> float:
    """Seconds per SVT sample of ``read_frames`` alone (the frames of seeded samples)."""
    sampler = SVTClipSampler(ViewConfig.from_config(cfg["views"], cfg["augment"]))
    rng = np.random.default_rng(0)
    plan = [(rows[i % len(rows)], np.concatenate(sampler(rows[i % len(rows)].frames, 30.0, rng)))
            for i in range(samples)]
    for r, idx in plan[:len(rows)]:  # warm-up: files in the page cache, libraries loaded
        read_frames(root / r.path, idx, decoder)
    t0 = time.perf_counter()
    for r, idx in plan:
        read_frames(root / r.path, idx, decoder)
    return (time.perf_counter() - t0) / samples


def stage_times(rows, root: Path, cfg: dict, samples: int, batch: int, decoder: str,
                device: torch.device) -> dict[str, float]:
    """Seconds per sample of each input stage, on this process's one core, as a loader worker
    runs them (svt.views.AugmentCollate): each batch's view tensors are allocated in shared
    memory ("collate") and every sample's views are written into its slot."""
    view_cfg = ViewConfig.from_config(cfg["views"], cfg["augment"])
    sampler, augment = SVTClipSampler(view_cfg), SVTAugment(view_cfg)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    times = {"decode": 0.0, "crop_resize": 0.0, "augment": 0.0, "collate": 0.0}
    batches, n = [], (samples // batch) * batch
    for i in range(n):
        if i % batch == 0:
            t0 = time.perf_counter()
            views = [batch_tensor((batch, 3, v.frames, v.size, v.size), shared=True)
                     for v in view_cfg.views]
            times["collate"] += time.perf_counter() - t0
            batches.append(views)
        r = rows[i % len(rows)]
        idx = sampler(r.frames, r.fps, rng)
        t0 = time.perf_counter()
        frames = read_frames(root / r.path, np.concatenate(idx), decoder)
        times["decode"] += time.perf_counter() - t0
        clips = torch.split(frames, [len(x) for x in idx])
        augment(list(clips), generator=gen, stage_times=times, out=[v[i % batch] for v in views])
    per = {k: v / max(n, 1) for k, v in times.items()}
    if device.type == "cuda":
        pinned = [[v.pin_memory() for v in bt] for bt in batches]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for bt in pinned:
            for v in bt:
                v.to(device, non_blocking=True)
        torch.cuda.synchronize()
        per["h2d"] = (time.perf_counter() - t0) / max(n, 1)
    return per


def train_run(manifest: Path, root: Path, cfg: dict, workers: int, steps: int, batch: int,
              decoder: str, augment: str, device: torch.device, work: Path) -> dict[str, float]:
    """python -m svt.pretrain for ``steps`` steps; the means of its metrics.csv after the
    first logging interval."""
    out = work / f"{decoder}-{augment}-w{workers}"
    log_every = max(1, steps // 3)
    cmd = [sys.executable, "-m", "svt.pretrain", "--manifest", str(manifest),
           "--videos-root", str(root), "--config-json", json.dumps(cfg),
           "--out-dir", str(out), "--ckpt-dir", str(out / "checkpoints"),
           "--num-workers", str(workers), "--precision", "auto" if device.type == "cuda" else "fp32",
           "--decoder", decoder, "--augment-device", augment, "--compile", "off",
           "--checkpoint-every", str(10**9),
           "--log-every", str(log_every), "--max-steps", str(steps), "--system-metrics-s", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"svt.pretrain failed ({decoder}, augment {augment}, {workers} workers):\n"
                         f"{res.stderr[-3000:]}")
    with open(out / "metrics.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    rows = logged[1:] or logged
    keys = ("samples_per_s", "data_wait", "loader_samples_per_s", "step_time")
    return {k: statistics.mean(float(r[k]) for r in rows) for k in keys}


def cores_per_gpu(m: dict, workers: int, device: torch.device) -> str:
    """CPU cores one GPU needs to wait at most 10% for data (see the table's footnote)."""
    if device.type != "cuda":
        return "-"
    if workers == 0:  # everything in the training process: one core, if it keeps up
        return "1" if m["data_wait"] <= 0.10 else f">1 ({100 * m['data_wait']:.0f}% wait)"
    own = m["samples_per_s"] / max(1e-6, 1 - m["data_wait"])
    return str(1 + math.ceil(0.9 * own / max(1e-6, m["loader_samples_per_s"])))


def run_config(cfg: dict, batch: int, steps: int, n_videos: int, device: torch.device) -> dict:
    """config.yaml's recipe at the paper views; a tiny model on CPU (the loader is measured)."""
    cfg = json.loads(json.dumps(cfg))
    if device.type != "cuda":
        cfg["model"].update(embed_dim=32, depth=1, num_heads=2, drop_path_rate=0.0)
        cfg["loss"].update(out_dim=256, hidden_dim=64, bottleneck_dim=32)
    cfg["model"]["init"] = "none"
    iters = max(1, n_videos // batch)
    cfg["optim"].update(batch_size_per_gpu=batch, epochs=math.ceil(steps / iters) + 1,
                        warmup_epochs=0)
    return {k: cfg[k] for k in ("model", "views", "augment", "loss", "optim")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=Path, help="a folder of videos (default: generate them)")
    ap.add_argument("--count", type=int, default=12, help="videos to generate")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated video")
    ap.add_argument("--samples", type=int, default=24, help="SVT samples for the stage times")
    ap.add_argument("--workers", default="0,1,2", help="loader worker counts for the real loop")
    ap.add_argument("--steps", type=int, default=15, help="training steps per worker count")
    ap.add_argument("--batch", type=int, default=4, help="videos per step")
    ap.add_argument("--decoder", default="pyav", choices=["pyav", "torchcodec", "ffmpeg"],
                    help="CPU reader of [1] and [2]")
    ap.add_argument("--gpu-decoder", action="store_true",
                    help="[2] also with torchcodec-cuda (NVDEC, decoding in the training process)")
    ap.add_argument("--augment", default="auto",
                    help="[2] for each of these pretrain.augment_device values (on a GPU: auto,cpu)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip [0], the decode rate on x264's default encoding and with torchcodec")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if a.device == "auto" else a.device))
    cfg = load_config(a.config)

    with tempfile.TemporaryDirectory(prefix="svt-e2e-") as tmp:
        work = Path(tmp)
        if a.videos:
            root = a.videos
            videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            root = work / "videos"
            root.mkdir()
            t0 = time.time()
            videos = [root / f"v{i:02d}.mp4" for i in range(a.count)]
            for i, v in enumerate(videos):
                make_video(v, a.seconds, i)
            print(f"generated {len(videos)} videos of {a.seconds:g} s at 456x256, 30 fps, "
                  f"gop 16 ({time.time() - t0:.0f} s)", flush=True)
        if len(videos) < a.batch:
            raise SystemExit(f"need at least --batch {a.batch} videos, found {len(videos)}")
        manifest = work / "train.csv"
        rows = manifest_of(videos, root, manifest)

        if not a.videos and not a.no_baseline:
            # the same videos with x264's defaults (decode.fast_decode: false), for [0]
            plain = work / "x264-defaults"
            plain.mkdir()
            for i in range(a.count):
                make_video(plain / f"v{i:02d}.mp4", a.seconds, i, settings=EncodeSettings(fast_decode=False))
            plain_rows = manifest_of(sorted(plain.glob("*.mp4")), plain, work / "plain.csv")
            print(f"\n[0] decode only, seconds per SVT sample ({a.samples} samples, same frames, "
                  "one core):")
            print(f"  {'reader':<11} {'decode stage (fast_decode)':>27} {'x264 defaults':>14}")
            for reader in ("pyav", "torchcodec"):
                fast = decode_time(rows, root, cfg, a.samples, reader)
                slow = decode_time(plain_rows, plain, cfg, a.samples, reader)
                print(f"  {reader:<11} {fast:>17.4f} ({1 / fast:4.1f}/s) {slow:>8.4f} ({1 / slow:4.1f}/s)",
                      flush=True)

        per = stage_times(rows, root, cfg, a.samples, a.batch, a.decoder, device)
        loader_s = sum(per.values()) - per.get("h2d", 0.0)
        print(f"\n[1] input stages on one core, seconds per SVT sample ({a.samples} samples, "
              f"{a.decoder}, paper views):")
        for k, v in per.items():
            print(f"  {k:<12} {v:8.4f} s  ({100 * v / sum(per.values()):4.1f}%)")
        print(f"  raw decode   {1 / per['decode']:6.2f} samples/s per core")
        print(f"  loader       {1 / loader_s:6.2f} samples/s per core (decode + crop/resize + "
              f"augmentation + collate): {100 * per['decode'] / loader_s:.0f}% of the raw-decode rate")

        print(f"\n[2] the real loop (python -m svt.pretrain, {'tiny model, CPU' if device.type != 'cuda' else 'config model, GPU'}, "
              f"batch {a.batch}, {a.steps} steps):")
        print(f"  {'decoder':<16} {'augment':>7} {'workers':>7} {'samples/s':>10} {'data wait':>10} "
              f"{'loader/worker':>14} {'step s':>8} {'cores/GPU':>10}")
        run_cfg = run_config(cfg, a.batch, a.steps, len(rows), device)
        decoders = [a.decoder] + (["torchcodec-cuda"] if a.gpu_decoder else [])
        for decoder in decoders:
            for augment in a.augment.split(","):
                counts = [0] if decoder == "torchcodec-cuda" else [int(x) for x in a.workers.split(",")]
                for w in counts:
                    m = train_run(manifest, root, run_cfg, w, a.steps, a.batch, decoder, augment,
                                  device, work)
                    print(f"  {decoder:<16} {augment:>7} {w:>7} {m['samples_per_s']:>10.2f} "
                          f"{100 * m['data_wait']:>9.0f}% {m['loader_samples_per_s']:>14.2f} "
                          f"{m['step_time']:>8.2f} {cores_per_gpu(m, w, device):>10}", flush=True)
        if device.type == "cuda":
            print("\n  cores/GPU: loader cores that hold the GPU's own rate (samples/s / (1 - data "
                  "wait)) at <= 10% data wait, ceil(0.9 x own rate / loader samples/s per worker),\n"
                  "  plus the training process; GPU decoding: 1 when its data wait is <= 10%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
