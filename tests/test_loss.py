"""Tests for svt.loss: the self-distillation loss, its head, schedules and training-step helpers.

The loss is checked against a reference written independently in float64 numpy with
plain loops over (teacher view, student view) pairs and samples.
"""

from __future__ import annotations

import copy
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from svt.loss import (
    DINOHead,
    MultiViewModel,
    SVTLoss,
    apply_schedules,
    cancel_last_layer_gradients,
    clip_gradients,
    cosine_schedule,
    multi_view_forward,
    param_groups,
    teacher_forward,
    update_teacher,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------- reference


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_loss(student, teacher, center, num_global, num_views, student_temp, teacher_temp):
    """Loop over every (teacher global i, student view v != i) pair and every sample."""
    student = np.asarray(student, dtype=np.float64)
    teacher = np.asarray(teacher, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64).reshape(-1)
    batch = teacher.shape[0] // num_global
    total, pairs = 0.0, 0
    for i in range(num_global):
        for v in range(num_views):
            if v == i:
                continue
            pair = 0.0
            for b in range(batch):
                p_teacher = _softmax((teacher[i * batch + b] - center) / teacher_temp)
                log_p_student = np.log(_softmax(student[v * batch + b] / student_temp))
                pair += -(p_teacher * log_p_student).sum()
            total += pair / batch
            pairs += 1
    return total / pairs, pairs


def _random_logits(gen, rows, dim, scale=3.0):
    return torch.randn(rows, dim, generator=gen, dtype=torch.float64).float() * scale


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("num_views", [10, 4])
def test_loss_matches_loop_reference(num_views):
    gen = torch.Generator().manual_seed(num_views)
    B, D, G = 3, 37, 2
    loss_fn = SVTLoss(D, num_global=G, num_views=num_views, student_temp=0.1, teacher_temp=0.04)
    loss_fn.center.copy_(torch.randn(1, D, generator=gen))  # a non-zero centre is subtracted
    student = _random_logits(gen, num_views * B, D).requires_grad_(True)
    teacher = _random_logits(gen, G * B, D)
    want, pairs = reference_loss(student.detach(), teacher, loss_fn.center, G, num_views, 0.1, 0.04)
    got, stats = loss_fn(student, teacher, epoch=0)
    assert pairs == loss_fn.num_pairs == 2 * num_views - 2
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the parts are the same pairs, split into global<->global and local->global
    motion = loss_fn._part_pairs["loss_motion"]
    cross = loss_fn._part_pairs["loss_crossview"]
    assert (motion, cross) == (2, 2 * (num_views - 2))
    combined = (stats["loss_motion"] * motion + stats["loss_crossview"] * cross) / (motion + cross)
    assert combined == pytest.approx(want, rel=1e-5)
    got.backward()  # the gradient reaches the student only
    assert student.grad is not None and torch.isfinite(student.grad).all()


@settings(max_examples=25, deadline=None)
@given(num_global=st.integers(1, 3), num_local=st.integers(0, 4), batch=st.integers(1, 3),
       dim=st.integers(2, 9), seed=st.integers(0, 2**16),
       temps=st.tuples(st.floats(0.05, 1.0), st.floats(0.02, 1.0)))
def test_loss_matches_reference_for_any_shape(num_global, num_local, batch, dim, seed, temps):
    num_views = num_global + num_local
    if num_views < 2:
        return
    gen = torch.Generator().manual_seed(seed)
    loss_fn = SVTLoss(dim, num_global=num_global, num_views=num_views,
                      student_temp=temps[0], teacher_temp=temps[1], warmup_teacher_temp=temps[1])
    loss_fn.center.copy_(torch.randn(1, dim, generator=gen))
    student = _random_logits(gen, num_views * batch, dim, scale=1.0)
    teacher = _random_logits(gen, num_global * batch, dim, scale=1.0)
    want, pairs = reference_loss(student, teacher, loss_fn.center, num_global, num_views, *temps)
    got, _ = loss_fn(student, teacher, epoch=0)
    assert pairs == loss_fn.num_pairs
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_paper_config_averages_eighteen_pairs():
    """Uniform teacher: a pair's loss is -mean(log p_student). Make every student view
    uniform (pair loss log D) except one, and count the pairs that view enters."""
    B, D = 2, 16
    loss_fn = SVTLoss(D, num_global=2, num_views=10)
    teacher = torch.zeros(2 * B, D)  # uniform after softmax
    log_d = math.log(D)

    def loss_with_view_changed(view):
        student = torch.zeros(10 * B, D)
        logits = torch.linspace(-1, 1, D)
        student[view * B:(view + 1) * B] = logits
        odd = -torch.log_softmax(logits / 0.1, dim=0).mean().item()  # this view's pair loss
        loss, _ = loss_fn(student, teacher, epoch=0)
        return loss.item(), odd

    # A local view is compared with both teacher globals: 2 of 18 pairs.
    got, odd = loss_with_view_changed(5)
    assert got == pytest.approx((16 * log_d + 2 * odd) / 18, rel=1e-5)
    # Student global 0 is compared with teacher global 1 only (never with itself): 1 of 18.
    got, odd = loss_with_view_changed(0)
    assert got == pytest.approx((17 * log_d + odd) / 18, rel=1e-5)
    assert loss_fn.num_pairs == 18


def test_identical_student_and_teacher_give_entropy():
    """Same logits in every view, no centre, equal temperatures: each pair's cross-entropy
    is the entropy of that distribution, so the loss equals the mean entropy."""
    gen = torch.Generator().manual_seed(1)
    B, D, T = 4, 50, 0.1
    loss_fn = SVTLoss(D, num_global=2, num_views=4, student_temp=T, teacher_temp=T,
                      warmup_teacher_temp=T)
    logits = _random_logits(gen, B, D, scale=0.5)
    student = logits.repeat(4, 1)
    teacher = logits.repeat(2, 1)
    p = torch.softmax(logits.double() / T, dim=-1)
    entropy = -(p * p.log()).sum(-1).mean().item()
    loss, stats = loss_fn(student, teacher, epoch=0)
    assert loss.item() == pytest.approx(entropy, rel=1e-5)
    assert stats["teacher_entropy"] == pytest.approx(entropy, rel=1e-5)


def test_teacher_temperature_warmup():
    loss_fn = SVTLoss(8, warmup_teacher_temp=0.04, teacher_temp=0.07,
                      warmup_teacher_temp_epochs=30, epochs=100)
    assert loss_fn.teacher_temperature(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(15) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(7.5) == pytest.approx(0.04 + 0.03 * 0.25)  # fractional epoch
    assert loss_fn.teacher_temperature(30) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(99) == pytest.approx(0.07)
    _, stats = loss_fn(torch.zeros(20, 8), torch.zeros(4, 8), epoch=15)
    assert stats["teacher_temp"] == pytest.approx(0.055)
    # the paper config: no warm-up, 0.04 from the first step
    assert SVTLoss(8).teacher_temperature(0) == pytest.approx(0.04)


def test_center_ema_update():
    gen = torch.Generator().manual_seed(2)
    B, D = 5, 12
    loss_fn = SVTLoss(D, num_global=2, num_views=4, center_momentum=0.9)
    old = torch.randn(1, D, generator=gen)
    loss_fn.center.copy_(old)
    teacher = _random_logits(gen, 2 * B, D)
    student = _random_logits(gen, 4 * B, D)
    # the loss uses the centre from before this step
    want, _ = reference_loss(student, teacher, old, 2, 4, 0.1, 0.04)
    loss, _ = loss_fn(student, teacher, epoch=0)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    expected = 0.9 * old.double() + 0.1 * teacher.double().mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center.double(), expected, rtol=1e-6, atol=1e-6)
    assert not loss_fn.center.requires_grad


def test_entropy_stat_detects_collapse():
    D = 64
    loss_fn = SVTLoss(D, num_global=2, num_views=2)
    _, uniform = loss_fn(torch.zeros(4, D), torch.zeros(4, D), epoch=0)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(D), rel=1e-5)
    assert uniform["teacher_max_prob"] == pytest.approx(1 / D, rel=1e-5)
    loss_fn = SVTLoss(D, num_global=2, num_views=2)
    peaked = torch.zeros(4, D)
    peaked[:, 3] = 5.0  # divided by 0.04: one prototype takes all the mass
    _, collapsed = loss_fn(torch.zeros(4, D), peaked, epoch=0)
    assert collapsed["teacher_entropy"] < 1e-6
    assert collapsed["teacher_max_prob"] == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- distributed centre


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORLD, B_RANK, D_DIST = 2, 3, 10


def _rank_teacher(rank):
    gen = torch.Generator().manual_seed(100 + rank)  # each rank sees a different batch
    return torch.randn(2 * B_RANK, D_DIST, generator=gen) * (rank + 1)


def _center_worker(rank, port, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=WORLD)
    try:
        loss_fn = SVTLoss(D_DIST, num_global=2, num_views=4, center_momentum=0.9)
        loss_fn.center.fill_(0.5)
        teacher = _rank_teacher(rank)
        student = torch.randn(4 * B_RANK, D_DIST)
        loss_fn(student, teacher, epoch=0)
        torch.save(loss_fn.center.clone(), os.path.join(out_dir, f"center{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_center_is_all_reduced_across_two_processes(tmp_path):
    mp.spawn(_center_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    centers = [torch.load(tmp_path / f"center{r}.pt") for r in range(WORLD)]
    global_batch = torch.cat([_rank_teacher(r) for r in range(WORLD)])
    expected = 0.9 * 0.5 + 0.1 * global_batch.mean(0, keepdim=True)
    for c in centers:  # both ranks hold the centre of the global batch
        torch.testing.assert_close(c, expected, rtol=1e-6, atol=1e-6)
    # and it differs from what either rank would compute alone
    alone = 0.9 * 0.5 + 0.1 * _rank_teacher(0).mean(0, keepdim=True)
    assert not torch.allclose(centers[0], alone, atol=1e-3)


# --------------------------------------------------------------------------- schedules


def test_cosine_schedule_values():
    # 11 epochs x 1 iteration, 2 warm-up: warm-up [0, 0.5], then 9 cosine steps 1 -> 0.1
    s = cosine_schedule(1.0, 0.1, epochs=11, iters_per_epoch=1, warmup_epochs=2, start_warmup=0.0)
    assert len(s) == 11
    assert s[0] == pytest.approx(0.0)
    assert s[1] == pytest.approx(0.5)
    assert s[2] == pytest.approx(1.0)  # first step after warm-up: the peak
    assert s[6] == pytest.approx(0.55)  # middle of the cosine: halfway between base and final
    assert s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[2:]) < 0)


def test_cosine_schedule_paper_uses():
    epochs, iters = 20, 50
    lr = cosine_schedule(5e-4 * 64 / 256, 1e-6, epochs, iters, warmup_epochs=5)
    assert len(lr) == epochs * iters
    assert lr[0] == 0.0 and lr[5 * iters] == pytest.approx(1.25e-4) and lr[-1] == pytest.approx(1e-6)
    assert lr.argmax() == 5 * iters
    wd = cosine_schedule(0.04, 0.1, epochs, iters)
    assert wd[0] == pytest.approx(0.04) and wd[-1] == pytest.approx(0.1) and np.all(np.diff(wd) >= 0)
    mom = cosine_schedule(0.996, 1.0, epochs, iters)
    assert mom[0] == pytest.approx(0.996) and mom[-1] == 1.0
    assert mom[len(mom) // 2] == pytest.approx(0.998, abs=1e-5)


# --------------------------------------------------------------------------- optimiser helpers


class TinyBackbone(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.patch = nn.Linear(3, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def forward(self, x):  # x: (B, C, T, H, W) -> (B, dim)
        tokens = self.patch(x.mean(dim=(2, 3, 4)))[:, None] + self.pos_embed[:, :1] + self.cls_token
        return self.bn(self.fc(self.norm(tokens[:, 0])))


def test_param_groups_official_rule_decays_embeddings():
    """decay_embeddings=True (the default, official SVT/DINO): only biases and tensors of
    fewer than two dimensions are exempt; the CLS token and positional tables are decayed."""
    model = MultiViewModel(TinyBackbone(), DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4,
                                                    norm_last_layer=False))
    groups = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay == {"backbone.patch.weight", "backbone.fc.weight", "head.mlp.0.weight",
                     "head.mlp.2.weight", "head.mlp.4.weight", "backbone.pos_embed",
                     "backbone.cls_token", "head.last_layer.parametrizations.weight.original0",
                     "head.last_layer.parametrizations.weight.original1"}
    assert no_decay == {n for n, p in model.named_parameters() if n.endswith(".bias") or p.ndim <= 1}


def test_param_groups_exempt_biases_norms_and_pos_tables():
    model = MultiViewModel(TinyBackbone(), DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4))
    groups = param_groups(model, decay_embeddings=False)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["apply_weight_decay"] and not groups[1]["apply_weight_decay"]
    assert decay == {"backbone.patch.weight", "backbone.fc.weight", "head.mlp.0.weight",
                     "head.mlp.2.weight", "head.mlp.4.weight",
                     "head.last_layer.parametrizations.weight.original1"}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.patch.bias",
            "backbone.norm.weight", "backbone.norm.bias", "backbone.bn.weight",
            "head.mlp.0.bias"} <= no_decay
    # the frozen weight-norm magnitude is in no group at all
    assert "head.last_layer.parametrizations.weight.original0" not in decay | no_decay

    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_schedules(opt, lr=3e-4, wd=0.07)
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.07, 0.0]


def test_clip_gradients_global_returns_norm_and_clips():
    model = nn.Linear(4, 3)
    model.weight.grad = torch.full_like(model.weight, 2.0)  # 12 entries
    model.bias.grad = torch.full_like(model.bias, 2.0)  # 3 entries
    norm = clip_gradients(model, 0, "global")  # disabled: unchanged
    assert float(norm) == pytest.approx(2.0 * math.sqrt(15))
    assert torch.all(model.weight.grad == 2.0)
    norm = clip_gradients(model, 1.0, "global")
    assert float(norm) == pytest.approx(2.0 * math.sqrt(15))
    total = torch.sqrt(model.weight.grad.pow(2).sum() + model.bias.grad.pow(2).sum())
    assert float(total) == pytest.approx(1.0, rel=1e-4)


def test_clip_gradients_per_tensor_is_dinos_formula():
    """Official SVT/DINO: g *= max_norm / (||g|| + 1e-6) for each tensor whose norm exceeds
    max_norm; smaller tensors are untouched. Returns the global norm before clipping."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    grads = [torch.randn(p.shape) * s for p, s in zip(model.parameters(), (10.0, 0.01, 3.0, 0.5))]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    norm = clip_gradients(model, 1.5)  # per_tensor is the default
    assert float(norm) == pytest.approx(float(torch.sqrt(sum(g.pow(2).sum() for g in grads))), rel=1e-6)
    for p, g in zip(model.parameters(), grads):
        coef = 1.5 / (g.norm() + 1e-6)
        expected = g * coef if coef < 1 else g
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=0)
    assert any(float(g.norm()) < 1.5 for g in grads) and any(float(g.norm()) > 1.5 for g in grads)
    with pytest.raises(ValueError, match="clip mode 'norm'"):
        clip_gradients(model, 1.0, "norm")


def test_last_layer_is_frozen_in_first_epoch():
    torch.manual_seed(0)
    head = DINOHead(6, out_dim=10, hidden_dim=8, bottleneck_dim=4, norm_last_layer=True)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad and torch.all(magnitude == 1.0)
    assert len(head.last_layer_parameters()) == 2

    def grads_after_backward(epoch):
        head.zero_grad(set_to_none=True)
        head(torch.randn(5, 6)).pow(2).sum().backward()
        cancel_last_layer_gradients(head, epoch, freeze_epochs=1)
        return {n: p.grad for n, p in head.named_parameters()}

    frozen = grads_after_backward(0)
    assert all(g is None for n, g in frozen.items() if n.startswith("last_layer"))
    assert all(g is not None for n, g in frozen.items() if n.startswith("mlp"))
    live = grads_after_backward(1)
    assert live["last_layer.parametrizations.weight.original1"] is not None
    assert live["last_layer.parametrizations.weight.original0"] is None  # never trained

    # an optimiser step keeps every prototype a unit vector
    opt = torch.optim.AdamW(param_groups(head), lr=0.1)
    opt.step()
    row_norms = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(row_norms, torch.ones_like(row_norms))
    # a DDP-style wrapper (anything with .module) is unwrapped
    wrapper = nn.Module()
    wrapper.module = head
    head(torch.randn(2, 6)).sum().backward()
    cancel_last_layer_gradients(wrapper, 0.5, freeze_epochs=1)
    assert head.last_layer.parametrizations.weight.original1.grad is None

    free = DINOHead(6, out_dim=10, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


def test_update_teacher_ema():
    torch.manual_seed(0)
    student = MultiViewModel(TinyBackbone(), DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4))
    student(  # populate BatchNorm running statistics
        [torch.randn(4, 3, 2, 4, 4)])
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student.backbone.bn.running_mean.add_(1.0)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    s_params = dict(student.named_parameters())

    update_teacher(student, teacher, momentum=1.0)  # keeps the teacher's parameters
    for n, p in teacher.named_parameters():
        assert torch.equal(p, before[n])
    torch.testing.assert_close(teacher.backbone.bn.running_mean, student.backbone.bn.running_mean)

    update_teacher(student, teacher, momentum=0.7)
    for n, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.7 * before[n] + 0.3 * s_params[n])

    wrapper = nn.Module()  # DDP-style .module wrapper around the student
    wrapper.module = student
    update_teacher(wrapper, teacher, momentum=0.0)  # copies the student
    for n, p in teacher.named_parameters():
        assert torch.equal(p, s_params[n])
        assert not p.requires_grad


# --------------------------------------------------------------------------- head and multi-view forward


def test_head_shape_and_normalised_bottleneck():
    head = DINOHead(24, out_dim=100, hidden_dim=32, bottleneck_dim=16)
    seen = []
    head.last_layer.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    out = head(torch.randn(7, 24) * 10)
    assert out.shape == (7, 100)
    norms = seen[0].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # unit bottleneck and unit prototypes: logits are cosines
    assert out.abs().max() <= 1.0 + 1e-5
    std = head.mlp[0].weight.std().item()
    assert 0.015 < std < 0.025  # trunc-normal(0.02) init


class CountingBackbone(nn.Module):
    """Averages a clip over time and space, then projects: a real module that counts calls."""

    def __init__(self, channels=3, dim=6):
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.proj(x.mean(dim=(2, 3, 4)))


PAPER_VIEWS = [(8, 224), (16, 224)] + [(t, 96) for t in (2, 2, 4, 4, 8, 8, 16, 16)]


def test_multi_view_forward_batches_consecutive_shapes():
    torch.manual_seed(0)
    B = 2
    views = [torch.randn(B, 3, t, s, s) for t, s in PAPER_VIEWS]
    backbone = CountingBackbone()
    head = DINOHead(6, out_dim=20, hidden_dim=8, bottleneck_dim=4)
    out = multi_view_forward(backbone, head, views)
    assert out.shape == (10 * B, 20)
    assert len(backbone.calls) == 6
    assert [c[0] for c in backbone.calls] == [B, B, 2 * B, 2 * B, 2 * B, 2 * B]
    assert [c[2:] for c in backbone.calls] == [(8, 224, 224), (16, 224, 224), (2, 96, 96),
                                               (4, 96, 96), (8, 96, 96), (16, 96, 96)]
    per_view = torch.cat([head(backbone(v)) for v in views])  # view-major by construction
    torch.testing.assert_close(out, per_view, rtol=1e-5, atol=1e-6)

    backbone.calls.clear()
    t_out = teacher_forward(backbone, head, views, num_global=2)
    assert len(backbone.calls) == 2
    torch.testing.assert_close(t_out, per_view[:2 * B], rtol=1e-5, atol=1e-6)

    # equal shapes that are not consecutive are not merged
    backbone.calls.clear()
    multi_view_forward(backbone, None, [views[2], views[4], views[3]])
    assert len(backbone.calls) == 3


def test_end_to_end_step_runs():
    """Student and teacher through the real helpers: one optimiser step lowers nothing
    in particular but must run and keep the teacher off the graph."""
    torch.manual_seed(0)
    B = 2
    student = MultiViewModel(CountingBackbone(), DINOHead(6, out_dim=32, hidden_dim=8, bottleneck_dim=4))
    teacher = copy.deepcopy(student).requires_grad_(False)
    views = [torch.randn(B, 3, t, 8, 8) for t in (4, 8, 2, 2)]
    loss_fn = SVTLoss(32, num_global=2, num_views=4)
    opt = torch.optim.AdamW(param_groups(student))
    apply_schedules(opt, lr=1e-3, wd=0.04)
    with torch.no_grad():
        t_out = teacher_forward(teacher.backbone, teacher.head, views)
    loss, stats = loss_fn(student(views), t_out, epoch=0)
    loss.backward()
    cancel_last_layer_gradients(student, 0, 1)
    clip_gradients(student, 3.0)
    opt.step()
    update_teacher(student, teacher, 0.996)
    assert math.isfinite(loss.item()) and set(stats) >= {"teacher_temp", "teacher_entropy",
                                                         "teacher_max_prob", "loss_motion",
                                                         "loss_crossview"}
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------- fast paths of the step

def test_loss_without_stats_is_the_same_loss_and_centre():
    """with_stats=False (every step but the logged ones) skips only the monitoring passes."""
    gen = torch.Generator().manual_seed(5)
    s, t = _random_logits(gen, 4 * 3, 64), _random_logits(gen, 2 * 3, 64)
    a, b = SVTLoss(64, 2, 4), SVTLoss(64, 2, 4)
    la, sa = a(s, t, 0.0)
    lb, sb = b(s, t, 0.0, with_stats=False)
    assert torch.equal(la, lb) and torch.equal(a.center, b.center)
    assert set(sb) == {"teacher_temp"} and {"teacher_entropy", "teacher_max_prob"} <= set(sa)


def test_fused_adamw_matches_the_foreach_path():
    """svt.pretrain.make_optimizer (fused AdamW) against torch's foreach AdamW over the same
    groups and schedules: the same weights after several steps (fp32, rtol 1e-5)."""
    from svt.pretrain import make_optimizer

    torch.manual_seed(0)
    a = MultiViewModel(TinyBackbone(), DINOHead(8, out_dim=16, hidden_dim=8, bottleneck_dim=4))
    b = copy.deepcopy(a)
    fused = make_optimizer(a)
    plain = torch.optim.AdamW(param_groups(b), foreach=True)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    g = torch.Generator().manual_seed(1)
    for it in range(6):
        for opt, model in ((fused, a), (plain, b)):
            apply_schedules(opt, lr=1e-2 * (it + 1), wd=0.04 + 0.01 * it)
        for pa, pb in zip(a.parameters(), b.parameters()):
            if pa.requires_grad:
                pa.grad = torch.randn(pa.shape, generator=g)
                pb.grad = pa.grad.clone()
        fused.step()
        plain.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)
    assert fused.state_dict()["state"].keys() == plain.state_dict()["state"].keys()
