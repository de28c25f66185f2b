"""svt.gc (`make gc`): stage folders no experiment record refers to are listed with their
sizes and removed only on confirmation, never while Snakemake holds locks."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from svt.gc import orphans


def tree(root):
    """Two experiments sharing the data; an old pretraining and an unfinished one nobody uses."""
    res = root / "results"
    files = {
        "data/d-aaaaaaaaaa/manifest/train.csv": 100,
        "data/d-aaaaaaaaaa/videos/v.mp4": 5000,
        "curate/bbbbbbbbbb/summary.json": 10,
        "pretrain/d-1111111111/teacher_backbone.pth": 3000,  # used by t
        "pretrain/d-2222222222/teacher_backbone.pth": 7000,  # used by a sweep variant
        "pretrain/d-3333333333/teacher_backbone.pth": 4000,  # an old recipe: orphaned
        "pretrain/d-4444444444/checkpoints/last.pth": 2000,  # killed, unreferenced
        "evaluate/pretrained-5555555555/d-aaaaaaaaaa/probe-x/metrics.json": 20,
        "evaluate/table-6666666666/probe-x/table.md": 30,
        "evaluate/random-7777777777/adapted.pth": 900,  # orphaned
    }
    for rel, size in files.items():
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_bytes(b"x" * size)
    common = {"data": ["results/data/d-aaaaaaaaaa"], "curate": ["results/curate/bbbbbbbbbb"],
              "evaluate": ["results/evaluate/pretrained-5555555555"],
              "table": ["results/evaluate/table-6666666666/probe-x/table.md"], "logs": ["logs"]}
    for name, pre in (("t", "1111111111"), ("sweep/variants/lr-1", "2222222222")):
        (res / "experiments" / name).mkdir(parents=True)  # an experiment, a sweep's variant
        record = {"outputs": {**common, "pretrain": [f"results/pretrain/d-{pre}"]}}
        (res / "experiments" / name / "latest.json").write_text(json.dumps(record))
    return res


def gc(root, *args):
    return subprocess.run([sys.executable, "-m", "svt.gc", "--results-dir", "results", *args],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})


def test_lists_only_unreferenced_folders_with_sizes(tmp_path):
    res = tree(tmp_path)
    found = {o.path.relative_to(res).as_posix(): o for o in orphans(res, tmp_path)}
    assert set(found) == {"pretrain/d-3333333333", "pretrain/d-4444444444", "evaluate/random-7777777777"}
    assert found["pretrain/d-3333333333"].bytes == 4000
    assert "unfinished pretraining" in found["pretrain/d-4444444444"].note
    assert found["pretrain/d-3333333333"].note == ""


def test_dry_run_by_default_then_removes_on_confirmation(tmp_path):
    res = tree(tmp_path)
    listed = gc(tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "results/pretrain/d-3333333333" in listed.stdout and "3.9 KB" in listed.stdout
    assert "Nothing removed" in listed.stdout and "CONFIRM=yes" in listed.stdout
    assert (res / "pretrain" / "d-3333333333").is_dir()  # nothing removed without confirmation
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)
    (tmp_path / ".snakemake" / "locks" / "0.output.lock").write_text("x")
    refused = gc(tmp_path, "--delete")
    assert refused.returncode == 1 and "holds locks" in refused.stderr
    assert (res / "pretrain" / "d-3333333333").is_dir()
    (tmp_path / ".snakemake" / "locks" / "0.output.lock").unlink()
    removed = gc(tmp_path, "--delete")
    assert removed.returncode == 0, removed.stderr
    assert not (res / "pretrain" / "d-3333333333").exists()
    assert not (res / "evaluate" / "random-7777777777").exists()
    for kept in ("pretrain/d-1111111111", "pretrain/d-2222222222", "data/d-aaaaaaaaaa",
                 "curate/bbbbbbbbbb", "evaluate/table-6666666666", "evaluate/pretrained-5555555555"):
        assert (res / kept).is_dir(), kept
    again = gc(tmp_path)
    assert again.returncode == 0 and "every stage folder" in again.stdout


def test_without_experiment_records_nothing_is_listed(tmp_path):
    (tmp_path / "results" / "pretrain" / "d-1").mkdir(parents=True)
    res = gc(tmp_path)
    assert res.returncode == 1 and "no experiment records" in res.stderr
    assert (tmp_path / "results" / "pretrain" / "d-1").is_dir()
