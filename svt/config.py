"""The one config merger: presets over config.yaml and KEY=VALUE overrides, as Snakemake's
--configfile does for the workflow (benchmarks and tests use these)."""

from __future__ import annotations

import copy

import yaml


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
