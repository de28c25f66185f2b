"""Throughput of one SVT training step: samples/s, tokens/s, peak memory and model-FLOPs
utilisation (MFU) of student forward+backward and teacher forward over all views.

    python bench/train_step.py [--config config.yaml] [--preset config/demo.yaml]
                               [--batch 8] [--steps 5] [--device auto] [--precision auto]
                               [--peak-tflops 989]

Inputs are random uint8 clips already at view size, so the figures are those of the model
(data loading is measured by bench/decoders.py). FLOPs are counted by torch's FlopCounterMode
on the real step; MFU = counted FLOPs / step time / device peak (H100 SXM dense bf16: 989
TFLOP/s; pass --peak-tflops for other devices; on CPU it is only printed when given).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svt.loss import SVTLoss, param_groups, update_teacher  # noqa: E402
from svt.pretrain import build_nets, precision_context  # noqa: E402
from svt.views import ViewConfig  # noqa: E402

PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0}


def merged(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--preset", default=None, help="e.g. config/demo.yaml")
    ap.add_argument("--batch", type=int, default=None, help="default: optim.batch_size_per_gpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--grad-checkpointing", action="store_true")
    a = ap.parse_args()

    cfg = yaml.safe_load(open(a.config))
    if a.preset:
        cfg = merged(cfg, yaml.safe_load(open(a.preset)))
    if a.grad_checkpointing:
        cfg["model"]["grad_checkpointing"] = True
    cfg["model"]["init"] = "none"
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    bs = a.batch or cfg["optim"]["batch_size_per_gpu"]
    vc = ViewConfig.from_config(cfg["views"], cfg["augment"])
    views_spec = [(v.frames, v.size) for v in vc.views]
    n_global = len(cfg["views"]["global_frames"])
    student, teacher = build_nets(cfg, device)
    loss_fn = SVTLoss.from_config(cfg["loss"], n_global, len(views_spec), cfg["optim"]["epochs"]).to(device)
    opt = torch.optim.AdamW(param_groups(student), lr=1e-4)
    precision, autocast = precision_context(a.precision, device)
    patch = cfg["model"]["patch_size"]
    tokens_student = sum(t * (s // patch) ** 2 for t, s in views_spec)
    tokens_teacher = sum(t * (s // patch) ** 2 for t, s in views_spec[:n_global])
    views = [torch.randn(bs, 3, t, s, s, device=device) for t, s in views_spec]

    def step():
        with autocast():
            t_out = teacher(views[:n_global])
            s_out = student(views)
            loss, _ = loss_fn(s_out.float(), t_out.float(), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_teacher(student, teacher, 0.996)

    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if name.startswith(k)), None)
    mfu = flops / dt / (peak * 1e12) if peak else None
    params = sum(p.numel() for p in student.backbone.parameters()) / 1e6
    print(f"device {name}, precision {precision}, backbone {params:.1f}M params, batch {bs}, "
          f"views {views_spec}, grad checkpointing {cfg['model']['grad_checkpointing']}")
    print(f"{'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/step':>11} {'TFLOP/s':>8} "
          f"{'peak GiB':>9} {'MFU':>6}")
    print(f"{dt:>8.3f} {bs / dt:>10.2f} {bs * (tokens_student + tokens_teacher) / dt:>10.0f} "
          f"{flops / 1e12:>11.3f} {flops / dt / 1e12:>8.2f} {peak_mem:>9.2f} "
          f"{(f'{100 * mfu:.1f}%' if mfu else 'n/a'):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
