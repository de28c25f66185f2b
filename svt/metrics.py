"""Accuracy bookkeeping shared by the probes (svt.probe), the comparison table (svt.table)
and the pretraining kNN monitor: top-k, per-class accuracy and confusion, percent as MLflow
and the tables show it, and the MLflow names of evaluation metrics."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

SETTING_ORDER = ("slow", "fast", "slow_fast")


def topk_correct(scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[1])
    return (scores.topk(k, dim=1).indices == y[:, None]).any(1)


def classification_metrics(scores: torch.Tensor, y: torch.Tensor,
                           class_names: Sequence[str]) -> dict:
    """top1, top5, per-class accuracy (None for classes absent from the test set), confusion."""
    c = len(class_names)
    pred = scores.argmax(1)
    conf = torch.zeros(c, c, dtype=torch.long)
    conf.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    support = conf.sum(1)
    per_class = {name: (conf[i, i].item() / support[i].item() if support[i] else None)
                 for i, name in enumerate(class_names)}
    return {"top1": topk_correct(scores, y, 1).float().mean().item(),
            "top5": topk_correct(scores, y, 5).float().mean().item(),
            "per_class": per_class, "confusion": conf.tolist()}


def eval_metrics(metrics: Mapping, prefix: str) -> dict[str, float]:
    """metrics.json -> {"eval/<prefix>/<setting>/<probe>_<top1|top5>": value}: the same keys in
    the probe's own run and the workflow's parent run, so runs compare.
    Values in percent with two decimals, as the table shows them (metrics.json keeps the
    fractions)."""
    flat = {}
    for s, r in metrics.items():
        for kind, m in r.items():
            for k in ("top1", "top5"):
                if m.get(k) is not None:
                    flat[f"eval/{prefix}/{s}/{kind}_{k}"] = percent(m[k])
    return flat


def percent(fraction: float) -> float:
    """0.05000000074505806 -> 5.0: accuracies in MLflow as in the table."""
    return round(100.0 * float(fraction), 2)


def ordered(settings) -> list[str]:
    """Settings in the tables' column order: slow, fast, slow-fast, then any others."""
    known = [s for s in SETTING_ORDER if s in settings]
    return known + [s for s in settings if s not in known]


def pct(v) -> str:
    """A fraction as the tables print it: 0.425 -> "42.5"; missing -> "-"."""
    return "-" if v is None else f"{100 * v:.1f}"


# The comparison tables (svt.table, svt.compare): one row per metrics.json, one linear and
# one kNN top-1 column per view setting.

def accuracy_settings(metrics: Sequence[Mapping]) -> list[str]:
    """Every setting found in these metrics.json dicts, in column order."""
    settings: list[str] = []
    for m in metrics:
        settings += [s for s in m if s not in settings]
    return ordered(settings)


def accuracy_head(settings: Sequence[str]) -> list[str]:
    """Column titles: "slow linear", "slow kNN", ..., "slow-fast kNN"."""
    return [f"{s.replace('_', '-')} {kind}" for s in settings for kind in ("linear", "kNN")]


def accuracy_cells(metrics: Mapping, settings: Sequence[str]) -> list[str]:
    """One row's top-1 cells under :func:`accuracy_head` ("-" where a probe is missing)."""
    cells = []
    for s in settings:
        r = metrics.get(s, {})
        cells += [pct(r.get("linear", {}).get("top1")), pct(r.get("knn", {}).get("top1"))]
    return cells
