"""Prepare a backbone for the evaluation geometries: ``python -m svt.adapt``.

    python -m svt.adapt --backbone teacher_backbone.pth --out adapted.pth \
        --geometry slow=8x224 --geometry fast=64x96
    python -m svt.adapt --backbone kinetics400_vitb_ssl.pth \
        --model-json '{"arch": "vit_base", "num_frames": 8}' --out ... --geometry ...
    python -m svt.adapt --random-init --backbone teacher_backbone.pth ...   # baseline, same architecture

The backbone may be our exported teacher (its model config is stored in the file), the
official SVT release (``backbone.``-prefixed teacher, 8-frame temporal table) or a timm/DINO
image ViT; foreign files need ``--model-json``. The output holds the weights, the model config
the input normalisation it was trained with (``pretrained_cfg``: mean/std, trained temporal
rows, patch and image size; stored by svt.pretrain, else ``--mean``/``--std``) and, for every
geometry, its frames, size and patch grid and the positional tables resampled to it
(svt.posembed, with the model config's modes). ``svt.features`` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from svt.checkpoint import save_atomic
from svt.model import (VisionTransformerSVT, build_model, file_sha256, load_checkpoint_file,
                       load_pretrained, pretrained_cfg)
from svt.posembed import resample_spatial, resample_temporal

ADAPTED_FORMAT = "svt-adapted/1"


@dataclass(frozen=True)
class Geometry:
    """One evaluation view shape: ``frames`` frames of ``size`` x ``size`` pixels."""

    name: str
    frames: int
    size: int

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.name):
            raise ValueError(f"geometry name {self.name!r}: use letters, digits, '_' or '-'")
        if self.frames < 1 or self.size < 1:
            raise ValueError(f"geometry {self.name}: frames and size must be >= 1")


def parse_geometry(text: str) -> Geometry:
    """``"slow=8x224"`` -> Geometry("slow", 8, 224)."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"geometry {text!r}: expected NAME=FRAMESxSIZE, e.g. slow=8x224")
    return Geometry(m.group(1), int(m.group(2)), int(m.group(3)))


def model_config_of(path_or_obj) -> dict | None:
    """The ``model`` config stored in one of our checkpoints (teacher_backbone.pth, adapted)."""
    obj = path_or_obj if isinstance(path_or_obj, dict) else load_checkpoint_file(path_or_obj)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and \
            not any(torch.is_tensor(v) for v in obj["model"].values()):
        return dict(obj["model"])
    return None


def clean_model_config(cfg: Mapping) -> dict:
    """The keys build_model needs; ``init`` (where pretraining started) does not describe the
    architecture, and evaluation runs without activation checkpointing."""
    cfg = {k: v for k, v in cfg.items() if k != "init"}
    cfg.pop("grad_checkpointing", None)
    return cfg


def adapt_backbone(geometries: Sequence[Geometry], backbone: str | os.PathLike | None = None,
                   model_cfg: Mapping | None = None, random_init: bool = False,
                   seed: int = 0, norm: Mapping[str, Sequence[float]] | None = None) -> dict:
    """Build the payload ``svt.adapt`` writes (see ``load_adapted``).

    The model config is the file's ``model`` entry updated by ``model_cfg``; a foreign
    checkpoint (official SVT, timm/DINO image ViT) has none, so ``model_cfg`` must describe
    it. ``random_init`` skips the weights (the baseline) but still takes the config from
    ``backbone`` when given, so the baseline has the pretrained model's architecture.

    The input normalisation travels with the weights, as timm's ``pretrained_cfg``: the
    file's own (our exports store the mean/std pretraining used), else ``norm`` (``mean``,
    ``std``), which a foreign checkpoint or a random init must be given.
    """
    if not geometries:
        raise ValueError("give at least one geometry")
    names = [g.name for g in geometries]
    if len(set(names)) != len(names):
        raise ValueError(f"geometry names repeat: {names}")
    if backbone is None and not random_init:
        raise ValueError("give a backbone checkpoint, or random_init with a model config")
    ckpt = load_checkpoint_file(backbone) if backbone is not None else None
    cfg = dict(model_config_of(ckpt) or {}) if isinstance(ckpt, dict) else {}
    cfg.update(model_cfg or {})
    if not cfg:
        raise ValueError(
            f"{backbone}: no model config stored in the file (a foreign checkpoint?); describe "
            'the architecture with --model-json, e.g. \'{"arch": "vit_base", "num_frames": 8}\'')
    cfg = clean_model_config(cfg)
    stored = ckpt.get("pretrained_cfg") if isinstance(ckpt, dict) else None
    if stored and norm and [list(map(float, stored[k])) for k in ("mean", "std")] != \
            [list(map(float, norm[k])) for k in ("mean", "std")]:
        print(f"svt.adapt: {backbone} was trained with mean {stored['mean']} std {stored['std']};"
              f" using those, not {norm['mean']} {norm['std']}", file=sys.stderr)
    norm = stored or norm
    if not norm:
        raise ValueError(f"{backbone or 'random init'}: no input mean/std stored with the weights; "
                         "give them (--mean/--std; the official SVT and DINO weights use "
                         "ImageNet's 0.485 0.456 0.406 / 0.229 0.224 0.225)")

    torch.manual_seed(seed)
    model = build_model(**cfg)
    source: dict = {"random_init": bool(random_init), "seed": int(seed)}
    run_id = None
    if not random_init:
        missing, unexpected = load_pretrained(model, backbone)
        if missing:
            raise ValueError(f"{backbone}: the checkpoint lacks {len(missing)} backbone tensors "
                             f"({missing[:6]}...); wrong --model-json?")
        if isinstance(ckpt, dict) and isinstance(ckpt.get("mlflow_run_id"), str):
            run_id = ckpt["mlflow_run_id"]
        del ckpt
        source.update(path=str(backbone), sha256=file_sha256(backbone),
                      unexpected_keys=list(unexpected))
    model.eval()

    p = model.patch_size
    geo: dict = {}
    with torch.no_grad():
        for g in geometries:
            if g.size % p:
                raise ValueError(f"geometry {g.name}: size {g.size} is not a multiple of the "
                                 f"patch size {p}")
            grid = (g.size // p, g.size // p)
            geo[g.name] = {
                "frames": g.frames, "size": g.size, "grid": list(grid), "patch_size": p,
                "spatial_mode": model.pos_interp_spatial,
                "temporal_mode": model.pos_interp_temporal,
                "spatial_table": resample_spatial(model.pos_embed, grid,
                                                  model.pos_interp_spatial).detach().clone(),
                "temporal_table": resample_temporal(model.time_embed, g.frames,
                                                    model.pos_interp_temporal).detach().clone(),
            }
    return {"format": ADAPTED_FORMAT, "state_dict": model.state_dict(), "model": cfg,
            "pretrained_cfg": pretrained_cfg(model, norm["mean"], norm["std"]),
            "geometries": geo, "source": source, "mlflow_run_id": run_id}


def load_adapted(path) -> dict:
    obj = load_checkpoint_file(path)
    if not isinstance(obj, dict) or obj.get("format") != ADAPTED_FORMAT:
        raise ValueError(f"{path}: not a file written by `python -m svt.adapt`")
    return obj


def model_for_geometry(adapted: Mapping, name: str) -> VisionTransformerSVT:
    """The backbone built natively at geometry ``name``: its positional tables are the ones
    ``adapt`` recorded, so no resampling happens at run time. Eval mode, frozen."""
    try:
        g = adapted["geometries"][name]
    except KeyError:
        raise KeyError(f"geometry {name!r} not in the adapted backbone; it has "
                       f"{sorted(adapted['geometries'])}") from None
    cfg = dict(adapted["model"], img_size=g["size"], num_frames=g["frames"])
    model = build_model(**cfg)
    state = dict(adapted["state_dict"])
    state["pos_embed"] = g["spatial_table"]
    state["time_embed"] = g["temporal_table"]
    model.load_state_dict(state, strict=True)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.adapt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", help="checkpoint to adapt (with --random-init: only its config)")
    ap.add_argument("--out", required=True, help="adapted backbone to write")
    ap.add_argument("--geometry", action="append", required=True, metavar="NAME=FRAMESxSIZE",
                    help="evaluation view, e.g. slow=8x224 (repeat for each)")
    ap.add_argument("--model-json", default=None,
                    help="model config as JSON (build_model keys); overrides the file's own")
    ap.add_argument("--random-init", action="store_true",
                    help="a randomly initialised backbone (the baseline) instead of the weights")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    ap.add_argument("--mean", type=float, nargs=3, metavar="M", help="input mean (RGB) for a "
                    "backbone that does not store its own (foreign checkpoint, random init)")
    ap.add_argument("--std", type=float, nargs=3, metavar="S", help="input std (RGB), as --mean")
    a = ap.parse_args(argv)
    if (a.mean is None) != (a.std is None):
        ap.error("give --mean and --std together")
    try:
        payload = adapt_backbone([parse_geometry(g) for g in a.geometry], a.backbone,
                                 json.loads(a.model_json) if a.model_json else None,
                                 a.random_init, a.seed,
                                 {"mean": a.mean, "std": a.std} if a.mean else None)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"svt.adapt: {err}", file=sys.stderr)
        return 2
    save_atomic(payload, a.out)
    geo = ", ".join(f"{n} {g['frames']}x{g['size']} (grid {g['grid'][0]}x{g['grid'][1]})"
                    for n, g in payload["geometries"].items())
    what = "random init" if a.random_init else a.backbone
    print(f"svt.adapt: {what} -> {a.out}: {geo}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
