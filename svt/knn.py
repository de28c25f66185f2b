"""Weighted kNN on frozen features (DINO-style): the probe's kNN column and the cheap
monitor of pretraining (svt.pretrain)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from svt.metrics import topk_correct


@torch.no_grad()
def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               num_classes: int, k: int = 20, temperature: float = 0.07,
               chunk: int = 1024) -> torch.Tensor:
    """DINO-style weighted kNN: cosine similarity of L2-normalised features, the ``k`` nearest
    training samples vote for their class with weight exp(sim / T). Returns (N_test, C)."""
    tr = F.normalize(train_x.float(), dim=1)
    te = F.normalize(test_x.float(), dim=1)
    k = min(k, len(tr))
    out = torch.zeros(len(te), num_classes)
    for i in range(0, len(te), chunk):
        sim = te[i:i + chunk] @ tr.T
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        out[i:i + chunk].scatter_add_(1, train_y[idx].long(), w)
    return out


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> dict:
    """{"top1", "top5"} of the weighted kNN; cheap enough to monitor pretraining."""
    s = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    return {"top1": topk_correct(s, test_y, 1).float().mean().item(),
            "top5": topk_correct(s, test_y, 5).float().mean().item()}
