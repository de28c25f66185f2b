"""Self-distillation objective of SVT, its projection head and the optimisation helpers.

SVT trains like DINO: a student network sees all ten views of a video, a teacher (an
exponential moving average of the student) sees only the two global views, and the
student is trained to predict the teacher's sharpened, centred distribution over
``out_dim`` prototypes for every (teacher global view, other student view) pair.
Global -> global pairs are the paper's "motion correspondence", local -> global pairs its
"cross-view correspondence".

Contents:

* :class:`DINOHead` - MLP projection, L2-normalised bottleneck, weight-normalised prototypes.
* :class:`SVTLoss` - the cross-entropy over view pairs, teacher temperature warm-up and
  the all-reduced centre.
* :func:`cosine_schedule` - per-iteration schedules (lr, weight decay, teacher momentum).
* :func:`param_groups`, :func:`apply_schedules`, :func:`clip_gradients`,
  :func:`cancel_last_layer_gradients`, :func:`update_teacher` - one training step's plumbing.
* :func:`multi_view_forward`, :func:`teacher_forward`, :class:`MultiViewModel` - batch the
  views by shape so each distinct (T, H, W) costs one backbone call.

Views are always *view-major*: all B samples of view 0, then all B samples of view 1, ...
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or any ``.module``-style) wrapper."""
    while isinstance(getattr(module, "module", None), nn.Module):
        module = module.module
    return module


# --------------------------------------------------------------------------- head


class DINOHead(nn.Module):
    """Projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes.

    With ``norm_last_layer`` the weight-norm magnitude is fixed at 1, so every prototype
    is a unit vector and the logits are cosine similarities; DINO found this stabler.
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, nlayers: int = 3):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be at least 1, got {nlayers}")
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

        # weight = original0 * original1 / ||original1|| (row-wise, dim 0). The magnitude
        # original0 has shape (out_dim, 1). Old-style checkpoints (weight_g / weight_v)
        # are converted by torch's own load_state_dict hook for this parametrisation.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad_(False)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen during the first epoch(s) (see cancel_last_layer_gradients)."""
        return list(self.last_layer.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


# --------------------------------------------------------------------------- loss


class SVTLoss(nn.Module):
    """Cross-entropy between teacher global views and every other student view.

    ``forward(student_out, teacher_out, epoch)`` takes logits shaped
    ``(num_views * B, out_dim)`` and ``(num_global * B, out_dim)``, both view-major, the
    teacher's views being the student's first ``num_global``. Returns ``(loss, stats)``.
    The centre is updated after the loss is computed (the loss uses the previous centre).
    """

    def __init__(self, out_dim: int, num_global: int = 2, num_views: int = 10,
                 student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: float = 0,
                 epochs: int = 20, center_momentum: float = 0.9):
        super().__init__()
        if not 1 <= num_global <= num_views:
            raise ValueError(f"need 1 <= num_global <= num_views, got {num_global}, {num_views}")
        if num_views < 2:
            raise ValueError("at least two views are needed to form a (teacher, student) pair")
        self.out_dim = out_dim
        self.num_global = num_global
        self.num_views = num_views
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.epochs = epochs  # kept for reference/logging; the schedule does not need it
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

        # Pair mask (teacher view i, student view v): every pair except a view with itself.
        pairs = torch.ones(num_global, num_views, dtype=torch.bool)
        pairs[torch.arange(num_global), torch.arange(num_global)] = False
        motion = pairs.clone()
        motion[:, num_global:] = False  # global <-> global
        # Weighted sums instead of boolean indexing: indexing a CUDA tensor with a mask
        # forces a host sync every step. Counts are plain ints known here.
        self.num_pairs = int(pairs.sum())  # 2 * 10 - 2 = 18 for the paper
        self._part_pairs = {"loss_motion": int(motion.sum()), "loss_crossview": int((pairs & ~motion).sum())}
        self.register_buffer("_pairs", pairs.float(), persistent=False)
        self.register_buffer("_motion", motion.float(), persistent=False)
        self.register_buffer("_cross", (pairs & ~motion).float(), persistent=False)

    @classmethod
    def from_config(cls, loss: dict, num_global: int, num_views: int, epochs: int) -> "SVTLoss":
        """From the config's ``loss`` section (``epochs``: the length of the run)."""
        return cls(loss["out_dim"], num_global, num_views, loss["student_temp"], loss["teacher_temp"],
                   loss["warmup_teacher_temp"], loss["warmup_teacher_temp_epochs"], epochs,
                   loss["center_momentum"])

    def teacher_temperature(self, epoch: float) -> float:
        """Linear warm-up to ``teacher_temp`` over the warm-up epochs, then constant.

        The target value is reached at ``epoch == warmup_teacher_temp_epochs`` (DINO's
        per-epoch table reaches it one epoch earlier); fractional epochs interpolate.
        """
        warm = self.warmup_teacher_temp_epochs
        if warm <= 0 or epoch >= warm:
            return float(self.teacher_temp)
        frac = max(float(epoch), 0.0) / warm
        return float(self.warmup_teacher_temp + frac * (self.teacher_temp - self.warmup_teacher_temp))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor,
                epoch: float, with_stats: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """``with_stats=False`` skips the monitoring statistics (two more passes over the
        teacher's logits and a device sync); ``stats`` then holds only ``teacher_temp``."""
        G, V = self.num_global, self.num_views
        if teacher_out.shape[0] % G or student_out.shape[0] != V * (teacher_out.shape[0] // G):
            raise ValueError(f"expected student ({V}*B, D) and teacher ({G}*B, D), got "
                             f"{tuple(student_out.shape)} and {tuple(teacher_out.shape)}")
        B = teacher_out.shape[0] // G
        temp = self.teacher_temperature(epoch)
        teacher_out = teacher_out.detach()

        # Softmax over 65536 prototypes at temperature 0.04 needs float32: keep autocast
        # (which would run the einsum in bf16/fp16) out of the loss. .float() is free when
        # the logits already are.
        with torch.autocast(device_type=student_out.device.type, enabled=False):
            log_s = F.log_softmax(student_out.float() / self.student_temp, dim=-1).reshape(V, B, -1)
            t = F.softmax((teacher_out.float() - self.center) / temp, dim=-1)
            # ce[i, v] = mean_b sum_d -t[i, b, d] * log_s[v, b, d], all pairs in one einsum.
            ce = -torch.einsum("gbd,vbd->gv", t.reshape(G, B, -1), log_s) / B
            loss = (ce * self._pairs).sum() / self.num_pairs

            stats = {"teacher_temp": temp}
            if with_stats:
                with torch.no_grad():
                    # Teacher entropy near 0 (max prob near 1) means collapse onto one
                    # prototype; near log(out_dim) a uniform, uninformative teacher.
                    parts = [-torch.special.xlogy(t, t).sum(-1).mean(), t.max(-1).values.mean()]
                    names = ["teacher_entropy", "teacher_max_prob"]
                    for name, mask in (("loss_motion", self._motion), ("loss_crossview", self._cross)):
                        if self._part_pairs[name]:  # e.g. no cross-view part without local views
                            parts.append((ce * mask).sum() / self._part_pairs[name])
                            names.append(name)
                    stats.update(zip(names, torch.stack(parts).tolist()))  # one device sync

        self.update_center(teacher_out)
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the global-batch mean of the teacher logits (summed over all ranks)."""
        batch_sum = teacher_out.detach().float().sum(dim=0, keepdim=True)
        world = 1
        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size()
            dist.all_reduce(batch_sum)
        batch_mean = batch_sum / (teacher_out.shape[0] * world)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)


# --------------------------------------------------------------------------- schedules


def cosine_schedule(base: float, final: float, epochs: int, iters_per_epoch: int,
                    warmup_epochs: float = 0, start_warmup: float = 0.0) -> np.ndarray:
    """One value per iteration: linear warm-up ``start_warmup -> base``, then half-cosine
    ``base -> final``.

    The first iteration after warm-up is exactly ``base`` and the last iteration is
    exactly ``final`` (so a teacher momentum schedule ends at 1.0).
    """
    total = int(epochs * iters_per_epoch)
    if total <= 0:
        raise ValueError(f"empty schedule: epochs={epochs}, iters_per_epoch={iters_per_epoch}")
    n_warm = min(int(round(warmup_epochs * iters_per_epoch)), total)
    warm = start_warmup + (base - start_warmup) * np.arange(n_warm) / max(n_warm, 1)
    n_cos = total - n_warm
    steps = np.arange(n_cos) / max(n_cos - 1, 1)
    cos = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * steps))
    return np.concatenate([warm, cos]).astype(np.float64)


def optim_schedules(optim: dict, epochs: int, iters_per_epoch: int,
                    world: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learning rate, weight decay and teacher momentum per iteration, from the config's
    ``optim`` section; the peak lr is scaled linearly by the global batch / 256."""
    bs = optim["batch_size_per_gpu"]
    return (cosine_schedule(optim["lr"] * bs * world / 256.0, optim["min_lr"], epochs, iters_per_epoch,
                            optim["warmup_epochs"]),
            cosine_schedule(optim["weight_decay"], optim["weight_decay_end"], epochs, iters_per_epoch),
            cosine_schedule(optim["momentum_teacher"], 1.0, epochs, iters_per_epoch))


# --------------------------------------------------------------------------- optimiser


CLIP_MODES = ("per_tensor", "global")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names the model (or any submodule) lists in ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            names.update(f"{prefix}.{n}" if prefix else n for n in fn())
    return names


def param_groups(model: nn.Module, decay_embeddings: bool = True) -> list[dict]:
    """Two AdamW groups: decayed weights, and everything that should not shrink.

    ``decay_embeddings=True`` is the official SVT/DINO rule: only biases and tensors with
    fewer than two dimensions (norm weights among them) are exempt, so the CLS token, the
    positional tables and the weight-norm magnitude are decayed. ``False`` also exempts the
    names of ``no_weight_decay()`` (positional tables, CLS token) and weight-norm magnitudes,
    as timm does; names are matched by suffix so a wrapper's prefix does not matter. Frozen
    parameters are left out. Each group carries ``"apply_weight_decay"`` for
    :func:`apply_schedules`.
    """
    model = _unwrap(model)
    skip = set() if decay_embeddings else _no_decay_names(model)
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or id(p) in norm_params
        if not decay_embeddings:
            exempt = (exempt or name.endswith("parametrizations.weight.original0")
                      or any(name == s or name.endswith("." + s) for s in skip))
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "apply_weight_decay": True},
              {"params": no_decay, "apply_weight_decay": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    """Set this iteration's lr on every group and weight decay on the decayed group only."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_weight_decay", True):
            group["weight_decay"] = wd


def clip_gradients(model: nn.Module, max_norm: float, mode: str = "per_tensor") -> torch.Tensor:
    """Clip gradients to ``max_norm`` (0 disables) and return the global norm before
    clipping, as a 0-d tensor (no device sync; call ``.item()`` to log it).

    ``per_tensor`` (official SVT and DINO): each parameter's gradient is scaled by
    ``max_norm / (its norm + 1e-6)`` where that is below 1, tensor by tensor. ``global``:
    one scale for all gradients from their global norm, as torch's ``clip_grad_norm_``.
    """
    if mode not in CLIP_MODES:
        raise ValueError(f"clip mode {mode!r}: expected one of {CLIP_MODES}")
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros(())
    if mode == "global" and max_norm and max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params]
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    if max_norm and max_norm > 0:
        scales = torch._foreach_add(norms, 1e-6)
        torch._foreach_reciprocal_(scales)
        torch._foreach_mul_(scales, max_norm)
        torch._foreach_clamp_max_(scales, 1.0)
        torch._foreach_mul_(grads, scales)
    return total


def cancel_last_layer_gradients(head: nn.Module, epoch: float, freeze_epochs: float) -> None:
    """Drop the prototype layer's gradients during the first ``freeze_epochs`` epochs.

    Letting the prototypes move while the rest of the network is random makes training
    unstable (DINO). ``head`` may be the head, or any (DDP-wrapped) model containing it;
    with ``grad=None`` AdamW skips the parameters entirely, weight decay included.
    """
    if epoch >= freeze_epochs:
        return
    head = _unwrap(head)
    if isinstance(getattr(head, "last_layer", None), nn.Module):
        params: Iterable[nn.Parameter] = head.last_layer.parameters()
    else:
        params = (p for n, p in head.named_parameters() if "last_layer" in n.split("."))
    for p in params:
        p.grad = None


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher = momentum * teacher + (1 - momentum) * student, as one foreach lerp;
    buffers (e.g. norm statistics) are copied. Either model may be DDP-wrapped."""
    student, teacher = _unwrap(student), _unwrap(teacher)
    s_params = dict(student.named_parameters())
    t_names = [n for n, _ in teacher.named_parameters()]
    if set(t_names) != set(s_params):
        missing = sorted(set(t_names) ^ set(s_params))[:5]
        raise ValueError(f"student and teacher parameters differ, e.g. {missing}")
    t_list = [p for _, p in teacher.named_parameters()]
    s_list = [s_params[n].detach() for n in t_names]
    # lerp: t + (1 - m) * (s - t), one pass over each tensor instead of a mul and an add
    torch._foreach_lerp_(t_list, s_list, 1.0 - momentum)
    s_buffers = dict(student.named_buffers())
    for name, buf in teacher.named_buffers():
        if name in s_buffers:
            buf.copy_(s_buffers[name])


# --------------------------------------------------------------------------- multi-view forward


def multi_view_forward(backbone: nn.Module, head: nn.Module | None,
                       views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run every view through ``backbone`` and ``head``; return ``(len(views) * B, out_dim)``.

    Consecutive views of identical shape are concatenated along the batch and share one
    backbone call (the paper's ten views cost six: 8x224, 16x224, then the 96-px pairs of
    2, 4, 8 and 16 frames). The head runs once on all features. Output is view-major.
    ``head=None`` returns the backbone features.
    """
    if not views:
        raise ValueError("no views given")
    feats, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape == views[start].shape:
            end += 1
        chunk = views[start] if end - start == 1 else torch.cat(list(views[start:end]), dim=0)
        feats.append(backbone(chunk))
        start = end
    out = torch.cat(feats, dim=0) if len(feats) > 1 else feats[0]
    return out if head is None else head(out)


def teacher_forward(backbone: nn.Module, head: nn.Module | None,
                    views: Sequence[torch.Tensor], num_global: int = 2) -> torch.Tensor:
    """The teacher's pass: only the first ``num_global`` (global) views."""
    return multi_view_forward(backbone, head, views[:num_global])


class MultiViewModel(nn.Module):
    """Backbone + head as one module, so a single DDP wrapper (and a single
    :func:`update_teacher` / :func:`param_groups` call) covers both.
    ``forward(views)`` is :func:`multi_view_forward`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        return multi_view_forward(self.backbone, self.head, views)
