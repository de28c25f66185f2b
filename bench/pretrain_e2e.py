"""End-to-end input pipeline benchmark: real encoded videos through the real pretraining loop.

    python bench/pretrain_e2e.py [--videos DIR] [--count 12] [--seconds 10] [--samples 24]
        [--workers 0,1,2] [--steps 15] [--batch 4] [--device auto|cpu|cuda] [--decoder torchcodec]

1. **Videos.** ``--videos DIR`` (any folder of videos), or ``--count`` videos generated with
   ffmpeg as the decode stage writes them at the paper geometry: 256p short side (456 x 256),
   30 fps, a keyframe every 16 frames, libx264 veryfast, yuv420p, no audio; a moving test
   pattern with temporal noise, so P-frames carry real data.
2. **Stages**, on one core, for ``--samples`` SVT samples of config.yaml's ten views (2 global
   at 224 px of 8 and 16 frames, 8 local at 96 px): decode (``read_frames`` of the union of
   the views' frames, one call per video, as VideoDataset does; the YUV-to-RGB conversion
   happens inside the decoder and is part of this figure), crop/resize, augmentation (jitter,
   grey, blur, solarize, normalise), collate (stacking a batch of ``--batch``) and, with a GPU,
   the host-to-device copy of a pinned batch. Prints seconds per sample for each stage, the
   raw-decode rate and the whole loader's rate in samples/s per core.
3. **The real loop**: ``python -m svt.pretrain`` as the workflow runs it, at the paper views,
   for ``--steps`` steps with each worker count of ``--workers``. On a CPU the model is tiny
   (embed 32, depth 1), so that the input pipeline is what gets measured; on a GPU it is
   config.yaml's model. Prints samples/s, the data-wait fraction (the share of the step spent
   waiting for a batch) and loader samples/s per worker, from the run's metrics.csv (the
   intervals after the first, which includes starting the workers).

Single-threaded torch in every process (OMP_NUM_THREADS=1): parallelism comes from loader
workers, one core each.
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
from svt.video import probe  # noqa: E402
from svt.views import SVTAugment, SVTClipSampler, ViewConfig  # noqa: E402

def make_video(path: Path, seconds: float, seed: int, short_side: int = 256) -> None:
    """The decode stage's output format at the paper geometry (16:9, 256p, 30 fps, gop 16)."""
    width = round(short_side * 16 / 9 / 2) * 2
    source = f"testsrc2=size={width}x{short_side}:rate=30:duration={seconds}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
                    "-vf", f"noise=alls=10:allf=t+u:all_seed={seed},hue=H=t*{0.3 + 0.1 * seed}",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", "16", "-keyint_min", "16",
                    "-sc_threshold", "0", "-r", "30", "-pix_fmt", "yuv420p", "-an", str(path)],
                   check=True)


def manifest_of(videos: list[Path], root: Path, out: Path) -> list[ManifestRow]:
    rows = []
    for v in videos:
        info = probe(v)
        rel = v.relative_to(root).as_posix()
        rows.append(ManifestRow(rel, 0, "x", "train", info.frames, round(info.fps, 6),
                                round(info.duration, 6), info.width, info.height, rel))
    write_rows(out, rows, ManifestRow)
    return rows


def stage_times(rows, root: Path, cfg: dict, samples: int, batch: int, decoder: str,
                device: torch.device) -> dict[str, float]:
    """Seconds per sample of each input stage, on this process's one core."""
    view_cfg = ViewConfig.from_config(cfg["views"], cfg["augment"])
    sampler, augment = SVTClipSampler(view_cfg), SVTAugment(view_cfg)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    times = {"decode": 0.0, "crop_resize": 0.0, "augment": 0.0}
    outs = []
    for i in range(samples):
        r = rows[i % len(rows)]
        idx = sampler(r.frames, r.fps, rng)
        t0 = time.perf_counter()
        frames = read_frames(root / r.path, np.concatenate(idx), decoder)
        times["decode"] += time.perf_counter() - t0
        clips = torch.split(frames, [len(x) for x in idx])
        outs.append(augment(list(clips), generator=gen, stage_times=times))
    t0 = time.perf_counter()
    batches = []
    for b in range(0, samples - batch + 1, batch):
        batches.append([torch.stack(v) for v in zip(*outs[b:b + batch])])
    times["collate"] = time.perf_counter() - t0
    n = len(batches) * batch
    per = {k: v / samples for k, v in times.items()}
    per["collate"] = times["collate"] / max(n, 1)
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
              decoder: str, device: torch.device, work: Path) -> dict[str, float]:
    """python -m svt.pretrain for ``steps`` steps; the means of its metrics.csv after the
    first logging interval."""
    out = work / f"w{workers}"
    log_every = max(1, steps // 3)
    cmd = [sys.executable, "-m", "svt.pretrain", "--manifest", str(manifest),
           "--videos-root", str(root), "--config-json", json.dumps(cfg),
           "--out-dir", str(out), "--ckpt-dir", str(out / "checkpoints"),
           "--num-workers", str(workers), "--precision", "auto" if device.type == "cuda" else "fp32",
           "--decoder", decoder, "--compile", "off", "--checkpoint-every", str(10**9),
           "--log-every", str(log_every), "--max-steps", str(steps), "--system-metrics-s", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"svt.pretrain failed with {workers} workers:\n{res.stderr[-3000:]}")
    with open(out / "metrics.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    rows = logged[1:] or logged
    keys = ("samples_per_s", "data_wait", "loader_samples_per_s", "step_time")
    return {k: statistics.mean(float(r[k]) for r in rows) for k in keys}


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
    ap.add_argument("--decoder", default="torchcodec", choices=["torchcodec", "pyav", "ffmpeg"])
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
        print(f"  {'workers':>7} {'samples/s':>10} {'data wait':>10} {'loader/worker':>14} {'step s':>8}")
        run_cfg = run_config(cfg, a.batch, a.steps, len(rows), device)
        for w in (int(x) for x in a.workers.split(",")):
            m = train_run(manifest, root, run_cfg, w, a.steps, a.batch, a.decoder, device, work)
            print(f"  {w:>7} {m['samples_per_s']:>10.2f} {100 * m['data_wait']:>9.0f}% "
                  f"{m['loader_samples_per_s']:>14.2f} {m['step_time']:>8.2f}", flush=True)
        if device.type == "cuda":
            print("\n  cores per GPU for at most 10% data wait: the GPU's own samples/s (workers "
                  "that keep data wait under 10%) / loader samples/s per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
