"""Decode stage: re-encode raw videos in shards, then merge shard tables into manifests.

    python -m svt.decode shard   --index I --raw-root R --videos-dir V --shard K --num-shards N ...
    python -m svt.decode report  --shards S1 S2 ... --rejects OUT --summary OUT.json
                                 [--tracking-uri URI --experiment NAME --run-name data/NAME]
    python -m svt.decode manifest --shards S1 S2 ... --split train --rejects R --out OUT ...

A video belongs to shard ``crc32(output name) % N``: stable when the index grows, and two raw
files that would share an output name always meet in the same shard. A shard skips videos
whose output already exists (outputs are renamed into place only when complete), so a killed
or retried shard never redoes finished work.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from svt import tracking
from svt.manifest import IndexRow, ManifestRow, RejectRow, read_rows, write_rows
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


def report(shards: list[Path], rejects_out: Path, summary_out: Path) -> dict:
    """Merge shard tables into one rejects file and a summary (counts per split and reason)."""
    kept = [row for s in shards for row in read_rows(s, ManifestRow)]
    rejected = [row for s in shards for row in read_rows(_rejects_path(s), RejectRow)]
    rejected.sort(key=lambda r: (r.split, r.source))
    write_rows(rejects_out, rejected, RejectRow)
    total = len(kept) + len(rejected)
    summary = {
        "videos": total,
        "kept": len(kept),
        "rejected": len(rejected),
        "reject_fraction": len(rejected) / total if total else 0.0,
        "kept_per_split": dict(sorted(Counter(r.split for r in kept).items())),
        "rejected_per_reason": dict(sorted(Counter(_reason_kind(r.reason) for r in rejected).items())),
        "frames": sum(r.frames for r in kept),
        "hours": round(sum(r.duration for r in kept) / 3600, 4),
    }
    summary_out.parent.mkdir(parents=True, exist_ok=True)
    summary_out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def log_report(stats: dict, rejects: Path, summary: Path, a: argparse.Namespace) -> None:
    """The data stage's MLflow run: counts per split and per reject reason, the summary and the
    list of rejected videos. Tracking trouble only warns (svt.tracking.Tracker)."""
    if not a.tracking_uri:
        return
    t = tracking.Tracker(a.tracking_uri, a.experiment, run_name=a.run_name,
                         tags={"svt.stage": "data", **tracking.parse_tags(a.tag)})
    metrics = {k: stats[k] for k in ("videos", "kept", "rejected", "reject_fraction", "frames", "hours")}
    metrics.update({f"kept/{k}": v for k, v in stats["kept_per_split"].items()})
    metrics.update({f"rejected/{k}": v for k, v in stats["rejected_per_reason"].items()})
    t.log_metrics(metrics, step=0)
    t.log_artifact(summary, "data")
    t.log_artifact(rejects, "data")
    t.finish()


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _rejects_path(shard_csv: Path) -> Path:
    return shard_csv.with_name(shard_csv.stem + ".rejects.csv")


def manifest(shards: list[Path], split: str, summary: Path, max_reject_fraction: float,
             rejects: Path, out: Path) -> int:
    """Write the manifest of one split; refuse when too many videos were rejected."""
    stats = json.loads(summary.read_text())
    if stats["reject_fraction"] > max_reject_fraction:
        raise SystemExit(
            f"decode: {stats['rejected']} of {stats['videos']} videos were rejected "
            f"({100 * stats['reject_fraction']:.1f}%), above decode.max_reject_fraction="
            f"{max_reject_fraction}. Reasons: {stats['rejected_per_reason']}. The list is in "
            f"{rejects}; fix or remove those videos, or raise the threshold, and rerun "
            f"(finished videos are not decoded again).")
    rows = [r for s in shards for r in read_rows(s, ManifestRow) if r.split == split]
    rows.sort(key=lambda r: r.path)
    write_rows(out, rows, ManifestRow)
    return len(rows)


def _settings(a: argparse.Namespace) -> EncodeSettings:
    return EncodeSettings(short_side=a.short_side, fps=a.fps, gop=a.gop, crf=a.crf,
                          preset=a.preset, min_frames=a.min_frames,
                          min_decoded_fraction=a.min_decoded_fraction, timeout_s=a.timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("shard", help="re-encode the videos of one shard")
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
    s.add_argument("--min-frames", type=int, default=16)
    s.add_argument("--min-decoded-fraction", type=float, default=0.9)
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per video (at least)")
    s.add_argument("--jobs", type=int, default=1, help="videos encoded in parallel")
    s.add_argument("--out", type=Path, required=True, help="shard manifest CSV")

    r = sub.add_parser("report", help="merge shard rejects and write a summary")
    r.add_argument("--shards", type=Path, nargs="+", required=True)
    r.add_argument("--rejects", type=Path, required=True)
    r.add_argument("--summary", type=Path, required=True)
    r.add_argument("--run-name", default="data", help="name of the MLflow run (with --tracking-uri)")
    tracking.add_arguments(r, experiment="svt-data")

    m = sub.add_parser("manifest", help="write the manifest of one split")
    m.add_argument("--shards", type=Path, nargs="+", required=True)
    m.add_argument("--split", required=True)
    m.add_argument("--summary", type=Path, required=True)
    m.add_argument("--rejects", type=Path, required=True, help="named in the error message")
    m.add_argument("--max-reject-fraction", type=float, required=True)
    m.add_argument("--out", type=Path, required=True)

    a = ap.parse_args(argv)
    if a.cmd == "shard":
        if not 0 <= a.shard < a.num_shards:
            ap.error(f"--shard {a.shard} is outside 0..{a.num_shards - 1}")
        run_shard(a.index, a.raw_root, a.videos_dir, a.shard, a.num_shards, _settings(a),
                  a.jobs, a.out, _rejects_path(a.out))
    elif a.cmd == "report":
        stats = report(a.shards, a.rejects, a.summary)
        print(json.dumps(stats), file=sys.stderr)
        log_report(stats, a.rejects, a.summary, a)
    else:
        n = manifest(a.shards, a.split, a.summary, a.max_reject_fraction, a.rejects, a.out)
        print(f"{a.out}: {n} videos", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
