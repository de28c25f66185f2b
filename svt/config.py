"""The one config merger: presets over config.yaml and KEY=VALUE overrides, as Snakemake's
--configfile does for the workflow (benchmarks and tests use these); and the one parser of
repeated NAME=VALUE command-line options."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load_config(base: str | os.PathLike = REPO / "config.yaml",
                presets: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                validate: bool = False) -> dict:
    """config.yaml, then each preset merged over it (as ``snakemake --configfile`` does), then
    ``KEY=VALUE`` overrides; with ``validate``, checked against the workflow's schema, as
    the Snakefile checks it before any job (needs snakemake)."""
    cfg = yaml.safe_load(Path(base).read_text())
    for p in presets:
        cfg = merged(cfg, yaml.safe_load(Path(p).read_text()) or {})
    cfg = apply_overrides(cfg, list(overrides))
    if validate:
        from snakemake.utils import validate as snakemake_validate

        snakemake_validate(cfg, str(SCHEMA))
    return cfg


def merged(base: dict, over: dict) -> dict:
    """A deep copy of ``base`` with ``over`` merged in: nested sections merge key by key,
    any other value replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    """``["optim.lr=1e-3", "views.local_frames=[2, 4]"]`` -> cfg with those keys set (values
    parsed as YAML). An unknown section or key is an error naming it."""
    out = copy.deepcopy(cfg)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        *path, last = key.split(".")
        node = out
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if last not in node:
            raise ValueError(f"override {item!r}: no key {last!r} in {'.'.join(path) or 'the config'}")
        node[last] = yaml.safe_load(value)
    return out


def parse_named(items: Sequence[str] | None, what: str, unique: bool = True) -> dict[str, str]:
    """``["slow=a.pt", "fast=b.pt"]`` -> {"slow": "a.pt", "fast": "b.pt"}, order kept; the
    value may contain '='. ``unique``: a name given twice is an error (else the last wins)."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or (unique and not value):
            raise ValueError(f"{what} {item!r}: expected NAME=VALUE")
        if unique and name in out:
            raise ValueError(f"{what} {name!r} given twice")
        out[name] = value
    return out
