"""`python -m svt.supervised` (the supervised upper bound) for real: real encoded videos,
real processes, a real MLflow store."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from svt import checkpoint as ckpt
from svt.decode import main as decode_main
from svt.index import main as index_main
from test_pretrain import TINY, assert_identical, cpu_env

pytestmark = pytest.mark.slow

# Classes told apart by colour alone, with a moving test pattern on top: a task any backbone
# must fit within a few dozen steps.
COLOURS = {"reddish": "0xc03030", "bluish": "0x3030c0"}
RECIPE = copy.deepcopy(TINY)
RECIPE["optim"].update({"epochs": 6, "warmup_epochs": 1, "lr": 0.02, "batch_size_per_gpu": 4})
RECIPE["augment"].update({"color_jitter": 0.0, "grayscale": 0.0, "blur": [0.0, 0.0, 0.0], "solarize": 0.0})
RECIPE["pretrain"].update({"checkpoint_every": 2, "log_every": 2})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_colour_data(tmp_path_factory.mktemp("sup"))


def make_colour_data(root: Path) -> Path:
    """8 videos per class, folder layout, decoded as the data stage does; all in train."""
    for name, colour in COLOURS.items():
        (root / "raw" / name).mkdir(parents=True)
        for i in range(8):
            src = (f"color=c={colour}:s=64x48:r=25:d=1[bg];testsrc2=s=24x18:r=25:d=1[fg];"
                   f"[bg][fg]overlay=x='mod(t*40+{7 * i},40)':y={3 * i % 30}")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-filter_complex", src, "-pix_fmt", "yuv420p",
                            "-c:v", "libx264", str(root / "raw" / name / f"v{i}.mp4")], check=True)
    assert index_main(["--format", "folder", "--root", str(root / "raw"), "--out-dir", str(root)]) == 0
    assert decode_main(["--index", str(root / "index.csv"), "--raw-root", str(root / "raw"),
                        "--videos-dir", str(root / "videos"), "--shard", "0", "--num-shards", "1",
                        "--short-side", "36", "--jobs", "2", "--out", str(root / "train.csv")]) == 0
    (root / "classes.txt").write_text("\n".join(sorted(COLOURS)) + "\n")
    return root


def command(data: Path, out: Path, cfg: dict = RECIPE, extra=()) -> list[str]:
    return [sys.executable, "-m", "svt.supervised", "--manifest", str(data / "train.csv"),
            "--videos-root", str(data / "videos"), "--classes", str(data / "classes.txt"),
            "--config-json", json.dumps(cfg), "--out-dir", str(out),
            "--tracking-uri", f"sqlite:///{out.parent / 'mlflow.db'}", "--experiment", "test", *extra]


def run(cmd):
    return subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=600)


def rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_fits_a_colour_task_and_exports_a_backbone_adapt_reads(data, tmp_path):
    out = tmp_path / "bound"
    res = run(command(data, out))
    assert res.returncode == 0, res.stderr[-3000:]
    log = rows(out)
    # 16 videos, batch 4: 4 steps per epoch, 6 epochs, a row every 2 steps
    assert [int(r["step"]) for r in log] == list(range(2, 25, 2))
    first, last = float(log[0]["loss"]), float(log[-1]["loss"])
    assert first > 0.5 and last < 0.1 * first, [r["loss"] for r in log]
    assert float(log[-1]["train_accuracy"]) == 100.0
    for name in ("backbone.pth", "curves.png", "config.yaml", "run.json"):
        assert (out / name).is_file(), name
    # svt.adapt reads it as it reads pretraining's teacher backbone
    adapted = tmp_path / "adapted.pth"
    res = subprocess.run([sys.executable, "-m", "svt.adapt", "--backbone", str(out / "backbone.pth"),
                          "--geometry", "slow=4x32", "--geometry", "fast=8x16", "--out", str(adapted)],
                         cwd=REPO, env=cpu_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    exported = ckpt.load(out / "backbone.pth")["state_dict"]
    trained = ckpt.load(out / "checkpoints" / "last.pth")["model"]
    for k, v in exported.items():
        assert torch.equal(v, trained[f"backbone.{k}"]), k

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_info,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run_info.data.tags["svt.stage"] == "supervised"
    assert run_info.data.metrics["train/train_accuracy"] == 100.0
    assert run_info.data.params["optim.lr"] == "0.02"
    history = client.get_metric_history(run_info.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(2, 25, 2))


def test_stopped_and_resumed_equals_an_uninterrupted_run(data, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(command(data, straight, extra=["--max-steps", "6"])).returncode == 0
    assert run(command(data, stopped, extra=["--max-steps", "3"])).returncode == 0
    res = run(command(data, stopped, extra=["--max-steps", "6"]))
    assert res.returncode == 0 and "resumed from" in res.stderr and "at step 3" in res.stderr, res.stderr[-2000:]
    a = ckpt.load(straight / "checkpoints" / "last.pth")
    b = ckpt.load(stopped / "checkpoints" / "last.pth")
    for key in ("model", "optimizer", "rng"):
        assert_identical(a[key], b[key], key)
    assert a["step"] == b["step"] == 6
    assert [int(r["step"]) for r in rows(stopped)] == [2, 3, 4, 6]  # the stop at 3 logs its step


def test_checkpoint_of_another_config_is_set_aside(data, tmp_path):
    out = tmp_path / "b"
    assert run(command(data, out, extra=["--max-steps", "2"])).returncode == 0
    other = copy.deepcopy(RECIPE)
    other["optim"]["lr"] = 0.01
    res = run(command(data, out, cfg=other, extra=["--max-steps", "2"]))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trained on other inputs" in res.stderr and "resumed" not in res.stderr
    assert len(list((out / "checkpoints").glob("last.pth.stale-*"))) == 1
