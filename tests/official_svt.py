"""The official SVT release (kinetics400_vitb_ssl.pth) as the tests know it: every tensor of
its teacher state dict, name and shape, in tests/fixtures/official_svt_vitb16_k400_keys.json
(facts read from the official code; its "about" says where), and synthetic releases built
from that list alone, never from this project's model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "official_svt_vitb16_k400_keys.json"
OFFICIAL = json.loads(FIXTURE.read_text())
OFFICIAL_KEYS = [(k, tuple(shape)) for k, shape in OFFICIAL["teacher_state_dict"]]
BACKBONE = OFFICIAL["checkpoint"]["backbone_prefix"]  # "backbone."
HEAD = OFFICIAL["checkpoint"]["head_prefix"]  # "head.": the DINO projection head

# The release at small widths: every name and every other size (197 positions = 14 x 14 + CLS,
# 8 frames, 16 x 16 patches, 12 blocks) as released; only the widths shrink.
TINY_WIDTHS = {768: 32, 3 * 768: 3 * 32, 4 * 768: 4 * 32,  # embed, qkv, MLP hidden
               2048: 48, 256: 16, 65536: 100}              # DINO head: hidden, bottleneck, out
# build_model keys of the architecture the tiny release fits (heads: any divisor of 32)
TINY_OFFICIAL = dict(img_size=224, patch_size=16, embed_dim=32, depth=12, num_heads=2,
                     mlp_ratio=4.0, num_frames=8, drop_path_rate=0.0)


def official_backbone() -> dict[str, tuple[int, ...]]:
    """The backbone's tensors without the `backbone.` prefix: name -> shape."""
    return {k[len(BACKBONE):]: s for k, s in OFFICIAL_KEYS if k.startswith(BACKBONE)}


def official_head() -> set[str]:
    return {k for k, _ in OFFICIAL_KEYS if k.startswith(HEAD)}


def official_release(widths: dict[int, int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic official teacher state dict: random tensors of the fixture's shapes (each
    size mapped through ``widths``), keyed as released."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn([(widths or {}).get(d, d) for d in shape], generator=g)
            for k, shape in OFFICIAL_KEYS}
