"""Binary classification metrics on logits: log loss, accuracy, AUC.

Letters: N rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


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
    auc = float(roc_auc_score(y.numpy(), x.numpy())) if two_classes else None
    return {"logloss": logloss, "accuracy": accuracy, "auc": auc}
