"""Throughput of one SVT training step: student forward+backward over all views, teacher
forward over the global views, the loss, gradient clipping, AdamW and the EMA update, as svt.pretrain
runs them (inputs are random clips already at view size: data loading is bench/decoders.py).

    python bench/train_step.py [--config config.yaml] [--preset config/demo.yaml]
        [--set optim.lr=1e-3 ...] [--batch 8,16,32] [--steps 5] [--device auto]
        [--precision auto] [--compile off|blocks] [--optimizer fused|foreach]
        [--peak-tflops 989] [--profile]

Per batch size it prints s/step, samples/s, tokens/s, counted TFLOP per step (torch's
FlopCounterMode on an eager step), achieved TFLOP/s, MFU (counted FLOPs / step time / device
peak; H100/H200 dense bf16: 989 TFLOP/s, other devices with --peak-tflops), peak memory
(CUDA) and the compile time (first step minus a steady step). With --profile it also prints,
for the first batch size, kernel time per step and kernel count per step by category, so the
next change can be aimed. On CPU ("kernels" are aten operators, self time) use a small
config, e.g. ``--preset config/demo.yaml --device cpu --batch 2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svt.config import load_config  # noqa: E402
from svt.loss import SVTLoss, clip_gradients, param_groups, update_teacher  # noqa: E402
from svt.pretrain import build_nets, make_optimizer, precision_context  # noqa: E402
from svt.views import ViewConfig  # noqa: E402

PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0, "NVIDIA A100": 312.0}

# Kernel categories, first match wins: CUDA kernel names and CPU aten operator names.
CATEGORIES = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("GEMM", ("gemm", "cutlass", "xmma", "cublas", "sm90_", "sm80_", "aten::mm", "aten::addmm",
              "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::mkldnn_convolution",
              "aten::convolution_backward", "wgrad", "dgrad", "conv")),
    ("copy/cat/clone", ("copy", "cat", "clone", "aten::contiguous", "_to_copy", "CatArray",
                        "aten::index", "scatter", "aten::fill_", "aten::zero_")),
    ("normalisation", ("layer_norm", "layernorm", "LayerNorm")),
    ("optimizer", ("adam", "foreach", "lerp")),
    ("fused (compiled)", ("triton_", "cpp_fused", "kernel_cpp")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "aten::add", "aten::mul", "aten::div",
                     "aten::sub", "aten::gelu", "aten::exp", "aten::sum", "aten::mean",
                     "aten::softmax", "aten::_softmax", "aten::_log_softmax", "aten::where",
                     "aten::bernoulli", "aten::norm", "aten::max", "aten::neg", "aten::pow",
                     "aten::sqrt", "aten::rsqrt", "aten::linalg_vector_norm", "aten::xlogy",
                     "aten::lt", "aten::ge", "aten::mul_", "aten::add_", "aten::div_",
                     "aten::addcmul", "aten::clamp", "aten::threshold", "aten::erf")),
]


WRAPPERS = {"aten::clone", "aten::contiguous", "aten::reshape", "aten::to", "aten::linear",
            "aten::matmul", "aten::_to_copy", "aten::layer_norm", "aten::einsum", "aten::conv2d",
            "aten::convolution", "aten::_convolution", "aten::scaled_dot_product_attention",
            "aten::dropout", "aten::softmax", "aten::log_softmax", "aten::type_as",
            "aten::expand_as", "aten::flatten", "aten::view", "aten::transpose", "aten::permute",
            "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
            "aten::as_strided", "aten::empty", "aten::empty_like", "aten::empty_strided",
            "aten::unbind", "aten::split", "aten::t", "aten::detach", "aten::alias",
            "aten::_unsafe_view", "aten::unflatten", "aten::chunk", "aten::narrow",
            "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::lift_fresh"}


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k.lower() in low for k in keys):
            return cat
    return "other"


def kernel_table(prof, device: torch.device, steps: int) -> list[tuple[str, float, float]]:
    """(category, ms per step, calls per step): device kernels on CUDA, leaf aten operators
    (self CPU time) on CPU."""
    time_ms, calls = defaultdict(float), defaultdict(float)
    if device.type == "cuda":
        for evt in prof.key_averages():
            if evt.device_type == torch.autograd.DeviceType.CUDA:
                cat = category(evt.key)
                time_ms[cat] += evt.self_device_time_total / 1e3 / steps
                calls[cat] += evt.count / steps
    else:
        for evt in prof.events():
            # leaf operators only: a wrapper (linear, reshape, clone, ...) does its work
            # through a leaf (addmm, copy_, ...) that is counted on its own
            if evt.name.startswith("## Call CompiledFxGraph"):
                cat = "fused (compiled)"  # inductor's C++ kernels run inside this call
            elif not evt.name.startswith("aten::") or evt.name in WRAPPERS:
                continue
            else:
                cat = category(evt.name)
            parent = evt.cpu_parent.name if evt.cpu_parent is not None else ""
            if cat == "copy/cat/clone" and parent in ("aten::addmm", "aten::baddbmm"):
                cat = "GEMM"  # the CPU addmm writes its bias into the output first
            time_ms[cat] += evt.self_cpu_time_total / 1e3 / steps
            calls[cat] += 1 / steps
    order = [c for c, _ in CATEGORIES] + ["other"]
    return [(c, time_ms[c], calls[c]) for c in order if time_ms[c] or calls[c]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--preset", default=None, help="a config file over --config, e.g. config/demo.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. model.depth=2 (YAML value)")
    ap.add_argument("--batch", default=None, help="comma-separated per-device batch sizes "
                                                  "(default: optim.batch_size_per_gpu)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--compile", default=None, choices=["off", "blocks"],
                    help="default: the config's pretrain.compile")
    ap.add_argument("--optimizer", default="fused", choices=["fused", "foreach"])
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--profile", action="store_true", help="kernel time and counts by category")
    ap.add_argument("--per-view", action="store_true",
                    help="student forward+backward time per view shape, alone: whether the "
                         "small local views are launch-bound (then packing them or CUDA graphs "
                         "would pay)")
    a = ap.parse_args()

    cfg = load_config(a.config, [a.preset] if a.preset else [], a.set)
    if a.grad_checkpointing:
        cfg["model"]["grad_checkpointing"] = True
    cfg["model"]["init"] = "none"
    compile_mode = a.compile or cfg.get("pretrain", {}).get("compile", "off")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    batches = [int(b) for b in a.batch.split(",")] if a.batch else [cfg["optim"]["batch_size_per_gpu"]]
    vc = ViewConfig.from_config(cfg["views"], cfg["augment"])
    views_spec = [(v.frames, v.size) for v in vc.views]
    n_global = len(cfg["views"]["global_frames"])
    patch = cfg["model"]["patch_size"]
    tokens = (sum(t * (s // patch) ** 2 for t, s in views_spec)
              + sum(t * (s // patch) ** 2 for t, s in views_spec[:n_global]))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = a.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if name.startswith(k)), None)

    torch.manual_seed(0)
    student, teacher = build_nets(cfg, device)
    loss_fn = SVTLoss.from_config(cfg["loss"], n_global, len(views_spec), cfg["optim"]["epochs"]).to(device)
    oc = cfg["optim"]
    if a.optimizer == "fused":
        opt = make_optimizer(student, oc["decay_embeddings"])
    else:
        opt = torch.optim.AdamW(param_groups(student, oc["decay_embeddings"]), foreach=True)
    precision, autocast = precision_context(a.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    params = sum(p.numel() for p in student.backbone.parameters()) / 1e6
    print(f"device {name}, torch {torch.__version__}, precision {precision}, compile {compile_mode}, "
          f"optimizer {a.optimizer}, backbone {params:.1f}M params, views {views_spec}, "
          f"grad checkpointing {cfg['model']['grad_checkpointing']}")

    def make_step(bs: int):
        views = [torch.randn(bs, 3, t, s, s, device=device) for t, s in views_spec]

        def step():
            with autocast():
                t_out = teacher(views[:n_global])
                s_out = student(views)
                loss, _ = loss_fn(s_out, t_out, 1.0, with_stats=False)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            clip_gradients(student, oc["clip_grad"], oc["clip_mode"])
            scaler.step(opt)
            scaler.update()
            update_teacher(student, teacher, 0.996)
        return step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    from torch.utils.flop_counter import FlopCounterMode
    rows, profiled = [], None
    for i, bs in enumerate(batches):
        step = make_step(bs)
        try:
            with FlopCounterMode(display=False) as counter:  # eager: before compiling
                step()
            flops = counter.get_total_flops()
            if compile_mode == "blocks" and student.backbone._compiled is None and i == 0:
                student.backbone.compile_blocks()
                teacher.backbone.compile_blocks()
            sync()
            t0 = time.perf_counter()
            step()  # compiles every view shape when compiling
            sync()
            first = time.perf_counter() - t0
            step()
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            sync()
            dt = (time.perf_counter() - t0) / a.steps
        except torch.OutOfMemoryError:
            rows.append((bs, None))
            print(f"batch {bs}: out of memory", file=sys.stderr)
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        compile_s = max(first - dt, 0.0) if compile_mode == "blocks" else 0.0
        rows.append((bs, dict(dt=dt, flops=flops, mem=mem, compile_s=compile_s)))
        if a.profile and profiled is None:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            n = 2
            with profile(activities=acts) as prof:
                for _ in range(n):
                    step()
                sync()
            profiled = (bs, kernel_table(prof, device, n), dt)

    print(f"{'batch':>5} {'s/step':>8} {'samples/s':>10} {'tokens/s':>10} {'TFLOP/step':>11} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'compile s':>9}")
    for bs, r in rows:
        if r is None:
            print(f"{bs:>5} {'out of memory':>30}")
            continue
        mfu = r["flops"] / r["dt"] / (peak * 1e12) if peak else None
        print(f"{bs:>5} {r['dt']:>8.3f} {bs / r['dt']:>10.2f} {bs * tokens / r['dt']:>10.0f} "
              f"{r['flops'] / 1e12:>11.3f} {r['flops'] / r['dt'] / 1e12:>8.2f} "
              f"{(f'{100 * mfu:.1f}%' if mfu else 'n/a'):>6} {r['mem']:>9.2f} {r['compile_s']:>9.1f}")
    if profiled:
        bs, table, dt = profiled
        total = sum(t for _, t, _ in table)
        kind = "CUDA kernels" if device.type == "cuda" else "CPU aten operators (self time)"
        print(f"\nprofile, batch {bs}, per step: {kind}, {total:.1f} ms of {1e3 * dt:.1f} ms step time")
        print(f"{'category':<18} {'ms/step':>9} {'share':>6} {'calls/step':>11}")
        for cat, t, c in table:
            print(f"{cat:<18} {t:>9.2f} {100 * t / total:>5.1f}% {c:>11.0f}")
    if a.per_view:
        per_view_table(student, views_spec, batches[0], patch, autocast, device, sync, a.steps)
    return 0


def per_view_table(student, views_spec, bs, patch, autocast, device, sync, steps) -> None:
    """Each distinct view shape alone through the student (one backbone call, as the step
    batches same-shape views): ms per call and us per token."""
    shapes = sorted(set(views_spec), key=views_spec.index)
    print(f"\nstudent forward+backward per view shape, batch {bs} (views of one shape share a call)")
    print(f"{'frames x size':>14} {'views':>6} {'tokens':>8} {'ms/call':>9} {'us/token':>9}")
    for t, size in shapes:
        n = views_spec.count((t, size))
        x = torch.randn(n * bs, 3, t, size, size, device=device)

        def run():
            with autocast():
                out = student.head(student.backbone(x))
            out.float().square().mean().backward()
        run()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        sync()
        ms = (time.perf_counter() - t0) / steps * 1e3
        tokens = n * bs * t * (size // patch) ** 2
        print(f"{f'{t} x {size}':>14} {n:>6} {tokens:>8} {ms:>9.2f} {1e3 * ms / tokens:>9.2f}")
    student.zero_grad(set_to_none=True)


if __name__ == "__main__":
    sys.exit(main())
