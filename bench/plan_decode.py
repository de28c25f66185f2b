"""How long does `snakemake -n` take to plan the decode stage of a Kinetics-sized dataset,
and how many jobs does it plan? Jobs must grow with shards, not with videos.

    python bench/plan_decode.py [--videos 240000] [--shards 64]

Writes a synthetic Kinetics-400 CSV (the real header, labels with spaces and quotes) into a
temporary folder, points a config at it and times a real dry run from that folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_kinetics_csv(path: Path, videos: int, classes: int = 400) -> None:
    labels = [f'class {i:03d} "doing" it, {i}' for i in range(classes)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for i in range(videos):
            w.writerow([labels[i % classes], f"yt{i:09d}", 10 * (i % 30), 10 * (i % 30) + 10, "train"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=240_000)
    ap.add_argument("--shards", type=int, default=64)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos").mkdir()
        (tmp / "ann").mkdir()
        write_kinetics_csv(tmp / "ann" / "train.csv", a.videos)
        cfg = {"experiment": "plan", "data": {"pretrain": "k400", "evaluate": [], "extra": [],
               "datasets": {"k400": {"format": "kinetics", "root": str(tmp / "videos"),
                                     "annotations": str(tmp / "ann")}}},
               "decode": {"shards": a.shards}}
        (tmp / "plan.yaml").write_text(yaml.safe_dump(cfg))
        (tmp / "config.yaml").symlink_to(REPO / "config.yaml")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n",
                              "data", "--cores", "8", "--configfile", "plan.yaml"],
                             cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if res.returncode != 0:
        print(res.stdout[-2000:], res.stderr[-2000:], file=sys.stderr)
        return 1
    out = res.stdout + res.stderr
    total = int(re.search(r"^total\s+(\d+)", out, re.M).group(1))
    per_rule = dict(re.findall(r"^(\w+)\s+(\d+)$", out, re.M))
    print(f"{'videos':>10} {'shards':>7} {'jobs planned':>13} {'dry-run seconds':>16}")
    print(f"{a.videos:>10,} {a.shards:>7} {total:>13} {seconds:>16.1f}")
    print("jobs per rule:", ", ".join(f"{k} {v}" for k, v in per_rule.items() if k != "total"))
    ok = seconds < 20 and total <= a.shards + 8  # "data": the decode stage alone
    print(f"target: under 20 s and at most shards + a handful of jobs -> {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
