"""Benchmark the frame readers of svt.loader on videos encoded like the decode stage.

    python bench/decoders.py [--videos N] [--short-side 224] [--seconds 10] [--also-480]

Generates noisy test videos encoded as the decode stage encodes (libx264 veryfast, 30 fps,
keyframe every 16, yuv420p, no audio, decode.fast_decode's options; --no-fast-decode: x264's
defaults) in a temporary folder, then times for each installed backend:

* full decode: every frame, as frames/s;
* 16 random frames, in seconds;
* one SVT sample, in seconds: 2 global clips (8 and 16 frames uniformly over a random 90%
  of the video) and 8 local clips (2, 2, 4, 4, 8, 8, 16, 16 frames, each over its own
  random 1/8 of the video), read with ONE read_frames call for the union of indices,
  exactly as VideoDataset does.

Everything runs single-threaded (OMP_NUM_THREADS=1, one FFmpeg thread per decoder): in
training, parallelism comes from DataLoader workers. Each number is the median over
videos x repeats.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import torch  # noqa: E402

from svt import loader  # noqa: E402
from svt.loader import read_frames, uniform_indices  # noqa: E402
from svt.video import EncodeSettings  # noqa: E402

from paper_videos import make_video  # noqa: E402  (bench/, on sys.path as the script's folder)

# name -> (read_frames backend, torchcodec seek mode or None, module that must import)
CANDIDATES = {
    "pyav": ("pyav", None, "av"),  # the loader's default
    "torchcodec": ("torchcodec", "exact", "torchcodec.decoders"),
    "torchcodec-approx": ("torchcodec", "approximate", "torchcodec.decoders"),
    "ffmpeg-pipe": ("ffmpeg", None, "ffmpeg"),
}

GLOBAL_FRAMES = (8, 16)
LOCAL_FRAMES = (2, 2, 4, 4, 8, 8, 16, 16)


def count_frames(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=nb_frames", "-of", "csv=p=0", str(path)],
        check=True, capture_output=True, text=True,
    )
    return int(out.stdout.strip())


def svt_sample(num_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    clips = []
    span = 0.9 * num_frames
    for t in GLOBAL_FRAMES:
        clips.append(uniform_indices(rng.uniform(0, num_frames - span), span, t, num_frames))
    span = num_frames / 8
    for t in LOCAL_FRAMES:
        clips.append(uniform_indices(rng.uniform(0, num_frames - span), span, t, num_frames))
    return clips


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def use(name: str) -> str:
    """Configure the loader for candidate ``name``; returns its read_frames backend."""
    backend, seek_mode, _ = CANDIDATES[name]
    if seek_mode is not None:
        loader.TORCHCODEC_SEEK_MODE = seek_mode
    return backend


def bench(names: list[str], videos: list[tuple[Path, int]], repeats: int, seed: int) -> dict:
    """Median timings per candidate. Candidates take turns on each (repeat, video) with the
    same random indices, so background load and cache effects hit them all alike."""
    rng = np.random.default_rng(seed)
    times = {name: {"full_fps": [], "random16_s": [], "sample_s": []} for name in names}
    for name in names:  # warm-up: imports, shared libraries, page cache
        read_frames(videos[0][0], [0], use(name))
    for _ in range(repeats):
        for path, n in videos:
            random16 = rng.choice(n, 16, replace=False)
            union = np.concatenate(svt_sample(n, rng))
            for name in names:
                backend = use(name)
                t = times[name]
                t["full_fps"].append(n / timed(lambda: read_frames(path, np.arange(n), backend)))
                t["random16_s"].append(timed(lambda: read_frames(path, random16, backend)))
                t["sample_s"].append(timed(lambda: read_frames(path, union, backend)))
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def check_agreement(names: list[str], path: Path, n: int) -> None:
    """Guard against timing a wrong reader: all backends must return the same frames."""
    idx = np.random.default_rng(1).integers(0, n, 24)
    ref = None
    for name in names:
        frames = read_frames(path, idx, use(name)).int()
        if ref is None:
            ref = frames
        elif (frames - ref).abs().float().mean() > 1.0:
            raise SystemExit(f"{name} disagrees with {names[0]} on {path}: frames differ")


def available(names) -> list[str]:
    ok = []
    for name in names:
        module = CANDIDATES[name][2]
        try:
            __import__(module)
        except Exception as exc:  # missing package or broken shared libraries
            print(f"skipping {name}: cannot import {module} ({exc})")
            continue
        ok.append(name)
    return ok


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=3, help="test videos per resolution")
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--also-480", action="store_true", help="repeat at short side 480")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=True,
                        help="encode as config.yaml's decode.fast_decode (--no-fast-decode: x264 defaults)")
    args = parser.parse_args(argv)

    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        raise SystemExit("ffmpeg and ffprobe must be on PATH")
    torch.set_num_threads(1)
    names = available(args.backends)
    if not names:
        raise SystemExit("no backend importable")
    sides = [args.short_side] + ([480] if args.also_480 and args.short_side != 480 else [])

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {os.cpu_count()} cpus")
    rows = []
    with tempfile.TemporaryDirectory(prefix="svt-bench-") as tmp:
        for side in sides:
            videos = []
            for v in range(args.videos):
                path = Path(tmp) / f"s{side}_v{v}.mp4"
                make_video(path, args.seconds, v, side, EncodeSettings(fast_decode=args.fast_decode))
                videos.append((path, count_frames(path)))
            size_mb = sum(p.stat().st_size for p, _ in videos) / len(videos) / 1e6
            print(f"\n{len(videos)} videos, short side {side}, {videos[0][1]} frames each, "
                  f"{size_mb:.1f} MB each")
            check_agreement(names, *videos[0])
            results = bench(names, videos, args.repeats, args.seed)
            rows += [(side, name, results[name]) for name in names]

    header = (f"{'short side':>10}  {'backend':<17}{'full decode fps':>16}"
              f"{'16 random (s)':>15}{'SVT sample (s)':>16}")
    print("\n" + header + "\n" + "-" * len(header))
    for side, name, r in rows:
        print(f"{side:>10}  {name:<17}{r['full_fps']:>16.0f}"
              f"{r['random16_s']:>15.4f}{r['sample_s']:>16.4f}")
    for side in sides:
        ranked = sorted((r["sample_s"], name) for s, name, r in rows if s == side)
        best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
        vs = f" ({runner[0] / best[0]:.2f}x faster than {runner[1]})" if runner else ""
        print(f"conclusion ({side}p): fastest per SVT sample is {best[1]}, "
              f"{best[0] * 1000:.1f} ms/sample{vs}")


if __name__ == "__main__":
    main()
