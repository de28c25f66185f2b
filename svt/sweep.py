"""Sweeps: the ``sweep:`` section of the config expanded into named variants.

    sweep:
      variants:                   # name: partial overrides, dotted keys
        long-warmup: {optim.warmup_epochs: 2}
      grid:                       # key: values; one variant per combination
        optim.lr: [2.5e-4, 5.0e-4]

Grid variants are named from their values (``lr-0.00025``; several keys joined with ``_``);
explicit variants keep their names. Only the recipe may vary (model, views, augment, loss,
optim and the evaluation keys): a variant shares the experiment's data, curation and runtime,
which is what lets one invocation decode and curate once for all of them.
"""

from __future__ import annotations

import itertools
import re

from svt.config import apply_overrides

SWEEPABLE = ("model", "views", "augment", "loss", "optim", "evaluate")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepError(ValueError):
    """A malformed sweep section; the message names the variant or key."""


def expand(sweep: dict | None) -> dict[str, dict[str, object]]:
    """``{variant name: {dotted key: value}}`` of a sweep section, variants first, then the
    grid's combinations in the order written; empty when the section is."""
    sweep = sweep or {}
    out: dict[str, dict[str, object]] = {}
    for name, overrides in (sweep.get("variants") or {}).items():
        if not NAME.match(str(name)):
            raise SweepError(f"sweep variant {name!r}: names are letters, digits, '.', '_', '-'")
        out[str(name)] = dict(overrides or {})
    grid = sweep.get("grid") or {}
    keys = list(grid)
    for key in keys:
        if not isinstance(grid[key], list) or not grid[key]:
            raise SweepError(f"sweep grid {key!r}: expected a non-empty list of values")
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else ():
        name = "_".join(f"{k.rsplit('.', 1)[-1]}-{_label(v)}" for k, v in zip(keys, combo))
        if name in out:
            raise SweepError(f"sweep variant {name!r} is defined twice (variants and grid)")
        out[name] = dict(zip(keys, combo))
    for name, overrides in out.items():
        for key in overrides:
            if key.split(".", 1)[0] not in SWEEPABLE:
                raise SweepError(
                    f"sweep variant {name!r}: {key!r} cannot vary within one experiment (only "
                    f"{', '.join(SWEEPABLE)}: variants share the data, curation and runtime); "
                    "run another experiment for it")
    return out


def variant_config(base: dict, overrides: dict[str, object]) -> dict:
    """``base`` with a variant's dotted-key overrides applied (unknown keys are errors)."""
    try:
        return apply_overrides(base, [f"{k}={_yaml(v)}" for k, v in overrides.items()])
    except ValueError as exc:
        raise SweepError(f"sweep: {exc}") from None


def _label(value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "x"


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
