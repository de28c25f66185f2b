"""TimeSformer "divided space-time" ViT, the SVT backbone.

A video (B, 3, T, H, W) is cut into 16x16 patches frame by frame. Between blocks the tokens
are kept patch-major, (B, 1 + N, T, D): row 0 is the CLS token (repeated in all T columns),
rows 1..N the N spatial locations with their T frames (see Block for why). Every block runs

    temporal attention   each spatial location attends over its T frames (patches only)
    spatial attention    each frame attends over its N patches plus the CLS token;
                         the CLS token's T per-frame outputs are averaged
    MLP

all pre-norm and residual. The output is the final-norm CLS feature (B, D).

Parameter names follow the official TimeSformer/SVT layout, so the released SVT checkpoint
and image ViTs (timm, DINO) load with ``load_pretrained``. The positional tables are
resampled to every input's (T, H/p, W/p), so one model takes any view size (svt.posembed).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import sys
import time
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from svt._compat import import_timm
from svt.posembed import PosEmbedCache, resample_spatial, resample_temporal

import_timm()
from timm.layers import Mlp, PatchEmbed, trunc_normal_  # noqa: E402

LayerNorm = partial(nn.LayerNorm, eps=1e-6)
DROP_PATH_MODES = ("official", "sample")

# Presets for build_model(arch=...); every key can still be overridden.
ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


class Attention(nn.Module):
    """Multi-head self-attention on F.scaled_dot_product_attention (flash / memory-efficient
    kernels where the device has them). Parameter names qkv / proj as in timm and TimeSformer."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        assert dim % num_heads == 0, f"embed_dim {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, first_query_only: bool = False) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with ``first_query_only`` only token 0 asks: (B, 1, D)."""
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim), no copy
        if first_query_only:
            q = q[:, :, :1]
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, q.shape[2], D))


def _residual(x: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """x + branch * scale in one pass (scale: drop-path mask and/or row mask, broadcast)."""
    return x + branch if scale is None else torch.addcmul(x, branch, scale)


class Block(nn.Module):
    """Divided space-time block: temporal attention -> spatial attention -> MLP.

    Works on the patch-major layout (B, 1 + N, T, D) that VisionTransformerSVT keeps between
    blocks: row 0 is the CLS token (the same value in all T columns), rows 1..N the spatial
    locations, each holding its T frames. Why this layout: the temporal sequences are
    already contiguous rows (no copy), the spatial step needs one transposing copy and then
    finds each frame's CLS copy beside its patches (no per-frame cat), and the MLP and every
    residual add run over one tensor. The CLS row's temporal output is masked out (the CLS
    token takes no part in temporal attention); that and the MLP on its T copies cost about
    1/N extra work.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, drop_path_mode: str = "official"):
        super().__init__()
        if drop_path_mode not in DROP_PATH_MODES:
            raise ValueError(f"drop_path_mode {drop_path_mode!r}: expected one of {DROP_PATH_MODES}")
        self.drop_path_mode = drop_path_mode
        self.temporal_norm1 = LayerNorm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        # A tensor, not a float attribute: every block then compiles to the same graph.
        self.register_buffer("drop_prob", torch.tensor(float(drop_path)), persistent=False)

    def drop_mask(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Stochastic depth: keep/drop draws of ``shape``, scaled by 1/keep (None in eval)."""
        if not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return torch.empty(shape, dtype=torch.float32, device=x.device).bernoulli_(keep).div_(keep)

    def drop_shapes(self, B: int, S: int, T: int) -> tuple[tuple[int, ...], ...]:
        """The draws of the temporal, spatial and MLP branches. "official" (TimeSformer/SVT):
        one per sample and location in the temporal branch, applied before temporal_fc, one per
        sample and frame in the spatial branch (the CLS token's T outputs are averaged after
        it), one per sample for the MLP. "sample" (timm): one per sample everywhere."""
        if self.drop_path_mode == "official":
            return (B, S), (B, T), (B,)
        return (B,), (B,), (B,)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """(B, 1 + N, T, D) -> same; with ``cls_only`` (the last block) just the CLS (B, D)."""
        B, S, T, D = x.shape
        temporal, spatial, mlp = self.drop_shapes(B, S, T)
        cls_row = torch.ones(1, S, 1, 1, dtype=torch.float32, device=x.device)
        cls_row[:, 0] = 0  # the CLS row gets no temporal update

        # Temporal: one sequence of T frames per row, already contiguous.
        h = self.temporal_attn(self.temporal_norm1(x.reshape(B * S, T, D)))
        m = self.drop_mask(x, temporal)
        if m is not None and m.dim() == 2:  # per location, before temporal_fc (official)
            h = h * m.reshape(B * S, 1, 1)
            m = None
        scale = cls_row if m is None else cls_row * m.reshape(B, 1, 1, 1)
        x = torch.addcmul(x, self.temporal_fc(h).reshape(B, S, T, D), scale)

        # Spatial: each frame's CLS copy and N patches; the one transposing copy of the block.
        xs = self.norm1(x.transpose(1, 2).reshape(B * T, S, D))
        m = self.drop_mask(x, spatial)
        if cls_only:  # only the CLS output is read after the last block
            res = self.attn(xs, first_query_only=True).reshape(B, T, D)
            res = res if m is None else res * m.reshape(B, -1, 1)
            cls = x[:, 0, 0] + res.mean(1)
            m = self.drop_mask(x, mlp)
            return _residual(cls, self.mlp(self.norm2(cls)), None if m is None else m.reshape(B, 1))
        res = self.attn(xs).reshape(B, T, S, D).transpose(1, 2)  # (B, S, T, D), a view
        m = None if m is None else m.reshape(B, 1, -1, 1)  # per sample or per frame
        out = _residual(x, res, m)
        # CLS: its T per-frame outputs are averaged, the same value in every column
        cls_res = res[:, :1] if m is None else res[:, :1] * m
        out[:, :1] = x[:, :1] + cls_res.mean(2, keepdim=True)

        m = self.drop_mask(x, mlp)
        return _residual(out, self.mlp(self.norm2(out)), None if m is None else m.reshape(B, 1, 1, 1))


class VisionTransformerSVT(nn.Module):
    """TimeSformer-style video ViT returning the CLS feature; any T >= 1 and H, W multiple of p."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 pos_interp_spatial: str = "nearest", pos_interp_temporal: str = "nearest",
                 grad_checkpointing: bool = False, drop_path_mode: str = "official"):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        resample_spatial(torch.zeros(1, 2, 1), (1, 1), pos_interp_spatial)  # validate the modes
        resample_temporal(torch.zeros(1, 1, 1), 1, pos_interp_temporal)
        self.patch_size = patch_size
        self.num_frames = num_frames  # rows of the trained temporal table
        self.img_size = img_size  # side of the trained spatial table
        self.embed_dim = self.num_features = embed_dim
        self.grid_size = img_size // patch_size
        self.pos_interp_spatial = pos_interp_spatial
        self.pos_interp_temporal = pos_interp_temporal
        self.grad_checkpointing = grad_checkpointing

        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size ** 2, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth rises with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], drop_path_mode)
            for i in range(depth))
        self.norm = LayerNorm(embed_dim)
        self._pos_cache = PosEmbedCache()
        self._compiled: list[nn.Module] | None = None  # compile_blocks()
        self._compiled_keys: set = set()
        self.compile_seconds = 0.0
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.time_embed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # temporal branch starts as the identity: step 0 = image model
            nn.init.zeros_(blk.temporal_fc.weight)
            nn.init.zeros_(blk.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def spatial_table(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """pos_embed resampled to a (h, w) grid; cached while autograd is off."""
        mode = self.pos_interp_spatial
        return self._pos_cache.get(self.pos_embed, ("spatial", tuple(grid_hw), mode),
                                   lambda: resample_spatial(self.pos_embed, grid_hw, mode))

    def temporal_table(self, t: int) -> torch.Tensor:
        """time_embed resampled to t frames; cached while autograd is off."""
        mode = self.pos_interp_temporal
        return self._pos_cache.get(self.time_embed, ("temporal", t, mode),
                                   lambda: resample_temporal(self.time_embed, t, mode))

    def compile_blocks(self) -> None:
        """Regional compilation (``pretrain.compile: blocks``): ``torch.compile`` of the block,
        the one piece the model repeats, rather than of the whole model. All blocks share the
        compiled graphs (drop-path rates are tensors, not constants), shapes are dynamic, so
        the ten views compile a handful of graphs. If compiling or running a compiled block
        fails, one line says so on stderr and the model runs eager from then on.
        ``compile_seconds`` adds up the first calls of each input shape (the compile time)."""
        import torch._functorch.config as functorch_config

        if "force_non_lazy_backward_lowering" in functorch_config.get_config_copy():
            # compile the backward with the forward, so its failures are caught there too
            functorch_config.force_non_lazy_backward_lowering = True
        self._compiled = [torch.compile(blk, dynamic=True) for blk in self.blocks]

    def _run_block(self, i: int, blk: nn.Module, x: torch.Tensor, cls_only: bool) -> torch.Tensor:
        fn = blk if self._compiled is None else self._compiled[i]
        if self.grad_checkpointing and self.training and x.requires_grad:
            out = lambda: torch.utils.checkpoint.checkpoint(fn, x, cls_only, use_reentrant=False)
        else:
            out = lambda: fn(x, cls_only)
        if fn is blk:
            return out()
        key = (i, tuple(x.shape), self.training, torch.is_grad_enabled(), cls_only)
        t0 = time.perf_counter()
        try:
            y = out()
        except Exception as e:  # a compiler failure; a real error shows again when run eager
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"[svt.model] warning: torch.compile of the blocks failed ({type(e).__name__}: "
                  f"{first}); running eager", file=sys.stderr, flush=True)
            self._compiled = None
            return self._run_block(i, blk, x, cls_only)
        if key not in self._compiled_keys:
            self._compiled_keys.add(key)
            self.compile_seconds += time.perf_counter() - t0
        return y

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"expected a video batch (B, 3, T, H, W), got {tuple(x.shape)}")
        B, C, T, H, W = x.shape
        p = self.patch_size
        assert H % p == 0 and W % p == 0, \
            f"frame size {H}x{W} must be a multiple of the patch size {p} in both dimensions"
        h, w = H // p, W // p

        x = self.patch_embed(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, h*w, D)
        D = x.shape[-1]
        pos = self.spatial_table((h, w))
        table = pos[:, 1:].unsqueeze(1) + self.temporal_table(T).unsqueeze(2)  # (1, T, hw, D)
        x = x.reshape(B, T, h * w, D) + table  # patches only; the CLS token has no time
        cls = (self.cls_token + pos[:, :1]).reshape(1, 1, 1, D).expand(B, 1, T, D)
        x = torch.cat([cls, x.transpose(1, 2)], dim=1)  # (B, 1 + hw, T, D): see Block

        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = self._run_block(i, blk, x, cls_only=i == last)
        return self.norm(x)  # (B, D): the last block returns the CLS token only

    forward = forward_features


def build_model(arch: str | None = None, **cfg) -> VisionTransformerSVT:
    """Build from the config.yaml ``model`` section; ``init`` (a checkpoint path, see
    load_pretrained) and ``teacher_mode`` (svt.pretrain) are ignored here. ``arch`` picks an
    ARCHS preset that the other keys override."""
    cfg = dict(cfg)
    cfg.pop("init", None)
    cfg.pop("teacher_mode", None)  # how svt.pretrain runs the teacher, not the architecture
    params = dict(ARCHS[arch]) if arch is not None else {}
    params.update(cfg)
    known = set(inspect.signature(VisionTransformerSVT).parameters)
    unknown = sorted(set(params) - known)
    if unknown:
        raise TypeError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
    return VisionTransformerSVT(**params)


# ------------------------------------------------------------------------- loading weights

_PREFIXES = ("module.", "backbone.", "model.", "encoder.")
_DROPPED = ("head.", "head_dist.", "fc_norm.", "pre_logits.")  # classifier / DINO heads
_UNSUPPORTED = {  # key fragment -> why we refuse rather than silently dropping it
    "reg_token": "register tokens", "dist_token": "a distillation token",
    ".ls1.": "layer scale", ".ls2.": "layer scale", "q_norm.": "qk-norm", "k_norm.": "qk-norm",
    "norm_pre.": "a pre-norm before the blocks",
}
_WRAPPERS = ("teacher", "state_dict", "model", "module", "student")  # teacher preferred


def _strip_prefixes(key: str) -> str:
    while key.startswith(_PREFIXES):
        key = key[key.index(".") + 1:]
    return key


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformerSVT) -> dict:
    """Remap a foreign state dict (official SVT / TimeSformer, DINO or timm image ViT) to ours.

    Image ViTs become step-0-equivalent video models: each block's spatial attention and its
    norm are copied into the temporal branch, and temporal_fc is zero (the branch adds nothing).
    pos_embed and time_embed are resampled to the model's grid and frame count.
    """
    out = {}
    for k, v in state_dict.items():
        k = _strip_prefixes(k)
        if k.startswith(_DROPPED):
            continue
        for frag, why in _UNSUPPORTED.items():
            if frag in k:
                raise ValueError(f"checkpoint key {k!r}: ViTs with {why} are not supported")
        out[k] = v

    is_image_vit = "time_embed" not in out and not any(".temporal_" in k for k in out)
    if is_image_vit:
        for k in [k for k in out if k.startswith("blocks.")]:
            i, rest = k.split(".")[1], k.split(".", 2)[2]
            if rest.startswith("attn."):
                out[f"blocks.{i}.temporal_{rest}"] = out[k].clone()
            elif rest.startswith("norm1."):
                out[f"blocks.{i}.temporal_{rest}"] = out[k].clone()
                if rest == "norm1.weight":
                    d = out[k].shape[0]
                    out[f"blocks.{i}.temporal_fc.weight"] = out[k].new_zeros(d, d)
                    out[f"blocks.{i}.temporal_fc.bias"] = out[k].new_zeros(d)
    if "time_embed" not in out and "pos_embed" in out:  # zero: frames start indistinguishable
        pos = out["pos_embed"]
        out["time_embed"] = pos.new_zeros(1, model.num_frames, pos.shape[-1])

    with torch.no_grad():
        if "pos_embed" in out:
            pos = out["pos_embed"]
            n = pos.shape[1]
            if math.isqrt(n) ** 2 == n:
                # timm "no_embed_class": the CLS token gets no position; a zero row is exact.
                pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
            elif math.isqrt(n - 1) ** 2 != n - 1:
                raise ValueError(f"pos_embed of shape {tuple(pos.shape)} is neither CLS + square "
                                 "grid nor a square grid")
            g = model.grid_size
            out["pos_embed"] = resample_spatial(pos, (g, g), model.pos_interp_spatial).contiguous()
        if "time_embed" in out and out["time_embed"].dim() == 3:
            out["time_embed"] = resample_temporal(out["time_embed"], model.num_frames,
                                                  model.pos_interp_temporal).contiguous()
    return out


def _unwrap(obj) -> dict:
    """Find the state dict inside a training checkpoint (DINO/SVT: prefer the teacher)."""
    def holds_weights(d) -> bool:
        return isinstance(d, dict) and any(torch.is_tensor(v) or isinstance(v, dict)
                                           for v in d.values())

    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPERS if holds_weights(obj.get(k))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        raise ValueError("no state dict (a mapping of names to tensors) found in the checkpoint")
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def pretrained_cfg(model: "VisionTransformerSVT", mean, std) -> dict:
    """What evaluation needs to feed the weights as they were trained, stored beside them (as
    timm's ``pretrained_cfg``): input mean/std, trained temporal rows, patch and image size."""
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "num_frames": model.num_frames, "patch_size": model.patch_size,
            "img_size": model.img_size}


def load_checkpoint_file(path):
    """``torch.load`` with ``weights_only=True`` on CPU; argparse.Namespace (DINO and SVT
    checkpoints store their ``args``) is the one extra type allowed."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_pretrained(model: VisionTransformerSVT, path, allow_shape_mismatch: bool = False):
    """Load a checkpoint file into ``model`` (strict=False) and return (missing, unexpected).

    Always ``weights_only=True``; argparse.Namespace (DINO/SVT store their ``args``) is the one
    extra type allowed. Shape mismatches raise ValueError unless ``allow_shape_mismatch``, in
    which case those keys are skipped (and so reported as missing).
    """
    state = checkpoint_filter_fn(_unwrap(load_checkpoint_file(path)), model)

    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        lines = "\n".join(f"  {k}: checkpoint {a} vs model {b}" for k, a, b in bad)
        if not allow_shape_mismatch:
            raise ValueError(f"shape mismatch loading {path}:\n{lines}")
        print(f"[load_pretrained] skipping {len(bad)} keys with mismatched shapes:\n{lines}",
              file=sys.stderr)
        for k, _, _ in bad:
            del state[k]

    missing, unexpected = model.load_state_dict(state, strict=False)
    print(f"[load_pretrained] {path}: {len(state) - len(unexpected)} tensors loaded; "
          f"missing keys: {list(missing)}; unexpected keys: {list(unexpected)}", file=sys.stderr)
    model._pos_cache.clear()
    return list(missing), list(unexpected)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, for logging which init checkpoint a run started from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
