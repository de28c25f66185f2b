"""svt.model: shapes, gradients, attention, and loading image / DINO / official-SVT weights."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from official_svt import (BACKBONE, OFFICIAL_KEYS, TINY_OFFICIAL, TINY_WIDTHS, official_backbone,
                          official_head, official_release)
from svt._compat import import_timm
from svt.model import (ARCHS, Attention, VisionTransformerSVT, build_model, checkpoint_filter_fn,
                       file_sha256, load_pretrained)
from svt.posembed import resample_spatial

timm = import_timm()
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0)


def tiny(**kw) -> VisionTransformerSVT:
    torch.manual_seed(kw.pop("seed", 0))
    return VisionTransformerSVT(**{**TINY, **kw})


def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Make every parameter non-trivial (biases and LayerNorms away from 0/1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def timm_vit(img_size=32, seed=0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                          num_classes=5, global_pool="token", class_token=True, qkv_bias=True, **kw)
    perturb(m, seed + 1)
    return m.eval()


def timm_cls(m: VisionTransformer, img: torch.Tensor) -> torch.Tensor:
    return m.forward_head(m.forward_features(img), pre_logits=True)


def video_of(img: torch.Tensor, t: int) -> torch.Tensor:
    return img.unsqueeze(2).expand(-1, -1, t, -1, -1).contiguous()


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("t", [1, 2, 8])
@pytest.mark.parametrize("hw", [(32, 32), (48, 32)])
def test_output_shape_any_length_and_size(t, hw):
    m = tiny(num_frames=16).eval()
    out = m(torch.randn(2, 3, t, *hw))
    assert out.shape == (2, m.embed_dim) and torch.isfinite(out).all()


def test_bad_input_size_raises():
    m = tiny()
    with pytest.raises(AssertionError, match="multiple of the patch size 16"):
        m(torch.randn(1, 3, 2, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        m(torch.randn(1, 2, 32, 32))


def test_gradients_reach_every_parameter():
    m = tiny(num_frames=4).train()
    perturb(m)  # temporal_fc starts at zero, which would block the temporal branch's grads
    m(torch.randn(2, 3, 4, 48, 32)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fresh_model_temporal_fc_is_zero_and_time_embed_zero():
    m = tiny()
    for blk in m.blocks:
        assert not blk.temporal_fc.weight.any() and not blk.temporal_fc.bias.any()
    assert not m.time_embed.any()
    assert m.no_weight_decay() == {"pos_embed", "cls_token", "time_embed"}


def test_grad_checkpointing_same_output_and_grads(monkeypatch):
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    a = tiny(drop_path_rate=0.2, grad_checkpointing=False).train()
    perturb(a)
    b = tiny(drop_path_rate=0.2, grad_checkpointing=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 2, 32, 32)
    outs = []
    for m in (a, b):
        torch.manual_seed(123)  # same drop-path draws
        out = m(x)
        out.square().sum().backward()
        outs.append(out)
    assert len(calls) == len(b.blocks)  # only the checkpointing model used it
    torch.testing.assert_close(outs[0], outs[1])
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_sdpa_attention_matches_hand_written_reference():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    x = torch.randn(3, 7, 32)
    B, L, D = x.shape
    h, hd = 4, 8
    q, k, v = attn.qkv(x).split(D, dim=-1)
    q, k, v = (t.reshape(B, L, h, hd).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(B, L, D))
    torch.testing.assert_close(attn(x), ref, atol=1e-6, rtol=1e-5)


def reference_block(blk, x: torch.Tensor, T: int) -> torch.Tensor:
    """The divided space-time block written over the official TimeSformer token order
    (B, 1 + N*T, D), patch-major: for each location its T frames, i.e. independently of the
    model's layout, with drop-path where TimeSformer applies it. The masks are drawn with the
    block's own drop_mask and shapes, in the model's order (temporal, spatial, MLP), so a
    seeded run draws the same masks."""
    B, L, D = x.shape
    N = (L - 1) // T
    temporal, spatial, mlp = blk.drop_shapes(B, 1 + N, T)
    official = blk.drop_path_mode == "official"

    def mask(shape, like):  # -> broadcastable over `like` (leading dim B or B*groups)
        m = blk.drop_mask(x, shape)
        return None if m is None else m.reshape(-1, *[1] * (like.dim() - 1))

    cls, xt = x[:, :1], x[:, 1:]                                  # xt: (B, N*T, D)
    seq = xt.reshape(B * N, T, D)                                 # one sequence per location
    h = blk.temporal_attn(blk.temporal_norm1(seq))
    m = blk.drop_mask(x, temporal)
    if official:  # per (sample, location), before temporal_fc; the CLS row's draw unused
        h = h if m is None else h * m[:, 1:].reshape(B * N, 1, 1)
        res_t = blk.temporal_fc(h).reshape(B, N * T, D)
    else:
        res_t = blk.temporal_fc(h).reshape(B, N * T, D)
        res_t = res_t if m is None else res_t * m.reshape(B, 1, 1)
    xt = xt + res_t
    frames = xt.reshape(B, N, T, D).permute(0, 2, 1, 3).reshape(B * T, N, D)
    xs = torch.cat([cls.repeat(1, T, 1).reshape(B * T, 1, D), frames], 1)
    res = blk.attn(blk.norm1(xs))                                 # (B*T, 1+N, D)
    m = blk.drop_mask(x, spatial)
    if m is not None:  # per (sample, frame) officially, else per sample
        res = res * (m.reshape(B * T, 1, 1) if official else m.repeat_interleave(T).reshape(B * T, 1, 1))
    res_cls = res[:, 0].reshape(B, T, D).mean(1, keepdim=True)
    res_patch = res[:, 1:].reshape(B, T, N, D).permute(0, 2, 1, 3).reshape(B, N * T, D)
    out = torch.cat([cls, xt], 1) + torch.cat([res_cls, res_patch], 1)
    res = blk.mlp(blk.norm2(out))
    m = blk.drop_mask(x, mlp)
    return out + (res if m is None else res * m.reshape(B, 1, 1))


def reference_forward(m: VisionTransformerSVT, video: torch.Tensor) -> torch.Tensor:
    """The plain path: the official TimeSformer forward (token order, per-frame CLS cat,
    full final norm) over the model's own submodules and tables."""
    B, C, T, H, W = video.shape
    h, w = H // m.patch_size, W // m.patch_size
    x = m.patch_embed(video.transpose(1, 2).reshape(B * T, C, H, W))
    D = x.shape[-1]
    pos = m.spatial_table((h, w))
    x = (x + pos[:, 1:]).reshape(B, T, h * w, D) + m.temporal_table(T).unsqueeze(2)
    x = x.transpose(1, 2).reshape(B, h * w * T, D)
    x = torch.cat([(m.cls_token + pos[:, :1]).expand(B, -1, -1), x], 1)
    for blk in m.blocks:
        x = reference_block(blk, x, T)
    return m.norm(x)[:, 0]


def assert_close_rel(a, b, rtol=1e-5, msg=None):
    """rtol 1e-5, with entries near zero judged against the tensor's scale (fp32 sums in
    another order differ by a few ulps of the largest terms, not of the result)."""
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()), msg=msg)


def grads_of(m, fn, video):
    m.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same drop-path draws for both paths
    out = fn(video)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["official", "sample"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("t,hw", [(3, (48, 32)), (1, (32, 32)), (4, (16, 32))])
def test_fast_layout_matches_the_plain_official_order_path(train, t, hw, mode):
    """Outputs and every parameter's gradient of the patch-major layout (one copy per block,
    CLS-only last block) equal the plain official-order forward, in fp32 at rtol 1e-5, with
    either drop-path granularity."""
    m = tiny(depth=3, num_frames=4, drop_path_rate=0.5 if train else 0.0, drop_path_mode=mode)
    perturb(m, scale=0.2)  # temporal_fc and time_embed away from zero
    m.train(train)
    video = torch.randn(3, 3, t, *hw)
    fast, g_fast = grads_of(m, m, video)
    plain, g_plain = grads_of(m, lambda v: reference_forward(m, v), video)
    assert_close_rel(fast, plain)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) == len(list(m.parameters()))
    for n in g_fast:
        assert_close_rel(g_fast[n], g_plain[n], msg=n)


def test_drop_path_granularity_official_and_per_sample():
    """official: per (sample, location) in the temporal branch, per (sample, frame) in the
    spatial branch, per sample for the MLP; sample: per sample everywhere. 1/keep scaling."""
    m = tiny(drop_path_rate=0.5).train()
    blk = m.blocks[1]
    assert blk.drop_path_mode == "official"
    assert float(blk.drop_prob) == 0.5 and float(m.blocks[0].drop_prob) == 0.0
    assert blk.drop_shapes(4, 7, 3) == ((4, 7), (4, 3), (4,))
    assert tiny(drop_path_mode="sample").blocks[0].drop_shapes(4, 7, 3) == ((4,), (4,), (4,))
    torch.manual_seed(0)
    masks = torch.stack([blk.drop_mask(torch.zeros(1), (64, 5)) for _ in range(20)])
    assert set(masks.unique().tolist()) == {0.0, 2.0}
    assert 0.4 < (masks > 0).float().mean() < 0.6
    assert blk.eval().drop_mask(torch.zeros(1), (4,)) is None
    with pytest.raises(ValueError, match="drop_path_mode 'frames'"):
        tiny(drop_path_mode="frames")


def test_official_drop_path_drops_locations_and_frames_not_whole_samples():
    """With drop-path 1 - 1e-9 almost everything is dropped; with official granularity the
    temporal update of some locations survives in the same sample where others are dropped."""
    torch.manual_seed(0)
    blk = tiny(drop_path_rate=0.0).blocks[0].train()
    perturb(blk, scale=0.5)
    blk.drop_prob.fill_(0.5)
    x = torch.randn(1, 1 + 16, 2, 32)  # one sample, 16 locations, 2 frames
    seen = set()
    for _ in range(20):
        m = blk.drop_mask(x, blk.drop_shapes(1, 17, 2)[0])
        seen.add(tuple((m[0, 1:] > 0).tolist()))
    assert any(0 < sum(s) < 16 for s in seen)  # locations drawn independently within a sample


def test_tables_are_resampled_per_view_and_cached_in_eval():
    m = tiny(num_frames=4).eval()
    perturb(m)
    x = torch.randn(1, 3, 2, 48, 32)
    with torch.no_grad():
        a = m(x)
        hits = m._pos_cache.hits
        assert torch.equal(m(x), a) and m._pos_cache.hits == hits + 2  # spatial + temporal
        misses = m._pos_cache.misses
        m.pos_embed.add_(torch.randn_like(m.pos_embed))  # any in-place update invalidates
        assert not torch.allclose(m(x), a) and m._pos_cache.misses == misses + 1
    # training always recomputes so the tables get gradients
    m.train()
    m(x).sum().backward()
    assert m.pos_embed.grad.abs().sum() > 0 and m.time_embed.grad.abs().sum() > 0


def test_build_model_from_config_section():
    cfg = dict(patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
               drop_path_rate=0.1, img_size=32, num_frames=8, pos_interp_spatial="bicubic",
               pos_interp_temporal="linear", grad_checkpointing=True, init="none")
    m = build_model(**cfg)
    assert m.embed_dim == 32 and len(m.blocks) == 2 and m.time_embed.shape == (1, 8, 32)
    assert m.blocks[0].mlp.fc1.out_features == 64 and m.grad_checkpointing
    with pytest.raises(TypeError, match="embed_dims"):
        build_model(embed_dims=32)
    with pytest.raises(ValueError, match="mode"):
        build_model(**{**cfg, "pos_interp_spatial": "cubic"})
    assert set(ARCHS) == {"vit_tiny", "vit_small", "vit_base"}
    small = build_model(arch="vit_small", depth=1, img_size=32)
    assert small.embed_dim == 384 and len(small.blocks) == 1


def test_official_key_layout():
    """At the official configuration (ViT-B/16, 8 frames, 224 px) our parameters are the
    official release's backbone, name for name and shape for shape (the fixture in
    tests/fixtures/, tests/official_svt.py)."""
    model = build_model(arch="vit_base", num_frames=8, img_size=224, patch_size=16)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_backbone()


# ---------------------------------------------------------------- loading image ViTs

@pytest.mark.parametrize("t", [1, 3, 8])
def test_step0_equivalence_with_timm_image_vit(tmp_path, t):
    ref = timm_vit()
    path = tmp_path / "vit.pth"
    torch.save(ref.state_dict(), path)
    m = tiny(num_frames=8).eval()
    missing, unexpected = load_pretrained(m, path)
    assert missing == [] and unexpected == []
    for blk, rblk in zip(m.blocks, ref.blocks):
        assert torch.equal(blk.temporal_attn.qkv.weight, rblk.attn.qkv.weight)
        assert torch.equal(blk.temporal_norm1.weight, rblk.norm1.weight)
        assert not blk.temporal_fc.weight.any() and not blk.temporal_fc.bias.any()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(video_of(img, t)), timm_cls(ref, img), atol=1e-5, rtol=1e-5)


def test_timm_no_embed_class_layout_loads_exactly(tmp_path):
    ref = timm_vit(no_embed_class=True)
    assert ref.pos_embed.shape[1] == 4  # no CLS slot
    torch.save(ref.state_dict(), tmp_path / "vit.pth")
    m = tiny().eval()
    assert load_pretrained(m, tmp_path / "vit.pth") == ([], [])
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(video_of(img, 2)), timm_cls(ref, img), atol=1e-5, rtol=1e-5)


def test_dino_layout_teacher_preferred(tmp_path):
    teacher, student = timm_vit(seed=0), timm_vit(seed=10)

    def wrap(vit):
        sd = {"backbone." + k: v for k, v in vit.state_dict().items() if not k.startswith("head")}
        sd["head.mlp.0.weight"] = torch.randn(64, 32)
        sd["head.last_layer.weight_g"] = torch.ones(100, 1)
        return sd
    ckpt = {"student": {"module." + k: v for k, v in wrap(student).items()},
            "teacher": wrap(teacher), "epoch": 3, "args": argparse.Namespace(arch="vit_small")}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    m = tiny().eval()
    assert load_pretrained(m, tmp_path / "checkpoint.pth") == ([], [])
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(video_of(img, 4)), timm_cls(teacher, img),
                                   atol=1e-5, rtol=1e-5)


def test_image_checkpoint_at_other_resolution_resamples_pos_table(tmp_path):
    ref = timm_vit(img_size=64)  # 4x4 grid
    torch.save(ref.state_dict(), tmp_path / "vit64.pth")
    for mode in ("nearest", "bicubic"):
        m = tiny(img_size=32, pos_interp_spatial=mode)  # 2x2 grid
        assert load_pretrained(m, tmp_path / "vit64.pth") == ([], [])
        assert m.pos_embed.shape == (1, 5, 32)
        if mode == "bicubic":
            expect = resample_abs_pos_embed(ref.pos_embed.detach(), [2, 2], num_prefix_tokens=1,
                                            interpolation="bicubic", antialias=False)
        else:
            grid = ref.pos_embed.detach()[0, 1:].reshape(4, 4, 32)
            expect = torch.cat([ref.pos_embed.detach()[0, :1], grid[::2, ::2].reshape(4, 32)])[None]
        torch.testing.assert_close(m.pos_embed.detach(), expect, atol=1e-6, rtol=0)
        assert torch.equal(m.pos_embed[:, 0], ref.pos_embed[:, 0])  # CLS slot copied as is


def test_unsupported_image_layout_raises():
    ref = timm_vit(reg_tokens=2)
    with pytest.raises(ValueError, match="register tokens"):
        checkpoint_filter_fn(ref.state_dict(), tiny())


# ---------------------------------------------------------------- official SVT release
# tests/official_svt.py: the released teacher state dict's names and shapes (a fixture read from
# the official code); the synthetic releases below are built from that list alone.

def assert_loaded_from(model: VisionTransformerSVT, release: dict, frames_repeat: int = 1) -> None:
    """Every model tensor equals the official tensor of the same name (time_embed: each of the
    release's 8 rows repeated ``frames_repeat`` times, nearest resampling)."""
    own = model.state_dict()
    assert set(own) == set(official_backbone())
    for k, v in own.items():
        want = release[BACKBONE + k]
        if k == "time_embed":
            want = want.repeat_interleave(frames_repeat, 1)
        assert torch.equal(v, want), k


def test_official_fixture_is_a_divided_space_time_vit_b16_with_dino_head():
    """The fixture itself: 12 divided space-time blocks of width 768, 8 frames, 224 px, and
    the DINO head (3-layer MLP, weight-normalised last layer)."""
    backbone, head = official_backbone(), official_head()
    assert len(OFFICIAL_KEYS) == len(backbone) + len(head) == 5 + 12 * 20 + 2 + 8
    assert backbone["pos_embed"] == (1, 1 + 14 * 14, 768) and backbone["time_embed"] == (1, 8, 768)
    assert backbone["blocks.11.temporal_fc.weight"] == (768, 768)
    assert head == {"head." + k for k in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                                          "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g",
                                          "last_layer.weight_v")}


@pytest.mark.parametrize("num_frames", [8, 16])
def test_official_release_fills_every_parameter(tmp_path, num_frames):
    """The release as published (the teacher's state dict: `backbone.` tensors and the DINO
    head) into the 8-frame model it was trained as and into our 16-frame default: nothing
    missing, nothing unexpected, every tensor from its official namesake."""
    release = official_release(TINY_WIDTHS)
    torch.save(release, tmp_path / "kinetics400_vitb_ssl.pth")
    m = build_model(**{**TINY_OFFICIAL, "num_frames": num_frames}).eval()
    missing, unexpected = load_pretrained(m, tmp_path / "kinetics400_vitb_ssl.pth")
    assert missing == [] and unexpected == []
    assert_loaded_from(m, release, frames_repeat=num_frames // 8)


def test_official_release_filter_drops_exactly_the_dino_head():
    release = official_release(TINY_WIDTHS)
    out = checkpoint_filter_fn(release, build_model(**TINY_OFFICIAL))
    kept = {BACKBONE + k for k in out}
    assert kept <= set(release)
    assert set(release) - kept == official_head()
    assert set(out) == set(official_backbone())


def test_official_training_checkpoint_loads_the_teacher(tmp_path):
    """train_ssl.py's checkpoint.pth: the same teacher dict under 'teacher', beside the
    DDP student (`module.` prefix), optimizer, args (argparse.Namespace), DINO loss centre and
    the fp16 scaler; the teacher's tensors are the ones loaded."""
    teacher, student = official_release(TINY_WIDTHS, seed=0), official_release(TINY_WIDTHS, seed=1)
    ckpt = {"student": {"module." + k: v for k, v in student.items()}, "teacher": teacher,
            "motion_student": 0, "motion_teacher": 0,
            "optimizer": {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                          "param_groups": [{"lr": 1e-4, "weight_decay": 0.04, "params": [0]}]},
            "epoch": 20, "args": argparse.Namespace(arch="timesformer", out_dim=65536),
            "dino_loss": {"center": torch.zeros(1, 100)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                            "growth_interval": 2000, "_growth_tracker": 0}}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    m = build_model(**TINY_OFFICIAL)
    assert load_pretrained(m, tmp_path / "checkpoint.pth") == ([], [])
    assert_loaded_from(m, teacher)


def test_official_release_8_frame_clips_match_the_8_frame_model(tmp_path):
    """Loaded into our 16-frame default, 8-frame clips give the 8-frame model's features
    (nearest 16 -> 8 takes rows 0, 2, ... back: the released table)."""
    torch.save(official_release(TINY_WIDTHS), tmp_path / "kinetics400_vitb_ssl.pth")
    models = {}
    for t in (8, 16):
        models[t] = build_model(**{**TINY_OFFICIAL, "num_frames": t}).eval()
        assert load_pretrained(models[t], tmp_path / "kinetics400_vitb_ssl.pth") == ([], [])
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(models[16](x), models[8](x))


def test_filter_strips_nested_prefixes_and_heads():
    src = tiny()
    sd = {"module.backbone.model." + k: v for k, v in src.state_dict().items()}
    sd["module.head.weight"] = torch.zeros(3, 32)
    sd["fc_norm.weight"] = torch.zeros(32)
    out = checkpoint_filter_fn(sd, tiny())
    assert set(out) == set(src.state_dict())


# ---------------------------------------------------------------- errors and reporting

def test_shape_mismatch_raises_unless_allowed(tmp_path, capsys):
    big = tiny(embed_dim=48, num_heads=2)
    torch.save(big.state_dict(), tmp_path / "big.pth")
    m = tiny()
    with pytest.raises(ValueError) as err:
        load_pretrained(m, tmp_path / "big.pth")
    msg = str(err.value)
    assert "pos_embed" in msg and "(1, 5, 48)" in msg and "(1, 5, 32)" in msg
    assert "blocks.0.attn.qkv.weight" in msg

    before = {k: v.clone() for k, v in m.state_dict().items()}
    missing, unexpected = load_pretrained(m, tmp_path / "big.pth", allow_shape_mismatch=True)
    assert "pos_embed" in missing and "blocks.0.attn.qkv.weight" in missing
    assert torch.equal(m.pos_embed, before["pos_embed"])  # skipped, not half-loaded
    assert "pos_embed" in capsys.readouterr().err


def test_missing_and_unexpected_keys_are_reported(tmp_path, capsys):
    sd = dict(tiny().state_dict())
    del sd["norm.weight"]
    sd["foo.bar"] = torch.zeros(2)
    # our own export layout: a config dict under "model" beside the weights
    torch.save({"model": {"embed_dim": 32}, "module": sd, "step": 7}, tmp_path / "partial.pth")
    missing, unexpected = load_pretrained(tiny(), tmp_path / "partial.pth")
    assert missing == ["norm.weight"] and unexpected == ["foo.bar"]
    err = capsys.readouterr().err
    assert "norm.weight" in err and "foo.bar" in err


def test_load_refuses_pickled_code(tmp_path):
    torch.save({"state_dict": tiny().state_dict(), "evil": subprocess.Popen},
               tmp_path / "unsafe.pth")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        load_pretrained(tiny(), tmp_path / "unsafe.pth")


def test_file_sha256(tmp_path):
    p = tmp_path / "blob.bin"
    p.write_bytes(b"svt" * 500_000)
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert file_sha256(p) == subprocess.run(["sha256sum", str(p)], capture_output=True,
                                            text=True, check=True).stdout.split()[0]


def test_sdpa_is_what_attention_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    tiny(depth=1)(torch.randn(1, 3, 2, 32, 32))
    assert len(calls) == 2  # temporal + spatial


def test_spatial_table_nearest_default_matches_posembed():
    m = tiny(img_size=64)
    with torch.no_grad():
        assert torch.equal(m.spatial_table((2, 3)), resample_spatial(m.pos_embed, (2, 3)))


# ---------------------------------------------------------------- full-size layouts

@pytest.mark.slow
def test_full_size_vit_b16_layouts_load_without_unexpected_keys(tmp_path):
    """The two foreign layouts users bring, at the paper's size (ViT-B/16, random values):
    a timm ViT-B/16 image checkpoint and the official SVT release (built from the fixture of its
    names and shapes: teacher state dict, `backbone.` prefix, DINO head, 8-entry temporal table),
    every tensor filled from its official namesake."""
    torch.manual_seed(0)
    image = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                              num_classes=1000, global_pool="token", class_token=True, qkv_bias=True)
    torch.save(image.state_dict(), tmp_path / "vit_base_patch16_224.pth")
    del image
    model = build_model(arch="vit_base", num_frames=16, drop_path_rate=0.0)
    missing, unexpected = load_pretrained(model, tmp_path / "vit_base_patch16_224.pth")
    assert unexpected == [] and missing == []

    release = official_release()  # full size, from the fixture alone
    torch.save(release, tmp_path / "kinetics400_vitb_ssl.pth")
    missing, unexpected = load_pretrained(model, tmp_path / "kinetics400_vitb_ssl.pth")
    assert unexpected == [] and missing == []
    assert_loaded_from(model, release, frames_repeat=2)
    assert model.time_embed.shape == (1, 16, 768)


# ---------------------------------------------------------------- regional compilation

def _cpu_compiler_problem() -> str | None:
    """Why torch.compile cannot run here, or None (inductor needs a working C++ compiler)."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
    except Exception as e:  # noqa: BLE001 - any failure means: no compiler to test against
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


@pytest.mark.slow
def test_compiled_blocks_match_eager_outputs_and_gradients():
    """pretrain.compile: blocks on the CPU compiler: same output and gradients as eager
    (fp32, rtol 1e-5), one shared graph for all blocks, the compile time recorded."""
    problem = _cpu_compiler_problem()
    if problem:
        pytest.skip(f"torch.compile does not work on this machine: {problem}; install a C++ "
                    "compiler with: sudo apt-get install g++  (make setup runs it as root)")
    m = tiny(depth=3, num_frames=4, drop_path_rate=0.0)
    perturb(m, scale=0.2)
    m.train()
    video = torch.randn(2, 3, 2, 32, 32)
    eager, g_eager = grads_of(m, m, video)
    m.compile_blocks()
    compiled, g_compiled = grads_of(m, m, video)
    assert m._compiled is not None, "the compiled path fell back to eager"
    assert m.compile_seconds > 0
    assert_close_rel(compiled, eager)
    for n in g_eager:
        assert_close_rel(g_compiled[n], g_eager[n], msg=n)
    assert m.state_dict().keys() == tiny(depth=3, num_frames=4).state_dict().keys()  # no _orig_mod


FALLBACK_SCRIPT = """
import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
from svt.model import VisionTransformerSVT
inductor_config.cpp.cxx = (None, "/nonexistent/bin/g++")  # no C++ compiler where inductor looks
inductor_config.fx_graph_cache = False  # and no cached kernels either
functorch_config.enable_autograd_cache = False
torch.manual_seed(0)
m = VisionTransformerSVT(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_frames=4,
                         drop_path_rate=0.0)
video = torch.randn(2, 3, 2, 32, 32)
def run():
    m.zero_grad(set_to_none=True)
    out = m(video)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in m.parameters()]
eager, g_eager = run()
m.compile_blocks()
out, g = run()
same = torch.equal(out, eager) and all(torch.equal(a, b) for a, b in zip(g, g_eager))
print("compiled_is_none", m._compiled is None, "same", same)
"""


@pytest.mark.slow
def test_compiler_failure_warns_once_and_runs_eager():
    """A real compiler failure (no C++ compiler where inductor looks): one warning line, then
    eager, with eager's numbers. In its own process: inductor remembers a failed compiler."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "torch.compile of the blocks failed" in line]
    assert len(warnings) == 1 and "running eager" in warnings[0], res.stderr[-2000:]
    assert "compiled_is_none True same True" in res.stdout
