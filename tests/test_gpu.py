"""Training on a GPU: the views built on the GPU against the CPU workers', a bf16 and an
fp16 + GradScaler run, SIGKILL resume, and NCCL with two GPUs. Skipped without CUDA (the only
skips CI allows, tests/ci_skips.py); bench/gpu_checks.sh runs this module on the lent GPU.
Everything else in the suite means the CPU and says so (tests/test_pretrain.py cpu_env)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from svt import checkpoint as ckpt
from svt.views import AugmentCollate, SVTAugment, ViewConfig, sample_generator
from test_pretrain import (TINY, assert_weights_within, command, initial_weights,
                           kill_at_a_mid_epoch_checkpoint, make_train_data, metrics)

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_data(tmp_path_factory)


def gpu_env(devices: str = "0") -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "CUDA_VISIBLE_DEVICES": devices}


def run_gpu(cmd, devices: str = "0") -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=gpu_env(devices), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def recipe(**optim) -> dict:
    """The tiny recipe, made for a loss that falls step after step: a fast teacher (momentum
    0.9) and no centering. The student then fits the teacher steadily (on the CPU in bf16:
    2.8 -> 0.007 in 20 steps); with DINO's centering the loss of 8 videos rises again after
    a few steps, whatever the lr, as the centre catches up."""
    cfg = json.loads(json.dumps(TINY))
    cfg["model"]["drop_path_rate"] = 0.0
    cfg["loss"]["center_momentum"] = 1.0
    cfg["optim"].update({"lr": 0.064, "momentum_teacher": 0.9, "epochs": 3, **optim})
    return cfg


def test_views_built_on_the_gpu_equal_the_cpu_workers_views():
    """pretrain.augment_device auto on a GPU: the trainer builds each sample's views on the
    GPU with the very generator the CPU workers would use (sample_generator), so only float
    rounding differs. Tolerance: on average under a grey level, 1 / (255 std) in the
    normalised output (uint8 resize rounds differently on CUDA)."""
    cfg = ViewConfig.from_config(TINY["views"], TINY["augment"])
    aug = SVTAugment(cfg)
    g = torch.Generator().manual_seed(0)
    items = []
    for index in (3, 0, 7):
        smooth = [torch.nn.functional.interpolate(torch.rand(v.frames, 3, 12, 16, generator=g),
                                                  size=(48, 64), mode="bilinear") for v in cfg.views]
        clips = [(255 * c).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous() for c in smooth]
        items.append({"clips": clips, "index": index, "epoch": 2, "label": 0})
    cpu = AugmentCollate(aug, seed=5)(items)["views"]
    stacked = [torch.stack([it["clips"][k] for it in items]).cuda() for k in range(len(cfg.views))]
    gpu = aug.batch(stacked, generators=[sample_generator(5, 2, it["index"]) for it in items])
    grey = 1 / (255 * max(cfg.std))
    for x, y in zip(cpu, gpu, strict=True):
        assert y.is_cuda and y.shape == x.shape
        assert (x - y.cpu()).abs().mean() < grey


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_is_finite_and_learns(data, tmp_path, precision):
    """20 steps on the GPU (views built there): every loss finite and the loss falling; fp16
    goes through the GradScaler, whose state is checkpointed."""
    cfg = recipe(epochs=50, batch_size_per_gpu=4)  # 20 steps of 100: lr and momentum schedules mid-way
    res = run_gpu(command(data, tmp_path, cfg=cfg, extra=["--precision", precision, "--max-steps", "20"]))
    losses = [float(r["loss"]) for r in metrics(tmp_path)]
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5, losses  # CPU bf16: 0.007 vs 2.3
    state = ckpt.load(tmp_path / "ckpt" / "last.pth")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0, state["scaler"]
    else:
        assert state["scaler"] == {}  # bf16 needs no scaling
    assert "cuda" in state["rng"][0], res.stderr[-500:]


def test_sigkill_resume_on_the_gpu(data, tmp_path):
    """A hard kill mid-epoch and a restart, on the GPU in bf16. GPU kernels do not promise
    bit-equal results from run to run (atomics in backward, kernels chosen at run time), so
    the restarted run must match the uninterrupted one within 5% of each tensor's movement
    (the weights of a missing optimizer restore differ by ~100%: tests/test_pretrain.py)."""
    cfg = recipe(batch_size_per_gpu=1)
    cfg["pretrain"].update(checkpoint_every=3, precision="bf16")
    iters, total = 8, 8 * cfg["optim"]["epochs"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_gpu(command(data, straight, cfg=cfg))
    proc = subprocess.Popen(command(data, killed, cfg=cfg), cwd=REPO, env=gpu_env(),
                            stderr=subprocess.DEVNULL, start_new_session=True)
    saved = kill_at_a_mid_epoch_checkpoint(proc, killed / "ckpt" / "last.pth", iters, total)
    res = run_gpu(command(data, killed, cfg=cfg))
    assert f"at step {saved}" in res.stderr
    a, b = ckpt.load(straight / "ckpt" / "last.pth"), ckpt.load(killed / "ckpt" / "last.pth")
    assert a["step"] == b["step"] == total
    assert_weights_within(a, b, initial_weights(cfg), 0.05)
    assert [int(r["step"]) for r in metrics(killed)] == list(range(1, total + 1))


@pytest.mark.gpu(2)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_nccl_ddp_matches_one_gpu(data, tmp_path):
    """The gloo test of tests/test_pretrain.py on NCCL: 2 GPUs x batch 2 against 1 GPU x
    batch 4, fp32 (TF32 matmuls are off by default in torch), within 1e-3 of the movement."""
    cfg = recipe()
    cfg["pretrain"]["precision"] = "fp32"
    one = json.loads(json.dumps(cfg))
    one["optim"]["batch_size_per_gpu"] = 4
    run_gpu(command(data, tmp_path / "one", cfg=one))
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    run_gpu(command(data, tmp_path / "two", cfg=cfg, launcher=(*torchrun, "-m", "svt.pretrain")),
            devices="0,1")
    a, b = ckpt.load(tmp_path / "one" / "ckpt" / "last.pth"), ckpt.load(tmp_path / "two" / "ckpt" / "last.pth")
    assert_weights_within(a, b, initial_weights(cfg), 1e-3)
    la = [float(r["loss"]) for r in metrics(tmp_path / "one")]
    lb = [float(r["loss"]) for r in metrics(tmp_path / "two")]
    assert lb == pytest.approx(la, rel=1e-4)


def test_supervised_bound_trains_on_the_gpu_and_fits_the_colour_task(tmp_path):
    """svt.supervised on CUDA (bf16 autocast, fused AdamW, pinned batches): the colour task of
    tests/test_supervised.py is fitted as on the CPU, and the backbone it exports loads."""
    from test_supervised import RECIPE, make_colour_data, rows
    from test_supervised import command as supervised_command

    out = tmp_path / "bound"
    res = run_gpu(supervised_command(make_colour_data(tmp_path / "data"), out, RECIPE))
    assert "on cuda" in res.stderr, res.stderr[-2000:]
    log = rows(out)
    assert float(log[-1]["train_accuracy"]) == 100.0
    assert float(log[-1]["loss"]) < 0.1 * float(log[0]["loss"]), [r["loss"] for r in log]
    state = ckpt.load(out / "backbone.pth")["state_dict"]
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in state.values())
