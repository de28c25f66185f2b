"""svt.adapt / svt.eval_views / svt.features / svt.probe / svt.table: slow-fast evaluation of a frozen backbone.

Real tiny videos (libx264, as the decode stage writes them) go through the real CLIs with a
tiny TimeSformer (patch 16, 32-d). Probe and kNN are checked on synthetic features whose
answer is known: separable Gaussian clusters (near-perfect) and shuffled labels (chance).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import INSTALL_FFMPEG, needs
from svt import adapt, eval_views as evv, features, knn as knn_mod, metrics as metrics_mod, probe
from svt import table as table_mod
from svt.config import parse_named
from svt._compat import import_timm
from svt.loader import read_frames
from svt.manifest import ManifestRow, write_rows
from svt.model import VisionTransformerSVT, build_model, file_sha256, pretrained_cfg
from svt.posembed import resample_spatial, resample_temporal

import_timm()
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

needs_ffmpeg = needs(shutil.which("ffmpeg"), "ffmpeg", INSTALL_FFMPEG)

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_frames=4,
            drop_path_rate=0.0, pos_interp_spatial="bilinear", pos_interp_temporal="linear")
GEOS = ["--geometry", "slow=4x32", "--geometry", "fast=8x16"]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
# the teacher is "pretrained" with a non-ImageNet normalisation: evaluation must use it
TRAINED_NORM = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
IMAGENET = ["--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225"]


def perturb(module: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> None:
    """Make every parameter non-trivial (zero time_embed / temporal_fc, unit norms, ...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def tiny_model(seed: int = 0, **kw) -> VisionTransformerSVT:
    torch.manual_seed(seed)
    m = build_model(**{**TINY, **kw})
    perturb(m, seed + 1)
    return m.eval()


def save_teacher(path, model: VisionTransformerSVT, cfg: dict, run_id=None):
    """The layout svt.pretrain exports (teacher_backbone.pth)."""
    torch.save({"state_dict": model.state_dict(), "model": {**cfg, "init": "none"}, "step": 7,
                "pretrained_cfg": pretrained_cfg(model, **TRAINED_NORM), "mlflow_run_id": run_id},
               path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher_backbone.pth"
    model = tiny_model()
    return save_teacher(path, model, TINY, run_id="run-from-pretrain"), model


@pytest.fixture(scope="module")
def adapted(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "adapted.pth"
    assert adapt.main(["--backbone", str(teacher[0]), "--out", str(out), *GEOS]) == 0
    return out


# ------------------------------------------------------------------------ tiny real videos

def _make_videos(root, rows_spec, seed=0):
    """rows_spec: (split, class index, frames, (w, h)); one colour per class, moving noise."""
    from svt.demo_data import write_video

    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    rows = {}
    for i, (split, label, n, (w, h)) in enumerate(rows_spec):
        base = np.array(COLOURS[names[label]], np.float32)
        frames = base + rng.normal(0, 20, (n, h, w, 3))
        frames[:, :, : w // 4] = 128  # a grey bar: crops differ
        frames = np.clip(frames, 0, 255).astype(np.uint8)
        rel = f"{names[label]}/v{i:02d}.mp4"
        (root / names[label]).mkdir(parents=True, exist_ok=True)
        write_video(root / rel, frames, fps=30, codec="libx264", g=16)
        rows.setdefault(split, []).append(
            ManifestRow(rel, label, names[label], split, n, 30.0, n / 30, w, h, rel))
    return rows


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """3 colour classes; train 3 per class, test 2 per class; landscape and portrait sizes,
    different lengths."""
    root = tmp_path_factory.mktemp("videos")
    sizes = [(64, 48), (48, 64), (80, 48)]
    spec = [("train", c, 18 + 5 * k, sizes[(c + k) % 3]) for c in range(3) for k in range(3)]
    spec += [("test", c, 20 + 7 * k, sizes[(c + 2 * k) % 3]) for c in range(3) for k in range(2)]
    rows = _make_videos(root / "videos", spec)
    manifests = {}
    for split, rs in rows.items():
        manifests[split] = root / f"{split}.csv"
        write_rows(manifests[split], rs, ManifestRow)
    classes = root / "classes.txt"
    classes.write_text("\n".join(COLOURS) + "\n")
    return {"root": root / "videos", "classes": classes, **manifests, "rows": rows}


# ------------------------------------------------------------------------ geometry & views

def test_parse_geometry_and_named():
    assert adapt.parse_geometry("slow=8x224") == adapt.Geometry("slow", 8, 224)
    assert adapt.parse_geometry(" fast = 64 x 96 ") == adapt.Geometry("fast", 64, 96)
    for bad in ("slow", "slow=8", "slow=8x", "=8x224", "a b=1x2"):
        with pytest.raises(ValueError):
            adapt.parse_geometry(bad)
    assert parse_named(["slow=a.pt", "fast=b=c.pt"], "--x") == {"slow": "a.pt", "fast": "b=c.pt"}
    with pytest.raises(ValueError):
        parse_named(["slow=a", "slow=b"], "--x")


def test_eval_clip_sampler_covers_equal_windows():
    s = evv.EvalClipSampler(frames=4, clips=2)
    a, b = s(40, 30.0)
    assert a.tolist() == [2, 7, 12, 17] and b.tolist() == [22, 27, 32, 37]
    (whole,) = evv.EvalClipSampler(8, 1)(5, 30.0)  # short video: frames repeat, stay in range
    assert whole.min() >= 0 and whole.max() <= 4 and len(whole) == 8


@pytest.mark.parametrize("h,w", [(40, 80), (80, 40)])
def test_eval_views_three_crops_along_the_long_side(h, w):
    g = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (3, h, w, 3), dtype=torch.uint8, generator=g)
    views = evv.eval_views([clip, clip.flip(0)], size=20, crops=3, **TRAINED_NORM)
    assert views.shape == (6, 3, 3, 20, 20)
    x = clip.permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(h // 2, w // 2), mode="bilinear",
                                        antialias=True, align_corners=False)
    x = (x - torch.tensor(TRAINED_NORM["mean"]).view(1, 3, 1, 1)) / torch.tensor(TRAINED_NORM["std"]).view(1, 3, 1, 1)
    for i, off in enumerate([0, 10, 20]):  # left/centre/right or top/centre/bottom
        want = x[..., off:off + 20] if w > h else x[..., off:off + 20, :]
        torch.testing.assert_close(views[i], want.permute(1, 0, 2, 3))
    torch.testing.assert_close(views[3], views[0].flip(1))  # clip-major order
    assert evv.crop_offsets(50, 20, 1) == [15]


# ------------------------------------------------------------------------ adapt

def test_adapt_records_geometries_and_resampled_tables(teacher, adapted):
    path, model = teacher
    out = adapt.load_adapted(adapted)
    assert out["mlflow_run_id"] == "run-from-pretrain"
    assert "init" not in out["model"] and out["model"]["embed_dim"] == 32
    assert out["source"]["sha256"] == file_sha256(path) and not out["source"]["random_init"]
    for k, v in model.state_dict().items():
        assert torch.equal(out["state_dict"][k], v), k
    for name, frames, size in (("slow", 4, 32), ("fast", 8, 16)):
        g = out["geometries"][name]
        grid = size // 16
        assert (g["frames"], g["size"], g["grid"], g["patch_size"]) == (frames, size, [grid, grid], 16)
        assert (g["spatial_mode"], g["temporal_mode"]) == ("bilinear", "linear")
        torch.testing.assert_close(g["spatial_table"],
                                   resample_spatial(model.pos_embed.detach(), (grid, grid), "bilinear"))
        torch.testing.assert_close(g["temporal_table"],
                                   resample_temporal(model.time_embed.detach(), frames, "linear"))
    # the fast table really is resampled (8 frames from 4, a 1x1 grid from 2x2)
    assert out["geometries"]["fast"]["temporal_table"].shape == (1, 8, 32)
    assert out["geometries"]["fast"]["spatial_table"].shape == (1, 2, 32)


@pytest.mark.parametrize("name,t,s", [("slow", 4, 32), ("fast", 8, 16)])
def test_model_at_geometry_equals_on_the_fly_resampling(teacher, adapted, name, t, s):
    _, model = teacher
    m = adapt.model_for_geometry(adapt.load_adapted(adapted), name)
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    x = torch.randn(2, 3, t, s, s)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x))
    with pytest.raises(KeyError, match="medium"):
        adapt.model_for_geometry(adapt.load_adapted(adapted), "medium")


def test_adapt_rejects_bad_input(teacher, tmp_path, capsys):
    out = str(tmp_path / "a.pth")
    assert adapt.main(["--backbone", str(teacher[0]), "--out", out, "--geometry", "x=4x20"]) == 2
    assert "multiple of the patch size" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pth"
    torch.save({f"backbone.{k}": v for k, v in teacher[1].state_dict().items()}, foreign)
    assert adapt.main(["--backbone", str(foreign), "--out", out, *GEOS]) == 2
    assert "--model-json" in capsys.readouterr().err


def test_random_init_is_seeded_and_has_the_backbone_architecture(teacher, tmp_path):
    outs = []
    for i, seed in enumerate([0, 0, 1]):
        out = tmp_path / f"r{i}.pth"
        assert adapt.main(["--random-init", "--backbone", str(teacher[0]), "--out", str(out),
                           "--seed", str(seed), *GEOS]) == 0
        outs.append(adapt.load_adapted(out))
    a, b, c = (o["state_dict"] for o in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["blocks.0.attn.qkv.weight"],
                           teacher[1].state_dict()["blocks.0.attn.qkv.weight"])
    assert outs[0]["model"] == adapt.load_adapted(tmp_path / "r0.pth")["model"]
    assert outs[0]["source"]["random_init"] and outs[0]["mlflow_run_id"] is None
    # the baseline is fed as the backbone it stands beside
    assert outs[0]["pretrained_cfg"] == {**TRAINED_NORM, "num_frames": 4, "patch_size": 16, "img_size": 32}
    # without a backbone the config comes from --model-json, the normalisation from --mean/--std
    out = tmp_path / "r_json.pth"
    assert adapt.main(["--random-init", "--model-json", json.dumps(TINY), "--out", str(out), *GEOS]) == 2
    assert adapt.main(["--random-init", "--model-json", json.dumps(TINY), "--out", str(out), *GEOS,
                       *IMAGENET]) == 0
    assert adapt.load_adapted(out)["geometries"]["slow"]["grid"] == [2, 2]
    assert adapt.load_adapted(out)["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]


def test_import_official_svt_layout(tmp_path):
    """kinetics400_vitb_ssl.pth as released (tests/official_svt.py: names and shapes from the
    official code, widths shrunk): the teacher's state dict, `backbone.` prefix, an 8-entry
    temporal table and DINO head keys; loaded into a 16-frame model."""
    from official_svt import BACKBONE, TINY_OFFICIAL, TINY_WIDTHS, official_release

    release = official_release(TINY_WIDTHS, seed=3)
    torch.save(release, tmp_path / "kinetics400_vitb_ssl.pth")
    # the same tensors in the architecture they were released for, loaded strictly by name
    interp = {"pos_interp_spatial": "nearest", "pos_interp_temporal": "nearest"}  # 8 -> 16: rows repeat
    src = build_model(**TINY_OFFICIAL, **interp)
    src.load_state_dict({k[len(BACKBONE):]: v for k, v in release.items() if k.startswith(BACKBONE)})
    src.eval()
    cfg = {**TINY_OFFICIAL, **interp, "num_frames": 16}
    out = tmp_path / "adapted.pth"
    args = ["--backbone", str(tmp_path / "kinetics400_vitb_ssl.pth"), "--out", str(out),
            "--model-json", json.dumps(cfg), "--geometry", "slow=4x32", "--geometry", "fast=8x16"]
    assert adapt.main(args) == 2  # a foreign file stores no normalisation: it must be given
    assert adapt.main(args + IMAGENET) == 0
    a = adapt.load_adapted(out)
    assert a["model"]["num_frames"] == 16 and a["mlflow_run_id"] is None
    assert set(a["state_dict"]) == set(src.state_dict())  # the DINO head is left out, nothing else
    for k, v in src.state_dict().items():
        if k != "time_embed":
            assert torch.equal(a["state_dict"][k], v), k
    torch.testing.assert_close(a["state_dict"]["time_embed"], src.time_embed.detach().repeat_interleave(2, 1))
    torch.testing.assert_close(a["geometries"]["fast"]["temporal_table"], src.time_embed.detach())
    x = torch.randn(1, 3, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(adapt.model_for_geometry(a, "fast")(x), src(x))


def test_import_timm_image_vit(tmp_path):
    """An image ViT becomes a video model whose CLS feature on a still video is the image's."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                            num_classes=5, global_pool="token", qkv_bias=True)
    perturb(vit)
    vit.eval()
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    cfg = {k: v for k, v in TINY.items() if not k.startswith("pos_interp")}
    out = tmp_path / "adapted.pth"
    assert adapt.main(["--backbone", str(tmp_path / "vit.pth"), "--out", str(out),
                       "--model-json", json.dumps(cfg), *GEOS, *IMAGENET]) == 0
    a = adapt.load_adapted(out)
    sd = a["state_dict"]
    assert torch.equal(sd["blocks.1.temporal_attn.qkv.weight"], vit.blocks[1].attn.qkv.weight)
    assert not sd["blocks.1.temporal_fc.weight"].any() and not sd["time_embed"].any()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = vit.forward_head(vit.forward_features(img), pre_logits=True)
        got = adapt.model_for_geometry(a, "slow")(img.unsqueeze(2).expand(-1, -1, 4, -1, -1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ features

@needs_ffmpeg
@pytest.mark.parametrize("clips", [1, 2])
def test_features_shapes_for_any_geometry(adapted, teacher, videos, tmp_path, clips):
    outs = {}
    for name in ("slow", "fast"):
        outs[name] = tmp_path / f"test_{name}.pt"
        assert features.main(["--backbone", str(adapted), "--geometry", name,
                              "--manifest", str(videos["test"]), "--videos-root", str(videos["root"]),
                              "--out", str(outs[name]), "--clips", str(clips), "--crops", "3",
                              "--batch-size", "4", "--device", "cpu",  # fp32: compared below
                              "--num-workers", str(clips - 1)]) == 0
    rows = videos["rows"]["test"]
    for name, (t, s) in {"slow": (4, 32), "fast": (8, 16)}.items():
        f = features.load_features(outs[name])
        assert f["features"].shape == (len(rows), 32) and f["features"].dtype == torch.float32
        assert f["view_features"].shape == (len(rows), clips * 3, 32)
        assert f["labels"].tolist() == [r.label for r in rows]
        assert f["paths"] == [r.path for r in rows]
        assert f["geometry"] == {"name": name, "frames": t, "size": s, "grid": [s // 16] * 2,
                                 "patch_size": 16, "spatial_mode": "bilinear",
                                 "temporal_mode": "linear", "clips": clips, "crops": 3}
        assert f["backbone"]["sha256"] == file_sha256(adapted)
        assert f["mlflow_run_id"] == "run-from-pretrain"
        # float16 storage rounds each view's value to within 2**-11 (its unit roundoff) of its
        # magnitude, so the views' mean is within 2**-11 * mean(|view|) of the float32 mean
        # (+1e-6: float32 sums, float16 subnormals). Measured: errors up to 8e-4, 0.85 of the bound
        views = f["view_features"].float()
        err = (f["features"] - views.mean(1)).abs()
        bound = 2 ** -11 * views.abs().mean(1) + 1e-6
        assert (err <= bound).all(), (err.max(), (err / bound).max())
        # video 3 (the 4th: in the second batch) by hand, through the original model, with
        # the mean/std it was pretrained with (stored in teacher_backbone.pth, not ImageNet's)
        r = rows[3]
        idx = evv.EvalClipSampler(t, clips)(r.frames, r.fps)
        frames = read_frames(videos["root"] / r.path, np.concatenate(idx))
        views = evv.eval_views(list(torch.split(frames, t)), s, 3, **TRAINED_NORM)
        with torch.no_grad():
            want = teacher[1](views).mean(0)
            imagenet = teacher[1](evv.eval_views(list(torch.split(frames, t)), s, 3,
                                                 [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        torch.testing.assert_close(f["features"][3], want, atol=1e-4, rtol=1e-4)
        assert (f["features"][3] - imagenet.mean(0)).abs().max() > 1e-2  # it would show


# ------------------------------------------------------------------------ probe & kNN

def clusters(n_per_class: int, classes: int = 5, dim: int = 32, seed: int = 0, spread: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g) + 3.0  # an offset, like real features
    return x, y


def test_linear_and_knn_near_perfect_on_separable_clusters():
    x, y = clusters(60, seed=0)
    xt, yt = clusters(40, seed=1)
    names = [f"c{i}" for i in range(5)]
    for cfg in (probe.ProbeConfig(), probe.ProbeConfig(epochs=30, lr=0.5, batch_size=32)):
        head = probe.train_linear(x, y, 5, cfg)
        m = metrics_mod.classification_metrics(head(xt).detach(), yt, names)
        assert m["top1"] >= 0.95 and m["top5"] == 1.0
        assert min(m["per_class"].values()) >= 0.9
        assert sum(map(sum, m["confusion"])) == len(yt)
    knn = knn_mod.knn_accuracy(x, y, xt, yt, 5)
    assert knn["top1"] >= 0.95 and knn["top5"] == 1.0


def test_linear_and_knn_at_chance_on_shuffled_labels():
    c = 5
    x, y = clusters(100, classes=c, seed=0)
    xt, yt = clusters(100, classes=c, seed=1)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(7))]
    yt = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(8))]
    sigma = (1 / c * (1 - 1 / c) / len(yt)) ** 0.5  # binomial std of the accuracy at chance
    head = probe.train_linear(x, y, c, probe.ProbeConfig(epochs=30, lr=0.5, batch_size=32))
    lin = metrics_mod.classification_metrics(head(xt).detach(), yt, list("abcde"))["top1"]
    knn = knn_mod.knn_accuracy(x, y, xt, yt, c)["top1"]
    for acc in (lin, knn):
        assert abs(acc - 1 / c) < 4 * sigma, acc


def test_knn_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ty = torch.tensor([0, 1, 1])
    s = knn_mod.knn_scores(train, ty, torch.tensor([[2.0, 0.0]]), 2, k=2, temperature=0.5)
    sims = torch.nn.functional.normalize(train, dim=1) @ torch.tensor([1.0, 0.0])
    torch.testing.assert_close(s, torch.stack([(sims[0] / 0.5).exp(), (sims[1] / 0.5).exp()])[None])


def test_combine_mean_and_concat_dims():
    a, b = torch.randn(6, 32), torch.randn(6, 32)
    s = probe.settings_from({"slow": a, "fast": b}, "mean")
    assert list(s) == ["slow", "fast", "slow_fast"] and s["slow_fast"].shape == (6, 32)
    torch.testing.assert_close(s["slow_fast"], (a + b) / 2)
    s = probe.settings_from({"slow": a, "fast": b}, "concat")
    assert s["slow_fast"].shape == (6, 64) and torch.equal(s["slow_fast"][:, 32:], b)
    with pytest.raises(ValueError, match="concat"):
        probe.combine([a, torch.randn(6, 16)], "mean")
    assert probe.settings_from({"slow": a}, "mean").keys() == {"slow"}


def _feature_files(tmp_path, run_id="run-x"):
    """Synthetic cached features: 'slow' separates the classes, 'fast' is pure noise."""
    classes = ["alpha", "beta", "gamma", "delta"]
    out = {}
    for split, seed in (("train", 0), ("test", 1)):
        x, y = clusters(30 if split == "train" else 15, classes=4, seed=seed)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 10))
        paths = [f"{split}/{i}.mp4" for i in range(len(y))]
        for name, f in (("slow", x), ("fast", noise)):
            out[(split, name)] = features.save_features(
                tmp_path / f"{split}_{name}.pt",
                {"features": f, "view_features": f[:, None].half(), "labels": y, "paths": paths},
                {"geometry": {"name": name}, "backbone": {"sha256": "abc"}, "mlflow_run_id": run_id})
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    return out, tmp_path / "classes.txt"


def _probe_args(files, classes, out_dir, *extra):
    return ["--train", f"slow={files['train', 'slow']}", "--train", f"fast={files['train', 'fast']}",
            "--test", f"slow={files['test', 'slow']}", "--test", f"fast={files['test', 'fast']}",
            "--classes", str(classes), "--out-dir", str(out_dir), "--batch-size", "32",
            "--lr", "0.2", *extra]


def test_probe_cli_outputs_and_determinism(tmp_path, capsys):
    files, classes = _feature_files(tmp_path)
    for run in ("a", "b"):
        assert probe.main(_probe_args(files, classes, tmp_path / run)) == 0
    printed = capsys.readouterr().out
    assert "| slow-fast |" in printed
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert a == json.loads((tmp_path / "b" / "metrics.json").read_text())  # same seed: same numbers
    assert list(a) == ["slow", "fast", "slow_fast"]
    for s in a:
        assert set(a[s]) == {"linear", "knn"}
        assert set(a[s]["linear"]) == {"top1", "top5", "per_class"}
        assert list(a[s]["linear"]["per_class"]) == ["alpha", "beta", "gamma", "delta"]
        png = tmp_path / "a" / f"confusion_{s}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    assert a["slow"]["linear"]["top1"] >= 0.95 and a["slow"]["knn"]["top1"] >= 0.95
    # noise features: at chance (0.25). The test labels are balanced and independent of the
    # noise, so top-1 is binomial(n, 1/4) / n: within 4 sigma = 4 sqrt(1/4 * 3/4 / n) of 1/4
    # (0.22 for n = 60; was: linear < 0.6). Measured: linear 0.30, kNN 0.17
    n = len(features.load_features(files["test", "fast"])["labels"])
    sigma = (0.25 * 0.75 / n) ** 0.5
    for acc in (a["fast"]["linear"]["top1"], a["fast"]["knn"]["top1"]):
        assert abs(acc - 0.25) < 4 * sigma, (acc, n)
    assert (tmp_path / "a" / "results.md").read_text().startswith("| setting |")
    # the seed drives the probe: same seed, same head; another seed, another head
    x, y = clusters(20, classes=4)
    h1, h2, h3 = (probe.train_linear(x, y, 4, probe.ProbeConfig(epochs=3, batch_size=16, seed=s))
                  for s in (0, 0, 1))
    assert torch.equal(h1.weight, h2.weight) and not torch.equal(h1.weight, h3.weight)


def test_probe_concat_combine_and_mismatched_inputs(tmp_path, capsys):
    files, classes = _feature_files(tmp_path)
    assert probe.main(_probe_args(files, classes, tmp_path / "c", "--combine", "concat")) == 0
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["slow_fast"]["knn"]["top1"] >= 0.9
    # train/test geometries must agree
    args = _probe_args(files, classes, tmp_path / "d")
    args[args.index(f"fast={files['test', 'fast']}")] = f"medium={files['test', 'fast']}"
    assert probe.main(args) == 2
    assert "same geometries" in capsys.readouterr().err


def test_probe_logs_into_its_own_run_tagged_with_the_backbone_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("svt-test", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp, run_name="pretrain")
    client.set_terminated(run.info.run_id)
    files, classes = _feature_files(tmp_path, run_id=run.info.run_id)
    # explicit run id for one, the recorded one (from the backbone) for the other
    assert probe.main(_probe_args(files, classes, tmp_path / "r", "--tracking-uri", uri,
                                  "--experiment", "svt-test", "--backbone-run-id", run.info.run_id,
                                  "--prefix", "random")) == 0
    assert probe.main(_probe_args(files, classes, tmp_path / "p", "--tracking-uri", uri,
                                  "--experiment", "svt-test", "--prefix", "pretrained")) == 0
    # the pretraining run gets no evaluation: its charts stay its training curves
    assert client.get_run(run.info.run_id).data.metrics == {}
    assert not client.list_artifacts(run.info.run_id)
    want = json.loads((tmp_path / "p" / "metrics.json").read_text())
    probes = {r.info.run_name: r for r in client.search_runs([exp]) if r.info.run_id != run.info.run_id}
    assert set(probes) == {"probe/random", "probe/pretrained"}
    for prefix, got in probes.items():
        prefix = prefix.split("/")[1]
        assert got.info.status == "FINISHED"
        assert got.data.tags["svt.backbone_run_id"] == run.info.run_id
        assert got.data.tags["svt.stage"] == "evaluate"
        assert got.data.metrics[f"eval/{prefix}/slow_fast/linear_top1"] == \
            round(100 * want["slow_fast"]["linear"]["top1"], 2)  # percent, as the table
        assert got.data.metrics[f"eval/{prefix}/slow/knn_top5"] == round(100 * want["slow"]["knn"]["top5"], 2)
        names = {f.path for f in client.list_artifacts(got.info.run_id, f"eval/{prefix}")}
        assert {f"eval/{prefix}/metrics.json", f"eval/{prefix}/confusion_slow_fast.png"} <= names
    # a backbone run that does not exist is only a tag: the evaluation still succeeds
    assert probe.main(_probe_args(files, classes, tmp_path / "q", "--tracking-uri", uri,
                                  "--backbone-run-id", "0" * 32)) == 0
    assert (tmp_path / "q" / "metrics.json").exists()


def test_comparison_table(tmp_path):
    def m(lin, knn):
        return {s: {"linear": {"top1": lin + i / 100, "top5": 1.0}, "knn": {"top1": knn, "top5": 1.0}}
                for i, s in enumerate(("slow_fast", "slow", "fast"))}
    text = table_mod.format_table({"random": m(0.1, 0.2), "pretrained": m(0.8, 0.9)})
    lines = text.splitlines()
    assert lines[0] == ("| backbone | slow linear | slow kNN | fast linear | fast kNN | "
                        "slow-fast linear | slow-fast kNN |")
    assert lines[2] == "| random init | 11.0 | 20.0 | 12.0 | 20.0 | 10.0 | 20.0 |"
    assert lines[3] == "| pretrained | 81.0 | 90.0 | 82.0 | 90.0 | 80.0 | 90.0 |"
    (tmp_path / "r.json").write_text(json.dumps(m(0.1, 0.2)))
    online = {"slow": {"linear": {"top1": 0.5, "top5": 1.0}}}  # online mode has no kNN
    (tmp_path / "p.json").write_text(json.dumps(online))
    res = subprocess.run([sys.executable, "-m", "svt.table", "--row", f"random={tmp_path / 'r.json'}",
                          "--row", f"pretrained={tmp_path / 'p.json'}",
                          "--out", str(tmp_path / "t" / "table.md")],
                         capture_output=True, text=True, check=True)
    assert "| pretrained | 50.0 | - | - | - | - | - |" in res.stdout
    assert (tmp_path / "t" / "table.md").read_text().strip() == res.stdout.strip()


def _metrics(slow, fast, slow_fast):
    """metrics.json of a probe: top-1 fractions, (linear, kNN) per setting."""
    return {s: {"linear": {"top1": lin, "top5": 1.0}, "knn": {"top1": knn, "top5": 1.0}}
            for s, (lin, knn) in (("slow", slow), ("fast", fast), ("slow_fast", slow_fast))}


def test_verdict_says_whether_pretraining_clears_ten_points_in_slow_and_slow_fast():
    random = _metrics((0.40, 0.35), (0.30, 0.30), (0.40, 0.35))
    bound = _metrics((0.85, 0.80), (0.50, 0.45), (0.75, 0.75))
    clear = _metrics((0.50, 0.45), (0.20, 0.20), (0.55, 0.46))  # fast falls: not judged
    (line,) = table_mod.verdicts({"pretrained-demo": clear, "random-demo": random})
    assert line == ("pretrained vs random init on demo, top-1 points (linear/kNN): slow +10.0/+10.0, "
                    "fast -10.0/-10.0, slow-fast +15.0/+11.0: beats random init by 10 points in the "
                    "slow and slow-fast columns")
    short = _metrics((0.50, 0.449), (0.9, 0.9), (0.9, 0.9))  # one cell 9.9 points
    rows = {"pretrained-demo": short, "random-demo": random, "supervised-demo": bound}
    (line,) = table_mod.verdicts(rows)
    assert ": does not beat random init by 10 points" in line
    assert line.endswith("; trained with labels (the bound): slow +45.0/+45.0, fast +20.0/+15.0, "
                         "slow-fast +35.0/+40.0")
    # no random row (or only a bound): nothing to judge; imported weights are judged too
    assert table_mod.verdicts({"pretrained-demo": clear}) == []
    assert table_mod.verdicts({"random-demo": random, "supervised-demo": bound}) == []
    (line,) = table_mod.verdicts({"imported-ucf": clear, "random-ucf": random})
    assert line.startswith("imported vs random init on ucf,")
    # a missing probe never counts as clearing the bar
    no_knn = {s: {"linear": r["linear"]} for s, r in clear.items()}
    assert "does not beat" in table_mod.verdicts({"pretrained-d": no_knn, "random-d": random})[0]


def test_table_command_prints_the_verdict_and_the_note(tmp_path):
    for name, m in (("r", _metrics((0.4, 0.4), (0.4, 0.4), (0.4, 0.4))),
                    ("p", _metrics((0.6, 0.6), (0.4, 0.4), (0.6, 0.6)))):
        (tmp_path / f"{name}.json").write_text(json.dumps(m))
    res = subprocess.run([sys.executable, "-m", "svt.table", "--row", f"pretrained-demo={tmp_path / 'p.json'}",
                          "--row", f"random-demo={tmp_path / 'r.json'}", "--note", "GPU figures: README",
                          "--out", str(tmp_path / "table.md")], capture_output=True, text=True, check=True)
    blocks = res.stdout.strip().split("\n\n")
    assert blocks[0].startswith("| backbone |") and blocks[1] == "(top-1 accuracy, %)"
    assert blocks[2].startswith("pretrained vs random init on demo,") and "beats random init" in blocks[2]
    assert blocks[3] == "GPU figures: README"
    assert (tmp_path / "table.md").read_text().strip() == res.stdout.strip()


# ------------------------------------------------------------------------ end to end

@needs_ffmpeg
def test_adapt_features_probe_chain_on_real_videos(teacher, videos, tmp_path):
    """The Snakemake chain: adapt -> features (split x geometry) -> probe -> table. Colour
    classes are easy even for a random backbone, so both rows must score well."""
    metrics = {}
    for kind in ("pretrained", "random"):
        out = tmp_path / f"{kind}.pth"
        extra = ["--random-init"] if kind == "random" else []
        subprocess.run([sys.executable, "-m", "svt.adapt", "--backbone", str(teacher[0]),
                        "--out", str(out), *GEOS, *extra], check=True, capture_output=True)
        feats = {}
        for split in ("train", "test"):
            for g in ("slow", "fast"):
                feats[split, g] = tmp_path / f"{kind}_{split}_{g}.pt"
                assert features.main(["--backbone", str(out), "--geometry", g,
                                      "--manifest", str(videos[split]), "--videos-root",
                                      str(videos["root"]), "--out", str(feats[split, g]),
                                      "--crops", "3", "--batch-size", "3"]) == 0
        out_dir = tmp_path / kind
        assert probe.main(_probe_args(feats, videos["classes"], out_dir, "--knn-k", "3",
                                      "--epochs", "50", "--batch-size", "9")) == 0
        metrics[kind] = out_dir / "metrics.json"
        m = json.loads(metrics[kind].read_text())
        assert m["slow_fast"]["knn"]["top1"] >= 0.8, m
    assert table_mod.main(["--row", f"random={metrics['random']}", "--row",
                           f"pretrained={metrics['pretrained']}", "--out",
                           str(tmp_path / "table.md")]) == 0
    assert "| random init |" in (tmp_path / "table.md").read_text()


@needs_ffmpeg
def test_online_probe_tiny(adapted, videos, tmp_path):
    args = ["--online", "--backbone", str(adapted), "--geometry", "slow", "--geometry", "fast",
            "--train-manifest", str(videos["train"]), "--test-manifest", str(videos["test"]),
            "--videos-root", str(videos["root"]), "--classes", str(videos["classes"]),
            "--epochs", "3", "--batch-size", "3", "--lr", "1.0", "--hflip", "0.5", "--crops", "1"]
    assert probe.main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    assert probe.main(args + ["--out-dir", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert a == json.loads((tmp_path / "b" / "metrics.json").read_text())  # seeded augmentation
    assert list(a) == ["slow", "fast", "slow_fast"] and all(set(v) == {"linear"} for v in a.values())
    assert all(0 <= v["linear"]["top1"] <= 1 for v in a.values())
    assert (tmp_path / "a" / "confusion_slow_fast.png").exists()
