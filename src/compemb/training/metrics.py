"""Binary classification metrics on logits: log loss, accuracy, AUC.

Letters: N rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """Log loss (mean binary cross-entropy), accuracy at 0.5 and ROC AUC.

    Shapes: logits (N,), labels (N,) in {0, 1}. Computed in float64. AUC is None when the
    labels hold one class only (it is undefined then).

    >>> binary_metrics(torch.tensor([2.0, -2.0]), torch.tensor([1.0, 0.0]))["accuracy"]
    1.0
    """
    if logits.shape != labels.shape or logits.dim() != 1:
        raise ValueError(
            f"logits and labels must both be (N,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError("cannot compute metrics on zero rows")
    x, y = logits.double().cpu(), labels.double().cpu()
    logloss = F.binary_cross_entropy_with_logits(x, y).item()
    accuracy = ((x > 0).double() == y).double().mean().item()
    two_classes = 0 < y.sum().item() < y.numel()
    auc = roc_auc(x, y) if two_classes else None
    return {"logloss": logloss, "accuracy": accuracy, "auc": auc}


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC: the Mann-Whitney U statistic with tied scores given their mean rank.

    Shapes: scores (N,), labels (N,) in {0, 1} with both classes present. Equals
    ``sklearn.metrics.roc_auc_score`` without importing scikit-learn (1.3 s per process).
    """
    values, inverse, counts = torch.unique(scores.double(), return_inverse=True,
                                           return_counts=True)  # fmt: skip
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based ranks, ties averaged
    positive = labels.double()
    num_pos = positive.sum()
    num_neg = positive.numel() - num_pos
    rank_sum = (mean_rank[inverse] * positive).sum()
    return ((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)).item()
