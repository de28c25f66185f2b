"""Decode stage, one shard: ``python -m svt.decode``.

    python -m svt.decode --index I --raw-root R --videos-dir V --shard K --num-shards N ... --out S.csv

Re-encodes the shard's raw videos and writes its tables: kept videos (``S.csv``, manifest
rows) and rejects (``S.rejects.csv``). ``svt.data_report`` and ``svt.data_manifest`` merge the
shards' tables; they live in modules of their own so that editing them reruns no shard.

A video belongs to shard ``crc32(output name) % N``: stable when the index grows, and two raw
files that would share an output name always meet in the same shard. A shard skips videos
whose output already exists (outputs are renamed into place only when complete), so a killed
or retried shard never redoes finished work.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from svt.manifest import IndexRow, ManifestRow, RejectRow, read_rows, shard_rejects_path, write_rows
from svt.video import EncodeSettings, VideoError, check_output, output_name, probe, transcode


def shard_of(name: str, num_shards: int) -> int:
    return zlib.crc32(name.encode("utf-8")) % num_shards


def _decode_one(source: str, raw_root: Path, videos_dir: Path, settings: EncodeSettings):
    """Return (output name, VideoInfo) or raise VideoError."""
    name = output_name(source)
    dst, src = videos_dir / name, raw_root / source
    # Finished by an earlier (killed or failed) attempt, and the raw file has not been
    # replaced since: reuse it.
    if dst.exists() and src.exists() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        info = probe(dst, settings.timeout_s)
        if check_output(info, None, settings) is None:
            return name, info
    dst.unlink(missing_ok=True)
    return name, transcode(src, dst, settings)


def run_shard(index: Path, raw_root: Path, videos_dir: Path, shard: int, num_shards: int,
              settings: EncodeSettings, jobs: int, out: Path, rejects_out: Path) -> tuple[int, int]:
    rows = [r for r in read_rows(index, IndexRow) if shard_of(output_name(r.path), num_shards) == shard]
    sources = sorted({r.path for r in rows})
    results: dict[str, tuple[str, object] | str] = {}
    names: dict[str, str] = {}
    for src in sources:  # e.g. "a.mp4" listed twice is fine; "a" vs "a.mp4" are not
        name = output_name(src)
        if name in names:
            results[src] = f"duplicate output name {name!r}: also produced by {names[name]!r}"
        names.setdefault(name, src)
    todo = [s for s in sources if s not in results]

    def work(src: str):
        try:
            return src, _decode_one(src, raw_root, videos_dir, settings)
        except VideoError as err:
            return src, err.reason

    bar = tqdm(total=len(todo), desc=f"decode shard {shard}/{num_shards}", unit="video",
               mininterval=5.0, file=sys.stderr)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # ffmpeg does the work
        for src, result in pool.map(work, todo):
            results[src] = result
            bar.update()
    bar.close()

    kept, rejected = [], []
    for r in rows:
        res = results[r.path]
        if isinstance(res, str):
            rejected.append(RejectRow(r.path, r.split, r.label_name, res))
            continue
        name, info = res
        kept.append(ManifestRow(name, r.label, r.label_name, r.split, info.frames,
                                round(info.fps, 6), round(info.duration, 6), info.width,
                                info.height, r.path))
    write_rows(rejects_out, rejected, RejectRow)
    write_rows(out, kept, ManifestRow)
    for rej in rejected:
        print(f"rejected {rej.source}: {rej.reason}", file=sys.stderr)
    print(f"shard {shard}/{num_shards}: {len(kept)} rows kept, {len(rejected)} rejected "
          f"({len(todo)} videos processed)", file=sys.stderr)
    return len(kept), len(rejected)


def _settings(a: argparse.Namespace) -> EncodeSettings:
    return EncodeSettings(short_side=a.short_side, fps=a.fps, gop=a.gop, crf=a.crf,
                          preset=a.preset, fast_decode=a.fast_decode, min_frames=a.min_frames,
                          min_decoded_fraction=a.min_decoded_fraction, timeout_s=a.timeout)


def main(argv: list[str] | None = None) -> int:
    s = argparse.ArgumentParser(prog="python -m svt.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--index", type=Path, required=True, help="index.csv written by svt.index")
    s.add_argument("--raw-root", type=Path, required=True, help="folder the index paths are relative to")
    s.add_argument("--videos-dir", type=Path, required=True, help="where processed videos go")
    s.add_argument("--shard", type=int, required=True)
    s.add_argument("--num-shards", type=int, required=True)
    s.add_argument("--short-side", type=int, default=256)
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--gop", type=int, default=16)
    s.add_argument("--crf", type=int, default=23)
    s.add_argument("--preset", default="veryfast")
    s.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="x264 options the training loader decodes faster (svt.video.FAST_DECODE_X264)")
    s.add_argument("--min-frames", type=int, default=16)
    s.add_argument("--min-decoded-fraction", type=float, default=0.9)
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per video (at least)")
    s.add_argument("--jobs", type=int, default=1, help="videos encoded in parallel")
    s.add_argument("--out", type=Path, required=True, help="shard manifest CSV")
    a = s.parse_args(argv)
    if not 0 <= a.shard < a.num_shards:
        s.error(f"--shard {a.shard} is outside 0..{a.num_shards - 1}")
    run_shard(a.index, a.raw_root, a.videos_dir, a.shard, a.num_shards, _settings(a),
              a.jobs, a.out, shard_rejects_path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
