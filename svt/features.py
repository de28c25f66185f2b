"""Cache frozen-backbone CLS features: ``python -m svt.features``.

    python -m svt.features --backbone adapted.pth --geometry slow --manifest test.csv \
        --videos-root videos --out test_slow.pt --clips 1 --crops 3

Runs the adapted backbone (``svt.adapt``) at one recorded geometry over every video of the
manifest: ``clips`` temporal windows x ``crops`` square crops (left/centre/right at short side
``size``), CLS features averaged over them. bf16 autocast on GPU, fp32 on CPU. The output
(``features`` (N, D) float32, ``view_features`` (N, clips*crops, D) float16, ``labels``,
``paths``, geometry, backbone name and sha256) is what ``svt.probe`` reads, so probe settings
can change without extracting again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Mapping

import torch

from svt.adapt import load_adapted, model_for_geometry
from svt.eval_views import extract_features, resolve_device
from svt.loader import BACKENDS
from svt.model import file_sha256


FEATURES_FORMAT = "svt-features/1"


def save_features(path, result: Mapping, meta: Mapping) -> Path:
    from svt.checkpoint import save_atomic

    return save_atomic({"format": FEATURES_FORMAT, **result, **meta}, path)


def load_features(path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != FEATURES_FORMAT:
        raise ValueError(f"{path}: not a file written by `python -m svt.features`")
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.features", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, required=True, help="adapted backbone (svt.adapt)")
    ap.add_argument("--geometry", required=True, help="name of a geometry recorded in it")
    ap.add_argument("--manifest", type=Path, required=True, help="manifest CSV (svt.decode)")
    ap.add_argument("--videos-root", type=Path, required=True, help="folder of its videos")
    ap.add_argument("--out", type=Path, required=True, help="features file to write (.pt)")
    ap.add_argument("--clips", type=int, default=1, help="temporal clips per video")
    ap.add_argument("--crops", type=int, default=3, help="spatial crops per clip")
    ap.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader decode workers")
    ap.add_argument("--decoder", default="pyav", choices=BACKENDS)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = ap.parse_args(argv)
    if a.clips < 1 or a.crops < 1 or a.batch_size < 1:
        ap.error("--clips, --crops and --batch-size must be >= 1")

    adapted = load_adapted(a.backbone)
    try:
        model = model_for_geometry(adapted, a.geometry)
    except KeyError as err:
        print(f"svt.features: {err.args[0]}", file=sys.stderr)
        return 2
    geo = {k: v for k, v in adapted["geometries"][a.geometry].items() if not torch.is_tensor(v)}
    device = resolve_device(a.device)
    t0 = time.time()
    result = extract_features(model, a.manifest, a.videos_root, geo["size"], geo["frames"],
                              adapted["pretrained_cfg"], a.clips, a.crops, a.batch_size, a.num_workers, a.decoder, device)
    meta = {"geometry": {"name": a.geometry, **geo, "clips": a.clips, "crops": a.crops},
            "backbone": {"path": str(a.backbone), "sha256": file_sha256(a.backbone),
                         "source": adapted.get("source", {}), "model": adapted["model"]},
            "manifest": str(a.manifest), "mlflow_run_id": adapted.get("mlflow_run_id")}
    save_features(a.out, result, meta)
    n, d = result["features"].shape
    print(f"svt.features: {n} videos x {a.clips * a.crops} views of {geo['frames']}x{geo['size']}"
          f" -> {a.out} ({d}-d, {time.time() - t0:.1f}s on {device})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
