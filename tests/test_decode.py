"""Shard runner, rejects report and manifests, on real encoded files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, make_video
from svt import data_manifest, data_report
from svt.decode import main, shard_of
from svt.manifest import IndexRow, ManifestRow, RejectRow, read_rows, write_rows
from svt.video import output_name

SETTINGS = ["--short-side", "48", "--fps", "30", "--min-frames", "16"]


@pytest.fixture
def raw(tmp_path):
    """A small raw dataset: good videos of two classes plus every kind of bad input."""
    root = tmp_path / "raw"
    rows = []
    for i, name in enumerate(["walk/a.mp4", "walk/b c.avi", "run/ünï $`'.mp4", "run/d.mkv"]):
        make_video(root / name, size=(96, 64), seconds=1, codec="mpeg4" if name.endswith(".avi") else "libx264")
        rows.append(IndexRow(name, int(name.startswith("run")), name.split("/")[0], "train" if i % 2 == 0 else "test"))
    (root / "walk" / "empty.mp4").write_bytes(b"")
    rows.append(IndexRow("walk/empty.mp4", 0, "walk", "train"))
    rows.append(IndexRow("walk/missing.mp4", 0, "walk", "test"))
    make_video(root / "run" / "short.mp4", size=(96, 64), seconds=0.2)
    rows.append(IndexRow("run/short.mp4", 1, "run", "train"))
    write_rows(tmp_path / "index.csv", rows, IndexRow)
    return tmp_path


def run_shards(tmp, num_shards=2, extra=()):
    for k in range(num_shards):
        main(["--index", str(tmp / "index.csv"), "--raw-root", str(tmp / "raw"),
              "--videos-dir", str(tmp / "videos"), "--shard", str(k), "--num-shards", str(num_shards),
              "--jobs", "2", "--out", str(tmp / "shards" / f"{k}.csv"), *SETTINGS, *extra])
    return [tmp / "shards" / f"{k}.csv" for k in range(num_shards)]


def test_shards_partition_index_and_report_rejects(raw):
    shards = run_shards(raw)
    kept = [r for s in shards for r in read_rows(s, ManifestRow)]
    assert sorted(r.source for r in kept) == ["run/d.mkv", "run/ünï $`'.mp4", "walk/a.mp4", "walk/b c.avi"]
    for r in kept:
        assert (raw / "videos" / r.path).exists()
        assert shard_of(r.path, 2) == int(next(s.stem for s in shards if r in read_rows(s, ManifestRow)))
        assert (r.frames, r.fps, r.height, r.width) == (30, 30.0, 48, 72)
    data_report.main(["--shards", *map(str, shards), "--rejects", str(raw / "rejects.csv"),
                      "--summary", str(raw / "summary.json")])
    rejects = {r.source: r.reason for r in read_rows(raw / "rejects.csv", RejectRow)}
    assert rejects == {"walk/empty.mp4": "empty file (0 bytes)", "walk/missing.mp4": "file not found",
                       "run/short.mp4": rejects["run/short.mp4"]}
    assert rejects["run/short.mp4"].startswith("too short")
    summary = json.loads((raw / "summary.json").read_text())
    assert summary["videos"] == 7 and summary["kept"] == 4 and summary["rejected"] == 3
    assert summary["kept_per_split"] == {"test": 2, "train": 2}
    assert summary["rejected_per_reason"] == {"empty file (0 bytes)": 1, "file not found": 1, "too short": 1}


def test_manifest_per_split_and_reject_threshold(raw, capsys):
    shards = run_shards(raw)  # no report needed: the manifest counts rejects from the shards
    common = ["--shards", *map(str, shards)]
    data_manifest.main([*common, "--split", "train", "--max-reject-fraction", "0.5",
                        "--out", str(raw / "train.csv")])
    train = read_rows(raw / "train.csv", ManifestRow)
    assert [r.source for r in train] == ["run/ünï $`'.mp4", "walk/a.mp4"]
    with pytest.raises(SystemExit) as err:
        data_manifest.main([*common, "--split", "test", "--max-reject-fraction", "0.1",
                            "--out", str(raw / "test.csv")])
    msg = str(err.value)
    assert "3 of 7 videos were rejected" in msg and "max_reject_fraction=0.1" in msg
    assert "'empty file (0 bytes)': 1" in msg  # the reasons, counted
    assert f"{raw / 'shards'}/*.rejects.csv" in msg and not (raw / "test.csv").exists()


def test_rerun_skips_finished_videos(raw):
    run_shards(raw, num_shards=1)
    out = raw / "videos" / "walk" / "a.mp4"
    first = out.stat().st_mtime_ns
    (raw / "videos" / "run" / "d.mkv.mp4").unlink()  # as if the job died before this one
    run_shards(raw, num_shards=1)
    assert out.stat().st_mtime_ns == first  # reused, not re-encoded
    assert (raw / "videos" / "run" / "d.mkv.mp4").exists()
    make_video(raw / "raw" / "walk" / "a.mp4", size=(96, 64), seconds=2)  # the raw file is replaced
    run_shards(raw, num_shards=1)
    assert out.stat().st_mtime_ns > first  # so its output is not stale
    rows = [r for r in read_rows(raw / "shards" / "0.csv", ManifestRow) if r.source == "walk/a.mp4"]
    assert rows[0].frames == 60


def test_colliding_output_names_are_rejected_not_overwritten(tmp_path):
    root = tmp_path / "raw"
    make_video(root / "x.mp4", size=(64, 48), seconds=1)
    shutil.copy(root / "x.mp4", root / "x")  # a video without an extension
    write_rows(tmp_path / "index.csv", [IndexRow("x", 0, "a", "train"), IndexRow("x.mp4", 0, "a", "train")], IndexRow)
    assert output_name("x") == output_name("x.mp4")
    shards = run_shards(tmp_path, num_shards=3)
    kept = [r for s in shards for r in read_rows(s, ManifestRow)]
    rejected = [r for s in shards for r in read_rows(s.with_name(s.stem + ".rejects.csv"), RejectRow)]
    assert [r.source for r in kept] == ["x"]
    assert len(rejected) == 1 and rejected[0].source == "x.mp4"
    assert rejected[0].reason.startswith("duplicate output name")


def test_cli_runs_as_module(raw):
    res = subprocess.run(
        [sys.executable, "-m", "svt.decode", "--index", str(raw / "index.csv"),
         "--raw-root", str(raw / "raw"), "--videos-dir", str(raw / "v"), "--shard", "0",
         "--num-shards", "1", "--out", str(raw / "s.csv"), *SETTINGS],
        cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "rejected walk/empty.mp4: empty file (0 bytes)" in res.stderr
    assert "4 rows kept, 3 rejected" in res.stderr
    bad = subprocess.run([sys.executable, "-m", "svt.decode", "--index", "i", "--raw-root", "r",
                          "--videos-dir", "v", "--shard", "3", "--num-shards", "2", "--out", "o"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--shard 3 is outside 0..1" in bad.stderr
