"""Prepare a backbone for the evaluation geometries: ``python -m svt.adapt``.

    python -m svt.adapt --backbone teacher_backbone.pth --out adapted.pth \
        --geometry slow=8x224 --geometry fast=64x96
    python -m svt.adapt --backbone kinetics400_vitb_ssl.pth \
        --model-json '{"arch": "vit_base", "num_frames": 8}' --out ... --geometry ...
    python -m svt.adapt --random-init --backbone teacher_backbone.pth ...   # baseline, same architecture

The backbone may be our exported teacher (its model config is stored in the file), the
official SVT release (``backbone.``-prefixed teacher, 8-frame temporal table) or a timm/DINO
image ViT; foreign files need ``--model-json``. The output holds the weights, the model config
and, for every geometry, its frames, size and patch grid and the positional tables resampled
to it (svt.posembed, with the model config's modes). ``svt.features`` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys

from svt.checkpoint import save_atomic
from svt.evaluate import adapt_backbone, parse_geometry


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
    a = ap.parse_args(argv)
    try:
        payload = adapt_backbone([parse_geometry(g) for g in a.geometry], a.backbone,
                                 json.loads(a.model_json) if a.model_json else None,
                                 a.random_init, a.seed)
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
