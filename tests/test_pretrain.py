"""`python -m svt.pretrain` for real: tiny model, real decoded videos, real processes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from svt import checkpoint as ckpt
from svt import pretrain
from svt.decode import main as decode_main
from svt.demo_data import generate
from svt.index import main as index_main

pytestmark = pytest.mark.slow

TINY = {
    "model": {"patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
              "qkv_bias": True, "drop_path_rate": 0.1, "drop_path_mode": "official", "teacher_mode": "train",
              "img_size": 32, "num_frames": 4, "init": "none",
              "pos_interp_spatial": "nearest", "pos_interp_temporal": "nearest",
              "grad_checkpointing": False},
    "views": {"global_frames": [2, 4], "global_size": 32, "global_span": 0.9,
              "global_scale": [0.4, 1.0], "local_frames": [2, 2], "local_size": 16,
              "local_span": 0.125, "local_scale": [0.05, 0.4], "aspect_ratio": [0.75, 1.3333]},
    "augment": {"hflip": 0.0, "color_jitter": 0.8, "brightness": 0.4, "contrast": 0.4,
                "saturation": 0.2, "hue": 0.1, "grayscale": 0.2, "blur": [1.0, 0.1, 0.5],
                "solarize": 0.2, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "loss": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "norm_last_layer": True,
             "student_temp": 0.1, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04,
             "warmup_teacher_temp_epochs": 0, "center_momentum": 0.9},
    "optim": {"epochs": 3, "warmup_epochs": 1, "batch_size_per_gpu": 2, "lr": 5e-4, "min_lr": 1e-6,
              "weight_decay": 0.04, "weight_decay_end": 0.1, "momentum_teacher": 0.996,
              "clip_grad": 3.0, "clip_mode": "per_tensor", "decay_embeddings": True,
              "freeze_last_layer": 1, "seed": 0},
    "pretrain": {"devices_per_node": 1, "num_workers": 0, "precision": "auto",
                 "decoder": "torchcodec", "compile": "off", "checkpoint_every": 1, "log_every": 1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_data(tmp_path_factory)


def make_train_data(tmp_path_factory) -> Path:
    """8 demo videos decoded to 32 px: a real train manifest."""
    root = tmp_path_factory.mktemp("pre")
    generate(root / "raw", seed=3, classes=2, groups=4, clips=1, frames=30, size=(64, 48), jobs=2,
             progress=False)
    assert index_main(["--format", "ucf101", "--root", str(root / "raw" / "videos"),
                       "--annotations", str(root / "raw" / "splits"), "--out-dir", str(root)]) == 0
    decode_main(["--index", str(root / "index.csv"), "--raw-root", str(root / "raw" / "videos"),
                 "--videos-dir", str(root / "videos"), "--shard", "0", "--num-shards", "1",
                 "--short-side", "36", "--jobs", "2", "--out", str(root / "all.csv")])
    rows = list(csv.DictReader(open(root / "all.csv")))
    for r in rows:
        r["split"] = "train"  # pretraining uses every video
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def command(data, out, cfg=TINY, extra=(), launcher=(sys.executable, "-m", "svt.pretrain")):
    return [*launcher, "--manifest", str(data / "train.csv"), "--videos-root", str(data / "videos"),
            "--config-json", json.dumps(cfg), "--out-dir", str(out), "--ckpt-dir", str(out / "ckpt"),
            "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--experiment", "test", *extra]


def cpu_env() -> dict:
    """These tests mean the CPU (gloo for several ranks), also on a host with GPUs:
    tests/test_gpu.py is where training on a GPU is tested."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "CUDA_VISIBLE_DEVICES": ""}


def run(cmd, env=None, **kw):
    return subprocess.run(cmd, cwd=REPO, env=env or cpu_env(), capture_output=True, text=True, **kw)


def metrics(out):
    return list(csv.DictReader(open(out / "metrics.csv")))


def test_trains_exports_and_logs(data, tmp_path):
    res = run(command(data, tmp_path, extra=["--log-checkpoint"]))  # tracking.log_checkpoints
    assert res.returncode == 0, res.stderr[-3000:]
    rows = metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))  # 3 epochs x 4 batches of 2
    assert all(float(r["loss"]) > 0 for r in rows)
    assert float(rows[-1]["momentum"]) == pytest.approx(1.0)
    exported = torch.load(tmp_path / "teacher_backbone.pth", weights_only=True)
    assert exported["step"] == 12 and "pos_embed" in exported["state_dict"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    run_id = json.loads((tmp_path / "run.json").read_text())["mlflow_run_id"]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_ = client.get_run(run_id)
    assert run_.info.status == "FINISHED"
    assert run_.data.params["optim.lr"] == "0.0005"
    assert len(client.get_metric_history(run_id, "train/loss")) == 12
    for key in ("train/lr", "train/wd", "train/momentum", "train/teacher_entropy", "grad_norm",
                "epoch", "data_time", "step_time", "samples_per_s", "data_wait",
                "loader_samples_per_s"):
        assert key in run_.data.metrics
    assert 0 <= run_.data.metrics["data_wait"] <= 1 and run_.data.metrics["loader_samples_per_s"] > 0
    # --log-checkpoint: the exported backbone in the run's artifacts, byte for byte (without
    # it, only its path and sha256: test_resumed_job_continues_its_run_under_a_new_workflow_run)
    from mlflow.artifacts import download_artifacts
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/teacher_backbone.pth"]
    got = download_artifacts(run_id=run_id, artifact_path="checkpoints/teacher_backbone.pth",
                             dst_path=str(tmp_path / "dl"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exported_bytes = (tmp_path / "teacher_backbone.pth").read_bytes()
    assert Path(got).read_bytes() == exported_bytes
    assert run_.data.tags["svt.teacher_backbone_sha256"] == hashlib.sha256(exported_bytes).hexdigest()


def test_mlflow_names_put_the_training_curves_first():
    """MLflow's run page shows prefixed sections first, charts in name order: loss, lr, ..."""
    row = {"step": 3, "epoch": 0.5, "loss": 2.0, "lr": 1e-4, "wd": 0.04, "momentum": 0.996,
           "teacher_temp": 0.04, "teacher_entropy": 3.0, "grad_norm": 1.5, "data_time": 0.1,
           "step_time": 0.5, "samples_per_s": 16.0}
    flat = {"warmup_teacher_temp_epochs": 0, "warmup_teacher_temp": 0.04, "teacher_temp": 0.04}
    names = pretrain.mlflow_curves(row, flat)
    assert sorted(k for k in names if k.startswith("train/"))[:2] == ["train/loss", "train/lr"]
    assert "train/teacher_temp" not in names and "step" not in names  # a constant is a param
    assert names["grad_norm"] == 1.5 and names["train/loss"] == 2.0
    warm = {**flat, "warmup_teacher_temp_epochs": 2, "warmup_teacher_temp": 0.02}
    assert pretrain.mlflow_curves(row, warm)["train/teacher_temp"] == 0.04


def test_resume_after_stop_is_identical_to_an_uninterrupted_run(data, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(command(data, straight, extra=["--max-steps", "6"])).returncode == 0
    assert run(command(data, stopped, extra=["--max-steps", "3"])).returncode == 0
    res = run(command(data, stopped, extra=["--max-steps", "6"]))
    assert res.returncode == 0 and "resumed from" in res.stderr and "at step 3" in res.stderr
    assert_same_training_state(straight / "ckpt" / "last.pth", stopped / "ckpt" / "last.pth")
    assert [int(r["step"]) for r in metrics(stopped)] == list(range(1, 7))
    run_ids = {json.loads((d / "run.json").read_text())["mlflow_run_id"] for d in (stopped,)}
    assert len(run_ids) == 1


def test_unreachable_tracking_server_training_finishes(data, tmp_path):
    """Tracking over HTTP to a server that is not there: a few short retries, one warning,
    and the run trains, exports and writes run.json as usual, in bounded time."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = json.loads(json.dumps(TINY))
    cfg["optim"]["epochs"] = 1
    t0 = time.monotonic()
    res = run(command(data, tmp_path, cfg=cfg, extra=["--tracking-uri", f"http://127.0.0.1:{port}"]))
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert "MLflow unavailable" in res.stderr and "continuing without tracking" in res.stderr
    assert [int(r["step"]) for r in metrics(tmp_path)] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "teacher_backbone.pth", weights_only=True)["step"] == 4
    assert json.loads((tmp_path / "run.json").read_text()) == {"mlflow_run_id": None, "steps": 4}
    assert not (tmp_path / "mlflow.db").exists()
    baseline = time.monotonic()
    assert run(command(data, tmp_path / "untracked", cfg=cfg, extra=["--tracking-uri", ""])).returncode == 0
    untracked = time.monotonic() - baseline
    # the whole cost of the missing server: the retries of the first call (1 + 2 + 4 s backoff)
    assert took < untracked + 30, (took, untracked)


def test_resumed_job_continues_its_run_under_a_new_workflow_run(data, tmp_path):
    """A job resumed by a later workflow invocation logs into its own first run (one curve),
    which records the parent that resumed it; system metrics are logged on training runs."""
    cfg = json.loads(json.dumps(TINY))
    cfg["optim"]["epochs"] = 2
    env = {**cpu_env(), "SVT_MLFLOW_PARENT_RUN_ID": "a" * 32}
    first = subprocess.run(command(data, tmp_path, cfg=cfg, extra=["--max-steps", "4",
                                                                    "--system-metrics-s", "0.5"]),
                           cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    env["SVT_MLFLOW_PARENT_RUN_ID"] = "b" * 32
    env["SLURM_JOB_ID"] = "4242"
    second = subprocess.run(command(data, tmp_path, cfg=cfg, extra=["--system-metrics-s", "0.5"]),
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "at step 4" in second.stderr, second.stderr[-3000:]
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run_,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run_.info.run_id == json.loads((tmp_path / "run.json").read_text())["mlflow_run_id"]
    tags = run_.data.tags
    assert tags["mlflow.parentRunId"] == "a" * 32 and tags["svt.resumed_by_parent"] == "b" * 32
    assert tags["svt.resumed_at_step"] == "4" and tags["svt.slurm_job_id"] == "4242"
    assert run_.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_.info.run_id, "train/loss")] == list(range(1, 9))
    assert "system/cpu_utilization_percentage" in run_.data.metrics
    assert tags["svt.teacher_backbone_sha256"] == hashlib.sha256(
        (tmp_path / "teacher_backbone.pth").read_bytes()).hexdigest()
    assert client.list_artifacts(run_.info.run_id, "checkpoints") == []  # no --log-checkpoint


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Two checkpoint trees bit for bit: tensors (dtype, shape, every bit), dicts, lists, numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max difference {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"  # also None == None: a generator neither has


def assert_same_training_state(a: Path, b: Path) -> None:
    """Everything a resume restores: student, teacher, optimizer moments and step counts,
    scaler, loss centre, step, epoch, sampler position and every rank's RNG states."""
    sa, sb = ckpt.load(a), ckpt.load(b)
    assert sa["step"] == sb["step"], (sa["step"], sb["step"])
    for key in ("student", "teacher", "optimizer", "scaler", "loss", "step", "epoch", "sampler", "inputs"):
        assert_identical(sa[key], sb[key], key)
    assert_identical(sa["rng"], sb["rng"], "rng")


def kill_at_a_mid_epoch_checkpoint(proc: subprocess.Popen, last: Path, iters: int, total: int,
                                   timeout: float = 300) -> int:
    """The scheduler's hard kill, landing mid-epoch for certain. Each time the job (with its
    ranks and loader workers) has written a new checkpoint, freeze all of it (SIGSTOP) and read
    the checkpoint: once it is past the first epoch and mid-epoch, SIGKILL everything there.
    Returns that checkpoint's step, the one a restart must resume from."""
    import psutil

    deadline, seen = time.time() + timeout, None
    while time.time() < deadline:
        assert proc.poll() is None, f"the job ended (exit {proc.returncode}) before a mid-epoch checkpoint"
        if last.exists() and (last.stat().st_ino, last.stat().st_mtime_ns) != seen:
            root = psutil.Process(proc.pid)
            tree = [*root.children(recursive=True), root]  # torchrun's ranks are in own sessions
            for p in tree:
                p.suspend()
            seen = (last.stat().st_ino, last.stat().st_mtime_ns)
            step = ckpt.load(last)["step"]  # renamed into place whole: nothing to swallow here
            if step > iters and step % iters and step < total:
                for p in tree:
                    p.kill()
                proc.wait(timeout=60)
                return step
            for p in reversed(tree):
                p.resume()
        time.sleep(0.02)
    raise AssertionError(f"no mid-epoch checkpoint in {timeout} s")


@pytest.mark.parametrize("workers,ranks", [(0, 1), (2, 1), (0, 2)],
                         ids=["one-process", "2-loader-workers", "2-rank-gloo-ddp"])
def test_sigkill_mid_epoch_then_restart_equals_uninterrupted_run(data, tmp_path, workers, ranks):
    """SIGKILL (nothing saved at the kill), restart: the restart redoes the steps since the
    last checkpoint, which is mid-epoch, and ends in exactly the state of a run never killed:
    weights, optimizer state and RNGs bit for bit; with loader workers, and under DDP."""
    cfg = json.loads(json.dumps(TINY))
    cfg["optim"]["batch_size_per_gpu"] = 1  # 8 / ranks steps per epoch: room for mid-epoch saves
    cfg["pretrain"].update(checkpoint_every=3, num_workers=workers)
    iters = 8 // ranks
    total = cfg["optim"]["epochs"] * iters
    launcher = (sys.executable, "-m", "svt.pretrain") if ranks == 1 else (
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
        "-m", "svt.pretrain")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    res = run(command(data, straight, cfg=cfg, launcher=launcher))
    assert res.returncode == 0, res.stderr[-3000:]
    proc = subprocess.Popen(command(data, killed, cfg=cfg, launcher=launcher), cwd=REPO, env=cpu_env(),
                            stderr=subprocess.DEVNULL, start_new_session=True)
    saved = kill_at_a_mid_epoch_checkpoint(proc, killed / "ckpt" / "last.pth", iters, total)
    res = run(command(data, killed, cfg=cfg, launcher=launcher))
    assert res.returncode == 0 and f"at step {saved} (epoch {saved // iters})" in res.stderr, res.stderr[-2000:]
    assert_same_training_state(straight / "ckpt" / "last.pth", killed / "ckpt" / "last.pth")
    a = torch.load(straight / "teacher_backbone.pth", weights_only=True)["state_dict"]
    assert_identical(a, torch.load(killed / "teacher_backbone.pth", weights_only=True)["state_dict"])
    assert [int(r["step"]) for r in metrics(killed)] == list(range(1, total + 1))  # no duplicates


def test_sigterm_saves_and_exits_for_retry(data, tmp_path):
    slow = json.loads(json.dumps(TINY))
    slow["optim"]["epochs"] = 50
    proc = subprocess.Popen(command(data, tmp_path, cfg=slow), cwd=REPO, env=cpu_env(),
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "ckpt" / "last.pth").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    state = torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)
    done = int(metrics(tmp_path)[-1]["step"])
    assert state["step"] == done > 0  # nothing after the last checkpoint was lost
    assert f"saved step {done}" in err
    res = run(command(data, tmp_path, cfg=slow, extra=["--max-steps", str(done + 2)]))
    assert res.returncode == 0 and f"at step {done}" in res.stderr
    assert [int(r["step"]) for r in metrics(tmp_path)] == list(range(1, done + 3))


def test_non_finite_loss_stops_naming_the_step(data, tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["optim"].update(lr=1e30, clip_grad=0.0, warmup_epochs=0)
    res = run(command(data, tmp_path, cfg=bad))
    assert res.returncode != 0
    assert "pretrain: loss is nan at step" in res.stderr or "pretrain: loss is inf at step" in res.stderr


def weight_gaps(a: dict, b: dict, init: dict) -> dict[str, float]:
    """Per tensor, |a - b| relative to how far ``a`` moved from ``init``. The key third of
    each qkv bias is left out: attention is invariant to it, so its true gradient is 0 and
    AdamW turns the rounding noise it gets into steps of the size of the lr."""
    gaps = {}
    for k in a:
        x, y, x0 = a[k].double().clone(), b[k].double().clone(), init[k].double().clone()
        if k.endswith("attn.qkv.bias"):
            d = x.numel() // 3
            for t in (x, y, x0):
                t[d:2 * d] = 0
        moved = (x - x0).norm().item()
        if moved > 0:
            gaps[k] = (x - y).norm().item() / moved
    return gaps


def initial_weights(cfg: dict) -> dict:
    """The student and teacher weights svt.pretrain starts from (it seeds, then builds)."""
    torch.manual_seed(cfg["optim"]["seed"])
    student, teacher = pretrain.build_nets(cfg, torch.device("cpu"))
    return {"student": student.state_dict(), "teacher": teacher.state_dict()}


def assert_weights_within(ref: dict, got: dict, init: dict, bound: float) -> None:
    """Student and teacher of two checkpoints: every tensor within ``bound`` of its movement
    (weight_gaps)."""
    for part in ("student", "teacher"):
        gaps = weight_gaps(ref[part], got[part], init[part])
        worst = max(gaps, key=gaps.get)
        assert gaps[worst] < bound, f"{part}.{worst} differs by {gaps[worst]:.2g} of its movement"


def test_two_process_ddp_on_gloo_matches_one_process(data, tmp_path):
    """2 ranks x batch 2 against 1 rank x batch 4: same samples per step, same augmentations,
    gradients averaged by DDP, centre all-reduced, so the same losses, weights and optimizer
    moments. Drop-path is off (its masks are drawn per local batch), the lr is high enough to
    move the weights by ~1e-3 (float noise is ~1e-7), and a fast teacher momentum makes the
    teacher follow. Negative control in the same test: the 2-rank run with DDP's gradient
    all-reduce taken out (tests/ddp_without_grad_sync.py) must fail the same comparison."""
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["drop_path_rate"] = 0.0
    cfg["optim"].update(lr=0.064, momentum_teacher=0.5)  # peak lr 0.064 * 4 / 256 = 1e-3
    one = json.loads(json.dumps(cfg))
    one["optim"]["batch_size_per_gpu"] = 4
    assert run(command(data, tmp_path / "one", cfg=one)).returncode == 0
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    res = run(command(data, tmp_path / "two", cfg=cfg, launcher=(*torchrun, "-m", "svt.pretrain")))
    assert res.returncode == 0, res.stderr[-3000:]
    res = run(command(data, tmp_path / "unsynced", cfg=cfg,
                      launcher=(*torchrun, str(REPO / "tests" / "ddp_without_grad_sync.py"))))
    assert res.returncode == 0, res.stderr[-3000:]

    init = initial_weights(cfg)
    ref = ckpt.load(tmp_path / "one" / "ckpt" / "last.pth")
    for part in ("student", "teacher"):
        moved = max((ref[part][k] - init[part][k]).abs().max().item() for k in init[part])
        assert moved > 5e-4, f"{part} moved only {moved:.2g}: the test could not see a wrong gradient"

    def compare(run_dir: Path) -> None:
        got = ckpt.load(run_dir / "ckpt" / "last.pth")
        # measured: <= 4.5e-5 of the movement per tensor (summation order of the all-reduce)
        assert_weights_within(ref, got, init, 3e-4)
        # AdamW's moments hold the averaged gradients of every step (all tensors together: a
        # key bias's moments are rounding noise). measured: 5e-7 relative
        for key in ("exp_avg", "exp_avg_sq"):
            want = torch.cat([st[key].flatten() for st in ref["optimizer"]["state"].values()])
            have = torch.cat([got["optimizer"]["state"][i][key].flatten() for i in ref["optimizer"]["state"]])
            gap = ((have - want).norm() / want.norm()).item()
            assert gap < 1e-5, f"optimizer {key} differs by {gap:.2g}"
        a, b = metrics(tmp_path / "one"), metrics(run_dir)
        assert [int(r["step"]) for r in b] == list(range(1, 7))  # 8 videos / (2 x 2) = 2 per epoch
        for ra, rb in zip(a, b, strict=True):  # measured: <= 5e-7 relative
            assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5), ra["step"]
            assert float(rb["lr"]) == pytest.approx(float(ra["lr"]), rel=1e-9)

    compare(tmp_path / "two")
    assert len(ckpt.load(tmp_path / "two" / "ckpt" / "last.pth")["rng"]) == 2  # both ranks' RNGs
    with pytest.raises(AssertionError, match="differs by"):
        compare(tmp_path / "unsynced")  # measured: 0.28-0.9 of the movement, losses apart from step 3


def test_knn_monitor_logs_accuracy_at_epoch_ends(data, tmp_path):
    res = run(command(data, tmp_path, extra=[
        "--max-steps", "8", "--knn-every", "1", "--knn-train", str(data / "all.csv"),
        "--knn-test", str(data / "all.csv"), "--knn-videos-root", str(data / "videos")]))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("kNN top-1") == 2  # epochs 1 and 2 (4 steps each)
    from mlflow.tracking import MlflowClient
    run_id = json.loads((tmp_path / "run.json").read_text())["mlflow_run_id"]
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "knn_top1")
    assert [m.step for m in history] == [4, 8] and all(0 <= m.value <= 100 for m in history)
    assert all(round(m.value, 2) == m.value for m in history)  # percent, two decimals


def test_checkpoint_of_other_data_or_damaged_is_set_aside_not_resumed(data, tmp_path):
    import shutil
    videos = tmp_path / "videos"
    shutil.copytree(data / "videos", videos)
    cmd = command(data, tmp_path / "out", extra=["--max-steps", "2"])
    cmd[cmd.index("--videos-root") + 1] = str(videos)
    assert run(cmd).returncode == 0
    first = next(videos.rglob("*.mp4"))
    os.utime(first, ns=(time.time_ns(), time.time_ns()))  # re-decoded: same name, new file
    res = run(cmd)
    assert res.returncode == 0 and "starting over" in res.stderr and "resumed" not in res.stderr
    assert list((tmp_path / "out" / "ckpt").glob("last.pth.stale-*"))
    cfg = json.loads(json.dumps(TINY))
    cfg["pretrain"]["num_workers"] = 1  # runtime settings do not invalidate a checkpoint
    cmd[cmd.index("--config-json") + 1] = json.dumps(cfg)
    cmd[cmd.index("--max-steps") + 1] = "3"
    res = run(cmd)
    assert res.returncode == 0 and "at step 2" in res.stderr
    last = tmp_path / "out" / "ckpt" / "last.pth"
    last.write_bytes(last.read_bytes()[:4096])  # damaged on disk: set aside, never half-loaded
    res = run(cmd)
    assert res.returncode == 0 and f"{last}: not a readable checkpoint" in res.stderr, res.stderr[-2000:]
    assert "starting over" in res.stderr and "resumed" not in res.stderr
    assert len(list(last.parent.glob("last.pth.corrupt-*"))) == 1


def test_compiled_blocks_train_like_eager_and_log_the_compile_time(data, tmp_path):
    """--compile blocks end to end on the CPU compiler: the first step's loss equals eager's
    (fp32, rtol 1e-5), the compile time is printed and logged, the run exports."""
    from test_model import _cpu_compiler_problem

    problem = _cpu_compiler_problem()
    if problem:
        pytest.skip(f"torch.compile does not work on this machine: {problem}; install a C++ "
                    "compiler with: sudo apt-get install g++  (make setup runs it as root)")
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["drop_path_rate"] = 0.0  # compiled and eager draw random numbers differently
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert run(command(data, eager, cfg=cfg, extra=["--max-steps", "2"])).returncode == 0
    res = run(command(data, compiled, cfg=cfg, extra=["--max-steps", "2", "--compile", "blocks"]))
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(l for l in res.stderr.splitlines() if l.startswith("pretrain: compile"))
    assert line.startswith("pretrain: compile blocks: ") and "torch.compile of the blocks failed" not in res.stderr
    a, b = metrics(eager), metrics(compiled)
    assert float(b[0]["loss"]) == pytest.approx(float(a[0]["loss"]), rel=1e-5)
    from mlflow.tracking import MlflowClient
    run_id = json.loads((compiled / "run.json").read_text())["mlflow_run_id"]
    assert MlflowClient(f"sqlite:///{compiled / 'mlflow.db'}").get_run(run_id).data.metrics["compile_s"] > 0


def test_config_yaml_has_the_official_training_semantics():
    """config.yaml's defaults are the official SVT code's: teacher in train mode with drop-path,
    drop-path per location/frame, CLS token and positional tables decayed, per-tensor clipping,
    8 trained temporal rows resampled to a 16-frame view."""
    import yaml

    from svt.loss import param_groups
    from svt.pretrain import build_nets, make_optimizer

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    assert cfg["optim"]["clip_mode"] == "per_tensor" and cfg["optim"]["decay_embeddings"] is True
    assert cfg["model"]["teacher_mode"] == "train" and cfg["model"]["drop_path_mode"] == "official"
    assert cfg["model"]["num_frames"] == 8
    cfg["model"].update(embed_dim=32, depth=2, num_heads=2, img_size=32, drop_path_rate=0.5)
    cfg["loss"].update(out_dim=16, hidden_dim=16, bottleneck_dim=8)
    torch.manual_seed(0)
    student, teacher = build_nets(cfg, torch.device("cpu"))
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    video = [torch.randn(2, 3, 16, 32, 32)]
    with torch.no_grad():
        assert not torch.equal(teacher(video), teacher(video))  # drop-path is on in the teacher
    cfg["model"]["teacher_mode"] = "eval"
    teacher_eval = build_nets(cfg, torch.device("cpu"))[1]
    with torch.no_grad():
        assert not teacher_eval.training and torch.equal(teacher_eval(video), teacher_eval(video))

    decayed = {id(p) for p in param_groups(student)[0]["params"]}
    bb = student.backbone
    assert {id(bb.cls_token), id(bb.pos_embed), id(bb.time_embed)} <= decayed
    assert {id(bb.cls_token), id(bb.pos_embed)}.isdisjoint(
        {id(p) for p in param_groups(student, decay_embeddings=False)[0]["params"]})
    assert make_optimizer(student, True).param_groups[0]["params"][0] is not None

    assert bb.time_embed.shape[1] == 8
    with torch.no_grad():
        bb.time_embed.copy_(torch.randn_like(bb.time_embed))
    table = bb.temporal_table(16)  # nearest: each trained row serves two of the 16 frames
    torch.testing.assert_close(table[0], bb.time_embed[0].repeat_interleave(2, dim=0))
    student.train()
    out = student.backbone(video[0])
    (out * torch.randn_like(out)).sum().backward()  # (a plain sum of a LayerNorm output is 0)
    assert bb.time_embed.grad.shape == (1, 8, 32) and bb.time_embed.grad.abs().sum(-1).gt(0).all()


def test_local_run_shows_a_live_progress_line_on_the_terminal(data, tmp_path):
    """Under Snakemake stderr goes to the rule's log; the job still has the user's terminal.
    Run with a real pseudo-terminal as controlling terminal and stderr to a file: the terminal
    gets the live bar (step/total, loss, samples/s, ETA), the log the full step lines."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column window

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    env = cpu_env()
    env.pop("SLURM_JOB_ID", None)
    log = open(tmp_path / "rule.log", "w")
    proc = subprocess.Popen(command(data, tmp_path / "out", extra=["--max-steps", "6"]), cwd=REPO,
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            preexec_fn=controlling_terminal, pass_fds=(slave,))
    chunks = []

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert proc.wait(timeout=300) == 0, (tmp_path / "rule.log").read_text()[-3000:]
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert "pretrain" in terminal and "6/6" in terminal and ("step/s" in terminal or "s/step" in terminal), terminal
    assert "loss=" in terminal and "samples_s=" in terminal, terminal
    logged = (tmp_path / "rule.log").read_text()
    assert "step 6/6 " in logged and "step 1/6 " in logged  # the full lines still go to the log


def test_metrics_csv_of_an_older_run_is_kept_up_to_the_checkpoint(tmp_path):
    """A resumed run keeps the rows up to its checkpoint, also from a metrics.csv written
    before the loader columns existed (blank there), and drops the rows past it."""
    from types import SimpleNamespace

    path = tmp_path / "metrics.csv"
    old = [f for f in pretrain.METRIC_FIELDS if f not in ("data_wait", "loader_samples_per_s")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        for step in (1, 2, 3):
            w.writerow([step] + [0.5] * (len(old) - 1))
    pretrain.reset_metrics_csv(SimpleNamespace(main_rank=True, metrics_csv=path, step=2))
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0]) == pretrain.METRIC_FIELDS
    assert [r["step"] for r in rows] == ["1", "2"] and rows[1]["data_wait"] == ""
